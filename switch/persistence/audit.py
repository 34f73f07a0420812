"""`python -m switch audit`: check a data dir's books without starting the switch.

Checks that journal txns run 1..N without gaps, that each account's balance
equals the sum of its journal amounts less what the subsidy purse paid (and each
record's `balance` the running sum), that its subsidy purse equals what the journal
put in and took out of it (and each record's `subsidy`, where it says one), and what
its batches hold, and that each account's held amount equals its open holds. Reads one
consistent LMDB snapshot, so it works on a live switch and on a crashed one.
"""

import os
from dataclasses import dataclass, field

import lmdb
import msgpack

from switch import limits
from switch.core import layout
from switch.persistence.store import STORE_DIR



@dataclass
class AuditReport:
    records: int = 0
    accounts: int = 0
    total_balance_fen: int = 0
    open_holds: int = 0
    problems: list = field(default_factory=list)
    unreadable: str | None = None     # why there were no books to check

    @classmethod
    def cannot_read(cls, reason: str) -> "AuditReport":
        return cls(problems=[reason], unreadable=reason)

    @property
    def sound(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        head = (f"journal records {self.records}, accounts {self.accounts}, "
                f"sum of balances {self.total_balance_fen} fen, open holds {self.open_holds}")
        if self.sound:
            return "audit: sound\n" + head
        shown = self.problems[:limits.audit_discrepancies_shown_max]
        more = len(self.problems) - len(shown)
        return "\n".join(["audit: DISCREPANCIES", head, *shown] +
                         ([f"... and {more} more"] if more else []))


def audit(data_dir: str) -> AuditReport:
    """The report on the books. Never writes: no lock is taken, so it runs beside a live
    switch, and a wrong path creates nothing (the report says `unreadable`)."""
    path = os.path.join(data_dir, STORE_DIR)
    if not os.path.exists(os.path.join(path, "data.mdb")):
        return AuditReport.cannot_read(f"{data_dir} is not a switch data dir (no "
                                       f"{STORE_DIR}/data.mdb inside); check the path")
    try:
        # readonly without lock would not be safe beside a live writer; with lock a reader
        # slot gives a consistent snapshot.
        env = lmdb.open(path, readonly=True, lock=True, max_dbs=32, subdir=True)
    except lmdb.Error as error:
        return AuditReport.cannot_read(f"cannot read {path}: {error}")
    report = AuditReport()
    try:
        dbs = {}
        for name in ("accounts", "journal", "holds", "subsidy_batches"):
            try:
                dbs[name] = env.open_db(name.encode(), create=False)
            except lmdb.NotFoundError:
                dbs[name] = None
        with env.begin() as txn:
            _check(txn, dbs, report)
    finally:
        env.close()
    return report


def journal_records(data_dir: str):
    """Every journal record of a data dir, in txn order, read from one snapshot without a
    lock (beside a live switch, or after it stopped)."""
    env = lmdb.open(os.path.join(data_dir, STORE_DIR), readonly=True, lock=True, max_dbs=32,
                    subdir=True)
    try:
        journal = env.open_db(b"journal", create=False)
        with env.begin() as txn:
            for _, value in txn.cursor(db=journal):
                yield msgpack.unpackb(value, raw=False)
    finally:
        env.close()


def _check(txn, dbs, report: AuditReport) -> None:
    sums: dict[str, int] = {}
    subsidies: dict[str, int] = {}
    expected_txn = 1
    for key, value in txn.cursor(db=dbs["journal"]):
        number = int.from_bytes(key, "big")
        record = msgpack.unpackb(value, raw=False)
        if number != expected_txn:
            report.problems.append(f"txn gap: expected {expected_txn}, found {number}")
            expected_txn = number
        if record.get("txn") != number:
            report.problems.append(f"txn {number}: record says txn {record.get('txn')}")
        account = record["account"]
        # `from_subsidy` is the part of `amount` the subsidy purse paid (negative: received).
        from_subsidy = record.get("from_subsidy", 0)
        running = sums.get(account, 0) + record["amount"] + from_subsidy
        sums[account] = running
        subsidy = subsidies[account] = subsidies.get(account, 0) - from_subsidy
        if "subsidy" in record and record["subsidy"] != subsidy:
            report.problems.append(f"txn {number}: subsidy {record['subsidy']} but running "
                                   f"sum of {account}'s subsidy is {subsidy}")
        if record["balance"] != running:
            report.problems.append(f"txn {number}: balance {record['balance']} but running sum "
                                   f"of {account} is {running}")
        expected_txn += 1
        report.records += 1

    held: dict[str, int] = {}
    if dbs["holds"] is not None:
        for _, value in txn.cursor(db=dbs["holds"]):
            hold = msgpack.unpackb(value, raw=False)
            if hold.get("state") == "open":
                held[hold["account"]] = held.get(hold["account"], 0) + hold["amount"]
                report.open_holds += 1

    batches: dict[str, int] = {}
    if dbs["subsidy_batches"] is not None:
        for key, value in txn.cursor(db=dbs["subsidy_batches"]):
            account = key.split(b"\0", 1)[0].decode()
            batches[account] = batches.get(account, 0) + msgpack.unpackb(value)["remaining"]

    for key, value in txn.cursor(db=dbs["accounts"]):
        account = key.decode()
        balance = layout.get(value, layout.BALANCE)
        report.accounts += 1
        report.total_balance_fen += balance
        journal_sum = sums.pop(account, 0)
        if balance != journal_sum:
            report.problems.append(f"account {account}: balance {balance} but journal sum "
                                   f"{journal_sum}")
        subsidy = layout.get(value, layout.SUBSIDY)
        if subsidy != subsidies.get(account, 0):
            report.problems.append(f"account {account}: subsidy {subsidy} but journal sum "
                                   f"{subsidies.get(account, 0)}")
        if subsidy != batches.get(account, 0):
            report.problems.append(f"account {account}: subsidy {subsidy} but its batches "
                                   f"hold {batches.get(account, 0)}")
        if layout.get(value, layout.HELD) != held.get(account, 0):
            report.problems.append(f"account {account}: held {layout.get(value, layout.HELD)} "
                                   f"but open holds sum to {held.get(account, 0)}")
    for account in sums:
        report.problems.append(f"journal names account {account} that does not exist")
