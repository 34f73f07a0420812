"""Downstream destinations (docs/PROTOCOL.md §6.3) as configured in `[[destinations]]` tables.

Each one names a receiver the switch signs on to as a client, with the credential and key
it uses there and the journal record kinds that receiver wants (absent: all of them).
"""

import os
import re
from dataclasses import dataclass

from switch import limits
from switch.config.endpoints import parse_host_port
from switch.config.errors import ConfigError
from switch.config.keyfile import KeyFileError, parse_key_hex, read_key_file
from switch.identifiers import is_credential_id

# The journal record kinds of docs/PROTOCOL.md §6.1; a filter may name only these.
JOURNAL_KINDS = frozenset({
    "debit", "qr_debit", "complete", "credit", "reverse", "offline", "meter", "cutoff",
    "restore", "hold", "void", "expire", "lost", "found", "open_account", "issue_card",
    "replace_card", "freeze", "unfreeze", "unlock", "close_account", "refund",
    "subsidy", "subsidy_expire",
})

# Names go into an LMDB key and a metric label: keep them plain.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
_KEYS = {"name", "address", "credential", "key_hex", "key_file", "kinds"}


@dataclass(frozen=True)
class Destination:
    name: str
    host: str
    port: int
    who: str
    key: bytes
    kinds: frozenset | None  # None: every kind

    def __repr__(self) -> str:
        # Never show the key, not even in a traceback.
        kinds = "all" if self.kinds is None else sorted(self.kinds)
        return (f"Destination(name={self.name!r}, address={self.host}:{self.port}, "
                f"who={self.who!r}, kinds={kinds})")

    def wants(self, kind: str) -> bool:
        return self.kinds is None or kind in self.kinds


def parse_destinations(raw_list, base_dir: str | None = None) -> list[Destination]:
    """Check the `[[destinations]]` tables; a relative `key_file` is read from `base_dir`
    (the configuration file's directory) when given, else from the working directory."""
    if not isinstance(raw_list, list):
        raise ConfigError("destinations: must be an array of tables ([[destinations]])")
    destinations = []
    names = set()
    for index, table in enumerate(raw_list):
        where = f"destinations[{index}]"
        if not isinstance(table, dict):
            raise ConfigError(f"{where}: must be a table")
        destination = _parse_one(where, table, base_dir)
        if destination.name in names:
            raise ConfigError(f"{where}.name: duplicate name {destination.name!r}")
        names.add(destination.name)
        destinations.append(destination)
    return destinations


def _parse_one(where: str, table: dict, base_dir: str | None) -> Destination:
    unknown = set(table) - _KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}")
    name = _required_str(where, table, "name")
    if not _NAME.match(name):
        raise ConfigError(f"{where}.name: {name!r} is not 1..64 of A-Z a-z 0-9 _ . - "
                          "(starting with a letter or digit)")
    host, port = _address(where, _required_str(where, table, "address"))
    who = _required_str(where, table, "credential")
    if len(who) > limits.credential_id_chars_max:
        raise ConfigError(f"{where}.credential: longer than "
                          f"{limits.credential_id_chars_max} characters")
    if not is_credential_id(who):
        raise ConfigError(f"{where}.credential: {who!r} is not 1..{limits.credential_id_chars_max}"
                          f" of A-Z a-z 0-9 . _ : @ - (a credential id)")
    key = _key(where, table, base_dir)
    kinds = _kinds(where, table)
    return Destination(name, host, port, who, key, kinds)


def _required_str(where: str, table: dict, key: str) -> str:
    if key not in table:
        raise ConfigError(f"{where}.{key}: missing")
    value = table[key]
    if type(value) is not str or not value:
        raise ConfigError(f"{where}.{key}: must be a non-empty string")
    return value


def _address(where: str, text: str) -> tuple[str, int]:
    try:
        return parse_host_port(text, port_min=1)
    except ValueError as error:
        raise ConfigError(f"{where}.address: {error}") from None


def _key(where: str, table: dict, base_dir: str | None) -> bytes:
    if ("key_hex" in table) == ("key_file" in table):
        raise ConfigError(f"{where}.key_hex: give exactly one of key_hex and key_file")
    try:
        if "key_hex" in table:
            return parse_key_hex(table["key_hex"], f"{where}.key_hex")
        path = table["key_file"]
        if type(path) is not str or not path:
            raise ConfigError(f"{where}.key_file: must be a non-empty string")
        if base_dir is not None and not os.path.isabs(path):
            path = os.path.join(base_dir, path)
        return read_key_file(path)
    except KeyFileError as error:
        # The message says what is wrong, never what the key is.
        raise ConfigError(f"{where}.key_file: {error}" if "key_file" in table else str(error)
                          ) from None


def _kinds(where: str, table: dict) -> frozenset | None:
    if "kinds" not in table:
        return None
    kinds = table["kinds"]
    if not isinstance(kinds, list) or not kinds:
        raise ConfigError(f"{where}.kinds: must be a non-empty list of record kinds "
                          "(leave it out for all kinds)")
    for kind in kinds:
        if type(kind) is not str:
            raise ConfigError(f"{where}.kinds: {kind!r} is not a string")
        if kind not in JOURNAL_KINDS:
            raise ConfigError(f"{where}.kinds: unknown kind {kind!r}")
    return frozenset(kinds)
