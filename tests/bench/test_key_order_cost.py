"""bench/key_order_cost.py times three ways of ordering a round's keys on the same keys: a
small run of it, and its refusals."""

import json

import pytest

from tests.bench import bench_module

key_order_cost = bench_module("key_order_cost")


def test_a_small_run_times_each_way_on_both_kinds_of_key(tmp_path):
    out = tmp_path / "key_order_cost.json"
    assert key_order_cost.main(["--accounts", "3000", "--ids", "2500", "--repeats", "1",
                                "--json-out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert "bench/key_order_cost.py --accounts 3000" in result["command"]
    assert result["compiled"] is True
    for name, count in (("accounts", 3000), ("ids", 2500)):
        figures = result[name]
        # Distinct keys: a few account ids drawn twice are dropped, never an id.
        assert count * 0.9 < figures["keys"] <= count
        assert set(figures) >= {"heap", "sorted", "runs"}
        # One run below the limit's size: sorted in one step. Timed, never judged.
        assert figures["runs"]["runs"] == 1
        assert all(type(figures[way]["total_s"]) is float for way in ("heap", "sorted", "runs"))
    assert result["ids"]["keys"] == 2500


@pytest.mark.parametrize("argv", [["--accounts", "0"], ["--ids", "0"], ["--repeats", "0"],
                                  ["--ids", "x"]])
def test_bad_sizes_are_refused(argv):
    with pytest.raises(SystemExit) as refused:
        key_order_cost.main(argv)
    assert refused.value.code == 2
