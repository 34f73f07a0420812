"""Opening a data dir: initialise an empty one with the `admin` credential and `admin.key`."""

import os

from switch import limits
from switch.ledger import Credential
from switch.persistence.store import Store

ADMIN_WHO = "admin"
ADMIN_KEY_FILE = "admin.key"


def open_data_dir(path: str) -> Store:
    """Open (and if new, initialise) the data dir; returns the store."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    store = Store(os.path.join(path, "lmdb"))
    if store.get("credentials", ADMIN_WHO.encode()) is None:
        key = os.urandom(limits.credential_key_size_bytes)
        key_path = os.path.join(path, ADMIN_KEY_FILE)
        # Write the key file first (0600, atomically), then the credential: a crash in
        # between leaves an orphan key file that the next start overwrites.
        temporary = key_path + ".tmp"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(key.hex() + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, key_path)
        store.write_now("credentials", ADMIN_WHO.encode(),
                        Credential(who=ADMIN_WHO, key=key, role="admin").to_bytes())
    return store


def read_admin_key(path: str) -> bytes:
    with open(os.path.join(path, ADMIN_KEY_FILE)) as handle:
        return bytes.fromhex(handle.read().strip())
