"""e2e_load.pregrow_data_file: zeros written past the end of a data dir's LMDB file, which
LMDB then writes its next pages over. The books read the same before and after, and the
switch's growth lands inside the written region instead of past it."""

import argparse
import os
import time

import pytest

from tests.bench import bench_module

e2e_load = bench_module("e2e_load")
ledger_scale = bench_module("ledger_scale")


def _data_file(data_dir):
    return data_dir / "lmdb" / "data.mdb"


def _books(data_dir):
    args = argparse.Namespace(accounts=60, terminals=2, config=str(e2e_load.LOAD_CONFIG),
                              prebuilt_cache=None, prebuild=True, seed=1)
    return e2e_load.prebuild(data_dir, "0A0B0C0D", args)


def test_pregrown_books_read_the_same_and_the_switch_grows_into_the_zeros(tmp_path):
    from switch.cli.datadir import open_data_dir
    from switch.clock import FakeClock
    from switch.config import load_config
    from switch.ledger import Ledger, dispatch
    from switch.persistence.audit import audit

    data_dir = tmp_path / "data"
    cards, terminals = _books(data_dir)
    before = audit(str(data_dir))
    assert before.sound
    end = os.path.getsize(_data_file(data_dir))

    e2e_load.pregrow_data_file(data_dir, 2)
    assert os.path.getsize(_data_file(data_dir)) == end + 2 * 1024 * 1024
    with open(_data_file(data_dir), "rb") as handle:
        handle.seek(end)
        assert handle.read() == bytes(2 * 1024 * 1024)
    after = audit(str(data_dir))
    assert after.sound and after.accounts == before.accounts and after.records == before.records

    # Debits committed on the pregrown books: LMDB's pages go past the old end of the file
    # and stay inside the zeros, so the file does not grow.
    store = open_data_dir(str(data_dir))
    try:
        ledger = Ledger(store, load_config(str(e2e_load.LOAD_CONFIG)),
                        FakeClock(int(time.time() * 1000)))
        credential = ledger.credential(terminals[0][0])
        for batch in range(20):
            for n in range(50):
                reply = dispatch.execute(ledger, credential, {
                    "t": "debit", "card": cards[n % len(cards)], "amount": 1,
                    "id": batch * 50 + n + 1})
                assert reply["code"] == "ok", reply
            ledger.take_effects()
            sealed = store.seal()
            store.write_batch(sealed)
            store.committed(sealed)
        used, _ = store.map_usage()
    finally:
        store.close()
    assert end < used <= end + 2 * 1024 * 1024
    assert os.path.getsize(_data_file(data_dir)) == end + 2 * 1024 * 1024
    assert audit(str(data_dir)).sound


@pytest.mark.parametrize("argv", [
    ["--pregrow-mb", "-1", "--prebuild"],
    ["--pregrow-mb", "64"],              # no --prebuild: no books of ours to grow
])
def test_a_pregrowth_without_books_or_below_zero_is_refused(argv, capsys):
    assert e2e_load.main(argv) != 0
    assert "--pregrow-mb" in capsys.readouterr().err


def test_ledger_scale_refuses_a_pregrowth_below_zero(capsys):
    with pytest.raises(SystemExit) as refused:
        ledger_scale.main(["--pregrow-mb", "-1"])
    assert refused.value.code == 2
    assert "--pregrow-mb" in capsys.readouterr().err
