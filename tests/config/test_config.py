"""Configuration: the documented example loads; bad keys are refused by name."""

import pytest

from switch import limits
from switch.config import (SETTING_RANGES, ConfigError, building_of, default_config, load_config,
                           questionable_settings, validate)
from tests.paths import REPO_ROOT

EXAMPLE = REPO_ROOT / "examples" / "switch.toml"


def test_documented_example_loads_and_matches_the_defaults():
    config = load_config(str(EXAMPLE))
    defaults = default_config()
    assert set(config.schools) == {"WH", "CUIK"}
    assert config.schools["CUIK"].split_buildings == ["9"]
    assert config.schools["WH"].name == "云南艺术学院文华学院"
    assert config.batch_requests_max == defaults.batch_requests_max
    assert config.hold_timeout_s == defaults.hold_timeout_s


def test_a_third_school_by_configuration(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[schools.WH]\nname = "文华"\n[schools.YNU]\nname = "云南大学"\n'
                    'time_zone = "Asia/Shanghai"\nno_pin_fen = 3000\n')
    config = load_config(str(path))
    assert set(config.schools) == {"WH", "YNU"} and config.schools["YNU"].no_pin_fen == 3000


@pytest.mark.parametrize("text,named", [
    ("hold_timeout = 5\n", "hold_timeout"),
    ("hold_timeout_s = \"5\"\n", "hold_timeout_s"),
    ("[schools.WH]\nname = \"x\"\ndaily = 1\n", "schools.WH"),
    ("[schools.WH]\nname = \"x\"\nno_pin_fen = \"5000\"\n", "schools.WH.no_pin_fen"),
    ("[schools.WH]\nname = \"x\"\ntime_zone = \"Mars/Olympus\"\n", "schools.WH"),
    ("[schools.WH]\nname = \"x\"\nno_pin_fen = 60000\n", "schools.WH"),
    ("[schools.wh]\nname = \"x\"\n", "schools.wh"),
    ("[schools.WH]\nname = \"x\"\nsplit_buildings = [9]\n", "split_buildings"),
    ("batch_requests_max = 0\n", "batch_requests_max"),
    ("this is not toml", "switch.toml"),
    # Values that would start a switch refusing everything:
    ("connections_max = -1\n", "connections_max: -1 is outside"),
    ("idle_timeout_s = -5.0\n", "idle_timeout_s: -5.0 is outside"),
    ("idle_timeout_s = nan\n", "idle_timeout_s: nan is outside"),
    ("idle_timeout_s = inf\n", "idle_timeout_s: inf is outside"),
    ("hold_timeout_s = 0\n", "hold_timeout_s: 0 is outside"),
    ("max_amount_fen = 0\n", "max_amount_fen: 0 is outside"),
    ("batch_wait_s = -0.0001\n", "batch_wait_s: -0.0001 is outside"),
    ("connections_max = true\n", "connections_max: expected int"),
    ("master_key_file = 3\n", "master_key_file: must be a non-empty string"),
    ('master_key_file = ""\n', "master_key_file: must be a non-empty string"),
])
def test_bad_configuration_names_the_key(tmp_path, text, named):
    path = tmp_path / "switch.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(str(path))
    assert named in str(caught.value)


def test_building_numbers_from_room_names():
    assert building_of("WH-8D-1006") == "8"
    assert building_of("CUIK-9D-0101-E") == "9"
    assert building_of("WH20230001") is None


# ---------------------------------------------------------------- ranges
# The windows that find originals by remembered request id may not outlast the memory; the
# range tests keep them short and the memory long unless one of them is the key under test.
_ROOM = {"offline_window_s": limits.offline_window_s_range[0],
         "reversal_window_s": limits.reversal_window_s_range[0],
         "idempotency_retention_s": limits.idempotency_retention_s_range[1]}


def _settings_file(tmp_path, key, value) -> str:
    settings = {**_ROOM, key: value}
    path = tmp_path / "switch.toml"
    path.write_text("".join(f"{name} = {_toml(v)}\n" for name, v in settings.items()))
    return str(path)


def _toml(value) -> str:
    if isinstance(value, float) and value != value:
        return "nan"
    if value in (float("inf"), float("-inf")):
        return "inf" if value > 0 else "-inf"
    return repr(value)


def _just_outside(bounds):
    lowest, highest = bounds
    if isinstance(lowest, float):
        return lowest - 0.001, highest + 0.001
    return lowest - 1, highest + 1


@pytest.mark.parametrize("key", sorted(SETTING_RANGES))
def test_every_setting_is_accepted_at_its_bounds(tmp_path, key):
    for value in SETTING_RANGES[key]:
        assert getattr(load_config(_settings_file(tmp_path, key, value)), key) == value


@pytest.mark.parametrize("key", sorted(SETTING_RANGES))
def test_every_setting_is_refused_just_outside_its_bounds_with_the_key_named(tmp_path, key):
    for value in _just_outside(SETTING_RANGES[key]):
        with pytest.raises(ConfigError) as caught:
            load_config(_settings_file(tmp_path, key, value))
        assert str(caught.value).startswith(f"{key}: {value!r} is outside"), caught.value


@pytest.mark.parametrize("window", ["offline_window_s", "reversal_window_s"])
def test_a_window_longer_than_the_idempotency_memory_is_refused(tmp_path, window):
    path = tmp_path / "switch.toml"
    other = {"offline_window_s": "reversal_window_s", "reversal_window_s": "offline_window_s"}
    # An offline record's id must outlive its window plus the skew an offline tap may have.
    longest = 86400 - (limits.offline_future_s if window == "offline_window_s" else 0)
    for value in (longest, longest + 1):
        path.write_text(f"idempotency_retention_s = 86400\n{other[window]} = 3600\n"
                        f"{window} = {value}\n")
        if value == longest:
            assert getattr(load_config(str(path)), window) == longest
            continue
        with pytest.raises(ConfigError) as caught:
            load_config(str(path))
        assert str(caught.value).startswith(f"{window}: {value}")
        assert "is longer than idempotency_retention_s (86400)" in str(caught.value)


def test_the_defaults_are_inside_every_range():
    validate(default_config())


def _school_file(tmp_path, **values) -> str:
    path = tmp_path / "switch.toml"
    lines = ["[schools.WH]", 'name = "文华"'] + [f"{k} = {v}" for k, v in values.items()]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.mark.parametrize("key", ["per_tx_fen", "daily_fen", "no_pin_fen", "per_tx_max_fen",
                                 "daily_max_fen", "no_pin_max_fen"])
def test_school_money_values_are_range_checked(tmp_path, key):
    lowest = (limits.school_no_pin_fen_range if key.startswith("no_pin")
              else limits.school_limit_fen_range)[0]
    # Everything at its lowest keeps the ordering rules satisfied around the key under test.
    floor = {k: limits.school_limit_fen_range[0] for k in ("per_tx_fen", "daily_fen",
                                                           "per_tx_max_fen", "daily_max_fen")}
    floor.update(no_pin_fen=0, no_pin_max_fen=0)
    school = load_config(_school_file(tmp_path, **{**floor, key: lowest})).schools["WH"]
    assert getattr(school, key) == lowest
    with pytest.raises(ConfigError) as caught:
        load_config(_school_file(tmp_path, **{**floor, key: lowest - 1}))
    assert str(caught.value).startswith(f"schools.WH.{key}: {lowest - 1} is outside")
    highest = limits.school_limit_fen_range[1]
    with pytest.raises(ConfigError) as caught:
        load_config(_school_file(tmp_path, **{key: highest + 1}))
    assert str(caught.value).startswith(f"schools.WH.{key}: {highest + 1} is outside")


def test_the_repeat_tap_window_is_range_checked(tmp_path):
    lowest, highest = limits.repeat_tap_window_s_range
    for value in (lowest, highest):
        school = load_config(_school_file(tmp_path, repeat_tap_window_s=value)).schools["WH"]
        assert school.repeat_tap_window_s == value
    for value in (lowest - 1, highest + 1):
        with pytest.raises(ConfigError) as caught:
            load_config(_school_file(tmp_path, repeat_tap_window_s=value))
        assert str(caught.value).startswith(f"schools.WH.repeat_tap_window_s: {value} is outside")
    with pytest.raises(ConfigError, match="repeat_tap_window_s: expected int"):
        load_config(_school_file(tmp_path, repeat_tap_window_s=1.5))
    assert default_config().schools["WH"].repeat_tap_window_s == 0      # off unless set


def _meal_file(tmp_path, *meals) -> str:
    path = tmp_path / "meals.toml"
    lines = ["[schools.WH]", 'name = "文华"']
    for meal in meals:
        lines += ["[[schools.WH.meals]]"] + [f"{k} = {v}" for k, v in meal.items()]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


LUNCH = {"name": '"lunch"', "start": '"11:00"', "end": '"13:00"', "taps_max": 2,
         "fen_max": 3000}


def test_meal_periods_load_in_order_and_their_bounds_are_checked(tmp_path):
    breakfast = {**LUNCH, "name": '"breakfast"', "start": '"06:30"', "end": '"09:00"'}
    school = load_config(_meal_file(tmp_path, LUNCH, breakfast)).schools["WH"]
    assert [(m.name, m.start_min, m.end_min, m.taps_max, m.fen_max) for m in school.meals] == [
        ("lunch", 660, 780, 2, 3000), ("breakfast", 390, 540, 2, 3000)]
    for key in ("taps_max", "fen_max"):
        lowest, highest = getattr(limits, f"meal_{key}_range")
        for value in (lowest, highest):
            load_config(_meal_file(tmp_path, {**LUNCH, key: value}))
        for value in (lowest - 1, highest + 1):
            with pytest.raises(ConfigError, match=rf"meals\[1\]\.{key}: {value} is outside"):
                load_config(_meal_file(tmp_path, {**LUNCH, key: value}))
    most = limits.meals_per_school_max
    periods = [{**LUNCH, "start": f'"{n:02d}:00"', "end": f'"{n:02d}:30"'} for n in range(most + 1)]
    load_config(_meal_file(tmp_path, *periods[:most]))
    with pytest.raises(ConfigError, match="at most"):
        load_config(_meal_file(tmp_path, *periods))


@pytest.mark.parametrize("change, named", [
    ({"start": '"13:00"'}, "start must be before end"),
    ({"start": '"24:00"'}, "start: a local time"),
    ({"end": '"1:00"'}, "end: a local time"),
    ({"taps_max": '"2"'}, "taps_max: expected int"),
    ({"name": '""'}, "name:"),
    ({"extra": 1}, "needs exactly"),
])
def test_a_bad_meal_period_is_refused_by_name(tmp_path, change, named):
    with pytest.raises(ConfigError, match=named):
        load_config(_meal_file(tmp_path, {**LUNCH, **change}))


def test_overlapping_meal_periods_are_refused(tmp_path):
    late = {**LUNCH, "name": '"late lunch"', "start": '"12:59"', "end": '"14:00"'}
    with pytest.raises(ConfigError, match="overlaps the period 'lunch'"):
        load_config(_meal_file(tmp_path, LUNCH, late))


def test_school_maxima_can_reach_the_top_of_the_range(tmp_path):
    highest = limits.school_limit_fen_range[1]
    school = load_config(_school_file(tmp_path, **{k: highest for k in (
        "no_pin_fen", "per_tx_fen", "daily_fen", "no_pin_max_fen", "per_tx_max_fen",
        "daily_max_fen")})).schools["WH"]
    assert school.daily_max_fen == highest


@pytest.mark.parametrize("table,named", [
    ('name = ""', "schools.WH.name:"),
    ('name = "   "', "schools.WH.name:"),
    (f'name = "{"校" * (limits.school_name_chars_range[1] + 1)}"', "schools.WH.name:"),
    ('time_zone = "Mars/Olympus"', "schools.WH.time_zone: unknown time zone 'Mars/Olympus'"),
    ('time_zone = "../../etc/passwd"', "schools.WH.time_zone: unknown time zone"),
    ('time_zone = ""', "schools.WH.time_zone: unknown time zone"),
    ('split_buildings = ["9a"]', "schools.WH.split_buildings:"),
    ('split_buildings = [""]', "schools.WH.split_buildings:"),
    ('split_buildings = ["１２"]', "schools.WH.split_buildings:"),
    (f'split_buildings = ["{"1" * (limits.building_digits_range[1] + 1)}"]',
     "schools.WH.split_buildings:"),
    ('split_buildings = ["9", "9"]', "schools.WH.split_buildings: a building is listed twice"),
    ('per_tx_fen = 100000\ndaily_fen = 100000\nper_tx_max_fen = 99999',
     "schools.WH.per_tx_fen: 100000 is above per_tx_max_fen (99999)"),
])
def test_school_values_name_their_key(tmp_path, table, named):
    path = tmp_path / "switch.toml"
    text = "[schools.WH]\n" + ("" if table.startswith("name") else 'name = "文华"\n') + table
    path.write_text(text + "\n")
    with pytest.raises(ConfigError) as caught:
        load_config(str(path))
    assert str(caught.value).startswith(named), caught.value


def test_school_values_at_their_bounds_are_accepted(tmp_path):
    path = tmp_path / "switch.toml"
    most = limits.building_digits_range[1]
    path.write_text(f'[schools.WH]\nname = "{"校" * limits.school_name_chars_range[1]}"\n'
                    f'split_buildings = ["{"1" * most}", "9"]\ntime_zone = "UTC"\n')
    school = load_config(str(path)).schools["WH"]
    assert school.split_buildings == ["1" * most, "9"] and school.time_zone == "UTC"


def test_a_school_without_a_name_is_refused(tmp_path):
    path = tmp_path / "switch.toml"
    path.write_text("[schools.WH]\ntime_zone = \"Asia/Shanghai\"\n")
    with pytest.raises(ConfigError) as caught:
        load_config(str(path))
    assert str(caught.value).startswith("schools.WH.name: missing")


@pytest.mark.parametrize("contents", [b"\xff\xfe not utf-8", b"[schools.WH\n"])
def test_an_unreadable_file_is_a_configuration_error(tmp_path, contents):
    path = tmp_path / "switch.toml"
    path.write_bytes(contents)
    with pytest.raises(ConfigError) as caught:
        load_config(str(path))
    assert str(caught.value).startswith(f"{path}: not valid TOML")


def test_a_file_saved_with_a_bom_is_told_so(tmp_path):
    # The outside test's operator pass: Notepad's "UTF-8" got "Invalid statement (line 1,
    # column 1)", no cause named.
    path = tmp_path / "switch.toml"
    path.write_bytes(b"\xef\xbb\xbf" + b'[schools.WH]\nname = "x"\n')
    with pytest.raises(ConfigError) as caught:
        load_config(str(path))
    assert str(caught.value) == (f"{path}: begins with a byte order mark (BOM), which TOML "
                                 f"does not allow: save it as UTF-8 without BOM")


def test_a_file_too_large_for_a_configuration_is_refused_unread(tmp_path):
    path = tmp_path / "switch.toml"
    path.write_bytes(b"#" * (limits.config_file_bytes_max + 1))
    with pytest.raises(ConfigError, match="larger than a configuration file can be"):
        load_config(str(path))


def test_a_master_key_file_is_read_relative_to_the_configuration(tmp_path):
    path = tmp_path / "etc" / "switch.toml"
    path.parent.mkdir()
    path.write_text('master_key_file = "keys/data.key"\n')
    assert load_config(str(path)).master_key_file == str(tmp_path / "etc" / "keys" / "data.key")
    assert load_config(None).master_key_file is None     # default: beside the data dir


def test_a_cap_on_every_amount_below_a_schools_limits_loads_and_is_questioned(tmp_path):
    """max_amount_fen refuses any amount above it before a limit is read: below a school's
    per_tx_max_fen part of what students may set never applies; below its per_tx_fen even
    the limit every account starts with does not. Each setting is valid alone, so it loads;
    `serve` logs what this names."""
    assert questionable_settings(default_config()) == []
    assert questionable_settings(load_config(str(EXAMPLE))) == []
    schools = default_config().schools
    per_tx = {code: school.per_tx_fen for code, school in schools.items()}
    per_tx_max = {code: school.per_tx_max_fen for code, school in schools.items()}
    at_the_limit = load_config(_settings_file(tmp_path, "max_amount_fen", max(per_tx_max.values())))
    assert questionable_settings(at_the_limit) == []
    for cap, named, said in ((min(per_tx_max.values()) - 1, per_tx_max, "per_tx_max_fen"),
                             (min(per_tx.values()) - 1, per_tx, "per_tx_fen")):
        found = questionable_settings(load_config(_settings_file(tmp_path, "max_amount_fen",
                                                                 cap)))
        assert sorted(entry["school"] for entry in found) == sorted(schools)
        for entry in found:
            assert set(entry) == {"setting", "value", "school", "hint"}
            assert entry["setting"] == "max_amount_fen" and entry["value"] == cap
            assert f"every amount above {cap} fen is refused bad_amount" in entry["hint"]
            assert "recharges" in entry["hint"] and "subsidies" in entry["hint"]
            assert (f"below schools.{entry['school']}.{said} ({named[entry['school']]})"
                    in entry["hint"])


@pytest.mark.parametrize("values, setting, above", [
    ({"no_pin_max_fen": 30_000, "per_tx_fen": 20_000, "per_tx_max_fen": 20_000},
     "schools.WH.no_pin_max_fen", "per_tx_max_fen (20000)"),
    ({"per_tx_max_fen": 600_000, "daily_max_fen": 500_000},
     "schools.WH.per_tx_max_fen", "daily_max_fen (500000)"),
])
def test_a_schools_maximum_above_the_next_ones_loads_and_is_questioned(tmp_path, values,
                                                                       setting, above):
    """An account's limits keep no_pin <= per_tx <= daily (set_limits refuses otherwise), so
    a maximum above the next one's can never be reached by any student."""
    found = questionable_settings(load_config(_school_file(tmp_path, **values)))
    assert [(entry["setting"], entry["school"]) for entry in found] == [(setting, "WH")]
    assert f"above schools.WH.{above}" in found[0]["hint"]
    assert found[0]["value"] == values[setting.rpartition(".")[2]]


def test_a_meal_cap_under_a_yuan_loads_and_is_questioned(tmp_path):
    """A cap written in yuan (30 for 30 yuan) refuses nearly every canteen tap in the meal."""
    in_yuan = {**LUNCH, "fen_max": 30}
    supper = {**LUNCH, "name": '"supper"', "start": '"17:00"', "end": '"19:00"'}
    found = questionable_settings(load_config(_meal_file(tmp_path, supper, in_yuan | {
        "start": '"11:00"', "end": '"13:00"'})))
    assert [(entry["setting"], entry["value"]) for entry in found] == [
        ("schools.WH.meals[2].fen_max", 30)]
    assert "lunch allows 30 fen" in found[0]["hint"] and "meal_limit" in found[0]["hint"]
    fine = {**LUNCH, "fen_max": limits.meal_cap_questioned_below_fen}
    assert questionable_settings(load_config(_meal_file(tmp_path, fine))) == []


def test_payment_limits_written_in_yuan_load_and_are_questioned(tmp_path):
    # no_pin 50, per_tx 500, daily 1000 and an offline cap of 500, meant as yuan: every
    # payment over 5 yuan refused, offline meals over 5 yuan never paid for, and not a word
    # at start (helper-68).
    path = tmp_path / "switch.toml"
    path.write_text("offline_amount_max_fen = 500\n[schools.WH]\nname = \"文华\"\n"
                    "no_pin_fen = 50\nper_tx_fen = 500\ndaily_fen = 1000\n")
    found = {entry["setting"]: entry for entry in questionable_settings(load_config(str(path)))}
    assert set(found) == {"offline_amount_max_fen", "schools.WH.no_pin_fen",
                          "schools.WH.per_tx_fen"}
    assert all("written in yuan?" in entry["hint"] for entry in found.values())
    assert found["schools.WH.per_tx_fen"]["value"] == 500
    at_the_bound = tmp_path / "fine.toml"
    at_the_bound.write_text(
        f"offline_amount_max_fen = {limits.payment_limit_questioned_below_fen}\n"
        f"[schools.WH]\nname = \"文华\"\nno_pin_fen = {limits.meal_cap_questioned_below_fen}\n"
        f"per_tx_fen = {limits.payment_limit_questioned_below_fen}\n")
    assert questionable_settings(load_config(str(at_the_bound))) == []
