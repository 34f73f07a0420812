"""A refusal that closes the connection reaches a peer still sending: the switch stops
writing, reads and discards what keeps coming (bounded), and only then closes, so the
kernel never answers the unread bytes with a reset that destroys the error frame in
flight (the hostile-hello fuzz met it: a reset in the client's send, no code)."""

import trio

from switch import limits
from switch.codec import FrameDecoder
from tests.shell.harness import Switch, next_payloads, signed_on, unverified_body

TOO_LONG = (limits.frame_size_bytes_max + 1).to_bytes(limits.frame_length_prefix_bytes, "big")
# More than the switch reads before it refuses and more than loopback's buffers hold at
# once, so the peer is still sending when the refusal goes out.
TRAILING_BYTES = limits.close_linger_bytes_max // 2


async def _send_ignoring_reset(stream, data: bytes, sent: list) -> None:
    try:
        for start in range(0, len(data), 65536):
            await stream.send_all(data[start:start + 65536])
            sent.append(65536)
    except trio.BrokenResourceError:
        sent.append(None)


async def _refused_while_sending(stream, first: bytes) -> tuple[list, list, bytes]:
    sent: list = []
    decoder = FrameDecoder()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_send_ignoring_reset, stream, first + bytes(TRAILING_BYTES), sent)
        payloads = await next_payloads(stream, decoder, within_s=30)
        closed = await stream.receive_some(65536) if payloads else b""
    return payloads, sent, closed


async def test_a_frame_too_large_before_hello_gets_its_code_however_much_follows(tmp_path,
                                                                                nursery):
    switch = await Switch(tmp_path / "d").start(nursery)
    for _ in range(5):   # a race when it fails: several tries
        stream = await trio.open_tcp_stream("127.0.0.1", switch.port)
        payloads, sent, closed = await _refused_while_sending(stream, TOO_LONG)
        assert payloads, "the refusal was lost"
        assert unverified_body(payloads[0])["code"] == "frame_too_large"
        assert closed == b""
        assert None not in sent, "the switch reset the connection instead of closing it"
        await stream.aclose()
    await switch.stop()


async def test_a_frame_too_large_in_a_session_gets_its_code_however_much_follows(tmp_path,
                                                                               nursery):
    switch = await Switch(tmp_path / "d").start(nursery)
    added = await switch.ok(switch.admin, {"t": "add_credential", "who": "WH-POS-1",
                                           "role": "terminal", "school": "WH", "kind": "pos",
                                           "id": "add-till"})
    for _ in range(5):
        stream, _, _ = await signed_on(switch.port, "WH-POS-1", added["key"])
        payloads, sent, closed = await _refused_while_sending(stream, TOO_LONG)
        assert payloads, "the refusal was lost"
        assert unverified_body(payloads[0])["code"] == "frame_too_large"
        assert None not in sent, "the switch reset the connection instead of closing it"
        await stream.aclose()
    await switch.stop()


async def test_a_peer_that_never_stops_sending_after_a_refusal_is_closed_all_the_same(
        tmp_path, nursery):
    """The discarding is bounded: a peer sending on and on does not hold its task."""
    switch = await Switch(tmp_path / "d").start(nursery)
    stream = await trio.open_tcp_stream("127.0.0.1", switch.port)
    endless = 64 * limits.close_linger_bytes_max
    sent: list = []
    with trio.fail_after(60):
        await _send_ignoring_reset(stream, TOO_LONG + bytes(endless), sent)
    assert sent[-1] is None, "the switch read everything a peer sent after refusing it"
    assert 65536 * (len(sent) - 1) < endless
    await stream.aclose()
    await switch.stop()
