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
from switch.cli.datadir import read_admin_key
from tests.cli.helpers import one_line_error
from tests.paths import REPO_ROOT


def _start(data, *extra):
    # Metrics off unless the test asks: two switches on one default port would collide.
    extra = extra if "--metrics" in extra else ("--metrics", "off", *extra)
    process = subprocess.Popen([sys.executable, "-m", "switch", "serve", "--init", "--data",
                                str(data), "--listen", "127.0.0.1:0", *extra],
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


def _run(*words, timeout=60):
    return subprocess.run([sys.executable, "-m", "switch", *words], capture_output=True,
                          text=True, timeout=timeout)


def _tree(path, books=True):
    """Every path below `path` (with file contents), to show that nothing changed; without
    `books`, LMDB's files only by name (a running switch writes them itself)."""
    if not path.exists():
        return None
    return sorted((str(p.relative_to(path)), p.read_bytes() if p.is_file() and (
        books or p.parent.name != "lmdb") else b"") for p in path.rglob("*"))


def _books(data):
    """Every key and value of the data dir's LMDB but the QR floor, which the running
    switch's own housekeeping raises a second after it starts."""
    import lmdb
    env = lmdb.open(str(data / "lmdb"), readonly=True, lock=False, max_dbs=64)
    books = {}
    with env.begin() as txn:
        for name, _ in txn.cursor():
            for key, value in txn.cursor(db=env.open_db(name, txn=txn)):
                books[(name, bytes(key))] = bytes(value)
    env.close()
    books.pop((b"meta", b"qr_floor_step"), None)
    return books


def _busy_port():
    """A listening socket on 127.0.0.1 (the caller closes it): its port is in use."""
    import socket
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


def test_audit_of_a_missing_dir_is_an_error_and_creates_nothing(tmp_path):
    result = _run("audit", "--data", str(tmp_path / "none"))
    one_line_error(result, str(tmp_path / "none"), "not a switch data dir")
    assert not (tmp_path / "none").exists()


@pytest.mark.parametrize("listen", ["nohost", "127.0.0.1:99999", ":80", "127.0.0.1:７０００"])
def test_bad_listen_address_is_a_usage_error(tmp_path, listen):
    result = subprocess.run([sys.executable, "-m", "switch", "serve", "--data", str(tmp_path),
                             "--listen", listen], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "HOST:PORT" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_second_switch_on_a_live_data_dir_is_refused_naming_the_holder(tmp_path):
    data = tmp_path / "d"
    first = _start(data, "--log-level", "WARNING")
    try:
        port = int(_ready_lines(first, 1)[0].rpartition(":")[2])
        before = _tree(data, books=False), _books(data)
        second = _run("serve", "--data", str(data), "--listen", "127.0.0.1:0",
                      "--metrics", "off", timeout=30)
        one_line_error(second, str(data), f"process {first.pid}")
        # The second changed nothing, not even the lock's PID.
        assert (_tree(data, books=False), _books(data)) == before

        async def ping():
            client = await Client.connect("127.0.0.1", port, "admin", read_admin_key(str(data)))
            reply = await client.request({"t": "ping"})
            await client.aclose()
            return reply

        assert trio.run(ping)["code"] == "ok"  # the first one still serves
        audit = _run("audit", "--data", str(data))  # read-only: not kept out by the lock
        assert audit.returncode == 0 and "audit: sound" in audit.stdout
    finally:
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=20) == 0


def test_a_missing_data_dir_is_refused_without_init(tmp_path):
    typo = tmp_path / "swtich-data"
    result = _run("serve", "--data", str(typo), "--listen", "127.0.0.1:0", timeout=30)
    one_line_error(result, str(typo), "--init")
    assert not typo.exists()


def _made_and_stopped(data):
    """A data dir as a first start leaves it (with a master key file beside it)."""
    process = _start(data)
    try:
        assert _ready_lines(process, 1)[0].startswith("listening on")
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0


@pytest.mark.parametrize("books", ["an empty lmdb dir", "an empty data.mdb", "cut short"])
@pytest.mark.parametrize("init", [False, True])
def test_books_that_are_not_there_are_refused_and_the_admin_key_kept(tmp_path, books, init):
    # An `lmdb/` whose volume did not mount started as a new, empty switch and wrote a new
    # admin.key over the real books' one (helper-68).
    data = tmp_path / "d"
    _made_and_stopped(data)
    key = (data / "admin.key").read_bytes()
    mdb = data / "lmdb" / "data.mdb"
    if books == "an empty lmdb dir":
        for name in os.listdir(data / "lmdb"):
            os.unlink(data / "lmdb" / name)
    elif books == "an empty data.mdb":
        mdb.write_bytes(b"")
    else:
        mdb.write_bytes(mdb.read_bytes()[:4 * 4096])
    def unchanged():    # but the lock files, which say who looked last
        return [entry for entry in _tree(data) if not entry[0].endswith(("LOCK", "lock.mdb"))]
    before = unchanged()
    words = ["serve", "--data", str(data), "--listen", "127.0.0.1:0", "--metrics", "off"]
    result = _run(*words, *(["--init"] if init else []), timeout=30)
    if books == "cut short":
        one_line_error(result, "data.mdb is cut short")
    else:
        one_line_error(result, "holds no books", "volume mounted")
    assert (data / "admin.key").read_bytes() == key and unchanged() == before


def test_init_creates_missing_parents_too(tmp_path):
    data = tmp_path / "srv" / "switch"
    process = _start(data)
    try:
        assert _ready_lines(process, 1)[0].startswith("listening on")
        assert (data / "admin.key").exists()
        assert stat.S_IMODE(os.stat(data).st_mode) == 0o700
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0


@pytest.mark.parametrize("contents", [{"notes.txt": b"mine"}, {"lmdb.bak": b""}])
def test_a_directory_that_is_not_a_data_dir_is_refused_and_left_alone(tmp_path, contents):
    other = tmp_path / "home"
    other.mkdir()
    for name, data in contents.items():
        (other / name).write_bytes(data)
    before = _tree(other)
    result = _run("serve", "--init", "--data", str(other), "--listen", "127.0.0.1:0",
                  timeout=30)
    one_line_error(result, str(other), "not a switch data dir")
    assert _tree(other) == before


def test_a_file_as_data_dir_is_refused(tmp_path):
    path = tmp_path / "switch.toml"
    path.write_text("")
    one_line_error(_run("serve", "--init", "--data", str(path), "--listen", "127.0.0.1:0",
                         timeout=30), "not a directory")


@pytest.mark.parametrize("where", ["missing", "nested", "empty"])
@pytest.mark.parametrize("busy", ["--listen", "--metrics"])
def test_a_start_that_fails_creates_nothing(tmp_path, where, busy):
    data = {"missing": tmp_path / "d", "nested": tmp_path / "a" / "b" / "d",
            "empty": tmp_path / "d"}[where]
    if where == "empty":
        data.mkdir()
    taken = _busy_port()
    try:
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        listen, metrics = (address, "127.0.0.1:0") if busy == "--listen" else \
            ("127.0.0.1:0", address)
        result = _run("serve", "--init", "--data", str(data), "--listen", listen,
                      "--metrics", metrics, timeout=30)
    finally:
        taken.close()
    one_line_error(result, address, "in use")
    assert sorted(os.listdir(tmp_path)) == (["d"] if where == "empty" else [])
    if where == "empty":
        assert os.listdir(data) == []


@pytest.mark.parametrize("listen", ["lcoalhost:0", "192.0.2.1:0"])
def test_an_address_that_cannot_be_bound_is_one_line(tmp_path, listen):
    result = _run("serve", "--init", "--data", str(tmp_path / "d"), "--listen", listen,
                  timeout=60)
    one_line_error(result, f"cannot listen on {listen}")
    assert not (tmp_path / "d").exists()


def test_out_of_range_configuration_is_refused_before_anything_is_created(tmp_path):
    config = tmp_path / "switch.toml"
    config.write_text("connections_max = -1\n")
    result = _run("serve", "--init", "--data", str(tmp_path / "d"), "--listen", "127.0.0.1:0",
                  "--config", str(config), timeout=30)
    assert result.returncode == 2 and "connections_max: -1 is outside" in result.stderr
    assert not (tmp_path / "d").exists()


def test_a_missing_configuration_file_is_one_line(tmp_path):
    result = _run("serve", "--init", "--data", str(tmp_path / "d"), "--listen", "127.0.0.1:0",
                  "--config", str(tmp_path / "nope.toml"), timeout=30)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == (f"configuration error: {tmp_path / 'nope.toml'}: cannot "
                                     f"read it: No such file or directory")


def test_metrics_are_on_by_default_on_a_port_no_common_exporter_uses():
    from switch.cli.main import _parser
    from switch.config.endpoints import METRICS_DEFAULT

    args = _parser().parse_args(["serve", "--data", "d", "--listen", "127.0.0.1:0"])
    assert args.metrics == METRICS_DEFAULT
    host, port = METRICS_DEFAULT
    assert host == "127.0.0.1"
    # The node exporter's 9100 and the rest of Prometheus's exporter range; Prometheus,
    # Pushgateway and Alertmanager; the usual web and client-library example ports.
    assert not 9090 <= port <= 9999 and port not in (8000, 8080)
    assert _parser().parse_args(["serve", "--data", "d", "--listen", "127.0.0.1:0",
                                 "--metrics", "off"]).metrics is None
    # Named once, and every example scrapes or passes that one address.
    address = f"{host}:{port}"
    for example in ("README.md", "docs/FORWARDING.md", "deploy/campus-switch.service",
                    "prometheus/prometheus.yml"):
        text = (REPO_ROOT / example).read_text()
        if example == "prometheus/prometheus.yml":
            # It scrapes the node exporter at 9100 too, as a job of its own after the switch's.
            text, node_job = text.split("job_name: node")
            assert '"127.0.0.1:9100"' in node_job
        assert address in text, example
        assert ":9100" not in text, example


def test_a_questionable_setting_is_logged_at_start_and_the_switch_serves(tmp_path):
    """A cap on every amount below what a school allows (switch/config/settings.py
    `questionable_settings`): one key=value warning per school, and the switch starts."""
    from switch import logline

    config = tmp_path / "switch.toml"
    config.write_text("max_amount_fen = 5000\n")
    process = _start(tmp_path / "d", "--config", str(config))
    try:
        assert _ready_lines(process, 1)[0].startswith("listening on")
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
    events = [logline.split(line) for line in process.stderr.read().splitlines()]
    questioned = [fields for fields in events if fields and fields.get("event")
                  == "config_questionable"]
    assert sorted(fields["school"] for fields in questioned) == ["CUIK", "WH"]
    for fields in questioned:
        assert fields["level"] == "WARNING" and fields["setting"] == "max_amount_fen"
        assert fields["value"] == "5000"
        assert "refused bad_amount" in fields["hint"]
        assert f"schools.{fields['school']}.per_tx_fen (50000)" in fields["hint"]


def test_metrics_off_serves_no_metrics(tmp_path):
    process = _start(tmp_path / "d", "--metrics", "off")
    try:
        assert _ready_lines(process, 1)[0].startswith("listening on")
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
    assert "metrics on" not in process.stdout.read()


def test_a_taken_default_metrics_port_is_one_line_naming_the_way_out(tmp_path):
    import socket
    from switch.config.endpoints import METRICS_DEFAULT

    taken = socket.socket()
    try:
        try:
            taken.bind(METRICS_DEFAULT)
            taken.listen()
        except OSError:
            pass   # someone else holds it: taken all the same
        result = _run("serve", "--init", "--data", str(tmp_path / "d"), "--listen",
                      "127.0.0.1:0", timeout=30)
    finally:
        taken.close()
    one_line_error(result, f"{METRICS_DEFAULT[0]}:{METRICS_DEFAULT[1]}", "in use",
                   "--metrics off")
    assert not (tmp_path / "d").exists()


def test_serve_freezes_what_startup_built_out_of_the_collectors_scans():
    """A full collection over everything startup built stalled every till (~0.1 s); after
    `_quiet_collector` those objects are frozen and the young generation is larger."""
    import gc

    from switch import limits
    from switch.cli.main import _quiet_collector
    threshold = gc.get_threshold()
    try:
        gc.unfreeze()
        assert gc.get_freeze_count() == 0
        _quiet_collector()
        assert gc.get_freeze_count() > 1000
        assert gc.get_threshold()[0] == limits.gc_young_objects_max
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)


def test_a_damaged_id_log_stops_serve_and_rotate_with_one_line_not_a_guess(tmp_path):
    """A record of `idempotency_log_a` that does not decode (persistence/writeback.py): the
    switch cannot know which ids it held, so it does not start, and says what to do."""
    import lmdb

    from switch import limits
    from switch.persistence import writeback

    data = tmp_path / "d"
    _made_and_stopped(data)
    env = lmdb.open(str(data / "lmdb"), max_dbs=limits.lmdb_max_dbs)
    with env.begin(write=True, db=env.open_db(b"idempotency_log_a")) as txn:
        txn.put(writeback.lsn_key(3), b"\x81\xc4\x04till")   # a map cut short
    env.close()
    refused = _run("serve", "--data", str(data), "--listen", "127.0.0.1:0", "--metrics", "off",
                   timeout=30)
    one_line_error(refused, "idempotency_log_a record 3", "restore the latest backup")
    rotate = _run("rotate-master-key", "--data", str(data), timeout=30)
    one_line_error(rotate, "idempotency_log_a record 3")


def test_a_close_slower_than_its_bound_is_said_and_a_quick_one_is_not(tmp_path, monkeypatch,
                                                                        caplog):
    """The store's close writes back what its logs hold (seconds at a million accounts): one
    past `store_close_s`, the part of the unit's TimeoutStopSec left for it, is logged."""
    from switch import limits
    from switch.cli.main import _close_store
    from switch.persistence.store import Store

    from switch import logline

    caplog.set_level("WARNING", logger="switch")
    _close_store(Store(str(tmp_path / "quick")))
    assert "slow_close" not in caplog.text
    monkeypatch.setattr(limits, "store_close_s", -1.0)   # any close is past it
    store = Store(str(tmp_path / "slow"))
    _close_store(store)
    (record,) = [r for r in caplog.records if "slow_close" in r.getMessage()]
    # One key=value line, as every event: a log reader keys on `event`.
    fields = logline.split(logline.KeyValueFormatter().format(record))
    assert fields["event"] == "slow_close" and fields["bound_s"] == "-1"
    assert float(fields["seconds"]) >= 0 and "TimeoutStopSec" in fields["hint"]
    import lmdb
    with pytest.raises(lmdb.Error):
        store.env.stat()      # closed all the same
