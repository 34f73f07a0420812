"""QR payment codes at a till (付款码) and reversals (冲正).

QR codes are accepted within one 30-second step of the switch's clock and each
(account, step, nonce) once. Used codes are kept until their step can no
longer be accepted; the lowest step still remembered is a floor below which
every code is expired, so a clock stepping backwards cannot reopen a code
whose memory was pruned.
"""

import hmac


from switch import core, limits
from switch.core import codes, layout
from switch.ledger.accounts import _decline, _money
from switch.ledger.payment_path import (count_meal, forget_reversed_tap, guard_campus_rules,
                                       note_approved_tap, pay, uncount_meal)
from switch.ledger.purses import give_back, lapse_returned, purse, spent, with_subsidy
from switch.ledger.qr import parse_qr, qr_tag
from switch.ledger.standing import record_standing

REVERSIBLE = frozenset({"debit", "qr_debit", "complete"})
TOMBSTONE = "reverse_tombstone"   # idempotency type of an id reversed before it was seen



def _used_key(step: int, account_id: str, nonce: str) -> bytes:
    return step.to_bytes(8, "big") + account_id.encode() + b"." + nonce.encode()


def check_qr(ledger, code_text, now_ms: int):
    """(code, account id, record, used key) at `now_ms`: code is OK or a QR decline."""
    parsed = parse_qr(code_text)
    if parsed is None:
        return codes.QR_INVALID, None, None, None
    account_id, step, nonce, tag = parsed
    record = ledger.account(account_id)
    if record is None:
        return codes.QR_INVALID, None, None, None
    if not layout.get(record, layout.QR_ENABLED):
        return codes.VIRTUAL_CARD_OFF, None, None, None
    secret = ledger.qr_secret(account_id)
    if not hmac.compare_digest(qr_tag(secret, account_id, step, nonce), tag):
        return codes.QR_INVALID, None, None, None
    now_step = now_ms // 1000 // limits.qr_step_s
    if abs(step - now_step) > 1 or step < ledger.qr_floor_step():
        return codes.QR_EXPIRED, None, None, None
    used_key = _used_key(step, account_id, nonce)
    if ledger.qr_code_used(used_key):
        return codes.QR_USED, None, None, None
    return codes.OK, account_id, record, used_key


def qr_debit(ledger, credential, values):
    amount = values["amount"]
    code = core.check_amount(amount, ledger.config.max_amount_fen)
    if code:
        return _decline("qr_debit", code)
    now_ms = ledger.now_ms()
    code, account_id, record, used_key = check_qr(ledger, values["qr"], now_ms)
    if code:
        return _decline("qr_debit", code)
    code, meal = guard_campus_rules(ledger, credential, account_id, record, layout.CARD_ACTIVE,
                                    amount, now_ms, values.get("confirm", False))
    if code:
        return _decline("qr_debit", code)
    subsidy_before = purse(record)
    # No PIN for QR: the phone is the second factor (docs/PROTOCOL.md §4.6 rule 6).
    code, school = pay(ledger, credential, account_id, record, card_state=layout.CARD_ACTIVE,
                       amount=amount, pin=None, pin_checked=False, hold=False, now_ms=now_ms)
    if code:
        return _decline("qr_debit", code)
    ledger.mark_qr_code_used(used_key)
    balance, available = _money(record)
    txn = ledger.append_journal("qr_debit", account_id, school.code, -amount, balance, credential,
                                values["id"], **spent(ledger, account_id, subsidy_before, record),
                                **count_meal(ledger, account_id, meal, amount))
    note_approved_tap(ledger, credential, account_id, record, amount, now_ms, txn)
    ledger.count_for_settlement(credential.who, school, now_ms, amount)
    return with_subsidy({"t": "qr_debit", "code": "ok", "txn": txn, "balance": balance,
                         "available": available, "account": account_id}, record)


def forget_old_meals(ledger) -> int:
    """Forget meal counts of periods no offline tap can belong to any more."""
    oldest_ms = ledger.retention_now_ms() - (ledger.config.offline_window_s + 86_400) * 1000
    # Period numbers are a local day times meals_per_school_max; a day's margin covers zones.
    oldest_day = oldest_ms // 86_400_000
    return ledger.forget_meals_before(oldest_day * limits.meals_per_school_max,
                                      limits.meal_counts_forgotten_per_pass_max)


def prune_used_qr(ledger) -> int:
    """Forget used codes whose step can no longer be accepted; raise the floor to match."""
    now_step = ledger.now_ms() // 1000 // limits.qr_step_s
    new_floor = now_step - 1
    if new_floor <= ledger.qr_floor_step():
        return 0
    return ledger.forget_used_qr_codes_below(new_floor, limits.qr_prune_keys_max)


# ---------------------------------------------------------------- reversals
def _payment_txn(seen) -> int | None:
    """The txn of the payment a remembered id holds, or None (not seen, a tombstone, a
    decline, no payment)."""
    if seen is None or seen[0] not in REVERSIBLE or seen[2]["code"] != "ok":
        return None
    return seen[2]["txn"]


def reverse(ledger, credential, values):
    target = values["target"]
    seen = ledger.recall(credential.who, target)
    judged = _payment_txn(seen)
    first = ledger.first_reversal(credential.who, target)
    # A second reverse of the same payment, under a new id, replays the first's reply. One
    # that judged another payment under this id (the till reused an id once it was
    # forgotten) is not this one's: replaying it would leave the new payment taken.
    if first is not None and first[1] == judged:
        return {**first[0], "replay": True}
    if seen is None:
        # Never seen: leave a tombstone so the original, if it comes, moves no money.
        ledger.remember(credential.who, target, TOMBSTONE, b"", {})
        reply = {"t": "reverse", "code": "ok", "txn": None}
    else:
        seen_type, _, original = seen
        if seen_type not in REVERSIBLE:
            return _decline("reverse", codes.BAD_REQUEST)
        if original["code"] != "ok":
            reply = {"t": "reverse", "code": "ok", "txn": None}  # a decline moved no money
        else:
            record = ledger.journal_record(original["txn"])
            now_ms = ledger.now_ms()
            if now_ms - record["at"] > ledger.config.reversal_window_s * 1000:
                # Kept as the first reverse's reply: a later one replays it (§4.9).
                reply = _decline("reverse", codes.REVERSE_WINDOW)
                ledger.save_first_reversal(credential.who, target, reply, judged)
                return reply
            account_id = record["account"]
            account = ledger.account(account_id)
            school = ledger.school(account)
            amount = -record["amount"]
            code = core.unspend(account, amount, school.days.day_of(record["at"]))
            if code:
                # Closed since: it takes no money back, for good, so a retry replays this.
                reply = _decline("reverse", code)
                ledger.save_first_reversal(credential.who, target, reply, judged)
                return reply
            returned, over = give_back(ledger, account_id, account, record)
            ledger.save_account(account_id, account)
            balance, _ = _money(account)
            txn = ledger.append_journal("reverse", account_id, school.code, amount, balance,
                                        credential, values["id"], target=record["txn"],
                                        **returned)
            lapse_returned(ledger, credential, account_id, account, over, values["id"])
            ledger.count_for_settlement(credential.who, school, record["at"], -amount, count=-1)
            forget_reversed_tap(ledger, record)
            uncount_meal(ledger, record)
            if core.end_overdraw(account):
                # The reversed `complete` was what took it below zero (§4.10): given back,
                # nothing is owed, so the freeze ends as a credit's repayment ends it.
                record_standing(ledger, credential, "unfreeze", account_id, account,
                                was_listing=True, ref=values["id"], reason="repaid")
            reply = with_subsidy({"t": "reverse", "code": "ok", "txn": txn, "balance": balance},
                                 account)
    ledger.save_first_reversal(credential.who, target, reply, judged)
    return reply


def reversed_original(request_type: str) -> dict | None:
    """The reply to an original that arrives after its reverse, or None if not reversible."""
    if request_type in REVERSIBLE:
        return {"t": request_type, "code": "reversed"}
    return None


HANDLERS = {"qr_debit": qr_debit, "reverse": reverse}
