"""`make demo`: a switch on a temporary data dir and a scripted lunch queue over TCP.

Everything goes through the wire protocol, the way a card office and canteen
tills would: the admin key provisions students, cards and tills; a recharge
service tops up; tills tap cards; at the end the switch is stopped with SIGTERM
and the books are audited.
"""

import json
import os
import pathlib
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass

import trio

from switch import limits
from switch.persistence.audit import audit
from switch.shell.client import Client
from switch.cli.datadir import read_admin_key
from switch.config.keyfile import write_key_file_atomically

ready_timeout_s = 15


def yuan(fen: int) -> str:
    return f"{fen / 100:.2f}"


class Transcript:
    """What the demo says: printed as it goes, and kept for `report.txt`."""

    def __init__(self):
        self.lines: list[str] = []

    def say(self, text: str = "") -> None:
        print(text, flush=True)
        self.lines.append(text)

    def save(self, path: pathlib.Path) -> None:
        path.write_text("\n".join(self.lines) + "\n", encoding="utf-8")


class Demo:
    def __init__(self, port: int, data: str, say=print):
        self.port = port
        self.data = data
        self.say = say
        self.keys: dict[str, bytes] = {}
        self.counter = 0

    def next_id(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}-{self.counter:06d}"

    async def connect(self, who: str) -> Client:
        return await Client.connect("127.0.0.1", self.port, who, self.keys[who])

    async def provision(self, admin: Client) -> list:
        self.say("== Card office: terminals, students, cards, recharges")
        for who, school in (("WH-CANTEEN-1", "WH"), ("WH-CANTEEN-2", "WH"), ("WH-CANTEEN-3", "WH"),
                            ("CUIK-CANTEEN-1", "CUIK"), ("WH-MEALS-1", "WH")):
            message = {"t": "add_credential", "who": who, "role": "terminal", "school": school,
                       "kind": "pos", "id": f"add-{who}"}
            if who == "WH-MEALS-1":
                message["meals"] = True     # a canteen till: meal caps apply
            reply = await admin.request(message)
            self.keys[who] = reply["key"]
        reply = await admin.request({"t": "add_credential", "who": "wechat-pay", "role": "service",
                                     "id": "add-wechat-pay"})
        self.keys["wechat-pay"] = reply["key"]
        students = []
        rng = random.Random(2026)
        for n in range(1, 25):
            school = "WH" if n <= 18 else "CUIK"
            account = f"{school}2023{n:04d}"
            card = f"04{n:02X}B2C3D4"
            id_last6 = f"{rng.randrange(10**5):05d}" + rng.choice("0123456789X")
            await admin.request({"t": "open_account", "account": account, "school": school,
                                 "kind": "person", "holder": f"学生{n}", "id_last6": id_last6,
                                 "id": f"open-{account}"})
            await admin.request({"t": "issue_card", "account": account, "card": card,
                                 "id": f"card-{card}"})
            students.append((account, card, id_last6.replace("X", "0"), school))
        wechat = await self.connect("wechat-pay")
        for account, _, _, _ in students[1:]:
            await wechat.request({"t": "credit", "account": account, "amount": 20_000,
                                  "source": "wechat", "id": f"wx-{account}"})
        await wechat.aclose()
        self.say(f"   5 tills (one a canteen till with meal caps), 1 recharge service, "
              f"{len(students)} students with cards "
              f"(18 WH, 6 CUIK), 200.00 yuan each but {students[0][0]} (empty)")
        return students

    async def scripted_queue(self, students) -> None:
        self.say("\n== 12:00 lunch queue at WH-CANTEEN-1 (every reply is fsync'd before it is sent)")
        till = await self.connect("WH-CANTEEN-1")
        wechat = await self.connect("wechat-pay")
        admin = await Client.connect("127.0.0.1", self.port, "admin", read_admin_key(self.data))
        (broke, broke_card, _, _), (a, card_a, pin_a, _), (b, card_b, _, _) = students[:3]
        cuik_card = students[-1][1]

        async def tap(card, amount, note, pin=None, request_id=None, **more):
            message = {"t": "debit", "card": card, "amount": amount,
                       "id": request_id or self.next_id("T1"), **more}
            if pin:
                message["pin"] = pin
            reply = await till.request(message)
            subsidy = f" subsidy {yuan(reply['subsidy'])}" if reply.get("subsidy") else ""
            detail = (f"balance {yuan(reply['balance'])}{subsidy} txn {reply['txn']}"
                      if reply["code"] == "ok" else "")
            replay = " (replay)" if reply.get("replay") else ""
            self.say(f"   tap {card} {yuan(amount):>6} yuan  -> {reply['code']}{replay} {detail}"
                  f"   # {note}")
            return reply

        await tap(card_a, 1250, "rice and two dishes")
        await tap(card_b, 800, "noodles")
        await tap(card_b, 800, "the same card taps again at once: the double-tap guard")
        await tap(card_b, 800, "the cashier confirms a second bowl", confirm=True)
        granted = await admin.request({"t": "subsidy", "account": a, "amount": 1000,
                                       "expires": "2099-12-31", "batch": "demo meal subsidy",
                                       "id": "subsidy-demo-1"})
        print(f"   the school credits {a} a 10.00 yuan meal subsidy (补助) -> {granted['code']}, "
              f"balance {yuan(granted['balance'])} subsidy {yuan(granted['subsidy'])}")
        await tap(card_a, 600, "a subsidised student: the subsidy pays first")
        await tap(card_a, 700, "the last 4.00 of the subsidy, then 3.00 of her own")
        await tap(card_a, 6800, "a big order above 50 yuan, no PIN")
        await tap(card_a, 6800, "same order, wrong PIN", pin="000001")
        await tap(card_a, 6800, "same order, PIN = last six of the ID card", pin=pin_a)
        await tap(broke_card, 1000, "a student who has not recharged")
        notice = {"t": "credit", "account": broke, "amount": 5000, "source": "wechat",
                  "id": "wx-4200001234202611220001"}
        first = await wechat.request(notice)
        retry = await wechat.request(notice)
        self.say(f"   WeChat Pay notifies a 50.00 yuan recharge -> {first['code']} txn {first['txn']};"
              f" its retry -> replay={retry.get('replay')} txn {retry['txn']} (paid once)")
        await tap(broke_card, 1000, "tries again after recharging")
        lost_reply = await admin.request({"t": "lost", "card": card_b, "id": "lost-1"})
        self.say(f"   {b} reports card {card_b} lost in the mini-program -> {lost_reply['code']}, "
              f"blacklist version {lost_reply['blacklist']}")
        await tap(card_b, 500, "someone else taps the lost card")
        await tap(cuik_card, 500, "a 昆明传媒学院 card at a 文华学院 till")
        await tap("DEADBEEF", 500, "a card the switch has never issued")
        lost_id = self.next_id("T1")
        await tap(card_a, 300, "a tap whose reply the till never got...", request_id=lost_id)
        await tap(card_a, 300, "...so the till resends the same id", request_id=lost_id)
        await till.aclose()
        canteen = await self.connect("WH-MEALS-1")
        for n, (amount, note) in enumerate(((500, "first meal of the period"),
                                            (450, "second meal"),
                                            (400, "a third: past the period's 2 payments"))):
            reply = await canteen.request({"t": "debit", "card": card_a, "amount": amount,
                                           "id": f"meal-{n}"})
            print(f"   canteen till (meal caps): tap {card_a} {yuan(amount):>6} yuan  -> "
                  f"{reply['code']}   # {note}")
        await canteen.aclose()
        await wechat.aclose()
        await admin.aclose()


REPO = pathlib.Path(__file__).resolve().parents[2]
SIMULATOR = REPO / "terminals-sim" / "simulate.py"
forward_drain_timeout_s = 60


@dataclass(frozen=True)
class Rush:
    """The compressed lunch rush the simulator plays."""
    seconds: int = 60
    terminals: int = 2000
    students: int = 3000
    rate_per_s: int = 800       # the average; the lunch curve peaks near twice this


def _start(command: list, lines: int, log_path) -> tuple[subprocess.Popen, list[int]]:
    """Start a process that prints `… on HOST:PORT` lines when ready; return it and the ports."""
    log = open(log_path, "wb")
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True)
    ports = []
    deadline = time.monotonic() + ready_timeout_s
    while len(ports) < lines and time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        ports.append(int(line.strip().rpartition(":")[2]))
    if len(ports) < lines:
        process.kill()
        raise RuntimeError(f"{command[2:4]} did not become ready; see {log_path}")
    return process, ports


def _stop(process: subprocess.Popen) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


def _metric(text: str, name: str) -> list[float]:
    return [float(line.rpartition(" ")[2]) for line in text.splitlines()
            if line.startswith(name) and not line.startswith("#")]


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.read().decode()


# Every campus rule on (docs/PROTOCOL.md §4.6 rules 2a, 2b): the demo's switch, and the
# simulator's test run with all rules switched on.
CAMPUS_RULES_CONFIG = """[schools.WH]
name = "云南艺术学院文华学院"
repeat_tap_window_s = 3     # the double-tap guard (防重复刷卡)

# A meal period (餐次) for the canteen till added with `meals`: the whole day, so the demo
# shows it whenever it runs; a school would have breakfast, lunch and dinner.
[[schools.WH.meals]]
name = "demo day"
start = "00:00"
end = "23:59"
taps_max = 2
fen_max = 3000

[schools.CUIK]
name = "昆明传媒学院"
split_buildings = ["9"]
repeat_tap_window_s = 3
"""


def _write_config(path: pathlib.Path, billing_port: int, utility_port: int, keys: dict) -> None:
    # 0600 before a byte is in it: it holds the receivers' keys inline (key_hex).
    path.touch(mode=0o600)
    os.chmod(path, 0o600)
    path.write_text("# written by `make demo`\n" + CAMPUS_RULES_CONFIG + f"""
[[destinations]]
name = "billing"
address = "127.0.0.1:{billing_port}"
credential = "switch-billing"
key_hex = "{keys['billing'].hex()}"
kinds = ["debit", "qr_debit", "complete", "offline", "reverse"]

[[destinations]]
name = "utility"
address = "127.0.0.1:{utility_port}"
credential = "switch-utility"
key_hex = "{keys['utility'].hex()}"
kinds = ["credit", "meter", "cutoff", "restore", "refund"]
""")


def plotted_seconds(series: list) -> list:
    """The per-second points worth drawing: the first and the last second are partial (the
    load starts and the drain ends inside them) and would read as dips."""
    return series[1:-1]


THROUGHPUT_NOTE = ("offered counts arrivals (a tap, a shower, a meter reading, a recharge); a "
                   "shower is two requests,\nhold then complete, so replies per second run above "
                   "the taps offered")


def _figures(report: dict) -> list:
    """(file name, figure) of each plot; the legend sits beside the axes, off the curves."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = plotted_seconds(report.get("per_second") or [])
    if not series:
        return []
    seconds = [point["t"] for point in series]
    figures = []
    figure, axis = plt.subplots(figsize=(11, 4.6))
    axis.plot(seconds, [p["replies"] for p in series], label="replies/s")
    axis.plot(seconds, [p["offered"] for p in series], "--", label="offered arrivals/s")
    axis.set_xlabel("second of the rush")
    axis.set_ylabel("per second")
    axis.set_title("Lunch rush: throughput")
    axis.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    figure.text(0.01, 0.01, THROUGHPUT_NOTE, fontsize=8, va="bottom")
    figure.tight_layout(rect=(0, 0.1, 1, 1))
    figures.append(("rush-throughput.png", figure))
    figure, axis = plt.subplots(figsize=(11, 4.6))
    axis.plot(seconds, [p["p50_ms"] for p in series], label="p50")
    axis.plot(seconds, [p["p99_ms"] for p in series], label="p99")
    axis.plot(seconds, [p["max_ms"] for p in series], label="max", alpha=0.5)
    axis.axhline(limits.p99_latency_target_ms, color="red", linestyle=":",
                 label=f"target: p99 ≤ {limits.p99_latency_target_ms:g} ms\n(at 10,000 tx/s offered)")
    axis.set_yscale("log")
    axis.set_xlabel("second of the rush")
    axis.set_ylabel("latency, ms (from the intended send)")
    axis.set_title("Lunch rush: latency per second")
    axis.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    figure.tight_layout()
    figures.append(("rush-latency.png", figure))
    return figures


def _plots(report: dict, out: pathlib.Path) -> list[pathlib.Path]:
    try:
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    made = []
    for name, figure in _figures(report):
        made.append(out / name)
        figure.savefig(made[-1], dpi=100)
    plt.close("all")
    return made


def _journal_sales_fen(data: str) -> int:
    """What the billing receiver must total: sales less their reversals, from the journal."""
    from switch.persistence.audit import journal_records
    return -sum(record["amount"] for record in journal_records(data)
                if record["kind"] in ("debit", "qr_debit", "complete", "offline", "reverse"))


def _audit_line(report_audit, money: dict, scripted_accounts: int) -> str:
    """The audit after SIGTERM, with its accounts accounted for: the money check covers the
    simulator's own accounts, the audit every account of the data dir."""
    head = report_audit.summary().replace("\n", "\n   ")
    checked = money.get("accounts", 0)
    rest = report_audit.accounts - checked - scripted_accounts
    return (f"== Audit after SIGTERM:\n   {head}\n   its {report_audit.accounts} accounts are the "
            f"{checked} of the money check (the simulator's) and the {scripted_accounts} "
            f"students of the scripted queue" + (f", and {rest} not explained" if rest else ""))


def _simulate(say, port: int, data: str, switch_pid: int, rush: Rush,
              report_path: pathlib.Path) -> int:
    """Run the simulator against our switch; its report goes into the transcript, its live
    progress line to stderr only."""
    process = subprocess.Popen(
        [sys.executable, str(SIMULATOR), "--connect", f"127.0.0.1:{port}", "--data", data,
         "--switch-pid", str(switch_pid), "--no-audit",
         "--terminals", str(rush.terminals), "--students", str(rush.students),
         "--seconds", str(rush.seconds), "--mode", "open", "--rate", str(rush.rate_per_s),
         "--progress", "--report-json", str(report_path)],
        stdout=subprocess.PIPE, text=True, encoding="utf-8")
    try:
        for line in process.stdout:
            say(line.rstrip("\n"))
        return process.wait(timeout=rush.seconds + 600)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def run_demo(data: str | None = None, out: pathlib.Path | None = None,
             rush: Rush = Rush()) -> int:
    out = out or REPO / "demo-output"
    out.mkdir(exist_ok=True)
    transcript = Transcript()
    say = transcript.say
    temporary = tempfile.TemporaryDirectory(prefix="switch-demo-")
    work = pathlib.Path(temporary.name)
    data = data or str(work / "data")
    keys = {"billing": os.urandom(32), "utility": os.urandom(32)}
    processes = []
    students = []
    report = {}
    simulated = 1
    try:
        for name, credential in (("billing", "switch-billing"), ("utility", "switch-utility")):
            write_key_file_atomically(str(work / f"{name}.key"), keys[name])
        billing, (billing_port,) = _start(
            [sys.executable, "-m", "switch.receivers.billing", "--listen", "127.0.0.1:0",
             "--state", str(work / "billing"), "--credential", "switch-billing",
             "--key-file", str(work / "billing.key")], 1, out / "billing.log")
        processes.append(billing)
        utility, (utility_port,) = _start(
            [sys.executable, "-m", "switch.receivers.utility", "--listen", "127.0.0.1:0",
             "--state", str(work / "utility"), "--credential", "switch-utility",
             "--key-file", str(work / "utility.key")], 1, out / "utility.log")
        processes.append(utility)
        _write_config(work / "switch.toml", billing_port, utility_port, keys)
        say(f"Reference receivers: billing on 127.0.0.1:{billing_port}, utility control on "
            f"127.0.0.1:{utility_port}")
        switch, (port, metrics_port) = _start(
            [sys.executable, "-m", "switch", "serve", "--init", "--data", data, "--listen", "127.0.0.1:0",
             "--metrics", "127.0.0.1:0", "--config", str(work / "switch.toml"),
             "--log-level", "WARNING"], 2, out / "switch.log")
        processes.insert(0, switch)
        say(f"Switch on 127.0.0.1:{port} (data {data}), metrics on "
            f"http://127.0.0.1:{metrics_port}/metrics\n")

        demo = Demo(port, data, say)

        async def script():
            admin = await Client.connect("127.0.0.1", port, "admin", read_admin_key(data))
            students.extend(await demo.provision(admin))
            await admin.aclose()
            await demo.scripted_queue(students)

        trio.run(script)

        say(f"\n== The lunch rush, compressed: {rush.terminals} terminals (tills, showers, "
            f"meters), {rush.students} students, {rush.seconds} s, about {rush.rate_per_s} "
            f"requests/s on average with the 12:00 peak near twice that")
        report_path = out / "rush-report.json"
        report_path.unlink(missing_ok=True)
        simulated = _simulate(say, port, data, switch.pid, rush, report_path)
        report = json.loads(report_path.read_text()) if report_path.exists() else {}

        deadline = time.monotonic() + forward_drain_timeout_s
        while time.monotonic() < deadline:
            text = _scrape(metrics_port)
            if all(value == 0 for value in _metric(text, "switch_forward_lag_records")):
                break
            time.sleep(0.5)
        (out / "metrics.txt").write_text(text)
        lag = _metric(text, "switch_forward_lag_records")
        say(f"\n== Forwarding: billing and utility control are {int(max(lag or [0]))} records "
            f"behind the journal")
        plots = _plots(report, out)
    finally:
        codes = [_stop(process) for process in processes]
    say(f"== Stopped the switch and the receivers (exit codes {codes})")
    report_audit = audit(data)
    say(_audit_line(report_audit, report.get("money_check") or {}, len(students)))
    sales = _journal_sales_fen(data)
    csv_path = work / "billing" / "settlement.csv"
    billed = 0
    if csv_path.exists():
        import csv
        with open(csv_path) as handle:
            billed = sum(int(row["total_fen"]) for row in csv.DictReader(handle))
        shutil.copy(csv_path, out / "settlement.csv")
    rooms_path = work / "utility" / "rooms.csv"
    if rooms_path.exists():
        shutil.copy(rooms_path, out / "rooms.csv")
    say(f"== Billing receiver's settlement totals {yuan(billed)} yuan; the journal's sales less "
        f"reversals {yuan(sales)} yuan: {'equal' if billed == sales else 'DIFFERENT'}")
    say(f"\nKept in {out}: report.txt (this text), rush-report.json, metrics.txt (the last "
        f"scrape), settlement.csv, rooms.csv, logs"
        + (", " + ", ".join(p.name for p in plots) if plots else
           " (no plots: matplotlib is not installed)"))
    temporary.cleanup()
    passed = (simulated == 0 and report_audit.sound and billed == sales
              and all(code == 0 for code in codes))
    say("Demo " + ("passed." if passed else "FAILED."))
    transcript.save(out / "report.txt")
    return 0 if passed else 1
