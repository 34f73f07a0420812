"""What a long write-back round costs outside the hot path: the memory its logged writes hold,
the open after a crash that replays them, and the clean stop that writes them back.

    .venv/bin/python bench/replay_cost.py --json-out bench/results/replay_cost.json

At a large accounts table a round of account records lasts 0.6 writes per record
(switch/limits.py `logged_writes_per_account_ratio`, at most `logged_writes_held_max`): at a
million accounts about 600,000 debits, each logging its account record (and its remembered
id, whose rounds of 32,768 are their own). This builds
--accounts account records (176 bytes, keys shaped like the benchmark's) in a Store of its
own, then commits debits' writes, --batch a commit (an account at random and a new id from
one of 2,000 tills), until the logs hold the most a round can leave behind: a whole round
being written back and the next one full. It measures:

- the Store's anonymous memory grown by those logged writes at its peak (RssAnon, this
  process, after each commit), and the most writes it held in memory: a slice of the round
  being written back leaves memory once committed, so that is about a round, at a round's
  start, while the logs on disk hold up to a round and a half;
- the open of the data dir left as a crash leaves it (`close(write_back=False)`): the
  replay of both logs, wall time;
- a clean stop (`close()`) of a store whose logs hold as much again, which writes them
  back, wall time.

Speed is measured here, never asserted in a test.
"""

import argparse
import json
import os
import pathlib
import random
import shutil
import sys
import tempfile
import time

BENCH = pathlib.Path(__file__).resolve().parent
REPO = BENCH.parent
for path in (str(BENCH), str(REPO)):
    if path not in sys.path:
        sys.path.insert(0, path)

import e2e_load  # noqa: E402  (the command line a result records, as every bench script's)
from switch.persistence import writeback  # noqa: E402
from switch.persistence.store import Store  # noqa: E402

RECORD_BYTES = 176
TILLS = 2_000
MAP_BYTES = 16 << 30      # room for every round: the switch grows its map, this does not


def _anon_kib() -> int:
    return e2e_load.process_memory_kib(os.getpid())["RssAnon"]


def measure(accounts: int, batch: int, seed: int, workdir: str) -> dict:
    rng = random.Random(seed)
    path = tempfile.mkdtemp(prefix="replay-cost-", dir=workdir)
    try:
        store = Store(path, MAP_BYTES, fsync=False)
        record = bytearray(rng.randbytes(RECORD_BYTES))
        for first in range(0, accounts, 10_000):
            for n in range(first, min(first + 10_000, accounts)):
                store.put("accounts", b"BENCH-rc-%07d" % n, record)
            store.commit_now()
        store.close()
        store = Store(path, MAP_BYTES, fsync=False)   # counts the table: the round's bounds
        writes_max, _ = store.round_bounds()
        before_kib = _anon_kib()
        peak = {"anon_kib": before_kib, "held": 0}
        tills = [0] * TILLS

        def debits(count: int) -> bool:
            started = False
            for _ in range(count // batch):
                for _ in range(batch):
                    till = rng.randrange(TILLS)
                    tills[till] += 1
                    store.put("accounts", b"BENCH-rc-%07d" % rng.randrange(accounts),
                              bytearray(record))
                    store.put("idempotency", b"till-%04d\0%d" % (till, tills[till]), b"r" * 40)
                batch_committed = store.seal()
                store.write_batch(batch_committed)
                store.committed(batch_committed)
                started = started or batch_committed.rounds["accounts"].starts_round
                peak["anon_kib"] = max(peak["anon_kib"], _anon_kib())
                peak["held"] = max(peak["held"], store.logs_pending)
            return started

        def fill_both_logs() -> int:
            # The most the logs hold: a round full, and the next one filling until the
            # commits that write the first back (twice what each logs) are at its last slice.
            first_round = 0
            while not debits(batch):
                first_round += batch
            while not last_slice_next():
                debits(batch)
            return first_round

        def last_slice_next() -> bool:
            accounts_round = store._rounds["accounts"]   # the long one, and how far it is
            order = accounts_round.order
            return order is None or order.length - accounts_round.done <= 4 * batch

        def on_disk() -> int:
            return len(writeback.newest_logged(store._read, store.dbs))

        first_round = fill_both_logs()
        pending, in_memory = on_disk(), store.logs_pending
        grown_kib, held_most = peak["anon_kib"] - before_kib, peak["held"]
        store.close(write_back=False)           # as a crash leaves it
        began = time.perf_counter()
        store = Store(path, MAP_BYTES)          # durable from here, as the switch's
        reopen_s = time.perf_counter() - began
        fill_both_logs()                         # the logs as full again, then a clean stop
        pending_at_close = on_disk()
        began = time.perf_counter()
        store.close()
        close_s = time.perf_counter() - began
        return {"accounts": accounts, "round_writes_max": writes_max,
                "debits_in_first_round": first_round,
                "logged_writes_held": pending, "logged_writes_in_memory": in_memory,
                "anon_grown_mib": grown_kib / 1024, "logged_writes_in_memory_max": held_most,
                "bytes_per_logged_write": grown_kib * 1024 / held_most if held_most else None,
                "reopen_replay_s": reopen_s, "logged_writes_at_close": pending_at_close,
                "clean_close_s": close_s}
    finally:
        shutil.rmtree(path, ignore_errors=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--accounts", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=1_000, help="debits a commit")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workdir", default=None, help="parent of the data dir ($TMPDIR)")
    parser.add_argument("--json-out")
    args = parser.parse_args(argv)
    if args.accounts < 1 or args.batch < 1:
        parser.error("--accounts and --batch: at least 1")
    result = measure(args.accounts, args.batch, args.seed, args.workdir)
    result["command"] = " ".join(["bench/replay_cost.py"] + (argv or sys.argv[1:]))
    print(json.dumps(result, indent=1))
    if args.json_out:
        pathlib.Path(args.json_out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
