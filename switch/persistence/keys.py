"""How keys are laid out where their order matters; pure, so the request layer may use it
without loading LMDB."""


def txn_key(txn: int) -> bytes:
    """A journal txn as a key: 8 bytes big-endian, so keys sort as txns do."""
    return txn.to_bytes(8, "big")
