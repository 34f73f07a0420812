"""Frame tags and the session's direction keys (docs/PROTOCOL.md §1.3)."""

import hmac

from switch import limits

ZERO_TAG = bytes(limits.tag_size_bytes)


def tag(key: bytes, body: bytes) -> bytes:
    return hmac.digest(key, body, "sha256")[: limits.tag_size_bytes]


def verify(key: bytes, body: bytes, received_tag: bytes) -> bool:
    # Constant-time: a forger learns nothing from how long a refusal takes.
    return hmac.compare_digest(tag(key, body), received_tag)


def direction_keys(key: bytes, client_nonce: bytes, server_nonce: bytes) -> tuple[bytes, bytes]:
    """Return (k_c2s, k_s2c) for a session opened with these nonces."""
    k_c2s = hmac.digest(key, b"c2s" + client_nonce + server_nonce, "sha256")
    k_s2c = hmac.digest(key, b"s2c" + client_nonce + server_nonce, "sha256")
    return k_c2s, k_s2c
