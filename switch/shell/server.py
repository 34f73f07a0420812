"""The trio shell: accepts connections, moves bytes through the codec, executes requests
and hands their replies to group commit. It decides nothing itself."""

import collections
import errno
import logging
import time
from collections import deque

import msgpack
import trio

from switch import limits
from switch.codec import FrameDecoder, ProtocolError, ServerSession
from switch.codec.framing import FrameTooLarge
from switch.codec.session import OPEN
from switch.core import codes
from switch.ledger import dispatch, housekeeping
from switch.ledger.dispatch import failures
from switch.ledger.effects import (BlacklistPush, ClosedAccountTap, JournalAdvanced, PowerCutoff,
                                   Revocation)
from switch.logline import FailureLog, bounded
from switch.shell.budget import COSTLY_KINDS, RequestBudget, request_cost
from switch.ledger.offline import over_cap as offline_over_cap
from switch.shell.committer import Committer, commit_failures
from switch.shell.forwarder import Forwarder
from switch.shell.metrics import Metrics
from switch.shell.poller import ReadinessPoller
from switch.shell.transport import PeerGone, Transport, accept

log = logging.getLogger("switch.server")

_ACCEPT_RESOURCE_ERRORS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
# A hello of a credential that holds its most sessions: try again later (docs/PROTOCOL.md §1.4).
_BUSY = codes.CODE_NAMES[codes.BUSY]


# Replies whose size grows with what they list are measured; the rest are small.
_LISTING_TYPES = frozenset({"history", "account", "blacklist", "offline"})
_packb = msgpack.Packer(use_bin_type=True).pack


def reply_size(reply: dict) -> int:
    """What a reply will take as a frame, closely enough to bound the memory it holds."""
    if reply["t"] in _LISTING_TYPES:
        return len(_packb(reply)) + limits.tag_size_bytes + limits.frame_length_prefix_bytes
    return limits.reply_bytes_small


# `_writer_scope` once the closing task writes what is left itself: no writer starts again.
_CLOSING_WRITES = object()


class Connection:
    """One inbound connection. A task reads its hello; after that no task waits on it while
    it is idle: the poller reads it (switch/shell/poller.py), replies go straight to the
    socket, and a task starts only for what must wait on this one connection (a kernel
    send buffer that is full, the close). Ten thousand idle tills then cost their objects,
    not ten thousand parked tasks."""

    # Slots: a connection has more fields than an instance dict shares keys for, and a
    # dict of its own per connection was a fifth of what an idle connection held.
    __slots__ = ("server", "transport", "session", "decoder", "credential", "budget", "role",
                 "in_flight", "address", "accepted_at", "peer", "reply_bytes", "_backlog",
                 "_out", "_unsent", "_writer_scope", "_capacity", "fd", "read_deadline",
                 "_frame_started", "_received", "_received_at", "_heard_by", "_closing",
                 "_released", "_reading_ended", "_closing_error", "_error_queued",
                 "_close_writes", "_close_bounded", "reader_scope", "closed")

    def __init__(self, server: "Server", transport: Transport, address: str):
        self.server = server
        self.transport = transport
        self.session = ServerSession()
        self.decoder = FrameDecoder()
        self.credential = None
        self.budget = None
        self.role = "pending"
        self.in_flight = 0
        self.address = address
        self.accepted_at = trio.current_time()
        self.peer = transport.peer()
        self.reply_bytes = 0             # estimated size of replies waiting for their commit
        # frames read and opened (session.open_request), not yet executed (in-flight cap)
        self._backlog: deque = deque()
        self._out: list = []             # frames encoded but not yet written
        self._unsent = b""               # what the kernel would not take yet
        self._writer_scope = None        # the writer task's, while one waits for room
        self._capacity = None            # ParkingLot: the closing task waits here for replies
        self.fd = None                   # while the poller holds it
        self.read_deadline = float("inf")   # the poller's sweep ends reading past it
        self._frame_started = None       # when the first byte of the incomplete frame came
        self._received = b""             # read by on_readable, decoded by on_received
        self._received_at = 0.0          # trio time of that receive
        # perf_counter time after which the frames in the backlog arrived (the poller's
        # `heard_by` for what a pass read; the time of the resume for a paused connection,
        # whose wait was its own doing)
        self._heard_by = time.perf_counter()
        self._closing = False            # the closing task was started
        self._released = False
        self._reading_ended = False
        self._closing_error: ProtocolError | None = None
        self._error_queued = False
        # The closing task's writing of its last frames: bounded per progress, as a
        # writer's, unless the session is ended within a bound (`end_within_bound`).
        self._close_writes: trio.CancelScope | None = None
        self._close_bounded = False
        # The hello task's; None once the session is open (cancelling it no longer ends
        # anything: `stop` does).
        self.reader_scope = trio.CancelScope()
        self.closed = False

    # ------------------------------------------------------------ called by others
    def send_reply(self, reply: dict, seconds: float, reply_bytes: int) -> None:
        """Queue a reply (the server flushes once per batch and connection); `reply_bytes`
        is what was reserved for it when it was executed."""
        self.in_flight -= 1
        self.reply_bytes -= reply_bytes
        self.server.release_reply_bytes(reply_bytes)
        self.server.metrics.observe_reply(reply["t"], reply["code"], seconds)
        # Replies go out before the error frame that ends a session, never after it.
        if not self.closed and not self._error_queued:
            try:
                frame = self.session.encode_reply(reply)
            except FrameTooLarge:
                # Money may have moved under this reply: say `internal` rather than nothing.
                log.error("event=reply_too_large t=%s re=%s", reply["t"], reply["re"])
                frame = self.session.encode_reply({"t": reply["t"], "re": reply["re"],
                                                   "code": "internal"})
            self._queue(frame)
        self._room()

    def queue_push(self, message: dict) -> None:
        """Queued for the server's next flush of this connection."""
        if not self.closed and self.session.state == OPEN:
            self._queue(self.session.encode_push(message))

    def fail(self) -> None:
        """Something of ours broke while serving this connection: end it alone."""
        self._peer_gone()

    def abort(self, code: str) -> None:
        """Close at once with a connection-level error (revocation, a rotated key). At once:
        what is left to write gets `error_flush_timeout_s` in all, however the peer reads,
        so a revoked credential's session gives its slot and memory back in bounded time."""
        if self.session.state == "open" and not self._error_queued:
            self.session.close()
            self._closing_error = ProtocolError(code)
            self._queue(self.session.encode_error(self._closing_error))
            self._error_queued = True
            self.flush()
        self.end_within_bound()

    def _queue(self, frame: bytes) -> None:
        self._out.append(frame)

    def flush(self) -> None:
        """Write queued frames now, without a task switch; the writer waits out the rest."""
        if self.closed or not self._out:
            return
        if self._unsent:
            unsent = self._unsent + b"".join(self._out)
            self._out.clear()
        else:
            data = self._out[0] if len(self._out) == 1 else b"".join(self._out)
            self._out.clear()
            try:
                unsent = self.transport.send_now(data)
            except PeerGone:
                self._peer_gone()
                return
        if unsent:
            if (len(unsent) > limits.send_buffer_bytes_max
                    or self.server.unsent_bytes + len(unsent) - len(self._unsent)
                    > limits.replies_bytes_total_max):
                # A peer that does not read its replies does not get to hold our memory.
                log.info("event=dropped_not_reading peer=%s unsent_bytes=%d", self.peer,
                         len(unsent))
                self._peer_gone()
                return
            self._set_unsent(unsent)
            if self._writer_scope is None:
                self._writer_scope = scope = trio.CancelScope()
                self.server.start_connection_task(self._writer, scope)
        elif self._unsent:
            self._set_unsent(b"")

    def _set_unsent(self, unsent: bytes) -> None:
        self.server.unsent_bytes += len(unsent) - len(self._unsent)
        self._unsent = unsent

    def _peer_gone(self) -> None:
        self.closed = True
        self._set_unsent(b"")
        self._out.clear()
        self.stop()
        if self._capacity is not None:
            self._capacity.unpark_all()

    def _room(self) -> None:
        """A reply went out or left memory: whoever waits on this connection's room."""
        if self._capacity is not None:
            self._capacity.unpark_all()
        self.server.poller.resume(self)

    # ------------------------------------------------------------ reading: the poller's pass
    def on_readable(self):
        """The socket is ready: one receive. Returns `on_received` when there is something
        to decode: the poller receives on every ready socket first, then decodes, then
        executes, each stage over the whole pass (and executing bounded per pass). No
        await."""
        if self._reading_ended:
            return None
        data = self.transport.receive_now(limits.receive_size_bytes)
        if data is None:
            return None
        if not data:
            self._end_reading()
            return None
        self._received = data
        return self.on_received

    def on_received(self):
        """Every complete frame of what `on_readable` received, opened (tag and body);
        returns `on_opened`, which executes them, as the pass's next stage."""
        data, self._received = self._received, b""
        decoder = self.decoder
        try:
            payloads = decoder.feed(data)
        except ProtocolError as error:
            self._end_reading(error)
            return
        now = trio.current_time()
        if decoder.buffered_bytes == 0:
            self._frame_started = None
        elif payloads or self._frame_started is None:
            self._frame_started = now  # a new frame began in this receive
        if payloads:
            self._open_into_backlog(payloads)
            self._heard_by = self.server.poller.heard_by
        self._received_at = now
        return self.on_opened

    def on_opened(self) -> None:
        """What `on_received` opened, executed (the pass's third stage, perhaps a pass
        later: a pass executes for a bounded time)."""
        if self.closed or self._reading_ended:
            # Gone or draining meanwhile: the drain counted what was in flight when reading
            # ended, so anything executed now would move money for a reply nobody sends.
            self._backlog.clear()
            return
        self._run_backlog(self._received_at)

    def _open_into_backlog(self, payloads: list) -> None:
        open_request = self.session.open_request
        backlog = self._backlog
        for payload in payloads:
            if len(payload) > limits.frame_charged_over_bytes:
                # Decoded before its request can be judged: once its tag verifies (a stranger
                # behind a replayed hello spends nothing of a till's), let in only while its
                # credential's budget has room, its bytes' worth spent now whatever then
                # becomes of it (one key's frames of tiny nested lists, bad at their last
                # byte, took the loop from every other till). Let in here, it runs:
                # `_execute_backlog` spends what its request costs beyond that.
                paid = len(payload) // limits.request_cost_frame_bytes
                message, failure = open_request(
                    payload, lambda: self.budget.take(time.perf_counter(), paid))
                backlog.append((message, failure, paid))
                if getattr(failure, "code", None) == "busy":
                    return      # unread; the session ends `busy` after what came before
                continue
            backlog.append(open_request(payload))
        if self.decoder.failure is not None:     # after the whole frames it came behind
            backlog.append((None, self.decoder.failure))

    def on_room(self) -> None:
        """Replies went out since it paused: run what waits, and read again if all ran."""
        if self._reading_ended:
            return
        now = trio.current_time()
        if self._frame_started is not None:
            self._frame_started = now  # the time we did not read is ours
        self._heard_by = time.perf_counter()
        self._run_backlog(now)

    def on_read_deadline(self) -> None:
        log.info("event=%s who=%s", "read_timeout" if self.decoder.buffered_bytes
                 else "idle_timeout", self.credential.who)
        self._end_reading()

    def _run_backlog(self, now: float) -> None:
        try:
            self._execute_backlog()
        except ProtocolError as error:
            self._end_reading(error)
            return
        if self._reading_ended:
            return
        if self._backlog or self.in_flight >= limits.requests_in_flight_max:
            # Waiting on us, not on the peer: stop reading until replies go out
            # (TCP backpressure, docs/PROTOCOL.md §2.3); no read deadline meanwhile.
            self.read_deadline = float("inf")
            self.server.poller.pause(self)
            return
        deadline = now + self.server.config.idle_timeout_s
        if self._frame_started is not None:
            # A frame begun must be complete this long after its first byte, however
            # slowly the rest trickles in.
            deadline = min(deadline, self._frame_started + limits.frame_complete_timeout_s)
        self.read_deadline = deadline
        self.server.poller.add(self)

    def _end_reading(self, error: ProtocolError | None = None) -> None:
        """EOF, a protocol error or a read deadline: the closing task takes it from here."""
        if error is not None and self._closing_error is None:
            self._closing_error = error
        self._stop_reading()
        if not self._closing and not self._released and self.reader_scope is None:
            self._closing = True
            self.server.start_connection_task(self._close_when_answered)

    def _stop_reading(self) -> None:
        self._reading_ended = True
        self.server.poller.remove(self)

    def stop(self) -> None:
        """Read no more: a hello not finished is abandoned; an open session answers what it
        has in flight, then closes (revocation, a peer gone, the server draining)."""
        if self.reader_scope is not None:
            self.reader_scope.cancel()
        else:
            self._end_reading()

    # ------------------------------------------------------------ lifecycle
    async def open(self) -> None:
        """The hello, in the task that accepted the socket; then the poller has it and this
        task ends (or, refused, the connection is released)."""
        server = self.server
        server.live.add(self)
        server.metrics.connections.labels("pending").inc()
        try:
            with self.reader_scope:
                payloads = await self._receive_hello()
        finally:
            if self.role == "pending":
                self.release()   # refused, timed out, cancelled or failed before a session
        if self.role == "pending":
            return
        self.reader_scope = None
        self._open_into_backlog(payloads)
        self._heard_by = time.perf_counter()   # read with the hello, just now
        # From here one task reads every connection (switch/shell/poller.py); reading's end
        # starts the task that closes this one (`_end_reading`).
        self._run_backlog(trio.current_time())

    async def _close_when_answered(self) -> None:
        """Answer what is in flight (bounded), write what is left, then close."""
        try:
            self._capacity = trio.lowlevel.ParkingLot()
            with trio.move_on_after(limits.drain_timeout_s):
                while self.in_flight and not self.closed:
                    await self._capacity.park()
            if self._closing_error is not None and not self._error_queued:
                self._queue(self.session.encode_error(self._closing_error))
                self._error_queued = True
            # One task waits on the socket at a time: the writer stops, this one finishes.
            writer, self._writer_scope = self._writer_scope, _CLOSING_WRITES
            if writer is not None:
                writer.cancel()
            self.flush()
            # A peer that reads keeps getting its replies, however slowly, as long as each
            # wait for room ends within `send_stall_timeout_s` (`_flush_rest` drops it
            # otherwise), as it would had it not stopped sending. A draining server bounds
            # the whole (its stop must end before the service manager's SIGKILL), and so does
            # a revocation (the credential's sessions end at once, docs/PROTOCOL.md §3).
            self._close_writes = trio.CancelScope()
            if self._close_bounded:
                self._bound_close()
            with self._close_writes:
                while self._unsent and not self.closed:
                    await self._flush_rest()
            if self._unsent and not self.closed:
                # Replies committed but not delivered: the peer was still reading, too
                # slowly for the drain's or the revocation's bound. Said, so that a till
                # missing its last answers can be traced to it.
                log.warning("event=close_cut_short who=%s peer=%s unsent_bytes=%d",
                            self.credential.who, self.peer, len(self._unsent))
            written = not self._unsent and not self.closed
            self.closed = True
            if written:
                await self.transport.close_after_peer()
        finally:
            self.release()

    def end_within_bound(self) -> None:
        """Read no more, answer what is in flight, and write what is left within
        `error_flush_timeout_s` from now (from when the writing starts, if later) however
        the peer reads: a draining switch (its stop must end before the service manager's
        SIGKILL), a revocation (docs/PROTOCOL.md §3). Also a session already closing."""
        self._close_bounded = True
        self.stop()
        self._bound_close()

    def _bound_close(self) -> None:
        if self._close_writes is not None:
            self._close_writes.deadline = min(
                self._close_writes.deadline,
                trio.current_time() + limits.error_flush_timeout_s)

    def release(self) -> None:
        """Give back everything it holds: the socket, its place in the poller and registry,
        its gauges. Once, whichever path ends it (also a server cancelled with it idle)."""
        if self._released:
            return
        self._released = True
        server = self.server
        self.closed = True
        self._set_unsent(b"")
        self._stop_reading()
        if self._writer_scope is not None and self._writer_scope is not _CLOSING_WRITES:
            self._writer_scope.cancel()
        server.live.discard(self)
        server.forget_pending(self)
        if self.role == "pending":
            server.metrics.connections.labels("pending").dec()
        else:
            server.metrics.connections.labels(self.role).dec()
            if self.role == "terminal":
                server.metrics.terminal_connections.labels(
                    self.credential.school, self.credential.kind).dec()
            server.unregister(self)
        self.transport.close()

    async def _receive_hello(self):
        server = self.server
        payloads = []
        with trio.move_on_after(limits.hello_timeout_s):
            while not payloads:
                data = await self.transport.receive(limits.receive_size_bytes)
                if not data:
                    return None
                try:
                    payloads = self.decoder.feed(data)
                except ProtocolError as error:
                    server.metrics.hello_refused(error.code)
                    await self._send_error_and_close(error)
                    return None
        if not payloads:
            return None  # no hello in time: closed without a frame (docs/PROTOCOL.md §2.1)
        try:
            hello = self.session.receive_hello(payloads[0], server.ledger.live_key)
        except ProtocolError as error:
            server.metrics.hello_refused(error.code)
            server.peer_events.failed("hello_refused", code=error.code,
                                      who=bounded(error.who, limits.log_peer_value_chars_max),
                                      peer=self.peer)
            await self._send_error_and_close(error)
            return None
        if server.hello_seen(hello):
            server.metrics.hello_refused("unauthenticated")
            server.peer_events.failed("hello_replayed", who=hello.who, peer=self.peer)
            await self._send_error_and_close(ProtocolError("unauthenticated"))
            return None
        credential = server.ledger.credential(hello.who)
        refused = server.take_place_or_make_room(credential, self.peer)
        if refused is None:
            # Only a hello that signs on uses its nonce up: one refused `busy` may be sent
            # again as it was (docs/PROTOCOL.md §2.1).
            server.note_hello(hello)
        if refused is not None:
            # Logged at a bounded rate: a key's holder can sign on in a loop.
            if refused == "credential":
                server.metrics.hello_refused(_BUSY)
                server.credential_events.failed(
                    "sessions_refused", logging.WARNING, who=credential.who,
                    sessions_max=server.config.sessions_per_credential_max(credential.role),
                    peer=self.peer)
                await self._send_error_and_close(ProtocolError(_BUSY))
            else:
                server.metrics.refused_connections.inc()
                server.credential_events.failed("connection_refused", logging.WARNING,
                                                who=credential.who, signed_on=server.signed_on)
            return None
        reply = {"role": credential.role, "time": server.clock.now_ms()}
        if credential.role == "terminal":
            reply["blacklist"] = server.blacklist_version(credential.school)
        signed_on = False
        try:
            await self.transport.send_all(self.session.accept_hello(hello, reply))
            signed_on = True
        except PeerGone:
            return None
        finally:
            if not signed_on:   # gone or cancelled: the place goes back, and the nonce
                server.give_back_place(credential.who)
                server.forget_hello(hello)
        self.credential = credential
        self.budget = server.budget_of(credential)
        server.forget_pending(self)
        server.metrics.connections.labels("pending").dec()
        self.role = credential.role
        server.metrics.connections.labels(self.role).inc()
        if self.role == "terminal":
            server.metrics.terminal_connections.labels(credential.school, credential.kind).inc()
        server.register(self)
        log.info("event=sign_on who=%s role=%s peer=%s", credential.who, credential.role, self.peer)
        return payloads[1:]

    async def _send_error_and_close(self, error: ProtocolError) -> None:
        with trio.move_on_after(limits.error_flush_timeout_s):
            try:
                await self.transport.send_all(self.session.encode_error(error))
            except PeerGone:
                return
        await self.transport.close_after_peer()

    def _execute_backlog(self) -> None:
        backlog = self._backlog
        server = self.server
        committer = server.committer
        shed = False
        if self.session.state != OPEN:
            backlog.clear()  # ended (revoked, or a protocol error): nothing more runs for it
            return
        budget = self.budget
        wait_max_s = server.config.request_wait_max_s
        while backlog and self.in_flight < limits.requests_in_flight_max:
            if (self.reply_bytes + len(self._unsent) >= limits.connection_reply_bytes_max
                    or server.reply_bytes >= limits.replies_bytes_total_max):
                break  # replies first: the rest waits in the backlog, and we stop reading
            started = time.perf_counter()
            opened = backlog.popleft()
            request = self.session.accept_request(opened)
            large = len(opened) == 3    # let in and paid for its bytes as it was opened
            # Overloaded, or this credential past its budget: say so at once rather than
            # queue without bound (nothing ran, nothing is remembered). A request that may
            # have waited past `request_wait_max_s` to be read is shed rather than served
            # late: past saturation that wait is what grows, and serving it would keep
            # every later request waiting as long.
            if committer.full:
                reason = "queue"
            elif started - self._heard_by > wait_max_s:
                reason = "waited"
            elif not large and not budget.take(started, self._cost(request.message)):
                reason = "budget"
            else:
                reason = None
            if reason is not None:
                self._shed(request, started, reason)
                shed = True
                continue
            if large:
                budget.spend(max(self._cost(request.message) - opened[2], 0))
            reply = dispatch.execute(server.ledger, self.credential, request.message)
            reply["re"] = request.seq
            size = reply_size(reply)
            self.reply_bytes += size
            server.reply_bytes += size
            self.in_flight += 1
            committer.add(self, reply, started, size)
        if shed:
            self.flush()

    def _cost(self, message: dict) -> int:
        kind = message.get("t")     # any value a peer sent: a list is not hashable
        if type(kind) is not str or kind not in COSTLY_KINDS:
            return 1
        return request_cost(message, self._terminals_pushed_to())

    def _terminals_pushed_to(self) -> int:
        """The tills a blacklist change of this credential's would be pushed to: its
        school's (an admin's changes any school's: the most of any)."""
        terminals = self.server.terminals
        school = self.credential.school
        if school is not None:
            return len(terminals.get(school, ()))
        return max(map(len, terminals.values()), default=0)

    def _shed(self, request, started: float, reason: str) -> None:
        reply = {"t": dispatch.reply_type(request.message.get("t")), "re": request.seq,
                 "code": "busy"}
        metrics = self.server.metrics
        metrics.shed_by_reason[reason].inc()
        metrics.observe_reply(reply["t"], "busy", time.perf_counter() - started)
        self._queue(self.session.encode_reply(reply))

    async def _flush_rest(self) -> None:
        with trio.move_on_after(limits.send_stall_timeout_s) as stalled:
            await self.transport.wait_writable()
        if stalled.cancelled_caught:
            log.info("event=dropped_not_reading peer=%s unsent_bytes=%d", self.peer,
                     len(self._unsent))
            self._peer_gone()
            return
        try:
            self._set_unsent(self.transport.send_now(self._unsent))
        except PeerGone:
            self._peer_gone()
            return
        self._room()  # room again for replies that wait to be executed

    async def _writer(self, scope: trio.CancelScope) -> None:
        """Started when the kernel's send buffer was full: waits for it to drain, then ends.
        Only while it is still the connection's writer: the closing task, woken in the step
        that started this one, may have run first and taken the socket over. Its cancel
        reaches this task only at a checkpoint, and trio refuses a second wait on one
        socket before it checks for a cancel (the replies were then lost)."""
        with scope:
            while self._writer_scope is scope and self._unsent and not self.closed:
                await self._flush_rest()
        if self._writer_scope is scope:
            self._writer_scope = None


class Server:
    def __init__(self, store, ledger, config, clock, metrics: Metrics | None = None):
        self.store = store
        self.ledger = ledger
        self.config = config
        self.clock = clock
        self.metrics = metrics or Metrics()
        self.committer = Committer(store, ledger, self.metrics, config.batch_requests_max,
                                   config.batch_wait_s, self._batch_done)
        self.sessions: dict[str, set] = {}
        # Terminals' sessions by school: a blacklist change is pushed to its school's alone,
        # and what a change may cost its sender is counted by them (`request_cost`).
        self.terminals: dict[str, set] = {}
        self.live: set = set()                # every connection not released yet
        # Places taken by sessions and by hellos whose reply is being written, in all and
        # per credential id (`take_place`).
        self.signed_on = 0
        self._places: dict[str, int] = {}
        self._hello_nonces = collections.OrderedDict()   # (who, nonce) signed on, oldest first
        self._pending: dict = {}              # connections before hello, oldest first
        self._pending_by_address: dict = {}   # address -> its pending connections, oldest first
        self._budgets: dict = {}              # credential id -> RequestBudget
        self.reply_bytes = 0                  # estimated, of replies waiting for their commit
        self.unsent_bytes = 0                 # encoded replies the kernel has not taken yet
        self.poller = ReadinessPoller(self.metrics)
        self._failures_counted = ledger.failures
        # What peers that have not signed on cause, logged at a bounded rate (counted exactly
        # in the metrics): one line per bad hello would let anyone flood the log.
        self.peer_events = FailureLog(log, limits.peer_events_logged_per_minute_max,
                                      logging.INFO, traceback=False)
        # A verified key's refusals (a key holding all its sessions, no place left) have a
        # budget of their own: a flood of bad hellos must not hide which key is the hog.
        self.credential_events = FailureLog(log, limits.peer_events_logged_per_minute_max,
                                            logging.WARNING, traceback=False)
        self._connections_nursery = None
        self._accepting_scope = None
        if hasattr(clock, "jump_observers"):   # a TrustedClock (tests may drive a fake one)
            clock.jump_observers.append(self.metrics.clock_jumped)
        self.metrics.journal_txn.set(store.last_txn)
        self.metrics.holds_open.set(ledger.holds.open_count)
        from switch import __version__
        self.metrics.info.labels(__version__).set(1)
        for school in config.schools:
            self.metrics.blacklist_version.labels(school).set(ledger.blacklist.version(school))
            for kind in ("pos", "water", "meter"):
                self.metrics.terminal_connections.labels(school, kind)

    @property
    def connection_count(self) -> int:
        return len(self.live)

    # ------------------------------------------------------------ registry
    def take_place(self, credential) -> str | None:
        """Take a session's place for `credential`, whose hello verified, before the hello's
        reply is written: that is an await, and the hellos signing on meanwhile must find
        the place taken. None when taken; else why not: "credential" (it holds its most
        sessions) or "connections" (no place left for its role: past `connections_max` only
        an admin's hello takes one of the places kept for admins)."""
        who = credential.who
        held = self._places.get(who, 0)
        if held >= self.config.sessions_per_credential_max(credential.role):
            return "credential"
        places = self.config.connections_max
        if credential.role == "admin":
            places += limits.connections_admin_reserved_max
        if self.signed_on >= places:
            return "connections"
        self._places[who] = held + 1
        self.signed_on += 1
        return None

    def take_place_or_make_room(self, credential, peer) -> str | None:
        """`take_place`; when the credential holds its most sessions, its oldest session that
        has sent no request frame since it connected `silent_session_grace_s` ago is closed
        (`busy`) to make room. A hello copied off the wire verifies (a copy of one that
        signed on is refused before this, `hello_seen`), and replayed it opened sessions
        that held every place of a recharge service or a meter until their idle timeout,
        renewed for ever: such a session never sends a request (its keys need the
        credential's key); the holder's first request follows its hello within a round
        trip, the forwarder pings at once, and an idle till pings."""
        refused = self.take_place(credential)
        if refused != "credential":
            return refused
        # Given a moment to send its first request: a hello's reply and that request cross.
        settled = trio.current_time() - limits.silent_session_grace_s
        silent = [connection for connection in self.sessions.get(credential.who, ())
                  if not connection.session.proven and connection.accepted_at <= settled]
        if not silent:
            return refused
        oldest = min(silent, key=lambda connection: connection.accepted_at)
        self.unregister(oldest)       # its place, now: its release later finds it given back
        oldest.abort(_BUSY)
        self.credential_events.failed("silent_session_closed", logging.WARNING,
                                      who=credential.who, closed_peer=oldest.peer, peer=peer)
        return self.take_place(credential)

    def hello_seen(self, hello) -> bool:
        """Whether this verified hello's nonce signed on already (then it is a copy replayed
        off the wire: a client draws a new one for every hello). The newest
        `hello_nonces_kept_max` are kept; one older, or from before a restart, can be
        replayed once, and its session never proves itself (`take_place_or_make_room`)."""
        return (hello.who, hello.client_nonce) in self._hello_nonces

    def forget_hello(self, hello) -> None:
        """A hello whose reply never reached its client did not sign on: it may be resent."""
        self._hello_nonces.pop((hello.who, hello.client_nonce), None)

    def note_hello(self, hello) -> None:
        seen = self._hello_nonces
        seen[(hello.who, hello.client_nonce)] = None
        if len(seen) > limits.hello_nonces_kept_max:
            seen.popitem(last=False)        # O(1): a plain dict's first key is a scan

    def give_back_place(self, who: str) -> None:
        self.signed_on -= 1
        held = self._places[who] - 1
        if held:
            self._places[who] = held
        else:
            del self._places[who]

    def register(self, connection: Connection) -> None:
        """A session whose place was taken (`take_place`) is open."""
        credential = connection.credential
        self.sessions.setdefault(credential.who, set()).add(connection)
        if credential.role == "terminal":
            self.terminals.setdefault(credential.school, set()).add(connection)

    def unregister(self, connection: Connection) -> None:
        credential = connection.credential
        live = self.sessions.get(credential.who)
        if live is not None and connection in live:
            self.give_back_place(credential.who)
            live.discard(connection)
            if not live:
                del self.sessions[credential.who]
            if credential.role == "terminal":
                of_school = self.terminals[credential.school]
                of_school.discard(connection)
                if not of_school:
                    del self.terminals[credential.school]

    def budget_of(self, credential) -> RequestBudget:
        """One budget per credential, shared by its sessions and kept across reconnects."""
        budget = self._budgets.get(credential.who)
        if budget is None:
            rate_per_s, burst = self.config.request_budget(credential.role)
            budget = self._budgets[credential.who] = RequestBudget(rate_per_s, burst,
                                                                   time.perf_counter())
        return budget

    # ------------------------------------------------------------ memory held for replies
    def release_reply_bytes(self, size: int) -> None:
        was_full = self.reply_bytes >= limits.replies_bytes_total_max
        self.reply_bytes -= size
        if was_full and self.reply_bytes < limits.replies_bytes_total_max:
            self.poller.resume_all()   # connections paused for the server's reply memory

    # ------------------------------------------------------------ sockets before hello
    def _admit_pending(self, connection: Connection) -> bool:
        """Make room for a socket that has not said hello yet; False to refuse it."""
        of_address = self._pending_by_address.get(connection.address, {})
        for waiting, bound in ((of_address, limits.connections_pending_per_address_max),
                               (self._pending, limits.connections_pending_max)):
            if len(waiting) >= bound:
                oldest = next(iter(waiting))
                if connection.accepted_at - oldest.accepted_at < limits.connection_pending_evict_age_s:
                    return False
                self.peer_events.failed("pending_evicted", peer=oldest.peer)
                self.forget_pending(oldest)
                oldest.stop()
        self._pending_by_address.setdefault(connection.address, {})[connection] = None
        self._pending[connection] = None
        return True

    def forget_pending(self, connection: Connection) -> None:
        if self._pending.pop(connection, 0) is None:
            of_address = self._pending_by_address[connection.address]
            del of_address[connection]
            if not of_address:
                del self._pending_by_address[connection.address]

    # ------------------------------------------------------------ after each commit
    def _batch_done(self, effects: list, replies: list) -> None:
        """A batch is durable (or failed, with no effects): act on what the ledger asked for,
        then answer. A fault in one effect or one connection stays there."""
        touched = set()     # connections with frames queued: one write each, below
        for effect in effects:
            if type(effect) is Revocation:
                continue  # after the replies, below
            try:
                self._act(effect, touched)
            except Exception:
                failures.failed("effect_failed", effect=type(effect).__name__)
                self.metrics.failures.labels("effect").inc()
        now = time.perf_counter()
        for connection, reply, started_s, reply_bytes in replies:
            try:
                connection.send_reply(reply, now - started_s, reply_bytes)
            except Exception:
                self._delivery_failed(connection)
            touched.add(connection)
        # One write per connection per commit, straight to the socket.
        for connection in touched:
            try:
                connection.flush()
            except Exception:
                self._delivery_failed(connection)
        # Revocations last: a request committed with its credential's revocation is
        # answered before the session closes.
        for effect in effects:
            if type(effect) is Revocation:
                try:
                    self._revoke_sessions(effect.who)
                except Exception:
                    failures.failed("effect_failed", effect="Revocation")
                    self.metrics.failures.labels("effect").inc()

    def _act(self, effect, touched: set) -> None:
        if type(effect) is JournalAdvanced:
            self.committer.journal_advanced.unpark_all()
        elif type(effect) is BlacklistPush:
            self._push_blacklist(effect.school, effect.message, touched)
        elif type(effect) is PowerCutoff:
            self._cutoff(effect.school, effect.account, effect.balance)
        elif type(effect) is ClosedAccountTap:
            self.metrics.closed_account_taps.labels(effect.school).inc()
        else:
            raise AssertionError(f"unknown effect {effect!r}")

    def _delivery_failed(self, connection) -> None:
        failures.failed("delivery_failed", peer=connection.peer)
        self.metrics.failures.labels("delivery").inc()
        connection.fail()

    def _revoke_sessions(self, who: str) -> None:
        sessions = list(self.sessions.get(who, ()))
        # Logged whether or not the credential was signed on: the log is the record of it.
        log.info("event=revoked who=%s sessions_closed=%d", who, len(sessions))
        for connection in sessions:
            connection.abort("unauthenticated")

    def blacklist_version(self, school: str | None) -> int:
        return self.ledger.blacklist.version(school)

    def _cutoff(self, school: str, account_id: str, balance: int) -> None:
        self.metrics.cutoffs.labels(school).inc()
        log.info("event=cutoff account=%s school=%s balance=%d", account_id, school, balance)

    def _push_blacklist(self, school: str, message: dict, touched: set) -> None:
        # A `fetch` push names no version (docs/PROTOCOL.md §4.13.1): read it from the list.
        self.metrics.blacklist_version.labels(school).set(self.blacklist_version(school))
        # Queued, not written: every change of a commit reaches a till in one write with
        # its replies (a write per change and till made a stream of lost/found the loop's
        # whole work).
        for connection in list(self.terminals.get(school, ())):   # a failure unregisters
            try:
                connection.queue_push(message)
            except Exception:
                self._delivery_failed(connection)
                continue
            touched.add(connection)

    # ------------------------------------------------------------ serving
    async def serve(self, listeners, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Serve on listening sockets (transport.open_listeners) until cancelled or `drain()`;
        returns once everything in flight is answered."""
        async with trio.open_nursery() as nursery:
            await nursery.start(self.committer.run)
            await nursery.start(self.poller.run)
            nursery.start_soon(self._supervised, "housekeeping", self._housekeeping)
            nursery.start_soon(self._supervised, "stale_readers", self._clear_stale_readers)
            # A forwarder per destination: reads committed journal only, never blocks tills.
            for destination in self.config.destinations:
                forwarder = Forwarder(destination, self.store, self.committer, self.metrics)
                nursery.start_soon(self._supervised, f"forwarder:{destination.name}",
                                   forwarder.run)
            try:
                async with trio.open_nursery() as connections:
                    self._connections_nursery = connections
                    self._accepting_scope = trio.CancelScope()
                    task_status.started()
                    with self._accepting_scope:
                        async with trio.open_nursery() as accepting:
                            for listener in listeners:
                                accepting.start_soon(self._accept, listener, connections)
                    for listener in listeners:
                        trio.lowlevel.notify_closing(listener)
                        listener.close()
                    # Stop reading; each connection answers what it has in flight, then
                    # closes (in a task of this nursery, which waits for them all).
                    for connection in list(self.live):
                        connection.end_within_bound()
            finally:
                # Cancelled from outside: idle connections have no task that would see it.
                for connection in list(self.live):
                    connection.release()
            self.committer.kick()  # e.g. a forwarder's position waiting for the next commit
            with trio.move_on_after(limits.drain_timeout_s):
                await self.committer.wait_idle(draining=True)
            nursery.cancel_scope.cancel()

    async def _housekeeping(self) -> None:
        """Switch-initiated work on a timer: expire holds, forget old QR codes."""
        while True:
            await trio.sleep(limits.housekeeping_interval_s)
            self.housekeep()

    async def _clear_stale_readers(self) -> None:
        """A killed `backup` or `audit` leaves its reader slot: the pages of its snapshot
        are never reused and the data file grows by each commit's (20-60 times as fast in an
        outside test) until the next backup or restart. Freed here within a minute."""
        while True:
            await trio.sleep(limits.stale_readers_checked_every_s)
            cleared = self.store.clear_stale_readers()
            if cleared:
                log.warning("event=stale_readers_cleared count=%d cause=a_backup_or_audit_"
                            "killed_while_reading", cleared)

    async def _supervised(self, name: str, run) -> None:
        """Run a task that must keep running; if it raises, log, count and start it again."""
        while True:
            try:
                await run()
                return
            except Exception:
                failures.failed("task_failed", task=name)
                self.metrics.failures.labels("task").inc()
            await trio.sleep(limits.task_restart_delay_s)

    def housekeep(self) -> None:
        ledger = self.ledger
        done = housekeeping.tick(ledger)
        if done.failed:
            self.metrics.failures.labels("task").inc()
        if done.holds_expired:
            self.metrics.holds_expired.inc(done.holds_expired)
        self.metrics.holds_open.set(ledger.holds.open_count)
        self.metrics.commit_queue.set(self.committer.queued)
        if ledger.failures > self._failures_counted:
            self.metrics.failures.labels("request").inc(ledger.failures - self._failures_counted)
            self._failures_counted = ledger.failures
        # A flood that stopped is summed up once its minute is over, not at the next line.
        self.peer_events.summarize()
        self.credential_events.summarize()
        failures.summarize()
        commit_failures.summarize()
        offline_over_cap.summarize()
        self.committer.kick()

    def drain(self) -> None:
        if self._accepting_scope is not None:
            self._accepting_scope.cancel()

    async def _accept(self, listener, connections) -> None:
        while True:
            try:
                sock = await accept(listener)
            except OSError as error:
                if error.errno not in _ACCEPT_RESOURCE_ERRORS:
                    # One connection's trouble (aborted before accept, a firewall's EPERM,
                    # EPROTO): skip it, as trio.serve_listeners does.
                    log.info("event=accept_skipped error=%r", str(error))
                    continue
                # Out of file descriptors or memory: existing sessions keep working;
                # new ones wait, as trio.serve_listeners does.
                log.error("event=accept_failed error=%r pause_ms=%.0f", str(error), limits.accept_pause_s * 1000)
                await trio.sleep(limits.accept_pause_s)
                continue
            try:
                transport = Transport(sock)
                connection = Connection(self, transport, transport.address())
            except Exception:
                failures.failed("connection_failed", peer="?")
                self.metrics.failures.labels("connection").inc()
                sock.close()
                continue
            # Past connections_max a socket may still be an admin's: its hello tells.
            if (self.signed_on >= self.config.connections_max
                    + limits.connections_admin_reserved_max
                    or not self._admit_pending(connection)):
                self.metrics.refused_connections.inc()
                self.peer_events.failed("connection_refused", logging.WARNING,
                                        peer=connection.peer, signed_on=self.signed_on,
                                        pending=len(self._pending))
                transport.close()
                continue
            connections.start_soon(self._connection_task, connection.open)

    def start_connection_task(self, run, *args) -> None:
        """A task for what waits on one connection (its send buffer, its close), owned by
        the connections' nursery; a fault in it ends that connection alone."""
        self._connections_nursery.start_soon(self._connection_task, run, *args)

    async def _connection_task(self, run, *args) -> None:
        """`run`, a method of one connection: its hello, writer or close."""
        try:
            await run(*args)
        except Exception:
            # A fault while serving one connection ends that connection, never the switch.
            connection = run.__self__
            failures.failed("connection_failed", peer=connection.peer)
            self.metrics.failures.labels("connection").inc()
            connection.release()
