"""Framing limits at N and N+1, whole and byte-at-a-time, and garbage (Hypothesis)."""

import msgpack
import pytest
from hypothesis import given, settings, strategies as st

from switch import limits
from switch.codec import FrameDecoder, ProtocolError, ServerSession
from switch.codec.framing import decode_body, encode_frame
from switch.codec.session import ClientSession

KEY = bytes(range(32))


def _frame_of_length(length: int) -> bytes:
    return length.to_bytes(4, "big") + bytes(length)


@pytest.mark.parametrize("length,code", [
    (limits.frame_size_bytes_min - 1, "frame_invalid"),
    (0, "frame_invalid"),
    (limits.frame_size_bytes_max + 1, "frame_too_large"),
    (2**32 - 1, "frame_too_large"),
])
def test_length_out_of_range_is_refused_from_the_length_alone(length, code):
    with pytest.raises(ProtocolError) as caught:
        FrameDecoder().feed(length.to_bytes(4, "big"))
    assert caught.value.code == code


@pytest.mark.parametrize("length", [limits.frame_size_bytes_min, limits.frame_size_bytes_max])
def test_length_at_the_bounds_is_accepted(length):
    decoder = FrameDecoder()
    assert decoder.feed(_frame_of_length(length)[:-1]) == []
    assert decoder.feed(b"\0") == [bytes(length)]


def test_byte_at_a_time_equals_whole():
    frames = [encode_frame(KEY, {"t": "ping", "seq": n}) for n in range(1, 6)]
    stream = b"".join(frames)
    whole = FrameDecoder().feed(stream)
    decoder = FrameDecoder()
    one_by_one = []
    for i in range(len(stream)):
        one_by_one += decoder.feed(stream[i:i + 1])
    assert whole == one_by_one == [f[4:] for f in frames]
    assert decoder.buffered_bytes == 0


@pytest.mark.parametrize("body", [
    msgpack.packb([1, 2]), msgpack.packb({1: "a"}), msgpack.packb({"a": 1}) + b"\x01",
    b"\xc1", msgpack.packb("text"), b"\xa3ab",  # truncated str
    b"\x81\xa1t\xc4\x01",  # truncated bin inside map
])
def test_bodies_that_are_not_one_str_keyed_map_are_frame_invalid(body):
    with pytest.raises(ProtocolError) as caught:
        decode_body(body)
    assert caught.value.code == "frame_invalid"


def test_str_and_bin_stay_distinct():
    message = decode_body(msgpack.packb({"s": "abc", "b": b"abc"}, use_bin_type=True))
    assert message == {"s": "abc", "b": b"abc"}


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_garbage_either_parses_or_raises_protocol_error(data):
    decoder = FrameDecoder()
    try:
        for payload in decoder.feed(data):
            decode_body(payload[:-16])
    except ProtocolError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=17, max_size=200))
def test_server_session_on_garbage_hello_raises_only_protocol_errors(payload):
    session = ServerSession()
    try:
        session.receive_hello(payload, lambda who: KEY)
    except ProtocolError:
        assert session.state == "closed"


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400), st.integers(min_value=1, max_value=7))
def test_garbage_after_hello_raises_only_protocol_errors(data, chunk):
    server, client = ServerSession(), ClientSession("t1", KEY)
    hello = server.receive_hello(client.hello_frame(0)[4:], lambda who: KEY)
    client.receive_hello_reply(server.accept_hello(hello, {"role": "terminal"})[4:])
    decoder = FrameDecoder()
    try:
        for start in range(0, len(data), chunk):
            for payload in decoder.feed(data[start:start + chunk]):
                server.receive_request(payload)
    except ProtocolError as error:
        assert error.code in {"frame_invalid", "frame_too_large", "mac_invalid", "seq_invalid"}


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.text(max_size=8), st.one_of(st.integers(-2**63, 2**64 - 1), st.text(),
                                                      st.binary(), st.none(), st.booleans()),
                       max_size=8))
def test_signed_random_maps_round_trip_through_a_session(fields):
    server, client = ServerSession(), ClientSession("t1", KEY)
    hello = server.receive_hello(client.hello_frame(0)[4:], lambda who: KEY)
    client.receive_hello_reply(server.accept_hello(hello, {"role": "terminal"})[4:])
    seq, frame = client.request_frame(fields)
    [payload] = FrameDecoder().feed(frame)
    request = server.receive_request(payload)
    assert request.seq == seq == 1
    assert request.message == {**fields, "seq": 1}
