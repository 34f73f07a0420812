"""End-to-end throughput of a real switch process: closed-loop pipelined debits from many
connections, with latency percentiles, the switch's commit batch sizes and a final audit.

    .venv/bin/python bench/e2e_load.py --connections 200 --seconds 10

By default it starts `python -m switch serve` on a fresh data dir, pinned to CPU 0 with the
load on CPU 1; with --host/--port/--data it loads a switch that is already running.
"""

import argparse
import os
import pathlib
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import trio  # noqa: E402

from switch import limits  # noqa: E402
from switch.client import Client  # noqa: E402
from switch.codec import ClientSession, FrameDecoder  # noqa: E402

SCHOOL = "WH"
START_BALANCE_FEN = 5_000_000            # far above what a run spends per account
PROVISION_PIPELINE_DEPTH = 64            # the switch's in-flight cap per connection
CONNECT_CONCURRENCY_MAX = 100            # hellos under way at once while connecting
SERVER_START_TIMEOUT_S = 30.0
CONNECT_TIMEOUT_S = 60.0
DRAIN_TIMEOUT_S = 10.0                   # after the run, for replies still in flight
SERVER_STOP_TIMEOUT_S = 30.0
HTTP_TIMEOUT_S = 5.0
ID_STRIDE = 10**12                       # request ids: connection index * stride + counter


def _host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--connections", type=int, default=200, help="load connections")
    parser.add_argument("--depth", type=int, default=4, help="debits in flight per connection")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured duration")
    parser.add_argument("--accounts", type=int, default=1000, help="accounts (one card each)")
    parser.add_argument("--terminals", type=int, default=20, help="terminal credentials")
    parser.add_argument("--amount-max", type=int, default=10, help="debits are 1..this fen")
    parser.add_argument("--seed", type=int, default=None, help="seed for cards and amounts")
    existing = parser.add_argument_group("an already running switch")
    existing.add_argument("--host", help="connect here instead of starting a switch")
    existing.add_argument("--port", type=int)
    existing.add_argument("--data", help="its data dir (admin.key, and audit at the end)")
    existing.add_argument("--metrics", type=_host_port, help="its metrics HOST:PORT")
    own = parser.add_argument_group("a switch started by this tool")
    own.add_argument("--server-cpu", type=int, default=0, help="CPU for the switch")
    own.add_argument("--load-cpu", type=int, default=1, help="CPU for this load client")
    own.add_argument("--no-pin", action="store_true", help="do not pin either process")
    own.add_argument("--config", help="switch configuration file")
    own.add_argument("--log-level", default="WARNING", help="switch log level")
    own.add_argument("--keep-data", action="store_true", help="keep the temporary data dir")
    return parser


# ------------------------------------------------------------------ processes and pinning
def _cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def _pin_self(cpu: int) -> str:
    try:
        os.sched_setaffinity(0, {cpu})
        return f"CPU {cpu}"
    except (AttributeError, OSError) as error:
        return f"unpinned ({error})"


def _raise_file_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class SwitchProcess:
    def __init__(self, data_dir: pathlib.Path, args):
        self.data_dir = data_dir
        self.args = args
        self.process = None
        self.pinning = "unpinned"
        self.stdout_path = data_dir.parent / "switch.out"
        self.stderr_path = data_dir.parent / "switch.err"

    def start(self) -> tuple[tuple[str, int], tuple[str, int]]:
        command = [sys.executable, "-m", "switch", "serve", "--data", str(self.data_dir),
                   "--listen", "127.0.0.1:0", "--metrics", "127.0.0.1:0",
                   "--log-level", self.args.log_level]
        if self.args.config:
            command += ["--config", self.args.config]
        taskset = shutil.which("taskset")
        pin = not self.args.no_pin and _cpu_count() >= 2
        if pin and taskset:
            command = [taskset, "-c", str(self.args.server_cpu)] + command
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
                    listening = _host_port(line[len("listening on "):])
                elif line.startswith("metrics on "):
                    metrics = _host_port(line[len("metrics on "):])
            if listening and metrics:
                return listening, metrics
            if self.process.poll() is not None:
                break
            time.sleep(0.02)
        self.kill()
        raise RuntimeError(f"switch did not start:\n{self.stderr_tail()}")

    def stderr_tail(self, lines: int = 20) -> str:
        text = self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def cpu_seconds(self) -> float:
        with open(f"/proc/{self.process.pid}/stat") as handle:
            fields = handle.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> int:
        """SIGTERM: the switch answers what is in flight, commits and exits 0 (§7)."""
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


# ------------------------------------------------------------------ metrics
async def scrape(address: tuple[str, int]) -> dict[str, float]:
    """Unlabelled and labelled samples of the switch's Prometheus text, by full name."""
    with trio.fail_after(HTTP_TIMEOUT_S):
        stream = await trio.open_tcp_stream(*address)
        async with stream:
            await stream.send_all(b"GET /metrics HTTP/1.0\r\nHost: switch\r\n\r\n")
            chunks = []
            while data := await stream.receive_some(65536):
                chunks.append(data)
    body = b"".join(chunks).partition(b"\r\n\r\n")[2].decode()
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


# ------------------------------------------------------------------ provisioning
def _names(tag: str, accounts: int, terminals: int):
    account_ids = [f"BENCH-{tag}-{i:06d}" for i in range(accounts)]
    card_ids = [f"{tag}{i:08X}" for i in range(accounts)]
    terminal_ids = [f"bench-{tag}-pos-{t}" for t in range(terminals)]
    return account_ids, card_ids, terminal_ids


async def _pipelined(client: Client, messages: list[dict]) -> list[dict]:
    replies = []
    for start in range(0, len(messages), PROVISION_PIPELINE_DEPTH):
        replies += await client.pipeline(messages[start:start + PROVISION_PIPELINE_DEPTH])
    for message, reply in zip(messages, replies):
        if reply.get("code") != "ok":
            raise RuntimeError(f"provisioning {message} answered {reply}")
    return replies


async def provision(address, admin_key: bytes, tag: str, args) -> tuple[list, list]:
    account_ids, card_ids, terminal_ids = _names(tag, args.accounts, args.terminals)
    async with await Client.connect(*address, "admin", admin_key) as admin:
        await _pipelined(admin, [
            {"t": "open_account", "account": account, "school": SCHOOL, "kind": "person",
             "id_last6": "123456", "holder": "bench", "id": f"{tag}-open-{i}"}
            for i, account in enumerate(account_ids)])
        await _pipelined(admin, [
            {"t": "issue_card", "account": account, "card": card, "id": f"{tag}-card-{i}"}
            for i, (account, card) in enumerate(zip(account_ids, card_ids))])
        await _pipelined(admin, [
            {"t": "credit", "account": account, "amount": START_BALANCE_FEN, "source": "bench",
             "id": f"{tag}-fund-{i}"} for i, account in enumerate(account_ids)])
        replies = await _pipelined(admin, [
            {"t": "add_credential", "who": who, "role": "terminal", "school": SCHOOL,
             "kind": "pos", "id": f"{tag}-cred-{who}"} for who in terminal_ids])
    return card_ids, list(zip(terminal_ids, [reply["key"] for reply in replies]))


# ------------------------------------------------------------------ load
class Stats:
    def __init__(self):
        self.latencies_s: list[float] = []
        self.codes: Counter = Counter()
        self.ok_in_window = 0
        self.replies_after_window = 0
        self.broken: Counter = Counter()


async def _connect(address, who: str, key: bytes, limiter):
    async with limiter:
        stream = await trio.open_tcp_stream(*address)
        session = ClientSession(who, key)
        decoder = FrameDecoder()
        await stream.send_all(session.hello_frame(time.time_ns() // 1_000_000))
        payloads = []
        while not payloads:
            data = await stream.receive_some(limits.receive_size_bytes)
            if not data:
                raise trio.EndOfChannel("closed during hello")
            payloads = decoder.feed(data)
        session.receive_hello_reply(payloads[0])
        return stream, session, decoder


async def load_connection(index: int, address, who: str, key: bytes, cards: list[str], args,
                          stats: Stats, limiter, ready, start: trio.Event, window: list) -> None:
    """One closed-loop connection: `depth` debits in flight, a new one for each reply.

    One task per connection and none per request: every reply found in one receive is
    answered with one coalesced send of as many new debits.
    """
    try:
        stream, session, decoder = await _connect(address, who, key, limiter)
    except (OSError, trio.BrokenResourceError, trio.EndOfChannel) as error:
        stats.broken[f"connect: {type(error).__name__}"] += 1
        ready()
        return
    ready()
    sent_at: dict[int, float] = {}
    rng = random.Random(f"{args.seed}-{index}")
    random_value = rng.random
    card_count = len(cards)
    amount_max = args.amount_max
    next_id = index * ID_STRIDE
    request_frame = session.request_frame
    latencies = stats.latencies_s
    codes = stats.codes

    def debits(count: int) -> bytes:
        nonlocal next_id
        frames = []
        seqs = []
        for _ in range(count):
            next_id += 1
            card = cards[int(random_value() * card_count)]
            seq, frame = request_frame({"t": "debit", "card": card,
                                        "amount": 1 + int(random_value() * amount_max),
                                        "id": next_id})
            frames.append(frame)
            seqs.append(seq)
        now = time.perf_counter()
        for seq in seqs:
            sent_at[seq] = now
        return b"".join(frames)

    async with stream:
        try:
            await start.wait()
            await stream.send_all(debits(args.depth))
            while sent_at:
                data = await stream.receive_some(limits.receive_size_bytes)
                now = time.perf_counter()
                if not data:
                    stats.broken["closed by the switch"] += 1
                    return
                answered = ok = 0
                for payload in decoder.feed(data):
                    message = session.receive(payload)
                    started = sent_at.pop(message.get("re"), None)
                    if started is None:
                        codes[f"unexpected {message.get('t')}/{message.get('code')}"] += 1
                        continue
                    answered += 1
                    latencies.append(now - started)
                    code = message.get("code")
                    codes[code] += 1
                    ok += code == "ok"
                if now < window[1]:
                    stats.ok_in_window += ok
                    await stream.send_all(debits(answered))
                else:
                    stats.replies_after_window += answered
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as error:
            stats.broken[type(error).__name__] += 1


class CpuMeter:
    """CPU seconds of the switch, of this process and of the whole machine over the run."""

    def __init__(self, server):
        self.server = server
        self.started_at = None

    def _now(self):
        return (time.perf_counter(), self.server.cpu_seconds() if self.server else None,
                time.process_time(), _machine_busy_seconds())

    def start(self) -> None:
        self.started_at = self._now()

    def stop(self) -> dict:
        stopped_at = self._now()
        elapsed, server, own, machine = (
            None if a is None or b is None else b - a for a, b in zip(self.started_at, stopped_at))
        return {"elapsed_s": elapsed, "server_cpu_s": server, "load_cpu_s": own,
                "machine_cpu_s": machine}


async def run_load(address, terminals, cards, args, stats: Stats, meter: CpuMeter) -> None:
    limiter = trio.CapacityLimiter(CONNECT_CONCURRENCY_MAX)
    start = trio.Event()
    connected = [0]
    all_connected = trio.Event()
    window = [0.0, float("inf")]

    def ready():
        connected[0] += 1
        if connected[0] == args.connections:
            all_connected.set()

    async with trio.open_nursery() as nursery:
        for index in range(args.connections):
            who, key = terminals[index % len(terminals)]
            nursery.start_soon(load_connection, index, address, who, key, cards, args, stats,
                               limiter, ready, start, window)
        with trio.fail_after(CONNECT_TIMEOUT_S):
            await all_connected.wait()
        # Connecting is not measured: the window and the CPU figures start here.
        meter.start()
        window[0] = time.perf_counter()
        window[1] = window[0] + args.seconds
        start.set()
        await trio.sleep(args.seconds)
        # Connections stop sending at the window's end; give their last replies a bound.
        nursery.cancel_scope.deadline = trio.current_time() + DRAIN_TIMEOUT_S


def _percentile(ordered: list[float], fraction: float) -> float:
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


# ------------------------------------------------------------------ main
async def _bench(args, address, metrics_address, admin_key: bytes, server) -> dict:
    tag = f"{random.Random(args.seed).getrandbits(32):08X}"
    began = time.perf_counter()
    cards, terminals = await provision(address, admin_key, tag, args)
    provision_s = time.perf_counter() - began
    print(f"provisioned {args.accounts} accounts and cards, {args.terminals} terminals "
          f"in {provision_s:.1f} s", flush=True)

    before = await scrape(metrics_address) if metrics_address else {}
    stats = Stats()
    meter = CpuMeter(server)
    await run_load(address, terminals, cards, args, stats, meter)
    result = meter.stop()
    after = await scrape(metrics_address) if metrics_address else {}
    return {"stats": stats, "before": before, "after": after, **result}


def _report(args, result: dict, pinning: str) -> None:
    stats: Stats = result["stats"]
    ordered = sorted(stats.latencies_s)
    ok_total = stats.codes.get("ok", 0)
    declines = {code: n for code, n in stats.codes.items() if code != "ok"}
    ok_in_window = stats.ok_in_window
    ms = 1000.0
    print(f"connections      {args.connections}")
    print(f"depth            {args.depth}")
    print(f"duration         {args.seconds:.1f} s (replies drained {result['elapsed_s']:.1f} s "
          f"after the start)")
    print(f"pinning          {pinning}")
    print(f"ok tx            {ok_total} ({ok_in_window} within the window)")
    print(f"tx/s             {ok_in_window / args.seconds:.0f}")
    if declines:
        print(f"declined         {declines}")
    if stats.broken:
        print(f"broken           {dict(stats.broken)}")
    print(f"latency ms       p50 {_percentile(ordered, 0.50) * ms:.2f}  "
          f"p90 {_percentile(ordered, 0.90) * ms:.2f}  p99 {_percentile(ordered, 0.99) * ms:.2f}  "
          f"max {(ordered[-1] if ordered else float('nan')) * ms:.2f}  "
          f"(send to reply, {len(ordered)} requests)")
    before, after = result["before"], result["after"]
    if after:
        commits = _delta(after, before, "switch_commit_batch_size_count")
        batched = _delta(after, before, "switch_commit_batch_size_sum")
        commit_s = _delta(after, before, "switch_commit_duration_seconds_sum")
        commit_n = _delta(after, before, "switch_commit_duration_seconds_count")
        if commits:
            print(f"commit batches   {commits:.0f} batches, {batched:.0f} requests, mean "
                  f"{batched / commits:.1f} per batch, median <= "
                  f"{_histogram_quantile(after, before, 'switch_commit_batch_size', 0.5)}, "
                  f"p99 <= {_histogram_quantile(after, before, 'switch_commit_batch_size', 0.99)}"
                  f" (switch_commit_batch_size sum/count)")
        if commit_n:
            print(f"commit time      mean {commit_s / commit_n * ms:.2f} ms per write "
                  f"transaction + fsync ({commit_n:.0f} with writes)")
        served = _delta(after, before, 'switch_request_duration_seconds_count{type="debit"}')
        served_s = _delta(after, before, 'switch_request_duration_seconds_sum{type="debit"}')
        if served:
            print(f"switch latency   mean {served_s / served * ms:.2f} ms frame in to reply out "
                  f"(switch_request_duration_seconds, debit)")
    else:
        print("commit batches   (no --metrics address: not scraped)")
    cpu = []
    if result["server_cpu_s"] is not None:
        cpu.append(f"switch {result['server_cpu_s'] / result['elapsed_s'] * 100:.0f}%")
    cpu.append(f"load client {result['load_cpu_s'] / result['elapsed_s'] * 100:.0f}%")
    if result["machine_cpu_s"] is not None and result["server_cpu_s"] is not None:
        others = result["machine_cpu_s"] - result["server_cpu_s"] - result["load_cpu_s"]
        others_percent = max(0.0, others) / result["elapsed_s"] * 100
        cpu.append(f"everything else on the machine {others_percent:.0f}%")
    print(f"cpu              {', '.join(cpu)} of one core over the run")


def _audit(data_dir) -> int:
    completed = subprocess.run([sys.executable, "-m", "switch", "audit", "--data", str(data_dir)],
                               capture_output=True, text=True, cwd=REPO)
    text = (completed.stdout + completed.stderr).strip().replace("\n", "\n                 ")
    print(f"audit            exit {completed.returncode}: {text}")
    return completed.returncode


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if args.connections < 1 or args.depth < 1 or args.seconds <= 0 or args.accounts < 1:
        print("connections, depth, seconds and accounts must be positive", file=sys.stderr)
        return 2
    if not 1 <= args.terminals <= PROVISION_PIPELINE_DEPTH:
        print(f"--terminals: 1..{PROVISION_PIPELINE_DEPTH}", file=sys.stderr)
        return 2
    if args.depth > limits.requests_in_flight_max:
        print(f"--depth above the switch's in-flight cap ({limits.requests_in_flight_max}) "
              f"only measures its backpressure", file=sys.stderr)
    if args.seed is None:
        args.seed = random.randrange(2**32)
    _raise_file_limit()
    existing = args.host is not None
    if existing and (args.port is None or args.data is None):
        print("--host needs --port and --data (for admin.key)", file=sys.stderr)
        return 2
    temporary = None
    server = None
    try:
        if existing:
            data_dir = pathlib.Path(args.data)
            address, metrics_address = (args.host, args.port), args.metrics
            pinning = "switch as it runs"
        else:
            temporary = pathlib.Path(tempfile.mkdtemp(prefix="switch-bench-"))
            data_dir = temporary / "data"
            server = SwitchProcess(data_dir, args)
            address, metrics_address = server.start()
            pinning = f"switch on {server.pinning}"
        if not args.no_pin and _cpu_count() >= 2:
            pinning += f", load on {_pin_self(args.load_cpu)}"
        admin_key = bytes.fromhex((data_dir / "admin.key").read_text().strip())
        print(f"switch at {address[0]}:{address[1]}, data {data_dir}, seed {args.seed}",
              flush=True)
        result = trio.run(_bench, args, address, metrics_address, admin_key, server)
        _report(args, result, pinning)
        if server:
            code = server.stop()
            print(f"switch stopped   exit {code} on SIGTERM")
        audit_code = _audit(data_dir)
        return 0 if audit_code == 0 else 1
    finally:
        if server:
            server.kill()
        if temporary and not args.keep_data:
            shutil.rmtree(temporary, ignore_errors=True)
        elif temporary:
            print(f"data kept in {temporary}")


if __name__ == "__main__":
    sys.exit(main())
