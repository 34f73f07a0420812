"""A real switch process for the command-line tests."""

import contextlib
import signal
import subprocess
import sys

import pytest


@contextlib.contextmanager
def serving(data, *options):
    """A switch serving a new data dir at `data` (with `options` to `serve`), stopped by
    SIGTERM at the end; yields its host:port."""
    process = subprocess.Popen([sys.executable, "-m", "switch", "serve", "--init", "--data",
                                str(data), "--listen", "127.0.0.1:0", "--metrics", "off",
                                "--log-level", "WARNING", *options],
                               stdout=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
        assert line.startswith("listening on"), line
        yield f"127.0.0.1:{line.strip().rpartition(':')[2]}"
    except BaseException:
        # A test that failed inside must not leave its switch running.
        process.kill()
        process.wait()
        raise
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0


@pytest.fixture
def running_switch(tmp_path):
    data = tmp_path / "data"
    with serving(data) as connect:
        yield connect, data
