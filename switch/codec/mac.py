"""Frame tags and the session's direction keys (docs/PROTOCOL.md §1.3)."""

import hashlib
import hmac

from switch import limits

try:
    from switch.codec import _frame_key
except ImportError:   # a tree whose extensions were not built: hashlib's, the same tags
    _frame_key = None

ZERO_TAG = bytes(limits.tag_size_bytes)

_BLOCK = hashlib.sha256().block_size
_INNER_PAD = bytes(byte ^ 0x36 for byte in range(256))   # RFC 2104's ipad, as a table
_OUTER_PAD = bytes(byte ^ 0x5C for byte in range(256))   # and its opad


class HashlibFrameKey:
    """A direction key ready to tag frames: HMAC-SHA256 (RFC 2104) with its two keyed hash
    states made once per session. Keying OpenSSL's HMAC on every frame cost three times the
    hash itself, and a session tags two frames per request. Where the CPU has the x86 SHA
    extensions, `FrameKey` is the compiled one instead (_frame_key.pyx: the same tags, about
    a third of the time)."""

    __slots__ = ("_inner", "_outer")

    def __init__(self, key: bytes):
        if len(key) > _BLOCK:
            key = hashlib.sha256(key).digest()
        key = key.ljust(_BLOCK, b"\0")
        self._inner = hashlib.sha256(key.translate(_INNER_PAD))
        self._outer = hashlib.sha256(key.translate(_OUTER_PAD))

    def tag(self, body: bytes) -> bytes:
        inner = self._inner.copy()
        inner.update(body)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()[: limits.tag_size_bytes]


if _frame_key is not None and _frame_key.AVAILABLE:
    FrameKey = _frame_key.FrameKey
    _PREPARED = (HashlibFrameKey, _frame_key.FrameKey)
else:
    FrameKey = HashlibFrameKey
    _PREPARED = (HashlibFrameKey,)


def tag(key: "bytes | FrameKey", body: bytes) -> bytes:
    if type(key) in _PREPARED:
        return key.tag(body)
    return hmac.digest(key, body, "sha256")[: limits.tag_size_bytes]


def verify(key: "bytes | FrameKey", body: bytes, received_tag: bytes) -> bool:
    # Constant-time: a forger learns nothing from how long a refusal takes.
    return hmac.compare_digest(tag(key, body), received_tag)


def direction_keys(key: bytes, client_nonce: bytes, server_nonce: bytes) -> tuple[bytes, bytes]:
    """Return (k_c2s, k_s2c) for a session opened with these nonces."""
    k_c2s = hmac.digest(key, b"c2s" + client_nonce + server_nonce, "sha256")
    k_s2c = hmac.digest(key, b"s2c" + client_nonce + server_nonce, "sha256")
    return k_c2s, k_s2c


def session_keys(key: bytes, client_nonce: bytes,
                 server_nonce: bytes) -> tuple[FrameKey, FrameKey]:
    """The direction keys of `direction_keys`, ready to tag frames."""
    k_c2s, k_s2c = direction_keys(key, client_nonce, server_nonce)
    return FrameKey(k_c2s), FrameKey(k_s2c)
