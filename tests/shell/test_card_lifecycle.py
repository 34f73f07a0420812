"""Card office, PINs, limits, QR codes, reversals and the blacklist over real sockets."""

import trio

from switch.ledger.qr import qr_code
from tests.shell.harness import Switch


async def _push(client, timeout=1.0):
    """The next push this client receives, within `timeout` (pushes leave once the change
    is durable, docs/PROTOCOL.md §4.13; a second is ample)."""
    with trio.fail_after(timeout):
        while not client.pushes:
            message = client.session.receive(await client._next_payload())
            if "push" in message:
                client.pushes.append(message)
    return client.pushes.pop(0)


async def _no_push(client, wait=0.3):
    with trio.move_on_after(wait):
        message = client.session.receive(await client._next_payload())
        raise AssertionError(f"unexpected frame {message}")


# ---------------------------------------------------------------- lost / found / blacklist
async def test_lost_card_is_refused_pushed_and_found_again(switch):
    await switch.person("WH1", "AAAA", balance=5000)
    wh_till = await switch.terminal("WH-POS-1")
    cuik_till = await switch.terminal("CUIK-POS-1", school="CUIK")
    lost = await switch.ok(switch.admin, {"t": "lost", "card": "AAAA", "id": "l1"})
    assert lost["blacklist"] == 1 and type(lost["txn"]) is int
    push = await _push(wh_till)
    assert push == {"t": "blacklist", "push": 1, "version": 1, "add": ["AAAA"], "remove": []}
    await _no_push(cuik_till)
    refused = await wh_till.request({"t": "debit", "card": "AAAA", "amount": 100, "id": 1})
    assert refused["code"] == "card_lost"
    again = await switch.admin.request({"t": "lost", "card": "AAAA", "id": "l2"})
    assert again == {"t": "lost", "re": again["re"], "code": "ok", "blacklist": 1}
    found = await switch.ok(switch.admin, {"t": "found", "card": "AAAA", "id": "f1"})
    assert found["blacklist"] == 2
    assert (await _push(wh_till))["remove"] == ["AAAA"]
    ok = await wh_till.request({"t": "debit", "card": "AAAA", "amount": 100, "id": 2})
    assert ok["code"] == "ok" and ok["balance"] == 4900
    not_lost = await switch.admin.request({"t": "found", "card": "AAAA", "id": "f2"})
    assert not_lost["code"] == "ok" and not_lost["blacklist"] == 2 and "txn" not in not_lost


async def test_blacklist_request_deltas_full_and_future(switch):
    for n in range(4):
        await switch.person(f"WH{n}", f"AAA{n}")
    till = await switch.terminal("WH-POS-1")
    for n in range(3):
        await switch.ok(switch.admin, {"t": "lost", "card": f"AAA{n}", "id": f"l{n}"})
    await switch.ok(switch.admin, {"t": "found", "card": "AAA0", "id": "f0"})
    delta = await till.request({"t": "blacklist", "since": 1})
    assert delta["version"] == 4 and sorted(delta["add"]) == ["AAA1", "AAA2"]
    assert delta["remove"] == ["AAA0"]
    full = await till.request({"t": "blacklist", "since": 0})
    assert full["version"] == 4 and sorted(full["full"]) == ["AAA1", "AAA2"]
    assert (await till.request({"t": "blacklist", "since": 5}))["code"] == "bad_request"
    other = await switch.terminal("CUIK-POS-1", school="CUIK")
    assert other.hello_reply["blacklist"] == 0
    late = await switch.terminal("WH-POS-2")
    assert late.hello_reply["blacklist"] == 4


async def test_replace_card_blocks_the_old_and_keeps_the_balance(switch):
    await switch.person("WH1", "AAAA", balance=3000)
    await switch.person("WH2", "BBBB")
    till = await switch.terminal("WH-POS-1")
    admin = switch.admin
    assert (await admin.request({"t": "replace_card", "account": "WH1", "old": "AAAA",
                                 "new": "BBBB", "id": "r0"}))["code"] == "exists"
    await switch.ok(admin, {"t": "replace_card", "account": "WH1", "old": "AAAA", "new": "CCCC",
                            "id": "r1"})
    assert (await till.request({"t": "debit", "card": "AAAA", "amount": 1, "id": 1}))["code"] \
        == "card_blocked"
    new = await till.request({"t": "debit", "card": "CCCC", "amount": 100, "id": 2})
    assert new["code"] == "ok" and new["balance"] == 2900
    assert (await admin.request({"t": "found", "card": "AAAA", "id": "f"}))["code"] == "ok"
    assert (await till.request({"t": "debit", "card": "AAAA", "amount": 1, "id": 3}))["code"] \
        == "card_blocked"
    account = await admin.request({"t": "account", "account": "WH1"})
    assert {c["card"]: c["state"] for c in account["cards"]} == {"AAAA": "blocked",
                                                                "CCCC": "active"}
    assert "AAAA" in (await till.request({"t": "blacklist", "since": 0}))["full"]


async def test_freeze_unfreeze_and_close(switch):
    await switch.person("WH1", "AAAA", balance=300)
    till = await switch.terminal("WH-POS-1")
    admin = switch.admin
    await switch.ok(admin, {"t": "freeze", "account": "WH1", "reason": "请假", "id": "z1"})
    assert (await till.request({"t": "debit", "card": "AAAA", "amount": 1, "id": 1}))["code"] \
        == "account_frozen"
    await switch.ok(admin, {"t": "unfreeze", "account": "WH1", "id": "u1"})
    assert (await admin.request({"t": "close_account", "account": "WH1", "id": "c1"}))["code"] \
        == "not_empty"
    await switch.ok(till, {"t": "debit", "card": "AAAA", "amount": 300, "id": 2})
    await switch.ok(admin, {"t": "close_account", "account": "WH1", "id": "c2"})
    assert (await till.request({"t": "debit", "card": "AAAA", "amount": 1, "id": 3}))["code"] \
        == "account_closed"
    assert (await admin.request({"t": "credit", "account": "WH1", "amount": 1, "source": "x",
                                 "id": "c3"}))["code"] == "account_closed"
    status = await admin.request({"t": "account", "account": "WH1"})
    assert status["status"] == "closed"


async def test_standing_already_so_is_ok_without_a_record(switch):
    await switch.person("WH1", "AAAA")
    admin = switch.admin
    till = await switch.terminal("WH-POS-1")

    async def change(request_type, expect_txn, code="ok"):
        reply = await admin.request({"t": request_type, "account": "WH1", "id": f"{request_type}"
                                     f"-{expect_txn}-{code}"})
        assert reply["code"] == code and ("txn" in reply) == expect_txn, (request_type, reply)

    await change("unfreeze", False)
    await change("unlock", False)
    await change("freeze", True)
    await change("freeze", False)
    await change("close_account", True)  # a frozen account with nothing on it may close
    await change("close_account", False)
    await change("freeze", False, "account_closed")
    await change("unfreeze", False, "account_closed")
    await change("unlock", False, "account_closed")
    assert (await admin.request({"t": "virtual_card", "account": "WH1", "id": "v"}))["code"] \
        == "account_closed"
    history = await admin.request({"t": "history", "account": "WH1"})
    assert [item["kind"] for item in history["items"]] == [
        "close_account", "freeze", "issue_card", "open_account"]
    # A tap made before the closing and uploaded after it: nothing is applied, the closed
    # account stays closed and empty, and the tap is counted for the operator (§4.10 rule 8).
    tap = {"id": "late", "card": "AAAA", "amount": 300, "at": switch.clock.now_ms() - 60_000}
    reply = await switch.ok(till, {"t": "offline", "records": [tap]})
    assert reply["results"] == [{"id": "late", "code": "account_closed"}]
    account = await admin.request({"t": "account", "account": "WH1"})
    assert account["status"] == "closed" and account["balance"] == 0
    taps = switch.server.metrics.closed_account_taps.labels("WH")._value.get()
    assert taps == 1


# ---------------------------------------------------------------- PINs and limits
async def test_pin_lock_counts_across_till_set_pin_and_verify_pin(switch):
    await switch.person("WH1", "AAAA", balance=50_000, id_last6="12345X")
    till = await switch.terminal("WH-POS-1")
    service = await switch.service("app")
    wrong = {"t": "debit", "card": "AAAA", "amount": 6000, "pin": "999999"}
    assert (await till.request({**wrong, "id": 1}))["code"] == "pin_invalid"
    assert (await service.request({"t": "verify_pin", "account": "WH1", "pin": "999999"}))[
        "code"] == "pin_invalid"
    assert (await service.request({"t": "set_pin", "account": "WH1", "old": "999999",
                                   "new": "111111", "id": "s1"}))["code"] == "pin_invalid"
    assert (await till.request({**wrong, "id": 2}))["code"] == "pin_invalid"
    # A malformed PIN is bad_request and does not count.
    assert (await till.request({**wrong, "pin": "12345", "id": 3}))["code"] == "bad_request"
    assert (await till.request({**wrong, "id": 4}))["code"] == "pin_locked"
    small = await till.request({"t": "debit", "card": "AAAA", "amount": 100, "id": 5})
    assert small["code"] == "pin_locked"
    assert (await service.request({"t": "verify_pin", "account": "WH1", "pin": "123450"}))[
        "code"] == "pin_locked"
    assert (await service.request({"t": "reset_pin", "account": "WH1", "id_last6": "123456",
                                   "id": "r0"}))["code"] == "identity_mismatch"
    await switch.ok(service, {"t": "reset_pin", "account": "WH1", "id_last6": "12345X",
                              "id": "r1"})
    ok = await till.request({"t": "debit", "card": "AAAA", "amount": 6000, "pin": "123450",
                             "id": 6})
    assert ok["code"] == "ok"
    await switch.ok(service, {"t": "set_pin", "account": "WH1", "old": "123450", "new": "246810",
                              "id": "s2"})
    assert (await service.request({"t": "verify_pin", "account": "WH1", "pin": "246810"}))[
        "code"] == "ok"


async def test_unlock_clears_the_lock(switch):
    await switch.person("WH1", "AAAA", balance=50_000)
    till = await switch.terminal("WH-POS-1")
    for n in range(5):
        last = await till.request({"t": "debit", "card": "AAAA", "amount": 6000,
                                   "pin": "000000", "id": n})
    assert last["code"] == "pin_locked"
    account = await switch.admin.request({"t": "account", "account": "WH1"})
    assert account["pin_locked"] is True
    unlock = await switch.ok(switch.admin, {"t": "unlock", "account": "WH1", "id": "u"})
    assert type(unlock["txn"]) is int
    assert (await till.request({"t": "debit", "card": "AAAA", "amount": 100, "id": 9}))["code"] \
        == "ok"


async def test_set_limits_within_school_maxima(switch):
    await switch.person("WH1", "AAAA", balance=300_000)
    service = await switch.service("app")
    till = await switch.terminal("WH-POS-1")
    limits = await switch.ok(service, {"t": "set_limits", "account": "WH1", "per_tx": 1000,
                                       "no_pin": 500, "id": 1})
    assert limits["limits"] == {"per_tx": 1000, "daily": 100_000, "no_pin": 500}
    assert (await till.request({"t": "debit", "card": "AAAA", "amount": 1001, "id": 1}))[
        "code"] == "limit_per_tx"
    assert (await till.request({"t": "debit", "card": "AAAA", "amount": 600, "id": 2}))[
        "code"] == "pin_required"
    for bad in ({"per_tx": 200_001}, {"daily": 500_001}, {"no_pin": 20_001},
                {"no_pin": 2000}, {"per_tx": -1}, {"daily": 999}):
        reply = await service.request({"t": "set_limits", "account": "WH1", "id": str(bad),
                                       **bad})
        assert reply["code"] == "bad_request", bad
    account = await service.request({"t": "account", "account": "WH1"})
    assert account["limits"] == {"per_tx": 1000, "daily": 100_000, "no_pin": 500}


async def test_daily_limit_counts_the_local_day(switch):
    await switch.person("WH1", "AAAA", balance=500_000)
    till = await switch.terminal("WH-POS-1")
    # 2026-11-22 15:00 Asia/Shanghai = 07:00 UTC
    switch.clock.ms = 1_795_330_800_000
    for n in range(2):
        assert (await till.request({"t": "debit", "card": "AAAA", "amount": 45_000,
                                    "pin": "123456", "id": n}))["code"] == "ok"
    over = await till.request({"t": "debit", "card": "AAAA", "amount": 10_001, "pin": "123456",
                               "id": 9})
    assert over["code"] == "limit_daily"
    switch.clock.advance(9 * 3600)  # 00:00 the next local day (16:00 UTC)
    assert (await till.request({"t": "debit", "card": "AAAA", "amount": 10_001, "pin": "123456",
                                "id": 10}))["code"] == "ok"


# ---------------------------------------------------------------- QR codes
async def _qr_setup(switch):
    await switch.person("WH1", "AAAA", balance=10_000)
    service = await switch.service("app")
    till = await switch.terminal("WH-POS-1")
    reply = await switch.ok(service, {"t": "virtual_card", "account": "WH1", "id": "v1"})
    assert len(reply["qr_secret"]) == 32
    return service, till, reply["qr_secret"]


async def test_qr_debit_once_within_window(switch):
    service, till, secret = await _qr_setup(switch)
    now_s = switch.clock.now_ms() // 1000
    code = qr_code(secret, "WH1", now_s, "0a1b2c3d")
    ok = await till.request({"t": "qr_debit", "qr": code, "amount": 6000, "id": 1})
    assert ok["code"] == "ok" and ok["balance"] == 4000 and ok["account"] == "WH1"
    assert (await till.request({"t": "qr_debit", "qr": code, "amount": 100, "id": 2}))["code"] \
        == "qr_used"
    previous = qr_code(secret, "WH1", now_s - 30, "00000001")
    assert (await till.request({"t": "qr_debit", "qr": previous, "amount": 100, "id": 3}))[
        "code"] == "ok"
    stale = qr_code(secret, "WH1", now_s - 61, "00000002")
    assert (await till.request({"t": "qr_debit", "qr": stale, "amount": 100, "id": 4}))[
        "code"] == "qr_expired"
    future = qr_code(secret, "WH1", now_s + 61, "00000003")
    assert (await till.request({"t": "qr_debit", "qr": future, "amount": 100, "id": 5}))[
        "code"] == "qr_expired"


async def test_qr_refusals_in_order(switch):
    service, till, secret = await _qr_setup(switch)
    now_s = switch.clock.now_ms() // 1000
    good = qr_code(secret, "WH1", now_s, "0a1b2c3d")
    malformed = [good.upper(), good + ".x", good.replace(".", ":"), "WH1.0123.0a1b2c3d.x",
                 qr_code(secret, "WH1", now_s, "0A1B2C3D"), 12345]
    for n, code in enumerate(malformed):
        reply = await till.request({"t": "qr_debit", "qr": code, "amount": 100, "id": f"m{n}"})
        assert reply["code"] in ("qr_invalid", "bad_request"), (code, reply)
    assert (await till.request({"t": "qr_debit", "qr": good, "amount": 0, "id": "a"}))["code"] \
        == "bad_amount"
    unknown = qr_code(secret, "WH404", now_s, "0a1b2c3d")
    assert (await till.request({"t": "qr_debit", "qr": unknown, "amount": 1, "id": "u"}))[
        "code"] == "qr_invalid"
    await switch.person("WH2", "BBBB", balance=100)
    off = qr_code(secret, "WH2", now_s, "0a1b2c3d")
    assert (await till.request({"t": "qr_debit", "qr": off, "amount": 1, "id": "o"}))["code"] \
        == "virtual_card_off"
    forged = qr_code(bytes(32), "WH1", now_s, "0a1b2c3d")
    assert (await till.request({"t": "qr_debit", "qr": forged, "amount": 1, "id": "f"}))[
        "code"] == "qr_invalid"
    cuik = await switch.terminal("CUIK-POS-1", school="CUIK")
    assert (await cuik.request({"t": "qr_debit", "qr": good, "amount": 1, "id": "w"}))["code"] \
        == "wrong_school"
    # Rotation voids codes made with the old secret.
    await switch.ok(service, {"t": "virtual_card", "account": "WH1", "id": "v2"})
    assert (await till.request({"t": "qr_debit", "qr": good, "amount": 1, "id": "r"}))["code"] \
        == "qr_invalid"
    balance = await switch.admin.request({"t": "account", "account": "WH1"})
    assert balance["balance"] == 10_000


async def test_used_qr_codes_survive_restart_and_pruning(tmp_path, nursery):
    first = await Switch(tmp_path / "d").start(nursery)
    service, till, secret = await _qr_setup(first)
    now_s = first.clock.now_ms() // 1000
    code = qr_code(secret, "WH1", now_s, "0a1b2c3d")
    assert (await till.request({"t": "qr_debit", "qr": code, "amount": 100, "id": 1}))["code"] \
        == "ok"
    key = till.session.key
    await first.stop()
    second = await Switch(tmp_path / "d", clock=first.clock).start(nursery)
    till2 = await second.connect("WH-POS-1", key)
    assert (await till2.request({"t": "qr_debit", "qr": code, "amount": 100, "id": 2}))["code"] \
        == "qr_used"
    # Time moves on: the memory is pruned, and the floor keeps the code dead even if the
    # clock steps back.
    second.clock.advance(120)
    second.server.housekeep()
    assert (await till2.request({"t": "ping"}))["code"] == "ok"
    second.clock.advance(-120)
    assert (await till2.request({"t": "qr_debit", "qr": code, "amount": 100, "id": 3}))["code"] \
        == "qr_expired"
    await second.stop()


# ---------------------------------------------------------------- reversals
async def test_reverse_undoes_once(switch):
    await switch.person("WH1", "AAAA", balance=1000)
    till = await switch.terminal("WH-POS-1")
    debit = await switch.ok(till, {"t": "debit", "card": "AAAA", "amount": 300, "id": "d1"})
    undo = await switch.ok(till, {"t": "reverse", "target": "d1", "id": "r1"})
    assert undo["balance"] == 1000 and undo["txn"] == debit["txn"] + 1
    second = await till.request({"t": "reverse", "target": "d1", "id": "r2"})
    assert second["replay"] is True and second["txn"] == undo["txn"]
    history = await switch.admin.request({"t": "history", "account": "WH1", "limit": 1})
    assert history["items"][0]["kind"] == "reverse" and history["items"][0]["amount"] == 300


async def test_reverse_before_original_leaves_a_tombstone(switch):
    await switch.person("WH1", "AAAA", balance=1000)
    till = await switch.terminal("WH-POS-1")
    early = await switch.ok(till, {"t": "reverse", "target": "late", "id": "r1"})
    assert early["txn"] is None and "balance" not in early
    late = await till.request({"t": "debit", "card": "AAAA", "amount": 300, "id": "late"})
    assert late["code"] == "reversed"
    retry = await till.request({"t": "debit", "card": "AAAA", "amount": 300, "id": "late"})
    assert retry["code"] == "reversed" and retry["replay"] is True
    assert (await till.request({"t": "balance", "card": "AAAA"}))["balance"] == 1000


async def test_reverse_of_a_decline_and_outside_the_window(switch):
    await switch.person("WH1", "AAAA", balance=100)
    till = await switch.terminal("WH-POS-1")
    await till.request({"t": "debit", "card": "AAAA", "amount": 300, "id": "d0"})
    declined = await switch.ok(till, {"t": "reverse", "target": "d0", "id": "r0"})
    assert declined["txn"] is None
    await switch.ok(till, {"t": "debit", "card": "AAAA", "amount": 50, "id": "d1"})
    switch.clock.advance(24 * 3600 + 1)
    assert (await till.request({"t": "reverse", "target": "d1", "id": "r1"}))["code"] \
        == "reverse_window"
    other = await switch.terminal("WH-POS-2")
    # Another till's reverse cannot reach this till's debit: ids are per credential.
    assert (await other.request({"t": "reverse", "target": "d1", "id": "x"}))["txn"] is None


async def test_reverse_gives_the_daily_allowance_back(switch):
    await switch.person("WH1", "AAAA", balance=500_000)
    till = await switch.terminal("WH-POS-1")
    for n in range(2):
        await switch.ok(till, {"t": "debit", "card": "AAAA", "amount": 50_000, "pin": "123456",
                               "id": n})
    assert (await till.request({"t": "debit", "card": "AAAA", "amount": 100, "id": 5}))["code"] \
        == "limit_daily"
    await switch.ok(till, {"t": "reverse", "target": 1, "id": "r"})
    assert (await till.request({"t": "debit", "card": "AAAA", "amount": 100, "id": 6}))["code"] \
        == "ok"


async def test_states_survive_restart(tmp_path, nursery):
    first = await Switch(tmp_path / "d").start(nursery)
    await first.person("WH1", "AAAA", balance=1000)
    await first.person("WH2", "BBBB", balance=1000)
    till = await first.terminal("WH-POS-1")
    await first.ok(first.admin, {"t": "lost", "card": "AAAA", "id": "l"})
    await till.request({"t": "debit", "card": "BBBB", "amount": 6000, "pin": "000000", "id": 1})
    await first.ok(till, {"t": "reverse", "target": "ghost", "id": "r"})
    key = till.session.key
    await first.stop()
    second = await Switch(tmp_path / "d").start(nursery)
    till2 = await second.connect("WH-POS-1", key)
    assert till2.hello_reply["blacklist"] == 1
    assert (await till2.request({"t": "debit", "card": "AAAA", "amount": 1, "id": 2}))["code"] \
        == "card_lost"
    assert (await till2.request({"t": "debit", "card": "BBBB", "amount": 1, "id": "ghost"}))[
        "code"] == "reversed"
    account = await second.admin.request({"t": "account", "account": "WH2"})
    assert account["pin_locked"] is False
    for n in range(4):
        last = await till2.request({"t": "debit", "card": "BBBB", "amount": 6000,
                                    "pin": "000000", "id": f"p{n}"})
    assert last["code"] == "pin_locked"  # 1 before the restart + 4 after = 5
    await second.stop()


async def test_an_account_holds_at_most_cards_per_account_max_cards(switch, monkeypatch):
    from switch import limits
    monkeypatch.setattr(limits, "cards_per_account_max", 3)
    await switch.person("WH1", "AAA0")
    await switch.ok(switch.admin, {"t": "issue_card", "account": "WH1", "card": "AAA1",
                                   "id": "i1"})
    await switch.ok(switch.admin, {"t": "replace_card", "account": "WH1", "old": "AAA1",
                                   "new": "AAA2", "id": "r1"})                     # N = 3
    for message in ({"t": "issue_card", "account": "WH1", "card": "AAA3", "id": "i2"},
                    {"t": "replace_card", "account": "WH1", "old": "AAA2", "new": "AAA4",
                     "id": "r2"}):                                                 # N + 1
        assert (await switch.admin.request(message))["code"] == "bad_request"
    account = await switch.admin.request({"t": "account", "account": "WH1"})
    assert [c["card"] for c in account["cards"]] == ["AAA0", "AAA1", "AAA2"]
