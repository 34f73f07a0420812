"""What holds the event loop of a running switch, recorded from outside its code: measurement
only, never loaded by the switch itself.

    PYTHONPATH=bench/experiments/loop_probe PROBE_DIR="$TMPDIR/probe" \\
        .venv/bin/python bench/e2e_load.py --rate 5000 --connections 2000 --depth 1 \\
        --accounts 10000 --prebuild --seed 1 --seconds 20 --warmup 10 --no-audit

Every Python process started with it (the load script and the switch it starts) writes
`PROBE_DIR/probe-PID.json` at exit: its command line; every cycle collection as
[generation, wall s, thread CPU s, unix time, on the main thread]; and, in a process that
runs trio (the switch), every task's step count, total, steps over 2 and 5 ms and longest,
with each step over 4 ms as [unix time, task, wall s, thread CPU s]. `PROBE_YOUNG=1` also
counts the young generation's objects by type at each young collection (slow: it lists them
all; the run's own latency figures are then not the switch's)."""

import atexit
import gc
import json
import os
import sys
import threading
import time
from collections import Counter

_DIR = os.environ.get("PROBE_DIR", ".")
_collections: list = []
_young: list = []
_steps: dict = {}
_long_steps: list = []
_started = [0.0, 0.0]


def _on_collection(phase, info):
    if phase == "start":
        _started[0], _started[1] = time.perf_counter(), time.thread_time()
        return
    _collections.append([info["generation"], time.perf_counter() - _started[0],
                         time.thread_time() - _started[1], time.time(),
                         threading.current_thread() is threading.main_thread()])


def _census(phase, info):
    if phase != "start" or info["generation"] != 0:
        return
    gc.callbacks.remove(_census)   # listing the objects must not call us again
    try:
        young = gc.get_objects(0)
        kinds = Counter(type(thing).__name__ for thing in young)
        pairs = Counter(tuple(type(part).__name__ for part in thing) for thing in young
                        if type(thing) is tuple and len(thing) in (2, 3))
        _young.append([time.time(), len(young), kinds.most_common(8),
                       [[list(kind), count] for kind, count in pairs.most_common(4)]])
    finally:
        gc.callbacks.insert(0, _census)


gc.callbacks.append(_on_collection)
if os.environ.get("PROBE_YOUNG") == "1":
    gc.callbacks.insert(0, _census)


def _install_step_timer():
    import trio
    import trio.abc

    class StepTimer(trio.abc.Instrument):
        def before_task_step(self, task):
            self.wall, self.cpu = time.perf_counter(), time.thread_time()

        def after_task_step(self, task):
            wall = time.perf_counter() - self.wall
            name = ".".join(task.name.split(".")[-2:])[:80]
            record = _steps.setdefault(name, [0, 0.0, 0, 0, 0.0])
            record[0] += 1
            record[1] += wall
            record[2] += wall > 0.002
            record[3] += wall > 0.005
            record[4] = max(record[4], wall)
            if wall > 0.004:
                _long_steps.append([time.time(), name, wall, time.thread_time() - self.cpu])

    run = trio.run

    def run_with_timer(*args, **kwargs):
        kwargs["instruments"] = list(kwargs.get("instruments", ())) + [StepTimer()]
        return run(*args, **kwargs)

    trio.run = run_with_timer


try:
    _install_step_timer()
except ImportError:   # a process without trio: collections only
    pass


@atexit.register
def _write():
    os.makedirs(_DIR, exist_ok=True)
    with open(os.path.join(_DIR, f"probe-{os.getpid()}.json"), "w") as out:
        json.dump({"argv": sys.argv, "collections": _collections, "young": _young,
                   "steps": _steps, "long_steps": _long_steps}, out)
