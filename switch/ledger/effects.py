"""What the ledger asks the shell to do once a batch is durable, as data: the shell acts on
these after the commit (and drops them when the commit fails). Never callbacks."""

from dataclasses import dataclass


@dataclass(frozen=True)
class BlacklistPush:
    """Send `message` to every connected terminal of `school`."""
    school: str
    message: dict


@dataclass(frozen=True)
class Revocation:
    """Close every open session of credential `who`."""
    who: str


@dataclass(frozen=True)
class PowerCutoff:
    """A dorm room's power was cut off (counted and logged by the shell)."""
    school: str
    account: str
    balance: int


@dataclass(frozen=True)
class ClosedAccountTap:
    """An offline tap on a closed account was refused and kept for the operator (counted)."""
    school: str


@dataclass(frozen=True)
class JournalAdvanced:
    """New journal records up to `last_txn` are readable: wake the forwarders."""
    last_txn: int
