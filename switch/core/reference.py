"""Plain-Python reference model of the authorization core (docs/PROTOCOL.md §4).

The compiled `_authorize` must behave exactly like this module; the property
tests run both over the same random operation sequences and compare codes and
record bytes. Clarity over speed: every field goes through `layout.get/put`.
"""

import hmac

from switch import limits
from switch.core import codes, layout

__all__ = [
    "check_amount", "authorize", "verify_pin", "pin_digest", "id_digest",
    "set_verifier_key", "key_verifiers",
    "set_pin", "reset_pin", "credit", "unspend", "complete_hold",
    "release_hold", "apply_offline", "apply_meter", "apply_restore",
    "freeze", "freeze_overdrawn", "unfreeze", "unlock", "close", "set_limits",
    "enable_virtual_card", "refund", "check_repeat_tap", "note_tap", "grant_subsidy",
    "return_to_subsidy", "expire_subsidy", "meal_check", "meal_count", "meal_uncount",
]

_pin_digest_size_bytes = 32


def _check_record(account):
    assert type(account) is bytearray, type(account)
    assert len(account) == layout.ACCOUNT_RECORD_SIZE, len(account)


def _put_balance(account, balance):
    # Outside this range the int64 field could overflow; no real money gets there.
    assert -limits.balance_fen_max <= balance <= limits.balance_fen_max, balance
    layout.put(account, layout.BALANCE, balance)


def _put_held(account, held):
    assert 0 <= held <= limits.balance_fen_max, held
    layout.put(account, layout.HELD, held)


def _put_subsidy(account, subsidy):
    assert 0 <= subsidy <= limits.balance_fen_max, subsidy
    layout.put(account, layout.SUBSIDY, subsidy)


def _spend(account, amount):
    """Pay `amount` (>= 0) from the subsidy purse first, the rest from the balance."""
    assert amount >= 0, amount
    subsidy = layout.get(account, layout.SUBSIDY)
    assert subsidy >= 0, subsidy
    from_subsidy = min(subsidy, amount)
    layout.put(account, layout.SUBSIDY, subsidy - from_subsidy)
    _put_balance(account, layout.get(account, layout.BALANCE) - (amount - from_subsidy))


def _count_spending(account, amount, day):
    """Add `amount` to the spending of `day`, starting the day afresh if it is a new one.

    The day never goes back: after a clock step backwards across midnight, spending
    counts against the later day rather than opening a second allowance.
    """
    if day > layout.get(account, layout.SPENT_DAY):
        layout.put(account, layout.SPENT_DAY, day)
        layout.put(account, layout.SPENT_TODAY, 0)
    spent = layout.get(account, layout.SPENT_TODAY) + amount
    assert 0 <= spent <= limits.balance_fen_max, spent
    layout.put(account, layout.SPENT_TODAY, spent)


def _closed(account):
    return layout.get(account, layout.STATUS) == layout.STATUS_CLOSED


def _set_freeze_reason(account, reason):
    """Keep STATUS in step with the freeze bits: frozen while any is set (never when closed)."""
    layout.put(account, layout.FREEZE_REASON, reason)
    layout.put(account, layout.STATUS,
               layout.STATUS_FROZEN if reason != layout.FREEZE_NONE else layout.STATUS_ACTIVE)


def _effective_limit(account, field, school_default):
    """An account limit of -1 means "the school's default"."""
    value = layout.get(account, field)
    return value if value >= 0 else school_default


# Keys every verifier, so a stolen data dir alone cannot brute-force a PIN: set once at
# start from the master key file (switch/config/masterkey.py). Unset, no verifier is made.
_verifier_key = None


def set_verifier_key(key):
    """Key every PIN and ID verifier with `key` (32 bytes) from now on."""
    global _verifier_key
    assert type(key) is bytes and len(key) == limits.master_key_size_bytes, "a verifier key"
    _verifier_key = key


def _keyed(digest):
    """HMAC-SHA256(verifier key, digest): a salted digest made a verifier."""
    if _verifier_key is None:
        raise RuntimeError("no verifier key set (set_verifier_key)")
    return hmac.digest(_verifier_key, digest, "sha256")


def pin_digest(salt, pin):
    """_keyed(HMAC-SHA256(salt, b"pin:" + pin)): what PIN_HASH holds."""
    return _keyed(hmac.digest(salt, b"pin:" + pin, "sha256"))


def id_digest(salt, id_last6):
    """_keyed(HMAC-SHA256(salt, b"id:" + id_last6)): what ID_HASH holds."""
    return _keyed(hmac.digest(salt, b"id:" + id_last6, "sha256"))


def _check_pin(account, pin):
    """Compare `pin` to the record and count a wrong one; the PIN must not be locked.

    Returns OK (count reset), PIN_INVALID, or PIN_LOCKED when this wrong PIN was
    the last one allowed.
    """
    salt = layout.get(account, layout.PIN_SALT)
    if hmac.compare_digest(pin_digest(salt, pin), layout.get(account, layout.PIN_HASH)):
        layout.put(account, layout.PIN_FAILURES, 0)
        return codes.OK
    # Saturate rather than overflow the one-byte counter; the lock triggers long before.
    failures = min(layout.get(account, layout.PIN_FAILURES) + 1, 255)
    layout.put(account, layout.PIN_FAILURES, failures)
    if failures >= limits.pin_failures_max:
        layout.put(account, layout.PIN_LOCKED, 1)
        return codes.PIN_LOCKED
    return codes.PIN_INVALID


def check_amount(amount, max_amount):
    """OK when 1 <= amount <= max_amount, else BAD_AMOUNT (amount is an int, not a bool)."""
    if 1 <= amount <= max_amount:
        return codes.OK
    return codes.BAD_AMOUNT


def authorize(account, card_state, same_school, amount, pin, pin_checked, day,
              school_per_tx, school_daily, school_no_pin, max_amount, hold):
    """Decide a debit, qr_debit or hold (docs/PROTOCOL.md §4.6, rules 1-7) and apply it on OK.

    `account` may be None when `card_state` is CARD_NONE. `pin_checked` is False
    for QR debits (no PIN step). On OK a hold reserves `amount` (HELD); a debit
    takes it from BALANCE and counts it to the spending of `day`. A decline at
    the PIN step may still have counted a wrong PIN.
    """
    # 1. amount
    if check_amount(amount, max_amount) != codes.OK:
        return codes.BAD_AMOUNT
    # 2. card
    if card_state == layout.CARD_NONE:
        return codes.CARD_UNKNOWN
    if card_state == layout.CARD_LOST:
        return codes.CARD_LOST
    if card_state == layout.CARD_BLOCKED:
        return codes.CARD_BLOCKED
    assert card_state == layout.CARD_ACTIVE, card_state
    # 3. school
    if not same_school:
        return codes.WRONG_SCHOOL
    _check_record(account)
    # 4. account standing
    status = layout.get(account, layout.STATUS)
    if status == layout.STATUS_CLOSED:
        return codes.ACCOUNT_CLOSED
    if status == layout.STATUS_FROZEN:
        return codes.ACCOUNT_FROZEN
    if layout.get(account, layout.PIN_LOCKED) == 1:
        return codes.PIN_LOCKED
    # 5. limits
    if amount > _effective_limit(account, layout.LIMIT_PER_TX, school_per_tx):
        return codes.LIMIT_PER_TX
    spent = 0
    if layout.get(account, layout.SPENT_DAY) >= day:  # >=: a clock stepped back stays sane
        spent = layout.get(account, layout.SPENT_TODAY)
    if spent + amount > _effective_limit(account, layout.LIMIT_DAILY, school_daily):
        return codes.LIMIT_DAILY
    # 6. PIN (card path only)
    if pin_checked:
        if pin is None:
            if amount > _effective_limit(account, layout.LIMIT_NO_PIN, school_no_pin):
                return codes.PIN_REQUIRED
        else:
            code = _check_pin(account, pin)
            if code != codes.OK:
                return code
    # 7. funds
    balance = layout.get(account, layout.BALANCE)
    held = layout.get(account, layout.HELD)
    assert held >= 0, held
    if balance + layout.get(account, layout.SUBSIDY) - held < amount:
        return codes.INSUFFICIENT_FUNDS
    if hold:
        _put_held(account, held + amount)
    else:
        _spend(account, amount)
        _count_spending(account, amount, day)
    return codes.OK


def verify_pin(account, pin):
    """PIN_LOCKED while locked; a wrong PIN counts (the 5th locks: PIN_LOCKED) else PIN_INVALID."""
    _check_record(account)
    if layout.get(account, layout.PIN_LOCKED) == 1:
        return codes.PIN_LOCKED
    return _check_pin(account, pin)


def set_pin(account, pin):
    """Store a new PIN and clear the run of wrong ones; the lock is left as it is."""
    _check_record(account)
    digest = pin_digest(layout.get(account, layout.PIN_SALT), pin)
    assert len(digest) == _pin_digest_size_bytes
    layout.put(account, layout.PIN_HASH, digest)
    layout.put(account, layout.PIN_FAILURES, 0)


def reset_pin(account, id_last6):
    """With the right `id_last6` the PIN becomes `id_last6` and the PIN lock is cleared.
    Wrong ones count: the 5th in a row locks reset_pin itself (PIN_LOCKED, then PIN_LOCKED
    whatever the digits) until `unlock`, so the ID digits cannot be found by trying."""
    _check_record(account)
    if layout.get(account, layout.ID_LOCKED) == 1:
        return codes.PIN_LOCKED
    salt = layout.get(account, layout.PIN_SALT)
    if not hmac.compare_digest(id_digest(salt, id_last6), layout.get(account, layout.ID_HASH)):
        failures = layout.get(account, layout.ID_FAILURES) + 1
        layout.put(account, layout.ID_FAILURES, failures)
        if failures >= limits.pin_failures_max:
            layout.put(account, layout.ID_LOCKED, 1)
            return codes.PIN_LOCKED
        return codes.IDENTITY_MISMATCH
    layout.put(account, layout.PIN_HASH, pin_digest(salt, id_last6))
    layout.put(account, layout.PIN_FAILURES, 0)
    layout.put(account, layout.PIN_LOCKED, 0)
    layout.put(account, layout.ID_FAILURES, 0)
    return codes.OK


def credit(account, amount):
    """Add `amount` to BALANCE; BAD_AMOUNT when amount < 1, ACCOUNT_CLOSED when closed,
    BAD_AMOUNT when the balance would pass what a credit may fill it to. A credit that leaves the balance at
    0 or above ends an overdrawn freeze (the overdraw is paid back); an operator's stays."""
    _check_record(account)
    if amount < 1:
        return codes.BAD_AMOUNT
    if _closed(account):
        return codes.ACCOUNT_CLOSED
    balance = layout.get(account, layout.BALANCE)
    if balance + amount > limits.purse_fill_fen_max:
        return codes.BAD_AMOUNT
    _put_balance(account, balance + amount)
    reason = layout.get(account, layout.FREEZE_REASON)
    if balance + amount >= 0 and reason & layout.FREEZE_OVERDRAWN:
        _set_freeze_reason(account, reason & ~layout.FREEZE_OVERDRAWN)
    return codes.OK


def unspend(account, amount, day):
    """Reverse a debit made on local day `day`: money back, and off that day's spending if current.
    ACCOUNT_CLOSED, changing nothing, when closed: a closed account takes no money."""
    _check_record(account)
    assert amount >= 0, amount
    if _closed(account):
        return codes.ACCOUNT_CLOSED
    _put_balance(account, layout.get(account, layout.BALANCE) + amount)
    if layout.get(account, layout.SPENT_DAY) == day:
        spent = layout.get(account, layout.SPENT_TODAY)
        layout.put(account, layout.SPENT_TODAY, max(0, spent - amount))
    return codes.OK


def complete_hold(account, hold_amount, amount, day):
    """Release a hold of `hold_amount` and take `amount` (<= hold_amount), counted to `day`."""
    _check_record(account)
    assert 0 <= amount <= hold_amount, (amount, hold_amount)
    _put_held(account, layout.get(account, layout.HELD) - hold_amount)
    _spend(account, amount)
    _count_spending(account, amount, day)


def release_hold(account, hold_amount):
    """Release a hold of `hold_amount` without taking anything."""
    _check_record(account)
    assert hold_amount >= 0, hold_amount
    _put_held(account, layout.get(account, layout.HELD) - hold_amount)


def apply_offline(account, amount, day, today):
    """Apply an offline tap of local day `day` on the switch's local day `today`: taken
    whatever the balance or standing, except ACCOUNT_CLOSED (nothing applied). It counts
    to the spending of `today` only when tapped today: a tap of a past day counts to no
    allowance still open, and one stamped a little into tomorrow by a clock running ahead
    must neither open tomorrow's allowance early nor end today's."""
    _check_record(account)
    assert amount >= 0, amount
    if _closed(account):
        return codes.ACCOUNT_CLOSED
    _spend(account, amount)
    if day == today and day >= layout.get(account, layout.SPENT_DAY):
        _count_spending(account, amount, day)
    return codes.OK


def apply_meter(account, amount):
    """Take a meter deduction: (code, cut) with cut True when it cut the power (balance at
    or below 0 while on). (ACCOUNT_CLOSED, False), changing nothing, when closed."""
    _check_record(account)
    assert amount >= 0, amount
    if _closed(account):
        return codes.ACCOUNT_CLOSED, False
    balance = layout.get(account, layout.BALANCE) - amount
    _put_balance(account, balance)
    if layout.get(account, layout.POWER_ON) == 1 and balance <= 0:
        layout.put(account, layout.POWER_ON, 0)
        return codes.OK, True
    return codes.OK, False


def apply_restore(account):
    """After a credit: True when it turned the power back on (balance above 0 while off)."""
    _check_record(account)
    if _closed(account):
        return False
    if layout.get(account, layout.POWER_ON) == 0 and layout.get(account, layout.BALANCE) > 0:
        layout.put(account, layout.POWER_ON, 1)
        return True
    return False


# --- Standing: each returns a code and changes the record only on OK. An OK that
# changed nothing (already so) leaves the bytes as they were, so the shell can
# tell "done" from "already done" by comparing them (docs/PROTOCOL.md §6.1: no txn).

# FREEZE_REASON is a set of bits (docs/PROTOCOL.md §4.15): the operator's freeze and the
# overdrawn one come and go each on its own, and the account is frozen while either is set.

def freeze(account):
    """The card office's freeze: ACCOUNT_CLOSED when closed; sets the operator's bit
    (an overdrawn freeze stays beside it); already frozen by the operator stays as it is."""
    _check_record(account)
    if _closed(account):
        return codes.ACCOUNT_CLOSED
    reason = layout.get(account, layout.FREEZE_REASON)
    if not (reason & layout.FREEZE_OPERATOR
            and layout.get(account, layout.STATUS) == layout.STATUS_FROZEN):
        _set_freeze_reason(account, reason | layout.FREEZE_OPERATOR)
    return codes.OK


def freeze_overdrawn(account):
    """After an offline tap or a `complete`: freeze a balance below zero as overdrawn, beside
    an operator's freeze if there is one; never a closed account. True when this froze it."""
    _check_record(account)
    # The balance, not what the account can spend (balance + subsidy - held): the spec says
    # "an account below zero" and ends the freeze with "a credit that brings the balance back
    # to 0 or above" (docs/PROTOCOL.md §4.10, §4.15), naming `available` where it means it. A
    # hold is money reserved, not owed: voided or expired, nothing is owed, yet a freeze on
    # what it reserved would stand until a recharge, and the first fen of one would end it
    # while the hold still stood. The subsidy purse pays no debt back (no cash, §4.17). So a
    # tap that takes held money freezes nothing yet; the `complete` that then takes the
    # balance below zero does, and until it the debt is bounded by the hold (online payments
    # are refused for want of funds, and the next offline tap past the balance freezes).
    reason = layout.get(account, layout.FREEZE_REASON)
    if (not _closed(account) and layout.get(account, layout.BALANCE) < 0
            and not reason & layout.FREEZE_OVERDRAWN):
        _set_freeze_reason(account, reason | layout.FREEZE_OVERDRAWN)
        return True
    return False


def end_overdraw(account):
    """A balance back at 0 or above (a reversal gave money back) ends an overdrawn freeze, as
    a credit's does; an operator's stays. True when this ended it."""
    _check_record(account)
    reason = layout.get(account, layout.FREEZE_REASON)
    if layout.get(account, layout.BALANCE) >= 0 and reason & layout.FREEZE_OVERDRAWN:
        _set_freeze_reason(account, reason & ~layout.FREEZE_OVERDRAWN)
        return True
    return False


def unfreeze(account):
    """ACCOUNT_CLOSED when closed. A frozen account loses the operator's freeze if it has
    one, else its overdrawn freeze (below zero or not); it is active once neither is left."""
    _check_record(account)
    if _closed(account):
        return codes.ACCOUNT_CLOSED
    if layout.get(account, layout.STATUS) == layout.STATUS_FROZEN:
        reason = layout.get(account, layout.FREEZE_REASON)
        if reason & layout.FREEZE_OPERATOR:
            reason &= ~layout.FREEZE_OPERATOR
        else:
            reason = layout.FREEZE_NONE
        _set_freeze_reason(account, reason)
    return codes.OK


def unlock(account):
    """Clear the PIN lock, the reset_pin lock, and the runs of wrong PINs and IDs;
    ACCOUNT_CLOSED when closed."""
    _check_record(account)
    if _closed(account):
        return codes.ACCOUNT_CLOSED
    layout.put(account, layout.PIN_LOCKED, 0)
    layout.put(account, layout.PIN_FAILURES, 0)
    layout.put(account, layout.ID_LOCKED, 0)
    layout.put(account, layout.ID_FAILURES, 0)
    return codes.OK


def close(account):
    """Close for good, the power off; NOT_EMPTY while the balance is not 0 (below zero too)
    or money is held."""
    _check_record(account)
    if layout.get(account, layout.STATUS) == layout.STATUS_CLOSED:
        return codes.OK
    if layout.get(account, layout.BALANCE) != 0 or layout.get(account, layout.HELD) != 0:
        return codes.NOT_EMPTY
    layout.put(account, layout.STATUS, layout.STATUS_CLOSED)
    # A closed room holds no money and nothing restores it: its power goes off for good.
    layout.put(account, layout.POWER_ON, 0)
    return codes.OK


def set_limits(account, per_tx, daily, no_pin, school_per_tx, school_daily, school_no_pin,
               per_tx_max, daily_max, no_pin_max):
    """Give the account its own limits (docs/PROTOCOL.md §4.7); None leaves one as it is.

    BAD_REQUEST, changing nothing, when a given limit is below 0 or above its
    maximum, or when the limits that would apply break no_pin <= per_tx <= daily.
    """
    _check_record(account)
    wanted = []
    for value, field, school_default, maximum in (
            (per_tx, layout.LIMIT_PER_TX, school_per_tx, per_tx_max),
            (daily, layout.LIMIT_DAILY, school_daily, daily_max),
            (no_pin, layout.LIMIT_NO_PIN, school_no_pin, no_pin_max)):
        if value is None:
            wanted.append(_effective_limit(account, field, school_default))
            continue
        assert type(value) is int, type(value)
        if 0 <= value <= maximum:
            wanted.append(value)
        else:
            return codes.BAD_REQUEST
    wanted_per_tx, wanted_daily, wanted_no_pin = wanted
    if not wanted_no_pin <= wanted_per_tx <= wanted_daily:
        return codes.BAD_REQUEST
    for value, field in ((per_tx, layout.LIMIT_PER_TX), (daily, layout.LIMIT_DAILY),
                         (no_pin, layout.LIMIT_NO_PIN)):
        if value is not None:
            layout.put(account, field, value)
    return codes.OK


def enable_virtual_card(account):
    """Open the virtual card (QR payments); ACCOUNT_CLOSED when closed."""
    _check_record(account)
    if layout.get(account, layout.STATUS) == layout.STATUS_CLOSED:
        return codes.ACCOUNT_CLOSED
    layout.put(account, layout.QR_ENABLED, 1)
    return codes.OK


def key_verifiers(account):
    """Key the record's PIN and ID verifiers in place: a record written before verifiers were
    keyed holds HMAC-SHA256(salt, ...) alone, which a stolen data dir lets anyone try PINs
    against. Run once per record, when its data dir is migrated."""
    _check_record(account)
    layout.put(account, layout.PIN_HASH, _keyed(layout.get(account, layout.PIN_HASH)))
    layout.put(account, layout.ID_HASH, _keyed(layout.get(account, layout.ID_HASH)))


def refund(account):
    """Pay the whole balance out and close, the power off (离校退款): ACCOUNT_CLOSED when
    closed, NOT_EMPTY while money is held, INSUFFICIENT_FUNDS below zero (the debt is paid
    back first)."""
    _check_record(account)
    if _closed(account):
        return codes.ACCOUNT_CLOSED
    if layout.get(account, layout.HELD) != 0:
        return codes.NOT_EMPTY
    if layout.get(account, layout.BALANCE) < 0:
        return codes.INSUFFICIENT_FUNDS
    _put_balance(account, 0)
    layout.put(account, layout.STATUS, layout.STATUS_CLOSED)
    layout.put(account, layout.POWER_ON, 0)   # as close: a closed room's power stays off
    return codes.OK


# ---------------------------------------------------------------- the double-tap guard
def _check_tap(tap):
    assert type(tap) is bytearray, type(tap)
    assert len(tap) == layout.TAP_RECORD_SIZE, len(tap)


def _int64(value):
    """`value` as the compiled core takes an int64 argument: OverflowError outside."""
    if not -2**63 <= value < 2**63:
        raise OverflowError(value)
    return value


def check_repeat_tap(tap, amount, now_ms, window_ms, confirm):
    """REPEAT_TAP when the guard is on (`window_ms` > 0), the payment is not confirmed, and
    `tap` (the account's last approved payment at this terminal, or None) was for `amount`
    at most `window_ms` - 1 ms before `now_ms`; else OK. A clock behind the tap is no repeat."""
    assert type(amount) is int and type(now_ms) is int and type(window_ms) is int
    if window_ms <= 0 or confirm or tap is None:
        return codes.OK
    _check_tap(tap)
    if layout.get(tap, layout.TAP_AMOUNT) != amount:
        return codes.OK
    elapsed = _int64(now_ms) - layout.get(tap, layout.TAP_AT)
    if not -2**63 <= elapsed < 2**63:
        return codes.OK   # further apart than any window
    return codes.REPEAT_TAP if 0 <= elapsed < window_ms else codes.OK


def note_tap(tap, amount, now_ms, txn):
    """Make `tap` the record of an approved payment of `amount` at `now_ms`, journal `txn`."""
    amount, now_ms, txn = _int64(amount), _int64(now_ms), _int64(txn)
    _check_tap(tap)
    layout.put(tap, layout.TAP_AMOUNT, amount)
    layout.put(tap, layout.TAP_AT, now_ms)
    layout.put(tap, layout.TAP_TXN, txn)


# ---------------------------------------------------------------- the subsidy purse (补助)
def grant_subsidy(account, amount):
    """Credit `amount` to the subsidy purse: a utility account BAD_REQUEST, closed
    ACCOUNT_CLOSED, amount below 1 or a purse past what a grant may fill it to BAD_AMOUNT."""
    _check_record(account)
    assert type(amount) is int, type(amount)
    if layout.get(account, layout.KIND) != layout.KIND_PERSON:
        return codes.BAD_REQUEST
    if layout.get(account, layout.STATUS) == layout.STATUS_CLOSED:
        return codes.ACCOUNT_CLOSED
    subsidy = layout.get(account, layout.SUBSIDY) + amount
    if amount < 1 or subsidy > limits.purse_fill_fen_max:
        return codes.BAD_AMOUNT
    layout.put(account, layout.SUBSIDY, subsidy)
    return codes.OK


def return_to_subsidy(account, part):
    """After `unspend` gave a reversed payment back to the balance: move the `part` the
    subsidy purse had paid back into it."""
    _check_record(account)
    _int64(part)
    assert part >= 0, part
    _put_balance(account, layout.get(account, layout.BALANCE) - part)
    _put_subsidy(account, layout.get(account, layout.SUBSIDY) + part)


def expire_subsidy(account, amount):
    """Clear `amount` (0 .. the purse) of the subsidy purse: a batch lapsed or the account
    closed. Nothing goes to the balance."""
    _check_record(account)
    _int64(amount)
    assert 0 <= amount <= layout.get(account, layout.SUBSIDY), amount
    layout.put(account, layout.SUBSIDY, layout.get(account, layout.SUBSIDY) - amount)


# ---------------------------------------------------------------- meal periods (餐次)
def _check_meal(meal):
    assert type(meal) is bytearray, type(meal)
    assert len(meal) == layout.MEAL_RECORD_SIZE, len(meal)


def meal_check(meal, amount, taps_max, fen_max):
    """MEAL_LIMIT when one more payment of `amount` would take the period's count (`meal`,
    None for none yet) above `taps_max` or its total above `fen_max`; else OK."""
    _int64(amount), _int64(taps_max), _int64(fen_max)
    taps, fen = 0, 0
    if meal is not None:
        _check_meal(meal)
        taps, fen = layout.get(meal, layout.MEAL_TAPS), layout.get(meal, layout.MEAL_FEN)
    if taps + 1 > taps_max or fen + amount > fen_max:
        return codes.MEAL_LIMIT
    return codes.OK


def meal_count(meal, amount, taps_max, fen_max):
    """Count a payment of `amount` (>= 0) in the period, always (an offline one happened);
    True when the count or the total is now above its cap."""
    _int64(amount), _int64(taps_max), _int64(fen_max)
    _check_meal(meal)
    assert amount >= 0, amount
    taps = layout.get(meal, layout.MEAL_TAPS) + 1
    fen = layout.get(meal, layout.MEAL_FEN) + amount
    assert 0 <= taps <= limits.balance_fen_max and 0 <= fen <= limits.balance_fen_max, (taps, fen)
    layout.put(meal, layout.MEAL_TAPS, taps)
    layout.put(meal, layout.MEAL_FEN, fen)
    return taps > taps_max or fen > fen_max


def meal_uncount(meal, amount):
    """A reversal gives back its tap and its fen (never below zero)."""
    _int64(amount)
    _check_meal(meal)
    assert amount >= 0, amount
    layout.put(meal, layout.MEAL_TAPS, max(0, layout.get(meal, layout.MEAL_TAPS) - 1))
    layout.put(meal, layout.MEAL_FEN, max(0, layout.get(meal, layout.MEAL_FEN) - amount))
