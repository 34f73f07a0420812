"""LMDB persistence: balances, cards, credentials, the journal and idempotency."""

from switch.persistence.store import SCHEMA_VERSION, Batch, SchemaMismatch, Store

__all__ = ["SCHEMA_VERSION", "Batch", "SchemaMismatch", "Store"]
