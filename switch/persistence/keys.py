"""How keys are laid out where their order matters; pure, so the request layer may use it
without loading LMDB."""

import hashlib
import struct
from datetime import date

import msgpack

from switch.identifiers import building_of

_EPOCH_DAY = date(1970, 1, 1).toordinal()


def txn_key(txn: int) -> bytes:
    """A journal txn as a key: 8 bytes big-endian, so keys sort as txns do."""
    return txn.to_bytes(8, "big")


def room_index_keys(school: str, account_id: str) -> tuple[bytes, bytes | None]:
    """The `school_rooms` key of a utility account, and its `building_rooms` key (None for
    an account whose id names no building)."""
    by_school = school.encode() + b"\0" + account_id.encode()
    building = building_of(account_id)
    if building is None:
        return by_school, None
    return by_school, school.encode() + b"\0" + building.encode() + b"\0" + account_id.encode()


# In `meta`: how many times the data dir was restored from a backup (`restore` counts it up),
# and up to which of those the blacklists' versions were moved past what tills saw since.
BLACKLIST_RESTORES = b"blacklist_restores"
BLACKLIST_RESTORES_HANDLED = b"blacklist_restores_handled"
# In `meta`: the retention clock (ledger.state.retention_now_ms), unix ms as ASCII digits.
RETENTION_CLOCK = b"retention_clock_ms"
# In `meta`: the greatest "received" time of a kept closed-account tap (never goes back).
CLOSED_TAPS_RECEIVED_LAST = b"closed_taps_received_last_ms"
# In `meta`: the time zone each school was last served in, + its code.
SCHOOL_TIME_ZONE_PREFIX = b"school_time_zone:"


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


def subsidy_grant_key(account_id: str, batch: str, request_id) -> bytes:
    """`subsidy_grants` key of a grant: a 16-byte hash of account, batch and id packed
    (unambiguous whatever a batch name holds; hashed, since the three may pack to more than
    the 511 bytes an LMDB key may have). Without the term, so a batch spent to nothing and
    sent again with another last day is found; without the credential, so a batch another
    admin imports again is found too."""
    packed = msgpack.packb([account_id, batch, request_id], use_bin_type=True)
    return hashlib.blake2b(packed, digest_size=16, person=b"subsidy-grant").digest()


# `subsidy_grants` value: the term's last day (days since 1970) and the amount granted.
SUBSIDY_GRANT = struct.Struct(">qq")


# `meta` key: the day after the latest term whose grants housekeeping has forgotten (8 bytes
# BE; schema 10 wrote the day below which it looked, never less); every grant of a term
# ending on it or later is kept.
GRANTS_FORGOTTEN_BELOW = b"subsidy_grants_forgotten_below"

# `meta` key: the journal's last txn when the data dir was upgraded to schema 11 (8 bytes BE;
# none in a data dir made at 11 or later). A grant paid twice at or before it was paid by an
# older switch (schema 8 kept no grants; schema 10 forgot them two days after their term): a
# notice for the auditor, not a discrepancy of this switch's books.
GRANTS_CHECKED_AFTER_TXN = b"subsidy_grants_checked_after_txn"
# In `meta` (8 bytes BE): the journal's last txn when a data dir came to schema 14, which keeps
# each card's lost periods (`card_lost_periods`): audit judges an offline record after it by
# the periods whose `found` came after it too (none before: no switch kept them), and holds
# only records after it to the checks 14 brought (before it, their findings are notices).
UPGRADED_TO_14_AFTER_TXN = b"card_lost_periods_kept_after_txn"


def forgotten_below(value: bytes | None) -> int:
    return 0 if value is None else int.from_bytes(value, "big")


def term_day(expires: str) -> int:
    """A term's last day (`YYYY-MM-DD`) as days since 1970; ValueError if it is no day."""
    return date.fromisoformat(expires).toordinal() - _EPOCH_DAY


def term_day_name(day: int) -> str:
    return date.fromordinal(day + _EPOCH_DAY).isoformat()


def subsidy_grant_expiry_key(day: int, grant_key: bytes) -> bytes:
    """`subsidy_grant_expiry` key: the term's last day first (8 bytes BE), so forgetting the
    grants of past terms is a range scan."""
    return day.to_bytes(8, "big") + grant_key


def kept_subsidy_grants(records) -> dict[bytes, tuple[int, int]]:
    """`subsidy_grants` key -> (last day, amount) each key keeps, from the `subsidy` journal
    records `records` in txn order: the grant of the latest term (the switch replaces a kept
    grant only by one of a later term; schema 8 could pay a key twice in any order of terms),
    the newest of equal ones. A record the switch never writes is passed over (audit says
    so)."""
    kept: dict[bytes, tuple[int, int]] = {}
    for record in records:
        try:
            key = subsidy_grant_key(record["account"], record["batch"], record["ref"])
            day = term_day(record["expires"])
            SUBSIDY_GRANT.pack(day, record["amount"])
            subsidy_grant_expiry_key(day, key)           # a day before 1970 does not fit
        except (KeyError, TypeError, ValueError, OverflowError, struct.error):
            continue
        if key not in kept or day >= kept[key][0]:
            kept[key] = (day, record["amount"])
    return kept
