"""`python -m switch audit`: check a data dir's books without starting the switch.

Reads one consistent LMDB snapshot, so it works on a live switch and on a crashed one,
and checks the sums and what they mean:

- journal txns run 1..N without gaps, each record saying its own txn;
- each account's balance equals the sum of its journal amounts (and each record's
  `balance` the running sum), and no journal record names an account that does not exist;
- each account's held amount equals its open holds; every hold's account exists; the
  expiry index lists exactly the open holds;
- a closed account is empty (no balance, nothing held), stays closed, and has no journal
  record after the `close_account` or `refund` that closed it but its cards' `lost` and
  `found`, which move no money, and the `cutoff` of a room's power the closing request
  wrote right after it; a closed room with its power on is a notice (an older switch
  refunded rooms so);
- cards: each card's account exists; its state is the one its last journal record gave it
  (`issue_card`, `lost`, `found`, `replace_card`); its school's blacklist lists it exactly
  when the switch's rule says it should be (lost or blocked, or its account frozen and not
  closed; for books no switch of schema 12 opened yet, frozen as overdrawn: its upgrade
  lists the rest);
- offline flags: an `offline` record names a card of its own account and a `tapped_at`,
  carries no flag but `after_lost` or `meal_limit` (then with `meal_limit: true`), and
  carries `after_lost` exactly when the card was lost or
  blocked (by the journal up to that record) when the record arrived and the tap came
  after the loss, or (schema 14 on) the tap fell in a lost period of the card found before
  the record arrived (the switch's newest `card_lost_periods_kept_max`, found after the
  upgrade). The loss's exact time is the card's `changed_at` while no later change
  of the card overwrote it; after one, the loss record's own `at` (a bound: the card was
  stamped no later) decides only that an unflagged tap after it should have been flagged.
- history: each record's `prev` is the txn of its account's record before it (0 for the
  first), and each account's head (layout.LAST_TXN) is its newest record (a data dir no
  switch of schema 5 opened yet has no chain to check: its upgrade links it); each account
  counts its records (layout.HISTORY_RECORDS) and a history mark stands at every
  `records_between_history_marks`-th record of each account and nowhere else (schema 6 on);
- subsidies: each account's purse equals what the journal put in and took out of it
  (`from_subsidy`, the part of a record's `amount` the purse paid; each record's `subsidy`
  where it says one) and what its batches hold; its balance equals its journal amounts
  less what the purse paid; every subsidy grant is kept with its index entry, and every
  grant of the journal whose term housekeeping has not yet forgotten is kept (schema 10
  on); no grant (account, batch, id, last day) is paid twice (a discrepancy from schema 11
  on; a notice for one an older switch paid before the upgrade);
- reversals: each `reverse` undoes an earlier `debit`, `qr_debit` or `complete` of its own
  account by the same terminal, by exactly its amount, and no payment is reversed twice;
- kinds: every record's kind is one the switch writes, its amount has that kind's sign, it
  names its account's school, and its `who` a credential the books hold; no sender has two
  payments or recharges of one kind under one id closer together than any retention keeps
  an id (a recharge's 400 days: an order credited twice by a switch that forgot it);
- rooms: an open room's power is on exactly when it holds money, as its last `cutoff` or
  `restore` record says;
- time (a notice, not a discrepancy: the journal is not rewritten): where a record is dated
  more than a day before an earlier one, the clock ran ahead and what the switch does by
  the clock it did early;
- the logs of account records and remembered ids not yet written back
  (persistence/writeback.py): each account is checked as its newest logged record, and every record
  decodes, under an LSN found once, and the older log's records all precede the newer's
  (a damaged record would stop the next open; found here, it is found while the switch
  still runs and the latest backup is recent).
"""

import collections
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone

import lmdb
import msgpack

from switch import limits
from switch.core import layout
from switch.ledger.standing import should_be_listed
from switch.ledger.state.blacklist import member_of_key
from switch.persistence import writeback
from switch.persistence.access import permission_problem
from switch.persistence.keys import (GRANTS_CHECKED_AFTER_TXN, GRANTS_FORGOTTEN_BELOW,
                                     UPGRADED_TO_14_AFTER_TXN,
                                     SUBSIDY_GRANT, kept_subsidy_grants, term_day_name)
from switch.persistence.store import (RESTORE_UNFINISHED, STORE_DIR, cut_short,
                                      restore_unfinished)

# Journal records that set a card's state: kind -> [(field naming the card, state it gets)].
_CARD_CHANGES = {
    "issue_card": [("card", layout.CARD_ACTIVE)],
    "found": [("card", layout.CARD_ACTIVE)],
    "lost": [("card", layout.CARD_LOST)],
    "replace_card": [("old", layout.CARD_BLOCKED), ("card", layout.CARD_ACTIVE)],
}
OFFLINE_FLAGS = frozenset({"after_lost", "meal_limit"})
# Every kind of journal record, by the sign of its `amount`: +1 puts money in (or 0), -1
# takes it out (or 0: a refund of nothing, a reading of nothing), 0 moves none.
KIND_SIGNS = {
    "credit": 1, "reverse": 1, "subsidy": 1,
    "debit": -1, "qr_debit": -1, "complete": -1, "offline": -1, "meter": -1, "refund": -1,
    "subsidy_expire": -1,
    "open_account": 0, "close_account": 0, "issue_card": 0, "replace_card": 0, "lost": 0,
    "found": 0, "freeze": 0, "unfreeze": 0, "unlock": 0, "hold": 0, "void": 0, "expire": 0,
    "cutoff": 0, "restore": 0,
}
# Records a request writes once under its id (its `ref`), by the terminal or service that
# sent it (`who`), and how long apart two of them are a discrepancy: no configuration keeps
# an id less than an hour (`idempotency_retention_s_range`), and a recharge's 400 days
# whatever it says (`credit_ids_retention_s`). The same order credited twice inside that is
# what a switch that forgot its ids does; the sums agree with it.
_ONCE_PER_ID_WITHIN_MS = {
    kind: limits.idempotency_retention_s_range[0] * 1000
    for kind in ("debit", "qr_debit", "complete", "offline", "meter", "refund", "reverse")}
_ONCE_PER_ID_WITHIN_MS["credit"] = limits.credit_ids_retention_s * 1000
_POWER_KINDS = frozenset({"cutoff", "restore"})
_DATABASES = ("meta", "accounts", "journal", "holds", "hold_expiry", "cards", "blacklist_cards",
              "credentials",
              "subsidy_batches", "subsidy_grants", "subsidy_grant_expiry", "history_marks",
              *writeback.LOG_NAMES)
_CHAINED_SCHEMA = 5   # the first schema whose journal links each account's records
_MARKED_SCHEMA = 6    # the first whose accounts count their records, with history marks
_GRANTS_SCHEMA = 10   # the first that keeps every subsidy grant until its term ends
_PAID_ONCE_SCHEMA = 11   # the first that keeps them long past it (limits.subsidy_grants_kept_s)
_FROZEN_LISTED_SCHEMA = 12   # the first that lists the cards of accounts the card office froze
_LOST_PERIODS_SCHEMA = 14    # the first that keeps a card's lost periods (flags taps in them)
_NO_TXN_YET = 2 ** 64        # as `strict_after`: every record is before (books older than 14)



@dataclass
class AuditReport:
    records: int = 0
    accounts: int = 0
    total_balance_fen: int = 0
    open_holds: int = 0
    problems: list = field(default_factory=list)
    # What an auditor should know that no correction of the books can undo (the journal's
    # times going back, a grant an older switch paid twice): said, and the books still
    # sound. The first few are kept, the rest counted.
    notices: list = field(default_factory=list)
    notices_left_off: int = 0
    unreadable: str | None = None     # why there were no books to check

    @classmethod
    def cannot_read(cls, reason: str) -> "AuditReport":
        return cls(problems=[reason], unreadable=reason)

    def notice(self, text: str) -> None:
        if len(self.notices) < limits.audit_discrepancies_shown_max:
            self.notices.append(text)
        else:
            self.notices_left_off += 1

    def finding(self, number: int, strict_after: int, text: str) -> None:
        """A discrepancy when record `number` came after `strict_after` (the txn at the
        upgrade that brought the check, 0 for books it made); a notice before: an older
        switch wrote it, and the journal is never rewritten, so a discrepancy would fail
        every backup of those books for good."""
        if number > strict_after:
            self.problems.append(text)
        else:
            self.notice(f"{text} (written before this check came, by an older switch)")

    @property
    def sound(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        head = (f"journal records {self.records}, accounts {self.accounts}, "
                f"sum of balances {self.total_balance_fen} fen, open holds {self.open_holds}")
        noticed = [f"notice: {notice}" for notice in self.notices] + (
            [f"... and {self.notices_left_off} more notices"] if self.notices_left_off else [])
        if self.sound:
            return "\n".join(["audit: sound", head, *noticed])
        shown = self.problems[:limits.audit_discrepancies_shown_max]
        more = len(self.problems) - len(shown)
        return "\n".join(["audit: DISCREPANCIES", head, *shown] +
                         ([f"... and {more} more"] if more else []) + noticed)


def audit(data_dir: str, restoring: bool = False) -> AuditReport:
    """The report on the books. Never writes: no lock is taken, so it runs beside a live
    switch, and a wrong path creates nothing (the report says `unreadable`). A data dir a
    restore left unfinished is unreadable too, but to that restore's own audit
    (`restoring`)."""
    path = os.path.join(data_dir, STORE_DIR)
    if not os.path.exists(os.path.join(path, "data.mdb")):
        return AuditReport.cannot_read(permission_problem(data_dir) or (
            f"{data_dir} is not a switch data dir (no {STORE_DIR}/data.mdb inside); check "
            f"the path"))
    try:
        # readonly without lock would not be safe beside a live writer; with lock a reader
        # slot gives a consistent snapshot.
        env = lmdb.open(path, readonly=True, lock=True, max_dbs=limits.lmdb_max_dbs, subdir=True)
    except lmdb.Error as error:
        return AuditReport.cannot_read(f"cannot read {path}: {error}")
    try:
        short = cut_short(env, path)
        if short:
            return AuditReport.cannot_read(short)
        if not restoring and restore_unfinished(data_dir):
            # What serve and backup refuse is no sound books either.
            return AuditReport.cannot_read(
                f"a restore into {data_dir} did not finish (it holds {RESTORE_UNFINISHED}): "
                f"its books may be incomplete; run the restore again")
        try:
            env.reader_check()    # a killed audit's or backup's slot keeps pages from reuse
        except lmdb.Error:
            pass
        dbs = {}
        for name in _DATABASES:
            try:
                dbs[name] = env.open_db(name.encode(), create=False)
            except lmdb.NotFoundError:
                dbs[name] = None
        try:
            return audit_environment(env, dbs)
        except Exception as error:
            # Books that stop the check part way (a forged or damaged value of a shape no
            # check expected) are not known to be sound: one line that says so, exit 2.
            return AuditReport.cannot_read(
                f"the books could not be checked to the end ({type(error).__name__}: "
                f"{error}); they are not known to be sound: keep the data dir as it is")
    finally:
        env.close()


def audit_environment(env, dbs: dict) -> AuditReport:
    """The report on the committed books of an environment this process already has open
    (LMDB allows one open per process): `dbs` names the "accounts", "journal" and "holds"
    databases, None for one that does not exist."""
    report = AuditReport()
    with env.begin() as txn:
        _check(txn, dbs, report)
    return report


def journal_records(data_dir: str):
    """Every journal record of a data dir, in txn order, read from one snapshot without a
    lock (beside a live switch, or after it stopped)."""
    yield from _snapshot_values(data_dir, b"journal")


def closed_account_taps(data_dir: str):
    """The offline taps refused `account_closed`, oldest upload first (same snapshot rules)."""
    yield from _snapshot_values(data_dir, b"closed_account_taps")


def _snapshot_values(data_dir: str, db_name: bytes):
    path = os.path.join(data_dir, STORE_DIR)
    env = lmdb.open(path, readonly=True, lock=True, max_dbs=limits.lmdb_max_dbs, subdir=True)
    try:
        short = cut_short(env, path)
        if short:
            raise lmdb.CorruptedError(short)
        try:
            db = env.open_db(db_name, create=False)
        except lmdb.NotFoundError:  # a data dir from before this table: nothing kept yet
            return
        with env.begin() as txn:
            for _, value in txn.cursor(db=db):
                yield msgpack.unpackb(value, raw=False)
    finally:
        env.close()


def _items(txn, db):
    """The (key, value) pairs of a database, none when the data dir never created it."""
    return () if db is None else txn.cursor(db=db)


def _unpack(value):
    return msgpack.unpackb(value, raw=False)


# Journal kinds after which an account is closed for good.
CLOSING_KINDS = frozenset({"close_account", "refund"})
# What may still happen to a closed account: its cards reported lost or found (a stolen card
# is kept off the tills whatever its account), moving no money.
AFTER_CLOSING_KINDS = frozenset({"lost", "found"})


def _closing_cutoff(record: dict, closing: dict | None) -> bool:
    """The `cutoff` a room's closing writes: the account's next record, of the same request."""
    return (closing is not None and record["kind"] == "cutoff" and record["amount"] == 0
            and record.get("ref") == closing.get("ref"))


def _check(txn, dbs, report: AuditReport) -> None:
    # First, so the summary's first lines name it: the next open replays the logs before
    # anything else, and a record it cannot read stops that open.
    report.problems.extend(writeback.log_problems(txn, dbs))
    schema = _schema(txn, dbs)
    chained = schema >= _CHAINED_SCHEMA
    # What the journal says each account's record count and history marks must be.
    # The journal's subsidy grants are gathered for the grants table only from the day
    # housekeeping has not forgotten below, one per grant key (the latest term's).
    grants_kept_from = (_meta_number(txn, dbs, GRANTS_FORGOTTEN_BELOW)
                        if schema >= _GRANTS_SCHEMA else None)
    # A grant paid twice after this txn is this switch's discrepancy; at or before it, an
    # older switch's (keys.py), and before the upgrade to schema 11 every one is.
    paid_twice_checked_after = (_meta_number(txn, dbs, GRANTS_CHECKED_AFTER_TXN)
                                if schema >= _PAID_ONCE_SCHEMA else None)
    # The checks schema 14 brought (kinds, schools, senders, ids used twice, rooms' power)
    # hold records after its upgrade; those before it are said as notices.
    strict_after = (_meta_number(txn, dbs, UPGRADED_TO_14_AFTER_TXN)
                    if schema >= _LOST_PERIODS_SCHEMA else _NO_TXN_YET)
    history = {"records": {}, "marks": set(), "grants": {}, "grants_from": grants_kept_from,
               "paid": {}, "paid_checked_after": paid_twice_checked_after,
               "latest": None, "behind": None, "schools": {}, "power": {}, "whos": {},
               "strict_after": strict_after}
    sums, card_history, offline, closed_by, subsidies, newest = _check_journal(
        txn, dbs, report, chained, history)
    accounts: dict = {}
    for key, value in _items(txn, dbs["accounts"]):
        _take_account(report, "accounts", key, value, accounts, _STORED_RECORD_SIZES)
    _apply_logged_accounts(txn, dbs, report, accounts)
    held = _check_holds(txn, dbs, report, accounts)
    _check_accounts(report, accounts, sums, held, closed_by, subsidies,
                    _subsidy_batches(txn, dbs))
    _check_schools_and_power(report, accounts, history["schools"], history["power"], newest,
                             strict_after)
    _check_senders(txn, dbs, report, history["whos"], strict_after)
    if chained:
        _check_history_heads(report, accounts, newest)
    if schema >= _MARKED_SCHEMA:
        _check_history_marks(txn, dbs, report, accounts, history)
    cards = _check_cards(txn, dbs, report, accounts, card_history,
                         operator_freeze_lists=schema >= _FROZEN_LISTED_SCHEMA)
    _check_offline(report, offline, cards, card_history,
                   strict_after if schema >= _LOST_PERIODS_SCHEMA else None)
    if grants_kept_from is not None:
        _check_subsidy_grants(txn, dbs, report, history["grants"])


def _meta_number(txn, dbs, key: bytes) -> int:
    """A number `meta` holds as 8 bytes BE, 0 where it holds none."""
    value = txn.get(key, db=dbs["meta"])
    return 0 if value is None else int.from_bytes(value, "big")


def _apply_logged_accounts(txn, dbs, report: AuditReport, accounts: dict) -> None:
    """The account records a live (or crashed) switch committed to its logs and has not yet
    written back (persistence/writeback.py), from the same snapshot, over `accounts`. A
    record that does not decode is passed over (`log_problems` reports it); the others,
    and the remembered-id logs' damage, do not stop the accounts being checked."""
    for key, value in writeback.newest_readable(txn, dbs, "accounts").items():
        if value is None:
            try:
                accounts.pop(key.decode(), None)
            except UnicodeDecodeError:
                pass   # no such account was taken
        else:
            _take_account(report, "the accounts log", key, value, accounts,
                          (layout.ACCOUNT_RECORD_SIZE,))


# A data dir no switch of this version opened yet holds shorter records (schema 2: 152
# bytes), read as the migration will write them, the new fields zero; the logs hold only
# records of this version.
_STORED_RECORD_SIZES = (152, layout.ACCOUNT_RECORD_SIZE)


def _take_account(report: AuditReport, where: str, key, value, accounts: dict,
                  sizes: tuple) -> None:
    """An account record into `accounts`, by its name, padded to the record's size; a key
    that is not text, or a record of a size no switch writes, is reported (a damaged or
    forged record is a finding, not a traceback)."""
    try:
        name = bytes(key).decode()
    except UnicodeDecodeError:
        report.problems.append(f"{where}: account key {bytes(key)[:16].hex()} is not text")
        return
    value = bytes(value)
    if len(value) not in sizes:
        report.problems.append(f"account {name} in {where}: a record of {len(value)} bytes, "
                               f"not {layout.ACCOUNT_RECORD_SIZE}")
    accounts[name] = value[:layout.ACCOUNT_RECORD_SIZE].ljust(layout.ACCOUNT_RECORD_SIZE,
                                                               b"\0")


def _schema(txn, dbs) -> int:
    stored = None if dbs["meta"] is None else txn.get(b"schema_version", db=dbs["meta"])
    return 0 if stored is None else int(stored)


def _check_journal(txn, dbs, report: AuditReport, chained: bool, history: dict):
    """(journal sum per account, card -> [(txn, state, at)], offline records, account -> the
    txn that closed it, subsidy purse per account, account -> its newest txn) after checking
    txn numbering, running balances and, when `chained`, each record's `prev`."""
    sums: dict[str, int] = {}
    card_history: dict[str, list] = {}
    offline = []
    closed_by: dict[str, int] = {}   # account -> the txn that closed it
    just_closed: dict[str, dict] = {}   # account -> its closing record, while its newest
    subsidies: dict[str, int] = {}
    newest: dict[str, int] = {}
    records_of: dict[str, int] = history["records"]
    reversed_txns: set[int] = set()   # the payments reversed so far (a reverse is rare)
    strict_after = history["strict_after"]
    once = _OncePerId(strict_after)
    schools, power, whos = history["schools"], history["power"], history["whos"]
    expected_txn = 1
    for key, value in _items(txn, dbs["journal"]):
        number = int.from_bytes(key, "big")
        try:
            record = _unpack(value)
        except Exception:   # not msgpack at all
            record = None
        if number != expected_txn:
            report.problems.append(f"txn gap: expected {expected_txn}, found {number}")
            expected_txn = number
        if not _well_formed(record):
            # A record the switch never writes: said, and left out of the sums (which then
            # disagree with the balances, and say so too), never a traceback.
            report.problems.append(f"txn {number}: malformed record")
            expected_txn = number + 1
            continue
        if record.get("txn") != number:
            report.problems.append(f"txn {number}: record says txn {record.get('txn')}")
        account = record["account"]
        if chained and record.get("prev") != newest.get(account, 0):
            report.problems.append(f"txn {number}: prev {record.get('prev')!r} but {account}'s "
                                   f"record before it is txn {newest.get(account, 0)}")
        newest[account] = number
        counted = records_of[account] = records_of.get(account, 0) + 1
        if counted % limits.records_between_history_marks == 0:
            history["marks"].add(account.encode() + b"\0" + bytes(key))
        closing = just_closed.pop(account, None)
        if account in closed_by and not (record["kind"] in AFTER_CLOSING_KINDS
                                         and record["amount"] == 0) \
                and not _closing_cutoff(record, closing):
            report.problems.append(f"txn {number}: {record.get('kind')} on account {account} "
                                   f"after it was closed at txn {closed_by[account]}")
        elif record.get("kind") in CLOSING_KINDS:
            closed_by[account] = number
            just_closed[account] = record
        # `from_subsidy` is the part of `amount` the subsidy purse paid (negative: received).
        from_subsidy = record.get("from_subsidy", 0)
        running = sums.get(account, 0) + record["amount"] + from_subsidy
        subsidy = subsidies[account] = subsidies.get(account, 0) - from_subsidy
        if "subsidy" in record and record["subsidy"] != subsidy:
            report.problems.append(f"txn {number}: subsidy {record['subsidy']} but running "
                                   f"sum of {account}'s subsidy is {subsidy}")
        sums[account] = running
        if record["balance"] != running:
            report.problems.append(f"txn {number}: balance {record['balance']} but running sum "
                                   f"of {account} is {running}")
        for card_field, state in _CARD_CHANGES.get(record["kind"], ()):
            card_history.setdefault(record.get(card_field), []).append(
                (number, state, record["at"]))
        _check_kind(report, number, record, schools, strict_after)
        once.check(report, number, record)
        if record.get("who") is not None:
            whos[record["who"]] = number         # its last record: judged by the newest
        if record["kind"] in _POWER_KINDS:
            power[account] = (number, record["kind"])
        if record["kind"] == "offline":
            offline.append(record)
        elif record["kind"] == "subsidy":
            _note_journal_grant(report, number, record, history)
        elif record["kind"] == "reverse":
            _check_reversal(txn, dbs, report, number, record, reversed_txns)
        _check_time(report, number, record["at"], history)
        expected_txn += 1
        report.records += 1
    return sums, card_history, offline, closed_by, subsidies, newest


def _check_kind(report: AuditReport, number: int, record: dict, schools: dict,
                strict_after: int) -> None:
    """A record's kind is one the switch writes, its amount has that kind's sign, and it
    names its account's school (the same in every record of the account; the account's own
    record is compared once the accounts are read)."""
    kind, amount = record["kind"], record["amount"]
    sign = KIND_SIGNS.get(kind)
    if sign is None:
        report.finding(number, strict_after, f"txn {number}: kind {kind!r} is none the switch "
                                             f"writes")
    elif (sign == 0 and amount != 0) or amount * sign < 0:
        report.finding(number, strict_after, f"txn {number}: {kind} of {amount}, "
                               + ("which moves no money" if sign == 0 else
                                  "which only puts money in" if sign > 0 else
                                  "which only takes money out"))
    account = record["account"]
    first = schools.setdefault(account, (record.get("school"), number))
    if first[0] != record.get("school"):
        report.finding(number, strict_after, f"txn {number}: {kind} of {account} names school "
                                             f"{record.get('school')!r}, its txn {first[1]} "
                                             f"{first[0]!r}")


class _OncePerId:
    """Two records of one kind under one (who, id) inside `_ONCE_PER_ID_WITHIN_MS`: a
    payment or recharge made twice. Ids older than the window are let go as the journal
    runs on, so the memory is the ids of one window (a hash each), not of every year."""

    def __init__(self, strict_after: int):
        self._strict_after = strict_after
        self._seen: dict[int, tuple[int, int]] = {}     # hash -> (at, txn)
        # (at, hash), oldest first, one queue per window: a day's taps leave after an hour,
        # a recharge stays its 400 days.
        self._order = {within_ms: collections.deque()
                       for within_ms in set(_ONCE_PER_ID_WITHIN_MS.values())}

    def check(self, report: AuditReport, number: int, record: dict) -> None:
        kind = record["kind"]
        within_ms = _ONCE_PER_ID_WITHIN_MS.get(kind)
        if within_ms is None or record.get("who") is None:
            return
        at = record["at"]
        order = self._order[within_ms]
        while order and order[0][0] < at - within_ms:
            old_at, old_key = order.popleft()
            if self._seen.get(old_key, (None,))[0] == old_at:
                del self._seen[old_key]
        key = hash((kind, record["who"], _hashable(record.get("ref"))))
        before = self._seen.get(key)
        if before is not None and 0 <= at - before[0] < within_ms:
            # Judged by the first: an id an older switch forgot, sent again after the
            # upgrade, is that switch's doing.
            report.finding(
                before[1], self._strict_after,
                f"txn {number}: {kind} by {record['who']} under id {record.get('ref')!r} "
                f"again (txn {before[1]} was the first, {(at - before[0]) // 1000} s before): "
                f"a request the switch should have answered as a replay")
        self._seen[key] = (at, number)
        order.append((at, key))


def _hashable(value):
    return tuple(_hashable(each) for each in value) if isinstance(value, list) else value


_REVERSIBLE_KINDS = ("debit", "qr_debit", "complete")


def _check_reversal(txn, dbs, report: AuditReport, number: int, record: dict,
                    reversed_txns: set) -> None:
    """A `reverse` undoes one earlier payment of its own account by the same terminal, by
    exactly its amount, once: a reversal replayed wrongly or made twice gives money back
    that was never paid, and the sums alone agree with it."""
    target = record.get("target")
    value = (txn.get(target.to_bytes(8, "big"), db=dbs["journal"])
             if type(target) is int and 0 < target < number else None)
    try:
        paid = None if value is None else _unpack(value)
    except Exception:   # not msgpack: said where that record is checked
        paid = None
    if type(paid) is not dict or paid.get("kind") not in _REVERSIBLE_KINDS:
        report.problems.append(f"txn {number}: reverse of txn {target!r}, which is no payment "
                               f"before it")
        return
    if (paid.get("account"), paid.get("who")) != (record["account"], record.get("who")) \
            or paid.get("amount") != -record["amount"]:
        report.problems.append(
            f"txn {number}: reverse of {record['amount']} on {record['account']} by "
            f"{record.get('who')} but txn {target} paid {-paid.get('amount', 0)} on "
            f"{paid.get('account')} at {paid.get('who')}")
    if target in reversed_txns:
        report.problems.append(f"txn {number}: txn {target} reversed a second time")
    reversed_txns.add(target)


# How far a record's time may lie before an earlier record's: a clock put right by NTP moves
# by seconds; one put back by days was ahead, and what the switch did by it (a batch lapsed,
# grants and ids forgotten, holds released) happened early.
_TIME_BACK_MS_MAX = 86_400_000


def _check_time(report: AuditReport, number: int, at: int, history: dict) -> None:
    """Say where the journal's times go back by more than a day: once for each latest record
    the journal falls behind."""
    latest = history["latest"]
    if latest is None or at > latest[1]:
        history["latest"] = (number, at)
    elif at < latest[1] - _TIME_BACK_MS_MAX and history["behind"] != latest:
        history["behind"] = latest
        report.notice(
            f"txn {number}: recorded at {_moment(at)}, {(latest[1] - at) // 3_600_000} h "
            f"before txn {latest[0]} ({_moment(latest[1])}): the clock was ahead then, and "
            f"what the switch did by it (subsidies lapsed, grants, ids and holds let go) it "
            f"did early")


def _moment(at_ms: int) -> str:
    try:
        return datetime.fromtimestamp(at_ms / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    except (ValueError, OverflowError, OSError):
        return f"{at_ms} ms"


_RECORD_FIELDS = (("account", str), ("amount", int), ("balance", int), ("kind", str),
                  ("at", int))


def _well_formed(record) -> bool:
    return type(record) is dict and all(type(record.get(name)) is kind
                                        for name, kind in _RECORD_FIELDS)


def _check_holds(txn, dbs, report: AuditReport, accounts: dict) -> dict[str, int]:
    """Open holds' sum per account, after checking each hold's account and the index."""
    held: dict[str, int] = {}
    open_holds = set()
    for key, value in _items(txn, dbs["holds"]):
        hold_id, hold = bytes(key).decode(), _unpack(value)
        if hold["account"] not in accounts:
            report.problems.append(f"hold {hold_id}: account {hold['account']} does not exist")
        if hold.get("state") == "open":
            held[hold["account"]] = held.get(hold["account"], 0) + hold["amount"]
            open_holds.add((hold["expires"], hold_id))
    report.open_holds = len(open_holds)
    indexed = {(int.from_bytes(key[:8], "big"), bytes(key[8:]).decode())
               for key, _ in _items(txn, dbs["hold_expiry"])}
    for expires, hold_id in sorted(open_holds - indexed):
        report.problems.append(f"hold {hold_id}: open but not in the expiry index")
    for expires, hold_id in sorted(indexed - open_holds):
        report.problems.append(f"hold {hold_id}: in the expiry index (at {expires}) but not "
                               f"an open hold")
    return held


def _note_journal_grant(report: AuditReport, number: int, record: dict, history: dict) -> None:
    """Check a journal `subsidy` record against the ones before it (the same account, batch,
    id and last day paid again is a grant paid twice), and note it in `history["grants"]`
    (grant key -> (last day, its record)) when its term ends on the day housekeeping keeps
    grants from or later and is the latest of its key so far."""
    for key, (day, _) in kept_subsidy_grants([record]).items():
        first = history["paid"].setdefault((key, day), number)
        if first != number:
            checked_after = history["paid_checked_after"]
            said = (f"txn {number}: subsidy of batch {record['batch']!r} (to {_day_named(day)}) "
                    f"to {record['account']} paid again: txn {first} granted it")
            if checked_after is not None and number > checked_after:
                report.problems.append(said)
            else:
                report.notice(f"{said}, before this switch's upgrade (an older switch's "
                              f"double payment: recover it by hand)")
        kept_from, grants = history["grants_from"], history["grants"]
        if kept_from is not None and day >= kept_from and (key not in grants
                                                            or day >= grants[key][0]):
            grants[key] = (day, record)


def _check_subsidy_grants(txn, dbs, report: AuditReport, journal_grants: dict) -> None:
    """Every kept subsidy grant has its index entry at its last day and every entry its
    grant (ledger/state/subsidies.py keeps them one to one): a grant without its entry is
    never forgotten, and an entry without its grant is one whose grant was lost. Every
    grant of the journal whose term ends on or after the day housekeeping keeps grants from
    (by what it wrote in `meta`) is kept: one lost could be paid again."""
    grants: dict[bytes, int] = {}
    for key, value in _items(txn, dbs.get("subsidy_grants")):
        if len(value) != SUBSIDY_GRANT.size:
            report.problems.append(f"subsidy grant {bytes(key).hex()}: a value of "
                                   f"{len(value)} bytes")
            continue
        grants[bytes(key)] = SUBSIDY_GRANT.unpack(value)[0]
    indexed = set()
    for key, _ in _items(txn, dbs.get("subsidy_grant_expiry")):
        day, grant = int.from_bytes(key[:8], "big"), bytes(key[8:])
        if grants.get(grant) != day:
            report.problems.append(f"subsidy grant {grant.hex()}: in the index at "
                                   f"{_day_named(day)} but not kept for that day")
        else:
            indexed.add(grant)
    for grant in sorted(grants.keys() - indexed):
        report.problems.append(f"subsidy grant {grant.hex()}: kept (to "
                               f"{_day_named(grants[grant])}) but not in the index")
    for key, (day, record) in sorted(journal_grants.items(), key=lambda item: item[1][1]["txn"]):
        if grants.get(key, day - 1) < day:
            report.problems.append(
                f"txn {record['txn']}: subsidy of batch {record['batch']!r} (to "
                f"{_day_named(day)}) to {record['account']} is not kept among the "
                f"grants: it could be paid again")


def _day_named(day: int) -> str:
    try:
        return term_day_name(day)
    except (ValueError, OverflowError):     # a forged value: said, not a stop
        return f"day {day}"


def _subsidy_batches(txn, dbs) -> dict[str, int]:
    """What each account's subsidy batches still hold."""
    batches: dict[str, int] = {}
    for key, value in _items(txn, dbs["subsidy_batches"]):
        account = bytes(key).split(b"\0", 1)[0].decode()
        batches[account] = batches.get(account, 0) + _unpack(value)["remaining"]
    return batches


def _check_accounts(report: AuditReport, accounts: dict, sums: dict, held: dict,
                    closed_by: dict, subsidies: dict, batches: dict) -> None:
    for account, value in accounts.items():
        balance, held_fen = layout.get(value, layout.BALANCE), layout.get(value, layout.HELD)
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
        if held_fen != held.get(account, 0):
            report.problems.append(f"account {account}: held {held_fen} "
                                   f"but open holds sum to {held.get(account, 0)}")
        closed = layout.get(value, layout.STATUS) == layout.STATUS_CLOSED
        if closed and (balance or held_fen or subsidy):
            report.problems.append(f"account {account}: closed but holds balance {balance}, "
                                   f"held {held_fen}" + (f", subsidy {subsidy}" if subsidy else ""))
        if closed and layout.get(value, layout.POWER_ON):
            # A notice, not a discrepancy: older switches refunded rooms without turning
            # their power off, and a backup of such books must still be taken.
            report.notice(f"account {account}: a closed room with its power on (closed by a "
                          f"switch that left it on, and no `cutoff` sent downstream): switch "
                          f"its relay off by hand")
        if account in closed_by and not closed:
            report.problems.append(f"account {account}: status "
                                   f"{layout.STATUS_NAMES[layout.get(value, layout.STATUS)]} "
                                   f"after it was closed at txn {closed_by[account]}")
    for account in sums:
        report.problems.append(f"journal names account {account} that does not exist")


def _check_schools_and_power(report: AuditReport, accounts: dict, schools: dict,
                             power: dict, newest: dict, strict_after: int) -> None:
    """Each account's records name its own school; an open room's power is on exactly when
    it holds money (the core cuts it at 0 or below and turns it on above 0), and its last
    `cutoff` or `restore` record says so (none: off, as a room is opened)."""
    for account, value in accounts.items():
        school = layout.school_of(value)
        named, txn = schools.get(account, (school, 0))
        if named != school:
            report.finding(txn, strict_after, f"account {account} is of school {school} but "
                                              f"its txn {txn} names {named!r}")
        if layout.get(value, layout.KIND) != layout.KIND_UTILITY \
                or layout.get(value, layout.STATUS) == layout.STATUS_CLOSED:
            continue
        on = layout.get(value, layout.POWER_ON) == 1
        balance = layout.get(value, layout.BALANCE)
        # The room's state is its newest record's doing (one with none: this switch's).
        latest = newest.get(account, _NO_TXN_YET)
        if on != (balance > 0):
            report.finding(latest, strict_after, f"room {account}: power "
                                                 f"{'on' if on else 'off'} with a balance of "
                                                 f"{balance} fen")
        last_txn, last_kind = power.get(account, (None, "cutoff"))
        if on != (last_kind == "restore"):
            report.finding(
                latest, strict_after,
                f"room {account}: power {'on' if on else 'off'} but "
                + (f"its last power record, txn {last_txn}, is a {last_kind}" if last_txn
                   else "no restore record turned it on"))


def _check_senders(txn, dbs, report: AuditReport, whos: dict, strict_after: int) -> None:
    """Every record's `who` is a credential the books hold (revoked ones are kept)."""
    if dbs.get("credentials") is None:
        return
    for who, number in whos.items():
        if txn.get(who.encode(), db=dbs["credentials"]) is None:
            report.finding(number, strict_after, f"txn {number}: sent by {who!r}, a credential "
                                                 f"the books do not hold")


def _check_history_marks(txn, dbs, report: AuditReport, accounts: dict, history: dict) -> None:
    """Each account counts its journal records, and a history mark stands at every
    `records_between_history_marks`-th of them and nowhere else."""
    for account, value in accounts.items():
        counted = layout.get(value, layout.HISTORY_RECORDS)
        if counted != history["records"].get(account, 0):
            report.problems.append(f"account {account}: counts {counted} journal records but "
                                   f"has {history['records'].get(account, 0)}")
    marks = {bytes(key) for key, _ in _items(txn, dbs["history_marks"])}
    for key in sorted(history["marks"] - marks):
        report.problems.append(f"history mark missing: {_mark_name(key)}")
    for key in sorted(marks - history["marks"]):
        report.problems.append(f"history mark without its record: {_mark_name(key)}")


def _mark_name(key: bytes) -> str:
    account, txn = key[:-9], key[-8:]   # account id, NUL, txn (8 bytes)
    return f"account {account.decode(errors='replace')} txn {int.from_bytes(txn, 'big')}"


def _check_history_heads(report: AuditReport, accounts: dict, newest: dict) -> None:
    for account, value in accounts.items():
        head = layout.get(value, layout.LAST_TXN)
        if head != newest.get(account, 0):
            report.problems.append(f"account {account}: history head txn {head} but its newest "
                                   f"record is txn {newest.get(account, 0)}")


def _check_cards(txn, dbs, report: AuditReport, accounts: dict, card_history: dict, *,
                 operator_freeze_lists: bool) -> dict:
    """card -> [account, state, changed_at_ms], after checking states and the blacklist."""
    cards = {bytes(key).decode(): _unpack(value) for key, value in _items(txn, dbs["cards"])}
    should_list = set()
    for card, (account, state, _) in cards.items():
        record = accounts.get(account)
        if record is None:
            report.problems.append(f"card {card}: account {account} does not exist")
            continue
        history = card_history.get(card)
        if not history or history[-1][1] != state:
            recorded = layout.CARD_STATE_NAMES[history[-1][1]] if history else "no record"
            report.problems.append(f"card {card}: state {_state_name(state)} but the journal "
                                   f"says {recorded}")
        if should_be_listed(state, record, operator_freeze_lists=operator_freeze_lists):
            should_list.add((layout.school_of(record), card))
    for card in card_history.keys() - cards.keys():
        report.problems.append(f"journal names card {card} that does not exist")
    listed = {member_of_key(key) for key, _ in _items(txn, dbs["blacklist_cards"])}
    for school, card in sorted(should_list - listed):
        account, state, _ = cards[card]
        report.problems.append(f"card {card}: {_why_listed(account, state, accounts[account])} "
                               f"but not on {school}'s blacklist")
    for school, card in sorted(listed - should_list):
        report.problems.append(f"card {card}: on {school}'s blacklist but should not be")
    return cards


def _why_listed(account: str, state, record) -> str:
    if state in (layout.CARD_LOST, layout.CARD_BLOCKED):
        return _state_name(state)
    reason = layout.get(record, layout.FREEZE_REASON)
    names = [name for bit, name in ((layout.FREEZE_OPERATOR, "by the card office"),
                                    (layout.FREEZE_OVERDRAWN, "as overdrawn")) if reason & bit]
    return f"{_state_name(state)}, its account {account} frozen {' and '.join(names)},"


def _state_name(state) -> str:
    names = layout.CARD_STATE_NAMES
    return names[state] if type(state) is int and 0 <= state < len(names) else repr(state)


def _lost_periods(history: list, before_txn: int, kept_after: int) -> list:
    """The card's lost periods (lost `at`, found `at`) the switch kept before `before_txn`:
    those found after `kept_after`, the newest `card_lost_periods_kept_max`."""
    periods, lost_at = [], None
    for number, state, at in history:
        if number >= before_txn:
            break
        if state == layout.CARD_LOST:
            lost_at = at
        elif lost_at is not None and state == layout.CARD_ACTIVE and number > kept_after:
            periods.append((lost_at, at))
        if state != layout.CARD_LOST:
            lost_at = None
    return periods[-limits.card_lost_periods_kept_max:]


def _check_offline(report: AuditReport, offline: list, cards: dict, card_history: dict,
                   lost_periods_after: int | None) -> None:
    """`lost_periods_after`: the txn after which the switch kept lost periods (schema 14),
    None for books from before."""
    for record in offline:
        number, card, flag = record["txn"], record.get("card"), record.get("flag")
        tapped_ms = record.get("tapped_at")
        if flag is not None and flag not in OFFLINE_FLAGS:
            report.problems.append(f"txn {number}: offline flag {flag!r} is not one of "
                                   f"{sorted(OFFLINE_FLAGS)}")
            continue
        if card not in cards or cards[card][0] != record["account"] or type(tapped_ms) is not int:
            report.problems.append(f"txn {number}: offline record of card {card!r} tapped at "
                                   f"{tapped_ms!r} is not of a card of {record['account']}")
            continue
        history = card_history.get(card, [])
        before = [change for change in history if change[0] < number]
        if not before:
            report.problems.append(f"txn {number}: offline record of card {card} before the "
                                   f"card was issued")
            continue
        _, state, change_at_ms = before[-1]
        lost = state in (layout.CARD_LOST, layout.CARD_BLOCKED)
        if len(before) == len(history):     # the card's stamp is still this change's
            should_flag = lost and tapped_ms > cards[card][2]
            may_flag = should_flag
        else:
            should_flag = lost and tapped_ms > change_at_ms
            may_flag = lost
        during = None
        if lost_periods_after is not None and number > lost_periods_after:
            during = next(((lost_at, found_at) for lost_at, found_at
                           in _lost_periods(history, number, lost_periods_after)
                           if lost_at < tapped_ms < found_at), None)
        if during is not None and flag != "after_lost":
            report.problems.append(f"txn {number}: card {card} tapped at {tapped_ms}, while it "
                                   f"was lost (from {during[0]}, found at {during[1]}), but "
                                   f"not flagged after_lost")
        elif during is not None:
            pass                                  # tapped while lost, found before the upload
        elif flag != "after_lost" and should_flag:
            # after_lost is the flag a tap that also broke a meal cap carries (§4.17).
            report.problems.append(f"txn {number}: card {card} tapped after it was "
                                   f"{_state_name(state)} but not flagged after_lost")
        elif flag == "after_lost" and not may_flag:
            report.problems.append(f"txn {number}: flagged {flag} but card {card} was "
                                   f"{_state_name(state)} since {change_at_ms}")
        if flag == "meal_limit" and record.get("meal_limit") is not True:
            report.problems.append(f"txn {number}: flagged meal_limit but broke no meal cap")
