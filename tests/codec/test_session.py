"""Session rules of docs/PROTOCOL.md §2: hello checks, direction keys, seq order, error frames."""

import pytest

from switch import limits
from switch.codec import FrameDecoder, ProtocolError, ServerSession
from switch.codec.framing import decode_body, encode_frame, split_payload
from switch.codec.mac import ZERO_TAG
from switch.codec.session import ClientSession

KEY = bytes(range(32))
OTHER_KEY = bytes(32)


def _open():
    server, client = ServerSession(), ClientSession("WH-POS-1", KEY)
    hello = server.receive_hello(client.hello_frame(1)[4:], {"WH-POS-1": KEY}.get)
    client.receive_hello_reply(server.accept_hello(hello, {"role": "terminal"})[4:])
    return server, client


def _hello_error(payload):
    server = ServerSession()
    with pytest.raises(ProtocolError) as caught:
        server.receive_hello(payload, {"WH-POS-1": KEY}.get)
    assert server.state == "closed"
    frame = server.encode_error(caught.value)
    body, tag = split_payload(frame[4:])
    assert tag == ZERO_TAG
    return caught.value.code, decode_body(body)


def test_version_checked_before_credential():
    client = ClientSession("nobody", OTHER_KEY)
    payload = encode_frame(OTHER_KEY, {"t": "hello", "v": 2, "who": "nobody",
                                       "nonce": bytes(16), "at": 0})[4:]
    code, body = _hello_error(payload)
    assert code == "version_unsupported" and body == {"t": "error", "code": "version_unsupported"}
    assert client.state == "awaiting_hello"


@pytest.mark.parametrize("who,key", [("WH-POS-1", OTHER_KEY), ("nobody", KEY), ("nobody", OTHER_KEY)])
def test_unknown_credential_and_bad_tag_get_the_same_answer(who, key):
    payload = ClientSession(who, key).hello_frame(0)[4:]
    code, body = _hello_error(payload)
    assert code == "unauthenticated" and body == {"t": "error", "code": "unauthenticated"}


def test_short_nonce_is_unauthenticated():
    payload = encode_frame(KEY, {"t": "hello", "v": 1, "who": "WH-POS-1", "nonce": bytes(15), "at": 0})
    assert _hello_error(payload[4:])[0] == "unauthenticated"


def test_seq_must_count_up_without_gaps():
    server, client = _open()
    for _ in range(3):
        _, frame = client.request_frame({"t": "ping"})
        assert server.receive_request(frame[4:]).message["t"] == "ping"
    with pytest.raises(ProtocolError) as caught:
        server.receive_request(client.raw_request_frame({"t": "ping", "seq": 5})[4:])
    assert caught.value.code == "seq_invalid" and caught.value.re == 5
    error = client.receive(server.encode_error(caught.value)[4:])
    assert error == {"t": "error", "code": "seq_invalid", "re": 5}


def test_seq_replayed_is_invalid():
    server, client = _open()
    _, frame = client.request_frame({"t": "ping"})
    server.receive_request(frame[4:])
    with pytest.raises(ProtocolError) as caught:
        server.receive_request(frame[4:])
    assert caught.value.code == "seq_invalid" and caught.value.re == 1


def test_frame_signed_with_the_long_term_key_after_hello_is_mac_invalid():
    server, _ = _open()
    with pytest.raises(ProtocolError) as caught:
        server.receive_request(encode_frame(KEY, {"t": "ping", "seq": 1})[4:])
    assert caught.value.code == "mac_invalid"


def test_server_to_client_key_differs_from_client_to_server():
    server, client = _open()
    reply = server.encode_reply({"t": "ping", "re": 1, "code": "ok"})
    assert client.receive(reply[4:])["code"] == "ok"
    # A frame reflected back at the server must not verify.
    with pytest.raises(ProtocolError):
        server.receive_request(reply[4:])


def test_pushes_count_from_one():
    server, client = _open()
    pushes = [client.receive(server.encode_push({"t": "blacklist"})[4:])["push"] for _ in range(3)]
    assert pushes == [1, 2, 3]


def test_captured_session_replayed_on_new_connection_fails():
    server, client = _open()
    _, frame = client.request_frame({"t": "ping"})
    server2, client2 = _open()  # new nonces, new keys
    with pytest.raises(ProtocolError) as caught:
        server2.receive_request(frame[4:])
    assert caught.value.code == "mac_invalid"


def test_largest_frame_limit_holds_for_encode():
    big = {"t": "x", "pad": b"\0" * (limits.frame_size_bytes_max - 100)}
    frame = encode_frame(KEY, big)
    assert len(frame) - 4 <= limits.frame_size_bytes_max
    assert FrameDecoder().feed(frame)


def test_a_message_too_large_for_one_frame_is_refused_before_sending():
    from switch.codec.framing import FrameTooLarge
    with pytest.raises(FrameTooLarge):
        encode_frame(KEY, {"t": "x", "pad": b"\0" * limits.frame_size_bytes_max})


def test_opening_a_frame_changes_nothing_until_it_is_accepted_in_turn():
    """`open_request` checks the tag and decodes, and nothing else: a bad frame opened ahead
    ends the session only when `accept_request` reaches it, after the frames before it."""
    server, client = _open()
    good = [client.request_frame({"t": "ping"})[1][4:] for _ in range(2)]
    forged = bytearray(client.request_frame({"t": "ping"})[1][4:])
    forged[-1] ^= 1
    opened = [server.open_request(payload) for payload in good + [bytes(forged)]]
    assert server.state == "open"
    assert [server.accept_request(each).seq for each in opened[:2]] == [1, 2]
    with pytest.raises(ProtocolError) as caught:
        server.accept_request(opened[2])
    assert caught.value.code == "mac_invalid" and server.state != "open"
