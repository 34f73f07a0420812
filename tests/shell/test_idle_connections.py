"""A signed-on connection that is idle has no task waiting on it (issue 15: 10,000 idle
tills in ≤ 200 MB). The poller reads it; a task starts only for what must wait on that one
connection (a full send buffer, the close) and ends with it. These tests hold the shell to
that, and to what the tasks used to guarantee by being there: a server cancelled from
outside still closes every socket and gives back every gauge."""

import socket
import time

import pytest
import trio

from switch import limits
from switch.shell.client import SwitchError
from tests.shell.harness import Switch
from tests.shell.test_reply_memory import _account_with_history, _history


def _connection_tasks(switch) -> list:
    return list(switch.server._connections_nursery.child_tasks)


def _connection_of(switch, who):
    return next((c for c in switch.server.live if c.credential and c.credential.who == who),
                None)


async def _settle(switch):
    """Until no connection task is left (hello tasks end right after the hello)."""
    with trio.fail_after(10):
        while _connection_tasks(switch):
            await trio.sleep(0.01)


async def _service_with_small_buffers(switch, who):
    """A signed-on service whose socket buffers, both ways, a few history replies fill."""
    sink = await switch.service(who, school="WH")
    await _settle(switch)
    sink.stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    connection = _connection_of(switch, who)
    connection.transport.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    return sink, connection


async def test_idle_sessions_have_no_task_and_still_serve(tmp_path, nursery):
    switch = await Switch(tmp_path / "d").start(nursery)
    await switch.person("WH1", "AAAA", balance=1000)
    tills = [await switch.terminal(f"pos-{n}") for n in range(12)]
    await _settle(switch)
    # 13 sessions open (the admin's too), and not one task for them in the nursery.
    assert switch.server.signed_on == 13
    assert _connection_tasks(switch) == []
    for n, till in enumerate(tills):
        reply = await till.request({"t": "debit", "card": "AAAA", "amount": 1, "id": n})
        assert reply["code"] == "ok", reply
    assert (await tills[0].request({"t": "balance", "card": "AAAA"}))["balance"] == 988
    assert _connection_tasks(switch) == []
    # A session that ends gets a task for its close, which ends too.
    await tills[0].aclose()
    with trio.fail_after(10):
        while _connection_of(switch, "pos-0") is not None:
            await trio.sleep(0.01)
    await _settle(switch)
    assert switch.server.signed_on == 12
    await switch.stop()


async def test_a_full_send_buffer_gets_a_writer_task_that_ends_when_it_drains(
        tmp_path, nursery):
    switch = await Switch(tmp_path / "d").start(nursery)
    await _account_with_history(switch, limits.history_limit_max)
    sink, connection = await _service_with_small_buffers(switch, "svc-slow-reader")
    requests = 48
    for n in range(requests):
        await sink.send(_history(n))
    with trio.fail_after(10):
        while connection._writer_scope is None:
            await trio.sleep(0.01)
    assert len(_connection_tasks(switch)) == 1   # the writer, waiting for room
    replies = [await sink.receive() for _ in range(requests)]
    assert [r["code"] for r in replies] == ["ok"] * requests
    await _settle(switch)
    assert connection._writer_scope is None
    assert switch.server.unsent_bytes == 0
    await switch.stop()


async def test_a_server_cancelled_from_outside_closes_idle_sockets(tmp_path, nursery):
    switch = await Switch(tmp_path / "d").start(nursery)
    tills = [await switch.terminal(f"pos-{n}") for n in range(5)]
    # One socket that never says hello, too.
    raw = trio.socket.socket()
    await raw.connect(("127.0.0.1", switch.port))
    with trio.fail_after(10):
        while switch.server.connection_count < 7:
            await trio.sleep(0.01)
    switch._scope.cancel()          # not a drain: the server's tasks are cancelled
    with trio.fail_after(10):
        await switch._finished.wait()
    assert switch.server.live == set()
    assert switch.server.signed_on == 0
    assert switch.server.poller.connections == 0
    gauges = switch.server.metrics.connections
    for role in ("pending", "terminal", "admin"):
        assert gauges.labels(role)._value.get() == 0, role
    # Every peer sees its connection closed (EOF or a reset), none is left hanging.
    with trio.fail_after(10):
        for till in tills:
            with trio.move_on_after(5) as hung:
                try:
                    while await till.stream.receive_some(4096):
                        pass
                except trio.BrokenResourceError:
                    pass
            assert not hung.cancelled_caught
        with trio.move_on_after(5) as hung:
            try:
                while await raw.recv(4096):
                    pass
            except OSError:
                pass
        assert not hung.cancelled_caught
    raw.close()
    switch.store.close()


@pytest.mark.parametrize("ending", ["half_close", "revoked"])
async def test_replies_committed_as_reading_ends_all_reach_the_peer(
        tmp_path, nursery, monkeypatch, ending):
    """The peer sends its last requests and half-closes (or its credential is revoked in
    the same batch); their batch fills the send buffer, so a writer task is started in
    the same step as the closing task is woken. Only one
    task may wait on the socket: when the closing task ran first, the writer still waited
    on it too (trio's BusyResourceError), the connection was released and the committed
    replies were lost (a hostile review's finding; the design before 1e0efdf had it too)."""
    switch = await Switch(tmp_path / "d").start(nursery)
    await _account_with_history(switch, limits.history_limit_max)
    real_write = switch.store.write_batch
    rounds, requests = 12, 8
    got = []
    for n in range(rounds):
        sink, _ = await _service_with_small_buffers(switch, f"svc-{n}")

        def slow_write(batch):
            time.sleep(0.2)
            real_write(batch)

        # A commit in progress: the requests below wait for the next batch, together.
        monkeypatch.setattr(switch.store, "write_batch", slow_write)
        await switch.admin.send({"t": "credit", "account": "WH1", "amount": 1, "source": "s",
                                 "id": f"slow-{n}"})
        await trio.sleep(0.02)
        for k in range(requests):
            await sink.send(_history(k))
        await trio.sleep(0.02)
        if ending == "half_close":
            await sink.stream.send_eof()
        else:
            await switch.admin.send({"t": "revoke_credential", "who": f"svc-{n}",
                                     "id": f"revoke-{n}"})
        await trio.sleep(0.5)
        monkeypatch.setattr(switch.store, "write_batch", real_write)
        replies, end = [], "eof"
        with trio.fail_after(10):
            try:
                while True:
                    replies.append(await sink.receive())
            except SwitchError as error:
                end = error.code
            except trio.EndOfChannel:
                pass
        await sink.aclose()
        assert (await switch.admin.receive())["code"] == "ok"
        if ending == "revoked":
            assert (await switch.admin.receive())["code"] == "ok"
        got.append((len(replies), end))
    expected_end = "eof" if ending == "half_close" else "unauthenticated"
    assert got == [(requests, expected_end)] * rounds, got
    assert switch.server.metrics.failures.labels("connection")._value.get() == 0
    await switch.stop()


OWED = 24   # history replies a slow reader is owed: what its buffers and reply bytes take


async def _owed_history(tmp_path, nursery, *whos):
    """A switch, and a slow-reader service for each of `whos` that has sent OWED history
    requests, all executed and committed, their replies waiting for the peer to read."""
    switch = await Switch(tmp_path / "d").start(nursery)
    await _account_with_history(switch, limits.history_limit_max)
    readers = [await _service_with_small_buffers(switch, who) for who in whos]
    for sink, _ in readers:
        for k in range(OWED):
            await sink.send(_history(k))
    await trio.sleep(0.5)
    return switch, readers


async def _read_slowly(sink, requests: int, pause: float = 0.2) -> list:
    """Replies, one every `pause` seconds, until `requests` or the connection's end."""
    replies = []
    with trio.fail_after(30):
        try:
            while len(replies) < requests:
                await trio.sleep(pause)   # slow, but reading
                replies.append(await sink.receive())
        except (trio.EndOfChannel, trio.BrokenResourceError):
            pass
    return replies


def _cuts(caplog) -> list:
    return [r.getMessage() for r in caplog.records if "event=close_cut_short" in r.getMessage()]


async def test_a_half_closed_peer_that_reads_slowly_gets_every_reply(
        tmp_path, nursery, monkeypatch, caplog):
    """The close writes its last frames as a writer does: for as long as the peer makes
    progress, each wait for room bounded by `send_stall_timeout_s`. A till that half-closed
    and reads steadily used to lose what was left after `error_flush_timeout_s` in all,
    where the same till not half-closed got every reply (the last stop's note)."""
    monkeypatch.setattr(limits, "error_flush_timeout_s", 0.5)
    monkeypatch.setattr(limits, "send_stall_timeout_s", 2.0)
    switch, [(sink, _)] = await _owed_history(tmp_path, nursery, "svc-slow")
    await sink.stream.send_eof()
    started = trio.current_time()
    replies = await _read_slowly(sink, OWED + 1)   # one more: the end must come
    # Reading them took well past the old total bound, and every one arrived.
    assert trio.current_time() - started > 4 * limits.error_flush_timeout_s
    assert [r["code"] for r in replies] == ["ok"] * OWED
    assert _cuts(caplog) == []
    assert switch.server.unsent_bytes == 0
    await sink.aclose()
    await switch.stop()


async def test_a_drain_bounds_a_slow_readers_close_in_total_and_says_so(
        tmp_path, nursery, monkeypatch, caplog):
    """A stopping switch must end before the service manager's SIGKILL (`TimeoutStopSec`,
    above the whole of a stop: tests/test_deploy.py): there a peer
    that still reads, too slowly, loses the replies left unsent, and the cut is logged so
    that a till missing its last answers can be traced. Also for a connection that was
    already closing (half-closed) when the drain began."""
    monkeypatch.setattr(limits, "error_flush_timeout_s", 1.0)
    switch, readers = await _owed_history(tmp_path, nursery, "svc-slow-0", "svc-slow-1")
    closing_sink, closing = readers[1]
    await closing_sink.stream.send_eof()
    with trio.fail_after(10):
        while closing._close_writes is None:
            await trio.sleep(0.01)
    started = trio.current_time()
    switch.server.drain()
    got = {}

    async def read(n, sink):
        # Unbounded, reading them all would take OWED × 0.4 s.
        got[n] = await _read_slowly(sink, OWED, pause=0.4)

    async def stopped():
        with trio.fail_after(10):
            await switch._finished.wait()
        got["stopped_after"] = trio.current_time() - started

    async with trio.open_nursery() as readers_nursery:
        readers_nursery.start_soon(stopped)
        for n, (sink, _) in enumerate(readers):
            readers_nursery.start_soon(read, n, sink)
    # The switch stopped within the bound, though both peers were still reading...
    assert got["stopped_after"] < 3 * limits.error_flush_timeout_s, got["stopped_after"]
    for n in range(2):
        assert 0 < len(got[n]) < OWED, (n, len(got[n]))
    # ...and each cut said so, with who.
    cuts = _cuts(caplog)
    assert sorted(c.split("who=")[1].split()[0] for c in cuts) == ["svc-slow-0", "svc-slow-1"]
    assert switch.server.unsent_bytes == 0
    for client in switch.clients:
        await client.aclose()
    switch.store.close()


@pytest.mark.parametrize("before", ["open", "half_closed"])
async def test_a_revoked_sessions_close_is_bounded_however_its_peer_reads(
        tmp_path, nursery, monkeypatch, caplog, before):
    """Revocation closes a credential's sessions at once (docs/PROTOCOL.md §3): a revoked
    peer that keeps reading slowly must not keep its session, its `signed_on` slot and its
    unsent replies for as long as it makes progress, as a half-closed one may (a hostile
    review's finding against 71bd3d7: such a session lived on, and new tills were refused
    at `connections_max` meanwhile)."""
    monkeypatch.setattr(limits, "error_flush_timeout_s", 1.0)
    switch, [(sink, _)] = await _owed_history(tmp_path, nursery, "svc-stolen")
    if before == "half_closed":   # already closing, unbounded, when the revocation comes
        await sink.stream.send_eof()
        connection = _connection_of(switch, "svc-stolen")
        with trio.fail_after(10):
            while connection._close_writes is None:
                await trio.sleep(0.01)
    signed_on = switch.server.signed_on
    started = trio.current_time()
    await switch.ok(switch.admin, {"t": "revoke_credential", "who": "svc-stolen",
                                   "id": "revoke-stolen"})
    got = {}

    async def gone():
        with trio.fail_after(10):
            while "svc-stolen" in switch.server.sessions and switch.server.sessions["svc-stolen"]:
                await trio.sleep(0.01)
        got["gone_after"] = trio.current_time() - started

    async def read():
        # Unbounded, reading them all would take OWED × 0.4 s.
        got["replies"] = await _read_slowly(sink, OWED, pause=0.4)

    async with trio.open_nursery() as readers:
        readers.start_soon(gone)
        readers.start_soon(read)
    assert got["gone_after"] < 3 * limits.error_flush_timeout_s, got["gone_after"]
    assert switch.server.signed_on == signed_on - 1
    assert 0 < len(got["replies"]) < OWED
    cuts = _cuts(caplog)
    assert len(cuts) == 1 and "who=svc-stolen" in cuts[0], cuts
    assert switch.server.unsent_bytes == 0
    await sink.aclose()
    await switch.stop()
