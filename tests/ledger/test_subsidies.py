"""Subsidies (补助, docs/PROTOCOL.md §4.17): issued by batch into a purse of their own, spent
before the student's own money, each part given back by a reversal, lapsing at the end of
their term in the school's time zone, cleared (never paid out) when the account closes."""

import pytest

from switch.cli.datadir import open_data_dir
from switch.ledger.housekeeping import tick
from switch.persistence.audit import audit
from switch.persistence.keys import SUBSIDY_GRANT
from tests.ledger.conftest import BALANCE, CARD, ID_LAST6, ROOM, STUDENT, limits


def _sound(world) -> bool:
    """Commit, and audit the data dir with this process's environment closed."""
    world.commit()
    world.store.close()
    report = audit(str(world.path))
    world.store = open_data_dir(str(world.path))
    world._open_ledger()
    assert report.sound, report.summary()
    return True


def _issue(world, amount, batch="2026-11 meals", expires="2026-11-30", account=STUDENT, **more):
    return world.send(world.admin, "subsidy", account=account, amount=amount, expires=expires,
                      batch=batch, id=world.fresh_id(), **more)


@pytest.fixture
def term(campus):
    campus.set_local_time("2026-11-18T12:00:00")
    return campus


def test_issuing_fills_the_purse_and_writes_a_subsidy_record(term):
    reply = _issue(term, 3000)
    assert reply == {"t": "subsidy", "code": "ok", "txn": term.last_txn, "balance": BALANCE,
                     "subsidy": 3000, "available": BALANCE + 3000}
    record = term.journal(reply["txn"])
    assert (record["kind"], record["amount"], record["from_subsidy"], record["balance"],
            record["subsidy"], record["batch"], record["expires"]) == (
        "subsidy", 3000, -3000, BALANCE, 3000, "2026-11 meals", "2026-11-30")
    account = term.account(STUDENT)
    assert (account["balance"], account["subsidy"], account["available"]) == (
        BALANCE, 3000, BALANCE + 3000)


@pytest.mark.parametrize("fields, code", [
    ({"account": ROOM}, "bad_request"),                       # person accounts only
    ({"account": "WH29999999"}, "unknown_account"),
    ({"expires": "2026-02-30"}, "bad_request"),               # not a real day
    ({"expires": "2026-11-17"}, "bad_request"),               # its term is over
    ({"batch": ""}, "bad_request"),
    ({"batch": "x" * (limits.source_chars_max + 1)}, "bad_request"),
    ({"amount": 0}, "bad_amount"),
    ({"amount": limits.max_amount_fen + 1}, "bad_amount"),
])
def test_bad_subsidies_are_refused_and_change_nothing(term, fields, code):
    before = term.last_txn
    request = {"account": STUDENT, "amount": 100, "expires": "2026-11-30", "batch": "b",
               **fields}
    assert term.code(term.admin, "subsidy", id="s", **request) == code
    assert term.last_txn == before and term.account(STUDENT)["subsidy"] == 0


def test_a_closed_account_gets_no_subsidy_and_a_batch_keeps_one_term(term):
    _issue(term, 100, batch="b")
    assert _issue(term, 100, batch="b", expires="2026-12-31")["code"] == "bad_request"
    assert _issue(term, 100, batch="b")["subsidy"] == 200                 # same term: adds
    term.open_person("WH20239999")
    term.ok(term.admin, "close_account", account="WH20239999")
    assert _issue(term, 100, account="WH20239999")["code"] == "account_closed"


def test_batches_per_account_are_bounded(term):
    for number in range(limits.subsidy_batches_per_account_max):
        assert _issue(term, 1, batch=f"b{number}")["code"] == "ok"
    assert _issue(term, 1, batch="one-more")["code"] == "bad_request"
    assert _issue(term, 1, batch="b0")["code"] == "ok"        # an existing batch may grow


def test_a_payment_spends_the_subsidy_first_then_the_balance(term):
    _issue(term, 500)
    first = term.send(term.pos, "debit", card=CARD, amount=300, id="d1")
    assert (first["balance"], first["subsidy"], first["available"]) == (
        BALANCE, 200, BALANCE + 200)
    record = term.journal(first["txn"])
    assert (record["amount"], record["from_subsidy"], record["subsidy"]) == (-300, 300, 200)
    second = term.send(term.pos, "debit", card=CARD, amount=700, id="d2")
    assert (second["balance"], "subsidy" in second) == (BALANCE - 500, False)
    assert term.journal(second["txn"])["from_subsidy"] == 200
    term.commit()                                  # history reads committed records
    history = term.ok(term.service, "history", account=STUDENT, limit=2)["items"]
    assert [(item["amount"], item["from_subsidy"]) for item in history] == [
        (-700, 200), (-300, 300)]


def test_funds_count_both_purses(term):
    term.ok(term.service, "set_limits", account=STUDENT, per_tx=50_000, daily=100_000)
    _issue(term, 1000)
    assert term.code(term.pos, "debit", card=CARD, amount=BALANCE + 1001, id="x", pin="123456"
                     ) == "insufficient_funds"
    reply = term.send(term.pos, "debit", card=CARD, amount=BALANCE + 1000, id="y", pin="123456")
    assert (reply["code"], reply["balance"], reply["available"]) == ("ok", 0, 0)


def test_a_reversal_puts_each_part_back_where_it_came_from(term):
    _issue(term, 300, batch="early", expires="2026-11-20")
    _issue(term, 300, batch="late", expires="2026-11-30")
    paid = term.send(term.pos, "debit", card=CARD, amount=1000, id="d")
    # The batch that lapses first is spent first.
    assert term.journal(paid["txn"])["subsidy_parts"] == [
        ["early", 300, "2026-11-20", term.local_ms("2026-11-21T00:00:00")],
        ["late", 300, "2026-11-30", term.local_ms("2026-12-01T00:00:00")]]
    back = term.ok(term.pos, "reverse", target="d")
    assert (back["balance"], back["subsidy"]) == (BALANCE, 600)
    record = term.journal(back["txn"])
    assert (record["amount"], record["from_subsidy"]) == (1000, -600)
    assert term.ledger.subsidy_batches.get(STUDENT, "early")["remaining"] == 300
    assert term.ledger.subsidy_batches.get(STUDENT, "late")["remaining"] == 300


def test_a_share_given_back_after_its_batchs_name_was_granted_for_a_new_term_lapses_at_once(
        term):
    # November's `meals` spent, lapsed at midnight, December's `meals` granted under the same
    # name (README: a batch named the same every month); then November's payment reversed.
    # Its share went into December's batch and lived a month past its term (the outside
    # test's second pass); `audit` called the books sound.
    term.set_local_time("2026-11-30T22:00:00")
    _issue(term, 3000, batch="meals", expires="2026-11-30")
    term.ok(term.pos, "debit", card=CARD, amount=2000, id="d1")
    term.set_local_time("2026-12-01T00:00:05")
    for _ in range(3):   # housekeeping's passes take their tasks in turn
        term.housekeep()
    assert term.account(STUDENT)["subsidy"] == 0           # November's last 1000 lapsed
    _issue(term, 3000, batch="meals", expires="2026-12-31")
    term.set_local_time("2026-12-01T10:00:00")
    back = term.ok(term.pos, "reverse", target="d1")
    assert (back["balance"], back["subsidy"]) == (BALANCE, 3000)
    lapse = term.journal(back["txn"] + 1)
    assert (lapse["kind"], lapse["amount"], lapse["from_subsidy"], lapse["batch"],
            lapse["ref"]) == ("subsidy_expire", -2000, 2000, "meals", back_id(term, back))
    assert term.ledger.subsidy_batches.get(STUDENT, "meals")["remaining"] == 3000
    term.set_local_time("2026-12-20T10:00:00")
    for _ in range(3):
        term.housekeep()
    assert term.account(STUDENT)["subsidy"] == 3000
    assert _sound(term)


def back_id(world, reply) -> str:
    return world.journal(reply["txn"])["ref"]


def test_a_batch_lapses_at_the_end_of_its_day_in_the_schools_time_zone(term):
    _issue(term, 400, batch="early", expires="2026-11-20")
    _issue(term, 100, batch="late", expires="2026-11-30")
    term.send(term.pos, "debit", card=CARD, amount=150, id="d")
    term.commit()
    term.set_local_time("2026-11-20T23:59:59.999")
    tick(term.ledger)
    assert term.account(STUDENT)["subsidy"] == 350
    term.set_local_time("2026-11-21T00:00:00")
    tick(term.ledger)
    record = term.journal(term.last_txn)
    assert (record["kind"], record["amount"], record["from_subsidy"], record["batch"],
            record["balance"], record["subsidy"]) == (
        "subsidy_expire", -250, 250, "early", BALANCE, 100)
    assert term.account(STUDENT)["subsidy"] == 100
    term.commit()
    before = term.last_txn
    tick(term.ledger)
    assert term.last_txn == before                      # lapsed once
    assert _sound(term)


def test_closing_clears_the_subsidy_and_pays_none_of_it_out(term):
    term.open_person("WH20239999")
    _issue(term, 800, account="WH20239999")
    closed = term.ok(term.admin, "close_account", account="WH20239999")
    # The subsidy lapses first: the closing record stays the account's last (§7.3 audit).
    record = term.journal(closed["txn"] - 1)
    assert (record["kind"], record["amount"], record["from_subsidy"], record["balance"]) == (
        "subsidy_expire", -800, 800, 0)
    account = term.account("WH20239999")
    assert (account["status"], account["balance"], account["subsidy"]) == ("closed", 0, 0)
    assert _sound(term)


def test_a_refund_pays_the_balance_only_and_the_subsidy_lapses_first(term):
    term.open_person("WH20239998")
    term.credit("WH20239998", 1_250)
    _issue(term, 800, account="WH20239998")
    refunded = term.ok(term.admin, "refund", account="WH20239998")
    assert (refunded["amount"], refunded["balance"]) == (1_250, 0)
    record = term.journal(refunded["txn"] - 1)
    assert (record["kind"], record["from_subsidy"]) == ("subsidy_expire", 800)
    assert term.journal(refunded["txn"])["amount"] == -1_250
    account = term.account("WH20239998")
    assert (account["status"], account["balance"], account["subsidy"]) == ("closed", 0, 0)
    assert _sound(term)


def test_a_refused_close_or_refund_leaves_the_subsidy_as_it_was(term):
    term.open_person("WH20239997")
    term.credit("WH20239997", 500)
    _issue(term, 800, account="WH20239997")
    last = term.last_txn
    assert term.code(term.admin, "close_account", account="WH20239997",
                     id="close") == "not_empty"
    assert term.last_txn == last and term.account("WH20239997")["subsidy"] == 800


def test_holds_reserve_against_both_purses_and_complete_spends_the_subsidy_first(term):
    _issue(term, 500)
    hold = term.ok(term.water, "hold", card=CARD, amount=800)
    assert (hold["balance"], hold["subsidy"], hold["available"]) == (BALANCE, 500, BALANCE - 300)
    done = term.ok(term.water, "complete", hold=hold["hold"], amount=600)
    assert (done["balance"], "subsidy" in done) == (BALANCE - 100, False)
    assert term.journal(done["txn"])["from_subsidy"] == 500


def test_offline_taps_spend_the_subsidy_first(term):
    _issue(term, 500)
    reply = term.send(term.pos, "offline", records=[
        {"id": "o1", "card": CARD, "amount": 200, "at": term.clock.now_ms()}])
    txn = reply["results"][0]["txn"]
    assert term.journal(txn)["from_subsidy"] == 200
    assert term.account(STUDENT)["subsidy"] == 300


def test_with_no_subsidy_replies_and_records_are_as_before(term):
    reply = term.send(term.pos, "debit", card=CARD, amount=100, id="d")
    assert "subsidy" not in reply
    assert "from_subsidy" not in term.journal(reply["txn"])


def test_audit_is_sound_after_subsidies_are_issued_spent_and_reversed(term):
    _issue(term, 500)
    term.send(term.pos, "debit", card=CARD, amount=300, id="d1")
    term.send(term.pos, "debit", card=CARD, amount=700, id="d2")
    term.ok(term.pos, "reverse", target="d2")
    assert _sound(term)


def _shower_over_the_terms_end(world, hold_fen):
    """Balance 100 fen (an offline tap took the rest, before the subsidy), a batch of 500
    whose term ends on the 20th, and a shower held at 23:58 that day for `hold_fen`."""
    world.send(world.pos, "offline", records=[
        {"id": "o1", "card": CARD, "amount": BALANCE - 100, "at": world.clock.now_ms()}])
    _issue(world, 500, batch="early", expires="2026-11-20")
    world.set_local_time("2026-11-20T23:58:00")
    hold = world.ok(world.water, "hold", card=CARD, amount=hold_fen)
    world.commit()
    world.set_local_time("2026-11-21T00:00:01")
    return hold


def test_a_batch_open_holds_stand_on_lapses_after_them_not_under_them(term):
    # The hold reserved 100 of the balance and all 500 of the subsidy. Had the batch lapsed
    # at midnight, its complete would have taken the balance to -500.
    hold = _shower_over_the_terms_end(term, 600)
    before = term.last_txn
    tick(term.ledger)
    assert term.last_txn == before                      # all of it kept for the hold
    account = term.account(STUDENT)
    assert (account["balance"], account["subsidy"], account["available"]) == (100, 500, 0)
    assert term.code(term.pos, "debit", card=CARD, amount=1, id="d") == "insufficient_funds"
    done = term.ok(term.water, "complete", hold=hold["hold"], amount=600)
    assert (done["balance"], term.journal(done["txn"])["from_subsidy"]) == (0, 500)
    term.commit()
    tick(term.ledger)
    assert term.last_txn == before + 1                  # the complete; nothing left to lapse
    assert term.ledger.subsidy_batches.get(STUDENT, "early") is None
    assert _sound(term)


def test_what_a_hold_does_not_stand_on_lapses_at_once_the_rest_once_it_is_voided(term):
    hold = _shower_over_the_terms_end(term, 300)        # 100 of the balance, 200 of the subsidy
    tick(term.ledger)
    record = term.journal(term.last_txn)
    assert (record["kind"], record["amount"], record["from_subsidy"], record["subsidy"]) == (
        "subsidy_expire", -300, 300, 200)
    term.commit()
    term.ok(term.water, "void", hold=hold["hold"], id="v")
    term.commit()
    tick(term.ledger)
    record = term.journal(term.last_txn)
    assert (record["kind"], record["amount"], record["subsidy"]) == ("subsidy_expire", -200, 0)
    account = term.account(STUDENT)
    assert (account["balance"], account["subsidy"], account["available"]) == (100, 0, 100)
    assert _sound(term)


def test_a_batch_kept_for_a_hold_holds_back_no_other_batch(term, monkeypatch):
    monkeypatch.setattr(limits, "subsidies_expired_per_pass_max", 1)
    other = "WH20230002"
    term.ok(term.admin, "open_account", account=other, school="WH", kind="person",
            id_last6=ID_LAST6, id="open-other")
    _issue(term, 300, batch="early", expires="2026-11-20", account=other)
    # STUDENT's batch ends with the same day and sorts first: kept whole for its hold.
    _shower_over_the_terms_end(term, 600)
    before = term.last_txn
    tick(term.ledger)
    record = term.journal(term.last_txn)
    assert term.last_txn == before + 1
    assert (record["kind"], record["account"], record["amount"]) == (
        "subsidy_expire", other, -300)
    assert term.account(STUDENT)["subsidy"] == 500


def test_a_housekeeping_pass_clears_at_most_its_bound_of_batches(term, monkeypatch):
    monkeypatch.setattr(limits, "subsidies_expired_per_pass_max", 2)
    for batch in ("a", "b", "c"):
        _issue(term, 10, batch=batch, expires="2026-11-18")
    term.commit()
    term.set_local_time("2026-11-19T00:00:00")
    before = term.last_txn
    tick(term.ledger)
    assert term.last_txn == before + 2                  # N: the bound
    term.commit()
    tick(term.ledger)
    assert term.last_txn == before + 3                  # the N+1st on the next pass
    assert term.account(STUDENT)["subsidy"] == 0


def _forget_ids(world) -> None:
    """Past the id retention (§4.4), and every id the sweep may forget forgotten."""
    world.write_back_ids()
    world.clock.advance(world.config.idempotency_retention_s + 1)
    while world.forget_old_ids():
        world.commit()
    world.commit()


def test_an_import_run_again_after_its_ids_were_forgotten_grants_nothing(term):
    # An operator reruns last week's import: same batch, same ids, still inside the term.
    first = term.send(term.admin, "subsidy", account=STUDENT, amount=3000, expires="2026-12-31",
                      batch="2026-12 meals", id="subsidy-abc-WH20230001")
    assert first["code"] == "ok"
    _forget_ids(term)
    before = term.last_txn
    again = term.send(term.admin, "subsidy", account=STUDENT, amount=3000, expires="2026-12-31",
                      batch="2026-12 meals", id="subsidy-abc-WH20230001")
    assert again == {"t": "subsidy", "code": "exists"}
    assert term.last_txn == before and term.account(STUDENT)["subsidy"] == 3000
    # Another id into the same batch still adds to it (§4.17: the same batch and term again).
    assert _issue(term, 100, batch="2026-12 meals", expires="2026-12-31")["subsidy"] == 3100
    assert _sound(term)


def test_a_grant_spent_to_nothing_is_still_not_granted_twice(term):
    # The batch's own record goes once its money is spent; the grant's id stays.
    assert term.send(term.admin, "subsidy", account=STUDENT, amount=500, expires="2026-12-31",
                     batch="b", id="x")["code"] == "ok"
    term.send(term.pos, "debit", card=CARD, amount=500, id="d")
    assert term.ledger.subsidy_batches.get(STUDENT, "b") is None
    _forget_ids(term)
    assert term.send(term.admin, "subsidy", account=STUDENT, amount=500, expires="2026-12-31",
                     batch="b", id="x")["code"] == "exists"
    # Nor with the last day typed otherwise while the first term runs (the batch that would
    # refuse another term is gone), by an admin whose ids are its own; nor another amount.
    term.ok(term.admin, "add_credential", who="office-2", role="admin")
    office = term.credential("office-2")
    for changed in ({"expires": "2026-12-30"}, {"amount": 600}):
        assert term.send(office, "subsidy", **{"account": STUDENT, "amount": 500, "batch": "b",
                                               "expires": "2026-12-31", "id": "x",
                                               **changed})["code"] == "id_reuse"
    assert term.account(STUDENT)["subsidy"] == 0


def test_another_admin_sending_the_same_grant_is_refused_while_the_first_is_remembered(term):
    term.ok(term.admin, "add_credential", who="office-2", role="admin")
    other = term.credential("office-2")
    grant = {"account": STUDENT, "amount": 800, "expires": "2026-11-30", "batch": "b",
             "id": "g1"}
    assert term.send(term.admin, "subsidy", **grant)["code"] == "ok"
    assert term.send(term.admin, "subsidy", **grant)["replay"] is True   # §4.4, as before
    assert term.send(other, "subsidy", **grant) == {"t": "subsidy", "code": "exists"}
    assert term.send(other, "subsidy", **{**grant, "account": "WH20239999", "id": "g2"})[
        "code"] == "unknown_account"                       # the checks before it come first
    assert term.account(STUDENT)["subsidy"] == 800


def test_grants_are_kept_400_days_past_the_end_of_their_term_in_any_zone_then_forgotten(
        term, monkeypatch):
    for number in range(3):
        term.ok(term.admin, "subsidy", account=STUDENT, amount=1, expires="2026-11-20",
                batch="b", id=f"g{number}")
    term.ok(term.admin, "subsidy", account=STUDENT, amount=1, expires="2026-11-30", batch="c",
            id="g9")
    term.commit()
    assert len(term.committed("subsidy_grants")) == 4
    kept_ms = limits.subsidy_grants_kept_s * 1000
    # 2026-11-22 00:00 UTC (the 20th is over everywhere), plus the days kept, less a minute.
    term.clock.ms = 1_795_305_600_000 + kept_ms - 60_000
    term.housekeep()
    assert len(term.committed("subsidy_grants")) == 4
    term.clock.ms += 5 * 86_400_000               # five days later than it might have been
    monkeypatch.setattr(limits, "subsidy_grants_forgotten_per_pass_max", 2)
    term.housekeep()
    assert len(term.committed("subsidy_grants")) == 2      # at most the pass's bound
    term.housekeep()
    assert len(term.committed("subsidy_grants")) == 1      # the later term's stays
    day = 20_787                                             # 2026-11-30, days since 1970
    [(grant, value)] = term.committed("subsidy_grants").items()
    assert SUBSIDY_GRANT.unpack(value) == (day, 1)            # its last day, its amount
    assert list(term.committed("subsidy_grant_expiry")) == [day.to_bytes(8, "big") + grant]
    # What it forgot up to: the 20th, not the day below which it looked (the 25th).
    assert term.committed("meta")[b"subsidy_grants_forgotten_below"] == (
        20_778).to_bytes(8, "big")
    assert _sound(term)            # audit expects no grant of a term over


@pytest.fixture
def offices(term):
    for who in ("office-2", "office-3"):
        term.ok(term.admin, "add_credential", who=who, role="admin")
    return term


GRANT = {"account": STUDENT, "amount": 500, "batch": "伙食补助", "id": "subsidy-tag-WH20230001"}


def test_a_batch_name_used_again_for_the_next_term_is_granted_on_its_first_day(offices):
    # A school that names every month's batch the same: the import's ids repeat.
    assert offices.code(offices.admin, "subsidy", expires="2026-11-30", **GRANT) == "ok"
    offices.commit()
    offices.set_local_time("2026-12-01T09:00:00")         # November is over in Wuhan
    offices.housekeep()
    reply = offices.send(offices.credential("office-2"), "subsidy", expires="2026-12-31",
                         **GRANT)
    assert reply["code"] == "ok" and offices.account(STUDENT)["subsidy"] == 500
    # ... and that December grant is then made once only.
    assert offices.code(offices.credential("office-3"), "subsidy", expires="2026-12-31",
                        **GRANT) == "exists"
    assert offices.account(STUDENT)["subsidy"] == 500
    assert _sound(offices)


def test_forgetting_an_old_term_never_forgets_a_newer_grant_under_the_same_key(offices):
    assert offices.code(offices.admin, "subsidy", expires="2026-11-20", **GRANT) == "ok"
    offices.commit()
    offices.set_local_time("2026-11-21T12:00:00")         # over in Wuhan, not west of UTC
    offices.housekeep()
    assert len(offices.committed("subsidy_grants")) == 1
    offices.set_local_time("2026-11-22T12:00:00")
    tick(offices.ledger)                  # forgets the November 20 grant, not committed yet
    assert offices.code(offices.credential("office-2"), "subsidy", expires="2026-11-30",
                        **GRANT) == "ok"
    tick(offices.ledger)                  # passes over the entry it forgot, still committed
    offices.commit()
    assert offices.code(offices.credential("office-3"), "subsidy", expires="2026-11-30",
                        **GRANT) == "exists"
    assert offices.account(STUDENT)["subsidy"] == 500


@pytest.mark.parametrize("expires", ["9999-12-31", "0001-01-01"])
def test_a_last_day_at_the_end_of_the_calendar_is_bad_request_not_internal(term, expires):
    assert term.code(term.admin, "subsidy", account=STUDENT, amount=1, expires=expires,
                     batch="b", id="far") == "bad_request"
    assert term.account(STUDENT)["subsidy"] == 0


def test_the_longest_batch_and_id_of_four_byte_characters_commit(term):
    term.commit()
    # 64 characters each, 4 bytes each in UTF-8: more than an LMDB key may hold, unhashed.
    reply = term.send(term.admin, "subsidy", account=STUDENT, amount=1, expires="2026-11-30",
                      batch="𠀀" * limits.source_chars_max, id="𠀀" * 64)
    credit = term.send(term.service, "credit", account=STUDENT, amount=7, source="t", id="c1")
    assert reply["code"] == credit["code"] == "ok"
    term.commit()
    assert term.code(term.admin, "subsidy", account=STUDENT, amount=1, expires="2026-11-30",
                     batch="𠀀" * limits.source_chars_max, id="𠀀" * 64) == "ok"   # a replay
    assert term.account(STUDENT)["subsidy"] == 1


def test_a_clock_weeks_ahead_then_put_right_pays_no_grant_twice(offices):
    """A switch started with its clock weeks ahead believes it (there is nothing to compare
    it with): the batch lapses early, but the grant is kept, and sent again from another
    admin once the clock is put right it is `exists`, not paid twice."""
    grant = {"account": STUDENT, "amount": 100, "expires": "2026-11-30", "batch": "2026-11",
             "id": "g"}
    offices.ok(offices.admin, "subsidy", **grant)
    assert offices.code(offices.pos, "debit", card=CARD, amount=60, id="d") == "ok"
    offices.commit()
    offices.set_local_time("2027-01-10T12:00:00")
    offices.housekeep()
    assert offices.account(STUDENT)["subsidy"] == 0            # the 40 left lapsed early
    assert len(offices.committed("subsidy_grants")) == 1
    offices.set_local_time("2026-11-18T13:00:00")
    assert offices.code(offices.credential("office-2"), "subsidy", **grant) == "exists"
    assert offices.account(STUDENT)["subsidy"] == 0
    assert _sound(offices)


def test_an_offline_record_refused_too_old_on_a_clock_ahead_is_taken_once_put_right(offices):
    """Ten days ahead is believed (no far-ahead pacing), and a real tap looks too old: not
    remembered (an extension), it is charged once the clock is put right, and only once."""
    tapped_at = offices.clock.now_ms() - 60_000
    offices.clock.set_wall(10 * 86_400)
    record = {"id": "real-2", "card": CARD, "amount": 30, "at": tapped_at}
    assert offices.ok(offices.pos, "offline", records=[record])["results"][0]["code"] == \
        "too_old"
    offices.clock.set_wall(-10 * 86_400)
    balance = offices.balance(STUDENT)
    first = offices.ok(offices.pos, "offline", records=[record])["results"][0]
    again = offices.ok(offices.pos, "offline", records=[record])["results"][0]
    assert (first["code"], again.get("replay")) == ("ok", True)
    assert offices.balance(STUDENT) == balance - 30
