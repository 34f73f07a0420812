"""A request budget per credential: a token bucket, so one credential cannot take the
switch's whole capacity (or fill its disk with remembered declines)."""


class RequestBudget:
    """`rate_per_s` requests a second on average, bursts of up to `burst`."""

    __slots__ = ("rate_per_s", "burst", "_tokens", "_updated_s")

    def __init__(self, rate_per_s: float, burst: int, now_s: float):
        assert rate_per_s > 0 and burst >= 1, (rate_per_s, burst)
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._tokens = float(burst)
        self._updated_s = now_s

    def take(self, now_s: float) -> bool:
        """Spend one request; False (and nothing spent) when the budget is used up."""
        tokens = self._tokens + (now_s - self._updated_s) * self.rate_per_s
        if tokens > self.burst:
            tokens = self.burst
        self._updated_s = now_s
        if tokens < 1.0:
            self._tokens = tokens
            return False
        self._tokens = tokens - 1.0
        return True
