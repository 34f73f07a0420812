"""One timer for every terminal: when each one next has something to send.

A timed wakeup in trio is a cancellation (tens of µs); a task per terminal waking
for each arrival would pay it per request. Here terminals register their next due
time in one heap; whichever task runs next (usually a terminal handling a reply)
dispatches everything already due, synchronously, writing straight to the sockets.
The scheduler task only wakes when nobody else ran before the earliest due time,
and its deadline moves whenever the heap's head changes, so no arrival is sent
later than a dedicated timer would have sent it.
"""

import heapq
import math
from collections import deque

import trio

_inf = math.inf


class Scheduler:
    def __init__(self):
        self.heap: list = []
        self.counter = 0
        self.terminals: list = []
        self.load_end = _inf
        self.load_ended = False
        self._scope: trio.CancelScope | None = None
        self._wake = trio.Event()
        self.flush_queue: deque = deque()    # terminals whose send must wait for the socket

    def at(self, terminal, when: float) -> None:
        """`terminal.on_due(now)` at `when` (the earliest of its registrations wins)."""
        if when >= terminal.due:
            return
        terminal.due = when
        self.counter += 1
        heapq.heappush(self.heap, (when, self.counter, terminal))
        scope = self._scope
        if scope is not None and when < scope.deadline:
            scope.deadline = when

    def need_flush(self, terminal) -> None:
        self.flush_queue.append(terminal)
        self._wake.set()

    def dispatch(self, now: float) -> None:
        """Run every terminal whose time has come (synchronous: no await)."""
        heap = self.heap
        while heap and heap[0][0] <= now:
            when, _, terminal = heapq.heappop(heap)
            if when != terminal.due:
                continue   # superseded by an earlier registration
            terminal.due = _inf
            terminal.on_due(now)
        if not self.load_ended and now >= self.load_end:
            self.load_ended = True
            for terminal in self.terminals:
                terminal.on_load_end(now)
        scope = self._scope
        if scope is not None:
            scope.deadline = self._next_deadline()

    def _next_deadline(self) -> float:
        head = self.heap[0][0] if self.heap else _inf
        return head if self.load_ended else min(head, self.load_end)

    async def run(self) -> None:
        while True:
            self.dispatch(trio.current_time())
            while self.flush_queue:
                await self.flush_queue.popleft().flush()
            if self._wake.is_set():
                self._wake = trio.Event()
            with trio.CancelScope(deadline=self._next_deadline()) as scope:
                self._scope = scope
                await self._wake.wait()
            self._scope = None
