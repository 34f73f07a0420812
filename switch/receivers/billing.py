"""Reference billing receiver: per-merchant, per-local-day totals of the money the tills
took, written as a settlement CSV (`merchant,day,count,total_fen,subsidy_fen`) after every
frame. `total_fen` is all of it; `subsidy_fen` the part the students' subsidy purses paid
(docs/PROTOCOL.md §4.17), so the cash the school owes the merchant is the difference.

The figures are those of the switch's own `settle` (docs/PROTOCOL.md §4.11), summed
per merchant: debit, qr_debit, complete and offline amounts as positive fen, on the local
day of the record (an offline record on the day it was tapped), and a reverse takes its
original back out of the original's day.

    python -m switch.receivers.billing --listen 127.0.0.1:7101 --state billing-state \\
        --credential switch-billing --key-file billing.key
"""

import argparse
import bisect
import sys
from datetime import datetime
from zoneinfo import ZoneInfo

from switch import limits
from switch.ledger import schema
from switch.receivers.base import Receiver, csv_bytes, is_int_in, is_time, parser, run_main

MONEY_KINDS = frozenset({"debit", "qr_debit", "complete", "offline"})
WANTED_KINDS = MONEY_KINDS | {"reverse"}
SETTLEMENT_FILE = "settlement.csv"
DEFAULT_TIME_ZONE = "Asia/Shanghai"


class BillingReceiver(Receiver):
    name = "billing"
    wanted_kinds = WANTED_KINDS

    def __init__(self, state_dir: str, credentials: dict[str, bytes],
                 time_zone: str = DEFAULT_TIME_ZONE):
        self.zone = ZoneInfo(time_zone)
        super().__init__(state_dir, credentials)

    def reset(self) -> None:
        # (merchant, day) -> [count, fen, of which subsidy fen]
        self.totals: dict[tuple[str, str], list[int]] = {}
        # A reverse names its original by txn only. The switch's clock only moves forward,
        # so "txn -> local day" is a short list of (first txn, day) runs, not a map of txns.
        self.segment_txns: list[int] = []
        self.segment_days: list[str] = []

    def day_of(self, unix_ms: int) -> str:
        return datetime.fromtimestamp(unix_ms / 1000, tz=self.zone).date().isoformat()

    def _note_day(self, txn: int, day: str) -> None:
        if not self.segment_days or self.segment_days[-1] != day:
            self.segment_txns.append(txn)
            self.segment_days.append(day)
            if len(self.segment_txns) > limits.receiver_day_segments_max:
                del self.segment_txns[0], self.segment_days[0]

    def _day_of_txn(self, txn: int) -> str | None:
        index = bisect.bisect_right(self.segment_txns, txn) - 1
        return self.segment_days[index] if index >= 0 else None

    def kind_problem(self, record: dict) -> str | None:
        if schema.short_text(record.get("merchant")) is schema.INVALID:
            return "a till's money record has a merchant"
        if record["kind"] == "reverse":
            if record["amount"] < 0:
                return "a reverse gives money back"
            if not is_int_in(record.get("target"), 1, record["txn"] - 1):
                return "a reverse's target is an earlier txn"
        elif record["amount"] > 0:
            return "a payment takes money"
        # The subsidy's part is at most the whole, and of the same direction.
        if not is_int_in(record.get("from_subsidy", 0), min(0, -record["amount"]),
                         max(0, -record["amount"])):
            return "from_subsidy is a part of the amount"
        if record["kind"] == "offline" and "tapped_at" in record and \
                not is_time(record["tapped_at"]):
            return f"tapped_at {record['tapped_at']!r} is not a time in range"
        return None

    def apply(self, record: dict) -> None:
        kind = record["kind"]
        if kind not in WANTED_KINDS:
            return
        switch_day = self.day_of(record["at"])
        self._note_day(record["txn"], switch_day)
        if kind == "reverse":
            day = self._day_of_txn(record["target"])
            # The reverse record's amount is the credit back: positive, so it subtracts.
            self._add(record["merchant"], day or switch_day, -1, -record["amount"],
                      record.get("from_subsidy", 0))
            return
        day = self.day_of(record["tapped_at"]) if kind == "offline" and "tapped_at" in record \
            else switch_day
        self._add(record["merchant"], day, 1, -record["amount"], record.get("from_subsidy", 0))

    def _add(self, merchant: str, day: str, count: int, fen: int, subsidy_fen: int) -> None:
        totals = self.totals.setdefault((merchant, day), [0, 0, 0])
        totals[0] += count
        totals[1] += fen
        totals[2] += subsidy_fen

    def snapshot(self) -> dict:
        return {"totals": [[merchant, day, *totals]
                           for (merchant, day), totals in sorted(self.totals.items())],
                "segments": [self.segment_txns, self.segment_days]}

    def restore(self, data: dict) -> None:
        # A state saved before subsidies has no subsidy column: none was paid then.
        self.totals = {(merchant, day): [count, fen, *(subsidy or [0])]
                       for merchant, day, count, fen, *subsidy in data["totals"]}
        self.segment_txns, self.segment_days = data["segments"]

    def settlement_rows(self) -> list[tuple[str, str, int, int]]:
        return [(merchant, day, count, fen, subsidy_fen)
                for (merchant, day), (count, fen, subsidy_fen) in sorted(self.totals.items())]

    def outputs(self) -> list[tuple[str, bytes]]:
        return [(SETTLEMENT_FILE, csv_bytes(["merchant", "day", "count", "total_fen", "subsidy_fen"],
                                            self.settlement_rows()))]


def _time_zone(name: str) -> str:
    try:
        ZoneInfo(name)
    except (ValueError, KeyError):  # ZoneInfoNotFoundError is a KeyError
        raise argparse.ArgumentTypeError(f"unknown time zone {name!r} (an IANA name such as "
                                         f"Asia/Shanghai)") from None
    return name


def main(argv=None) -> int:
    arguments = parser("python -m switch.receivers.billing",
                       "Reference billing receiver: per-merchant daily settlement CSV")
    arguments.add_argument("--time-zone", default=DEFAULT_TIME_ZONE, type=_time_zone,
                           help="the schools' local time zone for days (default Asia/Shanghai)")
    args = arguments.parse_args(argv)
    return run_main(lambda state, credentials: BillingReceiver(state, credentials,
                                                               args.time_zone), args)


if __name__ == "__main__":
    sys.exit(main())
