"""A reader of a data dir's LMDB killed mid-read, as a `backup` or `audit` killed by a reboot
or a dropped SSH session: its slot in the reader table stays until someone frees it."""

import signal
import subprocess
import sys


def killed_reader(env_path: str) -> int:
    """Start a process that opens a read transaction on `env_path`, SIGKILL it; its PID."""
    reader = subprocess.Popen(
        [sys.executable, "-c", "import lmdb, time\n"
         f"env = lmdb.open({env_path!r}, readonly=True, lock=True, max_dbs=64)\n"
         "txn = env.begin()\nprint('reading', flush=True)\ntime.sleep(60)"],
        stdout=subprocess.PIPE, text=True)
    assert reader.stdout.readline().strip() == "reading"
    reader.send_signal(signal.SIGKILL)
    reader.wait()
    reader.stdout.close()
    return reader.pid


def holds_a_slot(env, pid: int) -> bool:
    return any(line.split()[0] == str(pid) for line in env.readers().splitlines()[1:])
