"""Write-back of the remembered ids: a commit appends them to a log instead of placing each
in its own page of `idempotency`; every so many commits one commit writes them all back.

Why: every till advances its own ids, so 2,000 tills insert at about 2,000 places of the
`idempotency` tree at once, and nearly every insert dirties a page of its own in every
commit (bench/RESULTS.md, 2026-12-02 14:10). Logged under a rising sequence number (LSN) the
same ids fill whole pages one after another; written back together, a till's consecutive
ids share a page, dirtied once per write-back instead of once per commit.

Durability does not change: a commit holds its ids in the log, in the same LMDB
transaction and fsync as the rest of the batch. The newest committed value of every logged
key not yet written back is kept in memory (the Store's `_logged` generation) so reads see
it; opening a data dir replays its logs first, so a crash loses nothing the fsync covered.

Pure functions over LMDB transactions: the Store decides when, these say how.
"""

import struct

# database -> the log its writes go to between write-backs (also in store.DATABASES).
LOGS = {"idempotency": "idempotency_log"}

_KEY_LENGTH = struct.Struct(">H")
_PUT = b"P"
_DELETE = b"D"


def lsn_key(lsn: int) -> bytes:
    return lsn.to_bytes(8, "big")


def encode_entry(key: bytes, value) -> bytes:
    """A log value: the key's length, the key, then P + the value, or D for a delete."""
    head = _KEY_LENGTH.pack(len(key)) + key
    return head + _DELETE if value is None else head + _PUT + bytes(value)


def decode_entry(data) -> tuple[bytes, bytes | None]:
    """(key, value or None for a delete) of a log value; ValueError if it is damaged."""
    data = bytes(data)
    if len(data) < _KEY_LENGTH.size + 1:
        raise ValueError("log entry too short")
    (length,) = _KEY_LENGTH.unpack_from(data)
    end = _KEY_LENGTH.size + length
    if len(data) <= end:
        raise ValueError("log entry shorter than its key")
    kind = data[end:end + 1]
    if kind == _DELETE and len(data) == end + 1:
        return data[_KEY_LENGTH.size:end], None
    if kind == _PUT:
        return data[_KEY_LENGTH.size:end], data[end + 1:]
    raise ValueError(f"log entry of unknown kind {kind!r}")


def read_logs(txn, dbs) -> tuple[dict, int]:
    """What the logs hold, as the Store keeps it between write-backs: (db, key) -> newest
    value (None: deleted), in LSN order so a later entry wins; and the next free LSN."""
    newest: dict = {}
    next_lsn = 0
    for db, log in LOGS.items():
        cursor = txn.cursor(db=dbs[log])
        for lsn, data in cursor:
            key, value = decode_entry(data)
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
    """(db -> sorted [(key, bytes)], db -> [key]) of (db, key) -> value or None."""
    puts: dict = {}
    deletes: dict = {}
    for (db, key), value in values.items():
        if value is None:
            deletes.setdefault(db, []).append(key)
        else:
            puts.setdefault(db, []).append((key, bytes(value)))
    for items in puts.values():
        items.sort()
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
