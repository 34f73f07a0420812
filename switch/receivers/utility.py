"""Reference utility-control receiver: each dorm room's power state from `cutoff`/`restore`,
its recharges (`credit`), its meter deductions and what a `refund` paid out when it was
closed, written as `rooms.csv` after every frame.

A real power controller would switch the room's relay where `apply` sets `power`.

    python -m switch.receivers.utility --listen 127.0.0.1:7102 --state utility-state \\
        --credential switch-utility --key-file utility.key
"""

import sys
from collections import OrderedDict

from switch import limits
from switch.receivers.base import Receiver, csv_bytes, parser, run_main

WANTED_KINDS = frozenset({"credit", "meter", "cutoff", "restore", "refund"})
ROOMS_FILE = "rooms.csv"


def _new_room(school) -> dict:
    # A new room has no money and so no power (docs/PROTOCOL.md §4.12).
    return {"school": school, "power": "off", "power_txn": 0, "balance_fen": 0,
            "recharged_fen": 0, "recharges": 0, "metered_fen": 0, "meters": 0,
            "refunded_fen": 0}


class UtilityReceiver(Receiver):
    name = "utility"
    wanted_kinds = WANTED_KINDS

    def reset(self) -> None:
        self.rooms: dict[str, dict] = {}
        # Credits reach every account, people's too, and a record does not say which kind
        # of account it is. A room is an account that has had a meter, cutoff or restore
        # record; its first recharge is the credit just before its first `restore` (same
        # account and request id), so unknown accounts' credits wait here, a bounded few.
        self.pending_credits: OrderedDict[str, dict] = OrderedDict()

    def kind_problem(self, record: dict) -> str | None:
        if record["kind"] in ("cutoff", "restore") and record["amount"] != 0:
            return "a power change moves no money"
        if record["kind"] == "credit" and record["amount"] < 0:
            return "a credit adds money"
        if record["kind"] == "meter" and record["amount"] > 0:
            return "a meter takes money"
        if record["kind"] == "refund" and (record["amount"] > 0 or record["balance"] != 0):
            return "a refund pays the whole balance out"
        return None

    def apply(self, record: dict) -> None:
        kind = record["kind"]
        if kind not in WANTED_KINDS:
            return
        account = record["account"]
        room = self.rooms.get(account)
        if room is None:
            if kind == "credit":
                self._remember_credit(account, record)
                return
            if kind == "refund":
                # A person's, or a room never metered nor powered: closed for good, so no
                # `restore` will ever claim its waiting credit.
                self.pending_credits.pop(account, None)
                return
            room = self.rooms[account] = _new_room(record.get("school"))
            pending = self.pending_credits.pop(account, None)
            if kind == "restore" and pending is not None and pending["ref"] == record.get("ref"):
                room["recharged_fen"] += pending["amount"]
                room["recharges"] += 1
        room["balance_fen"] = record["balance"]
        if kind == "credit":
            room["recharged_fen"] += record["amount"]
            room["recharges"] += 1
        elif kind == "meter":
            room["metered_fen"] -= record["amount"]   # the deduction is negative on the journal
            room["meters"] += 1
        elif kind == "cutoff":
            room["power"], room["power_txn"] = "off", record["txn"]
        elif kind == "restore":
            room["power"], room["power_txn"] = "on", record["txn"]
        elif kind == "refund":
            # Its balance went to 0 above: without this the room kept the money it had
            # before it was paid out. Its power goes off on the `cutoff` that follows.
            room["refunded_fen"] -= record["amount"]   # paid out: negative on the journal

    def _remember_credit(self, account: str, record: dict) -> None:
        self.pending_credits.pop(account, None)
        self.pending_credits[account] = {"amount": record["amount"], "ref": record.get("ref")}
        while len(self.pending_credits) > limits.receiver_pending_credits_max:
            self.pending_credits.popitem(last=False)

    def snapshot(self) -> dict:
        return {"rooms": self.rooms, "pending_credits": list(self.pending_credits.items())}

    def restore(self, data: dict) -> None:
        self.rooms = data["rooms"]
        for room in self.rooms.values():
            room.setdefault("refunded_fen", 0)   # a state saved before refunds were taken
        self.pending_credits = OrderedDict((account, credit)
                                           for account, credit in data["pending_credits"])

    def outputs(self) -> list[tuple[str, bytes]]:
        header = ["account", "school", "power", "balance_fen", "recharged_fen", "recharges",
                  "metered_fen", "meters", "power_changed_txn", "refunded_fen"]
        rows = [[account, room["school"], room["power"], room["balance_fen"],
                 room["recharged_fen"], room["recharges"], room["metered_fen"], room["meters"],
                 room["power_txn"], room["refunded_fen"]]
                for account, room in sorted(self.rooms.items())]
        return [(ROOMS_FILE, csv_bytes(header, rows))]


def main(argv=None) -> int:
    arguments = parser("python -m switch.receivers.utility",
                       "Reference utility-control receiver: dorm rooms' power and recharges")
    args = arguments.parse_args(argv)
    return run_main(UtilityReceiver, args)


if __name__ == "__main__":
    sys.exit(main())
