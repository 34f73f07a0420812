"""Card-office requests (挂失/解挂, 补卡, freeze, unlock, close, 离校退款) and the blacklist request.

Each keeps the blacklist in step with card and account standing: a card is on
its school's list while it is lost or blocked, or while its account is frozen
(by the card office or as overdrawn) and not closed.
"""

from switch import core, limits
from switch.core import codes, layout
from switch.ledger.accounts import _crosses_school, _decline, _money, account_of
from switch.ledger.dorm import write_cutoff
from switch.ledger.standing import (lists_its_cards, record_standing, relist_if_changed,
                                     should_be_listed)
from switch.ledger.standing import standing_record as _standing_record
from switch.ledger.subsidies import clear_on_close


def _card_and_account(ledger, credential, request_type, card_id):
    card = ledger.card(card_id)
    if card is None:
        return _decline(request_type, codes.CARD_UNKNOWN), None, None
    record = ledger.account(card[0])
    if _crosses_school(credential, record):
        return _decline(request_type, codes.WRONG_SCHOOL), None, None
    return None, card, record


def lost(ledger, credential, values):
    card_id = values["card"]
    refusal, card, record = _card_and_account(ledger, credential, "lost", card_id)
    if refusal:
        return refusal
    account_id, state, _ = card
    school = layout.school_of(record)
    if state == layout.CARD_BLOCKED:
        return _decline("lost", codes.CARD_BLOCKED)
    if state == layout.CARD_LOST:  # already lost: ok, nothing changes (docs/PROTOCOL.md §4.15)
        return {"t": "lost", "code": "ok", "blacklist": ledger.blacklist.version(school)}
    ledger.save_card(card_id, account_id, layout.CARD_LOST, ledger.now_ms())
    txn = _standing_record(ledger, credential, "lost", account_id, record, values["id"],
                           card=card_id)
    version = ledger.change_blacklist(school, add=[card_id])
    return {"t": "lost", "code": "ok", "txn": txn, "blacklist": version}


def found(ledger, credential, values):
    card_id = values["card"]
    refusal, card, record = _card_and_account(ledger, credential, "found", card_id)
    if refusal:
        return refusal
    account_id, state, _ = card
    school = layout.school_of(record)
    if state != layout.CARD_LOST:  # not lost: ok, nothing changes (docs/PROTOCOL.md §4.15)
        return {"t": "found", "code": "ok", "blacklist": ledger.blacklist.version(school)}
    # The time it was lost is kept: a thief's offline taps made meanwhile are flagged
    # after_lost when a till uploads them after this (§4.10).
    ledger.note_lost_period(card_id, card[2], ledger.now_ms())
    ledger.save_card(card_id, account_id, layout.CARD_ACTIVE, ledger.now_ms())
    txn = _standing_record(ledger, credential, "found", account_id, record, values["id"],
                           card=card_id)
    remove = [] if should_be_listed(layout.CARD_ACTIVE, record) else [card_id]
    version = ledger.change_blacklist(school, remove=remove)
    return {"t": "found", "code": "ok", "txn": txn, "blacklist": version}


def replace_card(ledger, credential, values):
    account_id, old_id, new_id = values["account"], values["old"], values["new"]
    refusal, record = account_of(ledger, credential, "replace_card", account_id)
    if refusal:
        return refusal
    if layout.get(record, layout.STATUS) == layout.STATUS_CLOSED:
        return _decline("replace_card", codes.ACCOUNT_CLOSED)
    old = ledger.card(old_id)
    if old is None:
        return _decline("replace_card", codes.CARD_UNKNOWN)
    if old[0] != account_id:
        return _decline("replace_card", codes.BAD_REQUEST)
    if old[1] == layout.CARD_BLOCKED:
        return _decline("replace_card", codes.CARD_BLOCKED)
    if ledger.card(new_id) is not None:
        return _decline("replace_card", codes.EXISTS)
    if len(ledger.cards_of(account_id)) >= limits.cards_per_account_max:
        return _decline("replace_card", codes.BAD_REQUEST)  # every card of it is listed at once
    now_ms = ledger.now_ms()
    # A lost card keeps the time it was lost: taps after it are flagged `after_lost` (§4.10)
    # however late they are uploaded.
    unusable_since_ms = old[2] if old[1] == layout.CARD_LOST else now_ms
    ledger.save_card(old_id, account_id, layout.CARD_BLOCKED, unusable_since_ms)
    ledger.save_card(new_id, account_id, layout.CARD_ACTIVE, now_ms)
    txn = _standing_record(ledger, credential, "replace_card", account_id, record, values["id"],
                           card=new_id, old=old_id)
    school = layout.school_of(record)
    add = [old_id] + ([new_id] if should_be_listed(layout.CARD_ACTIVE, record) else [])
    ledger.change_blacklist(school, add=add)
    return {"t": "replace_card", "code": "ok", "txn": txn}


def _change_standing(ledger, credential, values, request_type, change, **extra):
    """Let the core `change` the account; a change that was already so is `ok` without a
    record (docs/PROTOCOL.md §4.15)."""
    account_id = values["account"]
    refusal, record = account_of(ledger, credential, request_type, account_id)
    if refusal:
        return refusal
    before = bytes(record)
    was_listing = lists_its_cards(record)
    code = change(record)
    if code:
        return _decline(request_type, code)
    if record == before:
        return {"t": request_type, "code": "ok"}
    txn = record_standing(ledger, credential, request_type, account_id, record,
                          was_listing=was_listing, ref=values["id"], **extra)
    return {"t": request_type, "code": "ok", "txn": txn}


def freeze(ledger, credential, values):
    return _change_standing(ledger, credential, values, "freeze", core.freeze,
                            reason=values.get("reason", "operator"))


def unfreeze(ledger, credential, values):
    return _change_standing(ledger, credential, values, "unfreeze", core.unfreeze,
                            reason=values.get("reason"))


def unlock(ledger, credential, values):
    return _change_standing(ledger, credential, values, "unlock", core.unlock)


def _lapse_subsidy_before(ledger, credential, values, request_type: str, decide) -> None:
    """A closed account keeps no subsidy, and nothing is journaled after its closing record:
    when `decide` (core.close or core.refund) will close the account, what is left of every
    batch lapses first (never paid out). Decided on a copy, so a refusal changes nothing."""
    refusal, record = account_of(ledger, credential, request_type, values["account"])
    if refusal is None and layout.get(record, layout.STATUS) != layout.STATUS_CLOSED \
            and decide(bytearray(record)) == codes.OK:
        clear_on_close(ledger, credential, values["account"], values["id"])


def _powered(ledger, account_id: str) -> bool:
    record = ledger.account(account_id)
    return record is not None and layout.get(record, layout.POWER_ON) == 1


def close_account(ledger, credential, values):
    account_id = values["account"]
    _lapse_subsidy_before(ledger, credential, values, "close_account", core.close)
    powered = _powered(ledger, account_id)
    reply = _change_standing(ledger, credential, values, "close_account", core.close)
    if powered and "txn" in reply:
        # The core turned the power off with the closing; downstream must hear of it.
        write_cutoff(ledger, credential, account_id, ledger.account(account_id), values["id"])
    return reply


def refund(ledger, credential, values):
    """离校退款: pay the whole balance out and close (docs/PROTOCOL.md §4.15)."""
    account_id = values["account"]
    _lapse_subsidy_before(ledger, credential, values, "refund", core.refund)
    refusal, record = account_of(ledger, credential, "refund", account_id)
    if refusal:
        return refusal
    amount = layout.get(record, layout.BALANCE)   # the student's own money: never the subsidy
    powered = layout.get(record, layout.POWER_ON) == 1
    was_listing = lists_its_cards(record)
    code = core.refund(record)
    if code:
        return _decline("refund", code)
    ledger.save_account(account_id, record)
    balance, _ = _money(record)
    txn = ledger.append_journal("refund", account_id, layout.school_of(record), -amount,
                                balance, credential, values["id"])
    relist_if_changed(ledger, account_id, record, was_listing=was_listing)   # a frozen one's
    if powered:
        # The core turned a room's power off with the closing: without the `cutoff` record
        # downstream utility control would leave the relay on, unbilled, for good.
        write_cutoff(ledger, credential, account_id, record, values["id"])
    return {"t": "refund", "code": "ok", "txn": txn, "amount": amount, "balance": balance}


def blacklist(ledger, credential, values):
    reply = ledger.blacklist.since(credential.school, values["since"], values.get("after"))
    if reply is None:
        return _decline("blacklist", codes.BAD_REQUEST)
    return {"t": "blacklist", "code": "ok", **reply}


HANDLERS = {
    "lost": lost,
    "found": found,
    "replace_card": replace_card,
    "freeze": freeze,
    "unfreeze": unfreeze,
    "unlock": unlock,
    "close_account": close_account,
    "refund": refund,
    "blacklist": blacklist,
}
