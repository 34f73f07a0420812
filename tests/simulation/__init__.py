"""A seeded simulation of the ledger: random requests, clock steps, commit failures and
crashes against the synchronous request layer, with the money invariants checked after every
step (`ledger_sim`); `run` is its command line, `make simulate` runs it."""
