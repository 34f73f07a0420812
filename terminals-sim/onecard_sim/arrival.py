"""The lunch-rush arrival curve: offered rate over the run as a smooth bump.

shape(u) = floor + (2 - 2 floor) sin²(πu) for u in [0, 1] has mean 1, starts and
ends at `floor` and peaks at 2 - floor in the middle. Arrivals of one terminal are a
non-homogeneous Poisson process drawn by inverting the cumulative shape (time
rescaling), through a table, so each draw is a bisect and a lerp.
"""

import bisect
import math

rush_floor = 0.2          # the rate at the start and end, as a fraction of the average
_table_points = 4096


def shape(u: float, floor: float = rush_floor) -> float:
    return floor + (2.0 - 2.0 * floor) * math.sin(math.pi * u) ** 2


def cumulative(u: float, floor: float = rush_floor) -> float:
    """∫₀ᵘ shape; equals u at 0, 1/2 and 1."""
    return u - (1.0 - floor) * math.sin(2.0 * math.pi * u) / (2.0 * math.pi)


class RushCurve:
    """Maps the cumulative share of a run's arrivals to the fraction of the run elapsed."""

    def __init__(self, floor: float = rush_floor, flat: bool = False):
        self.floor = floor
        self.flat = flat
        self._u = [i / _table_points for i in range(_table_points + 1)]
        self._c = [u if flat else cumulative(u, floor) for u in self._u]

    def rate_factor(self, u: float) -> float:
        return 1.0 if self.flat else shape(min(max(u, 0.0), 1.0), self.floor)

    def invert(self, c: float) -> float:
        """The u with cumulative(u) = c, for c in [0, 1]."""
        if c <= 0.0:
            return 0.0
        if c >= 1.0:
            return 1.0
        table = self._c
        i = bisect.bisect_right(table, c)
        c0, c1 = table[i - 1], table[i]
        u0, u1 = self._u[i - 1], self._u[i]
        return u0 + (u1 - u0) * (c - c0) / (c1 - c0)


class Arrivals:
    """Arrival times (trio clock) of one source whose average rate over the run is
    `rate_per_s`, following `curve`; math.inf once the run is over."""

    __slots__ = ("curve", "start", "seconds", "rate_per_s", "rng", "_c")

    def __init__(self, curve: RushCurve, start: float, seconds: float, rate_per_s: float, rng):
        self.curve = curve
        self.start = start
        self.seconds = seconds
        self.rate_per_s = rate_per_s
        self.rng = rng
        self._c = 0.0

    def next(self) -> float:
        if self.rate_per_s <= 0.0:
            return math.inf
        # Expected arrivals over the whole run are rate * seconds; cumulative share in [0, 1].
        self._c += self.rng.expovariate(1.0) / (self.rate_per_s * self.seconds)
        if self._c >= 1.0:
            return math.inf
        return self.start + self.seconds * self.curve.invert(self._c)
