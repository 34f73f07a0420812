"""bench/abba.py runs its two arms in alternating order and reports each pair's ratio."""

import json

import pytest

from tests.bench import bench_module

abba = bench_module("abba")


def _result(tx_per_s: float, cpu_us: float) -> dict:
    return {"tx_per_s": tx_per_s, "server_cpu_us_per_tx": cpu_us,
            "latency_ms": {"p50": 1.0, "p99": 2.0}, "commit": {"mean_batch": 10}}


def test_pairs_alternate_and_ratios_are_b_over_a(monkeypatch, tmp_path):
    order = []
    figures = {"A": iter([(100, 10), (200, 5), (100, 10)]),
               "B": iter([(110, 9), (180, 6), (150, 8)])}

    def run_arm(tree, arm_args, common, out, label):
        order.append(label)
        assert common == ["--seconds", "1"]
        assert arm_args == (["--config", "a.toml"] if label[0] == "A" else [])
        return _result(*next(figures[label[0]]))

    monkeypatch.setattr(abba, "run_arm", run_arm)
    out = tmp_path / "abba.json"
    assert abba.main(["--pairs", "3", "--a-args", "--config a.toml", "--json-out", str(out),
                      "--", "--seconds", "1"]) == 0
    assert order == ["A1", "B1", "B2", "A2", "A3", "B3"]
    summary = json.loads(out.read_text())["summary"]
    assert summary["tx/s"]["ratios"] == [1.1, 0.9, 1.5]
    assert summary["tx/s"]["median_ratio"] == 1.1
    assert summary["server µs/tx"]["median_ratio"] == pytest.approx(0.9)


@pytest.mark.parametrize("argv", [["--pairs", "0"], ["--pairs", "51"],
                                  ["--", "--json-out", "x.json"],
                                  ["--", "--json-out=x.json"], ["--", "--json", "x.json"],
                                  ["--b-args", "--label mine"], ["--a-args", "--ho 127.0.0.1"]])
def test_what_it_sets_itself_or_cannot_run_is_refused(argv, capsys, monkeypatch):
    monkeypatch.setattr(abba, "run_arm", lambda *a: pytest.fail("ran"))
    assert abba.main(argv) == 2
    assert capsys.readouterr().err


def test_an_unknown_revision_is_refused_before_anything_runs(monkeypatch):
    monkeypatch.setattr(abba, "run_arm", lambda *a: pytest.fail("ran"))
    with pytest.raises(SystemExit, match="neither a directory nor a revision"):
        abba.main(["--a-tree", "no-such-revision-xyz", "--pairs", "1"])


def test_both_arms_may_be_one_revision(monkeypatch):
    """Two sizes of books on one commit: each arm gets a worktree of its own, and neither
    is left behind (the second worktree once took the first's path, and git refused)."""
    trees = []

    def run_arm(tree, arm_args, common, out, label):
        trees.append(tree.path)
        assert (tree.path / "bench" / "abba.py").is_file()
        # The same Cython sources as this tree's: its compiled extensions, every one, copied.
        for extension in ("core/_authorize", "codec/_frame_key"):
            assert list(tree.path.glob(f"switch/{extension}*.so")), extension
        return _result(100, 10)

    monkeypatch.setattr(abba, "run_arm", run_arm)
    before = abba._git("worktree", "list")
    assert abba.main(["--a-tree", "HEAD", "--b-tree", "HEAD", "--pairs", "1"]) == 0
    assert len(set(trees)) == 2
    assert abba._git("worktree", "list") == before


@pytest.mark.parametrize("changed", ["switch/codec/_sha256_x86.h", "setup.py"])
def test_a_tree_whose_cython_sources_differ_is_built_not_given_these_extensions(
        monkeypatch, tmp_path, changed):
    tree = tmp_path / "tree"
    (tree / "switch" / "codec").mkdir(parents=True)
    for source in abba._compiled_sources(abba.REPO):
        (tree / source).parent.mkdir(parents=True, exist_ok=True)
        (tree / source).write_bytes((abba.REPO / source).read_bytes())
    (tree / changed).write_bytes((tree / changed).read_bytes() + b"\n# another build\n")
    built = []
    monkeypatch.setattr(abba.subprocess, "run",
                        lambda command, cwd, **kw: built.append((command[1:], cwd)))
    arm = abba.Tree.__new__(abba.Tree)
    arm.path = tree
    arm._extensions_from(abba.REPO)
    assert built == [(["setup.py", "build_ext", "--inplace"], tree)]
    assert not list(tree.rglob("*.so"))


def test_only_the_libraries_of_its_extensions_are_given_not_leftovers(tmp_path):
    for path in ("switch/core/_authorize.pyx", "switch/core/_authorize.cpython-311-x.so",
                 "switch/old/_gone.cpython-311-x.so", "switch/core/_other.cpython-311-x.so"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_bytes(b"")
    assert abba._extension_libraries(tmp_path) == [
        tmp_path / "switch/core/_authorize.cpython-311-x.so"]


def test_a_revision_whose_core_fails_to_build_leaves_no_worktree(monkeypatch):
    def fail(self, built):
        raise RuntimeError("build failed")
    monkeypatch.setattr(abba.Tree, "_extensions_from", fail)
    before = abba._git("worktree", "list")
    with pytest.raises(RuntimeError, match="build failed"):
        abba.main(["--a-tree", "HEAD", "--pairs", "1"])
    assert abba._git("worktree", "list") == before


def test_flags_of_its_own_arms_pass(monkeypatch):
    assert not abba._reserved(["--prebuild", "--seed", "1", "--hold", "2", "--", "-x"])
