"""The data dir: who may use it (one process, locked), what counts as one, and initialising a
new one with its master key file (beside it), the `admin` credential and `admin.key`."""

import contextlib
import os
import shutil

import msgpack

from switch import limits
from switch.core import layout
from switch.persistence.access import permission_problem
from switch.persistence.dirlock import LOCK_FILE, DirLock
from switch.config import masterkey
from switch.config.keyfile import (read_key_file, write_key_file_atomically,
                                   write_private_file_atomically)
from switch.config.masterkey import MasterKey, MasterKeyError
from switch.ledger.state import Credential, has_credential, sealing, write_first_credential
from switch.persistence.store import (RESTORE_UNFINISHED, STORE_DIR, BooksCutShort, Store,
                                      is_backup, restore_unfinished)

ADMIN_WHO = "admin"
ADMIN_KEY_FILE = "admin.key"


class DataDirError(Exception):
    """The path cannot be used as a data dir; the message says why and what to do."""


def is_data_dir(path: str) -> bool:
    return os.path.isdir(os.path.join(path, STORE_DIR))


def enclosing_data_dir(path: str) -> str | None:
    """The data dir `path` would lie inside (not `path` itself), or None. A directory made
    there is copied into every backup of that data dir, and restored with it."""
    current = os.path.realpath(path)
    while True:
        parent = os.path.dirname(current)
        if parent == current:
            return None
        current = parent
        # A switch's own files, not just any `lmdb/` (a home directory may hold one).
        if os.path.exists(os.path.join(current, STORE_DIR, "data.mdb")) and (
                os.path.exists(os.path.join(current, ADMIN_KEY_FILE))
                or os.path.exists(os.path.join(current, LOCK_FILE))):
            return current


def refuse_inside_a_data_dir(path: str) -> None:
    """DataDirError for a path inside another data dir: it would be copied into every
    backup of that data dir, and restored with it."""
    inside = enclosing_data_dir(path)
    if inside is not None:
        raise DataDirError(f"{path} is inside the data dir {inside}; give a directory outside "
                           f"it (that data dir's backups would carry it)")


def refuse_a_backup(path: str) -> None:
    """DataDirError for a backup `backup` made: served or changed in place, it would skip what
    `restore` does (tills that saw the blacklist since the backup would never get a card
    lost after it) and spoil the one good copy."""
    if is_backup(path):
        raise DataDirError(f"{path} is a backup; nothing was changed. Restore it into a new "
                           f"directory and use that: switch restore --from {path} --data NEW")


def refuse_unfinished_restore(path: str) -> None:
    """DataDirError for a data dir a killed `restore` left: its books may be cut short."""
    if restore_unfinished(path):
        raise DataDirError(f"a restore into {path} did not finish (killed?), so its books may "
                           f"be incomplete; run the restore again: switch restore --from BACKUP "
                           f"--data {path} (it clears what the unfinished one left)")


def open_data_dir(path: str, master_key_file: str | None = None, fsync: bool = True) -> Store:
    """Open (and if new, initialise) the data dir with its master key file (`master_key_file`,
    default beside it); returns the store, its secrets opened. The caller owns it.

    A data dir from before secrets were sealed is sealed now (logged), under the given key
    file or, when there is none, under a new one made there. (`fsync`: see `Store`.)"""
    key_path = masterkey.resolve_path(path, master_key_file)
    if not is_data_dir(path) and os.path.lexists(key_path):
        raise MasterKeyError(f"{key_path} exists; a new data dir never reuses a master key "
                             f"file (move it away, or name another with --master-key)")
    os.makedirs(path, mode=0o700, exist_ok=True)
    try:
        store = Store(os.path.join(path, STORE_DIR), fsync=fsync)
    except BooksCutShort as error:
        raise DataDirError(str(error)) from None
    try:
        sealing.prepare(store, _master_key(store, key_path), path)
        if not has_credential(store, ADMIN_WHO):
            # The key file first, then the credential: a crash in between leaves an orphan
            # key file that the next start overwrites.
            key = os.urandom(limits.credential_key_size_bytes)
            write_key_file_atomically(os.path.join(path, ADMIN_KEY_FILE), key)
            write_first_credential(store, Credential(who=ADMIN_WHO, key=key, role="admin"))
    except BaseException:
        store.close()
        raise
    return store


def _master_key(store: Store, key_path: str) -> MasterKey:
    """The data dir's master key: read, or made (0600) for a store whose secrets were never
    sealed (a new data dir, or one from before sealing) when no key file is there yet."""
    if os.path.lexists(key_path) or sealing.is_sealed(store):
        return masterkey.read(key_path)
    master = MasterKey.generate()
    masterkey.create(key_path, master)
    return master


def rotate_master_key(path: str, master_key_file: str | None = None) -> dict:
    """Give the data dir's master key file a new seal key and seal every secret again under
    it, with no switch running (the data dir is locked meanwhile). Returns the counts.

    Each step leaves a key file that opens everything: first the new key is added beside the
    old one, then the secrets are sealed again in one transaction, then the old key is
    dropped. PIN verifiers keep their key (a verifier cannot be re-keyed without its PIN)."""
    if not is_data_dir(path):
        raise DataDirError(permission_problem(path)
                           or f"{path} is not a switch data dir (no {STORE_DIR}/ inside)")
    refuse_unfinished_restore(path)
    refuse_a_backup(path)
    key_path = masterkey.resolve_path(path, master_key_file)
    _refuse_another_data_dirs_key(path, key_path)
    with DirLock(path):
        store = open_data_dir(path, master_key_file)
        claim_key_file(path, key_path)      # it opens these books: no claim for a wrong key
        try:
            rotated = store.master.with_new_seal_key()
            masterkey.replace(key_path, rotated)
            store.master = rotated
            counts = sealing.reseal(store, rotated)
            store.commit_now()
        finally:
            store.close()
        masterkey.replace(key_path, rotated.only_current())
    return counts


# Beside a master key file: the data dir a switch first served with it. A restored copy opens
# with production's key, wherever that file is; only its owner may rotate it.
KEY_OWNER_SUFFIX = ".owner"


def claim_key_file(path: str, key_path: str) -> None:
    """Name `path` as the key file's owner (serve, at start; rotation, under the lock) when
    none is named, or when the key is `path`'s own default (`DIR.key` beside `DIR/`: a data
    dir moved with its key). Never over another data dir named elsewhere, even one not
    there now (a volume not mounted looks so). Where the file cannot be written (a read-only
    folder) nothing is named: rotation, which rewrites the key there, could not run either."""
    owner_path = key_path + KEY_OWNER_SUFFIX
    if key_file_owner(key_path) == os.path.realpath(path) or owner_elsewhere(path, key_path):
        return
    with contextlib.suppress(OSError):
        write_private_file_atomically(owner_path, os.path.realpath(path) + "\n")


def key_file_owner(key_path: str) -> str | None:
    try:
        with open(key_path + KEY_OWNER_SUFFIX, encoding="utf-8") as owner:
            return owner.read().strip() or None
    except (OSError, UnicodeDecodeError):
        return None


def owner_elsewhere(path: str, key_path: str) -> str | None:
    """The data dir other than `path` the key file names as its owner, there or not (an
    unmounted volume looks gone). None for `path`'s own default key (`DIR.key` beside
    `DIR/`), whatever the file says: a data dir moved with its key."""
    named = key_file_owner(key_path)
    if named is None or named == os.path.realpath(path) \
            or key_path == masterkey.default_path(path):
        return None
    return named


def _refuse_another_data_dirs_key(path: str, key_path: str) -> None:
    """Rotation rewrites the key file: not one that is another data dir's own (a restored
    copy opens with production's key; rotating the copy under it left production unable
    to start, and its backups unreadable)."""
    named = owner_elsewhere(path, key_path)
    if named is not None:
        raise DataDirError(f"{key_path} is the master key file of the data dir {named} (so "
                           f"says {key_path}{KEY_OWNER_SUFFIX}), not of {path}; nothing was "
                           f"changed. Rotate {named} with it; or give {path} a copy of the "
                           f"key and rotate that (cp -p {key_path} NEW.key, then --master-key "
                           f"NEW.key); or, if {path} is that data dir moved, write its path "
                           f"there: echo {os.path.realpath(path)} > {key_path}{KEY_OWNER_SUFFIX}")
    owner = key_path.removesuffix(masterkey.KEY_SUFFIX)
    if (key_path.endswith(masterkey.KEY_SUFFIX) and is_data_dir(owner)
            and os.path.realpath(owner) != os.path.realpath(path)):
        raise DataDirError(f"{key_path} is the master key file of the data dir {owner}, not "
                           f"of {path}; nothing was changed. Rotate {owner} with its own key, "
                           f"or give {path} a copy of the key: cp -p {key_path} "
                           f"{masterkey.default_path(path)}")


def check_schools_declared(store: Store, schools) -> None:
    """Every school the books hold an account or a credential of is in the configuration:
    a `[schools]` table that leaves one out (declaring it replaces the built-in ones) would
    start, and that school's every payment, history and balance would fail as `internal`.
    Read at start, when everything is written back: one pass over the account records."""
    in_use: dict[str, str] = {}
    for key, value in store.committed_items("accounts"):
        in_use.setdefault(layout.school_of(value), f"account {bytes(key).decode()}")
    for key, value in store.committed_items("credentials"):
        school = msgpack.unpackb(value, raw=False).get("school")
        if school is not None:
            in_use.setdefault(school, f"credential {bytes(key).decode()}")
    missing = sorted(set(in_use) - set(schools))
    if missing:
        raise DataDirError(
            "the data dir holds " + ", ".join(f"school {school} ({in_use[school]}, ...)"
                                              for school in missing)
            + ", which the configuration does not declare: add it under [schools] "
              "(declaring any replaces the built-in WH and CUIK)")


def read_admin_key(path: str) -> bytes:
    return read_key_file(os.path.join(path, ADMIN_KEY_FILE))


def check_data_dir(path: str, init: bool, master_key_file: str | None = None) -> None:
    """Refuse, before anything is bound or written, a path `serve` must not use: a missing
    one without `init` (a typo would start an empty switch with a new admin key), a file,
    a directory holding something else, a master key file inside the data dir, a data dir
    inside another, or one a killed restore left."""
    if not path:
        raise DataDirError("--data: give the data dir's path")
    try:
        masterkey.resolve_path(path, master_key_file)
    except MasterKeyError as error:
        raise DataDirError(str(error)) from None
    refuse_inside_a_data_dir(path)
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
    refuse_unfinished_restore(path)
    refuse_a_backup(path)
    if entries and STORE_DIR not in entries:
        raise DataDirError(f"{path} is not a switch data dir (no {STORE_DIR}/ inside) and not "
                           f"empty; give the data dir, or an empty or new directory")
    if STORE_DIR in entries and not _holds_books(path) and not (
            init and entries == {STORE_DIR} and not os.listdir(os.path.join(path, STORE_DIR))):
        # An `lmdb/` whose volume did not mount would otherwise start as a new, empty switch
        # under a new admin key: every card unknown, and the real books' admin key gone.
        raise DataDirError(f"{path}/{STORE_DIR} holds no books (its data.mdb is missing or "
                           f"empty): if it is a mount, is its volume mounted? Nothing was "
                           f"changed; a new switch is made in an empty or new directory "
                           f"with --init")


def _holds_books(path: str) -> bool:
    try:
        return os.path.getsize(os.path.join(path, STORE_DIR, "data.mdb")) > 0
    except OSError:
        return False


class DataDirClaim:
    """A data dir held by this process for its whole life (`DirLock`).

    A new one is created (with `init`) and initialised only once everything that can fail
    at start-up has been done; `abandon()` after a failed start removes whatever this
    claim created, so a start-up that fails leaves nothing behind."""

    def __init__(self, path: str, init: bool, master_key_file: str | None = None):
        check_data_dir(path, init, master_key_file)
        self.path = path
        self.master_key_file = master_key_file
        self._key_path = masterkey.resolve_path(path, master_key_file)
        self._key_existed = os.path.lexists(self._key_path)
        self._created = None        # the topmost directory this claim made
        self._lock_existed = os.path.exists(os.path.join(path, LOCK_FILE))
        if not os.path.lexists(path):
            self._created = make_dirs(path)
        try:
            self.lock = DirLock(path)   # DirInUse names the holder
        except BaseException as error:
            self._remove_created()
            if isinstance(error, OSError):
                raise DataDirError(f"cannot lock {path}: {error.strerror}") from None
            raise
        # Checked again now that no other switch can change it under us.
        try:
            check_data_dir(path, init, master_key_file)
        except DataDirError:
            self.abandon()
            raise
        self.new = not is_data_dir(path)

    def open_store(self) -> Store:
        store = open_data_dir(self.path, self.master_key_file)
        claim_key_file(self.path, self._key_path)
        return store

    def abandon(self) -> None:
        """After a failed start: undo what this claim created, then let go."""
        if self._created is None and self.new:
            empty_dir(self.path, keep_lock=self._lock_existed)
            # Only a new data dir's: an old one sealed under it cannot do without it.
            if not self._key_existed and os.path.lexists(self._key_path):
                os.unlink(self._key_path)
        self._remove_created()
        self.lock.release()

    def release(self) -> None:
        self.lock.release()

    def _remove_created(self) -> None:
        if self._created is not None:
            shutil.rmtree(self._created, ignore_errors=True)
            self._created = None


def empty_dir(path: str, keep_lock: bool) -> None:
    """Remove everything in `path` (the lock file too, unless `keep_lock`): a failed start or
    restore leaves a directory it found empty as it found it."""
    for name in os.listdir(path):
        if name == LOCK_FILE and keep_lock:
            continue
        entry = os.path.join(path, name)
        if os.path.isdir(entry) and not os.path.islink(entry):
            shutil.rmtree(entry)
        else:
            os.unlink(entry)


def make_dirs(path: str) -> str | None:
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
