"""Prometheus metrics of the switch (docs/PROTOCOL.md §7.6), and a tiny trio HTTP endpoint
for them."""

import prometheus_client
import trio
from prometheus_client import (CollectorRegistry, Counter, Gauge, Histogram, PlatformCollector,
                               ProcessCollector, generate_latest)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

# Authorizations take well under a millisecond: the default buckets (from 5 ms) see nothing.
LATENCY_BUCKETS_S = (0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005,
                     0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
# `*_created` series double the exposition and no dashboard of ours reads them.
prometheus_client.disable_created_metrics()

http_request_bytes_max = 8192
http_timeout_s = 5.0


class Metrics:
    def __init__(self):
        self.registry = registry = CollectorRegistry()
        self.requests = Counter("switch_requests", "Requests answered, by type and result code",
                                ["type", "code"], registry=registry)
        self.request_duration = Histogram("switch_request_duration_seconds",
                                          "Frame in to reply out", ["type"],
                                          buckets=LATENCY_BUCKETS_S, registry=registry)
        self.commit_batch_size = Histogram("switch_commit_batch_size",
                                           "Requests answered per group commit",
                                           buckets=BATCH_SIZE_BUCKETS, registry=registry)
        self.commit_duration = Histogram("switch_commit_duration_seconds",
                                         "LMDB write transaction and fsync of one batch",
                                         buckets=LATENCY_BUCKETS_S, registry=registry)
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
        self.refused_connections = Counter("switch_refused_connections",
                                           "Connections closed at accept (limit reached)",
                                           registry=registry)
        self.terminal_connections = Gauge("switch_terminal_connections",
                                          "Signed-on terminal sessions by school and kind",
                                          ["school", "kind"], registry=registry)
        self.commit_queue = Gauge("switch_commit_queue_requests",
                                  "Requests executed and waiting for the next commit",
                                  registry=registry)
        self.blacklist_version = Gauge("switch_blacklist_version", "Current blacklist version",
                                       ["school"], registry=registry)
        self.cutoffs = Counter("switch_power_cutoffs", "Dorm rooms whose power was cut off",
                               ["school"], registry=registry)
        self.info = Gauge("switch_build_info", "Version of the running switch", ["version"],
                          registry=registry)
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        for role in ("pending", "terminal", "service", "admin"):
            self.connections.labels(role)
        # labels() costs ~3 µs; the hot path looks children up in these dicts instead.
        self._request_children = {}
        self._duration_children = {}

    def observe_reply(self, request_type: str, code: str, seconds: float) -> None:
        key = (request_type, code)
        child = self._request_children.get(key)
        if child is None:
            child = self._request_children[key] = self.requests.labels(request_type, code)
        child.inc()
        histogram = self._duration_children.get(request_type)
        if histogram is None:
            histogram = self._duration_children[request_type] = \
                self.request_duration.labels(request_type)
        histogram.observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


async def serve_metrics(metrics: Metrics, listeners, task_status=trio.TASK_STATUS_IGNORED):
    async def handle(stream):
        try:
            with trio.move_on_after(http_timeout_s):
                received = b""
                while b"\r\n\r\n" not in received and len(received) < http_request_bytes_max:
                    data = await stream.receive_some(4096)
                    if not data:
                        return
                    received += data
                if not received.startswith(b"GET "):
                    await stream.send_all(b"HTTP/1.1 405 Method Not Allowed\r\n"
                                          b"Content-Length: 0\r\nConnection: close\r\n\r\n")
                    return
                body = metrics.exposition()
                head = (f"HTTP/1.1 200 OK\r\nContent-Type: {CONTENT_TYPE_LATEST}\r\n"
                        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
                await stream.send_all(head + body)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await stream.aclose()

    await trio.serve_listeners(handle, listeners, task_status=task_status)
