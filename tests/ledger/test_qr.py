"""QR payment codes (付款码): `virtual_card`, `qr_debit` and `hold` by code (docs/PROTOCOL.md
§4.6 rule 2, §4.15, §5): the code's checks in their order, its time window, single use."""

import pytest

from tests.ledger.conftest import (BALANCE, CARD, CUIK_STUDENT, QR_STEP_S, ROOM, STUDENT, limits,
                                   qr_tag)


@pytest.fixture
def secret(campus) -> bytes:
    reply = campus.send(campus.service, "virtual_card", account=STUDENT, id="vc")
    assert reply["code"] == "ok" and type(reply["qr_secret"]) is bytes
    assert len(reply["qr_secret"]) == 32
    return reply["qr_secret"]


def test_a_qr_debit_needs_no_pin_and_writes_its_record(campus, secret):
    amount = 6_000  # above the no-PIN threshold: the phone is the second factor
    reply = campus.send(campus.pos, "qr_debit", qr=campus.qr(STUDENT, secret), amount=amount,
                        id="q1")
    txn = campus.last_txn
    assert reply == {"t": "qr_debit", "code": "ok", "txn": txn, "balance": BALANCE - amount,
                     "available": BALANCE - amount, "account": STUDENT}
    record = campus.journal(txn)
    assert (record["kind"], record["amount"], record["ref"], record["who"]) == (
        "qr_debit", -amount, "q1", "WH-POS-1")
    assert "card" not in record


@pytest.mark.parametrize("t, till", [("qr_debit", "pos"), ("hold", "water")])
@pytest.mark.parametrize("offset, code", [(-2, "qr_expired"), (-1, "ok"), (0, "ok"), (1, "ok"),
                                          (2, "qr_expired")])
def test_a_code_is_good_within_one_step_of_the_switchs_clock(campus, secret, t, till, offset,
                                                             code):
    campus.clock.ms = campus.qr_step() * QR_STEP_S * 1000 + 15_000  # mid-step
    reply = campus.send(getattr(campus, till), t, qr=campus.qr(STUDENT, secret, offset),
                        amount=100, id=1)
    assert reply["code"] == code
    assert campus.account(STUDENT)["available"] == BALANCE - (100 if code == "ok" else 0)


def test_a_code_pays_once(campus, secret):
    code = campus.qr(STUDENT, secret)
    assert campus.code(campus.pos, "qr_debit", qr=code, amount=100, id=1) == "ok"
    assert campus.send(campus.pos2, "qr_debit", qr=code, amount=100, id=2) == {
        "t": "qr_debit", "code": "qr_used"}
    assert campus.send(campus.water, "hold", qr=code, amount=100, id=3) == {
        "t": "hold", "code": "qr_used"}
    # Another nonce in the same step is another code.
    assert campus.send(campus.pos, "qr_debit", qr=campus.qr(STUDENT, secret, nonce="0000beef"),
                       amount=100, id=4)["code"] == "ok"
    assert campus.balance(STUDENT) == BALANCE - 200


def test_a_declined_code_is_not_used_up(campus, secret):
    code = campus.qr(STUDENT, secret)
    assert campus.send(campus.pos, "qr_debit", qr=code, amount=BALANCE + 1, id=1) == {
        "t": "qr_debit", "code": "insufficient_funds"}
    campus.credit(STUDENT, 10_000)
    assert campus.code(campus.pos, "qr_debit", qr=code, amount=BALANCE + 1, id=2) == "ok"


def _malformed(campus, secret):
    good = campus.qr(STUDENT, secret)
    account, step, nonce, tag = good.split(".")
    return [
        "", "nonsense", good + ".", good.upper(), f"{account}.{step}.{nonce}",
        f"{account}.0{step}.{nonce}.{tag}", f"{account}.{step}.{nonce.upper()}.{tag}",
        f"{account}.{step}.{nonce}0.{tag}", f"{account}.{step}.{nonce}.{tag[:-1]}",
        f"{account.lower()}.{step}.{nonce}.{tag}", f"{account}.-{step}.{nonce}.{tag}",
    ]


def test_malformed_codes_unknown_accounts_and_bad_tags_are_qr_invalid(campus, secret):
    step = campus.qr_step()
    bad = _malformed(campus, secret) + [
        campus.qr("WH20999999", secret),                                  # no such account
        f"{STUDENT}.{step}.0badf00d.{'0' * 20}",                          # bad tag
        f"{STUDENT}.{step}.0badf00d.{qr_tag(b'x' * 32, STUDENT, step, '0badf00d')}",
    ]
    for n, code in enumerate(bad):
        assert campus.send(campus.pos, "qr_debit", qr=code, amount=100, id=n) == {
            "t": "qr_debit", "code": "qr_invalid"}, code
    assert campus.balance(STUDENT) == BALANCE


def test_calling_virtual_card_again_rotates_the_secret_and_voids_old_codes(campus, secret):
    old_code = campus.qr(STUDENT, secret)
    new_secret = campus.ok(campus.service, "virtual_card", account=STUDENT)["qr_secret"]
    assert new_secret != secret
    assert campus.send(campus.pos, "qr_debit", qr=old_code, amount=100, id=1) == {
        "t": "qr_debit", "code": "qr_invalid"}
    assert campus.send(campus.pos, "qr_debit", qr=campus.qr(STUDENT, new_secret), amount=100,
                       id=2)["code"] == "ok"


def test_an_account_without_a_virtual_card_is_virtual_card_off(campus):
    code = campus.qr(STUDENT, b"k" * 32)
    assert campus.send(campus.pos, "qr_debit", qr=code, amount=100, id=1) == {
        "t": "qr_debit", "code": "virtual_card_off"}
    assert campus.send(campus.water, "hold", qr=code, amount=100, id=1) == {
        "t": "hold", "code": "virtual_card_off"}


def test_virtual_card_is_for_open_person_accounts(campus):
    assert campus.send(campus.service, "virtual_card", account=ROOM, id=1) == {
        "t": "virtual_card", "code": "bad_request"}
    assert campus.send(campus.service, "virtual_card", account="WH404", id=2) == {
        "t": "virtual_card", "code": "unknown_account"}
    assert campus.send(campus.wh_service, "virtual_card", account=CUIK_STUDENT, id=3) == {
        "t": "virtual_card", "code": "wrong_school"}
    campus.open_person("WH20230002")
    campus.ok(campus.admin, "close_account", account="WH20230002")
    assert campus.send(campus.service, "virtual_card", account="WH20230002", id=4) == {
        "t": "virtual_card", "code": "account_closed"}
    assert campus.account(STUDENT)["balance"] == BALANCE


# ---------------------------------------------------------------- the order of the checks
def test_qr_checks_come_in_the_order_of_the_rules(campus, secret):
    cuik_secret = campus.ok(campus.service, "virtual_card", account=CUIK_STUDENT)["qr_secret"]
    step = campus.qr_step()

    def pay(code, amount=100, till=None):
        return campus.send(till or campus.pos, "qr_debit", qr=code, amount=amount,
                           id=campus.fresh_id())["code"]

    assert pay("nonsense", amount=0) == "bad_amount"
    # virtual card off before the tag; the tag before the window
    assert pay(f"{ROOM}.{step}.0badf00d.{'0' * 20}") == "virtual_card_off"
    assert pay(f"{STUDENT}.{step - 5}.0badf00d.{'0' * 20}") == "qr_invalid"
    # the window before single use
    used = campus.qr(STUDENT, secret)
    assert pay(used) == "ok"
    campus.clock.advance(2 * QR_STEP_S)
    assert pay(used) == "qr_expired"
    # single use before the school
    cuik_code = campus.qr(CUIK_STUDENT, cuik_secret)
    assert pay(cuik_code, till=campus.cuik_pos) == "ok"
    assert pay(cuik_code) == "qr_used"
    # the school before standing
    campus.ok(campus.admin, "freeze", account=CUIK_STUDENT)
    assert pay(campus.qr(CUIK_STUDENT, cuik_secret, nonce="00000001")) == "wrong_school"
    assert pay(campus.qr(CUIK_STUDENT, cuik_secret, nonce="00000002"),
               till=campus.cuik_pos) == "account_frozen"


@pytest.mark.parametrize("arrangement, code", [
    ("freeze", "account_frozen"), ("close", "account_closed"), ("lock", "pin_locked"),
    ("per_tx", "limit_per_tx"), ("daily", "limit_daily"), ("poor", "insufficient_funds")])
def test_qr_debits_pass_the_standing_limit_and_funds_rules(campus, secret, arrangement, code):
    amount = 2_000
    if arrangement == "freeze":
        campus.ok(campus.admin, "freeze", account=STUDENT)
    elif arrangement == "close":
        campus.ok(campus.pos, "debit", card=CARD, amount=BALANCE, pin="123456")
        campus.ok(campus.admin, "close_account", account=STUDENT)
    elif arrangement == "lock":
        for _ in range(limits.pin_failures_max):
            campus.send(campus.service, "verify_pin", account=STUDENT, pin="000000")
    elif arrangement == "per_tx":
        campus.ok(campus.service, "set_limits", account=STUDENT, per_tx=amount - 1, no_pin=0)
    elif arrangement == "daily":
        campus.ok(campus.service, "set_limits", account=STUDENT, per_tx=amount,
                  daily=amount + 99, no_pin=0)
        campus.ok(campus.pos, "debit", card=CARD, amount=100, pin="123456")
    else:
        amount = BALANCE + 1
    before = campus.last_txn
    assert campus.send(campus.pos, "qr_debit", qr=campus.qr(STUDENT, secret), amount=amount,
                       id="q") == {"t": "qr_debit", "code": code}
    assert campus.last_txn == before


# ---------------------------------------------------------------- clock steps (§5 Reading)
def test_a_used_code_stays_refused_when_the_clock_steps_back(campus, secret):
    code = campus.qr(STUDENT, secret)
    start_ms = campus.clock.now_ms()
    assert campus.code(campus.pos, "qr_debit", qr=code, amount=100, id=1) == "ok"
    campus.commit()
    campus.clock.advance(3 * QR_STEP_S)
    assert campus.prune_qr() == 1     # its step can no longer be accepted: forgotten
    campus.commit()
    campus.clock.ms = start_ms        # back to when it was made
    assert campus.send(campus.pos, "qr_debit", qr=code, amount=100, id=2) == {
        "t": "qr_debit", "code": "qr_expired"}
    assert campus.balance(STUDENT) == BALANCE - 100


# ---------------------------------------------------------------- hold by code
def test_a_hold_by_code_reserves_and_uses_the_code(campus, secret):
    code = campus.qr(STUDENT, secret)
    reply = campus.send(campus.water, "hold", qr=code, amount=6_000, id="h")
    assert (reply["code"], reply["balance"], reply["available"]) == ("ok", BALANCE,
                                                                     BALANCE - 6_000)
    assert campus.code(campus.water, "hold", qr=code, amount=100, id="h2") == "qr_used"


@pytest.mark.parametrize("fields, code", [
    ({"card": CARD, "qr": "x", "amount": 100}, "bad_request"),
    ({"amount": 100}, "bad_request"),
    ({"qr": "x", "amount": 100, "pin": "123456"}, "bad_request"),
    ({"card": CARD, "qr": "x", "amount": 0}, "bad_amount"),
    ({"amount": 0}, "bad_amount"),
    ({"qr": "x", "amount": 100}, "qr_invalid"),
])
def test_a_hold_names_exactly_one_of_card_and_code_and_a_code_takes_no_pin(
        campus, fields, code):
    assert campus.send(campus.water, "hold", id="h", **fields) == {"t": "hold", "code": code}
    assert campus.open_holds() == 0
