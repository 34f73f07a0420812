"""Meal periods (餐次, docs/PROTOCOL.md §4.6 rule 2b): at the school's canteen tills
(`meals: true`), one account pays at most `taps_max` times and `fen_max` fen in a period."""

import pytest

from tests.ledger.conftest import BALANCE, CARD, STUDENT, _attach_campus
from switch.config.settings import Meal

LUNCH = Meal("lunch", 11 * 60, 13 * 60, 2, 2_000)      # 11:00-13:00, 2 payments, 20.00 yuan


@pytest.fixture
def canteen(make_world):
    world = make_world("campus", schools={"WH": {"meals": [LUNCH]}})
    _attach_campus(world)
    world.till = world.add_terminal("WH-CANTEEN-1", meals=True)
    world.till2 = world.add_terminal("WH-CANTEEN-2", meals=True)
    world.set_local_time("2026-11-18T11:30:00")
    return world


def _pay(world, till, request_id, amount=600, **more):
    return world.send(till, "debit", card=CARD, amount=amount, id=request_id, **more)


def test_the_period_caps_count_per_account_across_the_schools_canteen_tills(canteen):
    assert _pay(canteen, canteen.till, "a")["code"] == "ok"
    assert _pay(canteen, canteen.till2, "b", amount=700)["code"] == "ok"
    before = canteen.last_txn
    assert _pay(canteen, canteen.till, "c", amount=1) == {"t": "debit", "code": "meal_limit"}
    assert canteen.last_txn == before and canteen.balance(STUDENT) == BALANCE - 1300
    # A till not marked as a canteen till is not capped.
    assert _pay(canteen, canteen.pos, "d")["code"] == "ok"


def test_the_fen_cap_declines_a_payment_that_would_pass_it(canteen):
    assert _pay(canteen, canteen.till, "a", amount=1_500)["code"] == "ok"
    assert _pay(canteen, canteen.till, "b", amount=501)["code"] == "meal_limit"
    assert _pay(canteen, canteen.till, "c", amount=500)["code"] == "ok"     # exactly the cap


def test_outside_a_period_and_in_the_next_one_the_count_starts_afresh(canteen):
    _pay(canteen, canteen.till, "a")
    _pay(canteen, canteen.till, "b")
    canteen.set_local_time("2026-11-18T13:00:00")                 # the period is [start, end)
    assert _pay(canteen, canteen.till, "c")["code"] == "ok"
    canteen.set_local_time("2026-11-19T11:00:00")
    assert _pay(canteen, canteen.till, "d")["code"] == "ok"
    assert _pay(canteen, canteen.till, "e")["code"] == "ok"
    assert _pay(canteen, canteen.till, "f")["code"] == "meal_limit"


def test_a_reversal_gives_back_its_tap_and_its_fen(canteen):
    _pay(canteen, canteen.till, "a", amount=1_000)
    _pay(canteen, canteen.till, "b", amount=1_000)
    canteen.ok(canteen.till, "reverse", target="b")
    assert _pay(canteen, canteen.till, "c", amount=1_000)["code"] == "ok"


def test_qr_payments_count_per_account(canteen):
    secret = canteen.ok(canteen.service, "virtual_card", account=STUDENT)["qr_secret"]
    _pay(canteen, canteen.till, "a")
    _pay(canteen, canteen.till, "b")
    reply = canteen.send(canteen.till, "qr_debit", qr=canteen.qr(STUDENT, secret), amount=100,
                         id="q")
    assert reply == {"t": "qr_debit", "code": "meal_limit"}


def test_offline_taps_count_in_their_own_period_and_are_flagged_when_past_a_cap(canteen):
    _pay(canteen, canteen.till, "a")
    _pay(canteen, canteen.till, "b")
    at = canteen.local_ms("2026-11-18T11:20:00")
    earlier = canteen.local_ms("2026-11-17T12:00:00")
    reply = canteen.send(canteen.till, "offline", records=[
        {"id": "o1", "card": CARD, "amount": 100, "at": at},
        {"id": "o2", "card": CARD, "amount": 100, "at": earlier}])
    first, second = reply["results"]
    assert (first["code"], first.get("flag")) == ("ok", "meal_limit")     # applied, flagged
    assert (second["code"], second.get("flag")) == ("ok", None)            # yesterday's lunch
    assert canteen.journal(first["txn"])["flag"] == "meal_limit"
    assert canteen.balance(STUDENT) == BALANCE - 1400


def test_only_pos_terminals_may_be_canteen_tills(canteen):
    assert canteen.code(canteen.admin, "add_credential", who="WH-W-9", role="terminal",
                        school="WH", kind="water", meals=True, id="x") == "bad_request"
    assert canteen.code(canteen.admin, "add_credential", who="svc-9", role="service",
                        meals=False, id="y") == "bad_request"
    assert canteen.code(canteen.admin, "add_credential", who="WH-P-9", role="terminal",
                        school="WH", kind="pos", meals="yes", id="z") == "bad_request"


def test_with_no_meals_configured_canteen_tills_are_not_capped(campus):
    till = campus.add_terminal("WH-CANTEEN-1", meals=True)
    for n in range(5):
        assert _pay(campus, till, f"t{n}")["code"] == "ok"


def test_counts_of_periods_past_the_offline_window_are_forgotten_a_bounded_batch_a_pass(
        canteen, monkeypatch):
    from tests.ledger.conftest import limits
    from switch.ledger.housekeeping import tick
    monkeypatch.setattr(limits, "meal_counts_forgotten_per_pass_max", 2)
    for number, day in enumerate(("2026-11-01", "2026-11-02", "2026-11-03")):
        canteen.set_local_time(f"{day}T11:30:00")
        assert _pay(canteen, canteen.till, f"old-{number}")["code"] == "ok"
    canteen.set_local_time("2026-11-18T11:30:00")
    assert _pay(canteen, canteen.till, "today")["code"] == "ok"
    canteen.commit()

    def counted() -> int:
        return sum(1 for _ in canteen.store.committed_items("meal_counts"))
    assert counted() == 4
    tick(canteen.ledger)
    canteen.commit()
    assert counted() == 2                      # N: the bound
    tick(canteen.ledger)
    canteen.commit()
    assert counted() == 1                      # the N+1st next pass; today's is kept


def test_a_lost_card_or_another_schools_card_gets_its_own_code_not_meal_limit(canteen):
    from tests.ledger.conftest import CUIK_CARD
    _pay(canteen, canteen.till, "a")
    _pay(canteen, canteen.till, "b")
    assert canteen.code(canteen.till, "debit", card=CUIK_CARD, amount=100, id="c") \
        == "wrong_school"
    canteen.ok(canteen.service, "lost", card=CARD)
    assert _pay(canteen, canteen.till, "d")["code"] == "card_lost"
