"""`audit` finds what is wrong, and passes what is right."""

import msgpack

from switch.persistence.audit import audit
from switch.core import layout
from switch.cli.datadir import open_data_dir
from switch.persistence.store import txn_key


def _books(tmp_path, balance=500, amounts=(1000, -500), gap=False):
    store = open_data_dir(str(tmp_path))
    record = layout.new_account_record("WH", 0, 0, bytes(16), bytes(32), bytes(32))
    layout.put(record, layout.BALANCE, balance)
    store.put("accounts", b"WH1", record)
    running = 0
    for n, amount in enumerate(amounts, start=1):
        running += amount
        number = n + 1 if gap and n > 1 else n
        store.put("journal", txn_key(number), msgpack.packb(
            {"txn": number, "at": 0, "kind": "x", "account": "WH1", "school": "WH",
             "amount": amount, "balance": running}))
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


def _subsidy_books(tmp_path, purse: int, batch_remaining: int, record_subsidy: int):
    """One account: 1000 fen of its own, a 300 fen subsidy of which a debit spent 100."""
    store = open_data_dir(str(tmp_path))
    record = layout.new_account_record("WH", 0, 0, bytes(16), bytes(32), bytes(32))
    layout.put(record, layout.BALANCE, 1000)
    layout.put(record, layout.SUBSIDY, purse)
    store.put("accounts", b"WH1", record)
    store.put("subsidy_batches", b"WH1\0b", msgpack.packb(
        {"remaining": batch_remaining, "expires": "2099-01-01", "end_ms": 1}))
    for number, amount, from_subsidy, balance, subsidy in (
            (1, 1000, 0, 1000, None), (2, 300, -300, 1000, 300),
            (3, -100, 100, 1000, record_subsidy)):
        entry = {"txn": number, "at": 0, "kind": "x", "account": "WH1", "school": "WH",
                 "amount": amount, "balance": balance}
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
