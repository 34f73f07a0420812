"""Hot water holds (水控): `hold`, `complete`, `void` and the switch's expiry
(docs/PROTOCOL.md §4.5, §4.8, §6.1)."""

import pytest

from tests.ledger.conftest import BALANCE, CARD, PIN, STUDENT, limits


@pytest.fixture
def held(campus) -> dict:
    """A 2,000 fen hold of WH-WATER-1 on the student's card."""
    reply = campus.send(campus.water, "hold", card=CARD, amount=2_000, id="h")
    assert reply["code"] == "ok"
    return reply


def test_a_hold_reserves_without_taking(campus):
    now = campus.clock.now_ms()
    reply = campus.send(campus.water, "hold", card=CARD, amount=2_000, id="h")
    txn = campus.last_txn
    assert reply == {"t": "hold", "code": "ok", "txn": txn, "hold": f"H{txn}",
                     "expires": now + campus.config.hold_timeout_s * 1000,
                     "balance": BALANCE, "available": BALANCE - 2_000}
    record = campus.journal(txn)
    assert (record["kind"], record["amount"], record["held"], record["balance"]) == (
        "hold", 0, 2_000, BALANCE)
    assert campus.account(STUDENT)["available"] == BALANCE - 2_000
    assert campus.open_holds() == 1


def test_a_hold_above_the_no_pin_threshold_needs_the_pin(campus):
    assert campus.send(campus.water, "hold", card=CARD, amount=5_001, id=1) == {
        "t": "hold", "code": "pin_required"}
    assert campus.code(campus.water, "hold", card=CARD, amount=5_001, pin=PIN, id=2) == "ok"


@pytest.mark.parametrize("amount", [0, 1_234, 2_000])
def test_complete_takes_the_metered_amount_and_releases_the_rest(campus, held, amount):
    reply = campus.send(campus.water, "complete", hold=held["hold"], amount=amount, id="c")
    txn = campus.last_txn
    assert reply == {"t": "complete", "code": "ok", "txn": txn, "balance": BALANCE - amount,
                     "available": BALANCE - amount}
    record = campus.journal(txn)
    assert (record["kind"], record["amount"], record["hold"]) == ("complete", -amount,
                                                                  held["hold"])
    assert campus.hold(held["hold"])["state"] == "completed"
    assert campus.open_holds() == 0


def test_complete_above_the_hold_is_over_hold(campus, held):
    assert campus.send(campus.water, "complete", hold=held["hold"], amount=2_001, id="c") == {
        "t": "complete", "code": "over_hold"}
    assert campus.hold(held["hold"])["state"] == "open"
    assert campus.account(STUDENT)["available"] == BALANCE - 2_000


def test_void_releases_it_all(campus, held):
    reply = campus.send(campus.water, "void", hold=held["hold"], id="v")
    txn = campus.last_txn
    assert reply == {"t": "void", "code": "ok", "txn": txn, "balance": BALANCE,
                     "available": BALANCE}
    record = campus.journal(txn)
    assert (record["kind"], record["amount"], record["hold"]) == ("void", 0, held["hold"])
    assert campus.hold(held["hold"])["state"] == "voided"


@pytest.mark.parametrize("t", ["complete", "void"])
def test_unknown_holds_and_other_terminals_holds_are_hold_unknown(campus, held, t):
    fields = {"amount": 0} if t == "complete" else {}
    for hold_id in ["H999999", "H1", "X" + held["hold"][1:], held["hold"] + " ", ""]:
        assert campus.send(campus.water, t, hold=hold_id, id=hold_id or "empty", **fields) == {
            "t": t, "code": "hold_unknown"}, hold_id
    assert campus.send(campus.water2, t, hold=held["hold"], id="other", **fields) == {
        "t": t, "code": "hold_unknown"}
    assert campus.hold(held["hold"])["state"] == "open"


@pytest.mark.parametrize("first, then", [("complete", "complete"), ("complete", "void"),
                                         ("void", "complete"), ("void", "void")])
def test_a_closed_hold_is_hold_closed(campus, held, first, then):
    amount = {"complete": {"amount": 500}, "void": {}}
    campus.ok(campus.water, first, hold=held["hold"], **amount[first])
    balance = campus.balance(STUDENT)
    assert campus.send(campus.water, then, hold=held["hold"], id="again", **amount[then]) == {
        "t": then, "code": "hold_closed"}
    assert campus.balance(STUDENT) == balance


@pytest.mark.parametrize("t", ["complete", "void"])
def test_a_hold_is_good_until_its_expiry_and_expired_from_then(campus, held, t):
    fields = {"amount": 100} if t == "complete" else {}
    campus.clock.ms = held["expires"] - 1
    assert campus.code(campus.water, t, hold=held["hold"], id="in-time", **fields) == "ok"
    again = campus.ok(campus.water, "hold", card=CARD, amount=1_000)
    campus.clock.ms = again["expires"]
    before = campus.last_txn
    assert campus.send(campus.water, t, hold=again["hold"], id="late", **fields) == {
        "t": t, "code": "hold_expired"}
    # The late request found it due: the switch released it with an `expire` record.
    record = campus.journal(before + 1)
    assert (record["kind"], record["hold"], record["who"], record["merchant"], record["ref"],
            record["amount"]) == ("expire", again["hold"], None, None, None, 0)
    assert campus.hold(again["hold"])["state"] == "expired"
    assert campus.account(STUDENT)["available"] == campus.account(STUDENT)["balance"]


def test_housekeeping_expires_due_holds(campus, held):
    campus.commit()
    campus.clock.ms = held["expires"] - 1
    assert campus.expire_holds() == 0
    campus.clock.ms = held["expires"]
    assert campus.expire_holds() == 1
    assert campus.journal(campus.last_txn)["kind"] == "expire"
    assert campus.account(STUDENT)["available"] == BALANCE
    assert campus.open_holds() == 0
    assert campus.send(campus.water, "void", hold=held["hold"], id="v") == {
        "t": "void", "code": "hold_expired"}
    assert campus.send(campus.water, "complete", hold=held["hold"], amount=0, id="c") == {
        "t": "complete", "code": "hold_expired"}


def test_a_backlog_of_due_holds_is_released_a_bounded_number_a_pass(campus, monkeypatch):
    """Holds that ran out while the switch was down come due at once: each housekeeping pass
    releases at most its bound (the event loop serves no till while a pass runs), and the
    passes after it release the rest."""
    monkeypatch.setattr(limits, "holds_expired_per_pass_max", 3)
    for n in range(7):
        assert campus.send(campus.water, "hold", card=CARD, amount=100, id=f"h{n}")["code"] == "ok"
    campus.commit()
    campus.clock.advance(campus.config.hold_timeout_s)
    assert [campus.housekeep().holds_expired for _ in range(4)] == [3, 3, 1, 0]
    assert campus.open_holds() == 0
    assert campus.account(STUDENT)["available"] == BALANCE


def test_completes_checks_come_in_their_order(campus, held):
    # amount, then the hold's existence, expiry and state, then the hold's amount.
    assert campus.send(campus.water, "complete", hold="H999999", amount=-1, id=1) == {
        "t": "complete", "code": "bad_amount"}
    assert campus.send(campus.water, "complete", hold="H999999", amount=9_999, id=2) == {
        "t": "complete", "code": "hold_unknown"}
    closed = campus.ok(campus.water, "hold", card=CARD, amount=100)
    campus.ok(campus.water, "void", hold=closed["hold"])
    assert campus.send(campus.water, "complete", hold=closed["hold"], amount=9_999, id=3) == {
        "t": "complete", "code": "hold_closed"}
    campus.clock.ms = held["expires"]
    assert campus.send(campus.water, "complete", hold=held["hold"], amount=9_999, id=4) == {
        "t": "complete", "code": "hold_expired"}


# ------------------------------------------------------------------ a complete that overdraws
def _overdraw_by_complete(campus, taken_offline: int) -> tuple[dict, dict]:
    """Hold the whole balance, let an offline tap take `taken_offline` of it past the hold
    (docs/PROTOCOL.md §4.10), then complete the hold in full: the balance ends below zero.
    Returns the hold's reply and the complete's."""
    held = campus.ok(campus.water, "hold", card=CARD, amount=BALANCE, pin=PIN)
    [tapped] = campus.send(campus.pos, "offline", records=[
        {"id": "tap", "card": CARD, "amount": taken_offline,
         "at": campus.clock.now_ms()}])["results"]
    assert (tapped["code"], tapped["balance"]) == ("ok", BALANCE - taken_offline)
    assert campus.account(STUDENT)["status"] == "active"   # the balance is not below zero
    return held, campus.send(campus.water, "complete", hold=held["hold"], amount=BALANCE,
                             id="overdraw")


def test_a_complete_that_leaves_the_balance_below_zero_freezes_it_as_overdrawn(campus):
    pushes = len(campus.pushes)
    held, reply = _overdraw_by_complete(campus, 900)
    assert (reply["code"], reply["balance"], reply["available"]) == ("ok", -900, -900)
    campus.expect_overdrawn_freeze(reply["txn"] + 1, "overdraw", "WH-WATER-1")
    assert campus.journal(reply["txn"] + 1)["balance"] == -900
    campus.commit()
    assert campus.pushes[pushes:] == [("WH", {"t": "blacklist", "version": 1, "add": [CARD],
                                              "remove": []})]
    assert campus.code(campus.pos, "debit", card=CARD, amount=1, id="after") == (
        "account_frozen")
    # A resent complete replays its reply and freezes nothing twice.
    last = campus.last_txn
    assert campus.send(campus.water, "complete", hold=held["hold"], amount=BALANCE,
                       id="overdraw") == {**reply, "replay": True}
    assert campus.last_txn == last


def test_a_complete_overdraw_is_lifted_by_the_credit_that_repays_it(campus):
    _overdraw_by_complete(campus, 900)
    campus.credit(STUDENT, 899)   # still below zero: still frozen and listed
    assert campus.account(STUDENT)["status"] == "frozen"
    assert campus.blacklisted("WH", CARD)
    campus.expect_repaid(campus.credit(STUDENT, 1))
    assert campus.code(campus.pos, "debit", card=CARD, amount=1, id="after") == (
        "insufficient_funds")   # active again, with nothing to spend


def test_reversing_the_complete_that_overdrew_ends_the_freeze_it_caused(campus):
    # A terminal reverses a complete whose reply it lost (§4.9): the money comes back, and
    # with nothing owed the account is not left frozen and its card listed.
    _overdraw_by_complete(campus, 900)
    reversed_ = campus.ok(campus.water, "reverse", target="overdraw", id="undo")
    assert reversed_["balance"] == BALANCE - 900
    campus.expect_repaid(reversed_)
    assert campus.journal(reversed_["txn"] + 1)["ref"] == "undo"
    assert campus.ok(campus.pos, "debit", card=CARD, amount=1, id="after")["balance"] == (
        BALANCE - 901)
    # Resent, the reverse replays and writes no second unfreeze.
    last = campus.last_txn
    assert campus.send(campus.water, "reverse", target="overdraw", id="undo")["replay"] is True
    assert campus.last_txn == last


def test_a_reversal_that_leaves_the_balance_below_zero_keeps_the_freeze(campus):
    campus.ok(campus.pos, "debit", card=CARD, amount=100, pin=PIN, id="small")
    held = campus.ok(campus.water, "hold", card=CARD, amount=BALANCE - 100, pin=PIN)
    campus.send(campus.pos, "offline", records=[
        {"id": "tap", "card": CARD, "amount": 900, "at": campus.clock.now_ms()}])
    campus.ok(campus.water, "complete", hold=held["hold"], amount=BALANCE - 100, id="overdraw")
    assert campus.account(STUDENT)["status"] == "frozen"
    small_back = campus.ok(campus.pos, "reverse", target="small", id="undo-small")
    assert small_back["balance"] == -800
    assert campus.journal(campus.last_txn)["kind"] == "reverse"          # no unfreeze
    assert campus.account(STUDENT)["status"] == "frozen"
    assert campus.blacklisted("WH", CARD)
    campus.expect_repaid(campus.ok(campus.water, "reverse", target="overdraw", id="undo"))


def test_a_complete_overdraw_stands_beside_an_operators_freeze(campus):
    held = campus.ok(campus.water, "hold", card=CARD, amount=BALANCE, pin=PIN)
    campus.ok(campus.admin, "freeze", account=STUDENT, reason="investigation")
    campus.send(campus.pos, "offline", records=[
        {"id": "tap", "card": CARD, "amount": 300, "at": campus.clock.now_ms()}])
    campus.ok(campus.water, "complete", hold=held["hold"], amount=BALANCE)
    assert campus.blacklisted("WH", CARD)
    campus.credit(STUDENT, 300)   # the overdraw is paid back: the operator's freeze stays
    assert campus.account(STUDENT)["status"] == "frozen"
    assert campus.blacklisted("WH", CARD)   # and lists the card


def test_a_complete_that_ends_at_zero_or_above_freezes_nothing(campus):
    held = campus.ok(campus.water, "hold", card=CARD, amount=BALANCE, pin=PIN)
    campus.send(campus.pos, "offline", records=[
        {"id": "tap", "card": CARD, "amount": 900, "at": campus.clock.now_ms()}])
    reply = campus.ok(campus.water, "complete", hold=held["hold"], amount=BALANCE - 900)
    assert reply["balance"] == 0
    assert campus.last_txn == reply["txn"]
    assert campus.account(STUDENT)["status"] == "active"
    assert not campus.blacklisted("WH", CARD)
