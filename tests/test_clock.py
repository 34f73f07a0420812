"""TrustedClock: a wall-clock reading that jumps away from the monotonic clock is not believed
until it has stayed where it jumped to; each jump is logged and reported once."""

import logging

import pytest

from switch import limits
from switch.clock import FakeClock, TrustedClock
from tests.source_calls import modules_outside_core_calling

JUMP_MS_MAX = round(limits.clock_jump_s_max * 1000)
CONFIRM_MS = round(limits.clock_jump_confirm_s * 1000)
DAY_MS = 24 * 3600 * 1000


class Clocks:
    """Fake wall and monotonic clocks and a fake count of time suspended under a
    TrustedClock, with its reports."""

    def __init__(self):
        self.wall = FakeClock()
        self.monotonic = FakeClock(5_000)
        self.suspended = FakeClock(0)
        self.trusted = TrustedClock(self.wall, self.monotonic.now_ms, self.suspended.now_ms)
        self.jumps = []
        self.trusted.jump_observers.append(lambda direction, size_s: self.jumps.append(
            (direction, size_s)))
        self.start_ms = self.wall.ms

    def elapse(self, seconds: float) -> None:
        """Real time passes: both clocks move."""
        self.wall.advance(seconds)
        self.monotonic.advance(seconds)


@pytest.fixture
def clocks():
    return Clocks()


def test_a_steady_clock_is_believed(clocks):
    clocks.elapse(90)
    assert clocks.trusted.now_ms() == clocks.start_ms + 90_000
    assert clocks.jumps == []


@pytest.mark.parametrize("step_ms, believed", [(JUMP_MS_MAX, True), (JUMP_MS_MAX + 1, False),
                                               (-JUMP_MS_MAX, True), (-JUMP_MS_MAX - 1, False)])
def test_a_step_up_to_the_bound_is_believed_and_one_past_it_is_a_jump(clocks, step_ms,
                                                                      believed):
    clocks.elapse(1)
    clocks.wall.ms += step_ms
    expected_ms = clocks.start_ms + 1000
    assert clocks.trusted.now_ms() == (expected_ms + step_ms if believed else expected_ms)
    assert clocks.jumps == ([] if believed else
                            [("forward" if step_ms > 0 else "back", step_ms / 1000)])


def test_a_jump_days_ahead_corrected_a_moment_later_is_never_believed(clocks, caplog):
    caplog.set_level(logging.WARNING, logger="switch.clock")
    clocks.wall.ms += 3 * DAY_MS
    clocks.elapse(2)
    # The jumped wall is not used: time goes on from the last believed reading.
    assert clocks.trusted.now_ms() == clocks.start_ms + 2000
    clocks.elapse(3)
    assert clocks.trusted.now_ms() == clocks.start_ms + 5000
    assert clocks.jumps == [("forward", 3 * 24 * 3600.0)]   # reported once, not per reading
    [line] = [r.getMessage() for r in caplog.records if "event=clock_jump " in r.getMessage()]
    assert "direction=forward jump_s=259200.000" in line
    clocks.wall.ms -= 3 * DAY_MS   # put right
    clocks.elapse(1)
    assert clocks.trusted.now_ms() == clocks.start_ms + 6000
    assert any("event=clock_jump_undone" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("held_ms, believed", [(CONFIRM_MS - 1, False), (CONFIRM_MS, True)])
def test_a_jump_that_stays_is_believed_after_the_confirmation_time(clocks, held_ms, believed):
    clocks.wall.ms += 2 * DAY_MS         # e.g. a switch started with its clock days behind
    assert clocks.trusted.now_ms() == clocks.start_ms
    clocks.wall.advance(held_ms / 1000)
    clocks.monotonic.advance(held_ms / 1000)
    jumped_ms = clocks.start_ms + 2 * DAY_MS + held_ms
    assert clocks.trusted.now_ms() == (jumped_ms if believed else clocks.start_ms + held_ms)
    assert len(clocks.jumps) == 1


def test_time_spent_suspended_is_no_jump(clocks):
    clocks.elapse(1)
    clocks.wall.advance(3600)          # an hour asleep: the monotonic clock stood still
    clocks.suspended.advance(3600)
    assert clocks.trusted.now_ms() == clocks.start_ms + 3_601_000
    clocks.elapse(1)
    assert clocks.trusted.now_ms() == clocks.start_ms + 3_602_000
    assert clocks.jumps == []


def test_a_jump_while_suspended_is_still_a_jump(clocks):
    clocks.wall.advance(3600 + 2 * 24 * 3600)
    clocks.suspended.advance(3600)
    assert clocks.trusted.now_ms() == clocks.start_ms + 3_600_000
    assert clocks.jumps == [("forward", 2 * 24 * 3600.0)]


def test_a_second_jump_while_one_is_unconfirmed_starts_the_wait_again(clocks):
    clocks.wall.ms += DAY_MS
    clocks.trusted.now_ms()
    clocks.elapse(CONFIRM_MS / 2000)
    clocks.wall.ms += DAY_MS             # somewhere else again
    clocks.trusted.now_ms()
    clocks.elapse(CONFIRM_MS / 2000)
    assert clocks.trusted.now_ms() == clocks.start_ms + CONFIRM_MS
    assert [direction for direction, _ in clocks.jumps] == ["forward", "forward"]


def test_wall_time_is_read_by_the_clock_and_hello_stamps_only():
    # Every timeout of the shell (hello, frame, idle, send stall, drain, forwarding) runs on
    # trio's monotonic clock; the wall clock is read by switch/clock.py and, for the
    # informational `at` of a hello (docs/PROTOCOL.md §2.1), by the clients.
    readers = (modules_outside_core_calling("time", on="time")
               | modules_outside_core_calling("time_ns", on="time")
               | modules_outside_core_calling("now", on="datetime"))
    assert readers == {"clock.py", "shell/client.py", "shell/forwarder.py",
                       "receivers/base.py"}


def test_elapsed_time_is_the_monotonic_clock_and_the_time_suspended_not_the_wall():
    """What paces the retention clock: nothing an operator sets moves it."""
    from switch.clock import FakeClock, TrustedClock
    readings = {"wall": 1_000_000, "mono": 5_000, "suspended": 0}

    class Wall:
        def now_ms(self):
            return readings["wall"]
    clock = TrustedClock(wall=Wall(), monotonic=lambda: readings["mono"],
                         suspended=lambda: readings["suspended"])
    start = clock.elapsed_ms()
    readings["wall"] += 401 * 86_400_000
    assert clock.elapsed_ms() == start
    readings["mono"] += 1_500
    readings["suspended"] += 60_000
    assert clock.elapsed_ms() == start + 61_500
    fake = FakeClock(1_000)
    fake_start = fake.elapsed_ms()
    fake.advance(2)
    fake.ms += 3_000            # a test moving `ms` lets time pass
    fake.set_wall(86_400)       # an operator setting the wall clock does not
    assert fake.now_ms() == 1_000 + 5_000 + 86_400_000
    assert fake.elapsed_ms() - fake_start == 5_000
