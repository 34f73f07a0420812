"""The data dir: who may use it (one process, locked), what counts as one, and initialising a
new one with the `admin` credential and `admin.key`."""

import os
import shutil

from switch import limits
from switch.persistence.dirlock import LOCK_FILE, DirLock
from switch.config.keyfile import read_key_file, write_key_file_atomically
from switch.ledger.state import Credential, has_credential, write_first_credential
from switch.persistence.store import STORE_DIR, Store

ADMIN_WHO = "admin"
ADMIN_KEY_FILE = "admin.key"


class DataDirError(Exception):
    """The path cannot be used as a data dir; the message says why and what to do."""


def is_data_dir(path: str) -> bool:
    return os.path.isdir(os.path.join(path, STORE_DIR))


def open_data_dir(path: str, fsync: bool = True) -> Store:
    """Open (and if new, initialise) the data dir; returns the store. The caller owns it.
    (`fsync`: see `Store`.)"""
    os.makedirs(path, mode=0o700, exist_ok=True)
    store = Store(os.path.join(path, STORE_DIR), fsync=fsync)
    if not has_credential(store, ADMIN_WHO):
        # The key file first, then the credential: a crash in between leaves an orphan key
        # file that the next start overwrites.
        key = os.urandom(limits.credential_key_size_bytes)
        write_key_file_atomically(os.path.join(path, ADMIN_KEY_FILE), key)
        write_first_credential(store, Credential(who=ADMIN_WHO, key=key, role="admin"))
    return store


def read_admin_key(path: str) -> bytes:
    return read_key_file(os.path.join(path, ADMIN_KEY_FILE))


def check_data_dir(path: str, init: bool) -> None:
    """Refuse, before anything is bound or written, a path `serve` must not use: a missing
    one without `init` (a typo would start an empty switch with a new admin key), a file,
    or a directory holding something else."""
    if not path:
        raise DataDirError("--data: give the data dir's path")
    if not os.path.lexists(path):
        if not init:
            raise DataDirError(f"{path} does not exist; check the path, or give --init to "
                               f"create a new, empty switch there")
        return
    if not os.path.isdir(path):
        raise DataDirError(f"{path} is not a directory; give the data dir's path")
    try:
        entries = set(os.listdir(path)) - {LOCK_FILE}
    except OSError as error:
        raise DataDirError(f"cannot read {path}: {error.strerror}") from None
    if entries and STORE_DIR not in entries:
        raise DataDirError(f"{path} is not a switch data dir (no {STORE_DIR}/ inside) and not "
                           f"empty; give the data dir, or an empty or new directory")


class DataDirClaim:
    """A data dir held by this process for its whole life (`DirLock`).

    A new one is created (with `init`) and initialised only once everything that can fail
    at start-up has been done; `abandon()` after a failed start removes whatever this
    claim created, so a start-up that fails leaves nothing behind."""

    def __init__(self, path: str, init: bool):
        check_data_dir(path, init)
        self.path = path
        self._created = None        # the topmost directory this claim made
        self._lock_existed = os.path.exists(os.path.join(path, LOCK_FILE))
        if not os.path.lexists(path):
            self._created = _make_dirs(path)
        try:
            self.lock = DirLock(path)   # DirInUse names the holder
        except BaseException as error:
            self._remove_created()
            if isinstance(error, OSError):
                raise DataDirError(f"cannot lock {path}: {error.strerror}") from None
            raise
        # Checked again now that no other switch can change it under us.
        try:
            check_data_dir(path, init)
        except DataDirError:
            self.abandon()
            raise
        self.new = not is_data_dir(path)

    def open_store(self) -> Store:
        return open_data_dir(self.path)

    def abandon(self) -> None:
        """After a failed start: undo what this claim created, then let go."""
        if self._created is None and self.new:
            for name in os.listdir(self.path):
                if name == LOCK_FILE and self._lock_existed:
                    continue
                entry = os.path.join(self.path, name)
                if os.path.isdir(entry) and not os.path.islink(entry):
                    shutil.rmtree(entry)
                else:
                    os.unlink(entry)
        self._remove_created()
        self.lock.release()

    def release(self) -> None:
        self.lock.release()

    def _remove_created(self) -> None:
        if self._created is not None:
            shutil.rmtree(self._created, ignore_errors=True)
            self._created = None


def _make_dirs(path: str) -> str | None:
    """Create `path` and its missing parents (0700); the topmost one created, or None if
    another process made them all first."""
    missing = []
    current = os.path.abspath(path)
    while not os.path.lexists(current):
        missing.append(current)
        current = os.path.dirname(current)
    topmost = None
    for directory in reversed(missing):
        try:
            os.mkdir(directory, 0o700)
        except FileExistsError:
            continue
        except OSError as error:
            if topmost is not None:
                shutil.rmtree(topmost, ignore_errors=True)
            raise DataDirError(f"cannot create {directory}: {error.strerror}") from None
        if topmost is None:
            topmost = directory
    return topmost
