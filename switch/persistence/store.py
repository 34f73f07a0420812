"""One LMDB environment with named databases, plus the write overlay of group commit.

The event loop executes requests against `get`/`put`, which see the overlay of
writes not yet committed on top of the last committed state. `seal()` freezes
the writes of the open batch; `write_batch(batch)` runs the whole LMDB write
transaction (and its fsync) on one thread, off the event loop; `committed()`
then drops what is now on disk from the overlay.

Account records and remembered ids are committed to a log and written back to their own
database a round later, a slice per commit (persistence/writeback.py); until then the overlay
keeps them too.
"""

import bisect
import itertools
import logging
import os
from dataclasses import dataclass, field

import lmdb

from switch import limits
from switch.persistence import writeback
from switch.persistence.migrations import UPGRADES
from switch.persistence.keys import decode_position, encode_position, position_key, txn_key

SCHEMA_VERSION = 14
STORE_DIR = "lmdb"  # the LMDB environment's folder inside a data dir
# Beside it, written by `restore` before it copies anything and removed once the copy passed
# its audit: a restore killed half-way leaves books that may look whole and are not.
RESTORE_UNFINISHED = "RESTORE_UNFINISHED"


def restore_unfinished(data_dir: str) -> bool:
    """Whether a restore into `data_dir` was killed before its copy passed its audit."""
    return os.path.lexists(os.path.join(data_dir, RESTORE_UNFINISHED))


# In a backup made by `backup` (and never in what `restore` makes of it): the switch serves
# a data dir only once it is restored, which moves the blacklists past what tills saw.
BACKUP_MARK = "BACKUP"


def is_backup(data_dir: str) -> bool:
    return os.path.lexists(os.path.join(data_dir, BACKUP_MARK))

# name -> what it holds (key -> value)
DATABASES = {
    "meta": "settings of the data dir (schema_version, secrets, forwarding positions, the "
            "retention sweep's position)",
    "accounts": "account id -> fixed-layout account record (core/layout.py)",
    "account_info": "account id -> msgpack {holder, opened_at, freeze_reason}",
    "cards": "card id -> msgpack [account, state, changed_at_ms] (a replaced card that was "
             "lost keeps the time it was lost)",
    "account_cards": "account id + NUL + card id -> empty",
    "card_lost_periods": "card id -> msgpack [[lost at ms, found at ms], ...]: the card's newest "
                         "`card_lost_periods_kept_max` times lost and found again, so an offline "
                         "tap made inside one is flagged after_lost however late it is uploaded",
    "credentials": "credential id -> msgpack {key (sealed), role, school, kind, merchant, revoked}",
    "journal": "txn (8 bytes big-endian) -> msgpack record (`prev`: the account's previous "
               "txn, so an account's history is a chain from its record's LAST_TXN)",
    "history_marks": "account id + NUL + txn (8 bytes BE) -> empty: every "
                     "`records_between_history_marks`-th journal record of the account (history pages)",
    "idempotency": "credential id + NUL + msgpack(id) -> msgpack [t, fingerprint, reply (sealed "
                   "bytes when it holds a secret), at_ms]",
    "idempotency_log_a": "LSN (8 bytes BE) -> msgpack {key: value or nil}: one commit's writes "
                         "to `idempotency` not yet written back (persistence/writeback.py)",
    "idempotency_log_b": "the same: the other of the two logs",
    "accounts_log_a": "LSN (8 bytes BE) -> msgpack {account id: record}: one commit's writes "
                      "to `accounts` not yet written back (persistence/writeback.py)",
    "accounts_log_b": "the same: the other of the two logs",
    "blacklist_cards": "school + NUL + card id -> empty (the current list)",
    "blacklist_changes": "school + NUL + version (8 bytes BE) -> msgpack [added, removed]",
    "qr_secrets": "account id -> sealed 32-byte QR secret (virtual card)",
    "qr_used": "step (8 bytes BE) + account id + . + nonce -> empty",
    "holds": "hold id -> msgpack {account, amount, state, expires, who, txn}",
    "hold_expiry": "expires ms (8 bytes BE) + hold id -> empty, open holds only",
    "settlement": "credential id + NUL + YYYY-MM-DD -> struct <qq (count, total fen)",
    "closed_account_taps": "received at ms (8 bytes BE) + credential id + NUL + msgpack(id) "
                           "-> msgpack {account, school, card, amount, at, who, merchant, id}",
    "school_rooms": "school + NUL + utility account id -> empty (rooms, in account-id order)",
    "building_rooms": "school + NUL + building + NUL + utility account id -> empty",
    "subsidy_batches": "account id + NUL + batch -> msgpack {remaining, expires, end_ms}",
    "subsidy_expiry": "end ms (8 bytes BE) + account id + NUL + batch -> empty, batches left",
    "subsidy_grants": "16-byte hash of [account, batch, id] -> struct >qq (the term's last "
                      "day, days since 1970; the amount): every grant until 400 days past its term",
    "subsidy_grant_expiry": "the term's last day (8 bytes BE) + a `subsidy_grants` key -> "
                            "empty, so past terms' grants are forgotten by a range scan",
    "meal_counts": "meal period (8 bytes BE: local day * 8 + period) + account id -> meal record",
    "last_taps": "account id + NUL + credential id -> tap record (core/layout.py TAP_*)",
}

def cut_short(env, env_path: str) -> str | None:
    """Why `env`'s data file cannot be read, when it is shorter than its own meta page says
    (a partial copy, a disk that filled while copying a backup): reading a page past the
    file's end is a bus error that ends the process without a word. None when whole."""
    needed = (env.info()["last_pgno"] + 1) * env.stat()["psize"]
    size = os.path.getsize(os.path.join(env_path, "data.mdb"))
    if size >= needed:
        return None
    return (f"{env_path}/data.mdb is cut short: {size} bytes where its pages need {needed} "
            f"(a partial copy?); it cannot be read, keep it as it is and use another copy")


# Databases an older schema kept and an upgrade drops (switch/persistence/migrations.py):
# opened only for that upgrade, and only where they exist.
RETIRED_DATABASES = ("idempotency_expiry", "account_journal", "reversals")

DELETED = None  # overlay value meaning "deleted in a batch not yet committed"
# Databases read a page at a time in key order (`keys_after`). Their keys not yet committed
# are also kept per generation, so such a read looks at those few keys, never at every
# write of a batch.
RANGE_READ_DBS = frozenset({"blacklist_cards", "account_cards", "school_rooms",
                            "building_rooms", "subsidy_batches"})
_MISSING = object()
log = logging.getLogger("switch.store")


class BooksCutShort(Exception):
    """The data file is shorter than its pages (`cut_short` says how)."""


class SchemaMismatch(Exception):
    pass


class SortedKeys:
    """The keys a batch changed in one ranged database, kept in order, so a read of one
    prefix looks at that prefix's keys only (a set scanned whole made issuing N cards in
    one batch cost N² key comparisons)."""

    __slots__ = ("keys",)

    def __init__(self):
        self.keys: list[bytes] = []

    def add(self, key: bytes) -> None:
        keys = self.keys
        index = bisect.bisect_left(keys, key)
        if index == len(keys) or keys[index] != key:
            keys.insert(index, key)

    def discard(self, key: bytes) -> None:
        keys = self.keys
        index = bisect.bisect_left(keys, key)
        if index < len(keys) and keys[index] == key:
            del keys[index]

    def with_prefix_after(self, prefix: bytes, after: bytes | None):
        """Its keys starting with `prefix`, above `after` when given, in order."""
        keys = self.keys
        index = bisect.bisect_left(keys, prefix) if after is None or after < prefix \
            else bisect.bisect_right(keys, after)
        while index < len(keys) and keys[index].startswith(prefix):
            yield keys[index]
            index += 1

    def __iter__(self):
        return iter(self.keys)


def _no_ranged_keys() -> dict[str, SortedKeys]:
    return {db: SortedKeys() for db in RANGE_READ_DBS}




def _by_database(writes: dict) -> tuple[dict, dict, dict]:
    """Split a batch's writes (a generation: database -> {key: value}) into sorted (key,
    bytes) lists per database, and the keys to delete per database; the writes of logged
    databases (writeback.LOGS) apart, in `writeback.no_logged`'s shape. Done before the
    write transaction opens, so the transaction itself only copies bytes. A database with
    nothing deleted (nearly every one, nearly always) is copied in C loops, no Python step
    per write."""
    puts: dict[str, list] = {}
    deletes: dict[str, list] = {}
    logged = writeback.no_logged()
    for db, changed in writes.items():
        held = logged.get(db)
        if DELETED not in changed.values():
            if held is not None:
                held.update(zip(changed.keys(), map(bytes, changed.values())))
            else:
                puts[db] = sorted(zip(changed.keys(), map(bytes, changed.values())))
            continue
        if held is not None:
            for key, value in changed.items():
                held[key] = value if value is DELETED else bytes(value)
            continue
        items = []
        removed = []
        for key, value in changed.items():
            if value is DELETED:
                removed.append(key)
            else:
                items.append((key, bytes(value)))
        if items:
            items.sort()
            puts[db] = items
        deletes[db] = removed
    return puts, deletes, logged


def _no_writes() -> dict:
    """An empty generation of the overlay: database -> {key: value or DELETED}, a database's
    dict made at its first write. Keyed by database, then by the key's bytes: a (database,
    key) pair per read and write cost its allocation and hash, a few a debit."""
    return {}


@dataclass
class RoundPlan:
    """What a batch does to one logged database's rounds, decided at `seal`: how far the
    previous round is written back after it, and whether it ends that round or starts the
    next; the round's counters once it is on disk."""
    previous_done: int = 0
    ends_round: bool = False
    starts_round: bool = False
    sorts_round: bool = False   # it put a run of the previous round's keys in order, no more
    commits_logging: int = 0
    writes_logged: int = 0
    written_back: list = field(default_factory=list)   # its slice's (db, [key, ...]) runs


@dataclass
class Batch:
    number: int
    writes: dict = field(default_factory=dict)  # db name -> {key: bytes-like or DELETED}
    last_txn: int = 0
    prepared: tuple = field(default_factory=lambda: ({}, {}))  # (puts, deletes) per db, by `seal`
    # Decided at `seal`, taken by `committed` (once: a second call changes nothing): the
    # writes of logged databases; whether this batch writes back everything logged (`full`);
    # what it does to each logged database's rounds; the logs it empties; the next LSN.
    logged: dict = field(default_factory=dict)   # writeback.no_logged()'s shape
    full: bool = False
    rounds: dict = field(default_factory=dict)   # logged database -> RoundPlan
    logs_emptied: tuple = ()
    next_lsn: int = 0

    @property
    def starts_round(self) -> bool:
        return any(plan.starts_round for plan in self.rounds.values())

    @property
    def ends_round(self) -> bool:
        return any(plan.ends_round for plan in self.rounds.values())

    @property
    def sorts_round(self) -> bool:
        return any(plan.sorts_round for plan in self.rounds.values())

    @property
    def written_back(self) -> list:
        return [run for plan in self.rounds.values() for run in plan.written_back]

    @property
    def writes_back(self) -> bool:
        """Whether it must be committed for the logs' sake, even with no writes of its own:
        it writes back, empties a log, starts a round (which `committed` then takes), or
        sorted a run of the previous round's keys (so the next commit sorts the next)."""
        return self.full or bool(self.logs_emptied) or any(
            plan.previous_done > 0 or plan.starts_round or plan.sorts_round
            for plan in self.rounds.values())


class LogRound:
    """One logged database's write-back (persistence/writeback.py): its committed writes not
    yet written back, the current round's (`logged`) and the previous round's (`previous`,
    and the slice of it the commit under way writes back, `writing_back`), the previous
    round's keys in key order and how many of them are written back, and which of its two
    logs takes records.

    Each logged database has its own rounds. A round of account records is as long as the
    accounts table is large, so a round rewrites each of the table's leaves about once; a
    round of remembered ids gains nothing from that (each id is written once, and a till's
    ids are neighbours whatever the round's length), and when both shared one round a
    million accounts kept about a million ids in memory, whose dictionaries every debit
    looked in, for no throughput (bench/RESULTS.md, 2026-12-04 20:47)."""

    __slots__ = ("db", "logged", "previous", "writing_back", "order", "done", "current_log",
                 "commits_logging", "writes_logged")

    def __init__(self, db: str):
        self.db = db
        self.logged: dict = {}          # key -> value or None (deleted): the current round's
        self.previous: dict = {}        # the previous round's, not yet written back
        # The slice of the previous round the batch being committed writes back, taken out of
        # `previous` at its seal (one lookup a key, not one there and one when it is
        # committed) and read here until it is on disk, then dropped whole, so a round's end
        # frees its last slice only (freeing a million writes at once held the event loop
        # about 50 ms); put back if the commit fails.
        self.writing_back: dict = {}
        self.order: writeback.KeyOrder | None = None   # the previous round's keys
        self.done = 0                   # how many of them are written back
        self.current_log = 0            # which of the database's two logs takes records
        self.commits_logging = 0        # commits that logged something this round
        self.writes_logged = 0          # writes logged this round, a key again each time

    def open_previous(self, previous: dict) -> None:
        """`previous` becomes the round being written back, its keys only listed (put in key
        order a run a commit, writeback.KeyOrder, so each slice writes back neighbours)."""
        self.previous = previous
        self.order = writeback.KeyOrder({self.db: previous}) if previous else None
        self.done = 0

    @property
    def held(self) -> int:
        return len(self.logged) + len(self.previous) + len(self.writing_back)


class Store:
    def __init__(self, path: str, map_size_bytes: int | None = None, fsync: bool = True):
        """`fsync=False` only where no reply leaves the process and a crash is emulated by
        reopening (the ledger simulation): what a commit wrote is then in the page cache."""
        map_size_bytes = map_size_bytes or limits.lmdb_map_initial_size_bytes
        os.makedirs(path, mode=0o700, exist_ok=True)
        self.path = path
        self.env = lmdb.open(path, map_size=map_size_bytes, max_dbs=limits.lmdb_max_dbs,
                             max_readers=limits.lmdb_max_readers, subdir=True,
                             sync=fsync, metasync=fsync, lock=True, readahead=False, mode=0o600)
        short = cut_short(self.env, path)
        if short is not None:       # its first read past the end would be a bus error
            self.env.close()
            raise BooksCutShort(short)
        # LMDB reopens a grown data file with the map at exactly its used size, so the first
        # commit after a restart would meet MapFull: leave room from the start.
        used, size = self.map_usage()
        if used > size * 0.75:
            self.env.set_mapsize(max(map_size_bytes, used * limits.lmdb_map_growth_factor))
        self.dbs = {name: self.env.open_db(name.encode()) for name in DATABASES}
        # Two generations of writes not yet on disk: the open batch's, and the sealed batch
        # being committed. Reads look in that order, then at LMDB. A commit drops a whole
        # generation at once instead of walking its keys.
        self._dirty: dict = _no_writes()    # db -> {key: value or DELETED}: the open batch
        self._sealed: dict = _no_writes()   # the same for the batch being committed
        self._dirty_ranged = _no_ranged_keys()    # db -> keys of RANGE_READ_DBS in _dirty
        self._sealed_ranged = _no_ranged_keys()   # the same for _sealed
        # Under those, the writes of logged databases that are committed, in a log, and not
        # yet written back, a LogRound each: exactly what the logs on disk hold, newest per
        # key (only `committed`, the rebuild in `discard_uncommitted`, and a seal taking a
        # slice out to its `writing_back` change them).
        self._rounds = {db: LogRound(db) for db in writeback.LOGS}
        self._next_lsn = 0            # the next log record's LSN, of every log
        # The databases whose current round `write_back_soon` asked to end, until it does
        # (each its own: a round still being written back cannot start the next yet).
        self._write_back_asked: set = set()
        self._committed_number = 0    # the last batch `committed` took
        # When a commit writes everything back (limits.py); the simulation makes them small.
        self.logged_writes_max = limits.logged_writes_max
        self.commits_between_write_backs_max = limits.commits_between_write_backs_max
        self.logged_writes_per_account_ratio = limits.logged_writes_per_account_ratio
        self._accounts_in_table = 0   # the accounts database's entries, at the round's start
        self._batch_number = 1
        # While a request executes: (database, key, what it held) before each of its writes,
        # in order, so a request that raises can be undone alone (`rollback`, newest first)
        # without losing the rest of the open batch.
        self._undo: list | None = None
        self._undo_last_txn = 0
        self._read = None
        # The data dir's master key (switch/config/masterkey.py), once it opened its secrets:
        # the request layer seals and opens with it.
        self.master = None
        # An upgrade rewrites whole databases in one transaction, the new pages beside the
        # old until it commits: it may need a larger map than the data dir had.
        self._with_room(self._check_schema)
        self.last_txn = self._read_last_txn()
        self.last_committed_txn = self.last_txn   # what readers outside the overlay may see
        self._begin_read()
        self._count_accounts()

    # ------------------------------------------------------------------ schema
    def _check_schema(self) -> None:
        with self.env.begin(write=True, db=self.dbs["meta"]) as txn:
            stored = txn.get(b"schema_version")
            if stored is None:
                if txn.stat(self.dbs["journal"])["entries"]:
                    raise SchemaMismatch("journal present but no schema version")
                txn.put(b"schema_version", str(SCHEMA_VERSION).encode())
                return
            version = int(stored)
            if version > SCHEMA_VERSION:
                raise SchemaMismatch(f"data dir has schema {version}, this switch reads "
                                     f"{SCHEMA_VERSION}")
            # What the last process committed to the logs goes where it belongs before
            # anything (an upgrade, a read) looks at those databases. Older schemas have
            # no logs: nothing to replay.
            writeback.replay_logs(txn, self.dbs)
            # An older data dir is brought up to date in this transaction, step by step.
            if version < SCHEMA_VERSION:
                dbs = {**self.dbs, **self._retired_databases(txn)}
            while version < SCHEMA_VERSION and version in UPGRADES:
                UPGRADES[version](txn, dbs)
                version += 1
                txn.put(b"schema_version", str(version).encode())
            if version != SCHEMA_VERSION:
                raise SchemaMismatch(f"data dir has schema {version}, this switch reads "
                                     f"{SCHEMA_VERSION}")

    def _retired_databases(self, txn) -> dict:
        """Handles of the retired databases this data dir still holds, for its upgrade."""
        retired = {}
        for name in RETIRED_DATABASES:
            try:
                retired[name] = self.env.open_db(name.encode(), txn=txn, create=False)
            except lmdb.NotFoundError:
                pass
        return retired

    def _read_last_txn(self) -> int:
        with self.env.begin(db=self.dbs["journal"]) as txn:
            cursor = txn.cursor()
            return int.from_bytes(cursor.key(), "big") if cursor.last() else 0

    # ------------------------------------------------------------------ reads
    def _begin_read(self) -> None:
        self._read = self.env.begin(buffers=False)

    def _end_read(self) -> None:
        if self._read is not None:
            self._read.abort()
            self._read = None

    def get(self, db: str, key: bytes):
        changed = self._dirty.get(db)
        if changed is not None:
            value = changed.get(key, _MISSING)
            if value is not _MISSING:
                return value  # DELETED is None: reads as absent
        changed = self._sealed.get(db)
        if changed is not None:
            value = changed.get(key, _MISSING)
            if value is not _MISSING:
                return value
        return self.get_committed(db, key)

    def get_committed(self, db: str, key: bytes):
        """The committed value of `key`; batches not yet committed not included."""
        round_ = self._rounds.get(db)
        if round_ is not None:
            value = round_.logged.get(key, _MISSING)
            if value is _MISSING:
                value = round_.previous.get(key, _MISSING)
                if value is _MISSING:
                    value = round_.writing_back.get(key, _MISSING)
            if value is not _MISSING:
                return value
        # The database by position: py-lmdb parses a keyword argument by name on every call
        # (0.59 against 0.35 µs a read, several a debit).
        return self._read.get(key, None, self.dbs[db])

    def committed_entries(self, db: str) -> int:
        """How many keys `db` holds as the database has them (`committed_items`' count),
        read in C from its B-tree's header."""
        return self._read.stat(self.dbs[db])["entries"]

    def committed_items(self, db: str, prefix: bytes = b"", start: bytes | None = None):
        """Iterate committed (key, value) pairs with `prefix`, from `start` (inclusive) when
        given, as the database holds them: neither the overlay nor, for a logged database,
        what its log holds since the last write-back (a store just opened, or after
        `commit_now`, has written everything back)."""
        cursor = self._read.cursor(db=self.dbs[db])
        if not cursor.set_range(start or prefix):
            return
        for key, value in cursor:
            if not key.startswith(prefix):
                return
            yield key, value

    def committed_after(self, db: str, after: bytes | None, count: int) -> list:
        """Up to `count` committed (key, value) pairs above `after` (from the first when
        None), in key order, as `committed_items` sees them: read in one C loop, for a
        caller that visits thousands of keys at a time (the retention sweep)."""
        cursor = self._read.cursor(db=self.dbs[db])
        if after is None:
            positioned = cursor.first()
        else:
            positioned = cursor.set_range(after)
            if positioned and cursor.key() == after:
                positioned = cursor.next()
        if not positioned:
            return []
        return list(itertools.islice(cursor.iternext(), count))

    def keys_with_prefix(self, db: str, prefix: bytes, count_max: int) -> list[bytes]:
        """The first `count_max` keys with `prefix` as the overlay sees them: bounded work,
        whatever the database or the open batch holds."""
        return self.keys_after(db, prefix, None, count_max)[0]

    def keys_after(self, db: str, prefix: bytes, after: bytes | None,
                   count: int) -> tuple[list[bytes], bool]:
        """Up to `count` keys with `prefix` above `after`, in key order, as the overlay sees
        them, and whether more follow. Reads at most `count` + 1 committed keys past those
        the overlay changed: bounded work whatever the database holds."""
        assert db in RANGE_READ_DBS, db
        changed = {}   # key -> value, newest generation last so it wins
        for generation, keys in ((self._sealed, self._sealed_ranged[db]),
                                 (self._dirty, self._dirty_ranged[db])):
            for key in keys.with_prefix_after(prefix, after):
                changed[key] = generation[db][key]
        committed = []
        for key, _ in self.committed_items(db, prefix, start=after):
            if key == after or key in changed:
                continue
            committed.append(key)
            if len(committed) > count:
                break
        merged = sorted(committed + [key for key, value in changed.items() if value is not DELETED])
        return merged[:count], len(merged) > count

    # ------------------------------------------------------------------ writes
    def put(self, db: str, key: bytes, value) -> None:
        changed = self._dirty.get(db)
        undo = self._undo
        if changed is None:
            # Made with the database's first write: a key no dict takes fails here and
            # leaves no empty dict behind (a generation holding one would be committed).
            self._dirty[db] = {key: value}
            if undo is not None:
                undo.append((db, key, _MISSING))
        else:
            if undo is not None:
                previous = changed.get(key, _MISSING)
                # A bytearray of the open batch may be changed in place after this: a copy.
                undo.append((db, key, bytearray(previous) if type(previous) is bytearray
                             else previous))
            changed[key] = value
        if db in RANGE_READ_DBS:
            self._dirty_ranged[db].add(key)

    def delete(self, db: str, key: bytes) -> None:
        self.put(db, key, DELETED)

    # ------------------------------------------------------------------ one request
    def begin_request(self) -> None:
        """Start recording what the next writes replace, until `end_request` or `rollback`."""
        self._undo = []
        self._undo_last_txn = self.last_txn

    def end_request(self) -> None:
        self._undo = None

    def rollback(self) -> None:
        """Undo every write since `begin_request`: the open batch is as it was before it."""
        undo, self._undo = self._undo, None
        assert undo is not None, "rollback without begin_request"
        # Newest first, so each key ends with what it held before the request's first write.
        for db, key, previous in reversed(undo):
            changed = self._dirty[db]
            if previous is _MISSING:
                changed.pop(key, None)
                if db in RANGE_READ_DBS:
                    self._dirty_ranged[db].discard(key)
            else:
                changed[key] = previous
        for db in {db for db, _, _ in undo}:
            if not self._dirty[db]:
                del self._dirty[db]    # so an open batch of undone requests has no writes
        self.last_txn = self._undo_last_txn

    def next_txn(self) -> int:
        self.last_txn += 1
        return self.last_txn

    @property
    def open_writes(self) -> int:
        """Writes waiting for a commit (a round to write back, or asked for, counts as one)."""
        return writeback.count(self._dirty) + bool(
            not self.round_written_back
            or any(self._rounds[db].logged for db in self._write_back_asked))

    @property
    def uncommitted_writes(self) -> int:
        """Writes of the open batch, not yet committed."""
        return writeback.count(self._dirty)

    @property
    def round_written_back(self) -> bool:
        """Whether no round is being written back (their logs are gone)."""
        return all(round_.order is None for round_ in self._rounds.values())

    def write_back_soon(self) -> None:
        """End the current rounds at the next commit that can (a database's round still
        being written back ends once it is), so the commits after write their writes back,
        even with nothing else to write: the retention sweep asks, so a quiet
        switch's ids reach the database it walks (persistence/writeback.py)."""
        self._write_back_asked = set(writeback.LOGS)

    def get_mutable(self, db: str, key: bytes) -> bytearray | None:
        """A value the caller may change in place and then `put`.

        The open batch's own bytearray is returned as is; anything older (the committing
        batch's, or LMDB's) is copied, so a sealed batch never changes under the writer.
        """
        changed = self._dirty.get(db)
        value = _MISSING if changed is None else changed.get(key, _MISSING)
        if value is not _MISSING:
            if self._undo is not None:
                # The caller may change it in place: what it holds now, copied.
                self._undo.append((db, key, bytearray(value) if type(value) is bytearray
                                   else value))
            return value if value is None or type(value) is bytearray else bytearray(value)
        value = self.get(db, key)
        return None if value is None else bytearray(value)

    def seal(self, write_back: bool = False, finish_round: bool = False) -> Batch:
        """Freeze the open batch's writes: O(1), the writer thread takes the dict as is.

        Nothing mutates a sealed value afterwards: mutable values are only ever changed
        through `get_mutable`, which copies anything not owned by the open batch.

        The batch logs its writes to logged databases and writes back the next slice of the
        previous round (with `finish_round`, all that is left of it: a draining switch); with
        `write_back`, it writes back every logged value and its own instead, and empties the
        logs.
        """
        # One batch commits at a time (the committer is sequential).
        assert not writeback.count(self._sealed), "sealed a batch while another was committing"
        # Nor while a batch that only writes back is: planned without its slice, a full
        # write-back would drop the logs that hold it.
        assert not any(round_.writing_back for round_ in self._rounds.values()), \
            "a slice still being committed"
        # Sorted bytes per database now, on the caller's thread: the writer thread then only
        # runs C (putmulti, commit, fsync), and never waits on the event loop for the GIL
        # between Python steps (which made a commit's wall time several times its CPU).
        puts, deletes, logged = _by_database(self._dirty)
        batch = Batch(self._batch_number, self._dirty, self.last_txn, (puts, deletes), logged)
        self._plan_logs(batch, write_back, finish_round)
        self._sealed = self._dirty
        self._dirty = _no_writes()
        self._sealed_ranged = self._dirty_ranged
        self._dirty_ranged = _no_ranged_keys()
        self._batch_number += 1
        return batch

    def _plan_logs(self, batch: Batch, full: bool, finish_round: bool) -> None:
        logged = batch.logged
        puts, deletes = batch.prepared
        batch.next_lsn = self._next_lsn
        if full:
            merged = {db: {**round_.previous, **round_.logged, **logged[db]}
                      for db, round_ in self._rounds.items()}
            if writeback.count(merged):
                back_puts, back_deletes = writeback.split(merged)
                puts.update(back_puts)
                deletes.update(back_deletes)
            batch.full = True
            batch.logs_emptied = writeback.LOG_NAMES
            return
        logs_emptied = []
        for db, round_ in self._rounds.items():
            writes = logged[db]
            if writes:
                puts[writeback.LOGS[db][round_.current_log]] = [
                    (writeback.lsn_key(batch.next_lsn), writeback.encode_record(writes))]
                batch.next_lsn += 1
            plan = batch.rounds[db] = RoundPlan()
            if self._plan_round(round_, plan, len(writes), finish_round, puts, deletes):
                logs_emptied.append(writeback.LOGS[db][1 - round_.current_log])
        batch.logs_emptied = tuple(logs_emptied)

    def _plan_round(self, round_: LogRound, plan: RoundPlan, logged_count: int,
                    finish_round: bool, puts: dict, deletes: dict) -> bool:
        """One logged database's part of a batch: the next slice of its previous round (with
        `finish_round`, all that is left of it: a draining switch) into `puts` and `deletes`,
        and whether the batch starts its next round. Whether the batch ends the previous
        round (its log is then emptied)."""
        plan.commits_logging = round_.commits_logging + (1 if logged_count else 0)
        plan.writes_logged = round_.writes_logged + logged_count
        ends = False
        order = round_.order
        if order is not None:
            start = round_.done
            plan.previous_done = start
            sort_max = order.length if finish_round else limits.key_order_sorted_per_commit_max
            if order.ready or order.sort_some(sort_max):
                # At least twice what this batch logs, so the previous round is written back
                # before the current one reaches its bound.
                end = order.length if finish_round else min(
                    order.length, start + max(limits.written_back_per_commit_min,
                                              2 * logged_count))
                plan.written_back = order.slots(start, end)
                back_puts, back_deletes, taken = writeback.take_writes(
                    {round_.db: round_.previous}, plan.written_back)
                round_.writing_back = taken[round_.db]
                puts.update(back_puts)
                deletes.update(back_deletes)
                plan.previous_done = end
                ends = plan.ends_round = end == order.length
            else:
                # The round's keys are put in order a run a commit (limits.py): this commit
                # writes back nothing, and is committed all the same, so the next one sorts
                # the next run even on a switch with nothing else to write.
                plan.sorts_round = True
        writes_max, commits_max = self.round_bounds(round_.db)
        # A draining switch's last round is left to the close (`finish_round`), whose one
        # transaction writes it back: not started as a round here, to be finished by one
        # more commit.
        if (order is None or ends) and plan.writes_logged and not finish_round and (
                round_.db in self._write_back_asked or plan.writes_logged >= writes_max
                or plan.commits_logging >= commits_max):
            plan.starts_round = True
        return ends

    def round_bounds(self, db: str = "accounts") -> tuple[int, int]:
        """(writes logged, logging commits) that end a round of `db`: the bounds of limits.py;
        for `accounts`, both lengthened alike for a table of more records than a round holds
        writes, so a round rewrites each of its leaves about once
        (limits.logged_writes_per_account_ratio). Writes are counted as logged, a key again
        each time: the log's size, which a round of a few accounts written often would
        otherwise let grow without bound."""
        writes_max = self.logged_writes_max
        if db != "accounts":
            return writes_max, self.commits_between_write_backs_max
        scaled = min(limits.logged_writes_held_max,
                     int(self._accounts_in_table * self.logged_writes_per_account_ratio))
        if scaled <= writes_max:
            return writes_max, self.commits_between_write_backs_max
        return scaled, self.commits_between_write_backs_max * scaled // writes_max

    def _count_accounts(self) -> None:
        # Once a round (a B-tree's count, read in C): the table grows by openings, slowly.
        self._accounts_in_table = self.committed_entries("accounts")

    def write_batch(self, batch: Batch) -> None:
        """One write transaction and one fsync. Runs on a worker thread.

        Raises lmdb.MapFullError untouched so the event loop can grow the map
        (which must not happen while a read transaction is open) and retry.
        """
        puts, deletes = batch.prepared
        dbs = self.dbs
        with self.env.begin(write=True) as txn:
            # One putmulti per database, keys in order: the C loop inserts without a
            # Python call per key, and neighbouring keys land on pages already touched.
            for db, items in puts.items():
                cursor = txn.cursor(dbs[db])
                cursor.putmulti(items)
            for db, keys in deletes.items():
                delete = txn.delete
                handle = dbs[db]
                for key in keys:
                    delete(key, db=handle)
            for log in batch.logs_emptied:
                txn.drop(dbs[log], delete=False)

    def forward_position(self, destination: str) -> int:
        """The last txn `destination` acknowledged (0: none), as the overlay sees it."""
        return decode_position(self.get("meta", position_key(destination)))

    def save_forward_position(self, destination: str, txn: int) -> None:
        self.put("meta", position_key(destination), encode_position(txn))

    def commit_now(self) -> int:
        """Commit the open batch here and now, on this thread (outside the switch's group
        commit: tools, benchmarks and tests). Grows the map as the committer would. Returns
        the number of writes committed."""
        assert not writeback.count(self._sealed), "commit_now while a batch is being committed"
        # Tools read databases whole afterwards: leave nothing in the logs.
        batch = self.seal(write_back=True)
        self._with_room(lambda: self.write_batch(batch))
        self.committed(batch)
        return writeback.count(batch.writes)

    def committed(self, batch: Batch) -> None:
        """The batch is durable: read it from LMDB from now on."""
        self._end_read()
        self._begin_read()
        self.last_committed_txn = max(self.last_committed_txn, batch.last_txn)
        if batch.number != self._committed_number:
            self._committed_number = batch.number
            self._take_logs(batch)
        self._sealed = _no_writes()
        self._sealed_ranged = _no_ranged_keys()

    def _take_logs(self, batch: Batch) -> None:
        """What the logs hold now that `batch` is on disk."""
        self._next_lsn = batch.next_lsn
        for round_ in self._rounds.values():
            round_.writing_back = {}   # on disk: read from its database
        if batch.full:
            for db in writeback.LOGS:
                self._rounds[db] = LogRound(db)
            return
        for db, round_ in self._rounds.items():
            plan = batch.rounds[db]
            round_.commits_logging = plan.commits_logging
            round_.writes_logged = plan.writes_logged
            if plan.ends_round:
                round_.previous, round_.order = {}, None
            elif plan.written_back:
                round_.order.release(plan.previous_done)
            round_.done = 0 if plan.ends_round else plan.previous_done
            round_.logged.update(batch.logged[db])
            if plan.starts_round:
                round_.open_previous(round_.logged)
                round_.logged = {}
                round_.current_log = 1 - round_.current_log
                round_.commits_logging = round_.writes_logged = 0
                self._write_back_asked.discard(db)
                if db == "accounts":
                    self._count_accounts()   # its bounds follow the table (`round_bounds`)

    def discard_uncommitted(self) -> None:
        """A commit failed: forget every write not on disk, committed or open."""
        # The slice the failed batch took goes back where it was first, so that if the
        # rebuild below fails too, memory is as it was before that batch's seal.
        for round_ in self._rounds.values():
            round_.previous.update(round_.writing_back)
            round_.writing_back = {}
        self._sealed = _no_writes()
        self._dirty = _no_writes()
        self._sealed_ranged = _no_ranged_keys()
        self._dirty_ranged = _no_ranged_keys()
        self._batch_number += 1
        self._end_read()
        self.last_txn = self._read_last_txn()
        self.last_committed_txn = self.last_txn   # what readers outside the overlay may see
        self._begin_read()
        # The failed write may still have reached the disk, logs and write-back included:
        # the logged values are what the disk holds, not what this process last knew.
        current, previous, current_logs, self._next_lsn, counts = writeback.read_logs(
            self._read, self.dbs)
        for db, round_ in self._rounds.items():
            round_.logged, round_.current_log = current[db], current_logs[db]
            # As logged, a key again each time: what the round's bounds count.
            round_.writes_logged, round_.commits_logging = counts[db]
            round_.open_previous(previous[db])
        self._count_accounts()

    # ------------------------------------------------------------------ map size
    def map_usage(self) -> tuple[int, int]:
        info = self.env.info()
        used = (info["last_pgno"] + 1) * self.env.stat()["psize"]
        return used, info["map_size"]

    def grow_map(self) -> int:
        """Double the map. Call on the event loop, with no commit running."""
        _, size = self.map_usage()
        new_size = size * limits.lmdb_map_growth_factor
        reading = self._read is not None
        self._end_read()
        try:
            self.env.set_mapsize(new_size)
        finally:
            if reading:
                self._begin_read()
        return new_size

    def _with_room(self, write):
        """Run `write`, one LMDB write transaction, growing the map each time it meets
        MapFull (LMDB aborted it: nothing of it stayed)."""
        for _ in range(limits.commit_retries_map_full_max):
            try:
                return write()
            except lmdb.MapFullError:
                self.grow_map()
        raise lmdb.MapFullError("LMDB map still full after growing")

    def committed_journal(self, first_txn: int, last_txn: int):
        """(txn, raw msgpack record) for committed records first..last, in order."""
        last_txn = min(last_txn, self.last_committed_txn)
        if first_txn > last_txn:
            return
        for key, value in self.committed_items("journal", start=txn_key(first_txn)):
            txn = int.from_bytes(key, "big")
            if txn > last_txn:
                return
            yield txn, value

    def clear_stale_readers(self) -> int:
        """Free the reader slots of processes that died holding one (a `backup` or `audit`
        killed mid-read): each keeps the pages of its snapshot from reuse, and the data
        file grows by every commit's pages until the slot goes. How many were freed."""
        return self.env.reader_check()

    def close(self, write_back: bool = True) -> None:
        """Close the environment, first writing back what the logs hold (read from the disk,
        the truth whatever this process believes), so a clean stop leaves no log behind
        and a reader of the raw databases sees every remembered id. `write_back=False`
        leaves them as a crash would (the next open replays them)."""
        self._end_read()
        try:
            if write_back:
                try:
                    self._with_room(self._write_back_logs)
                except (lmdb.Error, writeback.DamagedLog) as error:
                    # Nothing is lost: the next open replays the logs (or says they are damaged).
                    log.warning("event=write_back_at_close_failed error=%s", error)
        finally:
            self.env.close()

    @property
    def logs_pending(self) -> int:
        """Logged writes not yet written back (none in a store just opened, or after
        `commit_now`): what `committed_items` of a logged database does not show."""
        return sum(round_.held for round_ in self._rounds.values())

    def _write_back_logs(self) -> None:
        with self.env.begin(write=True) as txn:
            writeback.replay_logs(txn, self.dbs)

    # ------------------------------------------------------------------ direct
    def write_now(self, db: str, key: bytes, value: bytes) -> None:
        """A single durable write outside group commit (initialisation only)."""
        with self.env.begin(write=True) as txn:
            txn.put(key, value, db=self.dbs[db])
        self._end_read()
        self._begin_read()
