"""Secrets at rest: which values of the store are sealed under the master key, and sealing a
data dir made before they were (in one transaction, at start).

Sealed (switch/config/masterkey.py, each bound to its record): a credential's key (`who`), a
QR secret (the account), a remembered reply that carries a key or a QR secret (its
idempotency key), and the fingerprint key of `meta`. PIN and ID verifiers are keyed in the
core with the master key's verifier key.
"""

import logging

import msgpack

from switch import core
from switch.config.masterkey import MasterKeyError, SealError

log = logging.getLogger("switch")

# The purposes a value is sealed for: a value sealed for one never opens as another.
CREDENTIAL_KEY = b"credential-key"
QR_SECRET = b"qr-secret"
REPLY = b"reply"
META = b"meta"

# Fields of a reply that hold a secret (docs/PROTOCOL.md §4.14): such a reply is remembered
# sealed, and replayed whole (§4.4).
SECRET_REPLY_FIELDS = frozenset({"key", "qr_secret"})

SEALED_MARKER = b"secrets_sealed"        # in `meta`: present once the data dir's secrets are
MASTER_KEY_CHECK = b"master_key_check"   # in `meta`: opens only under this data dir's master key
FINGERPRINT_KEY = b"fingerprint_key"     # in `meta`: keys the fingerprints of requests (§4.4)
_CHECK_TEXT = b"campus-card-switch data dir"

_pack = msgpack.Packer(use_bin_type=True).pack


def is_sealed(store) -> bool:
    return store.get("meta", SEALED_MARKER) is not None


def holds_secret(reply: dict) -> bool:
    return not SECRET_REPLY_FIELDS.isdisjoint(reply)


def prepare(store, master, path: str) -> None:
    """Make `store` usable with `master`: key the core's verifiers, then check that the key
    opens this data dir, or seal a data dir made before secrets were sealed (one write
    transaction, logged). `store.master` is set once the store is sealed."""
    core.set_verifier_key(master.verifier_key)
    check = store.get("meta", MASTER_KEY_CHECK)
    if is_sealed(store) and check is not None:
        try:
            master.open(META, MASTER_KEY_CHECK, check)
        except SealError:
            raise MasterKeyError(f"the master key file does not open the data dir {path} "
                                 f"(another data dir's key?); give this data dir's key file") \
                from None
        store.master = master
        return
    counts = _seal_everything(store, master)
    store.put("meta", MASTER_KEY_CHECK, master.seal(META, MASTER_KEY_CHECK, _CHECK_TEXT))
    store.put("meta", SEALED_MARKER, b"1")
    store.commit_now()
    store.master = master
    if any(counts.values()):
        log.warning("event=secrets_sealed data=%s " + " ".join(f"{name}=%d" for name in counts),
                    path, *counts.values())


def _seal_everything(store, master) -> dict:
    """Seal what a data dir from before sealing holds in the clear; returns the counts."""
    counts = _change_secrets(store, master.seal)
    for account, record in list(store.committed_items("accounts")):
        record = bytearray(record)
        core.key_verifiers(record)
        store.put("accounts", account, record)
        counts["accounts"] += 1
    return counts


def reseal(store, master) -> dict:
    """Seal every sealed value again under `master`'s current key (it must still hold the
    keys they were sealed under), in the open batch; returns the counts."""
    return _change_secrets(store, lambda purpose, bound_to, sealed: master.seal(
        purpose, bound_to, master.open(purpose, bound_to, sealed)))


def _change_secrets(store, change) -> dict:
    """Put `change(purpose, bound_to, value)` in place of every secret value of the store,
    committed ones; a reply that holds a secret and is not sealed yet is given packed."""
    counts = {"credentials": 0, "qr_secrets": 0, "replies": 0, "accounts": 0}
    for who, data in list(store.committed_items("credentials")):
        fields = msgpack.unpackb(data, raw=False)
        fields["key"] = change(CREDENTIAL_KEY, who, fields["key"])
        store.put("credentials", who, _pack(fields))
        counts["credentials"] += 1
    for account, secret in list(store.committed_items("qr_secrets")):
        store.put("qr_secrets", account, change(QR_SECRET, account, secret))
        counts["qr_secrets"] += 1
    # The walk below sees `idempotency` itself: every remembered reply must be there, not
    # waiting in a log (persistence/writeback.py), or it would keep its old seal.
    assert not store.logs_pending, "sealing again while remembered ids wait in a log"
    for key, data in list(store.committed_items("idempotency")):
        remembered = msgpack.unpackb(data, raw=False)
        reply = remembered[2]
        if type(reply) is dict:
            if not holds_secret(reply):
                continue
            reply = _pack(reply)
        remembered[2] = change(REPLY, key, reply)
        store.put("idempotency", key, _pack(remembered))
        counts["replies"] += 1
    for name in (FINGERPRINT_KEY, MASTER_KEY_CHECK):
        value = store.get("meta", name)
        if value is not None:
            store.put("meta", name, change(META, name, value))
    return counts
