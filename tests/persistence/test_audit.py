"""`audit` finds what is wrong, and passes what is right."""

import msgpack

from switch.persistence.audit import audit
from switch.core import layout
from switch.cli.datadir import open_data_dir
from switch.persistence.store import txn_key


def _books(tmp_path, balance=500, amounts=(1000, -500), gap=False, kinds=None,
           status=layout.STATUS_ACTIVE):
    store = open_data_dir(str(tmp_path))
    record = layout.new_account_record("WH", 0, 0, bytes(16), bytes(32), bytes(32))
    layout.put(record, layout.BALANCE, balance)
    layout.put(record, layout.STATUS, status)
    store.put("accounts", b"WH1", record)
    running = 0
    for n, amount in enumerate(amounts, start=1):
        running += amount
        number = n + 1 if gap and n > 1 else n
        store.put("journal", txn_key(number), msgpack.packb(
            {"txn": number, "at": 0, "kind": kinds[n - 1] if kinds else "x", "account": "WH1",
             "school": "WH", "amount": amount, "balance": running}))
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


def test_a_refund_counts_in_the_journal_sum_and_closed_books_pass(tmp_path):
    _books(tmp_path, balance=0, amounts=(1000, -300, -700),
           kinds=("credit", "debit", "refund"), status=layout.STATUS_CLOSED)
    report = audit(str(tmp_path))
    assert report.sound, report.problems


def test_a_closed_account_holding_money_is_found(tmp_path):
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
