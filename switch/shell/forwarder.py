"""Downstream forwarding (docs/PROTOCOL.md §6.3): one task per destination sends the committed
journal in order as bounded `records` frames, one in flight, and keeps each `upto` in LMDB.

It only reads committed records and writes one `meta` key per acknowledgement, which rides
along with the next group commit, so a dead or slow receiver never holds up a till.
"""

import functools
import logging
import math
import random
import re
import time

import msgpack
import trio

from switch import limits
from switch.persistence.keys import decode_position, encode_position, position_key  # noqa: F401
from switch.codec import ClientSession, FrameDecoder, ProtocolError

log = logging.getLogger("switch.forward")

_pack = msgpack.Packer(use_bin_type=True).pack
_CONNECTION_ERRORS = (OSError, trio.BrokenResourceError, trio.ClosedResourceError)


class ForwardError(Exception):
    """This session with the destination is over; `reason` is the metric label."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@functools.lru_cache(maxsize=64)
def _kind_pattern(kinds: frozenset):
    # Any packed `"kind": <wanted kind>` pair: a record without one is not wanted and is
    # skipped without decoding it (a filter may skip a whole frame's scan). A match is
    # decoded and checked exactly, so a look-alike inside another field costs nothing.
    return re.compile(b"|".join(re.escape(_pack("kind") + _pack(kind)) for kind in sorted(kinds)))


def next_frame(store, first_txn: int, kinds) -> tuple[int, list]:
    """(to, records) for a frame starting at `first_txn`; `to` < `first_txn` when nothing
    committed is left. Reads at most one frame's worth of txns, synchronously."""
    last_txn = min(store.last_committed_txn, first_txn + limits.forward_scan_txns_max - 1)
    pattern = None if kinds is None else _kind_pattern(kinds)
    records = []
    records_bytes = 0
    to_txn = first_txn - 1
    for txn, raw in store.committed_journal(first_txn, last_txn):
        assert txn == to_txn + 1, f"journal gap: {to_txn} then {txn}"
        if pattern is not None and pattern.search(raw) is None:
            to_txn = txn
            continue
        record = msgpack.unpackb(raw, raw=False)
        assert record["txn"] == txn, (txn, record.get("txn"))
        if kinds is None or record["kind"] in kinds:
            assert len(raw) <= limits.forward_records_bytes_max, (txn, len(raw))
            if (len(records) == limits.forward_records_per_frame_max
                    or records_bytes + len(raw) > limits.forward_records_bytes_max):
                break  # this record starts the next frame
            records.append(record)
            records_bytes += len(raw)
        to_txn = txn
    return to_txn, records


def _first_or_doubling(count: int) -> bool:
    """Whether the `count`-th event of a run is logged loudly: 0, 1, 2, 4, 8, ... so a run
    that goes on for hours writes a line at each doubling, not one a retry."""
    return count & (count - 1) == 0


class Forwarder:
    def __init__(self, destination, store, committer, metrics):
        self.destination = destination
        self.store = store
        self.committer = committer
        self.metrics = metrics
        self.name = destination.name
        self.acked = store.forward_position(self.name)
        self.backoff_initial_s = limits.forward_backoff_initial_s
        self.backoff_max_s = limits.forward_backoff_max_s
        self.sessions = 0
        self.sessions_forwarding = 0    # sessions that took a frame or had nothing to send
        self.rewinds = 0                # in this run (see forward_rewind_run_gap_s)
        self._last_rewind_s = -math.inf
        self._position_unkicked = False
        self._last_kick_s = 0.0
        self._lag = metrics.forward_lag.labels(self.name)
        self._unsolicited = metrics.forward_unsolicited.labels(self.name)
        self._errors = {}
        if self.acked > store.last_txn:
            log.error("event=position_past_journal destination=%s position=%d last_txn=%d "
                      "hint=%s", self.name, self.acked, store.last_txn,
                      "data dir restored from an older copy?")
        self._update_lag()

    # ------------------------------------------------------------------ state
    def _update_lag(self) -> None:
        self._lag.set(self.store.last_txn - self.acked)

    def _count_error(self, reason: str) -> None:
        counter = self._errors.get(reason)
        if counter is None:
            counter = self._errors[reason] = self.metrics.forward_errors.labels(self.name, reason)
        counter.inc()

    def _acknowledge(self, upto: int, first_txn: int) -> bool:
        """Keeps `upto` as the position; whether it was a rewind."""
        rewound = upto < first_txn - 1
        if rewound:
            # The receiver is missing records it once acknowledged (its state was lost or
            # restored): docs/PROTOCOL.md §6.3 says resend from upto + 1, so the position
            # moves back. A receiver can ask that after every frame it takes: as with the
            # failures, the run is counted and logged ever more rarely.
            now_s = time.monotonic()
            if now_s - self._last_rewind_s >= limits.forward_rewind_run_gap_s:
                self.rewinds = 0
            self._last_rewind_s = now_s
            self.rewinds += 1
            log.log(logging.WARNING if _first_or_doubling(self.rewinds) else logging.DEBUG,
                    "event=rewind destination=%s resend_from=%d had=%d rewinds=%d",
                    self.name, upto + 1, first_txn, self.rewinds)
            self._count_error("rewind")
        if upto != self.acked:
            self.acked = upto
            self.store.save_forward_position(self.name, upto)
            self._position_unkicked = True
            self._kick_if_due()
        self._update_lag()
        return rewound

    def _forwarding(self, failures_before: int) -> None:
        """This session forwards (took a frame, or has nothing to send): the run of failures
        before it is over, and said to be, once, however it was logged."""
        self.sessions_forwarding += 1
        if failures_before:
            destination = self.destination
            log.info("event=forward_resumed destination=%s address=%s:%d after_failures=%d "
                     "position=%d", self.name, destination.host, destination.port,
                     failures_before, self.acked)

    def _kick_if_due(self) -> None:
        # Busy switch: the position rides along with the tills' commits. Idle switch: at
        # most one extra commit per interval, so catching up never costs an fsync per frame.
        now_s = time.monotonic()
        if self._position_unkicked and now_s - self._last_kick_s >= \
                limits.forward_position_kick_interval_s:
            self._position_unkicked = False
            self._last_kick_s = now_s
            self.committer.kick()

    # ------------------------------------------------------------------ tasks
    async def run(self) -> None:
        """Forward forever (cancel to stop)."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch)
            await self._connect_forever()

    async def _watch(self) -> None:
        """Keeps the lag current while the destination is down, and commits a position
        that no till's commit has carried."""
        while True:
            with trio.move_on_after(limits.forward_position_kick_interval_s):
                await self.committer.journal_advanced.park()
            self._update_lag()
            self._kick_if_due()

    async def _connect_forever(self) -> None:
        destination = self.destination
        backoff_s = self.backoff_initial_s
        failures = 0
        while True:
            forwarding_before = self.sessions_forwarding
            try:
                await self._session(failures)
            except ForwardError as error:
                reason, detail = error.reason, error.detail
            except ProtocolError as error:
                reason, detail = "protocol", str(error)
            except trio.TooSlowError:
                reason, detail = "timeout", f"no reply within {limits.forward_reply_timeout_s} s"
            except _CONNECTION_ERRORS as error:
                reason, detail = "closed", str(error) or type(error).__name__
            if self.sessions_forwarding > forwarding_before:
                # A rewind or a frame taken back is no progress: only a session that forwarded
                # starts a new run.
                backoff_s = self.backoff_initial_s
                failures = 0
            failures += 1
            self._count_error(reason)
            delay_s = backoff_s / 2 + random.uniform(0, backoff_s / 2)
            log.log(logging.WARNING if _first_or_doubling(failures) else logging.DEBUG,
                    "event=forward_failed destination=%s address=%s:%d reason=%s "
                    "detail=%s failures_in_a_row=%d reconnect_in_s=%.2f", self.name,
                    destination.host, destination.port, reason, detail, failures, delay_s)
            await trio.sleep(delay_s)
            backoff_s = min(backoff_s * 2, self.backoff_max_s)

    async def _session(self, failures_before: int) -> None:
        """One session; `failures_before`: failed sessions since the last that made progress."""
        destination = self.destination
        try:
            with trio.fail_after(limits.forward_connect_timeout_s):
                stream = await trio.open_tcp_stream(destination.host, destination.port)
        except (OSError, trio.TooSlowError) as error:
            raise ForwardError("connect", str(error) or "timeout") from None
        try:
            connection = _Connection(stream)
            session = ClientSession(destination.who, destination.key)
            with trio.fail_after(limits.forward_reply_timeout_s):
                await stream.send_all(session.hello_frame(time.time_ns() // 1_000_000))
                payload = await connection.next_payload()
            try:
                reply = session.receive_hello_reply(payload)
            except ProtocolError as error:
                raise ForwardError("hello", str(error)) from None
            if reply.get("role") != "downstream":
                raise ForwardError("hello", f"role {reply.get('role')!r}, not 'downstream'")
            # A ping at once: a session that has sent a request is the credential's own to a
            # receiver (a replayed hello's never does), while an idle night sends no record.
            # Any answer will do (a receiver may know only `records`: bad_request).
            seq, frame = session.request_frame({"t": "ping"})
            with trio.fail_after(limits.forward_reply_timeout_s):
                await stream.send_all(frame)
                pong = await self._reply(connection, session, seq)
            if pong.get("re") != seq:
                raise ForwardError("protocol", f"ping answered with re={pong.get('re')!r}")
            self.sessions += 1
            # A receiver that signs us on and then refuses every frame would log a sign-on a
            # retry: as with the failures, not every one.
            log.log(logging.INFO if _first_or_doubling(failures_before) else logging.DEBUG,
                    "event=forward_signed_on destination=%s address=%s:%d who=%s "
                    "from_txn=%d failures_before=%d", self.name, destination.host,
                    destination.port, destination.who, self.acked + 1, failures_before)
            forwarding = False
            stalls = 0
            while True:
                if not forwarding and self.store.last_committed_txn <= self.acked:
                    forwarding = True
                    self._forwarding(failures_before)
                while self.store.last_committed_txn <= self.acked:
                    await self.committer.journal_advanced.park()
                self._update_lag()
                first_txn = self.acked + 1
                to_txn, records = next_frame(self.store, first_txn, destination.kinds)
                seq, frame = session.request_frame(
                    {"t": "records", "from": first_txn, "to": to_txn, "records": records})
                with trio.fail_after(limits.forward_reply_timeout_s):
                    await stream.send_all(frame)
                    reply = await self._reply(connection, session, seq)
                upto = _check_reply(reply, seq, first_txn, to_txn)
                rewound = self._acknowledge(upto, first_txn)
                if upto < first_txn:
                    # No progress: do not spin on a receiver that takes nothing, nor on one
                    # that takes a frame and asks for earlier records at the next (the wait
                    # grows with the run of rewinds, which a frame taken does not end).
                    stalls += 1
                    doublings = max(stalls, self.rewinds) if rewound else stalls
                    await trio.sleep(min(self.backoff_initial_s * 2 ** min(doublings, 16),
                                         self.backoff_max_s))
                else:
                    stalls = 0
                    if not forwarding:
                        forwarding = True
                        self._forwarding(failures_before)
        finally:
            await trio.aclose_forcefully(stream)

    async def _reply(self, connection, session, seq: int) -> dict:
        unsolicited = 0
        while True:
            message = session.receive(await connection.next_payload())
            if "push" in message:
                # Nothing a receiver pushes means anything to us, and checking each tag
                # costs the event loop the tills share: a few are tolerated, a flood is not.
                self._unsolicited.inc()
                unsolicited += 1
                if unsolicited > limits.forward_unsolicited_frames_max:
                    raise ForwardError("protocol", f"more than "
                                       f"{limits.forward_unsolicited_frames_max} pushes "
                                       f"while waiting for the reply to seq {seq}")
                continue
            if message.get("t") == "error":
                raise ForwardError("declined", f"error frame {message.get('code')!r}")
            return message


def _check_reply(reply: dict, seq: int, first_txn: int, to_txn: int) -> int:
    if reply.get("re") != seq or reply.get("t") != "records":
        raise ForwardError("protocol", f"reply re={reply.get('re')!r} t={reply.get('t')!r} "
                           f"to records seq {seq}")
    if reply.get("code") != "ok":
        raise ForwardError("declined", f"code {reply.get('code')!r} for {first_txn}..{to_txn}")
    upto = reply.get("upto")
    # upto below from - 1 is a receiver asking to go back (see _acknowledge); above `to`
    # would acknowledge records never sent.
    if type(upto) is not int or not 0 <= upto <= to_txn:
        raise ForwardError("protocol", f"upto {upto!r} for {first_txn}..{to_txn}")
    return upto


class _Connection:
    """Bytes in, whole frame payloads out."""

    def __init__(self, stream):
        self.stream = stream
        self.decoder = FrameDecoder()
        self.payloads: list = []

    async def next_payload(self) -> bytes:
        while not self.payloads:
            data = await self.stream.receive_some(limits.receive_size_bytes)
            if not data:
                raise ForwardError("closed", "receiver closed the connection")
            self.payloads.extend(self.decoder.feed(data))
        return self.payloads.pop(0)
