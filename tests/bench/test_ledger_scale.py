"""bench/ledger_scale.py measures the ledger alone at each size of books: a small run
executes and commits real debits (all `ok`), times LMDB's reads per database and refuses bad
sizes."""

import json
import time

import pytest

from tests.bench import bench_module

ledger_scale = bench_module("ledger_scale")


def test_a_small_run_measures_each_size_and_the_reads_a_debit_makes(tmp_path):
    out = tmp_path / "ledger_scale.json"
    assert ledger_scale.main(["--accounts", "300,3000", "--batch", "40", "--warm", "2",
                              "--windows", "2", "--batches", "3", "--dir", str(tmp_path),
                              "--json-out", str(out)]) == 0
    result = json.loads(out.read_text())
    # The command that reproduces it, from the repository's root, with its arguments.
    assert "bench/ledger_scale.py --accounts 300,3000 --batch 40" in result["command"]
    assert [row["accounts"] for row in result["rows"]] == [300, 3000]
    # When and what it measured: a commit, marked when the tree differs from it.
    assert abs(result["started_at"] - time.time()) < 600
    assert result["revision"] is None or result["revision"].split("+")[0].isalnum()
    for row in result["rows"]:
        # Every debit of the windows executed and paid: 2 windows of 3 batches of 40.
        assert row["codes"] == {"ok": 2 * 3 * 40}
        for stage in ("execute", "commit", "total"):
            assert len(row[stage]["runs_us"]) == 2 and row[stage]["best_us"] > 0
        reads = row["reads"]
        # A debit reads its card and looks for its id (new: not in memory, so from LMDB).
        assert reads["cards"]["lmdb_reads_per_debit"] == 1.0
        assert reads["idempotency"]["lmdb_reads_per_debit"] == 1.0
        assert reads["idempotency"]["from_memory_per_debit"] == 0.0
        for db in ("cards", "idempotency"):
            assert type(reads[db]["lmdb_ns_per_read"]) is int
            assert reads[db]["lmdb_ns_per_read"] > 0
        # Its account from a round's memory or LMDB, or from its own batch (one the batch
        # already wrote: no committed read), so at most once a debit.
        account = reads["accounts"]
        assert 0 < account["lmdb_reads_per_debit"] + account["from_memory_per_debit"] <= 1.0
    assert set(result["ratios_over_first"]) == {"3000"}
    assert set(result["ratios_over_first"]["3000"]) == {"execute", "commit", "total"}
    # Paths among the arguments as e2e_load shows them (no machine's own), and the data
    # dirs removed with the temp dir they were made in.
    assert result["args"]["dir"] == tmp_path.name
    assert str(tmp_path) not in result["command"]
    assert f"--dir {tmp_path.name} --json-out ledger_scale.json" in result["command"]
    assert result["args"]["config"] == "bench/switch-load.toml"
    assert [p.name for p in tmp_path.iterdir()] == ["ledger_scale.json"]


@pytest.mark.parametrize("accounts", ["ten", "0", "100,-5"])
def test_bad_account_counts_are_refused(accounts, capsys):
    with pytest.raises(SystemExit) as refused:
        ledger_scale.main(["--accounts", accounts])
    assert refused.value.code == 2
    assert "--accounts" in capsys.readouterr().err
