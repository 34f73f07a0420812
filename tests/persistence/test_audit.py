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
