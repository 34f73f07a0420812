"""The switch against PostgreSQL in alternating pairs, so that the "≥ 3.5× PostgreSQL" target is
judged like for like: on this machine PostgreSQL's best moved 2× between full runs (3,137 to
6,147 debits/s), and a full run measures it once, minutes away from the switch's own run.

    .venv/bin/python bench/postgres_pairs.py --pairs 4 --json-out results/pg-pairs.json

One PostgreSQL cluster (bench/postgres_peer.py's: Debian's package, fsync and synchronous
commit on, the same debit in one transaction, driven by pgbench) stays up for the whole
comparison; each pair runs the switch (bench/e2e_load.py, a fresh data dir, closed loop) and
PostgreSQL at each of --clients, in the order S P, then P S, and so on, so that a machine
whose speed drifts weighs on both alike. A pair's ratio is the switch's tx/s over
PostgreSQL's best of that pair. Before each pgbench run PostgreSQL is vacuumed and
checkpointed, and after its last one checkpointed again, so that its own writes are not
left for the switch's run to meet; each switch run's share of other work is recorded and
named above 10 % of a core, as run_e2e.py does. The JSON says "completed": false for a
comparison cut short, with the pairs it had. At the end the
money is checked: PostgreSQL's balances against its journal, as postgres_peer does; every
run of the switch is audited by e2e_load, and one that is not sound stops the comparison.
"""

import argparse
import json
import pathlib
import shutil
import signal
import statistics
import sys
import tempfile
import time

BENCH = pathlib.Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import abba  # noqa: E402
import e2e_load  # noqa: E402  (puts the repository on the path)
import postgres_peer  # noqa: E402
import run_e2e  # noqa: E402

PAIRS_MAX = abba.PAIRS_MAX


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--pairs", type=int, default=4, help=f"pairs of runs (1..{PAIRS_MAX})")
    parser.add_argument("--clients", default="16,64,256",
                        help="PostgreSQL's client counts in each pair; the best is compared")
    parser.add_argument("--connections", type=int, default=2000, help="the switch's connections")
    parser.add_argument("--depth", type=int, default=1, help="the switch's requests in flight")
    parser.add_argument("--accounts", type=int, default=10_000, help="accounts, in both")
    parser.add_argument("--seconds", type=float, default=30.0, help="measured window per run")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds before the window")
    parser.add_argument("--amount-max", type=int, default=10, help="debits are 1..this fen")
    parser.add_argument("--threads", type=int, default=2, help="pgbench -j")
    parser.add_argument("--seed", type=int, default=1, help="the switch's cards and amounts")
    parser.add_argument("--server-cpu", type=int, default=0, help="CPU for either server")
    parser.add_argument("--load-cpu", type=int, default=1, help="CPU for either load")
    parser.add_argument("--no-pin", action="store_true")
    parser.add_argument("--workdir", help="parent of the temporary dirs (default $TMPDIR)")
    parser.add_argument("--json-out", help="write every run and the ratios here (JSON)")
    return parser


def _stop_on_sigterm(signum, frame):
    raise KeyboardInterrupt


def switch_arm(args, label: str, workdir: pathlib.Path) -> dict:
    common = ["--connections", str(args.connections), "--depth", str(args.depth),
              "--accounts", str(args.accounts), "--seconds", f"{args.seconds:g}",
              "--warmup", f"{args.warmup:g}", "--amount-max", str(args.amount_max),
              "--seed", str(args.seed), "--server-cpu", str(args.server_cpu),
              "--load-cpu", str(args.load_cpu)]
    if args.no_pin:
        common.append("--no-pin")
    if args.workdir:
        common += ["--workdir", args.workdir]
    tree = abba.Tree(str(abba.REPO), workdir)
    return abba.run_arm(tree, [], common, workdir / f"{label}.json", label)


def postgres_arm(cluster, args, label: str, client_counts: list[int]) -> dict:
    runs = []
    for clients in client_counts:
        run = postgres_peer.run_pgbench(cluster, clients, args, cluster.dir)
        runs.append(run)
        print(f"  {label}: {clients} clients {run['tx_per_s']:.0f} tx/s, failed "
              f"{run['failed']}", flush=True)
    # What PostgreSQL wrote is on the disk before the switch's next run, not left to meet it.
    cluster.psql("CHECKPOINT")
    best = max(runs, key=lambda run: run["tx_per_s"])
    return {"label": label, "runs": runs, "best_clients": best["clients"],
            "tx_per_s": best["tx_per_s"]}


def summarize(pairs: list[dict]) -> dict:
    ratios = [pair["switch"]["tx_per_s"] / pair["postgres"]["tx_per_s"] for pair in pairs]
    switch = [pair["switch"]["tx_per_s"] for pair in pairs]
    postgres = [pair["postgres"]["tx_per_s"] for pair in pairs]
    return {"ratios": ratios, "median_ratio": statistics.median(ratios),
            "min_ratio": min(ratios), "max_ratio": max(ratios),
            "median_switch_tx_per_s": statistics.median(switch),
            "median_postgres_tx_per_s": statistics.median(postgres),
            "best_postgres_tx_per_s": max(postgres)}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parser().parse_args(argv)
    try:
        client_counts = postgres_peer.parse_client_counts(args.clients)
    except ValueError:
        print("--clients: comma-separated integers", file=sys.stderr)
        return 2
    if not 1 <= args.pairs <= PAIRS_MAX:
        print(f"--pairs: 1..{PAIRS_MAX}", file=sys.stderr)
        return 2
    if (not client_counts or min(client_counts) < 1 or args.accounts < 1 or args.seconds <= 0
            or args.warmup < 0 or args.connections < 1 or args.depth < 1 or args.threads < 1
            or args.amount_max < 1):
        print("clients, connections, depth, accounts, threads, amount-max and seconds must be "
              "positive", file=sys.stderr)
        return 2
    if not args.no_pin and args.server_cpu == args.load_cpu:
        print("--server-cpu and --load-cpu must differ (or --no-pin)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    file_limit = e2e_load._raise_file_limit()
    if max(client_counts + [args.connections]) + 64 > file_limit:
        print(f"needs more descriptors than RLIMIT_NOFILE ({file_limit})", file=sys.stderr)
        return 2
    if args.no_pin or e2e_load._cpu_count() < 2:
        args.server_cpu, args.load_cpu = 0, 1
        args.no_pin = True
        pg_load_cpu = pg_server_cpu = None
    else:
        pg_load_cpu, pg_server_cpu = args.load_cpu, args.server_cpu
        e2e_load._pin_self(args.load_cpu)     # pgbench is pinned there; keep this off CPU 0
    bin_dir = postgres_peer.ensure_installed()
    cluster = postgres_peer.Cluster(bin_dir, args.workdir,
                                    max(client_counts) + postgres_peer.CONNECTIONS_RESERVE,
                                    pg_server_cpu)
    pg_args = argparse.Namespace(warmup=args.warmup, seconds=args.seconds, threads=args.threads,
                                 accounts=args.accounts, amount_max=args.amount_max,
                                 load_cpu=pg_load_cpu)
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="pg-pairs-", dir=args.workdir))
    result = {"command": e2e_load._command_line(argv, __file__), "started_at": time.time(),
              "pairs": []}
    status = 1
    try:
        cluster.start()
        cluster.psql(postgres_peer.SCHEMA.format(balance=postgres_peer.START_BALANCE_FEN,
                                                 accounts=args.accounts))
        cluster.psql("VACUUM ANALYZE", "CHECKPOINT")
        result["postgres_settings"] = cluster.psql(
            "SELECT string_agg(name || '=' || setting, ' ' ORDER BY name) FROM pg_settings "
            "WHERE name IN ('fsync', 'synchronous_commit', 'max_connections')")
        print(f"PostgreSQL on 127.0.0.1:{cluster.port}: {result['postgres_settings']}",
              flush=True)
        for index in range(args.pairs):
            pair = {}
            result["pairs"].append(pair)        # a pair cut short is still in the JSON
            for arm in ("SP" if index % 2 == 0 else "PS"):
                label = f"{arm}{index + 1}"
                if arm == "S":
                    pair["switch"] = run = switch_arm(args, label, workdir)
                    pair["switch_others_percent"] = others = run_e2e._others_percent(run)
                    if others is not None and others > run_e2e.OTHER_WORK_PERCENT_MAX:
                        print(f"  {label}: other programs took {others:.0f}% of a core in "
                              f"its window (more than {run_e2e.OTHER_WORK_PERCENT_MAX:g}%)",
                              flush=True)
                else:
                    pair["postgres"] = postgres_arm(cluster, pg_args, label, client_counts)
            ratio = pair["switch"]["tx_per_s"] / pair["postgres"]["tx_per_s"]
            print(f"pair {index + 1}: switch {pair['switch']['tx_per_s']:,.0f} tx/s, "
                  f"PostgreSQL {pair['postgres']['tx_per_s']:,.0f} at "
                  f"{pair['postgres']['best_clients']} clients: {ratio:.2f}×", flush=True)
        spent = int(cluster.psql(f"SELECT {postgres_peer.START_BALANCE_FEN}::bigint * count(*)"
                                 f" - sum(balance) FROM accounts"))
        journal_fen = -int(cluster.psql("SELECT coalesce(sum(amount), 0) FROM journal"))
        result["postgres_check"] = {"debited_fen": spent, "journal_fen": journal_fen,
                                    "sound": spent == journal_fen}
        result["summary"] = summary = summarize(result["pairs"])
        print(f"\nswitch over PostgreSQL's best, per pair: "
              f"{'  '.join(f'{r:.2f}' for r in summary['ratios'])}; median "
              f"{summary['median_ratio']:.2f}× (switch {summary['median_switch_tx_per_s']:,.0f},"
              f" PostgreSQL {summary['median_postgres_tx_per_s']:,.0f} tx/s, medians)")
        print(f"money: PostgreSQL {'sound' if spent == journal_fen else 'DISCREPANCY'}; every "
              f"run of the switch audited sound (a run that does not stops the comparison)")
        result["completed"] = True
        status = 0 if spent == journal_fen else 1
    finally:
        result.setdefault("completed", False)
        try:
            cluster.stop()
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
            if args.json_out:
                pathlib.Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
                pathlib.Path(args.json_out).write_text(json.dumps(result, indent=1))
    return status


if __name__ == "__main__":
    sys.exit(main())
