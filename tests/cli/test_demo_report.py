"""The demo's report: saved as text, every number measured or said to be missing, one audit
whose accounts add up, and plots that say what they show."""

import pytest

from switch import limits
from switch.cli import demo

SMALL = demo.Rush(seconds=3, terminals=30, students=60, rate_per_s=60)


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo-output")
    return demo.run_demo(out=out, rush=SMALL), out


def test_a_small_demo_saves_its_report_as_text(small_demo):
    returncode, out = small_demo
    text = (out / "report.txt").read_text(encoding="utf-8")
    assert returncode == 0, text
    assert text.rstrip().endswith("Demo passed.")
    assert "== 12:00 lunch queue" in text and "== Money check:" in text
    assert "None" not in text, text                   # the switch's CPU is measured
    assert "switch not measured" not in text
    cpu_line = next(line for line in text.splitlines() if "CPU over the window" in line)
    assert "µs/reply), switch " in cpu_line and cpu_line.endswith("µs/reply)")
    # One audit, after SIGTERM, its verdict said once, its accounts accounted for.
    audits = [line for line in text.splitlines() if "Audit" in line]
    assert audits == ["== Audit after SIGTERM:"], audits
    assert text.count("audit: sound") == 1
    assert "students of the scripted queue" in text and "not explained" not in text
    assert "report.txt" in text.splitlines()[-2]


def test_the_audit_line_names_what_the_money_check_left_out():
    class Books:
        accounts = 3859

        @staticmethod
        def summary():
            return "audit: sound\njournal records 9, accounts 3859, sum of balances 0 fen, " \
                   "open holds 0"

    line = demo._audit_line(Books, {"accounts": 3835}, 24)
    assert line.endswith("its 3859 accounts are the 3835 of the money check (the "
                         "simulator's) and the 24 students of the scripted queue")
    assert demo._audit_line(Books, {"accounts": 3835}, 20).endswith(", and 4 not explained")


def _series(seconds):
    return [{"t": t, "replies": 100 * t, "offered": 60 * t, "p50_ms": 1.0, "p99_ms": 3.0,
             "max_ms": 9.0} for t in range(1, seconds + 1)]


def test_the_plots_drop_partial_seconds_draw_the_target_and_keep_the_legend_aside():
    pytest.importorskip("matplotlib")
    figures = dict(demo._figures({"per_second": _series(6)}))
    assert set(figures) == {"rush-throughput.png", "rush-latency.png"}
    for figure in figures.values():
        axis = figure.axes[0]
        for line in axis.get_lines():
            if line.get_label().startswith("target"):
                continue
            assert list(line.get_xdata()) == [2, 3, 4, 5]     # not the first nor the last
        figure.canvas.draw()
        legend = axis.get_legend().get_window_extent()
        assert legend.x0 >= axis.get_window_extent().x1        # beside the axes, not on them
    target = [line for line in figures["rush-latency.png"].axes[0].get_lines()
              if line.get_label().startswith("target")]
    assert len(target) == 1 and set(target[0].get_ydata()) == {limits.p99_latency_target_ms}
    note = " ".join(text.get_text() for text in figures["rush-throughput.png"].texts)
    assert "a shower is two requests" in note
    import matplotlib.pyplot as plt
    plt.close("all")
