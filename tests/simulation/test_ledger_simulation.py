"""The ledger simulation: a few hundred seeds keep every invariant not known to be broken;
each defect known to be open is still found (so the list of them stays true); defects fixed
on main, put back in this process, are found; and the checks themselves can fail."""

import logging

import pytest

from switch import core, limits
from switch.core import layout
from switch.ledger import dispatch, dorm, idempotency, offline
from switch.ledger.state import Ledger
from tests.simulation import ledger_sim
from tests.simulation.campus import make_template
from tests.simulation.generators import EXTRA_SCENARIOS
from tests.simulation.ledger_sim import DEFECTS, KNOWN_OPEN, checked_invariants, run_seed

CI_SEEDS = 200          # 250 steps each
SEARCH_SEEDS = 300      # how far a test looks for the first seed that finds a defect
PLAIN_PASS_FAULT_SEEDS = 60   # enough for faults at several writes of the plain-debit pass
EXTRA_SCENARIO_SEEDS = 60


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    return make_template(str(tmp_path_factory.mktemp("simulation") / "template"))


@pytest.fixture(autouse=True)
def _quiet_injected_faults():
    # Injected faults are logged with a traceback each by the ledger: expected here.
    logger = logging.getLogger("switch.ledger")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    yield
    logger.setLevel(level)


def first_finding(tmp_path, template, invariants, seeds=SEARCH_SEEDS, **config_changes):
    for seed in range(seeds):
        finding = run_seed(seed, str(tmp_path), template, invariants, **config_changes)
        if finding is not None:
            return finding
    return None


def test_no_invariant_breaks_over_the_ci_seeds(tmp_path, template):
    checked = checked_invariants()
    assert not set(KNOWN_OPEN) & checked
    findings = []
    for seed in range(CI_SEEDS):
        finding = run_seed(seed, str(tmp_path), template, checked)
        if finding is not None:
            findings.append(finding)
    assert not findings, "\n".join(finding.summary() for finding in findings[:3])


def test_the_extra_scenarios_keep_every_invariant(tmp_path, template, monkeypatch):
    with_extra_scenarios(monkeypatch)
    checked = checked_invariants()
    for seed in range(EXTRA_SCENARIO_SEEDS):
        finding = run_seed(seed, str(tmp_path), template, checked)
        assert finding is None, finding.summary()


# Seeds past the CI range that once broke an invariant through a fault of the simulation's
# own model, not the switch's: kept green. 888: a daily limit judged after the switch came
# to believe a wrong wall clock (by design it runs on it, docs/PROTOCOL.md §7.7).
MODEL_REGRESSION_SEEDS = (888,)


@pytest.mark.parametrize("seed", MODEL_REGRESSION_SEEDS)
def test_the_seeds_that_found_faults_of_the_model_stay_green(tmp_path, template, seed):
    finding = run_seed(seed, str(tmp_path), template, checked_invariants())
    assert finding is None, finding.summary()


@pytest.mark.skipif(not KNOWN_OPEN, reason="no defect is known open")
@pytest.mark.parametrize("defect", sorted(set(KNOWN_OPEN.values())))
def test_each_known_open_defect_is_still_found(tmp_path, template, defect):
    """When this fails the defect's fix has landed: delete its entries from KNOWN_OPEN, and
    the CI run checks its invariants from then on."""
    invariants = {name for name, known in KNOWN_OPEN.items() if known == defect}
    finding = first_finding(tmp_path, template, invariants)
    assert finding is not None, (
        f"defect {defect} ({DEFECTS[defect]}) is not found in {SEARCH_SEEDS} seeds: if its fix "
        f"is merged, delete {sorted(invariants)} from KNOWN_OPEN in tests/simulation/ledger_sim.py")
    assert finding.invariant in invariants


def _reversal_refills_a_closed_account(monkeypatch):
    real = core.unspend

    def unspend(record, amount, day):
        if layout.get(record, layout.STATUS) != layout.STATUS_CLOSED:
            return real(record, amount, day)
        layout.put(record, layout.STATUS, layout.STATUS_ACTIVE)
        code = real(record, amount, day)
        layout.put(record, layout.STATUS, layout.STATUS_CLOSED)
        return code
    monkeypatch.setattr(core, "unspend", unspend)
    return {}


def _overdraw_overwrites_the_operators_freeze(monkeypatch):
    real = core.freeze_overdrawn

    def freeze_overdrawn(record):
        froze = real(record)
        if froze:
            layout.put(record, layout.FREEZE_REASON, layout.FREEZE_OVERDRAWN)
        return froze
    monkeypatch.setattr(core, "freeze_overdrawn", freeze_overdrawn)
    return {}


def _tomorrows_tap_moves_the_spending_day(monkeypatch):
    real = core.apply_offline
    monkeypatch.setattr(core, "apply_offline",
                        lambda record, amount, day, today: real(record, amount, day,
                                                                max(day, today)))
    return {}


def _the_plain_wall_clock(monkeypatch):
    monkeypatch.setattr(ledger_sim.Simulation, "_switch_clock", lambda self: self.wall)
    return {}


def _retention_no_longer_than_the_window(monkeypatch):
    monkeypatch.setattr(ledger_sim, "validate", lambda config: None)
    return {"idempotency_retention_s": limits.offline_window_s}


def _no_reply_size_refusal(monkeypatch):
    monkeypatch.setattr(offline, "_reply_bytes_worst", lambda records: 0)
    return {}


def _no_identity_lock(monkeypatch):
    real = core.reset_pin

    def unlocked(record, id_last6):
        layout.put(record, layout.ID_LOCKED, 0)
        layout.put(record, layout.ID_FAILURES, 0)
        return real(record, id_last6)
    monkeypatch.setattr(core, "reset_pin", unlocked)
    return {}


def with_extra_scenarios(monkeypatch) -> None:
    """Draw the scenarios of generators.EXTRA_SCENARIOS too, beside every other request."""
    for name, generator in EXTRA_SCENARIOS.items():
        monkeypatch.setattr(ledger_sim, "GENERATOR_NAMES", [*ledger_sim.GENERATOR_NAMES, name])
        monkeypatch.setattr(ledger_sim, "GENERATOR_WEIGHTS",
                            [*ledger_sim.GENERATOR_WEIGHTS, generator.weight])
        monkeypatch.setitem(ledger_sim.GENERATORS, name, generator)


def _complete_freezes_no_overdraw(monkeypatch):
    with_extra_scenarios(monkeypatch)    # a shower whose held money an offline tap took
    monkeypatch.setattr(dorm, "freeze_if_overdrawn", lambda *args: None)
    return {}


# Defects fixed on main, put back the way they were, and the invariant that must find each
# (by the reliability issue's letter, or by what the defect did).
REINTRODUCED = {
    "a": (_reversal_refills_a_closed_account, {"closed_accounts_empty"}),
    "b": (_retention_no_longer_than_the_window, {"offline_once"}),
    "c": (_no_reply_size_refusal, {"reply_fits_frame"}),
    "d": (_overdraw_overwrites_the_operators_freeze, {"operator_freeze_kept"}),
    "e": (_no_identity_lock, {"identity_guesses_bounded"}),
    "g": (_tomorrows_tap_moves_the_spending_day, {"daily_limit_holds"}),
    "h": (_the_plain_wall_clock, {f"{name}_through_clock_steps"
                                  for name in ledger_sim.CLOCK_STEP_VARIANTS}),
    "complete overdraws unfrozen": (_complete_freezes_no_overdraw, {"overdraw_frozen"}),
}


@pytest.mark.parametrize("defect", sorted(REINTRODUCED))
def test_a_fixed_defect_put_back_is_found(tmp_path, template, monkeypatch, defect):
    reintroduce, invariant = REINTRODUCED[defect]
    config_changes = reintroduce(monkeypatch)
    finding = first_finding(tmp_path, template, invariant, **config_changes)
    assert finding is not None, f"defect {defect} put back, {sorted(invariant)} never broke"
    assert finding.invariant in invariant


def _forget_every_id(monkeypatch):
    monkeypatch.setattr(idempotency, "remember", lambda *args: None)


def _keep_a_failed_batch(monkeypatch):
    monkeypatch.setattr(Ledger, "discard_uncommitted", lambda self: None)


def _credit_twice(monkeypatch):
    real = dispatch.HANDLERS["credit"]

    def credit(ledger, credential, values):
        reply = real(ledger, credential, values)
        if reply["code"] == "ok":
            record = ledger.account(values["account"])
            layout.put(record, layout.BALANCE, layout.get(record, layout.BALANCE) + 1)
            ledger.save_account(values["account"], record)
        return reply
    monkeypatch.setitem(dispatch.HANDLERS, "credit", credit)


def _subsidy_granted_a_fen_more(monkeypatch):
    real = core.grant_subsidy
    monkeypatch.setattr(core, "grant_subsidy", lambda record, amount: real(record, amount + 1))


def _keep_what_a_failed_request_wrote(monkeypatch):
    monkeypatch.setattr(Ledger, "rollback_request", lambda self: None)


def _keep_a_failed_requests_settlement_count(monkeypatch):
    from switch.persistence import store as store_module
    real = store_module.Store.rollback

    def rollback(self):
        # Undo everything but the settlement counts the request made.
        kept = dict(self._dirty.get("settlement", {}))
        real(self)
        if kept:
            self._dirty.setdefault("settlement", {}).update(kept)
    monkeypatch.setattr(store_module.Store, "rollback", rollback)


def _refund_writes_no_cutoff(monkeypatch):
    from switch.ledger import card_office
    monkeypatch.setattr(card_office, "write_cutoff", lambda *args: None)


def _refund_leaves_the_power_on(monkeypatch):
    """The refund of old: the room closed with its power on, and no `cutoff` (the ledger's
    own check that the core turned the power off, put back too)."""
    _refund_writes_no_cutoff(monkeypatch)
    real = core.refund

    def refund(record):
        powered = layout.get(record, layout.POWER_ON)
        code = real(record)
        layout.put(record, layout.POWER_ON, powered)
        return code
    monkeypatch.setattr(core, "refund", refund)


@pytest.mark.parametrize("break_it, invariants", [
    (_forget_every_id, {"replay_same", "offline_once", "replay_same_through_clock_steps",
                        "offline_once_through_clock_steps"}),
    (_keep_a_failed_batch, {"money_conserved", "acked_effects_survive", "audit_sound",
                            "journal_equals_balances"}),
    (_credit_twice, {"journal_equals_balances"}),
    (_keep_what_a_failed_request_wrote, {"fault_undone"}),
    (_keep_a_failed_requests_settlement_count, {"fault_undone"}),
    (_subsidy_granted_a_fen_more, {"money_conserved", "journal_equals_balances"}),
    (_refund_leaves_the_power_on, {"closed_rooms_powered_off", "power_changes_journaled"}),
    (_refund_writes_no_cutoff, {"power_changes_journaled"}),
], ids=["ids forgotten", "failed batch kept", "a fen from nowhere", "failed request kept",
        "failed request's settlement count kept",
        "a subsidy fen from nowhere", "a refunded room's power left on",
        "a refunded room's power cut without a cutoff"])
def test_the_checks_find_a_broken_ledger(tmp_path, template, monkeypatch, break_it, invariants):
    break_it(monkeypatch)
    finding = first_finding(tmp_path, template, checked_invariants(), seeds=20)
    assert finding is not None and finding.invariant in invariants, (
        finding.summary() if finding else "nothing found")


def test_injected_faults_strike_inside_the_plain_debit_pass(tmp_path, template, monkeypatch):
    """The pass is taken only when the debit handler is the real one, so a fault that
    replaced the handler would never reach it: faults at a request's n-th write do."""
    real = dispatch.execute_plain_debit
    struck = []

    def execute_plain_debit(ledger, credential, message):
        try:
            return real(ledger, credential, message)
        except RuntimeError as error:
            struck.append(str(error))
            raise
    monkeypatch.setattr(dispatch, "execute_plain_debit", execute_plain_debit)
    for seed in range(PLAIN_PASS_FAULT_SEEDS):
        finding = run_seed(seed, str(tmp_path), template, checked_invariants())
        assert finding is None, finding.summary()
    # Faults at different writes: before the journal record, between it and the remembered
    # id, and at the last write.
    assert len(set(struck)) >= 2, struck


@pytest.mark.parametrize("words", [["--seeds", "0"], ["--seeds", "-1"], ["--first", "-1"],
                                   ["--steps", "0"]])
def test_a_run_of_no_seeds_is_a_usage_error_not_a_clean_run(words, capsys):
    from tests.simulation.run import main
    with pytest.raises(SystemExit) as stopped:
        main(words)
    assert stopped.value.code == 2 and "at least" in capsys.readouterr().err
