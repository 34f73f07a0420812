"""LMDB persistence: balances, cards, credentials, the journal and idempotency.

`switch.persistence.store` holds the LMDB environment; importing this package alone loads
nothing else, so `switch.persistence.keys` stays usable without LMDB."""
