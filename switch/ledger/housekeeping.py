"""Housekeeping: the work the switch starts itself on a timer, as one synchronous `tick`."""

import math
from dataclasses import dataclass

from switch import limits
from switch.ledger import dorm, payments, subsidies
from switch.ledger.dispatch import failures


@dataclass(frozen=True)
class Tick:
    holds_expired: int
    failed: bool


def tick(ledger) -> Tick:
    """Forget used QR codes, remembered ids and subsidy grants past their time, release
    holds past theirs.

    All or nothing, like a request: a pass that raises leaves no half-done writes, is
    logged, and the next pass tries again."""
    ledger.begin_request()
    try:
        payments.prune_used_qr(ledger)
        ledger.forget_old_ids(sweep_ids_per_pass(ledger.ids_to_sweep()))
        subsidies.expire_due_subsidies(ledger)
        subsidies.forget_past_grants(ledger)
        payments.forget_old_meals(ledger)
        ledger.save_retention_clock()
        return Tick(holds_expired=dorm.expire_due_holds(ledger), failed=False)
    except Exception:
        ledger.rollback_request()
        failures.failed("housekeeping_failed")
        return Tick(holds_expired=0, failed=True)
    finally:
        ledger.end_request()


def sweep_ids_per_pass(ids_held: int) -> int:
    """How many remembered ids a pass visits, of `ids_held` in the database the sweep walks:
    a cycle through them all in `idempotency_sweep_cycle_s`, at least one id a pass, at most
    `idempotency_sweep_ids_per_pass_max`."""
    paced = math.ceil(ids_held * limits.housekeeping_interval_s / limits.idempotency_sweep_cycle_s)
    return min(limits.idempotency_sweep_ids_per_pass_max, max(1, paced))
