"""How keys are laid out where their order matters; pure, so the request layer may use it
without loading LMDB."""

from datetime import date

import msgpack

_EPOCH_DAY = date(1970, 1, 1).toordinal()


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


def subsidy_grant_key(account_id: str, batch: str, expires: str, request_id) -> bytes:
    """`subsidy_grants` key of a grant: its term's last day (days since 1970, 8 bytes BE, so
    forgetting past terms is a range scan), then account, batch and id packed (unambiguous
    whatever a batch name holds). ValueError for an `expires` that is not a day. Keyed
    without the credential: a batch another admin imports again is the same grant."""
    day = date.fromisoformat(expires).toordinal() - _EPOCH_DAY
    return day.to_bytes(8, "big") + msgpack.packb([account_id, batch, request_id],
                                                  use_bin_type=True)
