"""Every identifier and number a peer names is checked before any lookup (issue 12).

Each hostile value gets its error code (`unauthenticated` for a hello, `bad_request`,
`hold_unknown`), nothing changes, and the switch keeps serving.
"""

import os

import pytest
import trio

from switch import limits
from switch.codec import FrameDecoder, ServerSession
from switch.codec.framing import decode_body, encode_frame, split_payload
from switch.persistence.audit import audit

HOSTILE_WHO = ["", "x" * (limits.credential_id_chars_max + 1), "a\0b", "学生", " admin",
               "admin\n", 123, -1, None, b"admin", ["admin"], {"who": "admin"}, 1.5, True]


async def _hello_reply(port, who) -> dict:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    frame = encode_frame(os.urandom(32), {"t": "hello", "v": 1, "who": who,
                                          "nonce": os.urandom(16), "at": 0})
    await stream.send_all(frame)
    decoder = FrameDecoder()
    with trio.fail_after(5):
        while True:
            data = await stream.receive_some(4096)
            assert data, "closed without an error frame"
            payloads = decoder.feed(data)
            if payloads:
                await stream.aclose()
                return decode_body(split_payload(payloads[0])[0])


@pytest.mark.parametrize("who", HOSTILE_WHO, ids=repr)
async def test_hostile_credential_id_in_hello_is_unauthenticated(switch, who):
    await switch.person("WH1", "AAAA", balance=1000)
    reply = await _hello_reply(switch.port, who)
    assert reply == {"t": "error", "code": "unauthenticated"}
    pos = await switch.terminal("WH-POS-1")
    assert (await pos.request({"t": "balance", "card": "AAAA"}))["balance"] == 1000


def test_a_credential_id_at_the_length_limit_is_looked_up():
    looked_up = []
    session = ServerSession()
    who = "x" * limits.credential_id_chars_max
    frame = encode_frame(os.urandom(32), {"t": "hello", "v": 1, "who": who,
                                          "nonce": os.urandom(16)})
    with pytest.raises(Exception):
        session.receive_hello(frame[4:], lambda w: looked_up.append(w))
    assert looked_up == [who]


@pytest.mark.parametrize("hold", ["", "H", "H0", "h1", "H" + "9" * 25, "孔" * 256, "H1\0",
                                  "x" * 256])
async def test_a_hold_id_not_of_our_syntax_is_unknown(switch, hold):
    shower = await switch.terminal("WH-WATER-1", kind="water")
    reply = await shower.request({"t": "complete", "hold": hold, "amount": 1, "id": "c"})
    assert reply["code"] == "hold_unknown"
    reply = await shower.request({"t": "void", "hold": hold, "id": "v"})
    assert reply["code"] == "hold_unknown"


@pytest.mark.parametrize("value", [2**63, 2**64 - 1])
async def test_ints_outside_int64_are_bad_request(switch, value):
    await switch.person("WH1", "AAAA", balance=1000)
    pos = await switch.terminal("WH-POS-1")
    service = await switch.service("svc", school="WH")
    for client, message in [
            (pos, {"t": "blacklist", "since": value}),
            (service, {"t": "history", "account": "WH1", "before": value}),
            (service, {"t": "set_limits", "account": "WH1", "daily": value, "id": f"l{value}"}),
            (pos, {"t": "settle", "day": "2026-12-01", "count": value, "total": 0})]:
        reply = await client.request(message)
        assert reply["code"] == "bad_request", (message, reply)
    assert (await pos.request({"t": "balance", "card": "AAAA"}))["balance"] == 1000
    assert switch.server.metrics.failures.labels("request")._value.get() == 0
