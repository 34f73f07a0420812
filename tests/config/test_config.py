"""Configuration: the documented example loads; bad keys are refused by name."""

import pytest

from switch.config import ConfigError, building_of, default_config, load_config
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
