"""The fixed-layout account record the core reads and writes in place.

One record is `ACCOUNT_RECORD_SIZE` bytes, little-endian, stored as the LMDB
value of the account. The compiled core (`_authorize.pyx`) overlays a packed C
struct on the same bytes; the reference model uses `struct` with these offsets.
Any change here is a schema change (bump `persistence.store.SCHEMA_VERSION`).
"""

import struct

# offset, struct format
BALANCE = (0, "<q")          # fen; may go below zero only through offline records and meters
HELD = (8, "<q")             # fen reserved by open holds; available = balance - held
SPENT_TODAY = (16, "<q")     # fen debited on SPENT_DAY, less reversals of that day
SPENT_DAY = (24, "<i")       # school-local day number (days since 1970-01-01 local)
STATUS = (28, "<B")          # STATUS_*
KIND = (29, "<B")            # KIND_*
UTILITY = (30, "<B")         # UTILITY_*
POWER_ON = (31, "<B")        # utility accounts: 1 while power is on
PIN_FAILURES = (32, "<B")    # wrong PINs in a row
PIN_LOCKED = (33, "<B")      # 1 once PIN_FAILURES reached the maximum
FREEZE_REASON = (34, "<B")   # bit set of FREEZE_OPERATOR, FREEZE_OVERDRAWN: frozen while any is set
QR_ENABLED = (35, "<B")      # 1 once `virtual_card` opened the QR secret
ID_FAILURES = (36, "<B")     # reset_pin with the wrong id_last6, in a row
ID_LOCKED = (37, "<B")       # 1 once ID_FAILURES reached the maximum: reset_pin refused
LIMIT_PER_TX = (40, "<q")    # fen, or -1: the school's default
LIMIT_DAILY = (48, "<q")     # fen, or -1
LIMIT_NO_PIN = (56, "<q")    # fen, or -1
SCHOOL = (64, "8s")          # ASCII school code, NUL padded
PIN_SALT = (72, "16s")
PIN_HASH = (88, "32s")       # HMAC-SHA256(verifier key, HMAC-SHA256(PIN_SALT, b"pin:" + pin))
ID_HASH = (120, "32s")       # HMAC-SHA256(verifier key, HMAC-SHA256(PIN_SALT, b"id:" + id_last6))
SUBSIDY = (152, "<q")        # fen in the subsidy purse (补助); spent before BALANCE, never refunded
LAST_TXN = (160, "<q")       # the account's newest journal txn (0: none), the head of its history
HISTORY_RECORDS = (168, "<q")  # how many journal records the account has (history marks)
# Records of schema 2 were 152 bytes; opening one pads them.

ACCOUNT_RECORD_SIZE = 176

STATUS_ACTIVE, STATUS_FROZEN, STATUS_CLOSED = 0, 1, 2
STATUS_NAMES = ("active", "frozen", "closed")
KIND_PERSON, KIND_UTILITY = 0, 1
KIND_NAMES = ("person", "utility")
UTILITY_NONE, UTILITY_BOTH, UTILITY_ELECTRIC, UTILITY_WATER = 0, 1, 2, 3
UTILITY_NAMES = ("", "both", "electric", "water")
FREEZE_NONE, FREEZE_OPERATOR, FREEZE_OVERDRAWN = 0, 1, 2  # bits: 3 is both

# Card standing as the core sees it (the card record keeps the same numbers).
CARD_ACTIVE, CARD_LOST, CARD_BLOCKED, CARD_NONE = 0, 1, 2, 3
CARD_STATE_NAMES = ("active", "lost", "blocked")

_fields = [BALANCE, HELD, SPENT_TODAY, SPENT_DAY, STATUS, KIND, UTILITY, POWER_ON,
           PIN_FAILURES, PIN_LOCKED, FREEZE_REASON, QR_ENABLED, ID_FAILURES, ID_LOCKED,
           LIMIT_PER_TX,
           LIMIT_DAILY, LIMIT_NO_PIN, SCHOOL, PIN_SALT, PIN_HASH, ID_HASH, SUBSIDY, LAST_TXN,
           HISTORY_RECORDS]
assert all(o + struct.calcsize(f) <= ACCOUNT_RECORD_SIZE for o, f in _fields)


def get(record, field):
    offset, fmt = field
    return struct.unpack_from(fmt, record, offset)[0]


def put(record, field, value):
    offset, fmt = field
    struct.pack_into(fmt, record, offset, value)


def new_account_record(school: str, kind: int, utility: int, salt: bytes,
                       pin_hash: bytes, id_hash: bytes) -> bytearray:
    record = bytearray(ACCOUNT_RECORD_SIZE)
    put(record, SCHOOL, school.encode("ascii"))
    put(record, KIND, kind)
    put(record, UTILITY, utility)
    put(record, LIMIT_PER_TX, -1)
    put(record, LIMIT_DAILY, -1)
    put(record, LIMIT_NO_PIN, -1)
    put(record, PIN_SALT, salt)
    put(record, PIN_HASH, pin_hash)
    put(record, ID_HASH, id_hash)
    return record


def set_history_head(record, txn: int, records: int | None = None) -> int:
    """Make `txn` the account's newest journal record, one more record than it had (or
    `records` in all): bookkeeping of the ledger's (where an account's history starts), neither
    standing nor money, so no decision of the core's. Returns the account's record count."""
    put(record, LAST_TXN, txn)
    count = get(record, HISTORY_RECORDS) + 1 if records is None else records
    put(record, HISTORY_RECORDS, count)
    return count


def school_of(record) -> str:
    return get(record, SCHOOL).rstrip(b"\0").decode("ascii")


# The double-tap guard's record of one account's last approved payment at one terminal
# (docs/PROTOCOL.md §4.6 rule 2a), its own small record keyed by account and terminal.
TAP_AMOUNT = (0, "<q")       # fen
TAP_AT = (8, "<q")           # unix ms of the payment
TAP_TXN = (16, "<q")         # its journal txn (a reversal of it forgets the record)
TAP_RECORD_SIZE = 24
assert all(o + struct.calcsize(f) <= TAP_RECORD_SIZE for o, f in (TAP_AMOUNT, TAP_AT, TAP_TXN))


# One account's payments in one meal period (docs/PROTOCOL.md §4.6 rule 2b) at the school's
# canteen tills, its own small record keyed by period and account.
MEAL_TAPS = (0, "<q")        # payments counted in the period
MEAL_FEN = (8, "<q")         # their total, fen
MEAL_RECORD_SIZE = 16
assert all(o + struct.calcsize(f) <= MEAL_RECORD_SIZE for o, f in (MEAL_TAPS, MEAL_FEN))
