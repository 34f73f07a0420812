"""The C load client (bench/loadgen/loadgen.c) builds, computes the wire's HMAC-SHA256 as the
codec does, signs on and runs a bounded load against real servers with every reply counted,
and refuses what a Python client would refuse (a hello from an unknown key, a forged reply).
Nothing here measures speed."""

import hmac
import json
import os
import socket
import subprocess
import sys
import threading
import time

import msgpack
import pytest

from switch.codec import ClientSession, FrameDecoder, ServerSession
from switch.codec.session import sign_body, encode_body
from tests.bench import bench_module
from tests.paths import REPO_ROOT

RUN_TIMEOUT_S = 120
SERVER_START_TIMEOUT_S = 30

e2e_load = bench_module("e2e_load")


@pytest.fixture(scope="module")
def loadgen(tmp_path_factory):
    if not e2e_load.c_compiler():
        pytest.skip("no C compiler (cc, gcc or clang) to build bench/loadgen/loadgen.c")
    return e2e_load.build_client(tmp_path_factory.mktemp("loadgen") / "loadgen")


def _hmac_in_c(loadgen, pairs: list[tuple[bytes, bytes]], sha256: str = "auto") -> list[bytes]:
    lines = "".join(f"{key.hex()} {message.hex()}\n" for key, message in pairs)
    completed = subprocess.run([str(loadgen), "--hmac", sha256], input=lines,
                               capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=True)
    return [bytes.fromhex(line) for line in completed.stdout.split()]


def test_the_client_builds_and_runs(loadgen):
    assert os.access(loadgen, os.X_OK)
    completed = subprocess.run([str(loadgen)], capture_output=True, text=True,
                               timeout=RUN_TIMEOUT_S)
    assert completed.returncode == 2 and "usage: loadgen" in completed.stderr


def test_its_hmac_gives_the_wire_vectors_keys_and_tags(loadgen, vectors):
    key = bytes.fromhex(vectors["credential_key"])
    material = bytes.fromhex(vectors["client_nonce"]) + bytes.fromhex(vectors["server_nonce"])
    k_c2s, k_s2c = bytes.fromhex(vectors["k_c2s"]), bytes.fromhex(vectors["k_s2c"])
    frames = [(key, "hello_frame"), (key, "hello_reply_frame"), (k_c2s, "debit_frame"),
              (k_s2c, "debit_reply_frame")]
    bodies = [bytes.fromhex(vectors[name])[4:-16] for _, name in frames]
    digests = _hmac_in_c(loadgen, [(key, b"c2s" + material), (key, b"s2c" + material)]
                         + [(frame_key, body) for (frame_key, _), body in zip(frames, bodies)])
    assert digests[:2] == [k_c2s, k_s2c]
    assert [digest[:16] for digest in digests[2:]] == [
        bytes.fromhex(vectors[name])[-16:] for _, name in frames]


def _cpu_has_sha_ni() -> bool:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            return any(line.startswith("flags") and " sha_ni" in line for line in cpuinfo)
    except OSError:
        return False


@pytest.mark.parametrize("sha256", ["auto", "portable", "ni"])
def test_its_hmac_agrees_with_pythons_at_every_block_boundary(loadgen, sha256):
    if sha256 == "ni" and not _cpu_has_sha_ni():
        pytest.skip("this CPU has no SHA extensions: the client uses its portable SHA-256")
    # SHA-256 pads in 64-byte blocks; HMAC hashes keys longer than a block first.
    pairs = [(os.urandom(key_size), os.urandom(size))
             for key_size in (0, 1, 32, 63, 64, 65, 200)
             for size in (0, 1, 55, 56, 57, 63, 64, 65, 119, 120, 128, 1000)]
    assert _hmac_in_c(loadgen, pairs, sha256) == [hmac.digest(key, message, "sha256")
                                                  for key, message in pairs]


def test_a_sha256_it_does_not_have_is_refused_by_name(loadgen):
    completed = subprocess.run([str(loadgen), "--hmac", "sha3"], input="", capture_output=True,
                               text=True, timeout=RUN_TIMEOUT_S)
    assert completed.returncode == 2
    assert "no SHA-256 named 'sha3' (auto, ni or portable)" in completed.stderr


def _bounded_run(tmp_path, *extra) -> dict:
    out = tmp_path / "run.json"
    completed = subprocess.run(
        [sys.executable, str(REPO_ROOT / "bench" / "e2e_load.py"), "--no-pin",
         "--workdir", str(tmp_path), "--connections", "4", "--requests", "50", "--warmup", "0",
         "--seconds", "60", "--json-out", str(out), *extra],
        capture_output=True, text=True, timeout=RUN_TIMEOUT_S, cwd=REPO_ROOT)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    return json.loads(out.read_text())


def _assert_all_answered_ok(result: dict) -> None:
    assert result["client"] == "c"
    assert result["connected"] == 4
    assert result["codes"] == {"ok": 50}
    assert result["broken"] == {} and result["unanswered"] == 0
    assert result["ok_in_window"] == 50
    assert result["latency_ms"]["count"] == 50


@pytest.mark.parametrize("server", ["bare", "uvloop", "responder"])
def test_a_bounded_closed_loop_on_a_bare_server_is_answered_ok_in_full(loadgen, tmp_path,
                                                                        server):
    if server == "uvloop":
        pytest.importorskip("uvloop", reason="uvloop is the bench extra (make install)")
    result = _bounded_run(tmp_path, "--server", server, "--depth", "3")
    _assert_all_answered_ok(result)
    assert result["system"] == server and result["server_exit"] == 0
    # The kernel's own threads are measured apart (they are not another program's work).
    cpu = result["cpu"]
    assert cpu["kernel_threads_cpu_s"] is not None
    assert 0 <= cpu["kernel_threads_cpu_s"] <= cpu["machine_cpu_s"] + 0.05


def test_the_kernel_threads_cpu_is_read_from_proc_per_thread_and_only_grows():
    first = e2e_load._kernel_threads_ticks()
    assert first and 2 in first and all(ticks >= 0 for ticks in first.values())
    assert e2e_load.kernel_threads_seconds_between(first, e2e_load._kernel_threads_ticks()) >= 0
    # Kernel workers come and go: one gone in the window loses its ticks of the window, not
    # its whole life (a sum over each end's threads went 4.8 s negative in a 30 s window,
    # and the run read 24 % of a core of other programs); one begun counts whole; a pid
    # reused by a new thread with fewer ticks is that new thread.
    clock = os.sysconf("SC_CLK_TCK")
    start = {2: 10, 41: 5_000, 42: 300, 43: 900}
    stop = {2: 12, 42: 330, 43: 20, 77: 8}     # 41 exited; 77 began; 43 is a new thread
    assert e2e_load.kernel_threads_seconds_between(start, stop) == pytest.approx(
        (2 + 30 + 20 + 8) / clock)
    assert e2e_load.kernel_threads_seconds_between(None, stop) is None
    cpu = {"elapsed_s": 1.0, "server_cpu_s": 0.5, "load_cpu_s": 0.2, "machine_cpu_s": 1.0,
           "kernel_threads_cpu_s": 0.25}
    assert e2e_load.other_programs_seconds(cpu) == pytest.approx(0.05)
    del cpu["kernel_threads_cpu_s"]   # a result from before: counted in
    assert e2e_load.other_programs_seconds(cpu) == pytest.approx(0.3)


def test_a_bounded_open_loop_counts_every_request_it_meant_to_send(loadgen, tmp_path):
    result = _bounded_run(tmp_path, "--server", "bare", "--rate", "2000")
    _assert_all_answered_ok(result)
    assert result["sent_in_window"] == 50


def test_a_bounded_run_on_the_switch_is_answered_ok_and_its_books_audit_sound(loadgen,
                                                                             tmp_path):
    result = _bounded_run(tmp_path, "--accounts", "20", "--terminals", "2")
    _assert_all_answered_ok(result)
    assert result["system"] == "switch" and result["server_exit"] == 0
    assert result["audit"]["exit"] == 0, result["audit"]["text"]
    # The switch's books agree with the client's count: three records for each account
    # provisioned (opened, card issued, funded), then one for each debit answered ok.
    assert f"journal records {3 * 20 + 50}," in result["audit"]["text"]


def test_provisioning_past_the_admin_budget_waits_and_sends_busy_requests_again(loadgen,
                                                                                tmp_path):
    # On a fast machine the admin's 30,000 provisioning requests outran its request budget
    # and the run stopped at the first `busy` (which did nothing). Here the budget is small
    # enough that most of the provisioning meets it.
    config = tmp_path / "small-admin-budget.toml"
    config.write_text((REPO_ROOT / "bench" / "switch-load.toml").read_text()
                      + "admin_requests_per_s = 400.0\nadmin_requests_burst = 20\n")
    result = _bounded_run(tmp_path, "--accounts", "40", "--terminals", "2",
                          "--config", str(config))
    _assert_all_answered_ok(result)
    assert result["audit"]["exit"] == 0, result["audit"]["text"]
    assert f"journal records {3 * 40 + 50}," in result["audit"]["text"]


# ------------------------------------------------------------------ refusals
def _spec(tmp_path, who: str, key: bytes) -> str:
    path = tmp_path / "spec"
    path.write_text(f"terminal {who} {key.hex()}\ncard 0A0B0C0D\n")
    return str(path)


def _run_loadgen(loadgen, tmp_path, port: int, spec: str) -> dict[str, list[str]]:
    completed = subprocess.run(
        [str(loadgen), "--port", str(port), "--spec", spec, "--connections", "1",
         "--warmup", "0", "--seconds", "5", "--drain", "1", "--requests", "1",
         "--latencies", str(tmp_path / "latencies"), "--unanswered", str(tmp_path / "late")],
        capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert completed.returncode == 0, completed.stderr
    lines: dict[str, list[str]] = {}
    for line in completed.stdout.splitlines():
        name, _, rest = line.partition(" ")
        lines.setdefault(name, []).append(rest)
    return lines


class ForgingServer:
    """Opens one session properly, then answers the first request with a wrong tag."""

    def __init__(self, who: str, key: bytes):
        self.keys = {who: key}
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(SERVER_START_TIMEOUT_S)
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        sock, _ = self.listener.accept()
        with sock:
            sock.settimeout(SERVER_START_TIMEOUT_S)
            session, decoder = ServerSession(), FrameDecoder()
            payloads = []
            while not payloads:
                payloads = decoder.feed(sock.recv(65536))
            hello = session.receive_hello(payloads[0], self.keys.get)
            sock.sendall(session.accept_hello(hello, {"role": "terminal", "time": 0,
                                                      "blacklist": 0}))
            payloads = payloads[1:]
            while not payloads:
                payloads = decoder.feed(sock.recv(65536))
            request = session.receive_request(payloads[0])
            body = encode_body({"t": "debit", "re": request.seq, "code": "ok"})
            sock.sendall(sign_body(os.urandom(32), body))
            sock.recv(1)   # until the client closes

    def close(self) -> None:
        self.thread.join(timeout=SERVER_START_TIMEOUT_S)
        self.listener.close()


def test_a_reply_with_a_forged_tag_drops_the_connection_and_counts_nothing(loadgen, tmp_path):
    key = os.urandom(32)
    server = ForgingServer("bench-pos-1", key)
    try:
        lines = _run_loadgen(loadgen, tmp_path, server.port, _spec(tmp_path, "bench-pos-1", key))
    finally:
        server.close()
    assert lines["connected"] == ["1"]
    assert lines["broken"] == ["1 protocol: mac_invalid"]
    assert "code" not in lines
    assert lines["unanswered"] == ["1"]


def test_a_hello_with_the_wrong_key_is_refused_and_never_loads(loadgen, tmp_path):
    credentials = tmp_path / "credentials.json"
    credentials.write_text(json.dumps({"terminals": [["bench-pos-1", os.urandom(32).hex()]]}))
    server = subprocess.Popen(
        [sys.executable, str(REPO_ROOT / "bench" / "bare_server.py"), "--credentials",
         str(credentials), "--listen", "127.0.0.1:0", "--lifetime", str(RUN_TIMEOUT_S)],
        stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT)
    try:
        line = server.stdout.readline()
        assert line.startswith("listening on "), line
        port = int(line.rsplit(":", 1)[1])
        lines = _run_loadgen(loadgen, tmp_path, port,
                             _spec(tmp_path, "bench-pos-1", os.urandom(32)))
    finally:
        server.terminate()
        server.wait(timeout=SERVER_START_TIMEOUT_S)
    assert lines["connected"] == ["0"]
    assert lines["broken"] == ["1 hello: ProtocolError unauthenticated: refused by peer"]
    assert "code" not in lines


def test_commit_figures_give_each_phase_per_commit_between_two_scrapes():
    phase = 'switch_commit_phase_seconds_sum{{phase="{}"}}'.format
    before = {"switch_commit_duration_seconds_count": 10.0,
              "switch_commit_duration_seconds_sum": 1.0,
              phase("to_worker"): 0.1, phase("write"): 0.5, phase("to_loop"): 0.2}
    after = {"switch_commit_duration_seconds_count": 14.0,
             "switch_commit_duration_seconds_sum": 1.2,
             phase("to_worker"): 0.104, phase("write"): 0.58, phase("to_loop"): 0.212}
    figures = e2e_load.commit_figures(before, after)
    assert figures["commit_ms_mean"] == pytest.approx(50.0)
    assert figures["commit_phase_ms_mean"] == pytest.approx(
        {"to_worker": 1.0, "write": 20.0, "to_loop": 3.0})
    # A switch that does not export the phases: none shown, rather than 0 ms.
    older = {name: value for name, value in after.items() if "phase" not in name}
    assert e2e_load.commit_figures(before, older)["commit_phase_ms_mean"] == {
        "to_worker": None, "write": None, "to_loop": None}


def test_prebuilt_books_are_kept_once_and_every_later_run_starts_from_them(loadgen, tmp_path):
    cache = tmp_path / "books"
    args = ("--accounts", "20", "--terminals", "2", "--prebuild", "--seed", "5",
            "--prebuilt-cache", str(cache))
    first = _bounded_run(tmp_path, *args)
    (entry,) = cache.iterdir()
    second = _bounded_run(tmp_path, *args)
    assert list(cache.iterdir()) == [entry]
    for result in (first, second):
        _assert_all_answered_ok(result)
        # Each run starts from the books as prebuilt, not as the run before left them.
        assert f"journal records {3 * 20 + 50}," in result["audit"]["text"]
    assert (entry / "terminals.json").stat().st_mode & 0o777 == 0o600
    # Other sizes are other books.
    _bounded_run(tmp_path, *args[:1], "21", *args[2:])
    assert len(list(cache.iterdir())) == 2


def test_a_prebuilt_cache_without_a_seed_is_refused(tmp_path):
    completed = subprocess.run(
        [sys.executable, str(REPO_ROOT / "bench" / "e2e_load.py"), "--prebuild",
         "--prebuilt-cache", str(tmp_path)], capture_output=True, text=True,
        timeout=RUN_TIMEOUT_S, cwd=REPO_ROOT)
    assert completed.returncode == 2 and "needs --prebuild and --seed" in completed.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_run_that_loses_the_race_for_a_cache_entry_keeps_the_winners(tmp_path, monkeypatch):
    args = e2e_load._parser().parse_args(
        ["--prebuild", "--seed", "5", "--accounts", "3", "--terminals", "1",
         "--prebuilt-cache", str(tmp_path / "books")])
    entry = tmp_path / "books" / e2e_load._prebuilt_cache_key("T", args)

    def prebuild(data_dir, tag, args):
        # Another run, sharing the cache, finishes first while this one prebuilds.
        (entry / "data").mkdir(parents=True)
        (entry / "terminals.json").write_text('{"terminals": [["pos", "aa"]]}')
        data_dir.mkdir(parents=True)
        (data_dir / "books").write_text("this run's")
        e2e_load._master_key_path(data_dir).write_text("key")
        return ["C1"], [("pos", b"\xbb")]
    monkeypatch.setattr(e2e_load, "prebuild", prebuild)
    cards, terminals = e2e_load.prebuild_or_copy(tmp_path / "run" / "data", "T", args)
    assert (cards, terminals) == (["C1"], [("pos", b"\xbb")])   # its own books and keys
    assert (entry / "terminals.json").read_text() == '{"terminals": [["pos", "aa"]]}'
    assert sorted(path.name for path in (tmp_path / "books").iterdir()) == [entry.name]


class Responder:
    """`loadgen --respond` on a port of its own, for one test."""

    def __init__(self, loadgen, tmp_path, who: str, key: bytes):
        self.process = subprocess.Popen(
            [str(loadgen), "--respond", "--spec", _spec(tmp_path, who, key), "--port", "0",
             "--lifetime", str(RUN_TIMEOUT_S)], stdout=subprocess.PIPE, text=True)
        line = self.process.stdout.readline()
        assert line.startswith("listening on 127.0.0.1:"), line
        self.port = int(line.rsplit(":", 1)[1])

    def connect(self) -> tuple[socket.socket, FrameDecoder]:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=SERVER_START_TIMEOUT_S)
        return sock, FrameDecoder()

    def stop(self) -> int:
        self.process.terminate()
        return self.process.wait(timeout=SERVER_START_TIMEOUT_S)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def _frames(sock: socket.socket, decoder: FrameDecoder, count: int) -> list[bytes]:
    payloads: list[bytes] = []
    while len(payloads) < count:
        data = sock.recv(65536)
        assert data, f"closed after {len(payloads)} of {count} frames"
        payloads += decoder.feed(data)
    return payloads


def _closed_without_a_reply(sock: socket.socket) -> bool:
    try:
        return sock.recv(65536) == b""
    except ConnectionResetError:
        return True


def test_the_responder_answers_as_a_server_does_and_refuses_what_a_server_refuses(loadgen,
                                                                                 tmp_path):
    """The client's ceiling is measured against `loadgen --respond`: its replies must pass the
    switch's own codec (tags, keys, re), and it must check what a server checks, or the
    ceiling would be measured against a peer that skips work a server does."""
    key = os.urandom(32)
    responder = Responder(loadgen, tmp_path, "bench-pos-1", key)
    try:
        sock, decoder = responder.connect()
        with sock:
            session = ClientSession("bench-pos-1", key)
            sock.sendall(session.hello_frame(at_ms=0))
            reply = session.receive_hello_reply(_frames(sock, decoder, 1)[0])
            assert reply["code"] == "ok" and len(reply["nonce"]) == 16
            assert reply["role"] == "terminal" and reply["blacklist"] == 0
            assert abs(reply["time"] - time.time() * 1000) < 60_000      # wall-clock ms
            frames = [session.request_frame({"t": "debit", "card": "0A0B0C0D", "amount": 1,
                                             "id": n})[1] for n in range(3)]
            sock.sendall(b"".join(frames))   # one receive holding three frames
            replies = [session.receive(payload) for payload in _frames(sock, decoder, 3)]
            assert [(r["t"], r["re"], r["code"]) for r in replies] == [
                ("debit", 1, "ok"), ("debit", 2, "ok"), ("debit", 3, "ok")]
            assert len({r["txn"] for r in replies}) == 3
            # A request out of sequence ends the session, answered by nothing.
            sock.sendall(session.raw_request_frame({"t": "debit", "seq": 9}))
            assert _closed_without_a_reply(sock)
        # A request whose tag is not the session's, and a hello signed with another key.
        sock, decoder = responder.connect()
        with sock:
            session = ClientSession("bench-pos-1", key)
            sock.sendall(session.hello_frame(at_ms=0))
            session.receive_hello_reply(_frames(sock, decoder, 1)[0])
            body = encode_body({"t": "debit", "seq": 1})
            sock.sendall(sign_body(os.urandom(32), body))
            assert _closed_without_a_reply(sock)
        for who, with_key, extra in (("bench-pos-1", os.urandom(32), {}),
                                     ("bench-pos-2", key, {}), ("bench-pos-1", key, {"v": 2})):
            sock, _ = responder.connect()
            with sock:
                sock.sendall(ClientSession(who, with_key).hello_frame(at_ms=0, **extra))
                assert _closed_without_a_reply(sock)
        hello = {"t": "hello", "v": 1, "who": "bench-pos-1", "nonce": os.urandom(16), "at": 0}
        for body in (msgpack.packb(hello) + b"\xc0", msgpack.packb({**hello, 1: 2})):
            sock, _ = responder.connect()
            with sock:
                sock.sendall(sign_body(key, body))     # bytes after the map; a key not a str
                assert _closed_without_a_reply(sock)
        # What it refused ended those sessions alone.
        sock, decoder = responder.connect()
        with sock:
            session = ClientSession("bench-pos-1", key)
            sock.sendall(session.hello_frame(at_ms=0))
            assert session.receive_hello_reply(_frames(sock, decoder, 1)[0])["code"] == "ok"
        assert responder.stop() == 0
    finally:
        responder.kill()


@pytest.mark.parametrize("arguments", [
    ["--respond"],
    ["--respond", "--spec"],
    ["--respond", "--spec", "S", "--port", "70000", "--lifetime", "5"],
    ["--respond", "--spec", "S", "--port", "0", "--lifetime", "0"],
    ["--respond", "--spec", "S", "--port", "0", "--lifetime", "5", "--rate", "1"],
    ["--respond", "--spec", "S", "--port", "abc", "--lifetime", "5"],
    ["--respond", "--spec", "S", "--port", "80x", "--lifetime", "5"],
    ["--respond", "--spec", "S", "--port", "0", "--lifetime", "inf"],
    ["--respond", "--spec", "S", "--port", "0", "--lifetime", "nan"],
])
def test_a_responder_command_it_cannot_run_is_a_usage_error(loadgen, arguments):
    completed = subprocess.run([str(loadgen), *arguments], capture_output=True, text=True,
                               timeout=RUN_TIMEOUT_S)
    assert completed.returncode == 2
    assert "loadgen --respond --spec FILE" in completed.stderr


def test_books_stripped_of_their_history_keep_their_accounts_and_are_served(loadgen, tmp_path):
    """bench/experiments/strip_history.py (measurement only): the journal, its marks and the
    remembered ids emptied, every account and card kept, and the switch serves the copy."""
    import importlib.util
    import lmdb

    spec = importlib.util.spec_from_file_location(
        "strip_history", REPO_ROOT / "bench" / "experiments" / "strip_history.py")
    strip_history = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(strip_history)
    args = ("--accounts", "20", "--terminals", "2", "--prebuild", "--seed", "6")
    _bounded_run(tmp_path, *args, "--prebuilt-cache", str(tmp_path / "books"))
    (entry,) = (tmp_path / "books").iterdir()
    stripped = tmp_path / "nohist" / entry.name
    assert strip_history.main([str(entry), str(stripped)]) == 0
    assert strip_history.main([str(entry), str(stripped)]) == 2      # never over a copy

    def entries(books):
        env = lmdb.open(str(books / "data" / "lmdb"), readonly=True, max_dbs=64, lock=False)
        try:
            with env.begin() as txn:
                return {name: txn.stat(env.open_db(name.encode(), txn=txn))["entries"]
                        for name in ("accounts", "cards", "journal", "idempotency")}
        finally:
            env.close()

    assert entries(entry) == {"accounts": 20, "cards": 20, "journal": 60, "idempotency": 62}
    assert entries(stripped) == {"accounts": 20, "cards": 20, "journal": 0, "idempotency": 0}
    result = _bounded_run(tmp_path, *args, "--prebuilt-cache", str(tmp_path / "nohist"),
                          "--no-audit")
    _assert_all_answered_ok(result)


def test_a_responder_out_of_descriptors_waits_instead_of_spinning(loadgen, tmp_path):
    """At RLIMIT_NOFILE the listener stays readable; the responder must stop watching it for
    a while rather than wake for it in a loop (it used a whole core doing so)."""
    import resource

    def few_descriptors():
        resource.setrlimit(resource.RLIMIT_NOFILE, (12, 12))

    process = subprocess.Popen(
        [str(loadgen), "--respond", "--spec", _spec(tmp_path, "bench-pos-1", os.urandom(32)),
         "--port", "0", "--lifetime", str(RUN_TIMEOUT_S)],
        stdout=subprocess.PIPE, text=True, preexec_fn=few_descriptors)
    sockets = []
    try:
        port = int(process.stdout.readline().rsplit(":", 1)[1])
        sockets = [socket.create_connection(("127.0.0.1", port)) for _ in range(20)]

        def cpu_s() -> float:
            fields = _proc_stat_fields(process.pid)
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

        before = cpu_s()
        time.sleep(1.0)
        # A spinning responder uses about a second of CPU here; a waiting one, nearly none.
        assert cpu_s() - before < 0.5
        process.terminate()
        assert process.wait(timeout=SERVER_START_TIMEOUT_S) == 0
    finally:
        for sock in sockets:
            sock.close()
        if process.poll() is None:
            process.kill()
            process.wait()


def _proc_stat_fields(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat") as handle:
        return handle.read().rsplit(")", 1)[1].split()


@pytest.mark.parametrize("server, durable", [("switch", True), ("bare", False),
                                             ("uvloop", False), ("responder", False)])
def test_the_report_names_authorizations_and_fsyncs_only_for_the_switch(server, durable, capsys):
    """A bare server or the responder answers replies: it authorizes nothing and fsyncs
    nothing, and the printed report must not say it does."""
    args = e2e_load._parser().parse_args(["--server", server, "--connections", "10"])
    result = {"system": server, "pinning": "none", "connected": 10, "codes": {"ok": 100},
              "ok_in_window": 100, "tx_per_s": 100.0, "broken": 0, "unanswered": 0,
              "latency_ms": {}, "server_cpu_us_per_tx": 50.0, "load_cpu_us_per_tx": 10.0,
              "cpu": {"elapsed_s": 1.0, "server_cpu_s": 0.5, "load_cpu_s": 0.1,
                      "kernel_threads_cpu_s": 0.01}}
    e2e_load._report(args, result)
    printed = capsys.readouterr().out
    assert ("µs per authorization" in printed) is durable
    assert ("µs per reply (utime" in printed) is not durable
    assert ("fsync" in printed) is durable
