"""The pure parts: how the forwarder cuts the journal into frames (each bound at N and N+1),
and the receivers' docs/PROTOCOL.md §6.3 rules for one `records` frame."""

import msgpack
import pytest

from switch import limits
from switch.codec.framing import encode_frame
from switch.shell.forwarder import decode_position, encode_position, next_frame
from switch.persistence.store import Store, txn_key
from switch.receivers.base import APPLY, BAD, GAP, check_records


def record(txn, kind="debit", pad=0):
    return {"txn": txn, "at": 1_795_000_000_000 + txn, "kind": kind, "account": "WH20230001",
            "school": "WH", "amount": -100, "balance": 1000, "who": "T-POS-1",
            "merchant": "CANTEEN-1", "ref": "x" * pad or f"d-{txn}"}


@pytest.fixture
def store(tmp_path):
    store = Store(str(tmp_path / "lmdb"))
    yield store
    store.close()


def fill(store, kinds, pad=0):
    for kind in kinds:
        txn = store.next_txn()
        store.put("journal", txn_key(txn), msgpack.packb(record(txn, kind, pad),
                                                         use_bin_type=True))
    store.commit_now()


def test_only_committed_records_are_read(store):
    fill(store, ["debit"] * 3)
    txn = store.next_txn()
    store.put("journal", txn_key(txn), msgpack.packb(record(txn), use_bin_type=True))
    to_txn, records = next_frame(store, 1, None)
    assert to_txn == 3 and [r["txn"] for r in records] == [1, 2, 3]
    assert next_frame(store, 4, None) == (3, [])


@pytest.mark.parametrize("count, expected_to", [
    (limits.forward_records_per_frame_max, limits.forward_records_per_frame_max),
    (limits.forward_records_per_frame_max + 1, limits.forward_records_per_frame_max),
])
def test_records_per_frame_bound(store, count, expected_to):
    fill(store, ["debit"] * count)
    to_txn, records = next_frame(store, 1, None)
    assert to_txn == expected_to and len(records) == expected_to
    if count > expected_to:
        assert next_frame(store, to_txn + 1, None) == (count, [record(count)])


@pytest.mark.parametrize("count", [limits.forward_scan_txns_max, limits.forward_scan_txns_max + 1])
def test_scan_bound_when_the_filter_skips_everything(store, count):
    fill(store, ["lost"] * count)
    to_txn, records = next_frame(store, 1, frozenset({"debit"}))
    assert records == [] and to_txn == min(count, limits.forward_scan_txns_max)


def test_filtered_kinds_are_covered_but_not_sent(store):
    fill(store, ["debit", "lost", "credit", "found", "reverse"])
    to_txn, records = next_frame(store, 1, frozenset({"debit", "reverse"}))
    assert to_txn == 5 and [r["txn"] for r in records] == [1, 5]


def test_bytes_bound_keeps_the_biggest_records_in_one_frame(store):
    # Records as large as this switch writes (64-char ids everywhere) still fit one frame.
    fill(store, ["debit"] * (limits.forward_records_per_frame_max + 10), pad=64)
    first = 1
    while first <= store.last_txn:
        to_txn, records = next_frame(store, first, None)
        frame = encode_frame(b"k" * 32, {"t": "records", "seq": 2**32, "from": first,
                                         "to": to_txn, "records": records})
        assert len(frame) - 4 <= limits.frame_size_bytes_max
        assert sum(len(msgpack.packb(r, use_bin_type=True)) for r in records) <= \
            limits.forward_records_bytes_max
        first = to_txn + 1


def test_bytes_bound_at_n_and_n_plus_one(store, monkeypatch):
    fill(store, ["debit"] * 4)
    size = len(msgpack.packb(record(1), use_bin_type=True))
    monkeypatch.setattr(limits, "forward_records_bytes_max", 2 * size)
    assert next_frame(store, 1, None)[0] == 2
    monkeypatch.setattr(limits, "forward_records_bytes_max", 2 * size - 1)
    assert next_frame(store, 1, None)[0] == 1


def test_position_encoding():
    assert decode_position(None) == 0
    assert decode_position(encode_position(12345)) == 12345
    assert decode_position(b"678") == 678


# ---------------------------------------------------------------- receiver rules
def frame(first, last, txns):
    return {"t": "records", "from": first, "to": last, "records": [record(t) for t in txns]}


def test_in_order_frame_is_applied_up_to_to():
    verdict = check_records(0, frame(1, 10, [2, 5]))
    assert verdict.action == APPLY and verdict.upto == 10
    assert [r["txn"] for r in verdict.records] == [2, 5]


def test_gap_acknowledges_what_we_have():
    verdict = check_records(7, frame(9, 12, [9]))
    assert verdict.action == GAP and verdict.upto == 7 and verdict.records == []


def test_from_right_after_position_is_no_gap():
    assert check_records(7, frame(8, 8, [8])).action == APPLY


def test_duplicates_are_dropped_and_upto_is_to():
    verdict = check_records(10, frame(5, 12, [6, 10, 11]))
    assert verdict.action == APPLY and verdict.upto == 12
    assert [r["txn"] for r in verdict.records] == [11]


def test_an_old_frame_is_acknowledged_as_sent():
    verdict = check_records(50, frame(5, 12, [6]))
    assert verdict.action == APPLY and verdict.upto == 12 and verdict.records == []


@pytest.mark.parametrize("message", [
    {"t": "records", "from": 1, "to": 3},
    {"t": "records", "from": "1", "to": 3, "records": []},
    {"t": "records", "from": 0, "to": 3, "records": []},
    {"t": "records", "from": 5, "to": 3, "records": []},
    frame(1, 3, [2, 2]),
    frame(1, 3, [3, 2]),
    frame(1, 3, [4]),
    {"t": "records", "from": 1, "to": 1, "records": [{"txn": 1}]},
    {"t": "records", "from": 1, "to": 1, "records": ["x"]},
])
def test_malformed_frames_are_bad(message):
    assert check_records(0, message).action == BAD


def test_a_look_alike_kind_inside_another_field_is_not_sent(store):
    # A request id may hold any text, including the packed bytes of `"kind": "debit"`.
    look_alike = (msgpack.packb("kind") + msgpack.packb("debit")).decode("latin-1")
    txn = store.next_txn()
    lost = {**record(txn, "lost"), "ref": look_alike}
    store.put("journal", txn_key(txn), msgpack.packb(lost, use_bin_type=True))
    store.commit_now()
    assert next_frame(store, 1, frozenset({"debit"})) == (1, [])
    assert next_frame(store, 1, None) == (1, [lost])


def test_a_frame_spans_at_most_one_scan_of_the_switch():
    scan = limits.forward_scan_txns_max
    assert check_records(0, frame(1, scan, [scan])).action == APPLY
    wide = check_records(0, frame(1, scan + 1, [scan]))
    assert wide.action == BAD and wide.upto == 0
    # The same from any starting point, records or none.
    assert check_records(5000, frame(5001, 5000 + scan, [])).action == APPLY
    assert check_records(5000, frame(5001, 5001 + scan, [])).action == BAD
    # A `to` far past the last record would have made us drop everything up to it.
    assert check_records(0, frame(1, 2**62, [1])).action == BAD


def test_a_frame_holds_at_most_the_switchs_records_per_frame():
    count = limits.forward_records_per_frame_max
    assert check_records(0, frame(1, count, range(1, count + 1))).action == APPLY
    assert check_records(0, frame(1, count + 1, range(1, count + 2))).action == BAD


def test_the_switchs_frames_pass_the_receivers_rules(store):
    fill(store, ["debit"] * (limits.forward_scan_txns_max + 10))
    to_txn, records = next_frame(store, 1, None)
    message = {"t": "records", "from": 1, "to": to_txn, "records": records}
    assert check_records(0, message).action == APPLY
    to_txn, records = next_frame(store, 1, frozenset({"credit"}))
    assert to_txn == limits.forward_scan_txns_max and records == []
    assert check_records(0, {"t": "records", "from": 1, "to": to_txn,
                             "records": records}).action == APPLY
