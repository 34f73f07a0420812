"""PNG plots of an end-to-end benchmark run, from the JSON files bench/run_e2e.py wrote:
throughput over time (per second) and latency distributions (percentile curves and
log-binned histograms) for each system.

    .venv/bin/python bench/plots.py bench/results      # rewrites bench/results/*.png
"""

import json
import pathlib
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator  # noqa: E402

DPI = 110
COLORS = {"switch": "tab:blue", "bare": "tab:green", "uvloop": "tab:purple",
          "postgres": "tab:red"}
PERCENTILE_TICKS = (50, 90, 99, 99.9, 99.99, 99.999)


def _color(run: dict, index: int) -> str:
    return COLORS.get(run.get("system"), f"C{index + 4}")


def _name(run: dict) -> str:
    name = run.get("title") or run.get("label") or run.get("system", "?")
    return name


def throughput_plot(groups: list[tuple[str, list[dict]]], path: pathlib.Path) -> None:
    """One panel per group: ok replies per second over the run, warm-up shaded."""
    groups = [(title, runs) for title, runs in groups if runs]
    if not groups:
        return
    figure, axes = plt.subplots(len(groups), 1, figsize=(9, 3.4 * len(groups)), squeeze=False)
    for (title, runs), axis in zip(groups, axes[:, 0]):
        warmup = 0.0
        for index, run in enumerate(runs):
            timeline = run.get("timeline_ok_per_s") or []
            if not timeline:
                continue
            warmup = max(warmup, run.get("warmup_s", 0.0))
            seconds = [second + 0.5 for second in range(len(timeline))]
            axis.plot(seconds, timeline, marker=".", linewidth=1.2, color=_color(run, index),
                      label=f"{_name(run)} ({run['tx_per_s']:,.0f} tx/s in the window)")
        if warmup:
            axis.axvspan(0, warmup, color="0.9", label="warm-up (not measured)")
        axis.set_title(title)
        axis.set_xlabel("seconds since the load started")
        axis.set_ylabel("authorizations / s")
        axis.set_ylim(bottom=0)
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize=8, loc="best")
    figure.tight_layout()
    figure.savefig(path, dpi=DPI)
    plt.close(figure)


def _percentile_axis(value: float) -> float:
    """x position of a percentile: -log10(1 - p), so 90, 99, 99.9 are evenly spaced."""
    import math
    fraction = min(value / 100.0, 0.999999)
    return -math.log10(1.0 - fraction)


def latency_plot(runs: list[dict], path: pathlib.Path, title: str) -> None:
    """Left: latency at each percentile (log scale both ways). Right: distribution."""
    runs = [run for run in runs if (run.get("latency_ms") or {}).get("count")]
    if not runs:
        return
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.4))
    for index, run in enumerate(runs):
        latency = run["latency_ms"]
        color = _color(run, index)
        label = f"{_name(run)} (p99 {latency['p99']:.2f} ms)"
        # A percentile means something only with at least one request above it.
        points = [(p, ms) for p, ms in latency["curve"]
                  if p < 100 and latency["count"] * (1 - p / 100) >= 1]
        left.plot([_percentile_axis(p) for p, _ in points], [max(ms, 1e-3) for _, ms in points],
                  marker=".", color=color, label=label)
        histogram = latency["histogram"]
        edges, counts = histogram["edges_ms"], histogram["counts"]
        total = sum(counts) or 1
        right.stairs([count / total * 100 for count in counts], edges, color=color,
                     label=_name(run))
    shown = max(max(_percentile_axis(p) for p, _ in run["latency_ms"]["curve"]
                    if p < 100 and run["latency_ms"]["count"] * (1 - p / 100) >= 1)
                for run in runs)
    ticks = [_percentile_axis(p) for p in PERCENTILE_TICKS]
    left.set_xlim(0, shown * 1.05)
    left.xaxis.set_major_locator(FixedLocator(ticks))
    left.xaxis.set_minor_locator(NullLocator())
    left.xaxis.set_major_formatter(FuncFormatter(
        lambda x, _: next((f"{p:g}%" for p, t in zip(PERCENTILE_TICKS, ticks)
                           if abs(t - x) < 1e-9), "")))
    left.set_yscale("log")
    left.set_xlabel("percentile")
    left.set_ylabel("latency (ms)")
    left.set_title(f"{title}: latency by percentile")
    left.grid(True, which="both", alpha=0.3)
    left.legend(fontsize=8)
    right.set_xscale("log")
    right.set_xlabel("latency (ms)")
    right.set_ylabel("% of requests (20 bins per decade)")
    right.set_title(f"{title}: distribution")
    right.grid(True, which="both", alpha=0.3)
    right.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=DPI)
    plt.close(figure)


def postgres_best(document: dict) -> dict | None:
    """The best pgbench run of a postgres_peer.py result, shaped like a load run."""
    runs = document.get("runs") or []
    if not runs:
        return None
    best = max(runs, key=lambda run: run["tx_per_s"])
    return {**best, "system": "postgres", "warmup_s": document.get("warmup_s", 0.0),
            "title": f"PostgreSQL, pgbench {best['clients']} clients"}


def plot_all(results_dir: pathlib.Path, runs: dict[str, dict]) -> list[pathlib.Path]:
    """Write the PNGs for the runs by name (switch_closed, bare_closed, uvloop_closed,
    postgres, switch_open_RATE, bare_open_RATE, switch_scale_N, ...)."""
    def titled(name, title):
        run = runs.get(name)
        return {**run, "title": title} if run else None

    closed = [titled("switch_closed", "switch (durable)"), titled("bare_closed", "bare trio server"),
              titled("uvloop_closed", "bare asyncio+uvloop server")]
    if runs.get("postgres"):
        closed.append(postgres_best(runs["postgres"]))
    closed = [run for run in closed if run]
    rates = sorted({run["rate"] for name, run in runs.items() if "_open_" in name})
    opened = {rate: [run for run in (titled(f"switch_open_{rate:.0f}", "switch (durable)"),
                                     titled(f"bare_open_{rate:.0f}", "bare trio server")) if run]
              for rate in rates}
    scale = sorted((run for name, run in runs.items() if name.startswith("switch_scale_")),
                   key=lambda run: run["accounts"])
    scale = [{**run, "title": f"switch, {run['accounts']:,} accounts"} for run in scale]
    for index, run in enumerate(scale):
        run["system"] = f"scale{index}"
    written = []
    path = results_dir / "throughput.png"
    connections = (closed[0] if closed else {}).get("connections")
    throughput_plot([(f"closed loop, {connections} connections (PostgreSQL: its best client "
                      f"count)", closed)]
                    + [(f"open loop, {rate:,.0f} tx/s offered", opened[rate]) for rate in rates]
                    + [("switch, accounts scaling (closed loop)", scale)], path)
    written.append(path)
    path = results_dir / "latency_closed.png"
    latency_plot(closed, path, "closed loop")
    written.append(path)
    for rate in rates:
        path = results_dir / f"latency_open_{rate:.0f}.png"
        latency_plot(opened[rate], path, f"open loop, {rate:,.0f} tx/s offered, from intended "
                                         f"send")
        written.append(path)
    return [path for path in written if path.exists()]


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    results_dir = pathlib.Path(argv[0] if argv else pathlib.Path(__file__).parent / "results")
    runs = {path.stem: json.loads(path.read_text()) for path in results_dir.glob("*.json")
            if path.stem != "summary"}
    for path in plot_all(results_dir, runs):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
