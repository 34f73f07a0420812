"""An option given twice in one command line is refused with its name, where argparse
would keep the last without a word (switch/config/command_line.py): every command of the
switch and of its receivers."""

import argparse
import subprocess
import sys

import pytest

from switch.cli.main import _parser
from switch.config.command_line import CommandLineParser
from switch.receivers import base


def _refused(parser, argv, capsys) -> str:
    with pytest.raises(SystemExit) as refused:
        parser.parse_args(argv)
    assert refused.value.code == 2
    return capsys.readouterr().err


def test_serve_given_two_data_dirs_starts_neither_and_names_the_option(tmp_path):
    first, second = tmp_path / "wh", tmp_path / "test"
    result = subprocess.run([sys.executable, "-m", "switch", "serve", "--init", "--data",
                             str(first), "--listen", "127.0.0.1:0", "--metrics", "off",
                             "--data", str(second)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and result.stdout == ""
    assert f"argument --data: given twice (the second time '{second}'); give it once" \
        in result.stderr
    assert not first.exists() and not second.exists()


@pytest.mark.parametrize("argv", [
    ["serve", "--data", "a", "--listen", "127.0.0.1:0", "--data=b"],
    ["serve", "--data=a", "--listen", "127.0.0.1:0", "--dat", "b"],    # an abbreviation
    ["serve", "--data", "a", "--listen", "127.0.0.1:0", "--listen", "127.0.0.1:1"],
    ["serve", "--data", "a", "--listen", "127.0.0.1:0", "--log-level", "info",
     "--log-level", "debug"],
    ["audit", "--data", "a", "--data", "a"],                           # even the same value
    ["admin", "--connect", "127.0.0.1:1", "credit", "WH1", "1.00", "--id", "a", "--id", "b"],
    ["admin", "--connect", "127.0.0.1:1", "--connect", "127.0.0.1:2", "account", "WH1"],
    # Once to `admin` and once to its subcommand: two parsers, one command line.
    ["admin", "--connect", "127.0.0.1:1", "--id", "a", "credit", "WH1", "1.00", "--id", "b"],
    ["admin", "--connect", "127.0.0.1:1", "account", "WH1", "--connect", "127.0.0.1:2"],
    ["admin", "--who", "office", "--connect", "127.0.0.1:1", "account", "WH1", "--who", "x"],
])
def test_every_command_refuses_an_option_given_twice(argv, capsys):
    option = next(word for word in reversed(argv) if word.startswith("--"))
    option = option.partition("=")[0]
    option = {"--dat": "--data"}.get(option, option)
    assert f"argument {option}: given twice" in _refused(_parser(), argv, capsys)


def test_once_each_parses_and_a_flag_twice_is_the_flag(capsys):
    args = _parser().parse_args(["serve", "--data", "a", "--init", "--init", "--listen",
                                 "127.0.0.1:0"])
    assert (args.data, args.init, args.listen) == ("a", True, ("127.0.0.1", 0))
    args = _parser().parse_args(["admin", "--json", "--json", "--connect", "127.0.0.1:1",
                                 "account", "WH1"])
    assert args.json is True and args.connect == ("127.0.0.1", 1)


def test_an_admin_option_given_once_before_or_after_the_subcommand_is_taken(capsys):
    before = _parser().parse_args(["admin", "--id", "a", "--connect", "127.0.0.1:1",
                                   "credit", "WH1", "1.00"])
    after = _parser().parse_args(["admin", "--connect", "127.0.0.1:1", "credit", "WH1",
                                  "1.00", "--id", "b"])
    assert (before.id, after.id) == ("a", "b")
    assert before.connect == after.connect == ("127.0.0.1", 1)
    # A refused command line leaves nothing behind for the next parse.
    _refused(_parser(), ["admin", "--id", "a", "credit", "WH1", "1.00", "--id", "a"], capsys)
    assert _parser().parse_args(["admin", "--id", "c", "credit", "WH1", "1.00"]).id == "c"


def test_one_parser_parses_again_without_remembering_the_last_command_line():
    parser = CommandLineParser(prog="p")
    parser.add_argument("--data")
    assert parser.parse_args(["--data", "a"]).data == "a"
    assert parser.parse_args(["--data", "b"]).data == "b"


def test_a_plain_parser_built_on_ours_still_refuses_an_option_given_twice(capsys):
    """`parents=`: the options are ours, the parse argparse's own."""
    ours = CommandLineParser(prog="p", add_help=False)
    ours.add_argument("--data")
    plain = argparse.ArgumentParser(prog="q", parents=[ours])
    assert plain.parse_args(["--data", "a"]).data == "a"
    assert "argument --data: given twice" in _refused(plain, ["--data", "a", "--data", "b"],
                                                       capsys)


def test_an_option_meant_to_repeat_still_repeats():
    parser = CommandLineParser(prog="p")
    parser.add_argument("--listen", action="append")
    parser.add_argument("-v", action="count", default=0)
    args = parser.parse_args(["--listen", "a", "--listen", "b", "-v", "-v"])
    assert args.listen == ["a", "b"] and args.v == 2


def test_a_receivers_command_line_refuses_an_option_given_twice(capsys):
    parser = base.parser("python -m switch.receivers.billing", "billing receiver")
    parser.add_argument("--data")
    assert "argument --data: given twice" in _refused(parser, ["--data", "a", "--data", "b"],
                                                       capsys)


def test_a_long_second_value_is_shown_cut(capsys):
    from switch import limits

    pasted = "x" * 1_000
    said = _refused(_parser(), ["audit", "--data", "a", "--data", pasted], capsys)
    shown = said.partition("the second time ")[2].partition("); give it once")[0]
    assert len(shown) == limits.command_line_value_shown_chars_max
    assert shown.startswith("'xxx") and shown.endswith("...")
