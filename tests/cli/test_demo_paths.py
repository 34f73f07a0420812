"""The demo finds the simulator and writes its output in the checkout it runs from (a move
of the module once pointed it inside the package)."""

from switch.cli import demo
from tests.paths import REPO_ROOT


def test_the_demo_runs_the_simulator_of_this_checkout():
    assert demo.REPO == REPO_ROOT
    assert demo.SIMULATOR.is_file()


def test_every_command_line_is_a_main_taking_argv(capsys):
    from switch.cli import admin, main
    # admin's own main parses what follows `admin`: a bad amount is refused before any
    # network, with exit status 2.
    assert admin.main(["--connect", "127.0.0.1:9", "credit", "WH1", "1e3"]) == 2
    assert "error" in capsys.readouterr().err
    assert main.main(["audit", "--data", "no-such-dir-here"]) == 2
