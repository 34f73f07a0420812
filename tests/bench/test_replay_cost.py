"""bench/replay_cost.py fills both write-back logs of a table larger than a round and times
the replay at open and the write-back at close: a small run of it, and its refusals."""

import json

import pytest

from tests.bench import bench_module

replay_cost = bench_module("replay_cost")


def test_a_small_run_fills_both_logs_of_a_lengthened_round_and_times_both_ends(tmp_path):
    out = tmp_path / "replay_cost.json"
    work = tmp_path / "work"
    work.mkdir()
    assert replay_cost.main(["--accounts", "70000", "--batch", "500", "--workdir", str(work),
                             "--json-out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert "bench/replay_cost.py --accounts 70000 --batch 500" in result["command"]
    # 70,000 accounts: a round of 42,000 account writes (0.6 a record), longer than the
    # 32,768 of limits.py; a debit logs one, so the first round is 42,000 debits.
    rounds = 42_000
    assert result["round_writes_max"] == rounds and result["debits_in_first_round"] == rounds
    # At their fullest the logs hold a whole round and most of the next (of account records,
    # and of ids in rounds of their own), both times it fills them.
    for held in (result["logged_writes_held"], result["logged_writes_at_close"]):
        assert 1.35 * rounds < held < 2 * rounds
    # In memory, less: the slices written back were dropped once committed.
    assert result["logged_writes_in_memory"] < 0.75 * result["logged_writes_held"]
    # The peak is about a round of each (accounts, and ids' 32,768), at a round's start, never
    # the logs' round and a half of each.
    assert 0.9 * rounds < result["logged_writes_in_memory_max"] < rounds + 32_768
    # Timed, never judged: speed is the benchmark's, not a test's.
    assert {type(result[name]) for name in ("reopen_replay_s", "clean_close_s")} == {float}
    assert list(work.iterdir()) == []      # its data dir removed


@pytest.mark.parametrize("argv", [["--accounts", "0"], ["--batch", "0"], ["--accounts", "x"]])
def test_bad_sizes_are_refused(argv):
    with pytest.raises(SystemExit) as refused:
        replay_cost.main(argv)
    assert refused.value.code == 2
