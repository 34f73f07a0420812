"""A drain finishes the round being written back in one commit and leaves the last round's
log to the store's close (one transaction), rather than committing the write-back a slice at
a time until the drain's bound: at a million accounts that was the whole 10 s of
`drain_timeout_s`."""

import lmdb

from switch import limits
from switch.cli.datadir import open_data_dir
from switch.config import default_config
from switch.core import layout
from switch.persistence import writeback
from switch.persistence.audit import audit
from tests.shell.harness import Switch

DEBITS = 12


async def test_a_drain_leaves_the_write_back_to_the_close(tmp_path, nursery, monkeypatch):
    # Short rounds, written back a write a commit, a commit every 0.2 s at most when idle:
    # the round pending at the drain would take seconds of commits to write back.
    monkeypatch.setattr(limits, "logged_writes_max", 8)
    monkeypatch.setattr(limits, "written_back_per_commit_min", 1)
    monkeypatch.setattr(limits, "logged_writes_per_account_ratio", 0)
    config = default_config()
    config.batch_wait_s = 0.2
    switch = await Switch(tmp_path / "d", config=config).start(nursery)
    await switch.person("WH1", "AAAA", balance=100_000)
    till = await switch.terminal("WH-POS-1")
    store, committer = switch.store, switch.server.committer
    debits = 0
    ids = store._rounds["idempotency"]
    while ids.order is None:                  # until a round of ids is being written back
        await switch.ok(till, {"t": "debit", "card": "AAAA", "amount": 100, "id": debits})
        debits += 1
        assert debits <= DEBITS
    pending = len(ids.previous)
    assert pending >= 4, pending
    commits = committer.commits
    for client in switch.clients:
        await client.aclose()
    switch.server.drain()
    await switch._finished.wait()
    # The commit running when the drain began, then one that finishes the round; not one a
    # slice. The round's log is dropped; the close writes back the last round's.
    assert committer.commits - commits <= 2, committer.commits - commits
    assert store.round_written_back and store.uncommitted_writes == 0
    previous_log = [writeback.LOGS[db][1 - round_.current_log]
                    for db, round_ in store._rounds.items()]
    assert all(store._read.stat(store.dbs[log])["entries"] == 0 for log in previous_log)
    store.close()
    # The close wrote every logged write back: its logs are empty, its books sound.
    env = lmdb.open(str(tmp_path / "d" / "lmdb"), max_dbs=64, readonly=True, lock=False)
    with env.begin() as txn:
        for log in writeback.LOG_NAMES:
            assert txn.stat(env.open_db(log.encode(), txn=txn))["entries"] == 0, log
    env.close()
    assert audit(str(tmp_path / "d")).sound
    reopened = open_data_dir(str(tmp_path / "d"))
    try:
        assert layout.get(reopened.get("accounts", b"WH1"), layout.BALANCE) == \
            100_000 - 100 * debits
    finally:
        reopened.close()
