"""`audit` finds what is wrong, and passes what is right."""

import os
import shutil
import struct

import lmdb
import msgpack
import pytest

from switch.persistence.audit import audit
from switch.core import layout
from switch.cli.datadir import open_data_dir
from switch.persistence import writeback
from switch.persistence.keys import subsidy_grant_key
from switch.persistence.store import STORE_DIR, Store, txn_key
from tests.ledger.conftest import BALANCE, CARD, STUDENT, World, limits, populate


def _books(tmp_path, balance=500, amounts=(1000, -500), gap=False, kinds=None,
           status=layout.STATUS_ACTIVE, refs=None, power_on=0):
    store = open_data_dir(str(tmp_path))
    record = layout.new_account_record("WH", 0, 0, bytes(16), bytes(32), bytes(32))
    layout.put(record, layout.BALANCE, balance)
    layout.put(record, layout.STATUS, status)
    layout.put(record, layout.POWER_ON, power_on)
    running = previous = 0
    for n, amount in enumerate(amounts, start=1):
        running += amount
        number = n + 1 if gap and n > 1 else n
        store.put("journal", txn_key(number), msgpack.packb(
            {"txn": number, "at": 0, "kind": kinds[n - 1] if kinds else ("credit" if amount >= 0 else "debit"), "account": "WH1",
             "school": "WH", "amount": amount, "balance": running, "prev": previous,
             "ref": refs[n - 1] if refs else None}))
        previous = number
    layout.set_history_head(record, previous, len(amounts))
    store.put("accounts", b"WH1", record)
    store.commit_now()
    store.close()


def test_sound_books_pass(tmp_path):
    _books(tmp_path)
    report = audit(str(tmp_path))
    assert report.sound, report.problems
    assert report.records == 2 and report.accounts == 1 and report.total_balance_fen == 500


def test_balance_that_differs_from_the_journal_is_found(tmp_path):
    _books(tmp_path, balance=400)
    report = audit(str(tmp_path))
    assert not report.sound
    assert "balance 400 but journal sum 500" in report.problems[0]


def test_txn_gap_is_found(tmp_path):
    _books(tmp_path, gap=True)
    report = audit(str(tmp_path))
    assert any("txn gap" in problem for problem in report.problems)


def test_missing_data_dir_is_not_sound(tmp_path):
    assert not audit(str(tmp_path / "nothing")).sound


# ---------------------------------------------------------------- what the books mean
# Books the request layer wrote (a lost card and two offline taps of it, a replaced card, an
# open hold, a closed account), then corrupted in exactly one way, straight in LMDB.
LOST_OWNER, LOST_CARD = "WH20230002", "0A0A0002"
MOVED_OWNER, MOVED_CARD, NEW_CARD = "WH20230003", "0A0A0003", "0A0A0033"
FOUND_OWNER, FOUND_CARD = "WH20230004", "0A0A0004"   # lost, tapped, then found again
CLOSED = "WH20230009"


@pytest.fixture(scope="module")
def sound_books(tmp_path_factory):
    path = tmp_path_factory.mktemp("books") / "data"
    world = populate(World(path))
    world.ok(world.water, "hold", card=CARD, amount=2_000)
    world.open_person(LOST_OWNER, LOST_CARD, balance=5_000)
    world.open_person(MOVED_OWNER, MOVED_CARD, balance=5_000)
    world.open_person(FOUND_OWNER, FOUND_CARD, balance=5_000)
    world.open_person(CLOSED)
    world.ok(world.admin, "close_account", account=CLOSED)
    world.ok(world.admin, "replace_card", account=MOVED_OWNER, old=MOVED_CARD, new=NEW_CARD)
    lost_at = world.clock.now_ms()
    world.ok(world.service, "lost", card=LOST_CARD)
    world.ok(world.service, "lost", card=FOUND_CARD)
    world.clock.advance(60)
    reply = world.ok(world.pos, "offline", records=[
        {"id": "before-loss", "card": LOST_CARD, "amount": 100, "at": lost_at - 30_000},
        {"id": "after-loss", "card": LOST_CARD, "amount": 100, "at": lost_at + 30_000},
        {"id": "moved", "card": MOVED_CARD, "amount": 100, "at": lost_at + 30_000},
        {"id": "found-later", "card": FOUND_CARD, "amount": 100, "at": lost_at + 30_000}])
    assert [result.get("flag") for result in reply["results"]] == [None, "after_lost",
                                                                    "after_lost", "after_lost"]
    world.ok(world.service, "found", card=FOUND_CARD)
    world.commit()
    world.close()
    return path


@pytest.fixture
def books(sound_books, tmp_path) -> str:
    path = tmp_path / "data"
    shutil.copytree(sound_books, path)
    return str(path)


def _lmdb_write(data_dir: str, change) -> None:
    """Run `change(txn, dbs)` in one LMDB write transaction on the data dir."""
    env = lmdb.open(os.path.join(data_dir, STORE_DIR), max_dbs=32, subdir=True)
    try:
        with env.begin(write=True) as txn:
            change(txn, lambda name: env.open_db(name.encode(), txn=txn))
    finally:
        env.close()


def _journal_record(txn, db, predicate):
    for key, value in txn.cursor(db=db("journal")):
        record = msgpack.unpackb(value, raw=False)
        if predicate(record):
            return key, record
    raise AssertionError("no such record")


def _problems(data_dir: str) -> list[str]:
    report = audit(data_dir)
    assert not report.sound
    return report.problems


def test_books_the_ledger_wrote_are_sound(books):
    report = audit(books)
    assert report.sound, report.problems
    assert report.open_holds == 1


def test_a_closed_account_holding_money_is_found(books):
    def close_a_full_account(txn, db):
        record = bytearray(txn.get(STUDENT.encode(), db=db("accounts")))
        layout.put(record, layout.STATUS, layout.STATUS_CLOSED)
        txn.put(STUDENT.encode(), bytes(record), db=db("accounts"))
    _lmdb_write(books, close_a_full_account)
    assert _problems(books) == [
        f"account {STUDENT}: closed but holds balance {BALANCE}, held 2000"]


@pytest.mark.parametrize("listed, card, message", [
    (False, LOST_CARD, f"card {LOST_CARD}: lost but not on "
                       f"WH's blacklist"),
    (True, CARD, f"card {CARD}: on WH's blacklist but should not be")])
def test_a_blacklist_that_disagrees_with_card_states_is_found(books, listed, card, message):
    def change(txn, db):
        key = b"WH\0" + card.encode()
        if listed:
            txn.put(key, b"", db=db("blacklist_cards"))
        else:
            assert txn.delete(key, db=db("blacklist_cards"))
    _lmdb_write(books, change)
    assert _problems(books) == [message]


def test_a_card_state_the_journal_never_gave_is_found(books):
    def found_without_record(txn, db):
        account, _, changed_ms = msgpack.unpackb(txn.get(LOST_CARD.encode(), db=db("cards")))
        txn.put(LOST_CARD.encode(), msgpack.packb([account, layout.CARD_ACTIVE, changed_ms]),
                db=db("cards"))
        txn.delete(b"WH\0" + LOST_CARD.encode(), db=db("blacklist_cards"))
    _lmdb_write(books, found_without_record)
    assert _problems(books) == [f"card {LOST_CARD}: state active but the journal says lost"]


def test_held_that_differs_from_the_open_holds_is_found(books):
    def change(txn, db):
        record = bytearray(txn.get(STUDENT.encode(), db=db("accounts")))
        layout.put(record, layout.HELD, 1_999)
        txn.put(STUDENT.encode(), bytes(record), db=db("accounts"))
    _lmdb_write(books, change)
    assert _problems(books) == [f"account {STUDENT}: held 1999 but open holds sum to 2000"]


def test_an_open_hold_missing_from_the_expiry_index_is_found(books):
    def change(txn, db):
        (key, _), = list(txn.cursor(db=db("hold_expiry")))
        txn.delete(key, db=db("hold_expiry"))
    _lmdb_write(books, change)
    [problem] = _problems(books)
    assert problem.endswith("open but not in the expiry index")


def test_a_hold_of_an_account_that_does_not_exist_is_found(books):
    def change(txn, db):
        txn.put(b"H999", msgpack.packb({"account": "WH-GONE", "amount": 100, "state": "voided",
                                        "expires": 0, "who": "WH-WATER-1", "txn": 999}),
                db=db("holds"))
    _lmdb_write(books, change)
    assert _problems(books) == ["hold H999: account WH-GONE does not exist"]


@pytest.mark.parametrize("ref, flag, message", [
    ("after-loss", None, "tapped after it was lost but not flagged after_lost"),
    ("before-loss", "after_lost", f"flagged after_lost but card {LOST_CARD} was lost since"),
    ("moved", None, "tapped after it was blocked but not flagged after_lost"),
    ("found-later", None, "tapped after it was lost but not flagged after_lost"),
    ("before-loss", "overdrawn", "offline flag 'overdrawn' is not one of ['after_lost', 'meal_limit']")])
def test_offline_flags_that_disagree_with_the_cards_are_found(books, ref, flag, message):
    def change(txn, db):
        key, record = _journal_record(txn, db, lambda r: r["kind"] == "offline"
                                      and r["ref"] == ref)
        record.pop("flag", None)
        if flag is not None:
            record["flag"] = flag
        txn.put(key, msgpack.packb(record), db=db("journal"))
    _lmdb_write(books, change)
    [problem] = _problems(books)
    assert message in problem


def test_an_offline_record_of_another_accounts_card_is_found(books):
    def change(txn, db):
        key, record = _journal_record(txn, db, lambda r: r.get("ref") == "after-loss")
        record["card"] = CARD
        txn.put(key, msgpack.packb(record), db=db("journal"))
    _lmdb_write(books, change)
    [problem] = _problems(books)
    assert f"is not of a card of {LOST_OWNER}" in problem


def test_a_txn_missing_from_written_books_is_found(books):
    def change(txn, db):
        key, _ = _journal_record(txn, db, lambda r: r.get("ref") == "before-loss")
        txn.delete(key, db=db("journal"))
    _lmdb_write(books, change)
    problems = _problems(books)
    assert any(problem.startswith("txn gap: expected") for problem in problems)


def test_a_history_chain_that_skips_a_record_is_found(books):
    def change(txn, db):
        key, record = _journal_record(txn, db, lambda r: r.get("ref") == "after-loss")
        skipped.append(msgpack.unpackb(txn.get(txn_key(record["prev"]), db=db("journal"))))
        record["prev"] = skipped[0]["prev"]
        txn.put(key, msgpack.packb(record), db=db("journal"))
    skipped = []
    _lmdb_write(books, change)
    [problem] = _problems(books)
    assert problem.endswith(f"but {LOST_OWNER}'s record before it is txn {skipped[0]['txn']}")


def test_an_account_whose_history_head_is_not_its_newest_record_is_found(books):
    def change(txn, db):
        record = bytearray(txn.get(LOST_OWNER.encode(), db=db("accounts")))
        newest = layout.get(record, layout.LAST_TXN)
        layout.put(record, layout.LAST_TXN, newest - 1)
        txn.put(LOST_OWNER.encode(), bytes(record), db=db("accounts"))
        found.append(newest)
    found = []
    _lmdb_write(books, change)
    assert _problems(books) == [f"account {LOST_OWNER}: history head txn {found[0] - 1} but its "
                                f"newest record is txn {found[0]}"]


@pytest.mark.parametrize("value", [b"\xc1 not msgpack", msgpack.packb({"txn": 1}),
                                   msgpack.packb([1, 2]), msgpack.packb({"account": 5,
                                                                        "amount": "5"})])
def test_a_malformed_journal_record_is_found_not_a_traceback(books, value):
    def change(txn, db):
        key, _ = _journal_record(txn, db, lambda r: r.get("ref") == "before-loss")
        txn.put(key, value, db=db("journal"))
    _lmdb_write(books, change)
    problems = _problems(books)
    assert any(problem.endswith("malformed record") for problem in problems), problems


def test_a_refund_counts_in_the_journal_sum_and_closed_books_pass(tmp_path):
    _books(tmp_path, balance=0, amounts=(1000, -300, -700),
           kinds=("credit", "debit", "refund"), status=layout.STATUS_CLOSED)
    report = audit(str(tmp_path))
    assert report.sound, report.problems


def test_a_closed_account_given_money_by_a_reversal_is_found(tmp_path):
    # A reversal after closing (txn 3) put money back into a closed account.
    _books(tmp_path, balance=300, amounts=(300, -300, 300),
           kinds=("credit", "debit", "close_account"), status=layout.STATUS_CLOSED)
    report = audit(str(tmp_path))
    assert "account WH1: closed but holds balance 300, held 0" in report.problems


def test_a_record_after_closing_and_a_closed_account_come_back_are_found(tmp_path):
    # An offline overdraw after closing turned `closed` into `frozen`.
    _books(tmp_path, balance=-100, amounts=(0, -100, 0),
           kinds=("close_account", "offline", "freeze"), status=layout.STATUS_FROZEN)
    report = audit(str(tmp_path))
    assert "txn 2: offline on account WH1 after it was closed at txn 1" in report.problems
    assert "txn 3: freeze on account WH1 after it was closed at txn 1" in report.problems
    assert "account WH1: status frozen after it was closed at txn 1" in report.problems


def test_the_cutoff_a_rooms_closing_wrote_right_after_it_passes(tmp_path):
    _books(tmp_path, balance=0, amounts=(1000, -1000, 0), kinds=("credit", "refund", "cutoff"),
           refs=("c", "leaving", "leaving"), status=layout.STATUS_CLOSED)
    report = audit(str(tmp_path))
    assert report.sound and not report.notices, (report.problems, report.notices)


@pytest.mark.parametrize("kinds, refs, txn", [
    (("credit", "refund", "cutoff", "cutoff"), ("c", "r", "r", "r"), 4),   # a second one
    (("credit", "refund", "lost", "cutoff"), ("c", "r", "l", "r"), 4),     # not right after
    (("credit", "close_account", "cutoff", "x"), ("c", "r", "other", "y"), 3),  # another's
])
def test_a_cutoff_after_closing_that_the_closing_did_not_write_is_found(tmp_path, kinds, refs,
                                                                        txn):
    _books(tmp_path, balance=0, amounts=(0, 0, 0, 0), kinds=kinds, refs=refs,
           status=layout.STATUS_CLOSED)
    assert (f"txn {txn}: cutoff on account WH1 after it was closed at txn 2"
            in _problems(str(tmp_path)))


def test_a_closed_room_with_its_power_on_is_a_notice(tmp_path):
    # What a switch that refunded rooms without cutting their power left: the books are
    # right, the relay is not.
    _books(tmp_path, balance=0, amounts=(1000, -1000), kinds=("credit", "refund"),
           status=layout.STATUS_CLOSED, power_on=1)
    report = audit(str(tmp_path))
    assert report.sound, report.problems
    assert report.notices == ["account WH1: a closed room with its power on (closed by a "
                              "switch that left it on, and no `cutoff` sent downstream): "
                              "switch its relay off by hand"]


def _subsidy_books(tmp_path, purse: int, batch_remaining: int, record_subsidy: int):
    """One account: 1000 fen of its own, a 300 fen subsidy of which a debit spent 100."""
    store = open_data_dir(str(tmp_path))
    record = layout.new_account_record("WH", 0, 0, bytes(16), bytes(32), bytes(32))
    layout.put(record, layout.BALANCE, 1000)
    layout.put(record, layout.SUBSIDY, purse)
    layout.set_history_head(record, 3, 3)
    store.put("accounts", b"WH1", record)
    store.put("subsidy_batches", b"WH1\0b", msgpack.packb(
        {"remaining": batch_remaining, "expires": "2099-01-01", "end_ms": 1}))
    for number, amount, from_subsidy, balance, subsidy in (
            (1, 1000, 0, 1000, None), (2, 300, -300, 1000, 300),
            (3, -100, 100, 1000, record_subsidy)):
        entry = {"txn": number, "at": 0, "kind": ("credit", "subsidy", "debit")[number - 1], "account": "WH1", "school": "WH",
                 "amount": amount, "balance": balance, "prev": number - 1}
        if from_subsidy:
            entry["from_subsidy"] = from_subsidy
        if subsidy is not None:
            entry["subsidy"] = subsidy
        store.put("journal", txn_key(number), msgpack.packb(entry))
    store.commit_now()
    store.close()


def test_both_purses_are_checked_against_the_journal_and_the_batches(tmp_path):
    _subsidy_books(tmp_path / "sound", purse=200, batch_remaining=200, record_subsidy=200)
    report = audit(str(tmp_path / "sound"))
    assert report.sound, report.problems
    _subsidy_books(tmp_path / "purse", purse=250, batch_remaining=250, record_subsidy=200)
    assert audit(str(tmp_path / "purse")).problems == [
        "account WH1: subsidy 250 but journal sum 200"]
    _subsidy_books(tmp_path / "batch", purse=200, batch_remaining=150, record_subsidy=200)
    assert audit(str(tmp_path / "batch")).problems == [
        "account WH1: subsidy 200 but its batches hold 150"]
    _subsidy_books(tmp_path / "record", purse=200, batch_remaining=200, record_subsidy=210)
    assert audit(str(tmp_path / "record")).problems == [
        "txn 3: subsidy 210 but running sum of WH1's subsidy is 200"]


def test_a_data_dir_from_before_the_subsidy_purse_is_audited_before_any_switch_migrates_it(
        tmp_path):
    """An operator audits the books before the upgraded switch first starts: the account
    records are still 152 bytes (before the subsidy purse); audit reads them, no traceback."""
    _books(tmp_path)
    env = lmdb.open(os.path.join(str(tmp_path), STORE_DIR), max_dbs=64, subdir=True)
    with env.begin(write=True) as txn:
        accounts = env.open_db(b"accounts", txn=txn)
        txn.put(b"WH1", bytes(txn.get(b"WH1", db=accounts))[:152], db=accounts)
        txn.put(b"schema_version", b"2", db=env.open_db(b"meta", txn=txn))
    env.close()
    report = audit(str(tmp_path))
    assert report.sound, report.problems
    assert report.accounts == 1 and report.total_balance_fen == 500


def test_history_marks_and_record_counts_that_disagree_with_the_journal_are_found(tmp_path):
    """Every `records_between_history_marks`-th record of an account has a history mark and no other
    does, and each account counts its records: a lost mark, a stray one or a wrong count
    would make history pages skip or repeat records, so audit says which."""
    world = populate(World(tmp_path / "data"))
    for _ in range(limits.records_between_history_marks):
        world.credit(STUDENT, 1)
    world.commit()
    world.close()
    path = str(tmp_path / "data")
    assert audit(path).sound
    changed = {}

    def corrupt(txn, db):
        marks = db("history_marks")
        mark = next(key for key, _ in txn.cursor(db=marks) if key.startswith(STUDENT.encode()))
        txn.delete(mark, db=marks)
        txn.put(STUDENT.encode() + b"\0" + (1).to_bytes(8, "big"), b"", db=marks)
        record = bytearray(txn.get(STUDENT.encode(), db=db("accounts")))
        changed["records"] = layout.get(record, layout.HISTORY_RECORDS)
        layout.put(record, layout.HISTORY_RECORDS, changed["records"] + 1)
        txn.put(STUDENT.encode(), bytes(record), db=db("accounts"))
        changed["mark"] = int.from_bytes(bytes(mark)[-8:], "big")

    _lmdb_write(path, corrupt)
    problems = _problems(path)
    assert f"account {STUDENT}: counts {changed['records'] + 1} journal records but has " \
           f"{changed['records']}" in problems
    assert f"history mark missing: account {STUDENT} txn {changed['mark']}" in problems
    assert f"history mark without its record: account {STUDENT} txn 1" in problems


def _books_with_ids_in_the_logs(tmp_path, monkeypatch, last_balance=None):
    """Sound books of a switch that stopped (as a crash does) with account records and
    remembered ids in both logs of each: a round of each being written back two a commit,
    and the current one. The first commit writes four ids and four accounts (WH2-WH4 empty,
    with no records), each later one an id and WH1's record again, the last with
    `last_balance` when given (books no longer sound)."""
    _books(tmp_path)
    monkeypatch.setattr(limits, "written_back_per_commit_min", 1)
    store = Store(os.path.join(str(tmp_path), STORE_DIR))
    store.logged_writes_max = 5
    store.logged_writes_per_account_ratio = 0
    for number in (2, 3, 4):
        store.put("accounts", f"WH{number}".encode(),
                  layout.new_account_record("WH", 0, 0, bytes(16), bytes(32), bytes(32)))
    for n in range(6):
        store.put("idempotency", b"till\0" + bytes([n]), b"reply")
        if n < 3:
            continue     # the first commit's ids
        record = store.get_mutable("accounts", b"WH1")
        if n == 5 and last_balance is not None:
            layout.put(record, layout.BALANCE, last_balance)
        store.put("accounts", b"WH1", record)
        batch = store.seal()
        store.write_batch(batch)
        store.committed(batch)
    assert not store.round_written_back and all(
        round_.done and round_.logged for round_ in store._rounds.values())
    store.close(write_back=False)
    return _raw_logs(tmp_path)


def _raw_logs(tmp_path) -> dict:
    env = lmdb.open(os.path.join(str(tmp_path), STORE_DIR), readonly=True, max_dbs=64)
    try:
        with env.begin() as txn:
            return {log: [bytes(key) for key, _ in txn.cursor(db=env.open_db(log.encode(), txn=txn))]
                    for log in writeback.LOG_NAMES}
    finally:
        env.close()


def _write_log(tmp_path, log: str, key: bytes, value: bytes) -> None:
    env = lmdb.open(os.path.join(str(tmp_path), STORE_DIR), max_dbs=64)
    with env.begin(write=True, db=env.open_db(log.encode())) as txn:
        txn.put(key, value)
    env.close()


def test_ids_waiting_in_the_logs_are_sound(tmp_path, monkeypatch):
    logs = _books_with_ids_in_the_logs(tmp_path, monkeypatch)
    assert all(logs.values()), logs    # every log holds records: the check has work to do
    report = audit(str(tmp_path))
    assert report.sound, report.problems


def test_an_account_is_checked_as_its_newest_logged_record(tmp_path, monkeypatch):
    logs = _books_with_ids_in_the_logs(tmp_path, monkeypatch, last_balance=400)
    assert all(logs.values()), logs
    report = audit(str(tmp_path))
    assert "balance 400 but journal sum 500" in report.problems[0], report.problems
    # The database itself still holds the sound record: only the log says 400.
    env = lmdb.open(os.path.join(str(tmp_path), STORE_DIR), readonly=True, max_dbs=64)
    with env.begin() as txn:
        record = txn.get(b"WH1", db=env.open_db(b"accounts", txn=txn))
        assert layout.get(bytearray(record), layout.BALANCE) == 500
    env.close()


@pytest.mark.parametrize("value, message", [
    (b"\x81\xa1k", "record 0: damaged log record"),
    (msgpack.packb({b"k": 5}), "record 0: damaged log record: not a map of bytes"),
])
def test_a_damaged_log_record_is_found_before_the_next_open_stops_on_it(tmp_path, monkeypatch,
                                                                      value, message):
    logs = _books_with_ids_in_the_logs(tmp_path, monkeypatch)
    log = next(log for log, keys in logs.items() if writeback.lsn_key(0) in keys)
    _write_log(tmp_path, log, writeback.lsn_key(0), value)
    report = audit(str(tmp_path))
    assert not report.sound
    assert [problem for problem in report.problems if message in problem
            and problem.startswith(log)], report.problems
    with pytest.raises(writeback.DamagedLog):
        Store(os.path.join(str(tmp_path), STORE_DIR))


@pytest.mark.parametrize("damaged", ["idempotency", "accounts"])
def test_one_damaged_log_record_hides_no_other_logged_account_and_is_named_first(
        tmp_path, monkeypatch, damaged):
    """A remembered-id record that does not decode, or an older account record, must not
    make audit read the accounts without their logs (a switch killed after opening accounts
    would show each as missing: 20 false lines, and the damage past the ones shown); the
    damage is the first problem, so the summary names it."""
    logs = _books_with_ids_in_the_logs(tmp_path, monkeypatch, last_balance=400)
    oldest, log = min((min(logs[log]), log) for log in writeback.LOGS[damaged] if logs[log])
    _write_log(tmp_path, log, oldest, b"\x81\xa1k")
    report = audit(str(tmp_path))
    assert report.problems[0].startswith(f"{log} record {int.from_bytes(oldest, 'big')}: "
                                         f"damaged log record"), report.problems
    assert log in report.summary()
    # The newest logged record of WH1 (balance 400) is still the one checked.
    assert any("balance 400 but journal sum 500" in problem
               for problem in report.problems), report.problems
    assert len(report.problems) == 2, report.problems


@pytest.mark.parametrize("writes, message", [
    ({b"WH1": b"x"}, "account WH1 in the accounts log: a record of 1 bytes, not 176"),
    ({b"ZZZ9": b"y" * 64}, "account ZZZ9 in the accounts log: a record of 64 bytes"),
    ({b"\xff\xfe": b"z" * 176}, "the accounts log: account key fffe is not text"),
])
def test_a_forged_account_record_in_a_log_is_a_finding_not_a_traceback(tmp_path, monkeypatch,
                                                                        writes, message):
    """A record that decodes but holds no account a switch writes (too short, a key that
    is not text), newest in the current log: audit names it, as it does such a record in
    `accounts` itself, and checks the rest."""
    logs = _books_with_ids_in_the_logs(tmp_path, monkeypatch)
    newest_lsn = max(int.from_bytes(key, "big") for keys in logs.values() for key in keys)
    _, current = max((max(logs[log]), log) for log in writeback.LOGS["accounts"] if logs[log])
    _write_log(tmp_path, current, writeback.lsn_key(newest_lsn + 1),
               writeback.encode_record(writes))
    report = audit(str(tmp_path))
    assert report.unreadable is None and any(message in problem
                                             for problem in report.problems), report.problems


def test_books_that_stop_the_check_part_way_are_one_line_not_a_traceback(tmp_path,
                                                                         monkeypatch):
    from switch.persistence import audit as audit_module
    _books(tmp_path)

    def unexpected(txn, dbs, report):
        raise struct.error("unpack_from requires a buffer of at least 8 bytes")
    monkeypatch.setattr(audit_module, "_check", unexpected)
    report = audit(str(tmp_path))
    assert not report.sound and report.unreadable.startswith(
        "the books could not be checked to the end (error: unpack_from requires")
    assert "not known to be sound" in report.unreadable


@pytest.mark.parametrize("key, message", [
    (b"\x00" * 7 + b"\x01\x02", "is not an LSN"),   # nine bytes
    (None, "interleave"),                            # the older log gets a newer record
    (b"same", "is in both"),
])
def test_logs_out_of_order_are_found(tmp_path, monkeypatch, key, message):
    logs = _books_with_ids_in_the_logs(tmp_path, monkeypatch)
    (older, older_keys), (newer, newer_keys) = sorted(
        ((log, logs[log]) for log in writeback.LOGS["idempotency"]),
        key=lambda item: max(item[1]))
    record = writeback.encode_record({b"till\0\x09": b"reply"})
    if key is None:
        key = writeback.lsn_key(int.from_bytes(max(newer_keys), "big") + 1)
    elif key == b"same":
        key = max(newer_keys)
    _write_log(tmp_path, older, key, record)
    report = audit(str(tmp_path))
    assert any(message in problem for problem in report.problems), report.problems


def test_subsidy_grants_are_checked_against_their_index_and_the_journal(tmp_path):
    campus = populate(World(tmp_path / "data"))
    txns = [campus.ok(campus.admin, "subsidy", account=STUDENT, amount=100,
                      expires="2099-12-31", batch=f"b{number}", id=f"s{number}")["txn"]
            for number in range(3)]
    campus.commit()
    campus.close()
    assert audit(str(campus.path)).sound
    lost, moved, both = (subsidy_grant_key(STUDENT, f"b{number}", f"s{number}")
                         for number in range(3))
    env = lmdb.open(os.path.join(str(campus.path), STORE_DIR), max_dbs=64, subdir=True)
    with env.begin(write=True) as txn:
        grants = env.open_db(b"subsidy_grants", txn=txn)
        index = env.open_db(b"subsidy_grant_expiry", txn=txn)
        txn.delete(lost, db=grants)                       # lost: its batch could pay again
        txn.put(moved, struct.pack(">qq", 1, 100), db=grants)   # kept for another day
        txn.delete(both, db=grants)                       # lost with its index entry
        txn.delete((47_481).to_bytes(8, "big") + both, db=index)
        txn.put(b"\xff" * 8 + b"x" * 16, b"", db=index)  # a forged entry of no real day
    env.close()
    problems = audit(str(campus.path)).problems
    not_kept = "(to 2099-12-31) to WH20230001 is not kept among the grants: it could be paid again"
    assert sorted(problems) == sorted([
        f"subsidy grant {lost.hex()}: in the index at 2099-12-31 but not kept for that day",
        f"subsidy grant {moved.hex()}: in the index at 2099-12-31 but not kept for that day",
        f"subsidy grant {(b'x' * 16).hex()}: in the index at day {2 ** 64 - 1} but not kept "
        f"for that day",
        f"subsidy grant {moved.hex()}: kept (to 1970-01-02) but not in the index",
        *(f"txn {txn}: subsidy of batch 'b{number}' {not_kept}"
          for number, txn in enumerate(txns))]), problems


def _delete_grant(data_dir, key: bytes, day: int) -> None:
    env = lmdb.open(os.path.join(data_dir, STORE_DIR), max_dbs=64, subdir=True)
    with env.begin(write=True) as txn:
        txn.delete(key, db=env.open_db(b"subsidy_grants", txn=txn))
        txn.delete(day.to_bytes(8, "big") + key, db=env.open_db(b"subsidy_grant_expiry", txn=txn))
    env.close()


def _grants_forgotten_below(data_dir) -> int:
    env = lmdb.open(os.path.join(data_dir, STORE_DIR), max_dbs=64, subdir=True, readonly=True)
    with env.begin() as txn:
        value = txn.get(b"subsidy_grants_forgotten_below", db=env.open_db(b"meta", txn=txn))
    env.close()
    return int.from_bytes(value, "big")


def test_a_grant_lost_from_the_first_day_housekeeping_still_keeps_is_found(tmp_path):
    """Housekeeping forgot the grants of November 19 and says so in `meta`; a grant of the
    20th, the first day it still keeps, lost with its index entry, is a grant that could be
    paid again, and audit says which."""
    campus = populate(World(tmp_path / "data"))
    campus.set_local_time("2026-11-18T12:00:00")
    for batch, expires in (("a", "2026-11-19"), ("b", "2026-11-20")):
        campus.ok(campus.admin, "subsidy", account=STUDENT, amount=100, expires=expires,
                  batch=batch, id=f"g-{batch}")
    campus.commit()
    # 04:00 UTC on the 21st, the days grants are kept later: the 19th's may go.
    campus.set_local_time("2026-11-21T12:00:00")
    campus.clock.ms += limits.subsidy_grants_kept_s * 1000
    campus.housekeep()
    assert len(campus.committed("subsidy_grants")) == 1
    campus.close()
    november_20 = 20_777
    assert _grants_forgotten_below(str(campus.path)) == november_20
    assert audit(str(campus.path)).sound
    _delete_grant(str(campus.path), subsidy_grant_key(STUDENT, "b", "g-b"), november_20)
    problems = audit(str(campus.path)).problems
    assert len(problems) == 1 and problems[0].endswith(
        "subsidy of batch 'b' (to 2026-11-20) to WH20230001 is not kept among the grants: it "
        "could be paid again"), problems


def test_the_latest_term_of_a_key_is_the_one_checked_against_the_grants(tmp_path):
    """A batch name used again once its term is over: the key's grant is the latest term's,
    and one kept for the earlier term instead could let the latest be paid again."""
    campus = populate(World(tmp_path / "data"))
    campus.ok(campus.admin, "add_credential", who="office-2", role="admin")
    campus.set_local_time("2026-11-18T12:00:00")
    grant = {"account": STUDENT, "amount": 100, "batch": "b", "id": "g"}
    campus.ok(campus.admin, "subsidy", expires="2026-11-20", **grant)
    campus.commit()
    campus.set_local_time("2026-11-21T12:00:00")                 # over in Wuhan
    campus.housekeep()                                           # and lapsed
    campus.ok(campus.credential("office-2"), "subsidy", expires="2026-11-30", **grant)
    campus.commit()
    campus.close()
    assert audit(str(campus.path)).sound
    key = subsidy_grant_key(STUDENT, "b", "g")
    _delete_grant(str(campus.path), key, 20_787)
    env = lmdb.open(os.path.join(str(campus.path), STORE_DIR), max_dbs=64, subdir=True)
    with env.begin(write=True) as txn:                # kept as if for the earlier term
        txn.put(key, struct.pack(">qq", 20_777, 100), db=env.open_db(b"subsidy_grants", txn=txn))
        txn.put((20_777).to_bytes(8, "big") + key, b"",
                db=env.open_db(b"subsidy_grant_expiry", txn=txn))
    env.close()
    problems = audit(str(campus.path)).problems
    assert len(problems) == 1 and "(to 2026-11-30) to WH20230001 is not kept" in problems[0], \
        problems


def _pay_twice(campus, **grant):
    """The same grant paid again, as a switch that lost it would: its kept grant deleted
    (with the data dir closed), then sent from another admin."""
    campus.ok(campus.admin, "subsidy", **grant)
    key = subsidy_grant_key(grant["account"], grant["batch"], grant["id"])

    def lose_it(data_dir):
        _delete_grant(data_dir, key, 47_481)          # 2099-12-31
    campus.restart(while_closed=lose_it)
    return campus.ok(campus.credential("office-2"), "subsidy", **grant)["txn"]


def test_a_grant_paid_twice_is_found(tmp_path):
    campus = populate(World(tmp_path / "data"))
    campus.ok(campus.admin, "add_credential", who="office-2", role="admin")
    grant = {"account": STUDENT, "amount": 100, "expires": "2099-12-31", "batch": "b",
             "id": "g"}
    first = campus.last_txn + 1
    again = _pay_twice(campus, **grant)
    campus.commit()
    campus.close()
    report = audit(str(campus.path))
    assert report.problems == [f"txn {again}: subsidy of batch 'b' (to 2099-12-31) to "
                               f"WH20230001 paid again: txn {first} granted it"]


def test_a_grant_an_older_switch_paid_twice_is_a_notice_and_one_paid_after_the_upgrade_not(
        tmp_path):
    """Schema 8 kept no grants and 10 forgot them two days after their term: a grant paid
    twice in a data dir upgraded from them is told to the auditor, the books stay sound;
    one paid twice after the upgrade is a discrepancy."""
    campus = populate(World(tmp_path / "data"))
    campus.ok(campus.admin, "add_credential", who="office-2", role="admin")
    grant = {"account": STUDENT, "amount": 100, "expires": "2099-12-31", "batch": "b"}
    first = campus.last_txn + 1
    old = _pay_twice(campus, id="old", **grant)

    def as_schema_10(data_dir):
        env = lmdb.open(os.path.join(data_dir, STORE_DIR), max_dbs=64, subdir=True)
        with env.begin(write=True) as txn:
            meta = env.open_db(b"meta", txn=txn)
            txn.delete(b"subsidy_grants_checked_after_txn", db=meta)
            txn.put(b"schema_version", b"10", db=meta)
        env.close()
    campus.commit()
    campus.close()
    as_schema_10(str(campus.path))
    report = audit(str(campus.path))
    noticed = (f"notice: txn {old}: subsidy of batch 'b' (to 2099-12-31) to WH20230001 paid "
               f"again: txn {first} granted it, before this switch's upgrade")
    assert report.sound and noticed in report.summary(), report.summary()
    campus.restart()                                            # the upgrade to 11
    new_first = campus.last_txn + 1
    new = _pay_twice(campus, id="new", **grant)
    campus.commit()
    campus.close()
    report = audit(str(campus.path))
    assert report.problems == [f"txn {new}: subsidy of batch 'b' (to 2099-12-31) to "
                               f"WH20230001 paid again: txn {new_first} granted it"]
    assert noticed in report.summary()


def test_a_day_kept_from_past_the_journal_is_no_discrepancy(tmp_path):
    """Schema 10 wrote in `meta` the day below which it had looked (UTC yesterday), not the
    day after the last term it forgot: on a quiet switch a day after the journal's newest
    record. Such a data dir audits sound (and so its backups are kept)."""
    campus = populate(World(tmp_path / "data"))
    campus.set_local_time("2026-11-18T12:00:00")
    campus.ok(campus.admin, "subsidy", account=STUDENT, amount=100, expires="2026-11-30",
              batch="a", id="g")
    campus.commit()
    campus.close()
    env = lmdb.open(os.path.join(str(campus.path), STORE_DIR), max_dbs=64, subdir=True)
    with env.begin(write=True) as txn:
        txn.put(b"subsidy_grants_forgotten_below", (20_781).to_bytes(8, "big"),
                db=env.open_db(b"meta", txn=txn))     # 2026-11-24
    env.close()
    assert audit(str(campus.path)).sound


def test_a_journal_whose_time_goes_back_by_days_is_noticed_once(tmp_path):
    """A switch that ran with its clock days ahead and was put right: its journal goes back
    in time, said once at the first record behind (not at every record after it), and a
    clock put right by seconds is no finding."""
    campus = populate(World(tmp_path / "data"))
    campus.set_local_time("2026-11-18T12:00:00")
    campus.ok(campus.service, "credit", account=STUDENT, amount=1, source="t", id="c0")
    campus.clock.ms -= 5_000                                    # NTP: seconds back
    campus.ok(campus.service, "credit", account=STUDENT, amount=1, source="t", id="c1")
    campus.set_local_time("2027-01-10T12:00:00")                # ahead by weeks
    ahead = campus.ok(campus.service, "credit", account=STUDENT, amount=1, source="t",
                      id="c2")["txn"]
    campus.set_local_time("2026-11-18T13:00:00")                # put right
    behind = [campus.ok(campus.service, "credit", account=STUDENT, amount=1, source="t",
                        id=f"c{number}")["txn"] for number in range(3, 6)]
    campus.commit()
    campus.close()
    report = audit(str(campus.path))
    assert report.sound, report.problems         # nothing to correct: the books are right
    assert f"notice: txn {behind[0]}: recorded at" in report.summary()
    assert report.notices == [
        f"txn {behind[0]}: recorded at 2026-11-18 05:00 UTC, 1271 h before txn {ahead} "
        f"(2027-01-10 04:00 UTC): the clock was ahead then, and what the switch did by it "
        f"(subsidies lapsed, grants, ids and holds let go) it did early"]


def test_notices_are_bounded_and_the_rest_counted(tmp_path):
    campus = populate(World(tmp_path / "data"))
    campus.set_local_time("2026-11-18T12:00:00")
    right = campus.clock.ms
    jumps = limits.audit_discrepancies_shown_max + 5
    for number in range(jumps):
        campus.clock.ms = right + (number + 2) * 86_400_000 * 2     # further ahead each time
        campus.ok(campus.service, "credit", account=STUDENT, amount=1, source="t",
                  id=f"ahead{number}")
        campus.clock.ms = right + number * 60_000                      # put right
        campus.ok(campus.service, "credit", account=STUDENT, amount=1, source="t",
                  id=f"right{number}")
    campus.commit()
    campus.close()
    report = audit(str(campus.path))
    assert report.sound, report.problems
    assert len(report.notices) == limits.audit_discrepancies_shown_max
    assert report.notices_left_off == 5
    assert report.summary().endswith("... and 5 more notices")


# ---------------------------------------------------------------- reversals
def _reversed_books(tmp_path):
    world = populate(World(tmp_path / "data"))
    paid = world.ok(world.pos, "debit", card=CARD, amount=1_000, id="T1")
    world.ok(world.pos, "reverse", target="T1", id="R1")
    world.ok(world.service, "credit", account=STUDENT, amount=500, source="bank", id="c1")
    return world, paid["txn"]


def test_a_payment_reversed_twice_is_found(tmp_path):
    # What a lost memory of the first reverse does (the outside test's second pass): the
    # sums agree, the money given back twice was never paid.
    world, paid = _reversed_books(tmp_path)
    world.ledger.store.delete("idempotency", world.ledger.idempotency_key(
        world.pos.who, ["reverse_of", "T1"]))
    second = world.ok(world.pos, "reverse", target="T1", id="R2")
    world.commit()
    world.close()
    assert _problems(str(world.path)) == [
        f"txn {second['txn']}: txn {paid} reversed a second time"]


def test_a_reverse_of_no_payment_or_of_another_amount_is_found(tmp_path):
    world, _ = _reversed_books(tmp_path)
    world.commit()
    world.close()

    def retarget(to_kind: str, amount_change: int):
        def change(txn, db):
            key, record = _journal_record(txn, db, lambda r: r["kind"] == "reverse")
            _, credit = _journal_record(txn, db, lambda r: r["kind"] == to_kind)
            record["target"] = credit["txn"]
            record["amount"] += amount_change
            txn.put(key, msgpack.packb(record, use_bin_type=True), db=db("journal"))
        return change
    books = str(world.path)
    copy = str(tmp_path / "copy")
    shutil.copytree(books, copy)
    _lmdb_write(books, retarget("credit", 0))
    problems = _problems(books)
    assert len(problems) == 1 and "which is no payment before it" in problems[0], problems
    _lmdb_write(copy, retarget("debit", 1))
    problems = _problems(copy)
    assert [p for p in problems if "reverse of 1001" in p and "paid 1000" in p], problems


# ---------------------------------------------------------------- what the outside test tampered
def _tamper_journal(data_dir: str, predicate, change) -> int:
    """Change the first journal record `predicate` picks; its txn."""
    changed = []

    def edit(txn, db):
        key, record = _journal_record(txn, db, predicate)
        change(record)
        txn.put(key, msgpack.packb(record), db=db("journal"))
        changed.append(record["txn"])
    _lmdb_write(data_dir, edit)
    return changed[0]


def _room_record(data_dir: str, account: str, change) -> None:
    def edit(txn, db):
        record = bytearray(txn.get(account.encode(), db=db("accounts")))
        change(record)
        txn.put(account.encode(), bytes(record), db=db("accounts"))
    _lmdb_write(data_dir, edit)


def test_a_record_naming_another_school_than_its_accounts_is_found(books):
    txn = _tamper_journal(books, lambda r: r["kind"] == "credit" and r["account"] == STUDENT,
                          lambda r: r.update(school="CUIK"))
    assert f"txn {txn}: credit of {STUDENT} names school 'CUIK', its txn 1 'WH'" \
        in _problems(books)
    _tamper_journal(books, lambda r: r["account"] == STUDENT, lambda r: r.update(school="CUIK"))
    assert f"account {STUDENT} is of school WH but its txn 1 names 'CUIK'" in _problems(books)


@pytest.mark.parametrize("kind, amount, said", [
    ("credit", -6_000, "credit of -6000, which only puts money in"),
    ("meter", 6_000, "meter of 6000, which only takes money out"),
    ("lost", 5, "lost of 5, which moves no money"),
    ("gift", 0, "kind 'gift' is none the switch writes"),
])
def test_a_records_kind_and_the_sign_of_its_amount_agree(tmp_path, kind, amount, said):
    _books(tmp_path, balance=1_000 + amount, amounts=(1_000, amount), kinds=("credit", kind))
    assert f"txn 2: {said}" in _problems(str(tmp_path))


def _credit_twice(tmp_path, apart_ms: int) -> str:
    """Two credits by one service under one order id, `apart_ms` apart."""
    campus = populate(World(tmp_path / "data"))
    for _ in range(2):
        campus.ok(campus.service, "credit", account=STUDENT, amount=100, source="wechat",
                  id="4200001")
        campus.commit()
        campus.store.delete("idempotency", campus.ledger.idempotency_key(
            campus.service.who, "4200001"))       # what a switch that forgot it does
        campus.commit()
        campus.clock.advance(apart_ms / 1000)
    campus.close()
    return str(campus.path)


def test_a_recharge_credited_twice_under_one_order_id_is_found(tmp_path):
    """The outside test's 3,000 orders credited twice after a wrong clock: the sums agree,
    and audit called the books sound."""
    data = _credit_twice(tmp_path, apart_ms=8 * 60_000)
    problems = _problems(data)
    assert len(problems) == 1 and "credit by mini-program under id '4200001' again" \
        in problems[0] and "(txn" in problems[0], problems


def test_an_order_id_used_again_past_its_retention_is_no_discrepancy(tmp_path):
    data = _credit_twice(tmp_path, apart_ms=limits.credit_ids_retention_s * 1000 + 1)
    assert audit(data).sound, audit(data).problems


def test_a_rooms_power_agrees_with_its_money_and_its_last_power_record(books):
    """A room dark with money in it (or lit with none) is a relay downstream left wrong; and
    its last `restore` record relabelled (the outside test's tamper) leaves power on that no
    record turned on."""
    from tests.ledger.conftest import ROOM
    _room_record(books, ROOM, lambda record: layout.put(record, layout.POWER_ON, 0))
    problems = _problems(books)
    assert f"room {ROOM}: power off with a balance of {BALANCE} fen" in problems
    assert any(problem.startswith(f"room {ROOM}: power off but its last power record, txn ")
               and problem.endswith("is a restore") for problem in problems), problems
    _room_record(books, ROOM, lambda record: layout.put(record, layout.POWER_ON, 1))
    assert audit(books).sound
    _tamper_journal(books, lambda r: r["kind"] == "restore" and r["account"] == ROOM,
                    lambda r: r.update(kind="unlock"))
    assert _problems(books) == [f"room {ROOM}: power on but no restore record turned it on"]


def test_a_record_sent_by_no_credential_the_books_hold_is_found(books):
    txn = _tamper_journal(books, lambda r: r["kind"] == "credit" and r["who"] is not None,
                          lambda r: r.update(who="nobody-at-all"))
    assert f"txn {txn}: sent by 'nobody-at-all', a credential the books do not hold" \
        in _problems(books)


def test_a_tap_made_while_the_card_was_lost_and_uploaded_after_found_must_be_flagged(tmp_path):
    campus = populate(World(tmp_path / "data"))
    lost_at = campus.clock.now_ms()
    campus.ok(campus.service, "lost", card=CARD)
    campus.clock.advance(600)
    campus.ok(campus.service, "found", card=CARD)
    campus.clock.advance(600)
    reply = campus.ok(campus.pos, "offline", records=[
        {"id": "thief", "card": CARD, "amount": 100, "at": lost_at + 60_000}])
    assert reply["results"][0]["flag"] == "after_lost"
    campus.commit()
    campus.close()
    data = str(campus.path)
    assert audit(data).sound
    txn = _tamper_journal(data, lambda r: r["kind"] == "offline", lambda r: r.pop("flag"))
    assert _problems(data) == [
        f"txn {txn}: card {CARD} tapped at {lost_at + 60_000}, while it was lost (from "
        f"{lost_at}, found at {lost_at + 600_000}), but not flagged after_lost"]
