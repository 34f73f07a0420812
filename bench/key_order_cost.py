"""What putting a write-back round's keys in order costs the event loop, three ways.

    .venv/bin/python bench/key_order_cost.py --json-out bench/results/key_order_cost.json

A round at a million accounts holds about 450,000 account keys and 560,000 remembered ids
(bench/RESULTS.md, 2026-12-04). For --accounts keys shaped like account ids and --ids keys
shaped like remembered ids (20 tills' consecutive ids, interleaved), each way is timed on
the same keys, CPU time (`time.process_time`), best of --repeats:

- heap: what the switch did until 29f9d71: heapify the keys, then pop them all;
- sorted: Python's `sorted`, all at once (the event loop held for the whole of it);
- runs: `switch.persistence.key_order.KeyRuns` as the switch uses it: runs of
  `limits.key_order_sorted_per_commit_max` sorted one at a time (the longest is what one
  commit holds the loop for), then taken in slices of 2,000.

Speed is measured here, never asserted in a test.
"""

import argparse
import heapq
import itertools
import json
import pathlib
import random
import sys
import time

import msgpack

REPO = pathlib.Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from switch import limits  # noqa: E402
from switch.persistence import key_order  # noqa: E402

SLICE_KEYS = 2_000
TILLS = 20


def _keys(accounts: int, ids: int, seed: int) -> dict[str, list[bytes]]:
    rng = random.Random(seed)
    account_keys = list(dict.fromkeys(b"WH%010d" % rng.randrange(10 * accounts)
                                      for _ in range(accounts)))
    rng.shuffle(account_keys)
    per_till = -(-ids // TILLS)
    starts = [rng.randrange(10 ** 9) for _ in range(TILLS)]
    id_keys = [b"WH-POS-%02d\0" % till + msgpack.packb(starts[till] + n)
               for n in range(per_till) for till in range(TILLS)][:ids]
    return {"accounts": account_keys, "ids": id_keys}


def _heap(keys: list) -> dict:
    began = time.process_time()
    heap = list(keys)
    heapq.heapify(heap)
    heapified = time.process_time()
    popped = list(map(heapq.heappop, itertools.repeat(heap, len(heap))))
    ended = time.process_time()
    assert len(popped) == len(keys)
    return {"total_s": ended - began, "longest_step_s": heapified - began}


def _sorted(keys: list) -> dict:
    began = time.process_time()
    result = sorted(keys)
    spent = time.process_time() - began
    assert len(result) == len(keys)
    return {"total_s": spent, "longest_step_s": spent}


def _runs(keys: list) -> dict:
    runs = key_order.KeyRuns(list(keys), limits.key_order_sorted_per_commit_max)
    steps = []
    while not runs.ready:
        began = time.process_time()
        runs.sort_next()
        steps.append(time.process_time() - began)
    began = time.process_time()
    taken = 0
    while True:
        piece = runs.take(SLICE_KEYS)
        if not piece:
            break
        taken += len(piece)
    took = time.process_time() - began
    assert taken == len(keys)
    return {"total_s": sum(steps) + took, "longest_step_s": max(steps), "runs": len(steps),
            "take_s": took}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--accounts", type=int, default=450_000)
    parser.add_argument("--ids", type=int, default=560_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json-out")
    args = parser.parse_args(argv)
    if args.accounts < 1 or args.ids < 1 or args.repeats < 1:
        parser.error("--accounts, --ids and --repeats: at least 1")
    result = {"command": " ".join(["bench/key_order_cost.py"] + (argv or sys.argv[1:])),
              "compiled": key_order.COMPILED,
              "run_keys": limits.key_order_sorted_per_commit_max, "slice_keys": SLICE_KEYS}
    for name, keys in _keys(args.accounts, args.ids, args.seed).items():
        figures = {}
        for way, measure in (("heap", _heap), ("sorted", _sorted), ("runs", _runs)):
            figures[way] = min((measure(keys) for _ in range(args.repeats)),
                               key=lambda figure: figure["total_s"])
        result[name] = {"keys": len(keys), **figures}
        print(f"{name} ({len(keys)} keys): " + ", ".join(
            f"{way} {1e3 * figure['total_s']:.1f} ms (longest step "
            f"{1e3 * figure['longest_step_s']:.1f} ms)" for way, figure in figures.items()))
    if args.json_out:
        pathlib.Path(args.json_out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
