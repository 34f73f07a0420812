"""Secrets at rest (switch/config/masterkey.py, switch/ledger/state/sealing.py): a stolen data
dir without its master key file yields no credential key, no QR secret, no reply holding a
secret and no PIN; a data dir from before sealing is sealed at start; `rotate_key`."""

import hmac
import logging
import os
import stat

import msgpack
import pytest

from switch.cli.datadir import ADMIN_KEY_FILE, open_data_dir, read_admin_key, rotate_master_key
from switch.config import masterkey
from switch.config.masterkey import MasterKeyError
from switch.logline import KeyValueFormatter, split
from switch.core import layout
from switch.persistence.store import DATABASES, STORE_DIR, Store
from tests.ledger.conftest import CAMPUS_CREDENTIALS, CARD, ID_LAST6, PIN, STUDENT, World
from tests.key_files import write_private


def lmdb_values(store) -> list[bytes]:
    """Every key and value of every database of the store's LMDB, as a thief would read the
    files (committed state only)."""
    found = []
    with store.env.begin() as txn:
        for name in DATABASES:
            for key, value in txn.cursor(db=store.dbs[name]):
                found += [bytes(key), bytes(value)]
    return found


def leaks(store, secrets) -> list[bytes]:
    """The secrets (or their hex) found anywhere in the store's LMDB."""
    values = lmdb_values(store)
    return [secret for secret in secrets
            if any(secret in value or secret.hex().encode() in value for value in values)]


def test_a_stolen_data_dir_holds_no_key_no_qr_secret_and_no_reply_with_a_secret(campus):
    added = campus.ok(campus.admin, "add_credential", who="WH-POS-9", role="terminal",
                      school="WH", kind="pos")["key"]
    rotated = campus.ok(campus.admin, "rotate_key", who="WH-POS-1")["key"]
    qr_secret = campus.ok(campus.service, "virtual_card", account=STUDENT)["qr_secret"]
    campus.commit()
    secrets = [added, rotated, qr_secret, campus.ledger._fingerprint_key,
               read_admin_key(str(campus.path)), campus.credential("WH-POS-2").key]
    assert len(lmdb_values(campus.store)) > 50        # the scan reads the books
    assert leaks(campus.store, secrets) == []
    # The replies that carried them are remembered and replay whole (docs/PROTOCOL.md §4.4).
    assert campus.credential("WH-POS-9").key == added


def test_the_scan_finds_a_secret_stored_in_the_clear(campus):
    """The scan above is not blind: a key written in the clear is found."""
    secret = os.urandom(32)
    campus.store.put("meta", b"planted", b"x" + secret + b"y")
    campus.commit()
    assert leaks(campus.store, [secret]) == [secret]


def test_a_pin_verifier_cannot_be_tried_without_the_master_key(campus):
    """The record's PIN_HASH is not HMAC(salt, pin) for the right PIN: a thief with the data
    dir alone has nothing to try PINs against. With the key file it is keyed by it."""
    record = campus.ledger.account(STUDENT)
    salt, stored = layout.get(record, layout.PIN_SALT), layout.get(record, layout.PIN_HASH)
    inner = hmac.digest(salt, b"pin:" + PIN.encode(), "sha256")
    assert stored != inner
    assert stored == hmac.digest(campus.ledger.master.verifier_key, inner, "sha256")
    id_inner = hmac.digest(salt, b"id:" + ID_LAST6.encode(), "sha256")
    assert layout.get(record, layout.ID_HASH) != id_inner


def test_a_sealed_key_moved_to_another_credential_opens_nothing(campus):
    """Each sealed key is bound to its credential: swapping two records signs on no one."""
    first, second = (campus.store.get("credentials", who) for who in (b"WH-POS-1", b"WH-POS-2"))
    campus.store.put("credentials", b"WH-POS-1", second)
    campus.store.put("credentials", b"WH-POS-2", first)
    campus.commit()
    campus.restart()
    assert campus.ledger.live_key("WH-POS-1") is None
    assert campus.ledger.live_key("WH-POS-2") is None


def test_the_master_key_file_is_made_beside_the_data_dir_0600(tmp_path):
    world = World(tmp_path / "data")
    key_path = str(tmp_path / "data") + ".key"
    assert stat.S_IMODE(os.stat(key_path).st_mode) == 0o600
    assert masterkey.read(key_path).verifier_key == world.ledger.master.verifier_key
    assert not any(name.endswith(".key") and name != ADMIN_KEY_FILE
                   for name in os.listdir(tmp_path / "data"))
    world.close()


def test_without_its_master_key_file_a_data_dir_does_not_open(campus):
    campus.commit()
    campus.store.close()
    key_path = masterkey.default_path(str(campus.path))
    os.rename(key_path, key_path + ".away")
    with pytest.raises(MasterKeyError, match="not found"):
        open_data_dir(str(campus.path))
    # Another data dir's key file is told apart, not used to make garbage.
    masterkey.create(key_path, masterkey.MasterKey.generate())
    with pytest.raises(MasterKeyError, match="does not open"):
        open_data_dir(str(campus.path))
    os.replace(key_path + ".away", key_path)
    campus.store = open_data_dir(str(campus.path))


def test_a_master_key_file_inside_the_data_dir_is_refused(tmp_path):
    with pytest.raises(MasterKeyError, match="inside the data dir"):
        open_data_dir(str(tmp_path / "data"), str(tmp_path / "data" / "master.key"))
    assert not os.path.exists(tmp_path / "data")


def test_a_new_data_dir_never_reuses_a_master_key_file(tmp_path):
    key_path = str(tmp_path / "data") + ".key"
    masterkey.create(key_path, masterkey.MasterKey.generate())
    with pytest.raises(MasterKeyError, match="exists"):
        open_data_dir(str(tmp_path / "data"))


def test_a_master_key_file_of_the_largest_size_is_read_and_one_byte_more_refused(tmp_path):
    from switch import limits
    text = masterkey.MasterKey.generate().to_json()
    path = tmp_path / "m.key"
    path.write_text(text + " " * (limits.master_key_file_size_bytes_max - len(text)))
    path.chmod(0o600)
    assert masterkey.read(str(path)).current == 1
    path.write_text(text + " " * (limits.master_key_file_size_bytes_max + 1 - len(text)))
    with pytest.raises(MasterKeyError, match="larger"):
        masterkey.read(str(path))


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_a_master_key_file_others_may_read_or_write_is_refused_in_words(tmp_path, mode):
    path = tmp_path / "m.key"
    masterkey.create(str(path), masterkey.MasterKey.generate())
    assert masterkey.read(str(path)).current == 1                   # 0600, as written
    path.chmod(mode)
    with pytest.raises(MasterKeyError, match=f"mode {mode:04o}.*chmod 600"):
        masterkey.read(str(path))


# ------------------------------------------------------------------ a data dir from before
OLD_KEYS = {"admin": os.urandom(32), "WH-POS-1": os.urandom(32)}
OLD_QR_SECRET = os.urandom(32)
OLD_FINGERPRINT_KEY = os.urandom(32)
OLD_ID = "old-virtual-card"


def write_data_dir_from_before_sealing(path) -> bytes:
    """The layout the switch wrote before secrets were sealed: keys, QR secrets, replies and
    the fingerprint key in the clear, verifiers HMAC(salt, ...) alone, no master key file."""
    os.makedirs(path)
    write_private((path / ADMIN_KEY_FILE), OLD_KEYS["admin"].hex() + "\n")
    store = Store(os.path.join(str(path), STORE_DIR))
    pack = msgpack.Packer(use_bin_type=True).pack
    store.put("credentials", b"admin", pack({"key": OLD_KEYS["admin"], "role": "admin",
                                             "school": None, "kind": None, "merchant": None,
                                             "revoked": False}))
    store.put("credentials", b"WH-POS-1", pack({"key": OLD_KEYS["WH-POS-1"], "role": "terminal",
                                                "school": "WH", "kind": "pos",
                                                "merchant": "WH-POS-1", "revoked": False}))
    salt = os.urandom(16)
    record = layout.new_account_record(
        "WH", layout.KIND_PERSON, layout.UTILITY_NONE, salt,
        hmac.digest(salt, b"pin:" + PIN.encode(), "sha256"),
        hmac.digest(salt, b"id:" + ID_LAST6.encode(), "sha256"))
    store.put("accounts", STUDENT.encode(), record)
    store.put("cards", CARD.encode(), pack([STUDENT, layout.CARD_ACTIVE, 0]))
    store.put("qr_secrets", STUDENT.encode(), OLD_QR_SECRET)
    store.put("meta", b"fingerprint_key", OLD_FINGERPRINT_KEY)
    fingerprint = _fingerprint(OLD_FINGERPRINT_KEY, "virtual_card",
                               [STUDENT, OLD_ID])
    reply = {"t": "virtual_card", "code": "ok", "qr_secret": OLD_QR_SECRET}
    store.put("idempotency", b"admin\0" + pack(OLD_ID),
              pack(["virtual_card", fingerprint, reply, 1]))
    store.commit_now()
    store.close()
    return salt


def _fingerprint(key, request_type, values):
    import hashlib
    return hashlib.blake2b(msgpack.packb([request_type, values], use_bin_type=True), key=key,
                           digest_size=16).digest()


def test_a_data_dir_from_before_is_sealed_at_start_and_keeps_working(tmp_path, caplog):
    path = tmp_path / "old"
    write_data_dir_from_before_sealing(path)
    old = Store(os.path.join(str(path), STORE_DIR))
    assert leaks(old, [*OLD_KEYS.values(), OLD_QR_SECRET]) != []      # the old layout leaks
    old.close()
    with caplog.at_level(logging.INFO, logger="switch"):
        world = World(path)
    [sealed] = [r for r in caplog.records if "event=secrets_sealed" in r.getMessage()]
    # Each count its own key=value token (a grep or a log parser reads them one by one).
    fields = split(KeyValueFormatter().format(sealed))
    assert {name: fields[name] for name in ("credentials", "qr_secrets", "replies",
                                            "accounts")} == {
        "credentials": "2", "qr_secrets": "1", "replies": "1", "accounts": "1"}
    key_path = masterkey.default_path(str(path))
    assert stat.S_IMODE(os.stat(key_path).st_mode) == 0o600
    assert leaks(world.store, [*OLD_KEYS.values(), OLD_QR_SECRET, OLD_FINGERPRINT_KEY]) == []
    # Everything it held still works: keys, the PIN, the QR secret, the remembered reply.
    assert world.ledger.live_key("WH-POS-1") == OLD_KEYS["WH-POS-1"]
    assert world.ledger.live_key("admin") == OLD_KEYS["admin"]
    assert world.ledger.qr_secret(STUDENT) == OLD_QR_SECRET
    service = world.admin
    assert world.code(service, "verify_pin", account=STUDENT, pin=PIN) == "ok"
    assert world.send(service, "reset_pin", account=STUDENT, id_last6=ID_LAST6,
                      id="r")["code"] == "ok"
    replay = world.send(service, "virtual_card", account=STUDENT, id=OLD_ID)
    assert replay == {"t": "virtual_card", "code": "ok", "qr_secret": OLD_QR_SECRET,
                      "replay": True}
    # A second start finds it sealed and seals nothing again.
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="switch"):
        world.restart()
    assert not any("secrets_sealed" in r.message for r in caplog.records)
    assert world.ledger.live_key("WH-POS-1") == OLD_KEYS["WH-POS-1"]
    world.close()


# ------------------------------------------------------------------ rotate_key
def test_rotate_key_replaces_the_key_and_closes_its_sessions(campus):
    old = campus.credential("WH-POS-1").key
    reply = campus.ok(campus.admin, "rotate_key", who="WH-POS-1", id="rk")
    assert set(reply) == {"t", "code", "key"} and len(reply["key"]) == 32
    assert reply["key"] != old
    campus.commit()
    assert campus.revoked == ["WH-POS-1"]                     # its sessions are closed
    assert campus.ledger.live_key("WH-POS-1") == reply["key"]
    rotated = campus.credential("WH-POS-1")
    assert (rotated.role, rotated.school, rotated.kind, rotated.revoked) == (
        "terminal", "WH", "pos", False)
    assert campus.code(rotated, "debit", card=CARD, amount=1, id="after") == "ok"
    # A retry replays the same key; it changes nothing.
    assert campus.send(campus.admin, "rotate_key", who="WH-POS-1", id="rk") == {
        **reply, "replay": True}
    assert campus.ledger.live_key("WH-POS-1") == reply["key"]


def test_rotate_key_of_the_callers_own_credential(campus):
    reply = campus.ok(campus.admin, "rotate_key", who="admin")
    campus.commit()
    assert campus.ledger.live_key("admin") == reply["key"]
    assert campus.revoked == ["admin"]


def test_rotate_key_refusals(campus):
    key = campus.credential("WH-POS-1").key
    assert campus.send(campus.admin, "rotate_key", who="nobody", id="x") == {
        "t": "rotate_key", "code": "bad_request"}
    campus.ok(campus.admin, "revoke_credential", who="WH-POS-2")
    assert campus.send(campus.admin, "rotate_key", who="WH-POS-2", id="y") == {
        "t": "rotate_key", "code": "bad_request"}
    assert campus.send(campus.service, "rotate_key", who="WH-POS-1", id="z") == {
        "t": "rotate_key", "code": "not_permitted"}
    campus.commit()
    assert campus.ledger.live_key("WH-POS-1") == key and campus.revoked == ["WH-POS-2"]


# ------------------------------------------------------------------ rotating the master key
def test_rotating_the_master_key_seals_everything_again_under_a_new_key(campus):
    qr_secret = campus.ok(campus.service, "virtual_card", account=STUDENT, id="vc")["qr_secret"]
    keys = {who: campus.credential(who).key for who in ("admin", "WH-POS-1")}
    campus.commit()
    campus.store.close()
    key_path = masterkey.default_path(str(campus.path))
    before = masterkey.read(key_path)
    counts = rotate_master_key(str(campus.path))
    assert counts["credentials"] == len(CAMPUS_CREDENTIALS) + 1 and counts["qr_secrets"] == 1
    assert counts["replies"] >= len(CAMPUS_CREDENTIALS) + 1      # add_credential and virtual_card
    after = masterkey.read(key_path)
    assert sorted(after.seal_keys) == [2] and after.seal_keys[2] != before.seal_keys[1]
    assert after.verifier_key == before.verifier_key
    assert stat.S_IMODE(os.stat(key_path).st_mode) == 0o600
    # The old key file opens nothing any more.
    masterkey.replace(key_path, before)
    with pytest.raises(MasterKeyError, match="does not open"):
        open_data_dir(str(campus.path))
    masterkey.replace(key_path, after)
    campus.store = open_data_dir(str(campus.path))
    campus._open_ledger()
    assert {who: campus.ledger.live_key(who) for who in keys} == keys
    assert campus.ledger.qr_secret(STUDENT) == qr_secret
    assert campus.send(campus.service, "virtual_card", account=STUDENT, id="vc") == {
        "t": "virtual_card", "code": "ok", "qr_secret": qr_secret, "replay": True}
    assert campus.code(campus.service, "verify_pin", account=STUDENT, pin=PIN) == "ok"
