"""How keys are laid out where their order matters; pure, so the request layer may use it
without loading LMDB."""


def txn_key(txn: int) -> bytes:
    """A journal txn as a key: 8 bytes big-endian, so keys sort as txns do."""
    return txn.to_bytes(8, "big")


# A destination's acknowledged position, in the `meta` database.
POSITION_PREFIX = b"forward:"


def position_key(name: str) -> bytes:
    return POSITION_PREFIX + name.encode()


def decode_position(value: bytes | None) -> int:
    """The stored acknowledged position: 8 bytes big-endian (decimal text also read)."""
    if value is None:
        return 0
    if len(value) == 8:
        return int.from_bytes(value, "big")
    return int(value.decode("ascii"))


def encode_position(txn: int) -> bytes:
    return txn.to_bytes(8, "big")
