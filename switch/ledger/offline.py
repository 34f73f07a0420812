"""Offline uploads (脱机) and day totals (对账).

Offline records are taps that already happened while a terminal could not reach
the switch: they are applied past the available balance and regardless of
limits, PIN or standing. An account driven below zero is frozen as overdrawn
and its cards go on the blacklist.
"""

import logging
from datetime import date

import msgpack

from switch import core, limits
from switch.ledger import idempotency, schema
from switch.ledger.effects import ClosedAccountTap
from switch.ledger.standing import freeze_if_overdrawn
from switch.core import codes, layout
from switch.ledger.accounts import _decline, _money
from switch.ledger.payment_path import count_offline_meal
from switch.ledger.purses import purse, spent
from switch.logline import FailureLog

_FIELDS = ("id", "card", "amount", "at")

# Records over the offline cap, said at most `peer_events_logged_per_minute_max` lines a
# minute (an upload holds 500; a stolen key can send many).
over_cap = FailureLog(logging.getLogger("switch.ledger"),
                      limits.peer_events_logged_per_minute_max, level=logging.WARNING,
                      traceback=False)

_pack = msgpack.Packer(use_bin_type=True).pack


def _result(record_id, code, **fields) -> dict:
    return {"id": record_id, "code": codes.CODE_NAMES[code], **fields}


def offline(ledger, credential, values):
    records = values["records"]
    if type(records) is not list or not 1 <= len(records) <= limits.offline_records_max:
        return _decline("offline", codes.BAD_REQUEST)
    if _reply_bytes_worst(records) > limits.frame_size_bytes_max - limits.tag_size_bytes:
        # Refused before anything is applied: a reply that could not be sent must never
        # stand for records that moved money.
        return _decline("offline", codes.BAD_REQUEST)
    return {"t": "offline", "code": "ok",
            "results": [_apply_record(ledger, credential, item) for item in records]}


def _reply_bytes_worst(records: list) -> int:
    """The most the reply to `records` can take: each result echoes its record's id (nil
    when it is not a valid id) and adds at most `offline_result_bytes_max` of its own."""
    total = limits.reply_envelope_bytes_max
    for item in records:
        record_id = item.get("id") if type(item) is dict else None
        if schema.request_id(record_id) is schema.INVALID:
            record_id = None
        total += len(_pack(record_id)) + limits.offline_result_bytes_max
    return total


def _apply_record(ledger, credential, item) -> dict:
    if type(item) is not dict or any(name not in item for name in _FIELDS):
        record_id = item.get("id") if type(item) is dict else None
        return _result(record_id if schema.request_id(record_id) is not schema.INVALID
                       else None, codes.BAD_REQUEST)
    record_id = schema.request_id(item["id"])
    if record_id is schema.INVALID:
        return _result(None, codes.BAD_REQUEST)
    fingerprint = ledger.fingerprint("offline", [item["card"], item["amount"], item["at"]])
    replay, seen_kind = idempotency.recall(ledger, credential.who, record_id, "offline",
                                           fingerprint)
    if replay is not None:
        return replay
    if seen_kind is not None:
        return _result(record_id, codes.ID_REUSE)
    result = _decide(ledger, credential, record_id, item)
    if result["code"] != _TOO_OLD:
        # Not too_old (an extension: v1 remembers it): on a clock that ran ahead, a real tap
        # refused so could never be charged once the clock was put right.
        idempotency.remember(ledger, credential.who, record_id, "offline", fingerprint, result)
    return result


_TOO_OLD = codes.CODE_NAMES[codes.TOO_OLD]


def while_lost(periods: list, at_ms: int) -> bool:
    """Whether a tap at `at_ms` fell inside one of the card's lost periods (lost, found)."""
    return any(lost_ms < at_ms < found_ms for lost_ms, found_ms in periods)


def _decide(ledger, credential, record_id, item) -> dict:
    card_id, amount, at_ms = item["card"], item["amount"], item["at"]
    if schema.card_id(card_id) is schema.INVALID or type(at_ms) is not int:
        return _result(record_id, codes.BAD_REQUEST)
    if type(amount) is not int or core.check_amount(amount, ledger.config.max_amount_fen):
        return _result(record_id, codes.BAD_AMOUNT)
    if amount > ledger.config.offline_amount_max_fen:
        # Nothing checked it at the till; no real tap is this large here. Said, so the
        # operator looks at the till (its key may be in other hands).
        over_cap.failed("offline_over_cap", who=credential.who, id=record_id, card=card_id,
                        amount_fen=amount, cap_fen=ledger.config.offline_amount_max_fen)
        return _result(record_id, codes.BAD_AMOUNT)
    card = ledger.card(card_id)
    if card is None:
        return _result(record_id, codes.CARD_UNKNOWN)
    account_id, card_state, card_changed_ms = card
    record = ledger.account(account_id)
    school = ledger.school(record)
    if credential.school != school.code:
        return _result(record_id, codes.WRONG_SCHOOL)
    now_ms = ledger.now_ms()
    if at_ms < now_ms - ledger.config.offline_window_s * 1000:
        return _result(record_id, codes.TOO_OLD)
    if at_ms > now_ms + limits.offline_future_s * 1000:
        return _result(record_id, codes.BAD_REQUEST)

    # It already happened: no limits, PIN, standing or balance check, but a closed account
    # takes no money: the tap is kept for the operator to collect by hand.
    subsidy_before = purse(record)
    code = core.apply_offline(record, amount, school.days.day_of(at_ms),
                              school.days.day_of(now_ms))
    if code:
        ledger.keep_closed_account_tap(credential, record_id, account_id, card_id, amount, at_ms)
        ledger.emit(ClosedAccountTap(school.code))
        return _result(record_id, code)
    ledger.save_account(account_id, record)
    balance, _ = _money(record)
    flag = None
    if (card_state in (layout.CARD_LOST, layout.CARD_BLOCKED) and at_ms > card_changed_ms) \
            or while_lost(ledger.lost_periods(card_id), at_ms):
        flag = "after_lost"
    extra = {"card": card_id, "tapped_at": at_ms,
             **spent(ledger, account_id, subsidy_before, record),
             **count_offline_meal(ledger, credential, account_id, record, amount, at_ms)}
    if flag is None and extra.get("meal_limit"):
        flag = "meal_limit"     # a lost card's tap is flagged as that first
    if flag:
        extra["flag"] = flag
    txn = ledger.append_journal("offline", account_id, school.code, -amount, balance, credential,
                                record_id, **extra)
    ledger.count_for_settlement(credential.who, school, at_ms, amount)
    freeze_if_overdrawn(ledger, credential, account_id, record, record_id)
    result = _result(record_id, codes.OK, txn=txn, balance=balance)
    if flag:
        result["flag"] = flag
    return result


def settle(ledger, credential, values):
    day_name = values["day"]
    try:
        date.fromisoformat(day_name)
    except ValueError:
        return _decline("settle", codes.BAD_REQUEST)
    count, total = ledger.settlement(credential.who, day_name)
    return {"t": "settle", "code": "ok", "count": count, "total": total,
            "match": count == values["count"] and total == values["total"]}


HANDLERS = {"offline": offline, "settle": settle}
