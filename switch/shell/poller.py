"""One task reads every signed-on connection: one epoll descriptor holds them all.

Waking a task per ready socket cost more than the payment it carried (epoll event,
reschedule, checkpoint, per connection and request). Here a single task waits for the
epoll descriptor with trio, then in one pass with no `await` reads each ready socket once,
decodes and executes every complete frame; the committer then answers the whole pass
with one send per connection. Trio still owns the process: this task lives in the
server's nursery and is cancelled with it.

Each pass also says how long what it reads may have waited (`heard_by`): data found
by a poll arrived after the last poll that left nothing unread (a connection left unread
behind its put-off execute is dated apart, from the first pass that skipped it). Past
saturation that age grows with the queue in the kernel, and the server answers `busy` by it.

Level-triggered: a socket with more than one receive waiting is reported again in the
next pass, so one busy peer cannot starve the others. A connection waiting on us (its
replies, the server's reply memory) is taken out of the set until it has room again;
its read deadlines are checked by a sweep once a second.
"""

import select
import time
from collections import deque

import trio

from switch import limits
from switch.ledger.dispatch import failures

_READ = select.EPOLLIN


class ReadinessPoller:
    def __init__(self, metrics):
        self.metrics = metrics
        self._epoll = select.epoll()
        self._by_fd: dict = {}            # fd -> connection, while registered
        self._paused: set = set()         # out of the epoll set: waiting on us
        self._resumed: list = []          # connections given room again since the last pass
        self._wait_scope: trio.CancelScope | None = None
        self.passes = 0
        # perf_counter time: every frame read in the current pass (from the connection being
        # served) arrived after it.
        self.heard_by = time.perf_counter()
        # Connections left unread behind an execute step put off: the `heard_by` of the first
        # pass that skipped them, which what they hold may date from.
        self._behind: dict = {}

    # ------------------------------------------------------------ membership
    def add(self, connection) -> None:
        """Read it in every pass where it is ready (again, after a pause)."""
        self._paused.discard(connection)
        if connection.fd is None:
            fd = connection.transport.sock.fileno()
            self._epoll.register(fd, _READ)
            self._by_fd[fd] = connection
            connection.fd = fd

    def pause(self, connection) -> None:
        """Stop reading it (TCP backpressure) until `resume`. Taken out of the epoll set,
        not left in it with no events: a reset peer would still report EPOLLHUP each pass."""
        self._unregister(connection)
        self._paused.add(connection)

    def resume(self, connection) -> None:
        """It may have room again: the next pass runs its backlog and reads it again."""
        if connection in self._paused:
            self._paused.discard(connection)
            self._resumed.append(connection)
            if self._wait_scope is not None:
                self._wait_scope.cancel()

    def resume_all(self) -> None:
        for connection in list(self._paused):
            self.resume(connection)

    def remove(self, connection) -> None:
        """Before its socket closes: the fd number may be reused by the next accept."""
        self._unregister(connection)
        self._paused.discard(connection)

    def _unregister(self, connection) -> None:
        fd = connection.fd
        self._behind.pop(connection, None)
        if fd is None:
            return
        connection.fd = None
        if self._by_fd.get(fd) is connection:
            del self._by_fd[fd]
            try:
                self._epoll.unregister(fd)
            except (OSError, ValueError):
                pass

    @property
    def connections(self) -> int:
        return len(self._by_fd)

    # ------------------------------------------------------------ the one task
    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        epoll_fd = self._epoll.fileno()
        poll = self._epoll.poll
        by_fd = self._by_fd
        current_time = trio.current_time
        clock = time.perf_counter
        events_max = limits.ready_connections_per_pass_max
        next_sweep = current_time() + limits.read_deadline_sweep_s
        # When a poll last found every ready connection (none left over): what a pass reads
        # arrived after the poll before it. That bounds how long a request may have waited
        # for us to read it, which is what overload is judged by (`heard_by`).
        complete_poll_at = clock()
        # Execute steps not run yet, oldest first: what a pass ran out of time for runs first
        # in the next, and its connection is not read again until it has. Counted per
        # connection as steps come and go: past saturation thousands are carried, and
        # gathering them into a set every pass took 2 % of the loop.
        pending: deque = deque()
        waiting: dict = {}       # connection -> its steps in `pending`
        behind = self._behind
        task_status.started()
        try:
            while True:
                polled_at = clock()
                events = poll(0, events_max)
                if not events and not self._resumed and not pending:
                    # Nothing unread: we wait. What wakes us arrived while we waited, just
                    # before we woke (but for the other tasks trio ran first: short when we
                    # are idle enough to wait at all; past saturation no pass waits).
                    with trio.CancelScope(deadline=next_sweep) as self._wait_scope:
                        await trio.lowlevel.wait_readable(epoll_fd)
                    self._wait_scope = None
                    # Read at once. Waiting a millisecond for company here saved a light
                    # load an eighth of its CPU and made its p99 a third longer
                    # (bench/RESULTS.md, 2026-12-03): at light load the CPU is there to spend.
                    polled_at = complete_poll_at = clock()
                    events = poll(0, events_max)
                self.heard_by = heard_by = complete_poll_at
                execute_until = polled_at + limits.pass_execute_s_max
                if self._resumed:
                    resumed, self._resumed = self._resumed, []
                    for connection in resumed:
                        self._wait(pending, waiting, connection, connection.on_room)
                # In stages over every ready connection: all receives, then opening what
                # they brought, then executing it (each stage's code together; executing
                # is the stage that is bounded, and the one carried over).
                received = []
                for fd, _ in events:
                    connection = by_fd.get(fd)
                    if connection is None:
                        continue
                    if connection in waiting:
                        # More waits behind what it has not run yet: dated from this pass
                        # when it is read, not the others' requests with it.
                        behind.setdefault(connection, heard_by)
                        continue
                    dated = behind.pop(connection, heard_by)
                    then = self._contained(connection, connection.on_readable)
                    if then is not None:
                        received.append((connection, then, dated))
                # What a later pass reads arrived after this poll only if it read all (but
                # for the connections left behind, dated apart).
                if len(events) < events_max:
                    complete_poll_at = polled_at
                for connection, step, dated in received:
                    self.heard_by = dated
                    then = self._contained(connection, step)
                    if then is not None:
                        self._wait(pending, waiting, connection, then)
                self.heard_by = heard_by
                # Executing is bounded per pass: the committer then commits and answers
                # what ran, rather than every till waiting for the whole queue to run.
                ran = 0
                while pending and not (ran and clock() >= execute_until):
                    connection, step = pending.popleft()
                    steps = waiting[connection] - 1
                    if steps:
                        waiting[connection] = steps
                    else:
                        del waiting[connection]
                    self._contained(connection, step)
                    ran += 1
                self.passes += 1
                now = current_time()
                if now >= next_sweep:
                    next_sweep = now + limits.read_deadline_sweep_s
                    for connection in list(by_fd.values()):
                        # One whose execute was put off read a request its deadline does
                        # not know of yet: that execute sets the next deadline.
                        if connection.read_deadline <= now and connection not in waiting:
                            self._contained(connection, connection.on_read_deadline)
                # Other tasks (the committer's replies above all) run between passes.
                await trio.lowlevel.checkpoint()
        finally:
            self._epoll.close()

    @staticmethod
    def _wait(pending: deque, waiting: dict, connection, step) -> None:
        pending.append((connection, step))
        waiting[connection] = waiting.get(connection, 0) + 1

    def _contained(self, connection, step):
        """A fault while serving one connection ends that connection alone."""
        try:
            return step()
        except Exception:
            failures.failed("connection_failed", peer=connection.peer)
            self.metrics.failures.labels("connection").inc()
            self.remove(connection)
            connection.fail()
