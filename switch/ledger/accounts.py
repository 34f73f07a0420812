"""One function per request type: decide with the core, write state and journal, reply.

Each handler gets validated `values` (requests.py) and returns the reply map
without `re`. Declines are returned codes; nothing here raises for bad input.
"""

import os

import msgpack

from switch import core, limits
from switch.core import codes, layout
from switch.identifiers import building_of
from switch.ledger.effects import Revocation
from switch.ledger.payment_path import (count_meal, guard_campus_rules, note_approved_tap,
                                       pay)
from switch.ledger.purses import purse, spent, with_subsidy
from switch.ledger.standing import overdrawn, record_standing, should_be_listed
from switch.ledger.state import Credential

NAMES = codes.CODE_NAMES


def _decline(request_type: str, code: int) -> dict:
    return {"t": request_type, "code": NAMES[code]}


def _money(record) -> tuple[int, int]:
    """(balance, available): the student's own money, and both purses less open holds."""
    balance = layout.get(record, layout.BALANCE)
    return balance, balance + layout.get(record, layout.SUBSIDY) - layout.get(record, layout.HELD)


def _crosses_school(credential: Credential, record) -> bool:
    return credential.school is not None and credential.school != layout.school_of(record)


def account_of(ledger, credential, request_type: str, account_id: str):
    """(refusal, record): the account, or the reply refusing it (unknown or other school)."""
    record = ledger.account(account_id)
    if record is None:
        return _decline(request_type, codes.UNKNOWN_ACCOUNT), None
    if _crosses_school(credential, record):
        return _decline(request_type, codes.WRONG_SCHOOL), None
    return None, record


def account_for_amount(ledger, credential, values, request_type: str):
    """(refusal, record) for a request moving `amount` on `account`: the amount is checked
    first, then the account (the order of docs/PROTOCOL.md §4.3)."""
    code = core.check_amount(values["amount"], ledger.config.max_amount_fen)
    if code:
        return _decline(request_type, code), None
    return account_of(ledger, credential, request_type, values["account"])


def _effective_limits(record, school) -> dict:
    def pick(field, default):
        value = layout.get(record, field)
        return default if value < 0 else value
    return {"per_tx": pick(layout.LIMIT_PER_TX, school.per_tx_fen),
            "daily": pick(layout.LIMIT_DAILY, school.daily_fen),
            "no_pin": pick(layout.LIMIT_NO_PIN, school.no_pin_fen)}


# ------------------------------------------------------------------ everyone
def ping(ledger, credential, values):
    return {"t": "ping", "code": "ok"}


# ------------------------------------------------------------------ terminals
def debit(ledger, credential, values):
    amount = values["amount"]
    code = core.check_amount(amount, ledger.config.max_amount_fen)
    if code:
        return _decline("debit", code)
    card_id = values["card"]
    card = ledger.card(card_id)
    if card is None:
        return _decline("debit", codes.CARD_UNKNOWN)
    account_id, card_state, _ = card
    now_ms = ledger.now_ms()
    record = ledger.account(account_id)
    code, meal = guard_campus_rules(ledger, credential, account_id, record, card_state, amount,
                                    now_ms, values.get("confirm", False))
    if code:
        return _decline("debit", code)
    subsidy_before = purse(record)
    code, school = pay(ledger, credential, account_id, record, card_state=card_state,
                       amount=amount, pin=values.get("pin"), pin_checked=True, hold=False,
                       now_ms=now_ms)
    if code:
        return _decline("debit", code)
    balance, available = _money(record)
    txn = ledger.append_journal("debit", account_id, school.code, -amount, balance, credential,
                                values["id"], card=card_id,
                                **spent(ledger, account_id, subsidy_before, record),
                                **count_meal(ledger, account_id, meal, amount))
    note_approved_tap(ledger, credential, account_id, record, amount, now_ms, txn)
    ledger.count_for_settlement(credential.who, school, now_ms, amount)
    return with_subsidy({"t": "debit", "code": "ok", "txn": txn, "balance": balance,
                         "available": available, "account": account_id}, record)


def balance(ledger, credential, values):
    card = ledger.card(values["card"])
    if card is None:
        return _decline("balance", codes.CARD_UNKNOWN)
    account_id, card_state, _ = card
    record = ledger.account(account_id)
    if _crosses_school(credential, record):
        return _decline("balance", codes.WRONG_SCHOOL)
    # A lost or replaced card shows no balance: whoever holds it is not the owner.
    if card_state == layout.CARD_LOST:
        return _decline("balance", codes.CARD_LOST)
    if card_state == layout.CARD_BLOCKED:
        return _decline("balance", codes.CARD_BLOCKED)
    balance, available = _money(record)
    return with_subsidy({"t": "balance", "code": "ok", "balance": balance,
                         "available": available, "account": account_id}, record)


# ------------------------------------------------------------------ service
def credit(ledger, credential, values):
    amount, account_id = values["amount"], values["account"]
    refusal, record = account_for_amount(ledger, credential, values, "credit")
    if refusal:
        return refusal
    was_overdrawn = overdrawn(record)
    code = core.credit(record, amount)  # closed: account_closed
    if code:
        return _decline("credit", code)
    school = layout.school_of(record)
    ledger.save_account(account_id, record)
    balance, available = _money(record)
    txn = ledger.append_journal("credit", account_id, school, amount, balance, credential,
                                values["id"], source=values["source"])
    if layout.get(record, layout.KIND) == layout.KIND_UTILITY and core.apply_restore(record):
        ledger.save_account(account_id, record)
        ledger.append_journal("restore", account_id, school, 0, balance, credential, values["id"])
    if was_overdrawn and not overdrawn(record):
        # Paid back: its cards leave the blacklist, unless the card office froze it too.
        record_standing(ledger, credential, "unfreeze", account_id, record, was_listing=True,
                        ref=values["id"], reason="repaid")
    return with_subsidy({"t": "credit", "code": "ok", "txn": txn, "balance": balance,
                         "available": available}, record)


def account(ledger, credential, values):
    account_id = values["account"]
    refusal, record = account_of(ledger, credential, "account", account_id)
    if refusal:
        return refusal
    school = ledger.school(record)
    info = ledger.account_info(account_id)
    balance, available = _money(record)
    cards = []
    for card_id in ledger.cards_of(account_id):
        card = ledger.card(card_id)
        cards.append({"card": card_id, "state": layout.CARD_STATE_NAMES[card[1]]})
    reply = {"t": "account", "code": "ok", "account": account_id, "school": school.code,
             "kind": layout.KIND_NAMES[layout.get(record, layout.KIND)],
             "status": layout.STATUS_NAMES[layout.get(record, layout.STATUS)],
             "pin_locked": bool(layout.get(record, layout.PIN_LOCKED)),
             "balance": balance, "available": available, "cards": cards,
             "limits": _effective_limits(record, school), "holder": info.get("holder")}
    if layout.get(record, layout.KIND) == layout.KIND_PERSON:
        reply["subsidy"] = purse(record)
    else:
        reply["utility"] = layout.UTILITY_NAMES[layout.get(record, layout.UTILITY)]
        reply["power"] = bool(layout.get(record, layout.POWER_ON))
    return reply


def history(ledger, credential, values):
    account_id = values["account"]
    refusal, record = account_of(ledger, credential, "history", account_id)
    if refusal:
        return refusal
    limit = values.get("limit", limits.history_limit_default)
    if limit > limits.history_limit_max:
        return _decline("history", codes.BAD_REQUEST)
    items = []
    more = False
    items_bytes = 0
    for txn in ledger.account_txns_before(account_id, values.get("before")):
        if len(items) == limit:
            more = True
            break
        entry = ledger.journal_record(txn)
        item = {"txn": entry["txn"], "at": entry["at"], "kind": entry["kind"],
                "amount": entry["amount"], "from_subsidy": entry.get("from_subsidy", 0),
                "balance": entry["balance"],
                "who": entry["who"], "merchant": entry["merchant"],
                "card": entry.get("card")}
        items_bytes += len(msgpack.packb(item))
        if items and items_bytes > limits.history_items_bytes_max:
            more = True     # the page ends where a frame would; `next` goes on from here
            break
        items.append(item)
    # The school's zone, so a card office shows times as the school's clocks did.
    return {"t": "history", "code": "ok", "items": items,
            "next": items[-1]["txn"] if more else None,
            "time_zone": ledger.school(record).time_zone}


# ------------------------------------------------------------------ admin
def open_account(ledger, credential, values):
    account_id = values["account"]
    school = ledger.config.schools.get(values["school"])
    if school is None:
        return _decline("open_account", codes.BAD_REQUEST)
    if credential.school is not None and credential.school != school.code:
        return _decline("open_account", codes.WRONG_SCHOOL)
    kind = values["kind"]
    if kind == "person":
        if "id_last6" not in values or "utility" in values:
            return _decline("open_account", codes.BAD_REQUEST)
        id_last6 = values["id_last6"].encode()
        # The initial PIN is the ID's last six, a final X read as 0 (docs/PROTOCOL.md §4.7).
        initial_pin = id_last6.replace(b"X", b"0")
        utility = layout.UTILITY_NONE
    else:
        if "id_last6" in values:
            return _decline("open_account", codes.BAD_REQUEST)
        id_last6 = initial_pin = None
        utility_name = values.get("utility", "both")
        if not school.utility_kind_allowed(account_id, utility_name):
            return _decline("open_account", codes.BAD_REQUEST)
        utility = layout.UTILITY_NAMES.index(utility_name)
    if ledger.account(account_id) is not None:
        return _decline("open_account", codes.EXISTS)
    # An id that begins with another school's code is a mistyped id or school (docs/PROTOCOL.md
    # §4.15): opened, the id would name one school and the account, its money and its cards
    # belong to another. Checked after `exists`, which version 1 answers for any existing id.
    named = ledger.config.school_named_by(account_id)
    if named is not None and named != school.code:
        return _decline("open_account", codes.BAD_REQUEST)
    # A building is written one way: `CUIK-09-0101` would be building "09", neither the split
    # building "9" (opened "both" where it pays apart) nor listed by `rooms` for building 9.
    building = building_of(account_id)
    if kind == "utility" and building is not None and len(building) > 1 \
            and building.startswith("0"):
        return _decline("open_account", codes.BAD_REQUEST)
    salt = os.urandom(16)
    pin_hash = core.pin_digest(salt, initial_pin) if initial_pin else os.urandom(32)
    id_hash = core.id_digest(salt, id_last6) if id_last6 else os.urandom(32)
    record = layout.new_account_record(
        school.code, layout.KIND_NAMES.index(kind), utility, salt, pin_hash, id_hash)
    ledger.save_account(account_id, record)
    if kind == "utility":
        ledger.index_room(school.code, account_id)
    ledger.save_account_info(account_id, {"holder": values.get("holder"),
                                          "opened_at": ledger.now_ms()})
    txn = ledger.append_journal("open_account", account_id, school.code, 0, 0, credential,
                                values["id"], account_kind=kind)
    return {"t": "open_account", "code": "ok", "txn": txn}


def issue_card(ledger, credential, values):
    account_id, card_id = values["account"], values["card"]
    record = ledger.account(account_id)
    if record is None:
        return _decline("issue_card", codes.UNKNOWN_ACCOUNT)
    if _crosses_school(credential, record):
        return _decline("issue_card", codes.WRONG_SCHOOL)
    if layout.get(record, layout.KIND) != layout.KIND_PERSON:
        return _decline("issue_card", codes.BAD_REQUEST)
    if layout.get(record, layout.STATUS) == layout.STATUS_CLOSED:
        return _decline("issue_card", codes.ACCOUNT_CLOSED)
    if ledger.card(card_id) is not None:
        return _decline("issue_card", codes.EXISTS)
    if len(ledger.cards_of(account_id)) >= limits.cards_per_account_max:
        return _decline("issue_card", codes.BAD_REQUEST)  # every card of it is listed at once
    now_ms = ledger.now_ms()
    ledger.save_card(card_id, account_id, layout.CARD_ACTIVE, now_ms)
    if should_be_listed(layout.CARD_ACTIVE, record):
        # A new card of a frozen account is refused at the till like the others.
        ledger.change_blacklist(layout.school_of(record), add=[card_id])
    balance, _ = _money(record)
    txn = ledger.append_journal("issue_card", account_id, layout.school_of(record), 0, balance,
                                credential, values["id"], card=card_id)
    return {"t": "issue_card", "code": "ok", "txn": txn}


def add_credential(ledger, credential, values):
    who, role = values["who"], values["role"]
    school = values.get("school")
    kind = values.get("kind")
    if school is not None and school not in ledger.config.schools:
        return _decline("add_credential", codes.BAD_REQUEST)
    if role == "terminal":
        if school is None or kind is None:
            return _decline("add_credential", codes.BAD_REQUEST)
        if values.get("meals") and kind != "pos":
            return _decline("add_credential", codes.BAD_REQUEST)   # canteen tills only
    elif "meals" in values:
        return _decline("add_credential", codes.BAD_REQUEST)
    elif kind is not None or (role == "admin" and school is not None):
        return _decline("add_credential", codes.BAD_REQUEST)
    if credential.school is not None and school != credential.school:
        return _decline("add_credential", codes.WRONG_SCHOOL)
    if ledger.credential(who) is not None:
        return _decline("add_credential", codes.EXISTS)
    key = os.urandom(limits.credential_key_size_bytes)
    ledger.save_credential(Credential(who=who, key=key, role=role, school=school, kind=kind,
                                      merchant=values.get("merchant", who if role == "terminal"
                                                          else None),
                                      meals=values.get("meals", False)))
    return {"t": "add_credential", "code": "ok", "key": key}


def _credential_to_change(ledger, credential, request_type, who, itself_allowed):
    """(refusal, the credential `who`): unknown, or the caller itself where not allowed,
    `bad_request`; another school's `wrong_school`."""
    target = ledger.credential(who)
    if target is None or (who == credential.who and not itself_allowed):
        return _decline(request_type, codes.BAD_REQUEST), None
    if credential.school is not None and target.school != credential.school:
        return _decline(request_type, codes.WRONG_SCHOOL), None
    return None, target


def revoke_credential(ledger, credential, values):
    who = values["who"]
    refusal, target = _credential_to_change(ledger, credential, "revoke_credential", who,
                                            itself_allowed=False)
    if refusal:
        return refusal
    if not target.revoked:
        target = Credential(**{**target.__dict__, "revoked": True})
        ledger.save_credential(target)
        ledger.emit(Revocation(who))
    return {"t": "revoke_credential", "code": "ok"}


def rotate_key(ledger, credential, values):
    """A new key for `who` (docs/PROTOCOL.md §4.15): the old one stops working at once and
    the sessions signed on with it are closed, the caller's own after this reply."""
    who = values["who"]
    refusal, target = _credential_to_change(ledger, credential, "rotate_key", who,
                                            itself_allowed=True)
    if refusal:
        return refusal
    if target.revoked:
        return _decline("rotate_key", codes.BAD_REQUEST)
    key = os.urandom(limits.credential_key_size_bytes)
    ledger.save_credential(Credential(**{**target.__dict__, "key": key}))
    ledger.emit(Revocation(who))
    return {"t": "rotate_key", "code": "ok", "key": key}


HANDLERS = {
    "ping": ping,
    "debit": debit,
    "balance": balance,
    "credit": credit,
    "account": account,
    "history": history,
    "open_account": open_account,
    "issue_card": issue_card,
    "add_credential": add_credential,
    "revoke_credential": revoke_credential,
    "rotate_key": rotate_key,
}
