"""The common debit in one flat pass: a card tap at a till, with or without a PIN, new id,
that the account pays from its own money. Most of what the switch executes at noon.

The general path (`dispatch._execute` then `accounts.debit`) makes about 160 calls per debit
(cProfile, built-ins included) through helpers shared by every kind of payment; calls, not
the decision (0.14 µs in the core), are most of a debit's CPU. This pass does the same
reads, the same core decision and the same writes, through the same state methods, in about
100.

It never decides anything the general path would decide differently: it only takes a debit
when every rule the general path checks would pass, and it writes nothing until it has
taken it. Anything else (a replay or a reused id, a decline, a card not active, another
school's card, `confirm`, a meal cap in force, a subsidy purse to spend from, a field the
schema would refuse) returns None before any write, and the general path executes the
request from the start. The general path is the reference: tests/ledger/test_plain_debit.py
runs both on twin data dirs and requires the same replies and the same records.
"""

from switch import core
from switch.core import codes, layout
from switch.ledger import schema

_OK = codes.OK
_CARD_ACTIVE = layout.CARD_ACTIVE
_FIELDS_REQUIRED = frozenset({"t", "card", "amount", "id"})
# `seq` is the session's (switch/codec/session.py), in every request frame's body.
_FIELDS_ALLOWED = _FIELDS_REQUIRED | {"pin", "seq"}
_ABSENT = object()
_INVALID = schema.INVALID
_SUBSIDY = layout.SUBSIDY
_BALANCE, _HELD = layout.BALANCE, layout.HELD
_layout_get = layout.get
_authorize = core.authorize
_check_amount = core.check_amount


def execute_plain_debit(ledger, credential, message: dict) -> dict | None:
    """The reply to a debit this pass takes, with its writes done; None (nothing written)
    for one the general path must execute. The caller has checked the credential may
    debit (roles.permitted)."""
    fields = message.keys()
    if not _FIELDS_REQUIRED <= fields <= _FIELDS_ALLOWED:
        return None
    # Each field by the schema's own check (schema.SCHEMAS["debit"]).
    pin = message.get("pin", _ABSENT)
    if pin is _ABSENT:
        pin = None
    elif schema.pin(pin) is _INVALID:
        return None     # present: a nil or mistyped one is the general path's error
    request_id = schema.request_id(message["id"])
    card_id, amount = message["card"], message["amount"]
    if (request_id is _INVALID or schema.amount(amount) is _INVALID
            or schema.card_id(card_id) is _INVALID):
        return None
    # The fingerprint covers the schema's fields in its order (schema.fingerprint_values):
    # card, amount, id, pin, confirm.
    fingerprint = ledger.fingerprint("debit", [card_id, amount, request_id, pin, None])
    who = credential.who
    remembered_at = ledger.idempotency_key(who, request_id)
    if ledger.remembers(remembered_at):
        return None     # a replay, or the id reused: the general path answers it
    config = ledger.config
    if _check_amount(amount, config.max_amount_fen) != _OK:
        return None
    card = ledger.card(card_id)
    if card is None:
        return None
    account_id, card_state, _ = card
    if card_state != _CARD_ACTIVE:
        return None
    record = ledger.account_as_read(account_id)
    if record is None:
        return None
    school = ledger.school(record)
    if school is None or credential.school != school.code:
        return None
    if _layout_get(record, _SUBSIDY) != 0 or (credential.meals and school.meals):
        return None     # a purse shared out over batches, or meal caps: the general path
    now_ms = ledger.now_ms()
    window_ms = school.repeat_tap_window_s * 1000
    tap = None
    if window_ms:
        tap = ledger.last_tap(account_id, who)
        if core.check_repeat_tap(tap, amount, now_ms, window_ms, False) != _OK:
            return None
    bounds = ledger.school_limits(school)
    # On a copy (`record` is the store's own value, never changed here): a decline (a wrong
    # PIN counted) is left to the general path, which then decides it on the record as it was.
    paid = bytearray(record)
    if _authorize(paid, _CARD_ACTIVE, True, amount, None if pin is None else pin.encode(),
                  True, school.days.day_of(now_ms), bounds.per_tx, bounds.daily,
                  bounds.no_pin, bounds.max_amount, False) != _OK:
        return None

    # Taken: the writes of accounts.debit through the same state methods. The account is
    # saved once, by append_journal, with its new history head.
    balance = _layout_get(paid, _BALANCE)
    available = balance - _layout_get(paid, _HELD)   # the subsidy purse is empty
    txn = ledger.append_journal("debit", account_id, school.code, -amount, balance, credential,
                                request_id, account_record=paid, card=card_id)
    if window_ms:
        tap = tap or bytearray(layout.TAP_RECORD_SIZE)
        core.note_tap(tap, amount, now_ms, txn)
        ledger.save_last_tap(account_id, who, tap)
    ledger.count_for_settlement(who, school, now_ms, amount)
    reply = {"t": "debit", "code": "ok", "txn": txn, "balance": balance,
             "available": available, "account": account_id}
    ledger.remember_at(remembered_at, "debit", fingerprint, reply)
    return reply
