"""Abuse: slow and silent clients, connection limits, idle floods, overload shedding."""

import time

import trio

from switch import limits
from switch.config import default_config
from tests.server.harness import Switch


async def _closed_without_frame(stream, within_s):
    with trio.fail_after(within_s):
        data = await stream.receive_some(100)
    return data == b""


async def test_no_hello_is_closed_without_a_frame(switch, monkeypatch):
    monkeypatch.setattr(limits, "hello_timeout_s", 0.3)
    stream = await trio.open_tcp_stream("127.0.0.1", switch.port)
    assert await _closed_without_frame(stream, 5)
    with trio.fail_after(5):
        while switch.server.connection_count > 1:  # only the harness's admin session is left
            await trio.sleep(0.01)


async def test_half_a_frame_then_silence_is_dropped(switch, monkeypatch):
    monkeypatch.setattr(limits, "frame_complete_timeout_s", 0.3)
    till = await switch.terminal("WH-POS-1")
    await till.stream.send_all((100).to_bytes(4, "big") + b"abc")
    assert await _closed_without_frame(till.stream, 5)


async def test_idle_session_is_closed(tmp_path, nursery):
    config = default_config()
    config.idle_timeout_s = 0.3
    switch = await Switch(tmp_path / "d", config=config).start(nursery)
    till = await switch.terminal("WH-POS-1")
    assert await _closed_without_frame(till.stream, 5)
    await switch.stop()


async def test_connection_limit_refuses_cleanly(tmp_path, nursery):
    config = default_config()
    config.connections_max = 3
    switch = await Switch(tmp_path / "d", config=config).start(nursery)  # admin is one
    held = [await trio.open_tcp_stream("127.0.0.1", switch.port) for _ in range(2)]
    with trio.fail_after(5):
        while switch.server.connection_count < 3:
            await trio.sleep(0.01)
    extra = await trio.open_tcp_stream("127.0.0.1", switch.port)
    assert await _closed_without_frame(extra, 5)
    assert switch.server.metrics.refused_connections._value.get() == 1
    for stream in held:
        await stream.aclose()
    with trio.fail_after(5):
        while switch.server.connection_count > 1:
            await trio.sleep(0.01)
    till = await switch.terminal("WH-POS-1")  # room again once they left
    assert (await till.request({"t": "ping"}))["code"] == "ok"
    await switch.stop()


async def test_idle_sockets_and_a_hello_flood_do_not_starve_a_till(switch):
    await switch.person("WH1", "AAAA", balance=10_000)
    till = await switch.terminal("WH-POS-1")
    idle = [await trio.open_tcp_stream("127.0.0.1", switch.port) for _ in range(300)]
    flood = []
    for n in range(100):  # garbage hellos: refused with a frame each, connection closed
        stream = await trio.open_tcp_stream("127.0.0.1", switch.port)
        await stream.send_all((30).to_bytes(4, "big") + bytes(30))
        flood.append(stream)
    with trio.fail_after(10):
        reply = await till.request({"t": "debit", "card": "AAAA", "amount": 100, "id": 1})
    assert reply["code"] == "ok"
    for stream in idle + flood:
        await stream.aclose()


async def test_overload_sheds_busy_and_recovers(tmp_path, nursery, monkeypatch):
    config = default_config()
    config.batch_requests_max = 8
    switch = await Switch(tmp_path / "d", config=config).start(nursery)
    await switch.person("WH1", "AAAA", balance=100_000)
    tills = [await switch.terminal(f"WH-POS-{n}") for n in range(4)]
    real_write = switch.store.write_batch

    def slow_write(batch):
        time.sleep(0.2)  # a disk that has stalled
        real_write(batch)

    monkeypatch.setattr(switch.store, "write_batch", slow_write)
    results = {}

    async def burst(n, till):
        results[n] = await till.pipeline([{"t": "debit", "card": "AAAA", "amount": 1,
                                           "id": f"{n}-{k}"} for k in range(40)])

    async with trio.open_nursery() as load:
        for n, till in enumerate(tills):
            load.start_soon(burst, n, till)
    replies = [r for batch in results.values() for r in batch]
    codes = {r["code"] for r in replies}
    assert codes == {"ok", "busy"}, codes
    ok = sum(r["code"] == "ok" for r in replies)
    account = await switch.admin.request({"t": "account", "account": "WH1"})
    assert account["balance"] == 100_000 - ok  # busy moved nothing
    monkeypatch.setattr(switch.store, "write_batch", real_write)
    # A shed id was not remembered: the retry goes through.
    shed = next(r for r in results[0] if r["code"] == "busy")
    retry = await tills[0].request({"t": "debit", "card": "AAAA", "amount": 1,
                                    "id": f"0-{shed['re'] - 1}"})
    assert retry["code"] == "ok" and "replay" not in retry
    await switch.stop()
