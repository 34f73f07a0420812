"""The terminals: one trio task and one connection per credential, no task per request.

A terminal runs jobs (a tap, a shower, a meter reading, a recharge) in `slots`
(a till has one: one tap at a time). In open loop, jobs arrive on the terminal's own
lunch-rush schedule and wait for a free slot, and latency runs from the arrival
(the intended time), so coordinated omission is corrected. In closed loop a slot
starts its next job as soon as the last one finishes.

When the connection dies, requests in flight become uncertain; after sign-on they
are resent with the same ids (the switch replays or processes them). Tills keep
taking taps offline meanwhile and upload their queue right after sign-on.
"""

import heapq
import math
import time
from collections import deque

import trio

from switch.ledger.qr import qr_code

from onecard_sim import limits
from onecard_sim.arrival import Arrivals
from onecard_sim.context import Run
from onecard_sim.population import Credential, Room
from onecard_sim.wire import ConnectionLost, Wire

_inf = math.inf


class Pending:
    """One request of a job (or a job-less follow-up), from creation to its final reply."""

    __slots__ = ("message", "type", "intended", "sent", "job", "dupable", "resent",
                 "deferred", "student", "amount", "expect", "extra")

    def __init__(self, message: dict, intended: float, job: bool = True, student=None,
                 amount: int = 0, expect: str | None = None, extra=None, dupable: bool = False):
        self.message = message
        self.type = message["t"]
        self.intended = intended
        self.sent = intended
        self.job = job
        self.dupable = dupable
        self.resent = False
        self.deferred = False
        self.student = student
        self.amount = amount
        self.expect = expect
        self.extra = extra


class FixedArrivals:
    """A fixed list of arrival times (the card office's `lost` reports)."""

    def __init__(self, times):
        self._times = deque(sorted(times))

    def next(self) -> float:
        return self._times.popleft() if self._times else _inf


class Terminal:
    kind = "?"
    supports_blacklist = False
    open_loop_slots = 1
    keeps_arrivals_while_down = False   # else arrivals while disconnected are lost (or offline)

    def __init__(self, run: Run, credential: Credential, index: int, rate_per_s: float = 0.0):
        self.run = run
        self.credential = credential
        self.who = credential.who
        self.index = index
        self.open_loop = run.open_loop
        self.slots = self.open_loop_slots if run.open_loop else 1
        self.rate_per_s = rate_per_s
        self.wire: Wire | None = None
        self.inflight: dict[int, Pending] = {}
        self.ready: deque = deque()
        self.timers: list = []
        self.timer_counter = 0
        self.backlog: deque = deque()
        self.active = 0
        self.last_id = 0
        self.arrivals = None
        self.next_arrival = _inf
        self.idle_until = 0.0
        self.stopping = False
        self.uncertain: list = []
        self.connected_at = 0.0
        self.signed_on_before = False
        self.retry_at = 0.0
        self.backoff_s = limits.reconnect_backoff_initial_s
        self.blacklist_version = 0
        self.blacklist: set = set()
        self.blacklist_held: list | None = None     # pushes held while a catch-up runs
        self.blacklist_loading: set | None = None   # pages of the full list so far
        self.blacklist_first_version = 0            # the version of the first of them
        self.upload_outstanding = 0
        self.upload_state = None        # outage: None, "uploading", "drained"
        self.reconnected = False
        self.last_sent = 0.0
        self.due = _inf                 # when the scheduler will call on_due
        self.outbox: list = []          # signed frames not yet written
        self.sending = False
        self.broken: ConnectionLost | None = None
        self.idle_scope: trio.CancelScope | None = None

    # ------------------------------------------------------------ life cycle
    async def main(self) -> None:
        run = self.run
        try:
            ok = False
            try:
                async with run.connect_limiter:
                    for _ in range(3):
                        try:
                            self.wire = await Wire.open(run.address, self.who, self.credential.key)
                            ok = True
                            break
                        except ConnectionLost as error:
                            run.stats.errors[f"sign_on: {error.reason}"] += 1
                            await trio.sleep(0.2)
            finally:
                run.signed_on(ok)
            if ok:
                self._signed_on(trio.current_time(), first=True)
            await run.start.wait()
            self._begin(run.t0)
            while True:
                if self.wire is None:
                    if not await self._reconnect():
                        break
                try:
                    await self._session()
                    break
                except ConnectionLost as error:
                    self._connection_lost(error)
        finally:
            if self.wire is not None:
                self.wire.close()
                self.wire = None
            run.terminal_done()

    def _begin(self, t0: float) -> None:
        self.last_sent = t0
        if self.open_loop and self.rate_per_s > 0:
            self.arrivals = Arrivals(self.run.curve, t0, self.run.seconds, self.rate_per_s,
                                     self.run.rng)
            self.next_arrival = self.arrivals.next()
        elif self.arrivals is not None:   # a fixed schedule, whatever the mode
            self.next_arrival = self.arrivals.next()

    def new_id(self) -> int:
        self.last_id += 1
        return self.last_id

    # ------------------------------------------------------------ connected
    async def _session(self) -> None:
        with trio.move_on_at(self.run.drain_end):
            await self._session_loop()
        if trio.current_time() >= self.run.drain_end:
            self._give_up()

    async def _session_loop(self) -> None:
        run = self.run
        wire = self.wire
        scheduler = run.scheduler
        inflight = self.inflight
        self.broken = None
        while True:
            if self.broken is not None:
                raise self.broken
            now = trio.current_time()
            if not self.stopping and now >= run.load_end:
                self._stop()
            scheduler.dispatch(now)     # anyone's arrivals that are due, this one's included
            self._pump(now)
            if self._send_ready(now):
                await self.flush()
            self._schedule_next()
            if self.stopping and not inflight and not self.ready and not self.timers \
                    and not self.uncertain and not self.outbox:
                return
            if inflight:
                messages = await wire.receive(_inf)   # a reply is what comes next
            else:
                # Idle: the scheduler sends for us when something is due; only the end
                # of the run needs to wake us here.
                messages = []
                with trio.CancelScope() as self.idle_scope:
                    messages = await wire.receive(_inf)
                self.idle_scope = None
            if messages:
                now = trio.current_time()
                for message in messages:
                    self._dispatch(message, now)

    def on_due(self, now: float) -> None:
        """Called by the scheduler (from any task) when this terminal's time has come."""
        if self.wire is None or self.broken is not None:
            return      # reconnecting: its own loop keeps time until it is back
        self._pump(now)
        if self._send_ready(now):
            self.run.scheduler.need_flush(self)
        self._schedule_next()

    def on_load_end(self, now: float) -> None:
        if self.wire is None or self.broken is not None:
            return
        if not self.stopping:
            self._stop()
            if self._send_ready(now):
                self.run.scheduler.need_flush(self)
        if self.idle_scope is not None:
            self.idle_scope.cancel()    # nothing in flight: let it notice it is done

    def _schedule_next(self) -> None:
        """Tell the scheduler when this terminal next has something to send by itself."""
        due = _inf
        if not self.stopping:
            if self.active < self.slots:
                if self.arrivals is not None:
                    due = self.next_arrival
                elif not self.open_loop:
                    due = self.idle_until
            if not self.inflight:
                due = min(due, self.last_sent + self.run.behaviour.keepalive_s)
        if self.timers:
            due = min(due, self.timers[0][0])
        if due < _inf:
            self.run.scheduler.at(self, due)

    def _send_ready(self, now: float) -> bool:
        """Sign what is ready and write it without waiting; True when the rest must wait
        for the socket (the caller awaits `flush`)."""
        ready = self.ready
        inflight = self.inflight
        if ready and len(inflight) < limits.requests_in_flight_max:
            wire = self.wire
            outbox = self.outbox
            connected_at = self.connected_at
            while ready and len(inflight) < limits.requests_in_flight_max:
                pending = ready.popleft()
                seq, frame = wire.request_frame(pending.message)
                pending.sent = now
                if pending.intended < connected_at and not pending.resent:
                    pending.deferred = True   # it waited for a reconnection
                inflight[seq] = pending
                outbox.append(frame)
            self.last_sent = now
        if not self.outbox or self.sending:
            return False    # nothing to send, or a flush under way will take it
        outbox = self.outbox
        data = outbox[0] if len(outbox) == 1 else b"".join(outbox)
        outbox.clear()
        try:
            sent = self.wire.raw.send(data)
        except BlockingIOError:
            sent = 0
        except OSError as error:
            self._broke(f"send: {error.strerror or error}")
            return False
        if sent == len(data):
            return False
        outbox.append(data[sent:])
        return True

    async def flush(self) -> None:
        """Write the outbox, waiting for the socket; one writer at a time."""
        if self.sending or self.wire is None:
            return
        self.sending = True
        sock = self.wire.sock
        try:
            while self.outbox:
                data = b"".join(self.outbox)
                self.outbox.clear()
                view = memoryview(data)
                while view:
                    view = view[await sock.send(view):]
        except (OSError, trio.ClosedResourceError) as error:
            self._broke(f"send: {error}")
        finally:
            self.sending = False

    def _broke(self, reason: str) -> None:
        """The socket failed under a send; the terminal's own task turns this into a
        reconnection (wherever the failure happened)."""
        self.outbox.clear()
        if self.broken is None:
            self.broken = ConnectionLost(reason)
        if self.idle_scope is not None:
            self.idle_scope.cancel()

    def _pump(self, now: float) -> None:
        """Move due arrivals, jobs and timers into `ready`."""
        if not self.stopping:
            if self.arrivals is not None:
                stats = self.run.stats
                while self.next_arrival <= now:
                    stats.offered_arrival()
                    if len(self.backlog) >= limits.backlog_per_terminal_max:
                        self.backlog.popleft()
                        stats.events["arrivals_shed_by_simulator"] += 1
                    self.backlog.append(self.next_arrival)
                    self.next_arrival = self.arrivals.next()
                while self.backlog and self.active < self.slots:
                    intended = self.backlog.popleft()
                    pending = self.make_job(intended, now)
                    if pending is not None:
                        self.active += 1
                        self.ready.append(pending)
            elif not self.open_loop and now >= self.idle_until:
                while self.active < self.slots:
                    pending = self.make_job(now, now)
                    if pending is None:
                        self.idle_until = now + 0.1
                        break
                    self.active += 1
                    self.ready.append(pending)
            if now - self.last_sent >= self.run.behaviour.keepalive_s and not self.inflight:
                self.ready.append(Pending({"t": "ping"}, now, job=False))
                self.last_sent = now
        timers = self.timers
        while timers and timers[0][0] <= now:
            self.ready.append(heapq.heappop(timers)[2])

    def later(self, when: float, pending: Pending) -> None:
        self.timer_counter += 1
        heapq.heappush(self.timers, (when, self.timer_counter, pending))

    def end_job(self) -> None:
        self.active -= 1

    def _stop(self) -> None:
        """The run is over: no new jobs; what is under way finishes now."""
        self.stopping = True
        if self.backlog:
            self.run.stats.events["arrivals_unsent_at_end"] += len(self.backlog)
            self.backlog.clear()
        while self.timers:
            self.ready.append(heapq.heappop(self.timers)[2])

    def _give_up(self) -> None:
        """The drain deadline passed: what is left is reported, not waited for."""
        self.run.unresolved += len(self.inflight) + len(self.uncertain) + len(self.ready)
        self.inflight.clear()
        self.uncertain.clear()
        self.ready.clear()
        self.timers.clear()

    # ------------------------------------------------------------ replies
    def _dispatch(self, message: dict, now: float) -> None:
        if "push" in message:
            self.on_push(message, now)
            return
        pending = self.inflight.pop(message.get("re"), None)
        stats = self.run.stats
        if pending is None:
            stats.errors["reply to no request"] += 1
            return
        code = message.get("code")
        if pending.type == "ping":
            stats.reply("ping", code, now - pending.intended, now, measured=False)
            return
        if code == "busy":
            stats.reply(pending.type, "busy", 0.0, now, measured=False)
            self.later(now + limits.busy_retry_s, pending)
            return
        if pending.resent:
            stats.reply(pending.type, code, 0.0, now, measured=False)
            stats.resolved.record_value(max(1, int((now - pending.sent) * 1e6)))
            outage = self.run.outage
            if outage is not None:
                outage.uncertain_resolved += 1
                outage.uncertain_codes[code] = outage.uncertain_codes.get(code, 0) + 1
            self._upload_answered(now)
        elif pending.deferred:
            stats.reply(pending.type, code, 0.0, now, measured=False)
            stats.deferred.record_value(max(1, min(int((now - pending.intended) * 1e6),
                                                   limits.latency_highest_us)))
        else:
            stats.reply(pending.type, code, now - pending.intended, now)
        if code == "bad_request" or code == "internal":
            if stats.errors[f"{pending.type} {code}"] < 3:
                stats.events[f"example {pending.type} {code}: {pending.message!r:.200}"] += 1
            stats.errors[f"{pending.type} {code}"] += 1
        self.on_reply(pending, message, code, now)

    def on_push(self, message: dict, now: float) -> None:
        if message.get("t") == "blacklist":
            self.run.stats.events["blacklist pushes"] += 1
            if not self.supports_blacklist:
                return
            if self.blacklist_held is not None:
                self.blacklist_held.append(message)
            else:
                self._take_blacklist_push(message, now)

    # ---- the blacklist, as docs/PROTOCOL.md §4.13.1 asks of a terminal
    def _take_blacklist_push(self, message: dict, now: float) -> None:
        version = message.get("version")
        if message.get("fetch") or (type(version) is int and version > self.blacklist_version + 1):
            # Cards not in the push, or a version missed: ask for them.
            self.run.stats.events["blacklist catch-ups after a push"] += 1
            self._catch_up_blacklist(now)
        elif version == self.blacklist_version + 1:
            self._apply_blacklist_delta(message)

    def _catch_up_blacklist(self, now: float) -> None:
        if self.blacklist_held is None:
            self.blacklist_held = []
        self.ready.appendleft(Pending({"t": "blacklist", "since": self.blacklist_version},
                                      now, job=False))

    def _apply_blacklist_delta(self, message: dict) -> None:
        self.blacklist.update(message["add"])
        self.blacklist.difference_update(message["remove"])
        self.blacklist_version = message["version"]

    def _blacklist_replied(self, pending: Pending, message: dict, code: str, now: float) -> None:
        if code != "ok":
            # Counted with the other errors; the next push or sign-on asks again.
            self._forget_blacklist_catch_up()
            return
        if "full" not in message:
            self._apply_blacklist_delta(message)
            self._blacklist_caught_up(now)
            return
        self.run.stats.events["blacklist pages"] += 1
        if "after" not in pending.message:
            self.blacklist_loading = set()
            self.blacklist_first_version = message["version"]
        self.blacklist_loading.update(message["full"])
        if message["more"]:
            self.ready.appendleft(Pending({"t": "blacklist", "since": pending.message["since"],
                                           "after": message["full"][-1]}, now, job=False))
            return
        self.blacklist, self.blacklist_loading = self.blacklist_loading, None
        self.blacklist_version = self.blacklist_first_version
        if message["version"] != self.blacklist_first_version:
            # Changed while paging: the delta since the first page's version has it all.
            self._catch_up_blacklist(now)
            return
        self._blacklist_caught_up(now)

    def _forget_blacklist_catch_up(self) -> None:
        self.blacklist_held = None
        self.blacklist_loading = None

    def _blacklist_caught_up(self, now: float) -> None:
        held, self.blacklist_held = self.blacklist_held or [], None
        for message in held:
            if self.blacklist_held is not None:
                break       # a new catch-up began: it covers the rest
            self._take_blacklist_push(message, now)

    def on_reply(self, pending: Pending, message: dict, code: str, now: float) -> None:
        raise NotImplementedError

    def _money(self, pending: Pending, account: str, delta_fen: int) -> None:
        """Count an acknowledged move once, even when the request may be answered twice."""
        ledger = self.run.ledger
        if pending.dupable or pending.resent:
            ledger.apply(account, delta_fen, self.who, pending.message["id"])
        else:
            ledger.apply(account, delta_fen)

    # ------------------------------------------------------------ disconnected
    def _connection_lost(self, error: ConnectionLost) -> None:
        run = self.run
        if run.switch_up:
            run.stats.errors[f"connection lost: {error.reason}"] += 1
        else:
            run.stats.events["connections lost to the outage"] += 1
        if error.code:
            run.stats.errors[f"error frame {error.code}"] += 1
        self.wire.close()
        self.wire = None
        self.outbox.clear()
        self.broken = None
        self.idle_scope = None
        ready = self.ready
        self.ready = deque()
        sent = list(self.inflight.values())
        self.inflight.clear()
        for pending in sent + list(ready):
            if pending.type in ("ping", "blacklist"):
                continue            # asked again after the next sign-on if still needed
            if pending.type == "offline":
                self.requeue_offline(pending)
            elif pending.resent or pending in sent:
                # Sent, fate unknown: resend with the same id once signed on again.
                if not pending.resent and run.outage is not None:
                    run.outage.uncertain += 1
                pending.resent = True
                pending.dupable = True
                self.uncertain.append(pending)
            else:
                self.ready.append(pending)   # never sent: nothing about it is uncertain
        self.retry_at = trio.current_time() + self.backoff_s
        self.upload_outstanding = 0
        # A catch-up cut short starts again after sign-on if the hello says so.
        self._forget_blacklist_catch_up()

    async def _reconnect(self) -> bool:
        """Sign on again with backoff; False when there is nothing left worth connecting for."""
        run = self.run
        while True:
            now = trio.current_time()
            if now >= run.drain_end:
                self._give_up()
                run.unsent_offline += self.offline_queued()
                return False
            if not self.stopping and now >= run.load_end:
                self._stop()
            self.take_while_down(now)
            if self.stopping and not self.uncertain and not self.ready and not self.timers \
                    and not self.offline_queued():
                return False
            if now >= self.retry_at:
                try:
                    self.wire = await Wire.open(run.address, self.who, self.credential.key)
                except ConnectionLost:
                    run.stats.events["reconnect attempts refused"] += 1
                    self.backoff_s = min(self.backoff_s * 2, limits.reconnect_backoff_max_s)
                    self.retry_at = trio.current_time() + self.backoff_s * run.rng.uniform(0.5, 1.0)
                    continue
                self._signed_on(trio.current_time(), first=not self.signed_on_before)
                return True
            wake = min(self.retry_at, run.drain_end, self.down_deadline(now))
            if not self.stopping:
                wake = min(wake, run.load_end)
            await trio.sleep_until(wake)

    def _signed_on(self, now: float, first: bool) -> None:
        wire = self.wire
        self.connected_at = now
        self.backoff_s = limits.reconnect_backoff_initial_s
        version = wire.hello_reply.get("blacklist")
        run = self.run
        outage = run.outage
        if first:
            self.signed_on_before = True
            if type(version) is int:
                self.blacklist_version = version   # flashed with the list of its day
        else:
            if outage is not None and outage.restart_at is not None and not self.reconnected:
                self.reconnected = True
                outage.reconnected += 1
                outage.last_reconnect_at = now
            if self.supports_blacklist and type(version) is int and \
                    version > self.blacklist_version:
                self._catch_up_blacklist(now)
        uploads = self.offline_uploads(now)
        self.upload_outstanding = len(uploads) + len(self.uncertain)
        if self.upload_outstanding and outage is not None and self.upload_state is None:
            self.upload_state = "uploading"
            outage.uploaders += 1
        # Resends first, then the offline queue, then whatever waited: all in one write.
        self.ready.extendleft(reversed(self.uncertain + uploads))
        for pending in self.uncertain:
            pending.sent = now
        self.uncertain = []

    def _upload_answered(self, now: float) -> None:
        if self.upload_outstanding > 0:
            self.upload_outstanding -= 1
            outage = self.run.outage
            if self.upload_outstanding == 0 and outage is not None and \
                    self.upload_state == "uploading":
                self.upload_state = "drained"
                outage.drained += 1
                outage.last_drained_at = now

    # Tills override these four.
    def take_while_down(self, now: float) -> None:
        """Arrivals while disconnected: kept for later, or lost (nobody can be served)."""
        if self.arrivals is None or self.stopping:
            return
        while self.next_arrival <= now:
            if self.keeps_arrivals_while_down:
                self.backlog.append(self.next_arrival)
            else:
                self.run.stats.events[f"{self.kind} arrivals while disconnected"] += 1
            self.next_arrival = self.arrivals.next()

    def down_deadline(self, now: float) -> float:
        return self.next_arrival if self.arrivals is not None and not self.stopping else _inf

    def offline_queued(self) -> int:
        return 0

    def offline_uploads(self, now: float) -> list:
        return []

    def requeue_offline(self, pending: Pending) -> None:
        pass

    def make_job(self, intended: float, now: float) -> Pending | None:
        raise NotImplementedError


# ---------------------------------------------------------------- canteen tills
class Till(Terminal):
    """A canteen till: card taps (PIN above 50 yuan) and QR codes, one at a time; offline
    taps into a local queue while the switch cannot be reached."""

    kind = "pos"
    supports_blacklist = True
    open_loop_slots = 1

    def __init__(self, run, credential, index, rate_per_s=0.0, qr_share=0.0):
        super().__init__(run, credential, index, rate_per_s)
        self.qr_share = qr_share
        self.offline_queue: list = []      # (record, student)
        self.last_tap = None               # (student, amount) of the last card tap sent
        self.offline_seq = 0
        self.next_offline_tap = 0.0

    def _meal_fen(self, rng) -> int:
        # Canteen meals: mostly 3-25 yuan, in 10-fen steps.
        return rng.randrange(300, 2_501, 10)

    def make_job(self, intended: float, now: float) -> Pending:
        run = self.run
        rng = run.rng
        behaviour = run.behaviour
        school = self.credential.school
        qr_students = run.population.qr_students_of[school]
        if qr_students and rng.random() < self.qr_share:
            student = rng.choice(qr_students)
            amount = self._meal_fen(rng)
            nonce = f"{rng.getrandbits(32):08x}"
            code = qr_code(student.qr_secret, student.account, int(time.time()), nonce)
            return Pending({"t": "qr_debit", "qr": code, "amount": amount, "id": self.new_id()},
                           intended, student=student, amount=amount)
        if self.last_tap is not None and rng.random() < behaviour.double_tap_share:
            # The same card at once, for the same meal: a second request, a new id. The
            # switch's double-tap guard (when on) declines it repeat_tap; no money moves.
            student, amount = self.last_tap
            self.last_tap = None
            run.stats.events["double taps sent"] += 1
            return Pending({"t": "debit", "card": student.card, "amount": amount,
                            "id": self.new_id()}, intended, student=student, amount=amount)
        student, expect = run.pick_card(school, now)
        message = {"t": "debit", "card": student.card, "amount": 0, "id": self.new_id()}
        if rng.random() < behaviour.big_meal_share:
            amount = rng.randrange(behaviour.no_pin_fen + 10, 12_001, 10)
            wrong = rng.random() < behaviour.wrong_pin_share
            message["pin"] = f"{(int(student.pin) + 1) % 1_000_000:06d}" if wrong else student.pin
        else:
            amount = self._meal_fen(rng)
        message["amount"] = amount
        if "pin" not in message and expect is None:
            self.last_tap = (student, amount)
        return Pending(message, intended, student=student, amount=amount, expect=expect)

    def on_reply(self, pending: Pending, message: dict, code: str, now: float) -> None:
        run = self.run
        kind = pending.type
        if kind in ("debit", "qr_debit"):
            if code == "ok":
                self._money(pending, pending.student.account, -pending.amount)
            if message.get("replay"):
                run.stats.events["debit replays (resends)"] += 1
            run.check_expectation(pending.expect, code, pending.student, kind)
            if pending.job:
                self.end_job()
        elif kind == "offline":
            self._offline_results(pending, message, code, now)
        elif kind == "blacklist":
            self._blacklist_replied(pending, message, code, now)

    # ---- offline
    def take_while_down(self, now: float) -> None:
        if self.stopping:
            return
        if self.arrivals is not None:
            while self.next_arrival <= now:
                self.run.stats.offered_arrival()
                self._offline_tap()
                self.next_arrival = self.arrivals.next()
        elif not self.open_loop:
            while self.next_offline_tap <= now:
                if self.next_offline_tap:
                    self._offline_tap()
                    self.next_offline_tap += self.run.behaviour.offline_tap_interval_s * \
                        self.run.rng.uniform(0.5, 1.5)
                else:
                    self.next_offline_tap = now + self.run.behaviour.offline_tap_interval_s * \
                        self.run.rng.uniform(0.0, 1.0)

    def down_deadline(self, now: float) -> float:
        if self.stopping:
            return _inf
        if self.arrivals is not None:
            return self.next_arrival
        return self.next_offline_tap if self.next_offline_tap else now

    def _offline_tap(self) -> None:
        """A tap taken without the switch: no PIN possible, so small amounts only, and the
        till's own blacklist (pushed by the switch) refuses lost cards."""
        run = self.run
        outage = run.outage
        if len(self.offline_queue) >= limits.offline_queue_per_terminal_max:
            run.stats.events["offline taps refused: queue full"] += 1
            return
        student = None
        for _ in range(4):
            candidate, expect = run.pick_card(self.credential.school, trio.current_time())
            if expect != "wrong_school":
                student = candidate
                break
        if student is None:
            return
        if student.card in self.blacklist:
            if outage is not None:
                outage.offline_refused_locally += 1
            run.stats.events["offline taps refused by the local blacklist"] += 1
            return
        self.offline_seq += 1
        amount = min(self._meal_fen(run.rng), run.behaviour.no_pin_fen)
        record = {"id": f"OFF-{self.offline_seq}", "card": student.card, "amount": amount,
                  "at": time.time_ns() // 1_000_000}
        self.offline_queue.append((record, student))
        if outage is not None:
            outage.offline_taken += 1
        run.stats.events["offline taps taken"] += 1

    def offline_queued(self) -> int:
        return len(self.offline_queue)

    def offline_uploads(self, now: float) -> list:
        self.next_offline_tap = 0.0
        queue, self.offline_queue = self.offline_queue, []
        uploads = []
        step = limits.offline_records_per_upload_max
        for start in range(0, len(queue), step):
            chunk = queue[start:start + step]
            uploads.append(Pending({"t": "offline", "records": [r for r, _ in chunk]}, now,
                                   job=False, extra=chunk))
        if self.run.outage is not None:
            self.run.outage.offline_requests += len(uploads)
        return uploads

    def requeue_offline(self, pending: Pending) -> None:
        # The upload's fate is unknown: upload the same records again (same ids: replays).
        self.offline_queue = list(pending.extra) + self.offline_queue

    def _offline_results(self, pending: Pending, message: dict, code: str, now: float) -> None:
        run = self.run
        outage = run.outage
        if outage is not None:
            outage.upload_latency.record_value(max(1, int((now - pending.sent) * 1e6)))
        if code != "ok":
            run.stats.errors[f"offline upload {code}"] += 1
            self.offline_queue = list(pending.extra) + self.offline_queue   # try again later
            self._upload_answered(now)
            return
        results = message.get("results") or []
        if len(results) != len(pending.extra):
            run.stats.errors["offline results of the wrong length"] += 1
        for (record, student), result in zip(pending.extra, results):
            result_code = result.get("code")
            run.stats.offline_codes[result_code] += 1
            if result.get("replay"):
                run.stats.offline_codes["(replay)"] += 1
            if result.get("id") != record["id"]:
                run.stats.errors["offline result for another id"] += 1
            if result_code == "ok":
                run.ledger.apply(student.account, -record["amount"], self.who, record["id"])
                if outage is not None:
                    outage.offline_ok += 1
                    outage.offline_replay += bool(result.get("replay"))
                    if result.get("flag") == "after_lost":
                        outage.offline_after_lost += 1
                    if type(result.get("balance")) is int and result["balance"] < 0:
                        outage.offline_overdrawn_accounts.add(student.account)
            elif outage is not None:
                outage.offline_refused += 1
        self._upload_answered(now)


# ---------------------------------------------------------------- hot water
class WaterController(Terminal):
    """A shower room controller: hold on a card or QR code, complete with the metered amount
    (or void when nobody showered). A slot is a hold waiting for its reply; the shower
    itself runs on a head of its own, so a long shower never delays another student's
    hold (that wait would be the bathhouse's, not the switch's)."""

    kind = "water"
    supports_blacklist = True
    open_loop_slots = 4

    def make_job(self, intended: float, now: float) -> Pending:
        run = self.run
        rng = run.rng
        school = self.credential.school
        amount = rng.randrange(800, 3_001, 100)   # at most this much hot water (no PIN)
        qr_students = run.population.qr_students_of[school]
        if qr_students and rng.random() < run.behaviour.qr_shower_share:
            student = rng.choice(qr_students)
            nonce = f"{rng.getrandbits(32):08x}"
            message = {"t": "hold", "qr": qr_code(student.qr_secret, student.account,
                                                   int(time.time()), nonce),
                       "amount": amount, "id": self.new_id()}
            return Pending(message, intended, student=student, amount=amount)
        student, expect = run.pick_card(school, now)
        return Pending({"t": "hold", "card": student.card, "amount": amount, "id": self.new_id()},
                       intended, student=student, amount=amount, expect=expect)

    def on_reply(self, pending: Pending, message: dict, code: str, now: float) -> None:
        run = self.run
        kind = pending.type
        if kind == "hold":
            run.check_expectation(pending.expect, code, pending.student, kind)
            if pending.job:
                self.end_job()
            if code != "ok":
                return
            rng = run.rng
            if self.stopping or not self.open_loop:
                when = now
            else:
                low, high = run.behaviour.shower_seconds
                when = min(now + rng.uniform(low, high), run.load_end)
            if rng.random() < run.behaviour.void_share:
                follow = Pending({"t": "void", "hold": message["hold"], "id": self.new_id()},
                                 when, job=False, student=pending.student)
            else:
                metered = rng.randrange(0, pending.amount + 1, 10)
                follow = Pending({"t": "complete", "hold": message["hold"], "amount": metered,
                                  "id": self.new_id()}, when, job=False,
                                 student=pending.student, amount=metered)
            if when <= now:
                self.ready.append(follow)
            else:
                self.later(when, follow)
        elif kind == "complete":
            if code == "ok":
                self._money(pending, pending.student.account, -pending.amount)
        elif kind == "blacklist":
            self._blacklist_replied(pending, message, code, now)


# ---------------------------------------------------------------- dorm meters
class Meter(Terminal):
    """A building's meter concentrator: electricity and cold-water deductions for its rooms.
    A room whose power was cut uses no electricity until a recharge restores it."""

    kind = "meter"
    open_loop_slots = 4

    def __init__(self, run, credential, index, rate_per_s=0.0, rooms=()):
        super().__init__(run, credential, index, rate_per_s)
        self.rooms: list[Room] = list(rooms)

    def make_job(self, intended: float, now: float) -> Pending | None:
        rng = self.run.rng
        rooms = self.rooms
        if not rooms:
            return None
        room = None
        for _ in range(6):
            candidate = rng.choice(rooms)
            if candidate.power:
                room = candidate
                break
        if room is None:
            powered = [r for r in rooms if r.power]
            if not powered:
                self.run.stats.events["meter readings skipped: every room cut off"] += 1
                return None
            room = rng.choice(powered)
        if room.utility == "both":
            what = "electric" if rng.random() < 0.7 else "water"
        else:
            what = room.utility
        amount = rng.randrange(20, 301)
        return Pending({"t": "meter", "account": room.account, "amount": amount, "what": what,
                        "id": self.new_id()}, intended, amount=amount, extra=room)

    def on_reply(self, pending: Pending, message: dict, code: str, now: float) -> None:
        if code == "ok":
            room = pending.extra
            self._money(pending, room.account, -pending.amount)
            if message.get("cutoff"):
                room.power = False
                self.run.stats.events["cutoffs"] += 1
        if pending.job:
            self.end_job()


# ---------------------------------------------------------------- recharges
class RechargeService(Terminal):
    """WeChat Pay payment notifications turned into `credit`s, the order number as id;
    a few notifications arrive twice (WeChat retries them) and must be paid once."""

    kind = "recharge"
    open_loop_slots = 8

    def __init__(self, run, credential, index, rate_per_s=0.0, day: str = "20260901"):
        super().__init__(run, credential, index, rate_per_s)
        self.day = day

    def make_job(self, intended: float, now: float) -> Pending:
        run = self.run
        rng = run.rng
        pop = run.population
        behaviour = run.behaviour
        room = None
        if pop.rooms and rng.random() < behaviour.room_recharge_share:
            school = rng.choice(("WH", "CUIK"))
            rooms = pop.rooms_of[school] or pop.rooms
            room = rng.choice(rooms)
            if room.power and rng.random() < 0.5:   # a dark room is the one that recharges
                for _ in range(4):
                    candidate = rng.choice(rooms)
                    if not candidate.power:
                        room = candidate
                        break
            account = room.account
            amount = rng.choice((2_000, 3_000, 5_000, 10_000))
        else:
            account = rng.choice(pop.students).account
            amount = rng.choice((5_000, 10_000, 10_000, 20_000, 30_000, 50_000))
        order = f"42000{self.index % 100_000:05d}{self.day}{self.new_id():010d}"
        message = {"t": "credit", "account": account, "amount": amount, "id": order,
                   "source": "wechat"}
        duplicate = rng.random() < behaviour.duplicate_notify_share
        pending = Pending(message, intended, amount=amount, extra=room, dupable=duplicate)
        if duplicate:
            retry_at = now + rng.uniform(0.05, 0.5)
            if self.stopping or retry_at >= run.load_end:
                retry_at = now
            copy = Pending(message, retry_at, job=False, amount=amount, extra=room, dupable=True)
            run.stats.events["recharge notifications sent twice"] += 1
            if retry_at <= now:
                self.ready.append(copy)
            else:
                self.later(retry_at, copy)
        return pending

    def on_reply(self, pending: Pending, message: dict, code: str, now: float) -> None:
        run = self.run
        if code == "ok":
            self._money(pending, pending.message["account"], pending.amount)
            if message.get("replay"):
                run.stats.events["recharge replays (resent after a lost connection)"
                                 if pending.resent else "recharge replays (paid once)"] += 1
            room = pending.extra
            if room is not None and type(message.get("balance")) is int and message["balance"] > 0:
                if not room.power:
                    run.stats.events["restores"] += 1
                room.power = True
        if pending.job:
            self.end_job()


# ---------------------------------------------------------------- card office
class CardOffice(Terminal):
    """The mini-program backend: students report cards lost (挂失) during the run."""

    kind = "office"
    open_loop_slots = 4
    keeps_arrivals_while_down = True

    def __init__(self, run, credential, index, times=()):
        super().__init__(run, credential, index, 0.0)
        self.open_loop = True          # reports come when students notice, whatever the mode
        self.slots = self.open_loop_slots
        self.offsets = list(times)
        self.reported: set = set()

    def _begin(self, t0: float) -> None:
        self.arrivals = FixedArrivals([t0 + offset for offset in self.offsets])
        super()._begin(t0)

    def make_job(self, intended: float, now: float) -> Pending | None:
        run = self.run
        rng = run.rng
        school = rng.choice(("WH", "CUIK"))
        students = run.population.students_of[school]
        if not students:
            return None
        for _ in range(20):
            student = rng.choice(students)
            if student.lost_at is None and student.card not in self.reported:
                break
        else:
            return None
        self.reported.add(student.card)
        return Pending({"t": "lost", "card": student.card, "id": f"LOST-{student.card}"},
                       intended, student=student)

    def on_reply(self, pending: Pending, message: dict, code: str, now: float) -> None:
        run = self.run
        if code == "ok" and pending.student.lost_at is None:
            pending.student.lost_at = now
            run.population.lost_of[pending.student.school].append(pending.student)
            run.stats.events["cards reported lost"] += 1
        self.end_job()
