"""Write-back of the remembered ids (persistence/writeback.py): commits log them, a later
commit writes them back, a crash at any point loses nothing a commit covered, and a failed
commit leaves the store believing what the disk holds."""

import random

import lmdb
import pytest

from switch import limits
from switch.persistence import writeback
from switch.persistence.store import DELETED, SCHEMA_VERSION, SchemaMismatch, Store

IDS = "idempotency"
LOG = writeback.LOGS[IDS]


def _raw(path, db: str) -> dict:
    """What LMDB itself holds in `db`, past every overlay of a Store."""
    env = lmdb.open(str(path), max_dbs=limits.lmdb_max_dbs, readonly=True, lock=False)
    try:
        with env.begin() as txn:
            return {bytes(k): bytes(v) for k, v in txn.cursor(db=env.open_db(db.encode(), txn=txn))}
    finally:
        env.close()


def _commit(store: Store):
    batch = store.seal()
    store.write_batch(batch)
    store.committed(batch)
    return batch


@pytest.fixture
def small_logs(monkeypatch):
    monkeypatch.setattr(limits, "logged_writes_max", 5)
    monkeypatch.setattr(limits, "commits_between_write_backs_max", 3)


def test_a_committed_id_is_in_the_log_not_yet_its_database_and_reads_see_it(tmp_path):
    store = Store(str(tmp_path))
    store.put(IDS, b"till\0\x01", b"first reply")
    store.put("accounts", b"A", b"record")
    batch = _commit(store)
    assert not batch.writes_back
    assert store.get(IDS, b"till\0\x01") == b"first reply"
    assert store.get_committed(IDS, b"till\0\x01") == b"first reply"
    store.close(write_back=False)
    assert _raw(tmp_path, IDS) == {}
    assert [writeback.decode_record(v) for v in _raw(tmp_path, LOG).values()] == [
        {b"till\0\x01": b"first reply"}]
    assert _raw(tmp_path, "accounts") == {b"A": b"record"}   # other databases as before


def test_opening_replays_the_log_into_its_database_and_empties_it(tmp_path):
    store = Store(str(tmp_path))
    store.put(IDS, b"till\0\x01", b"one")
    _commit(store)
    store.put(IDS, b"till\0\x01", b"one, newer")
    store.put(IDS, b"till\0\x02", b"two")
    _commit(store)
    store.close(write_back=False)          # as a crash leaves it
    reopened = Store(str(tmp_path))
    assert reopened.get(IDS, b"till\0\x01") == b"one, newer"
    assert reopened._logged == {}
    reopened.close(write_back=False)
    assert _raw(tmp_path, IDS) == {b"till\0\x01": b"one, newer", b"till\0\x02": b"two"}
    assert _raw(tmp_path, LOG) == {}


def test_a_clean_close_writes_back_what_the_log_holds(tmp_path):
    store = Store(str(tmp_path))
    store.put(IDS, b"till\0\x01", b"one")
    _commit(store)
    store.close()
    assert _raw(tmp_path, IDS) == {b"till\0\x01": b"one"}
    assert _raw(tmp_path, LOG) == {}


def test_commit_now_writes_everything_back(tmp_path):
    store = Store(str(tmp_path))
    store.put(IDS, b"till\0\x01", b"one")
    _commit(store)
    store.put(IDS, b"till\0\x02", b"two")
    store.commit_now()
    assert [key for key, _ in store.committed_items(IDS)] == [b"till\0\x01", b"till\0\x02"]
    assert store._logged == {}
    store.close(write_back=False)
    assert _raw(tmp_path, LOG) == {}


def test_the_bound_on_logged_writes_makes_a_commit_write_them_all_back(tmp_path, small_logs):
    store = Store(str(tmp_path))
    for i in range(4):
        store.put(IDS, b"till\0%d" % i, b"reply %d" % i)
    assert not _commit(store).writes_back
    store.put(IDS, b"till\0\x09", b"the fifth")
    assert _commit(store).writes_back
    assert store._logged == {}
    store.close(write_back=False)
    assert len(_raw(tmp_path, IDS)) == 5 and _raw(tmp_path, LOG) == {}


def test_the_bound_on_commits_makes_a_commit_write_back(tmp_path, small_logs):
    store = Store(str(tmp_path))
    outcomes = []
    for i in range(4):
        store.put(IDS, b"till\0%d" % i, b"reply")
        store.put("accounts", b"A", b"%d" % i)
        outcomes.append(_commit(store).writes_back)
        store.put("accounts", b"B", b"a commit logging nothing does not count")
        assert not _commit(store).writes_back
    assert outcomes == [False, False, True, False]
    store.close(write_back=False)
    assert sorted(_raw(tmp_path, IDS)) == [b"till\0%d" % i for i in range(3)]
    assert len(_raw(tmp_path, LOG)) == 1


def test_a_forgotten_id_stays_forgotten_through_the_log_a_crash_and_a_write_back(tmp_path):
    store = Store(str(tmp_path))
    store.put(IDS, b"old", b"remembered long ago")
    store.commit_now()                          # in `idempotency` itself
    store.delete(IDS, b"old")
    _commit(store)
    assert store.get(IDS, b"old") is None
    assert [key for key, _ in store.committed_items(IDS)] == [b"old"]   # until written back
    store.close(write_back=False)
    reopened = Store(str(tmp_path))
    assert reopened.get(IDS, b"old") is None
    reopened.close(write_back=False)
    assert _raw(tmp_path, IDS) == {}


def test_the_newest_write_of_a_key_wins_across_logged_commits(tmp_path):
    store = Store(str(tmp_path))
    for value in (b"v1", DELETED, b"v2", DELETED, b"v3"):
        store.put(IDS, b"k", value)
        _commit(store)
        assert store.get(IDS, b"k") == value
    store.close(write_back=False)
    reopened = Store(str(tmp_path))
    assert reopened.get(IDS, b"k") == b"v3"
    reopened.close()


def test_a_failed_commit_that_reached_the_disk_is_believed_and_its_lsns_not_reused(tmp_path):
    store = Store(str(tmp_path))
    store.put(IDS, b"till\0\x01", b"answered")
    _commit(store)
    store.put(IDS, b"till\0\x02", b"answered internal, yet on disk")
    store.write_batch(store.seal())
    store.discard_uncommitted()                 # as the committer does when the write raised
    assert store.get(IDS, b"till\0\x02") == b"answered internal, yet on disk"
    store.put(IDS, b"till\0\x03", b"after")
    _commit(store)
    store.close(write_back=False)
    assert len(_raw(tmp_path, LOG)) == 3       # none overwrote another
    reopened = Store(str(tmp_path))
    assert [reopened.get(IDS, b"till\0%c" % i) for i in (1, 2, 3)] == [
        b"answered", b"answered internal, yet on disk", b"after"]
    reopened.close()


def test_a_failed_commit_that_did_not_reach_the_disk_leaves_the_earlier_ids(tmp_path):
    store = Store(str(tmp_path))
    store.put(IDS, b"till\0\x01", b"answered")
    _commit(store)
    store.put(IDS, b"till\0\x02", b"never written")
    store.seal()
    store.discard_uncommitted()
    assert store.get(IDS, b"till\0\x01") == b"answered"
    assert store.get(IDS, b"till\0\x02") is None
    store.close()


def test_a_failed_write_back_that_reached_the_disk_is_believed(tmp_path):
    store = Store(str(tmp_path))
    store.put(IDS, b"till\0\x01", b"logged")
    _commit(store)
    store.put(IDS, b"till\0\x02", b"written back with it")
    store.write_batch(store.seal(write_back=True))
    store.discard_uncommitted()
    assert store._logged == {}                  # the disk's logs are empty
    assert store.get(IDS, b"till\0\x01") == b"logged"
    assert store.get(IDS, b"till\0\x02") == b"written back with it"
    store.close()


@pytest.mark.parametrize("writes_back", [False, True])
def test_committed_twice_changes_nothing(tmp_path, writes_back):
    store = Store(str(tmp_path))
    store.put(IDS, b"till\0\x01", b"one")
    _commit(store)
    store.put(IDS, b"till\0\x02", b"two")
    batch = store.seal(write_back=writes_back)
    store.write_batch(batch)
    store.committed(batch)
    state = (dict(store._logged), store._next_lsn, store._commits_logging)
    store.committed(batch)                      # the committer's recovery path may
    assert (dict(store._logged), store._next_lsn, store._commits_logging) == state
    assert store.get(IDS, b"till\0\x01") == b"one" and store.get(IDS, b"till\0\x02") == b"two"
    store.close()


def test_a_newer_schema_is_refused_before_its_log_is_touched(tmp_path):
    store = Store(str(tmp_path))
    store.put(IDS, b"till\0\x01", b"one")
    _commit(store)
    store.close(write_back=False)
    env = lmdb.open(str(tmp_path), max_dbs=limits.lmdb_max_dbs)
    with env.begin(write=True, db=env.open_db(b"meta")) as txn:
        txn.put(b"schema_version", str(SCHEMA_VERSION + 1).encode())
    env.close()
    with pytest.raises(SchemaMismatch):
        Store(str(tmp_path))
    assert len(_raw(tmp_path, LOG)) == 1 and _raw(tmp_path, IDS) == {}


def test_a_damaged_log_record_stops_the_open_instead_of_being_guessed(tmp_path):
    store = Store(str(tmp_path))
    store.close()
    env = lmdb.open(str(tmp_path), max_dbs=limits.lmdb_max_dbs)
    with env.begin(write=True, db=env.open_db(LOG.encode())) as txn:
        txn.put(writeback.lsn_key(0), writeback.encode_record({b"k": b"v"})[:-1])
    env.close()
    with pytest.raises(ValueError, match="damaged log record"):
        Store(str(tmp_path))


@pytest.mark.parametrize("writes", [{b"k": b"v"}, {b"k": None}, {b"": b""},
                                    {b"x" * 300: b"\x00", b"\x00": None}, {}])
def test_log_records_read_back_as_written(writes):
    assert writeback.decode_record(writeback.encode_record(writes)) == writes


@pytest.mark.parametrize("damaged", [b"", b"\xc1", b"\x81\xa1kX", b"\x92\xc4\x01k\xc0",
                                     b"\x81\xc4\x01k\x01", b"\x81\x01\xc4\x01v",
                                     b"\x81\xc4\x01k\xc0\x00"])
def test_a_damaged_log_record_is_refused(damaged):
    with pytest.raises(ValueError, match="damaged log record"):
        writeback.decode_record(damaged)


# ------------------------------------------------------------- faults at every step
KEYS = [b"till-%d\0%d" % (till, n) for till in range(3) for n in range(6)]


def _check(store: Store, model: dict, where: str) -> None:
    for key in KEYS:
        assert store.get(IDS, key) == model.get(key), f"{key!r} after {where}"


@pytest.mark.parametrize("seed", range(12))
def test_every_fault_at_every_step_keeps_every_committed_id(tmp_path, monkeypatch, seed):
    """A seeded run of writes, deletes and commits over a few write-back rounds, with
    failures before and after the disk and crashes anywhere: after every step the store
    reads exactly what was committed (and what the open batch holds)."""
    monkeypatch.setattr(limits, "logged_writes_max", 7)
    monkeypatch.setattr(limits, "commits_between_write_backs_max", 4)
    rng = random.Random(seed)
    store = Store(str(tmp_path), fsync=False)
    committed: dict = {}      # what the disk holds, as reads must see it
    pending: dict = {}        # the open batch
    write_backs = 0
    try:
        for step in range(400):
            roll = rng.random()
            if roll < 0.55:
                key = rng.choice(KEYS)
                value = None if rng.random() < 0.25 else b"v%d" % step
                store.put(IDS, key, DELETED if value is None else value)
                pending[key] = value
                model = {**committed, **pending}
                assert store.get(IDS, key) == model.get(key)
                continue
            what = rng.choice(("commit", "commit", "commit", "fail_before_disk",
                               "fail_after_disk", "commit_twice", "crash", "crash_after_disk",
                               "close", "commit_now"))
            if what in ("commit", "commit_twice", "fail_after_disk", "crash_after_disk"):
                batch = store.seal()
                store.write_batch(batch)
                write_backs += batch.writes_back
                if what == "commit_twice":
                    store.committed(batch)
                if what in ("commit", "commit_twice"):
                    store.committed(batch)
                elif what == "fail_after_disk":
                    store.discard_uncommitted()
                committed.update(pending)
            elif what == "commit_now":
                store.commit_now()
                committed.update(pending)
            elif what == "fail_before_disk":
                store.seal()
                store.discard_uncommitted()
            pending = {}
            if what in ("crash", "crash_after_disk", "close"):
                store.close(write_back=what == "close")
                store = Store(str(tmp_path), fsync=False)
                assert store._logged == {}
            committed = {k: v for k, v in committed.items() if v is not None}
            _check(store, committed, f"step {step}: {what}")
            assert store._logged == writeback.read_logs(store._read, store.dbs)[0]
    finally:
        store.close()
    assert write_backs >= 3     # the run went through several rounds


def test_a_backup_taken_while_ids_wait_in_the_log_keeps_them(tmp_path):
    """`backup` is LMDB's compacting copy of a live data dir: the log is copied with the rest,
    and opening the copy (as `restore` then `serve` do) replays it."""
    store = Store(str(tmp_path / "live"))
    store.put(IDS, b"till\0\x01", b"paid before the backup")
    _commit(store)
    store.put(IDS, b"old", DELETED)
    _commit(store)
    (tmp_path / "copy").mkdir()
    store.env.copy(str(tmp_path / "copy"), compact=True)
    store.close()
    restored = Store(str(tmp_path / "copy"))
    assert restored.get(IDS, b"till\0\x01") == b"paid before the backup"
    restored.close()
    assert _raw(tmp_path / "copy", IDS) == {b"till\0\x01": b"paid before the backup"}
