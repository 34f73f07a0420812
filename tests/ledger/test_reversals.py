"""Reversals (冲正, docs/PROTOCOL.md §4.9): what `reverse` does for each kind of target, its
window, its tombstone for an original that has not arrived yet, and its replays."""

import pytest

from tests.ledger.conftest import BALANCE, CARD, PIN, STUDENT


def settled(world, till, day=None) -> tuple[int, int]:
    reply = world.send(till, "settle", day=day or world.local_day(), count=0, total=0)
    return reply["count"], reply["total"]


def test_reversing_a_debit_gives_the_money_back_and_writes_its_record(campus):
    debit = campus.ok(campus.pos, "debit", card=CARD, amount=1_500, id="lost-reply")
    reply = campus.send(campus.pos, "reverse", target="lost-reply", id="r1")
    txn = campus.last_txn
    assert reply == {"t": "reverse", "code": "ok", "txn": txn, "balance": BALANCE}
    record = campus.journal(txn)
    assert (record["kind"], record["amount"], record["target"], record["ref"],
            record["balance"]) == ("reverse", 1_500, debit["txn"], "r1", BALANCE)
    assert campus.balance(STUDENT) == BALANCE
    assert settled(campus, campus.pos) == (0, 0)


def test_reversing_a_qr_debit_and_a_complete(campus):
    secret = campus.ok(campus.service, "virtual_card", account=STUDENT)["qr_secret"]
    campus.ok(campus.pos, "qr_debit", qr=campus.qr(STUDENT, secret), amount=700, id="q")
    assert campus.send(campus.pos, "reverse", target="q", id="rq")["balance"] == BALANCE
    hold = campus.ok(campus.water, "hold", card=CARD, amount=900)
    campus.ok(campus.water, "complete", hold=hold["hold"], amount=800, id="c")
    reply = campus.send(campus.water, "reverse", target="c", id="rc")
    assert (reply["code"], reply["balance"]) == ("ok", BALANCE)
    assert campus.journal(reply["txn"])["amount"] == 800
    assert settled(campus, campus.water) == (0, 0)


def test_reversing_a_declined_payment_moves_nothing(campus):
    assert campus.send(campus.pos, "debit", card=CARD, amount=BALANCE + 1, pin=PIN,
                       id="no")["code"] == "insufficient_funds"
    before = campus.last_txn
    assert campus.send(campus.pos, "reverse", target="no", id="r") == {
        "t": "reverse", "code": "ok", "txn": None}
    assert campus.last_txn == before and campus.balance(STUDENT) == BALANCE


@pytest.mark.parametrize("t", ["debit", "qr_debit", "complete"])
def test_reversing_before_the_original_arrives_declines_it_when_it_does(campus, t):
    till = campus.water if t == "complete" else campus.pos
    if t == "debit":
        fields = {"card": CARD, "amount": 100}
    elif t == "qr_debit":
        secret = campus.ok(campus.service, "virtual_card", account=STUDENT)["qr_secret"]
        fields = {"qr": campus.qr(STUDENT, secret), "amount": 100}
    else:
        fields = {"hold": campus.ok(campus.water, "hold", card=CARD, amount=100)["hold"],
                  "amount": 100}
    assert campus.send(till, "reverse", target="late", id="r") == {
        "t": "reverse", "code": "ok", "txn": None}
    assert campus.send(till, t, id="late", **fields) == {"t": t, "code": "reversed"}
    # Its retries replay that; the same id with other fields is id_reuse.
    assert campus.send(till, t, id="late", **fields) == {"t": t, "code": "reversed",
                                                         "replay": True}
    assert campus.send(till, t, id="late", **{**fields, "amount": 99}) == {
        "t": t, "code": "id_reuse"}
    assert campus.balance(STUDENT) == BALANCE


def test_a_reversed_id_is_declined_whatever_the_originals_fields(campus):
    campus.ok(campus.pos, "reverse", target="late")
    # The id comes before the fields (docs/PROTOCOL.md §4.3 step 3).
    assert campus.send(campus.pos, "qr_debit", qr="garbage", amount="x", id="late") == {
        "t": "qr_debit", "code": "reversed"}


def test_another_request_under_a_reversed_id_is_id_reuse(campus):
    campus.ok(campus.pos, "reverse", target="late")
    now = campus.clock.now_ms()
    assert campus.send(campus.pos, "reverse", target="other", id="late") == {
        "t": "reverse", "code": "id_reuse"}
    reply = campus.send(campus.pos, "offline", records=[
        {"id": "late", "card": CARD, "amount": 100, "at": now}])
    assert reply["results"] == [{"id": "late", "code": "id_reuse"}]
    assert campus.balance(STUDENT) == BALANCE


def test_a_target_of_another_type_is_bad_request(campus):
    now = campus.clock.now_ms()
    hold = campus.ok(campus.water, "hold", card=CARD, amount=100, id="h")
    campus.ok(campus.water, "void", hold=hold["hold"], id="v")
    campus.send(campus.pos, "offline", records=[
        {"id": "o", "card": CARD, "amount": 100, "at": now}])
    campus.ok(campus.pos, "reverse", target="nothing", id="r")
    before = campus.last_txn
    for till, target in [(campus.water, "h"), (campus.water, "v"), (campus.pos, "o"),
                         (campus.pos, "r")]:
        assert campus.send(till, "reverse", target=target, id=f"rev-{target}") == {
            "t": "reverse", "code": "bad_request"}, target
    assert campus.last_txn == before


def test_a_second_reverse_of_the_same_target_replays_the_first(campus):
    campus.ok(campus.pos, "debit", card=CARD, amount=300, id="d")
    first = campus.send(campus.pos, "reverse", target="d", id="r1")
    assert campus.send(campus.pos, "reverse", target="d", id="r2") == {**first, "replay": True}
    assert campus.balance(STUDENT) == BALANCE


def test_only_the_terminal_that_paid_can_reverse_it(campus):
    campus.ok(campus.pos, "debit", card=CARD, amount=300, id="d")
    assert campus.send(campus.pos2, "reverse", target="d", id="r") == {
        "t": "reverse", "code": "ok", "txn": None}
    assert campus.balance(STUDENT) == BALANCE - 300
    # pos2 has now reversed its own "d" before it arrived.
    assert campus.code(campus.pos2, "debit", card=CARD, amount=300, id="d") == "reversed"


@pytest.mark.parametrize("late_ms, code", [(0, "ok"), (1, "reverse_window")])
def test_the_reversal_window(campus, late_ms, code):
    campus.ok(campus.pos, "debit", card=CARD, amount=300, id="d")
    campus.clock.advance(campus.config.reversal_window_s)
    campus.clock.ms += late_ms
    reply = campus.send(campus.pos, "reverse", target="d", id="r")
    assert reply["code"] == code
    assert campus.balance(STUDENT) == BALANCE - (300 if code != "ok" else 0)


def test_a_reversal_frees_the_daily_allowance_only_for_the_payments_own_day(campus):
    campus.ok(campus.service, "set_limits", account=STUDENT, per_tx=1_000, daily=1_000,
              no_pin=1_000)
    campus.set_local_time("2026-11-18T23:59:00")
    campus.ok(campus.pos, "debit", card=CARD, amount=1_000, id="yesterday")
    campus.set_local_time("2026-11-19T00:01:00")
    campus.ok(campus.pos, "debit", card=CARD, amount=1_000, id="today")
    campus.ok(campus.pos, "reverse", target="yesterday")
    assert campus.code(campus.pos, "debit", card=CARD, amount=1, id="x") == "limit_daily"
    # The till's totals lose the reversed payment on its own day.
    assert settled(campus, campus.pos, "2026-11-18") == (0, 0)
    assert settled(campus, campus.pos, "2026-11-19") == (1, 1_000)
    campus.ok(campus.pos, "reverse", target="today")
    assert campus.code(campus.pos, "debit", card=CARD, amount=1_000, id="y") == "ok"


def test_a_second_reverse_after_the_window_replays_the_first_refusal(campus):
    campus.ok(campus.pos, "debit", card=CARD, amount=300, id="d")
    campus.clock.advance(campus.config.reversal_window_s + 1)
    first = campus.send(campus.pos, "reverse", target="d", id="r1")
    assert first == {"t": "reverse", "code": "reverse_window"}
    assert campus.send(campus.pos, "reverse", target="d", id="r2") == {**first, "replay": True}


# ---------------------------------------------------------------- ids used again
def _forget_old_ids(world, seconds: int) -> None:
    world.commit()
    world.clock.advance(seconds)
    world.write_back_ids()
    while world.forget_old_ids():
        world.commit()
    world.commit()


def test_a_reverse_of_an_id_used_again_after_it_was_forgotten_reverses_the_new_payment(campus):
    # A till's counter wrapped: an id forgotten after the retention (§4.3) pays again, the
    # reply is lost, the till reverses it. The first reverse of the old payment under that
    # id was kept for ever and replayed: the new payment stayed taken, the till told it was
    # given back (the outside test's second pass).
    campus.ok(campus.pos, "debit", card=CARD, amount=1_000, id="T-000001")
    campus.ok(campus.pos, "reverse", target="T-000001", id="R1")
    _forget_old_ids(campus, campus.config.idempotency_retention_s + 86_400)
    paid = campus.ok(campus.pos, "debit", card=CARD, amount=2_500, id="T-000001")
    reply = campus.send(campus.pos, "reverse", target="T-000001", id="R2")
    assert "replay" not in reply
    assert campus.journal(reply["txn"])["target"] == paid["txn"]
    assert campus.balance(STUDENT) == BALANCE
    # A second reverse of it replays this one.
    assert campus.send(campus.pos, "reverse", target="T-000001", id="R3") == {
        **reply, "replay": True}
    assert campus.balance(STUDENT) == BALANCE


def test_a_reverse_before_its_id_was_ever_used_does_not_stand_for_a_payment_days_later(campus):
    assert campus.send(campus.pos, "reverse", target="T-000002", id="R1") == {
        "t": "reverse", "code": "ok", "txn": None}
    _forget_old_ids(campus, campus.config.idempotency_retention_s + 86_400)
    paid = campus.ok(campus.pos, "debit", card=CARD, amount=3_000, id="T-000002")
    reply = campus.send(campus.pos, "reverse", target="T-000002", id="R2")
    assert campus.journal(reply["txn"])["target"] == paid["txn"]
    assert campus.balance(STUDENT) == BALANCE


def test_what_a_reverse_remembers_is_forgotten_with_the_ids(campus):
    # Kept for ever before: one till key reversing made-up ids grew the books without bound.
    for number in range(50):
        campus.send(campus.pos, "reverse", target=f"made-up-{number}", id=f"r{number}")
    def the_tills() -> list:
        return [key for key in campus.committed("idempotency")
                if key.startswith(campus.pos.who.encode() + b"\0")]
    campus.write_back_ids()
    assert len(the_tills()) == 150   # each reverse's id, its tombstone, its first reply
    _forget_old_ids(campus, campus.config.idempotency_retention_s + 86_400)
    assert the_tills() == []
