"""bench/postgres_pairs.py runs the switch and PostgreSQL in alternating order on one cluster,
compares each pair's switch with that pair's PostgreSQL at its best client count, and fails
when PostgreSQL's money does not add up. Nothing here starts PostgreSQL or a switch."""

import json

import pytest

from tests.bench import bench_module

postgres_pairs = bench_module("postgres_pairs")


class FakeCluster:
    """What the comparison asks of a cluster, with its money check's two answers set."""

    def __init__(self, spent: int, journal: int):
        self.answers = {"sum(balance)": str(spent), "sum(amount)": str(-journal)}
        self.started = self.stopped = False
        self.statements = []
        self.dir = None
        self.port = 5432

    def start(self):
        self.started = True

    def stop(self):
        self.stopped = True

    def psql(self, *statements):
        self.statements.extend(statements)
        for needle, answer in self.answers.items():
            if any(needle in statement for statement in statements):
                return answer
        return "fsync=on"


def _fake(monkeypatch, cluster: FakeCluster, switch_tx: list, postgres_tx: list, order: list):
    switch_figures, postgres_figures = iter(switch_tx), iter(postgres_tx)
    monkeypatch.setattr(postgres_pairs.postgres_peer, "ensure_installed", lambda: "bin")
    monkeypatch.setattr(postgres_pairs.postgres_peer, "Cluster", lambda *a, **k: cluster)
    monkeypatch.setattr(postgres_pairs.e2e_load, "_pin_self", lambda cpu: f"CPU {cpu}")

    def switch_arm(args, label, workdir):
        order.append(label)
        return {"tx_per_s": next(switch_figures),
                "cpu": {"elapsed_s": 10.0, "server_cpu_s": 9.0, "load_cpu_s": 1.0,
                        "machine_cpu_s": 10.0 + (3.0 if label == "S2" else 0.0)}}

    def run_pgbench(cluster_, clients, args, workdir):
        order.append(f"pgbench {clients}")
        return {"clients": clients, "tx_per_s": next(postgres_figures), "failed": 0}

    monkeypatch.setattr(postgres_pairs, "switch_arm", switch_arm)
    monkeypatch.setattr(postgres_pairs.postgres_peer, "run_pgbench", run_pgbench)


def test_pairs_alternate_and_each_is_judged_against_its_own_postgres_best(monkeypatch,
                                                                          tmp_path):
    order = []
    cluster = FakeCluster(spent=500, journal=500)
    #            pair 1: S then P (64, 256)   pair 2: P then S       pair 3: S then P
    _fake(monkeypatch, cluster, [10_000, 12_000, 9_000],
          [2_000, 2_500, 4_000, 3_000, 1_000, 3_000], order)
    out = tmp_path / "pairs.json"
    assert postgres_pairs.main(["--pairs", "3", "--clients", "256,64", "--json-out",
                                str(out)]) == 0
    assert order == ["S1", "pgbench 64", "pgbench 256", "pgbench 64", "pgbench 256", "S2",
                     "S3", "pgbench 64", "pgbench 256"]
    assert cluster.started and cluster.stopped
    result = json.loads(out.read_text())
    assert [pair["postgres"]["best_clients"] for pair in result["pairs"]] == [256, 64, 256]
    summary = result["summary"]
    assert summary["ratios"] == pytest.approx([4.0, 3.0, 3.0])
    assert summary["median_ratio"] == pytest.approx(3.0)
    assert summary["best_postgres_tx_per_s"] == 4_000
    assert result["postgres_check"]["sound"] is True and result["completed"] is True
    # PostgreSQL checkpoints after each of its arms, before the switch runs again.
    assert cluster.statements.count("CHECKPOINT") >= 1 + 3
    # Other work during a switch run is recorded per pair (S2's window had 30 % of a core).
    assert [pair["switch_others_percent"] for pair in result["pairs"]] == pytest.approx(
        [0.0, 30.0, 0.0])


def test_a_comparison_cut_short_still_writes_what_it_had_and_stops_postgres(monkeypatch,
                                                                            tmp_path):
    cluster = FakeCluster(spent=500, journal=500)
    _fake(monkeypatch, cluster, [10_000], [2_000], [])

    def broken_pgbench(*args, **kwargs):
        raise RuntimeError("pgbench -c 64 failed")

    monkeypatch.setattr(postgres_pairs.postgres_peer, "run_pgbench", broken_pgbench)
    out = tmp_path / "pairs.json"
    with pytest.raises(RuntimeError):
        postgres_pairs.main(["--pairs", "2", "--clients", "64", "--json-out", str(out)])
    result = json.loads(out.read_text())
    assert result["completed"] is False and cluster.stopped
    assert result["pairs"][0]["switch"]["tx_per_s"] == 10_000


def test_postgres_money_that_does_not_add_up_fails_the_comparison(monkeypatch, tmp_path):
    cluster = FakeCluster(spent=500, journal=499)
    _fake(monkeypatch, cluster, [10_000], [2_000], [])
    out = tmp_path / "pairs.json"
    assert postgres_pairs.main(["--pairs", "1", "--clients", "64", "--json-out", str(out)]) == 1
    assert json.loads(out.read_text())["postgres_check"]["sound"] is False
    assert cluster.stopped


@pytest.mark.parametrize("arguments", [
    ["--pairs", "0"], ["--pairs", "51"], ["--clients", "x"], ["--clients", "0"],
    ["--clients", ""], ["--seconds", "0"], ["--connections", "0"], ["--warmup", "-1"],
    ["--threads", "0"], ["--amount-max", "0"], ["--server-cpu", "1", "--load-cpu", "1"]])
def test_what_it_cannot_run_is_refused_before_anything_starts(monkeypatch, arguments, capsys):
    def no(*args, **kwargs):
        raise AssertionError("started something")

    monkeypatch.setattr(postgres_pairs.postgres_peer, "ensure_installed", no)
    assert postgres_pairs.main(arguments) == 2
    assert capsys.readouterr().err
