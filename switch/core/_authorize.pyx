# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
"""Compiled authorization core: `reference.py`'s rules on a C struct laid over the record.

A packed struct mirroring `layout.py` is cast onto the bytearray's own buffer,
so a decision reads and writes fields without building Python objects; only
the PIN paths create objects (the HMAC needs them). Behaviour, exceptions
included, is that of `reference.py`; the property tests hold it to that.
"""

import sys

if sys.byteorder != "little":
    raise ImportError("switch.core._authorize overlays a little-endian record; "
                      "this host is big-endian")

import hmac
import struct

from cpython.bytearray cimport (PyByteArray_AS_STRING, PyByteArray_CheckExact,
                                PyByteArray_GET_SIZE)
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_CheckExact, PyBytes_GET_SIZE
from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.long cimport PyLong_AsLongLongAndOverflow
from libc.stdint cimport int32_t, int64_t, uint8_t
from libc.string cimport memcpy

from switch import limits as _limits
from switch.core import codes as _codes
from switch.core import layout as _layout

__all__ = [
    "check_amount", "authorize", "verify_pin", "pin_digest", "id_digest",
    "set_verifier_key", "key_verifiers",
    "set_pin", "reset_pin", "credit", "unspend", "complete_hold",
    "release_hold", "apply_offline", "apply_meter", "apply_restore",
    "freeze", "freeze_overdrawn", "unfreeze", "unlock", "close", "set_limits",
    "enable_virtual_card", "refund", "check_repeat_tap", "note_tap", "grant_subsidy",
    "return_to_subsidy", "expire_subsidy", "meal_check", "meal_count", "meal_uncount",
]

# Exact integer semantics: an int64 sum or difference that would wrap is
# reported, so the compiled code decides as Python's unbounded ints do.
cdef extern from *:
    """
    static inline int switch_core_add_overflow(long long a, long long b, long long *r) {
        return __builtin_add_overflow(a, b, r);
    }
    static inline int switch_core_sub_overflow(long long a, long long b, long long *r) {
        return __builtin_sub_overflow(a, b, r);
    }
    """
    bint add_overflow "switch_core_add_overflow"(long long a, long long b, long long *r) nogil
    bint sub_overflow "switch_core_sub_overflow"(long long a, long long b, long long *r) nogil
    # Wide enough for the sum of three int64s: the funds check is exact as in Python.
    ctypedef long long wide_int "__int128"


cdef packed struct AccountRecord:
    int64_t balance
    int64_t held
    int64_t spent_today
    int32_t spent_day
    uint8_t status
    uint8_t kind
    uint8_t utility
    uint8_t power_on
    uint8_t pin_failures
    uint8_t pin_locked
    uint8_t freeze_reason
    uint8_t qr_enabled
    uint8_t id_failures
    uint8_t id_locked
    uint8_t reserved[2]
    int64_t limit_per_tx
    int64_t limit_daily
    int64_t limit_no_pin
    char school[8]
    unsigned char pin_salt[16]
    unsigned char pin_hash[32]
    unsigned char id_hash[32]
    int64_t subsidy
    int64_t last_txn         # the ledger's (history's head); the core never reads it
    int64_t history_records  # the ledger's (its record count); the core never reads it


cdef packed struct MealRecord:
    int64_t taps
    int64_t fen


cdef packed struct TapRecord:
    int64_t amount
    int64_t at_ms
    int64_t txn


# Mirrors of codes.py, layout.py and limits.py, checked against them below.
cdef enum:
    OK = 0
    INSUFFICIENT_FUNDS = 1
    CARD_UNKNOWN = 2
    CARD_LOST = 3
    CARD_BLOCKED = 4
    ACCOUNT_FROZEN = 5
    ACCOUNT_CLOSED = 6
    PIN_LOCKED = 7
    PIN_REQUIRED = 8
    PIN_INVALID = 9
    LIMIT_PER_TX = 10
    LIMIT_DAILY = 11
    WRONG_SCHOOL = 16
    BAD_AMOUNT = 17
    BAD_REQUEST = 18
    NOT_EMPTY = 30
    IDENTITY_MISMATCH = 31
    REPEAT_TAP = 34
    MEAL_LIMIT = 35

    KIND_PERSON = 0
    STATUS_ACTIVE = 0
    STATUS_FROZEN = 1
    STATUS_CLOSED = 2
    FREEZE_NONE = 0
    FREEZE_OPERATOR = 1
    FREEZE_OVERDRAWN = 2
    CARD_ACTIVE = 0
    CARD_STATE_LOST = 1
    CARD_STATE_BLOCKED = 2
    CARD_NONE = 3

    ACCOUNT_RECORD_SIZE = 176
    TAP_RECORD_SIZE = 24
    MEAL_RECORD_SIZE = 16
    SALT_SIZE_BYTES = 16
    DIGEST_SIZE_BYTES = 32
    PIN_FAILURES_COUNTER_MAX = 255

# Bounds come from limits.py itself, read once into C variables.
cdef long long BALANCE_FEN_MAX = _limits.balance_fen_max
cdef long long PURSE_FILL_FEN_MAX = _limits.purse_fill_fen_max
cdef int PIN_FAILURES_MAX = _limits.pin_failures_max


cdef inline Py_ssize_t _offset(AccountRecord* record, void* field):
    return <char*>field - <char*>record


cdef _check_mirrors():
    """Refuse to load when the struct or a constant disagrees with the Python modules."""
    cdef AccountRecord probe
    cdef AccountRecord* r = &probe
    offsets = {
        "BALANCE": _offset(r, &r.balance), "HELD": _offset(r, &r.held),
        "SPENT_TODAY": _offset(r, &r.spent_today), "SPENT_DAY": _offset(r, &r.spent_day),
        "STATUS": _offset(r, &r.status), "KIND": _offset(r, &r.kind),
        "UTILITY": _offset(r, &r.utility), "POWER_ON": _offset(r, &r.power_on),
        "PIN_FAILURES": _offset(r, &r.pin_failures), "PIN_LOCKED": _offset(r, &r.pin_locked),
        "FREEZE_REASON": _offset(r, &r.freeze_reason), "QR_ENABLED": _offset(r, &r.qr_enabled),
        "ID_FAILURES": _offset(r, &r.id_failures), "ID_LOCKED": _offset(r, &r.id_locked),
        "LIMIT_PER_TX": _offset(r, &r.limit_per_tx), "LIMIT_DAILY": _offset(r, &r.limit_daily),
        "LIMIT_NO_PIN": _offset(r, &r.limit_no_pin), "SCHOOL": _offset(r, &r.school[0]),
        "PIN_SALT": _offset(r, &r.pin_salt[0]), "PIN_HASH": _offset(r, &r.pin_hash[0]),
        "ID_HASH": _offset(r, &r.id_hash[0]), "SUBSIDY": _offset(r, &r.subsidy),
        "LAST_TXN": _offset(r, &r.last_txn),
        "HISTORY_RECORDS": _offset(r, &r.history_records),
    }
    for name, offset in offsets.items():
        if getattr(_layout, name)[0] != offset:
            raise ImportError(f"AccountRecord.{name} at {offset}, layout.py says "
                              f"{getattr(_layout, name)[0]}")
    if sizeof(AccountRecord) != _layout.ACCOUNT_RECORD_SIZE or \
            ACCOUNT_RECORD_SIZE != _layout.ACCOUNT_RECORD_SIZE:
        raise ImportError("AccountRecord size differs from layout.ACCOUNT_RECORD_SIZE")
    mirrored = {
        (_codes, "OK"): OK, (_codes, "INSUFFICIENT_FUNDS"): INSUFFICIENT_FUNDS,
        (_codes, "CARD_UNKNOWN"): CARD_UNKNOWN, (_codes, "CARD_LOST"): CARD_LOST,
        (_codes, "CARD_BLOCKED"): CARD_BLOCKED, (_codes, "ACCOUNT_FROZEN"): ACCOUNT_FROZEN,
        (_codes, "ACCOUNT_CLOSED"): ACCOUNT_CLOSED, (_codes, "PIN_LOCKED"): PIN_LOCKED,
        (_codes, "PIN_REQUIRED"): PIN_REQUIRED, (_codes, "PIN_INVALID"): PIN_INVALID,
        (_codes, "LIMIT_PER_TX"): LIMIT_PER_TX, (_codes, "LIMIT_DAILY"): LIMIT_DAILY,
        (_codes, "WRONG_SCHOOL"): WRONG_SCHOOL, (_codes, "BAD_AMOUNT"): BAD_AMOUNT,
        (_codes, "BAD_REQUEST"): BAD_REQUEST, (_layout, "KIND_PERSON"): KIND_PERSON, (_codes, "NOT_EMPTY"): NOT_EMPTY,
        (_codes, "IDENTITY_MISMATCH"): IDENTITY_MISMATCH, (_codes, "REPEAT_TAP"): REPEAT_TAP,
        (_codes, "MEAL_LIMIT"): MEAL_LIMIT, (_layout, "MEAL_RECORD_SIZE"): MEAL_RECORD_SIZE,
        (_layout, "TAP_RECORD_SIZE"): TAP_RECORD_SIZE,
        (_layout, "STATUS_ACTIVE"): STATUS_ACTIVE,
        (_layout, "STATUS_FROZEN"): STATUS_FROZEN, (_layout, "STATUS_CLOSED"): STATUS_CLOSED,
        (_layout, "FREEZE_NONE"): FREEZE_NONE, (_layout, "FREEZE_OPERATOR"): FREEZE_OPERATOR,
        (_layout, "FREEZE_OVERDRAWN"): FREEZE_OVERDRAWN,
        (_layout, "CARD_ACTIVE"): CARD_ACTIVE, (_layout, "CARD_LOST"): CARD_STATE_LOST,
        (_layout, "CARD_BLOCKED"): CARD_STATE_BLOCKED, (_layout, "CARD_NONE"): CARD_NONE,
    }
    for (module, name), value in mirrored.items():
        if getattr(module, name) != value:
            raise ImportError(f"{module.__name__}.{name} is {getattr(module, name)}, "
                              f"_authorize.pyx has {value}")
    sizes = {
        "BALANCE": sizeof(r.balance), "HELD": sizeof(r.held),
        "SPENT_TODAY": sizeof(r.spent_today), "SPENT_DAY": sizeof(r.spent_day),
        "STATUS": sizeof(r.status), "KIND": sizeof(r.kind), "UTILITY": sizeof(r.utility),
        "POWER_ON": sizeof(r.power_on), "PIN_FAILURES": sizeof(r.pin_failures),
        "PIN_LOCKED": sizeof(r.pin_locked), "FREEZE_REASON": sizeof(r.freeze_reason),
        "QR_ENABLED": sizeof(r.qr_enabled), "ID_FAILURES": sizeof(r.id_failures),
        "ID_LOCKED": sizeof(r.id_locked), "LIMIT_PER_TX": sizeof(r.limit_per_tx),
        "LIMIT_DAILY": sizeof(r.limit_daily), "LIMIT_NO_PIN": sizeof(r.limit_no_pin),
        "SCHOOL": sizeof(r.school), "PIN_SALT": SALT_SIZE_BYTES, "PIN_HASH": DIGEST_SIZE_BYTES,
        "ID_HASH": DIGEST_SIZE_BYTES, "SUBSIDY": sizeof(r.subsidy),
        "LAST_TXN": sizeof(r.last_txn), "HISTORY_RECORDS": sizeof(r.history_records),
    }
    for name, size in sizes.items():
        if struct.calcsize(getattr(_layout, name)[1]) != size:
            raise ImportError(f"AccountRecord.{name} is {size} bytes, layout.py disagrees")
    cdef TapRecord tap_probe
    cdef TapRecord* t = &tap_probe
    tap_offsets = {"TAP_AMOUNT": <char*>&t.amount - <char*>t, "TAP_AT": <char*>&t.at_ms - <char*>t,
                   "TAP_TXN": <char*>&t.txn - <char*>t}
    for name, offset in tap_offsets.items():
        if getattr(_layout, name)[0] != offset or struct.calcsize(getattr(_layout, name)[1]) != 8:
            raise ImportError(f"TapRecord.{name} disagrees with layout.py")
    cdef MealRecord meal_probe
    if (<char*>&meal_probe.taps - <char*>&meal_probe, <char*>&meal_probe.fen - <char*>&meal_probe,
            sizeof(MealRecord)) != (_layout.MEAL_TAPS[0], _layout.MEAL_FEN[0],
                                    _layout.MEAL_RECORD_SIZE):
        raise ImportError("MealRecord disagrees with layout.py")
    if sizeof(TapRecord) != _layout.TAP_RECORD_SIZE:
        raise ImportError("TapRecord size differs from layout.TAP_RECORD_SIZE")
    if sizeof(r.pin_salt) != SALT_SIZE_BYTES or sizeof(r.pin_hash) != DIGEST_SIZE_BYTES \
            or sizeof(r.id_hash) != DIGEST_SIZE_BYTES:
        raise ImportError("AccountRecord hash fields have the wrong size")


_check_mirrors()

_hmac_digest = hmac.digest
_compare_digest = hmac.compare_digest


cdef inline AccountRecord* _record(object account) except NULL:
    """The struct over `account`'s buffer. Fetch again after any call into Python code."""
    assert PyByteArray_CheckExact(account), type(account)
    assert PyByteArray_GET_SIZE(account) == ACCOUNT_RECORD_SIZE, len(account)
    return <AccountRecord*>PyByteArray_AS_STRING(account)


cdef inline int _put_balance(AccountRecord* record, long long balance) except -1:
    assert -BALANCE_FEN_MAX <= balance <= BALANCE_FEN_MAX, balance
    record.balance = balance
    return 0


cdef inline int _put_held(AccountRecord* record, long long held) except -1:
    assert 0 <= held <= BALANCE_FEN_MAX, held
    record.held = held
    return 0


cdef inline int _count_spending(AccountRecord* record, long long amount, int day) except -1:
    """Add `amount` to the spending of `day`, starting the day afresh if it is a new one."""
    cdef long long spent
    cdef bint wrapped
    if day > record.spent_day:  # never back: see reference._count_spending
        record.spent_day = day
        record.spent_today = 0
    wrapped = add_overflow(record.spent_today, amount, &spent)
    assert not wrapped, (record.spent_today, amount)
    assert 0 <= spent <= BALANCE_FEN_MAX, spent
    record.spent_today = spent
    return 0


cdef inline void _set_freeze_reason(AccountRecord* record, uint8_t reason) noexcept:
    """Keep status in step with the freeze bits: frozen while any is set (never when closed)."""
    record.freeze_reason = reason
    record.status = STATUS_FROZEN if reason != FREEZE_NONE else STATUS_ACTIVE


cdef inline long long _effective(long long account_limit, long long school_default) noexcept:
    """An account limit of -1 means "the school's default"."""
    return account_limit if account_limit >= 0 else school_default


cdef inline bytes _field_bytes(unsigned char* field, Py_ssize_t size):
    return PyBytes_FromStringAndSize(<char*>field, size)


# Keys every verifier, so a stolen data dir alone cannot brute-force a PIN: set once at
# start from the master key file (switch/config/masterkey.py). Unset, no verifier is made.
_verifier_key = None


def set_verifier_key(key):
    """Key every PIN and ID verifier with `key` (32 bytes) from now on."""
    global _verifier_key
    assert type(key) is bytes and len(key) == _limits.master_key_size_bytes, "a verifier key"
    _verifier_key = key


def _keyed(digest):
    """HMAC-SHA256(verifier key, digest): a salted digest made a verifier."""
    if _verifier_key is None:
        raise RuntimeError("no verifier key set (set_verifier_key)")
    return _hmac_digest(_verifier_key, digest, "sha256")


def pin_digest(salt, pin):
    """_keyed(HMAC-SHA256(salt, b"pin:" + pin)): what PIN_HASH holds."""
    return _keyed(_hmac_digest(salt, b"pin:" + pin, "sha256"))


def id_digest(salt, id_last6):
    """_keyed(HMAC-SHA256(salt, b"id:" + id_last6)): what ID_HASH holds."""
    return _keyed(_hmac_digest(salt, b"id:" + id_last6, "sha256"))


cdef int _check_pin(object account, object pin) except -1:
    """Compare `pin` to the record and count a wrong one; the PIN must not be locked.

    Returns OK (count reset), PIN_INVALID, or PIN_LOCKED when this wrong PIN was
    the last one allowed.
    """
    cdef AccountRecord* record = _record(account)
    salt = _field_bytes(record.pin_salt, SALT_SIZE_BYTES)
    stored = _field_bytes(record.pin_hash, DIGEST_SIZE_BYTES)
    matches = _compare_digest(pin_digest(salt, pin), stored)
    record = _record(account)
    if matches:
        record.pin_failures = 0
        return OK
    # Saturate rather than wrap the one-byte counter; the lock triggers long before.
    cdef int failures = record.pin_failures + 1
    if failures > PIN_FAILURES_COUNTER_MAX:
        failures = PIN_FAILURES_COUNTER_MAX
    record.pin_failures = <uint8_t>failures
    if failures >= PIN_FAILURES_MAX:
        record.pin_locked = 1
        return PIN_LOCKED
    return PIN_INVALID


cdef inline int _check_amount(object amount, long long max_amount, long long* value) except -1:
    """OK or BAD_AMOUNT; on OK `value` holds the amount as a C integer."""
    cdef int overflow = 0
    cdef long long converted = PyLong_AsLongLongAndOverflow(amount, &overflow)
    # An int beyond int64 is far outside 1..max_amount (max_amount is an int64).
    if overflow != 0 or converted < 1 or converted > max_amount:
        return BAD_AMOUNT
    value[0] = converted
    return OK


def check_amount(amount, long long max_amount):
    """OK when 1 <= amount <= max_amount, else BAD_AMOUNT (amount is an int, not a bool)."""
    cdef long long value
    return _check_amount(amount, max_amount, &value)


def authorize(account, int card_state, same_school, amount, pin, bint pin_checked, int day,
              long long school_per_tx, long long school_daily, long long school_no_pin,
              long long max_amount, bint hold):
    """Decide a debit, qr_debit or hold (docs/PROTOCOL.md §4.6, rules 1-7) and apply it on OK.

    `account` may be None when `card_state` is CARD_NONE. `pin_checked` is False
    for QR debits (no PIN step). On OK a hold reserves `amount` (HELD); a debit
    takes it from BALANCE and counts it to the spending of `day`. A decline at
    the PIN step may still have counted a wrong PIN.
    """
    cdef long long value
    cdef long long spent
    cdef long long total
    cdef long long available
    cdef long long held
    cdef int code
    cdef bint wrapped
    cdef AccountRecord* record
    # 1. amount
    if _check_amount(amount, max_amount, &value) != OK:
        return BAD_AMOUNT
    # 2. card
    if card_state == CARD_NONE:
        return CARD_UNKNOWN
    if card_state == CARD_STATE_LOST:
        return CARD_LOST
    if card_state == CARD_STATE_BLOCKED:
        return CARD_BLOCKED
    assert card_state == CARD_ACTIVE, card_state
    # 3. school
    if not same_school:
        return WRONG_SCHOOL
    record = _record(account)
    # 4. account standing
    if record.status == STATUS_CLOSED:
        return ACCOUNT_CLOSED
    if record.status == STATUS_FROZEN:
        return ACCOUNT_FROZEN
    if record.pin_locked == 1:
        return PIN_LOCKED
    # 5. limits
    if value > _effective(record.limit_per_tx, school_per_tx):
        return LIMIT_PER_TX
    spent = record.spent_today if record.spent_day >= day else 0
    if add_overflow(spent, value, &total) or total > _effective(record.limit_daily, school_daily):
        return LIMIT_DAILY
    # 6. PIN (card path only)
    if pin_checked:
        if pin is None:
            if value > _effective(record.limit_no_pin, school_no_pin):
                return PIN_REQUIRED
        else:
            code = _check_pin(account, pin)
            if code != OK:
                return code
            record = _record(account)
    # 7. funds
    held = record.held
    assert held >= 0, held
    if <wide_int>record.balance + <wide_int>record.subsidy - <wide_int>held < <wide_int>value:
        return INSUFFICIENT_FUNDS
    if hold:
        wrapped = add_overflow(held, value, &total)
        assert not wrapped, (held, value)
        _put_held(record, total)
    else:
        _spend(record, value)
        _count_spending(record, value, day)
    return OK


def verify_pin(account, pin):
    """PIN_LOCKED while locked; a wrong PIN counts (the 5th locks: PIN_LOCKED) else PIN_INVALID."""
    cdef AccountRecord* record = _record(account)
    if record.pin_locked == 1:
        return PIN_LOCKED
    return _check_pin(account, pin)


def set_pin(account, pin):
    """Store a new PIN and clear the run of wrong ones; the lock is left as it is."""
    cdef AccountRecord* record = _record(account)
    digest = pin_digest(_field_bytes(record.pin_salt, SALT_SIZE_BYTES), pin)
    assert PyBytes_CheckExact(digest) and PyBytes_GET_SIZE(digest) == DIGEST_SIZE_BYTES
    record = _record(account)
    memcpy(record.pin_hash, PyBytes_AS_STRING(digest), DIGEST_SIZE_BYTES)
    record.pin_failures = 0


def reset_pin(account, id_last6):
    """With the right `id_last6` the PIN becomes `id_last6` and the PIN lock is cleared.
    Wrong ones count: the 5th in a row locks reset_pin itself (PIN_LOCKED, then PIN_LOCKED
    whatever the digits) until `unlock`, so the ID digits cannot be found by trying."""
    cdef AccountRecord* record = _record(account)
    if record.id_locked == 1:
        return PIN_LOCKED
    salt = _field_bytes(record.pin_salt, SALT_SIZE_BYTES)
    if not _compare_digest(id_digest(salt, id_last6),
                           _field_bytes(record.id_hash, DIGEST_SIZE_BYTES)):
        record = _record(account)
        record.id_failures += 1
        if record.id_failures >= PIN_FAILURES_MAX:
            record.id_locked = 1
            return PIN_LOCKED
        return IDENTITY_MISMATCH
    digest = pin_digest(salt, id_last6)
    assert PyBytes_CheckExact(digest) and PyBytes_GET_SIZE(digest) == DIGEST_SIZE_BYTES
    record = _record(account)
    memcpy(record.pin_hash, PyBytes_AS_STRING(digest), DIGEST_SIZE_BYTES)
    record.pin_failures = 0
    record.pin_locked = 0
    record.id_failures = 0
    return OK


def credit(account, amount):
    """Add `amount` to BALANCE; BAD_AMOUNT when amount < 1, ACCOUNT_CLOSED when closed,
    BAD_AMOUNT when the balance would pass its maximum. A credit that leaves the balance at
    0 or above ends an overdrawn freeze (the overdraw is paid back); an operator's stays."""
    cdef AccountRecord* record = _record(account)
    cdef int overflow = 0
    cdef long long value = PyLong_AsLongLongAndOverflow(amount, &overflow)
    cdef long long balance
    if overflow < 0 or (overflow == 0 and value < 1):
        return BAD_AMOUNT
    if record.status == STATUS_CLOSED:
        return ACCOUNT_CLOSED
    # A positive overflow, or a wrapping sum, is above PURSE_FILL_FEN_MAX (< 2**63).
    if overflow > 0 or add_overflow(record.balance, value, &balance) \
            or balance > PURSE_FILL_FEN_MAX:
        return BAD_AMOUNT
    _put_balance(record, balance)
    if balance >= 0 and record.freeze_reason & FREEZE_OVERDRAWN:
        _set_freeze_reason(record, record.freeze_reason & ~FREEZE_OVERDRAWN)
    return OK


def unspend(account, long long amount, int day):
    """Reverse a debit made on local day `day`: money back, and off that day's spending if current.
    ACCOUNT_CLOSED, changing nothing, when closed: a closed account takes no money."""
    cdef AccountRecord* record = _record(account)
    cdef long long balance
    cdef long long spent
    cdef bint wrapped
    assert amount >= 0, amount
    if record.status == STATUS_CLOSED:
        return ACCOUNT_CLOSED
    wrapped = add_overflow(record.balance, amount, &balance)
    assert not wrapped, (record.balance, amount)
    _put_balance(record, balance)
    if record.spent_day == day:
        # A wrap can only come from below: the true difference is negative.
        if sub_overflow(record.spent_today, amount, &spent) or spent < 0:
            spent = 0
        record.spent_today = spent
    return OK


cdef inline int _take(AccountRecord* record, long long amount) except -1:
    """Take `amount` (>= 0) off the balance unconditionally; wrapping int64 is a bug."""
    cdef long long balance
    cdef bint wrapped
    assert amount >= 0, amount
    wrapped = sub_overflow(record.balance, amount, &balance)  # not inside assert: -O drops it
    assert not wrapped, (record.balance, amount)
    _put_balance(record, balance)
    return 0


cdef inline int _put_subsidy(AccountRecord* record, long long subsidy) except -1:
    assert 0 <= subsidy <= BALANCE_FEN_MAX, subsidy
    record.subsidy = subsidy
    return 0


cdef inline int _spend(AccountRecord* record, long long amount) except -1:
    """Pay `amount` (>= 0) from the subsidy purse first, the rest from the balance."""
    cdef long long from_subsidy
    assert amount >= 0, amount
    assert record.subsidy >= 0, record.subsidy
    from_subsidy = record.subsidy if record.subsidy < amount else amount
    record.subsidy -= from_subsidy
    _take(record, amount - from_subsidy)
    return 0


cdef inline int _release(AccountRecord* record, long long hold_amount) except -1:
    """Release `hold_amount` (>= 0) of the held total."""
    cdef long long held
    cdef bint wrapped
    assert hold_amount >= 0, hold_amount
    wrapped = sub_overflow(record.held, hold_amount, &held)
    assert not wrapped, (record.held, hold_amount)
    _put_held(record, held)
    return 0


def complete_hold(account, long long hold_amount, long long amount, int day):
    """Release a hold of `hold_amount` and take `amount` (<= hold_amount), counted to `day`."""
    cdef AccountRecord* record = _record(account)
    assert 0 <= amount <= hold_amount, (amount, hold_amount)
    _release(record, hold_amount)
    _spend(record, amount)
    _count_spending(record, amount, day)


def release_hold(account, long long hold_amount):
    """Release a hold of `hold_amount` without taking anything."""
    _release(_record(account), hold_amount)


def apply_offline(account, long long amount, int day, int today):
    """Apply an offline tap of local day `day` on the switch's local day `today`: taken
    whatever the balance or standing, except ACCOUNT_CLOSED (nothing applied); counted to
    `today`'s spending only when tapped today (see reference.apply_offline)."""
    cdef AccountRecord* record = _record(account)
    assert amount >= 0, amount
    if record.status == STATUS_CLOSED:
        return ACCOUNT_CLOSED
    _spend(record, amount)
    if day == today and day >= record.spent_day:
        _count_spending(record, amount, day)
    return OK


def apply_meter(account, long long amount):
    """Take a meter deduction: (code, cut) with cut True when it cut the power (balance at
    or below 0 while on). (ACCOUNT_CLOSED, False), changing nothing, when closed."""
    cdef AccountRecord* record = _record(account)
    assert amount >= 0, amount
    if record.status == STATUS_CLOSED:
        return ACCOUNT_CLOSED, False
    _take(record, amount)
    if record.power_on == 1 and record.balance <= 0:
        record.power_on = 0
        return OK, True
    return OK, False


def apply_restore(account):
    """After a credit: True when it turned the power back on (balance above 0 while off)."""
    cdef AccountRecord* record = _record(account)
    if record.status == STATUS_CLOSED:
        return False
    if record.power_on == 0 and record.balance > 0:
        record.power_on = 1
        return True
    return False


# --- Standing: see reference.py. A change is made only on OK, and an OK that was
# already so leaves the bytes as they were.

def freeze(account):
    """The card office's freeze: ACCOUNT_CLOSED when closed; sets the operator's bit
    (an overdrawn freeze stays beside it); already frozen by the operator stays as it is."""
    cdef AccountRecord* record = _record(account)
    if record.status == STATUS_CLOSED:
        return ACCOUNT_CLOSED
    if not (record.freeze_reason & FREEZE_OPERATOR and record.status == STATUS_FROZEN):
        _set_freeze_reason(record, record.freeze_reason | FREEZE_OPERATOR)
    return OK


def freeze_overdrawn(account):
    """After an offline tap or a `complete`: freeze a balance below zero as overdrawn, beside
    an operator's freeze if there is one; never a closed account. True when this froze it."""
    cdef AccountRecord* record = _record(account)
    # The balance alone, not balance + subsidy - held: why in reference.py.
    if (record.status != STATUS_CLOSED and record.balance < 0
            and not record.freeze_reason & FREEZE_OVERDRAWN):
        _set_freeze_reason(record, record.freeze_reason | FREEZE_OVERDRAWN)
        return True
    return False


def end_overdraw(account):
    """A balance back at 0 or above (a reversal gave money back) ends an overdrawn freeze, as
    a credit's does; an operator's stays. True when this ended it."""
    cdef AccountRecord* record = _record(account)
    if record.balance >= 0 and record.freeze_reason & FREEZE_OVERDRAWN:
        _set_freeze_reason(record, record.freeze_reason & ~FREEZE_OVERDRAWN)
        return True
    return False


def unfreeze(account):
    """ACCOUNT_CLOSED when closed. A frozen account loses the operator's freeze if it has
    one, else its overdrawn freeze (below zero or not); it is active once neither is left."""
    cdef AccountRecord* record = _record(account)
    if record.status == STATUS_CLOSED:
        return ACCOUNT_CLOSED
    if record.status == STATUS_FROZEN:
        if record.freeze_reason & FREEZE_OPERATOR:
            _set_freeze_reason(record, record.freeze_reason & ~FREEZE_OPERATOR)
        else:
            _set_freeze_reason(record, FREEZE_NONE)
    return OK


def unlock(account):
    """Clear the PIN lock, the reset_pin lock, and the runs of wrong PINs and IDs;
    ACCOUNT_CLOSED when closed."""
    cdef AccountRecord* record = _record(account)
    if record.status == STATUS_CLOSED:
        return ACCOUNT_CLOSED
    record.pin_locked = 0
    record.pin_failures = 0
    record.id_locked = 0
    record.id_failures = 0
    return OK


def close(account):
    """Close for good, the power off; NOT_EMPTY while the balance is not 0 (below zero too)
    or money is held."""
    cdef AccountRecord* record = _record(account)
    if record.status == STATUS_CLOSED:
        return OK
    if record.balance != 0 or record.held != 0:
        return NOT_EMPTY
    record.status = STATUS_CLOSED
    # A closed room holds no money and nothing restores it: its power goes off for good.
    record.power_on = 0
    return OK


cdef inline int _wanted_limit(object value, long long account_limit, long long school_default,
                              long long maximum, long long* wanted) except -1:
    """OK with the limit that would apply in `wanted`, or BAD_REQUEST for a given value
    below 0 or above `maximum` (an int beyond int64 is one of those)."""
    cdef int overflow = 0
    cdef long long converted
    if value is None:
        wanted[0] = _effective(account_limit, school_default)
        return OK
    assert type(value) is int, type(value)
    converted = PyLong_AsLongLongAndOverflow(value, &overflow)
    if overflow != 0 or converted < 0 or converted > maximum:
        return BAD_REQUEST
    wanted[0] = converted
    return OK


def set_limits(account, per_tx, daily, no_pin, long long school_per_tx,
               long long school_daily, long long school_no_pin, long long per_tx_max,
               long long daily_max, long long no_pin_max):
    """Give the account its own limits (docs/PROTOCOL.md §4.7); None leaves one as it is.

    BAD_REQUEST, changing nothing, when a given limit is below 0 or above its
    maximum, or when the limits that would apply break no_pin <= per_tx <= daily.
    """
    cdef AccountRecord* record = _record(account)
    cdef long long wanted_per_tx, wanted_daily, wanted_no_pin
    if (_wanted_limit(per_tx, record.limit_per_tx, school_per_tx, per_tx_max,
                      &wanted_per_tx) != OK
            or _wanted_limit(daily, record.limit_daily, school_daily, daily_max,
                             &wanted_daily) != OK
            or _wanted_limit(no_pin, record.limit_no_pin, school_no_pin, no_pin_max,
                             &wanted_no_pin) != OK):
        return BAD_REQUEST
    if not wanted_no_pin <= wanted_per_tx <= wanted_daily:
        return BAD_REQUEST
    if per_tx is not None:
        record.limit_per_tx = wanted_per_tx
    if daily is not None:
        record.limit_daily = wanted_daily
    if no_pin is not None:
        record.limit_no_pin = wanted_no_pin
    return OK


def enable_virtual_card(account):
    """Open the virtual card (QR payments); ACCOUNT_CLOSED when closed."""
    cdef AccountRecord* record = _record(account)
    if record.status == STATUS_CLOSED:
        return ACCOUNT_CLOSED
    record.qr_enabled = 1
    return OK


def key_verifiers(account):
    """Key the record's PIN and ID verifiers in place (see reference.key_verifiers)."""
    cdef AccountRecord* record = _record(account)
    pin_hash = _keyed(_field_bytes(record.pin_hash, DIGEST_SIZE_BYTES))
    id_hash = _keyed(_field_bytes(record.id_hash, DIGEST_SIZE_BYTES))
    assert PyBytes_GET_SIZE(pin_hash) == DIGEST_SIZE_BYTES == PyBytes_GET_SIZE(id_hash)
    record = _record(account)
    memcpy(record.pin_hash, PyBytes_AS_STRING(pin_hash), DIGEST_SIZE_BYTES)
    memcpy(record.id_hash, PyBytes_AS_STRING(id_hash), DIGEST_SIZE_BYTES)


def refund(account):
    """Pay the whole balance out and close, the power off (离校退款): ACCOUNT_CLOSED when
    closed, NOT_EMPTY while money is held, INSUFFICIENT_FUNDS below zero (the debt is paid
    back first)."""
    cdef AccountRecord* record = _record(account)
    if record.status == STATUS_CLOSED:
        return ACCOUNT_CLOSED
    if record.held != 0:
        return NOT_EMPTY
    if record.balance < 0:
        return INSUFFICIENT_FUNDS
    record.balance = 0
    record.status = STATUS_CLOSED
    record.power_on = 0   # as close: a closed room's power stays off
    return OK


# ---------------------------------------------------------------- the double-tap guard
cdef inline TapRecord* _tap(object tap) except NULL:
    assert PyByteArray_CheckExact(tap), type(tap)
    assert PyByteArray_GET_SIZE(tap) == TAP_RECORD_SIZE, len(tap)
    return <TapRecord*>PyByteArray_AS_STRING(tap)


def check_repeat_tap(tap, amount, now_ms, window_ms, confirm):
    """REPEAT_TAP for a repeat of the last approved payment inside the window, else OK."""
    assert type(amount) is int and type(now_ms) is int and type(window_ms) is int
    if window_ms <= 0 or confirm or tap is None:
        return OK
    cdef TapRecord* record = _tap(tap)
    cdef long long elapsed
    if amount != record.amount:
        return OK
    if sub_overflow(now_ms, record.at_ms, &elapsed):
        return OK   # further apart than any window
    return REPEAT_TAP if 0 <= elapsed < window_ms else OK


def note_tap(tap, long long amount, long long now_ms, long long txn):
    """Make `tap` the record of an approved payment of `amount` at `now_ms`, journal `txn`."""
    cdef TapRecord* record = _tap(tap)
    record.amount = amount
    record.at_ms = now_ms
    record.txn = txn


# ---------------------------------------------------------------- the subsidy purse (补助)
def grant_subsidy(account, amount):
    """Credit `amount` to the subsidy purse (see reference.grant_subsidy)."""
    cdef AccountRecord* record = _record(account)
    cdef int overflow = 0
    cdef long long value
    cdef long long subsidy
    assert type(amount) is int, type(amount)
    if record.kind != KIND_PERSON:
        return BAD_REQUEST
    if record.status == STATUS_CLOSED:
        return ACCOUNT_CLOSED
    value = PyLong_AsLongLongAndOverflow(amount, &overflow)
    if overflow != 0 or value < 1 or add_overflow(record.subsidy, value, &subsidy) \
            or subsidy > PURSE_FILL_FEN_MAX:
        return BAD_AMOUNT
    record.subsidy = subsidy
    return OK


def return_to_subsidy(account, long long part):
    """Move the `part` of a reversed payment the subsidy purse had paid back into it."""
    cdef AccountRecord* record = _record(account)
    cdef long long subsidy
    cdef bint wrapped
    _take(record, part)
    wrapped = add_overflow(record.subsidy, part, &subsidy)
    assert not wrapped, (record.subsidy, part)
    _put_subsidy(record, subsidy)


def expire_subsidy(account, long long amount):
    """Clear `amount` (0 .. the purse) of the subsidy purse."""
    cdef AccountRecord* record = _record(account)
    assert 0 <= amount <= record.subsidy, amount
    record.subsidy -= amount


# ---------------------------------------------------------------- meal periods (餐次)
cdef inline MealRecord* _meal(object meal) except NULL:
    assert PyByteArray_CheckExact(meal), type(meal)
    assert PyByteArray_GET_SIZE(meal) == MEAL_RECORD_SIZE, len(meal)
    return <MealRecord*>PyByteArray_AS_STRING(meal)


def meal_check(meal, long long amount, long long taps_max, long long fen_max):
    """MEAL_LIMIT when one more payment would pass a cap of the period (see reference)."""
    cdef long long taps = 0
    cdef long long fen = 0
    cdef MealRecord* record
    if meal is not None:
        record = _meal(meal)
        taps, fen = record.taps, record.fen
    # Exact as Python: the sums are taken wide.
    if <wide_int>taps + 1 > <wide_int>taps_max or <wide_int>fen + amount > <wide_int>fen_max:
        return MEAL_LIMIT
    return OK


def meal_count(meal, long long amount, long long taps_max, long long fen_max):
    """Count a payment in the period, always; True when a cap is now passed."""
    cdef MealRecord* record = _meal(meal)
    cdef long long taps
    cdef long long fen
    assert amount >= 0, amount
    if add_overflow(record.taps, 1, &taps) or add_overflow(record.fen, amount, &fen):
        raise AssertionError((record.taps, record.fen, amount))
    assert 0 <= taps <= BALANCE_FEN_MAX and 0 <= fen <= BALANCE_FEN_MAX, (taps, fen)
    record.taps = taps
    record.fen = fen
    return taps > taps_max or fen > fen_max


def meal_uncount(meal, long long amount):
    """A reversal gives back its tap and its fen (never below zero)."""
    cdef MealRecord* record = _meal(meal)
    cdef long long fen
    assert amount >= 0, amount
    record.taps = record.taps - 1 if record.taps > 0 else 0
    if sub_overflow(record.fen, amount, &fen) or fen < 0:
        fen = 0
    record.fen = fen
