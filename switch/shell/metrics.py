"""Prometheus metrics of the switch (docs/PROTOCOL.md §7.6), and a tiny trio HTTP endpoint
for them."""

import logging
import math
from bisect import bisect_left

import prometheus_client
import trio
from prometheus_client import (CollectorRegistry, Counter, Gauge, Histogram, PlatformCollector,
                               ProcessCollector, generate_latest)
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.utils import floatToGoString

from switch import limits
from switch.core import codes
from switch.ledger.schema import SCHEMAS

log = logging.getLogger("switch.metrics")

# Authorizations take well under a millisecond: the default buckets (from 5 ms) see nothing.
LATENCY_BUCKETS_S = (0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005,
                     0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
# `*_created` series double the exposition and no dashboard of ours reads them.
prometheus_client.disable_created_metrics()

# The `phase` label of switch_commit_phase_seconds, in the order a commit passes them.
COMMIT_PHASES = ("to_worker", "write", "to_loop")
# Where a contained fault can happen: the `where` label of switch_failures_total.
FAILURE_PLACES = ("request", "connection", "delivery", "effect", "commit", "task")

# Label values come only from these sets: a peer's made-up `t` must not become a series
# (each costs memory for good and time at every scrape).
UNKNOWN = "unknown"
REQUEST_TYPES = frozenset(SCHEMAS) | {"error", "ping"}
RESULT_CODES = frozenset(codes.CODE_NAMES) | {
    codes.UNAUTHENTICATED, codes.VERSION_UNSUPPORTED, codes.MAC_INVALID, codes.SEQ_INVALID,
    codes.FRAME_INVALID, codes.FRAME_TOO_LARGE}


# Why a first frame was refused (switch_hellos_refused_total), docs/PROTOCOL.md §2.1.
HELLO_CODES = (codes.UNAUTHENTICATED, codes.VERSION_UNSUPPORTED, codes.FRAME_INVALID,
               codes.FRAME_TOO_LARGE, codes.CODE_NAMES[codes.BUSY])

# Why a request was answered `busy` without running (switch_shed_requests_total).
SHED_REASONS = ("queue", "waited", "budget")

class ReplyObservations:
    """`switch_requests_total{type,code}` and `switch_request_duration_seconds{type}`, kept
    as plain counts. Every reply is observed, so the figures are exact; but an observation
    is a dict update and a bisect, not prometheus-client's lock and loop (about 3 µs a
    reply, measured), and the families are built only when scraped."""

    def __init__(self, registry):
        self._counts: dict = {}       # (type, code) -> replies
        self._buckets: dict = {}      # type -> [count per bucket, +Inf last]
        self._sums: dict = {}         # type -> seconds
        registry.register(self)

    def observe(self, request_type: str, code: str, seconds: float) -> None:
        key = (request_type, code)
        counts = self._counts
        counts[key] = counts.get(key, 0) + 1
        buckets = self._buckets.get(request_type)
        if buckets is None:
            buckets = self._buckets[request_type] = [0] * (len(LATENCY_BUCKETS_S) + 1)
            self._sums[request_type] = 0.0
        buckets[bisect_left(LATENCY_BUCKETS_S, seconds)] += 1
        self._sums[request_type] += seconds

    def collect(self):
        # Runs on the exposition's worker thread: copies are taken first (each copy is one
        # step under the GIL) so the event loop may go on counting meanwhile.
        requests = CounterMetricFamily("switch_requests", "Requests answered, by type and "
                                       "result code", labels=["type", "code"])
        for (request_type, code), count in list(self._counts.items()):
            requests.add_metric([request_type, code], count)
        yield requests
        duration = HistogramMetricFamily("switch_request_duration_seconds",
                                         "Frame in to reply out", labels=["type"])
        sums = dict(self._sums)
        for request_type, buckets in list(self._buckets.items()):
            cumulative, running = [], 0
            for bound, count in zip(LATENCY_BUCKETS_S + (math.inf,), list(buckets)):
                running += count
                cumulative.append((_bucket_label(bound), running))
            duration.add_metric([request_type], cumulative, sums.get(request_type, 0.0))
        yield duration


def _bucket_label(bound: float) -> str:
    return floatToGoString(bound)


class Metrics:
    def __init__(self):
        self.registry = registry = CollectorRegistry()
        self.replies = ReplyObservations(registry)
        self.commit_batch_size = Histogram("switch_commit_batch_size",
                                           "Requests answered per group commit",
                                           buckets=BATCH_SIZE_BUCKETS, registry=registry)
        self.commit_duration = Histogram("switch_commit_duration_seconds",
                                         "LMDB write transaction and fsync of one batch",
                                         buckets=LATENCY_BUCKETS_S, registry=registry)
        # Where a commit's time goes: waiting for the worker thread to take the batch (and
        # the GIL), the write transaction with its fsync, and waiting for the event loop to
        # take the result back. A slow disk shows in the second; a busy loop in the others.
        commit_phase = Histogram("switch_commit_phase_seconds",
                                 "One group commit's time by phase: to_worker, write, to_loop",
                                 ["phase"], buckets=LATENCY_BUCKETS_S, registry=registry)
        self.commit_phase = {phase: commit_phase.labels(phase) for phase in COMMIT_PHASES}
        self.commit_failures = Counter("switch_commit_failures",
                                       "Group commits that failed and were answered internal",
                                       registry=registry)
        self.connections = Gauge("switch_connections", "Inbound connections by role",
                                 ["role"], registry=registry)
        self.journal_txn = Gauge("switch_journal_txn", "The last txn written", registry=registry)
        self.holds_open = Gauge("switch_holds_open", "Holds neither completed, voided nor expired",
                                registry=registry)
        self.holds_expired = Counter("switch_holds_expired", "Holds released by the switch at "
                                     "their timeout", registry=registry)
        self.forward_lag = Gauge("switch_forward_lag_records",
                                 "Last txn written less the destination's acknowledged position",
                                 ["destination"], registry=registry)
        self.forward_errors = Counter("switch_forward_errors",
                                      "Forwarding failures by destination and reason (connect, "
                                      "hello, closed, timeout, protocol, declined, rewind)",
                                      ["destination", "reason"], registry=registry)
        self.map_used = Gauge("switch_lmdb_map_used_bytes", "LMDB pages in use", registry=registry)
        self.map_size = Gauge("switch_lmdb_map_size_bytes", "LMDB map size", registry=registry)
        # What the write-back rounds hold in memory (persistence/writeback.py): at a million
        # accounts up to about a million writes, hundreds of MB, so an operator sees it.
        self.write_back_held = Gauge("switch_write_back_held_writes",
                                     "Account records and remembered ids committed to a log "
                                     "and held in memory until written back",
                                     registry=registry)
        self.write_back_round = Gauge("switch_write_back_round_writes",
                                      "Logged writes that end a round of account records "
                                      "(lengthened by a large accounts table)",
                                      registry=registry)
        self.refused_connections = Counter("switch_refused_connections",
                                           "Connections closed for want of a session's place "
                                           "(at accept, or after their hello)",
                                           registry=registry)
        self.hellos_refused = Counter("switch_hellos_refused",
                                      "First frames refused with an error frame, by code "
                                      "(every one, however few are logged)", ["code"],
                                      registry=registry)
        self.terminal_connections = Gauge("switch_terminal_connections",
                                          "Signed-on terminal sessions by school and kind",
                                          ["school", "kind"], registry=registry)
        self.commit_queue = Gauge("switch_commit_queue_requests",
                                  "Requests executed and waiting for the next commit",
                                  registry=registry)
        self.shed = Counter("switch_shed_requests",
                            "Requests answered busy without running, by why: queue (the "
                            "commit queue was full), waited (it may have waited longer than "
                            "request_wait_max_s to be read: past saturation), budget (its "
                            "credential's request budget was spent)", ["reason"],
                            registry=registry)
        self.blacklist_version = Gauge("switch_blacklist_version", "Current blacklist version",
                                       ["school"], registry=registry)
        self.cutoffs = Counter("switch_power_cutoffs", "Dorm rooms whose power was cut off",
                               ["school"], registry=registry)
        self.closed_account_taps = Counter(
            "switch_offline_closed_account_taps", "Offline taps refused account_closed and "
            "kept for the operator to collect by hand", ["school"], registry=registry)
        self.failures = Counter("switch_failures",
                                "Faults of the switch contained to where they happened (request, "
                                "connection, delivery, effect, commit, task), each logged",
                                ["where"], registry=registry)
        self.info = Gauge("switch_build_info", "Version of the running switch", ["version"],
                          registry=registry)
        self.forward_unsolicited = Counter("switch_forward_unsolicited_frames",
                                           "Frames a receiver sent that were not the reply "
                                           "awaited (pushes)", ["destination"],
                                           registry=registry)
        self.endpoint_failures = Counter("switch_metrics_endpoint_failures",
                                         "Metrics HTTP connections ended by an unexpected "
                                         "exception (logged with its traceback)",
                                         registry=registry)
        self.endpoint_refused = Counter("switch_metrics_endpoint_refused",
                                        "Metrics HTTP connections closed to make room for "
                                        "a new one (limit reached): the oldest still "
                                        "sending its request, else the oldest",
                                        registry=registry)
        self.clock_jumps = Counter("switch_clock_jumps",
                                   "Wall-clock readings that jumped away from the monotonic "
                                   "clock and were not believed, by direction",
                                   ["direction"], registry=registry)
        self.clock_jump = Gauge("switch_clock_jump_seconds",
                                "The last clock jump's size (negative: back)", registry=registry)
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        for role in ("pending", "terminal", "service", "admin"):
            self.connections.labels(role)
        # Past saturation every shed request counts one: its child found once, not per request.
        self.shed_by_reason = {reason: self.shed.labels(reason) for reason in SHED_REASONS}
        for where in FAILURE_PLACES:
            self.failures.labels(where)
        for direction in ("forward", "back"):
            self.clock_jumps.labels(direction)
        self._hellos_refused = {code: self.hellos_refused.labels(code) for code in HELLO_CODES}
        self._exposition = b""
        self._exposition_built_s = -math.inf
        self._exposition_lock = trio.Lock()

    def hello_refused(self, code: str) -> None:
        counter = self._hellos_refused.get(code)
        if counter is None:   # a code this table does not know yet: its own series
            counter = self._hellos_refused[code] = self.hellos_refused.labels(code)
        counter.inc()

    def observe_reply(self, request_type: str, code: str, seconds: float) -> None:
        # Label values come only from known sets (a peer's made-up `t` is "unknown").
        if not _member(request_type, REQUEST_TYPES):
            request_type = UNKNOWN
        if not _member(code, RESULT_CODES):
            code = UNKNOWN
        self.replies.observe(request_type, code, seconds)

    def clock_jumped(self, direction: str, size_s: float) -> None:
        self.clock_jumps.labels(direction).inc()
        self.clock_jump.set(size_s)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    async def cached_exposition(self) -> bytes:
        """The exposition, rebuilt in a worker thread when older than
        `metrics_exposition_age_s_max`, one rebuild at a time: a flood of scrapes costs
        the event loop (and so the tills) next to nothing."""
        async with self._exposition_lock:
            if trio.current_time() - self._exposition_built_s > \
                    limits.metrics_exposition_age_s_max:
                self._exposition = await trio.to_thread.run_sync(self.exposition)
                self._exposition_built_s = trio.current_time()
            return self._exposition


def _member(value, known: frozenset) -> bool:
    return type(value) is str and value in known


async def serve_metrics(metrics: Metrics, listeners, task_status=trio.TASK_STATUS_IGNORED):
    """Serve GET (any path) with the cached exposition. At most `metrics_connections_max`
    connections: a new one past it closes the oldest still sending its request head, else the
    oldest of all. A scraper sends its request at once and is answered from the cache, so
    what is left waiting is a socket held open, not a scrape: closing it, not the newcomer,
    means 8 held sockets cannot lock Prometheus out. The head must be in within
    `metrics_request_head_timeout_s`; a connection lives at most
    `metrics_connection_timeout_s` whatever it does."""
    connections: dict = {}   # cancel scope -> its request head is in; oldest first

    async def handle(stream):
        if len(connections) >= limits.metrics_connections_max:
            waiting = [scope for scope, head_in in connections.items() if not head_in]
            oldest = waiting[0] if waiting else next(iter(connections))
            del connections[oldest]
            oldest.cancel()
            metrics.endpoint_refused.inc()
        scope = trio.CancelScope(
            deadline=trio.current_time() + limits.metrics_connection_timeout_s)
        connections[scope] = False
        head = None
        try:
            with scope:
                with trio.move_on_after(limits.metrics_request_head_timeout_s):
                    head = await _request_head(stream)
                if head is not None and scope in connections:
                    connections[scope] = True
                    await _answer(metrics, stream, head)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except Exception:
            # One scrape's bad luck (or our bug) must not end the switch: this connection only.
            metrics.endpoint_failures.inc()
            log.exception("event=metrics_connection_failed")
        finally:
            connections.pop(scope, None)
            await trio.aclose_forcefully(stream)

    await trio.serve_listeners(handle, listeners, task_status=task_status)


async def _request_head(stream) -> bytes | None:
    """What came up to the end of the head or the size bound; None if the peer closed."""
    received = b""
    while b"\r\n\r\n" not in received and len(received) < limits.metrics_request_bytes_max:
        data = await stream.receive_some(limits.metrics_request_bytes_max - len(received))
        if not data:
            return None
        received += data
    return received


async def _answer(metrics: Metrics, stream, request_head: bytes) -> None:
    if not request_head.startswith(b"GET "):
        await stream.send_all(b"HTTP/1.1 405 Method Not Allowed\r\n"
                              b"Content-Length: 0\r\nConnection: close\r\n\r\n")
        return
    body = await metrics.cached_exposition()
    response_head = (f"HTTP/1.1 200 OK\r\nContent-Type: {CONTENT_TYPE_LATEST}\r\n"
                     f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
    await stream.send_all(response_head + body)
