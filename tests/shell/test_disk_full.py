"""Disk full, on a real small filesystem: clear refusals, no partial state, nothing acknowledged
lost, and service again once space is freed. Needs root to mount a tmpfs (CI runs as root)."""

import os
import subprocess

import pytest
import trio

from switch.persistence.audit import audit
from tests.shell.harness import Switch

filesystem_size = "3m"


@pytest.fixture
def small_filesystem(tmp_path):
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={filesystem_size}", "tmpfs",
                              str(mount_point)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount tmpfs here: {mounted.stderr.strip()}")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=False)


def _fill(filesystem):
    """Fill the small filesystem to the last byte; returns the filler file."""
    filler = filesystem / "filler"
    with open(filler, "wb", buffering=0) as handle:   # nothing left to flush at close
        try:
            while True:
                handle.write(b"\0" * 65536)
                handle.flush()
        except OSError:
            pass
    return filler


async def test_disk_full_refuses_cleanly_and_recovers(small_filesystem, nursery):
    data = small_filesystem / "data"
    switch = await Switch(data).start(nursery)
    await switch.person("WH1", "AAAA", balance=10_000_000)
    till = await switch.terminal("WH-POS-1")
    # Fill what is left of the disk, leaving a little for the first requests.
    filler = _fill(small_filesystem)
    # Give back a little, so the disk fills in the middle of the load: well before the till's
    # burst of 1,000 requests is spent (remembered ids are logged densely, about 100 B each).
    os.truncate(filler, max(0, os.path.getsize(filler) - 128 * 1024))
    acknowledged, refused = [], []
    for start in range(0, 4000, 100):
        replies = await till.pipeline([{"t": "debit", "card": "AAAA", "amount": 1,
                                        "id": f"{n:050d}"} for n in range(start, start + 100)])
        for reply in replies:
            (acknowledged if reply["code"] == "ok" else refused).append(reply)
        if refused:
            break
    assert acknowledged, "nothing succeeded before the disk filled"
    assert refused, "the disk never filled"
    assert {r["code"] for r in refused} == {"internal"}
    # Nothing half-done: the account shows exactly the acknowledged debits.
    os.unlink(filler)
    with trio.fail_after(10):
        while True:
            again = await till.request({"t": "debit", "card": "AAAA", "amount": 1,
                                        "id": "after-space-freed"})
            if again["code"] == "ok":
                break
            await trio.sleep(0.1)
    account = await switch.admin.request({"t": "account", "account": "WH1"})
    assert account["balance"] == 10_000_000 - len(acknowledged) - 1
    await switch.stop()
    report = audit(str(data))
    assert report.sound, report.problems
    # Every acknowledged txn is on disk after a restart.
    second = await Switch(data).start(nursery)
    history_txns = set()
    before = None
    while True:
        page = await second.admin.request({"t": "history", "account": "WH1", "limit": 200,
                                           **({"before": before} if before else {})})
        history_txns |= {item["txn"] for item in page["items"]}
        before = page["next"]
        if before is None:
            break
    assert {r["txn"] for r in acknowledged} <= history_txns
    await second.stop()


def test_rotate_master_key_on_a_full_disk_says_so_in_one_line_and_finishes_once_freed(
        small_filesystem):
    """The operator's typo-free mistake: rotating with the disk full. One line that names
    the cause and the fix, exit 2, a key file that still opens the books; freeing space and
    running the same command again finishes it."""
    from tests.cli.helpers import one_line_error
    from tests.cli.test_master_key import _serve_once
    from tests.cli.test_serve import _run
    data = small_filesystem / "d"
    _serve_once(data)
    key_path = small_filesystem / "d.key"
    before = key_path.read_text()
    filler = _fill(small_filesystem)
    failed = _run("rotate-master-key", "--data", str(data), timeout=60)
    one_line_error(failed, "rotation did not finish", "No space left on device",
                   "free space there, then run the same command again")
    assert key_path.read_text() == before
    assert sorted(os.listdir(small_filesystem)) == ["d", "d.key", "d.key.owner", "filler"]
    os.unlink(filler)
    _serve_once(data)                          # the key file left behind opens the books
    rotated = _run("rotate-master-key", "--data", str(data), timeout=60)
    assert rotated.returncode == 0 and "1 credentials" in rotated.stdout, rotated.stderr
    assert key_path.read_text() != before
    _serve_once(data)
