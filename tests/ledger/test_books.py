"""The books stay true (docs/PROTOCOL.md §4.7, §4.10, §4.15): closed is for good, `refund`
pays an account out and closes it, freeze reasons add up instead of overwriting each other,
a lost card keeps the time it was lost, and spending is counted per local day."""

import pytest

from tests.ledger.conftest import BALANCE, CARD, ROOM, STUDENT, limits

MINUTE_MS = 60_000


def tap(world, record_id, amount, at, card=CARD):
    return {"id": record_id, "card": card, "amount": amount, "at": at}


def upload(world, *records):
    reply = world.send(world.pos, "offline", records=list(records))
    assert reply["code"] == "ok", reply
    return reply["results"]


def emptied_and_closed(campus, account=STUDENT):
    """Spend the whole balance at a till and close the account; the debit's id."""
    campus.send(campus.pos, "debit", card=CARD, amount=BALANCE, pin="123456", id="lunch")
    assert campus.balance(account) == 0
    campus.ok(campus.admin, "close_account", account=account)
    return "lunch"


# ------------------------------------------------------------------ closed means closed
def test_a_reversal_after_closing_puts_no_money_into_the_closed_account(campus):
    target = emptied_and_closed(campus)
    last = campus.last_txn
    reply = campus.send(campus.pos, "reverse", target=target, id="undo")
    assert reply == {"t": "reverse", "code": "account_closed"}
    assert campus.balance(STUDENT) == 0
    assert campus.last_txn == last
    # A second reverse of the same target replays the first reply (§4.9).
    again = campus.send(campus.pos, "reverse", target=target, id="undo-2")
    assert (again["code"], again.get("replay")) == ("account_closed", True)


@pytest.mark.parametrize("request_type", ["freeze", "unfreeze", "unlock"])
def test_a_closed_accounts_standing_never_changes(campus, request_type):
    emptied_and_closed(campus)
    assert campus.code(campus.admin, request_type, account=STUDENT,
                       id=campus.fresh_id()) == "account_closed"
    assert campus.account(STUDENT)["status"] == "closed"


def test_a_closed_account_takes_no_credit(campus):
    emptied_and_closed(campus)
    assert campus.code(campus.admin, "credit", account=STUDENT, amount=100, source="x",
                       id=campus.fresh_id()) == "account_closed"


# ------------------------------------------------------------------ refund (离校退款)
def test_refund_pays_the_balance_out_and_closes(campus):
    reply = campus.ok(campus.admin, "refund", account=STUDENT, id="refund-1")
    assert reply == {"t": "refund", "code": "ok", "txn": reply["txn"], "amount": BALANCE,
                     "balance": 0}
    record = campus.journal(reply["txn"])
    assert (record["kind"], record["amount"], record["balance"], record["who"]) == (
        "refund", -BALANCE, 0, "admin")
    account = campus.account(STUDENT)
    assert (account["status"], account["balance"]) == ("closed", 0)
    assert campus.code(campus.pos, "debit", card=CARD, amount=1, id="after") == "account_closed"
    # Refunded once: a new refund of it is refused, a retry of the same one replays.
    assert campus.code(campus.admin, "refund", account=STUDENT,
                       id=campus.fresh_id()) == "account_closed"
    assert campus.send(campus.admin, "refund", account=STUDENT, id="refund-1") == {
        **reply, "replay": True}


def test_refund_of_an_empty_account_just_closes_it(campus):
    emptied = campus.open_person("WH20230005")
    reply = campus.ok(campus.admin, "refund", account=emptied)
    assert (reply["amount"], reply["balance"]) == (0, 0)
    assert campus.journal(reply["txn"])["kind"] == "refund"
    assert campus.account(emptied)["status"] == "closed"


def test_refund_refuses_open_holds_and_debts(campus):
    campus.ok(campus.water, "hold", card=CARD, amount=500, pin="123456")
    assert campus.code(campus.admin, "refund", account=STUDENT,
                       id=campus.fresh_id()) == "not_empty"
    upload(campus, tap(campus, "over", BALANCE + 700, campus.clock.now_ms()))  # overdrawn
    assert campus.code(campus.admin, "refund", account=STUDENT,
                       id=campus.fresh_id()) == "not_empty"   # the hold is checked first
    room_debt = campus.send(campus.meter, "meter", account=ROOM, amount=BALANCE + 1,
                            what="electric", id="m1")
    assert room_debt["balance"] == -1
    assert campus.code(campus.admin, "refund", account=ROOM,
                       id=campus.fresh_id()) == "insufficient_funds"
    assert campus.code(campus.admin, "refund", account="WH20299999",
                       id=campus.fresh_id()) == "unknown_account"
    assert campus.code(campus.service, "refund", account=STUDENT,
                       id=campus.fresh_id()) == "not_permitted"
    assert campus.account(STUDENT)["status"] == "frozen"
    assert campus.account(ROOM)["status"] == "active"


# ------------------------------------------------------------------ freeze reasons add up
def test_an_offline_overdraw_does_not_overwrite_an_operators_freeze(campus):
    campus.ok(campus.admin, "freeze", account=STUDENT, reason="investigation")
    upload(campus, tap(campus, "over", BALANCE + 300, campus.clock.now_ms()))
    assert campus.blacklisted("WH", CARD)
    campus.credit(STUDENT, 300)   # the overdraw is paid back: the operator's freeze stays
    assert campus.account(STUDENT)["status"] == "frozen"
    assert campus.code(campus.pos, "debit", card=CARD, amount=100, id="d") == "account_frozen"
    assert campus.blacklisted("WH", CARD)  # still listed: the operator's freeze stands
    campus.ok(campus.admin, "unfreeze", account=STUDENT)
    assert campus.account(STUDENT)["status"] == "active"
    assert not campus.blacklisted("WH", CARD)


def test_lifting_the_operators_freeze_does_not_clear_an_overdraw(campus):
    campus.ok(campus.admin, "freeze", account=STUDENT)
    upload(campus, tap(campus, "over", BALANCE + 300, campus.clock.now_ms()))
    reply = campus.ok(campus.admin, "unfreeze", account=STUDENT)
    assert campus.journal(reply["txn"])["kind"] == "unfreeze"
    assert campus.account(STUDENT)["status"] == "frozen"   # still overdrawn
    assert campus.blacklisted("WH", CARD)
    campus.expect_repaid(campus.credit(STUDENT, 300))


def test_an_overdrawn_freeze_alone_is_still_lifted_by_unfreeze(campus):
    upload(campus, tap(campus, "over", BALANCE + 300, campus.clock.now_ms()))
    campus.ok(campus.admin, "unfreeze", account=STUDENT)  # below zero or not (§4.15)
    assert campus.account(STUDENT)["status"] == "active"
    assert not campus.blacklisted("WH", CARD)


# ------------------------------------------------------------------ the time a card was lost
def test_a_tap_after_the_loss_uploaded_after_the_replacement_is_flagged(campus):
    campus.ok(campus.service, "lost", card=CARD)
    lost_at = campus.clock.now_ms()
    campus.clock.ms += 10 * MINUTE_MS
    tapped_at = campus.clock.now_ms()       # someone else uses the lost card offline
    campus.clock.ms += 10 * MINUTE_MS
    campus.ok(campus.admin, "replace_card", account=STUDENT, old=CARD, new="0E0E0E0E")
    campus.clock.ms += 10 * MINUTE_MS
    [result] = upload(campus, tap(campus, "thief", 100, tapped_at))
    assert result["flag"] == "after_lost"
    assert campus.journal(result["txn"])["flag"] == "after_lost"
    # A tap before the loss, uploaded late, is the owner's own: not flagged.
    [own] = upload(campus, tap(campus, "owner", 100, lost_at - MINUTE_MS))
    assert "flag" not in own


# ------------------------------------------------------------------ spending per local day
def test_a_tap_stamped_into_tomorrow_does_not_wipe_todays_spending(campus):
    campus.ok(campus.service, "set_limits", account=STUDENT, per_tx=10_000, daily=10_000,
              no_pin=10_000)
    campus.set_local_time("2026-11-18T23:58:00")
    assert campus.code(campus.pos, "debit", card=CARD, amount=9_000, id="d1") == "ok"
    # Within the allowed skew, but tomorrow by the terminal's clock.
    ahead = campus.local_ms("2026-11-19T00:02:00")
    assert ahead - campus.clock.now_ms() <= limits.offline_future_s * 1000
    [result] = upload(campus, tap(campus, "early", 100, ahead))
    assert result["code"] == "ok"
    # It counts to no day's allowance: today's 9,000 stand, and 1,000 more reach the limit.
    assert campus.code(campus.pos, "debit", card=CARD, amount=1_001, id="d2") == "limit_daily"
    assert campus.code(campus.pos, "debit", card=CARD, amount=1_000, id="d4") == "ok"
    # Tomorrow's allowance is whole when tomorrow comes.
    campus.set_local_time("2026-11-19T08:00:00")
    campus.credit(STUDENT, 10_000)
    assert campus.code(campus.pos, "debit", card=CARD, amount=10_000, id="d5") == "ok"


def test_a_tap_of_yesterday_counts_to_nothing_today(campus):
    campus.ok(campus.service, "set_limits", account=STUDENT, per_tx=10_000, daily=10_000,
              no_pin=10_000)
    campus.set_local_time("2026-11-19T08:00:00")
    assert campus.code(campus.pos, "debit", card=CARD, amount=4_000, id="d1") == "ok"
    [result] = upload(campus, tap(campus, "old", 3_000,
                                  campus.local_ms("2026-11-18T12:00:00")))
    assert result["code"] == "ok"
    assert campus.code(campus.pos, "debit", card=CARD, amount=6_001, id="d2") == "limit_daily"
    assert campus.code(campus.pos, "debit", card=CARD, amount=6_000, id="d3") == "ok"


def test_a_card_issued_to_an_overdrawn_account_is_blacklisted_like_its_others(campus):
    """Found by the ledger simulation: the new card of an account frozen as overdrawn was
    left off the blacklist, so an offline till would take it."""
    upload(campus, tap(campus, "over", BALANCE + 700, campus.clock.now_ms()))  # overdrawn
    assert campus.blacklisted("WH", CARD)
    campus.ok(campus.admin, "issue_card", account=STUDENT, card="0D0D0D0D")
    assert campus.blacklisted("WH", "0D0D0D0D")
    campus.credit(STUDENT, 700)   # the overdraw is paid back: both cards come off
    assert not campus.blacklisted("WH", CARD) and not campus.blacklisted("WH", "0D0D0D0D")


def test_a_closed_accounts_card_can_still_be_reported_lost_and_the_books_stay_sound(campus):
    from switch.persistence.audit import audit_environment
    emptied_and_closed(campus)
    campus.ok(campus.service, "lost", card=CARD)
    assert campus.blacklisted("WH", CARD)
    campus.commit()
    report = audit_environment(campus.store.env, campus.store.dbs)
    assert report.sound, report.problems
