"""Durability under SIGKILL (docs/PROTOCOL.md §6.2): a real switch process under concurrent load is
killed at a random moment and restarted on the same data dir, several rounds over.

After each restart: every `ok` a client received is in the journal as it was answered, no
(who, ref) is debited twice, a resend of an answered id gets the original reply back with
`replay: true`, each balance equals its journal sum, and `python -m switch audit` passes.
Set SWITCH_CRASH_SEED to replay one run's choices (kill moments, cards, amounts).
"""

import os
import pathlib
import random
import signal
import subprocess
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import lmdb
import msgpack
import pytest
import trio

from switch.shell.client import Client

from tests.paths import REPO_ROOT as REPO

ROUNDS = 3
SCHOOL = "WH"
ACCOUNTS = 200
TERMINALS = 8
CONNECTIONS_PER_TERMINAL = 5          # 40 terminal connections, each its own session
PIPELINE_DEPTH = 4                    # debits in flight per terminal connection
CREDIT_PIPELINE_DEPTH = 2
START_BALANCE_FEN = 100_000
DEBIT_FEN_MAX = 99                    # far below the no-PIN threshold (5,000)
CREDIT_FEN_MAX = 1_000
KILL_AFTER_S = (0.3, 1.5)             # a random moment into each round's load
RESEND_DURING_LOAD_RATIO = 0.05       # answered ids sent again while the switch runs
REPLAY_SAMPLE_MAX = 1_500             # answered ids sent again after each restart
HISTORY_ACCOUNTS_CHECKED = 4          # accounts whose `history` is paged through per round
HISTORY_PAGE_LIMIT = 40
ADMIN_PIPELINE_DEPTH = 50             # requests per pipelined batch on verification sessions
START_TIMEOUT_S = 20.0
LOAD_TIMEOUT_S = 20.0
PROCESS_EXIT_TIMEOUT_S = 10.0

# A request's fate is unknown when its connection breaks with one of these.
CONNECTION_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, trio.EndOfChannel,
                     OSError)
MONEY_KINDS = ("debit", "credit")
JOURNALED_TYPES = frozenset({"open_account", "issue_card", "credit", "debit"})


# ---------------------------------------------------------------- the switch process
class SwitchProcesses:
    """Starts `python -m switch serve` on one data dir; kills whatever it started."""

    def __init__(self, base: pathlib.Path):
        self.base = base
        self.data_dir = base / "data"
        self.processes: list[subprocess.Popen] = []
        self.current: subprocess.Popen | None = None

    async def start(self) -> tuple[str, int]:
        number = len(self.processes) + 1
        stdout_path = self.base / f"switch-{number}.out"
        stderr_path = self.base / f"switch-{number}.err"
        # Files rather than pipes: nothing to drain, and a dead reader cannot block the switch.
        with open(stdout_path, "wb") as stdout, open(stderr_path, "wb") as stderr:
            process = subprocess.Popen(
                # A load: a few credentials far faster than real tills (no budget `busy`).
                [sys.executable, "-m", "switch", "serve", "--init", "--data", str(self.data_dir),
                 "--listen", "127.0.0.1:0", "--metrics", "off",
                 "--config", str(REPO / "bench" / "switch-load.toml")],
                stdout=stdout, stderr=stderr, stdin=subprocess.DEVNULL, cwd=REPO)
        self.processes.append(process)
        self.current = process
        with trio.move_on_after(START_TIMEOUT_S):
            while True:
                # Only whole lines: the switch prints each one with a single flushed write.
                for line in stdout_path.read_text().split("\n")[:-1]:
                    if line.startswith("listening on "):
                        host, _, port = line[len("listening on "):].rpartition(":")
                        return host, int(port)
                if process.poll() is not None:
                    raise AssertionError(f"switch exited with {process.returncode} before "
                                         f"listening:\n{self.stderr_tail(number)}")
                await trio.sleep(0.02)
        raise AssertionError(f"switch not listening after {START_TIMEOUT_S} s:\n"
                             f"{self.stderr_tail(number)}")

    def stderr_tail(self, number: int | None = None, lines: int = 30) -> str:
        number = number or len(self.processes)
        path = self.base / f"switch-{number}.err"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def admin_key(self) -> bytes:
        text = (self.data_dir / "admin.key").read_text().strip()
        assert len(text) == 64 and all(c in "0123456789abcdef" for c in text.lower()), text
        return bytes.fromhex(text)

    def kill(self) -> None:
        process = self.current
        self.current = None
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=PROCESS_EXIT_TIMEOUT_S)
        assert process.returncode == -signal.SIGKILL, process.returncode

    def kill_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            try:
                process.wait(timeout=PROCESS_EXIT_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                pass


@pytest.fixture
def switch_processes(tmp_path, request):
    processes = SwitchProcesses(tmp_path)
    # Registered before any process starts, so a failed assertion anywhere still kills them.
    request.addfinalizer(processes.kill_all)
    return processes


async def run_audit(data_dir: pathlib.Path) -> str:
    result = await trio.run_process(
        [sys.executable, "-m", "switch", "audit", "--data", str(data_dir)],
        capture_stdout=True, capture_stderr=True, check=False, cwd=REPO)
    output = (result.stdout + result.stderr).decode(errors="replace")
    assert result.returncode == 0, f"audit exited {result.returncode}:\n{output}"
    return output


def read_journal(data_dir: pathlib.Path) -> dict[int, dict]:
    """The whole journal from one read snapshot (the switch may be running)."""
    env = lmdb.open(str(data_dir / "lmdb"), readonly=True, lock=True, max_dbs=32, subdir=True)
    try:
        journal_db = env.open_db(b"journal", create=False)
        with env.begin(db=journal_db) as txn:
            return {int.from_bytes(key, "big"): msgpack.unpackb(value, raw=False)
                    for key, value in txn.cursor()}
    finally:
        env.close()


# ---------------------------------------------------------------- the test's own ledger
@dataclass
class Terminal:
    who: str
    key: bytes
    resend_queue: list = field(default_factory=list)   # (request id, message) answered ok


@dataclass
class Books:
    """What the clients sent and what the switch answered them, keyed by (who, id)."""

    card_account: dict = field(default_factory=dict)
    start_balance: dict = field(default_factory=dict)
    sent: dict = field(default_factory=dict)          # (who, id) -> message (without seq)
    answered_ok: dict = field(default_factory=dict)   # (who, id) -> first ok reply
    unanswered: dict = field(default_factory=dict)    # (who, id) -> message, fate unknown
    codes: Counter = field(default_factory=Counter)
    replays_checked: int = 0
    problems: list = field(default_factory=list)

    def expected_account(self, message: dict) -> str:
        return message["account"] if "account" in message else self.card_account[message["card"]]

    @staticmethod
    def expected_amount(message: dict) -> int:
        return {"debit": -1, "credit": 1}.get(message["t"], 0) * message.get("amount", 0)

    def sending(self, who: str, message: dict) -> tuple:
        key = (who, message["id"])
        assert key not in self.sent, f"test bug: id {key} sent twice as new"
        self.sent[key] = message
        return key

    def check_replay(self, key, reply: dict, where: str) -> None:
        """A resend of an id answered ok must get that reply again, marked replay."""
        original = self.answered_ok[key]
        self.replays_checked += 1
        if reply.get("replay") is not True or _comparable(reply) != _comparable(original):
            self.problems.append(f"{where}: resend of {key} got {reply}, first reply {original}")

    def record(self, key, reply: dict, where: str) -> None:
        """The reply to the first send of `key` (or its first resend after a crash)."""
        message = self.sent[key]
        self.codes[(message["t"], reply.get("code"))] += 1
        if reply.get("t") != message["t"]:
            self.problems.append(f"{where}: {key} {message} answered {reply}")
        if reply.get("code") == "ok":
            self.answered_ok[key] = reply
        elif reply.get("code") != "busy":
            # Every request of this workload is well-formed, funded and within limits.
            self.problems.append(f"{where}: {key} {message} declined: {reply}")


def _comparable(reply: dict) -> dict:
    return {name: value for name, value in reply.items() if name not in ("re", "replay")}


async def pipelined(client: Client, messages: list[dict]) -> list[dict]:
    replies = []
    for start in range(0, len(messages), ADMIN_PIPELINE_DEPTH):
        replies += await client.pipeline(messages[start:start + ADMIN_PIPELINE_DEPTH])
    return replies


async def send_new(client: Client, books: Books, messages: list[dict], where: str) -> list[dict]:
    keys = [books.sending(client.session.who, message) for message in messages]
    replies = await pipelined(client, messages)
    for key, reply in zip(keys, replies):
        books.record(key, reply, where)
    return replies


# ---------------------------------------------------------------- provisioning
def account_id(index: int) -> str:
    return f"WHE2E{index:04d}"


def card_id(index: int) -> str:
    return f"{0xE2E00000 + index:08X}"


async def provision(address, admin_key: bytes, books: Books) -> tuple[list[Terminal], Terminal]:
    async with await Client.connect(*address, "admin", admin_key) as admin:
        assert admin.hello_reply["role"] == "admin"
        await send_new(admin, books, [
            {"t": "open_account", "account": account_id(i), "school": SCHOOL, "kind": "person",
             "id_last6": "123456", "holder": f"Student {i}", "id": f"open-{i}"}
            for i in range(ACCOUNTS)], "provision")
        await send_new(admin, books, [
            {"t": "issue_card", "account": account_id(i), "card": card_id(i), "id": f"card-{i}"}
            for i in range(ACCOUNTS)], "provision")
        await send_new(admin, books, [
            {"t": "credit", "account": account_id(i), "amount": START_BALANCE_FEN,
             "source": "e2e-opening", "id": f"fund-{i}"}
            for i in range(ACCOUNTS)], "provision")
        credentials = [{"t": "add_credential", "who": f"WH-POS-{t}", "role": "terminal",
                        "school": SCHOOL, "kind": "pos", "id": f"pos-{t}"}
                       for t in range(TERMINALS)]
        credentials.append({"t": "add_credential", "who": "recharge", "role": "service",
                            "id": "recharge"})
        replies = await send_new(admin, books, credentials, "provision")
    assert not books.problems, books.problems[:10]
    for i in range(ACCOUNTS):
        books.card_account[card_id(i)] = account_id(i)
        books.start_balance[account_id(i)] = START_BALANCE_FEN
    keys = [reply["key"] for reply in replies]
    assert all(type(key) is bytes and len(key) == 32 for key in keys), replies
    terminals = [Terminal(message["who"], key) for message, key in zip(credentials, keys)]
    return terminals[:-1], terminals[-1]


# ---------------------------------------------------------------- load
def _new_request_id(round_number: int, connection_index: int, counter: int):
    # Half the connections use int ids, half str ids: both kinds must be remembered
    # (docs/PROTOCOL.md §4.4).
    if connection_index % 2:
        return round_number * 10**9 + connection_index * 10**6 + counter
    return f"r{round_number}c{connection_index}n{counter}"


async def debit_connection(address, terminal: Terminal, connection_index: int,
                           round_number: int, books: Books, rng: random.Random,
                           cards: list[str]) -> None:
    try:
        client = await Client.connect(*address, terminal.who, terminal.key)
    except CONNECTION_ERRORS:
        return
    where = f"round {round_number} load"
    in_flight: dict[int, tuple] = {}   # seq -> (key, message, is_resend)
    counter = 0
    try:
        while True:
            while len(in_flight) < PIPELINE_DEPTH:
                if terminal.resend_queue and rng.random() < 0.5:
                    request_id, message = terminal.resend_queue.pop()
                    key, is_resend = (terminal.who, request_id), True
                else:
                    counter += 1
                    message = {"t": "debit", "card": rng.choice(cards),
                               "amount": rng.randint(1, DEBIT_FEN_MAX),
                               "id": _new_request_id(round_number, connection_index, counter)}
                    key, is_resend = books.sending(terminal.who, message), False
                # In flight before the send: a send cut short by the kill may still have landed.
                in_flight[client.session.next_seq] = (key, message, is_resend)
                await client.send(message)
            reply = await client.receive()
            entry = in_flight.pop(reply.get("re"), None)
            if entry is None:
                books.problems.append(f"{where}: reply to nothing in flight: {reply}")
                continue
            key, message, is_resend = entry
            if is_resend:
                books.check_replay(key, reply, where)
            else:
                books.record(key, reply, where)
                if reply.get("replay"):
                    books.problems.append(f"{where}: first send of {key} answered as replay")
                if reply.get("code") == "ok" and rng.random() < RESEND_DURING_LOAD_RATIO:
                    terminal.resend_queue.append((message["id"], message))
    except CONNECTION_ERRORS:
        pass
    finally:
        for key, message, is_resend in in_flight.values():
            if not is_resend:
                books.unanswered[key] = message
        await client.aclose()


async def credit_connection(address, service: Terminal, round_number: int, books: Books,
                            rng: random.Random) -> None:
    """A recharge service topping accounts up while the terminals spend."""
    try:
        client = await Client.connect(*address, service.who, service.key)
    except CONNECTION_ERRORS:
        return
    where = f"round {round_number} credits"
    in_flight: dict[int, tuple] = {}
    counter = 0
    try:
        while True:
            while len(in_flight) < CREDIT_PIPELINE_DEPTH:
                counter += 1
                message = {"t": "credit", "account": account_id(rng.randrange(ACCOUNTS)),
                           "amount": rng.randint(1, CREDIT_FEN_MAX), "source": "e2e-topup",
                           "id": f"top-r{round_number}-{counter}"}
                key = books.sending(service.who, message)
                in_flight[client.session.next_seq] = (key, message)
                await client.send(message)
            reply = await client.receive()
            entry = in_flight.pop(reply.get("re"), None)
            if entry is None:
                books.problems.append(f"{where}: reply to nothing in flight: {reply}")
                continue
            books.record(entry[0], reply, where)
            await trio.sleep(0.002)
    except CONNECTION_ERRORS:
        pass
    finally:
        for key, message in in_flight.values():
            books.unanswered[key] = message
        await client.aclose()


async def load_then_kill(processes: SwitchProcesses, address, terminals, service, books: Books,
                         rng: random.Random, round_number: int) -> float:
    kill_after_s = rng.uniform(*KILL_AFTER_S)
    cards = sorted(books.card_account)
    with trio.fail_after(LOAD_TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            connection_index = 0
            for terminal in terminals:
                for _ in range(CONNECTIONS_PER_TERMINAL):
                    nursery.start_soon(debit_connection, address, terminal, connection_index,
                                       round_number, books, random.Random(rng.random()), cards)
                    connection_index += 1
            nursery.start_soon(credit_connection, address, service, round_number, books,
                               random.Random(rng.random()))
            await trio.sleep(kill_after_s)
            processes.kill()
            # Every connection now fails on its own (reset or end of stream) and returns.
    return kill_after_s


# ---------------------------------------------------------------- after each restart
async def resend_unanswered(address, terminals, service, books: Books, round_number: int):
    """What a terminal does after a lost reply: send the same request again."""
    where = f"round {round_number} resend of unanswered"
    by_who = defaultdict(list)
    for key, message in books.unanswered.items():
        by_who[key[0]].append((key, message))
    books.unanswered = {}
    outcomes = Counter()
    credentials = {credential.who: credential for credential in [*terminals, service]}
    async with trio.open_nursery() as nursery:
        async def resend(who, entries):
            credential = credentials[who]
            async with await Client.connect(*address, credential.who, credential.key) as client:
                replies = await pipelined(client, [message for _, message in entries])
            for (key, _), reply in zip(entries, replies):
                books.record(key, reply, where)
                outcomes["replay" if reply.get("replay") else "new"] += 1
        for who, entries in by_who.items():
            nursery.start_soon(resend, who, entries)
    return outcomes


async def resend_answered(address, terminals, service, books: Books, rng: random.Random,
                          round_number: int) -> int:
    where = f"round {round_number} resend of answered"
    credentials = {credential.who: credential for credential in [*terminals, service]}
    keys = [key for key in books.answered_ok if key[0] in credentials]
    sample = rng.sample(keys, min(len(keys), REPLAY_SAMPLE_MAX))
    by_who = defaultdict(list)
    for key in sample:
        by_who[key[0]].append(key)
    async with trio.open_nursery() as nursery:
        async def resend(who, keys):
            credential = credentials[who]
            async with await Client.connect(*address, credential.who, credential.key) as client:
                replies = await pipelined(client, [books.sent[key] for key in keys])
            for key, reply in zip(keys, replies):
                books.check_replay(key, reply, where)
        for who, keys in by_who.items():
            nursery.start_soon(resend, who, keys)
    return len(sample)


def check_journal(journal: dict[int, dict], books: Books, where: str,
                  all_answered: bool) -> dict[str, int]:
    """Every ok in the journal as answered; one record per (who, ref); returns journal sums.

    With `all_answered` (every request has had a reply by now), also: every money record
    is one that some client holds an ok for.
    """
    problems = books.problems
    assert sorted(journal) == list(range(1, len(journal) + 1)), f"{where}: txn gaps"
    for key, reply in books.answered_ok.items():
        message = books.sent[key]
        if message["t"] not in JOURNALED_TYPES:
            continue
        record = journal.get(reply.get("txn"))
        expected = {"kind": message["t"], "account": books.expected_account(message),
                    "amount": books.expected_amount(message), "who": key[0], "ref": key[1]}
        if record is None:
            problems.append(f"{where}: ok {key} txn {reply.get('txn')} is not in the journal")
            continue
        found = {name: record.get(name) for name in expected}
        if found != expected or ("balance" in reply and record["balance"] != reply["balance"]):
            problems.append(f"{where}: ok {key} {reply} but txn {reply['txn']} is {record}")
        if message["t"] == "debit" and reply.get("account") != expected["account"]:
            problems.append(f"{where}: debit {key} answered for account {reply.get('account')}")

    answered_txns = {reply["txn"] for key, reply in books.answered_ok.items()
                     if books.sent[key]["t"] in MONEY_KINDS}
    refs = Counter()
    sums: dict[str, int] = defaultdict(int)
    for txn, record in journal.items():
        sums[record["account"]] += record["amount"]
        if record["kind"] not in MONEY_KINDS:
            continue
        key = (record["who"], record["ref"])
        refs[(record["kind"], key)] += 1
        message = books.sent.get(key)
        if message is None:
            problems.append(f"{where}: txn {txn} {record} matches no request sent")
        elif (record["amount"] != books.expected_amount(message)
              or record["account"] != books.expected_account(message)):
            problems.append(f"{where}: txn {txn} {record} differs from request {message}")
        if all_answered and txn not in answered_txns:
            problems.append(f"{where}: txn {txn} {record} was never answered ok")
    doubles = [(kind, key, count) for (kind, key), count in refs.items() if count > 1]
    if doubles:
        problems.append(f"{where}: applied more than once: {doubles[:10]}")
    return sums


async def check_accounts(address, admin_key: bytes, books: Books, sums: dict[str, int],
                         journal: dict[int, dict], rng: random.Random, round_number: int):
    where = f"round {round_number} accounts"
    money = defaultdict(int)
    for key, reply in books.answered_ok.items():
        message = books.sent[key]
        if message["t"] in MONEY_KINDS:
            money[books.expected_account(message)] += books.expected_amount(message)
    accounts = sorted(books.start_balance)
    async with await Client.connect(*address, "admin", admin_key) as admin:
        replies = await pipelined(admin, [{"t": "account", "account": account}
                                          for account in accounts])
        for account, reply in zip(accounts, replies):
            if reply.get("code") != "ok":
                books.problems.append(f"{where}: account {account}: {reply}")
                continue
            if not reply["balance"] == reply["available"] == sums[account] == money[account]:
                books.problems.append(
                    f"{where}: {account} balance {reply['balance']} available "
                    f"{reply['available']}, journal sum {sums[account]}, answered ok sum "
                    f"{money[account]}")
        for account in rng.sample(accounts, HISTORY_ACCOUNTS_CHECKED):
            await check_history(admin, account, journal, books, where)


async def check_history(admin: Client, account: str, journal: dict[int, dict], books: Books,
                        where: str) -> None:
    """`history`, paged with `before`/`next`, lists the account's journal newest first."""
    expected = [(txn, record["kind"], record["amount"], record["balance"], record["who"])
                for txn, record in sorted(journal.items(), reverse=True)
                if record["account"] == account]
    listed = []
    before = None
    while True:
        request = {"t": "history", "account": account, "limit": HISTORY_PAGE_LIMIT}
        if before is not None:
            request["before"] = before
        reply = await admin.request(request)
        if reply.get("code") != "ok" or len(reply["items"]) > HISTORY_PAGE_LIMIT:
            books.problems.append(f"{where}: history {request}: {reply}")
            return
        listed += [(item["txn"], item["kind"], item["amount"], item["balance"], item["who"])
                   for item in reply["items"]]
        before = reply["next"]
        if before is None:
            break
    if listed != expected:
        books.problems.append(f"{where}: history of {account} differs from the journal: "
                              f"{len(listed)} items vs {len(expected)} records")


def assert_sound(books: Books, round_number: int, seed: int) -> None:
    if books.problems:
        raise AssertionError(f"SWITCH_CRASH_SEED={seed}, round {round_number}: "
                             f"{len(books.problems)} problems, the first:\n"
                             + "\n".join(books.problems[:20]))


# ---------------------------------------------------------------- the test
@pytest.mark.slow
async def test_every_ok_survives_sigkill_under_load(switch_processes):
    seed = int(os.environ.get("SWITCH_CRASH_SEED", random.randrange(2**32)))
    print(f"SWITCH_CRASH_SEED={seed}")
    rng = random.Random(seed)
    books = Books()

    address = await switch_processes.start()
    admin_key = switch_processes.admin_key()
    terminals, service = await provision(address, admin_key, books)

    for round_number in range(1, ROUNDS + 1):
        answered_before = len(books.answered_ok)
        kill_after_s = await load_then_kill(switch_processes, address, terminals, service, books,
                                            rng, round_number)
        answered_in_load = len(books.answered_ok) - answered_before
        unanswered = len(books.unanswered)
        assert_sound(books, round_number, seed)
        assert answered_in_load > 0, f"round {round_number}: no ok before the kill"

        # The books of the crashed data dir, before anything touches it again.
        await run_audit(switch_processes.data_dir)
        check_journal(read_journal(switch_processes.data_dir), books,
                      f"round {round_number} journal after the kill", all_answered=False)
        assert_sound(books, round_number, seed)

        address = await switch_processes.start()
        assert switch_processes.admin_key() == admin_key
        outcomes = await resend_unanswered(address, terminals, service, books, round_number)
        replays = await resend_answered(address, terminals, service, books, rng, round_number)
        journal = read_journal(switch_processes.data_dir)
        # Every unanswered request has now been sent again and answered.
        sums = check_journal(journal, books, f"round {round_number} journal after resends",
                             all_answered=True)
        await check_accounts(address, admin_key, books, sums, journal, rng, round_number)
        await run_audit(switch_processes.data_dir)
        assert_sound(books, round_number, seed)
        print(f"round {round_number}: killed after {kill_after_s:.2f} s, {answered_in_load} ok "
              f"during load, {unanswered} unanswered (resent: {outcomes['replay']} replayed, "
              f"{outcomes['new']} applied now), {replays} answered ids replayed, "
              f"journal {len(journal)} records")
    print(f"replies by (type, code): {dict(books.codes)}; replays checked {books.replays_checked}")
