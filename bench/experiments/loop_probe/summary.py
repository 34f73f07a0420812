"""Summarise the probe files of one run (bench/experiments/loop_probe/sitecustomize.py):

    .venv/bin/python bench/experiments/loop_probe/summary.py "$TMPDIR/probe"

For the switch's file: cycle collections per generation (count, thread CPU p50 / max, how
many over 3 ms), and the task steps that held the event loop longest."""

import argparse
import json
import sys
from pathlib import Path


def summarise(path: Path) -> None:
    data = json.loads(path.read_text())
    if "serve" not in data["argv"]:
        return
    print(f"{path.name}: {' '.join(data['argv'][:2])} ...")
    for generation in (0, 1, 2):
        cpu_ms = sorted(entry[2] * 1000 for entry in data["collections"]
                        if entry[0] == generation)
        if cpu_ms:
            print(f"  generation {generation}: {len(cpu_ms)} collections, CPU p50 "
                  f"{cpu_ms[len(cpu_ms) // 2]:.2f} ms, max {cpu_ms[-1]:.2f} ms, "
                  f"{sum(ms > 3 for ms in cpu_ms)} over 3 ms")
    for name, (steps, total, over2, over5, longest) in sorted(
            data["steps"].items(), key=lambda item: -item[1][4])[:6]:
        print(f"  {name:50} {steps:7d} steps, {over2:4d} > 2 ms, {over5:3d} > 5 ms, "
              f"longest {longest * 1000:.1f} ms")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("probe_dir", type=Path, help="the PROBE_DIR of one run")
    args = parser.parse_args(argv)
    files = sorted(args.probe_dir.glob("probe-*.json"))
    if not files:
        parser.error(f"no probe-*.json in {args.probe_dir}")
    for file in files:
        summarise(file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
