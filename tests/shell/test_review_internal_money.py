"""An offline upload whose reply could outgrow a frame is refused before anything is
applied; before this, its records were applied and then answered `internal` (found in
review: "a code other than ok moved no money" broke)."""

import msgpack

from switch import limits
from switch.ledger.offline import _reply_bytes_worst
from tests.shell.harness import Switch


def _after_lost_upload(switch, id_of):
    at = switch.clock.now_ms() - 1000          # tapped after the loss: flag after_lost
    return [{"id": id_of(n), "card": "AAAA", "amount": 1, "at": at}
            for n in range(limits.offline_records_max)]


async def test_an_upload_whose_reply_could_not_fit_is_refused_and_moves_nothing(
        tmp_path, nursery):
    switch = await Switch(tmp_path / "d").start(nursery)
    await switch.person("WH1", "AAAA", balance=10_000_000)
    # Four uploads of 500 records at once: twice a till's burst (a record costs a request).
    switch.server.config.terminal_requests_burst = 10**9
    till = await switch.terminal("WH-POS-1")
    switch.clock.advance(60)
    await switch.ok(switch.admin, {"t": "lost", "card": "AAAA", "id": "l"})
    switch.clock.advance(60)
    records = _after_lost_upload(switch, lambda n: f"{n:04d}" + "\u00e9" * 30 + "x" * 30)
    request_bytes = len(msgpack.packb({"t": "offline", "records": records, "seq": 99}))
    assert request_bytes + limits.tag_size_bytes <= limits.frame_size_bytes_max, request_bytes
    for _ in range(2):  # and a retry is refused the same way
        reply = await till.request({"t": "offline", "records": records})
        assert reply["code"] == "bad_request", reply
    balance = (await switch.admin.request({"t": "account", "account": "WH1"}))["balance"]
    assert balance == 10_000_000
    # Split in two, each half's reply fits: applied, every result answered.
    for half in (records[:250], records[250:]):
        assert _reply_bytes_worst(half) <= limits.frame_size_bytes_max - limits.tag_size_bytes
        reply = await till.request({"t": "offline", "records": half})
        assert reply["code"] == "ok" and len(reply["results"]) == 250
        assert {r["flag"] for r in reply["results"]} == {"after_lost"}
    await switch.stop()


def test_the_worst_case_bound_covers_the_largest_result():
    from switch.core.codes import CODE_NAMES
    longest = max(CODE_NAMES, key=len)
    result = {"id": "x" * limits.id_str_chars_max, "code": longest, "txn": 2**63 - 1,
              "balance": -2**63, "flag": "after_lost", "replay": True}
    own = len(msgpack.packb(result)) - len(msgpack.packb(result["id"]))
    assert own <= limits.offline_result_bytes_max
    envelope = {"t": "offline", "code": "ok", "re": 2**64 - 1, "results": [None] * 500}
    assert len(msgpack.packb(envelope)) - 500 <= limits.reply_envelope_bytes_max
