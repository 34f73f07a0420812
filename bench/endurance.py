"""Crash endurance: many SIGKILL/restart cycles under mixed load, each checked.

Each cycle is the terminal simulator's outage scenario on a fresh data dir: tills,
QR payers, showers (hold/complete/void), meters and recharges at a fixed offered
rate; the switch is killed with SIGKILL mid-load while terminals keep taking taps
offline; it restarts, every terminal reconnects and uploads its queue, requests
that were in flight at the kill are resent with their ids; then the simulator's
ledger of acknowledged replies is checked against every balance and `audit` runs.

    .venv/bin/python bench/endurance.py --cycles 20            # the release run
    .venv/bin/python bench/endurance.py --cycles 2 --quick     # a smoke run

The suite runs the short versions: tests/e2e/test_crash.py (3 SIGKILL rounds on one
data dir) and tests/sim (the outage scenario).
"""

import argparse
import json
import pathlib
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
SIMULATOR = REPO / "terminals-sim" / "simulate.py"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=20)
    parser.add_argument("--terminals", type=int, default=300)
    parser.add_argument("--students", type=int, default=1000)
    parser.add_argument("--seconds", type=int, default=12)
    parser.add_argument("--rate", type=int, default=800)
    parser.add_argument("--quick", action="store_true", help="small cycles for a smoke run")
    parser.add_argument("--report-json", help="write the totals here")
    args = parser.parse_args(argv)
    if args.quick:
        args.terminals, args.students, args.seconds, args.rate = 60, 300, 6, 400
    totals = {"cycles": 0, "passed": 0, "replies": 0, "offline_records": 0,
              "in_flight_at_kill": 0, "money_mismatches": 0, "audits_sound": 0,
              "nothing_lost": 0, "seconds": 0.0}
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="endurance-") as work:
        for cycle in range(1, args.cycles + 1):
            report_path = pathlib.Path(work) / f"cycle-{cycle}.json"
            command = [sys.executable, str(SIMULATOR), "--spawn", "--scenario", "outage",
                       "--terminals", str(args.terminals), "--students", str(args.students),
                       "--seconds", str(args.seconds), "--mode", "open", "--rate", str(args.rate),
                       "--seed", str(cycle), "--quiet", "--report-json", str(report_path)]
            result = subprocess.run(command, capture_output=True, text=True,
                                    timeout=args.seconds + 600)
            report = json.loads(report_path.read_text()) if report_path.exists() else {}
            outage = {key: value for key, value in report.get("outage", {}).items()
                      if value is not None}
            totals["cycles"] += 1
            totals["passed"] += int(result.returncode == 0 and bool(report.get("ok")))
            totals["replies"] += report.get("replies_total") or 0
            totals["offline_records"] += outage.get("offline_records_uploaded", 0)
            totals["in_flight_at_kill"] += outage.get("uncertain", 0)
            totals["money_mismatches"] += report.get("money_check", {}).get("mismatches", 1)
            totals["audits_sound"] += int(report.get("audit", {}).get("sound", False))
            totals["nothing_lost"] += int(bool(outage.get("nothing_lost")))
            print(f"cycle {cycle:3}: exit {result.returncode}, {report.get('replies_total', 0)} "
                  f"replies, killed at {outage.get('kill_at_s', 0):.1f} s, "
                  f"{outage.get('offline_records_uploaded', 0)} offline records, "
                  f"{outage.get('uncertain', 0)} in flight at the kill, drain "
                  f"{outage.get('drain_s', 0):.2f} s, money mismatches "
                  f"{report.get('money_check', {}).get('mismatches', '?')}, audit "
                  f"{'sound' if report.get('audit', {}).get('sound') else 'NOT SOUND'}",
                  flush=True)
            if result.returncode != 0:
                print(result.stdout[-3000:], result.stderr[-3000:], sep="\n")
    totals["seconds"] = round(time.monotonic() - started, 1)
    print(json.dumps(totals))
    if args.report_json:
        pathlib.Path(args.report_json).write_text(json.dumps(totals, indent=2))
    ok = totals["passed"] == totals["cycles"] and totals["money_mismatches"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
