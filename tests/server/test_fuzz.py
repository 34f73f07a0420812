"""Fuzzing a live switch over real sockets: signed requests with hostile fields, garbage and
bit-flipped frames. The switch must keep serving, answer or close, and keep its books sound.

The suite runs a bounded number of examples; the release run sets SWITCH_FUZZ_EXAMPLES
(see docs/RELIABILITY.md): SWITCH_FUZZ_EXAMPLES=5000 .venv/bin/python -m pytest tests/server/test_fuzz.py
"""

import os

import trio
from hypothesis import HealthCheck, given, settings, strategies as st

from switch import limits
from switch.audit import audit
from switch.codec import ClientSession, FrameDecoder
from switch.dispatch import HANDLERS
from tests.server.harness import Switch

FIELD_NAMES = ["card", "amount", "id", "pin", "qr", "hold", "target", "records", "since", "day",
               "count", "total", "account", "what", "source", "before", "limit", "per_tx",
               "daily", "no_pin", "old", "new", "id_last6", "school", "kind", "holder",
               "utility", "reason", "who", "role", "merchant", "after"]

scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**64 - 1), st.floats(),
                    st.text(max_size=40), st.binary(max_size=40),
                    st.sampled_from(["AAAA", "WH1", "WH-8D-1006", "123456", "2026-11-22",
                                     "electric", "H1", "terminal", "admin", "WH", 5000, 0, -1]))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12)
requests = st.fixed_dictionaries(
    {"t": st.one_of(st.sampled_from(sorted(HANDLERS)), scalars)},
    optional={name: values for name in FIELD_NAMES})
offline_records = st.lists(st.fixed_dictionaries(
    {"id": st.one_of(st.integers(0, 50), st.text(max_size=3)), "card": st.sampled_from(["AAAA",
     "BBBB", "ZZ"]), "amount": st.one_of(st.integers(-5, 100_000), scalars),
     "at": st.one_of(st.integers(0, 2 * 10**12), scalars)}), min_size=0, max_size=6)


class Fuzzer:
    def __init__(self, switch):
        self.switch = switch
        self.keys = {}

    async def prepare(self):
        switch = self.switch
        await switch.person("WH1", "AAAA", balance=100_000)
        await switch.person("CUIK1", "BBBB", school="CUIK", balance=100_000)
        await switch.ok(switch.admin, {"t": "open_account", "account": "WH-8D-1006",
                                       "school": "WH", "kind": "utility", "id": "room"})
        for who, school, kind in (("F-POS", "WH", "pos"), ("F-HW", "WH", "water"),
                                  ("F-MTR", "WH", "meter")):
            reply = await switch.ok(switch.admin, {"t": "add_credential", "who": who,
                                                   "role": "terminal", "school": school,
                                                   "kind": kind, "id": f"k-{who}"})
            self.keys[who] = reply["key"]
        self.keys["admin"] = switch.admin.session.key

    async def session(self, who):
        stream = await trio.open_tcp_stream("127.0.0.1", self.switch.port)
        session = ClientSession(who, self.keys[who])
        await stream.send_all(session.hello_frame(0))
        decoder = FrameDecoder()
        payloads = []
        while not payloads:
            data = await stream.receive_some(65536)
            assert data, "hello refused"
            payloads = decoder.feed(data)
        session.receive_hello_reply(payloads[0])
        return stream, session, decoder

    async def send_and_drain(self, who, frames, expected_replies):
        """Send, then read until every request is answered or the switch closes."""
        stream, session, decoder = await self.session(who)
        answered = 0
        try:
            await stream.send_all(b"".join(frames(session)))
            with trio.fail_after(10):  # a safety net only: normally ends on count or close
                while answered < expected_replies:
                    data = await stream.receive_some(65536)
                    if not data:
                        break
                    for payload in decoder.feed(data):
                        message = session.receive(payload)
                        assert "code" in message
                        if message.get("t") == "error" and "re" not in message:
                            return  # a connection-level error: the switch closes
                        answered += 1
        except trio.BrokenResourceError:
            pass
        finally:
            await stream.aclose()

    async def still_serving(self):
        stream, session, decoder = await self.session("admin")
        _, frame = session.request_frame({"t": "ping"})
        await stream.send_all(frame)
        payloads = []
        with trio.fail_after(5):
            while not payloads:
                payloads = decoder.feed(await stream.receive_some(65536))
        assert session.receive(payloads[0])["code"] == "ok"
        await stream.aclose()


async def test_fuzz_signed_requests_live(tmp_path):
    async with trio.open_nursery() as nursery:
        switch = await Switch(tmp_path / "d").start(nursery)
        fuzzer = Fuzzer(switch)
        await fuzzer.prepare()
        examples = []

        @settings(max_examples=int(os.environ.get("SWITCH_FUZZ_EXAMPLES", 150)), deadline=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
        @given(st.sampled_from(["F-POS", "F-HW", "F-MTR", "admin"]),
               st.lists(requests, min_size=1, max_size=5), offline_records)
        def collect(who, messages, records):
            examples.append((who, messages, records))

        collect()
        for who, messages, records in examples:
            def frames(session, messages=messages, records=records):
                out = [session.request_frame(m)[1] for m in messages]
                out.append(session.request_frame({"t": "offline", "records": records})[1])
                return out
            await fuzzer.send_and_drain(who, frames, len(messages) + 1)
        await fuzzer.still_serving()
        await switch.stop()
        nursery.cancel_scope.cancel()
    assert audit(str(tmp_path / "d")).sound


async def test_fuzz_garbage_and_mutated_frames_live(tmp_path, monkeypatch):
    # Garbage is often the start of a frame that never ends: don't wait 10 s for each.
    monkeypatch.setattr(limits, "frame_complete_timeout_s", 0.2)
    async with trio.open_nursery() as nursery:
        switch = await Switch(tmp_path / "d").start(nursery)
        fuzzer = Fuzzer(switch)
        await fuzzer.prepare()
        examples = []

        @settings(max_examples=int(os.environ.get("SWITCH_FUZZ_EXAMPLES", 120)), deadline=None,
                  suppress_health_check=list(HealthCheck))
        @given(st.binary(max_size=200), st.integers(0, 10**6), st.integers(0, 7))
        def collect(garbage, position, bit):
            examples.append((garbage, position, bit))

        collect()
        for garbage, position, bit in examples:
            def mutated(session, position=position, bit=bit):
                frame = bytearray(session.request_frame(
                    {"t": "debit", "card": "AAAA", "amount": 1, "id": position})[1])
                index = position % len(frame)
                frame[index] ^= 1 << bit
                return [bytes(frame)]
            await fuzzer.send_and_drain("F-POS", mutated, 1)
            if garbage:  # nothing sent, nothing to answer: the idle timeout covers that
                await fuzzer.send_and_drain("F-POS", lambda session, g=garbage: [g], 1)
            # Garbage before hello too.
            stream = await trio.open_tcp_stream("127.0.0.1", switch.port)
            await stream.send_all(garbage)
            with trio.move_on_after(0.05):
                await stream.receive_some(100)
            await stream.aclose()
        await fuzzer.still_serving()
        await switch.stop()
        nursery.cancel_scope.cancel()
    assert audit(str(tmp_path / "d")).sound
