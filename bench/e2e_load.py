"""End-to-end load on a real server process: pipelined debits from many connections in closed
loop (or at a fixed offered rate in open loop), latency percentiles, server CPU per
authorization, the switch's commit batch sizes and a final audit.

    .venv/bin/python bench/e2e_load.py --connections 200 --seconds 10
    .venv/bin/python bench/e2e_load.py --connections 2000 --rate 10000 --seconds 30   # open loop
    .venv/bin/python bench/e2e_load.py --server bare --connections 2000 --seconds 30  # the ceiling
    .venv/bin/python bench/e2e_load.py --server uvloop --connections 2000 --seconds 30  # Python's
    .venv/bin/python bench/e2e_load.py --server bare --requests 50 --connections 4   # bounded
    .venv/bin/python bench/e2e_load.py --idle --connections 10000                     # RSS held
    .venv/bin/python bench/e2e_load.py --prebuild --accounts 1000000 --no-audit       # big books

By default it starts `python -m switch serve` on a fresh data dir (with --server bare or
uvloop, bench/bare_server.py on trio or on asyncio+uvloop), pinned to CPU 0 with the load on
CPU 1, and provisions accounts, cards and terminals over the wire (--prebuild: writes them
into the data dir with the switch's own code before the switch starts). With
--host/--port/--data it loads a switch already running.

The load client must cost far less per request than the server, or it is the client that gets
measured. By default (--client c) the load loop is bench/loadgen/loadgen.c, built on first use
with the C compiler into build/loadgen/: this script starts the server, provisions, hands the
C program the terminals' keys and the cards, and turns its counts and latencies into the same
figures and JSON. --client python runs the same loop in this process (one epoll loop, the
switch's own codec), as a cross-check of the C client. --idle signs on from this process.
Closed loop: `--depth` debits in flight per connection, a new one for each reply. Open loop
(--rate): a Poisson stream of debits over all connections at the offered rate, each latency
measured from the time the request was *meant* to be sent, so a stalled server cannot hide
its stall by slowing the client (coordinated omission). --json-out writes everything.
"""

import argparse
import hashlib
import json
import math
import os
import pathlib
import random
import resource
import select
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from array import array
from bisect import bisect_left
from collections import Counter

REPO = pathlib.Path(__file__).resolve().parents[1]
LOAD_CONFIG = REPO / "bench" / "switch-load.toml"
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from switch import limits  # noqa: E402
from switch.codec import ClientSession, FrameDecoder, ProtocolError  # noqa: E402
from switch.config.endpoints import host_port_argument, parse_host_port  # noqa: E402
from switch.persistence.store import STORE_DIR  # noqa: E402
from switch.shell.metrics import COMMIT_PHASES  # noqa: E402

SCHOOL = "WH"
START_BALANCE_FEN = 5_000_000            # far above what a run spends per account
PROVISION_PIPELINE_DEPTH = 64            # the switch's in-flight cap per connection
PREBUILD_BATCH_ACCOUNTS = 10_000         # accounts per LMDB write transaction when prebuilding
PREBUILT_CACHE_AGE_MAX_S = 86_400        # older kept books are prebuilt again (ids retention)
CONNECT_BATCH = 100                      # hellos under way at once while connecting
SERVER_START_TIMEOUT_S = 60.0
CONNECT_TIMEOUT_S = 180.0                # all connections signed on within this
SOCKET_TIMEOUT_S = 10.0                  # one connect or hello reply
DRAIN_TIMEOUT_S = 10.0                   # after the window, for replies still in flight
SERVER_STOP_TIMEOUT_S = 30.0
HTTP_TIMEOUT_S = 5.0
AUDIT_TIMEOUT_S = 600.0
POLL_INTERVAL_MAX_S = 0.05
IDLE_SAMPLE_INTERVAL_S = 0.5
CLIENT_UNSENT_BYTES_MAX = 4 * 1024 * 1024  # open loop: a connection this far behind is dropped
ID_STRIDE = 10**12                       # request ids: connection index * stride + counter
RECEIVE_SIZE_BYTES = 256 * 1024
CLIENT_BOUND_PERCENT = 90.0              # a load client this busy may be what limits a run
LATENCY_PERCENTILES = (0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 97, 99, 99.5, 99.7, 99.9,
                       99.95, 99.97, 99.99, 99.995, 99.999, 100)
HISTOGRAM_BINS_PER_DECADE = 20
HISTOGRAM_FLOOR_MS = 0.01
SERVERS = ("switch", "bare", "uvloop", "responder")
BARE_SERVERS = {"bare": "trio", "uvloop": "uvloop"}   # --server: bare_server.py's --loop
CLIENT_SOURCE = REPO / "bench" / "loadgen" / "loadgen.c"
CLIENT_BINARY = REPO / "build" / "loadgen" / "loadgen"
CLIENT_CFLAGS = ("-O2", "-Wall")
CLIENT_BUILD_TIMEOUT_S = 120.0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--connections", type=int, default=200, help="load connections")
    parser.add_argument("--depth", type=int, default=4,
                        help="closed loop: debits in flight per connection")
    parser.add_argument("--rate", type=float, default=0.0,
                        help="open loop: offered debits per second over all connections "
                             "(0: closed loop)")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured duration")
    parser.add_argument("--warmup", type=float, default=1.0,
                        help="seconds of load before the measured window")
    parser.add_argument("--accounts", type=int, default=1000, help="accounts (one card each)")
    parser.add_argument("--terminals", type=int, default=20, help="terminal credentials")
    parser.add_argument("--amount-max", type=int, default=10, help="debits are 1..this fen")
    parser.add_argument("--seed", type=int, default=None, help="seed for cards and amounts")
    parser.add_argument("--idle", action="store_true",
                        help="sign on --connections and hold them idle; report the server's RSS")
    parser.add_argument("--hold", type=float, default=5.0, help="--idle: seconds to hold")
    parser.add_argument("--json-out", help="write the results here (JSON)")
    parser.add_argument("--label", help="name of this run in the JSON")
    parser.add_argument("--no-audit", action="store_true", help="skip the final audit")
    parser.add_argument("--client", choices=("c", "python"), default="c",
                        help="the load loop: bench/loadgen/loadgen.c, or this process's own")
    parser.add_argument("--requests", type=int, default=0,
                        help="stop sending after this many debits in all; the window ends when "
                             "they are answered (a bounded run; C client only)")
    existing = parser.add_argument_group("an already running switch")
    existing.add_argument("--host", help="connect here instead of starting a server")
    existing.add_argument("--port", type=int)
    existing.add_argument("--data", help="its data dir (admin.key, and audit at the end)")
    existing.add_argument("--metrics", type=host_port_argument(port_min=1),
                          help="its metrics HOST:PORT")
    existing.add_argument("--server-pid", type=int, help="its pid, for CPU and RSS figures")
    own = parser.add_argument_group("a server started by this tool")
    own.add_argument("--server", choices=SERVERS, default="switch",
                     help="the switch, or bench/bare_server.py under trio (bare: the network "
                          "path's ceiling) or under asyncio with uvloop (uvloop: what Python "
                          "itself can do), or the C client's own responder (responder: what "
                          "the load client itself can drive; an instrument, not a server "
                          "compared)")
    own.add_argument("--prebuild", action="store_true",
                     help="write accounts, cards and terminals into the data dir with the "
                          "switch's own code before starting it, instead of over the wire")
    own.add_argument("--prebuilt-cache", metavar="DIR",
                     help="with --prebuild and --seed: keep the prebuilt data dir here and copy "
                          "it on later runs with the same seed, sizes, configuration and switch "
                          "code, so runs compared in pairs start from the same books (a million "
                          "accounts take minutes to prebuild)")
    own.add_argument("--pregrow-mb", type=int, default=0, metavar="MIB",
                     help="with --prebuild: write this many MiB of zeros past the end of the "
                          "books' data file before the server starts, so the file's growth in "
                          "the run lands in pages the page cache holds already: a diagnostic "
                          "of the machine's cost of new page-cache pages, which the switch "
                          "pays in service (see pregrow_data_file; default 0: none)")
    own.add_argument("--workdir", help="parent of the temporary data dir (default: $TMPDIR)")
    own.add_argument("--server-cpu", type=int, default=0, help="CPU for the server")
    own.add_argument("--load-cpu", type=int, default=1, help="CPU for this load client")
    own.add_argument("--no-pin", action="store_true", help="do not pin either process")
    own.add_argument("--config", default=str(LOAD_CONFIG),
                     help="switch configuration file (default: bench/switch-load.toml, which "
                          "lifts the per-credential budget a few shared credentials would meet)")
    own.add_argument("--log-level", default="WARNING", help="switch log level")
    own.add_argument("--keep-data", action="store_true", help="keep the temporary data dir")
    return parser


# ------------------------------------------------------------------ processes and pinning
def _cpu_count() -> int:
    # The machine's CPUs, not this process's affinity: a parent pinned to the load CPU
    # (bench/run_e2e.py) must not make its children think there is only one.
    return os.cpu_count() or 1


def _pin_self(cpu: int) -> str:
    try:
        os.sched_setaffinity(0, {cpu})
        return f"CPU {cpu}"
    except (AttributeError, OSError) as error:
        return f"unpinned ({error})"


def _raise_file_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _stat_after_name(pid) -> list[str]:
    """The fields of /proc/PID/stat after the command name: state (3), ppid (4), ...,
    utime (14), stime (15) are [0], [1], ..., [11], [12]."""
    with open(f"/proc/{pid}/stat") as handle:
        return handle.read().rpartition(")")[2].split()


def _cpu_ticks(fields: list[str]) -> int:
    return int(fields[11]) + int(fields[12])


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), from /proc/PID/stat."""
    return _cpu_ticks(_stat_after_name(pid)) / os.sysconf("SC_CLK_TCK")


def process_memory_kib(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM and RssAnon of a process, in KiB, from /proc/PID/status."""
    values = {}
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            name, _, rest = line.partition(":")
            if name in ("VmRSS", "VmHWM", "RssAnon"):
                values[name] = int(rest.split()[0])
    return values


class AnonymousPeak:
    """The most anonymous memory (RssAnon) a process held while this was open, sampled twice
    a second from a thread of this process: the switch's own memory, where its RSS is mostly
    the LMDB map's pages (file-backed, 1.5 GB of it at a million accounts)."""

    def __init__(self, pid: int | None):
        self.pid, self.peak_kib = pid, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while True:
            try:
                self.peak_kib = max(self.peak_kib, process_memory_kib(self.pid)["RssAnon"])
            except (OSError, KeyError):
                return
            if self._stop.wait(0.5):
                return

    def __enter__(self):
        if self.pid:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self.pid:
            self._thread.join()


class ServerProcess:
    """A server started by this tool: pinned, its `listening on` line awaited, stopped for sure."""

    def __init__(self, command: list[str], work_dir: pathlib.Path, name: str, args,
                 wants_metrics: bool):
        self.command = command
        self.name = name
        self.args = args
        self.wants_metrics = wants_metrics
        self.process = None
        self.pinning = "unpinned"
        self.stdout_path = work_dir / f"{name}.out"
        self.stderr_path = work_dir / f"{name}.err"

    @property
    def pid(self) -> int:
        return self.process.pid

    def start(self) -> tuple[tuple[str, int], tuple[str, int] | None]:
        command = self.command
        taskset = shutil.which("taskset")
        pin = not self.args.no_pin and _cpu_count() >= 2
        if pin and taskset:
            command = [taskset, "-c", str(self.args.server_cpu)] + command  # taskset execs
            self.pinning = f"CPU {self.args.server_cpu} (taskset)"
        with open(self.stdout_path, "wb") as stdout, open(self.stderr_path, "wb") as stderr:
            self.process = subprocess.Popen(command, stdout=stdout, stderr=stderr,
                                            stdin=subprocess.DEVNULL, cwd=REPO)
        if pin and not taskset:
            try:
                os.sched_setaffinity(self.process.pid, {self.args.server_cpu})
                self.pinning = f"CPU {self.args.server_cpu} (sched_setaffinity, no taskset)"
            except OSError as error:
                self.pinning = f"unpinned ({error})"
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        listening = metrics = None
        while time.monotonic() < deadline:
            for line in self.stdout_path.read_text().split("\n")[:-1]:
                if line.startswith("listening on "):
                    listening = parse_host_port(line[len("listening on "):])
                elif line.startswith("metrics on "):
                    metrics = parse_host_port(line[len("metrics on "):])
            if listening and (metrics or not self.wants_metrics):
                return listening, metrics
            if self.process.poll() is not None:
                break
            time.sleep(0.02)
        self.kill()
        raise RuntimeError(f"{self.name} did not start:\n{self.stderr_tail()}")

    def stderr_tail(self, lines: int = 20) -> str:
        text = self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> int:
        """SIGTERM: the switch answers what is in flight, commits and exits 0
        (docs/PROTOCOL.md §7.1)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=SERVER_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.kill()
            return self.process.returncode

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def _machine_busy_seconds() -> float | None:
    """CPU seconds spent by everything on the machine so far (/proc/stat), or None."""
    try:
        with open("/proc/stat") as handle:
            fields = handle.readline().split()[1:]
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _kernel_threads_ticks() -> dict[int, int] | None:
    """utime + stime (ticks) of each kernel thread (kthreadd, pid 2, and its children) so
    far, by pid, or None: work the kernel does in threads of its own, such as writing back
    the pages a server's fsync asked for, is in the machine's busy time but in no process of
    ours. Per thread, because kernel workers come and go (`kernel_threads_seconds_between`).
    The C client does the same."""
    ticks = {}
    try:
        names = os.listdir("/proc")
    except OSError:
        return None
    for name in names:
        if not name.isdigit():
            continue
        try:
            fields = _stat_after_name(name)
        except OSError:
            continue   # gone since the listing
        if name == "2" or fields[1] == "2":
            ticks[int(name)] = _cpu_ticks(fields)
    return ticks or None


def kernel_threads_seconds_between(start: dict[int, int] | None,
                                   stop: dict[int, int] | None) -> float | None:
    """CPU seconds kernel threads spent between two `_kernel_threads_ticks`: a thread begun
    since counts whole, one gone since is lost with its ticks of the window. A sum over
    whichever threads exist at each end lost a whole lifetime of ticks when a worker exited
    in the window, and so read as other programs busy on a quiet machine."""
    if start is None or stop is None:
        return None
    total = 0
    for pid, ticks in stop.items():
        before = start.get(pid, 0)
        total += ticks - before if before <= ticks else ticks   # a reused pid: a new thread
    return total / os.sysconf("SC_CLK_TCK")


CPU_FIELDS = ("elapsed_s", "server_cpu_s", "load_cpu_s", "machine_cpu_s",
              "kernel_threads_cpu_s")


def other_programs_seconds(cpu: dict) -> float | None:
    """The machine's busy CPU less the server's, the load client's and the kernel's own
    threads' (which work for the server too: its fsync's writeback), or None when unknown.
    Older results, without the kernel threads, count them in."""
    if cpu.get("machine_cpu_s") is None or cpu.get("server_cpu_s") is None:
        return None
    others = cpu["machine_cpu_s"] - cpu["server_cpu_s"] - (cpu.get("load_cpu_s") or 0)
    return max(0.0, others - (cpu.get("kernel_threads_cpu_s") or 0))


class CpuSample:
    """Wall clock, server CPU, this process's CPU, the machine's busy CPU and the kernel
    threads' at one instant."""

    def __init__(self, server_pid: int | None):
        self.wall = time.perf_counter()
        try:
            self.server = process_cpu_seconds(server_pid) if server_pid else None
        except OSError:
            self.server = None
        self.own = time.process_time()
        self.machine = _machine_busy_seconds()
        self.kernel_threads = _kernel_threads_ticks()


def cpu_between(start: CpuSample, stop: CpuSample) -> dict:
    def delta(name):
        a, b = getattr(start, name), getattr(stop, name)
        return None if a is None or b is None else b - a
    return {"elapsed_s": delta("wall"), "server_cpu_s": delta("server"),
            "load_cpu_s": delta("own"), "machine_cpu_s": delta("machine"),
            "kernel_threads_cpu_s": kernel_threads_seconds_between(start.kernel_threads,
                                                                   stop.kernel_threads)}


# ------------------------------------------------------------------ metrics
def scrape(address: tuple[str, int] | None) -> dict[str, float]:
    """Unlabelled and labelled samples of the switch's Prometheus text, by full name."""
    if address is None:
        return {}
    url = f"http://{address[0]}:{address[1]}/metrics"
    with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_S) as response:
        body = response.read().decode()
    samples = {}
    for line in body.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def _delta(after: dict, before: dict, name: str) -> float:
    return after.get(name, 0.0) - before.get(name, 0.0)


def _histogram_quantile(after: dict, before: dict, name: str, quantile: float) -> str:
    """Upper bound of the bucket holding `quantile` of the observations between scrapes."""
    buckets = []
    for sample in after:
        if sample.startswith(name + "_bucket{") and 'le="' in sample:
            bound = sample.split('le="')[1].split('"')[0]
            buckets.append((float(bound), _delta(after, before, sample), bound))
    buckets.sort()
    total = buckets[-1][1] if buckets else 0
    for _, count, label in buckets:
        if total and count >= quantile * total:
            return label
    return "-"


def commit_figures(before: dict, after: dict) -> dict:
    if not after:
        return {}
    commits = _delta(after, before, "switch_commit_batch_size_count")
    batched = _delta(after, before, "switch_commit_batch_size_sum")
    commit_s = _delta(after, before, "switch_commit_duration_seconds_sum")
    commit_n = _delta(after, before, "switch_commit_duration_seconds_count")
    served = _delta(after, before, 'switch_request_duration_seconds_count{type="debit"}')
    served_s = _delta(after, before, 'switch_request_duration_seconds_sum{type="debit"}')
    return {
        "batches": commits, "requests": batched,
        "mean_batch": batched / commits if commits else None,
        "median_batch_le": _histogram_quantile(after, before, "switch_commit_batch_size", 0.5),
        "p99_batch_le": _histogram_quantile(after, before, "switch_commit_batch_size", 0.99),
        "commit_ms_mean": commit_s / commit_n * 1000 if commit_n else None,
        "commits_with_writes": commit_n,
        "switch_debit_ms_mean": served_s / served * 1000 if served else None,
        "commit_phase_ms_mean": {phase: _phase_ms_mean(before, after, phase, commit_n)
                                 for phase in COMMIT_PHASES},
    }


def _phase_ms_mean(before: dict, after: dict, phase: str, commits: float) -> float | None:
    """Mean ms per commit in one phase; None from a switch too old to export the phases
    (`--host`), not a false 0."""
    name = f'switch_commit_phase_seconds_sum{{phase="{phase}"}}'
    if not commits or name not in after:
        return None
    return _delta(after, before, name) / commits * 1000


# ------------------------------------------------------------------ accounts and credentials
def _names(tag: str, accounts: int, terminals: int):
    account_ids = [f"BENCH-{tag}-{i:07d}" for i in range(accounts)]
    card_ids = [f"{tag}{i:08X}" for i in range(accounts)]
    terminal_ids = [f"bench-{tag}-pos-{t}" for t in range(terminals)]
    return account_ids, card_ids, terminal_ids


def _account_messages(tag: str, index: int, account: str, card: str) -> tuple[dict, dict, dict]:
    """open_account, issue_card and credit (the starting balance) for one account."""
    return ({"t": "open_account", "account": account, "school": SCHOOL, "kind": "person",
             "id_last6": "123456", "holder": "bench", "id": f"{tag}-open-{index}"},
            {"t": "issue_card", "account": account, "card": card, "id": f"{tag}-card-{index}"},
            {"t": "credit", "account": account, "amount": START_BALANCE_FEN, "source": "bench",
             "id": f"{tag}-fund-{index}"})


def _credential_messages(tag: str, terminal_ids: list) -> list[dict]:
    return [{"t": "add_credential", "who": who, "role": "terminal", "school": SCHOOL,
             "kind": "pos", "id": f"{tag}-cred-{who}"} for who in terminal_ids]


async def _pipelined(client, messages: list[dict]) -> list[dict]:
    """Every message's reply, in order, each `ok`. Those answered `busy` are sent again: the
    admin credential's request budget (docs/PROTOCOL.md §1.5) is what a fast machine's
    provisioning meets first."""
    from switch.shell.client import pipeline_through_busy
    replies = await pipeline_through_busy(client, messages, PROVISION_PIPELINE_DEPTH)
    for message, reply in zip(messages, replies):
        if reply.get("code") != "ok":
            raise RuntimeError(f"provisioning {message} answered {reply}")
    return replies


async def _provision_over_the_wire(address, admin_key: bytes, tag: str, args):
    from switch.shell.client import Client
    account_ids, card_ids, terminal_ids = _names(tag, args.accounts, args.terminals)
    messages = [_account_messages(tag, index, account, card)
                for index, (account, card) in enumerate(zip(account_ids, card_ids))]
    async with await Client.connect(*address, "admin", admin_key) as admin:
        for step in range(3):   # every open, then every card, then every credit
            await _pipelined(admin, [triple[step] for triple in messages])
        replies = await _pipelined(admin, _credential_messages(tag, terminal_ids))
    return card_ids, list(zip(terminal_ids, [reply["key"] for reply in replies]))


def provision(address, admin_key: bytes, tag: str, args):
    import trio
    return trio.run(_provision_over_the_wire, address, admin_key, tag, args)


def prebuild(data_dir: pathlib.Path, tag: str, args):
    """Write the accounts, cards, funding and terminals with the switch's own request code
    (dispatch.execute as the admin), committing in big batches, before the switch starts."""
    from switch.ledger import dispatch
    from switch.clock import SystemClock
    from switch.config import load_config
    from switch.cli.datadir import open_data_dir
    from switch.ledger import Ledger

    store = open_data_dir(str(data_dir))
    try:
        ledger = Ledger(store, load_config(args.config), SystemClock())
        admin = ledger.credential("admin")

        def commit():
            ledger.take_effects()  # nobody is connected to be told
            store.commit_now()

        def execute(message):
            reply = dispatch.execute(ledger, admin, message)
            if reply.get("code") != "ok":
                raise RuntimeError(f"prebuilding {message} answered {reply}")
            return reply

        account_ids, card_ids, terminal_ids = _names(tag, args.accounts, args.terminals)
        began = time.perf_counter()
        for index, (account, card) in enumerate(zip(account_ids, card_ids)):
            for message in _account_messages(tag, index, account, card):
                execute(message)
            if (index + 1) % PREBUILD_BATCH_ACCOUNTS == 0:
                commit()
                if (index + 1) % (10 * PREBUILD_BATCH_ACCOUNTS) == 0:
                    rate = (index + 1) / (time.perf_counter() - began)
                    print(f"  prebuilt {index + 1} accounts ({rate:.0f}/s)", flush=True)
        keys = [execute(message)["key"] for message in _credential_messages(tag, terminal_ids)]
        commit()
    finally:
        store.close()
    return card_ids, list(zip(terminal_ids, keys))


def _prebuilt_cache_key(tag: str, args) -> str:
    """Everything the prebuilt books depend on: the seed's tag, the sizes, the configuration
    and the switch's own code (another tree's data dir may not be this tree's layout)."""
    digest = hashlib.sha256(f"{tag} {args.accounts} {args.terminals}".encode())
    digest.update(pathlib.Path(args.config).read_bytes() if args.config else b"")
    digest.update(pathlib.Path(__file__).read_bytes())   # the accounts and ids it writes
    for path in sorted((REPO / "switch").rglob("*")):
        if path.suffix in (".py", ".pyx") and path.is_file():
            digest.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:24]


def prebuild_or_copy(data_dir: pathlib.Path, tag: str, args):
    """prebuild(), or with --prebuilt-cache a copy of the same books prebuilt before."""
    if not args.prebuilt_cache:
        return prebuild(data_dir, tag, args)
    cache = pathlib.Path(args.prebuilt_cache)
    cache.mkdir(parents=True, exist_ok=True)
    entry = cache / _prebuilt_cache_key(tag, args)
    _, card_ids, _ = _names(tag, args.accounts, args.terminals)
    saved = entry / "terminals.json"
    if saved.exists() and time.time() - saved.stat().st_mtime > PREBUILT_CACHE_AGE_MAX_S:
        # Old books would have their remembered ids swept during the measured window.
        shutil.rmtree(entry, ignore_errors=True)
    if not saved.exists():
        card_ids, terminals = prebuild(data_dir, tag, args)
        # Each run writes its own partial entry and renames it whole: a run sharing the
        # cache never sees books without their keys, and the first rename wins.
        partial = pathlib.Path(tempfile.mkdtemp(prefix=entry.name + ".partial-", dir=cache))
        try:
            _copy_books(data_dir, partial / "data")
            _write_terminal_keys(partial / "terminals.json", terminals)
            partial.rename(entry)
            print(f"prebuilt books kept in {entry}", flush=True)
        except OSError:
            print(f"prebuilt books not kept: {entry} was written by another run", flush=True)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
        return card_ids, terminals
    _copy_books(entry / "data", data_dir)
    kept = json.loads(saved.read_text())
    print(f"prebuilt books copied from {entry}", flush=True)
    return card_ids, [(who, bytes.fromhex(key)) for who, key in kept["terminals"]]


def _copy_books(source: pathlib.Path, target: pathlib.Path) -> None:
    """A data dir and the master key file kept beside it, on the disk before the server
    starts: the copy's pages would otherwise still be dirty in the page cache, and the
    switch's first fsync of its data file would write them all (1.6 GB of books at
    1,000,000 accounts) inside the measured run, against the larger books only."""
    shutil.copytree(source, target)
    shutil.copy2(_master_key_path(source), _master_key_path(target))
    for path in [*target.rglob("*"), _master_key_path(target)]:
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())


MIB = 1 << 20


def pregrow_data_file(data_dir: pathlib.Path, mebibytes: int) -> float:
    """Write `mebibytes` MiB of zeros past the end of the data dir's LMDB file and fsync
    them; the seconds it took. Only on a data dir no switch has open: LMDB's own writes past
    its last page would race these.

    The switch's data file grows as it serves (about 0.7 KB a debit in a run's first
    minutes: the journal, the remembered ids, the accounts' log until a round ends), and
    each new page of it is a page the page cache takes. On the benchmark machine (a virtual
    machine that hands memory its guest frees back to the host: a likely cause, not a
    proven one) such a page costs from 0.3 to 13 µs a KB depending on the guest's memory at
    the time (bench/RESULTS.md, 2026-12-05 01:10), and a run that first copies 1.6 GB of
    books (a million accounts) meets the dear end of it more than one that copies 14 MB.
    Written here, before the server starts and outside the measured window, those pages are
    in the page cache when LMDB writes its next pages over them. That measures what the
    growth costs a run, as a diagnostic: the switch grows its file in service as well (after
    `--init` or a restore, and more at a million accounts, whose write-back rounds and so
    their logs are longer), so a figure made with grown files is not the switch's own.

    LMDB knows its end by its meta pages, not by the file's size: bytes past its last page
    are not read by it, by `audit`, or by `backup` (a compacting copy)."""
    path = pathlib.Path(data_dir) / STORE_DIR / "data.mdb"
    began = time.perf_counter()
    zeros = bytes(MIB)
    with open(path, "r+b") as handle:
        handle.seek(0, os.SEEK_END)
        for _ in range(mebibytes):
            handle.write(zeros)
        handle.flush()
        os.fsync(handle.fileno())
    return time.perf_counter() - began


def _master_key_path(data_dir: pathlib.Path) -> pathlib.Path:
    """The master key file is kept beside its data dir, never inside it."""
    from switch.config.masterkey import KEY_SUFFIX
    return data_dir.with_name(data_dir.name + KEY_SUFFIX)


def _write_terminal_keys(path: pathlib.Path, terminals) -> None:
    """Terminal keys are secrets, even a benchmark's: mode 0600."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump({"terminals": [[who, key.hex()] for who, key in terminals]}, handle)


def fresh_credentials(tag: str, args):
    """Card ids, and terminal ids with fresh keys, for a server with no books of its own."""
    _, card_ids, terminal_ids = _names(tag, args.accounts, args.terminals)
    return card_ids, [(who, os.urandom(limits.credential_key_size_bytes))
                      for who in terminal_ids]


def bare_credentials(path: pathlib.Path, tag: str, args):
    """Terminal ids and fresh keys for the bare server, in the file it reads (mode 0600)."""
    card_ids, terminals = fresh_credentials(tag, args)
    _write_terminal_keys(path, terminals)
    return card_ids, terminals


# ------------------------------------------------------------------ connections
class Connection:
    """One signed-on terminal connection, driven by the load loop."""

    __slots__ = ("index", "sock", "fd", "session", "decoder", "sent_at", "unsent", "next_id",
                 "request_frame", "receive", "writing")

    def __init__(self, index: int, sock: socket.socket, session: ClientSession,
                 decoder: FrameDecoder):
        self.index = index
        self.sock = sock
        self.fd = sock.fileno()
        self.session = session
        self.decoder = decoder
        self.sent_at: dict[int, float] = {}
        self.unsent = b""
        self.next_id = index * ID_STRIDE
        self.request_frame = session.request_frame
        self.receive = session.receive
        self.writing = False


def connect_all(address, terminals, count: int, broken: Counter) -> list[Connection]:
    """Sign on `count` connections, CONNECT_BATCH hellos at a time; failures are counted."""
    connections = []
    deadline = time.monotonic() + CONNECT_TIMEOUT_S
    for first in range(0, count, CONNECT_BATCH):
        if time.monotonic() > deadline:
            broken["connect: phase timed out"] += count - first
            break
        pending = []
        for index in range(first, min(count, first + CONNECT_BATCH)):
            who, key = terminals[index % len(terminals)]
            session = ClientSession(who, key)
            try:
                sock = socket.create_connection(address, timeout=SOCKET_TIMEOUT_S)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.sendall(session.hello_frame(time.time_ns() // 1_000_000))
            except OSError as error:
                broken[f"connect: {type(error).__name__}"] += 1
                continue
            pending.append((index, sock, session))
        for index, sock, session in pending:
            decoder = FrameDecoder()
            try:
                payloads = []
                while not payloads:
                    data = sock.recv(limits.receive_size_bytes)
                    if not data:
                        raise ConnectionResetError("closed during hello")
                    payloads = decoder.feed(data)
                session.receive_hello_reply(payloads[0])
            except (OSError, ProtocolError) as error:
                broken[f"hello: {type(error).__name__} {error}"[:80]] += 1
                sock.close()
                continue
            sock.setblocking(False)
            connections.append(Connection(index, sock, session, decoder))
    return connections


# ------------------------------------------------------------------ the load loop
class Results:
    def __init__(self, seconds_total: float):
        self.codes: Counter = Counter()
        self.broken: Counter = Counter()
        self.latencies_s = array("d")        # of requests sent (or meant to be) in the window
        self.timeline = [0] * (int(math.ceil(seconds_total + DRAIN_TIMEOUT_S)) + 2)
        self.ok_in_window = 0
        self.sent_in_window = 0
        self.replies_after_window = 0
        self.unanswered = 0
        self.unanswered_latencies_s = array("d")
        self.cpu = {}


class LoadLoop:
    """Closed or open loop over non-blocking sockets and one epoll."""

    def __init__(self, connections: list[Connection], cards: list[str], args, server_pid):
        self.connections = {connection.fd: connection for connection in connections}
        self.live = list(connections)
        self.cards = cards
        self.args = args
        self.server_pid = server_pid
        self.rng = random.Random(args.seed)
        self.epoll = select.epoll()
        for connection in connections:
            self.epoll.register(connection.fd, select.EPOLLIN)
        self.results = Results(args.warmup + args.seconds)
        self.outstanding = 0

    # -------------------------------------------------------------- sending
    def _frames(self, connection: Connection, count: int, sent_at: float) -> bytes:
        cards = self.cards
        card_count = len(cards)
        amount_max = self.args.amount_max
        random_value = self.rng.random
        request_frame = connection.request_frame
        stamps = connection.sent_at
        frames = []
        for _ in range(count):
            connection.next_id += 1
            seq, frame = request_frame({"t": "debit", "card": cards[int(random_value() * card_count)],
                                        "amount": 1 + int(random_value() * amount_max),
                                        "id": connection.next_id})
            stamps[seq] = sent_at
            frames.append(frame)
        self.outstanding += count
        return frames[0] if count == 1 else b"".join(frames)

    def _send(self, connection: Connection, data: bytes) -> None:
        if connection.unsent:
            connection.unsent += data
            if len(connection.unsent) > CLIENT_UNSENT_BYTES_MAX:
                self._drop(connection, "client send backlog")
            return
        try:
            sent = connection.sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError as error:
            self._drop(connection, type(error).__name__)
            return
        if sent < len(data):
            connection.unsent = data[sent:]
            if not connection.writing:
                connection.writing = True
                self.epoll.modify(connection.fd, select.EPOLLIN | select.EPOLLOUT)

    def _flush(self, connection: Connection) -> None:
        try:
            sent = connection.sock.send(connection.unsent)
        except BlockingIOError:
            return
        except OSError as error:
            self._drop(connection, type(error).__name__)
            return
        connection.unsent = connection.unsent[sent:]
        if not connection.unsent:
            connection.writing = False
            self.epoll.modify(connection.fd, select.EPOLLIN)

    def _drop(self, connection: Connection, reason: str) -> None:
        if self.connections.pop(connection.fd, None) is None:
            return
        self.results.broken[reason] += 1
        self._count_unanswered(connection)
        self.live.remove(connection)
        try:
            self.epoll.unregister(connection.fd)
        except OSError:
            pass
        connection.sock.close()

    def _count_unanswered(self, connection: Connection, now: float | None = None) -> None:
        results = self.results
        now = time.perf_counter() if now is None else now
        for sent_at in connection.sent_at.values():
            if sent_at >= self.window_start:
                results.unanswered += 1
                results.unanswered_latencies_s.append(now - sent_at)
        self.outstanding -= len(connection.sent_at)
        connection.sent_at.clear()

    # -------------------------------------------------------------- receiving
    def _receive(self, connection: Connection, now: float) -> int:
        """Replies found in one receive; returns how many answered our requests."""
        try:
            data = connection.sock.recv(RECEIVE_SIZE_BYTES)
        except BlockingIOError:
            return 0
        except OSError:
            data = b""
        if not data:
            self._drop(connection, "closed by the server")
            return 0
        results = self.results
        codes = results.codes
        stamps = connection.sent_at
        receive = connection.receive
        window_start = self.window_start
        latencies = results.latencies_s
        answered = ok = 0
        try:
            for payload in connection.decoder.feed(data):
                message = receive(payload)
                sent_at = stamps.pop(message.get("re"), None)
                if sent_at is None:
                    codes[f"unexpected {message.get('t')}/{message.get('code')}"] += 1
                    continue
                answered += 1
                code = message.get("code")
                codes[code] += 1
                if code == "ok":
                    ok += 1
                if sent_at >= window_start:
                    latencies.append(now - sent_at)
        except ProtocolError as error:
            self.outstanding -= answered
            self._drop(connection, f"protocol: {error.code}")
            return 0
        self.outstanding -= answered
        if ok:
            second = int(now - self.load_start)
            if second < len(results.timeline):
                results.timeline[second] += ok
            if window_start <= now < self.window_end:
                results.ok_in_window += ok
            elif now >= self.window_end:
                results.replies_after_window += ok
        return answered

    # -------------------------------------------------------------- the loop
    def run(self) -> Results:
        args = self.args
        results = self.results
        open_loop = args.rate > 0
        perf = time.perf_counter
        poll = self.epoll.poll
        connections = self.connections
        self.load_start = now = perf()
        self.window_start = self.load_start + args.warmup
        self.window_end = self.window_start + args.seconds
        drain_deadline = None
        phase = "warmup"
        start_sample = None
        sending = True
        mean_gap_s = 1.0 / args.rate if open_loop else 0.0
        next_send = self.load_start
        expovariate = self.rng.expovariate
        choose = self.rng.random
        if not open_loop:
            for connection in list(self.live):
                self._send(connection, self._frames(connection, args.depth, now))
        while True:
            now = perf()
            if phase == "warmup" and now >= self.window_start:
                start_sample = CpuSample(self.server_pid)
                phase = "window"
            if phase == "window" and now >= self.window_end:
                results.cpu = cpu_between(start_sample, CpuSample(self.server_pid))
                phase = "drain"
                sending = False
                drain_deadline = now + DRAIN_TIMEOUT_S
            if phase == "drain" and (self.outstanding <= 0 or now >= drain_deadline):
                break
            if not self.live:
                if phase != "drain":
                    results.cpu = cpu_between(start_sample or CpuSample(self.server_pid),
                                              CpuSample(self.server_pid))
                break
            if open_loop and sending:
                touched = {}
                live = self.live
                while next_send <= now:
                    connection = live[int(choose() * len(live))]
                    frame = self._frames(connection, 1, next_send)
                    if next_send >= self.window_start:
                        results.sent_in_window += 1
                    touched.setdefault(connection, []).append(frame)
                    next_send += expovariate(1.0) * mean_gap_s
                for connection, frames in touched.items():
                    self._send(connection, b"".join(frames))
                # epoll waits whole milliseconds: closer than that to the next send, spin.
                wait_s = next_send - perf()
                timeout = math.floor(wait_s * 1000) / 1000 if wait_s >= 0.001 else 0
            else:
                boundary = self.window_start if phase == "warmup" else (
                    self.window_end if phase == "window" else drain_deadline)
                timeout = min(POLL_INTERVAL_MAX_S, max(0.0, boundary - now))
            if open_loop and phase != "drain":
                boundary = self.window_start if phase == "warmup" else self.window_end
                timeout = min(timeout, max(0.0, boundary - now))
            events = poll(timeout)
            if not events:
                continue
            now = perf()
            for fd, mask in events:
                connection = connections.get(fd)
                if connection is None:
                    continue
                if mask & select.EPOLLOUT:
                    self._flush(connection)
                    if fd not in connections:
                        continue
                if mask & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR):
                    answered = self._receive(connection, now)
                    if answered and sending and not open_loop:
                        self._send(connection, self._frames(connection, answered, now))
        end = perf()
        for connection in list(self.live):
            self._count_unanswered(connection, end)
        return results

    def close(self) -> None:
        for connection in self.live:
            connection.sock.close()
        self.live = []
        self.epoll.close()


# ------------------------------------------------------------------ the C load loop
def c_compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") \
        or shutil.which("clang")


def _write_spec(path: pathlib.Path, terminals, cards) -> None:
    """The C client's terminals and cards (its --spec): the keys readable by this user only."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.writelines(f"terminal {who} {key.hex()}\n" for who, key in terminals)
        handle.writelines(f"card {card}\n" for card in cards)


def build_client(binary: pathlib.Path) -> pathlib.Path:
    """Compile bench/loadgen/loadgen.c into `binary`."""
    compiler = c_compiler()
    if not compiler:
        raise RuntimeError("the C load client needs a C compiler (cc): install one, or run "
                           "with --client python")
    binary.parent.mkdir(parents=True, exist_ok=True)
    # Built beside and renamed: a concurrent run never executes a half-written binary.
    partial = binary.with_name(f"{binary.name}.{os.getpid()}")
    completed = subprocess.run([compiler, *CLIENT_CFLAGS, "-o", str(partial),
                                str(CLIENT_SOURCE), "-lm"], capture_output=True, text=True,
                               timeout=CLIENT_BUILD_TIMEOUT_S)
    if completed.returncode != 0:
        partial.unlink(missing_ok=True)
        raise RuntimeError(f"building {shown_path(CLIENT_SOURCE)} failed:\n"
                           f"{completed.stderr.strip()}")
    os.replace(partial, binary)
    return binary


def client_binary() -> pathlib.Path:
    """The C load client, compiled again when its source is newer than the binary."""
    if (CLIENT_BINARY.exists()
            and CLIENT_BINARY.stat().st_mtime >= CLIENT_SOURCE.stat().st_mtime):
        return CLIENT_BINARY
    return build_client(CLIENT_BINARY)


def _read_doubles(path: pathlib.Path) -> array:
    values = array("d")
    values.frombytes(path.read_bytes())
    return values


def c_load(args, address, cards, terminals, server_pid) -> tuple[int, Results]:
    """Connect, sign on and load with the C client; its counts and latencies as Results."""
    binary = client_binary()
    with tempfile.TemporaryDirectory(prefix="loadgen-") as directory:
        directory = pathlib.Path(directory)
        spec = directory / "spec"
        _write_spec(spec, terminals, cards)
        command = [str(binary), "--host", socket.gethostbyname(address[0]),
                   "--port", str(address[1]), "--spec", str(spec),
                   "--connections", str(args.connections), "--depth", str(args.depth),
                   "--rate", repr(args.rate), "--warmup", repr(args.warmup),
                   "--seconds", repr(args.seconds), "--drain", repr(DRAIN_TIMEOUT_S),
                   "--amount-max", str(args.amount_max), "--seed", str(args.seed),
                   "--server-pid", str(server_pid or 0), "--requests", str(args.requests),
                   "--latencies", str(directory / "latencies"),
                   "--unanswered", str(directory / "unanswered")]
        # stderr (its progress) goes straight to ours; the C program bounds its own run.
        completed = subprocess.run(command, stdout=subprocess.PIPE, text=True)
        if completed.returncode != 0:
            raise RuntimeError(f"the C load client exited {completed.returncode}")
        results = Results(args.warmup + args.seconds)
        connected = 0
        for line in completed.stdout.splitlines():
            name, _, rest = line.partition(" ")
            if name == "connected":
                connected = int(rest)
            elif name in ("code", "broken"):
                count, _, what = rest.partition(" ")
                getattr(results, "codes" if name == "code" else "broken")[what] += int(count)
            elif name in ("ok_in_window", "sent_in_window", "unanswered",
                          "replies_after_window"):
                setattr(results, name, int(rest))
            elif name == "timeline":
                results.timeline = [int(n) for n in rest.split()]
            elif name == "cpu":
                values = [None if v == "-" else float(v) for v in rest.split()]
                results.cpu = dict(zip(CPU_FIELDS, values))
        results.latencies_s = _read_doubles(directory / "latencies")
        results.unanswered_latencies_s = _read_doubles(directory / "unanswered")
    return connected, results


def python_load(args, address, cards, terminals, server_pid) -> tuple[int, Results]:
    """Connect, sign on and load from this process (the epoll loop above)."""
    broken: Counter = Counter()
    began = time.perf_counter()
    connections = connect_all(address, terminals, args.connections, broken)
    print(f"signed on {len(connections)} connections in {time.perf_counter() - began:.1f} s",
          flush=True)
    if not connections:
        return 0, Results(args.warmup + args.seconds)
    loop = LoadLoop(connections, cards, args, server_pid)
    try:
        results = loop.run()
    finally:
        loop.close()
    results.broken.update(broken)
    return len(connections), results


# ------------------------------------------------------------------ summaries
def _percentile(ordered, fraction: float) -> float:
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def latency_summary(latencies_s, unanswered_s=()) -> dict:
    """Percentiles (ms), a percentile curve and a log-binned histogram for plots.

    Requests never answered are counted at the time waited when the run ended (a lower
    bound), so they pull the high percentiles up rather than vanish.
    """
    ordered = sorted(list(latencies_s) + list(unanswered_s))
    count = len(ordered)
    ms = 1000.0
    if not count:
        return {"count": 0}
    summary = {"count": count, "mean": sum(ordered) / count * ms}
    for name, fraction in (("p50", 0.50), ("p90", 0.90), ("p99", 0.99), ("p999", 0.999)):
        summary[name] = _percentile(ordered, fraction) * ms
    summary["max"] = ordered[-1] * ms
    summary["curve"] = [[p, _percentile(ordered, p / 100) * ms] for p in LATENCY_PERCENTILES]
    low = math.floor(math.log10(max(HISTOGRAM_FLOOR_MS, ordered[0] * ms)))
    high = math.ceil(math.log10(max(ordered[-1] * ms, HISTOGRAM_FLOOR_MS * 10)))
    edges_ms = [10 ** (low + i / HISTOGRAM_BINS_PER_DECADE)
                for i in range((high - low) * HISTOGRAM_BINS_PER_DECADE + 1)]
    positions = [bisect_left(ordered, edge / ms) for edge in edges_ms]
    summary["histogram"] = {"edges_ms": edges_ms,
                            "counts": [b - a for a, b in zip(positions, positions[1:])]}
    return summary


def account_counts(parser, text: str) -> list[int]:
    """`--accounts` of the scripts that compare sizes of books: comma-separated counts, each
    at least 1, else the parser's usage error naming the option."""
    try:
        counts = [int(n) for n in text.split(",")]
    except ValueError:
        parser.error(f"--accounts: comma-separated counts, not {text!r}")
    if any(n < 1 for n in counts):
        parser.error("--accounts: every count at least 1")
    return counts


def shown_path(path) -> str:
    """A path as committed results show it: relative to the repository's root, or, outside
    the repository, its name alone (a machine's own paths mean nothing to a reader)."""
    # abspath, not resolve: .venv/bin/python is a symlink out of the repository.
    absolute = pathlib.Path(os.path.abspath(path))
    try:
        return str(absolute.relative_to(REPO))
    except ValueError:
        return absolute.name


def _command_line(argv, script: str = __file__) -> str:
    """The command that reproduces this run, from the repository's root, with every
    absolute path among its arguments (alone or as `--option=PATH`) as `shown_path` shows
    it: the JSON a run writes is committed, and a machine's own paths mean nothing there."""
    return shlex.join([shown_path(sys.executable), shown_path(script),
                       *map(_shown_word, argv)])


def _shown_word(word: str) -> str:
    option, equals, value = word.partition("=")
    if equals and option.startswith("--") and value.startswith("/"):
        return f"{option}={shown_path(value)}"
    return shown_path(word) if word.startswith("/") else word


def _report(args, result: dict) -> None:
    latency = result["latency_ms"]
    cpu = result["cpu"]
    print(f"server           {result['system']} ({result['pinning']})")
    print(f"load client      {'bench/loadgen/loadgen.c' if args.client == 'c' else 'Python'}")
    print(f"connections      {result['connected']} of {args.connections} signed on")
    if args.rate > 0:
        print(f"offered          {args.rate:.0f} tx/s open loop (Poisson), "
              f"{result['sent_in_window']} requests meant for the window")
    else:
        print(f"depth            {args.depth} in flight per connection (closed loop)")
    print(f"duration         {args.seconds:.1f} s after {args.warmup:.1f} s warm-up")
    print(f"ok tx            {result['codes'].get('ok', 0)} ({result['ok_in_window']} within "
          f"the window)")
    print(f"tx/s             {result['tx_per_s']:.0f}")
    declines = {code: n for code, n in result["codes"].items() if code != "ok"}
    if declines:
        print(f"declined         {declines}")
    if result["broken"]:
        print(f"broken           {result['broken']}")
    if result["unanswered"]:
        print(f"unanswered       {result['unanswered']} (counted in the percentiles at the time "
              f"waited)")
    if latency.get("count"):
        origin = "intended send" if args.rate > 0 else "send"
        print(f"latency ms       p50 {latency['p50']:.2f}  p90 {latency['p90']:.2f}  "
              f"p99 {latency['p99']:.2f}  p99.9 {latency['p999']:.2f}  max {latency['max']:.2f}"
              f"  ({origin} to reply, {latency['count']} requests)")
    commit = result.get("commit") or {}
    if commit.get("batches"):
        print(f"commit batches   {commit['batches']:.0f} batches, {commit['requests']:.0f} "
              f"requests, mean {commit['mean_batch']:.1f} per batch, median <= "
              f"{commit['median_batch_le']}, p99 <= {commit['p99_batch_le']} "
              f"(switch_commit_batch_size, whole run)")
    if commit.get("commit_ms_mean") is not None:
        print(f"commit time      mean {commit['commit_ms_mean']:.2f} ms per write transaction "
              f"+ fsync ({commit['commits_with_writes']:.0f} with writes)")
        phases = commit.get("commit_phase_ms_mean") or {}
        if all(value is not None for value in phases.values()):
            print(f"commit phases    mean {phases['to_worker']:.2f} ms to the worker thread, "
                  f"{phases['write']:.2f} ms writing, {phases['to_loop']:.2f} ms back to the loop "
                  f"(switch_commit_phase_seconds)")
    if commit.get("switch_debit_ms_mean") is not None:
        print(f"switch latency   mean {commit['switch_debit_ms_mean']:.2f} ms frame in to reply "
              f"out (switch_request_duration_seconds, debit)")
    if cpu.get("elapsed_s"):
        parts = []
        if cpu.get("server_cpu_s") is not None:
            parts.append(f"server {cpu['server_cpu_s'] / cpu['elapsed_s'] * 100:.0f}%")
        spins = args.rate > 0 and args.client == "python"
        parts.append(f"load client {cpu['load_cpu_s'] / cpu['elapsed_s'] * 100:.0f}%"
                     + (" (spins between sends)" if spins else ""))
        if cpu.get("kernel_threads_cpu_s") is not None:
            durable = args.server == "switch"   # the only server here that fsyncs
            parts.append(f"kernel threads {cpu['kernel_threads_cpu_s'] / cpu['elapsed_s'] * 100:.0f}%"
                         + (" (the writeback of the server's fsync among them)" if durable else ""))
        others = other_programs_seconds(cpu)
        if others is not None:
            parts.append(f"everything else {others / cpu['elapsed_s'] * 100:.0f}%")
        print(f"cpu              {', '.join(parts)} of one core over the window")
    if result.get("server_cpu_us_per_tx") is not None:
        what = "per authorization" if args.server == "switch" else "per reply"
        print(f"server cpu/tx    {result['server_cpu_us_per_tx']:.1f} µs {what} "
              f"(utime+stime of the server process over the window / ok replies in it)")
    if result.get("load_cpu_us_per_tx") is not None:
        print(f"client cpu/tx    {result['load_cpu_us_per_tx']:.1f} µs per reply (the load "
              f"client's own utime+stime over the window / ok replies in it)")
    if args.rate <= 0 and (result.get("load_cpu_percent") or 0) > CLIENT_BOUND_PERCENT:
        print(f"note             the load client used {result['load_cpu_percent']:.0f}% of its "
              f"core: it may be what limits this run, not the server")


def _audit(data_dir) -> dict:
    try:
        completed = subprocess.run([sys.executable, "-m", "switch", "audit", "--data",
                                    str(data_dir)], capture_output=True, text=True, cwd=REPO,
                                   timeout=AUDIT_TIMEOUT_S)
        text, code = (completed.stdout + completed.stderr).strip(), completed.returncode
    except subprocess.TimeoutExpired:
        text, code = f"timed out after {AUDIT_TIMEOUT_S:.0f} s", -1
    print(f"audit            exit {code}: " + text.replace("\n", "\n                 "))
    return {"exit": code, "text": text}


# ------------------------------------------------------------------ runs
def run_load(args, address, cards, terminals, server_pid) -> dict:
    load = c_load if args.client == "c" else python_load
    with AnonymousPeak(server_pid) as memory:
        connected, results = load(args, address, cards, terminals, server_pid)
    if not connected:
        raise RuntimeError(f"no connection signed on: {dict(results.broken)}")
    cpu = results.cpu
    ok_in_window = results.ok_in_window
    # A bounded run's window ends when its last reply comes: its own length, not --seconds.
    window_s = cpu.get("elapsed_s") if args.requests and cpu.get("elapsed_s") else args.seconds
    result = {
        "client": args.client,
        "connected": connected, "ok_in_window": ok_in_window,
        "tx_per_s": ok_in_window / window_s, "sent_in_window": results.sent_in_window,
        "offered_per_s": args.rate if args.rate > 0 else None,
        "codes": dict(results.codes), "broken": dict(results.broken),
        "unanswered": results.unanswered,
        "latency_ms": latency_summary(results.latencies_s, results.unanswered_latencies_s),
        "timeline_ok_per_s": results.timeline[:int(math.ceil(args.warmup + args.seconds))],
        "cpu": cpu,
        "server_cpu_us_per_tx": (cpu["server_cpu_s"] / ok_in_window * 1e6
                                 if cpu.get("server_cpu_s") is not None and ok_in_window
                                 else None),
        "load_cpu_percent": (cpu["load_cpu_s"] / cpu["elapsed_s"] * 100
                             if cpu.get("elapsed_s") else None),
        # The client's own cost per reply: what says how far beyond this server it could go.
        "load_cpu_us_per_tx": (cpu["load_cpu_s"] / ok_in_window * 1e6
                               if cpu.get("load_cpu_s") is not None and ok_in_window else None),
        "server_anon_peak_mib": memory.peak_kib / 1024 if memory.peak_kib else None,
    }
    return result


def run_idle(args, address, terminals, server_pid) -> dict:
    memory_before = process_memory_kib(server_pid) if server_pid else {}
    broken: Counter = Counter()
    began = time.perf_counter()
    connections = connect_all(address, terminals, args.connections, broken)
    connect_s = time.perf_counter() - began
    print(f"signed on {len(connections)} connections in {connect_s:.1f} s; holding them idle "
          f"for {args.hold:.0f} s", flush=True)
    samples = []
    try:
        deadline = time.monotonic() + args.hold
        while time.monotonic() < deadline:
            time.sleep(IDLE_SAMPLE_INTERVAL_S)
            if server_pid:
                samples.append(process_memory_kib(server_pid).get("VmRSS", 0))
        # Still signed on at the end? A closed socket reads b"" at once.
        closed = 0
        for connection in connections:
            try:
                if connection.sock.recv(1, socket.MSG_PEEK) == b"":
                    closed += 1
            except BlockingIOError:
                pass
            except OSError:
                closed += 1
        memory_after = process_memory_kib(server_pid) if server_pid else {}
    finally:
        for connection in connections:
            connection.sock.close()
    rss_mib = max(samples) / 1024 if samples else None
    base_mib = memory_before.get("VmRSS", 0) / 1024 if memory_before else None
    result = {"connected": len(connections), "closed_by_server": closed, "connect_s": connect_s,
              "broken": dict(broken), "rss_before_mib": base_mib, "rss_held_mib": rss_mib,
              "hwm_mib": memory_after.get("VmHWM", 0) / 1024 if memory_after else None,
              "rss_per_connection_kib": ((rss_mib - base_mib) * 1024 / len(connections)
                                         if rss_mib is not None and connections else None)}
    print(f"connections      {len(connections)} signed on, {closed} closed by the server "
          f"while idle")
    if broken:
        print(f"broken           {dict(broken)}")
    if rss_mib is not None:
        print(f"server rss       {base_mib:.1f} MiB before, {rss_mib:.1f} MiB with them held "
              f"(VmRSS, max over the hold; {result['rss_per_connection_kib']:.1f} KiB each), "
              f"peak VmHWM {result['hwm_mib']:.1f} MiB")
    return result


def _check(args) -> str | None:
    if args.connections < 1 or args.seconds <= 0 or args.accounts < 1 or args.warmup < 0:
        return "connections, seconds and accounts must be positive, warmup not negative"
    if args.depth < 1 or args.rate < 0:
        return "depth must be positive, rate not negative"
    if not 1 <= args.terminals <= PROVISION_PIPELINE_DEPTH:
        return f"--terminals: 1..{PROVISION_PIPELINE_DEPTH}"
    if args.host is not None and (args.port is None or args.data is None):
        return "--host needs --port and --data (for admin.key)"
    if args.host is not None and (args.prebuild or args.server != "switch"):
        return "--prebuild and --server start a server: not with --host"
    if args.prebuilt_cache and not (args.prebuild and args.seed is not None):
        return "--prebuilt-cache needs --prebuild and --seed (the cache is per seed)"
    if args.pregrow_mb < 0 or (args.pregrow_mb and not args.prebuild):
        return "--pregrow-mb: a count of MiB, with --prebuild (it grows the books' data file)"
    if args.requests < 0 or (args.requests and args.client != "c"):
        return "--requests: a positive count, with the C client"
    return None


def _stop_on_sigterm(signum, frame):
    raise SystemExit(128 + signum)   # so `finally` stops what we started


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parser().parse_args(argv)
    problem = _check(args)
    if problem:
        print(problem, file=sys.stderr)
        return 2
    if args.depth > limits.requests_in_flight_max:
        print(f"--depth above the switch's in-flight cap ({limits.requests_in_flight_max}) "
              f"only measures its backpressure", file=sys.stderr)
    if args.seed is None:
        args.seed = random.randrange(2**32)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    file_limit = _raise_file_limit()
    if args.connections + 64 > file_limit:
        print(f"--connections {args.connections} needs more descriptors than RLIMIT_NOFILE "
              f"({file_limit})", file=sys.stderr)
        return 2
    tag = f"{random.Random(args.seed).getrandbits(32):08X}"
    existing = args.host is not None
    temporary = None
    server = None
    result = {"label": args.label or args.server,
              "system": "switch" if existing else args.server,
              "mode": "idle" if args.idle else ("open" if args.rate > 0 else "closed"),
              "command": _command_line(argv), "connections": args.connections,
              "depth": args.depth, "rate": args.rate, "seconds": args.seconds,
              "warmup_s": args.warmup, "accounts": args.accounts, "terminals": args.terminals,
              "seed": args.seed, "prebuilt": args.prebuild, "started_at": time.time()}
    try:
        server_pid = args.server_pid
        if existing:
            data_dir = pathlib.Path(args.data)
            address, metrics_address = (args.host, args.port), args.metrics
            pinning = "server as it runs"
        else:
            temporary = pathlib.Path(tempfile.mkdtemp(prefix="switch-bench-", dir=args.workdir))
            data_dir = temporary / "data"
            # A bare server or the responder ends itself this long after the run should have.
            lifetime_s = str(args.warmup + args.seconds + args.hold + 600)
            if args.server in BARE_SERVERS:
                credentials_path = temporary / "credentials.json"
                cards, terminals = bare_credentials(credentials_path, tag, args)
                command = [sys.executable, str(REPO / "bench" / "bare_server.py"),
                           "--credentials", str(credentials_path), "--listen", "127.0.0.1:0",
                           "--loop", BARE_SERVERS[args.server], "--lifetime", lifetime_s]
                server = ServerProcess(command, temporary, args.server, args,
                                       wants_metrics=False)
            elif args.server == "responder":
                cards, terminals = fresh_credentials(tag, args)
                spec = temporary / "responder.spec"
                _write_spec(spec, terminals, cards[:1])
                command = [str(client_binary()), "--respond", "--spec", str(spec),
                           "--host", "127.0.0.1", "--port", "0", "--lifetime", lifetime_s]
                server = ServerProcess(command, temporary, args.server, args,
                                       wants_metrics=False)
            else:
                if args.prebuild:
                    began = time.perf_counter()
                    cards, terminals = prebuild_or_copy(data_dir, tag, args)
                    result["provision_s"] = time.perf_counter() - began
                    if args.pregrow_mb:
                        result["pregrow_mb"] = args.pregrow_mb
                        result["pregrow_s"] = pregrow_data_file(data_dir, args.pregrow_mb)
                    print(f"prebuilt {args.accounts} accounts and cards, {args.terminals} "
                          f"terminals in {result['provision_s']:.1f} s (offline, switch code)",
                          flush=True)
                command = [sys.executable, "-m", "switch", "serve", "--init", "--data", str(data_dir),
                           "--listen", "127.0.0.1:0", "--metrics", "127.0.0.1:0",
                           "--log-level", args.log_level]
                if args.config:
                    command += ["--config", args.config]
                server = ServerProcess(command, temporary, "switch", args, wants_metrics=True)
            address, metrics_address = server.start()
            server_pid = server.pid
            pinning = f"server on {server.pinning}"
        if not args.no_pin and _cpu_count() >= 2:
            pinning += f", load on {_pin_self(args.load_cpu)}"
        result["pinning"] = pinning
        print(f"{result['system']} at {address[0]}:{address[1]}, seed {args.seed}", flush=True)
        if result["system"] == "switch" and not args.prebuild:
            admin_key = bytes.fromhex((data_dir / "admin.key").read_text().strip())
            began = time.perf_counter()
            cards, terminals = provision(address, admin_key, tag, args)
            result["provision_s"] = time.perf_counter() - began
            print(f"provisioned {args.accounts} accounts and cards, {args.terminals} terminals "
                  f"over the wire in {result['provision_s']:.1f} s", flush=True)

        if args.idle:
            result.update(run_idle(args, address, terminals, server_pid))
        else:
            before = scrape(metrics_address)
            result.update(run_load(args, address, cards, terminals, server_pid))
            result["commit"] = commit_figures(before, scrape(metrics_address))
            _report(args, result)
        if server:
            stopping = time.perf_counter()
            code = server.stop()
            result["server_stop_s"] = time.perf_counter() - stopping
            result["server_exit"] = code
            print(f"{server.name} stopped   exit {code} on SIGTERM")
            if code != 0:
                print(server.stderr_tail(), file=sys.stderr)
        if result["system"] == "switch" and not args.no_audit:
            result["audit"] = _audit(data_dir)
        if args.json_out:
            pathlib.Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
            pathlib.Path(args.json_out).write_text(json.dumps(result, indent=1))
        audit_ok = result.get("audit", {}).get("exit", 0) == 0
        return 0 if audit_ok and result.get("server_exit", 0) == 0 else 1
    finally:
        if server:
            server.kill()
        if temporary and not args.keep_data:
            shutil.rmtree(temporary, ignore_errors=True)
        elif temporary:
            print(f"data kept in {temporary}")


if __name__ == "__main__":
    sys.exit(main())
