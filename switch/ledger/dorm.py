"""Hot water holds (水控) and dorm utility meters (电控/水控).

A hold reserves money on a card or QR code for one shower; `complete` takes
what the controller metered and releases the rest (an account it leaves below
zero is frozen as overdrawn); the switch expires holds nobody completes. Meters
deduct from a room's utility account unconditionally and cut the power when it
runs dry; a recharge that brings it back above zero restores it (see
handlers.credit).
"""

import msgpack

from switch import core, identifiers, limits
from switch.core import codes, layout
from switch.ledger.accounts import _decline, _money, account_for_amount
from switch.ledger.effects import PowerCutoff
from switch.ledger.payment_path import pay
from switch.ledger.payments import check_qr
from switch.ledger.purses import purse, spent, with_subsidy
from switch.ledger.standing import freeze_if_overdrawn


_pack = msgpack.Packer(use_bin_type=True).pack


def unpack(data):
    return msgpack.unpackb(data, raw=False)


def hold(ledger, credential, values):
    amount = values["amount"]
    code = core.check_amount(amount, ledger.config.max_amount_fen)
    if code:
        return _decline("hold", code)
    if ("card" in values) == ("qr" in values):
        return _decline("hold", codes.BAD_REQUEST)
    now_ms = ledger.now_ms()
    if "card" in values:
        card = ledger.card(values["card"])
        if card is None:
            return _decline("hold", codes.CARD_UNKNOWN)
        account_id, card_state, _ = card
        record = ledger.account(account_id)
        pin = values.get("pin")
        pin_checked = True
        used_key = None
    else:
        if "pin" in values:
            return _decline("hold", codes.BAD_REQUEST)
        code, account_id, record, used_key = check_qr(ledger, values["qr"], now_ms)
        if code:
            return _decline("hold", code)
        card_state, pin, pin_checked = layout.CARD_ACTIVE, None, False
    code, school = pay(ledger, credential, account_id, record, card_state=card_state,
                       amount=amount, pin=pin, pin_checked=pin_checked, hold=True, now_ms=now_ms)
    if code:
        return _decline("hold", code)
    if used_key is not None:
        ledger.mark_qr_code_used(used_key)
    balance, available = _money(record)
    txn = ledger.append_journal("hold", account_id, school.code, 0, balance, credential,
                                values["id"], held=amount)
    hold_id = f"H{txn}"
    expires = now_ms + ledger.config.hold_timeout_s * 1000
    ledger.holds.open(hold_id, {"account": account_id, "amount": amount, "state": "open",
                                "expires": expires, "who": credential.who, "txn": txn})
    return with_subsidy({"t": "hold", "code": "ok", "txn": txn, "hold": hold_id,
                         "expires": expires, "balance": balance, "available": available}, record)


def _open_hold_of(ledger, credential, request_type, hold_id, now_ms):
    """(refusal, hold): a hold of this terminal that is still open at `now_ms`."""
    # Not of the syntax the switch gives its holds: unknown without a lookup (an empty or
    # overlong key would not even be a valid store key).
    hold = ledger.holds.get(hold_id) if identifiers.HOLD.match(hold_id) else None
    # Another terminal's hold is as unknown to this one as a hold that never was.
    if hold is None or hold["who"] != credential.who:
        return _decline(request_type, codes.HOLD_UNKNOWN), None
    if hold["state"] == "expired" or (hold["state"] == "open"
                                      and now_ms >= hold["expires"]):
        if hold["state"] == "open":
            expire_hold(ledger, hold_id, hold)
        return _decline(request_type, codes.HOLD_EXPIRED), None
    if hold["state"] != "open":
        return _decline(request_type, codes.HOLD_CLOSED), None
    return None, hold


def complete(ledger, credential, values):
    amount = values.get("amount")
    if type(amount) is not int or amount < 0 or amount > ledger.config.max_amount_fen:
        return _decline("complete", codes.BAD_AMOUNT)
    now_ms = ledger.now_ms()
    refusal, held = _open_hold_of(ledger, credential, "complete", values["hold"], now_ms)
    if refusal:
        return refusal
    if amount > held["amount"]:
        return _decline("complete", codes.OVER_HOLD)
    account_id = held["account"]
    record = ledger.account(account_id)
    school = ledger.school(record)
    subsidy_before = purse(record)
    core.complete_hold(record, held["amount"], amount, school.days.day_of(now_ms))
    ledger.save_account(account_id, record)
    ledger.holds.close(values["hold"], held, "completed")
    balance, available = _money(record)
    txn = ledger.append_journal("complete", account_id, school.code, -amount, balance, credential,
                                values["id"], hold=values["hold"],
                                **spent(ledger, account_id, subsidy_before, record))
    ledger.count_for_settlement(credential.who, school, now_ms, amount)
    # Offline taps may have taken the held money meanwhile (they pass the available
    # balance, docs/PROTOCOL.md §4.10): the metered amount is taken all the same, and an
    # account it leaves below zero is frozen as overdrawn, as after an offline record.
    freeze_if_overdrawn(ledger, credential, account_id, record, values["id"])
    return with_subsidy({"t": "complete", "code": "ok", "txn": txn, "balance": balance,
                         "available": available}, record)


def void(ledger, credential, values):
    refusal, held = _open_hold_of(ledger, credential, "void", values["hold"],
                                  ledger.now_ms())
    if refusal:
        return refusal
    account_id = held["account"]
    record = ledger.account(account_id)
    core.release_hold(record, held["amount"])
    ledger.save_account(account_id, record)
    ledger.holds.close(values["hold"], held, "voided")
    balance, available = _money(record)
    txn = ledger.append_journal("void", account_id, layout.school_of(record), 0, balance,
                                credential, values["id"], hold=values["hold"])
    return with_subsidy({"t": "void", "code": "ok", "txn": txn, "balance": balance,
                         "available": available}, record)


def expire_hold(ledger, hold_id: str, held: dict) -> int:
    account_id = held["account"]
    record = ledger.account(account_id)
    core.release_hold(record, held["amount"])
    ledger.save_account(account_id, record)
    ledger.holds.close(hold_id, held, "expired")
    balance, _ = _money(record)
    return ledger.append_journal("expire", account_id, layout.school_of(record), 0, balance,
                                 None, None, hold=hold_id)


def expire_due_holds(ledger) -> int:
    """Release every open hold past its timeout (housekeeping)."""
    expired = 0
    for hold_id in ledger.holds.due(ledger.now_ms(), limits.holds_expired_per_pass_max):
        held = ledger.holds.get(hold_id)
        if held is not None and held["state"] == "open":  # may have closed in the overlay
            expire_hold(ledger, hold_id, held)
            expired += 1
    return expired


# ---------------------------------------------------------------- meters
def meter(ledger, credential, values):
    amount, account_id = values["amount"], values["account"]
    refusal, record = account_for_amount(ledger, credential, values, "meter")
    if refusal:
        return refusal
    if layout.get(record, layout.KIND) != layout.KIND_UTILITY:
        return _decline("meter", codes.BAD_REQUEST)
    utility = layout.UTILITY_NAMES[layout.get(record, layout.UTILITY)]
    if utility != "both" and utility != values["what"]:
        return _decline("meter", codes.BAD_REQUEST)
    # The energy was used: the deduction applies frozen or below zero; a closed room takes
    # no money (its power is off for good).
    code, cutoff = core.apply_meter(record, amount)
    if code:
        return _decline("meter", code)
    ledger.save_account(account_id, record)
    balance, _ = _money(record)
    school = layout.school_of(record)
    txn = ledger.append_journal("meter", account_id, school, -amount, balance, credential,
                                values["id"], what=values["what"])
    if cutoff:
        write_cutoff(ledger, credential, account_id, record, values["id"])
    return {"t": "meter", "code": "ok", "txn": txn, "balance": balance, "cutoff": cutoff}


def write_cutoff(ledger, credential, account_id: str, record, ref) -> int:
    """The `cutoff` record of a room whose power the core has just turned off, right after
    the record of the request that did it (`ref`, its id): downstream utility control throws
    the relay on it, and the shell counts it once it is durable."""
    assert layout.get(record, layout.POWER_ON) == 0, account_id
    school = layout.school_of(record)
    balance = layout.get(record, layout.BALANCE)
    txn = ledger.append_journal("cutoff", account_id, school, 0, balance, credential, ref)
    ledger.emit(PowerCutoff(school, account_id, balance))
    return txn


# ---------------------------------------------------------------- the room picker
def rooms(ledger, credential, values):
    """The school's dorm rooms (utility accounts), a page at a time (docs/PROTOCOL.md §4.15)."""
    school = values.get("school", credential.school)
    if school is None or school not in ledger.config.schools:
        return _decline("rooms", codes.BAD_REQUEST)
    if credential.school is not None and credential.school != school:
        return _decline("rooms", codes.WRONG_SCHOOL)
    limit = values.get("limit", limits.rooms_limit_default)
    if limit > limits.rooms_limit_max:
        return _decline("rooms", codes.BAD_REQUEST)
    account_ids, more = ledger.rooms(school, values.get("building"), values.get("prefix", ""),
                                     values.get("after"), limit)
    items = []
    for account_id in account_ids:
        record = ledger.account(account_id)
        if layout.get(record, layout.STATUS) == layout.STATUS_CLOSED:
            # Closed for good (a refund at the end of its use): offered, a student's
            # recharge of it would be refused `account_closed` after they paid WeChat.
            continue
        items.append({"account": account_id,
                      "utility": layout.UTILITY_NAMES[layout.get(record, layout.UTILITY)],
                      "power": "on" if layout.get(record, layout.POWER_ON) else "off",
                      "balance": layout.get(record, layout.BALANCE)})
    return {"t": "rooms", "code": "ok", "items": items,
            "next": account_ids[-1] if more else None}


HANDLERS = {"hold": hold, "complete": complete, "void": void, "meter": meter, "rooms": rooms}
