"""Downstream forwarding (docs/PROTOCOL.md §6.3) over real sockets: filters and contiguous
ranges, a receiver that was down catching up, receivers killed mid-stream, duplicates
dropped, a receiver written only from docs/PROTOCOL.md §6.3 across restarts of both sides,
and a switch process killed with SIGKILL mid-stream whose receivers still end with exactly
the journal's totals.
"""

import logging
import os
import pathlib
import shutil
import signal
import subprocess
import sys

import msgpack
import pytest
import trio

from switch import limits
from switch.codec import FrameDecoder, ServerSession
from switch.cli.datadir import read_admin_key
from switch.shell.forwarder import Forwarder, encode_position, position_key
from switch.receivers.billing import BillingReceiver
from switch.clock import FakeClock
from switch.persistence.store import STORE_DIR, Store
from tests.forwarding.helpers import (
    BILLING_KINDS, REPO, UTILITY_KINDS, ReceiverProcess, destination, expected_rooms,
    expected_settlement, free_port, journal_of_data_dir, journal_of_store, read_rooms,
    read_settlement, wait_until)
from tests.forwarding.spec_receiver import SpecReceiver
from tests.forwarding.workload import CONNECTION_ERRORS, Workload
from tests.shell.harness import Switch
from tests.key_files import write_private

FAST_BACKOFF_MAX_S = 0.3


class Forwarders:
    """Forwarders started by a test (the server starts them itself once configured)."""

    def __init__(self, nursery):
        self.nursery = nursery
        self.running: list = []   # (forwarder, cancel scope, finished event)

    def start(self, switch, dest) -> Forwarder:
        forwarder = Forwarder(dest, switch.store, switch.server.committer, switch.server.metrics)
        forwarder.backoff_max_s = FAST_BACKOFF_MAX_S
        scope = trio.CancelScope()
        finished = trio.Event()

        async def run():
            try:
                with scope:
                    await forwarder.run()
            finally:
                finished.set()

        self.nursery.start_soon(run)
        self.running.append((forwarder, scope, finished))
        return forwarder

    async def stop_all(self) -> None:
        for _, scope, _ in self.running:
            scope.cancel()
        for _, _, finished in self.running:
            await finished.wait()
        self.running = []


async def stop_switch(switch) -> None:
    """Harness `stop()` closes the store at once, even under a commit still running on its
    thread; forwarders' position writes make that likely, so let the committer finish first."""
    switch.server.committer.kick()
    with trio.fail_after(10):
        await switch.server.committer.wait_idle()
    await switch.stop()


@pytest.fixture
async def switch(tmp_path, nursery):
    instance = await Switch(tmp_path / "data").start(nursery)
    yield instance
    await stop_switch(instance)


@pytest.fixture
async def forwarders(switch, nursery):
    running = Forwarders(nursery)
    yield running
    await running.stop_all()


@pytest.fixture
def receiver_processes(request):
    started = []

    def make(*args):
        process = ReceiverProcess(*args)
        started.append(process)
        return process

    request.addfinalizer(lambda: [process.kill_all() for process in started])
    return make


def lag(switch, name):
    return switch.server.metrics.registry.get_sample_value(
        "switch_forward_lag_records", {"destination": name})


def errors(switch, name, reason):
    return switch.server.metrics.registry.get_sample_value(
        "switch_forward_errors_total", {"destination": name, "reason": reason}) or 0


async def workload_on(switch) -> Workload:
    workload = Workload("127.0.0.1", switch.port, read_admin_key(switch.path))
    await workload.setup()
    return workload


# ------------------------------------------------------------------ 1. filters
async def test_filters_deliver_only_the_kinds_asked_for_in_contiguous_ranges(
        switch, forwarders, nursery, tmp_path):
    filters = {"billing": BILLING_KINDS, "utility": UTILITY_KINDS, "everything": None}
    receivers = {}
    for name, kinds in filters.items():
        key = os.urandom(32)
        receiver = receivers[name] = SpecReceiver(str(tmp_path / f"{name}.json"), f"sw-{name}", key)
        await nursery.start(receiver.run)
        forwarders.start(switch, destination(name, receiver.port, f"sw-{name}", key, kinds))
    workload = await workload_on(switch)
    for _ in range(3):
        await workload.burst()
    last_txn = switch.store.last_txn
    await wait_until(lambda: all(r.position == last_txn for r in receivers.values()))

    journal = journal_of_store(switch.store)
    assert [record["txn"] for record in journal] == list(range(1, last_txn + 1))
    for name, kinds in filters.items():
        receiver = receivers[name]
        wanted = [r["txn"] for r in journal if kinds is None or r["kind"] in kinds]
        assert receiver.txns == wanted, name
        # Ranges are contiguous from txn 1 to the end, skipped kinds included.
        expected_from = 1
        for frame in receiver.frames:
            assert frame["from"] == expected_from, (name, frame)
            assert frame["to"] >= frame["from"]
            assert frame["upto"] == frame["to"]
            assert kinds is None or set(frame["kinds"]) <= kinds, (name, frame)
            assert len(frame["txns"]) <= limits.forward_records_per_frame_max
            expected_from = frame["to"] + 1
        assert expected_from == last_txn + 1
        assert receiver.gaps == 0 and receiver.duplicates == 0
        # The receiver moves before its reply reaches the forwarder.
        await wait_until(lambda: lag(switch, name) == 0, 5)
    # The filters really skipped something: lost/found and the rest went to "everything" only.
    kinds_seen = {kind for frame in receivers["everything"].frames for kind in frame["kinds"]}
    assert {"lost", "found", "open_account", "hold", "debit", "cutoff", "restore"} <= kinds_seen
    assert any(not frame["kinds"] for frame in receivers["utility"].frames) or \
        len(receivers["utility"].txns) < last_txn


# ------------------------------------------------------------------ 2. receiver down
async def test_receiver_down_catches_up_with_nothing_missing(
        switch, forwarders, tmp_path, receiver_processes):
    billing_key, utility_key = os.urandom(32), os.urandom(32)
    billing = receiver_processes("billing", tmp_path, "sw-billing", billing_key)
    utility = receiver_processes("utility", tmp_path, "sw-utility", utility_key)
    billing_port, utility_port = free_port(), free_port()
    forwarders.start(switch, destination("billing", billing_port, "sw-billing", billing_key,
                                         BILLING_KINDS))
    forwarders.start(switch, destination("utility", utility_port, "sw-utility", utility_key,
                                         UTILITY_KINDS))
    workload = await workload_on(switch)
    for _ in range(4):
        await workload.burst()
    await wait_until(lambda: errors(switch, "billing", "connect") >= 2, 10)
    last_txn = switch.store.last_txn
    # Nothing is acknowledged while it is down, and the lag says so.
    await wait_until(lambda: lag(switch, "billing") == last_txn, 5)

    await billing.start(billing_port)
    await utility.start(utility_port)
    await wait_until(lambda: billing.position() == last_txn and utility.position() == last_txn)
    journal = journal_of_store(switch.store)
    assert read_settlement(billing.state_dir) == expected_settlement(journal)
    assert read_rooms(utility.state_dir) == expected_rooms(journal)
    await wait_until(lambda: lag(switch, "billing") == 0 and lag(switch, "utility") == 0, 5)
    assert await billing.terminate() == 0
    assert await utility.terminate() == 0
    assert billing.key_path.read_text().strip() not in billing.stderr()


# ------------------------------------------------------------------ 3. receiver SIGKILL
async def test_receiver_killed_mid_stream_and_restarted_has_no_gap_and_no_duplicate(
        switch, forwarders, nursery, tmp_path, receiver_processes):
    key = os.urandom(32)
    billing = receiver_processes("billing", tmp_path, "sw-billing", key)
    utility = receiver_processes("utility", tmp_path, "sw-utility", key)
    await billing.start()
    await utility.start()
    forwarders.start(switch, destination("billing", billing.port, "sw-billing", key, BILLING_KINDS))
    forwarders.start(switch, destination("utility", utility.port, "sw-utility", key, UTILITY_KINDS))
    workload = await workload_on(switch)
    done = trio.Event()

    async def load():
        for _ in range(30):
            await workload.burst(debits=80)
        done.set()

    nursery.start_soon(load)
    await wait_until(lambda: billing.position() > 0 and utility.position() > 0, 10)
    billing.kill()
    await trio.sleep(0.2)
    utility.kill()   # a moment apart, so the two streams break at different places
    assert not done.is_set(), "the load ended before the kill: not mid-stream"
    await trio.sleep(0.3)
    await billing.start(billing.port)
    await utility.start(utility.port)
    with trio.fail_after(30):
        await done.wait()
    last_txn = switch.store.last_txn
    await wait_until(lambda: billing.position() == last_txn and utility.position() == last_txn)
    journal = journal_of_store(switch.store)
    assert read_settlement(billing.state_dir) == expected_settlement(journal)
    assert read_rooms(utility.state_dir) == expected_rooms(journal)


async def test_resent_records_are_dropped_as_duplicates(switch, forwarders, tmp_path,
                                                       receiver_processes):
    """The switch's position is older than the receiver's (a crash before the position was
    committed): everything is sent again, and the totals do not move."""
    key = os.urandom(32)
    billing = receiver_processes("billing", tmp_path, "sw-billing", key)
    await billing.start()
    dest = destination("billing", billing.port, "sw-billing", key, BILLING_KINDS)
    forwarders.start(switch, dest)
    workload = await workload_on(switch)
    for _ in range(3):
        await workload.burst()
    last_txn = switch.store.last_txn
    await wait_until(lambda: billing.position() == last_txn)
    before = read_settlement(billing.state_dir)
    await forwarders.stop_all()
    switch.store.put("meta", position_key("billing"), encode_position(0))
    forwarder = forwarders.start(switch, dest)
    assert forwarder.acked == 0
    await wait_until(lambda: forwarder.acked == last_txn)
    assert read_settlement(billing.state_dir) == before == \
        expected_settlement(journal_of_store(switch.store))


# ----------------------------------------------- 5. written from docs/PROTOCOL.md §6.3
async def test_receiver_written_from_the_contract_gets_every_record_across_restarts(
        tmp_path, nursery):
    """Both sides restart mid-stream, the switch more than once; the receiver ends with
    every txn exactly once, in order."""
    key = os.urandom(32)
    state = str(tmp_path / "spec.json")
    receiver = SpecReceiver(state, "sw-spec", key)
    await nursery.start(receiver.run)
    port = receiver.port
    dest = destination("spec", port, "sw-spec", key, None)
    data = tmp_path / "data"
    switch = await Switch(data).start(nursery)
    forwarders = Forwarders(nursery)
    forwarder = forwarders.start(switch, dest)
    workload = await workload_on(switch)
    try:
        for round_number in range(3):
            for burst in range(4):
                await workload.burst()
                if burst == 1:
                    # The receiver restarts from its state file.
                    receiver.stop()
                    await trio.sleep(0.1)
                    receiver = SpecReceiver(state, "sw-spec", key)
                    await nursery.start(receiver.run, port)
            # The switch restarts on its data dir; the position written last may be lost.
            await workload.aclose()
            await forwarders.stop_all()
            await stop_switch(switch)
            switch = await Switch(data).start(nursery)
            forwarder = forwarders.start(switch, dest)
            await workload.connect(switch.port)
        last_txn = switch.store.last_txn
        await wait_until(lambda: receiver.position == last_txn)
        assert receiver.txns == list(range(1, last_txn + 1))
        assert forwarder.acked == last_txn
    finally:
        await workload.aclose()
        await forwarders.stop_all()
        await stop_switch(switch)
        receiver.stop()


async def test_receiver_that_lost_its_state_gets_everything_again(switch, forwarders,
                                                                  nursery, tmp_path):
    """`from` > its last txn + 1 is a gap: it answers `upto` = what it has, and the switch
    resends from there (docs/PROTOCOL.md §6.3)."""
    key = os.urandom(32)
    state = str(tmp_path / "spec.json")
    receiver = SpecReceiver(state, "sw-spec", key)
    await nursery.start(receiver.run)
    port = receiver.port
    forwarder = forwarders.start(switch, destination("spec", port, "sw-spec", key, None))
    workload = await workload_on(switch)
    await workload.burst()
    await wait_until(lambda: receiver.position == switch.store.last_txn)
    receiver.stop()
    os.unlink(state)
    receiver = SpecReceiver(state, "sw-spec", key)
    await nursery.start(receiver.run, port)
    await workload.burst()
    last_txn = switch.store.last_txn
    await wait_until(lambda: receiver.position == last_txn)
    assert receiver.gaps >= 1
    assert receiver.txns == list(range(1, last_txn + 1))
    assert errors(switch, "spec", "rewind") >= 1
    # The receiver holds its position before its reply reaches the forwarder.
    await wait_until(lambda: forwarder.acked == last_txn)
    receiver.stop()


# ------------------------------------------------------------------ misbehaving receivers
class OddReceiver:
    """Signs on properly, then answers `records` the way `answer(message)` says."""

    def __init__(self, key, answer, role="downstream", pushes=0):
        self.key = key
        self.answer = answer
        self.role = role
        self.pushes = pushes      # sent before each reply
        self.frames = []

    async def run(self, port=0, task_status=trio.TASK_STATUS_IGNORED):
        listeners = await trio.open_tcp_listeners(port, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        await trio.serve_listeners(self.connection, listeners, task_status=task_status)

    async def connection(self, stream):
        session, decoder = ServerSession(), FrameDecoder()
        payloads = []
        try:
            while not payloads:
                payloads = decoder.feed(await stream.receive_some(70000))
            hello = session.receive_hello(payloads.pop(0), lambda who: self.key)
            await stream.send_all(session.accept_hello(hello, {"role": self.role, "time": 0}))
            while True:
                while payloads:
                    request = session.receive_request(payloads.pop(0))
                    if request.message.get("t") == "ping":     # the forwarder's after hello
                        await stream.send_all(session.encode_reply(
                            {"t": "ping", "code": "ok", "re": request.seq}))
                        continue
                    self.frames.append(request.message)
                    reply = self.answer(request.message)
                    pushes = b"".join(session.encode_push({"t": "news"})
                                      for _ in range(self.pushes))
                    if reply is not None:
                        await stream.send_all(
                            pushes + session.encode_reply({**reply, "re": request.seq}))
                data = await stream.receive_some(70000)
                if not data:
                    return
                payloads.extend(decoder.feed(data))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass


@pytest.mark.parametrize("case, answer, role, reason", [
    ("wrong role", lambda m: {"t": "records", "code": "ok", "upto": m["to"]}, "terminal", "hello"),
    ("upto past to", lambda m: {"t": "records", "code": "ok", "upto": m["to"] + 1},
     "downstream", "protocol"),
    ("upto not an int", lambda m: {"t": "records", "code": "ok", "upto": str(m["to"])},
     "downstream", "protocol"),
    ("declined", lambda m: {"t": "records", "code": "bad_request"}, "downstream", "declined"),
    ("silent", lambda m: None, "downstream", "timeout"),
])
async def test_misbehaving_receiver_is_an_error_not_an_acknowledgement(
        switch, forwarders, nursery, monkeypatch, case, answer, role, reason):
    monkeypatch.setattr(limits, "forward_reply_timeout_s", 0.3)
    await switch.person("WH20230001")   # a record to forward
    key = os.urandom(32)
    odd = OddReceiver(key, answer, role)
    await nursery.start(odd.run)
    forwarder = forwarders.start(switch, destination("odd", odd.port, "sw-odd", key, None))
    await wait_until(lambda: errors(switch, "odd", reason) >= 2, 10)
    assert forwarder.acked == 0
    assert lag(switch, "odd") == switch.store.last_txn
    # A till is not slowed: the admin's requests are answered at once meanwhile.
    with trio.fail_after(1):
        reply = await switch.admin.request({"t": "ping"})
    assert reply["code"] == "ok"


async def test_a_receiver_that_signs_on_and_refuses_logs_a_sign_on_ever_more_rarely(
        switch, forwarders, nursery, monkeypatch, caplog):
    """The engineer on call reads one sign-on and one failure for a run of them, then one at
    each doubling, not a line a retry."""
    monkeypatch.setattr(limits, "forward_reply_timeout_s", 0.3)
    await switch.person("WH20230001")   # a record to forward
    key = os.urandom(32)
    odd = OddReceiver(key, lambda m: {"t": "records", "code": "bad_request"})
    await nursery.start(odd.run)
    caplog.set_level(logging.INFO, logger="switch")
    forwarder = forwarders.start(switch, destination("odd", odd.port, "sw-odd", key, None))
    forwarder.backoff_initial_s = forwarder.backoff_max_s = 0.001
    await wait_until(lambda: forwarder.sessions >= 9, 10)
    sessions = forwarder.sessions
    signed_on = [record for record in caplog.records if "forward_signed_on" in record.getMessage()
                 and record.levelno >= logging.INFO]
    assert 2 <= len(signed_on) <= 1 + sessions.bit_length(), (len(signed_on), sessions)
    assert "failures_before=0" in signed_on[0].getMessage()
    assert forwarder.acked == 0
    # It never took a frame: forwarding never resumed, and no line says it did.
    assert not [record for record in caplog.records
                if "forward_resumed" in record.getMessage()]


def forward_lines(caplog, level=logging.INFO):
    return [record.getMessage() for record in caplog.records
            if record.name == "switch.forward" and record.levelno >= level]


@pytest.mark.parametrize("records", [True, False], ids=["records waiting", "idle"])
async def test_a_receiver_back_after_any_number_of_failures_is_said_to_be(
        switch, forwarders, nursery, caplog, records):
    """A run of 5 failures is logged at the 1st, 2nd and 4th: the last line would be a
    failure if the sign-on after the 5th were left to the doubling too."""
    if records:
        await switch.person("WH20230001")
    key = os.urandom(32)
    port = free_port()
    caplog.set_level(logging.INFO, logger="switch")
    forwarder = forwarders.start(switch, destination("late", port, "sw-late", key, None))
    forwarder.backoff_initial_s = forwarder.backoff_max_s = 0.3
    await wait_until(lambda: errors(switch, "late", "connect") >= 5, 10)
    odd = OddReceiver(key, lambda m: {"t": "records", "code": "ok", "upto": m["to"]})
    await nursery.start(odd.run, port)
    await wait_until(lambda: forwarder.sessions >= 1
                     and forwarder.acked == (switch.store.last_txn if records else 0), 10)
    await trio.sleep(0.2)
    failures = int(errors(switch, "late", "connect"))
    assert failures not in (1, 2, 4, 8)     # not a sign-on the doubling would log
    lines = forward_lines(caplog)
    assert "event=forward_failed" in lines[-2], lines
    assert lines[-1].startswith("event=forward_resumed destination=late "), lines
    assert f" after_failures={failures} position={forwarder.acked}" in lines[-1], lines
    assert forwarder.acked == (switch.store.last_txn if records else 0)


def _taking_one_then_rewinding():
    """Takes the first record of a frame, then asks for everything again at the next."""
    frames = []

    def answer(message):
        frames.append(message["from"])
        upto = message["from"] if len(frames) % 2 else 0
        return {"t": "records", "code": "ok", "upto": upto}
    return answer


async def test_a_receiver_rewinding_every_other_frame_is_backed_off_and_logged_ever_more_rarely(
        switch, forwarders, nursery, caplog):
    for number in range(3):
        await switch.person(f"WH2023000{number}")   # records to forward, more than one
    key = os.urandom(32)
    odd = OddReceiver(key, _taking_one_then_rewinding())
    await nursery.start(odd.run)
    caplog.set_level(logging.DEBUG, logger="switch")
    forwarder = forwarders.start(switch, destination("odd", odd.port, "sw-odd", key, None))
    forwarder.backoff_max_s = 1.0
    await trio.sleep(3)
    rewinds = errors(switch, "odd", "rewind")
    # Waits of 0.1, 0.2, 0.4, 0.8, 1.0 ... s: not a rewind every 0.1 s.
    assert 3 <= rewinds <= 8, rewinds
    assert forwarder.rewinds == rewinds
    warned = forward_lines(caplog, logging.WARNING)
    assert all(line.startswith("event=rewind ") for line in warned), warned
    assert [line.rpartition(" rewinds=")[2] for line in warned] == \
        [str(2 ** n) for n in range(int(rewinds).bit_length())], warned
    assert len([line for line in forward_lines(caplog, logging.DEBUG)
                if line.startswith("event=rewind ")]) == rewinds
    assert errors(switch, "odd", "closed") == errors(switch, "odd", "protocol") == 0


async def test_a_rewind_long_after_the_one_before_starts_a_new_run(
        switch, forwarders, nursery, caplog, monkeypatch):
    monkeypatch.setattr(limits, "forward_rewind_run_gap_s", 0.0)
    for number in range(3):
        await switch.person(f"WH2023000{number}")
    key = os.urandom(32)
    odd = OddReceiver(key, _taking_one_then_rewinding())
    await nursery.start(odd.run)
    caplog.set_level(logging.INFO, logger="switch")
    forwarders.start(switch, destination("odd", odd.port, "sw-odd", key, None))
    await wait_until(lambda: errors(switch, "odd", "rewind") >= 3, 10)
    warned = [line for line in forward_lines(caplog, logging.WARNING)
              if line.startswith("event=rewind ")]
    assert len(warned) >= 3 and all(line.endswith(" rewinds=1") for line in warned), warned


def unsolicited(switch, name):
    return switch.server.metrics.registry.get_sample_value(
        "switch_forward_unsolicited_frames_total", {"destination": name}) or 0


async def test_pushes_up_to_the_bound_are_ignored_and_counted(switch, forwarders, nursery):
    await switch.person("WH20230001")
    key = os.urandom(32)
    odd = OddReceiver(key, lambda m: {"t": "records", "code": "ok", "upto": m["to"]},
                      pushes=limits.forward_unsolicited_frames_max)
    await nursery.start(odd.run)
    forwarder = forwarders.start(switch, destination("chatty", odd.port, "sw-chatty", key, None))
    await wait_until(lambda: forwarder.acked == switch.store.last_txn, 10)
    assert errors(switch, "chatty", "protocol") == 0
    assert unsolicited(switch, "chatty") >= limits.forward_unsolicited_frames_max


async def test_a_push_flood_while_awaiting_a_reply_ends_the_session(switch, forwarders,
                                                                    nursery):
    await switch.person("WH20230001")
    key = os.urandom(32)
    odd = OddReceiver(key, lambda m: {"t": "records", "code": "ok", "upto": m["to"]},
                      pushes=limits.forward_unsolicited_frames_max + 1)
    await nursery.start(odd.run)
    forwarder = forwarders.start(switch, destination("flood", odd.port, "sw-flood", key, None))
    await wait_until(lambda: errors(switch, "flood", "protocol") >= 2, 10)
    assert forwarder.acked == 0
    # Each session read the bound's worth of pushes and one more, then hung up.
    assert unsolicited(switch, "flood") >= \
        (limits.forward_unsolicited_frames_max + 1) * errors(switch, "flood", "protocol")
    with trio.fail_after(5):
        reply = await switch.admin.request({"t": "ping"})
    assert reply["code"] == "ok"


async def test_a_dead_destination_does_not_slow_the_tills(switch, forwarders):
    # Nothing listens there: every attempt fails to connect, with backoff.
    forwarders.start(switch, destination("dead", free_port(), "sw-dead", os.urandom(32), None))
    workload = await workload_on(switch)
    with trio.fail_after(10):
        for _ in range(3):
            await workload.burst()
    assert errors(switch, "dead", "connect") >= 1
    await wait_until(lambda: lag(switch, "dead") == switch.store.last_txn, 5)


# ------------------------------------------------------------------ in-process reference receiver
async def test_billing_receiver_in_process_reports_gap_and_keeps_position(tmp_path):
    receiver = BillingReceiver(str(tmp_path / "b"), {"sw": b"k" * 32})
    record = {"txn": 3, "at": 1_795_000_000_000, "kind": "debit", "account": "WH1",
              "school": "WH", "amount": -120, "balance": 0, "who": "T", "merchant": "M", "ref": 1}
    gap = await receiver.handle_records({"t": "records", "from": 3, "to": 3, "records": [record]})
    assert gap == {"t": "records", "code": "ok", "upto": 0}
    ok = await receiver.handle_records({"t": "records", "from": 1, "to": 3, "records": [record]})
    assert ok["upto"] == 3
    again = await receiver.handle_records({"t": "records", "from": 1, "to": 3, "records": [record]})
    assert again["upto"] == 3 and receiver.duplicates == 1
    reopened = BillingReceiver(str(tmp_path / "b"), {"sw": b"k" * 32})
    assert reopened.position == 3
    assert reopened.settlement_rows() == [("M", "2026-11-18", 1, 120, 0)]


# ------------------------------------------------------------------ a restore older than a receiver
def _last_txn_of(data_dir) -> int:
    store = Store(str(data_dir / STORE_DIR))
    try:
        return store.last_txn
    finally:
        store.close()


async def test_a_switch_restored_from_an_older_copy_is_refused_by_a_receiver_that_took_more(
        tmp_path, nursery, receiver_processes):
    """The operator's mistake docs/FORWARDING.md warns of ("After a restore"): the switch is
    restored from a copy older than what billing took, and numbers new records with txns
    billing has. Billing answers `journal_rewound` and takes nothing, rather than drop the
    new money as duplicates; the restored switch counts it as declined."""
    key = os.urandom(32)
    billing = receiver_processes("billing", tmp_path, "sw-billing", key)
    port = await billing.start()
    lost = await Switch(tmp_path / "lost" / "data", clock=FakeClock()).start(nursery)
    forwarding = Forwarders(nursery)
    forwarding.start(lost, destination("billing", port, "sw-billing", key, BILLING_KINDS))
    workload = await workload_on(lost)
    await workload.burst()
    await wait_until(lambda: lost.store.forward_position("billing") == lost.store.last_txn)
    await forwarding.stop_all()
    await workload.aclose()
    await stop_switch(lost)
    # The nightly copy: the switch's data dir and its master key beside it.
    shutil.copytree(tmp_path / "lost", tmp_path / "copy")
    copied_last_txn = _last_txn_of(tmp_path / "copy" / "data")
    lost = await Switch(tmp_path / "lost" / "data", clock=FakeClock()).start(nursery)
    forwarding.start(lost, destination("billing", port, "sw-billing", key, BILLING_KINDS))
    await workload.connect(lost.port)
    lost.clock.advance(60)
    await workload.burst()
    await wait_until(lambda: lost.store.forward_position("billing") == lost.store.last_txn)
    taken = lost.store.last_txn
    assert taken > copied_last_txn
    await forwarding.stop_all()
    await workload.aclose()
    await stop_switch(lost)
    # The disk is lost; the copy is restored; the tills pay on, later than anything billing has.
    restored = await Switch(tmp_path / "copy" / "data",
                            clock=FakeClock(1_795_000_000_000 + 3_600_000)).start(nursery)
    forwarding.start(restored, destination("billing", port, "sw-billing", key, BILLING_KINDS))
    await workload.connect(restored.port)
    await workload.burst()
    assert restored.store.last_txn > copied_last_txn
    await wait_until(lambda: errors(restored, "billing", "declined") >= 1)
    await wait_until(lambda: "event=journal_rewound" in billing.stderr())
    assert restored.store.forward_position("billing") <= copied_last_txn
    assert billing.position() == taken      # it took nothing of the restored journal
    await forwarding.stop_all()
    await workload.aclose()
    await stop_switch(restored)


# ------------------------------------------------------------------ 4. switch SIGKILL
class SwitchProcess:
    def __init__(self, base: pathlib.Path, config: pathlib.Path):
        self.base = base
        self.data = base / "data"
        self.config = config
        self.processes = []
        self.current = None

    async def start(self) -> int:
        number = len(self.processes) + 1
        out, err = self.base / f"switch-{number}.out", self.base / f"switch-{number}.err"
        with open(out, "wb") as stdout, open(err, "wb") as stderr:
            process = subprocess.Popen(
                [sys.executable, "-m", "switch", "serve", "--init", "--data", str(self.data),
                 "--listen", "127.0.0.1:0", "--metrics", "off", "--config", str(self.config)],
                stdout=stdout, stderr=stderr, stdin=subprocess.DEVNULL, cwd=REPO)
        self.processes.append(process)
        self.current = process
        with trio.fail_after(20):
            while True:
                for line in out.read_text().split("\n")[:-1]:
                    if line.startswith("listening on "):
                        return int(line.rpartition(":")[2])
                if process.poll() is not None:
                    raise AssertionError(f"switch exited {process.returncode}:\n{err.read_text()}")
                await trio.sleep(0.02)

    def kill(self):
        process, self.current = self.current, None
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)

    def kill_all(self):
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=10)

    def stderr(self) -> str:
        return "\n".join((self.base / f"switch-{n}.err").read_text()
                         for n in range(1, len(self.processes) + 1))


@pytest.mark.slow
async def test_switch_killed_mid_stream_receivers_end_with_the_journal_totals(
        tmp_path, nursery, request, receiver_processes):
    billing = receiver_processes("billing", tmp_path, "sw-billing", os.urandom(32))
    utility = receiver_processes("utility", tmp_path, "sw-utility", os.urandom(32))
    await billing.start()
    await utility.start()
    spec_key = os.urandom(32)
    write_private((tmp_path / "spec.key"), spec_key.hex())
    spec_state = str(tmp_path / "spec.json")
    spec = SpecReceiver(spec_state, "sw-spec", spec_key)
    await nursery.start(spec.run)
    spec_port = spec.port
    config = tmp_path / "switch.toml"
    config.write_text(f"""
[[destinations]]
name = "billing"
address = "127.0.0.1:{billing.port}"
credential = "sw-billing"
key_file = "billing.key"
kinds = {sorted(BILLING_KINDS)!r}

[[destinations]]
name = "utility"
address = "127.0.0.1:{utility.port}"
credential = "sw-utility"
key_file = "utility.key"
kinds = {sorted(UTILITY_KINDS)!r}

[[destinations]]
name = "spec"
address = "127.0.0.1:{spec_port}"
credential = "sw-spec"
key_file = "spec.key"
""".replace("'", '"'))
    switch = SwitchProcess(tmp_path, config)
    request.addfinalizer(switch.kill_all)
    port = await switch.start()
    workload = Workload("127.0.0.1", port, read_admin_key(str(switch.data)))
    await workload.setup()

    async def load(task_status=trio.TASK_STATUS_IGNORED):
        task_status.started()
        try:
            for _ in range(40):
                await workload.burst(debits=80)
        except CONNECTION_ERRORS:
            pass  # the switch was killed under us

    nursery.start_soon(load)
    try:
        await wait_until(lambda: billing.position() > 0 and spec.position > 0, 10)
    except trio.TooSlowError:
        raise AssertionError("the switch forwarded nothing: are [[destinations]] parsed by "
                             "switch/config.py and Forwarders started by Server.serve?\n"
                             + switch.stderr()[-3000:]) from None
    await trio.sleep(0.3)
    switch.kill()
    port = await switch.start()
    await workload.connect(port)
    for _ in range(3):
        await workload.burst()
    journal = journal_of_data_dir(switch.data)
    last_txn = journal[-1]["txn"]
    assert [record["txn"] for record in journal] == list(range(1, last_txn + 1))
    await wait_until(lambda: billing.position() == last_txn and utility.position() == last_txn
                     and spec.position == last_txn)
    assert read_settlement(billing.state_dir) == expected_settlement(journal)
    assert read_rooms(utility.state_dir) == expected_rooms(journal)
    assert spec.txns == list(range(1, last_txn + 1))
    await workload.aclose()
    switch.current.send_signal(signal.SIGTERM)
    with trio.fail_after(15):
        while switch.current.poll() is None:
            await trio.sleep(0.05)
    assert switch.current.returncode == 0
    stderr = switch.stderr()
    for key_file in ("billing.key", "utility.key", "spec.key"):
        assert (tmp_path / key_file).read_text().strip() not in stderr
    spec.stop()


# ------------------------------------------------------------------ example configuration
def test_example_configuration_loads(tmp_path):
    """examples/switch-with-receivers.toml is a working file (once its key files exist)."""
    from switch.config import load_config
    from switch.config.destinations import Destination
    example = REPO / "examples" / "switch-with-receivers.toml"
    copy = tmp_path / example.name
    shutil.copy(example, copy)
    for name in ("billing.key", "utility.key"):
        write_private(tmp_path / name, os.urandom(32).hex() + "\n")
    config = load_config(str(copy))
    assert [d.name for d in config.destinations] == ["billing", "utility"]
    assert all(isinstance(d, Destination) for d in config.destinations)
    billing, utility = config.destinations
    assert billing.kinds == BILLING_KINDS
    assert utility.kinds == UTILITY_KINDS
