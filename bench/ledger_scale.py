"""A million accounts against ten thousand, the ledger alone: how much of the end-to-end gap
is the ledger's work, and how much of that is LMDB's reads.

    .venv/bin/python bench/ledger_scale.py --prebuilt-cache "$TMPDIR/books" \\
        --json-out bench/results/ledger_scale.json

For each --accounts size, a child process of its own (a fresh heap each) copies the books
`bench/e2e_load.py --prebuild` writes (the same accounts, cards, funding and history; with
--prebuilt-cache, the same cache), opens them as `switch serve` does (its cycle collector
frozen after start), and executes debits at random cards from --terminals tills in batches
of --batch, each batch committed as the committer commits it (seal, write_batch with its
fsync, committed), but on the same thread and with no network. After --warm batches, each
of --windows windows of --batches batches is timed in CPU (`time.process_time()`): execute
(`dispatch.execute`) and commit (seal to committed) per debit. A last window of the same
size times each read that reaches LMDB (the read transaction's `get`, wall time around the
C call), per database, and counts the committed reads (switch/persistence/store.py
`get_committed`) answered from memory instead; its clock calls cost CPU, so it is kept out
of the windows above, and its times, wall times, bound the reads' CPU from above.

The end-to-end pairs (bench/abba.py) measure the whole switch, network included; this takes
the network away, so what differs between sizes here is the ledger's part of that gap, and
what differs in LMDB's reads is the B-trees' part of it. Speed is measured here, never
asserted in a test.
"""

import argparse
import gc
import json
import pathlib
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

BENCH = pathlib.Path(__file__).resolve().parent
REPO = BENCH.parent
for path in (str(REPO), str(BENCH)):
    if path not in sys.path:
        sys.path.insert(0, path)

import e2e_load  # noqa: E402

# The tills' request ids start past anything the prebuild used (a reused id writes nothing).
FIRST_REQUEST_ID = 10_000_000
MAP_GROWTHS_MAX = 8
CHILD_TIMEOUT_S = 1_800.0   # a million accounts' prebuild (about 90 s) and its windows


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--accounts", default="10000,1000000",
                        help="account counts to compare, comma-separated (default: %(default)s)")
    parser.add_argument("--terminals", type=int, default=20, help="terminal credentials")
    parser.add_argument("--batch", type=int, default=1_000, help="debits per commit")
    parser.add_argument("--warm", type=int, default=100, help="batches before the windows")
    parser.add_argument("--windows", type=int, default=5)
    parser.add_argument("--batches", type=int, default=60, help="batches per window")
    parser.add_argument("--amount-max", type=int, default=10)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--config", default=str(e2e_load.LOAD_CONFIG))
    parser.add_argument("--prebuilt-cache", metavar="DIR",
                        help="e2e_load's cache of prebuilt books (else each run prebuilds)")
    parser.add_argument("--pregrow-mb", type=int, default=0, metavar="MIB",
                        help="MiB of zeros written past the end of each copy's data file "
                             "before it opens, a diagnostic (e2e_load.pregrow_data_file; "
                             "default 0: none)")
    parser.add_argument("--dir", help="where the data dirs are copied (default: a temp dir)")
    parser.add_argument("--json-out")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    return parser


# ------------------------------------------------------------------ one size (the child)
def measure(accounts: int, args) -> dict:
    from switch.clock import FakeClock
    from switch.cli.datadir import open_data_dir
    from switch.config import load_config
    from switch.ledger import Ledger, dispatch

    root = pathlib.Path(tempfile.mkdtemp(prefix="ledger-scale-", dir=args.dir))
    try:
        tag = f"{random.Random(args.seed).getrandbits(32):08X}"   # e2e_load's, per seed
        books = argparse.Namespace(accounts=accounts, terminals=args.terminals,
                                   config=args.config, prebuilt_cache=args.prebuilt_cache,
                                   prebuild=True, seed=args.seed)
        cards, terminals = e2e_load.prebuild_or_copy(root / "data", tag, books)
        if args.pregrow_mb:
            e2e_load.pregrow_data_file(root / "data", args.pregrow_mb)
        store = open_data_dir(str(root / "data"))
        try:
            ledger = Ledger(store, load_config(args.config), FakeClock(int(time.time() * 1000)))
            credentials = [ledger.credential(who) for who, _ in terminals]
            debits = _Debits(random.Random(args.seed), cards, credentials, args)
            del cards
            gc.collect()
            gc.freeze()   # as `switch serve` does once started (switch/cli/main.py)

            def window(batches: int) -> tuple[float, float, dict]:
                execute_s = commit_s = 0.0
                codes: dict[str, int] = {}
                for _ in range(batches):
                    batch = debits.next_batch()
                    began = time.process_time()
                    for credential, message in batch:
                        code = dispatch.execute(ledger, credential, message)["code"]
                        codes[code] = codes.get(code, 0) + 1
                    ledger.take_effects()   # nobody is connected to be told
                    executed = time.process_time()
                    sealed = store.seal()
                    _write(store, sealed)
                    store.committed(sealed)
                    execute_s += executed - began
                    commit_s += time.process_time() - executed
                count = batches * args.batch
                return execute_s / count * 1e6, commit_s / count * 1e6, codes

            window(args.warm)
            runs = [window(args.batches) for _ in range(args.windows)]
            reads = _timed_reads(store, lambda: window(args.batches),
                                 args.batches * args.batch)
        finally:
            store.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    codes: dict[str, int] = {}
    for _, _, run_codes in runs:
        for code, count in run_codes.items():
            codes[code] = codes.get(code, 0) + count
    return {"accounts": accounts, "execute": _figures([run[0] for run in runs]),
            "commit": _figures([run[1] for run in runs]),
            "total": _figures([run[0] + run[1] for run in runs]), "codes": codes,
            "reads": reads}


def _write(store, batch) -> None:
    """`write_batch`, growing the map as the committer does when LMDB finds it full."""
    import lmdb
    for _ in range(MAP_GROWTHS_MAX):
        try:
            return store.write_batch(batch)
        except lmdb.MapFullError:
            store.grow_map()
    raise RuntimeError(f"the map still full after {MAP_GROWTHS_MAX} growths")


class _Debits:
    """Each batch's debits: random cards, the tills in turn, each till's ids rising."""

    def __init__(self, rng: random.Random, cards: list[str], credentials: list, args):
        self.rng, self.cards, self.credentials = rng, cards, credentials
        self.batch, self.amount_max = args.batch, args.amount_max
        self.next_id = [FIRST_REQUEST_ID] * len(credentials)

    def next_batch(self) -> list:
        rng, cards, credentials, next_id = self.rng, self.cards, self.credentials, self.next_id
        batch = []
        for n in range(self.batch):
            till = n % len(credentials)
            batch.append((credentials[till], {"t": "debit", "card": rng.choice(cards),
                                              "amount": rng.randint(1, self.amount_max),
                                              "id": next_id[till]}))
            next_id[till] += 1
        return batch


def _timed_reads(store, run_window, debits: int) -> dict:
    """Per database, over one window run with the store's LMDB reads timed: the committed
    reads a debit made (`Store.get_committed`, what neither the open nor the sealed batch
    held), how many of them reached LMDB and their wall time each (`perf_counter_ns` around
    the C call), and how many were answered from memory instead (a round's, or whatever
    else the tree measured keeps)."""
    committed: dict[str, int] = {}
    tally: dict[str, list[int]] = {}      # db -> [reads, ns]
    names = {id(handle): name for name, handle in store.dbs.items()}
    plain_get_committed, plain_begin_read = store.get_committed, store._begin_read

    def get_committed(db, key):
        committed[db] = committed.get(db, 0) + 1
        return plain_get_committed(db, key)

    def begin_read():
        plain_begin_read()
        store._read = _TimedReads(store._read, names, tally)

    # On this instance only, for this window: a new read transaction after each commit.
    store.get_committed, store._begin_read = get_committed, begin_read
    store._read = _TimedReads(store._read, names, tally)
    try:
        run_window()
    finally:
        del store.get_committed, store._begin_read
        store._end_read()
        store._begin_read()
    result = {}
    for db in sorted(committed):
        reads, ns = tally.get(db, (0, 0))
        result[db] = {"lmdb_reads_per_debit": round(reads / debits, 3),
                      "lmdb_ns_per_read": round(ns / reads) if reads else None,
                      "from_memory_per_debit": round((committed[db] - reads) / debits, 3)}
    return result


class _TimedReads:
    """A read transaction whose `get` is timed per database; the rest passes through."""

    def __init__(self, txn, names: dict, tally: dict):
        self._txn, self._names, self._tally = txn, names, tally

    def get(self, key, default=None, db=None):
        began = time.perf_counter_ns()
        value = self._txn.get(key, default, db)
        elapsed = time.perf_counter_ns() - began
        counts = self._tally.setdefault(self._names[id(db)], [0, 0])
        counts[0] += 1
        counts[1] += elapsed
        return value

    def __getattr__(self, name):
        return getattr(self._txn, name)


def _figures(runs_us: list[float]) -> dict:
    return {"best_us": round(min(runs_us), 3), "median_us": round(statistics.median(runs_us), 3),
            "runs_us": [round(run, 3) for run in runs_us]}


# ------------------------------------------------------------------ every size (the parent)
def _child(accounts: int, argv: list[str]) -> dict:
    done = subprocess.run([sys.executable, __file__, *argv, "--child", str(accounts)],
                          stdout=subprocess.PIPE, check=True, timeout=CHILD_TIMEOUT_S,
                          text=True, cwd=REPO)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _print(rows: list[dict]) -> None:
    print(f"{'accounts':>9} {'execute µs':>10} {'commit µs':>9} {'total µs':>8}  "
          "LMDB reads per debit (ns each); from a round's memory per debit")
    for row in rows:
        reads = "  ".join(
            f"{db} {r['lmdb_reads_per_debit']:.2f} ({r['lmdb_ns_per_read'] or 0:,} ns); "
            f"{r['from_memory_per_debit']:.2f}" for db, r in row["reads"].items())
        print(f"{row['accounts']:>9,} {row['execute']['median_us']:>10.2f} "
              f"{row['commit']['median_us']:>9.2f} {row['total']['median_us']:>8.2f}  {reads}")


def _shown(args) -> dict:
    """The arguments as a result records them: paths as e2e_load shows them, not this
    machine's."""
    shown = {key: value for key, value in vars(args).items() if key != "child"}
    for key in ("config", "prebuilt_cache", "dir", "json_out"):
        if shown[key] is not None:
            shown[key] = e2e_load.shown_path(shown[key])
    return shown


def _revision() -> str | None:
    """The commit measured, marked `+changes` when the tree differs from it; None outside a
    git checkout."""
    def git(*words):
        return subprocess.run(["git", "-C", str(e2e_load.REPO), *words], capture_output=True,
                              text=True, timeout=30)
    head = git("rev-parse", "--short", "HEAD")
    if head.returncode != 0:
        return None
    changed = git("status", "--porcelain", "--untracked-files=no").stdout.strip()
    return head.stdout.strip() + ("+changes" if changed else "")


def main(argv=None) -> int:
    parser = _parser()
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    if args.child is not None:
        print(json.dumps(measure(args.child, args)))
        return 0
    if args.pregrow_mb < 0:
        parser.error("--pregrow-mb: a count of MiB, 0 for none")
    counts = e2e_load.account_counts(parser, args.accounts)
    started_at = time.time()
    rows = [_child(accounts, argv) for accounts in counts]
    _print(rows)
    first = rows[0]
    ratios = {str(row["accounts"]): {stage: round(row[stage]["median_us"]
                                                  / first[stage]["median_us"], 3)
                                     for stage in ("execute", "commit", "total")}
              for row in rows[1:]}
    for accounts, by_stage in ratios.items():
        print(f"{int(accounts):,} / {first['accounts']:,} accounts, CPU per debit (medians): "
              + "  ".join(f"{stage} {ratio:.2f}×" for stage, ratio in by_stage.items()))
    if args.json_out:
        pathlib.Path(args.json_out).write_text(json.dumps(
            {"command": e2e_load._command_line(argv, __file__),
             "started_at": started_at, "revision": _revision(),
             "args": _shown(args),
             "rows": rows, "ratios_over_first": ratios}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
