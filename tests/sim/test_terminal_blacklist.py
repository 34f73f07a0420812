"""The simulator's till keeps the switch's blacklist (docs/PROTOCOL.md §4.13.1): it pages a
list far beyond one frame, fetches after a `fetch` push, and ends with exactly the
switch's list even when the list changes between its pages. Its requests go to a real
switch over a socket; only the till's scheduler is left out (the test hands it replies)."""

import sys
from collections import Counter
from types import SimpleNamespace

import pytest

from switch import limits
from tests.shell.harness import Switch
from tests.sim.test_simulator import SIM_DIR

if str(SIM_DIR) not in sys.path:
    sys.path.insert(0, str(SIM_DIR))

from onecard_sim.population import Credential  # noqa: E402
from onecard_sim.terminals import Till  # noqa: E402

PAGE = limits.blacklist_page_cards_max


@pytest.fixture
async def switch(tmp_path, nursery):
    instance = await Switch(tmp_path / "data").start(nursery)
    yield instance
    await instance.stop()


def _till():
    run = SimpleNamespace(open_loop=False, stats=SimpleNamespace(events=Counter(),
                                                                  errors=Counter()))
    return Till(run, Credential("WH-POS-1", "terminal", "pos", "WH", "WH-POS-1"), 0)


async def _serve(till, client, between_requests=None):
    """Send what the till has ready, one request at a time, until it asks for nothing."""
    sent = 0
    while till.ready:
        pending = till.ready.popleft()
        reply = await client.request(pending.message)
        sent += 1
        while client.pushes:
            till.on_push(client.pushes.pop(0), 0.0)
        if between_requests is not None:
            await between_requests(sent)
        till.on_reply(pending, reply, reply["code"], 0.0)
        assert sent < 100, "the till never finished"
    return sent


def _the_list(switch):
    prefix = b"WH\0"
    return {key[len(prefix):].decode()
            for key in switch.store.keys_with_prefix("blacklist_cards", prefix, 10**6)}


async def _change(switch, add=(), remove=()):
    switch.ledger.change_blacklist("WH", add=add, remove=remove)
    await switch.ok(switch.admin, {"t": "ping"})


async def test_a_till_pages_a_big_list_and_fetches_after_a_fetch_push(switch):
    cards = [f"{n:08X}" for n in range(0, 20_000, 2)]          # 10,000 cards
    await _change(switch, add=cards)
    till = _till()
    client = await switch.terminal(till.who)
    till._catch_up_blacklist(0.0)               # as after a sign-on that found it behind
    assert await _serve(till, client) == -(-len(cards) // PAGE)
    assert till.blacklist == set(cards) and till.blacklist_version == 1
    # A change too big for one push: the till is told to fetch, and does.
    more = [f"{n:08X}" for n in range(1, 2 * PAGE + 3, 2)]   # a page and one more
    await _change(switch, add=more)
    await client.request({"t": "ping"})      # the push comes before this reply
    [push] = client.pushes
    client.pushes.clear()
    assert push.get("fetch") is True
    till.on_push(push, 0.0)
    await _serve(till, client)
    assert till.blacklist == _the_list(switch) and till.blacklist_version == 2
    # A small change arrives as a push the till applies by itself.
    await _change(switch, remove=cards[:3])
    await client.request({"t": "ping"})
    [push] = client.pushes
    client.pushes.clear()
    till.on_push(push, 0.0)
    assert not till.ready and till.blacklist == _the_list(switch) and till.blacklist_version == 3


async def test_a_till_whose_list_changes_between_pages_ends_with_the_switchs_list(switch):
    cards = [f"{n:08X}" for n in range(10, 3 * PAGE + 10)]
    await _change(switch, add=cards)
    till = _till()
    client = await switch.terminal(till.who)

    async def meanwhile(sent):
        if sent == 1:     # after the first page: changes on both sides of the cursor
            await _change(switch, add=["00000001"], remove=[cards[3], cards[2 * PAGE]])
        if sent == 2:
            await _change(switch, add=[f"{n:08X}" for n in range(10**6, 10**6 + 2 * PAGE)])

    till._catch_up_blacklist(0.0)
    await _serve(till, client, meanwhile)
    assert till.blacklist == _the_list(switch)
    assert till.blacklist_version == switch.ledger.blacklist.version("WH")
    assert till.run.stats.events["blacklist pages"] > 3   # it had to load the list again
