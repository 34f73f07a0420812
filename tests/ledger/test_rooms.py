"""The dorm room picker (选择宿舍, docs/PROTOCOL.md §4.15 `rooms`): a school's utility accounts
in account-id order, a page at a time, filtered by building or account-id prefix."""

import pytest

from tests.ledger.conftest import BALANCE, CUIK_ROOM, ROOM, limits


def _rooms(world, credential, **fields):
    reply = world.send(credential, "rooms", **fields)
    assert reply["code"] == "ok", reply
    return reply


def test_rooms_lists_the_schools_utility_accounts_in_account_id_order(campus):
    campus.open_room("WH-10A-0001")
    campus.open_room("WH-8D-1005")
    reply = _rooms(campus, campus.service, school="WH")
    assert reply == {"t": "rooms", "code": "ok", "next": None, "items": [
        {"account": "WH-10A-0001", "utility": "both", "power": "off", "balance": 0},
        {"account": "WH-8D-1005", "utility": "both", "power": "off", "balance": 0},
        {"account": ROOM, "utility": "both", "power": "on", "balance": BALANCE}]}


def test_a_school_credential_sees_its_own_school_and_no_other(campus):
    assert [item["account"] for item in _rooms(campus, campus.cuik_service)["items"]] == [
        CUIK_ROOM]
    assert campus.code(campus.cuik_service, "rooms", school="WH") == "wrong_school"
    # A school-less service names the school; an unknown one is refused.
    assert campus.code(campus.service, "rooms") == "bad_request"
    assert campus.code(campus.service, "rooms", school="NOPE") == "bad_request"


def test_building_and_prefix_narrow_the_list(campus):
    for room in ("WH-80A-0001", "WH-8A-0001", "WH-8D-1007"):
        campus.open_room(room)
    by_building = _rooms(campus, campus.service, school="WH", building="8")
    assert [item["account"] for item in by_building["items"]] == [
        "WH-8A-0001", ROOM, "WH-8D-1007"]
    by_prefix = _rooms(campus, campus.service, school="WH", prefix="WH-8D")
    assert [item["account"] for item in by_prefix["items"]] == [ROOM, "WH-8D-1007"]
    both = _rooms(campus, campus.service, school="WH", building="8", prefix="WH-8A")
    assert [item["account"] for item in both["items"]] == ["WH-8A-0001"]


@pytest.mark.parametrize("fields", [{"building": "8A"}, {"building": ""},
                                    {"building": "1" * (limits.building_digits_range[1] + 1)},
                                    {"building": 8}, {"prefix": "wh-8"}, {"prefix": ""},
                                    {"after": "a b"}, {"limit": 0}])
def test_a_bad_building_prefix_after_or_limit_is_bad_request(campus, fields):
    assert campus.code(campus.service, "rooms", school="WH", **fields) == "bad_request"


def test_limit_is_bounded_at_its_maximum(campus):
    assert _rooms(campus, campus.service, school="WH",
                  limit=limits.rooms_limit_max)["items"] != []
    assert campus.code(campus.service, "rooms", school="WH",
                       limit=limits.rooms_limit_max + 1) == "bad_request"


def test_pages_follow_next_until_null(campus):
    rooms = [f"WH-7A-{number:04d}" for number in range(7)]
    for room in rooms:
        campus.open_room(room)
    campus.commit()
    seen, after = [], None
    while True:
        fields = {"school": "WH", "building": "7", "limit": 3}
        if after is not None:
            fields["after"] = after
        reply = _rooms(campus, campus.service, **fields)
        seen += [item["account"] for item in reply["items"]]
        after = reply["next"]
        if after is None:
            break
    assert seen == rooms


def test_rooms_shows_power_and_balance_as_they_are_now(campus):
    campus.send(campus.meter, "meter", account=ROOM, amount=BALANCE, what="electric", id="m")
    item = _rooms(campus, campus.service, school="WH", prefix=ROOM)["items"][0]
    assert (item["power"], item["balance"]) == ("off", 0)


def test_terminals_may_not_ask_for_rooms(campus):
    assert campus.code(campus.pos, "rooms", school="WH") == "not_permitted"


def test_a_closed_room_is_not_offered(campus):
    # Refunded and closed for good, it was still listed: a student picking it paid WeChat
    # and the recharge was refused `account_closed` (helper-68).
    for room in ("WH-6A-0001", "WH-6A-0002", "WH-6A-0003"):
        campus.open_room(room)
    campus.ok(campus.admin, "refund", account="WH-6A-0002", id="refund-room")
    listed = _rooms(campus, campus.service, school="WH", building="6")
    assert [item["account"] for item in listed["items"]] == ["WH-6A-0001", "WH-6A-0003"]
    # A page of closed rooms alone is empty, and says where to go on from.
    page = _rooms(campus, campus.service, school="WH", building="6", after="WH-6A-0001",
                  limit=1)
    assert page["items"] == [] and page["next"] == "WH-6A-0002"
