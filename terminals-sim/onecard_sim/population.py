"""Who takes part in a run: students and cards of both schools, dorm rooms, and the fleet of
terminal and service credentials. Pure: a seed in, plans out; nothing here talks to the switch."""

import math
import random
from dataclasses import dataclass, field

SCHOOLS = ("WH", "CUIK")
SCHOOL_SHARE = {"WH": 0.55, "CUIK": 0.45}
CARD_PREFIX = {"WH": "04", "CUIK": "05"}
BUILDINGS = {"WH": ("6", "7", "8"), "CUIK": ("6", "7", "8", "9")}
SPLIT_BUILDINGS = {"WH": (), "CUIK": ("9",)}   # one account per utility (the switch's config)
STUDENTS_PER_ROOM = 4
ROOMS_PER_FLOOR = 30
ENROLMENT_YEAR = "2026"

# Kinds of load connection and how many requests one job of theirs makes.
KINDS = ("pos", "water", "meter", "recharge")
REQUESTS_PER_JOB = {"pos": 1, "water": 2, "meter": 1, "recharge": 1}

_SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶"
_GIVEN = "伟芳娜敏静丽强磊军洋勇艳杰娟涛明超秀霞平刚桂英华玉萍红娥玲芬燕彬鑫宇浩然欣怡子轩梓涵"


@dataclass(slots=True)
class Student:
    account: str
    school: str
    card: str
    id_last6: str
    pin: str                  # id_last6 with a final X read as 0 (docs/PROTOCOL.md §4.7)
    holder: str
    initial_fen: int
    raise_daily_limit: bool
    wants_qr: bool
    qr_secret: bytes | None = None
    lost_at: float | None = None   # trio time the switch acknowledged `lost`


@dataclass(slots=True)
class Room:
    account: str
    school: str
    utility: str              # both | electric | water
    initial_fen: int
    power: bool = False       # as the simulator last learned it (cutoff / restore)


@dataclass(slots=True)
class Credential:
    who: str
    role: str                 # terminal | service
    kind: str                 # pos | water | meter | recharge | office
    school: str | None
    merchant: str | None
    key: bytes | None = None


@dataclass
class Mix:
    """Traffic weights, as shares of requests (a shower is two: hold and complete)."""
    debit: float = 55.0
    qr: float = 12.0
    shower: float = 14.0
    meter: float = 9.0
    recharge: float = 10.0

    def by_kind(self) -> dict:
        return {"pos": self.debit + self.qr, "water": self.shower, "meter": self.meter,
                "recharge": self.recharge}

    @classmethod
    def parse(cls, text: str) -> "Mix":
        mix = cls()
        for part in filter(None, (p.strip() for p in text.split(","))):
            name, _, value = part.partition("=")
            if not hasattr(mix, name.strip()):
                raise ValueError(f"unknown mix weight {name!r} (debit, qr, shower, meter, recharge)")
            setattr(mix, name.strip(), float(value))
        if min(vars(mix).values()) < 0 or sum(vars(mix).values()) <= 0:
            raise ValueError("mix weights must be >= 0 and not all 0")
        return mix


@dataclass
class Population:
    students: list = field(default_factory=list)
    rooms: list = field(default_factory=list)
    credentials: list = field(default_factory=list)    # load connections, in kind order
    office: Credential | None = None                    # card office / mini-program backend
    by_card: dict = field(default_factory=dict)
    students_of: dict = field(default_factory=dict)     # school -> [Student]
    qr_students_of: dict = field(default_factory=dict)  # school -> [Student with a secret]
    rooms_of: dict = field(default_factory=dict)        # school -> [Room]
    lost_of: dict = field(default_factory=dict)         # school -> [Student] acknowledged lost

    @property
    def accounts(self) -> list:
        return [s.account for s in self.students] + [r.account for r in self.rooms]


def split_counts(total: int, weights: dict) -> dict:
    """Largest-remainder split of `total` by `weights`, at least one per nonzero weight."""
    positive = {k: w for k, w in weights.items() if w > 0}
    counts = {k: 0 for k in weights}
    if total <= 0 or not positive:
        return counts
    weight_sum = sum(positive.values())
    raw = {k: total * w / weight_sum for k, w in positive.items()}
    for k in positive:
        counts[k] = max(1, int(raw[k]))
    while sum(counts.values()) > total:
        biggest = max(positive, key=lambda k: counts[k])
        counts[biggest] -= 1
    order = sorted(positive, key=lambda k: raw[k] - int(raw[k]), reverse=True)
    i = 0
    while sum(counts.values()) < total:
        counts[order[i % len(order)]] += 1
        i += 1
    return counts


def _holder(rng) -> str:
    return rng.choice(_SURNAMES) + "".join(rng.choice(_GIVEN) for _ in range(rng.choice((1, 2))))


def _id_last6(rng) -> str:
    # Most ID numbers end in a digit; about one in eleven ends in X (ISO 7064 check digit).
    return f"{rng.randrange(100_000):05d}" + ("X" if rng.random() < 1 / 11 else str(rng.randrange(10)))


def build(students: int, terminals: int, mix: Mix, seed: int, tag: str = "",
          qr_share: float = 0.3, low_room_share: float = 0.25) -> Population:
    """The run's population. `tag` (upper-case hex) keeps every id apart from an earlier
    run's on the same switch; empty for a fresh data dir."""
    rng = random.Random(seed)
    pop = Population()
    per_school = split_counts(students, SCHOOL_SHARE)
    for school in SCHOOLS:
        pop.students_of[school], pop.qr_students_of[school] = [], []
        pop.rooms_of[school], pop.lost_of[school] = [], []
        width = max(4, len(str(per_school[school])))
        for n in range(1, per_school[school] + 1):
            id_last6 = _id_last6(rng)
            student = Student(
                account=f"{school}{ENROLMENT_YEAR}{tag}{n:0{width}d}", school=school,
                card=f"{tag}{CARD_PREFIX[school]}{n:06X}", id_last6=id_last6,
                pin=id_last6.replace("X", "0"), holder=_holder(rng),
                initial_fen=rng.randrange(20_000, 100_001, 100),
                raise_daily_limit=rng.random() < 0.9, wants_qr=rng.random() < qr_share)
            pop.students.append(student)
            pop.students_of[school].append(student)
            pop.by_card[student.card] = student
        _rooms(pop, school, math.ceil(per_school[school] / STUDENTS_PER_ROOM), tag, rng,
               low_room_share)

    counts = split_counts(terminals, {k: w / REQUESTS_PER_JOB[k]
                                      for k, w in mix.by_kind().items()})
    for kind in KINDS:
        if kind == "recharge":
            for n in range(1, counts[kind] + 1):
                pop.credentials.append(Credential(f"wechat-pay-{tag}{n:04d}", "service",
                                                  "recharge", None, None))
            continue
        per_school_kind = split_counts(counts[kind], SCHOOL_SHARE) if counts[kind] >= 2 else \
            {"WH": counts[kind], "CUIK": 0}
        for school in SCHOOLS:
            merchant = {"pos": "CANTEEN", "water": "BATH", "meter": "DORM"}[kind]
            for n in range(1, per_school_kind[school] + 1):
                pop.credentials.append(Credential(
                    f"{school}-{kind.upper()}-{tag}{n:05d}", "terminal", kind, school,
                    f"{school}-{merchant}-{(n - 1) % 4 + 1}"))
    pop.office = Credential(f"miniprogram-{tag}" if tag else "miniprogram", "service", "office",
                            None, None)
    return pop


def _rooms(pop: Population, school: str, count: int, tag: str, rng, low_room_share: float):
    buildings = BUILDINGS[school]
    for i in range(count):
        building = buildings[i % len(buildings)]
        j = i // len(buildings)
        number = f"{1 + j // ROOMS_PER_FLOOR:02d}{1 + j % ROOMS_PER_FLOOR:02d}"
        base = f"{school}-{building}D-{tag}{number}"
        # Some rooms start nearly empty so cut-offs and restores happen within a short run.
        low = rng.random() < low_room_share
        utilities = ((base + "-E", "electric"), (base + "-W", "water")) \
            if building in SPLIT_BUILDINGS[school] else ((base, "both"),)
        for account, utility in utilities:
            initial = rng.randrange(200, 1_001, 10) if low else rng.randrange(5_000, 20_001, 100)
            room = Room(account, school, utility, initial)
            pop.rooms.append(room)
            pop.rooms_of[school].append(room)


def run_tag(rng: random.Random) -> str:
    """Five hex digits: valid in account, card and credential ids alike."""
    return f"{rng.getrandbits(20):05X}"
