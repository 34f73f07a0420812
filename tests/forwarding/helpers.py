"""Shared by the forwarding tests: receiver processes, free ports, and what the receivers
should hold, computed straight from the journal (not with the receivers' code)."""

import csv
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
from collections import defaultdict
from datetime import datetime
from zoneinfo import ZoneInfo

import lmdb
import msgpack
import trio

from switch.config.destinations import Destination

from tests.paths import REPO_ROOT as REPO
from tests.key_files import write_private
START_TIMEOUT_S = 20.0
EXIT_TIMEOUT_S = 10.0
CATCH_UP_TIMEOUT_S = 30.0
ZONE = ZoneInfo("Asia/Shanghai")

BILLING_KINDS = frozenset({"debit", "qr_debit", "complete", "offline", "reverse"})
UTILITY_KINDS = frozenset({"credit", "meter", "cutoff", "restore", "refund"})


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def write_key(path: pathlib.Path, key: bytes) -> pathlib.Path:
    write_private(path, key.hex() + "\n")
    path.chmod(0o600)
    return path


def destination(name, port, who, key, kinds) -> Destination:
    return Destination(name, "127.0.0.1", port, who, key,
                       None if kinds is None else frozenset(kinds))


class ReceiverProcess:
    """`python -m switch.receivers.<module>` on one state dir; kills whatever it started."""

    def __init__(self, module: str, base: pathlib.Path, who: str, key: bytes):
        self.module = module
        self.base = base
        self.state_dir = base / f"{module}-state"
        self.who = who
        self.key_path = write_key(base / f"{module}.key", key)
        self.processes: list[subprocess.Popen] = []
        self.current = None
        self.port = None

    async def start(self, port: int = 0) -> int:
        number = len(self.processes) + 1
        out = self.base / f"{self.module}-{number}.out"
        err = self.base / f"{self.module}-{number}.err"
        with open(out, "wb") as stdout, open(err, "wb") as stderr:
            process = subprocess.Popen(
                [sys.executable, "-m", f"switch.receivers.{self.module}",
                 "--listen", f"127.0.0.1:{port}", "--state", str(self.state_dir),
                 "--credential", self.who, "--key-file", str(self.key_path)],
                stdout=stdout, stderr=stderr, stdin=subprocess.DEVNULL, cwd=REPO)
        self.processes.append(process)
        self.current = process
        with trio.move_on_after(START_TIMEOUT_S):
            while True:
                for line in out.read_text().split("\n")[:-1]:
                    if line.startswith("listening on "):
                        self.port = int(line.rpartition(":")[2])
                        return self.port
                if process.poll() is not None:
                    raise AssertionError(f"{self.module} exited {process.returncode}:\n"
                                         f"{err.read_text()}")
                await trio.sleep(0.02)
        raise AssertionError(f"{self.module} not listening after {START_TIMEOUT_S} s")

    def kill(self) -> None:
        process, self.current = self.current, None
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=EXIT_TIMEOUT_S)

    async def terminate(self) -> int:
        process, self.current = self.current, None
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(EXIT_TIMEOUT_S):
            while process.poll() is None:
                await trio.sleep(0.02)
        return process.returncode

    def kill_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=EXIT_TIMEOUT_S)

    def stderr(self) -> str:
        return "\n".join((self.base / f"{self.module}-{n}.err").read_text()
                         for n in range(1, len(self.processes) + 1))

    def position(self) -> int:
        return state_position(self.state_dir)


def state_position(state_dir) -> int:
    try:
        with open(os.path.join(state_dir, "state.json")) as handle:
            return json.load(handle)["position"]
    except FileNotFoundError:
        return 0


async def wait_until(predicate, timeout_s: float = CATCH_UP_TIMEOUT_S, what: str = "") -> None:
    with trio.fail_after(timeout_s):
        while not predicate():
            await trio.sleep(0.05)


# ---------------------------------------------------------------- journal side
def journal_of_store(store) -> list[dict]:
    return [msgpack.unpackb(raw, raw=False)
            for _, raw in store.committed_journal(1, store.last_committed_txn)]


def journal_of_data_dir(data_dir) -> list[dict]:
    env = lmdb.open(str(pathlib.Path(data_dir) / "lmdb"), readonly=True, lock=True, max_dbs=32)
    try:
        db = env.open_db(b"journal", create=False)
        with env.begin(db=db) as txn:
            return [msgpack.unpackb(value, raw=False) for _, value in txn.cursor()]
    finally:
        env.close()


def _day(unix_ms: int) -> str:
    return datetime.fromtimestamp(unix_ms / 1000, tz=ZONE).strftime("%Y-%m-%d")


def expected_settlement(records: list[dict]) -> dict:
    """(merchant, day) -> (count, total fen), the way `settle` counts (docs/PROTOCOL.md
    §4.11), per merchant."""
    by_txn = {record["txn"]: record for record in records}
    totals = defaultdict(lambda: [0, 0])
    for record in records:
        kind = record["kind"]
        if kind in ("debit", "qr_debit", "complete"):
            entry = totals[(record["merchant"], _day(record["at"]))]
            entry[0] += 1
            entry[1] -= record["amount"]
        elif kind == "offline":
            entry = totals[(record["merchant"], _day(record["tapped_at"]))]
            entry[0] += 1
            entry[1] -= record["amount"]
        elif kind == "reverse":
            original = by_txn[record["target"]]
            entry = totals[(record["merchant"], _day(original["at"]))]
            entry[0] -= 1
            entry[1] -= record["amount"]
    return {key: tuple(value) for key, value in totals.items()}


def expected_rooms(records: list[dict]) -> dict:
    """account -> (power, balance, recharged, metered) for every utility account that has
    a meter, cutoff or restore record; the rooms are known here from `open_account`."""
    utility = {r["account"] for r in records
               if r["kind"] == "open_account" and r.get("account_kind") == "utility"}
    rooms = {}
    for record in records:
        account = record["account"]
        if account not in utility or record["kind"] not in UTILITY_KINDS:
            continue
        power, balance, recharged, metered = rooms.get(account, ("off", 0, 0, 0))
        if record["kind"] == "credit":
            recharged += record["amount"]
        elif record["kind"] == "meter":
            metered -= record["amount"]
        elif record["kind"] == "cutoff":
            power = "off"
        elif record["kind"] == "restore":
            power = "on"
        rooms[account] = (power, record["balance"], recharged, metered)
    return {account: value for account, value in rooms.items()
            if any(r["account"] == account and r["kind"] in ("meter", "cutoff", "restore")
                   for r in records)}


def read_settlement(state_dir) -> dict:
    with open(os.path.join(state_dir, "settlement.csv"), newline="") as handle:
        return {(row["merchant"], row["day"]): (int(row["count"]), int(row["total_fen"]))
                for row in csv.DictReader(handle)}


def read_rooms(state_dir) -> dict:
    with open(os.path.join(state_dir, "rooms.csv"), newline="") as handle:
        return {row["account"]: (row["power"], int(row["balance_fen"]), int(row["recharged_fen"]),
                                 int(row["metered_fen"]))
                for row in csv.DictReader(handle)}
