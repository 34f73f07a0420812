"""An account's standing as the blacklist and the journal see it: which cards are listed,
and the journal record of a change of standing the core made (card office, offline
uploads, holds' `complete` and recharges all write theirs through here)."""

from switch import core
from switch.core import layout


def overdrawn(record) -> bool:
    """Frozen as overdrawn (one bit of FREEZE_REASON; an operator's freeze may stand beside)."""
    return bool(layout.get(record, layout.FREEZE_REASON) & layout.FREEZE_OVERDRAWN)


def lists_its_cards(record) -> bool:
    """Frozen by the card office, as overdrawn or both, and not closed: every card of it is
    listed. A closed account's are not, frozen or not (closing keeps the freeze reasons):
    each graduating class would grow every till's list for good, and an offline tap of one
    is kept for the operator at upload (docs/PROTOCOL.md §4.10, §4.13)."""
    return (layout.get(record, layout.FREEZE_REASON) != layout.FREEZE_NONE
            and layout.get(record, layout.STATUS) != layout.STATUS_CLOSED)


def should_be_listed(card_state: int, record, *, operator_freeze_lists: bool = True) -> bool:
    """A card is listed while it is lost or replaced, or its account is frozen: a till that
    is offline cannot ask the switch, and an operator's freeze (a phone stolen with the card,
    a card office's hold) must stop the card there too. Wire version 1 named only overdrawn
    accounts' cards; `operator_freeze_lists=False` is that rule, for books an older switch
    wrote (audit)."""
    if card_state in (layout.CARD_LOST, layout.CARD_BLOCKED):
        return True
    return lists_its_cards(record) if operator_freeze_lists else overdrawn(record)


def standing_record(ledger, credential, kind, account_id, record, ref, **extra) -> int:
    return ledger.append_journal(kind, account_id, layout.school_of(record), 0,
                                 layout.get(record, layout.BALANCE), credential, ref, **extra)


def _set_listing_for_account(ledger, account_id, record) -> None:
    """After a change of the account's freeze reason, list or unlist its cards."""
    school = layout.school_of(record)
    add, remove = [], []
    for card_id in ledger.cards_of(account_id):
        listed = ledger.blacklist.contains(school, card_id)
        wanted = should_be_listed(ledger.card(card_id)[1], record)
        if wanted and not listed:
            add.append(card_id)
        elif listed and not wanted:
            remove.append(card_id)
    ledger.change_blacklist(school, add=add, remove=remove)


def relist_if_changed(ledger, account_id, record, *, was_listing: bool) -> None:
    """After a change of standing: the account's cards go on or off the list when whether
    it lists them (`lists_its_cards`) changed."""
    if was_listing != lists_its_cards(record):
        _set_listing_for_account(ledger, account_id, record)


def record_standing(ledger, credential, kind, account_id, record, *, was_listing: bool, ref,
                    **extra) -> int:
    """Write a change of standing the core made, its journal record, and the cards' listing
    when it changed (a freeze began or ended, a frozen account closed)."""
    ledger.save_account(account_id, record)
    txn = standing_record(ledger, credential, kind, account_id, record, ref, **extra)
    relist_if_changed(ledger, account_id, record, was_listing=was_listing)
    return txn


def freeze_if_overdrawn(ledger, credential, account_id, record, ref) -> None:
    """After a payment that may pass the available balance (an offline record, a `complete`
    of a hold offline taps took from): an account now below zero is frozen as overdrawn, a
    `freeze` record written and its cards listed (docs/PROTOCOL.md §4.10)."""
    was_listing = lists_its_cards(record)
    if core.freeze_overdrawn(record):
        record_standing(ledger, credential, "freeze", account_id, record,
                        was_listing=was_listing, ref=ref, reason="overdrawn")
