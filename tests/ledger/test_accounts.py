"""Service requests on an account (docs/PROTOCOL.md §4.7, §4.14, §4.15): `credit`, `account`,
`history`, `set_limits` and the PIN requests."""

import pytest

from tests.ledger.conftest import (BALANCE, CARD, CUIK_STUDENT, ID_LAST6, PIN, ROOM, STUDENT,
                                   limits, populate)

WRONG_PIN = "000000"


def test_a_credit_adds_the_money_and_writes_its_record(campus):
    reply = campus.send(campus.service, "credit", account=STUDENT, amount=5_000,
                        source="alipay", id="2026111800001")
    txn = campus.last_txn
    assert reply == {"t": "credit", "code": "ok", "txn": txn, "balance": BALANCE + 5_000,
                     "available": BALANCE + 5_000}
    record = campus.journal(txn)
    assert (record["kind"], record["amount"], record["source"], record["ref"], record["who"],
            record["merchant"]) == ("credit", 5_000, "alipay", "2026111800001", "mini-program",
                                    None)


def test_credit_checks_its_amount_then_the_account(campus):
    def credit(service, account, amount=100):
        return campus.send(service, "credit", account=account, amount=amount, source="s",
                           id=campus.fresh_id())["code"]

    max_amount = campus.config.max_amount_fen
    assert credit(campus.service, "WH404", amount=0) == "bad_amount"
    assert credit(campus.service, STUDENT, amount=max_amount + 1) == "bad_amount"
    assert credit(campus.service, "WH404") == "unknown_account"
    assert credit(campus.wh_service, CUIK_STUDENT) == "wrong_school"
    assert credit(campus.cuik_service, CUIK_STUDENT) == "ok"
    assert credit(campus.service, STUDENT, amount=max_amount) == "ok"
    assert campus.balance(STUDENT) == BALANCE + max_amount


def test_a_credit_may_not_bring_a_balance_past_2_to_the_61(make_world):
    """Half the purse's range (docs/PROTOCOL.md §4.15, `credit`): what a reversal gives back
    fits."""
    world = make_world(max_amount_fen=2**62)
    world.open_person(STUDENT, balance=BALANCE)
    assert limits.purse_fill_fen_max == 2**61
    assert world.send(world.admin, "credit", account=STUDENT, amount=2**61 - BALANCE + 1,
                      source="s", id=1) == {"t": "credit", "code": "bad_amount"}
    assert world.send(world.admin, "credit", account=STUDENT, amount=2**61 - BALANCE,
                      source="s", id=2)["balance"] == 2**61


def test_account_shows_a_utility_accounts_utility_and_power(campus):
    assert campus.send(campus.service, "account", account=ROOM) == {
        "t": "account", "code": "ok", "account": ROOM, "school": "WH", "kind": "utility",
        "status": "active", "pin_locked": False, "balance": BALANCE, "available": BALANCE,
        "cards": [], "limits": {"per_tx": 50_000, "daily": 100_000, "no_pin": 5_000},
        "holder": None, "utility": "both", "power": True}


@pytest.mark.parametrize("t", ["account", "history"])
def test_reading_an_account_checks_it_exists_and_is_of_the_school(campus, t):
    assert campus.send(campus.service, t, account="WH404") == {"t": t, "code": "unknown_account"}
    assert campus.send(campus.wh_service, t, account=CUIK_STUDENT) == {
        "t": t, "code": "wrong_school"}
    assert campus.code(campus.cuik_service, t, account=CUIK_STUDENT) == "ok"


# ---------------------------------------------------------------- history
def test_history_lists_committed_records_newest_first(campus):
    campus.ok(campus.pos, "debit", card=CARD, amount=100, id="d")
    assert [item["kind"] for item in campus.send(campus.service, "history",
                                                 account=STUDENT)["items"]] == [
        "credit", "issue_card", "open_account"]          # the debit is not committed yet
    campus.commit()
    reply = campus.send(campus.service, "history", account=STUDENT)
    debit = campus.journal(campus.last_txn)
    assert reply["items"][0] == {"txn": debit["txn"], "at": debit["at"], "kind": "debit",
                                 "amount": -100, "from_subsidy": 0, "balance": BALANCE - 100,
                                 "who": "WH-POS-1", "merchant": "WH-POS-1", "card": CARD}
    assert reply["time_zone"] == "Asia/Shanghai"
    assert reply["items"][-1]["card"] is None          # open_account names no card
    assert [item["kind"] for item in reply["items"]] == [
        "debit", "credit", "issue_card", "open_account"]
    assert reply["next"] is None


def test_history_pages_with_before_and_limit(campus):
    for n in range(5):
        campus.ok(campus.pos, "debit", card=CARD, amount=1 + n)
    campus.commit()
    every = [item["txn"] for item in campus.send(campus.service, "history", account=STUDENT,
                                                 limit=limits.history_limit_max)["items"]]
    assert len(every) == 8 and every == sorted(every, reverse=True)
    pages, before = [], None
    while True:
        fields = {} if before is None else {"before": before}
        reply = campus.send(campus.service, "history", account=STUDENT, limit=3, **fields)
        pages.append([item["txn"] for item in reply["items"]])
        before = reply["next"]
        if before is None:
            break
    assert pages == [every[:3], every[3:6], every[6:]]
    # `before` is exclusive.
    assert [item["txn"] for item in campus.send(
        campus.service, "history", account=STUDENT, before=every[0])["items"]] == every[1:]


def test_a_history_page_of_long_merchant_names_fits_a_frame_and_pages_on(campus):
    """A till whose id and merchant are as long as they may be (64 emoji, 4 bytes each in
    UTF-8): 200 of its records pack past a frame, and a page of them answered `internal`
    (event=reply_too_large) to every account that paid there. The page ends where a frame
    would, and `next` goes on from it."""
    from switch.codec.session import ServerSession
    till = campus.add_terminal("W" * limits.credential_id_chars_max,
                               merchant="\U0001F35C" * limits.source_chars_max)
    for n in range(limits.history_limit_max + 5):
        campus.ok(till, "debit", card=CARD, amount=1)
    campus.commit()
    session = ServerSession.__new__(ServerSession)
    session._k_s2c = b"k" * 32
    seen, before, page_sizes = [], None, []
    while True:
        fields = {} if before is None else {"before": before}
        reply = campus.send(campus.service, "history", account=STUDENT,
                            limit=limits.history_limit_max, **fields)
        assert reply["code"] == "ok"
        frame = session.encode_reply({**reply, "re": 2**32})   # FrameTooLarge if it did not fit
        assert len(frame) <= limits.frame_size_bytes_max
        seen += [item["txn"] for item in reply["items"]]
        page_sizes.append(len(reply["items"]))
        before = reply["next"]
        if before is None:
            break
    assert page_sizes[0] < limits.history_limit_max and len(page_sizes) >= 2, page_sizes
    assert len(seen) == limits.history_limit_max + 5 + 3    # and credit, issue_card, open
    assert seen == sorted(seen, reverse=True) and len(set(seen)) == len(seen)


def test_history_pages_from_any_before_not_only_the_accounts_own_txns(campus):
    """`before` may name another account's txn or none at all: the walk back from the
    account's newest record still answers exactly its records below it."""
    others = []
    for n in range(4):
        campus.ok(campus.pos, "debit", card=CARD, amount=1 + n)
        others.append(campus.credit(CUIK_STUDENT, 10)["txn"])
    campus.commit()
    every = [item["txn"] for item in campus.send(campus.service, "history", account=STUDENT,
                                                 limit=limits.history_limit_max)["items"]]
    for before in (*others, campus.last_txn + 100):
        reply = campus.send(campus.service, "history", account=STUDENT, before=before)
        assert [item["txn"] for item in reply["items"]] == [txn for txn in every
                                                            if txn < before]


# ---------------------------------------------------------------- limits (§4.7)
def test_set_limits_changes_the_given_limits_and_replies_all_three(campus):
    before = campus.last_txn
    reply = campus.send(campus.service, "set_limits", account=STUDENT, per_tx=8_000, id="s")
    assert reply == {"t": "set_limits", "code": "ok",
                     "limits": {"per_tx": 8_000, "daily": 100_000, "no_pin": 5_000}}
    assert campus.last_txn == before            # state, not journal
    assert campus.account(STUDENT)["limits"] == reply["limits"]
    assert campus.send(campus.pos, "debit", card=CARD, amount=8_001, pin=PIN,
                       id=1)["code"] == "limit_per_tx"


@pytest.mark.parametrize("fields, code", [
    ({"no_pin": 20_000}, "ok"), ({"no_pin": 20_001}, "bad_request"),
    ({"per_tx": 200_000, "daily": 500_000}, "ok"),
    ({"per_tx": 200_001, "daily": 500_000}, "bad_request"),
    ({"daily": 500_001}, "bad_request"),
    ({"no_pin": 0, "per_tx": 0, "daily": 0}, "ok"),
    ({"no_pin": 50_001}, "bad_request"),                   # above the kept per_tx
    ({"per_tx": 4_999}, "bad_request"),                    # below the kept no_pin
    ({"daily": 49_999}, "bad_request"),                    # below the kept per_tx
    ({"per_tx": 100_001}, "bad_request"),                  # above the kept daily
    ({}, "ok"),
])
def test_set_limits_bounds_and_order(campus, fields, code):
    limits_before = campus.account(STUDENT)["limits"]
    reply = campus.send(campus.service, "set_limits", account=STUDENT, id="s", **fields)
    assert reply["code"] == code
    expected = {**limits_before, **fields} if code == "ok" else limits_before
    assert campus.account(STUDENT)["limits"] == expected


def test_set_limits_checks_the_account(campus):
    assert campus.send(campus.service, "set_limits", account="WH404", per_tx=1, id=1) == {
        "t": "set_limits", "code": "unknown_account"}
    assert campus.send(campus.wh_service, "set_limits", account=CUIK_STUDENT, per_tx=1,
                       id=2) == {"t": "set_limits", "code": "wrong_school"}


def test_a_change_of_the_schools_defaults_reaches_accounts_without_their_own(make_world):
    world = populate(make_world())
    world.ok(world.service, "set_limits", account=CUIK_STUDENT, per_tx=9_000)
    world.restart(schools={"WH": {"per_tx_fen": 7_000}, "CUIK": {"per_tx_fen": 6_000}})
    assert world.account(STUDENT)["limits"]["per_tx"] == 7_000
    assert world.account(CUIK_STUDENT)["limits"]["per_tx"] == 9_000
    pos = world.credential("WH-POS-1")
    assert world.code(pos, "debit", card=CARD, amount=7_001, pin=PIN, id=1) == "limit_per_tx"


# ---------------------------------------------------------------- PINs (§4.15)
def test_set_pin_changes_the_pin(campus):
    before = campus.last_txn
    assert campus.send(campus.service, "set_pin", account=STUDENT, old=PIN, new="246810",
                       id="p") == {"t": "set_pin", "code": "ok"}
    assert campus.last_txn == before
    assert campus.code(campus.service, "verify_pin", account=STUDENT, pin="246810") == "ok"
    assert campus.code(campus.service, "verify_pin", account=STUDENT, pin=PIN) == "pin_invalid"


def test_set_pin_with_a_wrong_old_pin_counts_and_a_locked_pin_stays_locked(campus):
    for n in range(limits.pin_failures_max - 1):
        assert campus.send(campus.service, "set_pin", account=STUDENT, old=WRONG_PIN,
                           new="246810", id=n) == {"t": "set_pin", "code": "pin_invalid"}
    assert campus.send(campus.service, "set_pin", account=STUDENT, old=WRONG_PIN, new="246810",
                       id="5th") == {"t": "set_pin", "code": "pin_locked"}
    assert campus.send(campus.service, "set_pin", account=STUDENT, old=PIN, new="246810",
                       id="right") == {"t": "set_pin", "code": "pin_locked"}
    campus.ok(campus.admin, "unlock", account=STUDENT)
    assert campus.code(campus.service, "verify_pin", account=STUDENT, pin=PIN) == "ok"


def test_verify_pin_changes_nothing_but_the_count(campus):
    before = campus.last_txn
    assert campus.send(campus.service, "verify_pin", account=STUDENT, pin=PIN) == {
        "t": "verify_pin", "code": "ok"}
    assert campus.send(campus.service, "verify_pin", account=STUDENT, pin=WRONG_PIN) == {
        "t": "verify_pin", "code": "pin_invalid"}
    assert campus.last_txn == before


def test_reset_pin_needs_the_id_given_at_opening_and_clears_the_lock(campus):
    campus.open_person("WH20230002", id_last6="53012X")
    for _ in range(limits.pin_failures_max):
        campus.send(campus.service, "verify_pin", account="WH20230002", pin=WRONG_PIN)
    # A wrong ID is refused and counts toward a lock of its own (below).
    assert campus.send(campus.service, "reset_pin", account="WH20230002",
                       id_last6="530121", id="w") == {"t": "reset_pin",
                                                      "code": "identity_mismatch"}
    before = campus.last_txn
    assert campus.send(campus.service, "reset_pin", account="WH20230002", id_last6="53012X",
                       id="r") == {"t": "reset_pin", "code": "ok"}
    assert campus.last_txn == before
    assert campus.account("WH20230002")["pin_locked"] is False
    assert campus.send(campus.service, "verify_pin", account="WH20230002",
                       pin="530120")["code"] == "ok"


def test_the_fifth_wrong_id_in_a_row_locks_reset_pin_until_unlock(campus):
    for n in range(limits.pin_failures_max - 1):
        assert campus.code(campus.service, "reset_pin", account=STUDENT, id_last6="654321",
                           id=n) == "identity_mismatch"
    assert campus.code(campus.service, "reset_pin", account=STUDENT, id_last6="654321",
                       id="5th") == "pin_locked"
    # Even the right digits are refused now: the ID cannot be found by trying them all.
    assert campus.code(campus.service, "reset_pin", account=STUDENT, id_last6=ID_LAST6,
                       id="right") == "pin_locked"
    # The PIN itself still works: this lock is reset_pin's own.
    assert campus.code(campus.service, "verify_pin", account=STUDENT, pin=PIN) == "ok"
    assert campus.code(campus.admin, "unlock", account=STUDENT, id="u") == "ok"
    assert campus.code(campus.service, "reset_pin", account=STUDENT, id_last6=ID_LAST6,
                       id="after") == "ok"


@pytest.mark.parametrize("t, fields", [
    ("set_pin", {"old": PIN, "new": "246810", "id": 1}),
    ("reset_pin", {"id_last6": ID_LAST6, "id": 1}),
    ("verify_pin", {"pin": PIN}),
])
def test_pin_requests_are_for_person_accounts_of_the_school(campus, t, fields):
    assert campus.send(campus.service, t, account=ROOM, **fields) == {"t": t, "code": "bad_request"}
    assert campus.send(campus.service, t, account="WH404", **fields) == {
        "t": t, "code": "unknown_account"}
    assert campus.send(campus.wh_service, t, account=CUIK_STUDENT, **fields) == {
        "t": t, "code": "wrong_school"}


def test_a_history_page_reads_journal_records_bounded_by_its_limit(campus, monkeypatch):
    """One `history` request of `limit` items reads at most `records_between_history_marks` + `limit`
    journal records (and a few), however long the account's history and whatever `before`
    it names (docs/PROTOCOL.md §4.14: any txn): the walk starts at the first history mark
    above `before`, not at the account's newest record."""
    early = campus.credit(CUIK_STUDENT, 10)["txn"]       # another account's txn, early
    for _ in range(3 * limits.records_between_history_marks):
        campus.credit(STUDENT, 1)
    middle = campus.credit(CUIK_STUDENT, 10)["txn"]      # and one in the middle
    for _ in range(3 * limits.records_between_history_marks):
        campus.credit(STUDENT, 1)
    campus.commit()
    everything = campus.send(campus.service, "history", account=STUDENT,
                             limit=limits.history_limit_max)["items"]
    txns = [item["txn"] for item in everything]
    while len(txns) < 6 * limits.records_between_history_marks:   # the rest of it, page by page
        txns += [item["txn"] for item in campus.send(
            campus.service, "history", account=STUDENT, before=txns[-1],
            limit=limits.history_limit_max)["items"]]
    reads = []
    real = campus.ledger._committed_journal_record
    monkeypatch.setattr(campus.ledger, "_committed_journal_record",
                        lambda txn: reads.append(txn) or real(txn))
    for before in (early, middle):
        reads.clear()
        reply = campus.send(campus.service, "history", account=STUDENT, before=before, limit=5)
        assert [item["txn"] for item in reply["items"]] == \
            [txn for txn in txns if txn < before][:5]
        assert len(reads) <= limits.records_between_history_marks + 5 + 2, len(reads)


def test_a_school_served_in_another_time_zone_than_before_is_said_once(campus, caplog):
    # The outside test's operator pass: `time_zone = "UTC"` on books counted in
    # Asia/Shanghai started without a word; today's spending, the tills' day totals and
    # the meal periods then change day at another midnight.
    caplog.set_level("WARNING", logger="switch.ledger")
    campus.restart(schools={"WH": {"time_zone": "UTC"}})
    said = [r.getMessage() for r in caplog.records if "config_questionable" in r.getMessage()]
    assert said == ["event=config_questionable school=WH time_zone=UTC was=Asia/Shanghai "
                    "why=days_counted_before_are_the_old_zones_the_day_boundary_moves"]
    campus.restart(schools={"WH": {"time_zone": "UTC"}})   # kept now: said once
    assert len([r for r in caplog.records if "config_questionable" in r.getMessage()]) == 1


@pytest.mark.parametrize("t, fields", [
    ("set_limits", {"per_tx": 100}),
    ("set_pin", {"old": PIN, "new": "654321"}),
    ("set_pin", {"old": WRONG_PIN, "new": "654321"}),
    ("reset_pin", {"id_last6": ID_LAST6}),
    ("reset_pin", {"id_last6": "999999"}),
    ("verify_pin", {"pin": WRONG_PIN}),
])
def test_a_closed_accounts_limits_and_pin_are_account_closed_and_unchanged(campus, t, fields):
    """Closed is for good (§4.15): these answered ok (or counted a wrong PIN) and changed a
    closed account's record, while virtual_card, unlock and freeze said account_closed."""
    campus.ok(campus.admin, "refund", account=STUDENT)
    before = bytes(campus.ledger.account(STUDENT))
    assert campus.send(campus.service, t, account=STUDENT, id=campus.fresh_id(),
                       **fields) == {"t": t, "code": "account_closed"}
    assert bytes(campus.ledger.account(STUDENT)) == before
