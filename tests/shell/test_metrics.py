"""The metrics endpoint under abuse: label values only from known sets, the exposition
cached and built in a worker thread, connections bounded in number and time, and an
exception while serving one scrape ends that connection only."""

import threading

import pytest
import trio
import trio.testing

from switch import limits
from switch.shell.metrics import UNKNOWN, Metrics, serve_metrics
from tests.shell.harness import Switch


async def _serve(nursery, metrics) -> int:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    await nursery.start(serve_metrics, metrics, listeners)
    return listeners[0].socket.getsockname()[1]


async def _get(port: int) -> bytes:
    """The whole answer to one GET: empty when the endpoint closed without answering."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        return await _read_to_end(stream)


async def _read_to_end(stream) -> bytes:
    answer = b""
    with trio.fail_after(30):
        while data := await stream.receive_some(65536):
            answer += data
    return answer


def _count_builds(metrics, monkeypatch) -> list:
    """Replace `metrics.exposition` by one that notes the thread of each build."""
    threads = []
    build = metrics.exposition

    def counted():
        threads.append(threading.current_thread())
        return build()

    monkeypatch.setattr(metrics, "exposition", counted)
    return threads


# ------------------------------------------------------------------ labels
async def test_a_clients_made_up_request_types_share_one_label(tmp_path, nursery):
    switch = await Switch(tmp_path / "data").start(nursery)
    try:
        # Up to limits.request_type_chars_max a made-up type is echoed in its reply and
        # counted as unknown; past it the reply says "error", counted as such.
        made_up = [f"made-up-{n}-".ljust(limits.request_type_chars_max, "x") for n in range(50)]
        too_long = [f"made-up-{n}-" + "x" * 200 for n in range(10)]
        for request_type in made_up + too_long:
            reply = await switch.admin.request({"t": request_type})
            assert reply["code"] == "bad_request"
            assert reply["t"] == (request_type if request_type in made_up else "error")
        registry = switch.server.metrics.registry
        assert registry.get_sample_value(
            "switch_requests_total", {"type": UNKNOWN, "code": "bad_request"}) == 50
        assert registry.get_sample_value(
            "switch_request_duration_seconds_count", {"type": UNKNOWN}) == 50
        assert registry.get_sample_value(
            "switch_requests_total", {"type": "error", "code": "bad_request"}) == 10
        exposition = switch.server.metrics.exposition().decode()
        assert "made-up" not in exposition
        # A known type keeps its own label.
        await switch.admin.request({"t": "ping"})
        assert registry.get_sample_value("switch_requests_total",
                                         {"type": "ping", "code": "ok"}) == 1
    finally:
        await switch.stop()


def test_unknown_codes_and_types_map_to_unknown_and_known_ones_stay():
    metrics = Metrics()
    metrics.observe_reply("debit", "no_such_code", 0.001)
    metrics.observe_reply("debit", "insufficient_funds", 0.001)
    metrics.observe_reply("no_such_type", "ok", 0.001)
    metrics.observe_reply(["not", "hashable"], {"no": "hash"}, 0.001)
    metrics.observe_reply("error", "mac_invalid", 0.001)
    sample = metrics.registry.get_sample_value
    assert sample("switch_requests_total", {"type": "debit", "code": UNKNOWN}) == 1
    assert sample("switch_requests_total", {"type": "debit", "code": "insufficient_funds"}) == 1
    assert sample("switch_requests_total", {"type": UNKNOWN, "code": "ok"}) == 1
    assert sample("switch_requests_total", {"type": UNKNOWN, "code": UNKNOWN}) == 1
    assert sample("switch_requests_total", {"type": "error", "code": "mac_invalid"}) == 1
    labels = {(s.labels["type"], s.labels["code"])
              for family in metrics.registry.collect() if family.name == "switch_requests"
              for s in family.samples}
    assert labels == {("debit", UNKNOWN), ("debit", "insufficient_funds"), (UNKNOWN, "ok"),
                      (UNKNOWN, UNKNOWN), ("error", "mac_invalid")}


# ------------------------------------------------------------------ cached exposition
async def test_a_flood_of_scrapes_costs_one_build_in_a_worker_thread(nursery, monkeypatch):
    monkeypatch.setattr(limits, "metrics_exposition_age_s_max", 3600.0)
    metrics = Metrics()
    threads = _count_builds(metrics, monkeypatch)
    port = await _serve(nursery, metrics)
    answers = []
    async with trio.open_nursery() as scrapers:
        for _ in range(limits.metrics_connections_max):
            async def scrape():
                for _ in range(5):
                    answers.append(await _get(port))
            scrapers.start_soon(scrape)
    assert len(answers) == 5 * limits.metrics_connections_max
    assert all(answer.startswith(b"HTTP/1.1 200 OK") for answer in answers)
    assert len({answer for answer in answers}) == 1
    assert len(threads) == 1
    assert threads[0] is not threading.current_thread()


async def test_an_exposition_is_served_up_to_its_age_bound_and_rebuilt_past_it(
        mock_clock, monkeypatch):
    metrics = Metrics()
    threads = _count_builds(metrics, monkeypatch)
    age_s = limits.metrics_exposition_age_s_max
    first = await metrics.cached_exposition()
    assert len(threads) == 1
    mock_clock.jump(age_s)                 # exactly N old: still served
    metrics.journal_txn.set(7)
    assert await metrics.cached_exposition() == first
    assert len(threads) == 1
    mock_clock.jump(0.001)                 # just past N: rebuilt, and shows the change
    rebuilt = await metrics.cached_exposition()
    assert len(threads) == 2
    assert b"switch_journal_txn 7.0" in rebuilt


async def test_scrapes_arriving_during_a_build_share_it(nursery, monkeypatch):
    metrics = Metrics()
    release = threading.Event()
    builds = []

    def slow():
        builds.append(1)
        release.wait(30)
        return b"exposition"

    monkeypatch.setattr(metrics, "exposition", slow)
    results = []

    async def scrape():
        results.append(await metrics.cached_exposition())

    async with trio.open_nursery() as scrapers:
        for _ in range(10):
            scrapers.start_soon(scrape)
        await trio.testing.wait_all_tasks_blocked(0.05)
        assert len(builds) == 1
        release.set()
    assert results == [b"exposition"] * 10
    assert len(builds) == 1


# ------------------------------------------------------------------ connections
async def test_sockets_held_open_cannot_lock_a_scrape_out(nursery):
    """8 idle sockets, each opened again before its time bound, had every scrape reset: a
    new connection past the bound now closes the oldest still sending its request."""
    metrics = Metrics()
    port = await _serve(nursery, metrics)
    idle = [await trio.open_tcp_stream("127.0.0.1", port)
            for _ in range(limits.metrics_connections_max)]
    await trio.testing.wait_all_tasks_blocked(0.05)
    assert metrics.registry.get_sample_value("switch_metrics_endpoint_refused_total") == 0
    for scrape in range(3):
        with trio.fail_after(1):      # promptly, not after an idle socket's time bound
            assert (await _get(port)).startswith(b"HTTP/1.1 200 OK")
        # The idle socket that waited longest made room, and its holder sees it closed...
        with trio.fail_after(1):
            assert await idle[scrape].receive_some(100) == b""
        # ... and opens another.
        idle.append(await trio.open_tcp_stream("127.0.0.1", port))
        await trio.testing.wait_all_tasks_blocked(0.05)
    assert metrics.registry.get_sample_value("switch_metrics_endpoint_refused_total") == 3
    for stream in idle:
        await stream.aclose()


async def test_the_nth_connection_closes_none_and_the_one_past_it_the_oldest(nursery):
    metrics = Metrics()
    port = await _serve(nursery, metrics)
    idle = [await trio.open_tcp_stream("127.0.0.1", port)
            for _ in range(limits.metrics_connections_max - 1)]
    await trio.testing.wait_all_tasks_blocked(0.05)
    # The Nth connection is served and closes none.
    assert (await _get(port)).startswith(b"HTTP/1.1 200 OK")
    assert metrics.registry.get_sample_value("switch_metrics_endpoint_refused_total") == 0
    idle.append(await trio.open_tcp_stream("127.0.0.1", port))
    await trio.testing.wait_all_tasks_blocked(0.05)
    # The N+1th is served too: the oldest idle one is closed for it, and counted.
    assert (await _get(port)).startswith(b"HTTP/1.1 200 OK")
    assert metrics.registry.get_sample_value("switch_metrics_endpoint_refused_total") == 1
    with trio.fail_after(1):
        assert await idle[0].receive_some(100) == b""
    for stream in idle:
        await stream.aclose()


async def test_with_every_connection_being_answered_the_oldest_makes_room(nursery,
                                                                          monkeypatch):
    """A slow reader holds its connection past its request: past the bound the oldest
    goes all the same."""
    metrics = Metrics()
    port = await _serve(nursery, metrics)
    release = trio.Event()

    async def stuck():
        await release.wait()
        return b"exposition"

    monkeypatch.setattr(metrics, "cached_exposition", stuck)
    held = []
    for _ in range(limits.metrics_connections_max):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        held.append(stream)
    await trio.testing.wait_all_tasks_blocked(0.05)
    newcomer = await trio.open_tcp_stream("127.0.0.1", port)
    await trio.testing.wait_all_tasks_blocked(0.05)
    with trio.fail_after(1):
        assert await held[0].receive_some(100) == b""
    await newcomer.send_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    release.set()
    assert (await _read_to_end(newcomer)).endswith(b"\r\n\r\nexposition")
    for stream in held[1:]:
        assert (await _read_to_end(stream)).endswith(b"exposition")
        await stream.aclose()
    await newcomer.aclose()


async def test_a_request_head_not_in_within_its_bound_is_closed(autojump_clock, nursery):
    port = await _serve(nursery, Metrics())
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(b"GET /metrics HTTP/1.1\r\n")   # and never the end of the head
    started = trio.current_time()
    assert await _read_to_end(stream) == b""
    assert trio.current_time() - started == pytest.approx(
        limits.metrics_request_head_timeout_s, abs=0.01)
    await stream.aclose()


async def test_a_connection_lives_at_most_its_time_bound(autojump_clock, nursery, monkeypatch):
    monkeypatch.setattr(limits, "metrics_connection_timeout_s", 0.75)
    metrics = Metrics()
    monkeypatch.setattr(metrics, "cached_exposition", trio.sleep_forever)   # past its head
    port = await _serve(nursery, metrics)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    started = trio.current_time()
    assert await _read_to_end(stream) == b""
    # The clock is trio's mock one: this is the endpoint's deadline, not a speed.
    assert trio.current_time() - started == pytest.approx(0.75, abs=0.01)
    await stream.aclose()


async def test_an_exception_while_serving_ends_that_connection_only(nursery, monkeypatch,
                                                                     caplog):
    metrics = Metrics()
    port = await _serve(nursery, metrics)

    def broken():
        raise RuntimeError("a collector's bug")

    monkeypatch.setattr(metrics, "exposition", broken)
    assert await _get(port) == b""
    assert metrics.registry.get_sample_value("switch_metrics_endpoint_failures_total") == 1
    assert "a collector's bug" in caplog.text and "Traceback" in caplog.text
    monkeypatch.undo()
    assert (await _get(port)).startswith(b"HTTP/1.1 200 OK")


def test_reply_observations_expose_what_prometheus_client_would():
    """The plain counts behind switch_requests_total and switch_request_duration_seconds give
    the exposition prometheus-client's own Counter and Histogram give for the same replies,
    bucket edges included."""
    from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
    from switch.shell.metrics import LATENCY_BUCKETS_S
    registry = CollectorRegistry()
    requests = Counter("switch_requests", "Requests answered, by type and result code",
                       ["type", "code"], registry=registry)
    duration = Histogram("switch_request_duration_seconds", "Frame in to reply out", ["type"],
                         buckets=LATENCY_BUCKETS_S, registry=registry)
    metrics = Metrics()
    samples = [("debit", "ok", s) for s in LATENCY_BUCKETS_S] + \
        [("debit", "busy", 0.00011), ("credit", "ok", 7.0), ("debit", "ok", 0.0)]
    for request_type, code, seconds in samples:
        requests.labels(request_type, code).inc()
        duration.labels(request_type).observe(seconds)
        metrics.observe_reply(request_type, code, seconds)

    def ours(text):
        return sorted(line for line in text.decode().splitlines()
                      if line.startswith(("switch_requests", "switch_request_duration")))

    assert ours(metrics.exposition()) == ours(generate_latest(registry))


# ------------------------------------------------------------------ write-back
async def test_the_write_back_rounds_memory_and_bound_are_exposed_after_each_commit(
        tmp_path, nursery):
    switch = await Switch(tmp_path / "data").start(nursery)
    try:
        await switch.person("WH1", card="C0001", balance=500)
        metrics, store = switch.server.metrics, switch.store
        held = metrics.write_back_held._value.get()
        # The account's record and the admin's remembered ids, committed and logged.
        assert held == store.logs_pending and held >= 3
        assert metrics.write_back_round._value.get() == limits.logged_writes_max
        text = metrics.exposition().decode()
        assert f"switch_write_back_held_writes {float(held)}" in text
        assert f"switch_write_back_round_writes {float(limits.logged_writes_max)}" in text
    finally:
        await switch.stop()
