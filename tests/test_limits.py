"""Every bound is named once, in `switch/limits.py`, and every name there is used."""

import re

from switch import limits
from tests.paths import REPO_ROOT


def _names():
    return [name for name in vars(limits) if not name.startswith("_")]


def test_every_named_limit_is_used_by_the_switch():
    source = "\n".join(path.read_text() for path in (REPO_ROOT / "switch").rglob("*.py")
                       if path.name != "limits.py")
    source += (REPO_ROOT / "switch/core/_authorize.pyx").read_text()
    unused = [name for name in _names() if not re.search(rf"\blimits\.{name}\b", source)]
    assert unused == []


def test_limits_say_their_unit_last():
    units = ("_s", "_ms", "_bytes", "_fen", "_max", "_min", "_chars", "_digits", "_ratio",
             "_factor", "_kept", "_per_s", "_burst", "_bytes_small", "_version", "_cards_max")
    unnamed = [name for name in _names()
               if not name.endswith(units) and name not in UNITLESS]
    assert unnamed == []


# Names that count things whose unit is the thing itself, or are versions and keys.
UNITLESS = {"protocol_version", "listen_backlog", "lmdb_max_dbs", "lmdb_max_readers",
            "receives_between_checkpoints", "history_limit_default", "offline_records_max"}
