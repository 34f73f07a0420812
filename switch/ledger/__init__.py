"""The request layer: synchronous, no I/O of its own. `execute` runs one request against the
ledger's state and returns its reply; the shell commits and answers. It imports neither trio,
lmdb nor prometheus_client."""

from switch.ledger.state import Credential, Ledger

__all__ = ["Credential", "Ledger"]
