"""Time as the switch sees it; injectable so tests drive expiries and days without sleeping."""

import logging
import time
from datetime import datetime, timezone
from zoneinfo import ZoneInfo

from switch import limits

log = logging.getLogger("switch.clock")

_BOOTTIME_ID = getattr(time, "CLOCK_BOOTTIME", None)


def monotonic_ms() -> int:
    return time.monotonic_ns() // 1_000_000


def suspended_ms() -> int:
    """Time the machine spent suspended since boot (its wall clock ran on, the monotonic
    clock did not); read only when the two disagree, it costs a system call here."""
    if _BOOTTIME_ID is None:
        return 0
    return (time.clock_gettime_ns(_BOOTTIME_ID) - time.monotonic_ns()) // 1_000_000


def elapsed_ms() -> int:
    """Time since boot, suspended time included: what no one can set, for how much time has
    passed (`TrustedClock.elapsed_ms`)."""
    return monotonic_ms() + suspended_ms()


class SystemClock:
    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000

    def elapsed_ms(self) -> int:
        return elapsed_ms()


class TrustedClock:
    """Wall time, believed only while it agrees with the monotonic clock.

    Everything the switch decides by the clock (QR steps and their floor, hold expiry,
    forgetting remembered ids, journal times) reads `now_ms`. A wall reading further than
    `jump_s_max` from the last believed reading plus the monotonic time since is a jump: it
    is logged and reported to each of `jump_observers` (direction, signed size in seconds)
    and not believed; the switch goes on with that monotonic extrapolation. So a clock set
    days ahead and put right a moment later expires no code or hold and forgets no id. A
    jumped clock that stays where it jumped to (within `jump_s_max`) for `confirm_s` was
    corrected rather than broken, and is believed from then on. Time spent suspended is
    no jump: the wall clock ran on while the monotonic one stood still.
    """

    def __init__(self, wall=None, monotonic=monotonic_ms, suspended=suspended_ms,
                 jump_s_max: float = limits.clock_jump_s_max,
                 confirm_s: float = limits.clock_jump_confirm_s):
        self.wall = SystemClock() if wall is None else wall
        self._wall_ms = self.wall.now_ms
        self.monotonic = monotonic
        self.suspended = suspended
        self._suspended_ms = suspended()
        self.jump_ms_max = round(jump_s_max * 1000)
        self.confirm_ms = round(confirm_s * 1000)
        self.jump_observers: list = []
        # Wall minus monotonic time, as last believed: the believed time now is this plus
        # the monotonic clock.
        self._base_ms = self.wall.now_ms() - monotonic()
        self._jump_offset_ms: int | None = None   # of the jump not yet believed
        self._jump_since_mono_ms = 0

    def now_ms(self) -> int:
        # The common case first and lean: every request reads the clock more than once.
        wall_ms = self._wall_ms()
        mono_ms = self.monotonic()
        offset_ms = wall_ms - mono_ms - self._base_ms
        if -self.jump_ms_max <= offset_ms <= self.jump_ms_max and self._jump_offset_ms is None:
            self._base_ms = wall_ms - mono_ms
            return wall_ms
        return self._disagreeing(wall_ms, mono_ms, offset_ms)

    def _disagreeing(self, wall_ms: int, mono_ms: int, offset_ms: int) -> int:
        """`now_ms` when the wall clock has left the believed time, or had left it before."""
        if -self.jump_ms_max <= offset_ms <= self.jump_ms_max:
            log.warning("event=clock_jump_undone wall_ms=%d", wall_ms)
            self._jump_offset_ms = None
            self._base_ms = wall_ms - mono_ms
            return wall_ms
        suspended_ms = self.suspended()
        if suspended_ms != self._suspended_ms:
            self._base_ms += suspended_ms - self._suspended_ms
            self._suspended_ms = suspended_ms
            offset_ms = wall_ms - mono_ms - self._base_ms
            if -self.jump_ms_max <= offset_ms <= self.jump_ms_max:
                self._jump_offset_ms = None
                self._base_ms = wall_ms - mono_ms
                return wall_ms
        if (self._jump_offset_ms is None
                or abs(offset_ms - self._jump_offset_ms) > self.jump_ms_max):
            self._jump_offset_ms, self._jump_since_mono_ms = offset_ms, mono_ms
            self._report(offset_ms, wall_ms, self._base_ms + mono_ms)
        elif mono_ms - self._jump_since_mono_ms >= self.confirm_ms:
            log.warning("event=clock_jump_believed jump_s=%.3f wall_ms=%d held_s=%.3f",
                        offset_ms / 1000, wall_ms,
                        (mono_ms - self._jump_since_mono_ms) / 1000)
            self._jump_offset_ms = None
            self._base_ms = wall_ms - mono_ms
            return wall_ms
        return self._base_ms + mono_ms

    def elapsed_ms(self) -> int:
        """Time that has passed, from an origin of its own: the monotonic clock plus the
        time suspended. Nobody sets it, so what must never happen early by a clock set wrong
        (forgetting a recharge's order id) is paced by it (ledger.state.retention_now_ms)."""
        return self.monotonic() + self.suspended()

    def _report(self, offset_ms: int, wall_ms: int, expected_ms: int) -> None:
        direction = "forward" if offset_ms > 0 else "back"
        log.warning("event=clock_jump direction=%s jump_s=%.3f wall_ms=%d used_ms=%d "
                    "believed_after_s=%.0f", direction, offset_ms / 1000, wall_ms, expected_ms,
                    self.confirm_ms / 1000)
        for observer in self.jump_observers:
            observer(direction, offset_ms / 1000)


class FakeClock:
    """Time that passes when a test moves `ms` (or calls `advance`); `set_wall` moves the
    wall clock alone, as an operator setting it wrong would."""

    def __init__(self, now_ms: int = 1_795_000_000_000):
        self.ms = now_ms
        self.wall_set_ms = 0     # how far `set_wall` moved `ms` with no time passing

    def now_ms(self) -> int:
        return self.ms

    def elapsed_ms(self) -> int:
        return self.ms - self.wall_set_ms

    def advance(self, seconds: float) -> None:
        self.ms += int(seconds * 1000)

    def set_wall(self, seconds: float) -> None:
        self.ms += int(seconds * 1000)
        self.wall_set_ms += int(seconds * 1000)


_EPOCH_ORDINAL = datetime(1970, 1, 1).toordinal()


class LocalDays:
    """Maps unix ms to a school-local day number, caching the current day's bounds."""

    def __init__(self, tz_name: str):
        self.zone = ZoneInfo(tz_name)
        self._start_ms = 0
        self._end_ms = -1
        self._day = 0
        self._names: dict[int, str] = {}

    def day_of(self, unix_ms: int) -> int:
        if self._start_ms <= unix_ms < self._end_ms:
            return self._day
        moment = datetime.fromtimestamp(unix_ms / 1000, tz=self.zone)
        local_midnight = moment.replace(hour=0, minute=0, second=0, microsecond=0)
        day = (local_midnight.date() - datetime(1970, 1, 1).date()).days
        start_ms = int(local_midnight.timestamp() * 1000)
        next_midnight = datetime.fromordinal(local_midnight.date().toordinal() + 1).replace(
            tzinfo=self.zone)
        end_ms = int(next_midnight.timestamp() * 1000)
        self._start_ms, self._end_ms, self._day = start_ms, end_ms, day
        return day

    def end_ms(self, day_name: str) -> int:
        """Unix ms at which local day `day_name` (`YYYY-MM-DD`, a real date) is over: the
        next local midnight."""
        next_day = datetime.fromordinal(datetime.strptime(day_name, "%Y-%m-%d").toordinal() + 1)
        return int(next_day.replace(tzinfo=self.zone).timestamp() * 1000)

    def day_name(self, day: int) -> str:
        name = self._names.get(day)
        if name is None:
            if len(self._names) > 1000:
                self._names.clear()
            name = datetime.fromordinal(_EPOCH_ORDINAL + day).strftime("%Y-%m-%d")
            self._names[day] = name
        return name


def utc_iso(unix_ms: int) -> str:
    return datetime.fromtimestamp(unix_ms / 1000, tz=timezone.utc).isoformat()
