"""The compiled core and the reference model agree on random operation sequences.

Two copies of one starting record, one per implementation, go through the same
operations; every step must give the same result (or the same exception) and
leave byte-identical records. The state machine also keeps its own money
ledger, so the balance must equal what the returned codes say moved, and its
own model of the account's standing (status and the freeze bits), which every
freeze, unfreeze, close, refund and overdrawn freeze must follow: closed is for good
and a closed account's money never moves, and a tap of another day never changes
what today's daily limit sees.
"""

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

import switch.core._authorize
import switch.core.reference
from switch import limits
from switch.core import codes, layout
from tests.core.conftest import verifier

IMPLEMENTATIONS = (switch.core._authorize, switch.core.reference)
START_DAY = 20_000
INT64_MIN, INT64_MAX = -2**63, 2**63 - 1
INT32_MIN, INT32_MAX = -2**31, 2**31 - 1

pins = st.integers(0, 999_999).map(lambda n: b"%06d" % n)
card_states = st.one_of(st.just(layout.CARD_ACTIVE),
                        st.sampled_from([layout.CARD_ACTIVE, layout.CARD_LOST,
                                         layout.CARD_BLOCKED, layout.CARD_NONE]))
account_limits = st.one_of(st.just(-1), st.just(-1), st.integers(0, 120_000))
SCHOOL_MAXIMA = (limits.default_per_tx_max_fen, limits.default_daily_max_fen,
                 limits.default_no_pin_max_fen)
# What `set_limits` is asked: mostly left out or plausible, sometimes a maximum, one past
# it, below zero or past int64.
requested_limits = st.one_of(
    st.none(), st.none(), st.integers(0, 120_000),
    st.sampled_from([-1, 0, *SCHOOL_MAXIMA, *(m + 1 for m in SCHOOL_MAXIMA), INT64_MAX, 2**63,
                     2**70, -2**64]))
school_limits = st.one_of(
    st.just((limits.default_no_pin_fen, limits.default_per_tx_fen, limits.default_daily_fen)),
    st.tuples(st.integers(0, 10_000), st.integers(0, 100_000), st.integers(0, 200_000)))
# Mostly plausible amounts (small ones twice as likely), sometimes the edges of
# rule 1 and of int64.
amounts = st.one_of(st.integers(1, 6_000), st.integers(1, 6_000), st.integers(-10, 60_000),
                    st.sampled_from([0, 1, limits.max_amount_fen, limits.max_amount_fen + 1,
                                     INT64_MAX, 2**63, 2**64 - 1, INT64_MIN, -2**64]))


def outcome(call):
    """What a call did: its result with its type, or the type of exception it raised."""
    try:
        result = call()
    except Exception as error:  # the outcome itself is compared
        return ("raised", type(error))
    return ("returned", type(result), result)


def run_both(accounts, name, *args):
    """Run `name` on each implementation's own copy; require the same outcome and bytes."""
    outcomes = [outcome(lambda: getattr(implementation, name)(account, *args))
                for implementation, account in zip(IMPLEMENTATIONS, accounts)]
    assert outcomes[0] == outcomes[1], (name, args, outcomes)
    assert accounts[0] == accounts[1], (name, args)
    return outcomes[0]


class CoreMachine(RuleBasedStateMachine):
    """Random debit/hold/credit/PIN/offline/meter sequences on one account, both cores."""

    @initialize(balance=st.one_of(st.integers(0, 300_000), st.integers(-50_000, 300_000)), salt=st.binary(min_size=16, max_size=16),
                pin=pins, id_last6=pins, per_tx=account_limits, daily=account_limits,
                no_pin=account_limits, power_on=st.integers(0, 1),
                spent_today=st.integers(0, 100_000), spent_day_offset=st.integers(-2, 0),
                school_limits=school_limits)
    def start(self, balance, salt, pin, id_last6, per_tx, daily, no_pin, power_on,
              spent_today, spent_day_offset, school_limits):
        record = layout.new_account_record(
            "WH", layout.KIND_PERSON, layout.UTILITY_NONE, salt,
            verifier(salt, b"pin:", pin), verifier(salt, b"id:", id_last6))
        layout.put(record, layout.BALANCE, balance)
        layout.put(record, layout.LIMIT_PER_TX, per_tx)
        layout.put(record, layout.LIMIT_DAILY, daily)
        layout.put(record, layout.LIMIT_NO_PIN, no_pin)
        layout.put(record, layout.POWER_ON, power_on)
        layout.put(record, layout.SPENT_TODAY, spent_today)
        layout.put(record, layout.SPENT_DAY, START_DAY + spent_day_offset)
        self.accounts = [record, bytearray(record)]
        self.pin = pin
        self.id_last6 = id_last6
        self.day = START_DAY
        self.school_no_pin, self.school_per_tx, self.school_daily = school_limits
        # The money ledger: each total moves only on a result that says money moved.
        self.start_balance = balance
        self.credited = self.debited = self.completed = 0
        self.offline = self.metered = self.unspent = 0
        self.granted = self.expired = 0
        self.open_holds = []
        self.reversible_debits = []  # (amount, day)
        # The standing as the rules say it must be; the records must match it.
        self.status, self.freeze_reason = layout.STATUS_ACTIVE, layout.FREEZE_NONE
        self.refunded = 0
        self.closed_balance = None  # the balance the account was closed with
        self.closed_power = None    # and its power then

    def closed(self):
        return self.status == layout.STATUS_CLOSED

    def set_reason(self, reason):
        """The rule the model holds the cores to: frozen while any freeze bit is set."""
        self.freeze_reason = reason
        self.status = layout.STATUS_FROZEN if reason else layout.STATUS_ACTIVE

    def spent_seen_today(self):
        """What the daily limit of `self.day` counts as already spent (§4.7)."""
        return self.field("SPENT_TODAY") if self.field("SPENT_DAY") >= self.day else 0

    def field(self, name):
        return layout.get(self.accounts[0], getattr(layout, name))

    def put_both(self, name, value):
        for account in self.accounts:
            layout.put(account, getattr(layout, name), value)

    @rule(operation=st.deferred(lambda: OPERATIONS))
    def step(self, operation):
        name, *args = operation
        getattr(self, name)(*args)

    def pick(self, items, choice):
        """Remove and return the item `choice` selects, or None when there is none."""
        return items.pop(choice % len(items)) if items else None

    # --- Terminal requests ---

    def authorize(self, amount, pin_kind, other_pin, card_state, same_school, pin_checked,
                  hold):
        pin = {"none": None, "right": self.pin, "wrong": other_pin}[pin_kind]
        args = (card_state, same_school, amount, pin, pin_checked, self.day,
                self.school_per_tx, self.school_daily, self.school_no_pin,
                limits.max_amount_fen, hold)
        if card_state == layout.CARD_NONE:
            # No account behind an unknown card.
            results = [outcome(lambda: implementation.authorize(None, *args))
                       for implementation in IMPLEMENTATIONS]
            assert results[0] == results[1], results
            assert results[0] in [("returned", int, codes.BAD_AMOUNT),
                                  ("returned", int, codes.CARD_UNKNOWN)], results
            return
        standing = self.field("STATUS")
        subsidy_before = self.field("SUBSIDY")
        result = run_both(self.accounts, "authorize", *args)
        assert result[:2] == ("returned", int), result
        event(f"authorize: {codes.CODE_NAMES[result[2]]}")
        if result[2] != codes.OK:
            return
        assert standing == layout.STATUS_ACTIVE, "a frozen or closed account paid"
        if hold:
            self.open_holds.append(amount)
            assert self.field("SUBSIDY") == subsidy_before
        else:
            self.debited += amount
            # The subsidy purse pays first, as much of it as there is.
            from_subsidy = min(subsidy_before, amount)
            assert self.field("SUBSIDY") == subsidy_before - from_subsidy
            self.reversible_debits.append((amount, self.day, from_subsidy))

    def edge_authorize(self, target, delta, pin_kind, pin_checked, hold):
        """A debit or hold of exactly a boundary of rules 5-7, give or take one fen."""
        def effective(field, school_default):
            value = self.field(field)
            return value if value >= 0 else school_default
        spent = self.field("SPENT_TODAY") if self.field("SPENT_DAY") == self.day else 0
        boundary = {
            "per_tx": effective("LIMIT_PER_TX", self.school_per_tx),
            "daily": effective("LIMIT_DAILY", self.school_daily) - spent,
            "no_pin": effective("LIMIT_NO_PIN", self.school_no_pin),
            "available": self.field("BALANCE") + self.field("SUBSIDY") - self.field("HELD"),
        }[target]
        self.authorize(boundary + delta, pin_kind, b"", layout.CARD_ACTIVE, True, pin_checked,
                       hold)

    def edge_meter(self, delta):
        """A meter deduction that leaves the balance at exactly `-delta`."""
        amount = self.field("BALANCE") + delta
        if amount >= 1:
            self.apply_meter(amount)

    def wrong_pin_run(self, count, other_pin):
        """Several wrong PINs in a row at a till, so that the lock is reached."""
        if other_pin == self.pin:
            return
        for _ in range(count):
            self.authorize(100, "wrong", other_pin, layout.CARD_ACTIVE, True, True, False)

    def unspend(self, choice):
        debit = self.pick(self.reversible_debits, choice)
        if debit is None:
            return
        amount, day, from_subsidy = debit
        subsidy_before = self.field("SUBSIDY")
        result = run_both(self.accounts, "unspend", amount, day)
        if self.closed():
            assert result == ("returned", int, codes.ACCOUNT_CLOSED)
            return
        assert result == ("returned", int, codes.OK)
        assert run_both(self.accounts, "return_to_subsidy", from_subsidy) == \
            ("returned", type(None), None)
        assert self.field("SUBSIDY") == subsidy_before + from_subsidy    # each part goes home
        self.unspent += amount

    def grant_subsidy(self, amount):
        result = run_both(self.accounts, "grant_subsidy", amount)
        if self.field("STATUS") == layout.STATUS_CLOSED and result[2] == codes.OK:
            raise AssertionError("a closed account was granted a subsidy")
        if result == ("returned", int, codes.OK):
            self.granted += amount
        else:
            assert result[2] in (codes.BAD_AMOUNT, codes.ACCOUNT_CLOSED), result

    def expire_subsidy(self, fraction):
        amount = self.field("SUBSIDY") * fraction // 100
        assert run_both(self.accounts, "expire_subsidy", amount) == ("returned", type(None), None)
        self.expired += amount

    def complete_hold(self, choice, fraction):
        hold_amount = self.pick(self.open_holds, choice)
        if hold_amount is None:
            return
        amount = hold_amount * fraction // 100
        result = run_both(self.accounts, "complete_hold", hold_amount, amount, self.day)
        assert result == ("returned", type(None), None)
        self.completed += amount

    def release_hold(self, choice):
        hold_amount = self.pick(self.open_holds, choice)
        if hold_amount is None:
            return
        assert run_both(self.accounts, "release_hold", hold_amount) == \
            ("returned", type(None), None)

    def release_more_than_held(self, extra):
        before = bytes(self.accounts[0])
        held = self.field("HELD")
        assert run_both(self.accounts, "release_hold", held + extra) == \
            ("raised", AssertionError)
        assert self.accounts[0] == before

    def apply_offline(self, amount, day_offset):
        spent_before = self.spent_seen_today()
        counts_today = day_offset == 0 and self.field("SPENT_DAY") <= self.day
        result = run_both(self.accounts, "apply_offline", amount, self.day + day_offset,
                          self.day)
        if self.closed():
            assert result == ("returned", int, codes.ACCOUNT_CLOSED)
            return
        assert result == ("returned", int, codes.OK)
        self.offline += amount
        # Another day's tap neither resets nor borrows from today's allowance.
        assert self.spent_seen_today() == spent_before + (amount if counts_today else 0)

    def apply_meter(self, amount):
        power_was_on = self.field("POWER_ON") == 1
        result = run_both(self.accounts, "apply_meter", amount)
        if self.closed():
            assert result == ("returned", tuple, (codes.ACCOUNT_CLOSED, False))
            return
        assert result[:2] == ("returned", tuple)
        assert result[2] == (codes.OK, power_was_on and self.field("BALANCE") <= 0)
        self.metered += amount

    def apply_restore(self):
        power_was_off = self.field("POWER_ON") == 0
        result = run_both(self.accounts, "apply_restore")
        assert result[:2] == ("returned", bool)
        assert result[2] == (not self.closed() and power_was_off and self.field("BALANCE") > 0)

    # --- Service and admin requests ---

    def credit(self, amount):
        balance = self.field("BALANCE")
        result = run_both(self.accounts, "credit", amount)
        if amount >= 1 and self.closed():
            assert result == ("returned", int, codes.ACCOUNT_CLOSED)
            return
        ok = amount >= 1 and balance + amount <= limits.purse_fill_fen_max
        assert result == ("returned", int, codes.OK if ok else codes.BAD_AMOUNT)
        if ok:
            self.credited += amount
            if balance + amount >= 0 and self.freeze_reason & layout.FREEZE_OVERDRAWN:
                self.set_reason(self.freeze_reason & ~layout.FREEZE_OVERDRAWN)

    def verify_pin(self, right, other_pin):
        locked = self.field("PIN_LOCKED") == 1
        pin = self.pin if right else other_pin
        result = run_both(self.accounts, "verify_pin", pin)
        if locked:
            assert result == ("returned", int, codes.PIN_LOCKED)
        elif pin == self.pin:
            assert result == ("returned", int, codes.OK)
        else:
            assert result[2] in (codes.PIN_INVALID, codes.PIN_LOCKED)

    def set_pin(self, new_pin):
        assert run_both(self.accounts, "set_pin", new_pin) == ("returned", type(None), None)
        self.pin = new_pin

    def reset_pin(self, right, other):
        id_last6 = self.id_last6 if right else other
        failures_before = self.field("ID_FAILURES")
        locked_before = self.field("ID_LOCKED") == 1
        result = run_both(self.accounts, "reset_pin", id_last6)
        if locked_before:  # locked: refused whatever the digits, nothing changes
            expected = codes.PIN_LOCKED
        elif id_last6 == self.id_last6:
            expected = codes.OK
        elif failures_before + 1 >= limits.pin_failures_max:
            expected = codes.PIN_LOCKED  # the 5th wrong ID in a row locks reset_pin
        else:
            expected = codes.IDENTITY_MISMATCH
        assert result == ("returned", int, expected)
        if expected == codes.OK:
            self.pin = id_last6
            assert self.field("ID_FAILURES") == 0
        elif not locked_before:
            assert self.field("ID_FAILURES") == failures_before + 1
        assert (self.field("ID_LOCKED") == 1) == (locked_before or (
            expected == codes.PIN_LOCKED))

    def force_status(self, status):
        """Write the status directly, to reach standings the rules reach only by long ways."""
        if status == layout.STATUS_CLOSED and self.open_holds:
            return  # no way closes an account with money held (close, refund: not_empty)
        self.put_both("STATUS", status)
        self.status = status
        self.closed_balance = self.field("BALANCE") if self.closed() else None
        self.closed_power = self.field("POWER_ON")   # forced closed: as it was

    def force_limits(self, per_tx, daily, no_pin):
        """Write limits directly, out of order too (the school's defaults may change)."""
        self.put_both("LIMIT_PER_TX", per_tx)
        self.put_both("LIMIT_DAILY", daily)
        self.put_both("LIMIT_NO_PIN", no_pin)

    # --- Standing: the card office's and the student's changes ---

    def change_standing(self, name, *args):
        """Run a standing change on both; it must not move money. (outcome, record before)"""
        money = [self.field(f) for f in ("BALANCE", "HELD", "SPENT_TODAY", "SPENT_DAY")]
        before = bytes(self.accounts[0])
        result = run_both(self.accounts, name, *args)
        assert [self.field(f) for f in ("BALANCE", "HELD", "SPENT_TODAY", "SPENT_DAY")] == money
        event(f"{name}: {result[2] if result[0] == 'returned' else result[1].__name__}")
        return result, before

    def freeze(self):
        result, before = self.change_standing("freeze")
        if self.closed():
            assert result == ("returned", int, codes.ACCOUNT_CLOSED)
            assert self.accounts[0] == before
        elif (self.status == layout.STATUS_FROZEN
              and self.freeze_reason & layout.FREEZE_OPERATOR):
            assert result == ("returned", int, codes.OK)
            assert self.accounts[0] == before
        else:  # an overdrawn freeze keeps its bit beside the operator's
            assert result == ("returned", int, codes.OK)
            self.set_reason(self.freeze_reason | layout.FREEZE_OPERATOR)

    def freeze_overdrawn(self):
        freezes = (not self.closed() and self.field("BALANCE") < 0
                   and not self.freeze_reason & layout.FREEZE_OVERDRAWN)
        result, before = self.change_standing("freeze_overdrawn")
        assert result == ("returned", bool, freezes)
        if freezes:  # an operator's freeze keeps its bit beside the overdrawn one
            self.set_reason(self.freeze_reason | layout.FREEZE_OVERDRAWN)
        else:
            assert self.accounts[0] == before

    def unfreeze(self):
        result, before = self.change_standing("unfreeze")
        if self.closed():
            assert result == ("returned", int, codes.ACCOUNT_CLOSED)
            assert self.accounts[0] == before
            return
        assert result == ("returned", int, codes.OK)
        if self.status == layout.STATUS_FROZEN:
            # The operator's freeze first; the overdrawn one only when it stands alone.
            if self.freeze_reason & layout.FREEZE_OPERATOR:
                self.set_reason(self.freeze_reason & ~layout.FREEZE_OPERATOR)
            else:
                self.set_reason(layout.FREEZE_NONE)
        else:
            assert self.accounts[0] == before

    def unlock(self):
        counters = ("PIN_LOCKED", "PIN_FAILURES", "ID_LOCKED", "ID_FAILURES")
        was_clear = all(self.field(name) == 0 for name in counters)
        result, before = self.change_standing("unlock")
        if self.closed():
            assert result == ("returned", int, codes.ACCOUNT_CLOSED)
            assert self.accounts[0] == before
            return
        assert result == ("returned", int, codes.OK)
        assert all(self.field(name) == 0 for name in counters)
        assert (self.accounts[0] == before) == was_clear

    def close(self):
        empty = self.field("BALANCE") == 0 and self.field("HELD") == 0
        result, before = self.change_standing("close")
        if self.status == layout.STATUS_CLOSED:
            assert result == ("returned", int, codes.OK)
            assert self.accounts[0] == before
        elif not empty:
            assert result == ("returned", int, codes.NOT_EMPTY)
            assert self.accounts[0] == before
        else:
            assert result == ("returned", int, codes.OK)
            self.status = layout.STATUS_CLOSED
            self.closed_balance = 0
            self.closed_power = 0   # a closed room holds no money: its power goes off
            assert self.field("POWER_ON") == 0

    def refund(self):
        balance, held = self.field("BALANCE"), self.field("HELD")
        before = bytes(self.accounts[0])
        result = run_both(self.accounts, "refund")
        if self.closed():
            expected = codes.ACCOUNT_CLOSED
        elif held != 0:
            expected = codes.NOT_EMPTY
        elif balance < 0:
            expected = codes.INSUFFICIENT_FUNDS
        else:
            expected = codes.OK
        assert result == ("returned", int, expected)
        if expected != codes.OK:
            assert self.accounts[0] == before
            return
        self.refunded += balance
        self.status = layout.STATUS_CLOSED
        self.closed_balance = 0
        self.closed_power = 0   # a refunded room's power went off with the closing
        assert self.field("POWER_ON") == 0

    def edge_close(self):
        """Empty the account (holds released, balance brought to 0), then close it."""
        while self.open_holds:
            self.release_hold(0)
        balance = self.field("BALANCE")
        if balance > 0:
            self.apply_offline(balance, 0)
        elif balance < 0:
            self.credit(-balance)
        self.close()

    def set_limits(self, per_tx, daily, no_pin):
        requested = {"PER_TX": per_tx, "DAILY": daily, "NO_PIN": no_pin}
        defaults = {"PER_TX": self.school_per_tx, "DAILY": self.school_daily,
                    "NO_PIN": self.school_no_pin}
        maxima = dict(zip(("PER_TX", "DAILY", "NO_PIN"), SCHOOL_MAXIMA))
        own = {name: self.field("LIMIT_" + name) for name in requested}
        in_range = all(value is None or 0 <= value <= maxima[name]
                       for name, value in requested.items())
        applies = {name: (own[name] if own[name] >= 0 else defaults[name]) if value is None
                   else value for name, value in requested.items()}
        valid = in_range and applies["NO_PIN"] <= applies["PER_TX"] <= applies["DAILY"]
        result, before = self.change_standing(
            "set_limits", per_tx, daily, no_pin, self.school_per_tx, self.school_daily,
            self.school_no_pin, *SCHOOL_MAXIMA)
        if not valid:
            assert result == ("returned", int, codes.BAD_REQUEST)
            assert self.accounts[0] == before
            return
        assert result == ("returned", int, codes.OK)
        for name, value in requested.items():
            assert self.field("LIMIT_" + name) == (own[name] if value is None else value)

    def enable_virtual_card(self):
        result, before = self.change_standing("enable_virtual_card")
        if self.status == layout.STATUS_CLOSED:
            assert result == ("returned", int, codes.ACCOUNT_CLOSED)
            assert self.accounts[0] == before
        else:
            assert result == ("returned", int, codes.OK)
            assert self.field("QR_ENABLED") == 1

    def next_day(self, days):
        self.day += days

    # --- What must hold after every step ---

    @invariant()
    def records_identical(self):
        assert self.accounts[0] == self.accounts[1]

    @invariant()
    def money_is_conserved(self):
        expected = (self.start_balance + self.credited + self.granted - self.debited
                    - self.completed - self.offline - self.metered + self.unspent - self.expired
                    - self.refunded)
        # Both purses together: a payment may take from either, but never makes or loses money.
        assert self.field("BALANCE") + self.field("SUBSIDY") == expected
        assert self.field("SUBSIDY") >= 0
        assert self.field("HELD") == sum(self.open_holds)

    @invariant()
    def standing_follows_the_rules(self):
        assert self.field("STATUS") == self.status
        assert self.field("FREEZE_REASON") == self.freeze_reason

    @invariant()
    def closed_is_for_good(self):
        """Once closed (by close or refund), no function moves the account's money."""
        if self.closed_balance is not None:
            assert self.field("STATUS") == layout.STATUS_CLOSED
            assert self.field("BALANCE") == self.closed_balance
            assert self.field("POWER_ON") == self.closed_power   # nothing turns it on again

    @invariant()
    def counters_in_range(self):
        assert 0 <= self.field("PIN_FAILURES") <= limits.pin_failures_max
        assert self.field("PIN_LOCKED") in (0, 1)
        assert self.field("SPENT_TODAY") >= 0
        assert self.field("POWER_ON") in (0, 1)


def op(name, *strategies):
    return st.tuples(st.just(name), *strategies)


# One rule draws one of these, so the mix is set here by weight: typical debits
# (which mostly succeed) often, everything else including odd arguments less often.
typical_authorize = op("authorize", st.integers(1, 3_000), st.sampled_from(["none", "right"]),
                       pins, st.just(layout.CARD_ACTIVE), st.just(True), st.booleans(),
                       st.booleans())
any_authorize = op("authorize", amounts, st.sampled_from(["none", "right", "wrong"]), pins,
                   card_states, st.one_of(st.just(True), st.booleans()), st.booleans(),
                   st.booleans())
wrong_pin_authorize = op("authorize", st.integers(1, 3_000), st.just("wrong"), pins,
                         st.just(layout.CARD_ACTIVE), st.just(True), st.just(True),
                         st.booleans())
choices = st.integers(0, 1000)
WEIGHTED_OPERATIONS = [
    (8, typical_authorize),
    (4, any_authorize),
    (2, wrong_pin_authorize),
    (6, op("edge_authorize", st.sampled_from(["per_tx", "daily", "no_pin", "available"]),
           st.sampled_from([-1, 0, 1]), st.sampled_from(["none", "none", "right"]),
           st.sampled_from([True, True, False]), st.booleans())),
    (1, op("edge_meter", st.integers(-1, 1))),
    (1, op("wrong_pin_run", st.integers(1, limits.pin_failures_max + 1), pins)),
    (3, op("credit", st.one_of(st.integers(1, 20_000), st.integers(-10, 200_000),
                               st.sampled_from([0, INT64_MAX, 2**63, 2**64 - 1, 2**100])))),
    (2, op("unspend", choices)),
    (2, op("complete_hold", choices, st.integers(0, 100))),
    (2, op("release_hold", choices)),
    (1, op("release_more_than_held", st.integers(1, 1000))),
    (1, op("apply_offline", st.integers(1, 20_000), st.integers(-3, 1))),
    (1, op("apply_meter", st.integers(1, 10_000))),
    (1, op("apply_restore")),
    (2, op("verify_pin", st.booleans(), pins)),
    (1, op("set_pin", pins)),
    (1, op("reset_pin", st.booleans(), pins)),
    (1, op("force_status", st.sampled_from([layout.STATUS_ACTIVE] * 4
                                           + [layout.STATUS_FROZEN, layout.STATUS_CLOSED]))),
    (1, op("force_limits", account_limits, account_limits, account_limits)),
    (1, op("unlock")),
    (1, op("freeze")),
    (1, op("freeze_overdrawn")),
    (1, op("unfreeze")),
    (1, op("close")),
    (1, op("edge_close")),
    (1, op("refund")),
    (2, op("set_limits", requested_limits, requested_limits, requested_limits)),
    (1, op("enable_virtual_card")),
    (1, op("next_day", st.integers(1, 2))),
    (2, op("grant_subsidy", st.one_of(st.integers(1, 5_000), st.sampled_from(
        [0, -1, limits.purse_fill_fen_max, limits.purse_fill_fen_max + 1,
         limits.balance_fen_max, limits.balance_fen_max + 1, 2**63, 2**70])))),
    (1, op("expire_subsidy", st.integers(0, 100))),
]
OPERATIONS = st.sampled_from(
    [strategy for weight, strategy in WEIGHTED_OPERATIONS for _ in range(weight)]
).flatmap(lambda strategy: strategy)

CoreMachine.TestCase.settings = settings(max_examples=200, stateful_step_count=40,
                                         deadline=None,
                                         suppress_health_check=[HealthCheck.too_slow])
TestCoreMachine = CoreMachine.TestCase


# --- Arbitrary records: the same outcome, exceptions included, on any 176 bytes ---

int64s = st.integers(INT64_MIN, INT64_MAX)
int32s = st.integers(INT32_MIN, INT32_MAX)
near_days = st.integers(START_DAY - 2, START_DAY + 2)
any_days = st.one_of(near_days, near_days, int32s)
small_amounts = st.integers(-10, 60_000)
any_amounts = st.one_of(small_amounts, small_amounts, int64s, st.integers(-2**70, 2**70))
fen_amounts = st.one_of(small_amounts, small_amounts, int64s)
operations = st.one_of(
    st.tuples(st.just("authorize"), st.integers(0, 3), st.booleans(), any_amounts,
              st.one_of(st.none(), pins), st.booleans(), any_days, fen_amounts, fen_amounts,
              fen_amounts, st.one_of(st.just(limits.max_amount_fen), int64s), st.booleans()),
    st.tuples(st.just("check_amount"), any_amounts, fen_amounts),
    st.tuples(st.just("verify_pin"), pins),
    st.tuples(st.just("set_pin"), pins),
    st.tuples(st.just("reset_pin"), pins),
    st.tuples(st.just("credit"), any_amounts),
    st.tuples(st.just("unspend"), fen_amounts, any_days),
    st.tuples(st.just("complete_hold"), fen_amounts, fen_amounts, any_days),
    st.tuples(st.just("release_hold"), fen_amounts),
    st.tuples(st.just("apply_offline"), fen_amounts, any_days, any_days),
    st.tuples(st.just("apply_meter"), fen_amounts),
    st.tuples(st.just("apply_restore")),
    st.tuples(st.just("freeze")),
    st.tuples(st.just("freeze_overdrawn")),
    st.tuples(st.just("unfreeze")),
    st.tuples(st.just("unlock")),
    st.tuples(st.just("close")),
    st.tuples(st.just("set_limits"), *[st.one_of(st.none(), any_amounts)] * 3,
              *[fen_amounts] * 6),
    st.tuples(st.just("enable_virtual_card")),
    st.tuples(st.just("refund")),
    st.tuples(st.just("grant_subsidy"), any_amounts),
    st.tuples(st.just("return_to_subsidy"), fen_amounts),
    st.tuples(st.just("expire_subsidy"), fen_amounts),
)


def record_fields():
    """Records with every field from its whole range; plausible values and edges likely."""
    def mostly(plausible, whole):
        return st.one_of(plausible, plausible, plausible, whole)
    small_fen = st.integers(-100_000, 100_000)
    return st.fixed_dictionaries({
        "BALANCE": st.one_of(
            small_fen, small_fen, small_fen, int64s,
            st.integers(limits.balance_fen_max - 100, limits.balance_fen_max),
            st.integers(-limits.balance_fen_max, -limits.balance_fen_max + 100)),
        "HELD": mostly(st.one_of(st.just(0), st.integers(0, 100_000)), int64s),  # 0: closable
        "SPENT_TODAY": mostly(st.integers(0, 100_000), int64s),
        "SPENT_DAY": any_days,
        "STATUS": mostly(st.integers(0, 2), st.integers(0, 255)),
        "POWER_ON": mostly(st.integers(0, 1), st.integers(0, 255)),
        "PIN_FAILURES": mostly(st.integers(0, limits.pin_failures_max), st.integers(0, 255)),
        "PIN_LOCKED": mostly(st.integers(0, 1), st.integers(0, 255)),
        "FREEZE_REASON": mostly(st.integers(0, 2), st.integers(0, 255)),
        "QR_ENABLED": mostly(st.integers(0, 1), st.integers(0, 255)),
        "LIMIT_PER_TX": mostly(st.one_of(st.just(-1), st.integers(0, 100_000)), int64s),
        "LIMIT_DAILY": mostly(st.one_of(st.just(-1), st.integers(0, 100_000)), int64s),
        "LIMIT_NO_PIN": mostly(st.one_of(st.just(-1), st.integers(0, 100_000)), int64s),
        "PIN_SALT": st.binary(min_size=16, max_size=16),
        "PIN_HASH": st.binary(min_size=32, max_size=32),
        "ID_HASH": st.binary(min_size=32, max_size=32),
        "SUBSIDY": mostly(st.one_of(st.just(0), st.integers(0, 100_000)), int64s),
        "KIND": mostly(st.just(layout.KIND_PERSON), st.integers(0, 255)),
    })


@settings(max_examples=200, deadline=None)
@given(fields=record_fields(), steps=st.lists(operations, min_size=1, max_size=20))
def test_any_record_same_outcome(fields, steps):
    record = bytearray(layout.ACCOUNT_RECORD_SIZE)
    for name, value in fields.items():
        layout.put(record, getattr(layout, name), value)
    accounts = [record, bytearray(record)]
    for name, *args in steps:
        if name == "check_amount":
            results = [outcome(lambda: implementation.check_amount(*args))
                       for implementation in IMPLEMENTATIONS]
            assert results[0] == results[1], (args, results)
        else:
            result = run_both(accounts, name, *args)
            event(f"{name}: {result[1].__name__ if result[0] == 'raised' else 'returned'}")


# --- The double-tap guard: its own record, the same decision from both cores ---

tap_times = st.one_of(st.integers(0, 20_000), st.integers(0, 20_000), int64s)


@settings(max_examples=300, deadline=None)
@given(steps=st.lists(st.tuples(st.integers(1, 3), st.one_of(tap_times, st.just(None)),
                                st.booleans(), st.integers(0, 10**6)),
                      min_size=1, max_size=30),
       start_at=tap_times, window_ms=st.one_of(st.sampled_from([0, 1, 2_000]), int64s))
def test_the_double_tap_guard_agrees_and_declines_exactly_repeats_inside_the_window(
        steps, start_at, window_ms):
    """Random payment sequences at one till: both cores decide alike, leave identical tap
    records, and decline exactly an unconfirmed repeat of the last approved amount less than
    the window after it (checked against the last approval the test itself remembers)."""
    taps = [None, None]
    last = None                       # (amount, at) of the last approval
    clock = start_at
    for amount, later_ms, confirm, txn in steps:
        # The till's clock moves on: to a later time drawn, else by 1 ms (a quick repeat).
        clock = later_ms if later_ms is not None and later_ms > clock else clock + 1
        if not INT64_MIN <= clock <= INT64_MAX:
            break
        results = [outcome(lambda: implementation.check_repeat_tap(tap, amount, clock,
                                                                  window_ms, confirm))
                   for implementation, tap in zip(IMPLEMENTATIONS, taps)]
        assert results[0] == results[1], (amount, clock, results)
        repeat = (window_ms > 0 and not confirm and last is not None and last[0] == amount
                  and 0 <= clock - last[1] < window_ms)
        assert results[0] == ("returned", int, codes.REPEAT_TAP if repeat else codes.OK)
        if not repeat:
            taps = [bytearray(layout.TAP_RECORD_SIZE) if tap is None else tap for tap in taps]
            for implementation, tap in zip(IMPLEMENTATIONS, taps):
                implementation.note_tap(tap, amount, clock, txn)
            assert taps[0] == taps[1]
            last = (amount, clock)


@settings(max_examples=200, deadline=None)
@given(tap=st.binary(min_size=24, max_size=24), amount=st.one_of(int64s, st.integers(1, 3)),
       now_ms=int64s, window_ms=st.one_of(int64s, st.integers(-1, 10_000)),
       confirm=st.booleans())
def test_the_double_tap_guard_agrees_on_any_tap_record(tap, amount, now_ms, window_ms, confirm):
    results = [outcome(lambda: implementation.check_repeat_tap(bytearray(tap), amount, now_ms,
                                                              window_ms, confirm))
               for implementation in IMPLEMENTATIONS]
    assert results[0] == results[1]


# --- Meal periods: one account's count in one period, the same decision from both cores ---

@settings(max_examples=300, deadline=None)
@given(steps=st.lists(st.tuples(st.sampled_from(["pay", "offline", "reverse"]),
                                st.integers(1, 2_000)), min_size=1, max_size=30),
       taps_max=st.one_of(st.integers(1, 4), int64s), fen_max=st.one_of(st.integers(1, 5_000), int64s))
def test_meal_caps_agree_and_decline_exactly_past_a_cap(steps, taps_max, fen_max):
    """Random payments, offline taps and reversals in one period: both cores decide alike,
    leave identical records, and decline exactly a payment that would pass a cap (checked
    against the test's own count); offline taps always count and say when they passed one."""
    meals = [None, None]
    taps = fen = 0
    counted = []
    for kind, amount in steps:
        if kind == "reverse":
            if not counted or meals[0] is None:
                continue
            amount = counted.pop()
            for implementation, meal in zip(IMPLEMENTATIONS, meals):
                implementation.meal_uncount(meal, amount)
            taps, fen = max(0, taps - 1), max(0, fen - amount)
        elif kind == "pay":
            results = [outcome(lambda: implementation.meal_check(meal, amount, taps_max, fen_max))
                       for implementation, meal in zip(IMPLEMENTATIONS, meals)]
            assert results[0] == results[1]
            over = taps + 1 > taps_max or fen + amount > fen_max
            assert results[0] == ("returned", int, codes.MEAL_LIMIT if over else codes.OK)
            if over:
                continue
        if kind != "reverse":
            meals = [bytearray(layout.MEAL_RECORD_SIZE) if meal is None else meal
                     for meal in meals]
            passed = [implementation.meal_count(meal, amount, taps_max, fen_max)
                      for implementation, meal in zip(IMPLEMENTATIONS, meals)]
            taps, fen = taps + 1, fen + amount
            assert passed == [taps > taps_max or fen > fen_max] * 2
            counted.append(amount)
        assert meals[0] == meals[1]
        assert (layout.get(meals[0], layout.MEAL_TAPS), layout.get(meals[0], layout.MEAL_FEN)) \
            == (taps, fen)


@settings(max_examples=200, deadline=None)
@given(meal=st.binary(min_size=16, max_size=16), amount=st.one_of(int64s, st.integers(0, 100)),
       taps_max=int64s, fen_max=int64s)
def test_meal_functions_agree_on_any_record(meal, amount, taps_max, fen_max):
    for name, args in (("meal_check", (amount, taps_max, fen_max)),
                       ("meal_count", (amount, taps_max, fen_max)), ("meal_uncount", (amount,))):
        records = [bytearray(meal), bytearray(meal)]
        results = [outcome(lambda: getattr(implementation, name)(record, *args))
                   for implementation, record in zip(IMPLEMENTATIONS, records)]
        assert results[0] == results[1], (name, results)
        assert records[0] == records[1], name
