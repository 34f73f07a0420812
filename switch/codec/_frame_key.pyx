"""The frames' HMAC-SHA256 (RFC 2104, docs/PROTOCOL.md §1.3) in C, on the x86 SHA extensions.

Why: a session tags two frames a request, and hashlib's keyed states cost 0.72 µs a tag, most
of it OpenSSL's context copies and Python calls around three short hashes; here a tag is
three compressions and no allocation but its result (about 0.25 µs). switch/codec/mac.py
uses this `FrameKey` where `AVAILABLE` and its own (hashlib) elsewhere; tests check both
against `hmac`.
"""

from libc.stdint cimport uint8_t, uint32_t
from libc.string cimport memcpy, memset
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE

import hashlib

from switch import limits

cdef extern from "_sha256_x86.h":
    void sha256_blocks_x86(uint32_t *state, const uint8_t *data, size_t blocks) nogil
    int sha256_x86_available() nogil

cdef uint32_t[8] _IV = [0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                        0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19]
DEF _BLOCK = 64
DEF _DIGEST = 32
# One compression of the padded block holds at most this many bytes of message.
DEF _ROOM_IN_LAST_BLOCK = _BLOCK - 1 - 8
cdef Py_ssize_t _TAG_SIZE = limits.tag_size_bytes
assert 1 <= _TAG_SIZE <= _DIGEST

AVAILABLE = bool(sha256_x86_available())


cdef inline void _put_be32(uint8_t *out, uint32_t value) noexcept nogil:
    out[0] = value >> 24
    out[1] = value >> 16
    out[2] = value >> 8
    out[3] = value


cdef inline void _put_length(uint8_t *block_end, unsigned long long bits) noexcept nogil:
    """The message length in bits, big-endian, as the padded message's last eight bytes."""
    cdef int i
    for i in range(8):
        block_end[-1 - i] = (bits >> (8 * i)) & 0xFF


cdef bytes _as_bytes(object data):
    """Any bytes-like object as bytes, as hashlib takes them; TypeError for anything else."""
    return data if type(data) is bytes else bytes(memoryview(data))


cdef class FrameKey:
    """A direction key ready to tag frames: its two keyed states (the compressions of the
    key's inner and outer pads) made once per session."""

    cdef uint32_t _inner[8]
    cdef uint32_t _outer[8]

    def __init__(self, key):
        cdef uint8_t block[_BLOCK]
        cdef int i
        key = _as_bytes(key)
        if not AVAILABLE:
            raise RuntimeError("this CPU has no SHA extensions: use switch.codec.mac.FrameKey")
        if len(key) > _BLOCK:
            key = hashlib.sha256(key).digest()
        memset(block, 0, _BLOCK)
        memcpy(block, PyBytes_AS_STRING(key), len(key))
        for i in range(_BLOCK):
            block[i] ^= 0x36
        memcpy(self._inner, _IV, sizeof(_IV))
        sha256_blocks_x86(self._inner, block, 1)
        for i in range(_BLOCK):
            block[i] ^= 0x36 ^ 0x5C
        memcpy(self._outer, _IV, sizeof(_IV))
        sha256_blocks_x86(self._outer, block, 1)

    def __reduce__(self):
        # Its keyed states are the session's key in all but name: never written anywhere
        # (hashlib's keyed states refuse pickling too).
        raise TypeError("a frame key cannot be pickled")

    def tag(self, body) -> bytes:
        if type(body) is not bytes:
            body = _as_bytes(body)
        cdef uint32_t state[8]
        cdef uint8_t block[2 * _BLOCK]
        cdef uint8_t digest[_DIGEST]
        cdef const uint8_t *data = <const uint8_t *>PyBytes_AS_STRING(body)
        cdef Py_ssize_t size = PyBytes_GET_SIZE(body)
        cdef Py_ssize_t whole = size // _BLOCK
        cdef Py_ssize_t rest = size - whole * _BLOCK
        cdef Py_ssize_t last_blocks = 1 if rest <= _ROOM_IN_LAST_BLOCK else 2
        cdef int i
        # Inner hash of (key ^ ipad) || body: its first block is the keyed state.
        memcpy(state, self._inner, sizeof(state))
        if whole:
            sha256_blocks_x86(state, data, whole)
        memset(block, 0, sizeof(block))
        memcpy(block, data + whole * _BLOCK, rest)
        block[rest] = 0x80
        _put_length(block + last_blocks * _BLOCK, (<unsigned long long>(_BLOCK + size)) * 8)
        sha256_blocks_x86(state, block, last_blocks)
        # Outer hash of (key ^ opad) || inner digest: one block after the keyed state.
        memset(block, 0, _BLOCK)
        for i in range(8):
            _put_be32(block + 4 * i, state[i])
        block[_DIGEST] = 0x80
        _put_length(block + _BLOCK, (_BLOCK + _DIGEST) * 8)
        memcpy(state, self._outer, sizeof(state))
        sha256_blocks_x86(state, block, 1)
        for i in range(8):
            _put_be32(digest + 4 * i, state[i])
        return PyBytes_FromStringAndSize(<char *>digest, _TAG_SIZE)
