"""`make demo`: a switch on a temporary data dir and a scripted lunch queue over TCP.

Everything goes through the wire protocol, the way a card office and canteen
tills would: the admin key provisions students, cards and tills; a recharge
service tops up; tills tap cards; at the end the switch is stopped with SIGTERM
and the books are audited.
"""

import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

import trio

from switch.audit import audit
from switch.client import Client
from switch.datadir import read_admin_key

rush_taps_per_till = 40
ready_timeout_s = 15


def yuan(fen: int) -> str:
    return f"{fen / 100:.2f}"


class Demo:
    def __init__(self, port: int, data: str):
        self.port = port
        self.data = data
        self.keys: dict[str, bytes] = {}
        self.counter = 0

    def next_id(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}-{self.counter:06d}"

    async def connect(self, who: str) -> Client:
        return await Client.connect("127.0.0.1", self.port, who, self.keys[who])

    async def provision(self, admin: Client) -> list:
        print("== Card office: terminals, students, cards, recharges")
        for who, school in (("WH-CANTEEN-1", "WH"), ("WH-CANTEEN-2", "WH"), ("WH-CANTEEN-3", "WH"),
                            ("CUIK-CANTEEN-1", "CUIK")):
            reply = await admin.request({"t": "add_credential", "who": who, "role": "terminal",
                                         "school": school, "kind": "pos", "id": f"add-{who}"})
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
        print(f"   4 tills, 1 recharge service, {len(students)} students with cards "
              f"(18 WH, 6 CUIK), 200.00 yuan each but {students[0][0]} (empty)")
        return students

    async def scripted_queue(self, students) -> None:
        print("\n== 12:00 lunch queue at WH-CANTEEN-1 (every reply is fsync'd before it is sent)")
        till = await self.connect("WH-CANTEEN-1")
        wechat = await self.connect("wechat-pay")
        admin = await Client.connect("127.0.0.1", self.port, "admin", read_admin_key(self.data))
        (broke, broke_card, _, _), (a, card_a, pin_a, _), (b, card_b, _, _) = students[:3]
        cuik_card = students[-1][1]

        async def tap(card, amount, note, pin=None, request_id=None):
            message = {"t": "debit", "card": card, "amount": amount,
                       "id": request_id or self.next_id("T1")}
            if pin:
                message["pin"] = pin
            reply = await till.request(message)
            detail = (f"balance {yuan(reply['balance'])} txn {reply['txn']}"
                      if reply["code"] == "ok" else "")
            replay = " (replay)" if reply.get("replay") else ""
            print(f"   tap {card} {yuan(amount):>6} yuan  -> {reply['code']}{replay} {detail}"
                  f"   # {note}")
            return reply

        await tap(card_a, 1250, "rice and two dishes")
        await tap(card_b, 800, "noodles")
        await tap(card_a, 6800, "a big order above 50 yuan, no PIN")
        await tap(card_a, 6800, "same order, wrong PIN", pin="000001")
        await tap(card_a, 6800, "same order, PIN = last six of the ID card", pin=pin_a)
        await tap(broke_card, 1000, "a student who has not recharged")
        notice = {"t": "credit", "account": broke, "amount": 5000, "source": "wechat",
                  "id": "wx-4200001234202611220001"}
        first = await wechat.request(notice)
        retry = await wechat.request(notice)
        print(f"   WeChat Pay notifies a 50.00 yuan recharge -> {first['code']} txn {first['txn']};"
              f" its retry -> replay={retry.get('replay')} txn {retry['txn']} (paid once)")
        await tap(broke_card, 1000, "tries again after recharging")
        lost_reply = await admin.request({"t": "lost", "card": card_b, "id": "lost-1"})
        print(f"   {b} reports card {card_b} lost in the mini-program -> {lost_reply['code']}, "
              f"blacklist version {lost_reply['blacklist']}")
        await tap(card_b, 500, "someone else taps the lost card")
        await tap(cuik_card, 500, "a 昆明传媒学院 card at a 文华学院 till")
        await tap("DEADBEEF", 500, "a card the switch has never issued")
        lost_id = self.next_id("T1")
        await tap(card_a, 300, "a tap whose reply the till never got...", request_id=lost_id)
        await tap(card_a, 300, "...so the till resends the same id", request_id=lost_id)
        await till.aclose()
        await wechat.aclose()
        await admin.aclose()

    async def rush(self, students) -> None:
        print(f"\n== Rush: 4 tills, {rush_taps_per_till} taps each, concurrently")
        counts: dict[str, int] = {}
        latencies: list[float] = []
        rng = random.Random(7)
        payers = [s for s in students[3:]]

        async def till(who, school):
            client = await self.connect(who)
            local = [s for s in payers if s[3] == school]
            for _ in range(rush_taps_per_till):
                _, card, _, _ = rng.choice(local)
                started = time.perf_counter()
                reply = await client.request({"t": "debit", "card": card,
                                              "amount": rng.randrange(300, 2500),
                                              "id": self.next_id(who)})
                latencies.append(time.perf_counter() - started)
                counts[reply["code"]] = counts.get(reply["code"], 0) + 1
            await client.aclose()

        started = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for who in ("WH-CANTEEN-1", "WH-CANTEEN-2", "WH-CANTEEN-3"):
                nursery.start_soon(till, who, "WH")
            nursery.start_soon(till, "CUIK-CANTEEN-1", "CUIK")
        elapsed = time.perf_counter() - started
        latencies.sort()
        print(f"   {len(latencies)} taps in {elapsed:.2f} s; results {counts}; latency p50 "
              f"{latencies[len(latencies) // 2] * 1000:.1f} ms, max {latencies[-1] * 1000:.1f} ms"
              f" (one tap at a time per till, each waiting for its fsync)")


def _start_switch(data: str):
    process = subprocess.Popen(
        [sys.executable, "-m", "switch", "serve", "--data", data, "--listen", "127.0.0.1:0",
         "--metrics", "127.0.0.1:0", "--log-level", "WARNING"],
        stdout=subprocess.PIPE, text=True)
    ports = {}
    deadline = time.monotonic() + ready_timeout_s
    while len(ports) < 2 and time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        word, _, address = line.strip().partition(" on ")
        ports[word] = int(address.rpartition(":")[2])
    if len(ports) < 2:
        process.kill()
        raise RuntimeError("the switch did not become ready")
    return process, ports["listening"], ports["metrics"]


def run_demo(data: str | None = None) -> int:
    temporary = None
    if data is None:
        temporary = tempfile.TemporaryDirectory(prefix="switch-demo-")
        data = os.path.join(temporary.name, "data")
    print(f"Starting the switch on data dir {data}")
    process, port, metrics_port = _start_switch(data)
    try:
        demo = Demo(port, data)

        async def script():
            admin = await Client.connect("127.0.0.1", port, "admin", read_admin_key(data))
            students = await demo.provision(admin)
            await admin.aclose()
            await demo.scripted_queue(students)
            await demo.rush(students)

        trio.run(script)
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
            text = r.read().decode()
        print(f"\n== Metrics (http://127.0.0.1:{metrics_port}/metrics), a few lines:")
        for line in text.splitlines():
            if (line.startswith("switch_requests_total{") and 'type="debit"' in line) or \
                    line.startswith(("switch_journal_txn", "switch_commit_batch_size_count",
                                     "switch_commit_batch_size_sum")):
                print("  ", line)
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=30)
    print(f"\n== Switch stopped with SIGTERM (exit {code}); audit of {data}:")
    report = audit(data)
    print("   " + report.summary().replace("\n", "\n   "))
    if temporary is not None:
        temporary.cleanup()
    return 0 if report.sound and code == 0 else 1
