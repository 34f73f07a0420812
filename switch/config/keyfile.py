"""Credential keys on disk: a file holding the key as hex characters and nothing else, mode 0600.

One reader and one writer for every key file: the data dir's `admin.key`, the keys the
operator CLI writes for new terminals, the destinations' keys and the receivers' keys.
"""

import os

from switch import limits

KEY_HEX_CHARS = 2 * limits.credential_key_size_bytes


class KeyFileError(ValueError):
    """The key file cannot be read or does not hold a key; the message says which, never the
    key."""


def parse_key_hex(text, where: str) -> bytes:
    if (type(text) is not str or len(text) != KEY_HEX_CHARS
            or not all(c in "0123456789abcdefABCDEF" for c in text)):
        raise KeyFileError(f"{where}: must be {KEY_HEX_CHARS} hex characters "
                           f"(a {limits.credential_key_size_bytes}-byte key)")
    return bytes.fromhex(text)


def read_key_file(path: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            mode = os.fstat(handle.fileno()).st_mode
            # Enough for a key with a newline and stray spaces; more is not a key file.
            raw = handle.read(4 * KEY_HEX_CHARS)
    except OSError as error:
        raise KeyFileError(f"cannot read {path!r}: {error.strerror or error}") from None
    if mode & 0o077:
        # As ssh refuses such a private key: whoever reads it signs on as the credential (a
        # receiver's key forges the records billing settles), and a file others may write
        # can be swapped for a key of their choosing. Every key this project writes is 0600;
        # one written by hand with the default umask is the usual cause.
        raise KeyFileError(f"key file {path!r} may be read or written by others (mode "
                           f"{mode & 0o777:04o}); whoever reads it signs on as its credential: "
                           f"chmod 600 {path}")
    try:
        text = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        text = None
    return parse_key_hex(text, repr(path))


def claim_key_file(path: str) -> int:
    """Create `path` (0600) for a key to come, refusing one that exists; returns its fd.

    Taken before the switch is asked for the key, so a key it hands out always has a
    place to go."""
    try:
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeyFileError(f"{path} exists; choose a new file for the key") from None
    except OSError as error:
        raise KeyFileError(f"cannot create {path}: {error.strerror or error}") from None


def write_key(fd: int, key: bytes) -> None:
    """Write the key to a claimed fd, fsync and close it."""
    with os.fdopen(fd, "w") as handle:
        handle.write(key.hex() + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def write_key_file_atomically(path: str, key: bytes) -> None:
    """Replace `path` with the key whole or not at all (0600)."""
    temporary = path + ".tmp"
    write_key(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), key)
    os.replace(temporary, path)
