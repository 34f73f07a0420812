"""What a peer that has not signed on can make the switch log is bounded: a flood of bad
hellos is a few lines and a count a minute, while the metrics count every refusal."""

import logging
import os

import trio

from switch import limits
from switch.codec import ClientSession, FrameDecoder
from tests.shell.harness import Switch, next_payloads, unverified_body


def _events(caplog, event: str) -> list[logging.LogRecord]:
    return [record for record in caplog.records
            if record.getMessage().startswith(f"event={event} ")]


async def _bad_hello(port: int) -> str:
    """A hello signed with a made-up key: the code of the error frame that answers it."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(ClientSession("X" * 64, os.urandom(32)).hello_frame(0))
    payloads = await next_payloads(stream, FrameDecoder())
    await stream.aclose()
    return unverified_body(payloads[0])["code"]


async def test_a_flood_of_bad_hellos_is_logged_at_a_bounded_rate_and_counted_exactly(
        tmp_path, nursery, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="switch.server")
    monkeypatch.setattr(limits, "peer_events_logged_per_minute_max", 5)
    switch = await Switch(tmp_path / "d").start(nursery)
    for _ in range(30):
        assert await _bad_hello(switch.port) == "unauthenticated"
    # Each refusal is logged before its error frame goes out: all are accounted for here.
    assert len(_events(caplog, "hello_refused")) == 5
    assert _events(caplog, "hello_refused_suppressed") == []
    refused = switch.server.metrics.hellos_refused.labels("unauthenticated")._value.get()
    assert refused == 30
    # The minute is over: housekeeping says what it left out, with no further hello needed.
    monkeypatch.setattr(switch.server.peer_events, "window_s", 0.0)
    with trio.fail_after(5):
        while not _events(caplog, "hello_refused_suppressed"):
            await trio.sleep(0.05)
    (summary,) = _events(caplog, "hello_refused_suppressed")
    assert "count=25 " in summary.getMessage() + " "
    assert summary.levelno == logging.WARNING
    # A new window logs again.
    monkeypatch.setattr(switch.server.peer_events, "window_s", 60.0)
    assert await _bad_hello(switch.port) == "unauthenticated"
    assert len(_events(caplog, "hello_refused")) == 6
    assert len(_events(caplog, "hello_refused_suppressed")) == 1
    await switch.stop()


async def test_a_malformed_first_frame_is_counted(switch):
    stream = await trio.open_tcp_stream("127.0.0.1", switch.port)
    await stream.send_all((30).to_bytes(4, "big") + bytes(30))
    payloads = await next_payloads(stream, FrameDecoder())
    assert unverified_body(payloads[0])["code"] == "frame_invalid"
    await stream.aclose()
    assert switch.server.metrics.hellos_refused.labels("frame_invalid")._value.get() == 1


async def test_a_flood_of_bad_hellos_does_not_hide_which_key_holds_all_its_sessions(
        tmp_path, nursery, monkeypatch, caplog):
    from switch.config import default_config
    from tests.shell.test_session_places import _add_terminal, _hello

    caplog.set_level(logging.INFO, logger="switch.server")
    monkeypatch.setattr(limits, "peer_events_logged_per_minute_max", 5)
    config = default_config()
    config.terminal_sessions_per_credential_max = 1
    switch = await Switch(tmp_path / "d", config=config).start(nursery)
    key = await _add_terminal(switch, "WH-POS-1")
    held = await switch.connect("WH-POS-1", key)
    assert (await held.request({"t": "ping"}))["code"] == "ok"   # a session in use
    for _ in range(10):                        # the unauthenticated budget spent
        assert await _bad_hello(switch.port) == "unauthenticated"
    stream, answer = await _hello(switch.port, "WH-POS-1", key)
    assert answer == {"t": "error", "code": "busy"}
    await stream.aclose()
    (refused,) = _events(caplog, "sessions_refused")
    assert "who=WH-POS-1" in refused.getMessage()
    await held.aclose()
    await switch.stop()
