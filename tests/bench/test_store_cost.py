"""bench/store_cost.py times the Store's part of a debit in phases: a small run of it, and
its refusals."""

import json

import pytest

from tests.bench import bench_module

store_cost = bench_module("store_cost")


def test_a_small_run_times_each_phase(tmp_path):
    out = tmp_path / "store.json"
    work = tmp_path / "work"
    work.mkdir()
    assert store_cost.main(["--accounts", "2000", "--commits", "8", "--workdir", str(work),
                            "--json-out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["debits"] == 8_000 and result["accounts"] == 2000
    assert set(result["us_per_debit"]) == {"execute", "seal", "write", "committed"}
    assert result["us_per_debit_total"] == pytest.approx(sum(result["us_per_debit"].values()))
    assert "bench/store_cost.py --accounts 2000" in result["command"]
    assert list(work.iterdir()) == []      # its data dir removed


@pytest.mark.parametrize("argv", [["--accounts", "0"], ["--commits", "0"],
                                  ["--tree", "/nonexistent-checkout"]])
def test_bad_arguments_are_refused(argv):
    with pytest.raises(SystemExit) as refused:
        store_cost.main(argv)
    assert refused.value.code == 2
