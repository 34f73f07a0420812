"""The poller under seeded faults (switch/shell/poller.py): reads that raise, steps that
raise or pause their connection, connections closed with steps still waiting and new ones
taking their fd numbers. After every round, from the connections' side: none is read while
a step of its own waits to run; steps run in the order they were queued; and once the
faults stop, every step runs and every live connection is read dry."""

import random
import socket

import pytest
import trio

from switch import limits
from switch.shell.metrics import Metrics
from switch.shell.poller import ReadinessPoller

ROUNDS = 3_000
CONNECTIONS = 30
FAULT_RATE = 0.03           # of reads, and of steps
PAUSE_RATE = 0.2            # of steps: the connection waits on us (TCP backpressure)
CLOSE_RATE = 0.05           # of rounds: a connection goes, a new one takes its place
CALM_ROUNDS_MAX = 400


class _Transport:
    def __init__(self, sock):
        self.sock = sock


class World:
    """What the connections share: the seeded chance, and what they saw go wrong."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)
        self.chaos = True
        self.queued = 0          # stamps steps in the order they are handed to the poller
        self.ran: list[int] = []
        self.violations: list = []


class ChaosConnection:
    """Knows its own steps not yet run: the poller must not read it meanwhile."""

    def __init__(self, poller, world: World, name: str):
        self.poller, self.world, self.name = poller, world, name
        self.peer = name
        self.ours, self.theirs = socket.socketpair()
        self.ours.setblocking(False)
        self.theirs.setblocking(False)
        self.transport = _Transport(self.ours)
        self.fd = None
        self.read_deadline = float("inf")
        self.waiting_steps = 0
        self.closed = False

    def on_readable(self):
        if self.waiting_steps:
            self.world.violations.append(("read while a step waits", self.name))
        try:
            self.ours.recv(7)      # a little at a time: the rest is read in later passes
        except BlockingIOError:
            return None
        if self.world.chaos and self.world.rng.random() < FAULT_RATE:
            raise RuntimeError("fault while receiving")
        return self.on_received

    def on_received(self):
        return self._step()

    @property
    def on_room(self):
        return self._step()

    def _step(self):
        self.world.queued += 1
        stamp = self.world.queued
        self.waiting_steps += 1

        def step():
            self.waiting_steps -= 1
            self.world.ran.append(stamp)
            chance = self.world.rng.random() if self.world.chaos else 1.0
            if chance < FAULT_RATE:
                raise RuntimeError("fault while executing")
            if chance < FAULT_RATE + PAUSE_RATE:
                self.poller.pause(self)
            elif not self.closed:
                self.poller.add(self)
        return step

    def on_read_deadline(self):
        pass

    def fail(self):       # as a Connection does: the poller has removed it; it closes
        self.close()

    def close(self):
        self.closed = True
        self.poller.remove(self)
        self.ours.close()
        self.theirs.close()

    def unread_bytes(self) -> int:
        try:
            return len(self.ours.recv(1 << 20, socket.MSG_PEEK))
        except BlockingIOError:
            return 0


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_the_poller_keeps_its_promises_under_faults(seed, nursery, monkeypatch):
    monkeypatch.setattr(limits, "pass_execute_s_max", 0.0)   # one step a pass: many carried
    world = World(seed)
    rng = world.rng
    poller = ReadinessPoller(Metrics())
    await nursery.start(poller.run)
    connections = [ChaosConnection(poller, world, f"c{n}") for n in range(CONNECTIONS)]
    for connection in connections:
        poller.add(connection)
    for round_number in range(ROUNDS):
        live = [c for c in connections if not c.closed]
        for connection in rng.sample(live, min(len(live), 5)):
            try:
                connection.theirs.send(b"x" * rng.randint(1, 20))
            except BlockingIOError:
                pass     # not read for long enough to fill its buffer: the peer waits
        if live and rng.random() < CLOSE_RATE:
            rng.choice(live).close()            # perhaps with steps still waiting
        # Those closed or failed are replaced, most likely on the fd numbers just freed.
        for _ in range(CONNECTIONS - sum(not c.closed for c in connections)):
            newcomer = ChaosConnection(poller, world, f"c{len(connections)}")
            poller.add(newcomer)
            connections.append(newcomer)
        if rng.random() < 0.3:
            poller.resume_all()
        await trio.lowlevel.checkpoint()
        assert not world.violations, (round_number, world.violations[:3])
        assert world.ran == sorted(world.ran), "a step ran before one queued earlier"
    world.chaos = False
    for _ in range(CALM_ROUNDS_MAX):
        poller.resume_all()
        await trio.sleep(0.002)
        if world.ran and len(world.ran) == world.queued and not any(
                c.unread_bytes() for c in connections if not c.closed):
            break
    assert len(world.ran) == world.queued, "steps queued and never run"
    assert all(c.waiting_steps == 0 for c in connections if not c.closed)
    unread = [(c.name, c.unread_bytes()) for c in connections if not c.closed
              and c.unread_bytes()]
    assert not unread, f"never read again: {unread}"
    assert not world.violations, world.violations[:3]
    assert world.ran == sorted(world.ran)
    assert world.queued > 1_000       # the faults and pauses were exercised, not skipped
    for connection in connections:
        if not connection.closed:
            connection.close()
