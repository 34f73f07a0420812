"""A session's prepared frame key tags exactly as HMAC-SHA256 does (docs/PROTOCOL.md §1.3)."""

import hmac

import pytest
from hypothesis import given, settings, strategies as st

from switch import limits
from switch.codec import mac


def _hmac_tag(key: bytes, body: bytes) -> bytes:
    return hmac.digest(key, body, "sha256")[: limits.tag_size_bytes]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.binary(max_size=300))
def test_frame_key_tags_as_hmac_sha256(key, body):
    assert mac.FrameKey(key).tag(body) == _hmac_tag(key, body)


# Around SHA-256's 64-byte block: a longer key is hashed first (RFC 2104).
@pytest.mark.parametrize("key_size", [0, 1, 32, 63, 64, 65, 128])
def test_frame_key_at_the_block_size(key_size):
    key = bytes(range(7, 7 + key_size))
    assert mac.FrameKey(key).tag(b"body") == _hmac_tag(key, b"body")


def test_a_frame_key_tags_many_frames_alike():
    """Its keyed states are copied per frame, never consumed."""
    key = mac.FrameKey(bytes(32))
    assert [key.tag(b"one") for _ in range(3)] == [_hmac_tag(bytes(32), b"one")] * 3
    assert key.tag(b"two") == _hmac_tag(bytes(32), b"two")


def test_tag_and_verify_take_either_form_of_a_key():
    raw = bytes(range(32))
    prepared = mac.FrameKey(raw)
    assert mac.tag(raw, b"x") == mac.tag(prepared, b"x")
    assert mac.verify(prepared, b"x", mac.tag(raw, b"x"))
    assert not mac.verify(prepared, b"y", mac.tag(raw, b"x"))


def test_session_keys_are_the_direction_keys_prepared():
    key, client_nonce, server_nonce = bytes(32), b"c" * 16, b"s" * 16
    k_c2s, k_s2c = mac.direction_keys(key, client_nonce, server_nonce)
    prepared_c2s, prepared_s2c = mac.session_keys(key, client_nonce, server_nonce)
    assert prepared_c2s.tag(b"frame") == _hmac_tag(k_c2s, b"frame")
    assert prepared_s2c.tag(b"frame") == _hmac_tag(k_s2c, b"frame")
