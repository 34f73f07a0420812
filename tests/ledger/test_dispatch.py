"""What every request goes through before its own rules (docs/PROTOCOL.md §3, §4.1-§4.4):
the type, the sender's role and kind, the id, idempotency, and failures inside the switch."""

import logging
import msgpack
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from switch.ledger import housekeeping, state
from tests.ledger.conftest import (BALANCE, CARD, CUIK_STUDENT, ID_LAST6, PIN, REQUEST_TYPES, ROOM,
                                   LOGGED_IDS_PER_ROUND, remembered_at_ms_read_fast,
                                   none_remembered_before,
                                   STUDENT, limits)

# docs/PROTOCOL.md §3: who may send what (every role may send `ping`).
POS = {"debit", "qr_debit", "reverse", "offline", "balance", "blacklist", "settle"}
WATER = {"hold", "complete", "void", "reverse", "offline", "balance", "blacklist", "settle"}
METER = {"meter"}
SERVICE = {"credit", "account", "history", "lost", "found", "set_limits", "set_pin", "reset_pin",
           "verify_pin", "virtual_card", "rooms"}
ADMIN = SERVICE | {"open_account", "close_account", "issue_card", "replace_card", "freeze",
                   "unfreeze", "unlock", "add_credential", "revoke_credential", "rotate_key",
                   "refund", "subsidy"}
MAY_SEND = {"pos": POS, "water": WATER, "meter": METER, "service": SERVICE,
            "wh_service": SERVICE, "admin": ADMIN}

# docs/PROTOCOL.md §4.1: the requests without an `id` of their own.
WITHOUT_ID = {"ping", "balance", "blacklist", "settle", "account", "history", "verify_pin",
              "rooms", "offline"}

# For every request with an id, a request that gets a reply the switch remembers
# (docs/PROTOCOL.md §4.3: all but bad_request, bad_amount, not_permitted, busy, internal),
# and a change of one listed field.
REMEMBERED = {
    "debit": ("pos", {"card": CARD, "amount": 100}, {"amount": 101}),
    "qr_debit": ("pos", {"qr": f"{STUDENT}.1.0badf00d.{'0' * 20}", "amount": 100},
                 {"amount": 101}),
    "hold": ("water", {"card": CARD, "amount": 100}, {"amount": 101}),
    "complete": ("water", {"hold": "H999999", "amount": 0}, {"amount": 1}),
    "void": ("water", {"hold": "H999999"}, {"hold": "H999998"}),
    "reverse": ("pos", {"target": "never-sent"}, {"target": "never-sent-either"}),
    "meter": ("meter", {"account": ROOM, "amount": 10, "what": "electric"}, {"what": "water"}),
    "credit": ("service", {"account": STUDENT, "amount": 100, "source": "alipay"},
               {"source": "wechat"}),
    "lost": ("service", {"card": CARD}, {"card": "0C0C0001"}),
    "found": ("service", {"card": CARD}, {"card": "0C0C0001"}),
    "set_limits": ("service", {"account": STUDENT, "per_tx": 10_000},
                   {"per_tx": 10_001}),
    "set_pin": ("service", {"account": STUDENT, "old": PIN, "new": "654321"}, {"new": "111111"}),
    "reset_pin": ("service", {"account": STUDENT, "id_last6": ID_LAST6}, {"id_last6": "000000"}),
    "virtual_card": ("service", {"account": STUDENT}, {"account": CUIK_STUDENT}),
    "open_account": ("admin", {"account": "WH20239999", "school": "WH", "kind": "person",
                               "id_last6": "111111"}, {"holder": "李四"}),
    "close_account": ("admin", {"account": STUDENT}, {"account": ROOM}),
    "refund": ("admin", {"account": STUDENT}, {"account": ROOM}),
    "subsidy": ("admin", {"account": STUDENT, "amount": 100, "expires": "2099-12-31", "batch": "b"},
                {"batch": "c"}),
    "issue_card": ("admin", {"account": STUDENT, "card": "0A0A0A0A"}, {"card": "0B0B0B0B"}),
    "replace_card": ("admin", {"account": STUDENT, "old": CARD, "new": "0A0A0A0A"},
                     {"new": "0B0B0B0B"}),
    "freeze": ("admin", {"account": STUDENT}, {"reason": "lost wallet"}),
    "unfreeze": ("admin", {"account": STUDENT}, {"reason": "found wallet"}),
    "unlock": ("admin", {"account": STUDENT}, {"account": CUIK_STUDENT}),
    "add_credential": ("admin", {"who": "WH-POS-9", "role": "terminal", "school": "WH",
                                 "kind": "pos"}, {"merchant": "canteen-2"}),
    "revoke_credential": ("admin", {"who": "WH-POS-2"}, {"who": "WH-WATER-2"}),
    "rotate_key": ("admin", {"who": "WH-POS-2"}, {"who": "WH-WATER-2"}),
}

MALFORMED_IDS = ["", "x" * (limits.id_str_chars_max + 1), -1, limits.id_int_max + 1, True, 1.5,
                 None, b"bytes", [1], {"id": 1}]
WELL_FORMED_IDS = ["x", "x" * limits.id_str_chars_max, 0, limits.id_int_max]


def sender(world, name):
    return world.admin if name == "admin" else getattr(world, name)


def snapshot(world) -> tuple:
    """What a request could have changed: the journal, the open batch, the accounts."""
    return (world.last_txn, world.store.open_writes,
            *(world.account(account) for account in (STUDENT, CUIK_STUDENT, ROOM)))


def test_the_tables_here_name_every_request_type_the_switch_dispatches():
    assert set().union(*MAY_SEND.values()) | {"ping"} == REQUEST_TYPES
    assert set(REMEMBERED) | WITHOUT_ID == REQUEST_TYPES
    assert not set(REMEMBERED) & WITHOUT_ID


# ---------------------------------------------------------------- step 1: the type
@pytest.mark.parametrize("t", [None, 5, b"debit", ["debit"], True])
def test_a_t_that_is_no_str_is_bad_request_answered_as_error(campus, t):
    assert campus.request(campus.pos, {"t": t, "card": CARD, "amount": 1, "id": 1}) == {
        "t": "error", "code": "bad_request"}
    assert campus.request(campus.pos, {"card": CARD, "amount": 1, "id": 1}) == {
        "t": "error", "code": "bad_request"}
    assert campus.balance(STUDENT) == BALANCE


@pytest.mark.parametrize("t, echoed", [
    ("hello", "hello"), ("records", "records"), ("DEBIT", "DEBIT"), ("", ""),
    ("x" * limits.request_type_chars_max, "x" * limits.request_type_chars_max),
    ("x" * (limits.request_type_chars_max + 1), "error")])
def test_an_unknown_type_is_bad_request_and_echoed_only_when_short(campus, t, echoed):
    assert campus.send(campus.admin, t, id=1) == {"t": echoed, "code": "bad_request"}


# ---------------------------------------------------------------- step 2: role and kind
@pytest.mark.parametrize("name", sorted(MAY_SEND))
def test_each_role_and_kind_may_send_exactly_its_requests(campus, name):
    credential = sender(campus, name)
    wrong = {}
    for t in sorted(REQUEST_TYPES):
        # No fields at all: a permitted type fails its id or fields, never its permission.
        code = campus.code(credential, t)
        if t == "ping" or (t == "rooms" and name == "wh_service"):
            expected = "ok"    # every field of `rooms` is optional to a school's credential
        else:
            expected = "bad_request" if t in MAY_SEND[name] else "not_permitted"
        if code != expected:
            wrong[t] = (code, expected)
    assert wrong == {}


def test_permission_comes_before_the_id_and_the_fields(campus):
    reply = campus.send(campus.pos, "credit", account="nope!", amount="x", id=None)
    assert reply == {"t": "credit", "code": "not_permitted"}
    assert campus.send(campus.meter, "debit", card=CARD, amount=100, id=7) == {
        "t": "debit", "code": "not_permitted"}
    assert campus.balance(STUDENT) == BALANCE


# ---------------------------------------------------------------- step 3: the id
@pytest.mark.parametrize("t", sorted(REMEMBERED))
def test_a_malformed_id_is_bad_request_before_anything_else(campus, t):
    name, fields, _ = REMEMBERED[t]
    before = snapshot(campus)
    for request_id in MALFORMED_IDS:
        # Well-formed fields, or none and an amount of the wrong type: the id comes first.
        for others in (fields, {"amount": "many"}):
            assert campus.send(sender(campus, name), t, id=request_id, **others) == {
                "t": t, "code": "bad_request"}, (request_id, others)
    assert snapshot(campus) == before


def test_a_missing_id_is_bad_request_even_with_a_bad_amount(campus):
    assert campus.send(campus.pos, "debit", card=CARD, amount=-5) == {
        "t": "debit", "code": "bad_request"}


@pytest.mark.parametrize("request_id", WELL_FORMED_IDS, ids=repr)
def test_ids_at_their_bounds_are_accepted(campus, request_id):
    reply = campus.send(campus.pos, "debit", card=CARD, amount=100, id=request_id)
    assert reply["code"] == "ok" and reply["balance"] == BALANCE - 100
    assert campus.journal(reply["txn"])["ref"] == request_id


@pytest.mark.parametrize("t", sorted(WITHOUT_ID - {"offline"}))
def test_requests_without_an_id_ignore_one_and_are_not_remembered(campus, t):
    fields = {"ping": {}, "balance": {"card": CARD}, "blacklist": {"since": 0},
              "settle": {"day": "2026-11-18", "count": 0, "total": 0},
              "account": {"account": STUDENT}, "history": {"account": STUDENT},
              "verify_pin": {"account": STUDENT, "pin": PIN}, "rooms": {"school": "WH"}}[t]
    name = "service" if t in SERVICE else "pos"
    first = campus.send(sender(campus, name), t, id=[1], **fields)
    second = campus.send(sender(campus, name), t, id=[1], **fields)
    assert first["code"] == "ok" and first == second and "replay" not in second


# ---------------------------------------------------------------- idempotency (§4.4)
@pytest.mark.parametrize("t", sorted(REMEMBERED))
def test_same_id_and_fields_replay_and_another_field_is_id_reuse(campus, t):
    name, fields, change = REMEMBERED[t]
    credential = sender(campus, name)
    first = campus.send(credential, t, id="R-1", **fields)
    assert first["code"] not in {"bad_request", "bad_amount", "not_permitted", "internal"}
    before = snapshot(campus)
    assert campus.send(credential, t, id="R-1", **fields) == {**first, "replay": True}
    # A field the request table does not list is no part of the comparison.
    assert campus.send(credential, t, id="R-1", note="again", **fields) == {
        **first, "replay": True}
    assert campus.send(credential, t, id="R-1", **{**fields, **change}) == {
        "t": t, "code": "id_reuse"}
    assert snapshot(campus) == before


def test_a_field_sent_as_nil_compares_as_absent(campus):
    first = campus.send(campus.pos, "debit", card=CARD, amount=100, id="N-1")
    assert first["code"] == "ok"
    assert campus.send(campus.pos, "debit", card=CARD, amount=100, pin=None, id="N-1") == {
        **first, "replay": True}
    assert campus.balance(STUDENT) == BALANCE - 100


def test_the_same_id_under_another_type_is_id_reuse(campus):
    assert campus.code(campus.pos, "debit", card=CARD, amount=100, id=42) == "ok"
    # `reverse` of another target, reusing the debit's id as its own.
    assert campus.send(campus.pos, "reverse", target="other", id=42) == {
        "t": "reverse", "code": "id_reuse"}
    assert campus.balance(STUDENT) == BALANCE - 100


def test_ids_are_per_credential_and_5_differs_from_the_string_5(campus):
    codes = [campus.code(campus.pos, "debit", card=CARD, amount=100, id=5),
             campus.code(campus.pos2, "debit", card=CARD, amount=100, id=5),
             campus.code(campus.pos, "debit", card=CARD, amount=100, id="5")]
    assert codes == ["ok", "ok", "ok"]
    assert campus.balance(STUDENT) == BALANCE - 300


def test_declines_are_remembered_too(campus):
    first = campus.send(campus.pos, "debit", card=CARD, amount=BALANCE + 1, pin=PIN,
                        id="big")
    assert first == {"t": "debit", "code": "insufficient_funds"}
    campus.credit(STUDENT, 10_000)
    # The money is there now, but the id's answer was given: the retry replays it.
    assert campus.send(campus.pos, "debit", card=CARD, amount=BALANCE + 1, pin=PIN,
                        id="big") == {
        "t": "debit", "code": "insufficient_funds", "replay": True}
    assert campus.balance(STUDENT) == BALANCE + 10_000


@pytest.mark.parametrize("first_fields, code", [
    ({"amount": 100}, "bad_request"),                      # no card
    ({"card": CARD, "amount": "100"}, "bad_amount"),
    ({"card": CARD, "amount": 0}, "bad_amount"),
    ({"card": CARD, "amount": 100, "pin": "12345"}, "bad_request"),
])
def test_codes_that_are_not_remembered_leave_the_id_free(campus, first_fields, code):
    assert campus.send(campus.pos, "debit", id="fix-me", **first_fields) == {
        "t": "debit", "code": code}
    reply = campus.send(campus.pos, "debit", card=CARD, amount=100, id="fix-me")
    assert reply["code"] == "ok" and "replay" not in reply
    assert campus.balance(STUDENT) == BALANCE - 100


def test_not_permitted_leaves_the_id_free(campus):
    assert campus.send(campus.pos, "credit", account=STUDENT, amount=1, source="x",
                       id="mine")["code"] == "not_permitted"
    assert campus.code(campus.pos, "debit", card=CARD, amount=100, id="mine") == "ok"


def test_ids_are_remembered_for_at_least_the_retention_period(campus):
    first = campus.send(campus.pos, "debit", card=CARD, amount=100, id="old")
    campus.commit()
    campus.clock.advance(campus.config.idempotency_retention_s - 1)
    campus.forget_old_ids()
    assert campus.send(campus.pos, "debit", card=CARD, amount=100, id="old") == {
        **first, "replay": True}
    assert campus.balance(STUDENT) == BALANCE - 100


def _forget_all_old_ids(world) -> None:
    world.write_back_ids()
    while world.forget_old_ids():
        world.commit()
    world.commit()


def test_a_recharge_is_remembered_for_its_own_longer_retention(campus):
    """A recharge system that sends an order again months later (its reconciliation, its
    outbox restored from a backup) gets the first reply, not a second credit."""
    first = campus.send(campus.service, "credit", account=STUDENT, amount=5_000,
                        source="wechat", id="4200001234202611180001")
    debit = campus.send(campus.pos, "debit", card=CARD, amount=100, id="old-debit")
    campus.clock.advance(campus.config.idempotency_retention_s + 1)
    _forget_all_old_ids(campus)
    assert campus.ledger.recall(campus.pos.who, "old-debit") is None      # forgotten
    campus.clock.advance(limits.credit_ids_retention_s
                         - campus.config.idempotency_retention_s - 2)
    _forget_all_old_ids(campus)
    again = campus.send(campus.service, "credit", account=STUDENT, amount=5_000,
                        source="wechat", id="4200001234202611180001")
    assert again == {**first, "replay": True}
    assert campus.balance(STUDENT) == BALANCE + 5_000 - 100
    assert campus.code(campus.service, "credit", account=STUDENT, amount=5_001,
                       source="wechat", id="4200001234202611180001") == "id_reuse"
    campus.clock.advance(2)                   # past its own retention: forgotten at last
    _forget_all_old_ids(campus)
    assert campus.ledger.recall(campus.service.who, "4200001234202611180001") is None
    assert debit["code"] == "ok"


def test_a_wall_clock_set_a_year_ahead_forgets_no_recharge_and_no_id_early(campus, caplog):
    """The outside test's repro: a switch started (or confirmed) on a clock 401 days ahead
    forgot every order id within minutes, and once put right it credited the same WeChat
    orders again. Ids are aged by the retention clock: it follows the wall clock at most
    `retention_clock_speed_max` times as fast as time passes, and a restart starts it where
    the last run left it."""
    order = "4200001234202611180007"
    first = campus.send(campus.service, "credit", account=STUDENT, amount=5_000,
                        source="wechat", id=order)
    debit = campus.send(campus.pos, "debit", card=CARD, amount=100, id="tap-1")
    campus.commit()
    campus.clock.set_wall(401 * 86_400)        # set wrong, as a start would believe it
    with caplog.at_level(logging.WARNING, logger="switch.ledger"):
        campus.restart()
    assert "event=clock_far_from_books" in caplog.text and "ahead_s=346464" in caplog.text
    campus.ok(campus.pos, "debit", card=CARD, amount=1)    # journaled on the wrong clock
    for _ in range(3):
        campus.clock.advance(300)
        campus.housekeep()
        _forget_all_old_ids(campus)
    campus.restart()                            # restarted, still wrong: started where it was
    campus.clock.advance(300)
    _forget_all_old_ids(campus)
    campus.clock.set_wall(-401 * 86_400)       # put right
    campus.restart()
    assert campus.send(campus.service, "credit", account=STUDENT, amount=5_000,
                       source="wechat", id=order) == {**first, "replay": True}
    assert campus.send(campus.pos, "debit", card=CARD, amount=100, id="tap-1") == {
        **debit, "replay": True}
    assert campus.balance(STUDENT) == BALANCE + 5_000 - 100 - 1


@pytest.mark.parametrize("restarted", [False, True])
def test_a_clock_a_year_ahead_forgets_no_id_before_its_retention_really_passed(campus,
                                                                              restarted):
    """A wall clock that jumps ahead while serving is believed after the confirmation (for
    payments), and one read at a start is believed at once, but neither forgets a till's
    tap before its retention has really passed: while running the retention clock makes
    up no time faster than it passes, and ids remembered before a start age from where
    the books stood at it (the last review: after a quarter of it, an offline record sent
    again once the clock was put right was taken twice)."""
    retention_s = campus.config.idempotency_retention_s
    debit = campus.send(campus.pos, "debit", card=CARD, amount=100, id="tap-2")
    campus.commit()
    campus.clock.set_wall(400 * 86_400)
    if restarted:
        campus.restart()
    campus.clock.advance(retention_s - 120)
    _forget_all_old_ids(campus)
    assert campus.send(campus.pos, "debit", card=CARD, amount=100, id="tap-2") == {
        **debit, "replay": True}
    campus.clock.advance(240)
    _forget_all_old_ids(campus)
    assert campus.ledger.recall(campus.pos.who, "tap-2") is None


@pytest.mark.parametrize("back_s, held_s", [(5 * 86_400, 900), (30 * 86_400, 600)])
def test_a_clock_stepped_back_then_put_right_leaves_the_retention_clock_no_lag(
        campus, back_s, held_s):
    """The last review's repro: a wall clock stepped back (an operator's slip, an RTC at
    boot), believed, then put right left the retention clock behind for the whole run,
    and ids were kept past their retention (for years after an RTC reset to 2000)."""
    retention_s = campus.config.idempotency_retention_s
    campus.send(campus.pos, "debit", card=CARD, amount=100, id="tap-4")
    campus.commit()
    campus.clock.set_wall(-back_s)
    campus.clock.advance(held_s)
    _forget_all_old_ids(campus)
    campus.clock.set_wall(back_s)                   # put right
    campus.clock.advance(retention_s - held_s + 60)
    _forget_all_old_ids(campus)
    assert campus.ledger.recall(campus.pos.who, "tap-4") is None


@pytest.mark.parametrize("restarted", [False, True])
def test_an_offline_record_sent_again_after_a_clock_believed_ahead_is_put_right_replays(
        campus, restarted):
    """The reviews' repros: a wall clock 400 days ahead, believed while running (or read at
    a start), let the retention clock forget an offline record's id after 2.2 days, and
    once put right the switch took the same record as new (a second debit)."""
    at = campus.clock.now_ms()
    record = {"id": "off-1", "card": CARD, "amount": 250, "at": at}
    first = campus.ok(campus.pos, "offline", records=[record])["results"][0]
    campus.commit()
    balance = campus.balance(STUDENT)
    campus.clock.set_wall(400 * 86_400)
    if restarted:
        campus.restart()
    for _ in range(22):
        campus.clock.advance(10_000)            # 2.5 days
        _forget_all_old_ids(campus)
    campus.clock.set_wall(-400 * 86_400)       # put right
    campus.restart()
    again = campus.send(campus.pos, "offline", records=[record])["results"][0]
    assert again == {**first, "replay": True}
    assert campus.balance(STUDENT) == balance


def test_a_credit_is_kept_by_what_its_value_begins_with_not_by_its_id(world):
    """The sweep reads the type from the value's first bytes: an id that only looks like a
    credit's is forgotten at the common retention, a credit remembered by any id is kept."""
    world.ledger.remember("svc", "credit", "credit", bytes(16), {"t": "credit", "code": "ok"})
    world.ledger.remember("till", "credit", "debit", bytes(16), {"t": "debit", "code": "ok"})
    world.write_back_ids()
    world.clock.advance(world.config.idempotency_retention_s + 1)
    _forget_all_old_ids(world)
    assert world.ledger.recall("till", "credit") is None
    assert world.ledger.recall("svc", "credit")[0] == "credit"


def _remember_ids(world, numbers) -> None:
    for number in numbers:
        world.ledger.remember("till", number, "debit", bytes(16), {"t": "debit", "code": "ok"})
    world.write_back_ids()


def _remembered(world) -> list:
    return sorted(world.committed("idempotency"))


def test_the_worlds_commits_carry_the_ids_through_the_logs_in_rounds(world):
    """The ledger tests commit as the committer does: an id is logged, read from there, and
    written back rounds later, each round's log dropped once written back."""
    def in_database(number) -> bool:
        key = b"till\0" + msgpack.packb(number)
        return any(k == key for k, _ in world.store.committed_items("idempotency", key))
    logs_used = set()
    for number in range(4 * LOGGED_IDS_PER_ROUND):
        world.ledger.remember("till", number, "debit", bytes(16), {"t": "debit", "code": "ok"})
        world.commit()
        logs_used.add(world.store._rounds["idempotency"].current_log)
        if number == 0:
            assert not in_database(0) and world.ledger.recall("till", 0) is not None
    assert logs_used == {0, 1}
    assert in_database(0) and world.ledger.recall("till", 0) is not None
    assert world.store.logs_pending < 2 * LOGGED_IDS_PER_ROUND


@pytest.mark.parametrize("beyond_the_bound", [0, 1])
def test_a_retention_pass_visits_at_most_its_bound_and_the_next_goes_on_from_there(
        world, beyond_the_bound):
    bound = limits.idempotency_sweep_ids_per_pass_max
    _remember_ids(world, range(bound + beyond_the_bound - len(_remembered(world))))
    world.clock.advance(world.config.idempotency_retention_s + 1)
    assert world.forget_old_ids() == bound
    world.commit()
    assert len(_remembered(world)) == beyond_the_bound
    assert world.forget_old_ids() == beyond_the_bound
    world.commit()
    assert _remembered(world) == []


@pytest.mark.parametrize("ids_held, per_pass", [
    (0, 1), (1, 1), (2_999, 1), (3_001, 2), (1_500_000, 500), (12_000_000, 4_000),
    (10**9, limits.idempotency_sweep_ids_per_pass_max)])
def test_the_sweep_is_paced_for_a_cycle_in_its_time_within_its_bounds(ids_held, per_pass):
    assert housekeeping.sweep_ids_per_pass(ids_held) == per_pass
    passes_a_cycle = -(-ids_held // per_pass)
    cycle_s = passes_a_cycle * limits.housekeeping_interval_s
    assert cycle_s <= max(limits.idempotency_sweep_cycle_s,
                          ids_held / limits.idempotency_sweep_ids_per_pass_max
                          * limits.housekeeping_interval_s + limits.housekeeping_interval_s)


def test_a_housekeeping_pass_visits_the_ids_its_pace_allows(world, monkeypatch):
    """Reading 20,000 ids a second whatever the database held was most of housekeeping's cost
    at saturation: a pass visits what a cycle in `idempotency_sweep_cycle_s` needs."""
    monkeypatch.setattr(limits, "idempotency_sweep_cycle_s", 1)   # five passes a cycle
    _remember_ids(world, range(100 - len(_remembered(world))))
    assert len(_remembered(world)) == 100
    world.clock.advance(world.config.idempotency_retention_s + 1)
    visits = []
    forget = world.ledger.forget_old_ids
    monkeypatch.setattr(world.ledger, "forget_old_ids",
                        lambda keys_max: visits.append(keys_max) or forget(keys_max))
    world.housekeep()
    world.write_back_ids()
    assert (visits, len(_remembered(world))) == ([20], 80)
    for _ in range(4):                   # paced by what the cycle started with
        world.housekeep()
        world.write_back_ids()
    assert (visits, len(_remembered(world))) == ([20] * 5, 0)


def test_a_cycle_of_ids_all_due_takes_its_time_however_many_it_forgets(world, monkeypatch):
    """After a switch stood still past the retention every id is due: a pass paced by the
    ids left would visit fewer and fewer (six cycles' time for the last id). A cycle is
    paced by what it started with, or what the database holds if more."""
    monkeypatch.setattr(limits, "idempotency_sweep_cycle_s", 2)   # ten passes a cycle
    _remember_ids(world, range(300 - len(_remembered(world))))
    world.clock.advance(world.config.idempotency_retention_s + 1)
    passes = 0
    while _remembered(world):
        world.housekeep()
        world.write_back_ids()
        passes += 1
    assert passes == 10
    _remember_ids(world, range(1000, 1050))     # the next cycle: paced by the 50 held now
    world.clock.advance(world.config.idempotency_retention_s + 1)
    world.housekeep()
    world.write_back_ids()
    assert len(_remembered(world)) == 45


def _remember_ids_of(world, who: str, numbers) -> None:
    for number in numbers:
        world.ledger.remember(who, number, "debit", bytes(16), {"t": "debit", "code": "ok"})
    world.write_back_ids()


def test_a_switch_restarted_more_often_than_a_cycle_still_reaches_the_last_id(world):
    """A cycle takes 10 minutes: a switch restarted more often (a crash loop, a watchdog)
    that started each cycle over at the first id never visited the last ones, and ids due
    there were kept for ever. The sweep's position is saved and read back at the open."""
    world.clock.advance(world.config.idempotency_retention_s)
    _remember_ids_of(world, "zz-till", range(5))     # last in key order, soon due
    world.clock.advance(world.config.idempotency_retention_s - 1)
    _remember_ids_of(world, "aa-till", range(40))    # first in key order, not due
    world.clock.advance(2)
    passes = -(-len(_remembered(world)) // 10) + 1
    for _ in range(passes):
        world.ledger.forget_old_ids(10)              # not a whole cycle before each restart
        world.restart()
    held = [key for key, _ in world.store.committed_items("idempotency")]
    assert not [key for key in held if key.startswith(b"zz-till\0")]
    assert len([key for key in held if key.startswith(b"aa-till\0")]) == 40


def test_the_sweeps_position_is_saved_with_a_commit_due_anyway_else_every_so_often(world):
    """An idle switch commits the position at most every `ids_sweep_position_saved_every_s`,
    not every pass; a pass whose batch commits anyway (requests wrote) carries it."""
    _remember_ids_of(world, "till", range(60))
    world.ledger.forget_old_ids(10)                  # the first since the open: saved
    saved = world.store.get("meta", state.IDS_SWEPT_TO)
    assert saved is not None and world.store.uncommitted_writes == 1
    world.commit()
    world.ledger.forget_old_ids(10)                  # idle, nothing due: not yet
    assert world.store.uncommitted_writes == 0
    assert world.store.get("meta", state.IDS_SWEPT_TO) == saved
    world.ledger.remember("till", 1000, "debit", bytes(16), {"t": "debit", "code": "ok"})
    world.ledger.forget_old_ids(10)                  # a batch that commits anyway: carried
    moved = world.store.get("meta", state.IDS_SWEPT_TO)
    assert moved is not None and moved > saved
    world.commit()
    world.ledger.forget_old_ids(10)
    assert world.store.uncommitted_writes == 0
    world.clock.advance(limits.ids_sweep_position_saved_every_s)
    world.ledger.forget_old_ids(10)                  # its time came: saved on its own
    assert world.store.uncommitted_writes == 1
    world.commit()
    while world.ledger._ids_swept_to is not None:    # to the last id: the first next time
        world.clock.advance(limits.ids_sweep_position_saved_every_s)
        world.ledger.forget_old_ids(10)
        world.commit()
    assert world.store.get("meta", state.IDS_SWEPT_TO) is None


@pytest.mark.parametrize("undone_by", ["rolled_back_pass", "failed_commit"])
def test_a_save_of_the_sweeps_position_that_was_undone_is_made_again_at_the_next_pass(
        world, monkeypatch, undone_by):
    """A pass that raised is rolled back whole, and a failed commit loses its batch: the
    position it put is not on disk, and the next pass puts it at once rather than 10 s on,
    nor leaves a position the sweep has passed (the end of a cycle) for ever."""
    _remember_ids_of(world, "till", range(60))
    world.ledger.forget_old_ids(10)
    world.commit()
    saved = world.store.get("meta", state.IDS_SWEPT_TO)
    world.clock.advance(limits.ids_sweep_position_saved_every_s)
    if undone_by == "rolled_back_pass":
        monkeypatch.setattr(housekeeping.subsidies, "expire_due_subsidies",
                            lambda ledger: 1 / 0)        # a later step of the pass raises
        assert housekeeping.tick(world.ledger).failed
        monkeypatch.undo()
    else:
        world.ledger.forget_old_ids(10)                  # its time: put in the open batch
        assert world.store.uncommitted_writes == 1
        world.store.seal()
        world.store.discard_uncommitted()                # the commit failed
    assert world.store.get("meta", state.IDS_SWEPT_TO) == saved
    world.ledger.forget_old_ids(10)                      # within 10 s of that save: put
    assert world.store.get("meta", state.IDS_SWEPT_TO) == world.ledger._ids_swept_to != saved
    world.commit()
    world.clock.advance(limits.ids_sweep_position_saved_every_s)
    world.ledger.forget_old_ids(100)                     # to the last id: its save fails
    assert world.ledger._ids_swept_to is None
    assert world.store.get("meta", state.IDS_SWEPT_TO) is None
    world.store.seal()
    world.store.discard_uncommitted()
    assert world.store.get("meta", state.IDS_SWEPT_TO) is not None
    world.ledger.forget_old_ids(100)                     # the first id again, to the last
    assert world.ledger._ids_swept_to is None
    assert world.store.get("meta", state.IDS_SWEPT_TO) is None     # no stale position kept


def test_a_pass_with_no_id_due_reads_none_of_them_one_by_one(world, monkeypatch):
    """The usual pass (no id eight days old yet) is judged whole; reading each id is for a
    pass where one may be due."""
    import switch.ledger.state as state
    _remember_ids(world, range(50))
    read = []
    monkeypatch.setattr(state, "remembered_at_ms_read_fast",
                        lambda data: read.append(data) or remembered_at_ms_read_fast(data))
    assert world.ledger.forget_old_ids(limits.idempotency_sweep_ids_per_pass_max) == 0
    assert read == []
    world.clock.advance(world.config.idempotency_retention_s + 1)
    assert world.ledger.forget_old_ids(limits.idempotency_sweep_ids_per_pass_max) > 0
    assert read                                  # one may be due: each is read


def test_a_pass_that_may_visit_no_id_changes_nothing(world):
    _remember_ids(world, range(5))
    world.clock.advance(world.config.idempotency_retention_s + 1)
    assert [world.ledger.forget_old_ids(0), world.ledger.forget_old_ids(-1)] == [0, 0]
    world.commit()
    assert len(_remembered(world)) >= 5
    assert world.ledger.forget_old_ids(2) == 2   # and the next pass starts at the first


def test_the_sweep_goes_round_and_never_forgets_an_id_before_the_retention_period(world):
    keys_max = 3
    world.clock.advance(world.config.idempotency_retention_s)   # ids of the setup: old
    _remember_ids(world, range(0, 20, 2))
    world.clock.advance(world.config.idempotency_retention_s - 1)
    _remember_ids(world, range(1, 20, 2))
    world.clock.advance(2)             # the even ids are past the retention, the odd ones not
    for _ in range(-(-len(_remembered(world)) // keys_max)):
        world.ledger.forget_old_ids(keys_max)
        world.commit()
    left = _remembered(world)
    assert [world.ledger.recall("till", number) is not None for number in range(20)] == [
        number % 2 == 1 for number in range(20)]
    assert len(left) == 10
    world.write_back_ids()   # the forgotten ten leave the database the sweep walks
    # Round again from the first id: the odd ones' time comes, a pass of 3 at a time.
    world.clock.advance(world.config.idempotency_retention_s)
    assert [world.ledger.forget_old_ids(keys_max) for _ in range(4)] == [3, 3, 3, 1]
    world.commit()
    assert _remembered(world) == []


def _remembered_value(world, at_ms: int, tail: bytes) -> bytes:
    """The stored value of an id remembered at `at_ms` whose reply ends in `tail`."""
    world.clock.ms = at_ms
    world.ledger.remember("till", at_ms, "debit", bytes(16), {"t": "debit", "code": "ok",
                                                              "x": tail})
    return world.store.get("idempotency", b"till\0" + msgpack.packb(at_ms))


@settings(max_examples=400, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(at_ms=st.one_of(st.integers(0, 2**32 - 1), st.integers(2**32, 2**64 - 1)),
       tail=st.lists(st.sampled_from([0x00, 0x01, 0xCF, 0xFF]), max_size=12).map(bytes))
@example(at_ms=100, tail=b"\xcf\x01" + bytes(6))   # 0xCF where a uint64's marker would be
def test_the_sweeps_fast_reading_of_a_remembered_time_is_exact_or_later(world, at_ms, tail):
    """The sweep reads each id's time from its last 9 bytes (`remembered_at_ms_read_fast`):
    exact for every time from 2**32 ms (1970-02-19) on, and for any time never earlier, so a
    reading that is wrong can only keep an id longer."""
    value = _remembered_value(world, at_ms, tail)
    assert msgpack.unpackb(value)[3] == at_ms
    read = remembered_at_ms_read_fast(value)
    assert read >= at_ms
    if at_ms >= 2**32:
        assert read == at_ms


_UINT64_TIME = st.builds(lambda prefix, at_ms: prefix + b"\xcf" + at_ms.to_bytes(8, "big"),
                        st.binary(min_size=1, max_size=12), st.integers(0, 2**64 - 1))


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(times=st.lists(st.tuples(
           st.one_of(st.integers(0, 2**32 - 1), st.integers(2**32, 2**64 - 1)),
           st.lists(st.sampled_from([0x00, 0xCF, 0xD0, 0xFF]), max_size=12).map(bytes)),
       max_size=6),
       raw=st.lists(_UINT64_TIME, max_size=6),
       cutoff_ms=st.one_of(st.integers(-2**40, 2**64), st.sampled_from([0, 2**32, 2**63])))
@example(times=[(100, b"\xff" * 12)], raw=[], cutoff_ms=2**40)   # ends above a uint64's marker
def test_a_pass_judged_at_once_never_hides_an_id_the_sweep_would_forget(world, times, raw,
                                                                        cutoff_ms):
    """`none_remembered_before` (the sweep's look at a whole pass in C) is never True where
    reading each id would find one remembered before the cutoff."""
    values = [_remembered_value(world, at_ms, tail) for at_ms, tail in times] + raw
    items = [(b"key%d" % n, value) for n, value in enumerate(values)]
    if none_remembered_before(items, cutoff_ms):
        assert all(remembered_at_ms_read_fast(value) >= cutoff_ms for value in values)


@settings(max_examples=200, deadline=None)
@given(raw=st.lists(_UINT64_TIME, min_size=1, max_size=8), cutoff_ms=st.integers(0, 2**64 - 1))
def test_a_pass_of_ids_none_of_them_due_is_judged_at_once(raw, cutoff_ms):
    """The other way: ids that all end in a uint64 time at or after the cutoff are judged
    without reading each (else the shortcut would never be taken)."""
    items = [(b"key%d" % n, value) for n, value in enumerate(raw)]
    due = any(int.from_bytes(value[-8:], "big") < cutoff_ms for value in raw)
    assert none_remembered_before(items, cutoff_ms) is not due


def test_the_fast_reading_is_wrong_only_later_and_the_sweep_keeps_such_an_id(world):
    value = _remembered_value(world, 100, b"\xcf\x01" + bytes(6))
    assert remembered_at_ms_read_fast(value) > 100     # the case the property allows
    world.commit()
    world.clock.ms = 100 + world.config.idempotency_retention_s * 1000 + 1
    world.ledger.forget_old_ids(limits.idempotency_sweep_ids_per_pass_max)
    world.commit()
    assert world.ledger.recall("till", 100) is not None   # kept: read as later than it is


# ---------------------------------------------------------------- internal (§4.3)
@pytest.mark.parametrize("t, name, fields", [
    ("debit", "pos", {"card": CARD, "amount": 100}),
    ("hold", "water", {"card": CARD, "amount": 100}),
    ("credit", "service", {"account": STUDENT, "amount": 100, "source": "alipay"}),
    ("meter", "meter", {"account": ROOM, "amount": 100, "what": "water"}),
    ("lost", "service", {"card": CARD}),
    ("open_account", "admin", {"account": "WH1", "school": "WH", "kind": "utility"}),
    ("add_credential", "admin", {"who": "X", "role": "service"}),
])
def test_a_request_that_fails_inside_is_undone_answered_internal_and_may_run_again(
        campus, inject_fault, monkeypatch, t, name, fields):
    before = snapshot(campus)
    pushes = len(campus.pushes)
    with monkeypatch.context() as patch:
        inject_fault(t, patch)
        assert campus.send(sender(campus, name), t, id="F", **fields) == {
            "t": t, "code": "internal"}
    assert snapshot(campus) == before
    campus.commit()
    assert len(campus.pushes) == pushes  # the undone request's push is gone too
    # Not remembered: the resend under the same id runs, as the first one never did.
    reply = campus.send(sender(campus, name), t, id="F", **fields)
    assert reply["code"] == "ok" and "replay" not in reply
    if "txn" in reply:
        assert reply["txn"] == before[0] + 1  # the failed request's txn was not used up


def test_a_failure_inside_offline_undoes_the_whole_upload(campus, inject_fault, monkeypatch):
    now = campus.clock.now_ms()
    with monkeypatch.context() as patch:
        inject_fault("offline", patch)
        assert campus.send(campus.pos, "offline", records=[
            {"id": "o1", "card": CARD, "amount": 100, "at": now}]) == {
                "t": "offline", "code": "internal"}
    reply = campus.send(campus.pos, "offline", records=[
        {"id": "o1", "card": CARD, "amount": 100, "at": now}])
    assert [result["code"] for result in reply["results"]] == ["ok"]
    assert "replay" not in reply["results"][0]
    assert campus.balance(STUDENT) == BALANCE - 100
