"""The operator CLI speaks plainly: every refusal in words, options anywhere on the line,
history in the school's time with card and terminal, an `ok` that changed nothing said so."""

import datetime
import json
import subprocess
import sys
import zoneinfo

import pytest
import trio

from switch.cli import admin as admin_cli
from switch.cli import refusals
from switch.core.codes import CODE_NAMES
from switch.shell.client import Client
from tests.cli.helpers import admin
from tests.key_files import write_private

# A request naming everything a sentence may name.
EVERYTHING = {"t": "close_account", "account": "WH20230001", "card": "04A1B2C3D4",
              "old": "04A1B2C3D4", "new": "04FFEEDDCC", "amount": 1250, "id": "counter-1",
              "who": "WH-POS-0001", "school": "WH"}


@pytest.mark.parametrize("code", refusals.every_code())
def test_every_code_has_a_sentence_in_words(code):
    assert code in refusals.SENTENCES
    for request in (EVERYTHING, {}):
        said = refusals.sentence(code, request, signon="admin",
                                 account_reply={"code": "ok", "balance": 1250,
                                                "available": 1250})
        assert said.startswith(f"{code}: ") and len(said) > len(code) + 12, said
        assert "{" not in said and "does not know" not in said, said
    assert "?" not in refusals.sentence(code, EVERYTHING, signon="admin",
                                        account_reply={"code": "ok", "balance": 1250,
                                                       "available": 1250})


def test_not_empty_says_what_is_left_as_far_as_it_is_known():
    request = {"t": "close_account", "account": "WH1", "id": "c"}
    assert refusals.sentence("not_empty", request, account_reply={
        "code": "ok", "balance": 0, "available": -500}) == (
        "not_empty: account WH1 has 5.00 yuan reserved by open holds; wait until they "
        "complete or expire")
    assert refusals.sentence("not_empty", request, account_reply={"code": "wrong_school"}) == (
        "not_empty: account WH1 still holds money or open holds; `account` shows them; "
        "refund it first")


def test_every_reply_code_and_connection_error_is_covered():
    assert set(refusals.every_code()) == (set(CODE_NAMES) - {"ok"}) | {
        "unauthenticated", "version_unsupported", "mac_invalid", "seq_invalid",
        "frame_invalid", "frame_too_large"}


def test_a_command_of_its_own_reads_a_shared_code_its_own_way(monkeypatch):
    assert refusals.sentence("exists", {"t": "issue_card", "card": "AB12"}) == \
        "exists: card AB12 is issued already (`account` shows whose)"
    assert refusals.sentence("exists", {"t": "refund"}) == "exists: it exists already"
    # A new command adds one entry to the table, nothing else.
    monkeypatch.setitem(refusals.SENTENCES, ("exists", "refund"), "refund {id} was made before")
    assert refusals.sentence("exists", {"t": "refund", "id": "r-1"}) == \
        "exists: refund r-1 was made before"


def _open_student(connect, data, card=None):
    assert admin(connect, data, "open-account", "WH20230001", "--school", "WH", "--id-last6",
                 "12345X").returncode == 0
    if card:
        assert admin(connect, data, "issue-card", "WH20230001", card).returncode == 0


def test_not_empty_names_the_money_in_yuan(running_switch):
    connect, data = running_switch
    _open_student(connect, data)
    assert admin(connect, data, "credit", "WH20230001", "12.50").returncode == 0
    refused = admin(connect, data, "close-account", "WH20230001")
    assert refused.returncode == 3
    assert refused.stdout == ("not_empty: account WH20230001 still holds 12.50 yuan; "
                              "refund it first\n")
    unknown = admin(connect, data, "credit", "WH99", "1.00")
    assert unknown.returncode == 3
    assert unknown.stdout == "unknown_account: the switch knows no account WH99\n"


def test_a_refund_refused_names_the_holds_not_a_refund():
    """`not_empty` of a refund means open holds: telling the operator to refund would loop."""
    account = {"code": "ok", "balance": 1250, "available": 1050}
    assert refusals.sentence("not_empty", {"t": "refund", "account": "WH1"},
                             account_reply=account) == (
        "not_empty: account WH1 has 2.00 yuan reserved by open holds; wait until they "
        "complete or expire")
    assert refusals.sentence("insufficient_funds", {"t": "refund", "account": "WH1"}) == (
        "insufficient_funds: account WH1 is below zero; credit the debt back first, then refund")


# ---------------------------------------------------------------- options anywhere
def _parse(*words):
    parser = admin_cli.argparse.ArgumentParser(prog="python -m switch")
    admin_cli.add_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["admin", *words])


@pytest.mark.parametrize("words", [
    ("--connect", "127.0.0.1:7000", "--data", "D", "--id", "X", "--json", "credit", "WH1", "2"),
    ("credit", "--id", "X", "WH1", "2", "--connect", "127.0.0.1:7000", "--data", "D", "--json"),
    ("--id", "X", "credit", "WH1", "2", "--json", "--data", "D", "--connect", "127.0.0.1:7000"),
    ("--json", "credit", "WH1", "2", "--connect=127.0.0.1:7000", "--id=X", "--data", "D"),
])
def test_id_and_connection_options_go_anywhere(words):
    args = _parse(*words)
    assert (args.connect, args.data, args.id, args.json, args.account, args.yuan,
            args.signon_who) == (("127.0.0.1", 7000), "D", "X", True, "WH1", "2", "admin")


def test_an_option_given_before_the_command_is_not_undone_by_its_defaults():
    args = _parse("--who", "svc", "--key-file", "K", "account", "WH1")
    assert (args.signon_who, args.key_file, args.id, args.connect) == ("svc", "K", None, None)


def test_an_account_beginning_with_a_dash_is_reached_after_a_double_dash():
    args = _parse("credit", "--connect", "127.0.0.1:7000", "--", "-WH1", "2")
    assert (args.account, args.yuan) == ("-WH1", "2")


def test_a_missing_connect_is_one_line(capsys):
    assert admin_cli.main(["account", "WH1", "--data", "nowhere"]) == 2
    assert "give --connect HOST:PORT" in capsys.readouterr().err


def test_options_after_the_command_against_a_switch(running_switch):
    connect, data = running_switch
    opened = subprocess.run([sys.executable, "-m", "switch", "admin", "open-account",
                             "--school", "WH", "--id-last6", "12345X", "--connect", connect,
                             "--data", str(data), "--", "-WH1"],
                            capture_output=True, text=True, timeout=120)
    assert opened.returncode == 0, opened.stderr
    first = admin(connect, data, "credit", "--", "-WH1", "1.00", before=("--id", "till-1"))
    assert first.returncode == 0 and "balance 1.00 yuan" in first.stdout, first.stderr
    again = subprocess.run([sys.executable, "-m", "switch", "admin", "credit", "--id", "till-1",
                            "--connect", connect, "--data", str(data), "--", "-WH1", "1.00"],
                           capture_output=True, text=True, timeout=120)
    assert "replayed" in again.stdout and "balance 1.00 yuan" in again.stdout, again.stderr
    shown = admin(connect, data, "account", "--json", "--", "-WH1")
    assert json.loads(shown.stdout)["balance"] == 100


def test_a_replayed_refusal_says_it_is_the_first_answer_and_a_new_attempt_takes_a_new_id():
    """A credit sent before its account was opened, retried under the same id once it is:
    the switch answers what it answered then, and the operator is told so."""
    request = {"t": "credit", "account": "WH1", "amount": 2000, "id": "c2"}
    first = admin_cli._describe({"t": "credit", "code": "unknown_account"}, request)
    replayed = admin_cli._describe({"t": "credit", "code": "unknown_account", "replay": True},
                                   request)
    assert "replayed" not in first
    assert replayed.startswith(first)
    assert "replayed: the answer given when id 'c2' was first sent" in replayed
    assert "a new attempt takes a new id" in replayed


# ---------------------------------------------------------------- history and found
def test_history_shows_the_school_local_time():
    at_ms = 1_767_225_600_000          # 2026-01-01 00:00:00 UTC
    reply = {"t": "history", "code": "ok", "next": None, "time_zone": "Asia/Shanghai",
             "items": [{"txn": 7, "at": at_ms, "kind": "debit", "amount": -1250,
                        "balance": 8750, "who": "WH-POS-0001", "merchant": "WH-POS-0001",
                        "card": "04A1B2C3D4"}]}
    table = admin_cli._describe(reply)
    assert "when (Asia/Shanghai)" in table
    row = table.splitlines()[1].split()
    assert row == ["7", "2026-01-01", "08:00:00", "debit", "-12.50", "87.50", "04A1B2C3D4",
                   "WH-POS-0001"]
    reply["time_zone"] = "Europe/London"
    assert "2026-01-01 00:00:00" in admin_cli._describe(reply)
    del reply["time_zone"]                # a switch that does not send it: UTC, and said so
    table = admin_cli._describe(reply)
    assert "when (UTC)" in table and "2026-01-01 00:00:00" in table


def test_history_names_the_card_and_the_terminal(running_switch, tmp_path):
    connect, data = running_switch
    _open_student(connect, data, card="04A1B2C3D4")
    assert admin(connect, data, "credit", "WH20230001", "100").returncode == 0
    key_file = tmp_path / "pos.key"
    assert admin(connect, data, "add-terminal", "WH-POS-0001", "--school", "WH", "--kind",
                 "pos", "--key-out", str(key_file)).returncode == 0

    async def tap():
        host, port = connect.split(":")
        till = await Client.connect(host, int(port), "WH-POS-0001",
                                    bytes.fromhex(key_file.read_text().strip()))
        reply = await till.request({"t": "debit", "card": "04A1B2C3D4", "amount": 1250,
                                    "id": "tap-1"})
        await till.aclose()
        return reply

    assert trio.run(tap)["code"] == "ok"
    raw = json.loads(admin(connect, data, "--json", "history", "WH20230001").stdout)
    shown = admin(connect, data, "history", "WH20230001")
    assert shown.returncode == 0
    header, debit, *older = shown.stdout.splitlines()
    assert "when (Asia/Shanghai)" in header and "card" in header and "terminal" in header
    local = datetime.datetime.fromtimestamp(raw["items"][0]["at"] / 1000,
                                            zoneinfo.ZoneInfo("Asia/Shanghai"))
    assert f"{local:%Y-%m-%d %H:%M:%S}" in debit
    assert debit.split()[-4:] == ["-12.50", "87.50", "04A1B2C3D4", "WH-POS-0001"]
    issued = next(line for line in older if "issue_card" in line)
    assert issued.split()[-2:] == ["04A1B2C3D4", "admin"]


def test_found_of_a_card_not_lost_says_nothing_changed(running_switch):
    connect, data = running_switch
    _open_student(connect, data, card="04A1B2C3D4")
    found = admin(connect, data, "found", "04A1B2C3D4")
    assert found.returncode == 0
    assert found.stdout.startswith("ok: nothing changed: card 04A1B2C3D4 was not lost"), \
        found.stdout
    assert admin(connect, data, "lost", "04A1B2C3D4").returncode == 0
    found = admin(connect, data, "found", "04A1B2C3D4")
    assert found.returncode == 0 and "nothing changed" not in found.stdout
    assert found.stdout.startswith("ok txn ")


@pytest.mark.parametrize("holder, words", [("张\x1b[2J三", "(U+001B)"), ("李\u202e四", "(U+202E)"),
                                           ("王" * 65, "65 characters long, at most 64")])
def test_a_typed_holder_name_with_control_characters_is_refused_before_sending(
        tmp_path, capsys, holder, words):
    key = tmp_path / "admin.key"
    write_private(key, "ab" * 32)
    # Port 9 has no switch: the refusal must come before any connection is tried.
    assert admin_cli.main(["open-account", "WH1", "--school", "WH", "--id-last6", "12345X",
                           "--holder", holder, "--connect", "127.0.0.1:9",
                           "--key-file", str(key)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --holder: holder ") and words in err, err
