"""Write-back of the remembered ids (persistence/writeback.py): commits log them, the
commits of the next round write them back a slice each, a crash at any point loses nothing a
commit covered, and a failed commit leaves the store believing what the disk holds."""

import gc
import random

import lmdb
import pytest

from switch import limits
from switch.persistence import writeback
from switch.persistence.store import DELETED, SCHEMA_VERSION, SchemaMismatch, Store

IDS = "idempotency"
LOG_A, LOG_B = writeback.LOGS[IDS]
ACCOUNTS_LOG_A, _ = writeback.LOGS["accounts"]


def _raw(path, db: str) -> dict:
    """What LMDB itself holds in `db`, past every overlay of a Store."""
    env = lmdb.open(str(path), max_dbs=limits.lmdb_max_dbs, readonly=True, lock=False)
    try:
        with env.begin() as txn:
            return {bytes(k): bytes(v) for k, v in txn.cursor(db=env.open_db(db.encode(), txn=txn))}
    finally:
        env.close()


def _records(path, log: str) -> list[dict]:
    return [writeback.decode_record(value) for value in _raw(path, log).values()]


def _commit(store: Store):
    batch = store.seal()
    store.write_batch(batch)
    store.committed(batch)
    return batch


def _current(store: Store) -> dict:
    """The current rounds' logged writes, `writeback.no_logged`'s shape."""
    return {db: round_.logged for db, round_ in store._rounds.items()}


def _previous(store: Store) -> dict:
    """The previous rounds' logged writes not yet written back, the same shape."""
    return {db: round_.previous for db, round_ in store._rounds.items()}


def _logged_in_memory(store: Store) -> dict:
    return writeback.flat(writeback.merged(_previous(store), _current(store)))


def _logged_on_disk(store: Store) -> dict:
    return writeback.newest_logged(store._read, store.dbs)


def _assert_memory_agrees_with_the_logs(store: Store) -> None:
    """What the store holds of its logs is what the disk's logs hold, less what a slice
    wrote back (dropped from memory once committed): every write it holds is the logs'
    newest, and every newest write of the logs it does not hold is in its database."""
    memory, disk = _logged_in_memory(store), _logged_on_disk(store)
    assert {key: disk.get(key, "absent") for key in memory} == memory
    for (db, key), value in disk.items():
        if (db, key) not in memory:
            assert store._read.get(key, db=store.dbs[db]) == value, (db, key)


@pytest.fixture
def small_logs(monkeypatch):
    monkeypatch.setattr(limits, "logged_writes_max", 5)
    monkeypatch.setattr(limits, "commits_between_write_backs_max", 3)
    monkeypatch.setattr(limits, "written_back_per_commit_min", 2)
    monkeypatch.setattr(limits, "logged_writes_per_account_ratio", 0)


def test_a_committed_id_is_in_the_log_not_yet_its_database_and_reads_see_it(tmp_path):
    store = Store(str(tmp_path))
    store.put(IDS, b"till\0\x01", b"first reply")
    store.put("accounts", b"A", bytearray(b"record"))
    store.put("journal", b"\0" * 7 + b"\1", b"entry")
    batch = _commit(store)
    assert not batch.writes_back
    for db, key, value in ((IDS, b"till\0\x01", b"first reply"), ("accounts", b"A", b"record")):
        assert store.get(db, key) == value and store.get_committed(db, key) == value
    store.close(write_back=False)
    assert _raw(tmp_path, IDS) == {} and _raw(tmp_path, "accounts") == {}
    assert _records(tmp_path, LOG_A) == [{b"till\0\x01": b"first reply"}]
    assert _records(tmp_path, ACCOUNTS_LOG_A) == [{b"A": b"record"}]
    assert _raw(tmp_path, "journal") == {b"\0" * 7 + b"\1": b"entry"}   # others as before
    Store(str(tmp_path)).close(write_back=False)   # the open's replay puts each in place
    assert _raw(tmp_path, "accounts") == {b"A": b"record"}
    assert _raw(tmp_path, IDS) == {b"till\0\x01": b"first reply"}


def test_logged_writes_leave_the_cycle_collector_nothing_to_walk(tmp_path, monkeypatch):
    """What a round keeps of its logged writes, for seconds and tens of thousands of them, is
    made of objects the cycle collector never tracks: each new one it tracked counted
    towards its young generation's threshold and was walked by the next collection, and
    two a debit brought a collection of ~20,000 every few seconds, holding the event loop
    for milliseconds. (Collections are off here, so that none untracks what is counted.)"""
    monkeypatch.setattr(limits, "logged_writes_max", 2_000)
    store = Store(str(tmp_path))
    writes = 3_000
    gc.collect()
    gc.disable()     # no collection may untrack what the commits leave behind
    try:
        before = len(gc.get_objects())
        for n in range(2):   # the first commit starts a round, the second ends it and starts one
            for i in range(writes):
                store.put(IDS, b"till-%d\0%d" % (n, i), b"reply")
                store.put("accounts", b"WH%d-%d" % (n, i), bytearray(b"record"))
            _commit(store)
        grown = len(gc.get_objects()) - before
    finally:
        gc.enable()
    assert writeback.count(_previous(store)) == 2 * writes   # kept: a round of them
    assert grown < writes // 10, grown
    assert not any(gc.is_tracked(held) for generation in (_current(store), _previous(store))
                   for held in generation.values())
    store.close()


def test_a_round_is_written_back_a_slice_per_commit_and_its_log_dropped_at_the_end(
        tmp_path, small_logs, monkeypatch):
    monkeypatch.setattr(limits, "commits_between_write_backs_max", 100)
    store = Store(str(tmp_path))
    for i in range(5):
        store.put(IDS, b"till\0%d" % i, b"reply %d" % i)
    first = _commit(store)
    assert first.starts_round and first.rounds[IDS].previous_done == 0   # the bound: 5 logged
    assert writeback.count(_current(store)) == 0 and writeback.count(_previous(store)) == 5
    slices = []
    for n in range(3):
        store.put(IDS, b"next\0%d" % n, b"later")           # logged to the other log
        batch = _commit(store)
        slices.append((batch.rounds[IDS].previous_done, batch.ends_round))
        assert all(store.get(IDS, b"till\0%d" % i) == b"reply %d" % i for i in range(5))
    assert slices == [(2, False), (4, False), (5, True)]     # 2 a commit, twice what it logs
    assert writeback.count(_previous(store)) == 0
    store.close(write_back=False)
    assert sorted(_raw(tmp_path, IDS)) == [b"till\0%d" % i for i in range(5)]
    assert _raw(tmp_path, LOG_A) == {}                        # dropped with the last slice
    assert _records(tmp_path, LOG_B) == [{b"next\0%d" % n: b"later"} for n in range(3)]


def test_a_round_asked_for_with_nothing_else_to_write_is_committed_and_written_back(tmp_path):
    """The retention sweep asks on a quiet switch: the committer sees work (`open_writes`),
    and each batch it seals has some (`writes_back`), until the ids are in `idempotency`."""
    store = Store(str(tmp_path))
    store.put(IDS, b"till\0\x01", b"one")
    _commit(store)
    assert store.open_writes == 0
    store.write_back_soon()
    commits = 0
    while store.open_writes:
        batch = store.seal()
        assert not batch.writes and batch.writes_back
        store.write_batch(batch)
        store.committed(batch)
        commits += 1
    assert commits == 2                          # the round starts, then its one slice
    assert [key for key, _ in store.committed_items(IDS)] == [b"till\0\x01"]
    store.close()


def test_a_round_is_sorted_a_run_a_commit_then_written_back_and_freed_a_slice_at_a_time(
        tmp_path, small_logs, monkeypatch):
    """A round of more keys than a commit sorts is put in order over several commits, each
    committed even with nothing else to write (so a quiet switch gets on with it), and
    nothing is written back before the last run is sorted. Then each slice, once committed,
    leaves memory (its writes are read from their database), so the round's end frees only
    the last slice."""
    monkeypatch.setattr(limits, "logged_writes_max", 4)
    monkeypatch.setattr(limits, "key_order_sorted_per_commit_max", 2)
    store = Store(str(tmp_path))
    for i in range(4):
        store.put(IDS, b"till\0%d" % i, b"reply %d" % i)
        store.put("accounts", b"WH%d" % (9 - i), bytearray(b"record %d" % i))
    assert _commit(store).rounds["accounts"].starts_round   # 4 of each: the bound is 4
    assert store._rounds[IDS].order is not None
    assert writeback.count(_previous(store)) == 8
    sorting = []
    def assert_reads_see_every_write():
        for i in range(4):
            assert store.get(IDS, b"till\0%d" % i) == b"reply %d" % i
            assert store.get("accounts", b"WH%d" % (9 - i)) == b"record %d" % i
    while store.open_writes:
        batch = store.seal()
        assert not batch.writes and batch.writes_back
        # While the slice is being committed it is in neither the round's memory nor its
        # databases yet: reads find it where the seal put it.
        assert_reads_see_every_write()
        store.write_batch(batch)
        assert_reads_see_every_write()
        store.committed(batch)
        sorting.append(batch.sorts_round)
        if batch.sorts_round:
            assert batch.rounds[IDS].previous_done == 0 and not store._rounds[IDS].order.ready
            continue
        held = writeback.flat(_previous(store))
        done = sum(plan.previous_done for plan in batch.rounds.values())
        assert len(held) == 8 - done or batch.ends_round
        assert_reads_see_every_write()     # from memory or the database, the same
        # What memory no longer holds is in its database; the ids it holds are not yet.
        for i in range(4):
            for db, key, value in ((IDS, b"till\0%d" % i, b"reply %d" % i),
                                   ("accounts", b"WH%d" % (9 - i), b"record %d" % i)):
                if (db, key) not in held:
                    assert store._read.get(key, db=store.dbs[db]) == value, (db, key)
                elif db == IDS:
                    assert store._read.get(key, db=store.dbs[db]) is None, key
    # Two runs of 2 in each database's round, each round's first sorted by one commit
    # before its write-back: the second is sorted by the commit that writes back its first
    # slice.
    assert sorting[:1] == [True] and not any(sorting[1:])
    assert writeback.count(_previous(store)) == 0 and store._rounds[IDS].order is None
    assert [key for key, _ in store.committed_items(IDS)] == [b"till\0%d" % i for i in range(4)]
    store.close()


def test_a_round_finished_at_once_is_sorted_written_back_and_its_log_dropped_in_one_commit(
        tmp_path, small_logs, monkeypatch):
    """A draining switch's commit (`finish_round`): all that is left of the round being
    written back, whatever the bounds on a slice and on sorting, in one commit."""
    monkeypatch.setattr(limits, "logged_writes_max", 6)
    monkeypatch.setattr(limits, "key_order_sorted_per_commit_max", 2)
    store = Store(str(tmp_path))
    for i in range(6):
        store.put(IDS, b"till\0%d" % i, b"reply %d" % i)
        store.put("accounts", b"WH%d" % i, bytearray(b"record %d" % i))
    assert _commit(store).starts_round and not store.round_written_back
    store.put(IDS, b"later\0", b"in the next round")
    batch = store.seal(finish_round=True)
    assert [batch.rounds[db].previous_done for db in (IDS, "accounts")] == [6, 6]
    assert all(plan.ends_round for plan in batch.rounds.values()) and not batch.sorts_round
    store.write_batch(batch)
    store.committed(batch)
    assert store.round_written_back and writeback.count(_previous(store)) == 0
    assert writeback.flat(_current(store)) == {(IDS, b"later\0"): b"in the next round"}
    # Nor does it start the next round, asked for or full: that is left to the close.
    store.write_back_soon()
    for i in range(8):
        store.put(IDS, b"full\0%d" % i, b"past the bound")
    batch = store.seal(finish_round=True)
    assert not batch.starts_round and not batch.writes_back
    store.write_batch(batch)
    store.committed(batch)
    assert store.round_written_back and writeback.count(_current(store)) == 9
    store.close(write_back=False)
    assert sorted(_raw(tmp_path, IDS)) == [b"till\0%d" % i for i in range(6)]
    assert _raw(tmp_path, LOG_A) == {} and _raw(tmp_path, ACCOUNTS_LOG_A) == {}


def test_the_bound_on_commits_ends_a_round(tmp_path, small_logs):
    store = Store(str(tmp_path))
    outcomes = []
    for i in range(3):
        store.put(IDS, b"till\0%d" % i, b"reply")
        outcomes.append(_commit(store).starts_round)
        store.put("journal", b"B", b"a commit logging nothing does not count")
        assert not _commit(store).starts_round
    assert outcomes == [False, False, True]


def _store_of_accounts(path, accounts: int) -> Store:
    """A store reopened over `accounts` account records in the table itself."""
    store = Store(str(path))
    for i in range(accounts):
        store.put("accounts", b"WH%05d" % i, bytearray(b"record"))
    store.commit_now()
    store.close()
    return Store(str(path))


def test_a_large_accounts_table_lengthens_both_bounds_of_a_round_up_to_the_held_bound(
        tmp_path, small_logs, monkeypatch):
    monkeypatch.setattr(limits, "logged_writes_per_account_ratio", 1.0)
    monkeypatch.setattr(limits, "logged_writes_held_max", 16)
    assert _store_of_accounts(tmp_path / "few", 4).round_bounds() == (5, 3)   # as limits say
    assert _store_of_accounts(tmp_path / "ten", 10).round_bounds() == (10, 6)
    store = _store_of_accounts(tmp_path / "many", 40)
    assert store.round_bounds() == (16, 9)                  # held to logged_writes_held_max
    store.logged_writes_per_account_ratio = 0.25
    assert store.round_bounds() == (10, 6)


def test_ids_have_rounds_of_their_own_that_a_large_accounts_table_does_not_lengthen(
        tmp_path, small_logs, monkeypatch):
    """Each id is written once, and a till's ids are neighbours whatever the round's length:
    a long round would only keep them in memory (a million accounts kept about a million
    ids). The ids' round ends at the limits' bound while the accounts' round, lengthened,
    goes on; each is written back on its own, from its own log."""
    monkeypatch.setattr(limits, "logged_writes_per_account_ratio", 1.0)
    monkeypatch.setattr(limits, "commits_between_write_backs_max", 100)
    store = _store_of_accounts(tmp_path, 10)
    assert store.round_bounds("idempotency") == (5, 100)
    assert store.round_bounds("accounts") == (10, 200)
    for n in range(5):
        store.put(IDS, b"till\0%d" % n, b"reply")
        store.put("accounts", b"WH%05d" % n, bytearray(b"debit%d" % n))
        batch = _commit(store)
    assert batch.rounds[IDS].starts_round and not batch.rounds["accounts"].starts_round
    ids, accounts = store._rounds[IDS], store._rounds["accounts"]
    assert (ids.current_log, accounts.current_log) == (1, 0)
    assert len(ids.previous) == 5 and len(accounts.logged) == 5
    store.put("accounts", b"WH00005", bytearray(b"debit5"))
    batch = _commit(store)                      # a slice of the ids' round; accounts log on
    assert batch.rounds[IDS].previous_done == 2 and not batch.rounds["accounts"].starts_round
    store.close(write_back=False)               # as a crash leaves it: each log as it was
    assert len(_raw(tmp_path, LOG_A)) == 5 and _raw(tmp_path, LOG_B) == {}
    assert len(_raw(tmp_path, ACCOUNTS_LOG_A)) == 6
    reopened = Store(str(tmp_path))
    assert all(reopened.get(IDS, b"till\0%d" % n) == b"reply" for n in range(5))
    assert all(reopened.get("accounts", b"WH%05d" % n) == b"debit%d" % n for n in range(6))
    reopened.close()


def test_a_failed_commit_finds_each_databases_current_log_again(tmp_path, small_logs,
                                                                  monkeypatch):
    """The ids' round has moved to its other log, the accounts' has not: after a failed
    commit the store reads each database's logs again and goes on logging to the right
    one, so a later crash still replays the newest of every key."""
    monkeypatch.setattr(limits, "logged_writes_per_account_ratio", 1.0)
    monkeypatch.setattr(limits, "commits_between_write_backs_max", 100)
    store = _store_of_accounts(tmp_path, 10)
    for n in range(5):
        store.put(IDS, b"till\0%d" % n, b"reply")
        store.put("accounts", b"WH00001", bytearray(b"debit%d" % n))
        _commit(store)
    store.put(IDS, b"next\0", b"in the ids' second log")
    _commit(store)
    store.put("accounts", b"WH00001", bytearray(b"never written"))
    store.seal()
    store.discard_uncommitted()
    assert (store._rounds[IDS].current_log, store._rounds["accounts"].current_log) == (1, 0)
    assert store.get("accounts", b"WH00001") == b"debit4"
    store.put("accounts", b"WH00001", bytearray(b"debit5"))
    store.put(IDS, b"after\0", b"reply")
    _commit(store)
    _assert_memory_agrees_with_the_logs(store)
    store.close(write_back=False)
    reopened = Store(str(tmp_path))
    assert reopened.get("accounts", b"WH00001") == b"debit5"
    assert [reopened.get(IDS, key) for key in (b"next\0", b"after\0", b"till\0" b"4")] == [
        b"in the ids' second log", b"reply", b"reply"]
    reopened.close()


def test_accounts_opened_while_the_switch_runs_lengthen_the_next_round(tmp_path, small_logs,
                                                                     monkeypatch):
    """The table is counted at each accounts' round's start, not only at open."""
    monkeypatch.setattr(limits, "logged_writes_per_account_ratio", 1.0)
    store = Store(str(tmp_path))
    assert store.round_bounds() == (5, 3)
    for i in range(12):                       # opened, and the round they fill written back
        store.put("accounts", b"WH%05d" % i, bytearray(b"record"))
    assert _commit(store).rounds["accounts"].starts_round
    while not _commit(store).rounds["accounts"].ends_round:
        pass
    assert store.committed_items("accounts")              # in the table itself now
    assert store.round_bounds() == (5, 3)                 # counted when the round began
    for n in range(20):                       # the next round's start counts them
        store.put("accounts", b"WH00000", bytearray(b"debit%d" % n))
        if _commit(store).rounds["accounts"].starts_round:
            break
    assert store.round_bounds() == (12, 7)
    store.close()


def test_a_write_back_asked_while_the_ids_round_is_written_back_still_ends_the_next(
        tmp_path, small_logs, monkeypatch):
    """The retention sweep asks while the ids' previous round is still being written back
    and the accounts' round is not: the accounts' round ends at once, and the ask stays for
    the ids' until it can end, so their ids reach the database the sweep walks."""
    monkeypatch.setattr(limits, "commits_between_write_backs_max", 100)
    monkeypatch.setattr(limits, "written_back_per_commit_min", 1)
    store = Store(str(tmp_path))
    for i in range(5):
        store.put(IDS, b"till\0%d" % i, b"reply")
    assert _commit(store).rounds[IDS].starts_round    # written back a key or two a commit
    store.put(IDS, b"till\0late", b"reply")
    store.put("accounts", b"A", bytearray(b"record"))
    _commit(store)
    store.write_back_soon()
    batch = _commit(store)
    assert batch.rounds["accounts"].starts_round and store._rounds[IDS].order is not None
    while store.open_writes:
        _commit(store)
    assert [key for key, _ in store.committed_items(IDS)] == [
        b"till\0%d" % i for i in range(5)] + [b"till\0late"]
    assert [key for key, _ in store.committed_items("accounts")] == [b"A"]
    store.close()


def test_a_failed_commit_keeps_a_rounds_writes_counted_as_logged(tmp_path, small_logs,
                                                                 monkeypatch):
    """The round's bound counts a key again each time it is logged, so a round of a few
    accounts written often ends (its log bounded); a failed commit rebuilds that count from
    the log's records, not from the keys they hold."""
    monkeypatch.setattr(limits, "commits_between_write_backs_max", 100)
    store = Store(str(tmp_path))
    for n in range(3):
        store.put("accounts", b"A", bytearray(b"debit%d" % n))
        _commit(store)
    store.put("accounts", b"A", bytearray(b"never written"))
    store.seal()
    store.discard_uncommitted()
    accounts = store._rounds["accounts"]
    assert (accounts.writes_logged, accounts.commits_logging) == (3, 3)
    starts = []
    for n in range(2):
        store.put("accounts", b"A", bytearray(b"again%d" % n))
        starts.append(_commit(store).rounds["accounts"].starts_round)
    assert starts == [False, True]             # the fifth write logged: the bound
    store.close()


def test_the_lengthened_commits_bound_is_the_one_that_ends_a_round(tmp_path, small_logs,
                                                                   monkeypatch):
    """Ten accounts: a round of account records ends at 10 writes or 6 logging commits (the
    limits' 3, grown alike), so six commits of one record each end it, and five do not."""
    monkeypatch.setattr(limits, "logged_writes_per_account_ratio", 1.0)
    store = _store_of_accounts(tmp_path, 10)
    assert store.round_bounds() == (10, 6)
    starts = []
    for n in range(6):
        store.put("accounts", b"WH00000", bytearray(b"debit%d" % n))
        starts.append(_commit(store).starts_round)
    assert starts == [False] * 5 + [True]
    store.close()


def test_a_round_over_a_large_accounts_table_ends_at_its_lengthened_bound(
        tmp_path, small_logs, monkeypatch):
    """Ten accounts in the table, the limits' round 5 writes: the round ends at the tenth
    logged write, not the fifth, and is then written back whole like any other."""
    monkeypatch.setattr(limits, "logged_writes_per_account_ratio", 1.0)
    monkeypatch.setattr(limits, "commits_between_write_backs_max", 100)
    store = _store_of_accounts(tmp_path, 10)
    starts = []
    for i in range(10):
        store.put("accounts", b"WH%05d" % i, bytearray(b"debit%d" % i))
        starts.append(_commit(store).starts_round)
    assert starts == [False] * 9 + [True]
    for n in range(8):                       # the next commits write the round back
        store.put(IDS, b"till\0%d" % n, b"reply")
        if _commit(store).ends_round:
            break
    else:
        raise AssertionError("the lengthened round was never written back")
    in_table = {bytes(key): bytes(value) for key, value in store.committed_items("accounts")}
    assert in_table[b"WH00009"] == b"debit9" and in_table[b"WH00000"] == b"debit0"
    store.close()


def test_opening_replays_both_logs_newest_last_and_empties_them(tmp_path, small_logs):
    store = Store(str(tmp_path))
    for i in range(5):
        store.put(IDS, b"till\0%d" % i, b"old %d" % i)
    assert _commit(store).starts_round
    store.put(IDS, b"till\0" b"0", b"newer, in the other log")
    store.put(IDS, b"till\0" b"1", DELETED)
    _commit(store)                                 # writes back two of the old round
    store.close(write_back=False)                  # as a crash leaves it
    assert _raw(tmp_path, LOG_A) and _raw(tmp_path, LOG_B)
    reopened = Store(str(tmp_path))
    assert _logged_in_memory(reopened) == {}
    assert reopened.get(IDS, b"till\0" b"0") == b"newer, in the other log"
    assert reopened.get(IDS, b"till\0" b"1") is None
    assert reopened.get(IDS, b"till\0" b"2") == b"old 2"
    reopened.close(write_back=False)
    assert _raw(tmp_path, LOG_A) == {} and _raw(tmp_path, LOG_B) == {}
    assert sorted(_raw(tmp_path, IDS)) == [b"till\0%d" % i for i in (0, 2, 3, 4)]


def test_a_clean_close_writes_back_what_the_logs_hold(tmp_path, small_logs):
    store = Store(str(tmp_path))
    for i in range(4):
        store.put(IDS, b"till\0%d" % i, b"one")
        _commit(store)
    assert writeback.count(_current(store)) and writeback.count(_previous(store))  # both hold ids
    store.close()
    assert len(_raw(tmp_path, IDS)) == 4
    assert _raw(tmp_path, LOG_A) == {} and _raw(tmp_path, LOG_B) == {}


def test_commit_now_writes_everything_back(tmp_path, small_logs):
    store = Store(str(tmp_path))
    for i in range(6):
        store.put(IDS, b"till\0%d" % i, b"one")
        _commit(store)
    store.put(IDS, b"till\0\x09", b"two")
    store.commit_now()
    assert len(list(store.committed_items(IDS))) == 7
    assert _logged_in_memory(store) == {}
    store.close(write_back=False)
    assert _raw(tmp_path, LOG_A) == {} and _raw(tmp_path, LOG_B) == {}


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


def test_the_newest_write_of_a_key_wins_across_commits_and_rounds(tmp_path, small_logs):
    store = Store(str(tmp_path))
    for round_ in range(4):
        for value in (b"v1", DELETED, b"v2", DELETED, b"v3"):
            store.put(IDS, b"k", value)
            store.put(IDS, b"other\0%d" % round_, value or b"x")
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
    assert len(_raw(tmp_path, LOG_A)) == 3     # none overwrote another
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
    assert _logged_in_memory(store) == {}       # the disk's logs are empty
    assert store.get(IDS, b"till\0\x01") == b"logged"
    assert store.get(IDS, b"till\0\x02") == b"written back with it"
    store.close()


@pytest.mark.parametrize("slices_before", [0, 1, 2])
def test_a_failed_commit_in_the_middle_of_a_round_is_believed_whether_or_not_on_disk(
        tmp_path, small_logs, slices_before):
    """The round ends (the previous log dropped) in the commit that fails, or before it:
    after the failure the store's memory is what the disk holds, and every id reads."""
    for on_disk in (False, True):
        path = tmp_path / f"{on_disk}"
        store = Store(str(path))
        for i in range(5):
            store.put(IDS, b"till\0%d" % i, b"reply %d" % i)
        assert _commit(store).starts_round
        for n in range(slices_before):
            store.put(IDS, b"next\0%d" % n, b"later")
            _commit(store)
        store.put(IDS, b"failed\0", b"answered internal")
        batch = store.seal()
        if on_disk:
            store.write_batch(batch)
        store.discard_uncommitted()
        _assert_memory_agrees_with_the_logs(store)
        assert all(store.get(IDS, b"till\0%d" % i) == b"reply %d" % i for i in range(5))
        assert store.get(IDS, b"failed\0") == (b"answered internal" if on_disk else None)
        for n in range(6):                      # the round goes on to its end and the next
            store.put(IDS, b"after\0%d" % n, b"after")
            _commit(store)
        store.close(write_back=False)
        reopened = Store(str(path))
        assert all(reopened.get(IDS, b"till\0%d" % i) == b"reply %d" % i for i in range(5))
        assert reopened.get(IDS, b"after\0" b"5") == b"after"
        reopened.close()


def _log_state(store: Store) -> tuple:
    return store._next_lsn, [
        (db, dict(round_.logged), dict(round_.previous), dict(round_.writing_back),
         round_.order and (round_.order.length, round_.order.ready, round_.order._released,
                           round_.order._taken_end),
         round_.done, round_.current_log, round_.commits_logging, round_.writes_logged)
        for db, round_ in store._rounds.items()]


@pytest.mark.parametrize("commits_before, full", [(0, False), (0, True), (4, False),
                                                  (5, False), (7, False)])
def test_committed_twice_changes_nothing(tmp_path, small_logs, commits_before, full):
    """Whether the batch logs, starts a round (4 before: the fifth id reaches the bound),
    writes back a slice, ends a round, or writes everything back."""
    store = Store(str(tmp_path))
    for i in range(commits_before):
        store.put(IDS, b"till\0%d" % i, b"one")
        _commit(store)
    store.put(IDS, b"till\0\x09", b"two")
    batch = store.seal(write_back=full)
    store.write_batch(batch)
    store.committed(batch)
    state = _log_state(store)
    store.committed(batch)                      # the committer's recovery path may
    assert _log_state(store) == state
    assert store.get(IDS, b"till\0\x09") == b"two"
    assert all(store.get(IDS, b"till\0%d" % i) == b"one" for i in range(commits_before))
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
    assert len(_raw(tmp_path, LOG_A)) == 1 and _raw(tmp_path, IDS) == {}


def test_a_damaged_log_record_stops_the_open_instead_of_being_guessed(tmp_path):
    store = Store(str(tmp_path))
    store.close()
    env = lmdb.open(str(tmp_path), max_dbs=limits.lmdb_max_dbs)
    with env.begin(write=True, db=env.open_db(LOG_B.encode())) as txn:
        txn.put(writeback.lsn_key(0), writeback.encode_record({b"k": b"v"})[:-1])
    env.close()
    with pytest.raises(writeback.DamagedLog, match="idempotency_log_b record 0: damaged"):
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
ACCOUNT_KEYS = [b"WH%02d" % n for n in range(30)]


def _check(store: Store, model: dict, where: str, keys) -> None:
    for db, key in keys:
        assert store.get(db, key) == model.get((db, key)), f"{db} {key!r} after {where}"


@pytest.mark.parametrize("sort_run_keys", [65_536, 2], ids=["sorted_at_once", "runs_of_2"])
@pytest.mark.parametrize("long_rounds", [False, True], ids=["rounds", "lengthened_rounds"])
@pytest.mark.parametrize("seed", range(12))
def test_every_fault_at_every_step_keeps_every_committed_id(tmp_path, monkeypatch, seed,
                                                            long_rounds, sort_run_keys):
    """A seeded run of writes, deletes and commits over a few write-back rounds, with
    failures before and after the disk and crashes anywhere: after every step the store
    reads exactly what was committed (and what the open batch holds). Lengthened: account
    records too, opened and closed, so the table's size, and with it each round's bounds,
    moves between rounds. A key a commit: each round's keys are put in order over as many
    commits as it has keys before its write-back starts, faults among them."""
    monkeypatch.setattr(limits, "key_order_sorted_per_commit_max", sort_run_keys)
    monkeypatch.setattr(limits, "logged_writes_max", 6)
    monkeypatch.setattr(limits, "commits_between_write_backs_max", 3)
    monkeypatch.setattr(limits, "written_back_per_commit_min", 2)
    monkeypatch.setattr(limits, "logged_writes_per_account_ratio", 0.5 if long_rounds else 0)
    monkeypatch.setattr(limits, "logged_writes_held_max", 10)
    keys = [(IDS, key) for key in KEYS]
    if long_rounds:
        keys += [("accounts", key) for key in ACCOUNT_KEYS]
    rng = random.Random(seed)
    store = Store(str(tmp_path), fsync=False)
    committed: dict = {}      # what the disk holds, as reads must see it
    pending: dict = {}        # the open batch
    rounds = 0
    sorting_commits = 0
    bounds_seen = set()
    try:
        # Longer rounds, as many; rounds sorted over commits, as many (a fault starts the
        # order over, so they need more steps).
        steps = (1_000 if long_rounds else 400) * (1 if sort_run_keys > 2 else 4)
        for step in range(steps):
            roll = rng.random()
            if roll < 0.7:
                db, key = rng.choice(keys)
                value = None if rng.random() < 0.25 else b"v%d" % step
                store.put(db, key, DELETED if value is None else value)
                pending[(db, key)] = value
                model = {**committed, **pending}
                assert store.get(db, key) == model.get((db, key))
                continue
            what = rng.choice(("commit",) * 8 + ("fail_before_disk", "fail_after_disk",
                                                 "commit_twice", "crash", "crash_after_disk",
                                                 "close", "commit_now", "finish"))
            if what in ("commit", "commit_twice", "fail_after_disk", "crash_after_disk",
                        "finish"):
                bounds_seen.add(store.round_bounds())
                batch = store.seal(finish_round=what == "finish")
                store.write_batch(batch)
                rounds += batch.ends_round
                sorting_commits += batch.sorts_round
                # A slice is bounded: no commit writes back a whole round at once (but the
                # one that finishes it, a draining switch's), nor starts one then.
                for db, round_ in store._rounds.items():
                    plan = batch.rounds.get(db)
                    if plan is None:
                        assert batch.full
                    elif what == "finish":
                        assert not plan.starts_round
                        assert round_.order is None or plan.ends_round
                    else:
                        assert plan.previous_done - round_.done <= max(
                            2, 2 * len(batch.logged[db]))
                if what == "commit_twice":
                    store.committed(batch)
                if what in ("commit", "commit_twice", "finish"):
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
                assert _logged_in_memory(store) == {}
            committed = {k: v for k, v in committed.items() if v is not None}
            _check(store, committed, f"step {step}: {what}", keys)
            _assert_memory_agrees_with_the_logs(store)
    finally:
        store.close()
    # The run wrote several rounds back, a slice at a time (sorted over commits, at least
    # one: a round needs about eight commits in a row without a fault there).
    assert rounds >= (4 if sort_run_keys > 2 else 1), rounds
    assert (sorting_commits > 0) == (sort_run_keys == 2), sorting_commits
    # Lengthened, the bounds moved with the table (and never past the held bound).
    assert (len(bounds_seen) > 1) == long_rounds, bounds_seen
    assert all(writes <= 10 for writes, _ in bounds_seen) and min(bounds_seen) >= (6, 3)


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


def test_close_closes_the_environment_even_when_the_log_is_damaged(tmp_path, caplog):
    store = Store(str(tmp_path))
    store.put(IDS, b"till\0\x01", b"one")
    _commit(store)
    with store.env.begin(write=True) as txn:
        txn.put(writeback.lsn_key(99), b"\xc1", db=store.dbs[LOG_A])
    store.close()
    assert "write_back_at_close_failed" in caplog.text
    with pytest.raises(lmdb.Error):
        store.env.stat()                # closed
    assert store.logs_pending == 1


@pytest.mark.parametrize("run_keys", [1, 2, 3, 100])
def test_a_rounds_order_is_each_databases_keys_sorted_and_a_slice_asked_again_is_the_same(
        run_keys):
    values = {"idempotency": {b"t\0\x02": b"r", b"t\0\x01": None},
              "accounts": {b"WH9": b"a", b"WH1": b"b", b"CUIK1": b"c"}}
    slots = [("idempotency", b"t\0\x01"), ("idempotency", b"t\0\x02"),
             ("accounts", b"CUIK1"), ("accounts", b"WH1"), ("accounts", b"WH9")]

    def flat(runs):
        assert all(keys for _, keys in runs), runs          # no empty run
        assert len({db for db, _ in runs}) == len(runs)     # one run per database
        return [(db, key) for db, keys in runs for key in keys]
    for start in range(6):                   # every slice, across the two databases
        for end in range(start, 6):
            order = writeback.KeyOrder(values, run_keys)
            assert order.length == 5
            sorts = 1
            while not order.sort_some(run_keys):   # a run a call (and more while below it)
                sorts += 1
            # Runs of 2 and 3 keys, or 1+1 and 1+1+1, or 2 and 2+1: sorted a run a call, and
            # on into the next while fewer than `run_keys` keys were sorted.
            assert sorts == {1: 5, 2: 3, 3: 1, 100: 1}[run_keys]
            assert flat(order.slots(start, end)) == slots[start:end]
            assert flat(order.slots(0, 5)) == slots          # taken ones are kept, in order
            assert flat(order.slots(start, end)) == slots[start:end]
            order.release(end)                               # forgotten, once committed
            assert flat(order.slots(end, 5)) == slots[end:]
            if end:
                with pytest.raises(AssertionError):
                    order.slots(end - 1, 5)


def test_a_round_is_not_written_back_before_its_order_is_sorted():
    order = writeback.KeyOrder({"accounts": {b"WH2": b"a", b"WH1": b"b"}, "idempotency": {}}, 1)
    assert not order.ready
    with pytest.raises(AssertionError):
        order.slots(0, 1)
    assert not order.sort_some(1) and order.sort_some(1) and order.ready


def test_a_round_of_nothing_has_no_keys_and_a_split_writes_each_databases_keys_in_order():
    assert writeback.KeyOrder(writeback.no_logged()).length == 0
    values = {"idempotency": {b"t\0\x02": b"r", b"t\0\x01": None},
              "accounts": {b"WH9": b"a", b"WH1": b"b", b"CUIK1": b"c"}}
    puts, deletes = writeback.split(values)
    assert puts == {"accounts": [(b"CUIK1", b"c"), (b"WH1", b"b"), (b"WH9", b"a")],
                    "idempotency": [(b"t\0\x02", b"r")]}
    assert deletes == {"idempotency": [b"t\0\x01"]}


def _a_slice_in_flight(tmp_path, monkeypatch):
    """A store whose account A is newer in the previous round than in its database, and a
    sealed batch writing back the slice that holds A, not yet committed."""
    monkeypatch.setattr(limits, "logged_writes_max", 1)
    monkeypatch.setattr(limits, "written_back_per_commit_min", 2)
    monkeypatch.setattr(limits, "logged_writes_per_account_ratio", 0)
    store = Store(str(tmp_path), fsync=False)
    store.put("accounts", b"A", bytearray(b"old balance"))
    store.commit_now()
    store.put("accounts", b"A", bytearray(b"NEW balance"))
    for i in range(3):
        store.put(IDS, b"id%d" % i, b"r")
    assert _commit(store).starts_round
    batch = store.seal()
    assert ("accounts", [b"A"]) in batch.written_back
    return store, batch


def test_a_failed_commit_whose_rebuild_fails_too_leaves_the_slice_where_it_was(
        tmp_path, monkeypatch):
    """The slice a failed batch took is put back before the logs are read again: if that
    read fails as well, reads still see the slice and the next seal takes it again."""
    store, _ = _a_slice_in_flight(tmp_path, monkeypatch)

    def damaged(*_):
        raise writeback.DamagedLog("a second fault")
    with monkeypatch.context() as patched:
        patched.setattr(writeback, "read_logs", damaged)
        with pytest.raises(writeback.DamagedLog):
            store.discard_uncommitted()
    assert store.get("accounts", b"A") == b"NEW balance"
    batch = store.seal()
    assert ("accounts", [b"A"]) in batch.written_back
    store.write_batch(batch)
    store.committed(batch)
    assert store.get("accounts", b"A") == b"NEW balance"
    store.close()
    assert Store(str(tmp_path)).get("accounts", b"A") == b"NEW balance"


def test_no_batch_is_sealed_while_a_slice_is_being_committed(tmp_path, monkeypatch):
    """A full write-back planned without the slice under way would drop the logs holding
    it: one batch at a time, asserted."""
    store, _ = _a_slice_in_flight(tmp_path, monkeypatch)
    with pytest.raises(AssertionError, match="slice still being committed"):
        store.commit_now()
    store.discard_uncommitted()
    store.commit_now()
    store.close()
    assert Store(str(tmp_path)).get("accounts", b"A") == b"NEW balance"
