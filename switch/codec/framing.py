"""Length-prefixed frames: `LEN` (4 bytes, big-endian) then `BODY` + 16-byte `TAG`."""

import msgpack

from switch import limits
from switch.codec import mac
from switch.codec.errors import ProtocolError

_LEN = limits.frame_length_prefix_bytes
_TAG = limits.tag_size_bytes


class FrameDecoder:
    """Accumulates received bytes and yields complete frame payloads.

    A length outside the contract's range is refused from the four length
    bytes alone, before any of the payload arrives (docs/PROTOCOL.md §1.1).
    """

    __slots__ = ("_buffer", "failure")

    def __init__(self) -> None:
        self._buffer = bytearray()
        # A bad length found behind whole frames: those are returned first, and this is
        # what follows them (raised by every later `feed`). A request must not be lost or
        # kept by how TCP happened to split the bytes after it.
        self.failure: ProtocolError | None = None

    @property
    def buffered_bytes(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        if self.failure is not None:
            raise self.failure
        buffer = self._buffer
        buffer += data
        payloads = []
        offset = 0
        end = len(buffer)
        while end - offset >= _LEN:
            length = int.from_bytes(buffer[offset:offset + _LEN], "big")
            if length > limits.frame_size_bytes_max:
                failure = ProtocolError("frame_too_large", f"LEN {length}")
            elif length < limits.frame_size_bytes_min:
                failure = ProtocolError("frame_invalid", f"LEN {length}")
            else:
                failure = None
            if failure is not None:
                if not payloads:
                    raise failure
                self.failure = failure
                buffer.clear()
                return payloads
            if end - offset - _LEN < length:
                break
            start = offset + _LEN
            payloads.append(bytes(buffer[start:start + length]))
            offset = start + length
        if offset:
            del buffer[:offset]
        return payloads


def split_payload(payload: bytes) -> tuple[bytes, bytes]:
    return payload[:-_TAG], payload[-_TAG:]


def decode_body(body: bytes) -> dict:
    """Exactly one msgpack map with str keys, else `frame_invalid`."""
    try:
        message = msgpack.unpackb(body, raw=False, strict_map_key=False)
    except Exception as error:  # msgpack raises several unrelated types on garbage
        raise ProtocolError("frame_invalid", f"body: {type(error).__name__}") from None
    if type(message) is not dict:
        raise ProtocolError("frame_invalid", "body is not a map")
    for key, value in message.items():
        if type(key) is not str:
            raise ProtocolError("frame_invalid", "map key is not a str")
        if (type(value) is list or type(value) is dict) and not _nested_within(
                value, limits.message_nesting_depth_max - 1):
            # Whatever reads it later (schemas, fingerprints, records) may recurse.
            raise ProtocolError("frame_invalid", "nested too deep")
    return message


def _nested_within(container, depth_left: int) -> bool:
    """True when `container` holds maps and lists at most `depth_left` levels deep, itself
    included."""
    if depth_left < 1:
        return False
    values = container.values() if type(container) is dict else container
    for value in values:
        if (type(value) is list or type(value) is dict) and not _nested_within(
                value, depth_left - 1):
            return False
    return True


# One packer, kept: `msgpack.packb` builds a Packer for every call, which cost a reply more
# than packing it (0.89 against 0.26 µs). A Packer is not reentrant: frames are encoded on
# the event loop's thread only (a thread of a client of this codec would need its own).
_pack = msgpack.Packer(use_bin_type=True).pack


def encode_body(message: dict) -> bytes:
    return _pack(message)


class FrameTooLarge(ValueError):
    """A message of ours would not fit in one frame (the caller sends a smaller one)."""


def encode_frame(key: bytes, message: dict) -> bytes:
    body = encode_body(message)
    length = len(body) + _TAG
    if length > limits.frame_size_bytes_max:
        raise FrameTooLarge(f"{message.get('t')!r} reply of {length} bytes")
    return length.to_bytes(_LEN, "big") + body + mac.tag(key, body)


def encode_unauthenticated_error(code: str, **fields) -> bytes:
    """An error frame sent before a session exists: its tag is 16 zero bytes."""
    body = encode_body({"t": "error", "code": code, **fields})
    return (len(body) + _TAG).to_bytes(_LEN, "big") + body + mac.ZERO_TAG
