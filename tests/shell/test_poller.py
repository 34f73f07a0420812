"""The one task that reads every signed-on connection (switch/shell/poller.py), on its own
with socket pairs: one pass serves every ready connection, a paused one is not read until
it has room, a fault stays with its connection, fd numbers are never confused."""

import socket
import threading
import time

import pytest
import trio

from switch import limits
from switch.shell.metrics import Metrics
from switch.shell.poller import ReadinessPoller


class _Transport:
    def __init__(self, sock):
        self.sock = sock


class FakeConnection:
    """What the poller needs of a Connection; records what it was asked to do."""

    def __init__(self, poller, name, fail_on_read=False):
        self.poller = poller
        self.name = name
        self.peer = name
        self.ours, self.theirs = socket.socketpair()
        self.ours.setblocking(False)
        self.transport = _Transport(self.ours)
        self.fd = None
        self.read_deadline = float("inf")
        self.received = b""
        self.rooms = 0
        self.deadlines = 0
        self.failed = False
        self.fail_on_read = fail_on_read
        self.pause_after_read = False
        self.stall_s = 0.0          # how long reading it holds the pass (a slow request)
        self.heard = []             # (poller.heard_by, when it was read) per read

    def on_readable(self):
        if self.fail_on_read:
            raise RuntimeError("a fault while serving one connection")
        self.heard.append((self.poller.heard_by, time.perf_counter()))
        self.received += self.ours.recv(65536)
        time.sleep(self.stall_s)
        if self.pause_after_read:
            self.poller.pause(self)

    def on_room(self):
        self.rooms += 1
        self.poller.add(self)

    def on_read_deadline(self):
        self.deadlines += 1
        self.poller.remove(self)

    def fail(self):
        self.failed = True

    def close(self):
        self.poller.remove(self)
        self.ours.close()
        self.theirs.close()


@pytest.fixture
async def poller(nursery):
    poller = ReadinessPoller(Metrics())
    await nursery.start(poller.run)
    return poller


async def _settle():
    # Let the poller task run its pass (it has no await inside one).
    for _ in range(5):
        await trio.sleep(0.01)


async def test_one_pass_reads_every_ready_connection(poller):
    connections = [FakeConnection(poller, f"c{n}") for n in range(40)]
    for connection in connections:
        poller.add(connection)
    await _settle()
    passes_before = poller.passes
    for n, connection in enumerate(connections):
        connection.theirs.send(b"frame %d" % n)   # all ready before the poller wakes
    await _settle()
    assert [c.received for c in connections] == [b"frame %d" % n for n in range(40)]
    assert poller.passes - passes_before < 40    # not a pass (a wake-up) per connection
    for connection in connections:
        connection.close()


async def test_a_paused_connection_is_not_read_until_it_has_room(poller):
    connection = FakeConnection(poller, "paused")
    connection.pause_after_read = True
    poller.add(connection)
    connection.theirs.send(b"first")
    await _settle()
    assert connection.received == b"first" and connection.fd is None
    connection.pause_after_read = False
    connection.theirs.send(b"second")
    connection.theirs.close()          # a peer gone while paused must not spin the poller
    await _settle()
    passes = poller.passes
    await _settle()
    assert connection.received == b"first" and poller.passes - passes <= 1
    poller.resume(connection)
    await _settle()
    assert connection.rooms == 1 and connection.received.startswith(b"firstsecond")
    poller.remove(connection)
    connection.ours.close()


async def test_a_fault_in_one_connection_ends_it_alone(poller):
    bad = FakeConnection(poller, "bad", fail_on_read=True)
    good = FakeConnection(poller, "good")
    poller.add(bad)
    poller.add(good)
    bad.theirs.send(b"x")
    good.theirs.send(b"y")
    await _settle()
    assert bad.failed and bad.fd is None
    assert good.received == b"y" and not good.failed
    good.theirs.send(b"z")
    await _settle()
    assert good.received == b"yz"
    bad.close()
    good.close()


async def test_a_reused_fd_number_reaches_the_new_connection(poller):
    old = FakeConnection(poller, "old")
    poller.add(old)
    old_fd = old.fd
    old.close()
    for _ in range(4):   # the next socket may or may not take the same number
        new = FakeConnection(poller, "new")
        if new.ours.fileno() == old_fd:
            break
    poller.add(new)
    new.theirs.send(b"mine")
    await _settle()
    assert new.received == b"mine" and old.received == b""
    new.close()


async def test_the_sweep_ends_reading_past_its_deadline(poller, autojump_clock):
    late = FakeConnection(poller, "late")
    fresh = FakeConnection(poller, "fresh")
    poller.add(late)
    poller.add(fresh)
    late.read_deadline = trio.current_time() + 0.5
    fresh.read_deadline = trio.current_time() + 1000
    await trio.sleep(limits.read_deadline_sweep_s * 3)
    assert late.deadlines == 1 and late.fd is None
    assert fresh.deadlines == 0 and fresh.fd is not None
    late.close()
    fresh.close()


async def test_a_long_pass_counts_as_waiting_and_an_idle_wait_does_not(poller):
    """What a pass reads is dated after the last poll that left nothing unread: a request that
    arrived while another held the pass has waited that long (past saturation the server sheds
    by it); one that arrived while the poller slept has waited for nothing."""
    slow = FakeConnection(poller, "slow")
    other = FakeConnection(poller, "other")
    poller.add(slow)
    poller.add(other)
    await _settle()
    slow.stall_s = 0.5
    sent = time.perf_counter()
    slow.theirs.send(b"slow request")
    # While the pass that reads `slow` stalls, `other`'s request arrives.
    timer = threading.Timer(0.1, other.theirs.send, args=(b"arrived meanwhile",))
    timer.start()
    await _settle()
    timer.join()
    await _settle()
    assert other.received == b"arrived meanwhile"
    (slow_heard_by, slow_read_at), = slow.heard
    (other_heard_by, other_read_at), = other.heard
    # Slept on, then woken: dated from the wake, after it was sent.
    assert slow_heard_by >= sent and slow_read_at - slow_heard_by < slow.stall_s
    # Read in the pass after the stall: dated from before it, so it counts the stall.
    assert other_heard_by <= slow_read_at
    assert other_read_at - other_heard_by >= slow.stall_s
    slow.close()
    other.close()


async def test_a_pass_receives_on_every_ready_connection_before_it_decodes_any(poller):
    """Receives first, then what they brought, so the kernel's network code does not run
    between every two requests' execution (the stages' order is what the poller promises;
    bench/RESULTS.md has what it did to the CPU per debit)."""
    log = []

    class TwoStage(FakeConnection):
        def on_readable(self):
            super().on_readable()
            log.append(("receive", self.name))
            return lambda: log.append(("decode", self.name))

    connections = [TwoStage(poller, f"c{n}") for n in range(6)]
    for connection in connections:
        poller.add(connection)
    await _settle()
    for connection in connections:
        connection.theirs.send(b"request")
    await _settle()
    stages = [stage for stage, _ in log]
    assert sorted(name for _, name in log) == sorted([c.name for c in connections] * 2)
    assert stages == ["receive"] * 6 + ["decode"] * 6
    for connection in connections:
        connection.close()


async def test_a_pass_executes_for_a_bounded_time_and_the_rest_runs_first_next_pass(
        poller, monkeypatch):
    """Past the pass's time the remaining executes wait for the next pass, which runs them
    first: between the two, other tasks (the committer, answering what ran) get their turn.
    A connection whose execute waits is not read again before it runs."""
    monkeypatch.setattr(limits, "pass_execute_s_max", 0.1)
    log = []
    connections = []

    class Slow(FakeConnection):
        def on_readable(self):
            super().on_readable()
            return self._open

        def _open(self):
            return self._execute

        def _execute(self):
            if not log:
                for connection in connections:   # more arrives while the pass executes
                    connection.theirs.send(b"b")
            log.append(("execute", self.name, self.received, self.poller.passes))
            time.sleep(0.05)   # the third of a pass would start at 0.1 s or later

    connections += [Slow(poller, f"c{n}") for n in range(4)]
    for connection in connections:
        poller.add(connection)
    await _settle()
    for connection in connections:
        connection.theirs.send(b"a")
    with trio.fail_after(10):
        while sum(entry[0] == "execute" for entry in log) < 4:
            await trio.sleep(0.01)
    executes = [(i, entry) for i, entry in enumerate(log) if entry[0] == "execute"][:4]
    # Two in the first pass (the second starts before 0.1 s, a third would not), then the
    # pass ends (its checkpoint: the other tasks' turn), and the two put off run first
    # thing in the next pass.
    (a, first), (b, second), (c, third), (d, fourth) = executes
    assert b == a + 1 and d == c + 1
    assert first[3] == second[3] and third[3] == fourth[3] == first[3] + 1
    assert sorted(entry[1] for _, entry in executes) == ["c0", "c1", "c2", "c3"]
    # Those put off ran with what they had when they were put off: "b" was not read yet.
    assert third[2] == fourth[2] == b"a"
    await _settle()
    assert all(connection.received == b"ab" for connection in connections)
    for connection in connections:
        connection.close()


async def test_the_sweep_leaves_a_connection_whose_execute_was_put_off(nursery, monkeypatch):
    """A connection whose execute step waits for the next pass read a request its read
    deadline does not know of yet (the execute sets the next one): the sweep must not end
    it meanwhile, as idle or as a frame that never completed, with that request unrun."""
    monkeypatch.setattr(limits, "pass_execute_s_max", 0.05)
    monkeypatch.setattr(limits, "read_deadline_sweep_s", 0.01)
    poller = ReadinessPoller(Metrics())
    await nursery.start(poller.run)
    executed = []

    class PutOff(FakeConnection):
        def on_readable(self):
            super().on_readable()
            return lambda: self._execute

        def _execute(self):
            executed.append(self.name)
            time.sleep(0.5)   # the other's execute is put off to the next pass
            self.read_deadline = trio.current_time() + 1000

    connections = [PutOff(poller, "a"), PutOff(poller, "b")]
    for connection in connections:
        poller.add(connection)
    await _settle()
    for connection in connections:
        # Its deadline as the last execute set it: due while the pass executes the other.
        connection.read_deadline = trio.current_time() + 0.25
        connection.theirs.send(b"request")
    with trio.fail_after(10):
        while len(executed) < 2:
            await trio.sleep(0.01)
    assert sorted(executed) == ["a", "b"]
    assert [connection.deadlines for connection in connections] == [0, 0]
    for connection in connections:
        connection.close()


async def test_a_request_is_not_dated_by_a_connection_left_unread_behind_a_put_off_execute(
        nursery, monkeypatch):
    """A connection whose execute is put off is not read, so what it holds unread may be as
    old as its first skipped pass; but another connection's request, arriving now, waited
    for no such thing (docs/PROTOCOL.md §2.3: a till is never shed for a wait it did not
    have). Two busy peers whose executes are put off turn about, pass after pass, while a
    third sends one request."""
    monkeypatch.setattr(limits, "pass_execute_s_max", 0.02)
    poller = ReadinessPoller(Metrics())
    await nursery.start(poller.run)
    busy = []
    sending = [True]

    class Busy(FakeConnection):
        def on_readable(self):
            super().on_readable()
            return lambda: self._execute

        def _execute(self):
            if sending[0]:
                for connection in busy:   # both always have more waiting
                    connection.theirs.send(b"more")
            time.sleep(0.06)

    busy += [Busy(poller, "a"), Busy(poller, "b")]
    fresh = FakeConnection(poller, "fresh")
    for connection in busy + [fresh]:
        poller.add(connection)
    await _settle()
    for connection in busy:
        connection.theirs.send(b"first")
    await trio.sleep(1.5)   # about twenty passes, each skipping the peer put off
    fresh.theirs.send(b"request")
    with trio.fail_after(10):
        while not fresh.heard:
            await trio.sleep(0.01)
    sending[0] = False
    (heard_by, read_at), = fresh.heard
    # It arrived a pass or two before it was read, not when the turns began.
    assert read_at - heard_by < 0.5
    await _settle()
    for connection in busy + [fresh]:
        connection.close()
