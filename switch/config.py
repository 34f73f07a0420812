"""Configuration: schools and their limits, timeouts and group-commit bounds.

Defaults are built in (two schools, WH and CUIK); a TOML file (`--config`)
overrides them. Unknown keys are refused with a message naming them.
"""

import os
import re
import tomllib
from dataclasses import dataclass, field, fields, replace

from switch import limits
from switch.clock import LocalDays


class ConfigError(Exception):
    pass


@dataclass
class School:
    code: str
    name: str
    time_zone: str = "Asia/Shanghai"
    no_pin_fen: int = limits.default_no_pin_fen
    per_tx_fen: int = limits.default_per_tx_fen
    daily_fen: int = limits.default_daily_fen
    no_pin_max_fen: int = limits.default_no_pin_max_fen
    per_tx_max_fen: int = limits.default_per_tx_max_fen
    daily_max_fen: int = limits.default_daily_max_fen
    split_buildings: list = field(default_factory=list)  # buildings with separate electric/water
    days: LocalDays = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        self.days = LocalDays(self.time_zone)

    def utility_kind_allowed(self, account_id: str, utility: str) -> bool:
        """Split buildings have one account per utility (electric, water); others one for both."""
        building = building_of(account_id)
        if building is not None and building in self.split_buildings:
            return utility in ("electric", "water")
        return utility == "both"


_BUILDING = re.compile(r"[A-Z0-9]+-([0-9]+)[A-Z]?-")


def building_of(account_id: str) -> str | None:
    """`WH-8D-1006` is building 8 (the naming of the schools' one-card guides); None for names
    without a building."""
    match = _BUILDING.match(account_id)
    return match.group(1) if match else None


@dataclass
class Config:
    schools: dict = field(default_factory=dict)
    idle_timeout_s: float = limits.idle_timeout_s
    hold_timeout_s: int = limits.hold_timeout_s
    reversal_window_s: int = limits.reversal_window_s
    offline_window_s: int = limits.offline_window_s
    idempotency_retention_s: int = limits.idempotency_retention_s
    max_amount_fen: int = limits.max_amount_fen
    batch_requests_max: int = limits.batch_requests_max
    batch_wait_s: float = limits.batch_wait_s
    connections_max: int = limits.connections_max
    terminal_requests_per_s: float = float(limits.terminal_requests_per_s)
    terminal_requests_burst: int = limits.terminal_requests_burst
    service_requests_per_s: float = float(limits.service_requests_per_s)
    service_requests_burst: int = limits.service_requests_burst
    admin_requests_per_s: float = float(limits.admin_requests_per_s)
    admin_requests_burst: int = limits.admin_requests_burst
    destinations: list = field(default_factory=list)

    def request_budget(self, role: str) -> tuple[float, int]:
        """(requests a second, burst) for one credential of `role`."""
        return getattr(self, f"{role}_requests_per_s"), getattr(self, f"{role}_requests_burst")


DEFAULT_SCHOOLS = {
    "WH": School("WH", "云南艺术学院文华学院"),
    "CUIK": School("CUIK", "昆明传媒学院", split_buildings=["9"]),
}

_SETTINGS = {f.name for f in fields(Config)} - {"schools", "destinations"}
_SCHOOL_KEYS = {f.name for f in fields(School)} - {"code", "days"}
_SCHOOL_TYPES = {"name": str, "time_zone": str, "split_buildings": list,
                 **{key: int for key in _SCHOOL_KEYS if key.endswith("_fen")}}


def default_config() -> Config:
    return Config(schools={code: replace(s) for code, s in DEFAULT_SCHOOLS.items()})


def load_config(path: str | None) -> Config:
    config = default_config()
    if path is None:
        return config
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise ConfigError(f"{path}: {error}") from None
    for key, value in data.items():
        if key == "schools":
            if not isinstance(value, dict):
                raise ConfigError("schools: must be a table of school tables")
            config.schools = {}
            for code, table in value.items():
                if not isinstance(table, dict):
                    raise ConfigError(f"schools.{code}: must be a table")
                unknown = set(table) - _SCHOOL_KEYS
                if unknown:
                    raise ConfigError(f"schools.{code}: unknown key(s) {sorted(unknown)}")
                for key, value in table.items():
                    expected = _SCHOOL_TYPES[key]
                    if type(value) is not expected:
                        raise ConfigError(f"schools.{code}.{key}: expected {expected.__name__}, "
                                          f"got {value!r}")
                if not all(type(b) is str for b in table.get("split_buildings", [])):
                    raise ConfigError(f"schools.{code}.split_buildings: a list of building "
                                      f"numbers as strings, e.g. [\"9\"]")
                try:
                    config.schools[code] = School(code, **table)
                except Exception as error:  # an unknown time zone, mostly
                    raise ConfigError(f"schools.{code}: {error}") from None
        elif key == "destinations":
            from switch.destinations import parse_destinations  # it raises our ConfigError
            if not isinstance(value, list):
                raise ConfigError("destinations: use [[destinations]] tables")
            config.destinations = parse_destinations(value, base_dir=os.path.dirname(
                os.path.abspath(path)))
        elif key in _SETTINGS:
            expected = type(getattr(config, key))
            if expected is float and isinstance(value, int):
                value = float(value)
            if type(value) is not expected:
                raise ConfigError(f"{key}: expected {expected.__name__}, got {value!r}")
            setattr(config, key, value)
        else:
            raise ConfigError(f"unknown key {key!r}")
    validate(config)
    return config


def validate(config: Config) -> None:
    if not config.schools:
        raise ConfigError("schools: at least one school is needed")
    for code, school in config.schools.items():
        if (not code.isascii() or not code.isalnum() or not code.isupper()
                or len(code) > limits.school_code_chars_max):
            raise ConfigError(f"schools.{code}: a school code is 1..8 upper-case letters/digits")
        if not 0 <= school.no_pin_fen <= school.per_tx_fen <= school.daily_fen:
            raise ConfigError(f"schools.{code}: need no_pin_fen <= per_tx_fen <= daily_fen")
        if (school.no_pin_fen > school.no_pin_max_fen or school.per_tx_fen > school.per_tx_max_fen
                or school.daily_fen > school.daily_max_fen):
            raise ConfigError(f"schools.{code}: a default is above its maximum")
    if not 1 <= config.batch_requests_max <= 65536:
        raise ConfigError("batch_requests_max: 1..65536")
    if not 0 <= config.batch_wait_s <= 0.1:
        raise ConfigError("batch_wait_s: 0..0.1")
    for role in ("terminal", "service", "admin"):
        rate_per_s, burst = config.request_budget(role)
        if not 0.1 <= rate_per_s <= 1_000_000:
            raise ConfigError(f"{role}_requests_per_s: 0.1..1000000 requests a second")
        if not 1 <= burst <= 10_000_000:
            raise ConfigError(f"{role}_requests_burst: 1..10000000 requests")
