"""Blacklist paging over real sockets (docs/PROTOCOL.md §4.13.1): a list of any size loads
in pages that each fit one frame, with no card missed or repeated, and the switch keeps
serving. Lists are seeded through the ledger (thousands of `lost` requests would only
slow the tests down); every terminal reads them over its own connection."""

import os
import random

import trio

from switch import limits
from switch.codec import ClientSession, FrameDecoder, ServerSession
from tests.shell.test_card_lifecycle import _push

PAGE = limits.blacklist_page_cards_max


def _longest_ids(count, start=0):
    """Card ids of the longest kind (32 hex chars), in card-id order."""
    return [f"{n:032X}" for n in range(start, start + count)]


async def _change(switch, school="WH", add=(), remove=()):
    """One new version of the school's list, durable before this returns."""
    switch.ledger.change_blacklist(school, add=add, remove=remove)
    await switch.ok(switch.admin, {"t": "ping"})   # commits the open batch with it


async def _ok(till, message):
    reply = await till.request(message)
    assert reply["code"] == "ok", (message, reply)
    return reply


async def _all_pages(till, since=0):
    """The pages of a full list, as a terminal asks for them."""
    pages = [await _ok(till, {"t": "blacklist", "since": since})]
    while pages[-1]["more"]:
        pages.append(await _ok(till, {"t": "blacklist", "since": since,
                                      "after": pages[-1]["full"][-1]}))
    return pages


# ---------------------------------------------------------------- the page fits a frame
def test_a_worst_case_page_delta_and_push_fit_one_frame():
    """Every id 32 chars, every int at its widest: still one frame, with room to spare."""
    key = os.urandom(limits.credential_key_size_bytes)
    client, server = ClientSession("T-1", key), ServerSession()
    hello = server.receive_hello(client.hello_frame(0)[4:], lambda who: key)
    client.receive_hello_reply(server.accept_hello(hello, {"role": "terminal", "time": 0,
                                                           "blacklist": 0})[4:])
    server._push = limits.id_int_max - 1
    cards = _longest_ids(PAGE)
    widest = limits.id_int_max
    frames = {
        "page": server.encode_reply({"t": "blacklist", "re": widest, "code": "ok",
                                     "version": widest, "full": cards, "more": True}),
        "delta": server.encode_reply({"t": "blacklist", "re": widest, "code": "ok",
                                      "version": widest, "add": cards[:PAGE // 2],
                                      "remove": cards[PAGE // 2:]}),
        "push": server.encode_push({"t": "blacklist", "version": widest, "add": cards,
                                    "remove": []}),
    }
    margin_bytes = 2048
    for name, frame in frames.items():
        assert len(frame) - limits.frame_length_prefix_bytes <= \
            limits.frame_size_bytes_max - margin_bytes, name
        [payload] = FrameDecoder().feed(frame)
        message = client.receive(payload)
        assert sorted(message.get("full", []) + message.get("add", []) +
                      message.get("remove", [])) == cards, name


def test_the_versions_bound_keeps_its_changes():
    # A `since` answered by a delta must never need a change the switch has forgotten.
    assert limits.blacklist_delta_versions_max <= limits.blacklist_changes_kept


# ---------------------------------------------------------------- pages
async def test_a_list_of_a_page_is_one_page_and_one_more_card_makes_two(switch):
    cards = _longest_ids(PAGE + 1)
    await _change(switch, add=cards[:PAGE])
    till = await switch.terminal("WH-POS-1")
    whole = await _ok(till, {"t": "blacklist", "since": 0})
    assert whole["full"] == cards[:PAGE] and whole["more"] is False and whole["version"] == 1
    await _change(switch, add=cards[PAGE:])
    first = await _ok(till, {"t": "blacklist", "since": 0})
    assert first["full"] == cards[:PAGE] and first["more"] is True and first["version"] == 2
    last = await _ok(till, {"t": "blacklist", "since": 0, "after": cards[PAGE - 1]})
    assert last["full"] == cards[PAGE:] and last["more"] is False and last["version"] == 2
    # A delta that fits is exactly what a v1 terminal reads today: no `more`, no `full`.
    delta = await till.request({"t": "blacklist", "since": 1})
    assert delta == {"t": "blacklist", "re": delta["re"], "code": "ok", "version": 2,
                     "add": cards[PAGE:], "remove": []}


async def test_ten_thousand_cards_load_in_pages_with_none_missing_or_repeated(switch):
    rng = random.Random(12)
    wh = set()
    while len(wh) < 10_000:   # every length, so ids that prefix each other meet
        wh.add("".join(rng.choice("0123456789ABCDEF")
                       for _ in range(rng.randint(limits.card_id_chars_min,
                                                  limits.card_id_chars_max))))
    cuik = set(rng.sample(sorted(wh), 1000)) | {"0000", "FFFF", "0000FFFF"}
    wh = sorted(wh)
    for start in range(0, len(wh), 2500):
        await _change(switch, add=wh[start:start + 2500])
    await _change(switch, school="CUIK", add=sorted(cuik))
    till = await switch.terminal("WH-POS-1")
    pages = await _all_pages(till)
    assert len(pages) == -(-len(wh) // PAGE)
    loaded = [card for page in pages for card in page["full"]]
    assert loaded == wh                  # in card-id order: nothing missing, nothing twice
    assert all(len(page["full"]) == PAGE for page in pages[:-1])
    assert {page["version"] for page in pages} == {4}
    assert await till.load_blacklist() == (4, set(wh))
    cuik_till = await switch.terminal("CUIK-POS-1", school="CUIK")
    assert await cuik_till.load_blacklist() == (1, cuik)
    assert (await till.request({"t": "ping"}))["code"] == "ok"


async def test_changes_while_paging_are_caught_up_from_the_first_pages_version(switch):
    cards = _longest_ids(2 * PAGE, start=1)
    await _change(switch, add=cards)
    till = await switch.terminal("WH-POS-1")
    first = await _ok(till, {"t": "blacklist", "since": 0})
    assert first["more"] and first["version"] == 1
    # Between pages: a card listed below the cursor, one in the first page taken off, one
    # in the page still to come taken off.
    below, gone_read, gone_unread = _longest_ids(1)[0], cards[5], cards[PAGE + 5]
    await _change(switch, add=[below])
    await _change(switch, remove=[gone_read, gone_unread])
    rest = await _ok(till, {"t": "blacklist", "since": 0, "after": first["full"][-1]})
    assert rest["more"] is False and rest["version"] == 3 and gone_unread not in rest["full"]
    held = set(first["full"]) | set(rest["full"])
    truth = set(cards) - {gone_read, gone_unread} | {below}
    # Catching up from the last page's version would miss both changes below the cursor.
    from_last = await _ok(till, {"t": "blacklist", "since": rest["version"]})
    assert from_last["add"] == [] and from_last["remove"] == []
    assert below not in held and gone_read in held
    # From the first page's version (what the terminal must do), nothing is missed.
    catch_up = await _ok(till, {"t": "blacklist", "since": first["version"]})
    assert (held | set(catch_up["add"])) - set(catch_up["remove"]) == truth
    assert catch_up["version"] == 3
    # The client's loop does exactly that.
    assert await till.load_blacklist() == (3, truth)


# ---------------------------------------------------------------- deltas and their bounds
async def test_a_delta_of_more_than_a_page_is_sent_as_the_paged_full_list(switch):
    cards = _longest_ids(PAGE + 2)
    await _change(switch, add=cards[:1])
    await _change(switch, add=cards[1:PAGE + 1])
    till = await switch.terminal("WH-POS-1")
    at_page = await _ok(till, {"t": "blacklist", "since": 1})
    assert at_page["add"] == cards[1:PAGE + 1] and at_page["remove"] == []
    await _change(switch, add=cards[PAGE + 1:])
    over = await _ok(till, {"t": "blacklist", "since": 1})
    assert "add" not in over and over["full"] == cards[:PAGE] and over["more"] is True
    assert await till.load_blacklist(1, cards[:1]) == (3, set(cards))
    small = await _ok(till, {"t": "blacklist", "since": 2})
    assert small["add"] == cards[PAGE + 1:] and "more" not in small


async def test_a_since_further_behind_than_the_versions_bound_gets_the_full_list(switch):
    bound = limits.blacklist_delta_versions_max
    cards = _longest_ids(bound + 2)
    for card in cards:     # one version each
        switch.ledger.change_blacklist("WH", add=[card])
    await switch.ok(switch.admin, {"t": "ping"})
    till = await switch.terminal("WH-POS-1")
    current = len(cards)
    at_bound = await _ok(till, {"t": "blacklist", "since": current - bound})
    assert at_bound["add"] == cards[-bound:] and at_bound["version"] == current
    past = await _ok(till, {"t": "blacklist", "since": current - bound - 1})
    assert past["full"] == cards and past["more"] is False and past["version"] == current


async def test_after_must_be_a_card_id_and_always_asks_for_a_page(switch):
    cards = _longest_ids(3)
    await _change(switch, add=cards)
    till = await switch.terminal("WH-POS-1")
    for after in ("abcd", "ABC", "G000", "A" * (limits.card_id_chars_max + 1), "", 5, None,
                  b"ABCD"):
        reply = await till.request({"t": "blacklist", "since": 0, "after": after})
        assert reply["code"] == "bad_request", after
    future = await till.request({"t": "blacklist", "since": 2, "after": cards[0]})
    assert future["code"] == "bad_request"
    # With `after`, a `since` that would get a (here empty) delta still gets the page.
    page = await _ok(till, {"t": "blacklist", "since": 1, "after": cards[0]})
    assert page["full"] == cards[1:] and page["more"] is False and page["version"] == 1
    beyond = await _ok(till, {"t": "blacklist", "since": 0, "after": "F" * 32})
    assert beyond["full"] == [] and beyond["more"] is False


# ---------------------------------------------------------------- pushes
async def test_a_push_of_more_than_a_page_tells_terminals_to_fetch(switch):
    till = await switch.terminal("WH-POS-1")
    cards = _longest_ids(2 * PAGE + 1)
    await _change(switch, add=cards[:PAGE])
    assert await _push(till) == {"t": "blacklist", "push": 1, "version": 1,
                                 "add": cards[:PAGE], "remove": []}
    await _change(switch, add=cards[PAGE:])
    assert await _push(till) == {"t": "blacklist", "push": 2, "fetch": True}
    assert await till.load_blacklist(1, cards[:PAGE]) == (2, set(cards))


async def test_a_push_far_beyond_a_frame_leaves_the_switch_serving(switch):
    await switch.person("WH1", "AAAA", balance=5000)
    till = await switch.terminal("WH-POS-1")
    cards = _longest_ids(5000)
    await _change(switch, add=cards)
    assert await _push(till) == {"t": "blacklist", "push": 1, "fetch": True}
    with trio.fail_after(30):
        assert await till.load_blacklist() == (1, set(cards))
    debit = await till.request({"t": "debit", "card": "AAAA", "amount": 100, "id": 1})
    assert debit["code"] == "ok"
    late = await switch.terminal("WH-POS-2")
    assert late.hello_reply["blacklist"] == 1
