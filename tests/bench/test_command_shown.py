"""e2e_load._command_line: the command a bench result records shows no machine's own paths
(its JSON is committed), whichever script records it."""

from tests.bench import bench_module
from tests.paths import REPO_ROOT

e2e_load = bench_module("e2e_load")


def test_absolute_paths_among_the_arguments_are_shown_as_the_results_show_them(tmp_path):
    shown = e2e_load._command_line([
        "--prebuilt-cache", str(tmp_path / "books"), f"--json-out={tmp_path / 'run' / 'out.json'}",
        "--accounts", "10000,1000000", "--config", str(REPO_ROOT / "bench" / "switch-load.toml"),
        "--listen", "127.0.0.1:0", "--label", "A1"], str(REPO_ROOT / "bench" / "ledger_scale.py"))
    words = shown.split()
    assert words[1] == "bench/ledger_scale.py"
    assert words[2:] == ["--prebuilt-cache", "books", "--json-out=out.json",
                         "--accounts", "10000,1000000", "--config", "bench/switch-load.toml",
                         "--listen", "127.0.0.1:0", "--label", "A1"]
    assert str(tmp_path) not in shown and str(REPO_ROOT) not in shown


def test_words_that_are_not_absolute_paths_are_kept_as_typed():
    argv = ["--workdir", "relative/dir", "--rate", "5000", "--x=y", "--seed", "1"]
    assert e2e_load._command_line(argv).split()[2:] == argv
