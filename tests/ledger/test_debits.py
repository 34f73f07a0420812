"""`debit`, `hold` by card, `qr_debit` and `balance` (docs/PROTOCOL.md §4.5-§4.7, §5): every
rule of §4.6, in its order, each code at its bound, PINs, limits and the school's day."""

import itertools
import re

import pytest

from tests.ledger.conftest import (BALANCE, CARD, CUIK_CARD, CUIK_ROOM, CUIK_STUDENT, PIN,
                                   STUDENT, limits, populate)
from tests.paths import REPO_ROOT

WRONG_PIN = "999999"


def test_debit_moves_the_money_and_writes_its_record(campus):
    at = campus.clock.now_ms()
    [newest, *_] = campus.send(campus.service, "history", account=STUDENT)["items"]
    reply = campus.send(campus.pos, "debit", card=CARD, amount=1250, id="T0001-000001")
    txn = campus.last_txn
    assert reply == {"t": "debit", "code": "ok", "txn": txn, "balance": BALANCE - 1250,
                     "available": BALANCE - 1250, "account": STUDENT}
    assert campus.journal(txn) == {
        "txn": txn, "at": at, "kind": "debit", "account": STUDENT, "school": "WH",
        "amount": -1250, "balance": BALANCE - 1250, "who": "WH-POS-1", "merchant": "WH-POS-1",
        "ref": "T0001-000001", "card": CARD, "prev": newest["txn"]}
    assert campus.balance(STUDENT) == BALANCE - 1250


def test_a_request_reads_the_clock_once_and_everything_it_writes_carries_that_time(campus):
    """A clock that moves on at every reading (a busy second, a day boundary) must not give
    one debit two times: its journal record, its remembered id and its till's settlement
    day all carry the time read at its start."""
    import msgpack
    real_now_ms = campus.clock.now_ms
    readings = []

    def ticking_now_ms():
        campus.clock.ms += 1
        readings.append(campus.clock.ms)
        return real_now_ms()

    campus.clock.now_ms = ticking_now_ms
    reply = campus.send(campus.pos, "debit", card=CARD, amount=100, id="one-time")
    del campus.clock.now_ms
    assert reply["code"] == "ok" and len(readings) == 1
    assert campus.journal(reply["txn"])["at"] == readings[0]
    remembered = campus.store.get("idempotency",
                                  campus.ledger.idempotency_key("WH-POS-1", "one-time"))
    assert msgpack.unpackb(remembered)[3] == readings[0]


def test_a_terminals_merchant_is_written_into_its_records(campus):
    canteen = campus.add_terminal("WH-POS-7", merchant="一食堂")
    reply = campus.send(canteen, "debit", card=CARD, amount=100, id=1)
    assert campus.journal(reply["txn"])["merchant"] == "一食堂"


def test_balance_shows_balance_and_available(campus):
    campus.ok(campus.water, "hold", card=CARD, amount=300)
    assert campus.send(campus.pos, "balance", card=CARD) == {
        "t": "balance", "code": "ok", "balance": BALANCE, "available": BALANCE - 300,
        "account": STUDENT}


# ---------------------------------------------------------------- the rules of §4.6
# The rules in their order; each entry is the code of one fault.
RULES = ["bad_amount", "card_unknown", "card_lost", "card_blocked", "wrong_school",
         "account_closed", "account_frozen", "pin_locked", "limit_per_tx", "limit_daily",
         "pin_required", "pin_invalid", "insufficient_funds"]
# Faults that cannot be set up together (one card state; one status; one PIN field).
EXCLUSIVE = [{"card_lost", "card_blocked"}, {"account_closed", "account_frozen"},
             {"pin_required", "pin_invalid"}]
AMOUNT, BIG_AMOUNT, SPENT = 1_000, 6_000, 700  # BIG_AMOUNT is above the no-PIN threshold


def arrange(world, faults: set, request_type: str) -> dict:
    """A fresh account with card and the given faults; returns the request's fields."""
    school = "CUIK" if "wrong_school" in faults else "WH"
    account, card = f"{school}20231111", "0E0E0001"
    amount = BIG_AMOUNT if "pin_required" in faults else AMOUNT
    pre_spent = SPENT if "limit_daily" in faults else 0
    if "account_closed" in faults:
        funds = 0               # a closed account is empty
    else:
        funds = amount - 1 if "insufficient_funds" in faults else 50_000
    world.open_person(account, card, school=school, balance=pre_spent + funds)
    if pre_spent:
        till = world.pos if school == "WH" else world.cuik_pos
        world.ok(till, "debit", card=card, amount=pre_spent, pin=PIN)
    if faults & {"limit_per_tx", "limit_daily"}:
        per_tx = amount - 1 if "limit_per_tx" in faults else amount
        daily = pre_spent + amount - 1 if "limit_daily" in faults else 100_000
        world.ok(world.service, "set_limits", account=account, per_tx=per_tx, daily=daily,
                 no_pin=min(5_000, per_tx))
    if "card_lost" in faults:
        world.ok(world.service, "lost", card=card)
    if "card_blocked" in faults:
        world.ok(world.admin, "replace_card", account=account, old=card, new="0E0E0002")
    if "pin_locked" in faults:
        for _ in range(limits.pin_failures_max):
            world.send(world.service, "verify_pin", account=account, pin=WRONG_PIN)
    if "account_closed" in faults:
        world.ok(world.admin, "close_account", account=account)
    if "account_frozen" in faults:
        world.ok(world.admin, "freeze", account=account)
    fields = {"card": "FFFF0000" if "card_unknown" in faults else card,
              "amount": 0 if "bad_amount" in faults else amount}
    if "pin_invalid" in faults:
        fields["pin"] = WRONG_PIN
    elif "pin_required" not in faults:
        fields["pin"] = PIN
    return fields


def _fault_sets():
    singles = [{fault} for fault in RULES]
    pairs = [set(pair) for pair in itertools.combinations(RULES, 2)
             if not any(set(pair) <= exclusive for exclusive in EXCLUSIVE)
             # an unknown card has no account to hold another fault
             and ("card_unknown" not in pair or "bad_amount" in pair)]
    return singles + pairs


@pytest.mark.parametrize("request_type, sender", [("debit", "pos"), ("hold", "water")])
@pytest.mark.parametrize("faults", _fault_sets(), ids=lambda faults: "+".join(
    sorted(faults, key=RULES.index)))
def test_the_first_rule_that_fails_is_the_reply_and_nothing_moves(
        campus, request_type, sender, faults):
    fields = arrange(campus, faults, request_type)
    expected = min(faults, key=RULES.index)
    before = campus.last_txn
    reply = campus.send(getattr(campus, sender), request_type, id="the-one", **fields)
    assert reply == {"t": request_type, "code": expected}
    assert campus.last_txn == before


def test_a_payment_with_no_fault_passes_the_same_arrangement(campus):
    fields = arrange(campus, set(), "debit")
    assert campus.code(campus.pos, "debit", id="fine", **fields) == "ok"


def test_a_pin_is_not_checked_when_an_earlier_rule_fails(campus):
    campus.ok(campus.service, "set_limits", account=STUDENT, per_tx=1_000, no_pin=500)
    for n in range(limits.pin_failures_max + 1):
        assert campus.send(campus.pos, "debit", card=CARD, amount=1_001, pin=WRONG_PIN,
                           id=n)["code"] == "limit_per_tx"
    assert campus.account(STUDENT)["pin_locked"] is False
    assert campus.code(campus.pos, "debit", card=CARD, amount=1_000, pin=PIN, id="ok") == "ok"


# ---------------------------------------------------------------- each bound at N and N+1
def test_amount_is_1_to_max_amount(make_world):
    world = make_world(max_amount_fen=30_000)
    pos = world.add_terminal("P")
    world.open_person(STUDENT, CARD, balance=30_000)
    world.credit(STUDENT, 30_000)
    assert world.code(pos, "debit", card=CARD, amount=0, id=1) == "bad_amount"
    assert world.code(pos, "debit", card=CARD, amount=-1, id=2) == "bad_amount"
    assert world.code(pos, "debit", card=CARD, amount=30_001, pin=PIN, id=3) == "bad_amount"
    assert world.code(pos, "debit", card=CARD, amount=30_000, pin=PIN, id=4) == "ok"
    assert world.code(pos, "debit", card=CARD, amount=1, id=5) == "ok"
    assert world.balance(STUDENT) == 60_000 - 30_001


def test_the_no_pin_threshold(campus):
    threshold = campus.account(STUDENT)["limits"]["no_pin"]
    assert threshold == 5_000  # docs/PROTOCOL.md §4.7 default
    assert campus.send(campus.pos, "debit", card=CARD, amount=threshold + 1, id=1) == {
        "t": "debit", "code": "pin_required"}
    assert campus.code(campus.pos, "debit", card=CARD, amount=threshold, id=2) == "ok"
    assert campus.send(campus.pos, "debit", card=CARD, amount=threshold + 1, pin=PIN,
                       id=3)["code"] == "ok"


def test_the_per_transaction_limit(campus):
    campus.credit(STUDENT, 100_000)
    assert campus.send(campus.pos, "debit", card=CARD, amount=50_001, pin=PIN, id=1) == {
        "t": "debit", "code": "limit_per_tx"}
    assert campus.code(campus.pos, "debit", card=CARD, amount=50_000, pin=PIN, id=2) == "ok"


def test_the_daily_limit(campus):
    campus.credit(STUDENT, 200_000)
    assert campus.code(campus.pos, "debit", card=CARD, amount=50_000, pin=PIN, id=1) == "ok"
    assert campus.code(campus.pos, "debit", card=CARD, amount=49_999, pin=PIN, id=2) == "ok"
    assert campus.send(campus.pos, "debit", card=CARD, amount=2, id=3) == {
        "t": "debit", "code": "limit_daily"}
    assert campus.code(campus.pos, "debit", card=CARD, amount=1, id=4) == "ok"
    assert campus.balance(STUDENT) == BALANCE + 200_000 - 100_000


def test_funds_are_the_available_balance(campus):
    campus.ok(campus.water, "hold", card=CARD, amount=1_000)
    available = BALANCE - 1_000
    assert campus.send(campus.pos, "debit", card=CARD, amount=available + 1, pin=PIN, id=1) == {
        "t": "debit", "code": "insufficient_funds"}
    reply = campus.send(campus.pos, "debit", card=CARD, amount=available, pin=PIN, id=2)
    assert (reply["code"], reply["balance"], reply["available"]) == ("ok", 1_000, 0)


# ---------------------------------------------------------------- PINs (§4.6 rule 6, §4.7)
def test_a_wrong_pin_below_the_threshold_is_still_checked(campus):
    assert campus.send(campus.pos, "debit", card=CARD, amount=100, pin=WRONG_PIN, id=1) == {
        "t": "debit", "code": "pin_invalid"}
    assert campus.balance(STUDENT) == BALANCE


def test_five_wrong_pins_in_a_row_across_tills_and_services_lock(campus):
    codes = [
        campus.code(campus.pos, "debit", card=CARD, amount=100, pin=WRONG_PIN, id=1),
        campus.code(campus.water, "hold", card=CARD, amount=100, pin=WRONG_PIN, id=2),
        campus.code(campus.service, "verify_pin", account=STUDENT, pin=WRONG_PIN),
        campus.send(campus.service, "set_pin", account=STUDENT, old=WRONG_PIN, new="111111",
                    id=3)["code"],
        campus.code(campus.pos2, "debit", card=CARD, amount=100, pin=WRONG_PIN, id=4),
    ]
    assert codes == ["pin_invalid"] * 4 + ["pin_locked"]
    assert campus.account(STUDENT)["pin_locked"] is True
    # Locked: every debit stops, small ones without a PIN and the right PIN included.
    assert campus.code(campus.pos, "debit", card=CARD, amount=1, id=5) == "pin_locked"
    assert campus.code(campus.pos, "debit", card=CARD, amount=1, pin=PIN, id=6) == "pin_locked"
    assert campus.code(campus.water, "hold", card=CARD, amount=1, id=7) == "pin_locked"
    assert campus.code(campus.service, "verify_pin", account=STUDENT, pin=PIN) == "pin_locked"
    assert campus.balance(STUDENT) == BALANCE


def test_a_right_pin_resets_the_run(campus):
    for n in range(limits.pin_failures_max - 1):
        assert campus.send(campus.pos, "debit", card=CARD, amount=100, pin=WRONG_PIN,
                           id=f"w{n}")["code"] == "pin_invalid"
    assert campus.code(campus.pos, "debit", card=CARD, amount=100, pin=PIN, id="right") == "ok"
    for n in range(limits.pin_failures_max - 1):
        assert campus.send(campus.pos, "debit", card=CARD, amount=100, pin=WRONG_PIN,
                           id=f"v{n}")["code"] == "pin_invalid"
    assert campus.account(STUDENT)["pin_locked"] is False


def test_a_malformed_pin_neither_counts_nor_breaks_the_run(campus):
    for n in range(limits.pin_failures_max - 1):
        campus.send(campus.pos, "debit", card=CARD, amount=100, pin=WRONG_PIN, id=f"w{n}")
    for malformed in ("12345", "abcdef", 123456):
        assert campus.send(campus.pos, "debit", card=CARD, amount=100, pin=malformed,
                           id="m")["code"] == "bad_request"
        assert campus.send(campus.service, "verify_pin", account=STUDENT,
                           pin=malformed)["code"] == "bad_request"
    assert campus.account(STUDENT)["pin_locked"] is False
    assert campus.send(campus.pos, "debit", card=CARD, amount=100, pin=WRONG_PIN,
                       id="fifth")["code"] == "pin_locked"


# ---------------------------------------------------------------- what counts today (§4.7)
def test_todays_spending_counts_payments_less_reversals_and_not_open_holds(campus):
    campus.credit(STUDENT, 200_000)
    campus.ok(campus.service, "set_limits", account=STUDENT, per_tx=10_000, daily=10_000)
    secret = campus.ok(campus.service, "virtual_card", account=STUDENT)["qr_secret"]
    hold = campus.ok(campus.water, "hold", card=CARD, amount=9_000, pin=PIN)  # does not count
    campus.ok(campus.pos, "debit", card=CARD, amount=2_000, id="d1")
    campus.ok(campus.pos, "qr_debit", qr=campus.qr(STUDENT, secret), amount=2_000)
    campus.ok(campus.water, "complete", hold=hold["hold"], amount=2_000)
    offline = campus.send(campus.pos, "offline", records=[
        {"id": "off", "card": CARD, "amount": 2_000, "at": campus.clock.now_ms()}])
    assert offline["results"][0]["code"] == "ok"
    campus.ok(campus.pos, "debit", card=CARD, amount=1_000, id="d2")
    # 9,000 spent: 1,001 more is over, until the reversal of d2 gives 1,000 back.
    assert campus.code(campus.pos, "debit", card=CARD, amount=1_001, id="x") == "limit_daily"
    campus.ok(campus.pos, "reverse", target="d2")
    assert campus.code(campus.pos, "debit", card=CARD, amount=2_000, id="y") == "ok"
    assert campus.code(campus.pos, "debit", card=CARD, amount=1, id="z") == "limit_daily"


@pytest.mark.parametrize("school, account, card, pos", [
    ("WH", STUDENT, CARD, "pos"), ("CUIK", CUIK_STUDENT, CUIK_CARD, "cuik_pos")])
def test_the_day_turns_at_the_schools_midnight(make_world, school, account, card, pos):
    world = populate(make_world(schools={"CUIK": {"time_zone": "Europe/London"}}))
    world.credit(account, 200_000)
    world.ok(world.service, "set_limits", account=account, per_tx=1_000, daily=1_000,
             no_pin=1_000)
    world.set_local_time("2026-11-18T23:59:59.999", school)
    assert world.code(getattr(world, pos), "debit", card=card, amount=1_000, id=1) == "ok"
    assert world.code(getattr(world, pos), "debit", card=card, amount=1, id=2) == "limit_daily"
    world.clock.advance(0.001)  # the school's midnight
    assert world.code(getattr(world, pos), "debit", card=card, amount=1_000, id=3) == "ok"
    assert world.code(getattr(world, pos), "debit", card=card, amount=1, id=4) == "limit_daily"
    # Each debit counts on its own local day in the till's day totals.
    assert world.send(getattr(world, pos), "settle", day="2026-11-18", count=1, total=1_000)[
        "match"] is True
    assert world.send(getattr(world, pos), "settle", day="2026-11-19", count=1, total=1_000)[
        "match"] is True


def test_the_day_never_moves_back_when_the_clock_steps_back_over_midnight(campus):
    campus.ok(campus.service, "set_limits", account=STUDENT, per_tx=1_000, daily=1_000,
              no_pin=1_000)
    campus.set_local_time("2026-11-19T00:00:30")
    assert campus.code(campus.pos, "debit", card=CARD, amount=1_000, id=1) == "ok"
    campus.set_local_time("2026-11-18T23:59:50")   # no second allowance for the 18th
    assert campus.code(campus.pos, "debit", card=CARD, amount=1, id=2) == "limit_daily"
    campus.set_local_time("2026-11-20T00:00:00")
    assert campus.code(campus.pos, "debit", card=CARD, amount=1_000, id=3) == "ok"


# ---------------------------------------------------------------- balance (§4.5)
def test_balance_checks_card_then_school_then_lost_or_replaced(campus):
    assert campus.send(campus.pos, "balance", card="FFFF0000") == {
        "t": "balance", "code": "card_unknown"}
    assert campus.send(campus.pos, "balance", card=CUIK_CARD) == {
        "t": "balance", "code": "wrong_school"}
    campus.ok(campus.service, "lost", card=CUIK_CARD)
    assert campus.send(campus.pos, "balance", card=CUIK_CARD) == {
        "t": "balance", "code": "wrong_school"}
    assert campus.send(campus.cuik_pos, "balance", card=CUIK_CARD) == {
        "t": "balance", "code": "card_lost"}
    campus.ok(campus.admin, "replace_card", account=STUDENT, old=CARD, new="0A0A0A0A")
    assert campus.send(campus.water, "balance", card=CARD) == {
        "t": "balance", "code": "card_blocked"}
    assert campus.send(campus.water, "balance", card="0A0A0A0A")["balance"] == BALANCE


# ---------------------------------------------------------------- another school's cards (§3)
def _before_wrong_school_in_the_spec() -> dict[str, set[str]]:
    """docs/PROTOCOL.md §3's table of the codes that come before `wrong_school`: its
    first column's first request name -> the codes of its second column."""
    spec = (REPO_ROOT / "docs" / "PROTOCOL.md").read_text()
    section = spec[spec.index("**What comes before `wrong_school`.**"):spec.index("**Merchants.**")]
    rows = {}
    for line in section.splitlines():
        if line.startswith("| `") or line.startswith("| requests naming"):
            requests, codes = line.strip("|").split("|")
            key = "account" if requests.strip().startswith("requests naming") else \
                requests.split("`")[1] + (" qr" if "with `qr`" in requests else "")
            rows[key] = set(re.findall(r"`([a-z_]+)`", codes.split("(")[0]))
    return rows


def test_a_till_learns_of_another_schools_cards_and_codes_only_what_section_3_lists(campus):
    """v1's order checks the card or code before the school (§4.6): a WH till gets these
    codes about CUIK's cards, accounts and payment codes. §3 lists exactly them, and every
    other refusal about them is `wrong_school`."""
    seen: dict[str, set[str]] = {"debit": set(), "qr_debit qr": set(), "balance": set(),
                                 "account": set()}

    def note(key, reply_code):
        if reply_code != "wrong_school":
            seen[key].add(reply_code)

    def by_card(card):
        note("debit", campus.code(campus.pos, "debit", card=card, amount=100,
                                  id=campus.fresh_id()))
        note("debit", campus.code(campus.water, "hold", card=card, amount=100,
                                  id=campus.fresh_id()))
        note("balance", campus.code(campus.pos, "balance", card=card))
        upload = campus.send(campus.pos, "offline", records=[
            {"id": campus.fresh_id(), "card": card, "amount": 100,
             "at": campus.clock.now_ms()}])
        note("balance", upload["results"][0]["code"])
        for t in ("lost", "found"):
            note("balance", campus.code(campus.wh_service, t, card=card, id=campus.fresh_id()))

    def by_code(code):
        note("qr_debit qr", campus.code(campus.pos, "qr_debit", qr=code, amount=100,
                                        id=campus.fresh_id()))
        note("qr_debit qr", campus.code(campus.water, "hold", qr=code, amount=100,
                                        id=campus.fresh_id()))

    by_card("0C0CFFFF")                    # no such card
    by_card(CUIK_CARD)                     # active: wrong_school everywhere
    campus.ok(campus.admin, "replace_card", account=CUIK_STUDENT, old=CUIK_CARD, new="0C0C0002")
    by_card(CUIK_CARD)                     # replaced
    campus.ok(campus.admin, "lost", card="0C0C0002")
    by_card("0C0C0002")                    # lost
    campus.ok(campus.admin, "found", card="0C0C0002")
    secret = campus.ok(campus.service, "virtual_card", account=CUIK_STUDENT)["qr_secret"]
    by_code("not-a-code")
    by_code(campus.qr(CUIK_STUDENT, bytes(32)))                    # a forged tag
    campus.open_person("CUIK20230002", school="CUIK")              # no virtual card
    by_code(campus.qr("CUIK20230002", secret))
    by_code(campus.qr(CUIK_STUDENT, secret, step_offset=-5))       # past its window (§5)
    used = campus.qr(CUIK_STUDENT, secret, nonce="00000009")
    assert campus.code(campus.cuik_pos, "qr_debit", qr=used, amount=100, id="u") == "ok"
    by_code(used)
    by_code(campus.qr(CUIK_STUDENT, secret, nonce="0000000a"))     # good: wrong_school
    for account in (CUIK_STUDENT, CUIK_ROOM, "CUIK404"):
        note("account", campus.code(campus.meter, "meter", account=account, amount=1,
                                    what="electric", id=campus.fresh_id()))
        note("account", campus.code(campus.wh_service, "account", account=account))
        note("account", campus.code(campus.wh_service, "credit", account=account, amount=1,
                                    source="x", id=campus.fresh_id()))

    assert seen == {"debit": {"card_unknown", "card_lost", "card_blocked"},
                    "qr_debit qr": {"qr_invalid", "virtual_card_off", "qr_expired", "qr_used"},
                    "balance": {"card_unknown"}, "account": {"unknown_account"}}
    assert _before_wrong_school_in_the_spec() == seen
