"""Account settings a student changes through the mini-program: limits, PIN, virtual card.

These are state, not journal (docs/PROTOCOL.md §6.1): no `txn` in their replies.
"""

import os

from switch import core, limits
from switch.core import codes, layout
from switch.ledger.accounts import _decline, _effective_limits, account_of



def _open_account(ledger, credential, request_type, account_id):
    """(refusal, record): as `account_of`, and a closed account `account_closed`: closed is
    for good (docs/PROTOCOL.md §4.15), its limits, PIN and counts included."""
    refusal, record = account_of(ledger, credential, request_type, account_id)
    if refusal:
        return refusal, None
    if layout.get(record, layout.STATUS) == layout.STATUS_CLOSED:
        return _decline(request_type, codes.ACCOUNT_CLOSED), None
    return None, record


def set_limits(ledger, credential, values):
    account_id = values["account"]
    refusal, record = _open_account(ledger, credential, "set_limits", account_id)
    if refusal:
        return refusal
    school = ledger.school(record)
    code = core.set_limits(record, per_tx=values.get("per_tx"), daily=values.get("daily"),
                           no_pin=values.get("no_pin"), school_per_tx=school.per_tx_fen,
                           school_daily=school.daily_fen, school_no_pin=school.no_pin_fen,
                           per_tx_max=school.per_tx_max_fen, daily_max=school.daily_max_fen,
                           no_pin_max=school.no_pin_max_fen)
    if code:
        return _decline("set_limits", code)
    ledger.save_account(account_id, record)
    return {"t": "set_limits", "code": "ok", "limits": _effective_limits(record, school)}


def _person(ledger, credential, request_type, account_id):
    refusal, record = account_of(ledger, credential, request_type, account_id)
    if refusal:
        return refusal, None
    if layout.get(record, layout.KIND) != layout.KIND_PERSON:
        return _decline(request_type, codes.BAD_REQUEST), None
    if layout.get(record, layout.STATUS) == layout.STATUS_CLOSED:
        return _decline(request_type, codes.ACCOUNT_CLOSED), None
    return None, record


def set_pin(ledger, credential, values):
    account_id = values["account"]
    refusal, record = _person(ledger, credential, "set_pin", account_id)
    if refusal:
        return refusal
    code = core.verify_pin(record, values["old"].encode())
    if code == codes.OK:
        core.set_pin(record, values["new"].encode())
    ledger.save_account(account_id, record)
    return {"t": "set_pin", "code": codes.CODE_NAMES[code]}


def reset_pin(ledger, credential, values):
    account_id = values["account"]
    refusal, record = _person(ledger, credential, "reset_pin", account_id)
    if refusal:
        return refusal
    id_last6 = values["id_last6"].encode()
    code = core.reset_pin(record, id_last6)  # checks the ID against the one given at opening
    if code == codes.OK and b"X" in id_last6:
        # The PIN takes a final X as 0 (docs/PROTOCOL.md §4.7), as at opening.
        core.set_pin(record, id_last6.replace(b"X", b"0"))
    ledger.save_account(account_id, record)  # a wrong ID counted, too
    return {"t": "reset_pin", "code": codes.CODE_NAMES[code]}


def verify_pin(ledger, credential, values):
    account_id = values["account"]
    refusal, record = _person(ledger, credential, "verify_pin", account_id)
    if refusal:
        return refusal
    code = core.verify_pin(record, values["pin"].encode())
    ledger.save_account(account_id, record)
    return {"t": "verify_pin", "code": codes.CODE_NAMES[code]}


def virtual_card(ledger, credential, values):
    account_id = values["account"]
    refusal, record = _person(ledger, credential, "virtual_card", account_id)
    if refusal:
        return refusal
    code = core.enable_virtual_card(record)
    if code:
        return _decline("virtual_card", code)
    secret = os.urandom(limits.qr_secret_size_bytes)  # a new secret voids every code of the old one
    ledger.save_qr_secret(account_id, secret)
    ledger.save_account(account_id, record)
    return {"t": "virtual_card", "code": "ok", "qr_secret": secret}


HANDLERS = {
    "set_limits": set_limits,
    "set_pin": set_pin,
    "reset_pin": reset_pin,
    "verify_pin": verify_pin,
    "virtual_card": virtual_card,
}
