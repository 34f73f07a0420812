"""The end-to-end benchmark in one command: the switch with durable commits, a bare trio server
(the network path's ceiling), the same bare server on asyncio+uvloop (what Python itself can
do) and PostgreSQL doing the same debit, side by side on this machine with the same client
settings; prints a table and the ratios, and writes bench/results/*.json, the PNG plots and
bench/RESULTS.md (every figure with the command that made it).

    .venv/bin/python bench/run_e2e.py            # the full run: minutes, needs a quiet machine
    .venv/bin/python bench/run_e2e.py --quick    # a smoke run in about a minute

Every measurement is a separate, self-contained command (bench/e2e_load.py or
bench/postgres_peer.py) run in its own process group with a time limit: it starts its server
pinned to --server-cpu, loads it from --load-cpu, stops it, and writes JSON. If anything fails
or this is interrupted, the whole group is stopped.

Steps (--steps): switch, bare, uvloop, postgres (closed loop at --connections); client (the
load client against its own C responder at --connections: what the client itself drives, for
the headroom target; an instrument, not a server compared); open (the
switch and the bare server at each of --rates offered, open loop); idle (--idle-connections
signed on and held, the switch's RSS); scale (the switch on books of each --scale-accounts
size, prebuilt offline). With bare and any other step, the bare server runs again last: a
machine whose speed changed under the run shows there. The load client is
bench/loadgen/loadgen.c (--client python: the Python one); its CPU in every closed-loop run,
and above all in the client step, shows how far it could drive beyond the fastest server
measured. The targets are reported
against, never asserted.
"""

import argparse
import datetime
import json
import os
import pathlib
import platform
import shlex
import signal
import subprocess
import sys
import threading
import time

BENCH = pathlib.Path(__file__).resolve().parent
REPO = BENCH.parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import e2e_load  # noqa: E402  (puts the repository on the path)

STEPS = ("switch", "bare", "uvloop", "client", "postgres", "open", "idle", "scale")
# Closed-loop runs of our servers, by step: (run name, system shown, e2e_load.py --server).
CLOSED = (("switch_closed", "switch (durable)", "switch"),
          ("bare_closed", "bare trio server", "bare"),
          ("uvloop_closed", "bare asyncio+uvloop server", "uvloop"))
# The load client against its own C responder (step "client"): how far the client itself drives
# when the other side costs it almost nothing. An instrument, not a server compared.
CLIENT_CEILING = ("client_ceiling", "load client vs its C responder", "responder")
OPEN_SYSTEMS = (("switch", "switch (durable)"), ("bare", "bare trio server"))
# e2e_load's runs (PostgreSQL's is pgbench's), the client's own against its responder included
SYSTEMS_WE_LOAD = ("switch", "bare", "uvloop", "responder")
FULL = {"connections": 2000, "depth": 1, "seconds": 30.0, "warmup": 5.0, "accounts": 10_000,
        "rates": "5000,10000", "idle_connections": 10_000, "hold": 10.0,
        "pg_clients": "16,64,256", "scale_accounts": "10000,1000000",
        "scale_warmup": 40.0, "scale_seconds": 60.0, "scale_pregrow_mb": 0}
QUICK = {"connections": 100, "depth": 1, "seconds": 3.0, "warmup": 1.0, "accounts": 1000,
         "rates": "1000,2000", "idle_connections": 1000, "hold": 2.0,
         "pg_clients": "16", "scale_accounts": "1000,20000",
         "scale_warmup": 1.0, "scale_seconds": 3.0, "scale_pregrow_mb": 0}
PREGROW_MIB_PER_S_MIN = 20.0       # a scale run's time limit allows its zeros written this slowly
STOP_GRACE_S = 45.0               # a stopped step gets this long to stop its servers itself
MB = 1_000_000
MIB = 1024 * 1024

# The switch's performance targets (the throughput issue's; bench/RESULTS.md, "Against the
# targets"); reported against, never asserted.
TARGET_BARE_RATIO = 1.0
TARGET_BARE_CONNECTIONS = 2000
TARGET_DEPTH = 1
TARGET_POSTGRES_RATIO = 3.5
TARGET_CPU_US = 45.0
TARGET_OPEN_P99_MS = {5_000: 10.0, 10_000: 25.0}     # offered tx/s: p99 from intended send
TARGET_IDLE_CONNECTIONS = 10_000
TARGET_IDLE_MB = 200.0
TARGET_SCALE_RATIO = 0.9
TARGET_SCALE_ACCOUNTS = (10_000, 1_000_000)
TARGET_CLIENT_HEADROOM = 2.0   # the load client could drive this many times the fastest server
# The bare trio server runs again last: its throughput then within this share of its first
# run's, or the machine changed under the run (this one's speed drifts by up to 2× in a day,
# and a run's ratios compare figures made up to half an hour apart).
STEADY_MACHINE_SHARE_MAX = 0.10
# Everything on the machine but the server and its load, over a run's window, in % of one
# core: past this, that run measured the other work as much as the server (a full run's
# 1,000,000-account step once met 38 %, where its 10,000-account step met 4 %).
OTHER_WORK_PERCENT_MAX = 10.0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke-test sizes: " + ", ".join(f"{k}={v}" for k, v in QUICK.items()))
    parser.add_argument("--connections", type=int, help=f"closed and open loop (full: "
                                                        f"{FULL['connections']})")
    parser.add_argument("--depth", type=int, help="closed loop: debits in flight per connection "
                                                  f"(full: {FULL['depth']}, as a till)")
    parser.add_argument("--seconds", type=float, help=f"measured window of each run "
                                                      f"(full: {FULL['seconds']:g})")
    parser.add_argument("--warmup", type=float, help=f"load before each window "
                                                     f"(full: {FULL['warmup']:g})")
    parser.add_argument("--accounts", type=int, help=f"accounts, one card each "
                                                     f"(full: {FULL['accounts']})")
    parser.add_argument("--terminals", type=int, default=20, help="terminal credentials")
    parser.add_argument("--amount-max", type=int, default=10, help="debits are 1..this fen")
    parser.add_argument("--rates", help=f"open loop: offered tx/s, one run each "
                                        f"(full: {FULL['rates']})")
    parser.add_argument("--idle-connections", type=int,
                        help=f"idle step (full: {FULL['idle_connections']})")
    parser.add_argument("--hold", type=float, help=f"idle step: seconds held (full: "
                                                   f"{FULL['hold']:g})")
    parser.add_argument("--pg-clients", help="pgbench client counts; --connections is added "
                                             f"(full: {FULL['pg_clients']})")
    parser.add_argument("--scale-accounts", help=f"scale step: account counts (full: "
                                                 f"{FULL['scale_accounts']})")
    # Longer than the others': at a million accounts a write-back round lasts about 30 s
    # (switch/limits.py logged_writes_per_account_ratio), and a window must hold rounds
    # written back, not only the first one filling (which writes nothing back).
    parser.add_argument("--scale-warmup", type=float,
                        help=f"scale step: load before each window "
                             f"(full: {FULL['scale_warmup']:g})")
    parser.add_argument("--scale-seconds", type=float,
                        help=f"scale step: measured window (full: {FULL['scale_seconds']:g})")
    # A diagnostic, never the target's figure: on this machine a page the page cache takes
    # for the first time can cost 0.3-13 µs a KB, dearer after a million accounts' 1.6 GB of
    # books were copied than after ten thousand's 14 MB (e2e_load.pregrow_data_file;
    # bench/RESULTS.md, 2026-12-05 01:10), and grown files take that cost out of the run.
    # But the switch grows its file in service too (more at a million accounts, whose
    # write-back rounds are longer), so the target is judged on the books as copied.
    parser.add_argument("--scale-pregrow-mb", type=int,
                        help="scale step: MiB of zeros written past the end of each size's "
                             "data file before its server starts (a diagnostic: the scaling "
                             "target is then reported not comparable; default 0, none)")
    parser.add_argument("--steps", default=",".join(STEPS),
                        help=f"comma-separated subset of {','.join(STEPS)}")
    parser.add_argument("--seed", type=int, help="seed for every run (default: random)")
    parser.add_argument("--client", choices=("c", "python"), default="c",
                        help="the load client of every e2e_load.py run")
    parser.add_argument("--results-dir", default=str(BENCH / "results"))
    parser.add_argument("--results-md", default=str(BENCH / "RESULTS.md"))
    parser.add_argument("--workdir", help="parent of the temporary data dirs (default $TMPDIR)")
    parser.add_argument("--server-cpu", type=int, default=0)
    parser.add_argument("--load-cpu", type=int, default=1)
    parser.add_argument("--no-pin", action="store_true")
    parser.add_argument("--report-only", action="store_true",
                        help="run nothing: rewrite the table, plots and RESULTS.md from the "
                             "JSON files of the last run in --results-dir")
    return parser


def _settings(args) -> None:
    preset = QUICK if args.quick else FULL
    for name, value in preset.items():
        if getattr(args, name) is None:
            setattr(args, name, value)


def _rates(args) -> list[float]:
    return sorted({float(rate) for rate in str(args.rates).split(",") if rate})


def _scaled_down(args) -> bool:
    return (args.quick or args.connections < TARGET_BARE_CONNECTIONS or args.seconds < 10
            or args.accounts < FULL["accounts"])


def _relative(path: pathlib.Path) -> str:
    """A path to run with from the repository's root (absolute when outside it)."""
    # abspath, not resolve: .venv/bin/python is a symlink out of the repository.
    try:
        return str(pathlib.Path(os.path.abspath(path)).relative_to(REPO))
    except ValueError:
        return str(path)


def _python() -> str:
    return _relative(pathlib.Path(sys.executable))


def _shown_settings(args) -> dict:
    """The settings as summary.json keeps them: paths relative to the repository's root."""
    settings = dict(vars(args))
    for name in ("results_dir", "results_md", "workdir"):
        if settings[name] is not None:
            settings[name] = e2e_load.shown_path(settings[name])
    return settings


# ------------------------------------------------------------------ running steps
class StepFailed(Exception):
    pass


def _stop_group(process: subprocess.Popen) -> None:
    """SIGTERM the step's process group (it stops its servers), SIGKILL what is left."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        process.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def run_step(command: list[str], timeout_s: float) -> int:
    """Run one step's command, echoing its output indented; bounded by `timeout_s`."""
    print(f"\n$ {shlex.join(command)}", flush=True)
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL, cwd=REPO, text=True,
                               start_new_session=True)

    def echo():
        for line in process.stdout:
            print("    " + line.rstrip("\n"), flush=True)

    reader = threading.Thread(target=echo, daemon=True)
    reader.start()
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _stop_group(process)
        reader.join(timeout=5)
        raise StepFailed(f"timed out after {timeout_s:.0f} s") from None
    finally:
        if process.poll() is None:
            _stop_group(process)
    reader.join(timeout=5)
    return process.returncode


def _load_command(args, name: str, results_dir: pathlib.Path, extra: list[str]) -> list[str]:
    command = [_python(), "bench/e2e_load.py", "--connections", str(args.connections),
               "--depth", str(args.depth), "--seconds", f"{args.seconds:g}",
               "--warmup", f"{args.warmup:g}", "--accounts", str(args.accounts),
               "--terminals", str(args.terminals), "--amount-max", str(args.amount_max),
               "--seed", str(args.seed), "--label", name, "--client", args.client,
               "--json-out", _relative(results_dir / f"{name}.json"),
               "--server-cpu", str(args.server_cpu), "--load-cpu", str(args.load_cpu)]
    if args.no_pin:
        command.append("--no-pin")
    if args.workdir:
        command += ["--workdir", args.workdir]
    return command + extra


def _replace(command: list[str], flag: str, value: str) -> list[str]:
    command = list(command)
    command[command.index(flag) + 1] = value
    return command


def plan(args, results_dir: pathlib.Path) -> list[tuple[str, list[str], float]]:
    """(name, command, time limit) of every step asked for, in order."""
    steps = [step for step in args.steps.split(",") if step]
    unknown = set(steps) - set(STEPS)
    if unknown:
        raise SystemExit(f"unknown steps: {', '.join(sorted(unknown))}")
    if args.scale_pregrow_mb < 0:
        raise SystemExit("--scale-pregrow-mb: a count of MiB, 0 for none")
    window_s = args.warmup + args.seconds + e2e_load.DRAIN_TIMEOUT_S
    setup_s = args.accounts / 1000 + args.connections / 200 + 120
    planned = []
    for name, _, server in CLOSED:
        if server in steps:
            planned.append((name, _load_command(args, name, results_dir, ["--server", server]),
                            window_s + setup_s))
    if "client" in steps:
        name, _, server = CLIENT_CEILING
        planned.append((name, _load_command(args, name, results_dir, ["--server", server]),
                        window_s + setup_s))
    if "postgres" in steps:
        clients = sorted({int(c) for c in args.pg_clients.split(",") if c} | {args.connections})
        command = [_python(), "bench/postgres_peer.py", "--accounts", str(args.accounts),
                   "--clients", ",".join(map(str, clients)), "--seconds", f"{args.seconds:g}",
                   "--warmup", f"{args.warmup:g}", "--amount-max", str(args.amount_max),
                   "--server-cpu", str(args.server_cpu), "--load-cpu", str(args.load_cpu),
                   "--json-out", _relative(results_dir / "postgres.json")]
        if args.no_pin:
            command.append("--no-pin")
        if args.workdir:
            command += ["--workdir", args.workdir]
        planned.append(("postgres", command,
                        len(clients) * (args.warmup + args.seconds + 240) + args.accounts / 20_000
                        + 300))
    if "open" in steps:
        for rate in _rates(args):
            for system, _ in OPEN_SYSTEMS:
                name = f"{system}_open_{rate:.0f}"
                extra = ["--rate", f"{rate:g}", "--server", system]
                planned.append((name, _load_command(args, name, results_dir, extra),
                                window_s + setup_s))
    if "idle" in steps:
        command = _load_command(args, "switch_idle", results_dir,
                                ["--idle", "--hold", f"{args.hold:g}"])
        command = _replace(command, "--connections", str(args.idle_connections))
        planned.append(("switch_idle", command,
                        args.hold + args.idle_connections / 100 + args.accounts / 1000 + 180))
    if "scale" in steps:
        for accounts in sorted({int(a) for a in args.scale_accounts.split(",") if a}):
            name = f"switch_scale_{accounts}"
            pregrow = (["--pregrow-mb", str(args.scale_pregrow_mb)]
                       if args.scale_pregrow_mb else [])
            command = _load_command(args, name, results_dir, ["--prebuild", *pregrow])
            command = _replace(command, "--accounts", str(accounts))
            command = _replace(command, "--warmup", f"{args.scale_warmup:g}")
            command = _replace(command, "--seconds", f"{args.scale_seconds:g}")
            scale_window_s = args.scale_warmup + args.scale_seconds + e2e_load.DRAIN_TIMEOUT_S
            # Writing the zeros took up to 28 s for 2,048 MiB after a million accounts' copy.
            planned.append((name, command, scale_window_s + setup_s + accounts / 1000
                            + args.scale_pregrow_mb / PREGROW_MIB_PER_S_MIN))
    if "bare" in steps and len(planned) > 1:
        planned.append(("bare_closed_again",
                        _load_command(args, "bare_closed_again", results_dir,
                                      ["--server", "bare"]), window_s + setup_s))
    return planned


# ------------------------------------------------------------------ summary
def _pregrown(scale: list) -> str:
    """How the scale runs' data files were grown before their servers started, as the
    target's line shows it ("" for none): a ratio made so is a diagnostic, not comparable
    with the target, which is judged on the books as copied."""
    grown = {run.get("pregrow_mb", 0) for run in scale}
    if grown == {0}:
        return ""
    if len(grown) == 1:
        return f"; each data file pregrown {grown.pop():,} MiB"
    return "; data files pregrown unequally: " + ", ".join(
        f"{run['accounts']:,} accounts {run.get('pregrow_mb', 0):,} MiB" for run in scale)


def _others_percent(run: dict) -> float | None:
    """Other programs' share of a core over the run's window: the kernel's own threads are
    not counted where the run measured them (they write back the switch's own fsyncs)."""
    cpu = run.get("cpu") or {}
    others = e2e_load.other_programs_seconds(cpu)
    if not cpu.get("elapsed_s") or others is None:
        return None
    return others / cpu["elapsed_s"] * 100


def _fmt(value, spec: str = ",.0f", missing: str = "–") -> str:
    return missing if value is None else format(value, spec)


def _closed_loop_names(runs: dict) -> list[str]:
    """Every closed-loop run loaded by our client: the servers side by side, then the books."""
    return ([name for name, _, _ in CLOSED if name in runs]
            + sorted((name for name in runs if name.startswith("switch_scale_")),
                     key=lambda name: runs[name]["accounts"])
            + [name for name in ("bare_closed_again",) if name in runs])


def _not_ok(run: dict) -> dict:
    """Replies other than ok, broken connections and requests never answered, by name."""
    return {**(run.get("broken") or {}),
            **({"unanswered": run["unanswered"]} if run.get("unanswered") else {}),
            **{code: n for code, n in (run.get("codes") or {}).items() if code != "ok"}}


def _clean_ceiling(run: dict) -> bool:
    """A client_ceiling run fit to read: every connection signed on, every request answered
    ok (a run that lost connections drove fewer than it could)."""
    return (bool(run.get("load_cpu_percent")) and bool(run.get("tx_per_s"))
            and run.get("connected") == run.get("connections") and not _not_ok(run))


def client_headroom(runs: dict, pg_best: dict | None) -> dict | None:
    """How far the load client could drive beyond the fastest server measured.

    Measured where it can be: the run of the client against its own C responder ("client"
    step), where the responder costs the client little, so the client runs near its whole
    core and its tx/s there is what it drives (divided by the share of its core it used: a
    few per cent of extrapolation). Without that run, or where that run lost connections or
    requests, from the closed-loop run of the fastest server our client loaded: the same
    division from the half of its core it used there. Either is compared with the fastest
    tx/s of any server in this run, PostgreSQL's (driven by pgbench) included; the responder
    is not a server compared. None without a closed-loop run of one of our servers (the
    client step alone has nothing to be compared with).
    """
    loaded = [(name, runs[name]) for name in _closed_loop_names(runs)
              if runs[name].get("load_cpu_percent") and runs[name].get("tx_per_s")]
    if not loaded:
        return None
    name, run = max(loaded, key=lambda item: item[1]["tx_per_s"])
    fastest_name, fastest = name, run["tx_per_s"]
    from_fastest_run = run["tx_per_s"] * 100 / run["load_cpu_percent"]
    if pg_best and pg_best["tx_per_s"] > fastest:
        fastest_name, fastest = "postgres", pg_best["tx_per_s"]
    ceiling = runs.get(CLIENT_CEILING[0]) or {}
    if _clean_ceiling(ceiling):
        name, run = CLIENT_CEILING[0], ceiling
    capacity = run["tx_per_s"] * 100 / run["load_cpu_percent"]
    cpu = run.get("cpu") or {}
    # The other side's share of its core: near 100 % it, not the client, may set the pace.
    server_percent = (cpu["server_cpu_s"] * 100 / cpu["elapsed_s"]
                      if cpu.get("server_cpu_s") is not None and cpu.get("elapsed_s") else None)
    return {"run": name, "client": run.get("client", "python"), "tx_per_s": run["tx_per_s"],
            "client_cpu_percent": run["load_cpu_percent"], "capacity_tx_per_s": capacity,
            "server_cpu_percent": server_percent,
            "fastest": fastest_name, "fastest_tx_per_s": fastest,
            "headroom": capacity / fastest,
            "headroom_from_fastest_run": from_fastest_run / fastest}


def summarize(args, runs: dict) -> dict:
    switch, bare = runs.get("switch_closed"), runs.get("bare_closed")
    uvloop = runs.get("uvloop_closed")
    postgres = runs.get("postgres")
    pg_best = None
    if postgres and postgres.get("runs"):
        pg_best = max(postgres["runs"], key=lambda run: run["tx_per_s"])
    pg_same = None
    if postgres:
        pg_same = next((run for run in postgres.get("runs", [])
                        if run["clients"] == args.connections), None)
    scale = sorted((run for name, run in runs.items() if name.startswith("switch_scale_")),
                   key=lambda run: run["accounts"])
    ratios = {}
    for name, numerator, denominator in (
            ("switch_over_bare", switch, bare), ("switch_over_uvloop", switch, uvloop),
            ("bare_over_uvloop", bare, uvloop), ("switch_over_postgres_best", switch, pg_best),
            ("switch_over_postgres_same_connections", switch, pg_same),
            ("bare_over_postgres_best", bare, pg_best)):
        if numerator and denominator and denominator["tx_per_s"]:
            ratios[name] = numerator["tx_per_s"] / denominator["tx_per_s"]
    if len(scale) >= 2 and scale[0]["tx_per_s"]:
        ratios["largest_over_smallest_books"] = scale[-1]["tx_per_s"] / scale[0]["tx_per_s"]
    again = runs.get("bare_closed_again")
    if bare and again and bare["tx_per_s"]:
        ratios["bare_at_the_end_over_its_start"] = again["tx_per_s"] / bare["tx_per_s"]
    headroom = client_headroom(runs, pg_best)
    if headroom:
        ratios["client_capacity_over_fastest_server"] = headroom["headroom"]

    def target(name, value, met, comparable, shown, why_not="scaled-down run"):
        status = ("–" if value is None else
                  ("met" if met else "NOT met") if comparable else
                  f"not comparable ({why_not})")
        return {"target": name, "value": value, "shown": shown, "status": status}

    at_target = (args.connections == TARGET_BARE_CONNECTIONS and args.depth == TARGET_DEPTH)
    closed_at = (f"closed loop, {TARGET_BARE_CONNECTIONS:,} connections, depth {TARGET_DEPTH}")
    targets = []
    value = ratios.get("switch_over_bare")
    targets.append(target(f"switch ≥ {TARGET_BARE_RATIO:.1f}× the bare trio server's throughput "
                          f"({closed_at})", value,
                          value is not None and value >= TARGET_BARE_RATIO, at_target,
                          f"{_fmt(value, '.2f')}× at {args.connections:,} connections, "
                          f"depth {args.depth}"))
    value = ratios.get("switch_over_postgres_best")
    targets.append(target(f"switch ≥ {TARGET_POSTGRES_RATIO}× PostgreSQL's debit rate at its "
                          f"best client count ({closed_at})", value,
                          value is not None and value >= TARGET_POSTGRES_RATIO,
                          at_target and not _scaled_down(args),
                          f"{_fmt(value, '.2f')}× (PostgreSQL best at "
                          f"{pg_best['clients'] if pg_best else '–'} clients)"))
    value = switch.get("server_cpu_us_per_tx") if switch else None
    targets.append(target(f"≤ {TARGET_CPU_US:g} µs server CPU per durable authorization "
                          f"({closed_at})", value,
                          value is not None and value <= TARGET_CPU_US,
                          at_target and not _scaled_down(args),
                          f"{_fmt(value, '.1f')} µs (closed loop)"))
    # The i-th target rate against the i-th rate measured: a scaled-down run still shows its
    # figures, marked not comparable.
    measured = _rates(args)
    for index, (rate, p99_ms) in enumerate(sorted(TARGET_OPEN_P99_MS.items())):
        run_rate = measured[index] if index < len(measured) else None
        opened = runs.get(f"switch_open_{run_rate:.0f}") if run_rate is not None else None
        value = opened["latency_ms"].get("p99") if opened else None
        targets.append(target(f"p99 ≤ {p99_ms:g} ms at an offered {rate:,} tx/s (open loop, "
                              f"from intended send)", value,
                              value is not None and value <= p99_ms, run_rate == rate,
                              f"{_fmt(value, '.2f')} ms at {_fmt(run_rate)} tx/s offered"))
    value = ratios.get("largest_over_smallest_books")
    grown = _pregrown(scale)
    targets.append(target(f"{TARGET_SCALE_ACCOUNTS[1]:,} accounts ≥ {TARGET_SCALE_RATIO}× the "
                          f"throughput at {TARGET_SCALE_ACCOUNTS[0]:,}", value,
                          value is not None and value >= TARGET_SCALE_RATIO,
                          tuple(run["accounts"] for run in scale) == TARGET_SCALE_ACCOUNTS
                          and not grown,
                          (f"{value:.3f}× ({scale[-1]['accounts']:,} vs {scale[0]['accounts']:,}"
                           f" accounts{grown})" if value is not None else "–"),
                          "data files grown first: a diagnostic" if grown else "scaled-down run"))
    idle = runs.get("switch_idle")
    value = idle["rss_held_mib"] * MIB / MB if idle and idle.get("rss_held_mib") else None
    held = idle["connected"] if idle else 0
    targets.append(target(f"{TARGET_IDLE_CONNECTIONS:,} idle connections held in ≤ "
                          f"{TARGET_IDLE_MB:g} MB RSS", value,
                          value is not None and value <= TARGET_IDLE_MB,
                          held >= TARGET_IDLE_CONNECTIONS,
                          f"{_fmt(value, '.0f')} MB with {held:,} held"))
    value = ratios.get("bare_at_the_end_over_its_start")
    targets.append(target(f"the machine held still: the bare trio server at the end within "
                          f"{STEADY_MACHINE_SHARE_MAX:.0%} of its first run (a check of the "
                          f"run itself)", value,
                          value is not None and abs(value - 1) <= STEADY_MACHINE_SHARE_MAX,
                          True, f"{_fmt(value, '.2f')}× ({_fmt(again and again['tx_per_s'])} "
                                f"against {_fmt(bare and bare['tx_per_s'])} tx/s)"))
    others = {name: _others_percent(run) for name, run in runs.items()
              if run.get("system") in SYSTEMS_WE_LOAD}
    busy = {name: share for name, share in others.items()
            if share is not None and share > OTHER_WORK_PERCENT_MAX}
    value = max((share for share in others.values() if share is not None), default=None)
    targets.append(target(f"the machine was otherwise quiet: other programs ≤ "
                          f"{OTHER_WORK_PERCENT_MAX:g}% of a core in every window of our "
                          f"runs (the kernel's own threads, which write back the switch's "
                          f"fsyncs, apart; a check of the run itself)", value, not busy, True,
                          ("; ".join(f"{name}: {share:.0f}%" for name, share in busy.items())
                           if busy else f"at most {_fmt(value, '.0f')}%")))
    closed = _closed_loop_names(runs)
    not_ok = {name: _not_ok(runs[name]) for name in closed if _not_ok(runs[name])}
    value = sum(sum(counts.values()) for counts in not_ok.values()) if closed else None
    targets.append(target("no result code other than ok in closed loop", value, value == 0,
                          True, ("all ok in " + ", ".join(closed) if value == 0 else
                                 "; ".join(f"{name}: {counts}" for name, counts in
                                           not_ok.items()) or "–")))
    audited = {name: run.get("audit") for name, run in runs.items()
               if run.get("system") == "switch"}
    sound = [name for name, audit in audited.items() if audit and audit.get("exit") == 0]
    value = len(audited) - len(sound) if audited else None
    unsound = [f"; {name}: " + (f"exit {audit['exit']}" if audit else "not run")
               for name, audit in audited.items() if name not in sound]
    targets.append(target("audit sound after every run of the switch", value, value == 0, True,
                          f"{len(sound)} of {len(audited)} runs sound" + "".join(unsound)))
    value = headroom["headroom"] if headroom else None
    targets.append(target(f"load client headroom: the client drives ≥ "
                          f"{TARGET_CLIENT_HEADROOM:g}× the fastest server", value,
                          value is not None and value >= TARGET_CLIENT_HEADROOM, at_target,
                          (f"{value:.2f}×: {headroom['client']} client at "
                           f"{headroom['client_cpu_percent']:.0f}% of its core for "
                           f"{headroom['tx_per_s']:,.0f} tx/s ({headroom['run']}) ≈ "
                           f"{headroom['capacity_tx_per_s']:,.0f} tx/s at 100%, against "
                           f"{headroom['fastest_tx_per_s']:,.0f} ({headroom['fastest']}), the "
                           f"other side at {_fmt(headroom['server_cpu_percent'], '.0f')}% of "
                           f"its core; "
                           f"from the fastest server's run {headroom['headroom_from_fastest_run']:.2f}×"
                           if headroom else "–")))
    return {"ratios": ratios, "targets": targets, "postgres_best": pg_best,
            "postgres_same_connections": pg_same, "client_headroom": headroom}


def _rows(args, runs: dict) -> list[dict]:
    """One row per measured figure set, for the console table and RESULTS.md."""
    rows = []

    def add(name, system, mode, run, connections, command):
        latency = run.get("latency_ms") or {}
        rows.append({"name": name, "system": system, "mode": mode, "connections": connections,
                     "tx_per_s": run.get("tx_per_s"), "p50": latency.get("p50"),
                     "p99": latency.get("p99"), "p999": latency.get("p999"),
                     "cpu_us": run.get("server_cpu_us_per_tx"),
                     "load_cpu": run.get("load_cpu_percent"),
                     "others": _others_percent(run), "command": command,
                     "errors": _not_ok(run)})

    for name, system, _ in CLOSED:
        if name in runs:
            run = runs[name]
            add(name, system, f"closed, depth {run['depth']}", run, run["connected"],
                run["command"])
    name, system, _ = CLIENT_CEILING
    if name in runs:
        run = runs[name]
        add(name, system, f"closed, depth {run['depth']}", run, run["connected"], run["command"])
    if "postgres" in runs:
        for run in runs["postgres"].get("runs", []):
            cpu = run.get("cpu") or {}
            load = (cpu["load_cpu_s"] / cpu["elapsed_s"] * 100
                    if cpu.get("elapsed_s") and cpu.get("load_cpu_s") is not None else None)
            add("postgres", "PostgreSQL (pgbench)", "closed, depth 1",
                {**run, "load_cpu_percent": load}, run["clients"], runs["postgres"]["command"])
    for rate in sorted({run["rate"] for name, run in runs.items() if "_open_" in name}):
        for system, shown in OPEN_SYSTEMS:
            name = f"{system}_open_{rate:.0f}"
            if name in runs:
                run = runs[name]
                add(name, shown, f"open, {rate:,.0f}/s offered", run, run["connected"],
                    run["command"])
    for name, run in sorted(((n, r) for n, r in runs.items() if n.startswith("switch_scale_")),
                            key=lambda item: item[1]["accounts"]):
        add(name, f"switch, {run['accounts']:,} accounts (prebuilt)",
            f"closed, depth {run['depth']}", run, run["connected"], run["command"])
    return rows


def _client_bound(row: dict) -> bool:
    return (row["mode"].startswith("closed") and row["name"] != CLIENT_CEILING[0]
            and (row["load_cpu"] or 0) > e2e_load.CLIENT_BOUND_PERCENT)


def print_table(rows: list[dict], summary: dict, runs: dict) -> None:
    header = (f"{'system':<36} {'mode':<22} {'conns':>6} {'tx/s':>9} {'p50 ms':>8} "
              f"{'p99 ms':>8} {'p99.9':>8} {'µs CPU/tx':>9} {'client':>7} {'others':>7}")
    print("\n" + header)
    print("-" * len(header))
    for row in rows:
        print(f"{row['system']:<36} {row['mode']:<22} {row['connections']:>6} "
              f"{_fmt(row['tx_per_s']):>9} {_fmt(row['p50'], '.2f'):>8} "
              f"{_fmt(row['p99'], '.2f'):>8} {_fmt(row['p999'], '.2f'):>8} "
              f"{_fmt(row['cpu_us'], '.1f'):>9} {_fmt(row['load_cpu'], '.0f') + '%':>7} "
              f"{_fmt(row['others'], '.0f') + '%':>7}"
              + ("  client-bound?" if _client_bound(row) else ""))
    idle = runs.get("switch_idle")
    if idle:
        print(f"\nidle: {idle['connected']:,} connections signed on and held: switch RSS "
              f"{_fmt(idle.get('rss_held_mib'), '.1f')} MiB (before: "
              f"{_fmt(idle.get('rss_before_mib'), '.1f')} MiB; "
              f"{_fmt(idle.get('rss_per_connection_kib'), '.1f')} KiB per connection)")
    print("\nratios")
    for name, value in summary["ratios"].items():
        print(f"  {name:<40} {value:.2f}×")
    print("\ntargets (reported, never asserted)")
    for item in summary["targets"]:
        print(f"  {item['target']:<75} {item['shown']:<45} {item['status']}")


# ------------------------------------------------------------------ RESULTS.md
def _machine() -> dict:
    model = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu_model": model, "cpus": os.cpu_count(), "kernel": platform.release(),
            "python": platform.python_version(), "loadavg": os.getloadavg()}


def _client_text(client: str) -> str:
    if client == "c":
        return ("`bench/loadgen/loadgen.c`, started by `bench/e2e_load.py`: one process, one "
                "epoll loop over non-blocking sockets, the wire's framing, HMAC-SHA256 tags "
                "and `seq` in C, every reply's tag checked")
    return ("`bench/e2e_load.py --client python`: one process, one epoll loop over "
            "non-blocking sockets, the switch's own codec")


def write_markdown(path: pathlib.Path, args, top_command: str, runs: dict, rows: list[dict],
                   summary: dict, machine: dict, pngs: list[pathlib.Path], began: float,
                   failures: dict) -> None:
    relative_dir = os.path.relpath(pathlib.Path(args.results_dir).resolve(), path.parent.resolve())
    smoke = _scaled_down(args)
    commands = []

    def ref(command: str) -> str:
        if command not in commands:
            commands.append(command)
        return f"[{commands.index(command) + 1}]"

    lines = ["# End-to-end benchmark results", ""]
    if smoke:
        lines += ["> **SMOKE RUN — not the benchmark's figures.** Scaled down "
                  f"({args.connections:,} connections, {args.seconds:g} s windows, "
                  f"{args.accounts:,} accounts, {args.rates} tx/s offered, "
                  f"{args.idle_connections:,} idle connections) to check that the benchmark "
                  "works, on a machine where other test suites were running (see the "
                  "*others* column: CPU used by other programs during each window). "
                  "Nothing here says anything about the targets; the full run is "
                  "`.venv/bin/python bench/run_e2e.py` on a quiet machine.", ""]
    when = datetime.datetime.fromtimestamp(began).strftime("%Y-%m-%d %H:%M")
    lines += [f"Made by `{top_command}` on {when}, which ran each command listed under "
              f"[Commands](#commands) and wrote `{_relative(pathlib.Path(args.results_dir))}/"
              f"*.json` and the plots.", "",
              f"Machine: {machine['cpus']} × {machine['cpu_model']}, Linux "
              f"{machine['kernel']}, Python {machine['python']}"
              + (f", {runs['postgres']['version']}" if runs.get("postgres") else "")
              + f"; load average at the start {machine['loadavg'][0]:.2f}. "
              f"Servers pinned to CPU {args.server_cpu}, load (our client, pgbench) to CPU "
              f"{args.load_cpu}.", ""]
    if failures:
        lines += ["**Steps that failed:** " + "; ".join(f"{name}: {why}"
                                                        for name, why in failures.items()), ""]

    lines += ["## Against the targets", "",
              "| target | this run | status |", "|---|---|---|"]
    for item in summary["targets"]:
        lines.append(f"| {item['target']} | {item['shown']} | {item['status']} |")
    lines += ["", "## Ratios", "", "| ratio | value | from |", "|---|---|---|"]
    headroom = summary.get("client_headroom") or {}
    sources = {"switch_over_bare": ("switch_closed", "bare_closed"),
               "switch_over_uvloop": ("switch_closed", "uvloop_closed"),
               "bare_over_uvloop": ("bare_closed", "uvloop_closed"),
               "switch_over_postgres_best": ("switch_closed", "postgres"),
               "switch_over_postgres_same_connections": ("switch_closed", "postgres"),
               "bare_over_postgres_best": ("bare_closed", "postgres"),
               "bare_at_the_end_over_its_start": ("bare_closed", "bare_closed_again"),
               "client_capacity_over_fastest_server": (headroom.get("run"),
                                                       headroom.get("fastest"))}
    for name, value in summary["ratios"].items():
        used = sources.get(name) or tuple(n for n in runs if n.startswith("switch_scale_"))
        lines.append(f"| {name.replace('_', ' ')} | {value:.2f}× | "
                     + " ".join(ref(runs[n]["command"]) for n in dict.fromkeys(used)
                                if n in runs) + " |")

    lines += ["", "## Figures", "",
              "Throughput counts the `ok` replies received inside the measured window; latency "
              "is from send (open loop: from the *intended* send) to reply, for requests sent "
              "in the window; *µs CPU/tx* is the server process's utime+stime over the window "
              "divided by the authorizations in it (PostgreSQL: the postmaster and all its "
              "children); *client* is the load generator's CPU, *others* everything else on "
              "the machine but the kernel's own threads (which write back the switch's "
              "fsyncs; counted in by runs that did not measure them), both in % of one "
              "core.", "",
              "| system | mode | connections | tx/s | p50 ms | p99 ms | p99.9 ms | µs CPU/tx "
              "| client | others | not ok | command |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    for row in rows:
        errors = ", ".join(f"{k}: {v}" for k, v in row["errors"].items()) or "0"
        lines.append(f"| {row['system']} | {row['mode']} | {row['connections']:,} | "
                     f"{_fmt(row['tx_per_s'])} | {_fmt(row['p50'], '.2f')} | "
                     f"{_fmt(row['p99'], '.2f')} | {_fmt(row['p999'], '.2f')} | "
                     f"{_fmt(row['cpu_us'], '.1f')} | {_fmt(row['load_cpu'], '.0f')}%"
                     f"{' ⚠' if _client_bound(row) else ''} | "
                     f"{_fmt(row['others'], '.0f')}% | {errors} | {ref(row['command'])} |")
    if any(_client_bound(row) for row in rows):
        lines += ["", f"⚠ the load generator used more than "
                  f"{e2e_load.CLIENT_BOUND_PERCENT:.0f}% of its core in that closed-loop run: "
                  "the client, not the server, may have set its pace."]
    idle = runs.get("switch_idle")
    if idle:
        lines += ["", f"Idle connections {ref(idle['command'])}: {idle['connected']:,} signed "
                  f"on and held {args.hold:g} s, {idle.get('closed_by_server', 0)} closed by the "
                  f"switch meanwhile; switch VmRSS {_fmt(idle.get('rss_before_mib'), '.1f')} MiB "
                  f"before, {_fmt(idle.get('rss_held_mib'), '.1f')} MiB held (max over the hold), "
                  f"≈ {_fmt(idle.get('rss_per_connection_kib'), '.1f')} KiB per connection; "
                  f"VmHWM {_fmt(idle.get('hwm_mib'), '.1f')} MiB."]
    switch = runs.get("switch_closed")
    if switch and switch.get("commit", {}).get("batches"):
        commit = switch["commit"]
        lines += ["", f"Switch group commit {ref(switch['command'])}: "
                  f"{commit['batches']:,.0f} batches, mean {commit['mean_batch']:.1f} requests "
                  f"per batch (median ≤ {commit['median_batch_le']}, p99 ≤ "
                  f"{commit['p99_batch_le']}), mean {_fmt(commit['commit_ms_mean'], '.2f')} ms "
                  f"per LMDB write transaction + fsync; "
                  f"{(switch.get('audit') or {}).get('text', 'audit: not run').splitlines()[0]}."]
    postgres = runs.get("postgres")
    if postgres:
        check = postgres.get("check", {})
        lines += ["", f"PostgreSQL {ref(postgres['command'])}: `{postgres.get('settings', '')}`;"
                  f" books check: {check.get('journal_records', '–')} journal records, "
                  f"{'sound' if check.get('sound') else 'NOT sound'}."]

    lines += ["", "## Plots", ""]
    for png in pngs:
        lines.append(f"![{png.stem}]({relative_dir}/{png.name})")
        lines.append("")
    lines += ["## Commands", "",
              "Run from the repository's root; each is self-contained (starts and stops its own "
              "server on temporary data) and was run by the command above.", ""]
    for index, command in enumerate(commands, 1):
        lines.append(f"{index}. `{command}`")
    lines += ["", "## Method", "",
              "- **Same client, same settings.** The switch and both bare servers are loaded by "
              f"the same client ({_client_text(args.client)}), with the same connections, "
              "depth, seed, card mix and amounts. Closed loop keeps `depth` debits in flight "
              "per connection (1: one tap at a time, as a till). Open loop sends a Poisson "
              "stream at the offered rate over all connections and measures each latency from "
              "the request's intended send time, so a stall cannot hide (coordinated "
              "omission); requests never answered count at the time waited.",
              "- **The switch** (`python -m switch serve`) commits every debit durably (LMDB, "
              "fsync per group commit) before it answers. Accounts, cards and terminals are "
              "provisioned over the wire by the admin credential, except in the accounts-"
              "scaling runs: provisioning a million accounts over the wire is slow, so those "
              "books (both sizes alike) are written offline into the data dir with the "
              "switch's own request code (`dispatch.execute` as the admin, committed 10,000 "
              "accounts per LMDB transaction) before the switch starts (`--prebuild`). Each "
              "switch run ends with `python -m switch audit` of its data dir.",
              "- **The bare trio server** (`bench/bare_server.py`) is the ceiling of the "
              "network path: the same framing, tag checks, msgpack decoding, `seq` checks "
              "and signed replies (the switch's sans-IO codec), on non-blocking sockets under "
              "trio's `wait_readable`/`wait_writable`, every frame of a receive parsed and "
              "the replies coalesced into one send; no state, no disk.",
              "- **The bare asyncio+uvloop server** (`bench/bare_server.py --loop uvloop`) is "
              "a second ceiling, what Python itself can do: the same codec, checks and "
              "replies as an asyncio Protocol on uvloop (libuv), every frame of one "
              "`data_received` answered with one write. The switch is not built on it.",
              "- **The load client's headroom.** In every closed-loop run the client's own "
              "CPU is measured with the server's. Its tx/s divided by the share of its core "
              "it used is what it would send with its whole core at the same cost per "
              "request. The *load client headroom* target compares that with the fastest "
              "server of the whole run, taken from the client's run against its own C "
              "responder (`loadgen --respond`, the \"client\" step: it checks each tag and "
              "seq and answers as the bare server does, for less CPU than the client, so "
              "there the client drives with nearly its whole core; the responder's own share "
              "of its core is shown beside it, since near 100 % it would set the pace), or, "
              "without that run, from the "
              "run of the fastest server it loaded (at about half its core, which overstates "
              "its cost per request a little). The responder is an instrument, not a server "
              "compared.",
              "- **PostgreSQL** is Debian's package, started by the benchmark on 127.0.0.1 "
              "with fsync=on and synchronous_commit=on (Debian's defaults otherwise; "
              "max_connections is raised to the largest client count + 10), the "
              "debit as `UPDATE accounts … WHERE id = :id AND balance >= :amount RETURNING "
              "balance` plus a journal `INSERT` in one transaction. Our client cannot speak "
              "SQL, so PostgreSQL is driven by **pgbench** (`-M prepared -j 2`, pinned to the "
              "load CPU) at the same connection count as the others and at smaller counts; "
              "its best count is the one compared. Its throughput and latency are read from "
              "pgbench's per-transaction log over the same window.",
              "- **Pinning and CPU.** Every server runs on one CPU and every load generator "
              "on the other (`taskset`). CPU per authorization is read from /proc/PID/stat "
              "(utime+stime, all threads) at the window's start and end.",
              "- **A steady machine.** The bare trio server runs again as the last step "
              "(`bare_closed_again`): a run whose two bare figures differ by more than "
              f"{STEADY_MACHINE_SHARE_MAX:.0%} met a machine that changed speed under it, and "
              "its ratios compare figures made at different speeds.",
              "- **Idle connections.** The client signs on N connections (hello, direction "
              "keys) and holds them without traffic; the switch's VmRSS is read from "
              "/proc/PID/status every 0.5 s and the largest value reported.", ""]
    path.write_text("\n".join(lines))


# ------------------------------------------------------------------ main
def _stop_on_sigterm(signum, frame):
    raise SystemExit(128 + signum)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parser().parse_args(argv)
    _settings(args)
    if args.seed is None:
        args.seed = int.from_bytes(os.urandom(4), "big")
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    e2e_load._raise_file_limit()
    if not args.no_pin and e2e_load._cpu_count() >= 2:
        e2e_load._pin_self(args.load_cpu)   # keep even this process off the server's CPU
    results_dir = pathlib.Path(args.results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    if args.report_only:
        previous = json.loads((results_dir / "summary.json").read_text())
        for name, value in previous["settings"].items():
            if name not in ("report_only", "results_dir", "results_md"):
                setattr(args, name, value)
        top_command, began = previous["command"], previous["started_at"]
        machine, failures = previous["machine"], previous["failures"]
        names = [name for name, _, _ in plan(args, results_dir)]
    else:
        top_command = shlex.join([e2e_load.shown_path(sys.executable), "bench/run_e2e.py", *argv])
        began = time.time()
        machine = _machine()
        planned = plan(args, results_dir)
        names = [name for name, _, _ in planned]
        for stale in results_dir.glob("*.json"):
            if stale.stem in names or stale.stem == "summary":
                stale.unlink()
        print(f"{top_command}\n{len(planned)} steps: {', '.join(names)}; seed {args.seed}",
              flush=True)
        failures = {}
        for name, command, timeout_s in planned:
            try:
                code = run_step(command, timeout_s)
                if code != 0:
                    failures[name] = f"exit {code}"
            except StepFailed as error:
                failures[name] = str(error)
            if not (results_dir / f"{name}.json").exists():
                failures.setdefault(name, "no results written")
    runs = {name: json.loads((results_dir / f"{name}.json").read_text())
            for name in names if (results_dir / f"{name}.json").exists()}
    summary = summarize(args, runs)
    rows = _rows(args, runs)
    print_table(rows, summary, runs)
    import plots
    pngs = plots.plot_all(results_dir, runs)
    if not args.report_only:
        machine["loadavg_end"] = os.getloadavg()
    (results_dir / "summary.json").write_text(json.dumps(
        {"command": top_command, "started_at": began, "machine": machine,
         "settings": _shown_settings(args), "failures": failures,
         "rows": rows, **summary}, indent=1))
    markdown = pathlib.Path(args.results_md)
    write_markdown(markdown, args, top_command, runs, rows, summary, machine, pngs, began,
                   failures)
    print(f"\nwrote {_relative(markdown)}, {_relative(results_dir)}/*.json and "
          + ", ".join(png.name for png in pngs))
    if failures:
        print("failed: " + "; ".join(f"{name}: {why}" for name, why in failures.items()))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
