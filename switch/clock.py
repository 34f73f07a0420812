"""Time as the switch sees it; injectable so tests drive expiries and days without sleeping."""

import time
from datetime import datetime, timezone
from zoneinfo import ZoneInfo


class SystemClock:
    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000


class FakeClock:
    def __init__(self, now_ms: int = 1_795_000_000_000):
        self.ms = now_ms

    def now_ms(self) -> int:
        return self.ms

    def advance(self, seconds: float) -> None:
        self.ms += int(seconds * 1000)


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
