"""The authorization core, rule by rule, against both the compiled core and the reference model."""

import hmac
import pathlib

import pytest

import switch.core
import switch.core._authorize
import switch.core.reference
from switch import limits
from switch.core import codes, layout
from tests.core.conftest import verifier
from tests.source_calls import modules_outside_core_calling

IMPLEMENTATIONS = [switch.core._authorize, switch.core.reference]

SALT = bytes(range(16))
PIN = b"123456"
WRONG_PIN = b"000000"
ID_LAST6 = b"654321"
DAY = 20_000
NO_PIN = limits.default_no_pin_fen
PER_TX = limits.default_per_tx_fen
DAILY = limits.default_daily_fen
MAX_AMOUNT = limits.max_amount_fen


@pytest.fixture(params=IMPLEMENTATIONS, ids=["compiled", "reference"])
def core(request):
    return request.param


def make_account(balance=0, *, held=0, status=layout.STATUS_ACTIVE, kind=layout.KIND_PERSON,
                 spent_today=0, spent_day=0, per_tx=-1, daily=-1, no_pin=-1, power_on=0):
    record = layout.new_account_record(
        "WH", kind, layout.UTILITY_NONE if kind == layout.KIND_PERSON else layout.UTILITY_BOTH,
        SALT, verifier(SALT, b"pin:", PIN), verifier(SALT, b"id:", ID_LAST6))
    for field, value in [(layout.BALANCE, balance), (layout.HELD, held),
                         (layout.STATUS, status), (layout.SPENT_TODAY, spent_today),
                         (layout.SPENT_DAY, spent_day), (layout.LIMIT_PER_TX, per_tx),
                         (layout.LIMIT_DAILY, daily), (layout.LIMIT_NO_PIN, no_pin),
                         (layout.POWER_ON, power_on)]:
        layout.put(record, field, value)
    return record


def authorize(core, account, amount, *, pin=None, card_state=layout.CARD_ACTIVE,
              same_school=True, pin_checked=True, day=DAY, hold=False,
              school_per_tx=PER_TX, school_daily=DAILY, school_no_pin=NO_PIN,
              max_amount=MAX_AMOUNT):
    return core.authorize(account, card_state, same_school, amount, pin, pin_checked, day,
                          school_per_tx, school_daily, school_no_pin, max_amount, hold)


def get(account, field):
    return layout.get(account, field)


def assert_declined(core, account, amount, expected, **kwargs):
    """A decline returns `expected` and leaves the record exactly as it was."""
    before = bytes(account)
    assert authorize(core, account, amount, **kwargs) == expected
    assert bytes(account) == before


# --- The compiled core is the one the switch runs ---

def test_compiled_core_is_loaded():
    assert switch.core.COMPILED is True
    assert switch.core.implementation is switch.core._authorize
    assert switch.core.authorize is switch.core._authorize.authorize
    for name in ["check_amount", "verify_pin", "pin_digest", "id_digest", "set_pin",
                 "reset_pin", "credit", "unspend", "complete_hold", "release_hold",
                 "apply_offline", "apply_meter", "apply_restore", "freeze",
                 "freeze_overdrawn", "end_overdraw", "unfreeze", "unlock", "close", "set_limits",
                 "enable_virtual_card", "refund"]:
        assert getattr(switch.core, name) is getattr(switch.core._authorize, name)
    assert pathlib.Path(switch.core._authorize.__file__).suffix == ".so"


def test_only_the_core_writes_account_fields():
    """Standing and payments are decided in the core, where the property tests see them."""
    assert modules_outside_core_calling("put", on="layout") == set()


def test_both_implementations_share_one_interface():
    for name in switch.core.reference.__all__:
        assert callable(getattr(switch.core._authorize, name))
    assert sorted(switch.core._authorize.__all__) == sorted(switch.core.reference.__all__)


# --- Rule 1: amount ---

@pytest.mark.parametrize("amount, code", [
    (-1, codes.BAD_AMOUNT), (0, codes.BAD_AMOUNT), (1, codes.OK), (MAX_AMOUNT, codes.OK),
    (MAX_AMOUNT + 1, codes.BAD_AMOUNT), (2**63 - 1, codes.BAD_AMOUNT),
    (2**63, codes.BAD_AMOUNT), (2**64 - 1, codes.BAD_AMOUNT), (-2**63, codes.BAD_AMOUNT),
    (-2**70, codes.BAD_AMOUNT),
])
def test_check_amount(core, amount, code):
    assert core.check_amount(amount, MAX_AMOUNT) == code


@pytest.mark.parametrize("amount", [0, -5, MAX_AMOUNT + 1, 2**64 - 1, -2**64])
def test_bad_amount_comes_first(core, amount):
    assert authorize(core, None, amount, card_state=layout.CARD_NONE) == codes.BAD_AMOUNT
    account = make_account(10**9, status=layout.STATUS_FROZEN)
    assert_declined(core, account, amount, codes.BAD_AMOUNT, card_state=layout.CARD_LOST,
                    same_school=False, pin=WRONG_PIN)
    assert get(account, layout.PIN_FAILURES) == 0


def test_max_amount_is_a_parameter(core):
    account = make_account(1000)
    assert_declined(core, account, 101, codes.BAD_AMOUNT, max_amount=100)
    assert authorize(core, account, 100, max_amount=100) == codes.OK


# --- Rule 2: card ---

def test_unknown_card_needs_no_account(core):
    assert authorize(core, None, 100, card_state=layout.CARD_NONE) == codes.CARD_UNKNOWN
    assert authorize(core, None, 100, card_state=layout.CARD_NONE,
                     same_school=False) == codes.CARD_UNKNOWN


@pytest.mark.parametrize("card_state, code", [
    (layout.CARD_LOST, codes.CARD_LOST), (layout.CARD_BLOCKED, codes.CARD_BLOCKED),
])
def test_lost_and_blocked_cards(core, card_state, code):
    account = make_account(10_000)
    assert_declined(core, account, 100, code, card_state=card_state)
    # The card outranks the school, the account's standing and the PIN.
    account = make_account(10_000, status=layout.STATUS_CLOSED)
    layout.put(account, layout.PIN_LOCKED, 1)
    assert_declined(core, account, 100, code, card_state=card_state, same_school=False,
                    pin=WRONG_PIN)


# --- Rule 3: school ---

def test_wrong_school(core):
    assert_declined(core, make_account(10_000), 100, codes.WRONG_SCHOOL, same_school=False)
    assert_declined(core, make_account(10_000, status=layout.STATUS_FROZEN), 100,
                    codes.WRONG_SCHOOL, same_school=False)
    assert_declined(core, make_account(0), 10**6, codes.WRONG_SCHOOL, same_school=False,
                    pin=WRONG_PIN)


# --- Rule 4: account standing ---

def test_closed_account(core):
    account = make_account(10_000, status=layout.STATUS_CLOSED)
    layout.put(account, layout.PIN_LOCKED, 1)
    assert_declined(core, account, 100, codes.ACCOUNT_CLOSED)


def test_frozen_account_outranks_wrong_pin(core):
    account = make_account(10_000, status=layout.STATUS_FROZEN)
    assert_declined(core, account, 100, codes.ACCOUNT_FROZEN, pin=WRONG_PIN)
    assert get(account, layout.PIN_FAILURES) == 0
    layout.put(account, layout.PIN_LOCKED, 1)
    assert_declined(core, account, 100, codes.ACCOUNT_FROZEN)


def test_locked_pin_stops_every_debit(core):
    account = make_account(10**6)
    layout.put(account, layout.PIN_LOCKED, 1)
    assert_declined(core, account, 1, codes.PIN_LOCKED)                      # small, no PIN
    assert_declined(core, account, 1, codes.PIN_LOCKED, pin=PIN)             # right PIN
    assert_declined(core, account, 1, codes.PIN_LOCKED, pin_checked=False)   # QR
    assert_declined(core, account, 1, codes.PIN_LOCKED, hold=True)
    assert_declined(core, account, PER_TX + 1, codes.PIN_LOCKED)             # outranks limits


# --- Rule 5: limits ---

def test_per_tx_limit_school_default(core):
    account = make_account(10**6)
    assert_declined(core, account, PER_TX + 1, codes.LIMIT_PER_TX, pin=PIN)
    assert authorize(core, account, PER_TX, pin=PIN) == codes.OK


def test_per_tx_limit_account_override(core):
    account = make_account(10**6, per_tx=300)
    assert_declined(core, account, 301, codes.LIMIT_PER_TX)
    assert authorize(core, account, 300) == codes.OK
    account = make_account(10**6, per_tx=0)
    assert_declined(core, account, 1, codes.LIMIT_PER_TX)


def test_per_tx_outranks_daily_pin_and_funds(core):
    account = make_account(0, spent_today=DAILY, spent_day=DAY)
    assert_declined(core, account, PER_TX + 1, codes.LIMIT_PER_TX, pin=WRONG_PIN)
    assert get(account, layout.PIN_FAILURES) == 0


def test_daily_limit(core):
    account = make_account(10**6, spent_today=DAILY - 1000, spent_day=DAY)
    assert_declined(core, account, 1001, codes.LIMIT_DAILY)
    assert authorize(core, account, 1000) == codes.OK
    assert get(account, layout.SPENT_TODAY) == DAILY
    assert_declined(core, account, 1, codes.LIMIT_DAILY)


def test_daily_limit_account_override(core):
    account = make_account(10**6, daily=500)
    assert authorize(core, account, 500) == codes.OK
    assert_declined(core, account, 1, codes.LIMIT_DAILY)


def test_daily_limit_across_a_day_change(core):
    account = make_account(10**6)
    assert authorize(core, account, 40_000, pin=PIN) == codes.OK
    assert authorize(core, account, 40_000, pin=PIN) == codes.OK
    assert_declined(core, account, 40_000, codes.LIMIT_DAILY, pin=PIN)
    assert (get(account, layout.SPENT_DAY), get(account, layout.SPENT_TODAY)) == (DAY, 80_000)
    # The next local day starts from nothing.
    assert authorize(core, account, 40_000, pin=PIN, day=DAY + 1) == codes.OK
    assert (get(account, layout.SPENT_DAY), get(account, layout.SPENT_TODAY)) == (DAY + 1, 40_000)
    assert get(account, layout.BALANCE) == 10**6 - 120_000


def test_spending_of_another_day_does_not_count(core):
    account = make_account(10**6, spent_today=DAILY, spent_day=DAY - 1)
    assert authorize(core, account, 1000) == codes.OK
    assert (get(account, layout.SPENT_DAY), get(account, layout.SPENT_TODAY)) == (DAY, 1000)


def test_daily_outranks_pin(core):
    account = make_account(10**6, spent_today=DAILY, spent_day=DAY)
    assert_declined(core, account, 100, codes.LIMIT_DAILY, pin=WRONG_PIN)
    assert_declined(core, account, NO_PIN + 1, codes.LIMIT_DAILY)


def test_holds_do_not_count_toward_the_daily_limit(core):
    account = make_account(10**6, daily=1000)
    assert authorize(core, account, 1000, hold=True) == codes.OK
    assert authorize(core, account, 1000, hold=True) == codes.OK
    assert get(account, layout.SPENT_TODAY) == 0
    assert authorize(core, account, 1000) == codes.OK


def test_huge_limits_do_not_wrap(core):
    # Limits near int64's maximum: the sum spent + amount must not wrap around.
    account = make_account(10**6, spent_today=2**62, spent_day=DAY, daily=2**63 - 1,
                           per_tx=2**63 - 1)
    assert_declined(core, account, 5 * 10**18, codes.LIMIT_DAILY, max_amount=2**63 - 1)
    assert_declined(core, account, 2**63 - 1, codes.LIMIT_DAILY, max_amount=2**63 - 1)


# --- Rule 6: PIN ---

def test_pin_required_above_the_threshold(core):
    account = make_account(10**6)
    assert_declined(core, account, NO_PIN + 1, codes.PIN_REQUIRED)
    assert authorize(core, account, NO_PIN) == codes.OK
    assert authorize(core, account, NO_PIN + 1, pin=PIN) == codes.OK


def test_pin_threshold_account_override(core):
    account = make_account(10**6, no_pin=0)
    assert_declined(core, account, 1, codes.PIN_REQUIRED)
    assert authorize(core, account, 1, pin=PIN) == codes.OK


def test_qr_needs_no_pin(core):
    account = make_account(10**6)
    assert authorize(core, account, NO_PIN + 1, pin_checked=False) == codes.OK


def test_pin_below_the_threshold_is_still_checked(core):
    account = make_account(10**6)
    before = bytes(account)
    assert authorize(core, account, 100, pin=WRONG_PIN) == codes.PIN_INVALID
    assert get(account, layout.PIN_FAILURES) == 1
    layout.put(account, layout.PIN_FAILURES, 0)
    assert bytes(account) == before  # nothing but the count changed
    assert authorize(core, account, 100, pin=PIN) == codes.OK


def test_pin_required_outranks_funds(core):
    assert_declined(core, make_account(0), NO_PIN + 1, codes.PIN_REQUIRED)


def test_wrong_pin_outranks_funds_and_counts(core):
    account = make_account(0)
    assert authorize(core, account, 100, pin=WRONG_PIN) == codes.PIN_INVALID
    assert get(account, layout.PIN_FAILURES) == 1
    assert get(account, layout.BALANCE) == 0


def test_right_pin_resets_the_count_even_when_funds_decline(core):
    account = make_account(0)
    layout.put(account, layout.PIN_FAILURES, 3)
    assert authorize(core, account, 100, pin=PIN) == codes.INSUFFICIENT_FUNDS
    assert get(account, layout.PIN_FAILURES) == 0


def test_four_wrong_then_right_resets(core):
    account = make_account(10**6)
    for failures in range(1, 5):
        assert authorize(core, account, 100, pin=WRONG_PIN) == codes.PIN_INVALID
        assert get(account, layout.PIN_FAILURES) == failures
    assert authorize(core, account, 100, pin=PIN) == codes.OK
    assert get(account, layout.PIN_FAILURES) == 0
    for _ in range(4):
        assert authorize(core, account, 100, pin=WRONG_PIN) == codes.PIN_INVALID
    assert get(account, layout.PIN_LOCKED) == 0


def test_fifth_wrong_pin_locks(core):
    account = make_account(10**6)
    for _ in range(limits.pin_failures_max - 1):
        assert authorize(core, account, 100, pin=WRONG_PIN) == codes.PIN_INVALID
    assert get(account, layout.PIN_LOCKED) == 0
    assert authorize(core, account, 100, pin=WRONG_PIN) == codes.PIN_LOCKED
    assert get(account, layout.PIN_LOCKED) == 1
    assert get(account, layout.PIN_FAILURES) == limits.pin_failures_max
    # Locked: even a small debit without PIN, the right PIN and verify_pin are refused.
    assert_declined(core, account, 1, codes.PIN_LOCKED)
    assert_declined(core, account, 1, codes.PIN_LOCKED, pin=PIN)
    before = bytes(account)
    assert core.verify_pin(account, PIN) == codes.PIN_LOCKED
    assert core.verify_pin(account, WRONG_PIN) == codes.PIN_LOCKED
    assert bytes(account) == before
    assert get(account, layout.BALANCE) == 10**6


def test_wrong_pins_count_across_verify_pin_and_debits(core):
    account = make_account(10**6)
    assert core.verify_pin(account, WRONG_PIN) == codes.PIN_INVALID
    assert core.verify_pin(account, WRONG_PIN) == codes.PIN_INVALID
    assert authorize(core, account, 100, pin=WRONG_PIN) == codes.PIN_INVALID
    assert authorize(core, account, 100, pin=WRONG_PIN, hold=True) == codes.PIN_INVALID
    assert core.verify_pin(account, WRONG_PIN) == codes.PIN_LOCKED
    assert get(account, layout.PIN_LOCKED) == 1


def test_verify_pin(core):
    account = make_account()
    assert core.verify_pin(account, WRONG_PIN) == codes.PIN_INVALID
    assert get(account, layout.PIN_FAILURES) == 1
    assert core.verify_pin(account, PIN) == codes.OK
    assert get(account, layout.PIN_FAILURES) == 0


def test_set_pin_resets_the_count_but_not_the_lock(core):
    account = make_account()
    layout.put(account, layout.PIN_FAILURES, 3)
    assert core.set_pin(account, b"999999") is None
    assert get(account, layout.PIN_FAILURES) == 0
    assert get(account, layout.PIN_HASH) == verifier(SALT, b"pin:", b"999999")
    assert core.verify_pin(account, b"999999") == codes.OK
    assert core.verify_pin(account, PIN) == codes.PIN_INVALID
    layout.put(account, layout.PIN_LOCKED, 1)
    core.set_pin(account, b"111111")
    assert get(account, layout.PIN_LOCKED) == 1


def test_reset_pin(core):
    account = make_account(10**6)
    for _ in range(limits.pin_failures_max):
        core.verify_pin(account, WRONG_PIN)
    assert get(account, layout.PIN_LOCKED) == 1
    assert core.reset_pin(account, b"111111") == codes.IDENTITY_MISMATCH
    assert get(account, layout.ID_FAILURES) == 1   # a wrong ID counts
    assert core.reset_pin(account, ID_LAST6) == codes.OK
    assert (get(account, layout.PIN_LOCKED), get(account, layout.PIN_FAILURES)) == (0, 0)
    assert get(account, layout.ID_FAILURES) == 0
    assert core.verify_pin(account, ID_LAST6) == codes.OK
    assert core.verify_pin(account, PIN) == codes.PIN_INVALID
    assert authorize(core, account, NO_PIN + 1, pin=ID_LAST6) == codes.OK


def test_reset_pin_locks_after_the_fifth_wrong_id_in_a_row(core):
    account = make_account(10**6)
    for _ in range(limits.pin_failures_max - 1):                       # N - 1 wrong
        assert core.reset_pin(account, b"111111") == codes.IDENTITY_MISMATCH
    assert get(account, layout.ID_LOCKED) == 0
    assert core.reset_pin(account, b"111111") == codes.PIN_LOCKED       # the Nth locks
    assert get(account, layout.ID_LOCKED) == 1
    before = bytes(account)
    assert core.reset_pin(account, ID_LAST6) == codes.PIN_LOCKED        # even the right ID
    assert bytes(account) == before
    assert core.verify_pin(account, PIN) == codes.OK                     # the PIN is untouched
    assert core.unlock(account) == codes.OK
    assert (get(account, layout.ID_LOCKED), get(account, layout.ID_FAILURES)) == (0, 0)
    assert core.reset_pin(account, ID_LAST6) == codes.OK


def test_a_right_id_clears_the_run_of_wrong_ones(core):
    account = make_account(10**6)
    for _ in range(limits.pin_failures_max - 1):
        core.reset_pin(account, b"111111")
    assert core.reset_pin(account, ID_LAST6) == codes.OK
    for _ in range(limits.pin_failures_max - 1):
        assert core.reset_pin(account, b"111111") == codes.IDENTITY_MISMATCH


def test_digests(core):
    assert core.pin_digest(SALT, PIN) == verifier(SALT, b"pin:", b"123456")
    assert core.id_digest(SALT, ID_LAST6) == verifier(SALT, b"id:", b"654321")
    assert len(core.pin_digest(SALT, PIN)) == 32
    assert core.pin_digest(SALT, PIN) != core.id_digest(SALT, PIN)


def test_a_verifier_is_not_the_salted_hmac_alone(core):
    """Without the verifier key (kept outside the data dir) a PIN cannot be tried against a
    stolen record: the stored verifier matches no PIN's HMAC(salt, pin) at all."""
    account = make_account()
    stored = get(account, layout.PIN_HASH)
    assert all(hmac.digest(SALT, b"pin:%06d" % n, "sha256") != stored for n in range(1_000_000)
               if n % 997 == 0 or n == 123456)
    core.set_verifier_key(bytes(32))   # another key: the same PIN no longer verifies
    assert core.verify_pin(account, PIN) == codes.PIN_INVALID


def test_no_verifier_is_made_without_a_key(core, monkeypatch):
    monkeypatch.setattr(core, "_verifier_key", None)
    with pytest.raises(RuntimeError):
        core.pin_digest(SALT, PIN)


def test_key_verifiers_migrates_an_unkeyed_record(core):
    """A record from before keyed verifiers holds HMAC(salt, ...) alone; once keyed, its PIN
    and ID digits verify again, and both cores write the same bytes."""
    account = make_account()
    layout_fields = (layout.PIN_HASH, layout.ID_HASH)
    unkeyed = (hmac.digest(SALT, b"pin:" + PIN, "sha256"),
               hmac.digest(SALT, b"id:" + ID_LAST6, "sha256"))
    for field, value in zip(layout_fields, unkeyed):
        layout.put(account, field, value)
    assert core.verify_pin(account, PIN) == codes.PIN_INVALID
    other = bytearray(account)
    core.key_verifiers(account)
    (switch.core.reference if core is switch.core._authorize
     else switch.core._authorize).key_verifiers(other)
    assert account == other
    assert get(account, layout.PIN_HASH) == verifier(SALT, b"pin:", PIN)
    assert get(account, layout.ID_HASH) == verifier(SALT, b"id:", ID_LAST6)
    assert core.verify_pin(account, PIN) == codes.OK


# --- Rule 7: funds, and what OK does ---

def test_insufficient_funds_uses_available(core):
    account = make_account(1000, held=400)
    assert_declined(core, account, 601, codes.INSUFFICIENT_FUNDS)
    assert authorize(core, account, 600) == codes.OK
    assert (get(account, layout.BALANCE), get(account, layout.HELD)) == (400, 400)
    assert_declined(core, account, 1, codes.INSUFFICIENT_FUNDS)


def test_negative_balance_declines(core):
    account = make_account(-500)
    assert_declined(core, account, 1, codes.INSUFFICIENT_FUNDS)


def test_debit_takes_money_and_counts_spending(core):
    account = make_account(10_000)
    assert authorize(core, account, 2_500) == codes.OK
    assert get(account, layout.BALANCE) == 7_500
    assert get(account, layout.HELD) == 0
    assert (get(account, layout.SPENT_DAY), get(account, layout.SPENT_TODAY)) == (DAY, 2_500)
    assert authorize(core, account, 7_500, pin=PIN) == codes.OK
    assert get(account, layout.BALANCE) == 0
    assert get(account, layout.SPENT_TODAY) == 10_000


# --- Holds ---

def test_hold_complete_arithmetic(core):
    account = make_account(10_000)
    assert authorize(core, account, 3_000, hold=True) == codes.OK
    assert (get(account, layout.BALANCE), get(account, layout.HELD)) == (10_000, 3_000)
    assert get(account, layout.SPENT_TODAY) == 0
    # The hold lowers what a debit may take.
    assert_declined(core, account, 7_001, codes.INSUFFICIENT_FUNDS, pin_checked=False)
    assert core.complete_hold(account, 3_000, 1_200, DAY) is None
    assert (get(account, layout.BALANCE), get(account, layout.HELD)) == (8_800, 0)
    assert (get(account, layout.SPENT_DAY), get(account, layout.SPENT_TODAY)) == (DAY, 1_200)


def test_complete_on_a_new_day_starts_its_spending(core):
    account = make_account(10_000, spent_today=900, spent_day=DAY)
    assert authorize(core, account, 3_000, hold=True, day=DAY) == codes.OK
    core.complete_hold(account, 3_000, 2_000, DAY + 1)
    assert (get(account, layout.SPENT_DAY), get(account, layout.SPENT_TODAY)) == (DAY + 1, 2_000)


def test_complete_zero_and_release(core):
    account = make_account(10_000)
    assert authorize(core, account, 1_000, hold=True) == codes.OK
    assert authorize(core, account, 2_000, hold=True) == codes.OK
    assert get(account, layout.HELD) == 3_000
    core.complete_hold(account, 1_000, 0, DAY)
    assert (get(account, layout.BALANCE), get(account, layout.HELD)) == (10_000, 2_000)
    assert core.release_hold(account, 2_000) is None
    assert (get(account, layout.BALANCE), get(account, layout.HELD)) == (10_000, 0)


def test_held_never_goes_negative(core):
    account = make_account(10_000, held=100)
    with pytest.raises(AssertionError):
        core.release_hold(account, 101)
    with pytest.raises(AssertionError):
        core.complete_hold(account, 101, 0, DAY)
    with pytest.raises(AssertionError):
        core.complete_hold(account, 50, 51, DAY)  # more than the hold


# --- Reversal ---

def test_unspend_same_day(core):
    account = make_account(10_000)
    assert authorize(core, account, 3_000) == codes.OK
    assert core.unspend(account, 3_000, DAY) == codes.OK
    assert get(account, layout.BALANCE) == 10_000
    assert get(account, layout.SPENT_TODAY) == 0


def test_unspend_floors_spending_at_zero(core):
    account = make_account(10_000, spent_today=100, spent_day=DAY)
    core.unspend(account, 3_000, DAY)
    assert get(account, layout.BALANCE) == 13_000
    assert get(account, layout.SPENT_TODAY) == 0


def test_unspend_of_another_day_leaves_spending(core):
    account = make_account(10_000)
    assert authorize(core, account, 3_000, day=DAY) == codes.OK
    assert authorize(core, account, 1_000, day=DAY + 1) == codes.OK
    core.unspend(account, 3_000, DAY)
    assert get(account, layout.BALANCE) == 9_000
    assert (get(account, layout.SPENT_DAY), get(account, layout.SPENT_TODAY)) == (DAY + 1, 1_000)


def test_unspend_on_a_closed_account_moves_nothing(core):
    account = make_account(0, status=layout.STATUS_CLOSED)
    assert_unchanged(lambda record: core.unspend(record, 3_000, DAY), account,
                     codes.ACCOUNT_CLOSED)


# --- Offline ---

def test_offline_goes_past_the_balance(core):
    account = make_account(1_000, status=layout.STATUS_FROZEN)
    layout.put(account, layout.PIN_LOCKED, 1)
    assert core.apply_offline(account, 5_000, DAY, DAY) == codes.OK
    assert get(account, layout.BALANCE) == -4_000
    assert (get(account, layout.SPENT_DAY), get(account, layout.SPENT_TODAY)) == (DAY, 5_000)


def test_offline_spending_by_day(core):
    account = make_account(100_000, spent_today=700, spent_day=DAY)
    core.apply_offline(account, 100, DAY, DAY)           # today: added
    assert (get(account, layout.SPENT_DAY), get(account, layout.SPENT_TODAY)) == (DAY, 800)
    core.apply_offline(account, 200, DAY - 3, DAY)       # an old day: not counted
    assert (get(account, layout.SPENT_DAY), get(account, layout.SPENT_TODAY)) == (DAY, 800)
    # Stamped into tomorrow by a clock running ahead: today's total stays as it is.
    core.apply_offline(account, 300, DAY + 1, DAY)
    assert (get(account, layout.SPENT_DAY), get(account, layout.SPENT_TODAY)) == (DAY, 800)
    assert get(account, layout.BALANCE) == 100_000 - 600
    # Tomorrow's own allowance starts at 0: the early tap was not kept for it either.
    core.apply_offline(account, 400, DAY + 1, DAY + 1)
    assert (get(account, layout.SPENT_DAY), get(account, layout.SPENT_TODAY)) == (DAY + 1, 400)


def test_offline_of_a_past_day_counts_to_no_open_allowance(core):
    account = make_account(100_000, spent_today=700, spent_day=DAY - 5)
    core.apply_offline(account, 200, DAY - 1, DAY)  # yesterday's tap, spending last counted earlier
    assert (get(account, layout.SPENT_DAY), get(account, layout.SPENT_TODAY)) == (DAY - 5, 700)
    assert authorize(core, account, 1_000, day=DAY) == codes.OK  # today starts from 0
    assert (get(account, layout.SPENT_DAY), get(account, layout.SPENT_TODAY)) == (DAY, 1_000)


def test_offline_on_a_closed_account_applies_nothing(core):
    account = make_account(0, status=layout.STATUS_CLOSED)
    assert_unchanged(lambda record: core.apply_offline(record, 500, DAY, DAY), account,
                     codes.ACCOUNT_CLOSED)


def test_offline_ignores_limits(core):
    account = make_account(0, spent_today=DAILY, spent_day=DAY)
    core.apply_offline(account, DAILY, DAY, DAY)
    assert get(account, layout.SPENT_TODAY) == 2 * DAILY
    assert get(account, layout.BALANCE) == -DAILY


# --- Meters ---

def test_meter_cutoff_and_restore_cross_once(core):
    account = make_account(0, kind=layout.KIND_UTILITY)
    assert get(account, layout.POWER_ON) == 0          # a new room has no power
    assert core.credit(account, 100) == codes.OK
    assert core.apply_restore(account) is True         # its first recharge turns it on
    assert core.apply_restore(account) is False
    assert core.apply_meter(account, 60) == (codes.OK, False)
    assert core.apply_meter(account, 40) == (codes.OK, True)    # exactly 0 cuts
    assert get(account, layout.POWER_ON) == 0
    assert core.apply_meter(account, 10) == (codes.OK, False)   # already off: no second cutoff
    assert get(account, layout.BALANCE) == -10
    assert core.credit(account, 10) == codes.OK
    assert core.apply_restore(account) is False        # 0 is not above 0
    assert core.credit(account, 1) == codes.OK
    assert core.apply_restore(account) is True
    assert get(account, layout.POWER_ON) == 1
    assert core.apply_meter(account, 5) == (codes.OK, True)     # below 0 in one step
    assert get(account, layout.BALANCE) == -4


def test_meter_applies_when_frozen(core):
    account = make_account(50, kind=layout.KIND_UTILITY, power_on=1,
                           status=layout.STATUS_FROZEN)
    assert core.apply_meter(account, 20) == (codes.OK, False)
    assert get(account, layout.BALANCE) == 30


def test_meter_on_a_closed_room_takes_nothing(core):
    account = make_account(0, kind=layout.KIND_UTILITY, status=layout.STATUS_CLOSED)
    assert_unchanged(lambda record: core.apply_meter(record, 20), account,
                     (codes.ACCOUNT_CLOSED, False))


# --- Credit ---

def test_credit(core):
    account = make_account(100)
    assert core.credit(account, 1) == codes.OK
    assert get(account, layout.BALANCE) == 101


@pytest.mark.parametrize("amount", [0, -1, -2**63, -2**64])
def test_credit_rejects_non_positive(core, amount):
    account = make_account(100)
    before = bytes(account)
    assert core.credit(account, amount) == codes.BAD_AMOUNT
    assert bytes(account) == before


def test_a_reversal_finds_room_in_a_purse_refilled_to_the_brim(core):
    """A credit or a grant fills a purse to `purse_fill_fen_max` at most, half its range: a
    payment reversed after the purse was refilled gives back money it held before, and that
    always fits (a grant to the full range, a debit, a grant again and the reversal broke the
    purse's bound: the property test found it)."""
    account = make_account(0)
    assert core.grant_subsidy(account, limits.purse_fill_fen_max + 1) == codes.BAD_AMOUNT
    assert core.grant_subsidy(account, limits.purse_fill_fen_max) == codes.OK
    assert core.credit(account, limits.purse_fill_fen_max) == codes.OK
    assert core.credit(account, 1) == codes.BAD_AMOUNT
    paid = 3_000
    assert authorize(core, account, paid) == codes.OK             # the subsidy pays first
    assert get(account, layout.SUBSIDY) == limits.purse_fill_fen_max - paid
    assert core.grant_subsidy(account, paid) == codes.OK          # refilled to the brim
    assert core.unspend(account, paid, DAY) == codes.OK
    core.return_to_subsidy(account, paid)                         # the part goes home
    assert get(account, layout.SUBSIDY) == limits.purse_fill_fen_max + paid
    assert get(account, layout.BALANCE) == limits.purse_fill_fen_max


def test_credit_overflow(core):
    account = make_account(limits.purse_fill_fen_max - 10)
    before = bytes(account)
    for amount in [11, 2**62, 2**63 - 1, 2**63, 2**64 - 1, 2**100]:
        assert core.credit(account, amount) == codes.BAD_AMOUNT
        assert bytes(account) == before
    assert core.credit(account, 10) == codes.OK
    assert get(account, layout.BALANCE) == limits.purse_fill_fen_max
    assert core.credit(account, 1) == codes.BAD_AMOUNT


def test_credit_to_a_negative_balance(core):
    account = make_account(-700)
    assert core.credit(account, 200) == codes.OK
    assert get(account, layout.BALANCE) == -500


def test_credit_to_a_closed_account_is_refused(core):
    assert_unchanged(lambda record: core.credit(record, 100),
                     make_account(0, status=layout.STATUS_CLOSED), codes.ACCOUNT_CLOSED)
    # The amount is checked first (docs/PROTOCOL.md §4.15).
    assert_unchanged(lambda record: core.credit(record, 0),
                     make_account(0, status=layout.STATUS_CLOSED), codes.BAD_AMOUNT)


def test_credit_paying_back_an_overdraw_ends_only_the_overdrawn_freeze(core):
    account = make_account(-700, status=layout.STATUS_FROZEN)
    layout.put(account, layout.FREEZE_REASON, layout.FREEZE_OVERDRAWN | layout.FREEZE_OPERATOR)
    assert core.credit(account, 699) == codes.OK   # still below zero: both stay
    assert get(account, layout.FREEZE_REASON) == layout.FREEZE_OVERDRAWN | layout.FREEZE_OPERATOR
    assert core.credit(account, 1) == codes.OK     # back at 0: the overdraw is paid
    assert get(account, layout.FREEZE_REASON) == layout.FREEZE_OPERATOR
    assert get(account, layout.STATUS) == layout.STATUS_FROZEN  # the operator's stays
    overdrawn_only = make_account(-10, status=layout.STATUS_FROZEN)
    layout.put(overdrawn_only, layout.FREEZE_REASON, layout.FREEZE_OVERDRAWN)
    assert core.credit(overdrawn_only, 10) == codes.OK
    assert get(overdrawn_only, layout.STATUS) == layout.STATUS_ACTIVE
    assert get(overdrawn_only, layout.FREEZE_REASON) == layout.FREEZE_NONE


# --- Invariants ---

@pytest.mark.parametrize("record", [
    bytearray(layout.ACCOUNT_RECORD_SIZE - 1), bytearray(layout.ACCOUNT_RECORD_SIZE + 1),
    bytes(layout.ACCOUNT_RECORD_SIZE),
])
def test_record_must_be_a_whole_bytearray(core, record):
    with pytest.raises(AssertionError):
        authorize(core, record, 100)
    with pytest.raises(AssertionError):
        core.credit(record, 100)
    with pytest.raises(AssertionError):
        core.apply_restore(record)


def test_balance_floor_is_asserted(core):
    account = make_account(-limits.balance_fen_max + 5)
    with pytest.raises(AssertionError):
        core.apply_meter(account, 6)
    with pytest.raises(AssertionError):
        core.apply_offline(account, 2**63 - 1, DAY, DAY)
    assert get(account, layout.BALANCE) == -limits.balance_fen_max + 5


def test_unknown_card_state_is_asserted(core):
    with pytest.raises(AssertionError):
        authorize(core, make_account(1000), 100, card_state=7)


def test_accepts_keyword_arguments(core):
    account = make_account(1000)
    code = core.authorize(account=account, card_state=layout.CARD_ACTIVE, same_school=True,
                          amount=100, pin=None, pin_checked=True, day=DAY,
                          school_per_tx=PER_TX, school_daily=DAILY, school_no_pin=NO_PIN,
                          max_amount=MAX_AMOUNT, hold=False)
    assert code == codes.OK
    assert core.check_amount(amount=5, max_amount=10) == codes.OK


# --- Standing: freeze, unfreeze, unlock, close, limits, virtual card ---

SCHOOL_LIMITS = {"school_per_tx": PER_TX, "school_daily": DAILY, "school_no_pin": NO_PIN,
                 "per_tx_max": limits.default_per_tx_max_fen,
                 "daily_max": limits.default_daily_max_fen,
                 "no_pin_max": limits.default_no_pin_max_fen}


def set_limits(core, account, per_tx=None, daily=None, no_pin=None):
    return core.set_limits(account, per_tx=per_tx, daily=daily, no_pin=no_pin, **SCHOOL_LIMITS)


def assert_unchanged(call, account, expected):
    """`call` answers `expected` and leaves the record's bytes as they were."""
    before = bytes(account)
    assert call(account) == expected
    assert bytes(account) == before


def test_freeze_by_the_card_office(core):
    account = make_account(1000)
    assert core.freeze(account) == codes.OK
    assert get(account, layout.STATUS) == layout.STATUS_FROZEN
    assert get(account, layout.FREEZE_REASON) == layout.FREEZE_OPERATOR
    assert_declined(core, account, 100, codes.ACCOUNT_FROZEN)
    assert_unchanged(core.freeze, account, codes.OK)  # already frozen: nothing changes


def test_freeze_adds_to_an_overdrawn_freeze_and_refuses_a_closed_account(core):
    overdrawn = make_account(-1, status=layout.STATUS_FROZEN)
    layout.put(overdrawn, layout.FREEZE_REASON, layout.FREEZE_OVERDRAWN)
    assert core.freeze(overdrawn) == codes.OK
    assert get(overdrawn, layout.FREEZE_REASON) == layout.FREEZE_OVERDRAWN | layout.FREEZE_OPERATOR
    assert_unchanged(core.freeze, overdrawn, codes.OK)
    assert_unchanged(core.freeze, make_account(0, status=layout.STATUS_CLOSED),
                     codes.ACCOUNT_CLOSED)


@pytest.mark.parametrize("status", [layout.STATUS_ACTIVE, layout.STATUS_FROZEN])
def test_freeze_overdrawn_below_zero(core, status):
    account = make_account(0, status=status)
    if status == layout.STATUS_FROZEN:
        layout.put(account, layout.FREEZE_REASON, layout.FREEZE_OPERATOR)
    assert core.freeze_overdrawn(account) is False  # 0 is not below zero
    layout.put(account, layout.BALANCE, -1)
    assert core.freeze_overdrawn(account) is True
    assert get(account, layout.STATUS) == layout.STATUS_FROZEN
    # An operator's freeze is kept beside the overdrawn one, not overwritten.
    assert get(account, layout.FREEZE_REASON) & layout.FREEZE_OVERDRAWN
    assert bool(get(account, layout.FREEZE_REASON) & layout.FREEZE_OPERATOR) == (
        status == layout.STATUS_FROZEN)
    before = bytes(account)
    assert core.freeze_overdrawn(account) is False  # once: its cards are listed once
    assert bytes(account) == before


@pytest.mark.parametrize("operator", [False, True])
def test_end_overdraw_once_the_balance_is_back_at_zero_keeps_an_operators_freeze(core, operator):
    account = make_account(-1)
    if operator:
        core.freeze(account)
    assert core.freeze_overdrawn(account) is True
    assert_unchanged(core.end_overdraw, account, False)          # still below zero
    layout.put(account, layout.BALANCE, 0)
    assert core.end_overdraw(account) is True
    assert not get(account, layout.FREEZE_REASON) & layout.FREEZE_OVERDRAWN
    assert get(account, layout.STATUS) == (layout.STATUS_FROZEN if operator
                                           else layout.STATUS_ACTIVE)
    assert_unchanged(core.end_overdraw, account, False)          # once
    assert_unchanged(core.end_overdraw, make_account(5), False)  # never frozen so


def test_freeze_overdrawn_looks_at_the_balance_not_what_can_be_spent(core):
    """A hold is reserved money, not a debt, and the subsidy pays no debt back: only the
    balance below zero freezes (docs/PROTOCOL.md §4.10)."""
    held_past_the_balance = make_account(100, held=1_000)   # an offline tap took held money
    assert_unchanged(lambda record: core.freeze_overdrawn(record), held_past_the_balance, False)
    core.complete_hold(held_past_the_balance, 1_000, 1_000, DAY)
    assert get(held_past_the_balance, layout.BALANCE) == -900
    assert core.freeze_overdrawn(held_past_the_balance) is True
    assert get(held_past_the_balance, layout.STATUS) == layout.STATUS_FROZEN
    with_subsidy = make_account(-1)
    layout.put(with_subsidy, layout.SUBSIDY, 500)
    assert core.freeze_overdrawn(with_subsidy) is True


def test_freeze_overdrawn_never_reopens_a_closed_account(core):
    account = make_account(-1, status=layout.STATUS_CLOSED)
    assert_unchanged(lambda record: core.freeze_overdrawn(record), account, False)


def test_unfreeze(core):
    for reason in (layout.FREEZE_OPERATOR, layout.FREEZE_OVERDRAWN):
        account = make_account(-5, status=layout.STATUS_FROZEN)  # below zero or not
        layout.put(account, layout.FREEZE_REASON, reason)
        assert core.unfreeze(account) == codes.OK
        assert get(account, layout.STATUS) == layout.STATUS_ACTIVE
        assert get(account, layout.FREEZE_REASON) == layout.FREEZE_NONE
    assert_unchanged(core.unfreeze, make_account(10), codes.OK)
    assert_unchanged(core.unfreeze, make_account(0, status=layout.STATUS_CLOSED),
                     codes.ACCOUNT_CLOSED)


def test_unfreeze_lifts_the_operators_freeze_and_keeps_the_overdraw(core):
    account = make_account(-5, status=layout.STATUS_FROZEN)
    layout.put(account, layout.FREEZE_REASON, layout.FREEZE_OVERDRAWN | layout.FREEZE_OPERATOR)
    assert core.unfreeze(account) == codes.OK
    assert get(account, layout.FREEZE_REASON) == layout.FREEZE_OVERDRAWN
    assert get(account, layout.STATUS) == layout.STATUS_FROZEN
    assert core.unfreeze(account) == codes.OK  # the overdrawn freeze, when it stands alone
    assert get(account, layout.STATUS) == layout.STATUS_ACTIVE


def test_unlock_clears_lock_and_count(core):
    account = make_account(10_000)
    for _ in range(limits.pin_failures_max):
        core.verify_pin(account, WRONG_PIN)
    assert get(account, layout.PIN_LOCKED) == 1
    assert core.unlock(account) == codes.OK
    assert get(account, layout.PIN_LOCKED) == 0 and get(account, layout.PIN_FAILURES) == 0
    assert authorize(core, account, 100, pin=PIN) == codes.OK
    core.verify_pin(account, WRONG_PIN)
    assert core.unlock(account) == codes.OK and get(account, layout.PIN_FAILURES) == 0
    assert_unchanged(core.unlock, account, codes.OK)  # nothing to clear: nothing changes
    layout.put(account, layout.STATUS, layout.STATUS_CLOSED)
    assert_unchanged(core.unlock, account, codes.ACCOUNT_CLOSED)


@pytest.mark.parametrize("balance, held", [(1, 0), (-1, 0), (5, 5), (0, 1)])
def test_close_refuses_money_or_holds(core, balance, held):
    assert_unchanged(core.close, make_account(balance, held=held), codes.NOT_EMPTY)


@pytest.mark.parametrize("status", [layout.STATUS_ACTIVE, layout.STATUS_FROZEN])
def test_close(core, status):
    account = make_account(0, status=status)
    assert core.close(account) == codes.OK
    assert get(account, layout.STATUS) == layout.STATUS_CLOSED
    assert_declined(core, account, 1, codes.ACCOUNT_CLOSED)
    assert_unchanged(core.close, account, codes.OK)  # already closed: nothing changes
    layout.put(account, layout.BALANCE, -300)  # an offline tap uploaded after closing
    assert_unchanged(core.close, account, codes.OK)


def test_set_limits_gives_the_account_its_own(core):
    account = make_account(0)
    assert set_limits(core, account, per_tx=NO_PIN) == codes.OK
    assert (get(account, layout.LIMIT_PER_TX), get(account, layout.LIMIT_DAILY),
            get(account, layout.LIMIT_NO_PIN)) == (NO_PIN, -1, -1)  # the rest keep the default
    assert_unchanged(lambda a: set_limits(core, a, per_tx=NO_PIN - 1), account,
                     codes.BAD_REQUEST)  # below the school's no_pin, which still applies
    assert set_limits(core, account, daily=NO_PIN, no_pin=0) == codes.OK
    assert (get(account, layout.LIMIT_PER_TX), get(account, layout.LIMIT_DAILY),
            get(account, layout.LIMIT_NO_PIN)) == (NO_PIN, NO_PIN, 0)
    assert_unchanged(lambda a: set_limits(core, a), account, codes.OK)


@pytest.mark.parametrize("name, maximum", [
    ("per_tx", limits.default_per_tx_max_fen), ("daily", limits.default_daily_max_fen),
    ("no_pin", limits.default_no_pin_max_fen),
])
def test_set_limits_at_the_maximum_and_one_past(core, name, maximum):
    wide_open = {"per_tx": limits.default_per_tx_max_fen,
                 "daily": limits.default_daily_max_fen, "no_pin": 0}
    account = make_account(0)
    assert set_limits(core, account, **{**wide_open, name: maximum}) == codes.OK
    assert get(account, getattr(layout, "LIMIT_" + name.upper())) == maximum
    for value in (maximum + 1, -1, 2**63, 2**70, -2**64):
        assert_unchanged(lambda a: set_limits(core, a, **{**wide_open, name: value}), account,
                         codes.BAD_REQUEST)


@pytest.mark.parametrize("given", [
    {"no_pin": PER_TX + 1},             # above the school's per_tx the account still uses
    {"per_tx": DAILY + 1},
    {"daily": PER_TX - 1},
    {"per_tx": 100, "no_pin": 101},
    {"per_tx": 100, "daily": 50, "no_pin": 0},
])
def test_set_limits_must_leave_no_pin_per_tx_daily_in_order(core, given):
    account = make_account(0)
    assert_unchanged(lambda a: set_limits(core, a, **given), account, codes.BAD_REQUEST)


def test_enable_virtual_card(core):
    account = make_account(0)
    assert core.enable_virtual_card(account) == codes.OK
    assert get(account, layout.QR_ENABLED) == 1
    assert_unchanged(core.enable_virtual_card, make_account(0, status=layout.STATUS_CLOSED),
                     codes.ACCOUNT_CLOSED)


@pytest.mark.parametrize("balance", [0, 1, 12_345])
def test_refund_pays_everything_out_and_closes(core, balance):
    account = make_account(balance, status=layout.STATUS_FROZEN)  # a frozen one too
    assert core.refund(account) == codes.OK
    assert get(account, layout.BALANCE) == 0
    assert get(account, layout.STATUS) == layout.STATUS_CLOSED
    assert_unchanged(core.refund, account, codes.ACCOUNT_CLOSED)


@pytest.mark.parametrize("request_type, balance", [("refund", 5_000), ("refund", 0),
                                                   ("close", 0)])
def test_closing_a_room_turns_its_power_off_for_good(core, request_type, balance):
    """A closed room holds no money (docs/PROTOCOL.md §4.12): refunded or closed with its
    power on, the relay must not stay on unbilled."""
    room = make_account(balance, kind=layout.KIND_UTILITY, power_on=1)
    assert getattr(core, request_type)(room) == codes.OK
    assert (get(room, layout.STATUS), get(room, layout.POWER_ON)) == (layout.STATUS_CLOSED, 0)
    assert core.credit(room, 100) == codes.ACCOUNT_CLOSED
    assert core.apply_restore(room) is False


@pytest.mark.parametrize("balance, held, expected", [
    (500, 1, codes.NOT_EMPTY), (500, 500, codes.NOT_EMPTY), (-1, 0, codes.INSUFFICIENT_FUNDS)])
def test_refund_refuses_holds_and_debts(core, balance, held, expected):
    assert_unchanged(core.refund, make_account(balance, held=held), expected)
