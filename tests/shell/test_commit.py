"""Group commit: one fsync for many requests, map growth under load, failed commits."""

import time

import trio

from switch import limits
from switch.persistence.audit import audit
from switch.config import default_config
from tests.shell.harness import Switch


async def test_many_connections_share_commits(switch):
    await switch.person("WH1", "AAAA", balance=1_000_000)
    tills = [await switch.terminal(f"WH-POS-{n}") for n in range(8)]
    commits_before = switch.server.committer.commits

    async def burst(till):
        replies = await till.pipeline([{"t": "debit", "card": "AAAA", "amount": 1, "id": n}
                                       for n in range(32)])
        assert all(r["code"] == "ok" for r in replies)

    async with trio.open_nursery() as nursery:
        for till in tills:
            nursery.start_soon(burst, till)
    commits = switch.server.committer.commits - commits_before
    assert commits < 8 * 32  # batched: far fewer fsyncs than requests
    account = await switch.admin.request({"t": "account", "account": "WH1"})
    assert account["balance"] == 1_000_000 - 256


async def test_map_full_grows_under_load(tmp_path, nursery, monkeypatch):
    monkeypatch.setattr(limits, "lmdb_map_initial_size_bytes", 256 * 1024)
    config = default_config()
    config.terminal_requests_burst = 2000  # 1,200 debits at once: a load, not a real till
    switch = await Switch(tmp_path / "d", config=config).start(nursery)
    await switch.person("WH1", "AAAA", balance=10_000_000)
    till = await switch.terminal("WH-POS-1")
    for start in range(0, 1200, 200):
        replies = await till.pipeline([{"t": "debit", "card": "AAAA", "amount": 1,
                                        "id": f"{n:060d}"} for n in range(start, start + 200)])
        assert all(r["code"] == "ok" for r in replies), {r["code"] for r in replies}
    assert switch.store.map_usage()[1] > 256 * 1024
    await switch.stop()
    assert audit(str(tmp_path / "d")).sound


async def test_failed_commit_answers_internal_and_changes_nothing(switch, monkeypatch):
    await switch.person("WH1", "AAAA", balance=1000)
    till = await switch.terminal("WH-POS-1")
    real_write = switch.store.write_batch
    calls = []

    def failing_write(batch):
        calls.append(batch)
        if len(calls) == 1:
            raise OSError(28, "No space left on device")
        return real_write(batch)

    monkeypatch.setattr(switch.store, "write_batch", failing_write)
    reply = await till.request({"t": "debit", "card": "AAAA", "amount": 100, "id": "a"})
    assert reply["code"] == "internal"
    monkeypatch.setattr(switch.store, "write_batch", real_write)
    # Nothing of the failed batch remains: same id is processed afresh, balance intact.
    again = await till.request({"t": "debit", "card": "AAAA", "amount": 100, "id": "a"})
    assert again["code"] == "ok" and "replay" not in again and again["balance"] == 900
    history = await switch.admin.request({"t": "history", "account": "WH1"})
    txns = [item["txn"] for item in history["items"]]
    assert txns == sorted(txns, reverse=True) and len(set(txns)) == len(txns)
    assert max(txns) == switch.store.last_txn  # no gap left by the failed batch


async def test_commit_time_is_split_by_phase(switch, monkeypatch):
    """An operator tells a slow disk (the `write` phase) from a busy event loop (waiting
    for the worker thread, or for the loop to take the result back)."""
    await switch.person("WH1", "AAAA", balance=1000)
    till = await switch.terminal("WH-POS-1")
    registry = switch.server.metrics.registry

    def phase(name, part):
        return registry.get_sample_value(f"switch_commit_phase_seconds_{part}", {"phase": name})

    real_write = switch.store.write_batch
    write_s = 0.05

    def slow_write(batch):   # on the worker thread: a disk taking its time
        time.sleep(write_s)
        return real_write(batch)

    monkeypatch.setattr(switch.store, "write_batch", slow_write)
    before = {name: (phase(name, "count"), phase(name, "sum"))
              for name in ("to_worker", "write", "to_loop")}
    commits_before = switch.server.committer.commits
    reply = await till.request({"t": "debit", "card": "AAAA", "amount": 100, "id": "a"})
    assert reply["code"] == "ok"
    commits = switch.server.committer.commits - commits_before
    assert commits >= 1
    for name, (count, _) in before.items():
        assert phase(name, "count") - count == commits
    assert phase("write", "sum") - before["write"][1] >= write_s * commits


async def test_a_fault_counting_a_commits_phases_still_answers_what_is_on_disk(switch,
                                                                             monkeypatch):
    """The phases are counted once the batch is known durable: a fault there is the
    committer's, and the debit it wrote is answered `ok`, not `internal`."""
    await switch.person("WH1", "AAAA", balance=1000)
    till = await switch.terminal("WH-POS-1")
    faults = []

    def faulty_observe(value):
        faults.append(value)
        raise ValueError("a fault in the metric")

    monkeypatch.setattr(switch.server.metrics.commit_phase["to_loop"], "observe",
                        faulty_observe)
    reply = await till.request({"t": "debit", "card": "AAAA", "amount": 100, "id": "a"})
    assert faults and reply["code"] == "ok" and reply["balance"] == 900
    monkeypatch.undo()
    retry = await till.request({"t": "debit", "card": "AAAA", "amount": 100, "id": "a"})
    assert retry["code"] == "ok" and retry.get("replay") is True and retry["balance"] == 900
