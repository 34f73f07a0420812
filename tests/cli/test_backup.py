"""`python -m switch backup` and `restore` (README.md "Backup and restore"): a copy taken
while tills pay holds every txn acknowledged up to its last one, and a restore never
overwrites a switch's books."""

import os
import pathlib
import re
import signal
import subprocess
import sys

import lmdb
import msgpack
import pytest
import trio

from switch.cli.datadir import open_data_dir, read_admin_key
from switch.clock import SystemClock
from switch.config import default_config
from switch.ledger import Ledger, dispatch
from switch.persistence.audit import journal_records
from switch.persistence.store import STORE_DIR, Store
from switch.shell.client import Client
from tests.cli.helpers import one_line_error
from tests.paths import REPO_ROOT
from switch.persistence.keys import BLACKLIST_RESTORES

ACCOUNTS = 20
TERMINALS = 4
PIPELINE_DEPTH = 8
BATCHES_PER_TERMINAL_MAX = 2_000      # the load stops by itself whatever happens
ACKS_BEFORE_BACKUP = 200              # the backup starts once the load is well under way
ACKS_AFTER_BACKUP = 200               # and the load goes on this long after it finished
START_TIMEOUT_S = 20.0
RUN_TIMEOUT_S = 60.0


def _run(*words, timeout=60):
    return subprocess.run([sys.executable, "-m", "switch", *words], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO_ROOT)


def _last_txn(stdout: str) -> int:
    return int(re.search(r"last txn (\d+)", stdout).group(1))


def _journal(data) -> dict[int, dict]:
    return {record["txn"]: record for record in journal_records(str(data))}


@pytest.fixture
def serving(tmp_path, request):
    """A switch serving `tmp_path/data` under the load configuration; stopped by PID."""
    data = tmp_path / "data"
    out = tmp_path / "switch.out"
    with open(out, "wb") as stdout, open(tmp_path / "switch.err", "wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "switch", "serve", "--init", "--data", str(data),
             "--listen", "127.0.0.1:0", "--metrics", "off",
             "--config", str(REPO_ROOT / "bench" / "switch-load.toml")],
            stdout=stdout, stderr=stderr, stdin=subprocess.DEVNULL, cwd=REPO_ROOT)

    def stop():
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    request.addfinalizer(stop)

    async def port() -> int:
        with trio.fail_after(START_TIMEOUT_S):
            while True:
                for line in out.read_text().split("\n")[:-1]:
                    if line.startswith("listening on "):
                        return int(line.rpartition(":")[2])
                assert process.poll() is None, (tmp_path / "switch.err").read_text()
                await trio.sleep(0.02)
    return data, port, stop


async def _provision(port: int, admin_key: bytes) -> list[tuple[str, bytes]]:
    async with await Client.connect("127.0.0.1", port, "admin", admin_key) as admin:
        messages = []
        for i in range(ACCOUNTS):
            messages += [
                {"t": "open_account", "account": f"WHBK{i:04d}", "school": "WH",
                 "kind": "person", "id_last6": "123456", "holder": f"Student {i}",
                 "id": f"open-{i}"},
                {"t": "issue_card", "account": f"WHBK{i:04d}", "card": f"BC{i:06d}",
                 "id": f"card-{i}"},
                {"t": "credit", "account": f"WHBK{i:04d}", "amount": 10_000_000,
                 "source": "opening", "id": f"fund-{i}"}]
        messages += [{"t": "add_credential", "who": f"WH-POS-BK{t}", "role": "terminal",
                      "school": "WH", "kind": "pos", "id": f"pos-{t}"} for t in range(TERMINALS)]
        replies = []
        for start in range(0, len(messages), 50):
            replies += await admin.pipeline(messages[start:start + 50])
    assert all(reply["code"] == "ok" for reply in replies), replies
    return [(f"WH-POS-BK{t}", reply["key"]) for t, reply in enumerate(replies[-TERMINALS:])]


def test_a_backup_under_load_holds_every_acknowledged_txn_up_to_its_last(serving, tmp_path):
    data, port_of, stop = serving
    copy, restored = tmp_path / "backups" / "2026-12-01", tmp_path / "restored"
    acknowledged: dict[int, tuple[str, int]] = {}   # txn -> (card, amount) answered ok
    declined = []
    outcome = {}

    async def till(port, who, key, index, stop_load):
        async with await Client.connect("127.0.0.1", port, who, key) as client:
            for batch in range(BATCHES_PER_TERMINAL_MAX):
                if stop_load.is_set():
                    break
                messages = [{"t": "debit", "card": f"BC{(index + n) % ACCOUNTS:06d}",
                             "amount": 1 + n, "id": f"{who}-{batch}-{n}"}
                            for n in range(PIPELINE_DEPTH)]
                for message, reply in zip(messages, await client.pipeline(messages)):
                    if reply["code"] == "ok":
                        acknowledged[reply["txn"]] = (message["card"], message["amount"])
                    else:
                        declined.append(reply)
        outcome["tills_done"] = outcome.get("tills_done", 0) + 1

    async def main():
        port = await port_of()
        terminals = await _provision(port, read_admin_key(str(data)))
        stop_load = trio.Event()
        with trio.fail_after(RUN_TIMEOUT_S):
            async with trio.open_nursery() as nursery:
                for index, (who, key) in enumerate(terminals):
                    nursery.start_soon(till, port, who, key, index, stop_load)
                while len(acknowledged) < ACKS_BEFORE_BACKUP:
                    await trio.sleep(0.01)
                outcome["acks_at_start"] = len(acknowledged)
                result = await trio.run_process(
                    [sys.executable, "-m", "switch", "backup", "--data", str(data),
                     "--to", str(copy)], capture_stdout=True, capture_stderr=True,
                    check=False, cwd=REPO_ROOT)
                outcome["backup"] = result
                settled = len(acknowledged)
                while (len(acknowledged) < settled + ACKS_AFTER_BACKUP
                       and outcome.get("tills_done", 0) < TERMINALS):
                    await trio.sleep(0.01)
                stop_load.set()

    trio.run(main)
    backup = outcome["backup"]
    assert backup.returncode == 0, backup.stderr
    stdout = backup.stdout.decode()
    assert "audit: sound" in stdout
    last = _last_txn(stdout)
    assert declined == []
    # The switch went on answering while and after the copy was taken: txns on both sides.
    assert any(txn <= last for txn in acknowledged)
    assert any(txn > last for txn in acknowledged)
    stop()

    result = _run("restore", "--from", str(copy), "--data", str(restored))
    assert result.returncode == 0, result.stderr
    assert "event=restore" in result.stderr
    journal = _journal(restored)
    assert max(journal) == last
    missing = [txn for txn in acknowledged if txn <= last and txn not in journal]
    assert missing == []
    for txn, (card, amount) in acknowledged.items():
        if txn <= last:
            assert journal[txn]["amount"] == -amount and journal[txn]["card"] == card, \
                journal[txn]
    audit = _run("audit", "--data", str(restored))
    assert audit.returncode == 0 and "audit: sound" in audit.stdout


def _stopped_data_dir(path: pathlib.Path, accounts: int = 0, positions=None) -> pathlib.Path:
    """A data dir with `accounts` opened (a journal record each) and the given forwarding
    positions, no switch running."""
    store = open_data_dir(str(path))
    try:
        ledger = Ledger(store, default_config(), SystemClock())
        admin = ledger.credential("admin")
        opened = len(list(store.committed_journal(1, store.last_txn)))
        for i in range(opened, opened + accounts):
            reply = dispatch.execute(ledger, admin, {
                "t": "open_account", "account": f"WHST{i:04d}", "school": "WH",
                "kind": "person", "id_last6": "123456", "holder": f"Student {i}",
                "id": f"open-{i}"})
            assert reply["code"] == "ok", reply
        for name, txn in (positions or {}).items():
            store.save_forward_position(name, txn)
        store.commit_now()
    finally:
        store.close()
    return path


def test_backup_leaves_the_master_key_out_and_copies_the_admin_key(tmp_path):
    data = _stopped_data_dir(tmp_path / "data")
    master = tmp_path / "data.key"   # kept beside the data dir, never inside
    master.write_text("ab" * 32 + "\n")
    result = _run("backup", "--data", str(data), "--to", str(tmp_path / "copy"))
    assert result.returncode == 0, result.stderr
    assert str(master) in result.stdout   # told to keep it apart
    names = sorted(str(p.relative_to(tmp_path / "copy")) for p in (tmp_path / "copy").rglob("*"))
    assert names == ["BACKUP", "admin.key", STORE_DIR, f"{STORE_DIR}/data.mdb"]
    assert (tmp_path / "copy" / "admin.key").read_bytes() == (data / "admin.key").read_bytes()
    assert all(b"ab" * 32 not in p.read_bytes() for p in (tmp_path / "copy").rglob("*")
               if p.is_file())


def test_backup_into_an_existing_directory_is_refused_and_changes_nothing(tmp_path):
    data = _stopped_data_dir(tmp_path / "data")
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    (earlier / "keep").write_text("an earlier backup")
    one_line_error(_run("backup", "--data", str(data), "--to", str(earlier)),
                   str(earlier), "already exists")
    assert os.listdir(earlier) == ["keep"]


def test_backup_of_something_that_is_not_a_data_dir_is_one_line(tmp_path):
    one_line_error(_run("backup", "--data", str(tmp_path / "none"), "--to",
                        str(tmp_path / "copy")), "not a switch data dir")
    assert not (tmp_path / "copy").exists()


def test_a_copy_that_fails_its_audit_is_removed(tmp_path):
    data = _stopped_data_dir(tmp_path / "data")
    # Books that do not add up: a journal record no account's balance reflects.
    env = lmdb.open(str(data / STORE_DIR), max_dbs=32)
    journal = env.open_db(b"journal")
    with env.begin(write=True) as txn:
        txn.put((1).to_bytes(8, "big"), msgpack.packb(
            {"txn": 1, "account": "WHNOBODY", "amount": 5, "balance": 5}), db=journal)
    env.close()
    result = _run("backup", "--data", str(data), "--to", str(tmp_path / "new" / "copy"))
    assert result.returncode == 1, result.stderr
    assert "failed its audit" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "new").exists()


def test_restore_refuses_a_data_dir_in_use(serving, tmp_path):
    data, port_of, _ = serving
    trio.run(port_of)
    copy = tmp_path / "copy"
    assert _run("backup", "--data", str(data), "--to", str(copy)).returncode == 0
    before = sorted(os.listdir(data))
    one_line_error(_run("restore", "--from", str(copy), "--data", str(data)), str(data),
                   "in use")
    assert sorted(os.listdir(data)) == before


def test_restore_refuses_a_directory_that_is_not_empty(tmp_path):
    copy = tmp_path / "copy"
    data = _stopped_data_dir(tmp_path / "data")
    assert _run("backup", "--data", str(data), "--to", str(copy)).returncode == 0
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    one_line_error(_run("restore", "--from", str(copy), "--data", str(other)), str(other),
                   "not empty")
    assert os.listdir(other) == ["notes.txt"]
    one_line_error(_run("restore", "--from", str(tmp_path / "nothing"), "--data",
                        str(tmp_path / "fresh")), "not a backup")
    assert not (tmp_path / "fresh").exists()


def test_restore_refuses_a_data_dir_inside_the_backup(tmp_path):
    """It would write the restored books into the backup, carried into every later restore."""
    copy = tmp_path / "copy"
    data = _stopped_data_dir(tmp_path / "data")
    assert _run("backup", "--data", str(data), "--to", str(copy)).returncode == 0
    before = sorted(os.listdir(copy))
    one_line_error(_run("restore", "--from", str(copy), "--data", str(copy / "sub")),
                   str(copy / "sub"), "is inside the backup")
    assert sorted(os.listdir(copy)) == before


def test_a_restored_switch_forwards_from_the_positions_in_the_copy(tmp_path):
    """Receivers see a rewind, never a gap: the positions come back as they were copied,
    at or below the copy's last txn, so what a receiver took after the copy is sent again
    (and dropped by txn), and nothing in between is skipped."""
    data = _stopped_data_dir(tmp_path / "data", accounts=5, positions={"billing": 4,
                                                                        "utility": 2})
    result = _run("backup", "--data", str(data), "--to", str(tmp_path / "copy"))
    assert result.returncode == 0, result.stderr
    assert _last_txn(result.stdout) == 5
    assert "forwarding positions: billing 4, utility 2" in result.stdout
    # The switch and its receivers move on after the copy.
    _stopped_data_dir(data, accounts=3, positions={"billing": 8, "utility": 8})
    restored = tmp_path / "restored"
    result = _run("restore", "--from", str(tmp_path / "copy"), "--data", str(restored))
    assert result.returncode == 0, result.stderr
    assert "forward_positions=billing:4,utility:2" in result.stderr
    # The backup is left as it was: a restore reads it and writes nothing there.
    assert sorted(p.name for p in (tmp_path / "copy" / STORE_DIR).iterdir()) == ["data.mdb"]
    store = Store(str(restored / STORE_DIR))
    try:
        assert (store.forward_position("billing"), store.forward_position("utility")) == (4, 2)
        assert store.last_txn == 5
        # Counted, so its first start moves every blacklist past what tills saw since
        # (tests/ledger/test_card_office.py::test_after_a_restore_every_till_loads_the_whole_list_again).
        assert store.get("meta", BLACKLIST_RESTORES) == b"1"
    finally:
        store.close()


def test_a_backup_inside_the_data_dir_is_refused(tmp_path):
    data = _stopped_data_dir(tmp_path / "data")
    before = sorted(os.listdir(data))
    one_line_error(_run("backup", "--data", str(data), "--to", str(data / "backups" / "b")),
                   "inside the data dir")
    assert sorted(os.listdir(data)) == before


def test_accounts_still_in_the_log_are_copied_counted_and_restored(tmp_path):
    """A switch stopped as a crash stops, with accounts opened since the last write-back
    only in the accounts log (persistence/writeback.py): the backup counts them, its audit
    reads them, and the restored data dir holds them in `accounts`."""
    data = _stopped_data_dir(tmp_path / "data", accounts=3)
    store = open_data_dir(str(data))
    ledger = Ledger(store, default_config(), SystemClock())
    admin = ledger.credential("admin")
    for i in (100, 101):
        reply = dispatch.execute(ledger, admin, {
            "t": "open_account", "account": f"WHST{i:04d}", "school": "WH", "kind": "person",
            "id_last6": "123456", "holder": f"Student {i}", "id": f"open-{i}"})
        assert reply["code"] == "ok", reply
    batch = store.seal()           # the committer's commit: the records go to the log
    store.write_batch(batch)
    store.committed(batch)
    store.close(write_back=False)
    env = lmdb.open(str(data / STORE_DIR), readonly=True, max_dbs=64, lock=False)
    with env.begin() as txn:
        assert txn.stat(env.open_db(b"accounts", txn=txn))["entries"] == 3
    env.close()
    copy, restored = tmp_path / "copy", tmp_path / "restored"
    backup = _run("backup", "--data", str(data), "--to", str(copy))
    assert backup.returncode == 0, backup.stderr
    assert "accounts 5," in backup.stdout and "audit: sound" in backup.stdout
    restore = _run("restore", "--from", str(copy), "--data", str(restored))
    assert restore.returncode == 0, restore.stderr
    assert "accounts 5," in restore.stdout
    store = Store(str(restored / STORE_DIR))   # replays what the log copied
    try:
        assert store.get_committed("accounts", b"WHST0101") is not None
        assert store.logs_pending == 0
    finally:
        store.close()


def test_a_data_dir_this_user_may_not_read_is_said_so_not_called_a_wrong_path(
        tmp_path, monkeypatch, capsys):
    # The outside test's operator pass: `backup`, `audit`, `closed-taps` as the wrong user
    # said "not a switch data dir; check --data" of the right path.
    from switch.cli.main import main
    from switch.persistence import access
    data = _stopped_data_dir(tmp_path / "data")
    real_stat = os.stat

    def denied(path, *args, **kwargs):
        if str(path).startswith(str(data)) and str(path) != str(data):
            raise PermissionError(13, "Permission denied", str(path))
        return real_stat(path, *args, **kwargs)
    monkeypatch.setattr(access.os, "stat", denied)
    # backup's own name first: imported under datadir's patch, it would keep the fake.
    monkeypatch.setattr("switch.cli.backup.is_data_dir", lambda path: False)
    monkeypatch.setattr("switch.cli.datadir.is_data_dir", lambda path: False)
    said = access.permission_problem(str(data))
    assert said.startswith(f"cannot read {data}: permission denied (it belongs to ")
    assert "run this as " in said and "sudo -u " in said
    for words in (["backup", "--data", str(data), "--to", str(tmp_path / "copy")],
                  ["closed-taps", "--data", str(data)]):
        assert main(words) == 2
        assert capsys.readouterr().err.strip() == f"error: {said}"


def test_a_backup_is_made_under_another_name_and_renamed_once_whole(tmp_path, monkeypatch):
    """A backup killed half-way must not be found where a restore looks for a good one:
    until its copy has passed its audit and is on disk, `to` does not exist."""
    from switch.cli import backup as backup_module
    data = _stopped_data_dir(tmp_path / "data", accounts=2)
    to = tmp_path / "nightly" / "2026-12-05"
    staging = tmp_path / "nightly" / "2026-12-05.incomplete"
    seen = []
    audit_copy = backup_module._require_sound

    def audited(path, what):
        seen.append((path, to.exists(), staging.exists()))
        audit_copy(path, what)
    monkeypatch.setattr(backup_module, "_require_sound", audited)
    backup_module.backup(str(data), str(to))
    assert seen == [(str(staging), False, True)]
    assert to.is_dir() and not staging.exists()
    assert sorted(os.listdir(to)) == ["BACKUP", "admin.key", STORE_DIR]


def test_what_a_killed_backup_left_is_named_and_never_restored(tmp_path):
    data = _stopped_data_dir(tmp_path / "data", accounts=1)
    to = tmp_path / "b"
    assert _run("backup", "--data", str(data), "--to", str(to)).returncode == 0
    os.rename(to, tmp_path / "b2.incomplete")      # as a backup killed before its rename
    one_line_error(_run("backup", "--data", str(data), "--to", str(tmp_path / "b2")),
                   f"{tmp_path / 'b2.incomplete'} exists", "did not finish")
    assert not (tmp_path / "b2").exists()
    one_line_error(_run("restore", "--from", str(tmp_path / "b2.incomplete"), "--data",
                        str(tmp_path / "restored")), "did not finish")
    assert not (tmp_path / "restored").exists()


def test_a_killed_restore_is_refused_by_serve_and_cleared_by_the_next_restore(tmp_path):
    """`restore` marks its target before it copies and unmarks it once the copy passed its
    audit: books a killed restore cut short never serve, nor are backed up."""
    data = _stopped_data_dir(tmp_path / "data", accounts=3)
    copy = tmp_path / "copy"
    assert _run("backup", "--data", str(data), "--to", str(copy)).returncode == 0
    restored = tmp_path / "restored"
    assert _run("restore", "--from", str(copy), "--data", str(restored)).returncode == 0
    assert "RESTORE_UNFINISHED" not in os.listdir(restored)
    # As a restore killed after its copy, before its audit: a whole-looking data dir.
    (restored / "RESTORE_UNFINISHED").write_text("")
    for words in (["serve", "--data", str(restored), "--listen", "127.0.0.1:0",
                   "--metrics", "off"],
                  ["backup", "--data", str(restored), "--to", str(tmp_path / "copy2")],
                  ["rotate-master-key", "--data", str(restored)]):
        one_line_error(_run(*words), "did not finish", "restore --from BACKUP")
    audited = _run("audit", "--data", str(restored))
    assert audited.returncode == 2 and "did not finish" in audited.stderr + audited.stdout
    assert not (tmp_path / "copy2").exists()
    result = _run("restore", "--from", str(copy), "--data", str(restored))
    assert result.returncode == 0, result.stderr
    assert "event=unfinished_restore_cleared" in result.stderr
    assert sorted(os.listdir(restored)) == ["LOCK", "admin.key", STORE_DIR]
    assert _last_txn(result.stdout) == 3


def test_a_backup_is_never_served_or_changed_in_place_only_restored(tmp_path):
    # Served directly (a failover at 3 a.m.), a backup skipped restore's move of the
    # blacklist past what tills saw: a card lost after it never reached a till that had
    # synced since (helper-68); and the one good copy was written into.
    data = _stopped_data_dir(tmp_path / "data", accounts=3)
    copy = tmp_path / "copy"
    assert _run("backup", "--data", str(data), "--to", str(copy)).returncode == 0
    (tmp_path / "copy.key").write_bytes((tmp_path / "data.key").read_bytes())
    os.chmod(tmp_path / "copy.key", 0o600)
    before = sorted((str(p), p.read_bytes()) for p in copy.rglob("*") if p.is_file())
    for words in (["serve", "--data", str(copy), "--listen", "127.0.0.1:0", "--metrics", "off"],
                  ["rotate-master-key", "--data", str(copy)]):
        one_line_error(_run(*words), "is a backup", f"restore --from {copy}")
    assert sorted((str(p), p.read_bytes()) for p in copy.rglob("*") if p.is_file()) == before
    assert _run("audit", "--data", str(copy)).returncode == 0      # read, as ever
    restored = tmp_path / "restored"
    assert _run("restore", "--from", str(copy), "--data", str(restored)).returncode == 0
    assert "BACKUP" not in os.listdir(restored)
    again = _run("backup", "--data", str(copy), "--to", str(tmp_path / "copy-of-copy"))
    assert again.returncode == 0 and (tmp_path / "copy-of-copy" / "BACKUP").exists()


def test_restore_refuses_a_data_dir_a_switch_serves_as_its_source(serving, tmp_path):
    """A copy of a live data dir, started, would be a second switch taking the same money."""
    data, port_of, stop = serving
    trio.run(port_of)
    one_line_error(_run("restore", "--from", str(data), "--data", str(tmp_path / "clone")),
                   str(data), "serves, not a backup", "switch backup --data")
    assert not (tmp_path / "clone").exists()
    stop()     # a stopped one may be moved to a new machine this way
    result = _run("restore", "--from", str(data), "--data", str(tmp_path / "moved"))
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("inside", ["extra", "lmdb/sub"])
def test_nothing_is_restored_or_served_inside_another_data_dir(tmp_path, inside):
    """A directory inside a data dir is copied into each of its backups (and `lmdb/` is
    LMDB's own)."""
    data = _stopped_data_dir(tmp_path / "data")
    copy = tmp_path / "copy"
    assert _run("backup", "--data", str(data), "--to", str(copy)).returncode == 0
    before = sorted(os.listdir(data))
    one_line_error(_run("restore", "--from", str(copy), "--data", str(data / inside)),
                   "is inside the data dir", str(data))
    one_line_error(_run("serve", "--init", "--data", str(data / inside), "--listen",
                        "127.0.0.1:0", "--metrics", "off"), "is inside the data dir")
    one_line_error(_run("backup", "--data", str(copy), "--to", str(data / inside)),
                   "is inside the data dir")
    assert sorted(os.listdir(data)) == before
    assert sorted(os.listdir(data / STORE_DIR)) == sorted(
        name for name in ["data.mdb", "lock.mdb"] if (data / STORE_DIR / name).exists())


def test_a_backup_past_lmdbs_default_map_restores(tmp_path):
    """The outside test's repro: restoring any backup over 10 MiB failed with MDB_MAP_FULL
    (a traceback, exit 1) as the restore counted itself in the exactly-full copy."""
    from switch.cli import backup as backup_module
    data = _stopped_data_dir(tmp_path / "data", accounts=2)
    store = Store(str(data / STORE_DIR))
    try:
        for n in range(1_300):       # 13 MB the audit reads past (what accounts' details take)
            store.put("account_info", f"WHPAD{n:05d}".encode(), os.urandom(10_000))
        store.commit_now()
    finally:
        store.close()
    summary = backup_module.backup(str(data), str(tmp_path / "copy"))
    assert summary.size_bytes > 12 * 2**20
    restored = backup_module.restore(str(tmp_path / "copy"), str(tmp_path / "restored"))
    assert restored.last_txn == summary.last_txn
    store = Store(str(tmp_path / "restored" / STORE_DIR))
    try:
        assert store.get("meta", BLACKLIST_RESTORES) == b"1"
    finally:
        store.close()


def test_a_directory_that_merely_holds_an_lmdb_folder_is_no_data_dir_around_a_new_one(tmp_path):
    """Only a switch's own files make an enclosing data dir: a home directory with an LMDB
    folder of its own (or a py-lmdb checkout) is none."""
    from switch.cli.datadir import check_data_dir
    (tmp_path / "lmdb").mkdir()
    (tmp_path / "lmdb" / "data.mdb").write_bytes(b"")
    check_data_dir(str(tmp_path / "projects" / "campus-data"), init=True)


@pytest.mark.parametrize("relative", [False, True])
def test_a_backup_that_fails_after_its_rename_leaves_nothing(tmp_path, monkeypatch, relative):
    from switch.cli import backup as backup_module
    data = _stopped_data_dir(tmp_path / "data", accounts=1)
    monkeypatch.chdir(tmp_path)
    to = "b1" if relative else str(tmp_path / "b1")
    real_fsync = backup_module._fsync

    def fsync(path, flags):
        if os.path.abspath(path) == str(tmp_path):     # the parent's, after the rename
            raise OSError(5, "Input/output error")
        real_fsync(path, flags)
    monkeypatch.setattr(backup_module, "_fsync", fsync)
    with pytest.raises(OSError):
        backup_module.backup(str(data), to)
    assert sorted(os.listdir(tmp_path)) == ["data", "data.key"]


def test_a_backup_cut_short_is_said_not_a_bus_error(tmp_path):
    """A partial copy (scp cut off, a disk that filled): audit, closed-taps and restore
    ended in `Bus error`, exit 135, without a word."""
    from switch.cli import backup as backup_module
    data = _stopped_data_dir(tmp_path / "data", accounts=2)
    store = Store(str(data / STORE_DIR))
    try:
        for n in range(200):
            store.put("account_info", f"WHPAD{n:05d}".encode(), os.urandom(10_000))
        store.commit_now()
    finally:
        store.close()
    copy = tmp_path / "copy"
    backup_module.backup(str(data), str(copy))
    data_file = copy / STORE_DIR / "data.mdb"
    os.truncate(data_file, os.path.getsize(data_file) // 2)
    for words, code in ((["audit", "--data", str(copy)], 2),
                        (["closed-taps", "--data", str(copy)], 2),
                        (["restore", "--from", str(copy), "--data", str(tmp_path / "r")], 2)):
        result = _run(*words)
        assert result.returncode == code, (words, result.returncode, result.stderr)
        assert "is cut short" in result.stderr + result.stdout, (words, result.stderr)
    assert not (tmp_path / "r").exists() or "RESTORE_UNFINISHED" not in os.listdir(tmp_path / "r")


def test_a_backup_into_a_closed_pipe_is_done_and_says_only_that(tmp_path):
    # `restore ... | head -c 10` printed "error: : Broken pipe", exit 2, for a restore that
    # had finished (helper-71).
    data = _stopped_data_dir(tmp_path / "data", accounts=1)
    reading, writing = os.pipe()
    os.close(reading)
    try:
        result = subprocess.run([sys.executable, "-m", "switch", "backup", "--data", str(data),
                                 "--to", str(tmp_path / "copy")], stdout=writing,
                                stderr=subprocess.PIPE, text=True, timeout=60)
    finally:
        os.close(writing)
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines()[-1] == ("error: standard output was closed before the "
                                              "report was printed; the backup itself is done")
    assert _run("audit", "--data", str(tmp_path / "copy")).returncode == 0


def test_a_backup_named_like_an_unfinished_one_is_refused(tmp_path):
    # It was made, then `restore` refused it as unfinished (helper-68).
    data = _stopped_data_dir(tmp_path / "data")
    one_line_error(_run("backup", "--data", str(data), "--to", str(tmp_path / "b.incomplete")),
                   "is what a backup that did not finish is called")
    assert not (tmp_path / "b.incomplete").exists()
