"""What the run measured: latency histograms (HdrHistogram), counts per request type and
result code, a per-second series, and the odd events worth a line in the report."""

from collections import Counter

from hdrh.histogram import HdrHistogram

from onecard_sim import limits

PERCENTILES = (50.0, 90.0, 99.0, 99.9)


def new_histogram() -> HdrHistogram:
    return HdrHistogram(limits.latency_lowest_us, limits.latency_highest_us,
                        limits.latency_significant_digits)


def _clamp_us(seconds: float) -> int:
    us = int(seconds * 1_000_000)
    if us < limits.latency_lowest_us:
        return limits.latency_lowest_us
    if us > limits.latency_highest_us:
        return limits.latency_highest_us
    return us


def summary_ms(histogram: HdrHistogram) -> dict:
    count = histogram.get_total_count()
    if not count:
        return {"count": 0, "p50": None, "p90": None, "p99": None, "p99_9": None, "max": None}
    values = histogram.get_percentile_to_value_dict(list(PERCENTILES))
    return {"count": count,
            "p50": values[50.0] / 1000, "p90": values[90.0] / 1000, "p99": values[99.0] / 1000,
            "p99_9": values[99.9] / 1000, "max": histogram.get_max_value() / 1000}


class Stats:
    """Shared by every terminal task (one thread, no locks)."""

    def __init__(self):
        self.codes = Counter()            # (type, code) -> replies
        self.total = new_histogram()      # every measured reply of the run
        self.interval = new_histogram()   # since the last tick
        self.by_type: dict[str, HdrHistogram] = {}
        self.deferred = new_histogram()   # requests that waited for a reconnection
        self.resolved = new_histogram()   # uncertain requests resent after a reconnection
        self.replies = 0
        self.replies_in_window = 0
        self.ok_in_window = 0
        self.ok = 0
        self.interval_replies = 0
        self.interval_ok = 0
        self.interval_offered = 0
        self.offered = 0
        self.per_second: list = []
        self.errors = Counter()           # connection-level trouble, unexpected replies
        self.events = Counter()           # noteworthy things: replays, cutoffs, skipped taps...
        self.offline_codes = Counter()    # per-record results of offline uploads
        self.window_end = float("inf")

    def histogram_of(self, request_type: str) -> HdrHistogram:
        histogram = self.by_type.get(request_type)
        if histogram is None:
            histogram = self.by_type[request_type] = new_histogram()
        return histogram

    def reply(self, request_type: str, code: str, latency_s: float, now: float,
              measured: bool = True) -> None:
        self.codes[(request_type, code)] += 1
        self.replies += 1
        self.interval_replies += 1
        in_window = now <= self.window_end
        if in_window:
            self.replies_in_window += 1
        if code == "ok":
            self.ok += 1
            self.interval_ok += 1
            if in_window:
                self.ok_in_window += 1
        if measured:
            us = _clamp_us(latency_s)
            self.interval.record_value(us)
            self.histogram_of(request_type).record_value(us)

    def offered_arrival(self) -> None:
        self.offered += 1
        self.interval_offered += 1

    def tick(self, second: int, extra: dict) -> dict:
        """Close one second of the per-second series."""
        point = {"t": second, "replies": self.interval_replies, "ok": self.interval_ok,
                 "offered": self.interval_offered}
        if self.interval.get_total_count():
            values = self.interval.get_percentile_to_value_dict([50.0, 99.0])
            point.update(p50_ms=values[50.0] / 1000, p99_ms=values[99.0] / 1000,
                         max_ms=self.interval.get_max_value() / 1000)
        else:
            point.update(p50_ms=None, p99_ms=None, max_ms=None)
        point.update(extra)
        self.total.add(self.interval)
        self.interval.reset()
        self.interval_replies = self.interval_ok = self.interval_offered = 0
        self.per_second.append(point)
        return point

    def flush(self) -> None:
        """Fold the unfinished interval into the totals (end of run)."""
        if self.interval.get_total_count():
            self.total.add(self.interval)
            self.interval.reset()

    def running_p99_ms(self) -> float | None:
        """p99 of everything so far, for the progress line."""
        merged = new_histogram()
        merged.add(self.total)
        merged.add(self.interval)
        if not merged.get_total_count():
            return None
        return merged.get_value_at_percentile(99.0) / 1000

    def declines(self) -> int:
        return sum(n for (_, code), n in self.codes.items() if code not in ("ok", "busy"))

    def error_count(self) -> int:
        return sum(self.errors.values()) + sum(
            n for (_, code), n in self.codes.items() if code in ("internal", "bad_request"))

    def by_code(self) -> dict:
        result = Counter()
        for (_, code), n in self.codes.items():
            result[code] += n
        return dict(sorted(result.items(), key=lambda item: -item[1]))

    def by_type_and_code(self) -> dict:
        result: dict = {}
        for (request_type, code), n in sorted(self.codes.items()):
            result.setdefault(request_type, {})[code] = n
        return result
