"""The reference receivers as an operator starts them: one per state dir, and one line with
exit 2 for every mistake at start."""

import signal
import socket
import subprocess
import sys

import pytest

from tests.cli.helpers import one_line_error
from tests.key_files import write_private

RECEIVERS = ["switch.receivers.billing", "switch.receivers.utility"]


def _command(module, state, key_file, listen="127.0.0.1:0"):
    return [sys.executable, "-m", module, "--listen", listen, "--state", str(state),
            "--credential", "switch-billing", "--key-file", str(key_file)]


@pytest.fixture
def key_file(tmp_path):
    path = tmp_path / "receiver.key"
    write_private(path, "ab" * 32 + "\n")
    return path


@pytest.mark.parametrize("module", RECEIVERS)
def test_a_second_receiver_on_a_state_dir_is_refused_naming_the_holder(tmp_path, key_file,
                                                                        module):
    state = tmp_path / "state"
    first = subprocess.Popen(_command(module, state, key_file), stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True)
    try:
        assert first.stdout.readline().startswith("listening on")
        before = sorted((p.name, p.read_bytes()) for p in state.iterdir())
        second = subprocess.run(_command(module, state, key_file), capture_output=True,
                                text=True, timeout=30)
        one_line_error(second, str(state), f"process {first.pid}")
        assert sorted((p.name, p.read_bytes()) for p in state.iterdir()) == before
    finally:
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=20) == 0


def test_a_port_in_use_is_one_line_and_leaves_no_state_dir(tmp_path, key_file):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        result = subprocess.run(_command(RECEIVERS[0], tmp_path / "state", key_file, address),
                                capture_output=True, text=True, timeout=30)
    finally:
        taken.close()
    one_line_error(result, f"cannot listen on {address}", "in use")
    assert not (tmp_path / "state").exists()


@pytest.mark.parametrize("contents,mode,expected", [
    (None, None, "No such file"),
    ("not a key\n", 0o600, "64 hex characters"),
    # Written by hand with the default umask: whoever reads it could forge the records the
    # receiver settles, or read them. Refused naming its mode and the remedy.
    ("ab" * 32 + "\n", 0o644, "(mode 0644); whoever reads it signs on as its credential: "
                              "chmod 600"),
    ("ab" * 32 + "\n", 0o620, "may be read or written by others (mode 0620)"),
])
def test_a_bad_key_file_is_one_line(tmp_path, contents, mode, expected):
    path = tmp_path / "receiver.key"
    if contents is not None:
        path.write_text(contents)
        path.chmod(mode)
    result = subprocess.run(_command(RECEIVERS[1], tmp_path / "state", path),
                            capture_output=True, text=True, timeout=30)
    one_line_error(result, str(path), expected)
    assert "not a key" not in result.stderr


@pytest.mark.parametrize("state_text,expected", [
    ('{"version": 1', "cannot read"),
    ('{"version": 1, "receiver": "utility", "position": 0, "state": {}}', "not a billing state"),
    ('[1, 2]', "not a billing state"),
    ('{"version": 1, "receiver": "billing", "position": 3, "state": {}}', "damaged state"),
])
def test_a_state_file_it_cannot_take_is_one_line_and_left_alone(tmp_path, key_file, state_text,
                                                                expected):
    state = tmp_path / "state"
    state.mkdir()
    (state / "state.json").write_text(state_text)
    result = subprocess.run(_command(RECEIVERS[0], state, key_file), capture_output=True,
                            text=True, timeout=30)
    one_line_error(result, str(state / "state.json"), expected)
    assert (state / "state.json").read_text() == state_text


def test_an_unknown_time_zone_is_a_usage_error(tmp_path, key_file):
    result = subprocess.run(_command(RECEIVERS[0], tmp_path / "state", key_file)
                            + ["--time-zone", "Asia/Shanghia"], capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "unknown time zone 'Asia/Shanghia'" in result.stderr
    assert not (tmp_path / "state").exists()


@pytest.mark.parametrize("module", RECEIVERS)
def test_a_switchs_data_dir_as_the_state_dir_is_refused_and_left_alone(tmp_path, key_file,
                                                                        module):
    # It took the data dir's lock and wrote its csv there: the switch would not start, and
    # backups carried the receiver's files (helper-68).
    data = tmp_path / "data"
    (data / "lmdb").mkdir(parents=True)
    (data / "lmdb" / "data.mdb").write_bytes(b"books")
    result = subprocess.run(_command(module, data, key_file), capture_output=True, text=True,
                            timeout=30)
    one_line_error(result, "is a switch's data dir")
    assert sorted(p.name for p in data.iterdir()) == ["lmdb"]
