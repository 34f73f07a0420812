"""bench/record_size.py measures LMDB's cost of the two account record sizes: a small run
writes every row, counts the leaves from LMDB's own statistics and refuses bad sizes."""

import json

import pytest

from tests.bench import bench_module

record_size = bench_module("record_size")


def test_a_small_run_measures_both_record_sizes_at_each_count(tmp_path):
    out = tmp_path / "record_size.json"
    assert record_size.main(["--accounts", "300,3000", "--lookups", "500", "--batch", "20",
                             "--batches", "3", "--repeats", "1", "--dir", str(tmp_path),
                             "--json-out", str(out)]) == 0
    result = json.loads(out.read_text())
    # The command that reproduces it, from the repository's root, with its arguments.
    assert "bench/record_size.py --accounts 300,3000 --lookups 500" in result["command"]
    rows = {(r["accounts"], r["record_bytes"]): r for r in result["rows"]}
    assert set(rows) == {(n, size) for n in (300, 3000) for size in (176, 96)}
    for n in (300, 3000):
        big, small = rows[(n, 176)], rows[(n, 96)]
        # The smaller record fits more to a leaf, so the same accounts take fewer leaves.
        assert small["per_leaf"] > big["per_leaf"]
        assert small["leaves"] < big["leaves"]
        assert big["per_leaf"] == round(n / big["leaves"], 1)
        for row in (big, small):
            assert row["lookup_us"] > 0 and row["rewrite_us"] > 0 and row["writeback_us"] > 0
        assert set(result["ratios_small_over_big"][str(n)]) == {
            "lookup_us", "rewrite_us", "writeback_us"}
    # Its environments are removed with the temporary dir it made.
    assert [p.name for p in tmp_path.iterdir()] == ["record_size.json"]


@pytest.mark.parametrize("accounts", ["ten", "0", "100,-5"])
def test_bad_account_counts_are_refused(accounts, capsys):
    with pytest.raises(SystemExit) as refused:
        record_size.main(["--accounts", accounts])
    assert refused.value.code == 2
    assert "--accounts" in capsys.readouterr().err
