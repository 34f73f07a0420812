"""`[[destinations]]` in the configuration: what is accepted, and errors that name the key."""

import os
import tomllib

import pytest

from switch.config import ConfigError
from switch.config.destinations import JOURNAL_KINDS, parse_destinations
from switch.receivers.utility import WANTED_KINDS as UTILITY_WANTED_KINDS
from tests.paths import REPO_ROOT
from tests.key_files import write_private

KEY_HEX = "ab" * 32


def table(**overrides):
    base = {"name": "billing", "address": "127.0.0.1:7101", "credential": "switch-billing",
            "key_hex": KEY_HEX, "kinds": ["debit", "reverse"]}
    base.update(overrides)
    return {key: value for key, value in base.items() if value is not None}


def test_a_destination_is_parsed():
    [destination] = parse_destinations([table()])
    assert (destination.name, destination.host, destination.port, destination.who) == \
        ("billing", "127.0.0.1", 7101, "switch-billing")
    assert destination.key == bytes.fromhex(KEY_HEX)
    assert destination.kinds == frozenset({"debit", "reverse"})
    assert destination.wants("debit") and not destination.wants("credit")
    assert KEY_HEX not in repr(destination)   # the key stays out of logs and tracebacks


def test_kinds_left_out_means_every_kind():
    [destination] = parse_destinations([table(kinds=None)])
    assert destination.kinds is None
    assert all(destination.wants(kind) for kind in JOURNAL_KINDS)


def test_key_file_is_read_relative_to_the_configuration(tmp_path):
    write_private((tmp_path / "billing.key"), KEY_HEX.upper() + "\n")
    [destination] = parse_destinations([table(key_hex=None, key_file="billing.key")],
                                       base_dir=str(tmp_path))
    assert destination.key == bytes.fromhex(KEY_HEX)


def test_no_destinations_at_all():
    assert parse_destinations([]) == []


@pytest.mark.parametrize("tables, message", [
    ([table(), table(name="utility", kinds=["debitt"])],
     "destinations[1].kinds: unknown kind 'debitt'"),
    ([table(kinds=[])], "destinations[0].kinds: must be a non-empty list"),
    ([table(kinds="debit")], "destinations[0].kinds: must be a non-empty list"),
    ([table(kinds=[3])], "destinations[0].kinds: 3 is not a string"),
    ([table(name=None)], "destinations[0].name: missing"),
    ([table(name="bad name")], "destinations[0].name: 'bad name' is not"),
    ([table(name="x" * 65)], "destinations[0].name:"),
    ([table(), table()], "destinations[1].name: duplicate name 'billing'"),
    ([table(address=None)], "destinations[0].address: missing"),
    ([table(address="127.0.0.1")], "destinations[0].address: expected \"HOST:PORT\""),
    ([table(address="127.0.0.1:0")], "destinations[0].address:"),
    ([table(address="127.0.0.1:70000")], "destinations[0].address:"),
    ([table(address=7101)], "destinations[0].address: must be a non-empty string"),
    ([table(credential=None)], "destinations[0].credential: missing"),
    ([table(credential="w" * 65)], "destinations[0].credential: longer than 64"),
    ([table(key_hex=None)], "destinations[0].key_hex: give exactly one of key_hex and key_file"),
    ([table(key_file="k")], "destinations[0].key_hex: give exactly one of key_hex and key_file"),
    ([table(key_hex="ab" * 31)], "destinations[0].key_hex: must be 64 hex characters"),
    ([table(key_hex="zz" * 32)], "destinations[0].key_hex: must be 64 hex characters"),
    ([table(key_hex=None, key_file="/nonexistent/billing.key")],
     "destinations[0].key_file: cannot read '/nonexistent/billing.key'"),
    ([table(port=7101)], "destinations[0]: unknown key(s) ['port']"),
    ([table(), "billing"], "destinations[1]: must be a table"),
    ({"name": "billing"}, "destinations: must be an array of tables"),
])
def test_errors_name_the_key(tables, message):
    with pytest.raises(ConfigError) as error:
        parse_destinations(tables)
    assert message in str(error.value)
    assert KEY_HEX not in str(error.value)


def test_a_bad_key_file_is_named_without_showing_it(tmp_path):
    write_private((tmp_path / "billing.key"), "not a key at all\n")
    with pytest.raises(ConfigError) as error:
        parse_destinations([table(key_hex=None, key_file="billing.key")], base_dir=str(tmp_path))
    assert str(error.value) == (f"destinations[0].key_file: {str(tmp_path / 'billing.key')!r}: "
                                "must be 64 hex characters (a 32-byte key)")


def test_a_key_file_others_may_read_is_refused_naming_its_mode(tmp_path):
    (tmp_path / "billing.key").write_text(KEY_HEX + "\n")
    (tmp_path / "billing.key").chmod(0o644)
    with pytest.raises(ConfigError) as error:
        parse_destinations([table(key_hex=None, key_file="billing.key")], base_dir=str(tmp_path))
    path = str(tmp_path / "billing.key")
    assert str(error.value) == (
        f"destinations[0].key_file: key file {path!r} may be read or written by others (mode "
        f"0644); whoever reads it signs on as its credential: chmod 600 {path}")
    (tmp_path / "billing.key").chmod(0o400)   # read-only to its owner: taken
    parse_destinations([table(key_hex=None, key_file="billing.key")], base_dir=str(tmp_path))


def test_the_example_file_parses(tmp_path):
    path = REPO_ROOT / "examples" / "switch-with-receivers.toml"
    with open(path, "rb") as handle:
        data = tomllib.load(handle)
    for name in ("billing.key", "utility.key"):
        write_private(tmp_path / name, os.urandom(32).hex())
    billing, utility = parse_destinations(data["destinations"], base_dir=str(tmp_path))
    assert (billing.name, billing.port, utility.name, utility.port) == \
        ("billing", 7101, "utility", 7102)
    # What the reference utility receiver takes, a room's refund included.
    assert utility.kinds == frozenset({"credit", "meter", "cutoff", "restore", "refund"})
    assert utility.kinds == UTILITY_WANTED_KINDS


@pytest.mark.parametrize("mode, refused", [(0o644, True), (0o604, True), (0o640, True),
                                           (0o600, False), (0o400, False)])
def test_a_key_written_inline_is_refused_in_a_configuration_others_may_read(
        tmp_path, mode, refused):
    """key_hex makes the configuration file as secret as a key file: the same rule."""
    from switch.config import ConfigError, load_config
    path = tmp_path / "switch.toml"
    path.write_text(f'[[destinations]]\nname = "billing"\naddress = "127.0.0.1:7101"\n'
                    f'credential = "switch-billing"\nkey_hex = "{KEY_HEX}"\n')
    os.chmod(path, mode)
    if not refused:
        assert load_config(str(path)).destinations[0].key == bytes.fromhex(KEY_HEX)
        return
    with pytest.raises(ConfigError) as raised:
        load_config(str(path))
    said = str(raised.value)
    assert said.startswith(f"{path}: holds destinations[0].key_hex, a credential's key, and "
                           f"may be read or written by others (mode {mode:04o})")
    assert f"chmod 600 {path}" in said and "key_file" in said and KEY_HEX not in said


def test_a_configuration_without_an_inline_key_may_be_read_by_others(tmp_path):
    from switch.config import load_config
    key = tmp_path / "billing.key"
    key.write_text(KEY_HEX + "\n")
    os.chmod(key, 0o600)
    path = tmp_path / "switch.toml"
    path.write_text('[[destinations]]\nname = "billing"\naddress = "127.0.0.1:7101"\n'
                    'credential = "switch-billing"\nkey_file = "billing.key"\n')
    os.chmod(path, 0o644)
    assert load_config(str(path)).destinations[0].key == bytes.fromhex(KEY_HEX)


def test_a_filter_may_name_every_kind_the_journal_holds():
    # `kinds = ["subsidy", "subsidy_expire"]` was "unknown kind", though §6.1 lists both and
    # the switch writes them (helper-68): the filter's list is the audit's, every kind.
    from switch.persistence.audit import KIND_SIGNS
    assert JOURNAL_KINDS == set(KIND_SIGNS)
    [destination] = parse_destinations([{"name": "grants", "address": "127.0.0.1:7103",
                                         "credential": "switch-grants", "key_hex": "ab" * 32,
                                         "kinds": ["subsidy", "subsidy_expire"]}])
    assert destination.wants("subsidy") and not destination.wants("debit")
