"""One owner per directory: a second holder is refused with the first one's PID."""

import os
import subprocess
import sys

import pytest

from switch.persistence.dirlock import DirInUse, DirLock


def test_second_lock_in_another_process_is_refused_with_holder_pid(tmp_path):
    with DirLock(str(tmp_path)):
        code = ("import sys\nfrom switch.persistence.dirlock import DirLock, DirInUse\n"
                "try:\n    DirLock(sys.argv[1])\nexcept DirInUse as e:\n"
                "    print(e.holder_pid); sys.exit(3)\n")
        result = subprocess.run([sys.executable, "-c", code, str(tmp_path)],
                                capture_output=True, text=True)
        assert result.returncode == 3
        assert int(result.stdout) == os.getpid()


def test_lock_is_free_again_after_release(tmp_path):
    DirLock(str(tmp_path)).release()
    with DirLock(str(tmp_path)):
        pass


def test_message_names_directory_and_pid(tmp_path):
    error = DirInUse(str(tmp_path), 4242)
    assert str(tmp_path) in str(error) and "4242" in str(error)
