"""Write-back of account records and remembered ids: a commit appends them to a log instead
of placing each in its own page of `accounts` or `idempotency`, and the writes of the round
before are written back a slice per commit, in key order.

Why: a debit writes one account record and one remembered id, each at a random place of a
large B-tree, and copy-on-write makes each of those a page (and, at a million accounts, a
branch page above it) dirtied in every commit (bench/RESULTS.md, 2026-12-02 14:10). Every
till advances its own ids, so 2,000 tills insert at about 2,000 places of `idempotency` at
once. Logged as one record per database per commit under a rising sequence number (LSN),
the same writes fill whole pages one after another; written back a round at a time, in key
order, an account written several times in a round is written back once, and a till's
consecutive ids share a page. Written back in slices (not in one commit), no commit stalls
its batch with the whole round.

Two logs per database: a round's records go to one (the current log); when the round ends
its log becomes the previous one, whose ids the next commits write back, a slice each, and
the commit that writes the last slice drops that log whole. Every record of the previous
log is older than every record of the current one. Each database has its own rounds
(store.LogRound): account records' as long as the accounts table is large, remembered ids'
at the bound of limits.py whatever the table.

Durability does not change: a commit holds its ids in the log, in the same LMDB
transaction and fsync as the rest of the batch. The newest committed value of every logged
key not yet written back is kept in memory (each store.LogRound's current and previous
round, and the slice being written back by the commit under way) so reads see it;
opening a data dir replays its logs first, so a crash loses nothing the fsync covered.

Pure functions over LMDB transactions: the Store decides when, these say how.
"""

import collections

import msgpack

from switch import limits
from switch.persistence.key_order import KeyRuns

# database -> its two logs (also in store.DATABASES): records go to the current one while
# the other's are written back.
LOGS = {"accounts": ("accounts_log_a", "accounts_log_b"),
        "idempotency": ("idempotency_log_a", "idempotency_log_b")}
LOG_NAMES = tuple(name for pair in LOGS.values() for name in pair)


class DamagedLog(ValueError):
    """A log record that does not decode: the open stops rather than guess what it held."""


def lsn_key(lsn: int) -> bytes:
    return lsn.to_bytes(8, "big")


def encode_record(writes: dict) -> bytes:
    """One commit's writes to one logged database, as one log value: a msgpack map of key
    -> value (nil: deleted). One value per commit, packed in C: a few large values, written
    once each to consecutive pages, where an entry per id cost the event loop a Python call
    per id."""
    return msgpack.packb(writes, use_bin_type=True)


def decode_record(data) -> dict:
    """key -> value or None of a log value; ValueError if it is damaged."""
    try:
        writes = msgpack.unpackb(data, raw=False, strict_map_key=False)
    except (ValueError, msgpack.exceptions.ExtraData) as error:
        raise ValueError(f"damaged log record: {error}") from None
    if type(writes) is not dict or not all(
            type(key) is bytes and (value is None or type(value) is bytes)
            for key, value in writes.items()):
        raise ValueError("damaged log record: not a map of bytes to bytes or nil")
    return writes


def _records_in_lsn_order(txn, dbs, databases) -> list:
    """Every record of the named databases' logs as (LSN, the log's index in its pair, the
    database, the log, its key, its value), oldest first. A log `dbs` names None (a data
    dir from before it, read by `audit` or `backup`) holds nothing."""
    records = []
    for db in databases:
        for index, log in enumerate(LOGS[db]):
            if dbs.get(log) is None:
                continue
            for key, data in txn.cursor(db=dbs[log]):
                records.append((int.from_bytes(key, "big"), index, db, log, bytes(key), data))
    records.sort(key=lambda record: record[0])
    return records


def no_logged() -> dict:
    """An empty generation of logged writes: database -> {key: value or None (deleted)}.
    Keyed by database, then by the key's bytes, never by (database, key) pairs: a new pair
    is an object the cycle collector tracks until its first collection, and a round keeps
    two a debit alive for seconds, so they counted towards the young generation's threshold
    and a collection came every 1.5-3 s at 5,000/s, walking the ~20,000 pairs made since the
    one before and holding the event loop 3-10 ms (bench/RESULTS.md, 2026-12-03 12:18).
    Bytes and dicts of bytes it neither counts nor walks."""
    return {db: {} for db in LOGS}


def count(logged: dict) -> int:
    """How many writes a generation holds: of logged writes, or of the store's overlay
    (the same shape, database -> {key: value})."""
    return sum(map(len, logged.values()))


def flat(logged: dict) -> dict:
    """(db, key) -> value of a generation (`count`'s), for readers outside the
    switch's hot path (tools, tests)."""
    return {(db, key): value for db, writes in logged.items() for key, value in writes.items()}


def read_logs(txn, dbs) -> tuple[dict, dict, dict, int, dict]:
    """What the logs hold, as the Store keeps it between write-backs: the current logs' and
    the previous logs' writes (`no_logged`'s shape) with the newest value per key, each read
    in LSN order so a later record wins; each database's current log's index (the log of
    its pair holding its newest record, the first when both are empty: each database has
    its own rounds); the next free LSN; and per database, the writes its current log's
    records hold (a key again each time) and how many records (commits) they are."""
    by_log: tuple[dict, dict] = (no_logged(), no_logged())
    newest = {db: [-1, -1] for db in LOGS}
    counts = {db: [[0, 0], [0, 0]] for db in LOGS}   # per log: writes, records
    for lsn, index, db, log, _, data in _records_in_lsn_order(txn, dbs, LOGS):
        try:
            writes = decode_record(data)
        except ValueError as error:
            raise DamagedLog(f"{log} record {lsn}: {error}; the data dir cannot be trusted: "
                             f"restore the latest backup") from None
        by_log[index][db].update(writes)
        newest[db][index] = lsn
        counts[db][index][0] += len(writes)
        counts[db][index][1] += 1
    current = {db: 0 if lsns[0] >= lsns[1] else 1 for db, lsns in newest.items()}
    return ({db: by_log[index][db] for db, index in current.items()},
            {db: by_log[1 - index][db] for db, index in current.items()},
            current, max(max(lsns) for lsns in newest.values()) + 1,
            {db: tuple(counts[db][index]) for db, index in current.items()})


def log_problems(txn, dbs) -> list[str]:
    """What is wrong with the logs of a snapshot, every record read (`audit`: a damaged
    record is found while the switch runs, not at its next open): keys that are not LSNs,
    records that do not decode, an LSN in both logs, and two logs whose records interleave
    (every record of the previous log is older than every record of the current one). A
    log `dbs` names None (a data dir from before the logs) holds nothing."""
    problems = []
    for pair in LOGS.values():
        spans = []
        seen: dict = {}
        for log in pair:
            handle = dbs.get(log)
            if handle is None:
                continue
            lsns = []
            for key, data in txn.cursor(db=handle):
                if len(key) != 8:
                    problems.append(f"{log}: key {bytes(key)[:16].hex()} is not an LSN")
                    continue
                lsn = int.from_bytes(key, "big")
                try:
                    decode_record(data)
                except ValueError as error:
                    problems.append(f"{log} record {lsn}: {error}")
                if lsn in seen:
                    problems.append(f"LSN {lsn} is in both {seen[lsn]} and {log}")
                seen[lsn] = log
                lsns.append(lsn)
            if lsns:
                spans.append((min(lsns), max(lsns), log))
        if len(spans) == 2:
            (_, older_last, older), (newer_first, _, newer) = sorted(spans)
            if older_last >= newer_first:
                problems.append(f"{older} and {newer} interleave: {older} holds LSN "
                                f"{older_last}, {newer} LSN {newer_first}")
    return problems


def newest_readable(txn, dbs, database: str) -> dict:
    """key -> the newest value (None: deleted) of one logged database's logs, in LSN order,
    passing over a record that is not an LSN's or does not decode: what a checker (`audit`)
    reads of a data dir whose next open `read_logs` would refuse, so that one damaged
    record, reported by `log_problems`, does not hide every other logged write."""
    newest: dict = {}
    for _, _, _, _, key, data in _records_in_lsn_order(txn, dbs, (database,)):
        if len(key) != 8:
            continue   # not an LSN
        try:
            newest.update(decode_record(data))
        except ValueError:
            continue
    return newest


def newest_logged(txn, dbs) -> dict:
    """(db, key) -> the newest value the logs hold (None: deleted): what the next open
    writes back, and what a reader of a live data dir (`audit`, `backup`) must see on top
    of the databases themselves."""
    return flat(_newest(txn, dbs))


def _newest(txn, dbs) -> dict:
    """The newest value per key of both logs, in `no_logged`'s shape."""
    current, previous, _, _, _ = read_logs(txn, dbs)
    return merged(previous, current)


def merged(*generations: dict) -> dict:
    """One generation of logged writes from several, a later one's value winning."""
    result = no_logged()
    for generation in generations:
        for db, writes in generation.items():
            result[db].update(writes)
    return result


def replay_logs(txn, dbs) -> int:
    """Write every logged value into its database and empty the logs, in `txn` (at open,
    before anything reads those databases). Returns how many keys it wrote back. Empty logs
    write nothing: opening a data dir a clean stop left changes no byte of it."""
    if not any(txn.stat(dbs[log])["entries"] for log in LOG_NAMES):
        return 0
    newest = _newest(txn, dbs)
    write_back(txn, dbs, *split(newest), LOG_NAMES)
    return count(newest)


class KeyOrder:
    """A round's keys in key order within each database, the databases one after another,
    so each slice writes back neighbouring keys. Put in order a run at a time
    (`sort_some`, switch/persistence/key_order.py): a heap of them cost about 1.4 µs a key
    popped at a million keys, and sorting them at once stalled the event loop. What was
    taken is kept until `release`, so a slice asked for again (after a failed commit) gets
    the same keys; released keys are dropped, so a round's keys are freed a slice at a
    time, not all at its end."""

    def __init__(self, values: dict, run_keys: int | None = None):
        run_keys = run_keys or limits.key_order_sorted_per_commit_max
        self._runs = [(db, KeyRuns(list(writes), run_keys))
                      for db, writes in values.items() if writes]
        self.length = count(values)
        self._taken: collections.deque = collections.deque()   # (position, db, [key, ...])
        self._taken_end = 0         # the position after the last key taken
        self._released = 0          # keys before this position are forgotten

    @property
    def ready(self) -> bool:
        return all(runs.ready for _, runs in self._runs)

    def sort_some(self, keys_max: int) -> bool:
        """Sort runs until `keys_max` keys were sorted by this call (at least one run, and
        more while below it); whether every run is now sorted."""
        sorted_now = 0
        for _, runs in self._runs:
            while sorted_now < keys_max and not runs.ready:
                sorted_now += runs.sort_next()
        return self.ready

    def slots(self, start: int, end: int) -> list:
        """The keys at positions [start, end) of the order, as (db, [key, ...]) runs, one a
        database. Every run must be sorted, and `start` not before what was released."""
        assert self.ready, "slots asked for before the order is sorted"
        assert start >= self._released, (start, self._released)
        while self._taken_end < end and self._runs:
            db, runs = self._runs[0]
            wanted = end - self._taken_end
            keys = runs.take(wanted)
            if keys:
                self._taken.append((self._taken_end, db, keys))
                self._taken_end += len(keys)
            if len(keys) < wanted:      # this database has no more: the next one's keys
                self._runs.pop(0)
        found: list = []
        for position, db, keys in self._taken:
            if position >= end:
                break
            piece = keys[max(start - position, 0):end - position]
            if not piece:
                continue
            if found and found[-1][0] == db:
                found[-1][1].extend(piece)
            else:
                found.append((db, piece))
        return found

    def release(self, position: int) -> None:
        """Forget the keys before `position` (written back and committed)."""
        taken = self._taken
        while taken and taken[0][0] + len(taken[0][2]) <= position:
            taken.popleft()
        self._released = max(self._released, position)


def writes_of(values: dict, runs) -> tuple[dict, dict]:
    """(db -> [(key, bytes)], db -> [key]): the puts and deletes of the (db, [key, ...])
    `runs` (in their order) as `values` (`no_logged`'s shape) holds them."""
    puts: dict = {}
    deletes: dict = {}
    for db, keys in runs:
        _add_writes(puts, deletes, db, keys, list(map(values[db].__getitem__, keys)))
    return puts, deletes


def take_writes(values: dict, runs) -> tuple[dict, dict, dict]:
    """`writes_of`, each write taken out of `values` as it is read (one lookup a key), and
    what was taken, in `no_logged`'s shape."""
    puts: dict = {}
    deletes: dict = {}
    taken = no_logged()
    for db, keys in runs:
        written = list(map(values[db].pop, keys))
        taken[db].update(zip(keys, written))
        _add_writes(puts, deletes, db, keys, written)
    return puts, deletes, taken


def _add_writes(puts: dict, deletes: dict, db: str, keys: list, written: list) -> None:
    if None not in written:      # no delete among them (the usual slice): pairs in C
        if written:
            puts.setdefault(db, []).extend(zip(keys, written))
        return
    for key, value in zip(keys, written):
        if value is None:
            deletes.setdefault(db, []).append(key)
        else:
            puts.setdefault(db, []).append((key, value))


def split(values: dict) -> tuple[dict, dict]:
    """The puts (in key order) and deletes of a generation of logged writes (at open and
    close, off the event loop: the keys sorted at once)."""
    return writes_of(values, [(db, sorted(writes)) for db, writes in values.items()])


def write_back(txn, dbs, puts: dict, deletes: dict, logs_emptied=()) -> None:
    """The values into their databases, then the logs named emptied (LMDB frees their pages
    whole, in C)."""
    for db, items in puts.items():
        txn.cursor(dbs[db]).putmulti(items)
    for db, keys in deletes.items():
        handle = dbs[db]
        for key in keys:
            txn.delete(key, db=handle)
    for log in logs_emptied:
        txn.drop(dbs[log], delete=False)
