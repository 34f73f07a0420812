"""The repository stands on its own: no tracked file names a path outside the checkout.

A campus IT team or a terminal vendor clones this repository and gets nothing beside it, on
a machine unlike the one it was written on. So every tracked text file (a file holding a NUL
byte is binary and skipped) is held to these rules:

1. No absolute path into a machine's own working areas (`_MACHINE_AREAS` below: home and
   root directories, the top-level work area, `/tmp/`, `/mnt/`, ...). A path there names
   one machine's files (a checkout, a scratch directory) that no reader has.
   Allowed, because they name the same thing on every machine a reader runs this on: the
   operating system's interfaces and standard locations, e.g. `/dev/null`,
   `/proc/PID/stat` (the benchmarks read CPU time there), `/etc/systemd/...`,
   `/usr/lib/postgresql/*/bin` (Debian's package layout, where the benchmark finds
   PostgreSQL), `/usr/bin/env` in a shebang, and `/srv/switch` as the example data
   directory an operator chooses.
2. Recorded benchmark results (`bench/results/*.json`) carry no absolute path at all: they
   describe a run to readers on other machines, so their commands name files relative to
   the repository's root and programs by name (`bench/e2e_load.py`, `shown_path`).
3. A Markdown link (`[text](target)`) with a relative target resolves, against the linking
   file's folder, to something inside the checkout that exists; absolute targets are
   refused (on disk they mean the machine's root, not the repository's).
4. A `../` path anywhere else, resolved against the file's folder, stays inside the
   checkout (`../beside/...` from the root names a folder beside the repository).
5. Python code that climbs from `__file__` (`.parents[N]`, `.parent.parent`,
   `os.path.dirname(...)` nested) stays inside the checkout.

Outside a git checkout (an unpacked archive) there is no list of tracked files: skipped.
"""

import os
import re
import subprocess

import pytest

from tests.paths import REPO_ROOT

# This file spells out the forbidden paths in its own rules and examples.
_THIS_FILE = "tests/test_self_contained.py"

_MACHINE_AREAS = ("work", "home", "root", "Users", "tmp", "var/tmp", "mnt", "media")
# Not preceded by what continues a relative path, a variable or a URL (`a/tmp/`,
# `${DIR}/tmp/`, `https://host/home/`).
_NOT_A_PATH_CONTINUATION = r"(?<![\w.~/)}\]:-])"
_REST_OF_PATH = r"[^\s\"'`()\[\]<>,;\\]*"  # a backslash starts a JSON escape
_MACHINE_PATH = re.compile(_NOT_A_PATH_CONTINUATION + r"/(?:"
                           + "|".join(re.escape(area) for area in _MACHINE_AREAS) + r")/"
                           + _REST_OF_PATH)
_ANY_ABSOLUTE_PATH = re.compile(_NOT_A_PATH_CONTINUATION + r"/[A-Za-z_][\w.-]*/" + _REST_OF_PATH)
_MARKDOWN_LINK = re.compile(r"\[[^\]\n]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_URL_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")
_CLIMBING_PATH = re.compile(r"(?<![\w.~/-])((?:\.\./)+[^\s`'\")\]]*)")
_FILE_PARENTS = re.compile(r"__file__\)(?:\.resolve\(\)|\.absolute\(\))?"
                           r"(?:\.parents\[(\d+)\]|((?:\.parent)+))")
_FILE_DIRNAMES = re.compile(r"((?:os\.path\.dirname\(\s*)+)"
                            r"(?:os\.path\.(?:abspath|realpath)\(\s*)?__file__")


def _inside(path) -> bool:
    root = os.path.realpath(REPO_ROOT)
    return os.path.commonpath([root, os.path.realpath(path)]) == root


def machine_paths(text: str) -> list[str]:
    return [match.group(0) for match in _MACHINE_PATH.finditer(text)]


def absolute_paths(text: str) -> list[str]:
    return [match.group(0) for match in _ANY_ABSOLUTE_PATH.finditer(text)]


def bad_markdown_links(relative_file: str, text: str) -> list[str]:
    """Link targets of a Markdown file that leave the checkout or name nothing in it."""
    folder = REPO_ROOT / os.path.dirname(relative_file)
    bad = []
    for match in _MARKDOWN_LINK.finditer(text):
        target = match.group(1)
        if target.startswith("#") or _URL_SCHEME.match(target):
            continue
        path = target.split("#", 1)[0]
        if path.startswith("/"):
            bad.append(f"{target} (absolute)")
        elif not _inside(folder / path):
            bad.append(f"{target} (outside the repository)")
        elif not (folder / path).exists():
            bad.append(f"{target} (no such file)")
    return bad


def climbing_paths(relative_file: str, text: str) -> list[str]:
    """`../` paths that, from the file's folder, leave the checkout."""
    folder = REPO_ROOT / os.path.dirname(relative_file)
    return [match.group(1) for match in _CLIMBING_PATH.finditer(text)
            if not _inside(folder / match.group(1))]


def file_climbs(relative_file: str, text: str) -> list[str]:
    """Paths derived from `__file__` that climb above the repository's root."""
    depth = len(os.path.dirname(relative_file).split("/")) if os.path.dirname(relative_file) else 0
    bad = []
    for match in _FILE_PARENTS.finditer(text):
        # parents[N] is N folders above the file's own; `.parent` k times is k - 1 above.
        climbed = int(match.group(1)) if match.group(1) is not None \
            else match.group(2).count(".parent") - 1
        if climbed > depth:
            bad.append(match.group(0))
    for match in _FILE_DIRNAMES.finditer(text):
        if match.group(1).count("dirname") - 1 > depth:
            bad.append(match.group(0))
    return bad


def _tracked_text_files() -> dict[str, str]:
    try:
        listing = subprocess.run(["git", "-C", str(REPO_ROOT), "ls-files", "-z"],
                                 capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as error:
        pytest.skip(f"git is not available: {error}")
    if listing.returncode != 0 or not listing.stdout:
        pytest.skip("not a git checkout: no list of tracked files")
    files = {}
    for name in listing.stdout.decode().split("\0"):
        path = REPO_ROOT / name
        if not name or name == _THIS_FILE or not path.is_file():
            continue  # a file deleted in the working tree but not yet in the index
        data = path.read_bytes()
        if b"\0" not in data:
            files[name] = data.decode("utf-8", errors="replace")
    return files


@pytest.fixture(scope="module")
def tracked():
    return _tracked_text_files()


def _report(offences: list[str]) -> str:
    return "paths outside the repository:\n  " + "\n  ".join(offences)


def _per_line(files: dict[str, str], find) -> list[str]:
    offences = []
    for name, text in files.items():
        for number, line in enumerate(text.splitlines(), start=1):
            offences += [f"{name}:{number}: {found}" for found in find(name, line)]
    return offences


def test_no_tracked_file_names_a_machines_own_paths(tracked):
    offences = _per_line(tracked, lambda name, line: machine_paths(line))
    assert not offences, _report(offences)


def test_recorded_results_carry_no_absolute_path(tracked):
    results = {name: text for name, text in tracked.items()
               if name.startswith("bench/results/") and name.endswith(".json")}
    assert results, "bench/results/*.json are tracked"
    offences = _per_line(results, lambda name, line: absolute_paths(line))
    assert not offences, _report(offences)


def test_markdown_links_stay_inside_and_lead_somewhere(tracked):
    offences = []
    for name, text in tracked.items():
        if name.endswith(".md"):
            offences += [f"{name}: {bad}" for bad in bad_markdown_links(name, text)]
    assert not offences, _report(offences)


def test_no_relative_path_climbs_out_of_the_repository(tracked):
    offences = _per_line(tracked, climbing_paths)
    for name, text in tracked.items():
        if name.endswith(".py"):
            offences += [f"{name}: {bad}" for bad in file_climbs(name, text)]
    assert not offences, _report(offences)


# ------------------------------------------------------------------ the rules themselves
def test_machine_paths_are_found_and_system_locations_are_not():
    assert machine_paths('VECTORS = Path("/home/alice/onecard/tests/vectors/v1.json")') == [
        "/home/alice/onecard/tests/vectors/v1.json"]
    assert machine_paths("--log-prefix=/tmp/pg-bench-1/pgbench_16") == [
        "/tmp/pg-bench-1/pgbench_16"]
    assert machine_paths("cd /root/switch && make") == ["/root/switch"]
    for allowed in ("open('/dev/null')", 'open(f"/proc/{pid}/stat")', "/etc/systemd/system/",
                    'glob("/usr/lib/postgresql/*/bin/postgres")', "--data /srv/switch",
                    "#!/usr/bin/env bash", "bench/tmp/x", "${TMPDIR}/tmp/x",
                    "https://example.org/home/page"):
        assert machine_paths(allowed) == [], allowed


def test_results_allow_no_absolute_path_but_relative_ones():
    assert absolute_paths('"command": "/usr/bin/taskset -c 1 pgbench"') == ["/usr/bin/taskset"]
    assert absolute_paths('"results_dir": "bench/results", "rate": "tx/s"') == []


def test_markdown_links_are_judged_from_the_linking_files_folder():
    assert bad_markdown_links("README.md", "[c](../beside/PROTOCOL.md)") == [
        "../beside/PROTOCOL.md (outside the repository)"]
    assert bad_markdown_links("README.md", "[p](docs/PROTOCOL.md#2-sessions)") == []
    assert bad_markdown_links("docs/FORWARDING.md", "[e](../examples/switch.toml)") == []
    assert bad_markdown_links("docs/FORWARDING.md", "[e](examples/switch.toml)") == [
        "examples/switch.toml (no such file)"]
    assert bad_markdown_links("README.md", "[a](/docs/PROTOCOL.md)") == [
        "/docs/PROTOCOL.md (absolute)"]
    assert bad_markdown_links("README.md", "[w](https://example.org/x) [s](#layout)") == []


def test_climbing_paths_and_file_parents_are_judged_from_the_files_folder():
    assert climbing_paths("README.md", "read `../beside/PROTOCOL.md`") == [
        "../beside/PROTOCOL.md"]
    assert climbing_paths("terminals-sim/README.md", "see ../docs/PROTOCOL.md") == []
    assert file_climbs("tests/conftest.py",
                       'BESIDE = pathlib.Path(__file__).resolve().parents[2] / "beside"') == [
        "__file__).resolve().parents[2]"]
    assert file_climbs("tests/paths.py", "pathlib.Path(__file__).resolve().parents[1]") == []
    assert file_climbs("bench/run_e2e.py", "pathlib.Path(__file__).resolve().parent.parent") == []
    assert file_climbs("bench/run_e2e.py", "Path(__file__).parent.parent.parent") == [
        "__file__).parent.parent.parent"]
    nested = "os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))"
    assert file_climbs("terminals-sim/onecard_sim/cli.py", nested) == []
    assert file_climbs("terminals-sim/cli.py", nested) != []
