"""The plain-debit pass (switch/ledger/plain_debit.py) against the general path it stands in
for: twin data dirs from one template (the same keys and secrets) are sent the same seeded
stream of requests, one with the pass and one without it. Every reply must be the same, and
after every commit every database must hold the same records.

The stream is made to reach both sides of each of the pass's conditions: plain debits and
debits with a PIN (right, wrong, malformed, nil), replays and reused ids, declines (funds,
limits, lost cards, frozen accounts, another school's cards, unknown cards), `confirm`,
fields no schema names, subsidies to spend first, holds, reversals, and, in the guarded campus,
the double-tap guard and meal caps at canteen tills, with the clock moved across the tap
window, meal periods and days."""

import random
import shutil

import pytest

from switch.config.masterkey import default_path
from switch.config.settings import Meal
from tests.ledger.conftest import (BALANCE, CARD, CUIK_CARD, CUIK_STUDENT, PIN, STUDENT,
                                   World, _attach_campus, committed_contents, general_path_only, limits,
                                   plain_debits_counted)

SEEDS = range(8)
STEPS = 400
LUNCH = Meal("lunch", 11 * 60, 13 * 60, 2, 2_000)
GUARDED = {"schools": {"WH": {"repeat_tap_window_s": 30, "meals": [LUNCH]}}}
MORE = [("WH20239001", "0A0B0001", 300), ("WH20239002", "0A0B0002", 60_000),
        ("CUIK20239001", "0C0B0001", 5_000)]
UNKNOWN_CARD = "0AFFFFFF"
AMOUNTS = (1, 7, 50, 199, 200, 201, 999, 5_000, 20_000, 100_000, 0, -5, 2**31, 2**63)
ODD_IDS = (True, -1, "", 1.5, 2**64 - 1, "x" * 300, None)


def _twins(make_world, tmp_path, guarded: bool) -> tuple[World, World]:
    """The campus with a canteen till and a few more students, and its copy: a credential's
    key and every sealed value are random, so the twin is copied, not provisioned again."""
    config = GUARDED if guarded else {}
    world = make_world("campus", **config)
    _attach_campus(world)
    world.add_terminal("WH-CANTEEN-1", meals=True)
    for account, card, balance in MORE:
        world.open_person(account, card, school=account[:-8], balance=balance)
    world.commit()
    twin_path = tmp_path / "twin"
    shutil.copytree(world.path, twin_path)
    shutil.copy(default_path(str(world.path)), default_path(str(twin_path)))   # its mode too
    twin = World(twin_path, **config)
    for each in (world, twin):
        _attach_campus(each)
        each.canteen = each.credential("WH-CANTEEN-1")
    return world, twin


def _contents(world) -> dict:
    return committed_contents(world.store)


class Stream:
    """One seeded stream of requests, as (credential name, message) or a clock or commit
    step; drawn once and sent to both twins."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)
        self.ids = 0
        self.sent: list = []        # (till, debit message) sent before, for replays

    def fresh_id(self):
        self.ids += 1
        return self.ids if self.rng.random() < 0.5 else f"d-{self.ids}"

    def step(self):
        rng = self.rng
        roll = rng.random()
        tills = ("pos", "pos2", "cuik_pos", "canteen")
        cards = (CARD, CARD, CUIK_CARD, UNKNOWN_CARD) + tuple(card for _, card, _ in MORE)
        accounts = (STUDENT, CUIK_STUDENT) + tuple(account for account, _, _ in MORE)
        if roll < 0.55:
            card = rng.choice(cards)
            # Mostly a till of the card's own school, as on a campus.
            own = ("cuik_pos",) if card.startswith("0C") else ("pos", "pos2", "canteen")
            till = rng.choice(own if rng.random() < 0.85 else tills)
            if self.sent and rng.random() < 0.12:
                till, message = rng.choice(self.sent)
                if rng.random() < 0.5:      # the same id, other fields: id_reuse
                    message = {**message, "amount": message["amount"] + 1}
                return ("request", till, message)
            amount = (rng.choice(AMOUNTS[:7]) if rng.random() < 0.8
                      else rng.choice(AMOUNTS))
            message = {"t": "debit", "card": card, "amount": amount, "id": self.fresh_id()}
            extra = rng.random()
            if extra < 0.25:
                message["pin"] = PIN
            elif extra < 0.30:
                message["pin"] = rng.choice(("999999", "12", None, 123456))
            elif extra < 0.33:
                message["confirm"] = True
            elif extra < 0.35:
                message["note"] = "x"
            elif extra < 0.38:
                message["id"] = rng.choice(ODD_IDS)
            if rng.random() < 0.5:
                message["seq"] = self.ids    # as every request frame from a till carries
            self.sent.append((till, message))
            return ("request", till, message)
        if roll < 0.62:
            return ("request", "service", {"t": "credit", "account": rng.choice(accounts),
                                           "amount": rng.choice((100, 5_000)),
                                           "source": "test", "id": self.fresh_id()})
        if roll < 0.65:
            return ("request", "service", {"t": rng.choice(("lost", "found", "found")),
                                           "card": rng.choice(cards), "id": self.fresh_id()})
        if roll < 0.67:
            return ("request", "admin", {"t": rng.choice(("freeze", "unfreeze", "unfreeze")),
                                         "account": rng.choice(accounts), "id": self.fresh_id()})
        if roll < 0.70:
            return ("request", "service", {"t": "set_limits", "account": rng.choice(accounts),
                                           "per_tx": rng.choice((500, 50_000)),
                                           "daily": rng.choice((1_000, 100_000)),
                                           "no_pin": rng.choice((100, 2_000, 2_000)),
                                           "id": self.fresh_id()})
        if roll < 0.72:
            return ("request", "admin", {"t": "subsidy", "account": rng.choice(accounts),
                                         "amount": rng.choice((30, 80)),
                                         "expires": "2099-12-31", "batch": "2026-12",
                                         "id": self.fresh_id()})
        if roll < 0.74:   # a shower's hold on a student's own money: `available` less it
            card = rng.choice(cards)
            return ("request", "cuik_water" if card.startswith("0C") else "water",
                    {"t": "hold", "card": card, "amount": rng.choice((50, 150)),
                     "id": self.fresh_id()})
        if roll < 0.77 and self.sent:
            till, message = rng.choice(self.sent)
            return ("request", till, {"t": "reverse", "target": message["id"],
                                      "id": self.fresh_id()})
        if roll < 0.86:
            return ("advance", rng.choice((1_000, 20_000, 40_000, 3_600_000, 13 * 3_600_000)))
        return ("commit",)


@pytest.mark.parametrize("guarded", [False, True], ids=["default", "guarded"])
@pytest.mark.parametrize("seed", SEEDS)
def test_the_plain_debit_pass_replies_and_writes_what_the_general_path_does(
        make_world, tmp_path, monkeypatch, seed, guarded):
    # A history mark every few records of an account, so the stream writes some.
    monkeypatch.setattr(limits, "records_between_history_marks", 3)
    fast, reference = _twins(make_world, tmp_path, guarded)
    if guarded:   # lunch time, so meal caps are in force at first
        for world in (fast, reference):
            world.set_local_time("2026-12-01T11:30:00")
    assert _contents(fast) == _contents(reference)
    stream, counts = Stream(seed), {}
    for _ in range(STEPS):
        step = stream.step()
        if step[0] == "request":
            _, name, message = step
            with plain_debits_counted(counts):
                fast_reply = fast.request(getattr(fast, name), dict(message))
            with general_path_only():
                reference_reply = reference.request(getattr(reference, name), dict(message))
            assert fast_reply == reference_reply, message
        elif step[0] == "advance":
            for world in (fast, reference):
                world.clock.ms += step[1]
        else:
            fast.commit()
            reference.commit()
            assert _contents(fast) == _contents(reference)
    fast.commit()
    reference.commit()
    assert _contents(fast) == _contents(reference)
    reference.close()
    # Both sides of the pass were reached: it took debits, and left others to the path.
    assert counts.get("taken", 0) >= 20, counts
    assert counts.get("left", 0) >= 20, counts


def test_a_fault_after_the_plain_debit_pass_wrote_undoes_all_of_it(campus, monkeypatch):
    """A debit the pass has begun writing that raises is undone whole and answered
    `internal`, like any request (dispatch.execute): no journal record, no remembered id."""
    from switch.ledger import state
    before = _contents(campus), campus.last_txn, campus.balance(STUDENT)
    counts = {}

    def failing(*args, **kwargs):
        raise RuntimeError("injected fault")
    with monkeypatch.context() as patch, plain_debits_counted(counts):
        patch.setattr(state.Ledger, "count_for_settlement", failing)
        reply = campus.send(campus.pos, "debit", card=CARD, amount=100, id="fault-1")
    assert reply == {"t": "debit", "code": "internal"}
    assert counts == {}    # it raised inside the pass: neither taken nor left
    campus.commit()
    assert (_contents(campus), campus.last_txn, campus.balance(STUDENT)) == before
    # The same id again, once the fault is gone: a new debit, not a replay.
    with plain_debits_counted(counts):
        reply = campus.send(campus.pos, "debit", card=CARD, amount=100, id="fault-1")
    assert reply["code"] == "ok" and "replay" not in reply
    assert counts == {"taken": 1}
    assert campus.balance(STUDENT) == BALANCE - 100
