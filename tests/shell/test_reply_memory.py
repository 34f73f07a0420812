"""Memory held for replies is bounded per connection and in total (issue 12).

Large replies (`history`) wait for their commit and then for a peer to read them; neither
wait may hold more than `connection_reply_bytes_max` per connection or
`replies_bytes_total_max` over all of them, and a peer that does not read is dropped.
"""

import time

import trio

from switch import limits
from switch.shell.server import reply_size
from tests.shell.harness import Switch


async def _account_with_history(switch, entries: int):
    await switch.person("WH1", "AAAA")
    await switch.admin.pipeline([{"t": "credit", "account": "WH1", "amount": 1, "source": "s",
                                  "id": f"c{n}"} for n in range(entries)])


def _slow_commits(switch, monkeypatch, seconds: float):
    real_write = switch.store.write_batch

    def slow_write(batch):
        time.sleep(seconds)
        real_write(batch)

    monkeypatch.setattr(switch.store, "write_batch", slow_write)


def _history(n):
    return {"t": "history", "account": "WH1", "limit": limits.history_limit_max, "before": 10**6 + n}


async def _watch_peak(switch, peak, stop):
    while not stop.is_set():
        peak["total"] = max(peak["total"], switch.server.reply_bytes)
        for connection in switch.server.live:
            peak["one"] = max(peak["one"], connection.reply_bytes)
        await trio.sleep(0)


async def test_replies_waiting_for_commit_are_bounded_per_connection_and_in_total(
        tmp_path, nursery, monkeypatch):
    switch = await Switch(tmp_path / "d").start(nursery)
    await _account_with_history(switch, limits.history_limit_max)
    one_reply = reply_size({"t": "history", "code": "ok", "re": 1, "next": 1,
                            "items": (await switch.admin.request(_history(0)))["items"]})
    assert one_reply > 10_000
    monkeypatch.setattr(limits, "connection_reply_bytes_max", 4 * one_reply)
    monkeypatch.setattr(limits, "replies_bytes_total_max", 6 * one_reply)
    services = [await switch.service(f"svc-{n}", school="WH") for n in range(3)]
    _slow_commits(switch, monkeypatch, 0.05)
    peak = {"one": 0, "total": 0}
    stop = trio.Event()
    results = []

    async def load(service):
        results.extend(await service.pipeline([_history(n) for n in range(64)]))

    async with trio.open_nursery() as inner:
        inner.start_soon(_watch_peak, switch, peak, stop)
        async with trio.open_nursery() as loads:
            for service in services:
                loads.start_soon(load, service)
        stop.set()
    assert len(results) == 3 * 64 and all(r["code"] == "ok" for r in results)
    assert all(len(r["items"]) == limits.history_limit_max for r in results)
    # At most one reply past each bound: the check comes before the request that crosses it.
    assert 0 < peak["one"] <= 5 * one_reply, (peak, one_reply)
    assert 0 < peak["total"] <= 7 * one_reply, (peak, one_reply)
    assert switch.server.reply_bytes == 0
    await switch.stop()


async def test_a_peer_that_never_reads_holds_a_bounded_amount_then_is_dropped(
        tmp_path, nursery, monkeypatch):
    monkeypatch.setattr(limits, "send_stall_timeout_s", 1.0)
    switch = await Switch(tmp_path / "d").start(nursery)
    await _account_with_history(switch, limits.history_limit_max)
    reader = await switch.service("svc-reads", school="WH")
    sink = await switch.service("svc-never-reads", school="WH")
    one_reply = reply_size({"t": "history", "code": "ok", "re": 1, "next": 1,
                            "items": (await reader.request(_history(0)))["items"]})
    peak = {"unsent": 0}

    def sink_connection():
        return next((c for c in switch.server.live
                     if c.credential and c.credential.who == "svc-never-reads"), None)

    async def send_and_never_read():
        n = 0
        try:
            while True:
                seq, frame = sink.session.request_frame(_history(n))
                n += 1
                await sink.stream.send_all(frame)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    with trio.fail_after(30):
        async with trio.open_nursery() as inner:
            inner.start_soon(send_and_never_read)
            while sink_connection() is not None:
                peak["unsent"] = max(peak["unsent"], switch.server.unsent_bytes)
                await trio.sleep(0.005)
            inner.cancel_scope.cancel()
    # It held no more than its share (plus the replies of one pass), and was then dropped.
    assert 0 < peak["unsent"] <= limits.connection_reply_bytes_max + 64 * one_reply, peak
    assert (await reader.request(_history(0)))["code"] == "ok"  # the reader never noticed
    with trio.fail_after(5):
        while switch.server.unsent_bytes or switch.server.reply_bytes:
            await trio.sleep(0.01)
    await switch.stop()
