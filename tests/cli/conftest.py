"""A real switch process for the command-line tests."""

import signal
import subprocess
import sys

import pytest


@pytest.fixture
def running_switch(tmp_path):
    data = tmp_path / "data"
    process = subprocess.Popen([sys.executable, "-m", "switch", "serve", "--init", "--data",
                                str(data), "--listen", "127.0.0.1:0", "--metrics", "off",
                                "--log-level", "WARNING"],
                               stdout=subprocess.PIPE, text=True)
    line = process.stdout.readline()
    assert line.startswith("listening on"), line
    yield f"127.0.0.1:{line.strip().rpartition(':')[2]}", data
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0
