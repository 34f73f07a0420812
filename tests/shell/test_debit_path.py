"""The foundation over real sockets: sign-on, debit, balance, credit, account, history."""

import trio

from switch.codec.framing import encode_frame
from switch.config import default_config
from tests.shell.harness import Switch


async def test_debit_then_balance(switch):
    await switch.person("WH20230001", "04A1B2C3D4", balance=10_000)
    pos = await switch.terminal("WH-POS-0001")
    reply = await pos.request({"t": "debit", "card": "04A1B2C3D4", "amount": 1250, "id": "T1"})
    assert reply["code"] == "ok" and reply["balance"] == 8750 and reply["available"] == 8750
    assert reply["account"] == "WH20230001" and reply["re"] == 1 and type(reply["txn"]) is int
    balance = await pos.request({"t": "balance", "card": "04A1B2C3D4"})
    assert balance == {"t": "balance", "re": 2, "code": "ok", "balance": 8750, "available": 8750,
                       "account": "WH20230001"}


async def test_replay_returns_original_and_moves_nothing(switch):
    await switch.person("WH1", "AAAA", balance=5000)
    pos = await switch.terminal("WH-POS-1")
    first = await pos.request({"t": "debit", "card": "AAAA", "amount": 100, "id": 7})
    again = await pos.request({"t": "debit", "card": "AAAA", "amount": 100, "id": 7})
    assert again["replay"] is True and again["txn"] == first["txn"]
    assert again["balance"] == 4900
    other = await pos.request({"t": "debit", "card": "AAAA", "amount": 100, "id": "7"})
    assert other["code"] == "ok" and other["balance"] == 4800  # 7 and "7" differ
    reuse = await pos.request({"t": "debit", "card": "AAAA", "amount": 101, "id": 7})
    assert reuse["code"] == "id_reuse"
    reuse_t = await pos.request({"t": "balance", "card": "AAAA"})
    assert reuse_t["balance"] == 4800


async def test_declines_are_remembered(switch):
    await switch.person("WH1", "AAAA", balance=100)
    pos = await switch.terminal("WH-POS-1")
    declined = await pos.request({"t": "debit", "card": "AAAA", "amount": 500, "id": "x"})
    assert declined["code"] == "insufficient_funds"
    await switch.ok(switch.admin, {"t": "credit", "account": "WH1", "amount": 1000,
                                   "source": "wx", "id": "pay"})
    again = await pos.request({"t": "debit", "card": "AAAA", "amount": 500, "id": "x"})
    assert again["code"] == "insufficient_funds" and again["replay"] is True


async def test_sixty_four_pipelined_requests_all_answered(switch):
    await switch.person("WH1", "AAAA", balance=100_000)
    pos = await switch.terminal("WH-POS-1")
    replies = await pos.pipeline([{"t": "debit", "card": "AAAA", "amount": 10, "id": n}
                                  for n in range(64)])
    assert [r["re"] for r in replies] == list(range(1, 65))
    assert all(r["code"] == "ok" for r in replies)
    assert sorted(r["balance"] for r in replies)[0] == 100_000 - 640
    assert len({r["txn"] for r in replies}) == 64


async def test_more_than_the_in_flight_cap_is_backpressure_not_error(switch):
    await switch.person("WH1", "AAAA", balance=100_000)
    pos = await switch.terminal("WH-POS-1")
    replies = await pos.pipeline([{"t": "debit", "card": "AAAA", "amount": 1, "id": n}
                                  for n in range(200)])
    assert all(r["code"] == "ok" for r in replies) and len(replies) == 200


async def test_history_pages_newest_first(switch):
    await switch.person("WH1", "AAAA", balance=10_000)
    pos = await switch.terminal("WH-POS-1")
    for n in range(5):
        await pos.request({"t": "debit", "card": "AAAA", "amount": 100 + n, "id": n})
    page = await switch.admin.request({"t": "history", "account": "WH1", "limit": 3})
    assert [i["amount"] for i in page["items"]] == [-104, -103, -102]
    assert page["items"][0]["merchant"] == "WH-POS-1"
    rest = await switch.admin.request({"t": "history", "account": "WH1", "before": page["next"],
                                       "limit": 50})
    assert [i["kind"] for i in rest["items"]] == ["debit", "debit", "credit", "issue_card",
                                                  "open_account"]
    assert rest["next"] is None
    too_many = await switch.admin.request({"t": "history", "account": "WH1", "limit": 201})
    assert too_many["code"] == "bad_request"


async def test_roles_and_kinds(switch):
    await switch.person("WH1", "AAAA", balance=1000)
    pos = await switch.terminal("WH-POS-1")
    meter = await switch.terminal("WH-MTR-1", kind="meter")
    service = await switch.service("wx")
    assert (await pos.request({"t": "credit", "account": "WH1", "amount": 1, "source": "x",
                               "id": 1}))["code"] == "not_permitted"
    assert (await meter.request({"t": "debit", "card": "AAAA", "amount": 1, "id": 1}))["code"] \
        == "not_permitted"
    assert (await service.request({"t": "open_account", "account": "WH9", "school": "WH",
                                   "kind": "person", "id_last6": "123456", "id": 1}))["code"] \
        == "not_permitted"
    assert (await service.request({"t": "credit", "account": "WH1", "amount": 1, "source": "wx",
                                   "id": 1}))["code"] == "ok"


async def test_service_with_a_school_cannot_touch_another(switch):
    await switch.person("CUIK1", "BBBB", school="CUIK", balance=1000)
    wh_service = await switch.service("wh-recharge", school="WH")
    reply = await wh_service.request({"t": "credit", "account": "CUIK1", "amount": 100,
                                      "source": "wx", "id": 1})
    assert reply["code"] == "wrong_school"
    assert (await wh_service.request({"t": "account", "account": "CUIK1"}))["code"] == \
        "wrong_school"
    account = await switch.admin.request({"t": "account", "account": "CUIK1"})
    assert account["balance"] == 1000


async def test_unknown_type_and_missing_type_keep_the_session(switch):
    pos = await switch.terminal("WH-POS-1")
    assert (await pos.request({"t": "teleport"})) == {"t": "teleport", "re": 1,
                                                      "code": "bad_request"}
    assert (await pos.request({"x": 1})) == {"t": "error", "re": 2, "code": "bad_request"}
    assert (await pos.request({"t": "ping"}))["code"] == "ok"


async def test_revoke_closes_live_sessions_at_once(switch):
    pos = await switch.terminal("WH-POS-1")
    await switch.ok(switch.admin, {"t": "revoke_credential", "who": "WH-POS-1", "id": "r"})
    with trio.fail_after(5):
        message = pos.session.receive(await pos._next_payload())
    assert message == {"t": "error", "code": "unauthenticated"}
    key = None
    try:
        await switch.connect("WH-POS-1", b"\0" * 32)
    except Exception as error:  # noqa: BLE001 - the refusal is what we check
        key = str(error)
    assert key is not None and "unauthenticated" in key


async def test_open_account_rules(switch):
    admin = switch.admin
    base = {"t": "open_account", "account": "WH5", "school": "WH", "kind": "person",
            "id_last6": "12345X"}
    assert (await admin.request({**base, "id": 1}))["code"] == "ok"
    assert (await admin.request({**base, "id": 2}))["code"] == "exists"
    assert (await admin.request({**base, "account": "wh5", "id": 3}))["code"] == "bad_request"
    assert (await admin.request({**base, "account": "WH6", "school": "PKU", "id": 4}))["code"] \
        == "bad_request"
    assert (await admin.request({**base, "account": "WH7", "id_last6": "1234", "id": 5}))["code"] \
        == "bad_request"
    utility = await admin.request({"t": "open_account", "account": "WH-8D-1006", "school": "WH",
                                   "kind": "utility", "utility": "both", "id": 6})
    assert utility["code"] == "ok"
    account = await admin.request({"t": "account", "account": "WH-8D-1006"})
    assert account["kind"] == "utility" and account["power"] is False


async def test_initial_pin_reads_final_x_as_zero(switch):
    await switch.person("WH1", "AAAA", balance=20_000, id_last6="53012X")
    pos = await switch.terminal("WH-POS-1")
    wrong = await pos.request({"t": "debit", "card": "AAAA", "amount": 6000, "id": 1,
                               "pin": "530121"})
    assert wrong["code"] == "pin_invalid"
    right = await pos.request({"t": "debit", "card": "AAAA", "amount": 6000, "id": 2,
                               "pin": "530120"})
    assert right["code"] == "ok"


async def test_state_survives_restart(tmp_path, nursery):
    first = await Switch(tmp_path / "d").start(nursery)
    await first.person("WH1", "AAAA", balance=1000)
    pos = await first.terminal("WH-POS-1")
    ok = await pos.request({"t": "debit", "card": "AAAA", "amount": 100, "id": "a"})
    for n in range(3):
        await pos.request({"t": "debit", "card": "AAAA", "amount": 6000, "id": f"p{n}",
                           "pin": "000000"})
    key = (await first.admin.request({"t": "account", "account": "WH1"}))
    await first.stop()
    second = await Switch(tmp_path / "d").start(nursery)
    account = await second.admin.request({"t": "account", "account": "WH1"})
    assert account["balance"] == key["balance"] == 900
    replay = await second.admin.request({"t": "history", "account": "WH1"})
    assert replay["items"][0]["txn"] == ok["txn"]
    # The PIN failure count survived: two more wrong PINs lock it.
    pos2 = await second.connect("WH-POS-1", pos.session.key)
    for n in range(2):
        last = await pos2.request({"t": "debit", "card": "AAAA", "amount": 6000, "id": f"q{n}",
                                   "pin": "000000"})
    assert last["code"] == "pin_locked"
    again = await pos2.request({"t": "debit", "card": "AAAA", "amount": 100, "id": "a"})
    assert again["replay"] is True and again["txn"] == ok["txn"]
    await second.stop()


async def test_raw_terminal_hello_then_request(switch):
    await switch.person("WH1", "AAAA", balance=1000)
    reply = await switch.ok(switch.admin, {"t": "add_credential", "who": "WH-POS-9",
                                           "role": "terminal", "school": "WH", "kind": "pos",
                                           "id": "k"})
    from switch.codec import ClientSession, FrameDecoder
    session = ClientSession("WH-POS-9", reply["key"])
    stream = await trio.open_tcp_stream("127.0.0.1", switch.port)
    # A terminal's request can only be signed once the hello reply brings the server nonce.
    await stream.send_all(session.hello_frame(0))
    decoder = FrameDecoder()
    payloads = []
    while not payloads:
        payloads = decoder.feed(await stream.receive_some(65536))
    assert session.receive_hello_reply(payloads[0])["blacklist"] == 0
    _, frame = session.request_frame({"t": "ping"})
    await stream.send_all(frame)
    payloads = []
    while not payloads:
        payloads = decoder.feed(await stream.receive_some(65536))
    assert session.receive(payloads[0]) == {"t": "ping", "re": 1, "code": "ok"}
    await stream.aclose()


async def test_frame_signed_with_long_term_key_closes_with_mac_invalid(switch):
    pos = await switch.terminal("WH-POS-1")
    await pos.stream.send_all(encode_frame(pos.session.key, {"t": "ping", "seq": 1}))
    with trio.fail_after(5):
        message = pos.session.receive(await pos._next_payload())
    assert message == {"t": "error", "code": "mac_invalid"}
    with trio.fail_after(5):
        assert await pos.stream.receive_some(100) == b""


async def test_frames_before_a_bad_one_in_the_same_receive_run_and_those_after_do_not(switch):
    """A pass opens every frame of a receive before it executes any (tags checked ahead):
    the order of docs/PROTOCOL.md §2 still holds. Frames before a frame with a bad tag
    are executed and answered, then the error ends the session; frames after it never run."""
    await switch.person("WH1", "AAAA", balance=1000)
    pos = await switch.terminal("WH-POS-1")
    frames = [pos.session.request_frame({"t": "debit", "card": "AAAA", "amount": 1,
                                         "id": n})[1] for n in range(4)]
    forged = bytearray(frames[2])
    forged[-1] ^= 1
    await pos.stream.send_all(frames[0] + frames[1] + bytes(forged) + frames[3])
    with trio.fail_after(10):
        messages = [pos.session.receive(await pos._next_payload()) for _ in range(3)]
    assert [(m.get("re"), m["code"]) for m in messages] == [(1, "ok"), (2, "ok"),
                                                             (None, "mac_invalid")]
    with trio.fail_after(5):
        assert await pos.stream.receive_some(100) == b""
    account = await switch.admin.request({"t": "account", "account": "WH1"})
    assert account["balance"] == 1000 - 2


async def test_ids_are_remembered_for_the_retention_period_then_forgotten(switch):
    await switch.person("WH1", "AAAA", balance=1000)
    pos = await switch.terminal("WH-POS-1")
    first = await pos.request({"t": "debit", "card": "AAAA", "amount": 100, "id": "old"})
    switch.clock.advance(switch.config.idempotency_retention_s - 10)
    switch.server.housekeep()
    assert (await pos.request({"t": "debit", "card": "AAAA", "amount": 100, "id": "old"}))[
        "replay"] is True
    # The sweep found no id to visit and asked for the logged ones to be written back
    # (persistence/writeback.py): a round starts, then its slice; the next reply follows them.
    await pos.request({"t": "ping"})
    switch.clock.advance(20)
    switch.server.housekeep()
    await pos.request({"t": "ping"})  # the pruning is committed
    again = await pos.request({"t": "debit", "card": "AAAA", "amount": 100, "id": "old"})
    assert again["code"] == "ok" and "replay" not in again and again["txn"] > first["txn"]


async def test_credential_ids_cannot_smuggle_a_separator(switch):
    """Ids share LMDB keys with a NUL separator: "x" and "x\\0…" must never collide."""
    for who in ("x\x00\u03aa", "a b", "", "é", "x" * 65):
        reply = await switch.admin.request({"t": "add_credential", "who": who, "role": "terminal",
                                            "school": "WH", "kind": "pos", "id": f"bad-{who!r}"})
        assert reply["code"] == "bad_request", who
    ok = await switch.admin.request({"t": "add_credential", "who": "WH-POS_01.a:b@c",
                                     "role": "terminal", "school": "WH", "kind": "pos", "id": "g"})
    assert ok["code"] == "ok"


async def test_the_double_tap_guard_over_sockets_declines_counts_and_lets_confirmed_pay(
        tmp_path, nursery):
    config = default_config()
    config.schools["WH"].repeat_tap_window_s = 2
    switch = await Switch(tmp_path / "d", config=config).start(nursery)
    try:
        await switch.person("WH1", "AAAA", balance=5000)
        till = await switch.terminal("WH-POS-1")
        first = await till.request({"t": "debit", "card": "AAAA", "amount": 800, "id": "a"})
        assert first["code"] == "ok"
        again = await till.request({"t": "debit", "card": "AAAA", "amount": 800, "id": "b"})
        assert again == {"t": "debit", "re": 2, "code": "repeat_tap"}
        resent = await till.request({"t": "debit", "card": "AAAA", "amount": 800, "id": "a"})
        assert resent["replay"] is True and resent["txn"] == first["txn"]
        confirmed = await till.request({"t": "debit", "card": "AAAA", "amount": 800, "id": "c",
                                        "confirm": True})
        assert confirmed["code"] == "ok" and confirmed["balance"] == 3400
        assert switch.server.metrics.registry.get_sample_value(
            "switch_requests_total", {"type": "debit", "code": "repeat_tap"}) == 1
    finally:
        await switch.stop()


async def test_a_subsidy_is_spent_first_reversed_back_and_audited_over_sockets(tmp_path, nursery):
    from switch.persistence.audit import audit
    switch = await Switch(tmp_path / "d").start(nursery)
    await switch.person("WH1", "AAAA", balance=1000)
    granted = await switch.ok(switch.admin, {"t": "subsidy", "account": "WH1", "amount": 500,
                                             "expires": "2099-06-30", "batch": "2099 spring",
                                             "id": "s1"})
    assert (granted["balance"], granted["subsidy"], granted["available"]) == (1000, 500, 1500)
    till = await switch.terminal("WH-POS-1")
    paid = await switch.ok(till, {"t": "debit", "card": "AAAA", "amount": 700, "id": "d"})
    assert (paid["balance"], "subsidy" in paid, paid["available"]) == (800, False, 800)
    back = await switch.ok(till, {"t": "reverse", "target": "d", "id": "r"})
    assert (back["balance"], back["subsidy"]) == (1000, 500)
    history = await switch.ok(switch.admin, {"t": "history", "account": "WH1", "limit": 2})
    assert [(item["kind"], item["amount"], item["from_subsidy"]) for item in history["items"]] == [
        ("reverse", 700, -500), ("debit", -700, 500)]
    await switch.stop()
    report = audit(switch.path)
    assert report.sound, report.summary()


async def test_a_meal_cap_over_sockets_declines_counts_and_a_reversal_gives_back(
        tmp_path, nursery):
    from switch.config.settings import Meal
    config = default_config()
    config.schools["WH"].meals = [Meal("all day", 0, 24 * 60 - 1, 1, 100_000)]
    switch = await Switch(tmp_path / "d", config=config).start(nursery)
    try:
        await switch.person("WH1", "AAAA", balance=5000)
        added = await switch.ok(switch.admin, {"t": "add_credential", "who": "WH-CANTEEN-1",
                                               "role": "terminal", "school": "WH",
                                               "kind": "pos", "meals": True, "id": "add"})
        till = await switch.connect("WH-CANTEEN-1", added["key"])
        first = await till.request({"t": "debit", "card": "AAAA", "amount": 800, "id": "a"})
        assert first["code"] == "ok"
        second = await till.request({"t": "debit", "card": "AAAA", "amount": 300, "id": "b"})
        assert second == {"t": "debit", "re": 2, "code": "meal_limit"}
        await switch.ok(till, {"t": "reverse", "target": "a", "id": "r"})
        third = await till.request({"t": "debit", "card": "AAAA", "amount": 300, "id": "c"})
        assert third["code"] == "ok" and third["balance"] == 4700
        assert switch.server.metrics.registry.get_sample_value(
            "switch_requests_total", {"type": "debit", "code": "meal_limit"}) == 1
    finally:
        await switch.stop()
