"""The master key file as an operator meets it (docs/PROTOCOL.md §7.1, §7.4): made by
`serve --init` beside the data dir, required at every start, named elsewhere with
`--master-key` or `master_key_file`; and `admin rotate-key`."""

import os
import signal
import stat
import subprocess
import sys

from switch.cli.datadir import read_admin_key
from switch.config.keyfile import read_key_file
from tests.cli.helpers import admin, one_line_error
from tests.cli.test_serve import _ready_lines, _run, _start


def _serve_once(data, *extra):
    """Start, wait until it listens, stop with SIGTERM; returns its stderr."""
    process = _start(data, *extra)
    try:
        assert _ready_lines(process, 1)[0].startswith("listening on")
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
    return process.stderr.read()


def test_init_makes_the_master_key_file_beside_the_data_dir_and_every_start_needs_it(tmp_path):
    data = tmp_path / "d"
    _serve_once(data)
    key_path = tmp_path / "d.key"
    assert stat.S_IMODE(os.stat(key_path).st_mode) == 0o600
    assert "d.key" not in os.listdir(data)
    os.rename(key_path, tmp_path / "elsewhere.key")
    books = (data / "lmdb" / "data.mdb").read_bytes()
    refused = _run("serve", "--data", str(data), "--listen", "127.0.0.1:0", timeout=30)
    one_line_error(refused, str(key_path), "not found")
    assert (data / "lmdb" / "data.mdb").read_bytes() == books
    # Named elsewhere, on the command line or in the configuration, it is used.
    _serve_once(data, "--master-key", str(tmp_path / "elsewhere.key"))
    config = tmp_path / "switch.toml"
    config.write_text('master_key_file = "elsewhere.key"\n')
    _serve_once(data, "--config", str(config))
    assert not key_path.exists()


def test_a_master_key_file_inside_the_data_dir_is_refused_before_anything_is_made(tmp_path):
    data = tmp_path / "d"
    result = _run("serve", "--init", "--data", str(data), "--listen", "127.0.0.1:0",
                  "--master-key", str(data / "master.key"), timeout=30)
    one_line_error(result, "inside the data dir")
    assert os.listdir(tmp_path) == []


def test_init_never_overwrites_a_master_key_file(tmp_path):
    key_path = tmp_path / "d.key"
    key_path.write_text("another data dir's key\n")
    result = _run("serve", "--init", "--data", str(tmp_path / "d"), "--listen", "127.0.0.1:0",
                  timeout=30)
    one_line_error(result, str(key_path), "exists")
    assert key_path.read_text() == "another data dir's key\n"
    assert sorted(os.listdir(tmp_path)) == ["d.key"]


def _account_as(connect, who, key_file):
    return subprocess.run([sys.executable, "-m", "switch", "admin", "--connect", connect,
                           "--who", who, "--key-file", str(key_file), "account", "X"],
                          capture_output=True, text=True, timeout=60)


def test_rotate_key_from_the_cli(running_switch, tmp_path):  # noqa: F811 - the fixture
    connect, data = running_switch
    old_key = tmp_path / "pos.key"
    assert admin(connect, data, "add-terminal", "WH-POS-0001", "--school", "WH", "--kind",
                 "pos", "--key-out", str(old_key)).returncode == 0
    # --key-out onto an existing file: refused before anything is sent or created.
    taken = tmp_path / "taken.key"
    taken.write_text("keep me\n")
    refused = admin(connect, data, "rotate-key", "WH-POS-0001", "--key-out", str(taken))
    one_line_error(refused, str(taken), "exists")
    assert taken.read_text() == "keep me\n"
    assert _account_as(connect, "WH-POS-0001", old_key).stdout.startswith("not_permitted: ")
    # Rotated: the new key signs on, the old one no more.
    new_key = tmp_path / "new.key"
    rotated = admin(connect, data, "rotate-key", "WH-POS-0001", "--key-out", str(new_key))
    assert rotated.returncode == 0 and str(new_key) in rotated.stdout
    assert stat.S_IMODE(os.stat(new_key).st_mode) == 0o600
    assert read_key_file(str(new_key)) != read_key_file(str(old_key))
    assert read_key_file(str(new_key)).hex() not in rotated.stdout
    assert _account_as(connect, "WH-POS-0001", new_key).stdout.startswith("not_permitted: ")
    stale = _account_as(connect, "WH-POS-0001", old_key)
    assert stale.returncode == 2 and "unauthenticated" in stale.stderr
    # The admin's own key too: the data dir's admin.key then opens nothing.
    admin_key = tmp_path / "admin-new.key"
    assert admin(connect, data, "rotate-key", "admin", "--key-out",
                 str(admin_key)).returncode == 0
    assert read_key_file(str(admin_key)) != read_admin_key(str(data))
    assert admin(connect, data, "account", "X").returncode == 2
    assert _account_as(connect, "admin", admin_key).stdout.startswith("unknown_account: ")


def test_rotate_master_key_is_refused_while_the_switch_runs_and_works_offline(tmp_path):
    data = tmp_path / "d"
    process = _start(data, "--log-level", "WARNING")
    try:
        assert _ready_lines(process, 1)[0].startswith("listening on")
        key_text = (tmp_path / "d.key").read_text()
        busy = _run("rotate-master-key", "--data", str(data), timeout=30)
        one_line_error(busy, str(data), f"process {process.pid}")
        assert (tmp_path / "d.key").read_text() == key_text
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
    rotated = _run("rotate-master-key", "--data", str(data), timeout=60)
    assert rotated.returncode == 0 and "1 credentials" in rotated.stdout, rotated.stderr
    assert (tmp_path / "d.key").read_text() != key_text
    assert stat.S_IMODE(os.stat(tmp_path / "d.key").st_mode) == 0o600
    _serve_once(data)      # starts again under the new key (it checks that the key opens it)


def test_rotating_a_copy_under_another_data_dirs_key_is_refused(tmp_path):
    # A restored copy opens with production's key; `--master-key prod.key` rotated it in
    # place, and production, still serving on the old key in memory, could not start again.
    prod, copy = tmp_path / "prod", tmp_path / "copy"
    _serve_once(prod)
    backup = _run("backup", "--data", str(prod), "--to", str(tmp_path / "b"), timeout=60)
    assert backup.returncode == 0, backup.stderr
    restored = _run("restore", "--from", str(tmp_path / "b"), "--data", str(copy), timeout=60)
    assert restored.returncode == 0, restored.stderr
    key_text = (tmp_path / "prod.key").read_text()
    refused = _run("rotate-master-key", "--data", str(copy), "--master-key",
                   str(tmp_path / "prod.key"), timeout=60)
    one_line_error(refused, "master key file of the data dir", "nothing was changed")
    assert (tmp_path / "prod.key").read_text() == key_text
    _serve_once(prod)
    # The way the refusal names: the copy given its own copy of the key, then rotated.
    assert subprocess.run(["cp", "-p", str(tmp_path / "prod.key"), str(tmp_path / "copy.key")]
                          ).returncode == 0
    assert _run("rotate-master-key", "--data", str(copy), timeout=60).returncode == 0
    assert (tmp_path / "prod.key").read_text() == key_text
    _serve_once(prod)


def test_a_key_file_anywhere_is_rotated_only_for_the_data_dir_that_served_with_it(tmp_path):
    # With master_key_file in a folder of its own (the example's layout), a restored copy
    # rotated under production's key file was not refused (helper-73's review).
    prod, copy, keys = tmp_path / "prod", tmp_path / "copy", tmp_path / "keys"
    keys.mkdir()
    key = keys / "master.key"
    _serve_once(prod, "--master-key", str(key))
    assert (keys / "master.key.owner").read_text() == f"{os.path.realpath(prod)}\n"
    assert _run("backup", "--data", str(prod), "--to", str(tmp_path / "b")).returncode == 0
    assert _run("restore", "--from", str(tmp_path / "b"), "--data", str(copy)).returncode == 0
    _serve_once(copy, "--master-key", str(key))     # serving a copy with it names no owner
    key_text = key.read_text()
    refused = _run("rotate-master-key", "--data", str(copy), "--master-key", str(key))
    one_line_error(refused, f"master key file of the data dir {os.path.realpath(prod)}",
                   "nothing was changed")
    assert key.read_text() == key_text
    # Production's volume not mounted (its path there, empty): still its key (helper-75).
    prod.rename(tmp_path / "prod-volume")
    prod.mkdir()
    one_line_error(_run("rotate-master-key", "--data", str(copy), "--master-key", str(key)),
                   f"master key file of the data dir {os.path.realpath(prod)}")
    _serve_once(copy, "--master-key", str(key))     # nor does serving the copy take it
    assert (keys / "master.key.owner").read_text() == f"{os.path.realpath(prod)}\n"
    prod.rmdir()
    (tmp_path / "prod-volume").rename(prod)
    rotated = _run("rotate-master-key", "--data", str(prod), "--master-key", str(key))
    assert rotated.returncode == 0, rotated.stderr
    _serve_once(prod, "--master-key", str(key))


def test_a_data_dir_moved_with_its_key_is_still_the_keys_owner(tmp_path):
    # Moved (a disk migration), its key's `.owner` named the old path, and rotation was
    # refused for the data dir's own key, advising a copy onto itself (helper-74).
    _serve_once(tmp_path / "p1" / "data")
    (tmp_path / "p1").rename(tmp_path / "p2")
    moved = tmp_path / "p2" / "data"
    rotated = _run("rotate-master-key", "--data", str(moved), timeout=60)
    assert rotated.returncode == 0, rotated.stderr
    assert (tmp_path / "p2" / "data.key.owner").read_text() == f"{os.path.realpath(moved)}\n"
    _serve_once(moved)


def test_a_rotation_stopped_by_a_full_disk_says_what_to_do_and_a_second_run_finishes_it(
        tmp_path, monkeypatch, capsys):
    """A full disk fails the re-sealing's write (LMDB says ENOSPC only in its message): one
    line, exit 2, the key file still opens the data dir, and the same command run again
    finishes the rotation."""
    import lmdb

    from switch.cli.main import main
    from switch.ledger.state import sealing
    data = tmp_path / "d"
    _serve_once(data)
    key_text = (tmp_path / "d.key").read_text()

    def disk_full(store, master):
        raise lmdb.Error("mdb_txn_commit: No space left on device")
    monkeypatch.setattr(sealing, "reseal", disk_full)
    assert main(["rotate-master-key", "--data", str(data)]) == 2
    failed = subprocess.CompletedProcess([], 2, *capsys.readouterr())
    one_line_error(failed, "rotation did not finish", "No space left on device",
                   f"the disk that holds {data} is full",
                   "free space there, then run the same command again",
                   "still opens every secret")
    assert (tmp_path / "d.key").read_text() != key_text     # the new key beside the old
    _serve_once(data)

    def disk_broken(store, master):
        raise lmdb.Error("mdb_txn_commit: Input/output error")
    monkeypatch.setattr(sealing, "reseal", disk_broken)
    assert main(["rotate-master-key", "--data", str(data)]) == 2
    broken = subprocess.CompletedProcess([], 2, *capsys.readouterr())
    line = one_line_error(broken, "Input/output error", "still opens every secret",
                          "once the cause is put right the same command finishes it")
    assert "free space" not in line            # no promise that does not hold for it

    monkeypatch.undo()
    assert main(["rotate-master-key", "--data", str(data)]) == 0
    assert "1 credentials" in capsys.readouterr().out
    _serve_once(data)


def test_a_start_stopped_by_a_full_disk_says_to_free_space_and_that_nothing_is_lost():
    """Opening writes (it writes back the logs), so a switch stopped on a full disk cannot
    start again until space is freed; the one line says so. Other failures get no hint."""
    import lmdb
    import pytest

    from switch.cli.main import StartError, _open_store

    class Claim:
        path = "/srv/switch/data"

        def __init__(self, error):
            self.error = error

        def open_store(self):
            raise self.error
    with pytest.raises(StartError) as full:
        _open_store(Claim(lmdb.Error("mdb_txn_commit: No space left on device")))
    assert str(full.value) == (
        "cannot open the data dir /srv/switch/data: mdb_txn_commit: No space left on device; "
        "the disk that holds /srv/switch/data is full: free space there, then start again "
        "(nothing committed is lost)")
    with pytest.raises(StartError) as other:
        _open_store(Claim(lmdb.Error("mdb_env_open: Permission denied")))
    assert "free space" not in str(other.value)
