"""Session places: one credential holds at most its role's sessions (its next hello is
refused `busy`), and past `connections_max` a few places are kept for admins, so an operator
can always sign on to revoke whoever holds the rest."""

import pytest
import trio

from switch import limits
from switch.cli.datadir import read_admin_key
from switch.codec import ClientSession, FrameDecoder
from switch.config import default_config
from tests.shell.harness import Switch, next_payloads, unverified_body


async def _hello(port: int, who: str, key: bytes):
    """(stream, the hello's answer: the reply, an error frame's body, or None when the switch
    closed without a frame)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    session = ClientSession(who, key)
    await stream.send_all(session.hello_frame(0))
    payloads = await next_payloads(stream, FrameDecoder())
    return stream, (unverified_body(payloads[0]) if payloads else None)


async def _add_terminal(switch, who: str) -> bytes:
    return (await switch.ok(switch.admin, {"t": "add_credential", "who": who, "role": "terminal",
                                           "school": "WH", "kind": "pos",
                                           "id": f"add-{who}"}))["key"]


async def _places_settle(switch, signed_on: int) -> None:
    with trio.fail_after(5):
        while switch.server.signed_on != signed_on:
            await trio.sleep(0.01)


async def test_a_credential_holds_at_most_its_sessions_and_the_next_hello_is_busy(
        tmp_path, nursery):
    config = default_config()
    config.terminal_sessions_per_credential_max = 3
    switch = await Switch(tmp_path / "d", config=config).start(nursery)
    key = await _add_terminal(switch, "WH-POS-1")
    held = [await switch.connect("WH-POS-1", key) for _ in range(3)]      # N: signed on
    for till in held:                                                     # and in use
        assert (await till.request({"t": "ping"}))["code"] == "ok"
    stream, answer = await _hello(switch.port, "WH-POS-1", key)           # N+1: busy
    assert answer == {"t": "error", "code": "busy"}
    assert await stream.receive_some(100) == b""                          # then closed
    await stream.aclose()
    assert len(switch.server.sessions["WH-POS-1"]) == 3
    assert switch.server.metrics.hellos_refused.labels("busy")._value.get() == 1
    # Another credential is not held back by it; a place given back is taken again.
    other = await switch.connect("WH-POS-2", await _add_terminal(switch, "WH-POS-2"))
    assert (await other.request({"t": "ping"}))["code"] == "ok"
    await held[0].aclose()
    await _places_settle(switch, 4)   # the admin, two of WH-POS-1, WH-POS-2
    again = await switch.connect("WH-POS-1", key)
    assert (await again.request({"t": "ping"}))["code"] == "ok"
    await switch.stop()


async def test_hellos_at_once_take_no_more_places_than_the_credential_has(tmp_path, nursery):
    """The place is taken before the hello's reply is written (an await): hellos that all
    arrive together cannot all see the same free place."""
    config = default_config()
    config.terminal_sessions_per_credential_max = 2
    switch = await Switch(tmp_path / "d", config=config).start(nursery)
    key = await _add_terminal(switch, "WH-POS-1")
    streams = [await trio.open_tcp_stream("127.0.0.1", switch.port) for _ in range(8)]
    sessions = [ClientSession("WH-POS-1", key) for _ in streams]
    for stream, session in zip(streams, sessions):
        await stream.send_all(session.hello_frame(0))
    answers = [await next_payloads(stream, FrameDecoder()) for stream in streams]
    # Each is answered ok or busy; an ok one that sends nothing gives its place to the next
    # hello (test_a_replayed_hello_never_locks_the_credential_out), so never more than 2.
    assert {unverified_body(payloads[0])["code"] for payloads in answers} <= {"ok", "busy"}
    assert len(switch.server.sessions["WH-POS-1"]) == 2
    assert switch.server.signed_on == 3
    for stream in streams:
        await stream.aclose()
    await _places_settle(switch, 1)
    assert "WH-POS-1" not in switch.server._places
    await switch.stop()


async def test_past_connections_max_only_an_admin_signs_on_and_revokes_the_hog(
        tmp_path, nursery, monkeypatch):
    monkeypatch.setattr(limits, "connections_admin_reserved_max", 2)
    config = default_config()
    config.connections_max = 4
    switch = await Switch(tmp_path / "d", config=config).start(nursery)   # the admin is one
    hog_key = await _add_terminal(switch, "WH-POS-HOG")
    other_key = await _add_terminal(switch, "WH-POS-2")
    admin_key = read_admin_key(switch.path)
    await switch.admin.aclose()
    await _places_settle(switch, 0)
    hog = [await switch.connect("WH-POS-HOG", hog_key) for _ in range(4)]   # every place
    # Another till: its socket is taken (it may be an admin's), its hello refused.
    stream, answer = await _hello(switch.port, "WH-POS-2", other_key)
    assert answer is None                         # closed without a frame, as before
    await stream.aclose()
    assert switch.server.metrics.refused_connections._value.get() == 1
    # An admin signs on in a kept place, N of them; N+1 is refused.
    admins = [await switch.connect("admin", admin_key) for _ in range(2)]
    stream, answer = await _hello(switch.port, "admin", admin_key)
    assert answer is None
    await stream.aclose()
    reply = await switch.ok(admins[0], {"t": "revoke_credential", "who": "WH-POS-HOG",
                                        "id": "revoke-hog"})
    assert reply["code"] == "ok"
    for till in hog:
        with pytest.raises(Exception):
            with trio.fail_after(10):
                await till.request({"t": "ping"})
    await _places_settle(switch, 2)
    till = await switch.connect("WH-POS-2", other_key)
    assert (await till.request({"t": "ping"}))["code"] == "ok"
    await switch.stop()


async def test_a_replayed_hello_never_locks_the_credential_out(tmp_path, nursery, monkeypatch):
    """The outside test's repro: one hello of the recharge service copied off the wire and
    sent again 64 times opened 64 sessions (it verifies: v1 checks no time), and the real
    service's hello was `busy` until they idled out, renewed for ever. A copy of a hello
    seen before is refused; one seen before no restart opens a session that never sends a
    request, and that is closed (`busy`) to make room for a new hello once past its grace.
    A session in use never is."""
    monkeypatch.setattr(limits, "silent_session_grace_s", 0.0)
    config = default_config()
    config.terminal_sessions_per_credential_max = 4
    switch = await Switch(tmp_path / "d", config=config).start(nursery)
    key = await _add_terminal(switch, "WH-POS-1")
    in_use = await switch.connect("WH-POS-1", key)
    assert (await in_use.request({"t": "ping"}))["code"] == "ok"
    captured = ClientSession("WH-POS-1", key).hello_frame(0)
    copies = []
    for n in range(8):
        stream = await trio.open_tcp_stream("127.0.0.1", switch.port)
        await stream.send_all(captured)
        copies.append(unverified_body((await next_payloads(stream, FrameDecoder()))[0]))
        await stream.aclose()
    assert copies[0]["code"] == "ok" and all(
        answer == {"t": "error", "code": "unauthenticated"} for answer in copies[1:])
    # Hellos captured before a restart (never seen by this switch), each replayed once.
    replays = []
    for _ in range(16):
        stream = await trio.open_tcp_stream("127.0.0.1", switch.port)
        await stream.send_all(ClientSession("WH-POS-1", key).hello_frame(0))
        assert unverified_body((await next_payloads(stream, FrameDecoder()))[0])["code"] == "ok"
        replays.append(stream)
    real = await switch.connect("WH-POS-1", key)          # not busy
    assert (await real.request({"t": "ping"}))["code"] == "ok"
    assert (await in_use.request({"t": "ping"}))["code"] == "ok"   # never the one in use
    assert len(switch.server.sessions["WH-POS-1"]) <= 4
    closed = 0
    for stream in replays[:-3]:
        payloads = await next_payloads(stream, FrameDecoder())
        if payloads and unverified_body(payloads[0]) == {"t": "error", "code": "busy"}:
            closed += 1
        await stream.aclose()
    assert closed == len(replays) - 3
    for stream in replays[-3:]:
        await stream.aclose()
    await switch.stop()


async def test_a_silent_session_within_its_grace_is_not_closed_for_a_new_hello(tmp_path,
                                                                              nursery):
    """A till's hello's reply and its first request cross: a silent session younger than
    `silent_session_grace_s` keeps its place, and the new hello is `busy` as before."""
    config = default_config()
    config.terminal_sessions_per_credential_max = 1
    switch = await Switch(tmp_path / "d", config=config).start(nursery)
    key = await _add_terminal(switch, "WH-POS-1")
    silent = await switch.connect("WH-POS-1", key)
    stream, answer = await _hello(switch.port, "WH-POS-1", key)
    assert answer == {"t": "error", "code": "busy"}
    await stream.aclose()
    assert (await silent.request({"t": "ping"}))["code"] == "ok"
    await switch.stop()


async def test_a_serving_switch_frees_the_reader_slot_of_a_killed_backup(tmp_path, nursery,
                                                                          monkeypatch):
    from tests.lmdb_readers import holds_a_slot, killed_reader
    monkeypatch.setattr(limits, "stale_readers_checked_every_s", 0.05)
    switch = await Switch(tmp_path / "d", config=default_config()).start(nursery)
    pid = killed_reader(switch.path + "/lmdb")
    with trio.fail_after(10):
        while holds_a_slot(switch.store.env, pid):
            await trio.sleep(0.05)
    await switch.stop()


async def test_a_map_grown_ahead_of_need_is_logged(tmp_path, nursery, monkeypatch, caplog):
    """The map grown at 75 % full was silent (only a commit meeting MapFull logged
    `map_grown`): a data file growing fast went unseen in the log."""
    import logging
    caplog.set_level(logging.WARNING, logger="switch.commit")
    switch = await Switch(tmp_path / "d", config=default_config()).start(nursery)
    monkeypatch.setattr(limits, "lmdb_map_grow_threshold_ratio", 0.0)
    await _add_terminal(switch, "WH-POS-1")          # one commit
    await switch.stop()
    assert any("event=map_grown" in record.getMessage() for record in caplog.records)


async def test_a_hello_refused_busy_may_be_sent_again_as_it_was(tmp_path, nursery):
    """The vendor's finding: a hello refused `busy` used its nonce up, and the till that
    resent its prepared hello once a place was free got `unauthenticated` (a wrong key, it
    would think). Only a hello that signs on uses its nonce."""
    config = default_config()
    config.terminal_sessions_per_credential_max = 1
    switch = await Switch(tmp_path / "d", config=config).start(nursery)
    key = await _add_terminal(switch, "WH-POS-1")
    held = await switch.connect("WH-POS-1", key)
    assert (await held.request({"t": "ping"}))["code"] == "ok"
    prepared = ClientSession("WH-POS-1", key).hello_frame(0)

    async def send(frame):
        stream = await trio.open_tcp_stream("127.0.0.1", switch.port)
        await stream.send_all(frame)
        answer = unverified_body((await next_payloads(stream, FrameDecoder()))[0])
        return stream, answer
    stream, answer = await send(prepared)
    assert answer == {"t": "error", "code": "busy"}
    await stream.aclose()
    await held.aclose()
    await _places_settle(switch, 1)
    stream, answer = await send(prepared)
    assert answer["code"] == "ok"
    await stream.aclose()
    stream, answer = await send(prepared)                 # now it is a copy
    assert answer == {"t": "error", "code": "unauthenticated"}
    await stream.aclose()
    await switch.stop()


async def test_a_hello_whose_reply_never_left_may_be_sent_again(tmp_path, nursery,
                                                               monkeypatch):
    """A hello whose reply could not be written (the peer reset) did not sign on: its nonce
    is not used up, or a till resending its prepared hello would be `unauthenticated`."""
    from switch.shell import transport
    switch = await Switch(tmp_path / "d", config=default_config()).start(nursery)
    key = await _add_terminal(switch, "WH-POS-1")
    prepared = ClientSession("WH-POS-1", key).hello_frame(0)
    real_send_all = transport.Transport.send_all
    failed = []

    async def gone_once(self, data):
        if not failed:
            failed.append(True)
            raise transport.PeerGone()
        await real_send_all(self, data)
    monkeypatch.setattr(transport.Transport, "send_all", gone_once)
    stream = await trio.open_tcp_stream("127.0.0.1", switch.port)
    await stream.send_all(prepared)
    await next_payloads(stream, FrameDecoder())           # closed without a reply
    await stream.aclose()
    assert failed
    stream = await trio.open_tcp_stream("127.0.0.1", switch.port)
    await stream.send_all(prepared)
    assert unverified_body((await next_payloads(stream, FrameDecoder()))[0])["code"] == "ok"
    await stream.aclose()
    await switch.stop()
