"""Hostile msgpack for tests: values a well-behaved encoder never writes (nesting at the
decoder's limit, duplicate keys, malformed UTF-8, timestamp extensions) and the request
bodies that carry them."""

import msgpack

from switch.codec.session import sign_body

# msgpack nests at most 1024 containers, both ways. The deepest value a top-level map can
# hold is 1023 containers: deep enough to overflow Python's repr, and the one depth the
# idempotency fingerprint (two more lists around a field) cannot pack.
CONTAINERS_MAX = 1024
DEEPEST_FIELD = CONTAINERS_MAX - 1

_pack = msgpack.Packer(use_bin_type=True).pack


class Raw:
    """msgpack bytes written into a body as they are; `depth` counts their containers."""

    __slots__ = ("data", "depth", "label")

    def __init__(self, data: bytes, depth: int = 0, label: str = ""):
        self.data = data
        self.depth = depth
        self.label = label

    def __repr__(self) -> str:
        return f"Raw({self.label or self.data[:16]!r})"


def nested_lists(depth: int, leaf=None) -> Raw:
    return Raw(b"\x91" * depth + _pack(leaf), depth, f"{depth} lists")


def nested_maps(depth: int, leaf=None) -> Raw:
    return Raw(b"\x81\xa0" * depth + _pack(leaf), depth, f"{depth} maps")


def nested_mixed(depth: int, leaf=None) -> Raw:
    # A map of a list of a map ..., the map keys not str: only the top level is checked.
    layers = [b"\x81\x01", b"\x91"]
    return Raw(b"".join(layers[n % 2] for n in range(depth)) + _pack(leaf), depth,
               f"{depth} mixed")


ODD_RAWS = [
    Raw(b"\x82\xa1a\x01\xa1a\x02", 1, "duplicate key"),
    Raw(b"\xa3\xed\xa0\x80", 0, "surrogate in str"),
    Raw(b"\xa2\xff\xfe", 0, "invalid utf-8 in str"),
    Raw(b"\xd6\xff" + (1).to_bytes(4, "big"), 0, "timestamp32"),
    Raw(b"\xd7\xff" + (0x3FFFFFFF << 34 | 1).to_bytes(8, "big"), 0, "timestamp64 bad nanos"),
    Raw(b"\xc7\x0c\xff" + bytes(4) + (-2**63).to_bytes(8, "big", signed=True), 0,
        "timestamp96 min"),
    Raw(b"\xd5\xff\x00\x00", 0, "timestamp of 2 bytes"),
    Raw(b"\xc7\x00\x05", 0, "empty ext"),
    Raw(b"\x81\x91\x01\x01", 1, "list as map key"),
    Raw(b"\x81\xc0\x01", 1, "nil as map key"),
    Raw(b"\xc1", 0, "never-used byte"),
]


def signed_body_frame(session, body: bytes) -> bytes:
    """A request frame around a body built here, tagged with the session's client key."""
    return sign_body(session._k_c2s, body)


def pack_value(value) -> bytes:
    """Pack `value`, writing any Raw inside it verbatim (containers of Raw stay shallow)."""
    if isinstance(value, Raw):
        return value.data
    if isinstance(value, dict) and _holds_raw(value):
        return _map_header(len(value)) + b"".join(
            pack_value(key) + pack_value(item) for key, item in value.items())
    if isinstance(value, (list, tuple)) and _holds_raw(value):
        return _array_header(len(value)) + b"".join(pack_value(item) for item in value)
    return _pack(value)


def pack_pairs(pairs) -> bytes:
    """A top-level map from (key, value) pairs, duplicates kept in order."""
    return _map_header(len(pairs)) + b"".join(pack_value(k) + pack_value(v) for k, v in pairs)


def _holds_raw(value) -> bool:
    items = value.items() if isinstance(value, dict) else enumerate(value)
    for key, item in items:
        if isinstance(key, Raw) or isinstance(item, Raw):
            return True
        if isinstance(item, (dict, list, tuple)) and _holds_raw(item):
            return True
    return False


def _map_header(count: int) -> bytes:
    if count < 16:
        return bytes([0x80 | count])
    return b"\xde" + count.to_bytes(2, "big")


def _array_header(count: int) -> bytes:
    if count < 16:
        return bytes([0x90 | count])
    return b"\xdc" + count.to_bytes(2, "big")
