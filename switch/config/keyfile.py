"""Credential keys on disk: a file holding the key as hex characters and nothing else, mode 0600.

One reader and one writer for every key file: the data dir's `admin.key`, the keys the
operator CLI writes for new terminals, the destinations' keys and the receivers' keys.
"""

import contextlib
import os
import pwd
import shlex
import stat

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


def exposure(path: str, status: os.stat_result,
             user: int | None = None) -> tuple[str, str] | None:
    """(why a secret's file is open to others, the command that closes it); None when it is
    not. PostgreSQL's rule for its server key: owned by this process's user, no access
    for group or others (0600, 0400); owned by root, no access for others (0640: a root-owned
    secret a service's group reads, as the deploy units may set it up); anyone else's file is
    refused, since its owner could put another key there, but by root (the owner is then
    the service whose key it is). Every key this project writes is
    0600; one written by hand with the default umask (0644) is the usual cause."""
    mode = status.st_mode & 0o777
    quoted = shlex.quote(path)
    user = os.geteuid() if user is None else user   # this process's, unless a test says
    if status.st_uid == user:
        if mode & 0o077:
            return f"may be read or written by others (mode {mode:04o})", f"chmod 600 {quoted}"
    elif status.st_uid == 0:
        if mode & 0o007:
            return (f"may be read or written by others (mode {mode:04o}, owned by root)",
                    f"chmod o-rwx {quoted}")
    elif user == 0:
        # Root reading a service's own key (rotate-master-key or admin run as root on the
        # service's data dir): the file is its owner's; only access past the owner matters.
        # "chown root" here would leave the service unable to read it.
        if mode & 0o077:
            return f"may be read or written by others (mode {mode:04o})", f"chmod 600 {quoted}"
    else:
        owner = _user_name(status.st_uid)
        return (f"is owned by {owner} (uid {status.st_uid}), neither this process's user "
                f"(uid {user}) nor root, and its owner could put another key there",
                f"run this as {owner} (sudo -u {owner} ...) if the key is that user's, else "
                f"chown {_user_name(user)} {quoted} && chmod 600 {quoted}")
    return None


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def read_key_file(path: str) -> bytes:
    try:
        # Non-blocking, so a FIFO named by mistake is refused below instead of waiting for
        # a writer for ever; a regular file reads the same either way.
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        with open(descriptor, "rb") as handle:
            status = os.fstat(handle.fileno())
            if not stat.S_ISREG(status.st_mode):
                raise KeyFileError(f"{path!r} is not a regular file; a key file holds "
                                   f"{KEY_HEX_CHARS} hex characters")
            # Enough for a key with a newline and stray spaces; more is not a key file.
            raw = handle.read(4 * KEY_HEX_CHARS)
    except OSError as error:
        raise KeyFileError(f"cannot read {path!r}: {error.strerror or error}") from None
    problem = exposure(path, status)
    if problem:
        # Whoever reads it signs on as the credential (a receiver's key forges the records
        # billing settles), and a file others may write can be swapped for a key of theirs.
        what, remedy = problem
        raise KeyFileError(f"key file {path!r} {what}; whoever reads it signs on as its "
                           f"credential: {remedy}")
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
    _write_and_close(fd, key.hex() + "\n")


def write_key_file_atomically(path: str, key: bytes) -> None:
    """Replace `path` with the key whole or not at all (0600)."""
    write_private_file_atomically(path, key.hex() + "\n")


def write_private_file_atomically(path: str, text: str) -> None:
    """Replace `path` with `text` whole or not at all (0600); nothing is left beside it when
    the write fails."""
    temporary = path + ".tmp"
    try:
        _write_and_close(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), text)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def _write_and_close(fd: int, text: str) -> None:
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
