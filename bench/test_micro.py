"""Micro-benchmarks of the hot path's parts: `pytest bench/test_micro.py` (pytest-benchmark).

Not part of `make test`: speed is measured here, never asserted in tests.
"""

import hmac
import os
import tempfile

import msgpack
import pytest

from switch.ledger import dispatch
from switch.clock import SystemClock
from switch.codec import ClientSession, ServerSession, _frame_key, mac
from switch.config import default_config
from switch.core import _authorize, layout, reference
from switch.cli.datadir import open_data_dir
from switch.ledger import Ledger
from switch.persistence.store import Store, txn_key

KEY = bytes(range(32))
BODY = msgpack.packb({"t": "debit", "seq": 1, "id": "T0001-000001", "card": "04A1B2C3D4",
                      "amount": 1250})


def test_hmac_tag_of_a_debit_body(benchmark):
    benchmark(hmac.digest, KEY, BODY, "sha256")


def test_frame_key_tag_of_a_debit_body_hashlib(benchmark):
    """A session's tag with hashlib's keyed states (the switch's where the CPU has no SHA
    extensions)."""
    benchmark(mac.HashlibFrameKey(KEY).tag, BODY)


def test_frame_key_tag_of_a_debit_body_compiled(benchmark):
    """A session's tag compiled on the x86 SHA extensions (the switch's where it can)."""
    if not _frame_key.AVAILABLE:
        pytest.skip("this CPU has no SHA extensions")
    benchmark(_frame_key.FrameKey(KEY).tag, BODY)


def test_msgpack_unpack_debit(benchmark):
    benchmark(msgpack.unpackb, BODY, raw=False)


def _open_sessions():
    server, client = ServerSession(), ClientSession("POS", KEY)
    hello = server.receive_hello(client.hello_frame(0)[4:], lambda who: KEY)
    client.receive_hello_reply(server.accept_hello(hello, {"role": "terminal"})[4:])
    return server, client


def test_codec_request_in_reply_out(benchmark):
    server, client = _open_sessions()
    frames = iter([client.request_frame({"t": "debit", "card": "04A1B2C3D4", "amount": 1250,
                                         "id": n})[1][4:] for n in range(2_000_000)])
    reply = {"t": "debit", "code": "ok", "txn": 123456, "balance": 8750, "available": 8750,
             "account": "WH20230001"}

    def one():
        request = server.receive_request(next(frames))
        reply["re"] = request.seq
        return server.encode_reply(reply)

    benchmark.pedantic(one, rounds=20_000, iterations=1)


@pytest.mark.parametrize("core", [_authorize, reference], ids=["compiled", "reference"])
def test_core_authorize(benchmark, core):
    record = layout.new_account_record("WH", 0, 0, bytes(16), bytes(32), bytes(32))
    layout.put(record, layout.BALANCE, 10**15)
    benchmark(core.authorize, record, layout.CARD_ACTIVE, True, 1, None, True, 20000, 50_000,
              10**15, 5_000, 10_000_000, False)


@pytest.mark.parametrize("batch", [1, 100, 1000])
def test_lmdb_batch_commit(benchmark, batch):
    store = Store(tempfile.mkdtemp())
    counter = iter(range(10**9))

    def commit():
        for _ in range(batch):
            store.put("journal", txn_key(next(counter)), os.urandom(64))
        store.commit_now()

    benchmark.pedantic(commit, rounds=200 if batch < 1000 else 50, iterations=1)


def test_execute_debit_without_commit(benchmark):
    data = tempfile.mkdtemp()
    store = open_data_dir(data)
    ledger = Ledger(store, default_config(), SystemClock())
    admin = ledger.credential("admin")
    for n in range(100):
        dispatch.execute(ledger, admin, {"t": "open_account", "account": f"WH{n}", "school": "WH",
                                         "kind": "person", "id_last6": "123456", "id": f"o{n}"})
        dispatch.execute(ledger, admin, {"t": "issue_card", "account": f"WH{n}",
                                         "card": f"{0xA000 + n:X}", "id": f"c{n}"})
        dispatch.execute(ledger, admin, {"t": "credit", "account": f"WH{n}", "amount": 10**7,
                                         "source": "x", "id": f"p{n}"})
    dispatch.execute(ledger, admin, {"t": "add_credential", "who": "POS", "role": "terminal",
                                     "school": "WH", "kind": "pos", "id": "k"})
    store.commit_now()
    pos = ledger.credential("POS")
    ids = iter(range(10**9))

    def one():
        n = next(ids)
        dispatch.execute(ledger, pos, {"t": "debit", "card": f"{0xA000 + n % 100:X}",
                                       "amount": 1, "id": n})
        if n % 500 == 499:
            store.commit_now()

    benchmark.pedantic(one, rounds=20_000, iterations=1)
