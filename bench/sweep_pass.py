"""The retention sweep's pass, timed: the CPU a pass of `idempotency_sweep_ids_per_pass_max`
remembered ids costs the event loop when none of them is due (the usual pass), judged at
once (`none_remembered_before`, what the switch does) against reading each id's time (what
it does when one may be due, and did for every pass before).

    .venv/bin/python bench/sweep_pass.py --ids 200000 --repeats 7

Builds a scratch store of remembered ids with the switch's own value layout; measurement
only, nothing here is asserted by a test."""

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import msgpack

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from switch import limits  # noqa: E402
from switch.ledger.state import none_remembered_before, remembered_at_ms_read_fast  # noqa: E402
from switch.persistence.store import Store  # noqa: E402

NOW_MS = 1_780_000_000_000          # 2026: every time packed as a uint64, as on a real clock


def build(path: str, ids: int) -> Store:
    store = Store(path)
    pack = msgpack.Packer(use_bin_type=True).pack
    for n in range(ids):
        key = b"pos-%d\0" % (n % 2000) + pack(n)
        reply = {"t": "debit", "code": "ok", "balance": 12_345, "txn": n}
        store.put("idempotency", key, pack(["debit", bytes(16), reply, NOW_MS - n]))
        if n % 20_000 == 19_999:
            store.commit_now()
    store.commit_now()
    return store


def walk(store: Store, after, count: int) -> list:
    """The pass's ids as the sweep read them before `committed_after`: a generator over a
    cursor, a Python step per id."""
    items = []
    for key, data in store.committed_items("idempotency", start=after):
        if key == after:
            continue
        items.append((key, data))
        if len(items) == count:
            break
    return items


def read_each(items, cutoff_ms: int) -> int:
    return sum(remembered_at_ms_read_fast(data) < cutoff_ms for _, data in items)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ids", type=int, default=200_000)
    parser.add_argument("--per-pass", type=int, default=limits.idempotency_sweep_ids_per_pass_max)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json-out")
    args = parser.parse_args(argv)
    if args.ids < args.per_pass or args.per_pass < 1 or args.repeats < 1:
        parser.error("need --ids >= --per-pass >= 1 and --repeats >= 1")
    cutoff_ms = NOW_MS - 8 * 24 * 3600 * 1000     # nothing is due
    with tempfile.TemporaryDirectory() as scratch:
        store = build(scratch, args.ids)
        passes = args.ids // args.per_pass
        timings = {"walked": [], "read": [], "judged": [], "judged_and_read": []}
        for _ in range(args.repeats):
            for name in timings:
                after, spent = None, 0.0
                for _ in range(passes):
                    start = time.thread_time()
                    if name == "walked":      # the pass before: a cursor walked in Python
                        items = walk(store, after, args.per_pass)
                        assert read_each(items, cutoff_ms) == 0
                        spent += time.thread_time() - start
                        after = items[-1][0]
                        continue
                    items = store.committed_after("idempotency", after, args.per_pass)
                    if name == "read":
                        assert read_each(items, cutoff_ms) == 0
                    elif name == "judged":
                        assert none_remembered_before(items, cutoff_ms)
                    else:
                        none_remembered_before(items, cutoff_ms)
                        read_each(items, cutoff_ms)
                    spent += time.thread_time() - start
                    after = items[-1][0]
                timings[name].append(spent / (passes * args.per_pass) * 1e6)
        store.close()
    result = {name: statistics.median(values) for name, values in timings.items()}
    print(f"{args.ids} remembered ids, passes of {args.per_pass}, median of {args.repeats}:")
    for name, label in (("walked", "walked and read (the pass before)"),
                        ("read", "each id's time read"), ("judged", "judged at once"),
                        ("judged_and_read", "judged, then read (a pass with one due)")):
        print(f"  {label:42} {result[name]:.3f} µs an id, "
              f"{result[name] * args.per_pass / 1000:.2f} ms a pass")
    print(f"  judged at once / the pass before: {result['judged'] / result['walked']:.2f}")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(
            {"ids": args.ids, "per_pass": args.per_pass, "repeats": args.repeats,
             "us_per_id": result, "samples": timings}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
