"""One owner per directory: an OS-level exclusive lock held for a process's whole life.

Two switches on one data dir would hand out the same txn numbers; two receivers on
one state dir would overwrite each other's files. `flock` on a file inside the
directory is released by the kernel when the process dies, however it dies, so a
crashed owner never leaves a stale lock behind.
"""

import errno
import fcntl
import os

LOCK_FILE = "LOCK"


class DirInUse(Exception):
    """Another live process holds the directory."""

    def __init__(self, path: str, holder_pid: int | None):
        self.path = path
        self.holder_pid = holder_pid
        holder = f"process {holder_pid}" if holder_pid else "another process"
        super().__init__(f"{path} is in use by {holder}; stop it first, or use another directory")


class DirLock:
    """An exclusive lock on `path` (which must exist); `release()` or process exit frees it."""

    def __init__(self, path: str):
        self.path = path
        lock_path = os.path.join(path, LOCK_FILE)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            os.close(fd)
            if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise DirInUse(path, _read_pid(lock_path)) from None
            raise
        # The PID is for the message a second process prints; the flock is the lock.
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "DirLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def holder(path: str) -> int | None:
    """The PID holding `path`'s lock (0 when it cannot be read), or None when no live
    process holds it. Asks without taking it for long, and writes nothing."""
    try:
        fd = os.open(os.path.join(path, LOCK_FILE), os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return _read_pid(os.path.join(path, LOCK_FILE)) or 0
        raise
    finally:
        os.close(fd)
    return None


def _read_pid(lock_path: str) -> int | None:
    try:
        with open(lock_path) as handle:
            return int(handle.read().strip() or 0) or None
    except (OSError, ValueError):
        return None
