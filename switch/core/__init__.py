"""The authorization core: pure decisions on a fixed-layout account record.

Two implementations with one interface: the compiled `_authorize` (Cython, the
one the switch runs) and `reference` (plain Python, the model it is checked
against). Neither does I/O; both mutate the account `bytearray` in place.

Interface (see `reference.py` for the normative docstrings):

    check_amount(amount, max_amount) -> code
    authorize(account, card_state, same_school, amount, pin, pin_checked, day,
              school_per_tx, school_daily, school_no_pin, max_amount, hold) -> code
    verify_pin(account, pin) -> code
    set_verifier_key(key) -> None          (once at start: keys every verifier below)
    key_verifiers(account) -> None         (a record from before verifiers were keyed)
    pin_digest(salt, pin) -> bytes
    id_digest(salt, id_last6) -> bytes
    set_pin(account, pin) -> None
    reset_pin(account, id_last6) -> code
    credit(account, amount) -> code          (closed: ACCOUNT_CLOSED; ends an overdrawn freeze
                                             once the balance is back at 0 or above)
    unspend(account, amount, day) -> code    (closed: ACCOUNT_CLOSED)
    complete_hold(account, hold_amount, amount, day) -> None
    release_hold(account, hold_amount) -> None
    apply_offline(account, amount, day, today) -> code   (closed: ACCOUNT_CLOSED)
    apply_meter(account, amount) -> (code, bool)  (True when this deduction cut the power)
    apply_restore(account) -> bool         (True when a credit turned the power back on)

  Standing (an OK that was already so leaves the record's bytes unchanged; closed is for
  good: every change on a closed account is ACCOUNT_CLOSED or changes nothing):
    freeze(account) -> code                (the card office's; closed: ACCOUNT_CLOSED)
    freeze_overdrawn(account) -> bool      (True when a balance below zero froze it now:
                                             after an offline record or a complete)
    end_overdraw(account) -> bool          (True when a balance back at 0 or above ended an
                                             overdrawn freeze: after a reversal)
    unfreeze(account) -> code              (the operator's freeze, else the overdrawn one)
    unlock(account) -> code
    close(account) -> code                 (NOT_EMPTY while balance or held is not 0; the
                                           power goes off: a closed room's stays off)
    set_limits(account, per_tx, daily, no_pin, school_per_tx, school_daily,
               school_no_pin, per_tx_max, daily_max, no_pin_max) -> code
    enable_virtual_card(account) -> code   (closed: ACCOUNT_CLOSED)
    refund(account) -> code                (balance to 0, closed, power off; NOT_EMPTY while
                                           held)

  The subsidy purse (SUBSIDY: spent first by authorize, complete_hold and apply_offline):
    grant_subsidy(account, amount) -> code (utility BAD_REQUEST, closed ACCOUNT_CLOSED)
    return_to_subsidy(account, part) -> None   (after unspend: the subsidy's part goes back)
    expire_subsidy(account, amount) -> None

  Meal periods, on a record of one account's payments in one period (layout.MEAL_*):
    meal_check(meal, amount, taps_max, fen_max) -> code   (meal may be None: none yet)
    meal_count(meal, amount, taps_max, fen_max) -> bool   (True: a cap is now passed)
    meal_uncount(meal, amount) -> None

  The double-tap guard, on its own record (layout.TAP_*), not the account's:
    check_repeat_tap(tap, amount, now_ms, window_ms, confirm) -> code   (tap may be None)
    note_tap(tap, amount, now_ms, txn) -> None
"""

try:
    from switch.core import _authorize as implementation
    COMPILED = True
except ImportError:  # pragma: no cover - only when the extension was not built
    import os
    if os.environ.get("SWITCH_REQUIRE_COMPILED_CORE", "1") == "1":
        raise
    from switch.core import reference as implementation
    COMPILED = False

check_amount = implementation.check_amount
authorize = implementation.authorize
verify_pin = implementation.verify_pin
set_verifier_key = implementation.set_verifier_key
key_verifiers = implementation.key_verifiers
pin_digest = implementation.pin_digest
id_digest = implementation.id_digest
set_pin = implementation.set_pin
reset_pin = implementation.reset_pin
credit = implementation.credit
unspend = implementation.unspend
complete_hold = implementation.complete_hold
release_hold = implementation.release_hold
apply_offline = implementation.apply_offline
apply_meter = implementation.apply_meter
apply_restore = implementation.apply_restore
freeze = implementation.freeze
freeze_overdrawn = implementation.freeze_overdrawn
end_overdraw = implementation.end_overdraw
unfreeze = implementation.unfreeze
unlock = implementation.unlock
close = implementation.close
set_limits = implementation.set_limits
enable_virtual_card = implementation.enable_virtual_card
refund = implementation.refund
check_repeat_tap = implementation.check_repeat_tap
note_tap = implementation.note_tap
grant_subsidy = implementation.grant_subsidy
return_to_subsidy = implementation.return_to_subsidy
expire_subsidy = implementation.expire_subsidy
meal_check = implementation.meal_check
meal_count = implementation.meal_count
meal_uncount = implementation.meal_uncount
