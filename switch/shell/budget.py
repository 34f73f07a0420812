"""A request budget per credential: a token bucket, so one credential cannot take the
switch's whole capacity (or fill its disk with remembered declines)."""

from switch import limits


class RequestBudget:
    """`rate_per_s` requests a second on average, bursts of up to `burst`."""

    __slots__ = ("rate_per_s", "burst", "_tokens", "_updated_s")

    def __init__(self, rate_per_s: float, burst: int, now_s: float):
        assert rate_per_s > 0 and burst >= 1, (rate_per_s, burst)
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._tokens = float(burst)
        self._updated_s = now_s

    def take(self, now_s: float, cost: int = 1) -> bool:
        """Spend `cost` requests (at most a whole burst, so any request can pass); False
        (and nothing spent) when the budget does not hold them."""
        tokens = self._tokens + (now_s - self._updated_s) * self.rate_per_s
        if tokens > self.burst:
            tokens = self.burst
        self._updated_s = now_s
        if cost > self.burst:
            cost = self.burst
        if tokens < cost:
            self._tokens = tokens
            return False
        self._tokens = tokens - cost
        return True


# The kinds `request_cost` charges more than one: any other costs one, without a call.
COSTLY_KINDS = frozenset({"offline", "history", "lost", "found"})


def request_cost(message: dict, terminals_pushed_to: int) -> int:
    """What a request spends of its sender's budget, in requests: about the work it makes.
    One, but for the few whose work grows with what a peer asks for: an offline upload
    (its records), a history page (the records asked for) and a card's lost or found (its
    school's tills, each sent a blacklist push, when it changes the list)."""
    kind = message.get("t")
    if kind == "offline":
        records = message.get("records")
        return len(records) if type(records) is list and records else 1
    if kind == "history":
        limit = message.get("limit")
        if type(limit) is int and limit > 0:
            return 1 + min(limit, limits.history_limit_max) // limits.history_records_per_request_cost
        return 1 + limits.history_limit_default // limits.history_records_per_request_cost
    if kind in ("lost", "found"):
        return 1 + terminals_pushed_to // limits.pushes_per_request_cost
    return 1
