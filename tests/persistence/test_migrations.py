"""Upgrades of a data dir an older switch wrote, checked on books the request layer wrote."""

import os

import lmdb
import msgpack

from switch.core import layout
from switch.persistence.audit import audit
from switch.persistence.store import SCHEMA_VERSION, STORE_DIR
from tests.ledger.conftest import (BALANCE, CARD, CUIK_STUDENT, ROOM, STUDENT, World, limits,
                                   populate)

ACCOUNTS = (STUDENT, CUIK_STUDENT, ROOM)


def _history(world, account: str) -> list[int]:
    return [item["txn"] for item in world.send(world.service, "history", account=account,
                                               limit=limits.history_limit_max)["items"]]


def _as_schema_4(data_dir: str) -> None:
    """What a schema-4 switch left: journal records without `prev`, no history heads in the
    account records, and the history index `account_journal`."""
    env = lmdb.open(os.path.join(data_dir, STORE_DIR), max_dbs=64, subdir=True)
    with env.begin(write=True) as txn:
        journal, accounts = (env.open_db(name, txn=txn) for name in (b"journal", b"accounts"))
        index = env.open_db(b"account_journal", txn=txn)
        for key, value in list(txn.cursor(db=journal)):
            record = msgpack.unpackb(value, raw=False)
            del record["prev"]
            txn.put(key, msgpack.packb(record, use_bin_type=True), db=journal)
            txn.put(record["account"].encode() + b"\0" + key, b"", db=index)
        for key, value in list(txn.cursor(db=accounts)):
            record = bytearray(value)
            layout.put(record, layout.LAST_TXN, 0)
            layout.put(record, layout.HISTORY_RECORDS, 0)
            txn.put(key, bytes(record), db=accounts)
        txn.drop(env.open_db(b"history_marks", txn=txn), delete=True)
        txn.put(b"schema_version", b"4", db=env.open_db(b"meta", txn=txn))
    env.close()


def _as_schema_5(data_dir: str) -> None:
    """What a schema-5 switch left: chained records, but no record counts in the account
    records and no history marks."""
    env = lmdb.open(os.path.join(data_dir, STORE_DIR), max_dbs=64, subdir=True)
    with env.begin(write=True) as txn:
        accounts = env.open_db(b"accounts", txn=txn)
        for key, value in list(txn.cursor(db=accounts)):
            record = bytearray(value)
            layout.put(record, layout.HISTORY_RECORDS, 0)
            txn.put(key, bytes(record), db=accounts)
        txn.drop(env.open_db(b"history_marks", txn=txn), delete=True)
        txn.put(b"schema_version", b"5", db=env.open_db(b"meta", txn=txn))
    env.close()


def _database_names(env) -> set[str]:
    with env.begin() as txn:
        return {bytes(key).decode() for key, _ in txn.cursor()}


def test_a_schema_4_data_dir_gets_its_histories_chained_and_loses_the_index(tmp_path):
    campus = populate(World(tmp_path / "data"))
    for n in range(3):
        campus.ok(campus.pos, "debit", card=CARD, amount=10 + n)
        campus.credit(CUIK_STUDENT, 5)
        campus.credit(ROOM, 7)
    campus.commit()
    histories = {account: _history(campus, account) for account in ACCOUNTS}
    assert all(len(history) >= 4 for history in histories.values())
    campus.restart(while_closed=_as_schema_4)
    assert "account_journal" not in _database_names(campus.store.env)
    assert {account: _history(campus, account) for account in ACCOUNTS} == histories
    for account, history in histories.items():
        assert campus.journal(history[-1])["prev"] == 0
        assert [campus.journal(txn)["prev"] for txn in history[:-1]] == history[1:]
    # A record after the upgrade goes on from the linked chain.
    debit = campus.ok(campus.pos, "debit", card=CARD, amount=1)
    assert campus.journal(debit["txn"])["prev"] == histories[STUDENT][0]
    campus.commit()
    campus.close()
    report = audit(str(campus.path))
    assert report.sound, report.problems


def test_audit_reads_a_schema_4_data_dir_before_its_upgrade_without_a_chain_to_check(tmp_path):
    campus = populate(World(tmp_path / "data"))
    campus.ok(campus.pos, "debit", card=CARD, amount=10)
    campus.commit()
    campus.close()
    _as_schema_4(str(campus.path))
    report = audit(str(campus.path))
    assert report.sound, report.problems


def test_a_malformed_journal_record_does_not_stop_the_upgrade(tmp_path):
    """The switch still starts: the record is left as it is (audit reports it), the others
    are linked around it."""
    campus = populate(World(tmp_path / "data"))
    debits = [campus.ok(campus.pos, "debit", card=CARD, amount=5)["txn"] for _ in range(3)]
    campus.commit()

    def as_schema_4_with_a_malformed_record(data_dir: str) -> None:
        _as_schema_4(data_dir)
        env = lmdb.open(os.path.join(data_dir, STORE_DIR), max_dbs=64, subdir=True)
        with env.begin(write=True) as txn:
            txn.put(debits[1].to_bytes(8, "big"), b"\xc1", db=env.open_db(b"journal", txn=txn))
        env.close()
    campus.restart(while_closed=as_schema_4_with_a_malformed_record)
    assert campus.journal(debits[2])["prev"] == debits[0]
    campus.close()
    assert any(problem.endswith("malformed record") for problem in audit(str(campus.path)).problems)


def test_an_upgrade_that_outgrows_the_map_grows_it_and_completes(tmp_path):
    """The schema 5 upgrade rewrites every journal record in one write transaction: LMDB
    needs room for the new pages beside the old until it commits, about the journal's size
    again. A data dir more than half full of journal (below the 75 % at which opening grows
    the map) met MapFull at open, and the new switch could not start on it at all."""
    from switch.persistence.keys import txn_key
    from switch.persistence.store import Store
    path = str(tmp_path / "lmdb")
    map_size_bytes = 2 * 1024 * 1024
    store = Store(path, map_size_bytes=map_size_bytes, fsync=False)
    txn = 0
    while store.map_usage()[0] < 0.6 * store.map_usage()[1]:
        for _ in range(200):
            txn += 1
            store.put("journal", txn_key(txn), msgpack.packb(
                {"txn": txn, "at": 1, "kind": "credit", "account": f"WH{txn % 7}",
                 "school": "WH", "amount": 1, "balance": txn, "who": "svc", "merchant": None,
                 "ref": txn}, use_bin_type=True))
        store.commit_now()
    assert store.map_usage()[0] < limits.lmdb_map_grow_threshold_ratio * store.map_usage()[1]
    store.write_now("meta", b"schema_version", b"4")
    store.close()
    store = Store(path, map_size_bytes=map_size_bytes, fsync=False)
    assert store.get("meta", b"schema_version") == str(SCHEMA_VERSION).encode()
    last = msgpack.unpackb(store.get("journal", txn_key(txn)), raw=False)
    assert last["prev"] == txn - 7
    store.close()


def test_a_schema_5_data_dir_gets_its_record_counts_and_history_marks(tmp_path):
    """Schema 6 counts each account's records and marks every `records_between_history_marks`-th:
    an upgraded data dir is audited sound and pages below any txn as a new one does."""
    campus = populate(World(tmp_path / "data"))
    for _ in range(2 * limits.records_between_history_marks + 3):
        campus.credit(STUDENT, 1)
    other = campus.credit(CUIK_STUDENT, 5)["txn"]
    for _ in range(limits.records_between_history_marks + 1):
        campus.credit(STUDENT, 1)
    campus.commit()

    def pages():
        return [campus.send(campus.service, "history", account=account, limit=7, **before)[
            "items"] for account in ACCOUNTS for before in ({}, {"before": other})]

    before_upgrade = pages()
    campus.restart(while_closed=_as_schema_5)
    assert pages() == before_upgrade
    marks = [key for key, _ in campus.store.committed_items("history_marks")]
    records = layout.get(campus.store.get("accounts", STUDENT.encode()), layout.HISTORY_RECORDS)
    assert records > 3 * limits.records_between_history_marks
    assert len([key for key in marks if key.startswith(STUDENT.encode() + b"\0")]) == \
        records // limits.records_between_history_marks
    campus.close()
    report = audit(str(campus.path))
    assert report.sound, report.problems


def _as_schema_8(data_dir: str) -> None:
    """What a schema-8 switch left: no `subsidy_grants`."""
    env = lmdb.open(os.path.join(data_dir, STORE_DIR), max_dbs=64, subdir=True)
    with env.begin(write=True) as txn:
        txn.drop(env.open_db(b"subsidy_grants", txn=txn), delete=True)
        txn.drop(env.open_db(b"subsidy_grant_expiry", txn=txn), delete=True)
        txn.put(b"schema_version", b"8", db=env.open_db(b"meta", txn=txn))
    env.close()


def test_a_schema_8_data_dir_keeps_the_grants_its_journal_holds_from_being_made_again(
        tmp_path):
    campus = populate(World(tmp_path / "data"))
    grant = {"account": STUDENT, "amount": 700, "expires": "2099-12-31", "batch": "年度补助",
             "id": "subsidy-0123-WH20230001"}
    campus.ok(campus.admin, "subsidy", **grant)
    campus.ok(campus.admin, "subsidy", **{**grant, "id": 42})        # ids may be ints
    campus.commit()
    campus.restart(while_closed=_as_schema_8)
    assert len(campus.committed("subsidy_grants")) == 2
    assert len(campus.committed("subsidy_grant_expiry")) == 2
    # Retention over: §4.4 forgot both ids, the grants still hold.
    campus.write_back_ids()
    campus.clock.advance(campus.config.idempotency_retention_s + 1)
    while campus.ledger.forget_old_ids(limits.idempotency_sweep_ids_per_pass_max):
        campus.commit()
    campus.commit()
    for request_id in (grant["id"], 42):
        assert campus.code(campus.admin, "subsidy", **{**grant, "id": request_id}) == "exists"
    assert campus.account(STUDENT)["subsidy"] == 1400
    campus.close()
    report = audit(str(campus.path))
    assert report.sound, report.problems


def test_an_upgrade_keeps_the_newest_term_of_a_batch_name_used_again(tmp_path):
    """Schema 8 let a batch's name (and so the import's ids) come back for a later term;
    the upgrade keeps that newest grant, whose term runs, with one index entry, so the
    forgetting of the older term leaves it in place."""
    campus = populate(World(tmp_path / "data"))
    campus.set_local_time("2026-11-18T12:00:00")
    grant = {"account": STUDENT, "amount": 500, "batch": "伙食补助", "id": "subsidy-tag-1"}
    campus.ok(campus.admin, "subsidy", expires="2026-11-20", **grant)
    campus.commit()
    campus.set_local_time("2026-11-22T12:00:00")     # November 20 is over everywhere
    campus.housekeep()
    campus.ok(campus.admin, "add_credential", who="office-2", role="admin")
    campus.ok(campus.credential("office-2"), "subsidy", expires="2026-11-30", **grant)
    campus.restart(while_closed=_as_schema_8)
    assert len(campus.committed("subsidy_grants")) == 1
    assert len(campus.committed("subsidy_grant_expiry")) == 1
    campus.housekeep()
    campus.ok(campus.admin, "add_credential", who="office-3", role="admin")
    assert campus.code(campus.credential("office-3"), "subsidy", expires="2026-11-30",
                       **grant) == "exists"
    assert campus.account(STUDENT)["subsidy"] == 500


def test_a_data_dir_of_the_development_schema_9_gets_its_grants_rebuilt(tmp_path):
    """Schema 9 kept grants under msgpack keys with 8-byte values: read as they were, every
    grant was missed and a due one stopped housekeeping. Its upgrade rebuilds them."""
    campus = populate(World(tmp_path / "data"))
    campus.set_local_time("2026-11-18T12:00:00")
    grant = {"account": STUDENT, "amount": 500, "batch": "b", "id": "g1"}
    campus.ok(campus.admin, "subsidy", expires="2026-11-30", **grant)
    campus.ok(campus.admin, "subsidy", expires="2026-11-19", **{**grant, "batch": "c",
                                                                "id": "g2"})
    campus.commit()

    def as_schema_9(data_dir: str) -> None:
        env = lmdb.open(os.path.join(data_dir, STORE_DIR), max_dbs=64, subdir=True)
        with env.begin(write=True) as txn:
            grants = env.open_db(b"subsidy_grants", txn=txn)
            expiry = env.open_db(b"subsidy_grant_expiry", txn=txn)
            txn.drop(grants, delete=False)
            txn.drop(expiry, delete=False)
            for batch, request_id, day in (("b", "g1", 20_787), ("c", "g2", 20_776)):
                old_key = msgpack.packb([STUDENT, batch, request_id], use_bin_type=True)
                txn.put(old_key, day.to_bytes(8, "big"), db=grants)
                txn.put(day.to_bytes(8, "big") + old_key, b"", db=expiry)
            txn.put(b"schema_version", b"9", db=env.open_db(b"meta", txn=txn))
        env.close()
    campus.restart(while_closed=as_schema_9)
    assert len(campus.committed("subsidy_grants")) == 2
    campus.set_local_time("2026-11-22T12:00:00")
    campus.ok(campus.admin, "add_credential", who="office-2", role="admin")
    assert campus.code(campus.credential("office-2"), "subsidy", expires="2026-11-30",
                       **grant) == "exists"
    campus.clock.ms += limits.subsidy_grants_kept_s * 1000   # the 19th's is due
    assert campus.housekeep().failed is False
    assert len(campus.committed("subsidy_grants")) == 1


def test_an_upgrade_keeps_the_latest_term_of_a_key_paid_twice_and_passes_over_odd_records(
        tmp_path):
    """Schema 8 could pay one key twice, the later record naming the earlier term: the
    grant kept is the latest term's, so a third send while it runs is refused. A record no
    switch writes (a term before 1970) does not stop the upgrade."""
    campus = populate(World(tmp_path / "data"))
    campus.set_local_time("2026-11-18T12:00:00")
    grant = {"account": STUDENT, "amount": 500, "batch": "b", "id": "g1"}
    campus.ok(campus.admin, "subsidy", expires="2026-12-31", **grant)
    campus.commit()

    def as_schema_8_paid_twice(data_dir: str) -> None:
        _as_schema_8(data_dir)
        env = lmdb.open(os.path.join(data_dir, STORE_DIR), max_dbs=64, subdir=True)
        with env.begin(write=True) as txn:
            journal = env.open_db(b"journal", txn=txn)
            last = max(int.from_bytes(key, "big") for key, _ in txn.cursor(db=journal))
            record = msgpack.unpackb(txn.get(last.to_bytes(8, "big"), db=journal), raw=False)
            for offset, expires in ((1, "2026-12-30"), (2, "1969-12-30")):
                txn.put((last + offset).to_bytes(8, "big"), msgpack.packb(
                    {**record, "txn": last + offset, "expires": expires}, use_bin_type=True),
                    db=journal)
        env.close()
    campus.restart(while_closed=as_schema_8_paid_twice)
    assert len(campus.committed("subsidy_grants")) == 1
    campus.set_local_time("2026-12-31T09:00:00")
    campus.ok(campus.admin, "add_credential", who="office-2", role="admin")
    assert campus.code(campus.credential("office-2"), "subsidy", expires="2026-12-31",
                       **grant) == "exists"


def test_a_schema_8_data_dir_with_subsidies_audits_sound_before_its_upgrade(tmp_path):
    """Schema 8 kept no grants: audit, which runs beside a switch not yet upgraded, checks
    the journal's grants against the grants table only from schema 10."""
    campus = populate(World(tmp_path / "data"))
    campus.ok(campus.admin, "subsidy", account=STUDENT, amount=700, expires="2099-12-31",
              batch="年度补助", id="s1")
    campus.commit()
    campus.close()
    _as_schema_8(str(campus.path))
    report = audit(str(campus.path))
    assert report.sound and report.records > 0, report.problems


def test_the_upgrade_to_schema_11_writes_down_the_journal_it_found(tmp_path):
    """Grants paid twice before it were an older switch's (audit notices them); a data dir
    made at 11 has no such txn."""
    campus = populate(World(tmp_path / "data"))
    assert b"subsidy_grants_checked_after_txn" not in campus.committed("meta")
    campus.ok(campus.admin, "subsidy", account=STUDENT, amount=700, expires="2099-12-31",
              batch="b", id="s1")
    last = campus.last_txn

    def as_schema_10(data_dir: str) -> None:
        env = lmdb.open(os.path.join(data_dir, STORE_DIR), max_dbs=64, subdir=True)
        with env.begin(write=True) as txn:
            txn.put(b"schema_version", b"10", db=env.open_db(b"meta", txn=txn))
        env.close()
    campus.restart(while_closed=as_schema_10)
    assert campus.committed("meta")[b"subsidy_grants_checked_after_txn"] == last.to_bytes(
        8, "big")


def _as_schema_11_before_the_freezes(frozen_version: dict[str, int]):
    """What a schema-11 switch left after the card office froze accounts: their cards not
    listed, each school's list as it stood before the freezes (`frozen_version`: school ->
    its version then). The newer switch made each freeze one new version; taken out here."""
    def rewrite(data_dir: str) -> None:
        env = lmdb.open(os.path.join(data_dir, STORE_DIR), max_dbs=64, subdir=True)
        with env.begin(write=True) as txn:
            cards, changes, meta = (env.open_db(name, txn=txn) for name in (
                b"blacklist_cards", b"blacklist_changes", b"meta"))
            for school, version in frozen_version.items():
                prefix = school.encode() + b"\0"
                current = int(txn.get(b"blacklist_version:" + school.encode(), db=meta))
                for number in range(version + 1, current + 1):
                    key = prefix + number.to_bytes(8, "big")
                    add, _ = msgpack.unpackb(txn.get(key, db=changes), raw=False)
                    for card in add:   # listed by a freeze (and maybe unlisted since)
                        txn.delete(prefix + card.encode(), db=cards)
                    txn.delete(key, db=changes)
                txn.put(b"blacklist_version:" + school.encode(), str(version).encode(), db=meta)
            txn.put(b"schema_version", b"11", db=meta)
        env.close()
    return rewrite


def test_the_upgrade_to_schema_12_lists_the_cards_of_accounts_the_card_office_froze(tmp_path,
                                                                                    caplog):
    campus = populate(World(tmp_path / "data"))
    campus.ok(campus.admin, "issue_card", account=STUDENT, card="0B0B0001")
    campus.ok(campus.admin, "issue_card", account=STUDENT, card="0B0B0002")
    campus.ok(campus.service, "lost", card="0B0B0002")       # listed already, as lost
    campus.ok(campus.admin, "open_account", account="WH20230002", school="WH", kind="person",
              holder="测试", id_last6="123456")
    campus.ok(campus.admin, "issue_card", account="WH20230002", card="0B0B0003")
    campus.commit()
    before = {"WH": campus.ledger.blacklist.version("WH"),
              "CUIK": campus.ledger.blacklist.version("CUIK")}
    campus.ok(campus.admin, "freeze", account="WH20230002")   # frozen, then closed
    campus.ok(campus.admin, "refund", account="WH20230002")
    campus.ok(campus.admin, "freeze", account=STUDENT, reason="phone and card stolen")
    campus.commit()
    assert campus.ledger.blacklist.version("WH") == before["WH"] + 3

    def as_schema_11(data_dir: str) -> None:
        _as_schema_11_before_the_freezes({"WH": before["WH"]})(data_dir)
        report = audit(data_dir)   # beside the older switch: its rule, sound
        assert report.sound, report.problems
    caplog.set_level("WARNING", logger="switch.store")
    campus.restart(while_closed=as_schema_11)
    assert campus.committed("meta")[b"schema_version"] == str(SCHEMA_VERSION).encode()
    assert [record.getMessage() for record in caplog.records
            if "upgrade_listed" in record.getMessage()] == [
        f"event=upgrade_listed_frozen_accounts_cards school=WH cards=2 "
        f"blacklist_version={before['WH'] + 1}"]
    # One new version for the school, naming the unlisted cards of its frozen accounts.
    assert campus.ledger.blacklist.version("WH") == before["WH"] + 1
    assert campus.ledger.blacklist.version("CUIK") == before["CUIK"]
    assert campus.send(campus.pos, "blacklist", since=before["WH"]) == {
        "t": "blacklist", "code": "ok", "version": before["WH"] + 1,
        "add": [CARD, "0B0B0001"], "remove": []}   # not 0B0B0003: its account is closed
    campus.ok(campus.admin, "unfreeze", account=STUDENT)
    assert not campus.blacklisted("WH", CARD)
    assert campus.blacklisted("WH", "0B0B0002")
    campus.commit()
    campus.close()
    report = audit(str(campus.path))
    assert report.sound, report.problems


def test_audit_after_the_upgrade_to_schema_12_finds_a_frozen_accounts_card_unlisted(tmp_path):
    campus = populate(World(tmp_path / "data"))
    campus.commit()
    version = campus.ledger.blacklist.version("WH")
    campus.ok(campus.admin, "freeze", account=STUDENT)
    campus.commit()
    campus.close()
    _as_schema_11_before_the_freezes({"WH": version})(str(campus.path))
    env = lmdb.open(os.path.join(str(campus.path), STORE_DIR), max_dbs=64, subdir=True)
    with env.begin(write=True) as txn:   # as if schema 12 had opened it, not listing the card
        txn.put(b"schema_version", str(SCHEMA_VERSION).encode(), db=env.open_db(b"meta", txn=txn))
    env.close()
    assert audit(str(campus.path)).problems == [
        f"card {CARD}: active, its account {STUDENT} frozen by the card office, but not on WH's "
        f"blacklist"]


def test_the_upgrade_to_schema_13_keeps_each_first_reverse_as_an_id_the_sweep_forgets(
        tmp_path):
    """Schema 12 kept the first reverse of each target for ever in `reversals`; 13 keeps it as
    an id beside the payment it judged. A reverse sent again after the upgrade still
    replays, and never gives money back twice."""
    campus = populate(World(tmp_path / "data"))
    campus.ok(campus.pos, "debit", card=CARD, amount=1_000, id="p1")
    first = campus.ok(campus.pos, "reverse", target="p1", id="r1")
    never = campus.ok(campus.pos, "reverse", target="not-yet", id="r2")
    campus.commit()
    who = campus.pos.who.encode()

    def as_schema_12(data_dir: str) -> None:
        env = lmdb.open(os.path.join(data_dir, STORE_DIR), max_dbs=64, subdir=True)
        with env.begin(write=True) as txn:
            ids, meta = (env.open_db(name, txn=txn) for name in (b"idempotency", b"meta"))
            reversals = env.open_db(b"reversals", txn=txn)
            for target in ("p1", "not-yet"):
                key = who + b"\0" + msgpack.packb(["reverse_of", target])
                kept = msgpack.unpackb(txn.get(key, db=ids), raw=False)
                txn.delete(key, db=ids)
                txn.put(who + b"\0" + msgpack.packb(target),
                        msgpack.packb(kept[2]["reply"], use_bin_type=True), db=reversals)
            txn.put(b"schema_version", b"12", db=meta)
        env.close()
    campus.restart(while_closed=as_schema_12)
    assert campus.committed("meta")[b"schema_version"] == str(SCHEMA_VERSION).encode()
    env = campus.store.env
    with env.begin() as txn:
        assert not any(bytes(key) == b"reversals" for key, _ in txn.cursor())
    assert campus.send(campus.pos, "reverse", target="p1", id="r3") == {
        **first, "replay": True}
    assert campus.send(campus.pos, "reverse", target="not-yet", id="r4") == {
        **never, "replay": True}
    assert campus.balance(STUDENT) == BALANCE
    campus.commit()
    campus.close()
    report = audit(str(campus.path))
    assert report.sound, report.problems


def test_the_upgrade_to_schema_13_passes_over_what_no_switch_wrote(tmp_path):
    """A damaged row of `reversals`, or one whose reverse record is missing, does not stop
    the upgrade (a switch that cannot open its data dir): the row is passed over, or kept
    judging no payment."""
    campus = populate(World(tmp_path / "data"))
    campus.commit()
    who = campus.pos.who.encode()

    def as_schema_12_with_damaged_rows(data_dir: str) -> None:
        env = lmdb.open(os.path.join(data_dir, STORE_DIR), max_dbs=64, subdir=True)
        with env.begin(write=True) as txn:
            meta = env.open_db(b"meta", txn=txn)
            reversals = env.open_db(b"reversals", txn=txn)
            txn.put(who + b"\0" + msgpack.packb("junk"), b"\xc1 not msgpack", db=reversals)
            txn.put(who + b"\0" + msgpack.packb("gone"), msgpack.packb(
                {"t": "reverse", "code": "ok", "txn": 10 ** 9}), db=reversals)
            txn.put(who + b"\0\xc1", msgpack.packb({"t": "reverse", "code": "ok"}),
                    db=reversals)
            txn.put(b"schema_version", b"12", db=meta)
        env.close()
    campus.restart(while_closed=as_schema_12_with_damaged_rows)
    assert campus.committed("meta")[b"schema_version"] == str(SCHEMA_VERSION).encode()
    kept = campus.ledger.first_reversal(campus.pos.who, "gone")
    assert kept == ({"t": "reverse", "code": "ok", "txn": 10 ** 9}, None)
    assert campus.ledger.first_reversal(campus.pos.who, "junk") is None


def test_the_upgrade_to_schema_12_passes_over_a_card_index_entry_without_its_card(tmp_path):
    campus = populate(World(tmp_path / "data"))
    campus.commit()
    version = campus.ledger.blacklist.version("WH")
    campus.ok(campus.admin, "freeze", account=STUDENT)

    def as_schema_11_with_a_dangling_entry(data_dir: str) -> None:
        _as_schema_11_before_the_freezes({"WH": version})(data_dir)
        env = lmdb.open(os.path.join(data_dir, STORE_DIR), max_dbs=64, subdir=True)
        with env.begin(write=True) as txn:
            txn.put(STUDENT.encode() + b"\0DEADBEEF", b"",
                    db=env.open_db(b"account_cards", txn=txn))
        env.close()
    campus.restart(while_closed=as_schema_11_with_a_dangling_entry)
    assert campus.committed("meta")[b"schema_version"] == str(SCHEMA_VERSION).encode()
    assert campus.blacklisted("WH", CARD) and not campus.blacklisted("WH", "DEADBEEF")


def test_a_lost_period_from_before_schema_14_is_not_held_against_a_tap_uploaded_after(tmp_path):
    """Schema 13 kept no lost periods: a card lost and found before the upgrade has none, so
    a tap made then and uploaded after it is applied unflagged, and audit judges by the
    periods found after the upgrade only (the txn it wrote down)."""
    campus = populate(World(tmp_path / "data"))
    lost_at = campus.clock.now_ms()
    campus.ok(campus.service, "lost", card=CARD)
    campus.clock.advance(600)
    campus.ok(campus.service, "found", card=CARD)
    campus.commit()
    last_txn = campus.last_txn

    def as_schema_13(data_dir: str) -> None:
        env = lmdb.open(os.path.join(data_dir, STORE_DIR), max_dbs=64, subdir=True)
        with env.begin(write=True) as txn:
            periods = env.open_db(b"card_lost_periods", txn=txn)
            txn.drop(periods, delete=True)
            txn.put(b"schema_version", b"13", db=env.open_db(b"meta", txn=txn))
        env.close()
    campus.restart(while_closed=as_schema_13)
    assert campus.committed("meta")[b"schema_version"] == str(SCHEMA_VERSION).encode()
    assert campus.committed("meta")[b"card_lost_periods_kept_after_txn"] == \
        last_txn.to_bytes(8, "big")
    reply = campus.ok(campus.pos, "offline", records=[
        {"id": "thief", "card": CARD, "amount": 100, "at": lost_at + 60_000}])
    assert "flag" not in reply["results"][0]
    campus.commit()
    campus.close()
    report = audit(str(campus.path))
    assert report.sound, report.problems


def test_a_recharge_an_older_switch_credited_twice_is_a_notice_not_a_failed_backup(tmp_path):
    """An older switch forgot order ids (8 days, or at once on a clock believed ahead): its
    double credits are in the journal for good. Audit says so, and calls the books sound, or
    every nightly backup of them would fail; the same after the upgrade is a discrepancy."""
    campus = populate(World(tmp_path / "data"))

    def credit_forgotten(order: str) -> None:
        campus.ok(campus.service, "credit", account=STUDENT, amount=100, source="wechat",
                  id=order)
        campus.commit()
        campus.store.delete("idempotency", campus.ledger.idempotency_key(campus.service.who,
                                                                         order))
        campus.commit()
    credit_forgotten("4200009")
    credit_forgotten("4200009")
    credit_forgotten("4200011")      # forgotten by the older switch, sent again after

    def as_schema_13(data_dir: str) -> None:
        env = lmdb.open(os.path.join(data_dir, STORE_DIR), max_dbs=64, subdir=True)
        with env.begin(write=True) as txn:
            txn.put(b"schema_version", b"13", db=env.open_db(b"meta", txn=txn))
        env.close()
    campus.restart(while_closed=as_schema_13)
    campus.close()
    report = audit(str(campus.path))
    assert report.sound, report.problems
    assert any("credit by mini-program under id '4200009' again" in notice
               and "written before this check came" in notice for notice in report.notices)
    service = campus.service
    campus = World(tmp_path / "data")
    campus.service = campus.credential(service.who)
    credit_forgotten("4200011")
    campus.close()
    report = audit(str(campus.path))
    assert report.sound, report.problems       # its first credit was the older switch's
    campus = World(tmp_path / "data")
    campus.service = campus.credential(service.who)
    credit_forgotten("4200010")
    credit_forgotten("4200010")
    campus.close()
    problems = audit(str(campus.path)).problems
    assert len(problems) == 1 and "under id '4200010' again" in problems[0], problems
