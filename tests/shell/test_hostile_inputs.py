"""Inputs that end the whole switch today (issue 12), one test each. After the input, a till
signed on before it still gets its debit answered and `audit` finds the books sound (the
drain, SIGTERM, metrics and trickle tests check what applies to them instead).

Each test names the class of failure it found, and what raised before the fix.
"""

import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import msgpack
import pytest
import trio

from switch import limits
from switch.persistence.audit import audit
from switch.shell.client import Client
from switch.codec import ClientSession, FrameDecoder
from switch.codec.session import sign_body
from switch.config import default_config
from switch.cli.datadir import read_admin_key
from switch.config.destinations import Destination
from switch.ledger.dispatch import HANDLERS
from switch.shell.metrics import FAILURE_PLACES
from tests.shell import hostile
from tests.shell.harness import Switch, next_payloads, signed_on, unverified_body

async def _bystander(switch):
    """A funded card and a till signed on before the attack."""
    await switch.person("WH1", "AAAA", balance=100_000)
    return await switch.terminal("WH-POS-BYSTANDER")


async def _still_serves_and_sound(switch, bystander):
    with trio.fail_after(10):
        reply = await bystander.request({"t": "debit", "card": "AAAA", "amount": 1,
                                         "id": "after-the-attack"})
    assert reply["code"] == "ok", reply
    late = await switch.terminal("WH-POS-LATE")  # a sign-on after the attack works too
    with trio.fail_after(10):
        reply = await late.request({"t": "debit", "card": "AAAA", "amount": 1, "id": 1})
    assert reply["code"] == "ok", reply
    # Handled by the rules, not by containment: no fault was needed to survive it.
    switch.server.housekeep()
    failures = {where: switch.server.metrics.failures.labels(where)._value.get()
                for where in FAILURE_PLACES}
    assert not any(failures.values()), failures
    await switch.stop()
    assert audit(switch.path).sound


async def _first_frame(stream) -> dict:
    payloads = await next_payloads(stream, FrameDecoder())
    assert payloads, "closed without a frame"
    return unverified_body(payloads[0])


async def _terminal_key(switch, who, school="WH", kind="pos") -> bytes:
    reply = await switch.ok(switch.admin, {"t": "add_credential", "who": who, "role": "terminal",
                                           "school": school, "kind": kind, "id": f"add-{who}"})
    return reply["key"]


# ---------------------------------------------------------------- one frame, no credential
async def test_hello_with_empty_who_is_refused(tmp_path, nursery):
    switch = await Switch(tmp_path / "d").start(nursery)
    bystander = await _bystander(switch)
    stream = await trio.open_tcp_stream("127.0.0.1", switch.port)
    body = msgpack.packb({"t": "hello", "v": 1, "who": "", "nonce": bytes(16), "at": 0})
    await stream.send_all(sign_body(bytes(32), body))
    assert (await _first_frame(stream))["code"] == "unauthenticated"
    await stream.aclose()
    await _still_serves_and_sound(switch, bystander)



async def test_hello_with_deeply_nested_version_is_refused(tmp_path, nursery):
    switch = await Switch(tmp_path / "d").start(nursery)
    bystander = await _bystander(switch)
    stream = await trio.open_tcp_stream("127.0.0.1", switch.port)
    # As deep as a hello's bounded body holds (the deepest field is refused for its size).
    body = hostile.pack_pairs([("t", "hello"), ("v", hostile.nested_lists(900)),
                               ("who", "admin"), ("nonce", bytes(16)), ("at", 0)])
    assert len(body) <= limits.hello_body_bytes_max
    await stream.send_all(sign_body(bytes(32), body))
    # Nested past limits.message_nesting_depth_max: not a body the switch reads at all.
    assert (await _first_frame(stream))["code"] == "frame_invalid"
    await stream.aclose()
    await _still_serves_and_sound(switch, bystander)


async def test_downstream_error_reply_nested_deep_does_not_end_the_switch(tmp_path, nursery):
    answered = []
    # An error frame before a session exists carries a zero tag: no key is needed to send it.
    body = hostile.pack_pairs([("t", "error"), ("code", hostile.nested_lists(
        hostile.DEEPEST_FIELD))])
    refusal = (len(body) + limits.tag_size_bytes).to_bytes(4, "big") + body + \
        bytes(limits.tag_size_bytes)

    async def receiver(stream):
        async with stream:
            decoder = FrameDecoder()
            while not decoder.feed(await stream.receive_some(65536)):
                pass
            await stream.send_all(refusal)
            answered.append(1)

    [listener] = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listener.socket.getsockname()[1]
    await nursery.start(trio.serve_listeners, receiver, [listener])
    config = default_config()
    config.destinations = [Destination("billing", "127.0.0.1", port, "switch-1", bytes(32), None)]
    switch = await Switch(tmp_path / "d", config=config).start(nursery)
    bystander = await _bystander(switch)
    with trio.fail_after(10):
        while len(answered) < 2:  # refused once, the forwarder signs on again
            await trio.sleep(0.01)
    await _still_serves_and_sound(switch, bystander)

# ---------------------------------------------------------------- one frame, signed in
async def _signed_request_then_check(tmp_path, nursery, role, message):
    """Send `message` (it may hold values a Client would refuse) from a new credential of
    `role` ("pos", "water", "meter", "service" or "admin"); the reply, if any, is returned."""
    switch = await Switch(tmp_path / "d").start(nursery)
    bystander = await _bystander(switch)
    await switch.ok(switch.admin, {"t": "open_account", "account": "WH-8D-1006", "school": "WH",
                                   "kind": "utility", "id": "room"})
    if role in ("pos", "water", "meter"):
        who, key = f"WH-{role.upper()}-ATTACKER", None
        key = await _terminal_key(switch, who, kind=role)
    else:
        who = f"{role.upper()}-ATTACKER"
        message_add = {"t": "add_credential", "who": who, "role": role, "id": f"add-{who}"}
        key = (await switch.ok(switch.admin, message_add))["key"]
    stream, session, decoder = await signed_on(switch.port, who, key)
    body = hostile.pack_pairs([*message.items(), ("seq", 1)])
    await stream.send_all(hostile.signed_body_frame(session, body))
    payloads = await next_payloads(stream, decoder)
    reply = session.receive(payloads[0]) if payloads else None
    await stream.aclose()
    await _still_serves_and_sound(switch, bystander)
    return reply


DEEP = hostile.nested_lists(hostile.DEEPEST_FIELD, 0)


@pytest.mark.parametrize("role, message", [
    ("pos", {"t": "debit", "card": "AAAA", "amount": 1, "id": 1, "pin": DEEP}),
    ("pos", {"t": "qr_debit", "qr": DEEP, "amount": 1, "id": 1}),
    ("water", {"t": "complete", "hold": "H1", "amount": DEEP, "id": 1}),
    ("meter", {"t": "meter", "account": "WH-8D-1006", "amount": 1, "what": DEEP, "id": 1}),
    ("service", {"t": "credit", "account": "WH1", "amount": 1, "source": DEEP, "id": 1}),
    ("admin", {"t": "open_account", "account": DEEP, "school": "WH", "kind": "person",
               "id": 1}),
], ids=["pos-debit-pin", "pos-qr_debit-qr", "water-complete-amount", "meter-meter-what",
        "service-credit-source", "admin-open_account-account"])
async def test_field_nested_to_the_decoder_limit_is_refused(tmp_path, nursery, role, message):
    reply = await _signed_request_then_check(tmp_path, nursery, role, message)
    # Past limits.message_nesting_depth_max anywhere in a frame: the frame is refused.
    assert reply == {"t": "error", "code": "frame_invalid"}, reply


@pytest.mark.parametrize("role, field, code", [
    ("pos", "pin", "bad_request"), ("service", "source", "bad_request")])
async def test_field_nested_to_the_nesting_bound_is_bad_request(tmp_path, nursery, role, field,
                                                                 code):
    # The frame's map is level 1: a field may nest message_nesting_depth_max - 1 more.
    deepest = hostile.nested_lists(limits.message_nesting_depth_max - 1, 0)
    message = ({"t": "debit", "card": "AAAA", "amount": 1, "id": 1, "pin": deepest}
               if role == "pos" else
               {"t": "credit", "account": "WH1", "amount": 1, "source": deepest, "id": 1})
    reply = await _signed_request_then_check(tmp_path, nursery, role, message)
    assert reply["code"] == code, reply


async def test_offline_record_nested_to_the_decoder_limit_is_refused(tmp_path, nursery):
    deepest = hostile.nested_lists(hostile.DEEPEST_FIELD - 2, 0)
    reply = await _signed_request_then_check(tmp_path, nursery, "pos", {
        "t": "offline", "records": [{"id": 1, "card": deepest, "amount": 1, "at": 0}]})
    assert reply == {"t": "error", "code": "frame_invalid"}, reply


async def test_offline_record_field_at_the_nesting_bound_is_bad_request(tmp_path, nursery):
    # message (1) > records (2) > record (3) > the field's own lists up to the bound.
    deepest = hostile.nested_lists(limits.message_nesting_depth_max - 3, 0)
    reply = await _signed_request_then_check(tmp_path, nursery, "pos", {
        "t": "offline", "records": [{"id": 1, "card": deepest, "amount": 1, "at": 0}]})
    assert reply["code"] == "ok" and reply["results"][0]["code"] == "bad_request", reply


@pytest.mark.parametrize("message", [
    {"t": "complete", "hold": "", "amount": 1, "id": 1},
    {"t": "void", "hold": "", "id": 1},
], ids=["complete", "void"])
async def test_empty_hold_id_is_refused(tmp_path, nursery, message):
    reply = await _signed_request_then_check(tmp_path, nursery, "water", message)
    assert reply["code"] in ("bad_request", "hold_unknown"), reply



async def test_seq_too_large_to_echo_is_refused(tmp_path, nursery):
    switch = await Switch(tmp_path / "d").start(nursery)
    bystander = await _bystander(switch)
    who = "WH-POS-ATTACKER"
    stream, session, decoder = await signed_on(switch.port, who, await _terminal_key(switch, who))
    # The largest body one frame holds: {"seq": <str>}, echoed back as `re` with more around it.
    seq = "x" * (limits.frame_size_bytes_max - limits.tag_size_bytes - 8)
    await stream.send_all(session.raw_request_frame({"seq": seq}))
    payloads = await next_payloads(stream, decoder)
    assert payloads, "closed without a frame"
    assert session.receive(payloads[0])["code"] == "seq_invalid"
    await stream.aclose()
    await _still_serves_and_sound(switch, bystander)


# A `t` this long fits in a request frame, but not in any reply that echoes it.
ECHO_BREAKING_TYPE = "x" * (limits.frame_size_bytes_max - limits.tag_size_bytes - 16)


async def test_type_too_long_to_echo_is_answered(tmp_path, nursery):
    reply = await _signed_request_then_check(tmp_path, nursery, "pos", {"t": ECHO_BREAKING_TYPE})
    assert reply is not None and reply["code"] in ("bad_request", "internal"), reply


async def test_type_too_long_to_echo_is_shed_busy(tmp_path, nursery, monkeypatch):
    config = default_config()
    config.batch_requests_max = 1
    switch = await Switch(tmp_path / "d", config=config).start(nursery)
    bystander = await _bystander(switch)
    who = "WH-POS-ATTACKER"
    stream, session, decoder = await signed_on(switch.port, who, await _terminal_key(switch, who))
    real_write = switch.store.write_batch

    def stalled_write(batch):
        time.sleep(0.3)  # a disk that has stalled: the next request fills the open batch
        real_write(batch)

    monkeypatch.setattr(switch.store, "write_batch", stalled_write)
    await stream.send_all(session.request_frame({"t": "ping"})[1])
    with trio.fail_after(10):   # the committer is writing that ping (a loaded machine is slow)
        while not switch.server.committer.committing:
            await trio.sleep(0.01)
    await stream.send_all(session.request_frame({"t": "ping"})[1]
                          + session.request_frame({"t": ECHO_BREAKING_TYPE})[1])
    codes = [session.receive(payload)["code"]
             for payload in await next_payloads(stream, decoder, 3)]
    assert len(codes) == 3 and codes.count("busy") == 1, codes
    monkeypatch.setattr(switch.store, "write_batch", real_write)
    await stream.aclose()
    await _still_serves_and_sound(switch, bystander)

# ---------------------------------------------------------------- outside one request
# 32-character card ids take 34 bytes each in a push: this many do not fit in one frame.
async def test_one_accounts_cards_can_never_make_a_push_beyond_one_frame(tmp_path, nursery):
    """The attack: thousands of cards on one account, then one offline overdraw lists them
    all in one push (before the fix: FrameTooLarge in the committer). An account now holds
    at most cards_per_account_max cards, and a push of more than a page carries none
    (tests/shell/test_blacklist_paging.py::test_a_push_far_beyond_a_frame_leaves_the_switch_serving)."""
    switch = await Switch(tmp_path / "d").start(nursery)
    bystander = await _bystander(switch)
    await switch.person("WH-MANY", school="WH")
    cards = [f"{n:032X}" for n in range(1, limits.cards_per_account_max + 2)]
    replies = await switch.admin.pipeline([
        {"t": "issue_card", "account": "WH-MANY", "card": card, "id": f"card-{card}"}
        for card in cards])
    assert [r["code"] for r in replies] == ["ok"] * limits.cards_per_account_max + ["bad_request"]
    till = await switch.terminal("WH-POS-OFFLINE")
    # One offline tap overdraws the account: every one of its cards goes on the list at once.
    reply = await till.request({"t": "offline", "records": [
        {"id": 1, "card": cards[0], "amount": 1, "at": switch.clock.now_ms()}]})
    assert reply["code"] == "ok" and reply["results"][0]["code"] == "ok", reply
    listed = await till.request({"t": "blacklist", "since": 0})
    assert sorted(listed["full"]) == cards[:-1]
    await _still_serves_and_sound(switch, bystander)


# 500 records the switch cannot use: about 11 KB of reply for half a KB of request.
UNUSABLE_UPLOAD = {"t": "offline", "records": [{}] * limits.offline_records_max}


async def _replies_waiting_to_be_written(switch, who):
    """A till that uploads without reading until the switch holds replies it cannot write
    (the kernel's buffers are full), but fewer than would get the till dropped. Its budget
    is lifted: a till's own holds two such uploads a second (a record costs a request)."""
    switch.server.config.terminal_requests_burst = 10**9
    key = await _terminal_key(switch, who)
    stream, session, _ = await signed_on(switch.port, who, key)
    connection = next(iter(switch.server.sessions[who]))
    with trio.fail_after(30):
        while not connection._unsent:
            await stream.send_all(b"".join(session.request_frame(UNUSABLE_UPLOAD)[1]
                                           for _ in range(8)))
            await trio.sleep(0.02)
    assert 0 < len(connection._unsent) < limits.send_buffer_bytes_max
    return stream, session


@pytest.mark.parametrize("ending", ["eof", "mac_invalid"])
async def test_session_ends_while_replies_wait_to_be_written(tmp_path, nursery, monkeypatch,
                                                             ending):
    # A closing session's last replies wait for a peer that takes none as a writer's do:
    # `send_stall_timeout_s` without progress (shortened here), then it is dropped.
    monkeypatch.setattr(limits, "send_stall_timeout_s", 2.0)
    switch = await Switch(tmp_path / "d").start(nursery)
    bystander = await _bystander(switch)
    stream, session = await _replies_waiting_to_be_written(switch, "WH-POS-NO-READ")
    if ending == "eof":
        await stream.send_eof()
    else:
        frame = bytearray(session.request_frame({"t": "ping"})[1])
        frame[-1] ^= 1
        await stream.send_all(bytes(frame))
    with trio.fail_after(10):
        while "WH-POS-NO-READ" in switch.server.sessions:
            await trio.sleep(0.01)
    await stream.aclose()
    await _still_serves_and_sound(switch, bystander)


async def test_drain_while_replies_wait_to_be_written(tmp_path, nursery):
    switch = await Switch(tmp_path / "d").start(nursery)
    await switch.person("WH1", "AAAA", balance=100_000)
    stream, _ = await _replies_waiting_to_be_written(switch, "WH-POS-NO-READ")
    switch.server.drain()
    with trio.fail_after(30):
        await switch._finished.wait()
    await stream.aclose()
    await switch.stop()
    assert audit(switch.path).sound


REVOCATION_ATTEMPTS = 16  # each crashes the current server with odds of one half


async def test_revoke_a_credential_with_requests_queued(tmp_path, nursery):
    config = default_config()
    config.batch_wait_s = 0.05  # both floods land in one commit, so its replies wake both
    switch = await Switch(tmp_path / "d", config=config).start(nursery)
    bystander = await _bystander(switch)
    admin_key = (await switch.ok(switch.admin, {"t": "add_credential", "who": "ADMIN-2",
                                                "role": "admin", "id": "add-admin-2"}))["key"]
    cap = limits.requests_in_flight_max
    for attempt in range(REVOCATION_ATTEMPTS):
        who = f"WH-POS-{attempt}"
        stream, session, _ = await signed_on(switch.port, who, await _terminal_key(switch, who))
        admin_stream, admin_session, _ = await signed_on(switch.port, "ADMIN-2", admin_key)
        # The till's backlog waits behind its in-flight cap; so does the admin's revocation,
        # and one commit's replies wake both readers in the same scheduling round.
        flood = b"".join(session.request_frame({"t": "ping"})[1] for _ in range(3 * cap))
        revoke = b"".join([admin_session.request_frame({"t": "ping"})[1] for _ in range(cap)]
                          + [admin_session.request_frame({"t": "revoke_credential", "who": who,
                                                          "id": who})[1]])
        await stream.send_all(flood)
        await admin_stream.send_all(revoke)
        with trio.fail_after(10):
            while who in switch.server.sessions:
                await trio.sleep(0.01)
        await stream.aclose()
        await admin_stream.aclose()
    await _still_serves_and_sound(switch, bystander)


# ---------------------------------------------------------------- the real process
UPLOADS_BEYOND_KERNEL_BUFFERS = 500  # ~5.5 MB of replies: loopback buffers take 3-4 MB


def _offline_replies(metrics_port: int) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics",
                                  timeout=5).read().decode()
    for line in text.splitlines():
        if line.startswith("switch_requests_total{") and 'type="offline"' in line:
            return float(line.rpartition(" ")[2])
    return 0.0


def test_sigterm_while_a_till_does_not_read_exits_0(tmp_path):
    data = tmp_path / "d"
    process = subprocess.Popen([sys.executable, "-m", "switch", "serve", "--init", "--data", str(data),
                                "--listen", "127.0.0.1:0", "--metrics", "127.0.0.1:0"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    till = None
    try:
        port = int(process.stdout.readline().strip().rpartition(":")[2])
        metrics_port = int(process.stdout.readline().strip().rpartition(":")[2])

        async def add_till():
            admin = await Client.connect("127.0.0.1", port, "admin", read_admin_key(str(data)))
            reply = await admin.request({"t": "add_credential", "who": "WH-POS-NO-READ",
                                         "role": "terminal", "school": "WH", "kind": "pos",
                                         "id": 1})
            await admin.aclose()
            return reply["key"]

        session = ClientSession("WH-POS-NO-READ", trio.run(add_till))
        till = socket.socket()
        till.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        till.settimeout(10)
        till.connect(("127.0.0.1", port))
        till.sendall(session.hello_frame(0))
        decoder = FrameDecoder()
        payloads = []
        while not payloads:
            payloads = decoder.feed(till.recv(65536))
        session.receive_hello_reply(payloads[0])
        till.sendall(b"".join(session.request_frame(UNUSABLE_UPLOAD)[1]
                              for _ in range(UPLOADS_BEYOND_KERNEL_BUFFERS)))
        # The switch answers until the replies it holds for this till reach its bound
        # (limits.connection_reply_bytes_max), then stops reading from it.
        deadline = time.monotonic() + 60
        while _offline_replies(metrics_port) == 0:
            assert time.monotonic() < deadline, "the switch did not answer the uploads"
            time.sleep(0.05)
        time.sleep(1.5)  # more answered meanwhile; the metrics page is at most 1 s old
        assert _offline_replies(metrics_port) < UPLOADS_BEYOND_KERNEL_BUFFERS
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0, process.stderr.read()[-3000:]
        stderr = process.stderr.read()
        assert "Traceback" not in stderr and "_failed" not in stderr, stderr[-3000:]
    finally:
        if till is not None:
            till.close()
        if process.poll() is None:
            process.kill()
            process.wait()
    assert audit(str(data)).sound


# ---------------------------------------------------------------- memory a till can pin
async def test_unknown_request_types_do_not_grow_the_metrics(tmp_path, nursery):
    switch = await Switch(tmp_path / "d").start(nursery)
    till = await switch.terminal("WH-POS-1")
    replies = await till.pipeline([{"t": f"no-such-type-{n}"} for n in range(50)])
    assert {reply["code"] for reply in replies} == {"bad_request"}
    exposition = switch.server.metrics.exposition().decode()
    types = set(re.findall(r'switch_requests_total\{code="[^"]*",type="([^"]*)"\}', exposition))
    assert types, "no request series found"
    assert len(types - set(HANDLERS)) <= 2, sorted(types - set(HANDLERS))[:5]
    await switch.stop()


# ---------------------------------------------------------------- slots a till can hold
async def test_trickled_frame_times_out(tmp_path, nursery, monkeypatch):
    # A byte a little more often than the frame's allowance, and further apart than the
    # slack the server gives itself before moving a deadline (1 s).
    monkeypatch.setattr(limits, "frame_complete_timeout_s", 1.5)
    switch = await Switch(tmp_path / "d").start(nursery)
    till = await switch.terminal("WH-POS-TRICKLE")
    frame = till.session.request_frame({"t": "ping"})[1]
    with trio.move_on_after(4 * limits.frame_complete_timeout_s):
        for byte in frame[:-1]:
            if "WH-POS-TRICKLE" not in switch.server.sessions:
                break
            try:
                await till.stream.send_all(bytes([byte]))
            except trio.BrokenResourceError:
                break
            await trio.sleep(1.1)
    assert "WH-POS-TRICKLE" not in switch.server.sessions
    await switch.stop()
