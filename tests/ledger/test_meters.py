"""Dorm meters and power (电控/水控, docs/PROTOCOL.md §4.12): `meter` deductions, cut-offs, and
the `restore` a recharge writes."""

import pytest

from switch.core import layout
from switch.persistence.audit import audit_environment
from tests.ledger.conftest import BALANCE, CUIK_ROOM, CUIK_STUDENT, ROOM, STUDENT


def test_a_meter_deduction_is_taken_and_written(campus):
    reply = campus.send(campus.meter, "meter", account=ROOM, amount=321, what="electric",
                        id="m1")
    txn = campus.last_txn
    assert reply == {"t": "meter", "code": "ok", "txn": txn, "balance": BALANCE - 321,
                     "cutoff": False}
    record = campus.journal(txn)
    assert (record["kind"], record["amount"], record["what"], record["ref"]) == (
        "meter", -321, "electric", "m1")


def test_the_deduction_that_empties_the_room_cuts_the_power_once(campus):
    campus.send(campus.meter, "meter", account=ROOM, amount=BALANCE - 1, what="water", id=1)
    assert campus.account(ROOM)["power"] is True
    reply = campus.send(campus.meter, "meter", account=ROOM, amount=1, what="water", id=2)
    assert (reply["balance"], reply["cutoff"]) == (0, True)
    cutoff = campus.journal(reply["txn"] + 1)
    assert (cutoff["kind"], cutoff["amount"], cutoff["ref"], cutoff["account"]) == (
        "cutoff", 0, 2, ROOM)
    assert campus.account(ROOM)["power"] is False
    assert campus.cutoffs == []          # told downstream once it is durable
    campus.commit()
    assert campus.cutoffs == [("WH", ROOM, 0)]
    # Below zero now, power already off: no second cut-off, and the energy is still paid.
    reply = campus.send(campus.meter, "meter", account=ROOM, amount=50, what="water", id=3)
    assert (reply["code"], reply["balance"], reply["cutoff"]) == ("ok", -50, False)
    assert campus.journal(campus.last_txn)["kind"] == "meter"


def test_a_recharge_that_brings_the_room_above_zero_restores_the_power(campus):
    campus.open_room("WH-8D-1007")
    assert campus.account("WH-8D-1007")["power"] is False        # a new room has no money
    reply = campus.send(campus.service, "credit", account="WH-8D-1007", amount=500,
                        source="wechat", id="c")
    assert reply == {"t": "credit", "code": "ok", "txn": reply["txn"], "balance": 500,
                     "available": 500}
    restore = campus.journal(reply["txn"] + 1)
    assert (restore["kind"], restore["amount"], restore["ref"]) == ("restore", 0, "c")
    assert campus.account("WH-8D-1007")["power"] is True
    before = campus.last_txn
    campus.credit("WH-8D-1007", 1)
    assert campus.last_txn == before + 1     # already on: no second restore


def test_a_recharge_that_leaves_the_room_at_zero_or_below_restores_nothing(campus):
    campus.send(campus.meter, "meter", account=ROOM, amount=BALANCE + 100, what="water", id=1)
    reply = campus.credit(ROOM, 100)
    assert reply["balance"] == 0 and campus.last_txn == reply["txn"]
    assert campus.account(ROOM)["power"] is False
    reply = campus.credit(ROOM, 1)
    assert campus.journal(reply["txn"] + 1)["kind"] == "restore"


def test_the_energy_was_used_so_a_frozen_room_pays_too(campus):
    campus.ok(campus.admin, "freeze", account=ROOM)
    balance = campus.balance(ROOM)
    reply = campus.send(campus.meter, "meter", account=ROOM, amount=10, what="electric", id=1)
    assert (reply["code"], reply["balance"]) == ("ok", balance - 10)


def test_a_closed_room_is_never_metered_below_zero(campus):
    campus.send(campus.meter, "meter", account=ROOM, amount=BALANCE, what="water", id=0)
    campus.ok(campus.admin, "close_account", account=ROOM)
    last = campus.last_txn
    reply = campus.send(campus.meter, "meter", account=ROOM, amount=10, what="electric", id=1)
    assert reply == {"t": "meter", "code": "account_closed"}
    assert campus.balance(ROOM) == 0
    assert campus.last_txn == last  # no meter, no cutoff record


def test_a_refunded_room_has_its_power_cut_with_a_cutoff_in_the_same_commit(campus):
    """A closed room holds no money, its power stays off (§4.12): the refund that closes a
    room with its power on writes the `cutoff` downstream throws the relay on, right after
    the refund record, in the same batch."""
    campus.send(campus.meter, "meter", account=ROOM, amount=100, what="electric", id="m")
    assert campus.account(ROOM)["power"] is True
    reply = campus.ok(campus.admin, "refund", account=ROOM, id="leaving")
    assert reply == {"t": "refund", "code": "ok", "txn": reply["txn"], "amount": BALANCE - 100,
                     "balance": 0}
    cutoff = campus.journal(reply["txn"] + 1)
    assert (cutoff["kind"], cutoff["account"], cutoff["amount"], cutoff["balance"],
            cutoff["ref"], cutoff["who"]) == ("cutoff", ROOM, 0, 0, "leaving", "admin")
    assert campus.last_txn == reply["txn"] + 1
    room = campus.account(ROOM)
    assert (room["status"], room["power"], room["balance"]) == ("closed", False, 0)
    assert campus.cutoffs == []          # told downstream once it is durable
    campus.commit()
    assert campus.cutoffs == [("WH", ROOM, 0)]
    # The replay answers as first, and cuts nothing twice.
    assert campus.send(campus.admin, "refund", account=ROOM, id="leaving") == {
        **reply, "replay": True}
    assert campus.last_txn == reply["txn"] + 1
    assert campus.code(campus.meter, "meter", account=ROOM, amount=100, what="electric",
                       id="m2") == "account_closed"
    report = audit_environment(campus.store.env, campus.store.dbs)
    assert report.sound and not report.notices, (report.problems, report.notices)


def test_a_room_refunded_with_its_power_off_writes_no_second_cutoff(campus):
    campus.send(campus.meter, "meter", account=ROOM, amount=BALANCE, what="water", id="m")
    assert campus.journal(campus.last_txn)["kind"] == "cutoff"
    reply = campus.ok(campus.admin, "refund", account=ROOM)
    assert (reply["amount"], campus.last_txn) == (0, reply["txn"])
    assert campus.account(ROOM)["power"] is False


def test_a_room_closed_with_its_power_on_is_cut_off_too(campus):
    """No request leaves a room at 0 with its power on; should books hold one, closing it
    still turns the power off and says so downstream."""
    record = campus.ledger.account(ROOM)
    layout.put(record, layout.BALANCE, 0)   # with the journal's sum: audit is not asked here
    campus.ledger.save_account(ROOM, record)
    reply = campus.ok(campus.admin, "close_account", account=ROOM, id="shut")
    cutoff = campus.journal(reply["txn"] + 1)
    assert (cutoff["kind"], cutoff["ref"], cutoff["balance"]) == ("cutoff", "shut", 0)
    assert campus.account(ROOM)["power"] is False
    campus.commit()
    assert campus.cutoffs == [("WH", ROOM, 0)]


def test_meter_checks_come_in_their_order(campus):
    def code(meter, account, amount=10, what="electric"):
        return campus.send(meter, "meter", account=account, amount=amount, what=what,
                           id=campus.fresh_id())["code"]

    max_amount = campus.config.max_amount_fen
    assert code(campus.meter, ROOM, amount=max_amount + 1) == "bad_amount"
    assert code(campus.meter, "WH-404", amount=0) == "bad_amount"
    assert code(campus.meter, "WH-404") == "unknown_account"
    assert code(campus.meter, CUIK_ROOM) == "wrong_school"
    assert code(campus.meter, CUIK_STUDENT) == "wrong_school"
    assert code(campus.meter, STUDENT) == "bad_request"            # a person account
    assert code(campus.cuik_meter, CUIK_ROOM, what="water") == "bad_request"  # electric only
    assert code(campus.cuik_meter, CUIK_ROOM, what="electric") == "ok"
    assert code(campus.meter, ROOM, amount=max_amount) == "ok"
    assert campus.balance(STUDENT) == BALANCE
