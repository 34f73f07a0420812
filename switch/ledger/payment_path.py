"""The one way an online payment is decided: `debit`, `qr_debit` and `hold` all pay through here.

A request reads the clock once and hands that `now_ms` here and to whatever it
counts afterwards (the till's settlement day, a hold's expiry), so the day a
payment's daily limit is counted on and the day it settles on are one day.
"""

from dataclasses import dataclass

from switch import core
from switch.core import codes, layout


@dataclass(frozen=True, slots=True)
class SchoolLimits:
    """A school's payment bounds as the core takes them (docs/PROTOCOL.md §4.7), in fen."""
    per_tx: int       # the school's default, for accounts without their own
    daily: int
    no_pin: int
    max_amount: int   # the switch-wide bound on any one amount (§4.6 rule 1)

    @classmethod
    def of(cls, school, max_amount: int) -> "SchoolLimits":
        return cls(per_tx=school.per_tx_fen, daily=school.daily_fen, no_pin=school.no_pin_fen,
                   max_amount=max_amount)


def authorize_payment(account, *, card_state: int, same_school: bool, amount, pin: bytes | None,
                      pin_checked: bool, hold: bool, now_ms: int, days, limits: SchoolLimits
                      ) -> int:
    """Decide a debit, or with `hold` a reservation, on `account` at `now_ms` (§4.6 rules 1-7).

    `pin_checked` is False on the QR path (the phone is the second factor); `days`
    is the school's `LocalDays`. On OK the core has applied it to `account`.
    """
    # Positional: the compiled core parses keyword arguments noticeably slower.
    return core.authorize(account, card_state, same_school, amount, pin, pin_checked,
                          days.day_of(now_ms), limits.per_tx, limits.daily, limits.no_pin,
                          limits.max_amount, hold)


def pay(ledger, credential, account_id: str, record, *, card_state: int, amount, pin: str | None,
        pin_checked: bool, hold: bool, now_ms: int):
    """Authorize on the account's `record` for `credential` and save what the decision changed.

    Returns (code, the account's school). A decline at the PIN step still changed
    the record (a wrong PIN counted, or a right one cleared the run), so it is saved.
    """
    school = ledger.school(record)
    before = bytes(record)
    code = authorize_payment(record, card_state=card_state,
                             same_school=credential.school == school.code, amount=amount,
                             pin=None if pin is None else pin.encode(), pin_checked=pin_checked,
                             hold=hold, now_ms=now_ms, days=school.days,
                             limits=ledger.school_limits(school))
    if code == codes.OK or record != before:
        ledger.save_account(account_id, record)
    return code, school


# ---------------------------------------------------------------- the double-tap guard
def _tap_window_ms(ledger, record) -> int:
    return ledger.school(record).repeat_tap_window_s * 1000


def guard_repeat_tap(ledger, credential, account_id: str, record, amount: int, now_ms: int,
                     confirm: bool) -> int:
    """REPEAT_TAP for a debit or QR debit that repeats the account's last approved payment
    at this terminal inside the school's window, unless confirmed (docs/PROTOCOL.md §4.6
    rule 2a); else OK. Reads nothing while the guard is off."""
    window_ms = _tap_window_ms(ledger, record)
    if window_ms == 0:
        return codes.OK
    return core.check_repeat_tap(ledger.last_tap(account_id, credential.who), amount, now_ms,
                                 window_ms, confirm)


def note_approved_tap(ledger, credential, account_id: str, record, amount: int, now_ms: int,
                      txn: int) -> None:
    """Remember an approved debit or QR debit for the guard (nothing while it is off)."""
    if _tap_window_ms(ledger, record) == 0:
        return
    tap = ledger.last_tap(account_id, credential.who) or bytearray(layout.TAP_RECORD_SIZE)
    core.note_tap(tap, amount, now_ms, txn)
    ledger.save_last_tap(account_id, credential.who, tap)


def forget_reversed_tap(ledger, original: dict) -> None:
    """A reversed payment is no longer one a tap could repeat: the till may take it again."""
    if original["who"] is None:
        return
    tap = ledger.last_tap(original["account"], original["who"])
    if tap is not None and layout.get(tap, layout.TAP_TXN) == original["txn"]:
        ledger.forget_last_tap(original["account"], original["who"])


# ---------------------------------------------------------------- meal periods (餐次)
def _meal_of(ledger, credential, record, at_ms: int):
    """(period number, Meal) when a payment at `at_ms` from this till counts toward meal caps."""
    if not credential.meals:
        return None
    return ledger.school(record).meal_at(at_ms)


def guard_meal(ledger, credential, account_id: str, record, amount: int, now_ms: int):
    """(code, meal): MEAL_LIMIT when this payment at a canteen till would pass a cap of the
    current meal period (docs/PROTOCOL.md §4.6 rule 2b); the meal to count it in, or None."""
    meal = _meal_of(ledger, credential, record, now_ms)
    if meal is None:
        return codes.OK, None
    period, limits = meal
    return core.meal_check(ledger.meal_record(period, account_id), amount, limits.taps_max,
                           limits.fen_max), meal


def count_meal(ledger, account_id: str, meal, amount: int) -> dict:
    """Count a payment in `meal` (from `guard_meal`, or an offline tap's); the journal fields
    that say so: `meal_period`, and `meal_limit` when it passed a cap (offline only)."""
    if meal is None:
        return {}
    period, limits = meal
    counts = ledger.meal_record(period, account_id) or bytearray(layout.MEAL_RECORD_SIZE)
    passed = core.meal_count(counts, amount, limits.taps_max, limits.fen_max)
    ledger.save_meal_record(period, account_id, counts)
    return {"meal_period": period, **({"meal_limit": True} if passed else {})}


def count_offline_meal(ledger, credential, account_id: str, record, amount: int,
                       at_ms: int) -> dict:
    """An offline tap belongs to the period of its `at`: counted always, flagged when it
    passed a cap."""
    return count_meal(ledger, account_id, _meal_of(ledger, credential, record, at_ms), amount)


def uncount_meal(ledger, original: dict) -> None:
    """A reversal gives back the payment's tap and fen in its meal period."""
    period = original.get("meal_period")
    if period is None:
        return
    counts = ledger.meal_record(period, original["account"])
    if counts is not None:
        core.meal_uncount(counts, -original["amount"])
        ledger.save_meal_record(period, original["account"], counts)


def guard_campus_rules(ledger, credential, account_id: str, record, card_state: int,
                       amount: int, now_ms: int, confirm: bool):
    """(code, meal) of rules 2a and 2b of docs/PROTOCOL.md §4.6 for a `debit` or `qr_debit`:
    the double-tap guard, then the meal caps. A card that is not active, or an account of
    another school, is left to the rules that come first (card_lost, wrong_school)."""
    if card_state != layout.CARD_ACTIVE or credential.school != ledger.school(record).code:
        return codes.OK, None
    code = guard_repeat_tap(ledger, credential, account_id, record, amount, now_ms, confirm)
    if code:
        return code, None
    return guard_meal(ledger, credential, account_id, record, amount, now_ms)
