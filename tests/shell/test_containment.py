"""A fault while serving one request or one connection stays there (issue 12, containment).

Every request handler, and the hello path, is made to raise after it has written to the
open batch. The request is answered `internal`, its writes are undone, the fault is
counted, and the switch keeps serving every other request with its books sound.
"""

import pytest
import trio

from switch.ledger import dispatch, roles, schema
from switch.persistence.audit import audit
from switch.codec import ServerSession
from switch.core import layout
from switch.ledger.effects import Revocation
from tests.shell.harness import Switch

# A credential of each role and kind, to find one permitted to send each request type.
SENDERS = [("terminal", "pos"), ("terminal", "water"), ("terminal", "meter"),
           ("service", None), ("admin", None)]


class InjectedFault(Exception):
    pass


def _faulty_handler(ledger, credential, values):
    """Writes like a real handler would (money, journal, a hold, an effect), then raises."""
    record = ledger.account("WH1")
    layout.put(record, layout.BALANCE, layout.get(record, layout.BALANCE) + 1_000_000)
    ledger.save_account("WH1", record)
    ledger.append_journal("credit", "WH1", "WH", 1_000_000, 0, credential, "injected")
    ledger.holds.open("HX", {"account": "WH1", "amount": 1, "state": "open", "expires": 1,
                             "who": credential.who, "txn": 0})
    # Kept, this would close the admin's session once the batch commits.
    ledger.emit(Revocation("admin"))
    _faulty_handler.reached += 1
    raise InjectedFault("injected")


_faulty_handler.reached = 0


async def _sender(switch, role, kind, n):
    if role == "terminal":
        return await switch.terminal(f"WH-{kind.upper()}-{n}", kind=kind)
    if role == "service":
        return await switch.service(f"svc-{n}", school="WH")
    return switch.admin


async def test_every_handler_that_raises_is_undone_and_answered_internal(
        tmp_path, nursery, monkeypatch):
    switch = await Switch(tmp_path / "data").start(nursery)
    await switch.person("WH1", "AAAA", balance=5000)
    clients = {}
    for n, (role, kind) in enumerate(SENDERS):
        clients[(role, kind)] = await _sender(switch, role, kind, n)
    pos = clients[("terminal", "pos")]
    last_txn_before = switch.store.last_txn
    holds_before = switch.ledger.holds.open_count
    failures_before = switch.ledger.failures

    real_validate = schema.validate
    checked = []
    for request_type in sorted(dispatch.HANDLERS):
        sender = next(clients[s] for s in SENDERS if roles.permitted(s[0], s[1], request_type))
        monkeypatch.setitem(dispatch.HANDLERS, request_type, _faulty_handler)
        # Past the schema whatever the fields: the fault is the handler's, not the input's.
        monkeypatch.setattr(schema, "validate", lambda t, m: (None, {"id": m.get("id")}))
        reply = await sender.request({"t": request_type, "id": f"fault-{request_type}"})
        monkeypatch.undo()
        assert reply["code"] == "internal", (request_type, reply)
        assert reply["t"] == request_type
        checked.append(request_type)
        # The rest goes on: a real debit on another connection, right after.
        debit = await pos.request({"t": "debit", "card": "AAAA", "amount": 1,
                                   "id": f"after-{request_type}"})
        assert debit["code"] == "ok", (request_type, debit)
    assert schema.validate is real_validate
    assert len(checked) == len(dispatch.HANDLERS) > 20
    assert _faulty_handler.reached == len(checked)  # every fault came after its writes

    # Nothing of the faulty requests stayed: only the real debits moved money.
    balance = await pos.request({"t": "balance", "card": "AAAA"})
    assert balance["balance"] == 5000 - len(checked)
    assert switch.store.last_txn == last_txn_before + len(checked)
    assert switch.ledger.holds.get("HX") is None
    assert switch.ledger.holds.open_count == holds_before
    assert switch.ledger.failures == failures_before + len(checked)
    # Not remembered: a retry under the same id runs again (and, unpatched, succeeds).
    again = await switch.admin.request({"t": "credit", "account": "WH1", "amount": 5,
                                        "source": "t", "id": "fault-credit"})
    assert again["code"] == "ok" and "replay" not in again
    switch.server.housekeep()
    assert switch.server.metrics.failures.labels("request")._value.get() == len(checked)
    assert switch.server.metrics.failures.labels("effect")._value.get() == 0
    await switch.stop()
    report = audit(switch.path)
    assert report.sound, report.summary()


async def test_a_fault_in_the_hello_path_closes_that_connection_alone(
        tmp_path, nursery, monkeypatch):
    switch = await Switch(tmp_path / "data").start(nursery)
    await switch.person("WH1", "AAAA", balance=5000)
    pos = await switch.terminal("WH-POS-1")
    real_receive_hello = ServerSession.receive_hello

    def faulty(self, payload, key_of):
        raise InjectedFault("hello")

    monkeypatch.setattr(ServerSession, "receive_hello", faulty)
    with pytest.raises(Exception):
        await switch.connect("WH-POS-1", switch.ledger.credential("WH-POS-1").key)
    monkeypatch.setattr(ServerSession, "receive_hello", real_receive_hello)
    # The signed-on till never noticed, and new sign-ons work again.
    reply = await pos.request({"t": "debit", "card": "AAAA", "amount": 100, "id": "d1"})
    assert reply["code"] == "ok"
    again = await switch.connect("WH-POS-1", switch.ledger.credential("WH-POS-1").key)
    assert (await again.request({"t": "balance", "card": "AAAA"}))["balance"] == 4900
    assert switch.server.metrics.failures.labels("connection")._value.get() == 1
    await switch.stop()
    assert audit(switch.path).sound


async def test_a_failing_housekeeping_pass_is_undone_counted_and_retried(
        tmp_path, nursery, monkeypatch):
    switch = await Switch(tmp_path / "data").start(nursery)
    await switch.person("WH1", "AAAA", balance=5000)
    from switch.ledger import dorm

    def faulty(ledger):
        ledger.store.put("meta", b"half-done", b"x")
        raise InjectedFault("housekeeping")

    monkeypatch.setattr(dorm, "expire_due_holds", faulty)
    switch.server.housekeep()
    assert switch.store.get("meta", b"half-done") is None
    assert switch.server.metrics.failures.labels("task")._value.get() == 1
    monkeypatch.undo()
    switch.server.housekeep()  # the next pass runs as usual
    assert switch.server.metrics.failures.labels("task")._value.get() == 1
    await switch.stop()


async def test_a_failing_effect_after_commit_does_not_stop_the_committer(
        tmp_path, nursery):
    switch = await Switch(tmp_path / "data").start(nursery)
    await switch.person("WH1", "AAAA", balance=5000)
    pos = await switch.terminal("WH-POS-1")

    def broken_effect():
        raise InjectedFault("push")

    switch.ledger.emit(broken_effect)
    reply = await pos.request({"t": "debit", "card": "AAAA", "amount": 100, "id": "d1"})
    assert reply["code"] == "ok"
    reply = await pos.request({"t": "debit", "card": "AAAA", "amount": 100, "id": "d2"})
    assert reply["code"] == "ok" and reply["balance"] == 4800
    assert switch.server.metrics.failures.labels("effect")._value.get() == 1
    await switch.stop()


async def test_a_supervised_task_that_raises_is_started_again(tmp_path, nursery):
    switch = await Switch(tmp_path / "data").start(nursery)
    runs = []

    async def flaky():
        runs.append(1)
        if len(runs) < 3:
            raise InjectedFault("task")

    with trio.fail_after(10):
        await switch.server._supervised("flaky", flaky)
    assert len(runs) == 3
    assert switch.server.metrics.failures.labels("task")._value.get() == 2
    await switch.stop()


async def test_commits_failing_one_after_another_are_logged_on_a_budget_with_their_cause(
        tmp_path, nursery, caplog, monkeypatch):
    # A full disk fails every commit, one a few ms: a line with a traceback each flooded the
    # log (the outside test's operator pass: 714 lines in 5 s, 1.1 MB, the cause only at
    # each traceback's tail), and journald's rate limit then drops the other events.
    from switch import limits
    from switch.logline import FailureLog
    from switch.shell import committer
    # A window of its own: the log is the process's, and earlier tests' failures count in it.
    monkeypatch.setattr(committer, "commit_failures",
                        FailureLog(committer.log, limits.failure_tracebacks_per_minute_max))
    switch = await Switch(tmp_path / "data").start(nursery)
    await switch.person("WH1", "AAAA", balance=5000)
    pos = await switch.terminal("WH-POS-1")
    caplog.set_level("ERROR")

    def full_disk(batch):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(switch.store, "write_batch", full_disk)
    failing = limits.failure_tracebacks_per_minute_max + 10
    for n in range(failing):
        reply = await pos.request({"t": "debit", "card": "AAAA", "amount": 1, "id": f"d{n}"})
        assert reply["code"] == "internal"
    lines = [r.getMessage() for r in caplog.records if "event=commit_failed" in r.getMessage()]
    assert len(lines) == limits.failure_tracebacks_per_minute_max
    assert "error=OSError: [Errno 28] No space left on device" in lines[0]
    assert switch.server.metrics.commit_failures._value.get() == failing
    monkeypatch.undo()
    await switch.stop()
