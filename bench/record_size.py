"""What an account record's size costs LMDB at 10,000 and 1,000,000 accounts, measured apart.

    .venv/bin/python bench/record_size.py --json-out bench/results/record_size.json

docs/SCALING.md §1.1 asked whether splitting the account record into the part a debit reads
and writes (about 96 bytes) and the part only a PIN check reads (the salt and hashes) would
close the gap between 1,000,000 and 10,000 accounts. This measures the two sizes in the
same process, on one LMDB environment per arm, with keys shaped like the benchmark's
account ids (`BENCH-<tag>-<7 digits>`):

- lookup: `txn.get` of random accounts in one read transaction (a debit reads its account);
- rewrite: random accounts read and put back, --batch per write transaction, committed
  without fsync (the copy-on-write of the leaves and branches above them, not the disk);
- write-back: the same accounts per transaction, sorted first, as a round's slice is
  (switch/persistence/writeback.py).

CPU time from `time.process_time()` per operation, the best of --repeats; and LMDB's own
statistics of each tree (depth, leaves). The real map also holds the journal and the
remembered ids, so its account leaves are further apart than here: the figures are the
record's share, not the whole debit's. Speed is measured here, never asserted in a test.
"""

import argparse
import json
import pathlib
import random
import shutil
import sys
import tempfile
import time

import lmdb

BENCH = pathlib.Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import e2e_load  # noqa: E402  (the command line a result records, and --accounts)

RECORD_SIZES = (176, 96)      # today's record; the part a debit touches (SCALING §1.1)


def account_key(i: int) -> bytes:
    return f"BENCH-ab12-{i:07d}".encode()


def build(path: pathlib.Path, accounts: int, size: int):
    env = lmdb.open(str(path), map_size=4 << 30, max_dbs=2, sync=False, metasync=False)
    db = env.open_db(b"accounts")
    value = bytes(size)
    chunk = 100_000
    for start in range(0, accounts, chunk):
        with env.begin(write=True, db=db) as txn:
            cursor = txn.cursor()
            cursor.putmulti((account_key(i), value)
                            for i in range(start, min(accounts, start + chunk)))
    return env, db


def cpu_per_op(run, ops: int, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.process_time()
        run()
        best = min(best, time.process_time() - started)
    return best / ops * 1e6


def measure(root: pathlib.Path, accounts: int, size: int, args) -> dict:
    path = root / f"a{accounts}-r{size}"
    path.mkdir()
    env, db = build(path, accounts, size)
    rng = random.Random(args.seed)
    lookups = [account_key(rng.randrange(accounts)) for _ in range(args.lookups)]
    writes = [[account_key(rng.randrange(accounts)) for _ in range(args.batch)]
              for _ in range(args.batches)]

    def lookup():
        with env.begin(db=db) as txn:
            get = txn.get
            for key in lookups:
                get(key)

    def rewrite(sort: bool):
        for batch in writes:
            keys = sorted(batch) if sort else batch
            with env.begin(write=True, db=db) as txn:
                get, put = txn.get, txn.put
                for key in keys:
                    put(key, bytes(get(key)))

    result = {
        "accounts": accounts, "record_bytes": size,
        "lookup_us": cpu_per_op(lookup, len(lookups), args.repeats),
        "rewrite_us": cpu_per_op(lambda: rewrite(False), args.batch * args.batches,
                                 args.repeats),
        "writeback_us": cpu_per_op(lambda: rewrite(True), args.batch * args.batches,
                                   args.repeats),
    }
    with env.begin() as txn:
        stat = txn.stat(db)
    result.update(depth=stat["depth"], leaves=stat["leaf_pages"],
                  branches=stat["branch_pages"],
                  per_leaf=round(accounts / stat["leaf_pages"], 1))
    env.close()
    shutil.rmtree(path)
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--accounts", default="10000,1000000",
                        help="account counts to compare, comma-separated (default: %(default)s)")
    parser.add_argument("--lookups", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=1_000, help="accounts per write txn")
    parser.add_argument("--batches", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--dir", help="where the environments are built (default: a temp dir)")
    parser.add_argument("--json-out")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    account_counts = e2e_load.account_counts(parser, args.accounts)
    root = pathlib.Path(tempfile.mkdtemp(prefix="record-size-", dir=args.dir))
    try:
        rows = [measure(root, accounts, size, args)
                for accounts in account_counts for size in RECORD_SIZES]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"{'accounts':>9} {'record B':>8} {'depth':>5} {'leaves':>7} {'per leaf':>8} "
          f"{'lookup µs':>9} {'rewrite µs':>10} {'write-back µs':>13}")
    for r in rows:
        print(f"{r['accounts']:>9,} {r['record_bytes']:>8} {r['depth']:>5} {r['leaves']:>7,} "
              f"{r['per_leaf']:>8} {r['lookup_us']:>9.2f} {r['rewrite_us']:>10.2f} "
              f"{r['writeback_us']:>13.2f}")
    by = {(r["accounts"], r["record_bytes"]): r for r in rows}
    ratios = {}
    for accounts in account_counts:
        small, big = by[(accounts, RECORD_SIZES[1])], by[(accounts, RECORD_SIZES[0])]
        ratios[accounts] = {k: round(small[k] / big[k], 3)
                            for k in ("lookup_us", "rewrite_us", "writeback_us")}
        print(f"{accounts:>9,}: {RECORD_SIZES[1]} B / {RECORD_SIZES[0]} B  " + "  ".join(
            f"{k[:-3]} {v:.2f}×" for k, v in ratios[accounts].items()))
    if args.json_out:
        pathlib.Path(args.json_out).write_text(json.dumps(
            {"command": e2e_load._command_line(argv, __file__),
             "args": vars(args), "rows": rows,
             "ratios_small_over_big": {str(k): v for k, v in ratios.items()}},
            indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
