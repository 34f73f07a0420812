"""Compare two arms of bench/e2e_load.py in alternating pairs (A B, B A, A B, ...), so that a
machine whose speed drifts under the runs (this one moves by up to 2x within minutes) weighs
on both arms alike; prints each pair's ratio B/A and the medians.

An arm is a tree (a directory, or a git revision checked out into a temporary worktree) and
the e2e_load arguments of its own. Everything after `--` is given to both arms.

    # this tree against an earlier commit, closed loop
    .venv/bin/python bench/abba.py --a-tree 3d1edc2 --pairs 6 -- \\
        --connections 2000 --depth 1 --prebuild --accounts 10000 --seconds 6 --warmup 2
    # one tree, two configurations, open loop at 5,000/s
    .venv/bin/python bench/abba.py --a-args "--config bench/switch-load.toml" \\
        --b-args "--config wait.toml" -- --rate 5000 --connections 2000 --depth 1 ...
    # one tree, two sizes of books (each prebuilt once, then copied: --prebuilt-cache)
    .venv/bin/python bench/abba.py --a-args "--accounts 10000" --b-args "--accounts 1000000" \\
        -- --prebuild --seed 1 --prebuilt-cache "$TMPDIR/books" --connections 2000 --depth 1

A revision's worktree gets this tree's compiled extensions when what they are built from
(every `.pyx`, `.pxd`, `.pxi` and `.h` under `switch/`, `setup.py`, `pyproject.toml`) is
the same as this tree's, and is built with `setup.py build_ext --inplace` otherwise; it is
removed at the end. Runs one at a time; nothing else should be running on the machine.
"""

import argparse
import json
import pathlib
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile

REPO = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = "switch"
# What the extensions are built from: the Cython and C sources under switch/, and the build's
# own settings (flags, directives, which extensions).
COMPILED_SOURCES = ("*.pyx", "*.pxd", "*.pxi", "*.h")
BUILD_FILES = ("setup.py", "pyproject.toml")
RUN_TIMEOUT_S = 3600.0          # one e2e_load run, prebuilding a million accounts included
STOP_GRACE_S = 60.0             # a run told to stop gets this long to stop its server
RESERVED_FLAGS = ("--json-out", "--label", "--host")   # this tool's to set, or not for it
PAIRS_MAX = 50
# (name shown, the result's key or path, how a ratio of it is read)
FIGURES = (("tx/s", ("tx_per_s",), "higher is better"),
           ("server µs/tx", ("server_cpu_us_per_tx",), "lower is better"),
           ("p50 ms", ("latency_ms", "p50"), "lower is better"),
           ("p99 ms", ("latency_ms", "p99"), "lower is better"),
           ("mean batch", ("commit", "mean_batch"), ""),
           ("client µs/tx", ("load_cpu_us_per_tx",), "the load client's own CPU per reply"),
           ("server anon MiB", ("server_anon_peak_mib",),
            "the server's own memory at its peak under the load (RssAnon, not the map)"),
           ("stop s", ("server_stop_s",), "SIGTERM to exit (a clean stop writes back)"))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--a-tree", default=str(REPO),
                        help="arm A's tree: a directory or a git revision (default: this tree)")
    parser.add_argument("--b-tree", default=str(REPO),
                        help="arm B's tree (default: this tree)")
    parser.add_argument("--a-args", default="", help="e2e_load arguments for arm A only")
    parser.add_argument("--b-args", default="", help="e2e_load arguments for arm B only")
    parser.add_argument("--pairs", type=int, default=4, help=f"pairs of runs (1..{PAIRS_MAX})")
    parser.add_argument("--json-out", help="write every run's result and the ratios here")
    parser.add_argument("common", nargs=argparse.REMAINDER,
                        help="after --: e2e_load arguments for both arms")
    return parser


def _figure(result: dict, path: tuple):
    value = result
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return float(value) if isinstance(value, (int, float)) else None


def _compiled_sources(root: pathlib.Path) -> dict:
    """Path under `root` -> contents of every file the extensions are built from."""
    sources = {path.relative_to(root): path.read_bytes()
               for pattern in COMPILED_SOURCES for path in (root / PACKAGE).rglob(pattern)}
    sources.update((pathlib.Path(name), (root / name).read_bytes())
                   for name in BUILD_FILES if (root / name).is_file())
    return sources


def _extension_libraries(root: pathlib.Path) -> list:
    """The compiled library of each `.pyx` under `root` (not leftovers of other builds)."""
    return [library for source in (root / PACKAGE).rglob("*.pyx")
            for library in source.parent.glob(f"{source.stem}.*.so")]


class Tree:
    """A tree to run e2e_load from: a directory as it is, or a revision checked out."""

    def __init__(self, spec: str, workdir: pathlib.Path, arm: str):
        self.worktree = None
        if pathlib.Path(spec).is_dir():
            self.path = pathlib.Path(spec).resolve()
            return
        try:
            revision = _git("rev-parse", "--verify", "--quiet", spec + "^{commit}").strip()
        except subprocess.CalledProcessError:
            raise SystemExit(f"{spec}: neither a directory nor a revision of {REPO}") from None
        # Named by arm too: both arms may be one revision (two sizes of books, say).
        self.path = workdir / f"tree-{arm}-{revision[:12]}"
        _git("worktree", "add", "--detach", str(self.path), revision)
        self.worktree = self.path
        try:
            self._extensions_from(REPO)
        except BaseException:
            self.remove()   # else git keeps a worktree whose directory is gone
            raise

    def _extensions_from(self, built: pathlib.Path) -> None:
        if _compiled_sources(self.path) == _compiled_sources(built):
            for library in _extension_libraries(built):
                shutil.copy2(library, self.path / library.relative_to(built))
            return
        subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=self.path,
                       check=True, stdout=subprocess.DEVNULL)

    def remove(self) -> None:
        if self.worktree is not None:
            _git("worktree", "remove", "--force", str(self.worktree))


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=REPO, check=True, capture_output=True,
                          text=True).stdout


def run_arm(tree: Tree, arm_args: list, common: list, out: pathlib.Path, label: str) -> dict:
    # From the caller's directory, so relative paths in the arguments mean what they typed;
    # e2e_load starts its server in its own tree.
    command = [sys.executable, str(tree.path / "bench" / "e2e_load.py"), *common, *arm_args,
               "--label", label, "--json-out", str(out)]
    print("$", shlex.join(command), flush=True)
    run = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = run.communicate(timeout=RUN_TIMEOUT_S)
    except BaseException:
        # SIGTERM: e2e_load stops the server it started; SIGKILL would leave it running.
        run.terminate()
        try:
            run.communicate(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            run.kill()
            run.communicate()
        raise
    if run.returncode != 0 or not out.exists():
        sys.stdout.write(stdout[-3000:])
        sys.stderr.write(stderr[-3000:])
        raise SystemExit(f"{label}: e2e_load exited {run.returncode}")
    result = json.loads(out.read_text())
    shown = ", ".join(f"{name} {value:.1f}" for name, path, _ in FIGURES
                      if (value := _figure(result, path)) is not None)
    print(f"  {label}: {shown}", flush=True)
    return result


def _reserved(arguments: list) -> bool:
    """Whether any argument is a reserved flag, also as `--flag=value` or abbreviated (which
    argparse accepts)."""
    names = [argument.split("=", 1)[0] for argument in arguments
             if argument.startswith("--") and len(argument) > 2]
    return any(flag.startswith(name) for name in names for flag in RESERVED_FLAGS)


def compare(results_a: list, results_b: list) -> dict:
    """Per figure: each pair's B/A and the median of those ratios, and each arm's median."""
    summary = {}
    for name, path, reading in FIGURES:
        a = [_figure(r, path) for r in results_a]
        b = [_figure(r, path) for r in results_b]
        if any(v is None for v in a + b):
            if any(v is not None for v in a + b):
                print(f"{name}: missing from some runs, not compared", file=sys.stderr)
            continue
        ratios = [vb / va if va else float("inf") for va, vb in zip(a, b)]
        summary[name] = {"a": a, "b": b, "ratios": ratios, "reading": reading,
                         "median_a": statistics.median(a), "median_b": statistics.median(b),
                         "median_ratio": statistics.median(ratios)}
    return summary


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    common = args.common[1:] if args.common[:1] == ["--"] else args.common
    if not 1 <= args.pairs <= PAIRS_MAX:
        print(f"--pairs: 1..{PAIRS_MAX}", file=sys.stderr)
        return 2
    if _reserved(common + shlex.split(args.a_args + " " + args.b_args)):
        print(f"{', '.join(RESERVED_FLAGS)} are this tool's to set", file=sys.stderr)
        return 2
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="abba-"))
    trees = []
    try:
        for arm, spec in (("A", args.a_tree), ("B", args.b_tree)):
            trees.append(Tree(spec, workdir, arm))
        a, b = trees
        arms = {"A": (a, shlex.split(args.a_args)), "B": (b, shlex.split(args.b_args))}
        results = {"A": [], "B": []}
        for pair in range(args.pairs):
            for name in ("AB" if pair % 2 == 0 else "BA"):
                tree, arm_args = arms[name]
                label = f"{name}{pair + 1}"
                results[name].append(run_arm(tree, arm_args, common,
                                             workdir / f"{label}.json", label))
        summary = compare(results["A"], results["B"])
        print(f"\nA: {args.a_tree} {args.a_args}\nB: {args.b_tree} {args.b_args}")
        print(f"both: {shlex.join(common)}")
        for name, figure in summary.items():
            pairs = "  ".join(f"{r:.2f}" for r in figure["ratios"])
            print(f"{name:14} A {figure['median_a']:10.1f}  B {figure['median_b']:10.1f}  "
                  f"B/A median {figure['median_ratio']:.3f}  ({pairs}) {figure['reading']}")
        if args.json_out:
            pathlib.Path(args.json_out).write_text(json.dumps(
                {"a": {"tree": args.a_tree, "args": args.a_args},
                 "b": {"tree": args.b_tree, "args": args.b_args}, "common": common,
                 "summary": summary, "runs": results}, indent=1))
        return 0
    finally:
        for tree in trees:
            try:
                tree.remove()
            except subprocess.CalledProcessError as error:
                print(f"{tree.path}: not removed ({error.stderr.strip()}); "
                      f"`git worktree prune` once it is gone", file=sys.stderr)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
