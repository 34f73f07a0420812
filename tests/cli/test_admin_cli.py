"""The operator CLI against a real switch process: import a term's CSV, handle a lost card."""

import csv
import signal
import subprocess
import sys

import pytest

from switch.admin_cli import UsageError, fen_to_yuan, import_requests, yuan_to_fen


@pytest.fixture
def running_switch(tmp_path):
    data = tmp_path / "data"
    process = subprocess.Popen([sys.executable, "-m", "switch", "serve", "--init", "--data",
                                str(data), "--listen", "127.0.0.1:0", "--log-level", "WARNING"],
                               stdout=subprocess.PIPE, text=True)
    line = process.stdout.readline()
    assert line.startswith("listening on"), line
    yield f"127.0.0.1:{line.strip().rpartition(':')[2]}", data
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0


def admin(connect, data, *words):
    return subprocess.run([sys.executable, "-m", "switch", "admin", "--connect", connect,
                           "--data", str(data), *words], capture_output=True, text=True,
                          timeout=120)


def test_amounts_are_exact():
    assert yuan_to_fen("12.50") == 1250 and yuan_to_fen("50") == 5000
    assert fen_to_yuan(-105) == "-1.05"
    for bad in ("12.505", "0", "-3", "abc", "1e3.5"):
        with pytest.raises(UsageError):
            yuan_to_fen(bad)


def test_import_rows_to_requests_rejects_incomplete_rows():
    requests, rejects = import_requests([
        (2, {"type": "student", "account": "WH1", "school": "WH", "id_last6": "123456",
             "card": "AB12"}),
        (3, {"type": "room", "account": "WH-8D-1006", "school": "WH", "utility": ""}),
        (4, {"type": "teacher", "account": "WH2", "school": "WH"}),
    ])
    assert [m["t"] for _, m in requests] == ["open_account", "issue_card", "open_account"]
    assert requests[2][1]["utility"] == "both"
    assert rejects == [(4, "needs type (student|room), account and school")]


def test_semester_import_is_idempotent_and_reports_rejects(running_switch, tmp_path):
    connect, data = running_switch
    path = tmp_path / "term.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["type", "account", "school", "holder", "id_last6", "card", "utility"])
        for n in range(1500):
            writer.writerow(["student", f"WH2026{n:04d}", "WH", f"学生{n}", f"{n:05d}X",
                             f"{0xA0000 + n:X}", ""])
        writer.writerow(["room", "WH-8D-1006", "WH", "", "", "", "both"])
        writer.writerow(["room", "CUIK-9D-0101", "CUIK", "", "", "", "both"])  # split building
        writer.writerow(["student", "WH-BAD", "WH", "x", "12", "", ""])         # bad id_last6
        writer.writerow(["student", "WH20269999", "WH", "y", "123456", "A0000", ""])  # dup card
    first = admin(connect, data, "import", str(path))
    assert first.returncode == 3, first.stderr
    assert "1504 rows, 3002 created, 0 already present, 3 rejected" in first.stdout, first.stdout
    assert "CUIK-9D-0101: bad_request" in first.stdout
    assert "issue card A0000: exists (already issued" in first.stdout
    second = admin(connect, data, "import", str(path))
    assert "0 created, 3002 already present, 3 rejected" in second.stdout, second.stdout
    shown = admin(connect, data, "account", "WH20260007")
    assert "holder 学生7" in shown.stdout and "A0007 (active)" in shown.stdout


def test_lost_card_from_the_cli(running_switch):
    connect, data = running_switch
    assert admin(connect, data, "open-account", "WH20230001", "--school", "WH", "--holder",
                 "张三", "--id-last6", "12345X").returncode == 0
    assert admin(connect, data, "issue-card", "WH20230001", "04A1B2C3D4").returncode == 0
    credit = admin(connect, data, "--id", "counter-0001", "credit", "WH20230001", "100.50")
    assert credit.returncode == 0 and "balance 100.50 yuan" in credit.stdout
    retried = admin(connect, data, "--id", "counter-0001", "credit", "WH20230001", "100.50")
    assert "replayed" in retried.stdout and "balance 100.50 yuan" in retried.stdout
    lost = admin(connect, data, "lost", "04A1B2C3D4")
    assert lost.returncode == 0 and "blacklist version 1" in lost.stdout
    account = admin(connect, data, "account", "WH20230001")
    assert "04A1B2C3D4 (lost)" in account.stdout
    replaced = admin(connect, data, "replace-card", "WH20230001", "04A1B2C3D4", "04FFEEDDCC")
    assert replaced.returncode == 0
    account = admin(connect, data, "account", "WH20230001")
    assert "04A1B2C3D4 (blocked)" in account.stdout and "04FFEEDDCC (active)" in account.stdout
    assert "balance 100.50 yuan" in account.stdout
    history = admin(connect, data, "history", "WH20230001")
    assert "replace_card" in history.stdout and "lost" in history.stdout
    refused = admin(connect, data, "lost", "FFFFFFFF")
    assert refused.returncode == 3 and "refused: card_unknown" in refused.stdout


def test_terminal_keys_and_revocation(running_switch, tmp_path):
    connect, data = running_switch
    key_file = tmp_path / "pos.key"
    made = admin(connect, data, "add-terminal", "WH-POS-0001", "--school", "WH", "--kind", "pos",
                 "--key-out", str(key_file))
    assert made.returncode == 0 and str(key_file) in made.stdout
    assert oct(key_file.stat().st_mode & 0o777) == "0o600"
    assert key_file.read_text().strip() not in made.stdout
    ping = subprocess.run([sys.executable, "-m", "switch", "admin", "--connect", connect,
                           "--who", "WH-POS-0001", "--key-file", str(key_file), "account", "X"],
                          capture_output=True, text=True)
    assert "refused: not_permitted" in ping.stdout
    assert admin(connect, data, "revoke", "WH-POS-0001").returncode == 0
    refused = subprocess.run([sys.executable, "-m", "switch", "admin", "--connect", connect,
                              "--who", "WH-POS-0001", "--key-file", str(key_file), "account",
                              "X"], capture_output=True, text=True)
    assert refused.returncode == 4 and "unauthenticated" in refused.stderr


def test_no_key_is_a_usage_error():
    result = subprocess.run([sys.executable, "-m", "switch", "admin", "--connect",
                             "127.0.0.1:1", "account", "X"], capture_output=True, text=True)
    assert result.returncode == 2 and "--data" in result.stderr
