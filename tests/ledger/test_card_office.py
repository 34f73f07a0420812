"""The card office (docs/PROTOCOL.md §4.13-§4.15): opening and closing accounts, cards and
their replacement, 挂失/解挂, freezing, unlocking, and the blacklist they keep."""

import pytest

from tests.ledger.conftest import (BALANCE, CARD, CUIK_CARD, CUIK_STUDENT, ID_LAST6, PIN, ROOM,
                                   STUDENT, limits)

NEW = "WH20239999"


def open_account(world, request_id="open", **fields):
    return world.send(world.admin, "open_account", id=request_id, **fields)


# ---------------------------------------------------------------- open_account
def test_opening_a_person_account(campus):
    reply = open_account(campus, account=NEW, school="WH", kind="person", holder="王五",
                         id_last6="53012X")
    txn = campus.last_txn
    assert reply == {"t": "open_account", "code": "ok", "txn": txn}
    record = campus.journal(txn)
    assert (record["kind"], record["account"], record["school"], record["amount"],
            record["balance"], record["account_kind"]) == (
        "open_account", NEW, "WH", 0, 0, "person")
    assert campus.account(NEW) == {
        "t": "account", "code": "ok", "account": NEW, "school": "WH", "kind": "person",
        "status": "active", "pin_locked": False, "balance": 0, "subsidy": 0, "available": 0,
        "cards": [],
        "limits": {"per_tx": 50_000, "daily": 100_000, "no_pin": 5_000}, "holder": "王五"}
    # The initial PIN is the ID's last six, a final X read as 0.
    assert campus.send(campus.service, "verify_pin", account=NEW, pin="530120") == {
        "t": "verify_pin", "code": "ok"}


@pytest.mark.parametrize("account, school, utility, shown", [
    ("WH-8D-1007", "WH", None, "both"),
    ("WH-8D-1008", "WH", "both", "both"),
    ("CUIK-9A-0102", "CUIK", "electric", "electric"),
    ("CUIK-9A-0103", "CUIK", "water", "water"),
    ("CUIK-3B-0101", "CUIK", None, "both"),
])
def test_opening_a_utility_account(campus, account, school, utility, shown):
    fields = {} if utility is None else {"utility": utility}
    assert open_account(campus, account=account, school=school, kind="utility",
                        **fields)["code"] == "ok"
    state = campus.account(account)
    assert (state["kind"], state["utility"], state["power"], state["holder"]) == (
        "utility", shown, False, None)


@pytest.mark.parametrize("fields", [
    {"account": NEW, "school": "PKU", "kind": "person", "id_last6": ID_LAST6},
    {"account": NEW, "school": "WH", "kind": "person"},
    {"account": NEW, "school": "WH", "kind": "person", "id_last6": ID_LAST6, "utility": "both"},
    {"account": "WH-8D-1", "school": "WH", "kind": "utility", "id_last6": ID_LAST6},
    {"account": "WH-8D-1", "school": "WH", "kind": "utility", "utility": "water"},
    {"account": "CUIK-9A-1", "school": "CUIK", "kind": "utility"},
    {"account": "CUIK-9A-1", "school": "CUIK", "kind": "utility", "utility": "both"},
    # field rules come before `exists`
    {"account": STUDENT, "school": "WH", "kind": "person"},
    {"account": STUDENT, "school": "NOPE", "kind": "person", "id_last6": ID_LAST6},
])
def test_open_account_refusals_are_bad_request(campus, fields):
    before = campus.last_txn
    assert open_account(campus, **fields) == {"t": "open_account", "code": "bad_request"}
    assert campus.last_txn == before


@pytest.mark.parametrize("account, school, utility", [
    ("CUIK-09-0101", "CUIK", "both"),       # building 9 pays apart: "09" would open it both
    ("CUIK-09-0101", "CUIK", "electric"),
    ("WH-08D-1006", "WH", "both"),
])
def test_a_room_whose_building_is_written_with_a_leading_zero_is_bad_request(
        campus, account, school, utility):
    before = campus.last_txn
    assert open_account(campus, account=account, school=school, kind="utility",
                        utility=utility) == {"t": "open_account", "code": "bad_request"}
    assert campus.last_txn == before
    assert open_account(campus, account="CUIK-9-0101", school="CUIK", kind="utility",
                        utility="electric")["code"] == "ok"     # written one way, it opens


@pytest.mark.parametrize("school", ["WH", "CUIK"])
def test_an_existing_account_is_exists(campus, school):
    assert open_account(campus, account=STUDENT, school=school, kind="person",
                        id_last6="000000") == {"t": "open_account", "code": "exists"}
    assert campus.account(STUDENT)["balance"] == BALANCE


@pytest.mark.parametrize("account, school, kind, school_meant", [
    ("CUIK20239999", "WH", "person", "CUIK"),
    ("WH20239998", "CUIK", "person", "WH"),
    ("WH-8D-2001", "CUIK", "utility", "WH"),
])
def test_an_account_id_that_begins_with_another_schools_code_is_bad_request(
        campus, account, school, kind, school_meant):
    """A typo of the id or of --school (docs/PROTOCOL.md §4.15): the id would name one school
    and the account belong to another."""
    fields = {"kind": kind, **({"id_last6": ID_LAST6} if kind == "person" else {})}
    before = campus.last_txn
    assert open_account(campus, "typo", account=account, school=school, **fields) == {
        "t": "open_account", "code": "bad_request"}
    assert campus.last_txn == before
    assert campus.code(campus.service, "account", account=account) == "unknown_account"
    # Not remembered under its id (§4.3): the corrected request may go under the same one.
    assert open_account(campus, "typo", account=account, school=school_meant,
                        **fields)["code"] == "ok"
    assert campus.account(account)["school"] == school_meant


@pytest.mark.parametrize("account, school", [
    ("BENCH-000001", "WH"), ("BENCH-000002", "CUIK"),   # no school's code: as before
    ("W20230001", "CUIK"), ("CUI20230001", "WH"),      # a part of a code is not the code
    ("WH-8D-2002", "WH"), ("CUIK20239997", "CUIK"),    # its own school's code
])
def test_an_account_id_that_begins_with_no_other_schools_code_opens(campus, account, school):
    assert open_account(campus, account=account, school=school, kind="person",
                        id_last6=ID_LAST6)["code"] == "ok"
    assert campus.account(account)["school"] == school


@pytest.mark.parametrize("account, school, code", [
    ("CUIK20230002", "CUIK", "ok"), ("C20230002", "C", "ok"), ("CX20230002", "C", "ok"),
    ("CUIK20230003", "C", "bad_request"),     # CUIK's, though it begins with C too
    ("C20230003", "CUIK", "bad_request"), ("CX20230003", "CUIK", "bad_request"),
])
def test_the_longest_school_code_an_account_id_begins_with_is_its_school(make_world, account,
                                                                         school, code):
    world = make_world(schools={"C": {"name": "某学院"}})
    assert world.code(world.admin, "open_account", account=account, school=school,
                      kind="person", id_last6=ID_LAST6, id="open") == code


# ---------------------------------------------------------------- issue_card
def test_issuing_a_card(campus):
    campus.open_person(NEW)
    reply = campus.send(campus.admin, "issue_card", account=NEW, card="0A0A0A0A", id="i")
    txn = campus.last_txn
    assert reply == {"t": "issue_card", "code": "ok", "txn": txn}
    record = campus.journal(txn)
    assert (record["kind"], record["card"], record["account"]) == ("issue_card", "0A0A0A0A", NEW)
    assert campus.account(NEW)["cards"] == [{"card": "0A0A0A0A", "state": "active"}]
    assert campus.send(campus.pos, "balance", card="0A0A0A0A")["account"] == NEW


def test_issue_card_refusals(campus):
    campus.open_person(NEW)
    campus.ok(campus.admin, "close_account", account=NEW)
    replaced = "0A0A0A0A"
    campus.ok(campus.admin, "replace_card", account=STUDENT, old=CARD, new=replaced)

    def issue(account, card):
        return campus.send(campus.admin, "issue_card", account=account, card=card,
                           id=campus.fresh_id())["code"]

    assert issue("WH404", "0B0B0B0B") == "unknown_account"
    assert issue(ROOM, "0B0B0B0B") == "bad_request"                # a utility account
    assert issue(NEW, "0B0B0B0B") == "account_closed"
    assert issue(NEW, CARD) == "account_closed"                   # closed before exists
    for card in (CARD, replaced, CUIK_CARD):                       # any state, any account
        assert issue(STUDENT, card) == "exists"


def test_an_account_holds_at_most_32_cards_old_ones_included(campus):
    campus.open_person(NEW, "10000000")
    campus.ok(campus.admin, "replace_card", account=NEW, old="10000000", new="10000001")
    for n in range(2, limits.cards_per_account_max):
        campus.ok(campus.admin, "issue_card", account=NEW, card=f"{0x10000000 + n:X}")
    assert len(campus.account(NEW)["cards"]) == limits.cards_per_account_max
    assert campus.send(campus.admin, "issue_card", account=NEW, card="20000000", id="33") == {
        "t": "issue_card", "code": "bad_request"}
    assert campus.send(campus.admin, "replace_card", account=NEW, old="10000001",
                       new="20000000", id="r33") == {"t": "replace_card", "code": "bad_request"}


# ---------------------------------------------------------------- replace_card (补卡)
@pytest.mark.parametrize("lost_first", [False, True])
def test_replacing_a_card_blocks_the_old_one_and_keeps_the_money(campus, lost_first):
    if lost_first:
        campus.ok(campus.service, "lost", card=CARD)
    reply = campus.send(campus.admin, "replace_card", account=STUDENT, old=CARD, new="0A0A0A0A",
                        id="r")
    txn = campus.last_txn
    assert reply == {"t": "replace_card", "code": "ok", "txn": txn}
    record = campus.journal(txn)
    assert (record["kind"], record["card"], record["old"]) == ("replace_card", "0A0A0A0A", CARD)
    assert campus.account(STUDENT)["cards"] == [
        {"card": CARD, "state": "blocked"}, {"card": "0A0A0A0A", "state": "active"}]
    assert campus.blacklisted("WH", CARD) and not campus.blacklisted("WH", "0A0A0A0A")
    assert campus.code(campus.pos, "debit", card=CARD, amount=1, id=1) == "card_blocked"
    assert campus.send(campus.pos, "debit", card="0A0A0A0A", amount=1, id=2)["balance"] == (
        BALANCE - 1)


def test_the_new_card_of_an_overdrawn_account_is_listed_too(campus):
    campus.send(campus.pos, "offline", records=[
        {"id": "o", "card": CARD, "amount": BALANCE + 1, "at": campus.clock.now_ms()}])
    campus.ok(campus.admin, "replace_card", account=STUDENT, old=CARD, new="0A0A0A0A")
    assert campus.blacklisted("WH", CARD) and campus.blacklisted("WH", "0A0A0A0A")
    campus.ok(campus.admin, "unfreeze", account=STUDENT)
    assert campus.blacklisted("WH", CARD) and not campus.blacklisted("WH", "0A0A0A0A")


def test_replace_card_refusals_in_their_order(campus):
    campus.open_person(NEW, "0B0B0B0B")
    campus.ok(campus.admin, "close_account", account=NEW)

    def replace(account, old, new="0C0C0C0C"):
        return campus.send(campus.admin, "replace_card", account=account, old=old, new=new,
                           id=campus.fresh_id())["code"]

    assert replace("WH404", "FFFF0000") == "unknown_account"
    assert replace(NEW, "FFFF0000") == "account_closed"
    assert replace(STUDENT, "FFFF0000") == "card_unknown"
    assert replace(STUDENT, CUIK_CARD) == "bad_request"          # another account's card
    assert replace(STUDENT, CARD, new=CUIK_CARD) == "exists"
    campus.ok(campus.admin, "replace_card", account=STUDENT, old=CARD, new="0A0A0A0A")
    assert replace(STUDENT, CARD, new=CUIK_CARD) == "card_blocked"   # before exists
    assert replace(STUDENT, "0A0A0A0A", new=CARD) == "exists"


# ---------------------------------------------------------------- lost and found (挂失/解挂)
def test_reporting_a_card_lost_lists_it(campus):
    reply = campus.send(campus.service, "lost", card=CARD, id="l")
    txn = campus.last_txn
    assert reply == {"t": "lost", "code": "ok", "txn": txn, "blacklist": 1}
    assert (campus.journal(txn)["kind"], campus.journal(txn)["card"]) == ("lost", CARD)
    assert campus.account(STUDENT)["cards"] == [{"card": CARD, "state": "lost"}]
    assert campus.pushes == []          # pushed once durable
    campus.commit()
    assert campus.pushes == [("WH", {"t": "blacklist", "version": 1, "add": [CARD],
                                     "remove": []})]
    assert campus.code(campus.pos, "debit", card=CARD, amount=1, id=1) == "card_lost"
    # Already lost: ok with the current version, nothing changed.
    assert campus.send(campus.service, "lost", card=CARD, id="l2") == {
        "t": "lost", "code": "ok", "blacklist": 1}
    assert campus.last_txn == txn


def test_finding_a_lost_card_unlists_it(campus):
    campus.ok(campus.service, "lost", card=CARD)
    campus.commit()
    reply = campus.send(campus.service, "found", card=CARD, id="f")
    txn = campus.last_txn
    assert reply == {"t": "found", "code": "ok", "txn": txn, "blacklist": 2}
    assert (campus.journal(txn)["kind"], campus.journal(txn)["card"]) == ("found", CARD)
    assert campus.account(STUDENT)["cards"] == [{"card": CARD, "state": "active"}]
    campus.commit()
    assert campus.pushes[-1] == ("WH", {"t": "blacklist", "version": 2, "add": [],
                                        "remove": [CARD]})
    assert campus.code(campus.pos, "debit", card=CARD, amount=1, id=1) == "ok"


def test_found_of_a_card_that_is_not_lost_changes_nothing(campus):
    assert campus.send(campus.service, "found", card=CARD, id="f1") == {
        "t": "found", "code": "ok", "blacklist": 0}
    campus.ok(campus.admin, "replace_card", account=STUDENT, old=CARD, new="0A0A0A0A")
    before = campus.last_txn
    assert campus.send(campus.service, "found", card=CARD, id="f2") == {
        "t": "found", "code": "ok", "blacklist": 1}
    assert campus.last_txn == before
    assert campus.account(STUDENT)["cards"][0] == {"card": CARD, "state": "blocked"}


def test_a_found_card_of_an_overdrawn_account_stays_listed(campus):
    campus.ok(campus.service, "lost", card=CARD)
    campus.send(campus.pos, "offline", records=[
        {"id": "o", "card": CARD, "amount": BALANCE + 1, "at": campus.clock.now_ms()}])
    assert campus.account(STUDENT)["status"] == "frozen"
    reply = campus.send(campus.service, "found", card=CARD, id="f")
    assert reply["code"] == "ok" and "txn" in reply
    assert campus.blacklisted("WH", CARD)


@pytest.mark.parametrize("t", ["lost", "found"])
def test_lost_and_found_check_the_card_then_its_school(campus, t):
    assert campus.send(campus.service, t, card="FFFF0000", id=1) == {"t": t, "code": "card_unknown"}
    assert campus.send(campus.wh_service, t, card=CUIK_CARD, id=2) == {
        "t": t, "code": "wrong_school"}
    campus.ok(campus.admin, "replace_card", account=CUIK_STUDENT, old=CUIK_CARD, new="0D0D0D0D")
    assert campus.send(campus.wh_service, t, card=CUIK_CARD, id=3) == {
        "t": t, "code": "wrong_school"}


def test_lost_of_a_replaced_card_is_card_blocked(campus):
    campus.ok(campus.admin, "replace_card", account=STUDENT, old=CARD, new="0A0A0A0A")
    assert campus.send(campus.service, "lost", card=CARD, id="l") == {
        "t": "lost", "code": "card_blocked"}


# ---------------------------------------------------------------- freeze, unfreeze, unlock
def test_freezing_and_unfreezing(campus):
    reply = campus.send(campus.admin, "freeze", account=STUDENT, id="f")
    assert reply == {"t": "freeze", "code": "ok", "txn": campus.last_txn}
    assert (campus.journal(reply["txn"])["kind"], campus.journal(reply["txn"])["reason"]) == (
        "freeze", "operator")
    assert campus.account(STUDENT)["status"] == "frozen"
    assert campus.blacklisted("WH", CARD)   # an offline till must refuse it too
    assert campus.code(campus.pos, "debit", card=CARD, amount=1, id=1) == "account_frozen"
    before = campus.last_txn
    assert campus.send(campus.admin, "freeze", account=STUDENT, reason="again", id="f2") == {
        "t": "freeze", "code": "ok"}
    assert campus.last_txn == before
    reply = campus.send(campus.admin, "unfreeze", account=STUDENT, id="u")
    assert reply == {"t": "unfreeze", "code": "ok", "txn": campus.last_txn}
    assert (campus.journal(reply["txn"])["kind"], campus.journal(reply["txn"])["reason"]) == (
        "unfreeze", None)
    assert not campus.blacklisted("WH", CARD)
    assert campus.send(campus.admin, "unfreeze", account=STUDENT, id="u2") == {
        "t": "unfreeze", "code": "ok"}
    assert campus.code(campus.pos, "debit", card=CARD, amount=1, id=2) == "ok"


def test_a_freeze_lists_every_card_of_the_account_in_one_version_and_unfreeze_unlists_them(
        campus):
    # D7 of the outside test: an operator's freeze stopped online payments only, and a till
    # working offline took the frozen account's cards until `unfreeze`.
    campus.ok(campus.admin, "issue_card", account=STUDENT, card="0B0B0001")
    campus.ok(campus.admin, "issue_card", account=STUDENT, card="0B0B0002")
    campus.ok(campus.service, "lost", card="0B0B0002")
    campus.commit()
    version = campus.ledger.blacklist.version("WH")
    campus.ok(campus.admin, "freeze", account=STUDENT)
    campus.commit()
    assert campus.pushes[-1] == ("WH", {"t": "blacklist", "version": version + 1,
                                        "add": [CARD, "0B0B0001"], "remove": []})
    campus.ok(campus.admin, "unfreeze", account=STUDENT)
    campus.commit()
    # The lost card stays listed: it is unlisted by `found` alone.
    assert campus.pushes[-1] == ("WH", {"t": "blacklist", "version": version + 2, "add": [],
                                        "remove": [CARD, "0B0B0001"]})
    assert campus.blacklisted("WH", "0B0B0002")


def test_a_card_of_a_frozen_account_stays_listed_when_found_and_a_new_one_is_listed(campus):
    campus.ok(campus.service, "lost", card=CARD)
    campus.ok(campus.admin, "freeze", account=STUDENT, reason="phone and card stolen")
    campus.ok(campus.service, "found", card=CARD)
    assert campus.blacklisted("WH", CARD)   # the account is still frozen
    campus.ok(campus.admin, "issue_card", account=STUDENT, card="0B0B0001")
    campus.ok(campus.admin, "replace_card", account=STUDENT, old=CARD, new="0B0B0002")
    assert campus.blacklisted("WH", "0B0B0001") and campus.blacklisted("WH", "0B0B0002")
    campus.ok(campus.admin, "unfreeze", account=STUDENT)
    assert not campus.blacklisted("WH", "0B0B0001")
    assert not campus.blacklisted("WH", "0B0B0002")
    assert campus.blacklisted("WH", CARD)   # replaced: blocked for good


@pytest.mark.parametrize("closing", ["refund", "close_account"])
def test_closing_a_frozen_account_takes_its_cards_off_the_list_but_a_lost_ones(campus, closing):
    # A closed account's cards are not listed, frozen or not (§4.13): nothing could ever take
    # them off (`unfreeze` is account_closed), and each graduating class the card office
    # froze before its refunds would grow every till's list for good. An offline tap of one
    # is kept for the operator at upload.
    campus.ok(campus.admin, "issue_card", account=STUDENT, card="0B0B0001")
    campus.ok(campus.service, "lost", card="0B0B0001")
    campus.ok(campus.admin, "freeze", account=STUDENT)
    if closing == "close_account":
        campus.ok(campus.admin, "refund", account=STUDENT)   # close_account needs it empty
        campus.ok(campus.admin, "open_account", account="WH20230002", school="WH",
                  kind="person", holder="测试", id_last6="123456")
        campus.ok(campus.admin, "issue_card", account="WH20230002", card="0B0B0002")
        campus.ok(campus.admin, "freeze", account="WH20230002")
        account, card = "WH20230002", "0B0B0002"
    else:
        account, card = STUDENT, CARD
    assert campus.blacklisted("WH", card)
    campus.commit()
    version = campus.ledger.blacklist.version("WH")
    campus.ok(campus.admin, closing, account=account)
    assert campus.account(account)["status"] == "closed"
    campus.commit()
    assert campus.pushes[-1] == ("WH", {"t": "blacklist", "version": version + 1, "add": [],
                                        "remove": [card]})
    assert campus.blacklisted("WH", "0B0B0001")   # lost: listed until found
    assert campus.code(campus.admin, "unfreeze", account=account, id="u") == "account_closed"
    campus.ok(campus.service, "found", card="0B0B0001")
    assert not campus.blacklisted("WH", "0B0B0001")


def test_freeze_keeps_its_reason(campus):
    reply = campus.ok(campus.admin, "freeze", account=STUDENT, reason="学生申请")
    assert campus.journal(reply["txn"])["reason"] == "学生申请"
    reply = campus.ok(campus.admin, "unfreeze", account=STUDENT, reason="核实")
    assert campus.journal(reply["txn"])["reason"] == "核实"


def test_a_frozen_account_may_be_credited(campus):
    campus.ok(campus.admin, "freeze", account=STUDENT)
    assert campus.send(campus.service, "credit", account=STUDENT, amount=100, source="bank",
                       id="c")["balance"] == BALANCE + 100


def test_unfreezing_an_overdrawn_account_unlists_cards_not_lost_or_replaced(campus):
    campus.ok(campus.admin, "issue_card", account=STUDENT, card="0A0A0A0A")
    campus.ok(campus.admin, "issue_card", account=STUDENT, card="0B0B0B0B")
    campus.ok(campus.service, "lost", card="0A0A0A0A")
    campus.send(campus.pos, "offline", records=[
        {"id": "o", "card": CARD, "amount": BALANCE + 1, "at": campus.clock.now_ms()}])
    assert all(campus.blacklisted("WH", card) for card in (CARD, "0A0A0A0A", "0B0B0B0B"))
    campus.ok(campus.admin, "unfreeze", account=STUDENT)
    assert [campus.blacklisted("WH", card) for card in (CARD, "0A0A0A0A", "0B0B0B0B")] == [
        False, True, False]


def test_unlock_clears_a_lock_or_a_count_and_nothing_else(campus):
    assert campus.send(campus.admin, "unlock", account=STUDENT, id="u0") == {
        "t": "unlock", "code": "ok"}
    for _ in range(limits.pin_failures_max):
        campus.send(campus.service, "verify_pin", account=STUDENT, pin="000000")
    reply = campus.send(campus.admin, "unlock", account=STUDENT, id="u1")
    assert reply == {"t": "unlock", "code": "ok", "txn": campus.last_txn}
    assert campus.journal(reply["txn"])["kind"] == "unlock"
    assert campus.account(STUDENT)["pin_locked"] is False
    # A count alone is cleared as well: four more wrong ones do not lock.
    campus.send(campus.service, "verify_pin", account=STUDENT, pin="000000")
    assert campus.code(campus.admin, "unlock", account=STUDENT, id="u2") == "ok"
    for _ in range(limits.pin_failures_max - 1):
        campus.send(campus.service, "verify_pin", account=STUDENT, pin="000000")
    assert campus.code(campus.service, "verify_pin", account=STUDENT, pin=PIN) == "ok"


# ---------------------------------------------------------------- close_account
def test_closing_an_empty_account(campus):
    campus.ok(campus.pos, "debit", card=CARD, amount=BALANCE, pin=PIN)
    reply = campus.send(campus.admin, "close_account", account=STUDENT, id="c")
    assert reply == {"t": "close_account", "code": "ok", "txn": campus.last_txn}
    assert campus.journal(reply["txn"])["kind"] == "close_account"
    assert campus.account(STUDENT)["status"] == "closed"
    assert campus.send(campus.admin, "close_account", account=STUDENT, id="c2") == {
        "t": "close_account", "code": "ok"}
    # Closed: no payment, recharge, card, code or freeze any more.
    assert campus.code(campus.pos, "debit", card=CARD, amount=1, id=1) == "account_closed"
    assert campus.send(campus.service, "credit", account=STUDENT, amount=1, source="s",
                       id=2)["code"] == "account_closed"
    assert campus.code(campus.admin, "freeze", account=STUDENT, id=3) == "account_closed"


def test_an_account_with_money_or_open_holds_is_not_empty(campus):
    assert campus.send(campus.admin, "close_account", account=STUDENT, id=1) == {
        "t": "close_account", "code": "not_empty"}
    # Below zero is not empty either.
    campus.send(campus.meter, "meter", account=ROOM, amount=BALANCE + 1, what="water", id=1)
    assert campus.send(campus.admin, "close_account", account=ROOM, id=2) == {
        "t": "close_account", "code": "not_empty"}
    # Balance 0 with an open hold: the hold first, then an offline tap that takes the rest.
    campus.ok(campus.water, "hold", card=CARD, amount=100)
    campus.send(campus.pos, "offline", records=[
        {"id": "o", "card": CARD, "amount": BALANCE, "at": campus.clock.now_ms()}])
    assert campus.balance(STUDENT) == 0
    assert campus.send(campus.admin, "close_account", account=STUDENT, id=3) == {
        "t": "close_account", "code": "not_empty"}
    assert campus.account(STUDENT)["status"] == "active"


@pytest.mark.parametrize("t", ["close_account", "freeze", "unfreeze", "unlock"])
def test_admin_requests_on_an_unknown_account(campus, t):
    assert campus.send(campus.admin, t, account="WH404", id=1) == {
        "t": t, "code": "unknown_account"}


# ---------------------------------------------------------------- the blacklist request
def test_blacklist_full_list_delta_and_future_version(campus):
    assert campus.send(campus.pos, "blacklist", since=0) == {
        "t": "blacklist", "code": "ok", "version": 0, "full": [], "more": False}
    campus.ok(campus.service, "lost", card=CARD)                                   # version 1
    campus.ok(campus.admin, "issue_card", account=STUDENT, card="0A0A0A0A")
    campus.ok(campus.service, "lost", card="0A0A0A0A")                             # version 2
    campus.ok(campus.service, "found", card=CARD)                                  # version 3
    assert campus.send(campus.pos, "blacklist", since=0) == {
        "t": "blacklist", "code": "ok", "version": 3, "full": ["0A0A0A0A"], "more": False}
    assert campus.send(campus.water, "blacklist", since=1) == {
        "t": "blacklist", "code": "ok", "version": 3, "add": ["0A0A0A0A"], "remove": [CARD]}
    # A card added and removed again in between appears in neither.
    assert campus.send(campus.pos, "blacklist", since=-5)["full"] == ["0A0A0A0A"]
    assert campus.send(campus.pos, "blacklist", since=3) == {
        "t": "blacklist", "code": "ok", "version": 3, "add": [], "remove": []}
    assert campus.send(campus.pos, "blacklist", since=4) == {
        "t": "blacklist", "code": "bad_request"}
    assert campus.send(campus.pos, "blacklist", since=3, after="0A0A0A0A") == {
        "t": "blacklist", "code": "ok", "version": 3, "full": [], "more": False}
    # Each school has its own list.
    assert campus.send(campus.cuik_pos, "blacklist", since=0) == {
        "t": "blacklist", "code": "ok", "version": 0, "full": [], "more": False}


def test_after_a_restore_every_till_loads_the_whole_list_again(campus, caplog):
    # The outside test's operator pass: a backup at version 0; card A lost (version 1, a
    # till took it); the books restored from the backup; card B lost gave version 1 again,
    # and the till, at 1, took the empty delta: B, stolen, stayed off its list for good,
    # and A on it. Now the restored books start past any version a till saw since.
    from switch.cli.backup import _count_restore
    from switch.persistence.store import STORE_DIR
    campus.commit()
    campus.ok(campus.service, "lost", card=CARD)
    till_version = campus.ledger.blacklist.version("WH")
    caplog.set_level("WARNING", logger="switch.ledger")

    def counted_as_restored(data_dir: str) -> None:   # as `restore` counts its copy
        _count_restore(f"{data_dir}/{STORE_DIR}")
    campus.restart(while_closed=counted_as_restored)
    version = campus.ledger.blacklist.version("WH")
    assert version == till_version + limits.blacklist_restore_jump_version
    assert campus.ledger.blacklist.version("CUIK") == limits.blacklist_restore_jump_version
    assert [r.getMessage() for r in caplog.records if "restarted_after_restore" in
            r.getMessage()] == [
        f"event=blacklist_restarted_after_restore school=CUIK "
        f"version={limits.blacklist_restore_jump_version} "
        f"action=every_till_loads_the_full_list",
        f"event=blacklist_restarted_after_restore school=WH version={version} "
        f"action=every_till_loads_the_full_list"]
    # A till at the version it had: the whole list, never a delta of other changes.
    assert campus.send(campus.pos, "blacklist", since=till_version) == {
        "t": "blacklist", "code": "ok", "version": version, "full": [CARD], "more": False}
    campus.ok(campus.admin, "issue_card", account=STUDENT, card="0B0B0001")
    campus.ok(campus.service, "lost", card="0B0B0001")
    assert campus.send(campus.pos, "blacklist", since=version) == {
        "t": "blacklist", "code": "ok", "version": version + 1, "add": ["0B0B0001"],
        "remove": []}
    campus.restart()   # once per restore
    assert campus.ledger.blacklist.version("WH") == version + 1
