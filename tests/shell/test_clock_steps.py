"""Clock steps backwards and forwards: holds, QR windows and daily limits stay sane; a jump
of the wall clock away from the monotonic one is not believed, and is counted."""

import logging

import pytest

from switch.clock import FakeClock, TrustedClock
from switch.ledger.qr import qr_code
from tests.shell.harness import Switch


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


@pytest.fixture
async def trusting(tmp_path, nursery):
    """A switch on a TrustedClock over a fake wall clock and a fake monotonic one."""
    wall, monotonic = FakeClock(), FakeClock(1_000)
    instance = await Switch(tmp_path / "data", clock=TrustedClock(wall, monotonic.now_ms,
                                                                      lambda: 0)
                            ).start(nursery)
    instance.wall, instance.monotonic = wall, monotonic
    yield instance
    await instance.stop()


async def test_a_jump_days_ahead_put_right_is_logged_counted_and_loses_nothing(trusting,
                                                                              caplog):
    switch = trusting
    caplog.set_level(logging.WARNING, logger="switch.clock")
    await switch.person("WH1", "AAAA", balance=10_000)
    service = await switch.service("app")
    till = await switch.terminal("WH-POS-1")
    shower = await switch.terminal("WH-HW-1", kind="water")
    secret = (await switch.ok(service, {"t": "virtual_card", "account": "WH1", "id": "v"}))[
        "qr_secret"]
    held = await switch.ok(shower, {"t": "hold", "card": "AAAA", "amount": 300, "id": "h1"})
    code = qr_code(secret, "WH1", switch.wall.now_ms() // 1000, "00000001")
    real_ms = switch.wall.now_ms()

    switch.wall.advance(3 * 24 * 3600)
    switch.server.housekeep()
    late_sign_on = await switch.terminal("WH-POS-2")   # hello's `time` is believed time
    assert late_sign_on.hello_reply["time"] == real_ms
    await till.request({"t": "ping"})
    switch.wall.advance(-3 * 24 * 3600)
    for _ in range(2):
        switch.wall.advance(1)
        switch.monotonic.advance(1)
        switch.server.housekeep()
        await till.request({"t": "ping"})

    await switch.ok(till, {"t": "qr_debit", "qr": code, "amount": 100, "id": "q"})
    await switch.ok(shower, {"t": "complete", "hold": held["hold"], "amount": 100, "id": "c"})
    replay = await till.request({"t": "qr_debit", "qr": code, "amount": 100, "id": "q"})
    assert replay["replay"] is True
    assert switch.clock.now_ms() == real_ms + 2000

    metrics = switch.server.metrics
    assert metrics.clock_jumps.labels("forward")._value.get() == 1
    assert metrics.clock_jumps.labels("back")._value.get() == 0
    assert metrics.clock_jump._value.get() == 3 * 24 * 3600
    exposition = metrics.exposition().decode()
    assert 'switch_clock_jumps_total{direction="forward"} 1.0' in exposition
    assert [r.getMessage() for r in caplog.records
            if r.getMessage().startswith("event=clock_jump ")] == [
        f"event=clock_jump direction=forward jump_s=259200.000 wall_ms={real_ms + 259200000} "
        f"used_ms={real_ms} believed_after_s=600"]
