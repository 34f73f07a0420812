"""`python -m switch serve` and `audit` as a user runs them (docs/PROTOCOL.md §7.1, §7.3)."""

import os
import signal
import stat
import subprocess
import sys
import urllib.request

import pytest
import trio

from switch.shell.client import Client
from switch.datadir import read_admin_key


def _start(data, *extra):
    process = subprocess.Popen([sys.executable, "-m", "switch", "serve", "--data", str(data),
                                "--listen", "127.0.0.1:0", *extra],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return process


def _ready_lines(process, count):
    lines = [process.stdout.readline().strip() for _ in range(count)]
    return lines


def test_serve_initialises_reports_ports_and_stops_on_sigterm(tmp_path):
    data = tmp_path / "fresh"
    process = _start(data, "--metrics", "127.0.0.1:0")
    try:
        listening, metrics = _ready_lines(process, 2)
        assert listening.startswith("listening on 127.0.0.1:")
        assert metrics.startswith("metrics on 127.0.0.1:")
        port = int(listening.rpartition(":")[2])
        assert port > 0
        key_file = data / "admin.key"
        assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
        assert len(key_file.read_text().strip()) == 64

        async def sign_on():
            client = await Client.connect("127.0.0.1", port, "admin", read_admin_key(str(data)))
            reply = await client.request({"t": "ping"})
            await client.aclose()
            return reply

        assert trio.run(sign_on)["code"] == "ok"
        metrics_port = int(metrics.rpartition(":")[2])
        text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics",
                                      timeout=5).read().decode()
        for name in ("switch_requests_total", "switch_request_duration_seconds_bucket",
                     "switch_commit_batch_size_bucket", "switch_commit_duration_seconds_bucket",
                     'switch_connections{role="pending"}', "switch_journal_txn",
                     "switch_holds_open"):
            assert name in text, name
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
        stderr = process.stderr.read()
        assert read_admin_key(str(data)).hex() not in stderr  # keys are never logged
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    audit = subprocess.run([sys.executable, "-m", "switch", "audit", "--data", str(data)],
                           capture_output=True, text=True)
    assert audit.returncode == 0 and "audit: sound" in audit.stdout


def test_restart_keeps_the_admin_key(tmp_path):
    data = tmp_path / "d"
    for _ in range(2):
        process = _start(data)
        try:
            assert _ready_lines(process, 1)[0].startswith("listening on")
            key = read_admin_key(str(data))
            process.send_signal(signal.SIGINT)
            assert process.wait(timeout=20) == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    assert read_admin_key(str(data)) == key


def test_bad_config_is_refused_with_the_key_named(tmp_path):
    config = tmp_path / "switch.toml"
    config.write_text("batch_wait_s = 0.0005\nbatch_requets_max = 10\n")
    result = subprocess.run([sys.executable, "-m", "switch", "serve", "--data",
                             str(tmp_path / "d"), "--listen", "127.0.0.1:0", "--config",
                             str(config)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "batch_requets_max" in result.stderr


def test_audit_of_a_missing_dir_fails(tmp_path):
    result = subprocess.run([sys.executable, "-m", "switch", "audit", "--data",
                             str(tmp_path / "none")], capture_output=True, text=True)
    assert result.returncode == 1 and "DISCREPANCIES" in result.stdout


@pytest.mark.parametrize("listen", ["nohost", "127.0.0.1:99999", ":80"])
def test_bad_listen_address_is_a_usage_error(tmp_path, listen):
    result = subprocess.run([sys.executable, "-m", "switch", "serve", "--data", str(tmp_path),
                             "--listen", listen], capture_output=True, text=True)
    assert result.returncode == 2
