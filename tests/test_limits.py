"""Every bound is named once, in `switch/limits.py`, and every name there is used."""

import re

from switch import limits
from switch.config import SETTING_RANGES
from tests.paths import REPO_ROOT


def _names():
    return [name for name in vars(limits) if not name.startswith("_")]


def test_every_named_limit_is_used_by_the_switch():
    source = "\n".join(path.read_text() for path in (REPO_ROOT / "switch").rglob("*.py")
                       if path.name != "limits.py")
    source += (REPO_ROOT / "switch/core/_authorize.pyx").read_text()
    # A setting's range is looked up by the setting's name (switch/config.py SETTING_RANGES).
    settings = set(SETTING_RANGES)
    unused = [name for name in _names() if not re.search(rf"\blimits\.{name}\b", source)
              and not (name.endswith("_range") and name[:-len("_range")] in settings)]
    assert unused == []


def test_limits_say_their_unit_last():
    units = ("_s", "_ms", "_bytes", "_fen", "_max", "_min", "_chars", "_digits", "_ratio",
             "_factor", "_kept", "_per_s", "_burst", "_bytes_small", "_version", "_cards_max")
    # A range is (lowest, highest) of the value it names, and says that value's unit.
    unnamed = [name for name in _names()
               if not name.removesuffix("_range").endswith(units) and name not in UNITLESS
               and name.removesuffix("_range") not in UNITLESS]
    assert unnamed == []


# Names that count things whose unit is the thing itself, or are versions and keys.
UNITLESS = {"protocol_version", "listen_backlog", "lmdb_max_dbs", "lmdb_max_readers",
            "receives_between_checkpoints", "records_between_history_marks",
            "history_limit_default", "rooms_limit_default",
            "offline_records_max", "page_records_per_request_cost",
            "pushes_per_request_cost", "blacklist_cards_per_request_cost",
            "school_name_chars", "building_digits"}
