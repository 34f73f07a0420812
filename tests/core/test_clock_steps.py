"""A clock stepped backwards across midnight must not open a second daily allowance."""

import pytest

from switch.core import _authorize, codes, layout, reference

SCHOOL = (50_000, 100_000, 5_000)  # per_tx, daily, no_pin


def _account():
    record = layout.new_account_record("WH", 0, 0, bytes(16), bytes(32), bytes(32))
    layout.put(record, layout.BALANCE, 1_000_000)
    return record


def _debit(core, record, amount, day):
    return core.authorize(record, layout.CARD_ACTIVE, True, amount, None, False, day, *SCHOOL,
                          10_000_000, False)


@pytest.mark.parametrize("core", [_authorize, reference])
def test_stepping_back_a_day_keeps_the_later_days_spending(core):
    record = _account()
    assert _debit(core, record, 50_000, 101) == codes.OK
    assert _debit(core, record, 50_000, 101) == codes.OK
    # The clock steps back to day 100: no fresh allowance.
    assert _debit(core, record, 1, 100) == codes.LIMIT_DAILY
    assert layout.get(record, layout.SPENT_DAY) == 101
    # Forward again to a new day: the allowance is back.
    assert _debit(core, record, 50_000, 102) == codes.OK
    assert layout.get(record, layout.SPENT_TODAY) == 50_000


@pytest.mark.parametrize("core", [_authorize, reference])
def test_spending_on_a_stepped_back_day_counts_against_the_later_day(core):
    record = _account()
    assert _debit(core, record, 30_000, 101) == codes.OK
    assert _debit(core, record, 30_000, 100) == codes.OK
    assert layout.get(record, layout.SPENT_DAY) == 101
    assert layout.get(record, layout.SPENT_TODAY) == 60_000
