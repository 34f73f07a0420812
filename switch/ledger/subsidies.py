"""Subsidies (补助): the school's credits to a student's subsidy purse, spent before the
student's own money, never refunded, lapsing at the end of their batch's term.

The core decides the purse (`grant_subsidy`, the payments that spend it first,
`return_to_subsidy`, `expire_subsidy`); here each batch's share is kept, so a reversal gives
each part back to its batch and housekeeping clears what is left of a batch when it ends.
"""

from switch import core, limits
from switch.core import codes, layout
from switch.ledger.accounts import _decline, _money, account_for_amount
from switch.ledger.purses import expire, purse
from switch.persistence.keys import subsidy_grant_key, term_day, term_day_name


def _lapse(ledger, account_id: str, record, batch: str, state: dict, credential, ref,
           amount: int | None = None) -> int:
    """Clear `amount` (default: all that is left) of one batch with a `subsidy_expire`
    record; its txn."""
    if amount is None:
        amount = state["remaining"]
    state["remaining"] -= amount
    ledger.subsidy_batches.save(account_id, batch, state)
    return expire(ledger, credential, account_id, record, batch, amount, ref)


def held_beyond_balance(record) -> int:
    """The part of the purse open holds stand on: what they reserve beyond the balance.
    A hold is accepted against balance + subsidy; if that subsidy lapsed under it, its
    `complete` would take the student's balance below zero (a shower reserved at 23:58 on
    the term's last day, completed after midnight)."""
    return max(0, layout.get(record, layout.HELD) - max(0, layout.get(record, layout.BALANCE)))


def expire_due_subsidies(ledger) -> int:
    """Clear every batch whose term has ended (housekeeping). Returns how many records.

    What open holds stand on is kept (`held_beyond_balance`) and lapses at a later pass,
    once they are completed (which spends it first: its batch lapses first), voided or
    expired (`hold_timeout_s`); the rest lapses now. Kept, it is outside `available` (the
    holds reserve it), so no online payment takes it while the holds stand and no money
    comes in; an offline tap uploaded meanwhile, which passes `available` by design
    (docs/PROTOCOL.md §4.10), may spend it as it would spend anything, at most that part. A
    batch kept whole is passed over each pass meanwhile, up to
    `subsidies_kept_passed_per_pass_max` of them, so the batches behind it still lapse."""
    expired = 0
    due = ledger.subsidy_batches.due(ledger.now_ms(), limits.subsidies_expired_per_pass_max
                                     + limits.subsidies_kept_passed_per_pass_max)
    for account_id, batch in due:
        if expired >= limits.subsidies_expired_per_pass_max:
            break
        state = ledger.subsidy_batches.get(account_id, batch)
        if state is None or state["remaining"] == 0:   # spent or cleared in the overlay
            continue
        record = ledger.account(account_id)
        lapsing = min(state["remaining"], purse(record) - held_beyond_balance(record))
        if lapsing <= 0:
            continue
        _lapse(ledger, account_id, record, batch, state, None, None, lapsing)
        expired += 1
    return expired


def forget_past_grants(ledger) -> int:
    """Forget the grants whose term has been over everywhere for `subsidy_grants_kept_s`:
    a day's end is local midnight, at most a day and a half after that day began in UTC, so a
    term's last day D is over everywhere once UTC day D + 2 has begun. Kept that long past
    it, not just to its end: a grant whose term is over guards nothing on a right clock
    (sent again with its last day it is refused as over), but a switch that believes a clock
    weeks ahead must not forget grants still running, to pay them again once it is put
    right."""
    today = ledger.retention_now_ms() // 86_400_000     # a clock set ahead forgets none early
    return ledger.subsidy_batches.forget_grants_before(
        today - 1 - limits.subsidy_grants_kept_s // 86_400,
        limits.subsidy_grants_forgotten_per_pass_max)


def clear_on_close(ledger, credential, account_id: str, ref) -> None:
    """A closed account keeps no subsidy: each batch lapses now (never paid out)."""
    for batch, state in ledger.subsidy_batches.of_account(account_id):
        _lapse(ledger, account_id, ledger.account(account_id), batch, state, credential, ref)


def subsidy(ledger, credential, values):
    amount, account_id = values["amount"], values["account"]
    batch, expires = values["batch"], values["expires"]
    refusal, record = account_for_amount(ledger, credential, values, "subsidy")
    if refusal:
        return refusal
    school = ledger.school(record)
    try:
        day = term_day(expires)
        end_ms = school.days.end_ms(expires)
    except ValueError:       # not a real day, or 9999-12-31, whose end no date can hold
        return _decline("subsidy", codes.BAD_REQUEST)
    now_ms = ledger.now_ms()
    if end_ms <= now_ms:
        return _decline("subsidy", codes.BAD_REQUEST)      # its term is already over
    # The same id into the same batch again, once §4.4 forgot it (an import run again after
    # the retention) or from another admin: granted once only, for the whole term.
    grant = subsidy_grant_key(account_id, batch, values["id"])
    before = ledger.subsidy_batches.grant(grant)
    if before is not None:
        before_day, before_amount = before
        if before_day == day:
            return _decline("subsidy", codes.EXISTS if before_amount == amount
                            else codes.ID_REUSE)
        if school.days.end_ms(term_day_name(before_day)) > now_ms:
            return _decline("subsidy", codes.ID_REUSE)      # another last day, same term
        # Its term is over: the batch's name is used again, for a new term.
    state = ledger.subsidy_batches.get(account_id, batch)
    if state is None:
        if len(ledger.subsidy_batches.of_account(account_id)) >= \
                limits.subsidy_batches_per_account_max:
            return _decline("subsidy", codes.BAD_REQUEST)
        state = {"remaining": 0, "expires": expires, "end_ms": end_ms}
    elif state["expires"] != expires:
        return _decline("subsidy", codes.BAD_REQUEST)      # one batch, one term
    code = core.grant_subsidy(record, amount)
    if code:
        return _decline("subsidy", code)
    ledger.save_account(account_id, record)
    state["remaining"] += amount
    ledger.subsidy_batches.save(account_id, batch, state)
    ledger.subsidy_batches.note_grant(grant, day, amount)
    balance, available = _money(record)
    txn = ledger.append_journal("subsidy", account_id, school.code, amount, balance, credential,
                                values["id"], from_subsidy=-amount, subsidy=purse(record),
                                batch=batch, expires=expires)
    return {"t": "subsidy", "code": "ok", "txn": txn, "balance": balance,
            "subsidy": purse(record), "available": available}


HANDLERS = {"subsidy": subsidy}
