"""Offline uploads (脱机) and day totals (对账) (docs/PROTOCOL.md §4.10, §4.11): each record
decided on its own in its order, the offline window, overdrawn accounts, `settle`."""

import pytest

from switch.ledger.state import unpack
from tests.ledger.conftest import BALANCE, CARD, CUIK_CARD, PIN, STUDENT, limits


def tap(world, record_id, amount=100, card=CARD, at=None):
    return {"id": record_id, "card": card, "amount": amount,
            "at": world.clock.now_ms() if at is None else at}


def upload(world, *records, till=None):
    reply = world.send(till or world.pos, "offline", records=list(records))
    assert reply["code"] == "ok", reply
    return reply["results"]


def test_an_applied_record_is_taken_and_written(campus):
    at = campus.clock.now_ms() - 3_600_000
    [result] = upload(campus, tap(campus, "off-1", 250, at=at))
    txn = campus.last_txn
    assert result == {"id": "off-1", "code": "ok", "txn": txn, "balance": BALANCE - 250}
    record = campus.journal(txn)
    assert {key: record[key] for key in ("kind", "amount", "card", "tapped_at", "ref", "who",
                                         "balance")} == {
        "kind": "offline", "amount": -250, "card": CARD, "tapped_at": at, "ref": "off-1",
        "who": "WH-POS-1", "balance": BALANCE - 250}
    assert "flag" not in record


def test_records_already_happened_so_no_limit_pin_standing_or_funds_stops_them(campus):
    campus.ok(campus.service, "set_limits", account=STUDENT, per_tx=100, daily=100, no_pin=0)
    for _ in range(limits.pin_failures_max):
        campus.send(campus.service, "verify_pin", account=STUDENT, pin="000000")
    campus.ok(campus.admin, "freeze", account=STUDENT)
    [result] = upload(campus, tap(campus, "big", BALANCE + 5_000))
    assert (result["code"], result["balance"]) == ("ok", -5_000)


def test_an_account_driven_below_zero_is_frozen_as_overdrawn_and_its_cards_listed(campus):
    pushes = len(campus.pushes)
    [first, second] = upload(campus, tap(campus, "a", BALANCE), tap(campus, "b", 1))
    assert (first["balance"], second["balance"]) == (0, -1)
    campus.expect_overdrawn_freeze(second["txn"] + 1, "b", "WH-POS-1")
    campus.commit()
    assert campus.pushes[pushes:] == [("WH", {"t": "blacklist", "version": 1, "add": [CARD],
                                              "remove": []})]
    assert campus.send(campus.pos, "debit", card=CARD, amount=1, id=1) == {
        "t": "debit", "code": "account_frozen"}
    # A second overdraft does not freeze again.
    upload(campus, tap(campus, "c", 1))
    assert campus.journal(campus.last_txn)["kind"] == "offline"
    # Unfreezing takes the cards off the list again, below zero or not.
    campus.ok(campus.admin, "unfreeze", account=STUDENT)
    assert not campus.blacklisted("WH", CARD)


def test_a_tap_on_a_closed_account_applies_nothing_and_is_kept_for_the_operator(campus):
    campus.open_person("WH20230002", "0D0D0001")
    campus.ok(campus.admin, "close_account", account="WH20230002")
    last = campus.last_txn
    record = tap(campus, "x", 100, card="0D0D0001")
    [result] = upload(campus, record)
    assert result == {"id": "x", "code": "account_closed"}
    [again] = upload(campus, record)  # a retry replays it and is not kept twice
    assert again["code"] == "account_closed" and again.get("replay") is True
    account = campus.account("WH20230002")
    assert (account["status"], account["balance"]) == ("closed", 0)
    assert campus.last_txn == last
    assert not campus.blacklisted("WH", "0D0D0001")
    campus.commit()
    assert campus.closed_account_taps == ["WH"]  # counted once, by school
    [kept] = [unpack(value) for _, value in campus.store.committed_items("closed_account_taps")]
    assert (kept["account"], kept["card"], kept["amount"], kept["at"], kept["id"]) == (
        "WH20230002", "0D0D0001", 100, record["at"], "x")
    assert kept["who"] == campus.pos.who
    # An unfreeze cannot bring it back to life either.
    assert campus.code(campus.admin, "unfreeze", account="WH20230002",
                       id=campus.fresh_id()) == "account_closed"


@pytest.mark.parametrize("count, code", [(0, "bad_request"), (1, "ok"),
                                         (limits.offline_records_max, "ok"),
                                         (limits.offline_records_max + 1, "bad_request")])
def test_an_upload_holds_1_to_500_records(campus, count, code):
    campus.credit(STUDENT, 1_000_000 - BALANCE)
    reply = campus.send(campus.pos, "offline",
                        records=[tap(campus, n, 1) for n in range(count)])
    assert reply["code"] == code
    if code == "ok":
        assert [result["code"] for result in reply["results"]] == ["ok"] * count
    assert campus.balance(STUDENT) == 1_000_000 - (count if code == "ok" else 0)


@pytest.mark.parametrize("records", [{"id": 1}, "records", 5])
def test_records_that_are_no_array_are_bad_request(campus, records):
    assert campus.send(campus.pos, "offline", records=records) == {
        "t": "offline", "code": "bad_request"}


def test_each_record_is_checked_in_order(campus):
    now = campus.clock.now_ms()
    window_ms = campus.config.offline_window_s * 1000
    future_ms = limits.offline_future_s * 1000
    campus.ok(campus.pos, "debit", card=CARD, amount=100, id="a-debit")
    results = upload(
        campus,
        "not a map",
        {"id": "no-card", "amount": 1, "at": now},
        {"card": CARD, "amount": 1, "at": now},
        {"id": "", "card": CARD, "amount": 1, "at": now},
        tap(campus, "a-debit"),
        tap(campus, "bad-card", card="nope"),
        {"id": "bad-at", "card": CARD, "amount": 1, "at": "now"},
        tap(campus, "bad-amount", 0),
        tap(campus, "huge", campus.config.max_amount_fen + 1),
        tap(campus, "unknown", card="FFFF0000"),
        tap(campus, "other-school", card=CUIK_CARD),
        tap(campus, "too-old", at=now - window_ms - 1),
        tap(campus, "oldest", at=now - window_ms),
        tap(campus, "future", at=now + future_ms + 1),
        tap(campus, "soonest", at=now + future_ms),
    )
    assert [(result["id"], result["code"]) for result in results] == [
        (None, "bad_request"), ("no-card", "bad_request"), (None, "bad_request"),
        (None, "bad_request"), ("a-debit", "id_reuse"), ("bad-card", "bad_request"),
        ("bad-at", "bad_request"), ("bad-amount", "bad_amount"), ("huge", "bad_amount"),
        ("unknown", "card_unknown"), ("other-school", "wrong_school"), ("too-old", "too_old"),
        ("oldest", "ok"), ("future", "bad_request"), ("soonest", "ok")]
    assert campus.balance(STUDENT) == BALANCE - 100 - 200


def test_the_checks_of_a_record_come_in_their_order(campus):
    old = campus.clock.now_ms() - campus.config.offline_window_s * 1000 - 1
    campus.ok(campus.pos, "debit", card=CARD, amount=100, id="used")
    results = upload(
        campus,
        {"id": "used", "card": "x", "amount": 0, "at": "x"},   # 2 before 3
        {"id": "r1", "card": "x", "amount": 0, "at": 0},        # 3 before 4
        tap(campus, "r2", 0, card="FFFF0000"),                  # 4 before 5
        tap(campus, "r3", card="FFFF0000", at=old),             # 5 before 7
        tap(campus, "r4", card=CUIK_CARD, at=old),              # 6 before 7
    )
    assert [result["code"] for result in results] == [
        "id_reuse", "bad_request", "bad_amount", "card_unknown", "wrong_school"]


def test_a_record_seen_before_replays_its_result(campus):
    first = upload(campus, tap(campus, "r", 300, at=campus.clock.now_ms() - 1))
    again = upload(campus, tap(campus, "r", 300, at=campus.clock.now_ms() - 1),
                   tap(campus, "r", 300, at=campus.clock.now_ms() - 1),
                   tap(campus, "r", 301, at=campus.clock.now_ms() - 1))
    assert again == [{**first[0], "replay": True}, {**first[0], "replay": True},
                     {"id": "r", "code": "id_reuse"}]
    [within] = [upload(campus, tap(campus, "s", 5), tap(campus, "s", 5))]
    assert within[1] == {**within[0], "replay": True}
    assert campus.balance(STUDENT) == BALANCE - 305


def test_an_offline_records_id_is_taken_for_requests_too(campus):
    upload(campus, tap(campus, "shared"))
    assert campus.send(campus.pos, "debit", card=CARD, amount=100, id="shared") == {
        "t": "debit", "code": "id_reuse"}


def test_results_that_are_not_remembered_may_be_corrected_under_the_same_id(campus):
    now = campus.clock.now_ms()
    future = now + limits.offline_future_s * 1000 + 1
    assert [result["code"] for result in upload(
        campus, {"id": "a", "card": CARD, "amount": 1}, tap(campus, "b", card="bad"),
        tap(campus, "c", 0), tap(campus, "d", at=future))] == [
            "bad_request", "bad_request", "bad_amount", "bad_request"]
    corrected = upload(campus, *(tap(campus, record_id) for record_id in "abcd"))
    assert [(result["code"], "replay" in result) for result in corrected] == [("ok", False)] * 4


def test_remembered_refusals_replay(campus):
    old = campus.clock.now_ms() - campus.config.offline_window_s * 1000 - 1
    assert upload(campus, tap(campus, "u", card="FFFF0000"), tap(campus, "o", at=old)) == [
        {"id": "u", "code": "card_unknown"}, {"id": "o", "code": "too_old"}]
    campus.open_person("WH20230002", "FFFF0000", balance=1_000)
    assert upload(campus, tap(campus, "u", card="FFFF0000")) == [
        {"id": "u", "code": "card_unknown", "replay": True}]


@pytest.mark.parametrize("how", ["lost", "replaced"])
def test_taps_after_a_card_was_lost_or_replaced_are_flagged(campus, how):
    if how == "lost":
        campus.ok(campus.service, "lost", card=CARD)
    else:
        campus.ok(campus.admin, "replace_card", account=STUDENT, old=CARD, new="0A0A0A0A")
    changed_at = campus.clock.now_ms()
    campus.clock.advance(60)
    before, same, after = upload(campus, tap(campus, "before", at=changed_at - 1),
                                 tap(campus, "same", at=changed_at),
                                 tap(campus, "after", at=changed_at + 1))
    assert ("flag" not in before, "flag" not in same, after["flag"]) == (True, True, "after_lost")
    assert campus.journal(after["txn"])["flag"] == "after_lost"
    assert "flag" not in campus.journal(before["txn"])


def test_taps_made_while_a_card_was_lost_are_flagged_though_it_was_found_before_the_upload(
        campus):
    """The outside test's repro: lost, a thief's offline tap, found, then the upload: the tap
    was applied unflagged (and audit agreed), so the card office could not find it. The
    card's lost periods are kept; a tap inside one is flagged at any upload."""
    lost_at = campus.clock.now_ms()
    campus.ok(campus.service, "lost", card=CARD)
    campus.clock.advance(3_600)
    found_at = campus.clock.now_ms()
    campus.ok(campus.service, "found", card=CARD)
    campus.clock.advance(3_600)
    before, thief, after = upload(campus, tap(campus, "before", at=lost_at - 1),
                                  tap(campus, "thief", at=lost_at + 60_000),
                                  tap(campus, "after", at=found_at + 1))
    assert (before.get("flag"), thief.get("flag"), after.get("flag")) == (
        None, "after_lost", None)
    assert campus.journal(thief["txn"])["flag"] == "after_lost"
    campus.commit()
    campus.close()
    from switch.persistence.audit import audit
    report = audit(str(campus.path))
    assert report.sound, report.problems


def test_a_cards_lost_periods_are_bounded_the_oldest_let_go(campus):
    periods = []
    for _ in range(limits.card_lost_periods_kept_max + 1):
        lost_at = campus.clock.now_ms()
        campus.ok(campus.service, "lost", card=CARD)
        campus.clock.advance(60)
        periods.append((lost_at, campus.clock.now_ms()))
        campus.ok(campus.service, "found", card=CARD)
        campus.clock.advance(60)
    assert [tuple(period) for period in campus.ledger.lost_periods(CARD)] == periods[1:]
    oldest, newest = upload(campus, tap(campus, "oldest", at=periods[0][0] + 1),
                            tap(campus, "newest", at=periods[-1][0] + 1))
    assert (oldest.get("flag"), newest.get("flag")) == (None, "after_lost")
    campus.commit()
    campus.close()
    from switch.persistence.audit import audit
    report = audit(str(campus.path))
    assert report.sound, report.problems


def test_offline_records_count_on_the_day_they_were_tapped(campus):
    campus.ok(campus.service, "set_limits", account=STUDENT, per_tx=1_000, daily=1_000,
              no_pin=1_000)
    campus.set_local_time("2026-11-19T08:00:00")
    yesterday = campus.local_ms("2026-11-18T12:00:00")
    upload(campus, tap(campus, "y", 900, at=yesterday))
    assert campus.code(campus.pos, "debit", card=CARD, amount=1_000, id=1) == "ok"
    upload(campus, tap(campus, "t", 1))   # today's: now over the daily limit
    assert campus.code(campus.pos, "debit", card=CARD, amount=1, id=2) == "limit_daily"
    assert campus.send(campus.pos, "settle", day="2026-11-18", count=1, total=900)["match"]
    assert campus.send(campus.pos, "settle", day="2026-11-19", count=2, total=1_001)["match"]


# ---------------------------------------------------------------- settle (§4.11)
def test_settle_gives_the_switchs_count_and_total_for_the_terminal_and_day(campus):
    day = campus.local_day()
    campus.ok(campus.pos, "debit", card=CARD, amount=100, id=1)
    campus.ok(campus.pos, "debit", card=CARD, amount=250, id=2)
    campus.ok(campus.pos, "debit", card=CARD, amount=999, id=3)
    campus.ok(campus.pos, "reverse", target=3)
    campus.ok(campus.pos2, "debit", card=CARD, amount=7, id=1)   # another terminal
    campus.send(campus.pos, "debit", card=CARD, amount=BALANCE, pin=PIN, id=4)  # declined
    assert campus.send(campus.pos, "settle", day=day, count=2, total=350) == {
        "t": "settle", "code": "ok", "count": 2, "total": 350, "match": True}
    assert campus.send(campus.pos, "settle", day=day, count=2, total=351) == {
        "t": "settle", "code": "ok", "count": 2, "total": 350, "match": False}
    assert campus.send(campus.pos, "settle", day=day, count=3, total=350)["match"] is False
    assert campus.send(campus.pos, "settle", day="2020-01-01", count=0, total=0) == {
        "t": "settle", "code": "ok", "count": 0, "total": 0, "match": True}


def test_a_record_stamped_ahead_is_never_applied_twice_after_its_id_is_forgotten(campus):
    """Its id is remembered (by default) until well after the record itself is too old: a
    re-upload once the id is forgotten is `too_old`, never a second debit."""
    ahead_at = campus.clock.now_ms() + limits.offline_future_s * 1000  # the most skew allowed
    [first] = upload(campus, tap(campus, "ahead", 300, at=ahead_at))
    assert first["code"] == "ok"
    campus.write_back_ids()
    campus.clock.advance(campus.config.idempotency_retention_s + 1)
    assert campus.forget_old_ids() >= 1
    campus.commit()
    [again] = upload(campus, tap(campus, "ahead", 300, at=ahead_at))
    assert again["code"] == "too_old", again
    assert campus.account(STUDENT)["balance"] == BALANCE - 300


def test_a_record_over_the_offline_cap_is_refused_and_said(make_world, caplog):
    # The outside test's money pass: one upload of 500 records at max_amount took an account
    # to -49,999,987.75 yuan (v1 applies offline records past every limit). A school that
    # sets `offline_amount_max_fen` near its largest real tap refuses the rest, and says so.
    from tests.ledger.conftest import populate
    world = populate(make_world(offline_amount_max_fen=5_000))
    caplog.set_level("WARNING", logger="switch.ledger")
    results = upload(world, tap(world, "ok", amount=5_000), tap(world, "big", amount=5_001))
    assert [result["code"] for result in results] == ["ok", "bad_amount"]
    assert world.balance(STUDENT) == BALANCE - 5_000
    said = [r.getMessage() for r in caplog.records if "offline_over_cap" in r.getMessage()]
    assert said == [f"event=offline_over_cap who={world.pos.who} id=big card={CARD} "
                    f"amount_fen=5001 cap_fen=5000"]
    # Not remembered, as bad input is not (§4.10): resent, it is refused again.
    [again] = upload(world, tap(world, "big", amount=5_001))
    assert again["code"] == "bad_amount" and world.balance(STUDENT) == BALANCE - 5_000


def test_the_offline_cap_caps_nothing_past_max_amount_unless_set_as_v1_has_it(campus):
    assert campus.config.offline_amount_max_fen >= campus.config.max_amount_fen
    [result] = upload(campus, tap(campus, "large", amount=campus.config.max_amount_fen))
    assert result["code"] == "ok"
