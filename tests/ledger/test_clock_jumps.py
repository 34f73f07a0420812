"""The defect of a wall clock set days ahead and put right a moment later (docs/PROTOCOL.md
§7.7): with the switch's TrustedClock, no QR code, hold or remembered id is lost to it."""

import pytest

from tests.ledger.conftest import CARD, STUDENT, FakeClock, TrustedClock

DAY_S = 24 * 3600


@pytest.fixture
def jumpy(campus):
    """The campus on a TrustedClock over its fake wall clock and a fake monotonic one."""
    campus.monotonic = FakeClock(1_000)
    campus.ledger.clock = TrustedClock(campus.clock, campus.monotonic.now_ms, lambda: 0)
    return campus


def _elapse(world, seconds: float) -> None:
    world.clock.advance(seconds)
    world.monotonic.advance(seconds)


def test_a_jump_days_ahead_corrected_a_moment_later_loses_nothing(jumpy):
    world = jumpy
    secret = world.ok(world.service, "virtual_card", account=STUDENT)["qr_secret"]
    paid = world.ok(world.pos, "debit", card=CARD, amount=100, id="paid-before")
    hold = world.ok(world.water, "hold", card=CARD, amount=2_000, id="shower")
    code_before = world.qr(STUDENT, secret, nonce="00000001")
    code_during = world.qr(STUDENT, secret, nonce="00000002")
    world.commit()

    # Further ahead than the id retention (8 days), the offline window and the hold timeout.
    world.clock.advance(9 * DAY_S)
    _elapse(world, 1)
    assert world.housekeep().holds_expired == 0
    # A phone's code, made by real time, still pays while the wall clock is wrong.
    assert world.code(world.pos, "qr_debit", qr=code_during, amount=100, id="q-during") == "ok"
    world.commit()

    world.clock.advance(-9 * DAY_S)   # put right
    _elapse(world, 1)
    assert world.housekeep().holds_expired == 0

    assert world.code(world.pos, "qr_debit", qr=code_before, amount=100, id="q-after") == "ok"
    assert world.send(world.pos, "debit", card=CARD, amount=100, id="paid-before") == {
        **paid, "replay": True}
    assert world.code(world.water, "complete", hold=hold["hold"], amount=500, id="c") == "ok"
    # The journal carries believed time only: nothing is stamped days ahead.
    assert all(world.journal(txn)["at"] <= world.clock.now_ms()
               for txn in range(1, world.last_txn + 1))
