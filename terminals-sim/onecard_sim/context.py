"""State every terminal task shares during a run (one thread: no locks)."""

import random
from dataclasses import dataclass, field

import trio

from onecard_sim.arrival import RushCurve
from onecard_sim.ledger import ExpectedLedger
from onecard_sim.population import Population
from onecard_sim.scheduler import Scheduler
from onecard_sim.stats import Stats, new_histogram


@dataclass
class Behaviour:
    """Knobs of what people do; the defaults are what the report's figures assume."""
    big_meal_share: float = 0.08       # card taps above the no-PIN threshold (PIN typed)
    wrong_pin_share: float = 0.05      # of those, a mistyped PIN
    lost_tap_share: float = 0.02       # taps of a card already reported lost (a finder tries it)
    double_tap_share: float = 0.03     # a student taps twice (防重复刷卡): the till sends it again
    foreign_tap_share: float = 0.002   # a card of the other school at this school's till
    qr_shower_share: float = 0.15      # showers paid by QR code
    void_share: float = 0.05           # showers abandoned: the hold is voided
    duplicate_notify_share: float = 0.05   # WeChat Pay notifications delivered twice
    room_recharge_share: float = 0.2   # recharges of a dorm room rather than a student
    lost_cards: int = 0                # `lost` reports during the run (0: students // 100, >= 2)
    meal_tills: bool = False           # canteen tills added with `meals` (meal caps apply)
    shower_seconds: tuple = (0.3, 2.0) # open loop: hold -> complete (a compressed shower)
    offline_tap_interval_s: float = 0.5    # closed loop: a till's pace while the switch is down
    # The school default (docs/PROTOCOL.md §4.7); offline taps stay at or below it.
    no_pin_fen: int = 5_000
    keepalive_s: float = 60.0          # below the switch's 120 s idle timeout


@dataclass
class Outage:
    """What the outage scenario saw."""
    kill_at: float | None = None
    kill_signal: str = "SIGKILL"
    restart_at: float | None = None       # restart issued
    ready_at: float | None = None         # the new switch printed `listening`
    reconnected: int = 0
    last_reconnect_at: float | None = None
    uploaders: int = 0                    # terminals with something to upload or resend
    drained: int = 0
    last_drained_at: float | None = None
    offline_taken: int = 0
    offline_refused_locally: int = 0      # blacklisted cards refused by the till itself
    offline_requests: int = 0
    offline_ok: int = 0
    offline_replay: int = 0
    offline_refused: int = 0
    offline_after_lost: int = 0
    offline_overdrawn_accounts: set = field(default_factory=set)
    uncertain: int = 0
    uncertain_resolved: int = 0
    uncertain_codes: dict = field(default_factory=dict)
    upload_latency = None

    def __post_init__(self):
        self.upload_latency = new_histogram()


class Run:
    def __init__(self, population: Population, *, open_loop: bool, seconds: float,
                 rate_per_s: float, seed: int, behaviour: Behaviour | None = None,
                 flat: bool = False):
        self.population = population
        self.open_loop = open_loop
        self.seconds = seconds
        self.rate_per_s = rate_per_s
        self.rng = random.Random(seed ^ 0x5EED)
        self.behaviour = behaviour or Behaviour()
        self.curve = RushCurve(flat=flat)
        self.stats = Stats()
        self.ledger = ExpectedLedger()
        self.scheduler = Scheduler()
        self.address: tuple[str, int] = ("127.0.0.1", 0)
        self.t0 = 0.0
        self.load_end = float("inf")
        self.drain_end = float("inf")
        self.start = trio.Event()
        self.connect_limiter = trio.CapacityLimiter(1)
        self.signing_on = 0
        self.all_signed_on = trio.Event()
        self.running = 0
        self.all_done = trio.Event()
        self.outage: Outage | None = None
        self.switch_up = True
        self.lost_taps = 0
        self.lost_taps_refused = 0
        self.lost_violations: list = []
        self.unresolved = 0
        self.unsent_offline = 0
        self.signed_on_ok = 0
        self.signon_failures = 0

    # ------------------------------------------------------------ task bookkeeping
    def expect_terminals(self, count: int, concurrency: int) -> None:
        self.signing_on = self.running = count
        self.connect_limiter = trio.CapacityLimiter(concurrency)
        if count == 0:
            self.all_signed_on.set()
            self.all_done.set()

    def signed_on(self, ok: bool) -> None:
        if ok:
            self.signed_on_ok += 1
        else:
            self.signon_failures += 1
        self.signing_on -= 1
        if self.signing_on == 0:
            self.all_signed_on.set()

    def terminal_done(self) -> None:
        self.running -= 1
        if self.running == 0:
            self.all_done.set()

    def begin(self, t0: float, drain_timeout_s: float) -> None:
        self.t0 = t0
        self.load_end = t0 + self.seconds
        self.drain_end = self.load_end + drain_timeout_s
        self.stats.window_end = self.load_end
        self.scheduler.load_end = self.load_end
        self.start.set()

    # ------------------------------------------------------------ choosing a card
    def pick_card(self, school: str, now: float):
        """(student, expected code or None) for a tap at a till or shower of `school`."""
        pop = self.population
        rng = self.rng
        behaviour = self.behaviour
        draw = rng.random()
        lost = pop.lost_of[school]
        if lost and draw < behaviour.lost_tap_share:
            return rng.choice(lost), "card_lost"
        if behaviour.lost_tap_share <= draw < behaviour.lost_tap_share + behaviour.foreign_tap_share:
            other = pop.students_of["CUIK" if school == "WH" else "WH"]
            if other:
                student = rng.choice(other)
                return student, ("card_lost" if student.lost_at is not None else "wrong_school")
        students = pop.students_of[school]
        for _ in range(4):
            student = rng.choice(students)
            if student.lost_at is None:   # the owner of a lost card does not tap it
                break
        return student, ("card_lost" if student.lost_at is not None else None)

    def check_expectation(self, expected: str | None, code: str, student, request_type: str):
        if expected is None:
            return
        if expected == "card_lost":
            self.lost_taps += 1
            if code == "card_lost":
                self.lost_taps_refused += 1
            elif len(self.lost_violations) < 20:
                self.lost_violations.append(f"{request_type} of lost card {student.card}: {code}")
            else:
                self.lost_violations.append(None)
        # wrong_school: a card lost meanwhile is answered card_lost first (rule 2 before 3).
