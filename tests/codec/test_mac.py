"""A session's prepared frame key tags exactly as HMAC-SHA256 does (docs/PROTOCOL.md §1.3),
whichever implementation the CPU gets: the compiled one on the x86 SHA extensions
(`_frame_key`), or hashlib's."""

import hmac
import random

import pytest
from hypothesis import given, settings, strategies as st

from switch import limits
from switch.codec import _frame_key, mac

IMPLEMENTATIONS = [mac.HashlibFrameKey] + (
    [_frame_key.FrameKey] if _frame_key.AVAILABLE else [])


def _hmac_tag(key: bytes, body: bytes) -> bytes:
    return hmac.digest(key, body, "sha256")[: limits.tag_size_bytes]


def _cpu_has_sha_extensions() -> bool:
    with open("/proc/cpuinfo") as cpuinfo:
        return any(line.startswith("flags") and " sha_ni" in line for line in cpuinfo)


def test_the_switch_tags_with_the_compiled_key_where_the_cpu_can():
    assert _frame_key.AVAILABLE == _cpu_has_sha_extensions()
    assert mac.FrameKey is (_frame_key.FrameKey if _frame_key.AVAILABLE else mac.HashlibFrameKey)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@settings(max_examples=300, deadline=None)
@given(key=st.binary(max_size=200), body=st.binary(max_size=300))
def test_frame_key_tags_as_hmac_sha256(implementation, key, body):
    assert implementation(key).tag(body) == _hmac_tag(key, body)


# Around SHA-256's 64-byte block: a longer key is hashed first (RFC 2104).
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("key_size", [0, 1, 32, 63, 64, 65, 128])
def test_frame_key_at_the_block_size(implementation, key_size):
    key = bytes(range(7, 7 + key_size))
    assert implementation(key).tag(b"body") == _hmac_tag(key, b"body")


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_every_body_length_across_the_padding_boundaries(implementation):
    """Every length from 0 to 300 bytes: where the padding and length take one more block
    (56 and 120 bytes) and where the body fills whole blocks (64, 128, 192, 256)."""
    rng = random.Random(15)
    key = rng.randbytes(32)
    frame_key = implementation(key)
    for size in range(301):
        body = rng.randbytes(size)
        assert frame_key.tag(body) == _hmac_tag(key, body), size


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_a_frame_key_takes_any_bytes_like_key_and_body_and_nothing_else(implementation):
    key = bytes(range(32))
    assert implementation(bytearray(key)).tag(memoryview(b"frame")) == _hmac_tag(key, b"frame")
    assert implementation(key).tag(bytearray(b"frame")) == _hmac_tag(key, b"frame")
    for wrong in ("frame", 5, None):
        with pytest.raises(TypeError):
            implementation(key).tag(wrong)


def test_a_frame_key_tags_many_frames_alike():
    """Its keyed states are copied per frame, never consumed."""
    key = mac.FrameKey(bytes(32))
    assert [key.tag(b"one") for _ in range(3)] == [_hmac_tag(bytes(32), b"one")] * 3
    assert key.tag(b"two") == _hmac_tag(bytes(32), b"two")


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_tag_and_verify_take_either_form_of_a_key(implementation):
    raw = bytes(range(32))
    prepared = implementation(raw)
    assert mac.tag(raw, b"x") == mac.tag(prepared, b"x")
    assert mac.verify(prepared, b"x", mac.tag(raw, b"x"))
    assert not mac.verify(prepared, b"y", mac.tag(raw, b"x"))


def test_session_keys_are_the_direction_keys_prepared():
    key, client_nonce, server_nonce = bytes(32), b"c" * 16, b"s" * 16
    k_c2s, k_s2c = mac.direction_keys(key, client_nonce, server_nonce)
    prepared_c2s, prepared_s2c = mac.session_keys(key, client_nonce, server_nonce)
    assert prepared_c2s.tag(b"frame") == _hmac_tag(k_c2s, b"frame")
    assert prepared_s2c.tag(b"frame") == _hmac_tag(k_s2c, b"frame")


@pytest.mark.parametrize("server_key,client_key", [
    (a, b) for a in IMPLEMENTATIONS for b in IMPLEMENTATIONS])
def test_sessions_keyed_by_either_implementation_speak_to_each_other(
        monkeypatch, server_key, client_key):
    """A till's session and the switch's, each keyed by whichever implementation its CPU
    gets, open, carry a request and its reply, and refuse a frame changed on the way."""
    from switch.codec import ProtocolError, ServerSession
    from switch.codec.session import ClientSession
    key = bytes(range(32))
    monkeypatch.setattr(mac, "FrameKey", server_key)
    server = ServerSession()
    monkeypatch.setattr(mac, "FrameKey", client_key)
    client = ClientSession("WH-POS-1", key)
    hello = server.receive_hello(client.hello_frame(1)[4:], {"WH-POS-1": key}.get)
    monkeypatch.setattr(mac, "FrameKey", server_key)
    reply_to_hello = server.accept_hello(hello, {"role": "terminal"})
    monkeypatch.setattr(mac, "FrameKey", client_key)
    client.receive_hello_reply(reply_to_hello[4:])
    assert type(server._k_c2s) is server_key and type(client._k_c2s) is client_key
    _, frame = client.request_frame({"t": "ping"})
    request = server.receive_request(frame[4:])
    assert request.message["t"] == "ping"
    reply = server.encode_reply({"t": "ping", "re": request.seq, "code": "ok"})
    assert client.receive(reply[4:])["code"] == "ok"
    _, frame = client.request_frame({"t": "ping"})
    changed = bytearray(frame[4:])
    changed[3] ^= 1
    with pytest.raises(ProtocolError):
        server.receive_request(bytes(changed))


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_a_frame_key_is_never_pickled(implementation):
    """Its keyed states stand for the session's key: nothing may write them anywhere."""
    import pickle
    with pytest.raises(TypeError):
        pickle.dumps(implementation(bytes(32)))


def test_a_tree_without_the_compiled_key_tags_with_hashlib():
    """An unbuilt tree (or one whose build failed) still speaks the protocol, as the core's
    plain-Python reference lets it, rather than failing to import the codec."""
    import subprocess
    import sys
    code = ("import sys; sys.modules['switch.codec._frame_key'] = None\n"
            "import hmac\n"
            "from switch.codec import mac\n"
            "assert mac._frame_key is None and mac.FrameKey is mac.HashlibFrameKey\n"
            "key = bytes(range(32))\n"
            "prepared = mac.session_keys(key, b'c' * 16, b's' * 16)[0]\n"
            "raw = mac.direction_keys(key, b'c' * 16, b's' * 16)[0]\n"
            "assert mac.verify(prepared, b'x', mac.tag(raw, b'x'))\n"
            "print('ok')\n")
    ran = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert ran.returncode == 0 and ran.stdout == "ok\n", ran.stderr
