"""The terminal simulator against a real switch process: small closed, open and outage runs,
checked from their --report-json; and its pure parts (arrival curve, ledger, population)."""

import json
import random
import subprocess
import sys

import pytest

from switch.cli.demo import CAMPUS_RULES_CONFIG
from tests.paths import REPO_ROOT as REPO

SIM_DIR = REPO / "terminals-sim"
SIMULATE = SIM_DIR / "simulate.py"
if str(SIM_DIR) not in sys.path:
    sys.path.insert(0, str(SIM_DIR))

from onecard_sim import arrival, population  # noqa: E402
from onecard_sim.ledger import ExpectedLedger  # noqa: E402

RUN_TIMEOUT_S = 150
SMALL = ["--spawn", "--terminals", "50", "--students", "200", "--lost-cards", "3", "--quiet",
         "--seed", "7"]
RUNS = {
    "closed": SMALL + ["--mode", "closed", "--seconds", "5"],
    "open": SMALL + ["--mode", "open", "--rate", "300", "--seconds", "5"],
    "outage": SMALL + ["--mode", "closed", "--seconds", "7", "--scenario", "outage",
                       "--outage-at", "2", "--outage-seconds", "1.5"],
    # Every campus rule on (the demo's configuration): the double-tap guard, a meal period
    # all day at the canteen tills, and the subsidies provisioning issues.
    "campus": SMALL + ["--mode", "closed", "--seconds", "5", "--config", "CAMPUS_CONFIG",
                       "--meal-tills"],
}
LOAD_TYPES = {"debit", "qr_debit", "hold", "complete", "meter", "credit", "lost"}


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    """The three runs, started together (they are mostly waiting on fsyncs), then read."""
    directory = tmp_path_factory.mktemp("sim")
    processes = {}
    config = directory / "campus.toml"
    config.write_text(CAMPUS_RULES_CONFIG, encoding="utf-8")
    for name, argv in RUNS.items():
        argv = [str(config) if word == "CAMPUS_CONFIG" else word for word in argv]
        path = directory / f"{name}.json"
        processes[name] = (path, subprocess.Popen(
            [sys.executable, str(SIMULATE), *argv, "--report-json", str(path)],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    results = {}
    try:
        for name, (path, process) in processes.items():
            output, _ = process.communicate(timeout=RUN_TIMEOUT_S)
            assert path.exists(), f"{name}: no report; exit {process.returncode}\n{output}"
            results[name] = (process.returncode, json.loads(path.read_text()), output)
    finally:
        for _, process in processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()
    return results


@pytest.mark.parametrize("name", list(RUNS))
def test_money_check_and_audit_pass(reports, name):
    returncode, report, output = reports[name]
    assert report["ok"], (report["failures"], output)
    assert returncode == 0
    assert report["money_check"]["accounts"] == 200 + report["provisioning"]["rooms"]
    assert report["money_check"]["mismatches"] == 0
    assert report["money_check"]["expected_total_fen"] == report["money_check"]["switch_total_fen"]
    assert report["audit"]["sound"] is True
    assert report["unresolved_at_end"] == 0
    assert not [k for k in report["errors"] if not k.startswith("sign_on")], report["errors"]


@pytest.mark.parametrize("name", list(RUNS))
def test_every_kind_of_traffic_and_the_expected_codes(reports, name):
    _, report, _ = reports[name]
    assert report["requests"] > 0 and report["throughput_tps"] > 0
    assert LOAD_TYPES <= set(report["by_type"]), report["by_type"].keys()
    codes = report["codes"]
    assert codes["ok"] > 0
    assert "internal" not in codes and "bad_request" not in codes, codes
    # Cards reported lost mid-run are refused at every later tap.
    lost = report["lost_cards"]
    assert lost["reported"] == 3
    assert lost["taps_after_lost"] > 0 and lost["violations"] == 0
    assert lost["refused_card_lost"] == lost["taps_after_lost"]
    assert codes.get("card_lost", 0) >= lost["taps_after_lost"]
    # WeChat Pay notifications sent twice are paid once.
    recharges = report["recharges"]
    assert recharges["notifications_sent_twice"] > 0
    if name == "outage":   # a copy in flight at the kill is resent, and replayed as such
        assert recharges["replays"] <= recharges["notifications_sent_twice"] <= \
            recharges["replays"] + recharges["replays_of_resends"]
    else:
        assert recharges["replays"] == recharges["notifications_sent_twice"]
    # Big taps carry the PIN (id_last6, X read as 0); only the mistyped ones are refused.
    assert report["by_type"]["debit"].get("pin_required", 0) == 0
    assert report["provisioning"]["split_building_shared_account"] == "bad_request"


@pytest.mark.parametrize("name", list(RUNS))
def test_latency_and_series(reports, name):
    _, report, _ = reports[name]
    latency = report["latency_ms"]
    assert latency["count"] > 0
    assert 0 < latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["p99_9"] \
        <= latency["max"]
    assert {"debit", "hold", "credit"} <= set(report["latency_by_type_ms"])
    series = report["per_second"]
    assert len(series) >= int(report["config"]["seconds"])
    assert sum(point["replies"] for point in series) == report["replies_total"] - \
        report["by_type"].get("account", {}).get("ok", 0)
    assert report["fleet"]["pos"] > report["fleet"]["water"] > 0
    assert report["fleet"]["office"] == 1


def test_open_loop_offers_the_rush_curve(reports):
    _, report, _ = reports["open"]
    assert report["config"]["mode"] == "open"
    # 300/s for 5 s, in arrivals (a shower is one arrival for two requests).
    assert 700 <= report["offered"] <= 1_700, report["offered"]
    series = [p["offered"] for p in report["per_second"][:5]]
    assert max(series[1:4]) > series[0], series   # the rush peaks mid-run


def test_outage_loses_nothing(reports):
    _, report, _ = reports["outage"]
    outage = report["outage"]
    assert outage["kill_signal"] == "SIGKILL"
    assert outage["offline_taken"] > 0
    assert outage["offline_ok"] == outage["offline_taken"] == outage["offline_records_uploaded"]
    assert outage["offline_refused"] == 0
    assert outage["reconnected"] == outage["terminals"]
    assert outage["uncertain_resolved"] == outage["uncertain"]
    assert outage["drained"] == outage["uploaders"] > 0
    assert outage["drain_s"] is not None and outage["drain_s"] < 30
    assert outage["nothing_lost"] is True
    assert report["by_type"]["offline"]["ok"] == outage["offline_requests"]
    assert any(not point["switch_up"] for point in report["per_second"])


def test_outage_needs_spawn():
    from onecard_sim.cli import main
    with pytest.raises(SystemExit) as exit_info:
        main(["--connect", "127.0.0.1:1", "--data", "x", "--scenario", "outage"])
    assert exit_info.value.code == 2


def test_missing_admin_key_is_a_usage_error(tmp_path):
    from onecard_sim.cli import main
    assert main(["--connect", "127.0.0.1:1", "--data", str(tmp_path), "--quiet"]) == 2


# ------------------------------------------------------------------ pure parts
def test_rush_curve_averages_to_the_rate_and_peaks_mid_run():
    curve = arrival.RushCurve()
    assert curve.rate_factor(0.5) == pytest.approx(2 - arrival.rush_floor)
    assert curve.rate_factor(0.0) == pytest.approx(arrival.rush_floor)
    samples = [curve.rate_factor(i / 1000) for i in range(1000)]
    assert sum(samples) / len(samples) == pytest.approx(1.0, rel=1e-3)
    for c in (0.0, 0.1, 0.5, 0.9, 1.0):
        assert arrival.cumulative(curve.invert(c)) == pytest.approx(c, abs=1e-4)
    times = []
    source = arrival.Arrivals(curve, 100.0, 10.0, 500.0, random.Random(1))
    while (t := source.next()) != float("inf"):
        times.append(t)
    assert 4_700 <= len(times) <= 5_300
    assert all(100.0 <= t <= 110.0 for t in times) and times == sorted(times)
    middle = sum(1 for t in times if 104 <= t < 106)
    edge = sum(1 for t in times if 100 <= t < 102)
    assert middle > 3 * edge


def test_ledger_counts_a_request_answered_twice_once():
    ledger = ExpectedLedger()
    ledger.open("WH20260001")
    assert ledger.apply("WH20260001", 5_000, "wechat-pay-0001", "4200001")
    assert not ledger.apply("WH20260001", 5_000, "wechat-pay-0001", "4200001")   # the replay
    assert ledger.apply("WH20260001", 5_000, "wechat-pay-0002", "4200001")       # other service
    ledger.apply("WH20260001", -1_250)
    assert ledger.balance["WH20260001"] == 8_750
    assert ledger.compare({"WH20260001": 8_750}) == []
    assert ledger.compare({"WH20260001": 8_700}) == [("WH20260001", 8_750, 8_700)]


def test_population_of_both_schools():
    pop = population.build(1_000, 2_000, population.Mix(), seed=3)
    assert len(pop.students) == 1_000
    assert {s.school for s in pop.students} == {"WH", "CUIK"}
    assert pop.students_of["WH"][0].account == "WH20260001"
    assert pop.students_of["CUIK"][0].account == "CUIK20260001"
    assert len({s.card for s in pop.students}) == 1_000
    for student in pop.students:
        assert len(student.id_last6) == 6 and student.pin == student.id_last6.replace("X", "0")
    assert any(s.id_last6.endswith("X") for s in pop.students)
    split = [r for r in pop.rooms if r.account.startswith("CUIK-9D-")]
    assert split and {r.utility for r in split} == {"electric", "water"}
    assert all(r.utility == "both" for r in pop.rooms if not r.account.startswith("CUIK-9D-"))
    assert "WH-8D-0101" in {r.account for r in pop.rooms}
    assert len(pop.credentials) == 2_000
    kinds = {c.kind for c in pop.credentials}
    assert kinds == {"pos", "water", "meter", "recharge"}
    assert {c.school for c in pop.credentials if c.role == "terminal"} == {"WH", "CUIK"}
    assert len({c.who for c in pop.credentials}) == 2_000
    tagged = population.build(10, 8, population.Mix(), seed=3, tag="1A2B3")
    assert tagged.students[0].account == "WH20261A2B30001"
    assert tagged.students[0].card.startswith("1A2B3")


def test_mix_parse():
    mix = population.Mix.parse("debit=10, qr=0,shower=5")
    assert (mix.debit, mix.qr, mix.shower, mix.meter) == (10, 0, 5, 9)
    with pytest.raises(ValueError):
        population.Mix.parse("coffee=3")
    assert population.split_counts(10, {"a": 1, "b": 1, "c": 0}) == {"a": 5, "b": 5, "c": 0}
    assert sum(population.split_counts(8, {"a": 100, "b": 1, "c": 1}).values()) == 8


def test_the_campus_rules_run_in_the_rush_and_the_books_stay_sound(reports):
    """Subsidies spent, double taps declined, meal caps reached: and the money check (both
    purses) and the audit still pass (test_money_check_and_audit_pass[campus])."""
    _, report, _ = reports["campus"]
    codes = report["codes"]
    assert report["provisioning"]["subsidies"] > 0
    assert report["events"]["double taps sent"] > 0
    assert codes.get("repeat_tap", 0) > 0 and codes.get("meal_limit", 0) > 0, codes
    assert report["audit"]["sound"] is True
