"""The LMDB store: schema check, overlay semantics, batch commit, map growth, discard."""

import gc
import random
import threading

import lmdb
import pytest

from switch import limits
from switch.persistence import writeback
from switch.persistence.store import (DATABASES, RETIRED_DATABASES, SCHEMA_VERSION,
                                      SchemaMismatch, Store)


def test_schema_version_written_and_checked(tmp_path):
    store = Store(str(tmp_path))
    assert store.get("meta", b"schema_version") == str(SCHEMA_VERSION).encode()
    store.close()
    env = lmdb.open(str(tmp_path), max_dbs=32)
    with env.begin(write=True, db=env.open_db(b"meta")) as txn:
        txn.put(b"schema_version", b"999")
    env.close()
    with pytest.raises(SchemaMismatch):
        Store(str(tmp_path))


def test_overlay_is_seen_before_commit_and_disk_after(tmp_path):
    store = Store(str(tmp_path))
    store.put("accounts", b"A", bytearray(b"one"))
    assert store.get("accounts", b"A") == b"one"
    batch = store.seal()
    # A write in the next batch to the same key must survive the first commit.
    store.put("accounts", b"A", bytearray(b"two"))
    store.write_batch(batch)
    store.committed(batch)
    assert store.get("accounts", b"A") == b"two"
    second = store.seal()
    store.write_batch(second)
    store.committed(second)
    assert store._sealed == {} and store._dirty == {}
    assert store.get("accounts", b"A") == b"two"
    store.close()
    reopened = Store(str(tmp_path))
    assert reopened.get("accounts", b"A") == b"two"
    reopened.close()


def test_a_sealed_batch_never_changes_under_the_writer(tmp_path):
    store = Store(str(tmp_path))
    store.put("accounts", b"A", bytearray(b"abc"))
    batch = store.seal()
    # The next batch changes the same record: it gets its own copy.
    record = store.get_mutable("accounts", b"A")
    record[0] = ord("X")
    store.put("accounts", b"A", record)
    assert store.get_mutable("accounts", b"A") is record  # the open batch's own, as is
    assert batch.writes["accounts"][b"A"] == b"abc"
    store.write_batch(batch)
    store.committed(batch)
    assert store.get("accounts", b"A") == b"Xbc"
    second = store.seal()
    store.write_batch(second)
    store.committed(second)
    store.close()
    assert Store(str(tmp_path)).get("accounts", b"A") == b"Xbc"


def test_delete_through_overlay(tmp_path):
    store = Store(str(tmp_path))
    store.put("account_cards", b"C", b"x")
    batch = store.seal()
    store.write_batch(batch)
    store.committed(batch)
    store.delete("account_cards", b"C")
    assert store.get("account_cards", b"C") is None
    assert store.keys_with_prefix("account_cards", b"", 10) == []
    batch = store.seal()
    store.write_batch(batch)
    store.committed(batch)
    assert store.get("cards", b"C") is None


def test_map_full_grows_instead_of_failing(tmp_path):
    store = Store(str(tmp_path), map_size_bytes=64 * 1024)
    for n in range(200):
        store.put("journal", n.to_bytes(8, "big"), b"x" * 400)
    batch = store.seal()
    with pytest.raises(lmdb.MapFullError):
        store.write_batch(batch)
    # Nothing of the aborted transaction is on disk.
    assert store.committed_items("journal") is not None
    assert list(store.committed_items("journal")) == []
    for _ in range(6):
        store.grow_map()
        try:
            store.write_batch(batch)
            break
        except lmdb.MapFullError:
            continue
    store.committed(batch)
    assert len(list(store.committed_items("journal"))) == 200
    assert store.map_usage()[1] > 64 * 1024


def test_discard_forgets_uncommitted_and_txn_counter(tmp_path):
    store = Store(str(tmp_path))
    store.put("journal", (store.next_txn()).to_bytes(8, "big"), b"r1")
    batch = store.seal()
    store.write_batch(batch)
    store.committed(batch)
    store.put("journal", (store.next_txn()).to_bytes(8, "big"), b"r2")
    assert store.last_txn == 2
    store.discard_uncommitted()
    assert store.last_txn == 1
    assert store.get("journal", (2).to_bytes(8, "big")) is None


def test_reads_on_one_thread_while_another_commits(tmp_path):
    store = Store(str(tmp_path))
    store.put("accounts", b"A", b"v0")
    first = store.seal()
    store.write_batch(first)
    store.committed(first)
    store.put("accounts", b"A", b"v1")
    batch = store.seal()
    worker = threading.Thread(target=store.write_batch, args=(batch,))
    worker.start()
    for _ in range(1000):
        assert store.get("accounts", b"A") in (b"v0", b"v1")
    worker.join()
    store.committed(batch)
    assert store.get("accounts", b"A") == b"v1"


def test_reopening_a_grown_store_leaves_room_to_write(tmp_path):
    store = Store(str(tmp_path), map_size_bytes=64 * 1024)
    for attempt in range(8):
        for n in range(200):
            store.put("journal", (attempt * 200 + n).to_bytes(8, "big"), b"x" * 400)
        batch = store.seal()
        while True:
            try:
                store.write_batch(batch)
                break
            except lmdb.MapFullError:
                store.grow_map()
        store.committed(batch)
    used, _ = store.map_usage()
    store.close()
    reopened = Store(str(tmp_path), map_size_bytes=64 * 1024)
    assert reopened.map_usage()[1] >= used * 2
    reopened.put("journal", (10**6).to_bytes(8, "big"), b"y" * 400)
    batch = reopened.seal()
    reopened.write_batch(batch)  # no MapFull on the first commit after reopening
    reopened.committed(batch)


def _commit(store):
    batch = store.seal()
    store.write_batch(batch)
    store.committed(batch)


def _pages(store, prefix, count):
    """Every key with `prefix`, read `count` at a time the way a terminal pages."""
    keys, after, more = [], None, True
    while more:
        page, more = store.keys_after("blacklist_cards", prefix, after, count)
        assert len(page) <= count
        assert more is False or len(page) == count
        keys += page
        after = page[-1] if page else after
    return keys


def test_keys_after_sees_the_overlay_of_both_generations(tmp_path):
    """A page read agrees, key for key, with the whole merged view (committed, the batch
    being committed and the open batch), so a page is consistent with what a reply says."""
    import random
    rng = random.Random(7)
    store = Store(str(tmp_path))
    live = set()

    def write_some(how_many):
        for _ in range(how_many):
            school = rng.choice([b"WH", b"W", b"WH1"])   # prefixes of each other's keys
            key = school + b"\0" + "".join(rng.choice("0123456789ABCDEF")
                                           for _ in range(rng.randint(4, 6))).encode()
            if rng.random() < 0.3 and live:
                key = rng.choice(sorted(live))
                store.delete("blacklist_cards", key)
                live.discard(key)
            else:
                store.put("blacklist_cards", key, b"")
                live.add(key)

    write_some(400)
    _commit(store)
    write_some(150)
    sealed = store.seal()          # being committed: still only in the overlay
    write_some(150)                # the open batch
    for prefix in (b"WH\0", b"W\0", b"WH1\0"):
        expected = sorted(key for key in live if key.startswith(prefix))
        assert expected == store.keys_with_prefix("blacklist_cards", prefix, 10**6)
        assert len(expected) > 20
        for count in (1, 7, len(expected) - 1, len(expected), len(expected) + 1):
            assert _pages(store, prefix, count) == expected, count
        # A page starting after a key that is gone starts at the next one still there.
        for after in (prefix + b"0", prefix + b"8", prefix + b"FFFFFFF"):
            keys, _ = store.keys_after("blacklist_cards", prefix, after, 5)
            assert keys == [key for key in expected if key > after][:5]
    store.write_batch(sealed)
    store.committed(sealed)
    _commit(store)
    assert _pages(store, b"WH\0", 10) == sorted(k for k in live if k.startswith(b"WH\0"))
    store.close()


def test_keys_after_reads_a_page_at_the_count_and_one_more(tmp_path):
    store = Store(str(tmp_path))
    for n in range(5):
        store.put("blacklist_cards", b"S\0" + b"%04d" % n, b"")
    _commit(store)
    assert store.keys_after("blacklist_cards", b"S\0", None, 5) == (
        [b"S\0" + b"%04d" % n for n in range(5)], False)
    assert store.keys_after("blacklist_cards", b"S\0", None, 4) == (
        [b"S\0" + b"%04d" % n for n in range(4)], True)
    assert store.keys_after("blacklist_cards", b"S\0", b"S\x000003", 4) == ([b"S\x000004"], False)
    # A failed commit forgets the overlay's index along with its writes.
    store.put("blacklist_cards", b"S\x000009", b"")
    store.discard_uncommitted()
    assert store.keys_after("blacklist_cards", b"S\0", b"S\x000003", 4) == ([b"S\x000004"], False)
    store.close()


def test_rollback_undoes_one_request_and_keeps_the_rest_of_the_open_batch(tmp_path):
    store = Store(str(tmp_path / "db"))
    store.put("meta", b"before", b"1")
    store.put("accounts", b"A", bytearray(b"old"))
    store.put("blacklist_cards", b"WH\0AAAA", b"")
    last_txn = store.last_txn
    store.begin_request()
    store.put("meta", b"new", b"x")
    store.get_mutable("accounts", b"A")[:] = b"new"   # changed in place, never put
    store.delete("meta", b"before")
    store.put("blacklist_cards", b"WH\0BBBB", b"")
    store.delete("blacklist_cards", b"WH\0AAAA")
    store.next_txn()
    store.rollback()
    assert store.get("meta", b"new") is None
    assert store.get("meta", b"before") == b"1"
    assert bytes(store.get("accounts", b"A")) == b"old"
    assert store.last_txn == last_txn
    keys, more = store.keys_after("blacklist_cards", b"WH\0", None, 10)
    assert keys == [b"WH\0AAAA"] and more is False
    store.write_batch(store.seal())
    store.close()


def _overlay_view(store, keys) -> tuple:
    """What reads see of `keys` ((database, key) pairs), as bytes, with the open batch's size
    and the range databases' listings."""
    values = tuple(None if (value := store.get(db, key)) is None else bytes(value)
                   for db, key in keys)
    listed = store.keys_after("blacklist_cards", b"S\0", None, 100)
    return values, store.open_writes, listed


@pytest.mark.parametrize("seed", range(40))
def test_rollback_restores_what_reads_saw_whatever_the_request_wrote(tmp_path, seed):
    """A request that writes one key many times, changes the open batch's bytearrays in
    place between its writes, deletes, and writes databases the open batch had not touched:
    its rollback leaves every read as it was before the request, and the open batch with as
    many writes. Random, seeded; what comes before the request is random too."""
    rng = random.Random(seed)
    store = Store(str(tmp_path / "db"))
    databases = ("meta", "accounts", "settlement", "blacklist_cards")
    keys = [(db, b"S\0" + bytes([65 + n])) for db in databases for n in range(4)]

    def write_some(count):
        for _ in range(count):
            db, key = rng.choice(keys)
            action = rng.random()
            if action < 0.2:
                store.delete(db, key)
            elif action < 0.5:
                mutable = store.get_mutable(db, key)
                if mutable is not None:
                    mutable[:] = bytes([rng.randrange(256)]) * rng.randrange(1, 4)
                    if rng.random() < 0.5:
                        continue   # changed in place, never put
                store.put(db, key, mutable if mutable is not None else bytearray(b"m"))
            else:
                value = bytes([rng.randrange(256)])
                store.put(db, key, bytearray(value) if rng.random() < 0.5 else value)

    write_some(rng.randrange(0, 6))
    if rng.random() < 0.5:
        store.commit_now()
        write_some(rng.randrange(0, 6))
    before = _overlay_view(store, keys)
    store.begin_request()
    write_some(rng.randrange(1, 30))
    store.rollback()
    assert _overlay_view(store, keys) == before
    batch = store.seal()
    # No database left without writes: the committer would commit it as a write.
    assert all(batch.writes.values())
    store.write_batch(batch)
    store.committed(batch)
    assert _overlay_view(store, keys)[0] == before[0]
    store.close()


def test_commit_now_commits_the_open_batch_and_grows_the_map(tmp_path):
    store = Store(str(tmp_path / "db"), map_size_bytes=64 * 1024)
    for n in range(2000):  # far more than 64 KiB
        store.put("journal", n.to_bytes(8, "big"), b"x" * 100)
    assert store.commit_now() == 2000
    assert store.open_writes == 0
    assert store.map_usage()[1] > 64 * 1024
    store.close()
    reopened = Store(str(tmp_path / "db"))
    assert reopened.get("journal", (1999).to_bytes(8, "big")) == b"x" * 100
    reopened.close()


def test_a_schema_1_data_dir_gets_room_indexes_and_grown_account_records_at_open(tmp_path):
    from switch.core import layout
    store = Store(str(tmp_path))
    old_records = {}
    for account_id, kind in (("WH-8D-1006", layout.KIND_UTILITY), ("WH-ROOMLESS", layout.KIND_UTILITY),
                             ("WH20230001", layout.KIND_PERSON)):
        record = layout.new_account_record("WH", kind, 1, b"s" * 16, b"p" * 32, b"i" * 32)
        layout.put(record, layout.BALANCE, 1234)
        # What a schema-1 switch wrote: 152-byte records.
        old_records[account_id] = bytes(record[:152])
        store.put("accounts", account_id.encode(), old_records[account_id])
    store.commit_now()
    store.close()
    # What a schema-1 switch left: no room indexes.
    env = lmdb.open(str(tmp_path), max_dbs=32)
    meta = env.open_db(b"meta")
    with env.begin(write=True, db=meta) as txn:
        txn.put(b"schema_version", b"1")
    env.close()
    store = Store(str(tmp_path))
    assert store.get("meta", b"schema_version") == str(SCHEMA_VERSION).encode()
    assert [key for key, _ in store.committed_items("school_rooms")] == [
        b"WH\0WH-8D-1006", b"WH\0WH-ROOMLESS"]
    assert [key for key, _ in store.committed_items("building_rooms")] == [b"WH\x008\x00WH-8D-1006"]
    for account_id, old in old_records.items():
        record = store.get("accounts", account_id.encode())
        assert len(record) == layout.ACCOUNT_RECORD_SIZE and record[:152] == old
        assert layout.get(record, layout.SUBSIDY) == 0 and layout.get(record, layout.BALANCE) == 1234
    store.close()


def _as_schema(path, version: bytes, retired: dict) -> None:
    """Turn a data dir into what an older switch left: its schema version and the databases
    it kept that this one does not (name -> items)."""
    env = lmdb.open(str(path), max_dbs=32)
    with env.begin(write=True) as txn:
        txn.put(b"schema_version", version, db=env.open_db(b"meta", txn=txn))
        for name, items in retired.items():
            db = env.open_db(name.encode(), txn=txn)
            for key, value in items:
                txn.put(key, value, db=db)
    env.close()


def _database_names(path) -> set:
    env = lmdb.open(str(path), max_dbs=32, readonly=True)
    with env.begin() as txn:
        names = {bytes(key).decode() for key, _ in txn.cursor()}
    env.close()
    return names


@pytest.mark.parametrize("had_the_index", [True, False])
def test_a_schema_3_data_dir_loses_the_id_expiry_index_and_keeps_its_ids(tmp_path, had_the_index):
    store = Store(str(tmp_path))
    store.put("idempotency", b"till\0\x01", b"remembered")
    store.commit_now()
    store.close()
    index = [((1_795_000_000_000).to_bytes(8, "big") + b"till\0\x01", b"")]
    _as_schema(tmp_path, b"3", {"idempotency_expiry": index} if had_the_index else {})
    assert ("idempotency_expiry" in _database_names(tmp_path)) == had_the_index
    store = Store(str(tmp_path))
    assert store.get("meta", b"schema_version") == str(SCHEMA_VERSION).encode()
    assert store.get("idempotency", b"till\0\x01") == b"remembered"
    store.close()
    assert "idempotency_expiry" not in _database_names(tmp_path)


def test_the_open_batchs_ranged_keys_are_read_by_prefix_in_order():
    """A ranged read of one prefix visits that prefix's keys of the open batch only (issuing
    a card reads its account's cards: with every key scanned, a batch issuing N cards cost
    N² comparisons, minutes for a big import)."""
    from switch.persistence.store import SortedKeys
    keys = SortedKeys()
    for key in (b"B\0\x02", b"A\0\x01", b"B\0\x01", b"B\0\x02", b"BB\0\x01", b"C\0\x01"):
        keys.add(key)
    assert list(keys) == [b"A\0\x01", b"B\0\x01", b"B\0\x02", b"BB\0\x01", b"C\0\x01"]
    assert list(keys.with_prefix_after(b"B\0", None)) == [b"B\0\x01", b"B\0\x02"]
    assert list(keys.with_prefix_after(b"B\0", b"A")) == [b"B\0\x01", b"B\0\x02"]
    assert list(keys.with_prefix_after(b"B\0", b"B\0\x01")) == [b"B\0\x02"]
    assert list(keys.with_prefix_after(b"B\0", b"B\0\x02")) == []
    assert list(keys.with_prefix_after(b"D\0", None)) == []
    keys.discard(b"B\0\x01")
    keys.discard(b"B\0\x09")   # not there: nothing happens
    assert list(keys.with_prefix_after(b"B\0", None)) == [b"B\0\x02"]


def test_the_open_batch_makes_no_object_per_write_for_the_cycle_collector(tmp_path):
    """A request's reads and writes of the open batch make no (database, key) pair: each
    pair was an allocation and a hash, and an object the cycle collector counted towards
    its young generation until its first collection. (Collections are off here, so that
    none untracks what is counted.)"""
    store = Store(str(tmp_path))
    writes = 3_000
    gc.collect()
    gc.disable()
    try:
        before = len(gc.get_objects())
        store.begin_request()
        for i in range(writes):
            key = b"%08d" % i
            store.put("journal", key, b"record")
            store.put("settlement", key, b"count")
            assert store.get("journal", key) == b"record"
        store.end_request()
        grown = len(gc.get_objects()) - before
    finally:
        gc.enable()
    assert grown < writes // 10, grown
    assert writeback.count(store._dirty) == 2 * writes
    batch = store.seal()
    assert [key for key, _ in batch.prepared[0]["journal"]] == [b"%08d" % i for i in range(writes)]
    store.write_batch(batch)
    store.committed(batch)
    assert store.get("settlement", b"00000042") == b"count"
    store.close()


def test_a_put_refused_leaves_the_open_batch_without_writes(tmp_path):
    """A key no dict takes is refused before the overlay holds anything of it: the batch
    then has no writes, and the committer commits nothing (no empty transaction, no fsync)."""
    store = Store(str(tmp_path))
    for undoing in (False, True):
        if undoing:
            store.begin_request()
        with pytest.raises(TypeError):
            store.put("journal", bytearray(b"not a key"), b"record")
        if undoing:
            store.rollback()
        batch = store.seal()
        assert not batch.writes and not batch.writes_back
        store.committed(batch)
    store.close()


def test_every_database_and_every_retired_one_fit_in_one_environment():
    # An upgrade opens the retired databases beside the current ones (Store._retired_databases).
    assert len(DATABASES) + len(RETIRED_DATABASES) <= limits.lmdb_max_dbs


def test_the_reader_slot_of_a_process_killed_mid_read_is_freed(tmp_path):
    """A `backup` or `audit` killed mid-read left its slot, and the live data file grew by
    every commit's pages until the next backup or restart (an outside test: 20-60 times as
    fast). The switch frees such slots every `stale_readers_checked_every_s`."""
    from tests.lmdb_readers import holds_a_slot, killed_reader
    store = Store(str(tmp_path / "lmdb"))
    try:
        pid = killed_reader(str(tmp_path / "lmdb"))
        assert holds_a_slot(store.env, pid)
        assert store.clear_stale_readers() == 1
        assert store.clear_stale_readers() == 0 and not holds_a_slot(store.env, pid)
    finally:
        store.close()
