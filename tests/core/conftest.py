"""Both cores key their verifiers with one test key, as the switch keys them with the master
key's (switch/config/masterkey.py)."""

import hmac

import pytest

import switch.core._authorize
import switch.core.reference

VERIFIER_KEY = bytes(range(32, 64))


def verifier(salt: bytes, label: bytes, value: bytes) -> bytes:
    """What PIN_HASH (label b"pin:") or ID_HASH (b"id:") holds: the salted HMAC, keyed."""
    return hmac.digest(VERIFIER_KEY, hmac.digest(salt, label + value, "sha256"), "sha256")


@pytest.fixture(autouse=True)
def verifier_key():
    for implementation in (switch.core._authorize, switch.core.reference):
        implementation.set_verifier_key(VERIFIER_KEY)
