"""The two purses of a person account as payments see them: the subsidy purse pays first
(decided by the core), and each payment's subsidy part is shared out over the batches it
came from, so a reversal can give each share back (docs/PROTOCOL.md §4.17)."""

from switch import core
from switch.core import layout


def purse(record) -> int:
    return layout.get(record, layout.SUBSIDY)


def with_subsidy(reply: dict, record) -> dict:
    """Add the purse to a money reply when it holds anything (absent reads as 0, so a till
    that never sees a subsidy gets the replies it always got)."""
    subsidy = purse(record)
    if subsidy:
        reply["subsidy"] = subsidy
    return reply


def spent(ledger, account_id: str, subsidy_before: int, record) -> dict:
    """The journal fields of a payment the core has applied: what the subsidy purse paid,
    taken from the batches that lapse first. Empty when it paid nothing."""
    part = subsidy_before - purse(record)
    if part == 0:
        return {}
    parts = []
    left = part
    for batch, state in ledger.subsidy_batches.of_account(account_id):
        if left == 0:
            break
        taken = min(left, state["remaining"])
        state["remaining"] -= taken
        ledger.subsidy_batches.save(account_id, batch, state)
        parts.append([batch, taken, state["expires"], state["end_ms"]])
        left -= taken
    return {"from_subsidy": part, "subsidy": purse(record), "subsidy_parts": parts}


def give_back(ledger, account_id: str, record, original: dict) -> tuple[dict, list]:
    """After `unspend`: the reversed payment's subsidy part back to its purse and each share
    to its batch (a batch whose term has ended meanwhile lapses at the next housekeeping
    pass). Returns the reversal record's fields (empty when the subsidy paid nothing) and
    the shares `lapse_returned` must clear at once: those whose batch's name was granted
    again for a new term since (a new term of a name is granted only once the last one is
    over), which would otherwise live on in the new term's batch."""
    part = original.get("from_subsidy", 0)
    if part <= 0:
        return {}, []
    core.return_to_subsidy(record, part)
    over = []
    for batch, share, expires, end_ms in original["subsidy_parts"]:
        state = ledger.subsidy_batches.get(account_id, batch)
        if state is not None and state["expires"] != expires:
            over.append((batch, share))
            continue
        state = state or {"remaining": 0, "expires": expires, "end_ms": end_ms}
        state["remaining"] += share
        ledger.subsidy_batches.save(account_id, batch, state)
    return {"from_subsidy": -part, "subsidy": purse(record),
            "subsidy_parts": original["subsidy_parts"]}, over


def lapse_returned(ledger, credential, account_id: str, record, over: list, ref) -> None:
    """Clear the shares `give_back` found over, each with a `subsidy_expire` record right
    after the reversal's, as housekeeping would have cleared them at their term's end."""
    for batch, share in over:
        expire(ledger, credential, account_id, record, batch, share, ref)


def expire(ledger, credential, account_id: str, record, batch: str, amount: int, ref) -> int:
    """Take `amount` of `batch` out of the purse with its `subsidy_expire` record (the one
    writer of that record: housekeeping's lapse, a closing's, a share given back too late);
    its txn. The batch's own state is the caller's."""
    core.expire_subsidy(record, amount)
    ledger.save_account(account_id, record)
    return ledger.append_journal("subsidy_expire", account_id, layout.school_of(record),
                                 -amount, layout.get(record, layout.BALANCE), credential, ref,
                                 from_subsidy=amount, subsidy=purse(record), batch=batch)
