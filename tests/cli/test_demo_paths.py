"""The demo finds the simulator and writes its output in the checkout it runs from (a move
of the module once pointed it inside the package)."""

from switch.cli import demo
from tests.paths import REPO_ROOT


def test_the_demo_runs_the_simulator_of_this_checkout():
    assert demo.REPO == REPO_ROOT
    assert demo.SIMULATOR.is_file()
