"""The Store's own part of a debit, in phases, at a given accounts table: no network, no
ledger, the same reads and writes a plain debit makes of the Store.

    .venv/bin/python bench/store_cost.py --accounts 1000000 --json-out "$TMPDIR/store.json"

Builds --accounts account records (176 bytes) in a Store of its own (`fsync` off: the disk is
not what is measured), then commits --commits batches of 1,000 debits, each reading and
writing one account at random, looking up a new remembered id from one of 2,000 tills and
writing it, after a quarter as many batches of warm-up. CPU per debit (`time.process_time`)
of each phase: executing the reads and writes, `seal`, the write transaction, `committed`.
--tree imports the switch from another checkout (a `git worktree` of an older revision with
its extensions built), so two revisions run the same loop. A round at a million accounts
is about 566,000 debits: --commits 1600 covers about three.

Speed is measured here, never asserted in a test.
"""

import argparse
import json
import pathlib
import random
import shutil
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
DEBITS_PER_COMMIT = 1_000
TILLS = 2_000
RECORD_BYTES = 176
MAP_BYTES = 16 << 30


def measure(accounts: int, commits: int, seed: int, workdir) -> dict:
    from switch.persistence.store import Store
    rng = random.Random(seed)
    path = tempfile.mkdtemp(prefix="store-cost-", dir=workdir)
    try:
        store = Store(path, MAP_BYTES, fsync=False)
        record = bytearray(RECORD_BYTES)
        for first in range(0, accounts, 10_000):
            for n in range(first, min(first + 10_000, accounts)):
                store.put("accounts", b"WH%09d" % n, record)
            store.commit_now()
        store.close()
        store = Store(path, MAP_BYTES, fsync=False)   # counts the table: the round's bounds
        tills = [0] * TILLS
        spent = {"execute": 0.0, "seal": 0.0, "write": 0.0, "committed": 0.0}
        clock = time.process_time

        def run(batches: int, counted: bool) -> None:
            for _ in range(batches):
                began = clock()
                for _ in range(DEBITS_PER_COMMIT):
                    till = rng.randrange(TILLS)
                    tills[till] += 1
                    key = b"WH%09d" % rng.randrange(accounts)
                    store.put("accounts", key, store.get_mutable("accounts", key))
                    remembered = b"till-%04d\0%d" % (till, tills[till])
                    store.get("idempotency", remembered)
                    store.put("idempotency", remembered, b"r" * 40)
                executed = clock()
                batch = store.seal()
                sealed = clock()
                store.write_batch(batch)
                written = clock()
                store.committed(batch)
                if counted:
                    spent["execute"] += executed - began
                    spent["seal"] += sealed - executed
                    spent["write"] += written - sealed
                    spent["committed"] += clock() - written
        run(max(1, commits // 4), False)
        run(commits, True)
        store.close(write_back=False)
        debits = commits * DEBITS_PER_COMMIT
        per_debit = {phase: 1e6 * seconds / debits for phase, seconds in spent.items()}
        return {"accounts": accounts, "debits": debits, "us_per_debit": per_debit,
                "us_per_debit_total": sum(per_debit.values())}
    finally:
        shutil.rmtree(path, ignore_errors=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--accounts", type=int, default=1_000_000)
    parser.add_argument("--commits", type=int, default=1_600)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--tree", help="the checkout whose switch is measured (default: this)")
    parser.add_argument("--workdir", default=None, help="parent of the data dir ($TMPDIR)")
    parser.add_argument("--json-out")
    args = parser.parse_args(argv)
    if args.accounts < 1 or args.commits < 1:
        parser.error("--accounts and --commits: at least 1")
    tree = pathlib.Path(args.tree).resolve() if args.tree else REPO
    if not (tree / "switch" / "persistence" / "store.py").is_file():
        parser.error(f"--tree {args.tree}: no switch/persistence/store.py there")
    sys.path.insert(0, str(tree))
    result = measure(args.accounts, args.commits, args.seed, args.workdir)
    result["command"] = " ".join(["bench/store_cost.py"] + (argv or sys.argv[1:]))
    print(json.dumps(result, indent=1))
    if args.json_out:
        pathlib.Path(args.json_out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
