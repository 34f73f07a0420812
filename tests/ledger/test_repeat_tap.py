"""The double-tap guard (防重复刷卡, docs/PROTOCOL.md §4.6 rule 2a): a debit or QR debit that
repeats the account's last approved payment at the same till, for the same amount, inside the
school's `repeat_tap_window_s`, is declined `repeat_tap` unless confirmed."""

import pytest

from tests.ledger.conftest import BALANCE, CARD, STUDENT

WINDOW_S = 3


@pytest.fixture
def guarded(make_world):
    from tests.ledger.conftest import _attach_campus
    world = make_world("campus", schools={"WH": {"repeat_tap_window_s": WINDOW_S}})
    _attach_campus(world)
    return world


def _debit(world, terminal, request_id, amount=800, **fields):
    return world.send(terminal, "debit", card=CARD, amount=amount, id=request_id, **fields)


def test_a_second_identical_tap_inside_the_window_is_declined_and_moves_nothing(guarded):
    assert _debit(guarded, guarded.pos, "t1")["code"] == "ok"
    guarded.clock.ms += WINDOW_S * 1000 - 1
    before = guarded.last_txn
    assert _debit(guarded, guarded.pos, "t2") == {"t": "debit", "code": "repeat_tap"}
    assert guarded.last_txn == before and guarded.balance(STUDENT) == BALANCE - 800


def test_the_window_ends_exactly_window_seconds_after_the_payment(guarded):
    _debit(guarded, guarded.pos, "t1")
    guarded.clock.ms += WINDOW_S * 1000
    assert _debit(guarded, guarded.pos, "t2")["code"] == "ok"


def test_another_amount_another_till_or_a_confirmed_repeat_pays(guarded):
    _debit(guarded, guarded.pos, "t1")
    assert _debit(guarded, guarded.pos, "t2", amount=801)["code"] == "ok"
    assert _debit(guarded, guarded.pos2, "t3", amount=801)["code"] == "ok"
    # The last approved payment at pos is now 801: 800 again is no repeat of it.
    assert _debit(guarded, guarded.pos, "t4")["code"] == "ok"
    assert _debit(guarded, guarded.pos, "t5")["code"] == "repeat_tap"
    assert _debit(guarded, guarded.pos, "t6", confirm=True)["code"] == "ok"
    assert guarded.balance(STUDENT) == BALANCE - 800 * 3 - 801 * 2


def test_a_resend_under_the_same_id_is_a_replay_not_a_repeat(guarded):
    first = _debit(guarded, guarded.pos, "t1")
    again = _debit(guarded, guarded.pos, "t1")
    assert again == {**first, "replay": True}


def test_a_declined_tap_is_not_the_last_approved_payment(guarded):
    assert _debit(guarded, guarded.pos, "t1")["code"] == "ok"
    guarded.ok(guarded.admin, "freeze", account=STUDENT)
    assert _debit(guarded, guarded.pos, "t2", amount=801)["code"] == "account_frozen"
    guarded.ok(guarded.admin, "unfreeze", account=STUDENT)
    assert _debit(guarded, guarded.pos, "t3")["code"] == "repeat_tap"
    assert _debit(guarded, guarded.pos, "t4", amount=801)["code"] == "ok"


def test_a_reversed_payment_may_be_tapped_again_at_once(guarded):
    _debit(guarded, guarded.pos, "t1")
    guarded.ok(guarded.pos, "reverse", target="t1")
    assert _debit(guarded, guarded.pos, "t2")["code"] == "ok"


def test_qr_debits_are_guarded_per_account(guarded):
    secret = guarded.ok(guarded.service, "virtual_card", account=STUDENT)["qr_secret"]
    assert _debit(guarded, guarded.pos, "t1")["code"] == "ok"
    reply = guarded.send(guarded.pos, "qr_debit", qr=guarded.qr(STUDENT, secret), amount=800,
                         id="q1")
    assert reply == {"t": "qr_debit", "code": "repeat_tap"}
    # A declined code is not used up: confirmed, the same code pays.
    reply = guarded.send(guarded.pos, "qr_debit", qr=guarded.qr(STUDENT, secret), amount=800,
                         id="q2", confirm=True)
    assert reply["code"] == "ok"


def test_with_the_guard_off_identical_taps_pay_and_nothing_is_stored(campus):
    assert _debit(campus, campus.pos, "t1")["code"] == "ok"
    assert _debit(campus, campus.pos, "t2")["code"] == "ok"
    assert campus.ledger.last_tap(STUDENT, campus.pos.who) is None


@pytest.mark.parametrize("confirm", [1, "yes", None])
def test_confirm_must_be_a_bool(guarded, confirm):
    assert _debit(guarded, guarded.pos, "t1", confirm=confirm)["code"] == "bad_request"
