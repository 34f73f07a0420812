"""`rotate_key` over sockets (docs/PROTOCOL.md §4.15): the old key stops working at once and
the sessions open under it are closed; the new key signs on."""

import trio


async def _closed_with_unauthenticated(client) -> dict:
    with trio.fail_after(5):
        return client.session.receive(await client._next_payload())


async def test_rotate_key_closes_the_open_sessions_of_the_old_key(switch):
    pos = await switch.terminal("WH-POS-1")
    other = await switch.terminal("WH-POS-2")
    reply = await switch.ok(switch.admin, {"t": "rotate_key", "who": "WH-POS-1", "id": "rk"})
    assert await _closed_with_unauthenticated(pos) == {"t": "error", "code": "unauthenticated"}
    old_key_refused = None
    try:
        await switch.connect("WH-POS-1", pos.session.key)
    except Exception as error:  # noqa: BLE001 - the refusal is what we check
        old_key_refused = str(error)
    assert old_key_refused is not None and "unauthenticated" in old_key_refused
    renewed = await switch.connect("WH-POS-1", reply["key"])
    assert (await renewed.request({"t": "ping"}))["code"] == "ok"
    assert (await other.request({"t": "ping"}))["code"] == "ok"     # others are left alone


async def test_an_admin_rotating_its_own_key_gets_the_reply_before_its_session_closes(switch):
    reply = await switch.admin.request({"t": "rotate_key", "who": "admin", "id": "self"})
    assert reply["code"] == "ok" and len(reply["key"]) == 32
    assert await _closed_with_unauthenticated(switch.admin) == {"t": "error",
                                                                "code": "unauthenticated"}
    admin = await switch.connect("admin", reply["key"])
    assert (await admin.request({"t": "ping"}))["code"] == "ok"
