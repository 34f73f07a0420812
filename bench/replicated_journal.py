"""Journal appends on PostgreSQL with and without a synchronous standby, on loopback: what
carrying the switch's journal on a replicated engine would cost per batch.

    .venv/bin/python bench/replicated_journal.py --json-out bench/results/replicated_journal.json

Starts a private primary (initdb in a temporary dir, 127.0.0.1, a free port, fsync=on), creates
`journal (txn bigint PRIMARY KEY, record bytea)`, and appends batches of journal records, each
batch one transaction (BEGIN; COPY ... FROM STDIN; COMMIT), one client, one batch after the
other, with psql timing each statement. Records are random bytes of --record-bytes (the size of
the switch's msgpack journal record, bench/stages.py). Configurations, in this order:

- alone: the primary with no standby, synchronous_commit=on (the local WAL fsync'd);
- sync, on: one standby (pg_basebackup -R, streaming) named in synchronous_standby_names; a
  COMMIT returns once the standby has fsync'd the WAL too;
- sync, remote_apply: the same, and the standby has applied it (readable there);
- quorum: two standbys, synchronous_standby_names = 'ANY 1 (s1, s2)': primary + one of two
  standbys fsync'd, the PostgreSQL form of a majority of three.

Every cluster runs on this one machine and disk, so the standby's fsync competes with the
primary's: a real standby on its own disk across a LAN adds a network round trip instead.
Each configuration runs --rounds times; per-batch latency is BEGIN+COPY+COMMIT as psql timed
them. The clusters are stopped (by their PIDs) and their dirs removed at the end, errors too.
"""

import argparse
import json
import os
import pathlib
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time

BENCH = pathlib.Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import e2e_load  # noqa: E402
from postgres_peer import SQL_TIMEOUT_S, Cluster, ensure_installed, tree_cpu_seconds  # noqa: E402

MAX_CONNECTIONS = 20
SYNC_WAIT_TIMEOUT_S = 60.0
STATEMENTS_PER_BATCH = 3               # BEGIN, COPY, COMMIT
TIMING = re.compile(r"^Time: ([0-9.]+) ms", re.MULTILINE)
SCHEMA = "CREATE TABLE journal (txn bigint PRIMARY KEY, record bytea NOT NULL)"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--records", default="1000,1",
                        help="records per batch (one transaction), comma-separated")
    parser.add_argument("--batches", type=int, default=40, help="batches per round")
    parser.add_argument("--warmup-batches", type=int, default=3, help="not counted, per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--record-bytes", type=int, default=152)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workdir", help="parent of the temporary cluster dirs")
    parser.add_argument("--json-out")
    return parser


class Journal:
    """Appends batches to the primary's journal table, txn numbers going on from run to run."""

    def __init__(self, primary: Cluster, workdir: pathlib.Path, record_bytes: int, seed: int):
        self.primary = primary
        self.workdir = workdir
        self.record_bytes = record_bytes
        self.rng = random.Random(seed)
        self.next_txn = 1

    def _script(self, commit_mode: str, batches: int, records: int) -> pathlib.Path:
        path = self.workdir / "batches.sql"
        with open(path, "w") as script:
            script.write(f"SET synchronous_commit = {commit_mode};\n\\timing on\n")
            for _ in range(batches):
                script.write("BEGIN;\nCOPY journal (txn, record) FROM STDIN;\n")
                for _ in range(records):
                    record = self.rng.randbytes(self.record_bytes).hex()
                    script.write(f"{self.next_txn}\t\\\\x{record}\n")
                    self.next_txn += 1
                script.write("\\.\nCOMMIT;\n")
        return path

    def run(self, commit_mode: str, batches: int, warmup: int, records: int,
            standbys: list[Cluster]) -> dict:
        """Per-batch latency (ms), records per second and server CPU per record."""
        script = self._script(commit_mode, warmup + batches, records)
        command = [self.primary.tool("psql"), "-h", "127.0.0.1", "-p", str(self.primary.port),
                   "-U", "postgres", "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-X",
                   "-f", str(script)]
        clusters = [self.primary] + standbys
        cpu_before = [tree_cpu_seconds(cluster.pid) for cluster in clusters]
        began = time.perf_counter()
        completed = subprocess.run(command, capture_output=True, text=True,
                                   timeout=SQL_TIMEOUT_S)
        wall_s = time.perf_counter() - began
        cpu_s = [tree_cpu_seconds(cluster.pid) - before
                 for cluster, before in zip(clusters, cpu_before)]
        script.unlink()
        if completed.returncode != 0:
            raise RuntimeError(f"psql failed: {completed.stderr.strip()[-2000:]}")
        timings = [float(ms) for ms in TIMING.findall(completed.stdout)]
        if len(timings) != STATEMENTS_PER_BATCH * (warmup + batches):
            raise RuntimeError(f"expected {STATEMENTS_PER_BATCH * (warmup + batches)} timings, "
                               f"psql printed {len(timings)}")
        latencies = [sum(timings[at:at + STATEMENTS_PER_BATCH])
                     for at in range(0, len(timings), STATEMENTS_PER_BATCH)][warmup:]
        commits = [timings[at + 2] for at in range(0, len(timings), STATEMENTS_PER_BATCH)][warmup:]
        counted = records * (warmup + batches)
        return {"latencies_ms": latencies, "commit_ms": commits,
                "records_per_s": records * batches / (sum(latencies) / 1000),
                "psql_wall_s": wall_s,
                "primary_cpu_us_per_record": cpu_s[0] / counted * 1e6,
                "standby_cpu_us_per_record": [cpu / counted * 1e6 for cpu in cpu_s[1:]]}


def _percentile(values: list[float], percent: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(percent / 100 * (len(ordered) - 1))))]


def _summary(runs: list[dict]) -> dict:
    latencies = [latency for run in runs for latency in run["latencies_ms"]]
    commits = [commit for run in runs for commit in run["commit_ms"]]
    rates = [run["records_per_s"] for run in runs]
    return {"records_per_s_best": max(rates), "records_per_s_median": statistics.median(rates),
            "batch_ms_p50": _percentile(latencies, 50), "batch_ms_p99": _percentile(latencies, 99),
            "commit_ms_p50": _percentile(commits, 50), "commit_ms_p99": _percentile(commits, 99),
            "primary_cpu_us_per_record": statistics.median(
                run["primary_cpu_us_per_record"] for run in runs),
            "standby_cpu_us_per_record": [statistics.median(each) for each in zip(
                *(run["standby_cpu_us_per_record"] for run in runs))],
            "runs": runs}


def _await_standbys(primary: Cluster, names: list[str], state: str) -> None:
    """Until every standby in `names` streams with sync_state `state` (sync, quorum)."""
    deadline = time.monotonic() + SYNC_WAIT_TIMEOUT_S
    wanted = ",".join(f"'{name}'" for name in names)
    while time.monotonic() < deadline:
        count = int(primary.psql(f"SELECT count(*) FROM pg_stat_replication WHERE state = "
                                 f"'streaming' AND sync_state = '{state}' AND application_name"
                                 f" IN ({wanted})"))
        if count == len(names):
            return
        time.sleep(0.2)
    raise RuntimeError(f"standbys {names} not {state} in {SYNC_WAIT_TIMEOUT_S:.0f} s:\n"
                       f"{primary.psql('SELECT application_name, state, sync_state FROM pg_stat_replication')}")


def _set_standby_names(primary: Cluster, names: str) -> None:
    primary.psql(f"ALTER SYSTEM SET synchronous_standby_names = '{names}'",
                 "SELECT pg_reload_conf()")


def _stop_on_sigterm(signum, frame):
    raise SystemExit(128 + signum)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parser().parse_args(argv)
    record_counts = [int(count) for count in args.records.split(",") if count]
    if not record_counts or min(record_counts) < 1 or args.batches < 1 or args.rounds < 1:
        print("records, batches and rounds must be positive", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    bin_dir = ensure_installed()
    version = subprocess.run([str(bin_dir / "postgres"), "--version"], capture_output=True,
                             text=True).stdout.strip()
    primary = Cluster(bin_dir, args.workdir, MAX_CONNECTIONS, None)
    standbys: list[Cluster] = []
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="journal-bench-", dir=args.workdir))
    result = {"command": e2e_load._command_line(argv, __file__), "version": version,
              "record_bytes": args.record_bytes, "batches": args.batches,
              "rounds": args.rounds, "started_at": time.time(),
              "load_average_at_start": os.getloadavg(), "configurations": {}}

    def measure(label: str, commit_mode: str, modes_runs: dict) -> None:
        for records in record_counts:
            run = journal.run(commit_mode, args.batches, args.warmup_batches, records, standbys)
            modes_runs.setdefault((label, records), []).append(run)
            print(f"{label:<22} {records:5d} per batch  {run['records_per_s']:10.0f} records/s"
                  f"  p50 batch {statistics.median(run['latencies_ms']):7.2f} ms", flush=True)

    def settle(modes_runs: dict) -> None:
        for (label, records), runs in modes_runs.items():
            result["configurations"].setdefault(label, {})[str(records)] = _summary(runs)

    try:
        primary.start()
        primary.psql(SCHEMA, "CHECKPOINT")
        journal = Journal(primary, workdir, args.record_bytes, args.seed)
        print(f"{version}, primary on 127.0.0.1:{primary.port}", flush=True)
        runs: dict = {}
        for _ in range(args.rounds):
            measure("alone", "on", runs)
        settle(runs)
        for name in ("s1", "s2"):
            conninfo = (f"host=127.0.0.1 port={primary.port} user=postgres "
                        f"application_name={name}")
            standby = Cluster(bin_dir, args.workdir, MAX_CONNECTIONS, None,
                              settings={"primary_conninfo": conninfo}, primary=primary)
            standbys.append(standby)
            standby.start()
        _set_standby_names(primary, "s1")
        _await_standbys(primary, ["s1"], "sync")
        runs = {}
        for _ in range(args.rounds):
            measure("sync, on", "on", runs)
            measure("sync, remote_apply", "remote_apply", runs)
        settle(runs)
        _set_standby_names(primary, "ANY 1 (s1, s2)")
        _await_standbys(primary, ["s1", "s2"], "quorum")
        runs = {}
        for _ in range(args.rounds):
            measure("quorum 1 of 2, on", "on", runs)
        settle(runs)
        result["settings"] = primary.psql(
            "SELECT string_agg(name || '=' || setting, ' ' ORDER BY name) FROM pg_settings "
            "WHERE name IN ('fsync', 'synchronous_commit', 'wal_sync_method', 'wal_level', "
            "'full_page_writes', 'synchronous_standby_names')")
        result["journal_rows"] = int(primary.psql("SELECT count(*) FROM journal"))
    finally:
        for cluster in reversed(standbys):
            cluster.stop()
        primary.stop()
        for leftover in workdir.glob("*"):
            leftover.unlink()
        workdir.rmdir()
    print(f"{'configuration':<22} {'records':>7} {'records/s':>10} {'batch p50':>10} "
          f"{'batch p99':>10} {'commit p50':>10} {'primary µs/rec':>15}")
    for label, by_records in result["configurations"].items():
        for records, figures in by_records.items():
            print(f"{label:<22} {records:>7} {figures['records_per_s_median']:10.0f} "
                  f"{figures['batch_ms_p50']:10.2f} {figures['batch_ms_p99']:10.2f} "
                  f"{figures['commit_ms_p50']:10.2f} {figures['primary_cpu_us_per_record']:15.1f}")
    if args.json_out:
        pathlib.Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        pathlib.Path(args.json_out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
