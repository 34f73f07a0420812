"""Credentials (docs/PROTOCOL.md §3, §4.15): `add_credential`, `revoke_credential`, `ping`."""

import pytest

from tests.ledger.conftest import CARD


def test_adding_a_terminal(campus):
    before = campus.last_txn
    reply = campus.send(campus.admin, "add_credential", who="WH-POS-9", role="terminal",
                        school="WH", kind="pos", id="a")
    assert set(reply) == {"t", "code", "key"} and reply["code"] == "ok"
    assert type(reply["key"]) is bytes and len(reply["key"]) == 32
    assert campus.last_txn == before                 # state, not journal
    credential = campus.credential("WH-POS-9")
    assert (credential.key, credential.role, credential.school, credential.kind,
            credential.merchant, credential.revoked) == (
        reply["key"], "terminal", "WH", "pos", "WH-POS-9", False)
    assert campus.code(credential, "debit", card=CARD, amount=1, id=1) == "ok"
    # Nothing but a replay of the same request shows the key again.
    assert campus.send(campus.admin, "add_credential", who="WH-POS-9", role="terminal",
                       school="WH", kind="pos", id="a") == {**reply, "replay": True}


@pytest.mark.parametrize("fields, merchant", [
    ({"role": "terminal", "school": "CUIK", "kind": "meter", "merchant": "电控"}, "电控"),
    ({"role": "service"}, None),
    ({"role": "service", "school": "WH"}, None),
    ({"role": "admin"}, None),
])
def test_adding_each_role(campus, fields, merchant):
    assert campus.code(campus.admin, "add_credential", who="new", id="a", **fields) == "ok"
    credential = campus.credential("new")
    assert (credential.role, credential.school, credential.kind, credential.merchant) == (
        fields["role"], fields.get("school"), fields.get("kind"), merchant)


@pytest.mark.parametrize("fields", [
    {"role": "terminal", "school": "PKU", "kind": "pos"},
    {"role": "service", "school": "PKU"},
    {"role": "terminal", "kind": "pos"},
    {"role": "terminal", "school": "WH"},
    {"role": "service", "kind": "pos"},
    {"role": "admin", "kind": "pos"},
    {"role": "admin", "school": "WH"},
    {"who": "admin", "role": "admin", "school": "WH"},     # the field rules before `exists`
])
def test_add_credential_refusals_are_bad_request(campus, fields):
    fields = {"who": "new", **fields}
    assert campus.send(campus.admin, "add_credential", id="a", **fields) == {
        "t": "add_credential", "code": "bad_request"}
    assert fields["who"] == "admin" or campus.credential("new") is None


def test_an_existing_credential_revoked_or_not_is_exists(campus):
    campus.ok(campus.admin, "revoke_credential", who="WH-POS-2")
    for who in ("WH-POS-1", "WH-POS-2", "admin"):
        assert campus.send(campus.admin, "add_credential", who=who, role="service",
                           id=who) == {"t": "add_credential", "code": "exists"}
    assert campus.credential("WH-POS-2").revoked is True


def test_revoking_a_credential(campus):
    key = campus.credential("WH-POS-2").key
    assert campus.send(campus.admin, "revoke_credential", who="WH-POS-2", id="r") == {
        "t": "revoke_credential", "code": "ok"}
    assert campus.revoked == []                # its sessions are closed once it is durable
    campus.commit()
    assert campus.revoked == ["WH-POS-2"]
    credential = campus.credential("WH-POS-2")
    assert (credential.revoked, credential.key) == (True, key)
    # Already revoked: ok, and nothing happens again.
    assert campus.send(campus.admin, "revoke_credential", who="WH-POS-2", id="r2") == {
        "t": "revoke_credential", "code": "ok"}
    campus.commit()
    assert campus.revoked == ["WH-POS-2"]


@pytest.mark.parametrize("who", ["nobody", "admin"])
def test_revoking_an_unknown_credential_or_oneself_is_bad_request(campus, who):
    assert campus.send(campus.admin, "revoke_credential", who=who, id="r") == {
        "t": "revoke_credential", "code": "bad_request"}
    assert campus.revoked == []
    assert campus.credential("admin").revoked is False


def test_ping_answers_every_role(campus):
    for credential in (campus.pos, campus.water, campus.meter, campus.service, campus.admin):
        assert campus.send(credential, "ping") == {"t": "ping", "code": "ok"}
