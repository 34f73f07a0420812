"""Configuration: schools and their limits, timeouts and group-commit bounds.

Defaults are built in (two schools, WH and CUIK); a TOML file (`--config`)
overrides them. Unknown keys are refused with a message naming them.
"""

import os
import re
import tomllib
from dataclasses import dataclass, field, fields, replace
from datetime import datetime

from switch import limits
from switch.identifiers import building_of
from switch.clock import LocalDays
from switch.config.destinations import parse_destinations
from switch.config.keyfile import exposure
from switch.config.errors import ConfigError




@dataclass(frozen=True)
class Meal:
    """A meal period (餐次) at the school's canteen tills: local [start, end) in minutes."""
    name: str
    start_min: int
    end_min: int
    taps_max: int
    fen_max: int


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
    repeat_tap_window_s: int = 0   # the double-tap guard (防重复刷卡); 0: off
    meals: list = field(default_factory=list)   # Meal periods; none: no meal caps
    days: LocalDays = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        self.days = LocalDays(self.time_zone)

    def meal_at(self, unix_ms: int) -> tuple[int, Meal] | None:
        """(the period's number, unique per school and local day, and the period) of the
        meal `unix_ms` falls in, or None."""
        if not self.meals:
            return None
        moment = datetime.fromtimestamp(unix_ms / 1000, tz=self.days.zone)
        minute = moment.hour * 60 + moment.minute
        for index, meal in enumerate(self.meals):
            if meal.start_min <= minute < meal.end_min:
                return self.days.day_of(unix_ms) * limits.meals_per_school_max + index, meal
        return None

    def utility_kind_allowed(self, account_id: str, utility: str) -> bool:
        """Split buildings have one account per utility (electric, water); others one for both."""
        building = building_of(account_id)
        if building is not None and building in self.split_buildings:
            return utility in ("electric", "water")
        return utility == "both"


@dataclass
class Config:
    schools: dict = field(default_factory=dict)
    idle_timeout_s: float = limits.idle_timeout_s
    hold_timeout_s: int = limits.hold_timeout_s
    reversal_window_s: int = limits.reversal_window_s
    offline_window_s: int = limits.offline_window_s
    idempotency_retention_s: int = limits.idempotency_retention_s
    max_amount_fen: int = limits.max_amount_fen
    offline_amount_max_fen: int = limits.offline_amount_max_fen
    batch_requests_max: int = limits.batch_requests_max
    batch_wait_s: float = limits.batch_wait_s
    request_wait_max_s: float = limits.request_wait_max_s
    connections_max: int = limits.connections_max
    terminal_sessions_per_credential_max: int = limits.terminal_sessions_per_credential_max
    service_sessions_per_credential_max: int = limits.service_sessions_per_credential_max
    admin_sessions_per_credential_max: int = limits.admin_sessions_per_credential_max
    terminal_requests_per_s: float = float(limits.terminal_requests_per_s)
    terminal_requests_burst: int = limits.terminal_requests_burst
    service_requests_per_s: float = float(limits.service_requests_per_s)
    service_requests_burst: int = limits.service_requests_burst
    admin_requests_per_s: float = float(limits.admin_requests_per_s)
    admin_requests_burst: int = limits.admin_requests_burst
    destinations: list = field(default_factory=list)
    # The master key file (switch/config/masterkey.py); None: beside the data dir.
    master_key_file: str | None = None

    def request_budget(self, role: str) -> tuple[float, int]:
        """(requests a second, burst) for one credential of `role`."""
        return getattr(self, f"{role}_requests_per_s"), getattr(self, f"{role}_requests_burst")

    def school_named_by(self, account_id: str) -> str | None:
        """The code of the configured school `account_id` begins with, or None. The longest
        such code: beside a school `C`, `CUIK20230001` names CUIK, not C."""
        named = [code for code in self.schools if account_id.startswith(code)]
        return max(named, key=len, default=None)

    def sessions_per_credential_max(self, role: str) -> int:
        """The sessions one credential of `role` may hold at once."""
        return getattr(self, f"{role}_sessions_per_credential_max")


DEFAULT_SCHOOLS = {
    "WH": School("WH", "云南艺术学院文华学院"),
    "CUIK": School("CUIK", "昆明传媒学院", split_buildings=["9"]),
}

_SETTINGS = {f.name for f in fields(Config)} - {"schools", "destinations", "master_key_file"}
_SCHOOL_KEYS = {f.name for f in fields(School)} - {"code", "days"}
_SCHOOL_TYPES = {"name": str, "time_zone": str, "split_buildings": list, "repeat_tap_window_s": int,
                 "meals": list,
                 **{key: int for key in _SCHOOL_KEYS if key.endswith("_fen")}}


def default_config() -> Config:
    return Config(schools={code: replace(s) for code, s in DEFAULT_SCHOOLS.items()})


# Each setting's (lowest, highest), checked at load.
SETTING_RANGES = {name: getattr(limits, f"{name}_range") for name in sorted(_SETTINGS)}
_SCHOOL_FEN_RANGES = {key: limits.school_no_pin_fen_range if key.startswith("no_pin")
                      else limits.school_limit_fen_range
                      for key in _SCHOOL_KEYS if key.endswith("_fen")}


def load_config(path: str | None) -> Config:
    config = default_config()
    if path is None:
        return config
    try:
        with open(path, "rb") as handle:
            raw = handle.read(limits.config_file_bytes_max + 1)
            status = os.fstat(handle.fileno())
    except OSError as error:
        raise ConfigError(f"{path}: cannot read it: {error.strerror or error}") from None
    if len(raw) > limits.config_file_bytes_max:
        raise ConfigError(f"{path}: larger than a configuration file can be "
                          f"({limits.config_file_bytes_max} bytes)")
    if raw.startswith(b"\xef\xbb\xbf"):
        # Notepad's "UTF-8" (and Excel's) puts a BOM first, which TOML does not allow: the
        # parser's "Invalid statement (line 1, column 1)" names no cause.
        raise ConfigError(f"{path}: begins with a byte order mark (BOM), which TOML does not "
                          f"allow: save it as UTF-8 without BOM")
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: not valid TOML: {error}") from None
    for key, value in data.items():
        if key == "schools":
            if not isinstance(value, dict):
                raise ConfigError("schools: must be a table of school tables")
            config.schools = {code: _school(code, table) for code, table in value.items()}
        elif key == "destinations":
            if not isinstance(value, list):
                raise ConfigError("destinations: use [[destinations]] tables")
            config.destinations = parse_destinations(value, base_dir=os.path.dirname(
                os.path.abspath(path)))
            _refuse_exposed_inline_keys(path, status, value)
        elif key == "master_key_file":
            if type(value) is not str or not value:
                raise ConfigError("master_key_file: must be a non-empty string (a path)")
            # Relative to the configuration file, as a destination's key_file is.
            config.master_key_file = os.path.join(os.path.dirname(os.path.abspath(path)), value)
        elif key in _SETTINGS:
            expected = type(getattr(config, key))
            if expected is float and type(value) is int:
                value = float(value)
            if type(value) is not expected:
                raise ConfigError(f"{key}: expected {expected.__name__}, got {value!r}")
            setattr(config, key, value)
        else:
            raise ConfigError(f"unknown key {key!r}")
    validate(config)
    return config


def _refuse_exposed_inline_keys(path: str, status: os.stat_result, tables: list) -> None:
    """A key written inline (`key_hex`) is as secret as the file holding it: the same rule
    as a key file's (config.keyfile.exposure), so that whoever may read the configuration
    cannot sign on as the destination's credential."""
    inline = [index for index, table in enumerate(tables) if "key_hex" in table]
    problem = exposure(path, status) if inline else None
    if problem:
        what, remedy = problem
        raise ConfigError(f"{path}: holds destinations[{inline[0]}].key_hex, a credential's "
                          f"key, and {what}: {remedy} (or move the key into a key_file)")


def _school(code: str, table) -> School:
    where = f"schools.{code}"
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: must be a table")
    unknown = set(table) - _SCHOOL_KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}")
    for key, value in table.items():
        expected = _SCHOOL_TYPES[key]
        if type(value) is not expected:
            raise ConfigError(f"{where}.{key}: expected {expected.__name__}, got {value!r}")
    if "name" not in table:
        raise ConfigError(f"{where}.name: missing (the school's name, e.g. \"昆明传媒学院\")")
    time_zone = table.get("time_zone", School.time_zone)
    try:
        LocalDays(time_zone)
    except (ValueError, KeyError):  # ZoneInfoNotFoundError is a KeyError
        raise ConfigError(f"{where}.time_zone: unknown time zone {time_zone!r} (an IANA name "
                          f"such as \"Asia/Shanghai\")") from None
    if "meals" in table:
        table = {**table, "meals": _meals(where, table["meals"])}
    return School(code, **table)


_MEAL_KEYS = {"name": str, "start": str, "end": str, "taps_max": int, "fen_max": int}
_CLOCK = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])\Z")


def _meals(where: str, tables: list) -> list:
    """[[schools.X.meals]] tables as Meals, in the order given; refused with the key named."""
    if len(tables) > limits.meals_per_school_max:
        raise ConfigError(f"{where}.meals: at most {limits.meals_per_school_max} meal periods")
    meals = []
    for number, table in enumerate(tables, start=1):
        here = f"{where}.meals[{number}]"
        if not isinstance(table, dict):
            raise ConfigError(f"{here}: use [[{where}.meals]] tables")
        if set(table) != set(_MEAL_KEYS):
            raise ConfigError(f"{here}: needs exactly {sorted(_MEAL_KEYS)}; got {sorted(table)}")
        for key, expected in _MEAL_KEYS.items():
            if type(table[key]) is not expected:
                raise ConfigError(f"{here}.{key}: expected {expected.__name__}, got "
                                  f"{table[key]!r}")
        lowest, highest = limits.meal_name_chars_range
        if not lowest <= len(table["name"]) <= highest or not table["name"].isprintable():
            raise ConfigError(f"{here}.name: {lowest}..{highest} printable characters")
        minutes = []
        for key in ("start", "end"):
            match = _CLOCK.match(table[key])
            if match is None:
                raise ConfigError(f"{here}.{key}: a local time \"HH:MM\", got {table[key]!r}")
            minutes.append(int(match.group(1)) * 60 + int(match.group(2)))
        if minutes[0] >= minutes[1]:
            raise ConfigError(f"{here}: start must be before end (a period within one day)")
        _check_range(f"{here}.taps_max", table["taps_max"], limits.meal_taps_max_range)
        _check_range(f"{here}.fen_max", table["fen_max"], limits.meal_fen_max_range)
        meal = Meal(table["name"], minutes[0], minutes[1], table["taps_max"], table["fen_max"])
        for other in meals:
            if meal.start_min < other.end_min and other.start_min < meal.end_min:
                raise ConfigError(f"{here}: overlaps the period {other.name!r}")
        meals.append(meal)
    return meals


def _check_range(key: str, value, bounds: tuple) -> None:
    lowest, highest = bounds
    if not lowest <= value <= highest:  # NaN fails too
        unit = " seconds" if key.endswith("_s") else " fen" if key.endswith("_fen") else ""
        raise ConfigError(f"{key}: {value!r} is outside {lowest}..{highest}{unit}")


def validate(config: Config) -> None:
    if not config.schools:
        raise ConfigError("schools: at least one school is needed")
    for code, school in config.schools.items():
        _validate_school(code, school)
    for key, bounds in SETTING_RANGES.items():
        _check_range(key, getattr(config, key), bounds)
    # Offline uploads and reversals find their originals by remembered request id: a window
    # longer than the memory would apply a resent offline record twice, or answer a late
    # reverse "ok" without moving the money back.
    # An offline record is accepted until its `at` plus the window, and `at` may lie up to
    # `offline_future_s` ahead of the clock when it is remembered: its id must outlive both.
    needed = {"offline_window_s": config.offline_window_s + limits.offline_future_s,
              "reversal_window_s": config.reversal_window_s}
    for key, seconds in needed.items():
        if seconds > config.idempotency_retention_s:
            skew = (f" plus the {limits.offline_future_s} s an offline tap may lie ahead"
                    if key == "offline_window_s" else "")
            raise ConfigError(f"{key}: {getattr(config, key)}{skew} is longer than "
                              f"idempotency_retention_s ({config.idempotency_retention_s}); "
                              f"raise the retention or shorten the window")


def questionable_settings(config: Config) -> list[dict]:
    """Settings that load (each is valid alone) but together, or by their size, likely say
    what the operator did not mean, as log fields (`setting`, `value`, `school`, `hint`):
    `switch serve` logs each at start. Not refused: a deployment may mean it (a switch
    capping every amount below what schools allow)."""
    found = []

    def question(setting: str, value: int, school: str, hint: str) -> None:
        found.append({"setting": setting, "value": value, "school": school, "hint": hint})

    cap = config.max_amount_fen
    # Every amount above max_amount_fen is refused `bad_amount` before any limit is read,
    # whatever the request: a debit, a hold, a recharge or credit, a subsidy, a meter's top-up.
    refused = (f"every amount above {cap} fen is refused bad_amount (debits, holds, recharges "
               f"and credits, subsidies, meter top-ups)")
    for code, school in config.schools.items():
        where = f"schools.{code}"
        if cap < school.per_tx_fen:
            question("max_amount_fen", cap, code,
                     f"{refused}: below {where}.per_tx_fen ({school.per_tx_fen}), the limit "
                     f"every account of {code} has until its student sets one")
        elif cap < school.per_tx_max_fen:
            question("max_amount_fen", cap, code,
                     f"{refused}: below {where}.per_tx_max_fen ({school.per_tx_max_fen}), so "
                     f"a per-transaction limit a student of {code} sets above it never applies")
        # An account's own limits keep no_pin <= per_tx <= daily (docs/PROTOCOL.md §4.7):
        # a maximum above the next one's can never be reached.
        for lower, higher in (("no_pin_max_fen", "per_tx_max_fen"),
                              ("per_tx_max_fen", "daily_max_fen")):
            if getattr(school, lower) > getattr(school, higher):
                question(f"{where}.{lower}", getattr(school, lower), code,
                         f"above {where}.{higher} ({getattr(school, higher)}): an account's "
                         f"limits keep no_pin <= per_tx <= daily, so no student can set "
                         f"one above {getattr(school, higher)}")
        # Each valid alone, and far below any meal: written in yuan where fen is meant?
        if school.no_pin_fen < limits.meal_cap_questioned_below_fen:
            question(f"{where}.no_pin_fen", school.no_pin_fen, code,
                     f"less than one yuan: nearly every payment of {code} asks for a PIN "
                     f"(written in yuan?)")
        for name in ("per_tx_fen", "daily_fen", "per_tx_max_fen", "daily_max_fen"):
            if getattr(school, name) < limits.payment_limit_questioned_below_fen:
                question(f"{where}.{name}", getattr(school, name), code,
                         f"{getattr(school, name)} fen is less than a meal: payments of {code} "
                         f"above it are refused (written in yuan?)")
        for number, meal in enumerate(school.meals, start=1):
            if meal.fen_max < limits.meal_cap_questioned_below_fen:
                question(f"{where}.meals[{number}].fen_max", meal.fen_max, code,
                         f"{meal.name} allows {meal.fen_max} fen a student, less than one yuan: "
                         f"nearly every payment in it is refused meal_limit (written in yuan?)")
    if config.offline_amount_max_fen < limits.payment_limit_questioned_below_fen:
        question("offline_amount_max_fen", config.offline_amount_max_fen, "-",
                 f"an offline tap above {config.offline_amount_max_fen} fen is refused "
                 f"bad_amount, its meal already eaten and never paid for (written in yuan?)")
    if cap < limits.payment_limit_questioned_below_fen:
        question("max_amount_fen", cap, "-", f"{refused} (written in yuan?)")
    return found


def _validate_school(code: str, school: School) -> None:
    where = f"schools.{code}"
    if (not code.isascii() or not code.isalnum() or not code.isupper()
            or len(code) > limits.school_code_chars_max):
        raise ConfigError(f"{where}: a school code is 1..{limits.school_code_chars_max} "
                          f"upper-case letters/digits")
    lowest, highest = limits.school_name_chars_range
    if not lowest <= len(school.name.strip()) <= highest or not school.name.isprintable():
        raise ConfigError(f"{where}.name: {lowest}..{highest} printable characters")
    for key, bounds in _SCHOOL_FEN_RANGES.items():
        _check_range(f"{where}.{key}", getattr(school, key), bounds)
    _check_range(f"{where}.repeat_tap_window_s", school.repeat_tap_window_s,
                 limits.repeat_tap_window_s_range)
    if not school.no_pin_fen <= school.per_tx_fen <= school.daily_fen:
        raise ConfigError(f"{where}: need no_pin_fen <= per_tx_fen <= daily_fen")
    for key in ("no_pin_fen", "per_tx_fen", "daily_fen"):
        maximum = key.replace("_fen", "_max_fen")
        if getattr(school, key) > getattr(school, maximum):
            raise ConfigError(f"{where}.{key}: {getattr(school, key)} is above {maximum} "
                              f"({getattr(school, maximum)})")
    fewest, most = limits.building_digits_range
    for building in school.split_buildings:
        if (type(building) is not str or not building.isascii() or not building.isdigit()
                or not fewest <= len(building) <= most):
            raise ConfigError(f"{where}.split_buildings: a list of building numbers as "
                              f"strings of {fewest}..{most} digits, e.g. [\"9\"]; got "
                              f"{building!r}")
    if len(set(school.split_buildings)) != len(school.split_buildings):
        raise ConfigError(f"{where}.split_buildings: a building is listed twice")
