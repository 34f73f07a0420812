"""Every log line the switch and the receivers write is `key=value` tokens split by single
spaces (README.md "Logs"): a UTC millisecond `ts`, values with spaces, quotes or `=` quoted,
and nothing a peer sends can add a key or a line of its own."""

import logging
import re
import signal
import subprocess
import sys

import trio

from switch import limits
from switch.cli.datadir import read_admin_key
from switch.logline import KeyValueFormatter, bounded, quote, split
from switch.shell.client import Client
from tests.paths import REPO_ROOT
from tests.key_files import write_private

TS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z\Z")
# A credential id no till would send: spaces, a forged key, a newline and a line separator
# each with a forged line, a terminal's CSI, and longer than any log value is kept.
HOSTILE_WHO = ('evil who level=ERROR "x"\u2028ts=2026-01-01T00:00:00.000Z event=forged '
               '\x9b31m\nts=2026-01-01T00:00:00.000Z event=forged ' + "w" * 200)


def _record(message, *args, exc_info=None):
    return logging.LogRecord("switch.server", logging.INFO, __file__, 1, message, args, exc_info)


def test_a_value_with_spaces_quotes_or_equals_is_quoted_and_reads_back():
    for value in ("plain", "two words", 'say "hi"', "a=b", "line\nbreak", "tab\t", "\\",
                  "", "控制\x01"):
        line = KeyValueFormatter().format(_record("event=test who=%s n=%d", value, 7))
        fields = split(line)
        assert fields is not None, line
        assert fields["who"] == value and fields["n"] == "7" and fields["event"] == "test"
        assert "\n" not in line
    assert quote("WH-POS-01") == "WH-POS-01"   # ordinary values stay bare


# Each splits a line for str.splitlines(), makes a terminal act, or reorders what a reader
# sees: C1 controls (\x9b is a terminal's CSI), NEL, the line and paragraph separators,
# bidi overrides and isolates, a zero-width joiner, a BOM, a lone surrogate, a private-use
# and an unassigned code point, one outside the basic plane.
UNPRINTABLE = ("\x80", "\x85", "\x9b", "\x9f", "\u2028", "\u2029", "\u202a", "\u202e",
               "\u2066", "\u2069", "\u200d", "\ufeff", "\ud800", "\ue000", "\U000e0001",
               "\U0010ffff", "\x0b", "\x0c", "\x1c", "\x7f")


def test_a_value_with_a_character_that_is_not_printable_is_escaped_and_reads_back():
    for character in UNPRINTABLE:
        for value in (character, f"WH{character}POS", f"收银台{character}一号"):
            quoted = quote(value)
            assert quoted.startswith('"') and quoted.isprintable(), ascii(quoted)
            assert character not in quoted, ascii(quoted)
            line = KeyValueFormatter().format(_record("event=test who=%s n=%d", value, 7))
            assert line.isprintable() and len(line.splitlines()) == 1, ascii(line)
            assert split(line)["who"] == value, ascii(line)
    assert quote("\x9b") == '"\\x9b"' and quote("\u202e") == '"\\u202e"'
    assert quote("\U000e0001") == '"\\U000e0001"'
    # Printable non-ASCII stays as it is, bare when it can be.
    assert quote("西苑食堂") == "西苑食堂" and quote("西苑 食堂") == '"西苑 食堂"'
    # A backslash sequence a peer types reads back as typed, not as the character it names.
    for typed in ("\\u2028", "\\x9b", "\\U0010ffff"):
        line = KeyValueFormatter().format(_record("event=test who=%s", typed))
        assert split(line)["who"] == typed, line


def test_a_line_with_a_character_that_is_not_printable_is_not_a_line_of_this_format():
    assert split("ts=1 event=test who=a\x9bb") is None
    assert split("ts=1 event=test who=\"a\u2028b\"") is None
    assert split("ts=1 event=test who=\"a\\u2028b\"")["who"] == "a\u2028b"


def test_a_peer_value_cannot_forge_a_line_for_splitlines():
    for separator in ("\u2028", "\u2029", "\x85", "\x1e", "\x0b"):
        who = f"WH-POS-01{separator}ts=2026-01-01T00:00:00.000Z event=revoked who=WH-POS-02"
        line = KeyValueFormatter().format(_record("event=hello_refused who=%s", who))
        lines = line.splitlines()
        assert len(lines) == 1, ascii(line)
        assert split(lines[0])["event"] == "hello_refused"
        assert split(lines[0])["who"] == who


def test_the_timestamp_is_utc_with_milliseconds():
    record = _record("event=test")
    record.created = 1796099400.123456        # 2026-12-01T04:30:00.123 UTC
    fields = split(KeyValueFormatter().format(record))
    assert fields["ts"] == "2026-12-01T04:30:00.123Z"
    assert list(fields)[:3] == ["ts", "level", "logger"]


def test_free_text_and_tracebacks_stay_one_line_of_key_value():
    try:
        raise ValueError("bad thing\nsecond line")
    except ValueError:
        record = _record("%s: connection failed", "billing", exc_info=sys.exc_info())
    line = KeyValueFormatter().format(record)
    fields = split(line)
    assert fields is not None and "\n" not in line
    assert fields["msg"] == "billing: connection failed"
    assert "ValueError: bad thing\nsecond line" in fields["traceback"]


def test_a_peer_value_is_cut_to_the_bound():
    at_bound = "w" * limits.log_peer_value_chars_max
    assert bounded(at_bound, limits.log_peer_value_chars_max) == at_bound
    over = at_bound + "w"
    assert bounded(over, limits.log_peer_value_chars_max) == at_bound + "..."
    assert bounded(None, limits.log_peer_value_chars_max) == "-"


def _started(command, stderr_path, cwd=REPO_ROOT):
    with open(stderr_path, "wb") as stderr:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, text=True,
                                   stdin=subprocess.DEVNULL, cwd=cwd)
    line = process.stdout.readline()
    assert line.startswith("listening on"), (line, stderr_path.read_text())
    return process, int(line.strip().rpartition(":")[2])


def _stop(process):
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_every_line_of_a_switch_and_a_receiver_run_is_key_value(tmp_path):
    key_file = tmp_path / "billing.key"
    write_private(key_file, "cd" * 32 + "\n")
    receiver_err, switch_err = tmp_path / "receiver.err", tmp_path / "switch.err"
    receiver, receiver_port = _started(
        [sys.executable, "-m", "switch.receivers.billing", "--listen", "127.0.0.1:0",
         "--state", str(tmp_path / "billing-state"), "--credential", "switch-billing",
         "--key-file", str(key_file)], receiver_err)
    switch = None
    try:
        config = tmp_path / "switch.toml"
        config.write_text(f'[[destinations]]\nname = "billing"\n'
                          f'address = "127.0.0.1:{receiver_port}"\n'
                          f'credential = "switch-billing"\nkey_file = "billing.key"\n')
        data = tmp_path / "data"
        switch, port = _started(
            [sys.executable, "-m", "switch", "serve", "--init", "--data", str(data),
             "--listen", "127.0.0.1:0", "--metrics", "off", "--config", str(config)],
            switch_err)

        async def traffic():
            async with await Client.connect("127.0.0.1", port, "admin",
                                            read_admin_key(str(data))) as admin:
                reply = await admin.request({"t": "add_credential", "who": "WH-POS-LOG",
                                             "role": "terminal", "school": "WH",
                                             "kind": "pos", "id": "add"})
                assert reply["code"] == "ok", reply
                # Revoked while never signed on: logged all the same.
                reply = await admin.request({"t": "revoke_credential", "who": "WH-POS-LOG",
                                             "id": "revoke"})
                assert reply["code"] == "ok", reply
            for target in (port, receiver_port):
                try:
                    await (await Client.connect("127.0.0.1", target, HOSTILE_WHO,
                                                b"\x01" * 32)).aclose()
                except Exception:
                    pass
                else:
                    raise AssertionError("a hello with a made-up credential was accepted")
            await trio.sleep(0.3)   # the refusals are logged before the connection closes
        trio.run(traffic)
    finally:
        if switch is not None:
            _stop(switch)
        _stop(receiver)

    lines = {"switch": switch_err.read_text().splitlines(),
             "receiver": receiver_err.read_text().splitlines()}
    events = {"switch": [], "receiver": []}
    for program, program_lines in lines.items():
        assert program_lines, program
        for line in program_lines:
            fields = split(line)
            assert fields is not None, (program, line)
            assert list(fields)[:3] == ["ts", "level", "logger"], line
            assert TS.match(fields["ts"]), line
            events[program].append(fields)
    expected_who = bounded(HOSTILE_WHO, limits.log_peer_value_chars_max)
    for program in ("switch", "receiver"):
        refused = [f for f in events[program] if f.get("event") == "hello_refused"]
        assert [f["who"] for f in refused] == [expected_who], events[program]
        assert refused[0]["level"] == "INFO"
        assert not any(f.get("event") == "forged" for f in events[program])
    switch_events = {f.get("event"): f for f in events["switch"]}
    assert switch_events["revoked"]["who"] == "WH-POS-LOG"
    assert switch_events["revoked"]["sessions_closed"] == "0"
    assert switch_events["data_dir_created"]["admin_key"] == str((data / "admin.key").resolve())
    assert switch_events["forward_signed_on"]["destination"] == "billing"
    receiver_events = {f.get("event") for f in events["receiver"]}
    assert {"sign_on", "stopped"} <= receiver_events
