"""Review: `_batch_done` acts on a Revocation before it answers the batch's replies, so a
debit of the revoked terminal that executed *before* the revoke and committed in the same
batch moves money and is never answered (the error frame is queued first)."""
import time

import trio

from tests.shell.harness import Switch


async def test_debit_committed_with_its_revocation_is_answered(tmp_path, nursery, monkeypatch):
    switch = await Switch(tmp_path / "d").start(nursery)
    await switch.person("WH1", "AAAA", balance=1000)
    till = await switch.terminal("WH-POS-1")
    real_write = switch.store.write_batch

    def slow_write(batch):
        time.sleep(0.3)
        real_write(batch)

    monkeypatch.setattr(switch.store, "write_batch", slow_write)
    await switch.admin.send({"t": "credit", "account": "WH1", "amount": 1, "source": "s",
                             "id": "occupy"})          # batch 1, slow: the next two share batch 2
    await trio.sleep(0.05)
    debit_seq = await till.send({"t": "debit", "card": "AAAA", "amount": 100, "id": "d1"})
    await trio.sleep(0.05)
    await switch.admin.send({"t": "revoke_credential", "who": "WH-POS-1", "id": "rv"})
    outcome = None
    with trio.fail_after(5):
        try:
            outcome = await till.reply_to(debit_seq)
        except Exception as error:
            outcome = repr(error)
    await trio.sleep(1)
    balance = (await switch.admin.request({"t": "account", "account": "WH1"}))["balance"]
    assert balance == 1001 or (type(outcome) is dict and outcome["code"] == "ok"), (outcome, balance)
    await switch.stop()
