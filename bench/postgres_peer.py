"""The peer a card vendor would otherwise build on: PostgreSQL (Debian's package) doing the same
debit in one transaction, driven by pgbench, on this machine, pinned like the switch.

    .venv/bin/python bench/postgres_peer.py --accounts 10000 --clients 16,64,256 --seconds 30

It installs `postgresql` with apt-get if no server binaries are found, initdb's a cluster in a
temporary dir as the `postgres` user, starts it on 127.0.0.1 (a free port) with fsync=on and
synchronous_commit=on and otherwise Debian's defaults, pinned to --server-cpu, creates the
accounts and a journal table, and for each client count runs pgbench (-M prepared, -j 2,
pinned to --load-cpu) on this script, one transaction per debit:

    \\set id random(1, :naccounts)
    \\set amount random(1, :amount_max)
    \\set journal_amount 0 - :amount
    BEGIN;
    UPDATE accounts SET balance = balance - :amount WHERE id = :id AND balance >= :amount
        RETURNING balance \\gset
    INSERT INTO journal (account_id, amount, balance) VALUES (:id, :journal_amount, :balance);
    COMMIT;

Throughput and latency come from pgbench's per-transaction log over the same window as
bench/e2e_load.py (after --warmup, for --seconds); the server's CPU is the sum over the
postmaster and all its children. The cluster is stopped and removed at the end, errors too.
"""

import argparse
import glob
import json
import os
import pathlib
import pwd
import re
import resource
import shutil
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

BENCH = pathlib.Path(__file__).resolve().parent
REPO = BENCH.parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import e2e_load  # noqa: E402

START_BALANCE_FEN = e2e_load.START_BALANCE_FEN
OS_USER = "postgres"
APT_TIMEOUT_S = 900.0
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
SQL_TIMEOUT_S = 600.0
PGBENCH_MARGIN_S = 180.0           # connecting thousands of backends takes a while
CPU_SAMPLE_INTERVAL_S = 0.25
CONNECTIONS_RESERVE = 10           # max_connections above the largest client count
CONNECTS_PER_S = 200               # a pessimistic rate of backend start-ups, for pgbench -T

DEBIT_SCRIPT = """\
\\set id random(1, :naccounts)
\\set amount random(1, :amount_max)
\\set journal_amount 0 - :amount
BEGIN;
UPDATE accounts SET balance = balance - :amount WHERE id = :id AND balance >= :amount RETURNING balance \\gset
INSERT INTO journal (account_id, amount, balance) VALUES (:id, :journal_amount, :balance);
COMMIT;
"""

SCHEMA = """\
CREATE TABLE accounts (id integer PRIMARY KEY, balance bigint NOT NULL CHECK (balance >= 0));
INSERT INTO accounts SELECT g, {balance} FROM generate_series(1, {accounts}) AS g;
CREATE TABLE journal (txn bigserial PRIMARY KEY, account_id integer NOT NULL,
                      amount bigint NOT NULL, balance bigint NOT NULL,
                      at timestamptz NOT NULL DEFAULT now());
"""


# ------------------------------------------------------------------ installation
def _bin_dirs() -> list[pathlib.Path]:
    found = [pathlib.Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/postgres")]
    return sorted(found, key=lambda p: int(re.sub(r"\D", "", p.parent.name) or 0), reverse=True)


def _online_clusters() -> set[str]:
    if not shutil.which("pg_lsclusters"):
        return set()
    listing = subprocess.run(["pg_lsclusters", "--no-header"], capture_output=True, text=True)
    return {" ".join(line.split()[:2]) for line in listing.stdout.splitlines()
            if " online" in line}


def ensure_installed(log=print) -> pathlib.Path:
    """The newest /usr/lib/postgresql/*/bin; installs Debian's `postgresql` if there is none."""
    dirs = _bin_dirs()
    if dirs:
        return dirs[0]
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise RuntimeError("PostgreSQL is not installed and apt-get cannot install it here")
    online_before = _online_clusters()
    environment = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", "postgresql",
               "postgresql-contrib"]
    log("installing postgresql with apt-get ...")
    completed = subprocess.run(install, env=environment, capture_output=True, text=True,
                               timeout=APT_TIMEOUT_S)
    if completed.returncode != 0:
        log("apt-get install failed; apt-get update, then again")
        subprocess.run(["apt-get", "update"], env=environment, capture_output=True,
                       timeout=APT_TIMEOUT_S, check=True)
        subprocess.run(install, env=environment, capture_output=True, timeout=APT_TIMEOUT_S,
                       check=True)
    # The package's own `main` cluster may have been started by the install: that one is ours
    # to stop, a cluster that was already running is not.
    for cluster in _online_clusters() - online_before:
        version, name = cluster.split()
        subprocess.run(["pg_ctlcluster", version, name, "stop"], capture_output=True)
    dirs = _bin_dirs()
    if not dirs:
        raise RuntimeError("apt-get installed postgresql but no server binaries were found")
    return dirs[0]


# ------------------------------------------------------------------ CPU of a process tree
def _stat_fields(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat") as handle:
        return handle.read().rpartition(")")[2].split()


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as handle:
            return [int(child) for child in handle.read().split()]
    except OSError:
        children = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    if int(_stat_fields(int(entry))[1]) == pid:
                        children.append(int(entry))
                except (OSError, IndexError):
                    pass
        return children


def tree_cpu_seconds(pid: int) -> float:
    """utime+stime of the postmaster and its live children, plus what its reaped children used
    (cutime+cstime): a backend's CPU is counted whether or not it has exited."""
    ticks = 0
    fields = _stat_fields(pid)
    ticks += int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])
    for child in _children(pid):
        try:
            fields = _stat_fields(child)
        except OSError:
            continue   # exited between the listing and the read: now in the parent's cutime
        ticks += int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])
    return ticks / os.sysconf("SC_CLK_TCK")


class CpuSampler(threading.Thread):
    """Samples (unix time, CPU seconds of the postmaster's tree) until stopped."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid = pid
        self.samples: list[tuple[float, float, float]] = []   # (unix time, tree, machine)
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                machine = e2e_load._machine_busy_seconds()
                self.samples.append((time.time(), tree_cpu_seconds(self.pid),
                                     machine if machine is not None else float("nan")))
            except OSError:
                pass
            self.stopping.wait(CPU_SAMPLE_INTERVAL_S)

    def at(self, when: float, which: int = 1) -> float | None:
        """CPU seconds (1: the postmaster's tree, 2: the whole machine) at unix time `when`,
        interpolated between samples."""
        samples = self.samples
        for first, second in zip(samples, samples[1:]):
            t0, c0, t1, c1 = first[0], first[which], second[0], second[which]
            if t0 <= when <= t1:
                return c0 + (c1 - c0) * ((when - t0) / (t1 - t0) if t1 > t0 else 0.0)
        return None


# ------------------------------------------------------------------ the cluster
def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _as_postgres() -> dict:
    entry = pwd.getpwnam(OS_USER)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": [],
            "env": {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": entry.pw_dir,
                    "LC_ALL": "C"}}


class Cluster:
    def __init__(self, bin_dir: pathlib.Path, workdir: str | None, max_connections: int,
                 server_cpu: int | None, log=print, settings: dict | None = None,
                 primary: "Cluster | None" = None):
        """`settings`: more `-c name=value` for the server; `primary`: a running cluster this
        one starts as a streaming standby of (pg_basebackup -R), instead of initdb."""
        self.settings = settings or {}
        self.primary = primary
        self.bin_dir = bin_dir
        self.parent = workdir
        self.max_connections = max_connections
        self.server_cpu = server_cpu
        self.log = log
        self.dir = None
        self.process = None
        self.port = None
        self.pinning = "unpinned"

    def tool(self, name: str) -> str:
        return str(self.bin_dir / name)

    def start(self) -> None:
        if os.geteuid() == 0:
            identity = _as_postgres()
        else:
            identity = {}
        self.dir = pathlib.Path(tempfile.mkdtemp(prefix="pg-bench-", dir=self.parent))
        if identity:
            os.chown(self.dir, identity["user"], identity["group"])
        data = self.dir / "data"
        if self.primary is None:
            make_data = [self.tool("initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                         "--no-locale", "-E", "UTF8", "--no-sync"]
        else:
            make_data = [self.tool("pg_basebackup"), "-h", "127.0.0.1", "-p",
                         str(self.primary.port), "-U", "postgres", "-D", str(data), "-R",
                         "-X", "stream", "--checkpoint=fast", "--no-sync"]
        subprocess.run(make_data, cwd=self.dir, capture_output=True, check=True,
                       timeout=SQL_TIMEOUT_S, **identity)
        self.port = _free_port()
        command = [self.tool("postgres"), "-D", str(data),
                   "-c", "listen_addresses=127.0.0.1", "-c", f"port={self.port}",
                   "-c", f"unix_socket_directories={self.dir}",
                   "-c", f"max_connections={self.max_connections}",
                   "-c", "fsync=on", "-c", "synchronous_commit=on",
                   "-c", "full_page_writes=on", "-c", "logging_collector=off"]
        for name, value in self.settings.items():
            command += ["-c", f"{name}={value}"]
        taskset = shutil.which("taskset")
        if self.server_cpu is not None and taskset:
            command = [taskset, "-c", str(self.server_cpu)] + command   # taskset execs
            self.pinning = f"CPU {self.server_cpu} (taskset)"
        with open(self.dir / "postgres.log", "wb") as log_file:
            self.process = subprocess.Popen(command, stdout=log_file, stderr=log_file,
                                            stdin=subprocess.DEVNULL, cwd=self.dir, **identity)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"postgres exited at start:\n{self.log_tail()}")
            ready = subprocess.run([self.tool("pg_isready"), "-h", "127.0.0.1", "-p",
                                    str(self.port), "-U", "postgres", "-q"])
            if ready.returncode == 0:
                return
            time.sleep(0.2)
        raise RuntimeError(f"postgres not ready in {START_TIMEOUT_S:.0f} s:\n{self.log_tail()}")

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self, lines: int = 20) -> str:
        path = self.dir / "postgres.log" if self.dir else None
        if not path or not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def psql(self, *statements: str) -> str:
        command = [self.tool("psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
                   "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-X", "-q", "-A", "-t"]
        for statement in statements:
            command += ["-c", statement]
        completed = subprocess.run(command, capture_output=True, text=True,
                                   timeout=SQL_TIMEOUT_S)
        if completed.returncode != 0:
            raise RuntimeError(f"psql failed: {completed.stderr.strip()}")
        return completed.stdout.strip()

    def stop(self) -> None:
        """Fast shutdown (SIGINT), SIGKILL past the timeout; then remove the cluster's dir."""
        try:
            if self.process is not None and self.process.poll() is None:
                self.process.send_signal(signal.SIGINT)
                try:
                    self.process.wait(timeout=STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
        finally:
            if self.dir is not None:
                shutil.rmtree(self.dir, ignore_errors=True)


# ------------------------------------------------------------------ pgbench
def _read_logs(prefix: pathlib.Path) -> list[tuple[float, float]]:
    """(completion unix time, latency s) of every transaction in pgbench's -l logs."""
    rows = []
    for path in glob.glob(f"{prefix}.*"):
        with open(path) as handle:
            for line in handle:
                fields = line.split()
                if len(fields) < 6 or fields[2] == "failed" or fields[2] == "skipped":
                    continue
                rows.append((int(fields[4]) + int(fields[5]) / 1e6, int(fields[2]) / 1e6))
    rows.sort()
    return rows


def _shown_command(command: list[str]) -> str:
    """The command as results show it: programs by name, files relative to pgbench's working
    directory (the run's scratch directory), so no path of this machine is recorded."""
    return shlex.join(pathlib.Path(part).name if os.path.isabs(part) else part
                      for part in command)


def run_pgbench(cluster: Cluster, clients: int, args, workdir: pathlib.Path) -> dict:
    cluster.psql("VACUUM ANALYZE accounts", "CHECKPOINT")
    script = workdir / "debit.sql"
    script.write_text(DEBIT_SCRIPT)
    prefix = workdir / f"pgbench_{clients}"
    # pgbench may count connecting its clients (seconds, for thousands) in -T: allow for it,
    # the window is taken from the log anyway.
    duration_s = int(args.warmup + args.seconds + 1.999 + clients / CONNECTS_PER_S)
    command = [cluster.tool("pgbench"), "-h", "127.0.0.1", "-p", str(cluster.port),
               "-U", "postgres", "-n", "-M", "prepared", "-j", str(min(args.threads, clients)),
               "-c", str(clients), "-T", str(duration_s), "-P", "1", "-l",
               f"--log-prefix={prefix.name}", "-f", script.name, "-D", f"naccounts={args.accounts}",
               "-D", f"amount_max={args.amount_max}", "postgres"]
    taskset = shutil.which("taskset")
    if args.load_cpu is not None and taskset:
        command = [taskset, "-c", str(args.load_cpu)] + command
    sampler = CpuSampler(cluster.pid)
    sampler.start()
    own_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    began = time.time()
    try:
        completed = subprocess.run(command, capture_output=True, text=True, cwd=workdir,
                                   timeout=duration_s + PGBENCH_MARGIN_S)
    finally:
        sampler.stopping.set()
        sampler.join()
    elapsed = time.time() - began
    own_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if completed.returncode not in (0, 2):     # 2: some clients failed; reported below
        raise RuntimeError(f"pgbench -c {clients} failed ({completed.returncode}):\n"
                           f"{completed.stderr[-2000:]}")
    rows = _read_logs(prefix)
    if not rows:
        raise RuntimeError(f"pgbench -c {clients} logged no transactions:\n{completed.stdout}"
                           f"\n{completed.stderr[-2000:]}")
    first = rows[0][0] - rows[0][1]            # start of the first transaction
    window_start = first + args.warmup
    window_end = window_start + args.seconds
    window_end = min(window_end, rows[-1][0])       # pgbench stopped before the window's end?
    covered_s = window_end - window_start
    if covered_s <= 0:
        raise RuntimeError(f"pgbench -c {clients} ran {rows[-1][0] - first:.1f} s, less than "
                           f"the warm-up")
    in_window = [latency for done, latency in rows if window_start <= done < window_end]
    timeline = [0] * int(args.warmup + args.seconds + 0.999)
    for done, _ in rows:
        second = int(done - first)
        if 0 <= second < len(timeline):
            timeline[second] += 1
    started_in_window = [latency for done, latency in rows
                         if done - latency >= window_start and done - latency < window_end]
    cpu_start, cpu_end = sampler.at(window_start), sampler.at(window_end)
    server_cpu_s = cpu_end - cpu_start if cpu_start is not None and cpu_end is not None else None
    machine_start, machine_end = sampler.at(window_start, 2), sampler.at(window_end, 2)
    machine_cpu_s = (machine_end - machine_start
                     if machine_start is not None and machine_end is not None else None)
    reported = re.search(r"tps = ([0-9.]+) \(without initial connection time\)", completed.stdout)
    failed = re.search(r"number of failed transactions: (\d+)", completed.stdout)
    result = {
        "clients": clients, "command": _shown_command(command), "exit": completed.returncode,
        "ok_in_window": len(in_window), "tx_per_s": len(in_window) / covered_s,
        "window_s": covered_s,
        "tps_pgbench": float(reported.group(1)) if reported else None,
        "failed": int(failed.group(1)) if failed else None,
        "latency_ms": e2e_load.latency_summary(started_in_window),
        "timeline_ok_per_s": timeline,
        "cpu": {"elapsed_s": covered_s, "server_cpu_s": server_cpu_s,
                "machine_cpu_s": machine_cpu_s,
                "load_cpu_s": (own_after.ru_utime + own_after.ru_stime - own_before.ru_utime
                               - own_before.ru_stime) * covered_s / elapsed},
        "server_cpu_us_per_tx": (server_cpu_s / len(in_window) * 1e6
                                 if server_cpu_s is not None and in_window else None),
        "pgbench_summary": completed.stdout[-1500:],
    }
    for path in glob.glob(f"{prefix}.*"):
        os.unlink(path)
    return result


# ------------------------------------------------------------------ command line
def parse_client_counts(text: str) -> list[int]:
    """--clients: the distinct counts, smallest first; ValueError for one that is not an
    integer (bench/postgres_pairs.py reads the same option)."""
    return sorted({int(count) for count in text.split(",") if count})


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--accounts", type=int, default=10_000)
    parser.add_argument("--clients", default="16,64,256",
                        help="comma-separated pgbench client counts, each one run")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured window per run")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds before the window")
    parser.add_argument("--threads", type=int, default=2, help="pgbench -j")
    parser.add_argument("--amount-max", type=int, default=10, help="debits are 1..this fen")
    parser.add_argument("--server-cpu", type=int, default=0, help="CPU for PostgreSQL")
    parser.add_argument("--load-cpu", type=int, default=1, help="CPU for pgbench")
    parser.add_argument("--no-pin", action="store_true")
    parser.add_argument("--workdir", help="parent of the temporary cluster dir (default $TMPDIR)")
    parser.add_argument("--json-out", help="write the results here (JSON)")
    return parser


def _stop_on_sigterm(signum, frame):
    raise SystemExit(128 + signum)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parser().parse_args(argv)
    try:
        client_counts = parse_client_counts(args.clients)
    except ValueError:
        print("--clients: comma-separated integers", file=sys.stderr)
        return 2
    if not client_counts or min(client_counts) < 1 or args.accounts < 1 or args.seconds <= 0:
        print("clients, accounts and seconds must be positive", file=sys.stderr)
        return 2
    if args.no_pin or e2e_load._cpu_count() < 2:
        args.server_cpu = args.load_cpu = None
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    file_limit = e2e_load._raise_file_limit()
    if max(client_counts) + 64 > file_limit:
        print(f"{max(client_counts)} clients need more descriptors than RLIMIT_NOFILE "
              f"({file_limit})", file=sys.stderr)
        return 2
    pinning = "unpinned"
    if args.load_cpu is not None:
        pinning = f"load on {e2e_load._pin_self(args.load_cpu)}"
    bin_dir = ensure_installed()
    version = subprocess.run([str(bin_dir / "postgres"), "--version"], capture_output=True,
                             text=True).stdout.strip()
    cluster = Cluster(bin_dir, args.workdir, max(client_counts) + CONNECTIONS_RESERVE,
                      args.server_cpu)
    result = {"label": "postgres", "system": "postgres", "mode": "closed",
              "command": e2e_load._command_line(argv, __file__), "version": version,
              "accounts": args.accounts, "seconds": args.seconds, "warmup_s": args.warmup,
              "started_at": time.time(), "runs": []}
    try:
        cluster.start()
        result["pinning"] = f"server on {cluster.pinning}, {pinning}"
        print(f"{version} on 127.0.0.1:{cluster.port} ({result['pinning']}), "
              f"max_connections {cluster.max_connections}", flush=True)
        began = time.perf_counter()
        cluster.psql(SCHEMA.format(balance=START_BALANCE_FEN, accounts=args.accounts))
        cluster.psql("VACUUM ANALYZE", "CHECKPOINT")
        result["provision_s"] = time.perf_counter() - began
        settings = cluster.psql("SELECT string_agg(name || '=' || setting, ' ' ORDER BY name) "
                                "FROM pg_settings WHERE name IN ('fsync', 'synchronous_commit',"
                                " 'wal_sync_method', 'shared_buffers', 'max_connections', "
                                "'full_page_writes', 'wal_level')")
        result["settings"] = settings
        print(f"settings         {settings}")
        print(f"created {args.accounts} accounts in {result['provision_s']:.1f} s", flush=True)
        for clients in client_counts:
            run = run_pgbench(cluster, clients, args, cluster.dir)
            result["runs"].append(run)
            latency = run["latency_ms"]
            cpu_text = (f", server {run['server_cpu_us_per_tx']:.0f} µs CPU per tx"
                        if run["server_cpu_us_per_tx"] is not None else "")
            print(f"clients {clients:5d}   {run['tx_per_s']:8.0f} tx/s (pgbench says "
                  f"{run['tps_pgbench']}), p50 {latency.get('p50', float('nan')):.2f} ms, "
                  f"p99 {latency.get('p99', float('nan')):.2f} ms, failed {run['failed']}"
                  f"{cpu_text}", flush=True)
        journal = int(cluster.psql("SELECT count(*) FROM journal"))
        spent = int(cluster.psql(f"SELECT {START_BALANCE_FEN}::bigint * count(*) - sum(balance)"
                                 f" FROM accounts"))
        journal_sum = -int(cluster.psql("SELECT coalesce(sum(amount), 0) FROM journal"))
        result["check"] = {"journal_records": journal, "debited_fen": spent,
                           "journal_fen": journal_sum, "sound": spent == journal_sum}
        print(f"check            {journal} journal records, {spent} fen debited, journal says "
              f"{journal_sum}: {'sound' if spent == journal_sum else 'DISCREPANCY'}")
        best = max(result["runs"], key=lambda run: run["tx_per_s"])
        result["best_clients"] = best["clients"]
        result["tx_per_s"] = best["tx_per_s"]
        print(f"best             {best['tx_per_s']:.0f} tx/s at {best['clients']} clients")
    finally:
        cluster.stop()
        if args.json_out:
            pathlib.Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
            pathlib.Path(args.json_out).write_text(json.dumps(result, indent=1))
    return 0 if result.get("check", {}).get("sound") else 1


if __name__ == "__main__":
    sys.exit(main())
