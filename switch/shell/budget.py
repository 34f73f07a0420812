"""A request budget per credential: a token bucket, so one credential cannot take the
switch's whole capacity (or fill its disk with remembered declines). A request is let in
while the bucket holds one, and spends what it costs (`request_cost`): what one credential
gets done in T seconds is at most its burst, T times its rate, and one request's cost."""

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
        """Let a request in while the budget holds one request, and spend its `cost`, which
        may take the budget below zero: the next wait until it has refilled. False (and
        nothing spent) when it holds less than one. A costly request is never refused for
        good, nor is a try refused here charged: a till retrying an upload gets it in once
        the budget is back, however dear the upload. (A large frame's bytes are spent as it
        is read, whatever becomes of it: `Connection._open_into_backlog`.)"""
        # Refilled in place, no call: this runs for every request.
        tokens = self._tokens + (now_s - self._updated_s) * self.rate_per_s
        if tokens > self.burst:
            tokens = self.burst
        self._updated_s = now_s
        if tokens < 1.0:
            self._tokens = tokens
            return False
        self._tokens = tokens - cost
        return True

    def spend(self, cost: int) -> None:
        """Spend for a request `take` let in before (what it costs beyond what it paid)."""
        self._tokens -= cost


def _page_size(message: dict, kind: str) -> int:
    """The most records a `history` or `rooms` page asked for may hold."""
    most = limits.history_limit_max if kind == "history" else limits.rooms_limit_max
    limit = message.get("limit")
    if type(limit) is int and limit > 0:
        return min(limit, most)
    return limits.history_limit_default if kind == "history" else limits.rooms_limit_default


# The kinds `request_cost` charges more than one: any other costs one, without a call.
COSTLY_KINDS = frozenset({"offline", "history", "rooms", "blacklist", "lost", "found"})


def request_cost(message: dict, terminals_pushed_to: int) -> int:
    """What a request spends of its sender's budget, in requests: about the work it makes.
    One, but for the few whose work grows with what a peer asks for: an offline upload
    (its records), a history or rooms page (the records asked for), the whole blacklist
    (`since` 0) and a card's lost or found (its school's tills, each sent a blacklist push,
    when it changes the list)."""
    kind = message.get("t")
    if kind == "offline":
        records = message.get("records")
        return len(records) if type(records) is list and records else 1
    if kind == "history" or kind == "rooms":
        return 1 + _page_size(message, kind) // limits.page_records_per_request_cost
    if kind == "blacklist":
        # The whole list, a page of up to blacklist_page_cards_max cards: a till's first
        # fetch at start. A delta (`since` above 0) is a few cards.
        if message.get("since") == 0:
            return 1 + limits.blacklist_page_cards_max // limits.blacklist_cards_per_request_cost
        return 1
    if kind in ("lost", "found"):
        return 1 + terminals_pushed_to // limits.pushes_per_request_cost
    return 1
