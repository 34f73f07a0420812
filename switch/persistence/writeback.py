"""Write-back of the remembered ids: a commit appends them to a log instead of placing each
in its own page of `idempotency`; every so many commits one commit writes them all back.

Why: every till advances its own ids, so 2,000 tills insert at about 2,000 places of the
`idempotency` tree at once, and nearly every insert dirties a page of its own in every
commit (bench/RESULTS.md, 2026-12-02 14:10). Logged as one record per commit under a
rising sequence number (LSN), the same ids fill whole pages one after another; written back
together, a till's consecutive ids share a page, dirtied once per write-back instead of once
per commit.

Durability does not change: a commit holds its ids in the log, in the same LMDB
transaction and fsync as the rest of the batch. The newest committed value of every logged
key not yet written back is kept in memory (the Store's `_logged` generation) so reads see
it; opening a data dir replays its logs first, so a crash loses nothing the fsync covered.

Pure functions over LMDB transactions: the Store decides when, these say how.
"""

import msgpack

# database -> the log its writes go to between write-backs (also in store.DATABASES).
LOGS = {"idempotency": "idempotency_log"}


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


def read_logs(txn, dbs) -> tuple[dict, int]:
    """What the logs hold, as the Store keeps it between write-backs: (db, key) -> newest
    value (None: deleted), in LSN order so a later record wins; and the next free LSN."""
    newest: dict = {}
    next_lsn = 0
    for db, log in LOGS.items():
        cursor = txn.cursor(db=dbs[log])
        for lsn, data in cursor:
            try:
                writes = decode_record(data)
            except ValueError as error:
                raise DamagedLog(f"{log} record {int.from_bytes(lsn, 'big')}: {error}; the "
                                 f"data dir cannot be trusted: restore the latest backup") from None
            for key, value in writes.items():
                newest[(db, key)] = value
            next_lsn = max(next_lsn, int.from_bytes(lsn, "big") + 1)
    return newest, next_lsn


def replay_logs(txn, dbs) -> int:
    """Write every logged value into its database and empty the logs, in `txn` (at open,
    before anything reads those databases). Returns how many keys it wrote back. Empty logs
    write nothing: opening a data dir a clean stop left changes no byte of it."""
    if not any(txn.stat(dbs[log])["entries"] for log in LOGS.values()):
        return 0
    newest, _ = read_logs(txn, dbs)
    write_back(txn, dbs, *split(newest))
    return len(newest)


def split(values: dict) -> tuple[dict, dict]:
    """(db -> [(key, bytes)] in key order, db -> [key]) of (db, key) -> value or None.
    Sorted so neighbouring keys land on pages already touched; the keys alone are sorted,
    about half the time of sorting the pairs (a write-back's tens of thousands of ids are
    sorted on the event loop)."""
    by_db: dict = {}
    for (db, key), value in values.items():
        by_db.setdefault(db, {})[key] = value
    puts: dict = {}
    deletes: dict = {}
    for db, writes in by_db.items():
        keys = sorted(writes)
        puts[db] = [(key, writes[key]) for key in keys if writes[key] is not None]
        deleted = [key for key in keys if writes[key] is None]
        if deleted:
            deletes[db] = deleted
    return puts, deletes


def write_back(txn, dbs, puts: dict, deletes: dict) -> None:
    """The values into their databases, then every log emptied (LMDB frees its pages whole,
    in C). Only the keys of logged databases may be given."""
    for db, items in puts.items():
        txn.cursor(dbs[db]).putmulti(items)
    for db, keys in deletes.items():
        handle = dbs[db]
        for key in keys:
            txn.delete(key, db=handle)
    for log in LOGS.values():
        txn.drop(dbs[log], delete=False)
