"""Showers, dorm meters, offline uploads and day totals over real sockets; fake clock."""

import trio

from switch.persistence.audit import audit
from switch.ledger.qr import qr_code
from tests.shell.harness import Switch
from tests.shell.test_card_lifecycle import _push


# ---------------------------------------------------------------- hot water
async def test_hold_complete_releases_the_rest(switch):
    await switch.person("WH1", "AAAA", balance=1000)
    shower = await switch.terminal("WH-HW-1", kind="water")
    hold = await switch.ok(shower, {"t": "hold", "card": "AAAA", "amount": 600, "id": "h1"})
    assert hold["balance"] == 1000 and hold["available"] == 400
    assert hold["expires"] == switch.clock.now_ms() + 30 * 60 * 1000
    assert switch.ledger.holds.open_count == 1
    assert (await shower.request({"t": "hold", "card": "AAAA", "amount": 500, "id": "h2"}))[
        "code"] == "insufficient_funds"
    over = await shower.request({"t": "complete", "hold": hold["hold"], "amount": 601, "id": "c0"})
    assert over["code"] == "over_hold"
    done = await switch.ok(shower, {"t": "complete", "hold": hold["hold"], "amount": 235,
                                    "id": "c1"})
    assert done["balance"] == 765 and done["available"] == 765
    assert (await shower.request({"t": "void", "hold": hold["hold"], "id": "v1"}))["code"] == \
        "hold_closed"
    assert (await shower.request({"t": "complete", "hold": "H999", "amount": 1, "id": "c2"}))[
        "code"] == "hold_unknown"
    assert switch.ledger.holds.open_count == 0


async def test_void_and_other_terminals_cannot_touch_a_hold(switch):
    await switch.person("WH1", "AAAA", balance=1000)
    shower = await switch.terminal("WH-HW-1", kind="water")
    other = await switch.terminal("WH-HW-2", kind="water")
    hold = await switch.ok(shower, {"t": "hold", "card": "AAAA", "amount": 600, "id": "h"})
    assert (await other.request({"t": "void", "hold": hold["hold"], "id": "x"}))["code"] == \
        "hold_unknown"
    voided = await switch.ok(shower, {"t": "void", "hold": hold["hold"], "id": "v"})
    assert voided["available"] == 1000
    bad = await shower.request({"t": "hold", "card": "AAAA", "qr": "x", "amount": 1, "id": "b"})
    assert bad["code"] == "bad_request"
    neither = await shower.request({"t": "hold", "amount": 1, "id": "n"})
    assert neither["code"] == "bad_request"
    pos = await switch.terminal("WH-POS-1")
    assert (await pos.request({"t": "hold", "card": "AAAA", "amount": 1, "id": 1}))["code"] == \
        "not_permitted"


async def test_hold_expires_by_the_switch_and_late_complete_is_refused(switch):
    await switch.person("WH1", "AAAA", balance=1000)
    shower = await switch.terminal("WH-HW-1", kind="water")
    hold = await switch.ok(shower, {"t": "hold", "card": "AAAA", "amount": 600, "id": "h"})
    switch.clock.advance(30 * 60 + 1)
    switch.server.housekeep()
    assert (await shower.request({"t": "ping"}))["code"] == "ok"  # after the expiry's commit
    account = await switch.admin.request({"t": "account", "account": "WH1"})
    assert account["available"] == 1000 and account["balance"] == 1000
    late = await shower.request({"t": "complete", "hold": hold["hold"], "amount": 100, "id": "c"})
    assert late["code"] == "hold_expired"
    history = await switch.admin.request({"t": "history", "account": "WH1", "limit": 1})
    assert history["items"][0]["kind"] == "expire"
    assert switch.ledger.holds.open_count == 0


async def test_complete_just_past_timeout_is_expired_even_before_housekeeping(switch):
    await switch.person("WH1", "AAAA", balance=1000)
    shower = await switch.terminal("WH-HW-1", kind="water")
    hold = await switch.ok(shower, {"t": "hold", "card": "AAAA", "amount": 600, "id": "h"})
    switch.clock.advance(30 * 60)
    late = await shower.request({"t": "complete", "hold": hold["hold"], "amount": 100, "id": "c"})
    assert late["code"] == "hold_expired"
    assert (await switch.admin.request({"t": "account", "account": "WH1"}))["available"] == 1000


async def test_hold_by_qr_and_pin_rules(switch):
    await switch.person("WH1", "AAAA", balance=20_000)
    service = await switch.service("app")
    shower = await switch.terminal("WH-HW-1", kind="water")
    secret = (await switch.ok(service, {"t": "virtual_card", "account": "WH1", "id": "v"}))[
        "qr_secret"]
    code = qr_code(secret, "WH1", switch.clock.now_ms() // 1000, "00aa00aa")
    by_qr = await switch.ok(shower, {"t": "hold", "qr": code, "amount": 8000, "id": "q"})
    assert by_qr["available"] == 12_000
    assert (await shower.request({"t": "hold", "qr": code, "amount": 1, "id": "q2"}))["code"] \
        == "qr_used"
    assert (await shower.request({"t": "hold", "card": "AAAA", "amount": 6000, "id": "p"}))[
        "code"] == "pin_required"


async def test_daily_limit_counts_completes_not_open_holds(switch):
    await switch.person("WH1", "AAAA", balance=500_000)
    shower = await switch.terminal("WH-HW-1", kind="water")
    service = await switch.service("app")
    await switch.ok(service, {"t": "set_limits", "account": "WH1", "daily": 1000, "per_tx": 1000,
                              "no_pin": 1000, "id": "l"})
    first = await switch.ok(shower, {"t": "hold", "card": "AAAA", "amount": 1000, "id": "h1"})
    second = await switch.ok(shower, {"t": "hold", "card": "AAAA", "amount": 1000, "id": "h2"})
    await switch.ok(shower, {"t": "complete", "hold": first["hold"], "amount": 700, "id": "c1"})
    assert (await shower.request({"t": "hold", "card": "AAAA", "amount": 400, "id": "h3"}))[
        "code"] == "limit_daily"
    await switch.ok(shower, {"t": "void", "hold": second["hold"], "id": "v2"})


async def test_open_holds_survive_restart_and_audit_checks_them(tmp_path, nursery):
    first = await Switch(tmp_path / "d").start(nursery)
    await first.person("WH1", "AAAA", balance=1000)
    shower = await first.terminal("WH-HW-1", kind="water")
    hold = await first.ok(shower, {"t": "hold", "card": "AAAA", "amount": 600, "id": "h"})
    key = shower.session.key
    await first.stop()
    report = audit(str(tmp_path / "d"))
    assert report.sound and report.open_holds == 1
    second = await Switch(tmp_path / "d", clock=first.clock).start(nursery)
    assert second.ledger.holds.open_count == 1
    shower2 = await second.connect("WH-HW-1", key)
    done = await second.ok(shower2, {"t": "complete", "hold": hold["hold"], "amount": 100,
                                     "id": "c"})
    assert done["balance"] == 900 and done["available"] == 900
    await second.stop()
    assert audit(str(tmp_path / "d")).sound


async def test_restart_then_expiry_of_a_hold_left_open(tmp_path, nursery):
    first = await Switch(tmp_path / "d").start(nursery)
    await first.person("WH1", "AAAA", balance=1000)
    shower = await first.terminal("WH-HW-1", kind="water")
    await first.ok(shower, {"t": "hold", "card": "AAAA", "amount": 600, "id": "h"})
    await first.stop()
    second = await Switch(tmp_path / "d", clock=first.clock).start(nursery)
    second.clock.advance(31 * 60)
    second.server.housekeep()
    assert (await second.admin.request({"t": "ping"}))["code"] == "ok"
    assert (await second.admin.request({"t": "account", "account": "WH1"}))["available"] == 1000
    await second.stop()
    assert audit(str(tmp_path / "d")).sound


# ---------------------------------------------------------------- dorm utilities
async def _room(switch, account="WH-8D-1006", utility="both", school="WH"):
    await switch.ok(switch.admin, {"t": "open_account", "account": account, "school": school,
                                   "kind": "utility", "utility": utility, "id": f"o-{account}"})


async def test_meter_cuts_off_once_and_recharge_restores_once(switch):
    await _room(switch)
    meter = await switch.terminal("WH-MTR-8D", kind="meter")
    service = await switch.service("wechat-pay")
    recharge = await switch.ok(service, {"t": "credit", "account": "WH-8D-1006", "amount": 300,
                                         "source": "wechat", "id": "r1"})
    history = await switch.admin.request({"t": "history", "account": "WH-8D-1006", "limit": 2})
    assert [i["kind"] for i in history["items"]] == ["restore", "credit"]  # new room: power on
    assert recharge["balance"] == 300
    first = await switch.ok(meter, {"t": "meter", "account": "WH-8D-1006", "amount": 200,
                                    "what": "electric", "id": 1})
    assert first["cutoff"] is False and first["balance"] == 100
    dry = await switch.ok(meter, {"t": "meter", "account": "WH-8D-1006", "amount": 150,
                                  "what": "water", "id": 2})
    assert dry["cutoff"] is True and dry["balance"] == -50
    more = await switch.ok(meter, {"t": "meter", "account": "WH-8D-1006", "amount": 10,
                                   "what": "electric", "id": 3})
    assert more["cutoff"] is False and more["balance"] == -60  # always applied, one cutoff
    small = await switch.ok(service, {"t": "credit", "account": "WH-8D-1006", "amount": 60,
                                      "source": "wechat", "id": "r2"})
    assert small["balance"] == 0
    account = await switch.admin.request({"t": "account", "account": "WH-8D-1006"})
    assert account["power"] is False  # exactly 0 is not above 0
    await switch.ok(service, {"t": "credit", "account": "WH-8D-1006", "amount": 1,
                              "source": "wechat", "id": "r3"})
    assert (await switch.admin.request({"t": "account", "account": "WH-8D-1006"}))["power"]
    items = (await switch.admin.request({"t": "history", "account": "WH-8D-1006"}))["items"]
    kinds = [i["kind"] for i in items]
    assert kinds.count("cutoff") == 1 and kinds.count("restore") == 2


async def test_meter_rules(switch):
    await _room(switch)
    await switch.person("WH1", "AAAA")
    meter = await switch.terminal("WH-MTR-1", kind="meter")
    cuik_meter = await switch.terminal("CUIK-MTR-1", school="CUIK", kind="meter")
    base = {"t": "meter", "account": "WH-8D-1006", "amount": 10, "what": "electric"}
    assert (await meter.request({**base, "account": "WH1", "id": 1}))["code"] == "bad_request"
    assert (await meter.request({**base, "account": "WH-1D-1", "id": 2}))["code"] == \
        "unknown_account"
    assert (await meter.request({**base, "amount": 0, "id": 3}))["code"] == "bad_amount"
    assert (await meter.request({**base, "what": "gas", "id": 4}))["code"] == "bad_request"
    assert (await cuik_meter.request({**base, "id": 5}))["code"] == "wrong_school"
    await switch.ok(switch.admin, {"t": "freeze", "account": "WH-8D-1006", "id": "f"})
    frozen = await meter.request({**base, "id": 6})
    assert frozen["code"] == "ok"  # the energy was used


async def test_split_building_has_one_account_per_utility(switch):
    admin = switch.admin
    both = await admin.request({"t": "open_account", "account": "CUIK-9D-0101", "school": "CUIK",
                                "kind": "utility", "utility": "both", "id": "a"})
    assert both["code"] == "bad_request"  # CUIK building 9 pays electricity and water apart
    await _room(switch, "CUIK-9D-0101-E", "electric", "CUIK")
    await _room(switch, "CUIK-9D-0101-W", "water", "CUIK")
    split = await admin.request({"t": "open_account", "account": "CUIK-8D-0101", "school": "CUIK",
                                 "kind": "utility", "utility": "water", "id": "b"})
    assert split["code"] == "bad_request"  # building 8 shares one account
    meter = await switch.terminal("CUIK-MTR-9", school="CUIK", kind="meter")
    assert (await meter.request({"t": "meter", "account": "CUIK-9D-0101-E", "amount": 5,
                                 "what": "water", "id": 1}))["code"] == "bad_request"
    assert (await meter.request({"t": "meter", "account": "CUIK-9D-0101-E", "amount": 5,
                                 "what": "electric", "id": 2}))["code"] == "ok"


async def test_concurrent_meters_and_recharges_cut_and_restore_exactly_once_per_crossing(switch):
    await _room(switch)
    meters = [await switch.terminal(f"WH-MTR-{n}", kind="meter") for n in range(4)]
    service = await switch.service("wechat-pay")
    await switch.ok(service, {"t": "credit", "account": "WH-8D-1006", "amount": 1000,
                              "source": "wechat", "id": "seed"})

    async def draw(meter, start):
        await meter.pipeline([{"t": "meter", "account": "WH-8D-1006", "amount": 37,
                               "what": "electric", "id": start + n} for n in range(30)])

    async def pay():
        for n in range(10):
            await service.request({"t": "credit", "account": "WH-8D-1006", "amount": 120,
                                   "source": "wechat", "id": f"pay-{n}"})

    async with trio.open_nursery() as nursery:
        for n, meter in enumerate(meters):
            nursery.start_soon(draw, meter, n * 100)
        nursery.start_soon(pay)
    items = []
    before = None
    while True:
        page = await switch.admin.request({"t": "history", "account": "WH-8D-1006",
                                           "limit": 200, **({"before": before} if before else {})})
        items += page["items"]
        before = page["next"]
        if before is None:
            break
    items.reverse()
    power, crossings = False, []
    for item in items:
        if item["kind"] in ("cutoff", "restore"):
            crossings.append(item["kind"])
            power = item["kind"] == "restore"
        elif item["kind"] in ("meter", "credit"):
            # after each money record the power state is consistent with the balance
            pass
    # cutoffs and restores alternate, starting with the first restore
    assert crossings[0] == "restore"
    assert all(a != b for a, b in zip(crossings, crossings[1:]))
    final = await switch.admin.request({"t": "account", "account": "WH-8D-1006"})
    assert final["balance"] == 1000 + 1200 - 120 * 37
    assert final["power"] == power == (crossings[-1] == "restore")


# ---------------------------------------------------------------- offline
async def test_offline_upload_applies_past_balance_and_freezes_overdrawn(switch):
    await switch.person("WH1", "AAAA", balance=500)
    till = await switch.terminal("WH-POS-1")
    other_till = await switch.terminal("WH-POS-2")
    now = switch.clock.now_ms()
    records = [{"id": "o1", "card": "AAAA", "amount": 300, "at": now - 60_000},
               {"id": "o2", "card": "AAAA", "amount": 300, "at": now - 50_000},
               {"id": "o1", "card": "AAAA", "amount": 300, "at": now - 60_000}]
    reply = await switch.ok(till, {"t": "offline", "records": records})
    first, second, duplicate = reply["results"]
    assert first["code"] == "ok" and first["balance"] == 200
    assert second["code"] == "ok" and second["balance"] == -100
    assert duplicate == {**first, "replay": True}
    push = await _push(other_till)
    assert push["add"] == ["AAAA"]
    account = await switch.admin.request({"t": "account", "account": "WH1"})
    assert account["status"] == "frozen" and account["balance"] == -100
    online = await till.request({"t": "debit", "card": "AAAA", "amount": 1, "id": "d"})
    assert online["code"] == "account_frozen"
    again = await switch.ok(till, {"t": "offline", "records": records[:1]})
    assert again["results"][0]["replay"] is True
    await switch.ok(switch.admin, {"t": "credit", "account": "WH1", "amount": 1000,
                                   "source": "counter", "id": "pay"})
    await switch.ok(switch.admin, {"t": "unfreeze", "account": "WH1", "id": "u"})
    assert (await _push(other_till))["remove"] == ["AAAA"]
    assert (await till.request({"t": "debit", "card": "AAAA", "amount": 1, "id": "d2"}))[
        "code"] == "ok"


async def test_offline_refusals_in_order(switch):
    await switch.person("WH1", "AAAA", balance=500)
    await switch.person("CUIK1", "CCCC", school="CUIK", balance=500)
    till = await switch.terminal("WH-POS-1")
    await switch.ok(till, {"t": "debit", "card": "AAAA", "amount": 1, "id": "used"})
    now = switch.clock.now_ms()
    records = [
        "not a map",
        {"id": "m", "card": "AAAA", "amount": 1},
        {"id": "used", "card": "AAAA", "amount": 1, "at": now},
        {"id": "a", "card": "AAAA", "amount": 0, "at": now},
        {"id": "b", "card": "FFFF", "amount": 1, "at": now},
        {"id": "c", "card": "CCCC", "amount": 1, "at": now},
        {"id": "d", "card": "AAAA", "amount": 1, "at": now - 7 * 86400 * 1000 - 1},
        {"id": "e", "card": "AAAA", "amount": 1, "at": now + 5 * 60 * 1000 + 1},
        {"id": "f", "card": "AAAA", "amount": 1, "at": now + 5 * 60 * 1000},
    ]
    results = (await switch.ok(till, {"t": "offline", "records": records}))["results"]
    assert [r["code"] for r in results] == ["bad_request", "bad_request", "id_reuse",
                                            "bad_amount", "card_unknown", "wrong_school",
                                            "too_old", "bad_request", "ok"]
    assert (await till.request({"t": "offline", "records": []}))["code"] == "bad_request"
    too_many = [{"id": f"x{n}", "card": "AAAA", "amount": 1, "at": now} for n in range(501)]
    assert (await till.request({"t": "offline", "records": too_many}))["code"] == "bad_request"
    assert (await till.request({"t": "balance", "card": "AAAA"}))["balance"] == 498


async def test_offline_after_lost_flag(switch):
    await switch.person("WH1", "AAAA", balance=500)
    till = await switch.terminal("WH-POS-1")
    before = switch.clock.now_ms()
    switch.clock.advance(60)
    await switch.ok(switch.admin, {"t": "lost", "card": "AAAA", "id": "l"})
    switch.clock.advance(60)
    results = (await switch.ok(till, {"t": "offline", "records": [
        {"id": 1, "card": "AAAA", "amount": 10, "at": before},
        {"id": 2, "card": "AAAA", "amount": 10, "at": switch.clock.now_ms() - 1000}]}))["results"]
    assert "flag" not in results[0] and results[1]["flag"] == "after_lost"


# ---------------------------------------------------------------- settlement
async def test_settle_counts_the_local_day_and_leaves_out_reversals(switch):
    await switch.person("WH1", "AAAA", balance=100_000)
    till = await switch.terminal("WH-POS-1")
    # 2026-11-22 23:30 in Shanghai is 15:30 UTC
    switch.clock.ms = 1_795_361_400_000
    await switch.ok(till, {"t": "debit", "card": "AAAA", "amount": 1000, "id": 1})
    await switch.ok(till, {"t": "debit", "card": "AAAA", "amount": 250, "id": 2})
    await switch.ok(till, {"t": "debit", "card": "AAAA", "amount": 99, "id": 3})
    await switch.ok(till, {"t": "reverse", "target": 3, "id": "r"})
    await switch.ok(till, {"t": "offline", "records": [
        {"id": "o", "card": "AAAA", "amount": 40, "at": switch.clock.now_ms() - 3600_000}]})
    switch.clock.advance(3600)  # 00:30 the next day locally
    await switch.ok(till, {"t": "debit", "card": "AAAA", "amount": 7, "id": 4})
    day = await switch.ok(till, {"t": "settle", "day": "2026-11-22", "count": 3, "total": 1290})
    assert day["count"] == 3 and day["total"] == 1290 and day["match"] is True
    mismatch = await switch.ok(till, {"t": "settle", "day": "2026-11-22", "count": 3,
                                      "total": 1291})
    assert mismatch["match"] is False
    next_day = await switch.ok(till, {"t": "settle", "day": "2026-11-23", "count": 0, "total": 0})
    assert next_day["count"] == 1 and next_day["total"] == 7 and next_day["match"] is False
    assert (await till.request({"t": "settle", "day": "2026-02-30", "count": 0, "total": 0}))[
        "code"] == "bad_request"


# ---------------------------------------------------------------- the room picker
async def test_the_room_picker_pages_a_schools_rooms_over_sockets(switch):
    for room, school in (("WH-8D-1006", "WH"), ("WH-8D-1007", "WH"), ("WH-9A-0001", "WH"),
                         ("CUIK-9A-0101", "CUIK")):
        await switch.ok(switch.admin, {"t": "open_account", "account": room, "school": school,
                                       "kind": "utility", "id": f"open-{room}",
                                       **({"utility": "electric"} if school == "CUIK" else {})})
    await switch.ok(switch.admin, {"t": "credit", "account": "WH-8D-1007", "amount": 500,
                                   "source": "wx", "id": "c"})
    picker = await switch.service("wh-app", school="WH")
    first = await switch.ok(picker, {"t": "rooms", "building": "8", "limit": 1})
    assert first["items"] == [{"account": "WH-8D-1006", "utility": "both", "power": "off",
                               "balance": 0}]
    assert first["next"] == "WH-8D-1006"
    second = await switch.ok(picker, {"t": "rooms", "building": "8", "after": first["next"]})
    assert second["items"] == [{"account": "WH-8D-1007", "utility": "both", "power": "on",
                                "balance": 500}]
    assert second["next"] is None
    assert (await picker.request({"t": "rooms", "school": "CUIK"}))["code"] == "wrong_school"
    assert (await picker.request({"t": "rooms", "prefix": "wh"}))["code"] == "bad_request"
