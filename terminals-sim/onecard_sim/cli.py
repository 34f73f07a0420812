"""`terminals-sim/simulate.py`: provision, sign on every terminal, play the load, check the money."""

import argparse
import os
import random
import shutil
import sys
import tempfile
import time

import trio

from onecard_sim import limits, report as reporting
from onecard_sim.context import Behaviour, Outage, Run
from onecard_sim.moneycheck import check_money
from onecard_sim.population import REQUESTS_PER_JOB, Mix, build, run_tag
from onecard_sim.provision import ProvisionError, provision
from onecard_sim.stats import summary_ms
from onecard_sim.switchproc import SwitchProcess, SwitchStartError, process_cpu_seconds
from onecard_sim.terminals import CardOffice, Meter, RechargeService, Till, WaterController
from onecard_sim.wire import ConnectionLost
from switch.config.endpoints import host_port_argument

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="terminals-sim/simulate.py",
        description="Play thousands of one-card terminals against the switch and check the money.")
    where = parser.add_argument_group("which switch")
    where.add_argument("--spawn", action="store_true",
                       help="start `python -m switch serve` on a temporary data dir (and stop it)")
    where.add_argument("--connect", type=host_port_argument(port_min=1),
                       help="HOST:PORT of a running switch")
    where.add_argument("--data", help="its data dir: DIR/admin.key, and `audit` at the end")
    where.add_argument("--config", help="--spawn: the switch's configuration file")
    where.add_argument("--keep-data", action="store_true", help="--spawn: keep the data dir")
    where.add_argument("--switch-pid", type=int,
                       help="--connect: the switch's process id, to report its CPU time")
    where.add_argument("--no-audit", action="store_true",
                       help="--connect: leave the audit to the caller, who stops the switch "
                            "first (the report then has no audit line)")
    load = parser.add_argument_group("load")
    load.add_argument("--terminals", type=int, default=limits.terminals_default,
                      help=f"connections, one credential each (max {limits.terminals_max})")
    load.add_argument("--students", type=int, default=limits.students_default)
    load.add_argument("--seconds", type=float, default=limits.seconds_default,
                      help="length of the load; the run stops by itself")
    load.add_argument("--mode", choices=("closed", "open"), default="closed")
    load.add_argument("--rate", type=float, default=limits.rate_default_per_s,
                      help="open loop: offered requests/s, averaged over the lunch-rush curve")
    load.add_argument("--flat", action="store_true", help="open loop: a flat rate, no rush curve")
    load.add_argument("--scenario", choices=("rush", "outage"), default="rush")
    load.add_argument("--outage-at", type=float, help="outage: seconds into the load (default 35%%)")
    load.add_argument("--outage-seconds", type=float,
                      help="outage: how long the switch stays down (default 20%% of --seconds)")
    load.add_argument("--mix", default="",
                      help="request weights, e.g. debit=55,qr=12,shower=14,meter=9,recharge=10")
    load.add_argument("--lost-cards", type=int, default=0,
                      help="cards reported lost mid-run (default students/100, at least 2)")
    load.add_argument("--meal-tills", action="store_true",
                      help="add the canteen tills with `meals` (the school's meal caps apply)")
    load.add_argument("--seed", type=int, help="seed for the population and the choices")
    out = parser.add_argument_group("output")
    out.add_argument("--report-json", help="write the machine-readable report here")
    out.add_argument("--quiet", action="store_true", help="no live progress line")
    out.add_argument("--progress", action="store_true",
                     help="print the live line even when stderr is not a terminal")
    out.add_argument("--deadline", type=float,
                     help="hard bound on the whole run in seconds (default --seconds + 180 + sizes)")
    return parser


def _validate(args, parser) -> None:
    if args.spawn == bool(args.connect):
        parser.error("give exactly one of --spawn or --connect HOST:PORT")
    if args.connect and not args.data:
        parser.error("--connect needs --data DIR (for DIR/admin.key and the audit)")
    if not limits.terminals_min <= args.terminals <= limits.terminals_max:
        parser.error(f"--terminals must be {limits.terminals_min}..{limits.terminals_max}")
    if not 2 <= args.students <= limits.students_max:
        parser.error(f"--students must be 2..{limits.students_max}")
    if not 0 < args.seconds <= limits.seconds_max:
        parser.error(f"--seconds must be in (0, {limits.seconds_max:.0f}]")
    if args.mode == "open" and args.rate <= 0:
        parser.error("--rate must be > 0")
    if args.spawn and (args.switch_pid or args.no_audit):
        parser.error("--switch-pid and --no-audit are for a switch given with --connect")
    if args.scenario == "outage" and not args.spawn:
        parser.error("--scenario outage needs --spawn (the simulator kills and restarts the switch)")
    if args.outage_at is not None and not 0 <= args.outage_at < args.seconds:
        parser.error("--outage-at must fall within the load (0 <= S < --seconds)")
    if args.outage_seconds is not None and not 0 < args.outage_seconds <= limits.seconds_max:
        parser.error("--outage-seconds must be > 0")
    try:
        args.mix = Mix.parse(args.mix)
    except ValueError as error:
        parser.error(str(error))


# ------------------------------------------------------------------ the fleet
def make_terminals(run: Run, population, mix: Mix) -> list:
    weights = mix.by_kind()
    weight_sum = sum(weights.values())
    counts = {kind: 0 for kind in weights}
    for credential in population.credentials:
        counts[credential.kind] += 1
    per_terminal = {}
    for kind, count in counts.items():
        jobs_per_s = run.rate_per_s * weights[kind] / weight_sum / REQUESTS_PER_JOB[kind]
        per_terminal[kind] = jobs_per_s / count if count else 0.0
    qr_share = mix.qr / (mix.debit + mix.qr) if mix.debit + mix.qr > 0 else 0.0
    meters_of = {school: [c for c in population.credentials
                          if c.kind == "meter" and c.school == school] for school in ("WH", "CUIK")}
    rooms_of_meter = {c.who: [] for school in meters_of for c in meters_of[school]}
    for school, meters in meters_of.items():
        for i, room in enumerate(population.rooms_of[school]):
            if meters:
                rooms_of_meter[meters[i % len(meters)].who].append(room)
    day = time.strftime("%Y%m%d")
    terminals = []
    for index, credential in enumerate(population.credentials, start=1):
        rate = per_terminal[credential.kind]
        if credential.kind == "pos":
            terminals.append(Till(run, credential, index, rate, qr_share=qr_share))
        elif credential.kind == "water":
            terminals.append(WaterController(run, credential, index, rate))
        elif credential.kind == "meter":
            terminals.append(Meter(run, credential, index, rate, rooms_of_meter[credential.who]))
        else:
            terminals.append(RechargeService(run, credential, index, rate, day=day))
    # Cards reported lost mid-run, spread over the middle of the load.
    count = run.behaviour.lost_cards or max(2, len(population.students) // 100)
    count = min(count, len(population.students) // 2)
    rng = random.Random(run.rng.random())
    offsets = sorted(run.seconds * (0.2 + 0.5 * (i + rng.random()) / count) for i in range(count))
    terminals.append(CardOffice(run, population.office, 0, offsets))
    return terminals


# ------------------------------------------------------------------ live line
class Progress:
    def __init__(self, run: Run, enabled: bool):
        self.run = run
        self.enabled = enabled
        self.width = 0

    def line(self, point: dict, elapsed: float) -> None:
        if not self.enabled:
            return
        run = self.run
        stats = run.stats
        p99 = stats.running_p99_ms()
        state = ""
        if run.outage is not None and not run.switch_up:
            state = f"  SWITCH DOWN, offline taps {run.outage.offline_taken}"
        elif run.outage is not None and run.outage.ready_at is not None and \
                run.outage.drained < run.outage.uploaders:
            state = f"  uploading ({run.outage.drained}/{run.outage.uploaders} drained)"
        elif elapsed > run.seconds:
            state = "  draining"
        text = (f"[{elapsed:6.1f}s] {point['replies']:6d} tx/s  total {stats.replies:8d}  "
                f"p99 {'-' if p99 is None else f'{p99:.1f}'} ms  declines {stats.declines()}  "
                f"errors {stats.error_count()}{state}")
        self.width = max(self.width, len(text))
        sys.stderr.write("\r" + text.ljust(self.width))
        sys.stderr.flush()

    def done(self) -> None:
        if self.enabled and self.width:
            sys.stderr.write("\n")
            sys.stderr.flush()


async def _ticker(run: Run, progress: Progress) -> None:
    second = 0
    while not run.all_done.is_set():
        second += 1
        with trio.move_on_at(run.t0 + second * limits.progress_interval_s):
            await run.all_done.wait()
        now = trio.current_time()
        extra = {"switch_up": run.switch_up}
        if run.outage is not None:
            extra["offline_taken"] = run.outage.offline_taken
        point = run.stats.tick(second, extra)
        progress.line(point, now - run.t0)
    progress.done()


async def _cpu_meter(run: Run, switch: SwitchProcess | None, switch_pid: int | None,
                     result: dict) -> None:
    """CPU seconds of the simulator and of the switch (ours, or the one at `switch_pid`)
    over the load window."""
    def switch_cpu():
        if switch is not None:
            return switch.cpu_seconds(), switch.starts
        return (process_cpu_seconds(switch_pid) if switch_pid else None), 0

    sim_start = time.process_time()
    switch_start, starts = switch_cpu()
    replies_start = run.stats.replies
    await trio.sleep_until(run.load_end)
    replies = run.stats.replies - replies_start
    sim_s = time.process_time() - sim_start
    switch_end, starts_end = switch_cpu()
    switch_s = (switch_end - switch_start) if switch_start is not None and switch_end is not None \
        and starts_end == starts else None
    result["cpu_during_load"] = {
        "simulator_s": round(sim_s, 2),
        "switch_s": None if switch_s is None else round(switch_s, 2),
        "simulator_us_per_reply": round(sim_s * 1e6 / replies, 1) if replies else None,
        "switch_us_per_reply": round(switch_s * 1e6 / replies, 1) if replies and switch_s else None}


async def _lag_meter(run: Run, result: dict) -> None:
    """How late the simulator's own event loop wakes up: a stall here inflates latencies
    that are not the switch's."""
    worst = 0.0
    worst_at = None
    interval = 0.01
    while not run.all_done.is_set():
        planned = trio.current_time() + interval
        await trio.sleep_until(planned)
        lag = trio.current_time() - planned
        if lag > worst:
            worst, worst_at = lag, planned - run.t0
        result["event_loop_lag"] = {"max_ms": round(worst * 1000, 1),
                                    "at_s": None if worst_at is None else round(worst_at, 2)}


# ------------------------------------------------------------------ outage
async def _outage(run: Run, switch: SwitchProcess, at_s: float, down_s: float) -> None:
    outage = run.outage
    await trio.sleep_until(run.t0 + at_s)
    outage.kill_at = trio.current_time()
    run.switch_up = False
    # Off the event loop: reaping a killed process with a big LMDB map can take a while,
    # and replies already received must not wait for it.
    await trio.to_thread.run_sync(switch.kill)
    await trio.sleep(down_s)
    outage.restart_at = trio.current_time()
    try:
        port, _ = await trio.to_thread.run_sync(switch.start, switch.port)
    except SwitchStartError:
        port, _ = await trio.to_thread.run_sync(switch.start, 0)   # the old port was taken
    outage.ready_at = trio.current_time()
    run.address = (run.address[0], port)
    run.switch_up = True


# ------------------------------------------------------------------ one run
async def simulate(args, address, admin_key: bytes, switch: SwitchProcess | None,
                   result: dict) -> None:
    seed = args.seed if args.seed is not None else random.randrange(2**31)
    result["config"]["seed"] = seed
    tag = "" if args.spawn else run_tag(random.Random(time.time_ns()))
    population = build(args.students, args.terminals, args.mix, seed, tag)
    behaviour = Behaviour(lost_cards=args.lost_cards, meal_tills=args.meal_tills)
    run = Run(population, open_loop=args.mode == "open", seconds=args.seconds,
              rate_per_s=args.rate, seed=seed, behaviour=behaviour, flat=args.flat)
    run.address = address
    result["run"] = run
    if args.scenario == "outage":
        run.outage = Outage()

    result["provisioning"] = await provision(run, population, address, admin_key, tag=tag)
    terminals = make_terminals(run, population, args.mix)
    fleet = {}
    for terminal in terminals:
        fleet[terminal.kind] = fleet.get(terminal.kind, 0) + 1
    result["fleet"] = fleet
    run.expect_terminals(len(terminals), limits.connect_concurrency_max)
    run.scheduler.terminals = terminals
    progress = Progress(run, enabled=not args.quiet and (args.progress or sys.stderr.isatty()))
    started = trio.current_time()
    async with trio.open_nursery() as nursery:
        for terminal in terminals:
            nursery.start_soon(terminal.main)
        with trio.move_on_after(limits.connect_phase_timeout_s):
            await run.all_signed_on.wait()
        result["sign_on"] = {"terminals": len(terminals), "signed_on": run.signed_on_ok,
                             "seconds": round(trio.current_time() - started, 3)}
        run.begin(trio.current_time(), limits.drain_timeout_s)
        scheduler_scope = trio.CancelScope()

        async def scheduler_task():
            with scheduler_scope:
                await run.scheduler.run()

        nursery.start_soon(scheduler_task)
        nursery.start_soon(_ticker, run, progress)
        nursery.start_soon(_cpu_meter, run, switch, args.switch_pid, result)
        nursery.start_soon(_lag_meter, run, result)
        if run.outage is not None:
            at_s = args.outage_at if args.outage_at is not None else 0.35 * args.seconds
            down_s = args.outage_seconds if args.outage_seconds is not None \
                else max(1.0, 0.2 * args.seconds)
            nursery.start_soon(_outage, run, switch, at_s, down_s)
        await run.all_done.wait()
        scheduler_scope.cancel()
        result["load_finished_s"] = round(trio.current_time() - run.t0, 3)
    run.stats.flush()
    result["money_check"] = await check_money(run.address, admin_key, run.ledger)


# ------------------------------------------------------------------ the report
def build_report(args, result: dict) -> dict:
    run: Run | None = result.get("run")
    report = {"config": result["config"], "fleet": result.get("fleet", {}),
              "provisioning": result.get("provisioning"), "sign_on": result.get("sign_on")}
    failures = list(result.get("failures", []))
    if run is None:
        report.update(ok=False, failures=failures or ["the run did not start"])
        return report
    stats = run.stats
    seconds = args.seconds
    report.update({
        "requests": stats.replies_in_window,
        "replies_total": stats.replies,
        "throughput_tps": stats.replies_in_window / seconds,
        "ok_tps": stats.ok_in_window / seconds,
        "offered": stats.offered,
        "latency_ms": summary_ms(stats.total),
        "latency_by_type_ms": {kind: summary_ms(h) for kind, h in sorted(stats.by_type.items())},
        "latency_deferred_ms": summary_ms(stats.deferred),
        "latency_resent_ms": summary_ms(stats.resolved),
        "codes": stats.by_code(),
        "by_type": stats.by_type_and_code(),
        "per_second": stats.per_second,
        "events": dict(stats.events),
        "errors": dict(stats.errors),
        "offline_codes": dict(stats.offline_codes),
        "unresolved_at_end": run.unresolved,
        "load_finished_s": result.get("load_finished_s"),
        "cpu_during_load": result.get("cpu_during_load"),
        "simulator_event_loop_lag": result.get("event_loop_lag"),
    })
    violations = [v for v in run.lost_violations]
    report["lost_cards"] = {
        "reported": stats.events.get("cards reported lost", 0),
        "taps_after_lost": run.lost_taps, "refused_card_lost": run.lost_taps_refused,
        "violations": len(violations), "examples": [v for v in violations if v][:10]}
    report["recharges"] = {
        "requests": sum(n for (t, _), n in stats.codes.items() if t == "credit"),
        "notifications_sent_twice": stats.events.get("recharge notifications sent twice", 0),
        "replays": stats.events.get("recharge replays (paid once)", 0),
        "replays_of_resends": stats.events.get(
            "recharge replays (resent after a lost connection)", 0)}
    report["dorm"] = {"cutoffs": stats.events.get("cutoffs", 0),
                      "restores": stats.events.get("restores", 0)}
    if run.outage is not None:
        o = run.outage
        ready = o.ready_at
        nothing_lost = (o.offline_ok == o.offline_taken and o.offline_refused == 0
                        and o.uncertain_resolved >= o.uncertain and run.unresolved == 0
                        and run.unsent_offline == 0 and o.drained == o.uploaders)
        report["outage"] = {
            "kill_signal": o.kill_signal,
            "kill_at_s": (o.kill_at - run.t0) if o.kill_at else None,
            "down_s": (o.restart_at - o.kill_at) if o.restart_at and o.kill_at else None,
            "restart_to_ready_s": (ready - o.restart_at) if ready and o.restart_at else None,
            "terminals": sum(result.get("fleet", {}).values()),
            "reconnected": o.reconnected,
            "all_reconnected_s": (o.last_reconnect_at - ready)
            if ready and o.last_reconnect_at else None,
            "offline_taken": o.offline_taken,
            "offline_refused_locally": o.offline_refused_locally,
            "offline_requests": o.offline_requests,
            "offline_records_uploaded": o.offline_ok + o.offline_refused,
            "offline_ok": o.offline_ok, "offline_replay": o.offline_replay,
            "offline_refused": o.offline_refused, "offline_after_lost": o.offline_after_lost,
            "overdrawn_accounts": len(o.offline_overdrawn_accounts),
            "uncertain": o.uncertain, "uncertain_resolved": o.uncertain_resolved,
            "uncertain_codes": o.uncertain_codes,
            "uploaders": o.uploaders, "drained": o.drained,
            # Restart issued -> every offline upload and resend answered.
            "drain_s": (o.last_drained_at - o.restart_at) if o.restart_at and o.last_drained_at
            else (0.0 if ready and not o.uploaders else None),
            "drain_after_ready_s": (o.last_drained_at - ready) if ready and o.last_drained_at
            else None,
            "upload_latency_ms": summary_ms(o.upload_latency),
            "unsent_offline": run.unsent_offline,
            "nothing_lost": nothing_lost,
        }
        if not nothing_lost:
            failures.append("outage: something was lost")
        if o.ready_at is None:
            failures.append("outage: the switch was not restarted")
    money = result.get("money_check") or {}
    report["money_check"] = money
    audit = result.get("audit") or {}
    report["audit"] = audit
    if not money:
        failures.append("no money check")
    elif money["mismatches"]:
        failures.append(f"money check: {money['mismatches']} mismatches")
    if not audit.get("sound") and not audit.get("skipped"):
        failures.append("audit not sound")
    if report["lost_cards"]["violations"]:
        failures.append("taps of lost cards were not refused card_lost")
    if run.unresolved:
        failures.append(f"{run.unresolved} requests unanswered at the end")
    if stats.replies == 0:
        failures.append("no replies")
    internal = sum(n for (_, c), n in stats.codes.items() if c == "internal")
    if internal:
        failures.append(f"{internal} internal errors")
    report["failures"] = failures
    report["ok"] = not failures
    return report


def _leaves(group: BaseExceptionGroup) -> list:
    leaves = []
    for error in group.exceptions:
        leaves += _leaves(error) if isinstance(error, BaseExceptionGroup) else [error]
    return leaves


def _read_key(data_dir: str) -> bytes:
    with open(os.path.join(data_dir, "admin.key")) as handle:
        return bytes.fromhex(handle.read().strip())


def main(argv=None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    _validate(args, parser)
    deadline_s = args.deadline or (args.seconds + limits.hard_deadline_extra_s
                                   + args.students / 200 + args.terminals / 200)
    result = {"config": {"scenario": args.scenario, "mode": args.mode,
                         "terminals": args.terminals, "students": args.students,
                         "seconds": args.seconds, "rate": args.rate if args.mode == "open" else None,
                         "mix": vars(args.mix), "spawn": args.spawn,
                         "connect": None if args.spawn else f"{args.connect[0]}:{args.connect[1]}"},
              "failures": []}
    switch = None
    temporary = None
    try:
        if args.spawn:
            temporary = tempfile.mkdtemp(prefix="onecard-sim-")
            data_dir = os.path.join(temporary, "data")
            switch = SwitchProcess(data_dir, REPO_ROOT, os.path.join(temporary, "switch.log"),
                                   config=args.config)
            port, metrics_port = switch.start()
            address = ("127.0.0.1", port)
            result["config"]["metrics"] = f"127.0.0.1:{metrics_port}"
        else:
            data_dir = args.data
            address = args.connect
            try:
                admin_key = _read_key(data_dir)
            except (OSError, ValueError) as error:
                print(f"error: cannot read the admin key in {data_dir}: {error}", file=sys.stderr)
                return 2
        if args.spawn:
            admin_key = _read_key(data_dir)

        async def bounded():
            with trio.move_on_after(deadline_s) as scope:
                try:
                    await simulate(args, address, admin_key, switch, result)
                except* ProvisionError as group:
                    result["failures"] += [f"provisioning: {e}" for e in _leaves(group)]
                except* SwitchStartError as group:
                    result["failures"] += [str(e) for e in _leaves(group)]
                except* (OSError, ConnectionLost, trio.TooSlowError) as group:
                    result["failures"] += [f"cannot talk to the switch: {e!r}"
                                           for e in _leaves(group)]
            if scope.cancelled_caught:
                result["failures"].append(f"hard deadline of {deadline_s:.0f} s reached")

        trio.run(bounded)
        if switch is not None:
            result["switch_exit"] = switch.terminate()
            if result["switch_exit"] != 0:
                result["failures"].append(f"switch exit code {result['switch_exit']} on SIGTERM")
        if args.no_audit:
            result["audit"] = {"skipped": True}
        else:
            from switch.persistence.audit import audit
            audit_report = audit(data_dir)
            result["audit"] = {"sound": audit_report.sound, "summary": audit_report.summary(),
                               "records": audit_report.records,
                               "accounts": audit_report.accounts}
    except SwitchStartError as error:
        result["failures"].append(str(error))
    except KeyboardInterrupt:
        result["failures"].append("interrupted")
    finally:
        if switch is not None and switch.alive:
            switch.kill()
        if switch is not None and result["failures"]:
            sys.stderr.write("switch log (tail):\n" + switch.log_tail() + "\n")
    report = build_report(args, result)
    if temporary is not None:
        if args.keep_data:
            report["data_dir"] = os.path.join(temporary, "data")
        else:
            shutil.rmtree(temporary, ignore_errors=True)
    if args.report_json:
        reporting.write_json(args.report_json, report)
    print(reporting.text(report) if report.get("sign_on") else
          "== FAIL: " + "; ".join(report["failures"]), flush=True)
    return 0 if report["ok"] else 1
