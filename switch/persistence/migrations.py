"""Upgrades a data dir written by an older switch to the schema this one reads, in place,
inside the write transaction that checks the schema (all or nothing)."""

import logging

import msgpack

from switch import limits
from switch.core import layout
from switch.ledger.standing import lists_its_cards, should_be_listed
from switch.ledger.state import REVERSAL_KEPT, reversal_id
from switch.ledger.state.blacklist import Blacklist
from switch.persistence.keys import (GRANTS_CHECKED_AFTER_TXN, UPGRADED_TO_14_AFTER_TXN, SUBSIDY_GRANT, kept_subsidy_grants,
                                     room_index_keys, subsidy_grant_expiry_key)

log = logging.getLogger("switch.store")


def _index_rooms(txn, dbs) -> None:
    """Schema 1 -> 2: the room indexes `rooms` pages through, built from the accounts (records
    of 152 bytes then: the fields read here kept their offsets)."""
    for key, record in txn.cursor(db=dbs["accounts"]):
        if layout.get(record, layout.KIND) != layout.KIND_UTILITY:
            continue
        by_school, by_building = room_index_keys(layout.school_of(record), key.decode())
        txn.put(by_school, b"", db=dbs["school_rooms"])
        if by_building is not None:
            txn.put(by_building, b"", db=dbs["building_rooms"])


_SCHEMA_2_ACCOUNT_RECORD_SIZE = 152


def _pad_account_records(txn, dbs) -> None:
    """Schema 2 -> 3: account records grow to hold the subsidy purse (layout.SUBSIDY), empty
    in every record that existed before."""
    padding = bytes(layout.ACCOUNT_RECORD_SIZE - _SCHEMA_2_ACCOUNT_RECORD_SIZE)
    grown = [(key, record + padding) for key, record in txn.cursor(db=dbs["accounts"])
             if len(record) == _SCHEMA_2_ACCOUNT_RECORD_SIZE]
    for key, record in grown:
        txn.put(key, record, db=dbs["accounts"])


def _drop_id_expiry_index(txn, dbs) -> None:
    """Schema 3 -> 4: remembered ids are forgotten by a sweep over `idempotency` itself
    (Ledger.forget_old_ids); the index by time they had (`idempotency_expiry`) goes."""
    _drop_retired(txn, dbs, "idempotency_expiry")


def _drop_retired(txn, dbs, name: str) -> None:
    # Absent from a data dir that never wrote it (the store opens only those that exist).
    if name in dbs:
        txn.drop(dbs[name], delete=True)


def _journal_records(cursor):
    """(key, record, account id as bytes) of each journal record under `cursor`, in txn
    order; a record the switch never writes is skipped (audit says so, history skips it)."""
    for key, value in cursor:
        try:
            record = msgpack.unpackb(value, raw=False)
        except ValueError:   # every unpacking error is one
            continue
        if type(record) is dict and type(record.get("account")) is str:
            yield key, record, record["account"].encode()


def _chain_account_histories(txn, dbs) -> None:
    """Schema 4 -> 5: an account's history is a chain through the journal (each record's
    `prev`, the account record's LAST_TXN its head) instead of an index of its own
    (`account_journal`, a randomly placed key per record): one pass over the journal links
    the records, then the heads are written and the index goes."""
    newest: dict[bytes, int] = {}
    cursor = txn.cursor(db=dbs["journal"])
    # Each record is rewritten where the cursor stands: memory for the heads only, whatever
    # the journal holds.
    for key, record, account in _journal_records(cursor):
        record["prev"] = newest.get(account, 0)
        newest[account] = int.from_bytes(key, "big")
        cursor.put(key, msgpack.packb(record, use_bin_type=True))
    for account, head in newest.items():
        record = txn.get(account, db=dbs["accounts"])
        if record is not None:
            record = bytearray(record)
            layout.set_history_head(record, head)
            txn.put(account, bytes(record), db=dbs["accounts"])
    _drop_retired(txn, dbs, "account_journal")


def _mark_account_histories(txn, dbs) -> None:
    """Schema 5 -> 6: each account record counts its journal records (HISTORY_RECORDS) and
    every `records_between_history_marks`-th of them gets a key in `history_marks`, so a history page
    below a txn that is not the account's own starts near it instead of at the account's
    newest record: one pass over the journal, memory for a count per account."""
    counts: dict[bytes, int] = {}
    marks = dbs["history_marks"]
    for key, _, account in _journal_records(txn.cursor(db=dbs["journal"])):
        count = counts[account] = counts.get(account, 0) + 1
        if count % limits.records_between_history_marks == 0:
            txn.put(account + b"\0" + bytes(key), b"", db=marks)
    for account, count in counts.items():
        record = txn.get(account, db=dbs["accounts"])
        if record is not None:
            record = bytearray(record)
            layout.set_history_head(record, layout.get(record, layout.LAST_TXN), count)
            txn.put(account, bytes(record), db=dbs["accounts"])


def _log_remembered_ids(txn, dbs) -> None:
    """Schema 6 -> 7: remembered ids go through `idempotency_log_a`/`_b` (persistence/writeback.py),
    empty here. Nothing to rewrite; the new version keeps a switch of schema 6, which would
    not read the log, from opening the data dir and forgetting ids a till may resend."""


def _log_account_records(txn, dbs) -> None:
    """Schema 7 -> 8: account records go through `accounts_log_a`/`_b` as well, empty here.
    Nothing to rewrite; the new version keeps a switch of schema 7, which would not read
    those logs, from opening the data dir and serving balances a commit has changed since."""


def _grants_in_their_own_format(txn, dbs) -> None:
    """Schema 8 -> 9: nothing here. Schema 9 was a development version whose
    `subsidy_grants` had keys and values of another format; the step to 10 rebuilds them
    from the journal, for a data dir of either version."""


def _rebuild_subsidy_grants(txn, dbs) -> None:
    """Schema 9 -> 10: every subsidy the journal holds gets its `subsidy_grants` entry (the
    latest term's of each key, `kept_subsidy_grants`), so a batch imported again after its
    ids were forgotten (or by another admin) is refused as granted already, for grants made
    before the upgrade too. Whatever the two databases held is dropped first (schema 9's own
    format). Terms long over are forgotten by the next housekeeping passes."""
    grants, expiry = dbs["subsidy_grants"], dbs["subsidy_grant_expiry"]
    txn.drop(grants, delete=False)
    txn.drop(expiry, delete=False)
    records = (record for _, record, _ in _journal_records(txn.cursor(db=dbs["journal"]))
               if record.get("kind") == "subsidy")
    for key, (day, amount) in kept_subsidy_grants(records).items():
        txn.put(key, SUBSIDY_GRANT.pack(day, amount), db=grants)
        txn.put(subsidy_grant_expiry_key(day, key), b"", db=expiry)


def _date_the_paid_once_check(txn, dbs) -> None:
    """Schema 10 -> 11: grants are now kept `subsidy_grants_kept_s` past their term, and
    audit holds a grant paid twice as a discrepancy. Those in the journal so far were paid
    by an older switch (schema 8 kept no grants; 10 forgot them two days after their term,
    early under a clock that ran ahead): the journal's last txn is written down, at or
    before which audit notices a grant paid twice instead."""
    last = txn.cursor(db=dbs["journal"])
    if last.last():
        txn.put(GRANTS_CHECKED_AFTER_TXN, bytes(last.key()), db=dbs["meta"])


def _date_the_lost_periods(txn, dbs) -> None:
    """Schema 13 -> 14: a card's lost periods are kept (`card_lost_periods`) from now on, so
    an offline tap made while the card was lost is flagged after_lost though the card was
    found before the upload. The journal's last txn is written down: audit judges records
    after it by the periods found after it, and none before (no switch kept them)."""
    last = txn.cursor(db=dbs["journal"])
    if last.last():
        txn.put(UPGRADED_TO_14_AFTER_TXN, bytes(last.key()), db=dbs["meta"])


class _UpgradeTxn:
    """The store's get/put/delete by database name, on the upgrade's own transaction (what
    `Blacklist` writes through)."""

    def __init__(self, txn, dbs):
        self.txn, self.dbs = txn, dbs

    def get(self, db: str, key: bytes):
        return self.txn.get(key, db=self.dbs[db])

    def put(self, db: str, key: bytes, value: bytes) -> None:
        self.txn.put(key, value, db=self.dbs[db])

    def delete(self, db: str, key: bytes) -> None:
        self.txn.delete(key, db=self.dbs[db])


def _list_frozen_accounts_cards(txn, dbs) -> None:
    """Schema 11 -> 12: the cards of an account the card office froze are listed, as an
    overdrawn one's always were (ledger/standing.py): those of accounts frozen before the
    upgrade go on their school's list, one new version per school; terminals catch up at
    their next sign-on, whose hello names it."""
    books = _UpgradeTxn(txn, dbs)
    unlisted: dict[str, list[str]] = {}
    blacklist = Blacklist(books)
    for account, record in txn.cursor(db=dbs["accounts"]):
        # A record of another size is no account a switch writes (audit names it).
        if len(record) != layout.ACCOUNT_RECORD_SIZE or not lists_its_cards(record):
            continue   # a closed account's cards are not listed, frozen or not
        school = layout.school_of(record)
        for key, _ in _keys_with_prefix(txn.cursor(db=dbs["account_cards"]), account + b"\0"):
            card = key[len(account) + 1:].decode(errors="replace")
            kept = _unpacked(books.get("cards", card.encode()))
            if type(kept) is not list or len(kept) != 3:
                continue   # an index entry without its card: audit names it
            if should_be_listed(kept[1], record) and not blacklist.contains(school, card):
                unlisted.setdefault(school, []).append(card)
    for school, cards in sorted(unlisted.items()):
        blacklist.change(school, add=cards)
        # Tills catch up on a change no request made: the operator can see why.
        log.warning("event=upgrade_listed_frozen_accounts_cards school=%s cards=%d "
                    "blacklist_version=%d", school, len(cards), blacklist.version(school))


def _reversals_kept_as_ids(txn, dbs) -> None:
    """Schema 12 -> 13: the first reverse of each target moves from `reversals`, where it was
    kept for ever, to `idempotency` under its own id (ledger.state.reversal_id) beside the
    txn of the payment it judged, so the id sweep forgets it. Its time is its `reverse`
    record's, or for one that moved no money the journal's last (kept a little longer).
    The payment judged is the `reverse` record's target; one that moved no money judged
    none, or judged a payment its decline left standing: a reverse of that payment then
    judges it again, with the same answer (the window stays passed, closed stays closed)."""
    if "reversals" not in dbs:
        return
    journal = dbs["journal"]
    last = txn.cursor(db=journal)
    latest = _record(last.value()) if last.last() else None
    latest_ms = latest.get("at", 0) if latest is not None else 0
    for key, value in txn.cursor(db=dbs["reversals"]):
        who, _, packed_target = bytes(key).partition(b"\0")
        reply, target = _record(value), _unpacked(packed_target)
        if reply is None or target is None:
            continue   # nothing a switch wrote: no reverse to keep (audit reads the journal)
        original, at_ms = None, latest_ms
        if type(reply.get("txn")) is int and 0 < reply["txn"] < 2 ** 64:
            record = _record(txn.get(reply["txn"].to_bytes(8, "big"), db=journal))
            if record is not None:
                original, at_ms = record.get("target"), record.get("at", latest_ms)
        txn.put(who + b"\0" + msgpack.packb(reversal_id(target), use_bin_type=True),
                msgpack.packb([REVERSAL_KEPT, b"", {"reply": reply, "original": original},
                               at_ms], use_bin_type=True), db=dbs["idempotency"])
    _drop_retired(txn, dbs, "reversals")


def _unpacked(value):
    try:
        return msgpack.unpackb(value, raw=False)
    except (ValueError, TypeError):   # every unpacking error is a ValueError; None a TypeError
        return None


def _record(value) -> dict | None:
    """A msgpack map with an int `at`, or None: an upgrade passes over what it cannot read
    rather than leave a switch that cannot open its data dir."""
    record = _unpacked(value)
    return record if type(record) is dict and type(record.get("at", 0)) is int else None


def _keys_with_prefix(cursor, prefix: bytes):
    if cursor.set_range(prefix):
        for key, value in cursor:
            if not key.startswith(prefix):
                return
            yield bytes(key), value


# schema version -> the step that brings a data dir of that version to the next one.
UPGRADES = {1: _index_rooms, 2: _pad_account_records, 3: _drop_id_expiry_index,
            4: _chain_account_histories, 5: _mark_account_histories, 6: _log_remembered_ids,
            7: _log_account_records, 8: _grants_in_their_own_format,
            9: _rebuild_subsidy_grants, 10: _date_the_paid_once_check,
            11: _list_frozen_accounts_cards, 12: _reversals_kept_as_ids,
            13: _date_the_lost_periods}
