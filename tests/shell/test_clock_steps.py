"""Clock steps backwards and forwards: holds, QR windows and daily limits stay sane."""

from switch.ledger.qr import qr_code


async def test_holds_survive_a_step_back_and_expire_after_a_step_forward(switch):
    await switch.person("WH1", "AAAA", balance=1000)
    shower = await switch.terminal("WH-HW-1", kind="water")
    first = await switch.ok(shower, {"t": "hold", "card": "AAAA", "amount": 300, "id": "h1"})
    switch.clock.advance(-3600)  # NTP steps the clock back an hour
    switch.server.housekeep()
    done = await switch.ok(shower, {"t": "complete", "hold": first["hold"], "amount": 100,
                                    "id": "c1"})
    assert done["balance"] == 900
    second = await switch.ok(shower, {"t": "hold", "card": "AAAA", "amount": 300, "id": "h2"})
    switch.clock.advance(2 * 3600)  # and forward two
    switch.server.housekeep()
    await shower.request({"t": "ping"})
    late = await shower.request({"t": "complete", "hold": second["hold"], "amount": 1, "id": "c2"})
    assert late["code"] == "hold_expired"
    account = await switch.admin.request({"t": "account", "account": "WH1"})
    assert account["balance"] == account["available"] == 900


async def test_qr_codes_follow_the_clock_but_never_reopen(switch):
    await switch.person("WH1", "AAAA", balance=10_000)
    service = await switch.service("app")
    till = await switch.terminal("WH-POS-1")
    secret = (await switch.ok(service, {"t": "virtual_card", "account": "WH1", "id": "v"}))[
        "qr_secret"]
    now_s = switch.clock.now_ms() // 1000
    code = qr_code(secret, "WH1", now_s, "00000001")
    await switch.ok(till, {"t": "qr_debit", "qr": code, "amount": 100, "id": 1})
    switch.clock.advance(3600)
    switch.server.housekeep()
    await till.request({"t": "ping"})
    switch.clock.advance(-3600)  # back to when the code was fresh: used codes stay dead
    again = await till.request({"t": "qr_debit", "qr": code, "amount": 100, "id": 2})
    assert again["code"] in ("qr_used", "qr_expired")
    fresh = qr_code(secret, "WH1", switch.clock.now_ms() // 1000 + 3600, "00000002")
    switch.clock.advance(3600)
    assert (await till.request({"t": "qr_debit", "qr": fresh, "amount": 100, "id": 3}))["code"] \
        == "ok"


async def test_daily_limit_is_not_reopened_by_a_step_back_over_midnight(switch):
    await switch.person("WH1", "AAAA", balance=500_000)
    till = await switch.terminal("WH-POS-1")
    switch.clock.ms = 1_795_330_800_000 + 9 * 3600 * 1000 + 60_000  # 00:01 Shanghai, 11-23
    for n in range(2):
        await switch.ok(till, {"t": "debit", "card": "AAAA", "amount": 50_000, "pin": "123456",
                               "id": n})
    switch.clock.advance(-120)  # 23:59 the day before
    refused = await till.request({"t": "debit", "card": "AAAA", "amount": 100, "id": 9})
    assert refused["code"] == "limit_daily"
