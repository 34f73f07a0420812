"""What a frame may cost before its request can be judged: a hello is decoded before any key
is known, a request before its budget is taken, so their bytes are bounded or paid for
first; and frames whole before a bad length are served as if the bytes came apart."""

import msgpack
import pytest
import trio

from switch import limits
from switch.config import default_config
from switch.codec import FrameDecoder, ProtocolError
from switch.codec.session import sign_body
from tests.shell.harness import Switch, next_payloads, signed_on, unverified_body

# 32,000 empty lists in one map, within the nesting bound: 12 ms to decode (helper-70).
TINY_LISTS = b"\x81\xa1x\xdc" + (32_000).to_bytes(2, "big") + b"\x90" * 32_000


def _framed(body: bytes, key: bytes = bytes(32)) -> bytes:
    return sign_body(key, body)


async def _decodes_counted(monkeypatch) -> list:
    import switch.codec.session as session_module
    decoded = []
    real = session_module.decode_body

    def counting(body):
        decoded.append(len(body))
        return real(body)
    monkeypatch.setattr(session_module, "decode_body", counting)
    return decoded


async def test_a_large_hello_is_refused_unread(tmp_path, nursery, monkeypatch):
    switch = await Switch(tmp_path / "d").start(nursery)
    decoded = await _decodes_counted(monkeypatch)
    stream = await trio.open_tcp_stream("127.0.0.1", switch.port)
    await stream.send_all(_framed(TINY_LISTS))
    payloads = await next_payloads(stream, FrameDecoder())
    assert unverified_body(payloads[0])["code"] == "frame_too_large"
    assert decoded == []
    # A hello of every field at its longest is well within the bound.
    longest = {"t": "hello", "v": 1, "who": "W" * limits.id_str_chars_max,
               "nonce": bytes(16), "at": 2**64 - 1}
    assert len(msgpack.packb(longest)) * 4 < limits.hello_body_bytes_max
    await stream.aclose()
    await switch.stop()


async def test_a_large_frame_past_the_budget_ends_its_session_unread(tmp_path, nursery,
                                                                     monkeypatch):
    config = default_config()
    config.terminal_requests_per_s = 0.1    # no refill to speak of while the test runs
    switch = await Switch(tmp_path / "d", config=config).start(nursery)
    added = await switch.ok(switch.admin, {"t": "add_credential", "who": "WH-POS-1",
                                           "role": "terminal", "school": "WH", "kind": "pos",
                                           "id": "add-till"})
    stream, session, decoder = await signed_on(switch.port, "WH-POS-1", added["key"])
    decoded = await _decodes_counted(monkeypatch)
    sent = 30

    async def send():
        for seq in range(1, sent + 1):
            body = b"\x83\xa1t\xa4ping\xa3seq" + msgpack.packb(seq) + TINY_LISTS[1:]
            try:
                await stream.send_all(_framed(body, session._k_c2s))
            except trio.BrokenResourceError:
                return      # closed, having refused one
    codes = []
    async with trio.open_nursery() as sending:
        sending.start_soon(send)
        with trio.fail_after(30):
            while True:
                payloads = await next_payloads(stream, decoder)
                if not payloads:
                    break
                codes += [session.receive(payload).get("code") for payload in payloads]
    # Each is let in while the budget holds a request, and costs its bytes' worth (more
    # than its ping): a burst's worth is read, then one that finds the budget spent ends the
    # session, the rest never decoded. Frames read in the same pass are opened before the
    # pass runs (and spends for) them: a receive's worth more at most.
    paid = (len(TINY_LISTS) + limits.tag_size_bytes) // limits.request_cost_frame_bytes
    affordable = -(-limits.terminal_requests_burst // paid)
    per_receive = limits.receive_size_bytes // len(TINY_LISTS) + 1
    # Those opened with the ones that spent the budget are answered `busy` as they run;
    # the session ends `busy` at the first found with the budget spent.
    oks = codes.count("ok")
    assert codes == ["ok"] * oks + ["busy"] * (len(codes) - oks) and codes[-1] == "busy", codes
    assert affordable <= oks <= affordable + per_receive
    large = [size for size in decoded if size > limits.frame_charged_over_bytes]
    assert oks <= len(large) <= oks + per_receive < sent
    await stream.aclose()
    still = await switch.terminal("WH-POS-2")        # everyone else is served
    assert (await still.request({"t": "ping"}))["code"] == "ok"
    await switch.stop()


@pytest.mark.parametrize("bad", ["a byte past its map", "a seq out of order",
                                 "a tag of garbage"])
async def test_a_large_frame_that_fails_once_decoded_has_paid_its_bytes(tmp_path, nursery,
                                                                        bad):
    # Charged only when it ran, a large frame bad at its last byte (or out of sequence) was
    # decoded for nothing: one key signing on again and again took the loop (helper-74).
    config = default_config()
    config.terminal_requests_per_s = 0.1
    switch = await Switch(tmp_path / "d", config=config).start(nursery)
    added = await switch.ok(switch.admin, {"t": "add_credential", "who": "WH-POS-1",
                                           "role": "terminal", "school": "WH", "kind": "pos",
                                           "id": "add-till"})
    stream, session, decoder = await signed_on(switch.port, "WH-POS-1", added["key"])
    seq = 1 if bad == "a byte past its map" else 2
    body = b"\x83\xa1t\xa4ping\xa3seq" + msgpack.packb(seq) + TINY_LISTS[1:]
    if bad == "a byte past its map":
        body += b"\xc0"
    # A stranger's frame of garbage behind a replayed hello pays nothing of the till's.
    key = bytes(32) if bad == "a tag of garbage" else session._k_c2s
    await stream.send_all(_framed(body, key))
    payloads = await next_payloads(stream, decoder)
    code = {"a byte past its map": "frame_invalid", "a seq out of order": "seq_invalid",
            "a tag of garbage": "mac_invalid"}[bad]
    assert unverified_body(payloads[0])["code"] == code
    await stream.aclose()
    budget = switch.server.budget_of(switch.ledger.credential("WH-POS-1"))
    paid = 0 if bad == "a tag of garbage" else \
        (len(body) + limits.tag_size_bytes) // limits.request_cost_frame_bytes
    assert limits.terminal_requests_burst - paid - 1 < budget._tokens \
        <= limits.terminal_requests_burst - paid
    await switch.stop()


async def test_a_request_before_a_bad_length_in_the_same_write_is_answered(tmp_path, nursery):
    switch = await Switch(tmp_path / "d").start(nursery)
    await switch.person("WH1", "AAAA", balance=1_000)
    added = await switch.ok(switch.admin, {"t": "add_credential", "who": "WH-POS-1",
                                           "role": "terminal", "school": "WH", "kind": "pos",
                                           "id": "add-till"})
    stream, session, decoder = await signed_on(switch.port, "WH-POS-1", added["key"])
    _, debit = session.request_frame({"t": "debit", "card": "AAAA", "amount": 100, "id": 1})
    too_long = (limits.frame_size_bytes_max + 1).to_bytes(limits.frame_length_prefix_bytes,
                                                          "big")
    await stream.send_all(debit + too_long)
    payloads = await next_payloads(stream, decoder, count=2)
    reply = session.receive(payloads[0])
    assert reply["code"] == "ok" and reply["balance"] == 900
    assert unverified_body(payloads[1])["code"] == "frame_too_large"
    await stream.aclose()
    await switch.stop()


def test_the_decoder_gives_whole_frames_before_a_bad_length_then_refuses():
    decoder = FrameDecoder()
    frame = _framed(b"\x80")
    payloads = decoder.feed(frame + frame + bytes(4))
    assert len(payloads) == 2 and decoder.failure.code == "frame_invalid"
    try:
        decoder.feed(frame)
    except ProtocolError as error:
        assert error.code == "frame_invalid"
    else:
        raise AssertionError("a decoder past a bad length read on")
