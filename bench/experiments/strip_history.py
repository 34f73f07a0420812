"""Measurement only: a copy of prebuilt books without their history, compacted, so that a
1,000,000-account map holds the accounts and cards alone (0.41 GB instead of 1.63 GB).

    .venv/bin/python bench/experiments/strip_history.py "$TMPDIR/books/KEY" "$TMPDIR/books-nohist/KEY"

SOURCE is an entry of `e2e_load.py --prebuilt-cache` (its data dir, master key and
terminals); TARGET becomes the same entry with the journal, its history marks and the
remembered ids emptied (3,000,000 each at 1,000,000 accounts: the prebuild's own admin
requests). `bench/abba.py --a-args "--prebuilt-cache $TMPDIR/books" --b-args
"--prebuilt-cache $TMPDIR/books-nohist"` then runs the switch on both. Such books are not
books a switch may hold: balances without the journal that made them, so `audit` of them
is not sound (run with --no-audit). The copy is compacted as well, so a comparison with
the books as prebuilt (not compacted) bounds the history's cost from above. bench/RESULTS.md,
2026-12-03 (10:15), has what it measured.
"""

import os
import pathlib
import shutil
import sys

import lmdb

STRIPPED = ("journal", "history_marks", "idempotency")
MAX_DBS = 64
MAP_SIZE_BYTES = 8 << 30


def strip(source: pathlib.Path, target: pathlib.Path) -> dict:
    shutil.copytree(source, target)
    store = target / "data" / "lmdb"
    env = lmdb.open(str(store), max_dbs=MAX_DBS, map_size=MAP_SIZE_BYTES)
    dropped = {}
    try:
        with env.begin(write=True) as txn:
            for name in STRIPPED:
                db = env.open_db(name.encode(), txn=txn, create=False)
                dropped[name] = txn.stat(db)["entries"]
                txn.drop(db, delete=False)
        compact = store.with_name("lmdb.compact")
        compact.mkdir()
        env.copy(str(compact), compact=True)
    finally:
        env.close()
    before = (store / "data.mdb").stat().st_size
    os.replace(compact / "data.mdb", store / "data.mdb")
    shutil.rmtree(compact)
    with open(store / "data.mdb", "rb") as handle:   # on the disk before a run copies it
        os.fsync(handle.fileno())
    return {"dropped": dropped, "bytes_before": before,
            "bytes_after": (store / "data.mdb").stat().st_size}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    source, target = map(pathlib.Path, argv)
    if not (source / "data" / "lmdb" / "data.mdb").is_file() or target.exists():
        print("SOURCE: a prebuilt books entry; TARGET: a path that does not exist yet",
              file=sys.stderr)
        return 2
    figures = strip(source, target)
    print(f"emptied {figures['dropped']}; data.mdb {figures['bytes_before']:,} -> "
          f"{figures['bytes_after']:,} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
