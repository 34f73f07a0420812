"""Every online payment takes one path: `payment_path.pay`, with one clock reading per request."""

import dataclasses
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from switch import limits
from switch.ledger import dispatch
from switch.config import default_config
from switch.core import codes, layout
from switch.cli.datadir import open_data_dir
from switch.ledger import Ledger
from switch.ledger.payment_path import SchoolLimits, authorize_payment
from switch.ledger.qr import qr_code
from tests.source_calls import modules_outside_core_calling

# A local midnight of school WH (Asia/Shanghai).
MIDNIGHT_MS = int(datetime(2026, 11, 20, tzinfo=ZoneInfo("Asia/Shanghai")).timestamp() * 1000)


class MidnightClock:
    """Steady before `cross_after(n)`; then its first n readings are the last millisecond of
    a day and every later one the first of the next: midnight falls between two readings."""

    def __init__(self):
        self.readings_before_midnight = None

    def cross_after(self, readings: int) -> None:
        self.readings_before_midnight = readings

    def elapsed_ms(self) -> int:
        return 0

    def now_ms(self) -> int:
        if self.readings_before_midnight is None:
            return MIDNIGHT_MS - 60_000
        self.readings_before_midnight -= 1
        return MIDNIGHT_MS - 1 if self.readings_before_midnight >= 0 else MIDNIGHT_MS


def _ledger(tmp_path, clock):
    ledger = Ledger(open_data_dir(str(tmp_path)), default_config(), clock)
    admin = ledger.credential("admin")

    def ok(message):
        reply = dispatch.execute(ledger, admin, message)
        assert reply["code"] == "ok", (message, reply)
        return reply

    ok({"t": "open_account", "account": "WH1", "school": "WH", "kind": "person",
        "id_last6": "123456", "id": "open"})
    ok({"t": "issue_card", "account": "WH1", "card": "AAAA", "id": "card"})
    ok({"t": "credit", "account": "WH1", "amount": 100_000, "source": "test", "id": "seed"})
    secret = ok({"t": "virtual_card", "account": "WH1", "id": "qr"})["qr_secret"]
    ok({"t": "add_credential", "who": "POS", "role": "terminal", "school": "WH", "kind": "pos",
        "id": "pos"})
    ok({"t": "add_credential", "who": "SHOWER", "role": "terminal", "school": "WH",
        "kind": "water", "id": "shower"})
    return ledger, secret


def _pay(ledger, secret, request_type):
    """Make one payment of 1250 fen of `request_type` by POS or SHOWER; returns its till."""
    qr = qr_code(secret, "WH1", (MIDNIGHT_MS - 1) // 1000, "0123abcd")
    if request_type == "complete":
        shower = ledger.credential("SHOWER")
        hold = dispatch.execute(ledger, shower, {"t": "hold", "card": "AAAA", "amount": 2000,
                                                 "id": "h"})
        assert hold["code"] == "ok", hold
        return shower, {"t": "complete", "hold": hold["hold"], "amount": 1250, "id": "c"}
    message = {"debit": {"t": "debit", "card": "AAAA", "amount": 1250, "id": "d"},
               "qr_debit": {"t": "qr_debit", "qr": qr, "amount": 1250, "id": "q"}}[request_type]
    return ledger.credential("POS"), message


@pytest.mark.parametrize("request_type", ["debit", "qr_debit", "complete"])
@pytest.mark.parametrize("readings_before_midnight", range(8))
def test_spending_and_settlement_fall_on_one_day_whenever_midnight_passes(
        tmp_path, request_type, readings_before_midnight):
    clock = MidnightClock()
    ledger, secret = _ledger(tmp_path, clock)
    till, message = _pay(ledger, secret, request_type)
    clock.cross_after(readings_before_midnight)
    reply = dispatch.execute(ledger, till, message)
    assert reply["code"] == "ok", reply
    days = ledger.config.schools["WH"].days
    spent_day = layout.get(ledger.account("WH1"), layout.SPENT_DAY)
    assert spent_day in (days.day_of(MIDNIGHT_MS - 1), days.day_of(MIDNIGHT_MS))
    for day in (days.day_of(MIDNIGHT_MS - 1), days.day_of(MIDNIGHT_MS)):
        expected = (1, 1250) if day == spent_day else (0, 0)
        assert ledger.settlement(till.who, days.day_name(day)) == expected


def test_school_limits_are_built_once_per_school(tmp_path):
    ledger, _ = _ledger(tmp_path, MidnightClock())
    school = ledger.config.schools["CUIK"]
    bounds = ledger.school_limits(school)
    assert bounds == SchoolLimits(per_tx=school.per_tx_fen, daily=school.daily_fen,
                                  no_pin=school.no_pin_fen, max_amount=limits.max_amount_fen)
    assert ledger.school_limits(school) is bounds
    with pytest.raises(dataclasses.FrozenInstanceError):
        bounds.per_tx = 1


def test_authorize_payment_takes_its_flags_by_name_only():
    record = layout.new_account_record("WH", layout.KIND_PERSON, layout.UTILITY_NONE,
                                       bytes(16), bytes(32), bytes(32))
    layout.put(record, layout.BALANCE, 5_000)
    bounds = SchoolLimits(per_tx=50_000, daily=100_000, no_pin=5_000, max_amount=10_000_000)
    days = default_config().schools["WH"].days
    with pytest.raises(TypeError):
        authorize_payment(record, layout.CARD_ACTIVE, True, 100, None, True, False, MIDNIGHT_MS,
                          days, bounds)
    code = authorize_payment(record, card_state=layout.CARD_ACTIVE, same_school=True,
                             amount=1_000, pin=None, pin_checked=True, hold=True,
                             now_ms=MIDNIGHT_MS, days=days, limits=bounds)
    assert code == codes.OK
    assert layout.get(record, layout.HELD) == 1_000 and layout.get(record, layout.BALANCE) == 5_000
    code = authorize_payment(record, card_state=layout.CARD_ACTIVE, same_school=True,
                             amount=1_000, pin=None, pin_checked=True, hold=False,
                             now_ms=MIDNIGHT_MS, days=days, limits=bounds)
    assert code == codes.OK and layout.get(record, layout.BALANCE) == 4_000
    assert layout.get(record, layout.SPENT_DAY) == days.day_of(MIDNIGHT_MS)


def test_only_the_payment_path_calls_the_cores_authorize():
    assert modules_outside_core_calling("authorize") == {"ledger/payment_path.py"}
