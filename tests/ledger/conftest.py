"""The request layer on its own: `execute` called synchronously on a temporary store with a
fake clock, no sockets, no event loop.

This is the one module of tests/ledger that imports the code under test: the test modules
import what they need from here, so moving the request layer into other modules changes
these imports and nothing else.

Every reply that passes through `World.request` is recorded (request type and code, and each
offline record's result code), so `test_result_codes.py` can check at the end of the run
that every result code of docs/PROTOCOL.md §4.16 was produced by some test.
"""

import contextlib
import dataclasses
import pathlib
import shutil
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from switch import limits
from switch.clock import FakeClock, TrustedClock
from switch.config import School, default_config
from switch.core.codes import CODE_NAMES
from switch.cli.datadir import open_data_dir
from switch.config.masterkey import default_path
from switch.ledger import Ledger, dispatch, housekeeping
from switch.ledger.dorm import expire_due_holds
from switch.ledger.effects import (BlacklistPush, ClosedAccountTap, JournalAdvanced, PowerCutoff,
                                   Revocation)
from switch.ledger.payments import prune_used_qr
from switch.ledger.qr import qr_code, qr_tag
from switch.ledger.state import none_remembered_before, remembered_at_ms_read_fast
from switch.persistence import writeback

QR_STEP_S = limits.qr_step_s

# What the test modules take from here (the code under test they need is re-exported).
__all__ = ["limits", "FakeClock", "TrustedClock", "QR_STEP_S", "qr_tag", "REQUEST_TYPES", "RESULT_CODES", "OBSERVED",
           "OBSERVED_OFFLINE", "World", "populate", "whole_directory_ran", "STUDENT", "CARD",
           "CUIK_STUDENT", "CUIK_CARD", "ROOM", "CUIK_ROOM", "ID_LAST6", "PIN", "BALANCE",
           "general_path_only", "plain_debits_counted", "remembered_at_ms_read_fast",
           "none_remembered_before"]

# What the tests compare against the spec: the request types the switch dispatches and the
# result codes of replies (docs/PROTOCOL.md §4.16).
REQUEST_TYPES = frozenset(dispatch.HANDLERS)
RESULT_CODES = frozenset(CODE_NAMES)

# (reply t, code) of every reply the tests received, and the codes of offline records' results.
OBSERVED: set[tuple[str, str]] = set()
OBSERVED_OFFLINE: set[str] = set()

# The campus every `campus` test starts from.
STUDENT, CARD = "WH20230001", "04A1B2C3D4"
CUIK_STUDENT, CUIK_CARD = "CUIK20230001", "0C0C0001"
ROOM = "WH-8D-1006"              # one account for electricity and water
CUIK_ROOM = "CUIK-9A-0101"       # building 9 pays electricity apart
ID_LAST6 = "123456"
PIN = ID_LAST6                   # the initial PIN is the ID's last six (docs/PROTOCOL.md §4.7)
BALANCE = 20_000                 # fen each person account starts with

_DECLINE_FIELDS = {"t", "code", "replay"}


class World:
    """A temporary data dir with its ledger, a fake clock and the default configuration
    (changed by `config_changes`), and helpers to act as any credential."""

    def __init__(self, path: pathlib.Path, **config_changes):
        self.path = path
        self.config = _config(config_changes)
        self.clock = FakeClock()
        self.store = _open_store(path)   # the same first start as `serve`: an admin
        self._ids = 0
        self.pushes: list[tuple[str, dict]] = []
        self.revoked: list[str] = []
        self.cutoffs: list[tuple[str, str, int]] = []
        self.closed_account_taps: list[str] = []   # the school of each, as counted
        self._open_ledger()

    def _open_ledger(self) -> None:
        self.ledger = Ledger(self.store, self.config, self.clock)
        self.admin = self.ledger.credential("admin")

    def close(self) -> None:
        self.store.close()

    def restart(self, while_closed=None, **config_changes) -> None:
        """Commit, close and open the data dir again, with a changed configuration (and
        `while_closed(data dir)` run in between: e.g. to leave what an older switch left)."""
        self.commit()
        self.store.close()
        if while_closed is not None:
            while_closed(str(self.path))
        self.config = _config(config_changes)
        self.store = _open_store(self.path)
        self._open_ledger()

    # ------------------------------------------------------------------ requests
    def request(self, credential, message: dict) -> dict:
        """`execute` one request as `credential`; records the codes it produced."""
        reply = dispatch.execute(self.ledger, credential, message)
        OBSERVED.add((reply["t"], reply["code"]))
        if reply["code"] != "ok":
            # docs/PROTOCOL.md §4.1: a decline carries only t, re and code (and replay).
            assert set(reply) <= _DECLINE_FIELDS, reply
        for result in reply.get("results") or ():
            OBSERVED_OFFLINE.add(result["code"])
        return reply

    def send(self, credential, t: str, **fields) -> dict:
        return self.request(credential, {"t": t, **fields})

    def code(self, credential, t: str, **fields) -> str:
        return self.send(credential, t, **fields)["code"]

    def ok(self, credential, t: str, **fields) -> dict:
        """`send` with a fresh id unless one is given; the reply must be `ok`."""
        fields.setdefault("id", self.fresh_id())
        reply = self.send(credential, t, **fields)
        assert reply["code"] == "ok", (t, fields, reply)
        return reply

    def fresh_id(self) -> str:
        self._ids += 1
        return f"setup-{self._ids}"

    # ------------------------------------------------------------------ provisioning
    def credential(self, who: str):
        return self.ledger.credential(who)

    def add_terminal(self, who: str, school: str = "WH", kind: str = "pos", **fields):
        self.ok(self.admin, "add_credential", who=who, role="terminal", school=school, kind=kind,
                **fields)
        return self.credential(who)

    def add_service(self, who: str, school: str | None = None):
        fields = {} if school is None else {"school": school}
        self.ok(self.admin, "add_credential", who=who, role="service", **fields)
        return self.credential(who)

    def open_person(self, account: str, card: str | None = None, school: str = "WH",
               balance: int = 0, id_last6: str = ID_LAST6) -> str:
        self.ok(self.admin, "open_account", account=account, school=school, kind="person",
                holder="测试", id_last6=id_last6)
        if card is not None:
            self.ok(self.admin, "issue_card", account=account, card=card)
        if balance:
            self.credit(account, balance)
        return account

    def open_room(self, account: str, school: str = "WH", balance: int = 0, **fields) -> str:
        self.ok(self.admin, "open_account", account=account, school=school, kind="utility",
                **fields)
        if balance:
            self.credit(account, balance)
        return account

    def credit(self, account: str, amount: int) -> dict:
        return self.ok(self.admin, "credit", account=account, amount=amount, source="test")

    # ------------------------------------------------------------------ state
    def account(self, account: str) -> dict:
        return self.ok(self.admin, "account", account=account)

    def balance(self, account: str) -> int:
        return self.account(account)["balance"]

    def journal(self, txn: int) -> dict | None:
        return self.ledger.journal_record(txn)

    @property
    def last_txn(self) -> int:
        return self.store.last_txn

    def hold(self, hold_id: str) -> dict | None:
        return self.ledger.holds.get(hold_id)

    def open_holds(self) -> int:
        return self.ledger.holds.open_count

    def blacklisted(self, school: str, card: str) -> bool:
        return self.ledger.blacklist.contains(school, card)

    def expect_overdrawn_freeze(self, txn: int, ref, who: str, account: str = STUDENT,
                                card: str = CARD, school: str = "WH") -> None:
        """Record `txn` froze `account` as overdrawn (docs/PROTOCOL.md §4.10): the account is
        frozen, its card listed while its own state stays active."""
        freeze = self.journal(txn)
        assert (freeze["kind"], freeze["reason"], freeze["ref"], freeze["who"],
                freeze["amount"]) == ("freeze", "overdrawn", ref, who, 0)
        state = self.account(account)
        assert state["status"] == "frozen"
        assert state["cards"] == [{"card": card, "state": "active"}]
        assert self.blacklisted(school, card)

    def expect_repaid(self, credit: dict, account: str = STUDENT, card: str = CARD,
                      school: str = "WH") -> None:
        """`credit` paid an overdraw back: an `unfreeze` record (reason "repaid") right after
        it, the account active again and its card off the list."""
        unfreeze = self.journal(credit["txn"] + 1)
        assert (unfreeze["kind"], unfreeze["reason"], unfreeze["amount"]) == (
            "unfreeze", "repaid", 0)
        assert self.account(account)["status"] == "active"
        assert not self.blacklisted(school, card)

    # ------------------------------------------------------------------ the shell's part
    def commit(self) -> None:
        """What the committer does for the open batch: one LMDB transaction, then the
        effects (pushes, cut-offs) the batch's requests left."""
        effects = self.ledger.take_effects()
        # The committer's own steps (shell/committer.py), not `commit_now`: the remembered
        # ids go through the logs, in rounds small enough that the tests cross many
        # (persistence/writeback.py).
        batch = self.store.seal()
        if batch.writes or batch.writes_back:
            self.store._with_room(lambda: self.store.write_batch(batch))
            self.store.committed(batch)
        for effect in effects:
            if type(effect) is BlacklistPush:
                self.pushes.append((effect.school, effect.message))
            elif type(effect) is Revocation:
                self.revoked.append(effect.who)
            elif type(effect) is PowerCutoff:
                self.cutoffs.append((effect.school, effect.account, effect.balance))
            elif type(effect) is ClosedAccountTap:
                self.closed_account_taps.append(effect.school)
            else:
                assert type(effect) is JournalAdvanced, effect

    def write_back_ids(self) -> None:
        """Every remembered id the logs hold into `idempotency`, the database the retention
        sweep walks, as a round's commits do by and by (and a clean stop at once)."""
        self.commit()
        self.store.commit_now()

    def committed(self, db: str) -> dict:
        """What `db` holds as committed, its log included when it has one."""
        return committed_contents(self.store)[db]

    def expire_holds(self) -> int:
        """Housekeeping's hold pass (it reads committed holds: commit first)."""
        return expire_due_holds(self.ledger)

    def prune_qr(self) -> int:
        return prune_used_qr(self.ledger)

    def forget_old_ids(self) -> int:
        return self.ledger.forget_old_ids(limits.idempotency_sweep_ids_per_pass_max)

    def housekeep(self):
        """One whole housekeeping pass, then its commit."""
        done = housekeeping.tick(self.ledger)
        self.commit()
        return done

    # ------------------------------------------------------------------ time
    def local_ms(self, local_time: str, school: str = "WH") -> int:
        """Unix ms of an ISO local time (`2026-11-18T23:59:59`) in the school's time zone."""
        zone = ZoneInfo(self.config.schools[school].time_zone)
        return int(datetime.fromisoformat(local_time).replace(tzinfo=zone).timestamp() * 1000)

    def set_local_time(self, local_time: str, school: str = "WH") -> None:
        self.clock.ms = self.local_ms(local_time, school)

    def local_day(self, unix_ms: int | None = None, school: str = "WH") -> str:
        zone = ZoneInfo(self.config.schools[school].time_zone)
        unix_ms = self.clock.now_ms() if unix_ms is None else unix_ms
        return datetime.fromtimestamp(unix_ms / 1000, tz=zone).date().isoformat()

    # ------------------------------------------------------------------ QR codes
    def qr(self, account: str, secret: bytes, step_offset: int = 0,
           nonce: str = "0badf00d") -> str:
        """The code a phone shows, made `step_offset` steps from the switch's clock."""
        unix_s = self.clock.now_ms() // 1000 + step_offset * QR_STEP_S
        return qr_code(secret, account, unix_s, nonce)

    def qr_step(self) -> int:
        return self.clock.now_ms() // 1000 // QR_STEP_S


# Rounds of the remembered ids' write-back small enough that every test crosses several:
# a round ends at this many ids or commits, and is written back this many ids a commit.
LOGGED_IDS_PER_ROUND = 7
LOGGING_COMMITS_PER_ROUND = 3
WRITTEN_BACK_PER_COMMIT = 2


def _open_store(path):
    store = open_data_dir(str(path))
    store.logged_writes_max = LOGGED_IDS_PER_ROUND
    store.commits_between_write_backs_max = LOGGING_COMMITS_PER_ROUND
    store.logged_writes_per_account_ratio = 0   # short rounds whatever the books hold
    return store


@pytest.fixture(autouse=True)
def _small_write_back_slices(monkeypatch):
    monkeypatch.setattr(limits, "written_back_per_commit_min", WRITTEN_BACK_PER_COMMIT)


def committed_contents(store) -> dict[str, dict]:
    """Every database as committed, from one snapshot: what LMDB holds, with what the logs
    hold on top of the logged databases (the logs themselves left out: two data dirs with
    the same books may have written back different shares of them)."""
    with store.env.begin() as txn:
        contents = {name: {bytes(key): bytes(value) for key, value in txn.cursor(db=handle)}
                    for name, handle in store.dbs.items() if name not in writeback.LOG_NAMES}
        logged = writeback.newest_logged(txn, store.dbs)
    for (db, key), value in logged.items():
        if value is None:
            contents[db].pop(key, None)
        else:
            contents[db][key] = value
    return contents


def _config(changes: dict):
    """The default configuration; `schools={"WH": {...}}` changes fields of a school, and
    adds it (named by its code unless a `name` is given) when it is not a built-in one."""
    config = default_config()
    for code, school_changes in changes.pop("schools", {}).items():
        school = config.schools.get(code) or School(code, code)
        # replace() runs __post_init__ again: a new time zone gets its own day map.
        config.schools[code] = dataclasses.replace(school, **school_changes)
    for name, value in changes.items():
        assert hasattr(config, name), name
        setattr(config, name, value)
    return config


# ---------------------------------------------------------------------- fixtures
# The campus: attribute -> (credential id, school, kind); a kind of None is a service.
CAMPUS_CREDENTIALS = {
    "pos": ("WH-POS-1", "WH", "pos"), "pos2": ("WH-POS-2", "WH", "pos"),
    "water": ("WH-WATER-1", "WH", "water"), "water2": ("WH-WATER-2", "WH", "water"),
    "meter": ("WH-METER-1", "WH", "meter"),
    "service": ("mini-program", None, None), "wh_service": ("wh-recharge", "WH", None),
    "cuik_pos": ("CUIK-POS-1", "CUIK", "pos"), "cuik_water": ("CUIK-WATER-1", "CUIK", "water"),
    "cuik_meter": ("CUIK-METER-1", "CUIK", "meter"),
    "cuik_service": ("cuik-recharge", "CUIK", None),
}


def populate(world: World) -> World:
    """Two schools' terminals and services, a student with a card at each, two dorm rooms."""
    for who, school, kind in CAMPUS_CREDENTIALS.values():
        if kind is None:
            world.add_service(who, school)
        else:
            world.add_terminal(who, school, kind)
    world.open_person(STUDENT, CARD, balance=BALANCE)
    world.open_person(CUIK_STUDENT, CUIK_CARD, school="CUIK", balance=BALANCE)
    world.open_room(ROOM, balance=BALANCE)
    world.open_room(CUIK_ROOM, school="CUIK", utility="electric", balance=BALANCE)
    world.commit()
    _attach_campus(world)
    return world


def _attach_campus(world: World) -> None:
    for name, (who, _, _) in CAMPUS_CREDENTIALS.items():
        setattr(world, name, world.credential(who))


@pytest.fixture(scope="session")
def _templates(tmp_path_factory):
    """Data dirs made once and copied for each test: creating one costs a few fsyncs."""
    base = tmp_path_factory.mktemp("templates")
    bare = World(base / "bare")
    bare.close()
    campus = populate(World(base / "campus"))
    campus.close()
    return {"bare": (base / "bare", 0), "campus": (base / "campus", campus._ids)}


@pytest.fixture
def make_world(tmp_path, _templates):
    worlds = []

    def make(template: str = "bare", **config_changes) -> World:
        source, ids_used = _templates[template]
        path = tmp_path / f"data{len(worlds)}"
        shutil.copytree(source, path)
        # Its master key file lies beside it (switch/config/masterkey.py), not inside.
        shutil.copy(default_path(str(source)), default_path(str(path)))   # its mode too
        world = World(path, **config_changes)
        world._ids = ids_used          # fresh ids stay fresh
        worlds.append(world)
        return world

    yield make
    for world in worlds:
        world.close()


@pytest.fixture
def world(make_world) -> World:
    return make_world()


@pytest.fixture
def campus(make_world) -> World:
    world = make_world("campus")
    _attach_campus(world)
    return world


@contextlib.contextmanager
def general_path_only():
    """Debits executed by the general path alone, the plain-debit pass skipped: the
    reference that pass is held to."""
    real = dispatch.execute_plain_debit
    dispatch.execute_plain_debit = lambda ledger, credential, message: None
    try:
        yield
    finally:
        dispatch.execute_plain_debit = real


@contextlib.contextmanager
def plain_debits_counted(counts: dict):
    """Count in `counts` the debits the plain-debit pass took ("taken") and left to the
    general path ("left")."""
    real = dispatch.execute_plain_debit

    def counting(ledger, credential, message):
        reply = real(ledger, credential, message)
        key = "left" if reply is None else "taken"
        counts[key] = counts.get(key, 0) + 1
        return reply
    dispatch.execute_plain_debit = counting
    try:
        yield
    finally:
        dispatch.execute_plain_debit = real


@pytest.fixture
def inject_fault(monkeypatch):
    """Make one request type's handler raise after it has done its writes (until `patch`,
    a monkeypatch context, is undone)."""
    def inject(request_type: str, patch=monkeypatch) -> None:
        real = dispatch.HANDLERS[request_type]

        def failing(ledger, credential, values):
            real(ledger, credential, values)
            raise RuntimeError("injected fault")
        patch.setitem(dispatch.HANDLERS, request_type, failing)
    return inject


# ---------------------------------------------------------------------- code coverage
_HERE = pathlib.Path(__file__).parent
_COLLECTED: set[str] = set()
_STARTED: set[str] = set()


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(session, config, items):
    """Remember every tests/ledger test (before `-k` deselects any) and run the result-code
    coverage check after all of them."""
    ours = [item for item in items if pathlib.Path(item.fspath).parent == _HERE]
    _COLLECTED.update(item.nodeid for item in ours)
    last = [item for item in ours if item.name == "test_every_result_code_is_produced"]
    for item in last:
        items.remove(item)
        items.append(item)


@pytest.fixture(autouse=True)
def _started(request):
    _STARTED.add(request.node.nodeid)


def whole_directory_ran(own_nodeid: str) -> bool:
    """True when every test module here was collected and every collected test started."""
    modules = {path.name for path in _HERE.glob("test_*.py")}
    collected_modules = {nodeid.split("::")[0].rsplit("/", 1)[-1] for nodeid in _COLLECTED}
    return modules <= collected_modules and _COLLECTED - {own_nodeid} <= _STARTED
