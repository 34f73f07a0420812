"""Abuse: slow and silent clients, connection limits, idle floods, overload shedding."""

import time

import msgpack
import pytest
import trio

from switch import limits
from switch.config import default_config
from tests.shell.harness import Switch


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


async def test_session_limit_refuses_the_next_sign_on_cleanly(tmp_path, nursery):
    config = default_config()
    config.connections_max = 2
    switch = await Switch(tmp_path / "d", config=config).start(nursery)  # admin is one
    # Silent sockets are not sessions: they do not take a session's place.
    held = [await trio.open_tcp_stream("127.0.0.1", switch.port) for _ in range(3)]
    with trio.fail_after(5):
        while len(switch.server._pending) < 3:
            await trio.sleep(0.01)
    first = await switch.terminal("WH-POS-1")                            # two: at the limit
    key = (await switch.ok(switch.admin, {"t": "add_credential", "who": "WH-POS-2",
                                          "role": "terminal", "school": "WH", "kind": "pos",
                                          "id": "add-2"}))["key"]
    with pytest.raises(Exception):
        await switch.connect("WH-POS-2", key)                           # three: refused
    assert switch.server.metrics.refused_connections._value.get() == 1
    assert (await first.request({"t": "ping"}))["code"] == "ok"
    await first.aclose()
    with trio.fail_after(5):
        while switch.server.signed_on > 1:
            await trio.sleep(0.01)
    second = await switch.connect("WH-POS-2", key)  # room again once one left
    assert (await second.request({"t": "ping"}))["code"] == "ok"
    for stream in held:
        await stream.aclose()
    await switch.stop()


async def test_silent_sockets_from_one_address_cannot_keep_a_till_out(switch, monkeypatch):
    """N silent sockets from one address are held; the N+1th evicts the oldest once it has
    waited the eviction age, and a till from the same address still signs on."""
    monkeypatch.setattr(limits, "connections_pending_per_address_max", 5)
    monkeypatch.setattr(limits, "connection_pending_evict_age_s", 0.2)
    silent = [await trio.open_tcp_stream("127.0.0.1", switch.port) for _ in range(5)]
    with trio.fail_after(5):
        while len(switch.server._pending) < 5:
            await trio.sleep(0.01)
    # N+1 within the eviction age: the new socket is refused, the old ones kept.
    extra = await trio.open_tcp_stream("127.0.0.1", switch.port)
    assert await _closed_without_frame(extra, 5)
    assert len(switch.server._pending) == 5
    await trio.sleep(0.3)
    # Now the oldest silent socket makes room for a till.
    till = await switch.terminal("WH-POS-1")
    assert (await till.request({"t": "ping"}))["code"] == "ok"
    assert await _closed_without_frame(silent[0], 5)
    assert len(switch.server._pending) == 4
    for stream in silent:
        await stream.aclose()


async def test_pending_bound_over_all_addresses_evicts_the_oldest(switch, monkeypatch):
    monkeypatch.setattr(limits, "connections_pending_max", 3)
    monkeypatch.setattr(limits, "connection_pending_evict_age_s", 0.1)
    silent = [await trio.open_tcp_stream("127.0.0.1", switch.port) for _ in range(3)]
    with trio.fail_after(5):
        while len(switch.server._pending) < 3:
            await trio.sleep(0.01)
    await trio.sleep(0.2)
    till = await switch.terminal("WH-POS-1")
    assert (await till.request({"t": "ping"}))["code"] == "ok"
    assert await _closed_without_frame(silent[0], 5)
    for stream in silent:
        await stream.aclose()


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


async def test_a_request_that_waited_past_the_bound_is_shed_busy(tmp_path, nursery,
                                                                 monkeypatch):
    """Past saturation the queue is in the kernel: a request that may have waited longer than
    `request_wait_max_s` to be read is answered busy at once, runs not at all, and its retry
    goes through."""
    config = default_config()
    config.request_wait_max_s = 0.5
    switch = await Switch(tmp_path / "d", config=config).start(nursery)
    await switch.person("WH1", "AAAA", balance=10_000)
    till = await switch.terminal("WH-POS-1")
    from switch.ledger import dispatch
    real_execute = dispatch.execute

    def stalled_execute(ledger, credential, message):
        time.sleep(0.6)   # every request holds the pass past the bound: the next one waited
        return real_execute(ledger, credential, message)

    monkeypatch.setattr(dispatch, "execute", stalled_execute)
    replies = await till.pipeline([{"t": "debit", "card": "AAAA", "amount": 1, "id": n}
                                   for n in range(3)])        # read together in one pass
    assert [r["code"] for r in replies] == ["ok", "busy", "busy"]
    shed = switch.server.metrics.shed
    assert shed.labels("waited")._value.get() == 2
    assert shed.labels("queue")._value.get() == shed.labels("budget")._value.get() == 0
    monkeypatch.setattr(dispatch, "execute", real_execute)
    account = await switch.admin.request({"t": "account", "account": "WH1"})
    assert account["balance"] == 10_000 - 1                   # busy moved nothing
    retried = await till.pipeline([{"t": "debit", "card": "AAAA", "amount": 1, "id": n}
                                   for n in (1, 2)])           # nor remembered its id
    assert [r["code"] for r in retried] == ["ok", "ok"]
    assert not any("replay" in r for r in retried)
    await switch.stop()


def _silent_socket_from(address: str, port: int):
    import socket
    sock = socket.socket()
    sock.bind((address, 0))
    sock.connect(("127.0.0.1", port))
    return sock


async def test_a_flood_from_another_address_leaves_a_tills_address_alone(switch, monkeypatch):
    monkeypatch.setattr(limits, "connections_pending_per_address_max", 4)
    monkeypatch.setattr(limits, "connection_pending_evict_age_s", 60.0)  # never old enough
    flood = [_silent_socket_from("127.0.0.2", switch.port) for _ in range(10)]
    with trio.fail_after(5):
        while len(switch.server._pending) < 4:
            await trio.sleep(0.01)
    await trio.sleep(0.1)
    assert len(switch.server._pending) == 4          # the other 6 were refused at once
    till = await switch.terminal("WH-POS-1")         # from 127.0.0.1: not affected
    assert (await till.request({"t": "ping"}))["code"] == "ok"
    for sock in flood:
        sock.close()


async def test_a_trickled_frame_times_out_from_its_first_byte(switch, monkeypatch):
    monkeypatch.setattr(limits, "frame_complete_timeout_s", 0.5)
    till = await switch.terminal("WH-POS-1")
    await till.stream.send_all((100).to_bytes(4, "big"))
    trickled = 0
    closed = False
    with trio.fail_after(30):
        while trickled < 99:  # a byte every 0.1 s: each one would restart a naive timer
            try:
                await till.stream.send_all(b"x")
            except trio.BrokenResourceError:
                closed = True
                break
            trickled += 1
            with trio.move_on_after(0.1):
                try:
                    if await till.stream.receive_some(100) == b"":
                        closed = True
                        break
                except trio.BrokenResourceError:   # closed with a byte unread: a reset
                    closed = True
                    break
    # Closed about 0.5 s after the first byte: long before the frame's 100 bytes came.
    assert closed and trickled < 60, trickled


async def test_a_credential_past_its_budget_is_answered_busy(tmp_path, nursery):
    config = default_config()
    config.terminal_requests_per_s = 0.5
    config.terminal_requests_burst = 5
    switch = await Switch(tmp_path / "d", config=config).start(nursery)
    await switch.person("WH1", "AAAA", balance=10_000)
    till = await switch.terminal("WH-POS-1")
    replies = await till.pipeline([{"t": "debit", "card": "AAAA", "amount": 1, "id": n}
                                   for n in range(6)])
    assert [r["code"] for r in replies] == ["ok"] * 5 + ["busy"]   # N pass, N+1 does not
    # A second session of the same credential shares the budget.
    again = await switch.connect("WH-POS-1", switch.ledger.credential("WH-POS-1").key)
    assert (await again.request({"t": "ping"}))["code"] == "busy"
    # Other credentials are not touched, and busy moved and remembered nothing.
    admin_view = await switch.admin.request({"t": "account", "account": "WH1"})
    assert admin_view["balance"] == 10_000 - 5
    await trio.sleep(2.1)  # one request's worth of budget back
    retry = await till.request({"t": "debit", "card": "AAAA", "amount": 1, "id": 5})
    assert retry["code"] == "ok" and "replay" not in retry
    await switch.stop()


async def test_uploads_and_card_changes_spend_the_budget_by_the_work_they_make(tmp_path,
                                                                               nursery,
                                                                               monkeypatch):
    # One 500-record upload counted as one request: a till's key alone filled the disk with
    # remembered refusals and took the loop from the other school's tills. So did a
    # recharge service's lost/found, each pushed to every till of its school.
    monkeypatch.setattr(limits, "pushes_per_request_cost", 1)
    config = default_config()
    config.terminal_requests_per_s = config.service_requests_per_s = 0.1
    config.terminal_requests_burst = 600
    config.service_requests_burst = 8
    switch = await Switch(tmp_path / "d", config=config).start(nursery)
    await switch.person("WH1", "AAAA", balance=10_000)
    till = await switch.terminal("WH-POS-1")
    upload = {"t": "offline", "records": [{"id": f"u{n}", "card": "FFFF", "amount": 1,
                                           "at": 1_795_000_000_000} for n in range(500)]}
    small = {**upload, "records": upload["records"][:10]}     # a frame under 1 KiB
    # Let in while the budget holds a request, each spends its records: 600 -> 100 -> -400.
    for _ in range(2):
        reply = await till.request(upload)
        assert reply["code"] == "ok", reply
        assert {r["code"] for r in reply["results"]} == {"card_unknown"}
    assert (await till.request(small))["code"] == "busy"      # until it has refilled
    # Two tills of the school to push to: a lost or found costs three here: 8 -> 5 -> 2 -> -1.
    await switch.terminal("WH-POS-2")
    recharge = await switch.service("WH-RECHARGE", school="WH")
    codes = [(await recharge.request({"t": kind, "card": "AAAA", "id": f"{kind}-{n}"}))["code"]
             for n, kind in enumerate(["lost", "found", "lost", "found"])]
    assert codes == ["ok", "ok", "ok", "busy"]
    # The other school's tills are not counted: its service's changes cost two: 8 -> 0.
    await switch.terminal("CUIK-POS-1", school="CUIK")
    await switch.person("CUIK1", "CCCC", school="CUIK")
    cuik = await switch.service("CUIK-RECHARGE", school="CUIK")
    replies = [await cuik.request({"t": kind, "card": "CCCC", "id": f"c{kind}-{n}"})
               for n, kind in enumerate(["lost", "found", "lost", "found", "lost"])]
    assert [r["code"] for r in replies] == ["ok"] * 4 + ["busy"]
    await switch.stop()


async def test_readers_sharing_a_key_all_get_their_uploads_in_by_retrying(tmp_path, nursery):
    # A refused try of a large upload was charged its bytes: readers sharing one key and
    # retrying after an outage drained the bucket faster than it refilled and never got in
    # (the review's finding). Refused tries cost nothing now, and an upload is let in
    # whenever the bucket holds one: retrying, each gets there.
    from switch.shell.client import ProtocolError, SwitchError
    config = default_config()
    config.terminal_requests_per_s, config.terminal_requests_burst = 2000.0, 1000
    switch = await Switch(tmp_path / "d", config=config).start(nursery)
    await switch.person("WH1", "AAAA", balance=10_000_000)
    key = (await switch.terminal("WH-POS-1")).session.key
    tries = []

    async def connect():
        while True:     # a place may still be held by a session the switch is closing
            try:
                return await switch.connect("WH-POS-1", key)
            except ProtocolError as refused:
                assert refused.code == "busy", refused
                await trio.sleep(0.01)

    async def drain(number):
        reader = await connect()
        for batch in range(3):
            records = [{"id": f"r{number}-{batch}-{n}", "card": "AAAA", "amount": 1,
                        "at": switch.clock.now_ms()} for n in range(500)]
            while True:
                try:
                    reply = await reader.request({"t": "offline", "records": records})
                except SwitchError as ended:        # a large frame while the bucket was empty
                    assert ended.code == "busy", ended.message
                    reader = await connect()
                    reply = {"code": "busy"}
                tries.append(reply["code"])
                if reply["code"] != "busy":
                    break
                await trio.sleep(0.01)
            assert reply["code"] == "ok" and len(reply["results"]) == 500, reply
    with trio.fail_after(60):   # 9,000 records at 2,000 a second: 5 s when nothing starves
        async with trio.open_nursery() as uploads:
            for number in range(6):
                uploads.start_soon(drain, number)
    assert "busy" in tries    # they did meet the budget, and got through all the same
    account = await switch.admin.request({"t": "account", "account": "WH1"})
    assert account["balance"] == 10_000_000 - 6 * 3 * 500
    await switch.stop()


def test_what_a_request_costs():
    from switch.shell.budget import RequestBudget, request_cost
    records = [{}] * 300
    assert request_cost({"t": "offline", "records": records}, 0) == 300
    assert request_cost({"t": "offline", "records": "nonsense"}, 0) == 1
    assert request_cost({"t": "history", "limit": 200}, 0) == 11
    assert request_cost({"t": "history", "limit": 10**30}, 0) == 11
    assert request_cost({"t": "history"}, 0) == 1 + limits.history_limit_default // 20
    assert request_cost({"t": "rooms", "limit": 200}, 0) == 11
    assert request_cost({"t": "rooms"}, 0) == 1 + limits.rooms_limit_default // 20
    assert request_cost({"t": "blacklist", "since": 0}, 0) == 19
    assert request_cost({"t": "blacklist", "since": 7}, 0) == 1
    assert request_cost({"t": "lost"}, 1000) == 51
    assert request_cost({"t": "debit"}, 1000) == 1
    budget = RequestBudget(rate_per_s=100, burst=10, now_s=0.0)
    assert budget.take(0.0, 500)                # let in while it holds one: 10 -> -490
    assert not budget.take(4.0, 1) and not budget.take(4.9, 500)   # -90, -0: refused, free
    assert budget.take(4.91, 500)                                  # back to one: let in again
    budget.spend(7)                     # what a request let in costs beyond what it paid
    assert not budget.take(4.91 + 5.06, 1) and budget.take(4.91 + 5.08, 1)


def test_request_budget_refills_at_its_rate_up_to_its_burst():
    from switch.shell.budget import RequestBudget
    budget = RequestBudget(rate_per_s=10, burst=3, now_s=0.0)
    assert [budget.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert budget.take(0.05) is False          # half a request's worth
    assert budget.take(0.1) is True
    assert [budget.take(100.0) for _ in range(4)] == [True, True, True, False]  # burst caps


def test_budget_configuration_is_range_checked():
    from switch.config import ConfigError, validate
    for key, value in [("terminal_requests_per_s", 0.0), ("service_requests_burst", 0),
                       ("admin_requests_per_s", -5.0)]:
        config = default_config()
        setattr(config, key, value)
        with pytest.raises(ConfigError, match=key):
            validate(config)
