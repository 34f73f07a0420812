"""`python -m switch backup|restore`: a consistent, audited copy of a data dir taken while the
switch serves, and a new data dir made from one.

The copy is LMDB's own compacting copy run inside one read transaction of a second,
read-only environment: it takes a reader slot, never the write lock, so the serving switch
keeps committing while it runs. Everything else a restore needs (the admin key) is copied
beside it; the master key kept beside the data dir (`DIR.key`) is not, on purpose: a
backup that holds the key to what it protects protects nothing.
"""

import contextlib
import logging
import os
import shutil
import sys
from dataclasses import dataclass

import lmdb

from switch import limits
from switch.cli import output
from switch.cli.datadir import (RESTORE_UNFINISHED, DataDirError, empty_dir, is_data_dir,
                                 make_dirs, refuse_inside_a_data_dir, refuse_unfinished_restore)
from switch.persistence.access import permission_problem
from switch.persistence.audit import audit
from switch.persistence.dirlock import LOCK_FILE, DirInUse, DirLock, holder
from switch.persistence.keys import BLACKLIST_RESTORES, POSITION_PREFIX, decode_position
from switch.persistence import writeback
from switch.persistence.store import BACKUP_MARK, STORE_DIR, cut_short

log = logging.getLogger("switch.backup")

DATA_FILE = "data.mdb"
LMDB_LOCK_FILE = "lock.mdb"
# A backup is made under this name beside its target and renamed to it once whole: a
# backup killed half-way is never found where a restore would look for a good one.
INCOMPLETE_SUFFIX = ".incomplete"


class BackupError(Exception):
    """The copy cannot be made or used; the message is the one line the operator sees."""


class CopyUnsound(BackupError):
    """The copy was made but its books do not add up (exit 1, as `audit` would)."""


@dataclass
class CopySummary:
    last_txn: int
    accounts: int
    size_bytes: int
    forward_positions: dict

    def describe(self) -> str:
        positions = ", ".join(f"{name} {txn}" for name, txn in sorted(self.forward_positions.items()))
        return (f"last txn {self.last_txn}, accounts {self.accounts}, "
                f"{self.size_bytes / 1e6:.1f} MB; forwarding positions: {positions or 'none'}")


def add_parsers(commands) -> None:
    backup = commands.add_parser(
        "backup", help="copy a data dir (also while the switch serves it), audited")
    backup.add_argument("--data", required=True, help="the data dir to copy")
    backup.add_argument("--to", required=True,
                        help="where the copy goes: a directory that does not exist yet")
    restore = commands.add_parser("restore", help="make a data dir from a backup")
    restore.add_argument("--from", dest="source", required=True, help="the backup's directory")
    restore.add_argument("--data", required=True,
                         help="the data dir to create: missing or empty, and no switch on it")


def master_key_path(data_dir: str) -> str:
    """Where the master key lives: beside the data dir, never inside it (nor in a backup)."""
    return os.path.normpath(data_dir) + ".key"


def backup(data_dir: str, to: str) -> CopySummary:
    """Copy `data_dir` to the new directory `to` and audit the copy; on any failure nothing
    is left at `to`. The copy is made at `to` + INCOMPLETE_SUFFIX and renamed into place
    once it has passed its audit, so `to` holds a whole, durable copy or nothing."""
    if not is_data_dir(data_dir):
        raise BackupError(permission_problem(data_dir) or (
            f"{data_dir} is not a switch data dir (no {STORE_DIR}/ inside); check --data"))
    _refuse(refuse_unfinished_restore, data_dir)
    to = os.path.normpath(to)
    if to.endswith(INCOMPLETE_SUFFIX):
        raise BackupError(f"{to}: a name ending {INCOMPLETE_SUFFIX} is what a backup that did "
                          f"not finish is called, and restore refuses it; give another name")
    if os.path.lexists(to):
        raise BackupError(f"{to} already exists; give a new directory (a dated one, say) "
                          f"so no earlier backup is overwritten")
    if _is_within(to, data_dir):
        raise BackupError(f"{to} is inside the data dir {data_dir}; give a directory outside "
                          f"it (a backup on the same disk as the books is no backup either)")
    _refuse(refuse_inside_a_data_dir, to)
    staging = to + INCOMPLETE_SUFFIX
    if os.path.lexists(staging):
        raise BackupError(f"{staging} exists: a backup into {to} did not finish (killed?) or "
                          f"runs now; remove it once no backup runs, then run this again")
    try:
        created = make_dirs(staging)
    except DataDirError as error:
        raise BackupError(str(error)) from None
    copy = staging
    try:
        summary = _copy_store(os.path.join(data_dir, STORE_DIR),
                              os.path.join(staging, STORE_DIR))
        _copy_files_beside(data_dir, staging)
        with os.fdopen(os.open(os.path.join(staging, BACKUP_MARK),
                               os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as mark:
            mark.write(f"a backup of {os.path.abspath(data_dir)}: restore it, never serve it "
                       f"(switch restore --from THIS --data NEW)\n")
        _require_sound(staging, "the copy")
        # The reader table the audit opened is no data: a restore makes its own.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(staging, STORE_DIR, LMDB_LOCK_FILE))
        _fsync_tree(staging)
        os.rename(staging, to)
        copy = to
        _fsync(os.path.dirname(os.path.abspath(to)), os.O_RDONLY | os.O_DIRECTORY)
    except BaseException:
        # What this run made: the parents it created with the copy, else the copy wherever
        # it is now (the staging name, or `to` once renamed).
        made_parents = created is not None and os.path.abspath(created) != os.path.abspath(staging)
        shutil.rmtree(created if made_parents else copy, ignore_errors=True)
        raise
    log.info("event=backup data=%s to=%s last_txn=%d accounts=%d size_bytes=%d",
             data_dir, to, summary.last_txn, summary.accounts, summary.size_bytes)
    return summary


def restore(source: str, data_dir: str) -> CopySummary:
    """Make `data_dir` (missing or empty, and locked by no one) a copy of the backup `source`;
    on any failure `data_dir` is left as it was found."""
    if not is_data_dir(source):
        raise BackupError(f"{source} is not a backup (no {STORE_DIR}/ inside); check --from")
    if os.path.normpath(source).endswith(INCOMPLETE_SUFFIX):
        raise BackupError(f"{source} is a backup that did not finish (killed?); restore a "
                          f"whole one, which `backup` names without {INCOMPLETE_SUFFIX}")
    _refuse(refuse_unfinished_restore, source)
    _refuse_served(source)
    if _is_within(data_dir, source):
        # The copy would be written into the backup, and carried into every later restore.
        raise BackupError(f"{data_dir} is inside the backup {source}; give a directory "
                          f"outside it")
    _refuse(refuse_inside_a_data_dir, data_dir)
    created = None
    if not os.path.lexists(data_dir):
        try:
            created = make_dirs(data_dir)
        except DataDirError as error:
            raise BackupError(str(error)) from None
    elif not os.path.isdir(data_dir):
        raise BackupError(f"{data_dir} is not a directory; give a new or empty directory")
    present = sorted(set(os.listdir(data_dir)) - {LOCK_FILE})
    if present and not os.path.exists(os.path.join(data_dir, LOCK_FILE)):
        raise _not_empty(data_dir, present)   # nothing of it touched, not even a lock file
    lock_existed = os.path.exists(os.path.join(data_dir, LOCK_FILE))
    try:
        lock = DirLock(data_dir)   # DirInUse: a switch (or a restore) holds it
    except BaseException:
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
        raise
    try:
        # Again under the lock: nothing can be added to it now.
        present = sorted(set(os.listdir(data_dir)) - {LOCK_FILE})
        if RESTORE_UNFINISHED in present:
            # All of it is what a killed restore copied (a switch refuses to start on it).
            log.warning("event=unfinished_restore_cleared data=%s", data_dir)
            empty_dir(data_dir, keep_lock=True)
            present = []
        if present:
            raise _not_empty(data_dir, present)
        _mark_unfinished(data_dir)
        source_readers = os.path.join(source, STORE_DIR, LMDB_LOCK_FILE)
        readers_existed = os.path.exists(source_readers)
        try:
            summary = _copy_store(os.path.join(source, STORE_DIR),
                                  os.path.join(data_dir, STORE_DIR))
            if not readers_existed:
                with contextlib.suppress(OSError):   # a backup on read-only media has none
                    os.unlink(source_readers)
            _copy_files_beside(source, data_dir)
            _count_restore(os.path.join(data_dir, STORE_DIR))
            _fsync_tree(data_dir)
            _require_sound(data_dir, "the restored data dir", restoring=True)
            os.unlink(os.path.join(data_dir, RESTORE_UNFINISHED))
            _fsync(data_dir, os.O_RDONLY | os.O_DIRECTORY)
        except BaseException:
            if created is not None:
                shutil.rmtree(created, ignore_errors=True)
            else:
                empty_dir(data_dir, keep_lock=lock_existed)
            raise
    finally:
        lock.release()
    log.info("event=restore from=%s data=%s last_txn=%d accounts=%d forward_positions=%s",
             source, data_dir, summary.last_txn, summary.accounts,
             ",".join(f"{name}:{txn}" for name, txn in sorted(summary.forward_positions.items()))
             or "none")
    return summary


def _mark_unfinished(data_dir: str) -> None:
    """Durably mark `data_dir` as a restore under way, before anything is copied into it."""
    fd = os.open(os.path.join(data_dir, RESTORE_UNFINISHED), os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        os.write(fd, b"a restore into this directory has not finished; see README.md\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    _fsync(data_dir, os.O_RDONLY | os.O_DIRECTORY)


def _refuse(check, path: str) -> None:
    """A data dir check (`refuse_unfinished_restore`, `refuse_inside_a_data_dir`) said as
    this command's one line."""
    try:
        check(path)
    except DataDirError as error:
        raise BackupError(str(error)) from None


def _refuse_served(source: str) -> None:
    """A data dir a switch serves is no backup: a copy of it, started, would be a second
    switch taking the same students' money."""
    try:
        pid = holder(source)
    except OSError:
        return       # cannot even be opened to ask: no switch holds it from here
    if pid is not None:
        serving = f"process {pid}" if pid else "another process"
        raise BackupError(f"{source} is a data dir {serving} serves, not a backup; make a "
                          f"backup of it (switch backup --data {source} --to NEW_DIR) and "
                          f"restore that")


def _count_restore(env_path: str) -> None:
    """Count the restore in the copy's `meta`: the switch's first start on it moves each
    school's blacklist past the versions tills saw since the backup (ledger.state)."""
    # A compacting copy's file is exactly as full as its pages: LMDB maps it at that size (or
    # its 10 MiB default), and a put into a copy past 10 MiB found no room (MDB_MAP_FULL).
    size = os.path.getsize(os.path.join(env_path, DATA_FILE))
    env = lmdb.open(env_path, max_dbs=limits.lmdb_max_dbs, subdir=True,
                    map_size=size + limits.restore_map_headroom_bytes)
    try:
        with env.begin(write=True) as txn:
            meta = env.open_db(b"meta", txn=txn)
            restores = int(txn.get(BLACKLIST_RESTORES, db=meta) or 0) + 1
            txn.put(BLACKLIST_RESTORES, str(restores).encode(), db=meta)
    finally:
        env.close()


def _is_within(path: str, directory: str) -> bool:
    inner, outer = os.path.realpath(path), os.path.realpath(directory)
    return inner == outer or inner.startswith(outer + os.sep)


def _not_empty(data_dir: str, present: list) -> BackupError:
    return BackupError(f"{data_dir} is not empty (it holds {', '.join(present[:3])}"
                       f"{', ...' if len(present) > 3 else ''}); restore only into a new or "
                       f"empty directory, so no switch's books are overwritten")


def _copy_store(source_env: str, target_env: str) -> CopySummary:
    """LMDB's compacting copy, and what it holds, from one read snapshot."""
    os.mkdir(target_env, 0o700)
    try:
        # readonly with lock: a reader slot in the live switch's reader table, so its
        # writers go on and the pages of this snapshot are kept until the copy is done.
        env = lmdb.open(source_env, readonly=True, lock=True, max_dbs=limits.lmdb_max_dbs,
                        subdir=True)
    except lmdb.Error as error:
        raise BackupError(f"cannot read {source_env}: {error}") from None
    try:
        short = cut_short(env, source_env)
        if short:
            raise BackupError(short)
        # A copy killed half-way leaves its reader slot behind, holding old pages the
        # switch could reuse: free the slots of dead processes first.
        env.reader_check()
        with env.begin() as txn:
            summary = _summarise(env, txn)
            env.copy(target_env, compact=True, txn=txn)
    except lmdb.Error as error:
        raise BackupError(f"cannot copy {source_env} to {target_env}: {error}") from None
    finally:
        env.close()
    data_file = os.path.join(target_env, DATA_FILE)
    os.chmod(data_file, 0o600)
    summary.size_bytes = os.path.getsize(data_file)
    return summary


def _summarise(env, txn) -> CopySummary:
    journal = env.open_db(b"journal", txn=txn, create=False)
    accounts = env.open_db(b"accounts", txn=txn, create=False)
    meta = env.open_db(b"meta", txn=txn, create=False)
    cursor = txn.cursor(db=journal)
    last_txn = int.from_bytes(cursor.key(), "big") if cursor.last() else 0
    positions = {}
    cursor = txn.cursor(db=meta)
    if cursor.set_range(POSITION_PREFIX):
        for key, value in cursor:
            if not key.startswith(POSITION_PREFIX):
                break
            positions[key[len(POSITION_PREFIX):].decode()] = decode_position(value)
    return CopySummary(last_txn, _account_count(env, txn, accounts), 0, positions)


def _account_count(env, txn, accounts) -> int:
    """The accounts of the snapshot: those of `accounts`, and those opened since its last
    write-back, still only in a log (persistence/writeback.py)."""
    logs = {}
    for log in writeback.LOGS["accounts"]:
        try:
            logs[log] = env.open_db(log.encode(), txn=txn, create=False)
        except lmdb.NotFoundError:   # a data dir from before the log
            logs[log] = None
    try:
        logged = writeback.newest_logged(txn, logs)
    except writeback.DamagedLog as error:
        raise BackupError(str(error)) from None
    count = txn.stat(accounts)["entries"]
    for (db, key), value in logged.items():
        if db != "accounts":
            continue
        present = txn.get(key, db=accounts) is not None
        if value is not None and not present:
            count += 1
        elif value is None and present:
            count -= 1
    return count


def _copy_files_beside(source: str, target: str) -> None:
    """The data dir's own files besides LMDB (the admin key), modes kept. The lock is the
    holder's, not data."""
    for name in sorted(os.listdir(source)):
        if name in (STORE_DIR, LOCK_FILE, BACKUP_MARK):
            continue
        path = os.path.join(source, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.copytree(path, os.path.join(target, name), symlinks=True)
        else:
            shutil.copy2(path, os.path.join(target, name), follow_symlinks=False)


def _fsync_tree(top: str) -> None:
    """Durable before it is reported: each file, then each directory holding it."""
    for directory, _, files in os.walk(top, topdown=False):
        for name in files:
            path = os.path.join(directory, name)
            if not os.path.islink(path):
                _fsync(path, os.O_RDONLY)
        _fsync(directory, os.O_RDONLY | os.O_DIRECTORY)


def _fsync(path: str, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _require_sound(data_dir: str, what: str, restoring: bool = False) -> None:
    report = audit(data_dir, restoring=restoring)
    if not report.sound:
        raise CopyUnsound(f"{what} failed its audit, nothing kept: "
                          f"{'; '.join(report.problems[:limits.audit_discrepancies_shown_max])}")


def run(args) -> int:
    """`backup` or `restore`: 0 done, 1 the copy failed its audit, 2 anything else, one line."""
    try:
        if args.command == "backup":
            summary = backup(args.data, args.to)
            print(f"backup of {args.data} in {args.to}: {summary.describe()}; audit: sound")
            print(f"the master key is not in a backup: keep a copy of "
                  f"{master_key_path(args.data)} apart from it")
        else:
            summary = restore(args.source, args.data)
            print(f"restored {args.source} into {args.data}: {summary.describe()}; audit: sound")
            print(f"receivers get records again from those positions (a rewind, never a gap; "
                  f"one already past txn {summary.last_txn} refuses with journal_rewound: "
                  f"docs/FORWARDING.md, After a restore); put the master key kept apart at "
                  f"{master_key_path(args.data)} before starting the switch")
            print("everything after the backup is undone, the card office's work too: redo "
                  "the revocations and key rotations (event=revoked in the log), lost cards "
                  "and freezes made since; every till reloads its whole blacklist")
    except (BackupError, DirInUse) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1 if isinstance(error, CopyUnsound) else 2
    except OSError as error:
        if output.reader_gone(error):
            # Done, audited and on disk before a word was printed: only the reader left.
            output.discard_the_rest()
            print(f"error: standard output was closed before the report was printed; the "
                  f"{args.command} itself is done", file=sys.stderr)
            return 0
        print(f"error: {error.filename or ''}: {error.strerror or error}", file=sys.stderr)
        return 2
    return 0
