"""The syntax of every identifier a peer may name, built from the lengths in `limits`.

Checked before any lookup: an identifier that reaches a store key is never empty, never
longer than a key may be, and holds no separator byte.
"""

import re

from switch import limits

ACCOUNT = re.compile(rf"[A-Z0-9-]{{1,{limits.account_id_chars_max}}}\Z")
CARD = re.compile(rf"[0-9A-F]{{{limits.card_id_chars_min},{limits.card_id_chars_max}}}\Z")
PIN = re.compile(rf"[0-9]{{{limits.pin_digits}}}\Z")
ID_LAST6 = re.compile(r"[0-9]{5}[0-9X]\Z")
DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}\Z")
# Credential ids end up in LMDB keys next to a NUL separator: no NUL, no surprises.
CREDENTIAL = re.compile(rf"[A-Za-z0-9._:@-]{{1,{limits.credential_id_chars_max}}}\Z")
# The switch names holds `H` + the txn that opened them.
HOLD = re.compile(rf"H[1-9][0-9]{{0,{limits.hold_id_digits_max - 1}}}\Z")
BUILDING = re.compile(rf"[0-9]{{{limits.building_digits_range[0]},{limits.building_digits_range[1]}}}\Z")
_BUILDING_OF = re.compile(r"[A-Z0-9]+-([0-9]+)[A-Z]?-")


def building_of(account_id: str) -> str | None:
    """`WH-8D-1006` is building 8 (the naming of the schools' one-card guides); None for names
    without a building."""
    match = _BUILDING_OF.match(account_id)
    return match.group(1) if match else None


def is_credential_id(value) -> bool:
    return type(value) is str and CREDENTIAL.match(value) is not None
