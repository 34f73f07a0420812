"""Review: a failed commit answers `internal` with a smaller dict than the one whose
size was reserved, so reply_bytes (server and connection) never return to 0."""
import trio

from tests.shell.harness import Switch


async def test_failed_commit_of_a_history_reply_leaks_reply_bytes(tmp_path, nursery, monkeypatch):
    switch = await Switch(tmp_path / "d").start(nursery)
    await switch.person("WH1", "AAAA")
    await switch.admin.pipeline([{"t": "credit", "account": "WH1", "amount": 1, "source": "s",
                                  "id": f"c{n}"} for n in range(50)])
    real_write = switch.store.write_batch
    calls = []

    def failing_write(batch):
        calls.append(1)
        if len(calls) == 1:
            raise OSError(28, "No space left on device")
        return real_write(batch)

    monkeypatch.setattr(switch.store, "write_batch", failing_write)
    # history writes nothing; a debit in the same batch makes the batch have writes.
    replies = await switch.admin.pipeline([
        {"t": "credit", "account": "WH1", "amount": 1, "source": "s", "id": "x"},
        {"t": "history", "account": "WH1", "limit": 50}])
    assert [r["code"] for r in replies] == ["internal", "internal"]
    assert switch.server.reply_bytes == 0, switch.server.reply_bytes
    await switch.stop()


async def test_after_the_leak_the_connection_hangs_forever(tmp_path, nursery, monkeypatch):
    import trio
    from switch import limits
    monkeypatch.setattr(limits, "connection_reply_bytes_max", 3000)
    switch = await Switch(tmp_path / "d").start(nursery)
    await switch.person("WH1", "AAAA")
    await switch.admin.pipeline([{"t": "credit", "account": "WH1", "amount": 1, "source": "s",
                                  "id": f"c{n}"} for n in range(50)])
    real_write = switch.store.write_batch
    calls = []

    def failing_write(batch):
        calls.append(1)
        if len(calls) == 1:
            raise OSError(28, "No space left on device")
        return real_write(batch)

    monkeypatch.setattr(switch.store, "write_batch", failing_write)
    await switch.admin.pipeline([
        {"t": "credit", "account": "WH1", "amount": 1, "source": "s", "id": "x"},
        {"t": "history", "account": "WH1", "limit": 50}])
    # Disk is fine again; a small request on the same connection:
    with trio.move_on_after(3) as stuck:
        reply = await switch.admin.request({"t": "account", "account": "WH1"})
    conn = next(c for c in switch.server.live if c.credential and c.credential.who == "admin")
    signed_on = switch.server.signed_on
    await switch.admin.stream.aclose()          # the peer gives up and goes away
    await trio.sleep(2)
    still = conn in switch.server.live
    print("stuck", stuck.cancelled_caught, "conn.reply_bytes", conn.reply_bytes,
          "server.reply_bytes", switch.server.reply_bytes, "live after peer closed", still,
          "signed_on", signed_on, "->", switch.server.signed_on)
    assert not stuck.cancelled_caught and not still
    await switch.stop()


async def test_a_fault_after_the_write_still_answers_the_batch_truthfully(
        tmp_path, nursery, monkeypatch):
    """The batch reached the disk, then the committer's own bookkeeping raised: its
    replies still go out as they are (the money moved), and commits go on."""
    switch = await Switch(tmp_path / "d").start(nursery)
    await switch.person("WH1", "AAAA", balance=1000)
    till = await switch.terminal("WH-POS-1")
    real_committed = switch.store.committed
    calls = []

    def committed_once_broken(batch):
        calls.append(batch)
        if len(calls) == 1:
            raise RuntimeError("bookkeeping fault")
        real_committed(batch)

    monkeypatch.setattr(switch.store, "committed", committed_once_broken)
    with trio.fail_after(10):  # before the fix: never answered
        reply = await till.request({"t": "debit", "card": "AAAA", "amount": 100, "id": "d1"})
    assert reply["code"] == "ok" and reply["balance"] == 900
    again = await till.request({"t": "debit", "card": "AAAA", "amount": 100, "id": "d2"})
    assert again["code"] == "ok" and again["balance"] == 800
    assert switch.server.metrics.failures.labels("commit")._value.get() == 1
    assert switch.server.reply_bytes == 0
    await switch.stop()
    from switch.persistence.audit import audit
    assert audit(switch.path).sound
