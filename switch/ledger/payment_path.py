"""The one way an online payment is decided: `debit`, `qr_debit` and `hold` all pay through here.

A request reads the clock once and hands that `now_ms` here and to whatever it
counts afterwards (the till's settlement day, a hold's expiry), so the day a
payment's daily limit is counted on and the day it settles on are one day.
"""

from dataclasses import dataclass

from switch import core
from switch.core import codes


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
