"""A real Prometheus (Debian's package) scraping a live switch; promtool on rules and scrape.

The suite installs `prometheus` with apt-get when it is missing and we are root
(CI and the developers' machines are); elsewhere these tests are skipped with
the reason.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import pytest

from tests.paths import REPO_ROOT as ROOT

RULES = ROOT / "prometheus"
scrape_wait_s = 30


def _ensure_prometheus():
    if shutil.which("prometheus") and shutil.which("promtool"):
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("Debian's prometheus is not installed and apt-get is not available as root")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=False, env=env, capture_output=True)
    result = subprocess.run(["apt-get", "install", "-y", "-qq", "prometheus"], env=env,
                            capture_output=True, text=True)
    if result.returncode != 0 or not shutil.which("prometheus"):
        pytest.fail(f"apt-get install prometheus failed: {result.stderr[-2000:]}")


@pytest.fixture(scope="module")
def promtool():
    _ensure_prometheus()
    return shutil.which("promtool")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _get(url: str):
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read()


def _query(port: int, expr: str) -> dict:
    body = _get(f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
    return json.loads(body)


def test_alert_rules_pass_their_unit_tests(promtool):
    check = subprocess.run([promtool, "check", "rules", str(RULES / "rules.yml")],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    # The example configuration too: its scrape jobs, its Alertmanager, its rule files.
    config = subprocess.run([promtool, "check", "config", "prometheus.yml"], cwd=RULES,
                            capture_output=True, text=True)
    assert config.returncode == 0, config.stdout + config.stderr
    tests = subprocess.run([promtool, "test", "rules", "rules_test.yml"], cwd=RULES,
                           capture_output=True, text=True)
    assert tests.returncode == 0 and "SUCCESS" in tests.stdout, tests.stdout + tests.stderr


@pytest.mark.slow
def test_real_prometheus_scrapes_a_live_switch(promtool, tmp_path):
    data = tmp_path / "data"
    switch = subprocess.Popen([sys.executable, "-m", "switch", "serve", "--init", "--data", str(data),
                               "--listen", "127.0.0.1:0", "--metrics", "127.0.0.1:0",
                               "--log-level", "WARNING"], stdout=subprocess.PIPE, text=True)
    prometheus = None
    try:
        port = int(switch.stdout.readline().strip().rpartition(":")[2])
        metrics_port = int(switch.stdout.readline().strip().rpartition(":")[2])
        # Some traffic, so the counters exist.
        subprocess.run([sys.executable, "-m", "switch", "admin", "--connect", f"127.0.0.1:{port}",
                        "--data", str(data), "open-account", "WH1", "--school", "WH",
                        "--id-last6", "123456"], check=True, capture_output=True)
        exposition = _get(f"http://127.0.0.1:{metrics_port}/metrics")
        lint = subprocess.run([promtool, "check", "metrics"], input=exposition,
                              capture_output=True)
        assert lint.returncode == 0, (lint.stdout + lint.stderr).decode()

        prometheus_port = _free_port()
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            f"rule_files:\n  - {RULES / 'rules.yml'}\n"
            "scrape_configs:\n  - job_name: switch\n    static_configs:\n"
            f"      - targets: ['127.0.0.1:{metrics_port}']\n")
        prometheus = subprocess.Popen(
            [shutil.which("prometheus"), f"--config.file={config}",
             f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{prometheus_port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + scrape_wait_s
        value = None
        while time.monotonic() < deadline:
            try:
                result = _query(prometheus_port, "switch_journal_txn")
                if result["data"]["result"]:
                    value = float(result["data"]["result"][0]["value"][1])
                    if value >= 1:
                        break
            except OSError:
                pass
            time.sleep(0.5)
        assert value == 1.0, "Prometheus did not scrape switch_journal_txn"
        up = _query(prometheus_port, 'up{job="switch"}')["data"]["result"]
        assert up and up[0]["value"][1] == "1"
        # Every query of the dashboard is valid PromQL against the real server.
        dashboard = json.loads((RULES / "grafana-dashboard.json").read_text())
        exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
        assert len(exprs) >= 15
        for expr in exprs:
            answer = _query(prometheus_port, expr)
            assert answer["status"] == "success", (expr, answer)
        connections = _query(prometheus_port, 'switch_connections{role="pending"}')
        assert connections["data"]["result"], "connections gauge missing"
        rules = json.loads(_get(f"http://127.0.0.1:{prometheus_port}/api/v1/rules"))
        names = {r["name"] for g in rules["data"]["groups"] for r in g["rules"]}
        assert {"SwitchCommitSlow", "SwitchForwardLagGrowing", "SwitchTerminalsDroppingOff"} <= names
    finally:
        if prometheus is not None:
            prometheus.terminate()
            prometheus.wait(timeout=20)
        switch.send_signal(signal.SIGTERM)
        switch.wait(timeout=20)
