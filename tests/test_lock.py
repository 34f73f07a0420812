"""requirements/lock.txt covers what the project declares: every requirement of setup.py (its
test and bench extras too) and of pyproject.toml's build system is pinned there to one release
that satisfies it, with hashes, so `make install` installs the same files every time. A
requirement added without `make lock` fails here, not on a machine a month later."""

import importlib.metadata
import re
import tomllib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.paths import REPO_ROOT

LOCK = REPO_ROOT / "requirements" / "lock.txt"
# One pin: `name==version \` followed by its `--hash=sha256:...` lines.
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+) \\\n((?:    --hash=sha256:[0-9a-f]{64}"
                  r"(?: \\)?\n)+)", re.MULTILINE)


def locked() -> dict[str, Version]:
    text = LOCK.read_text()
    pins = {canonicalize_name(name): Version(version)
            for name, version, _ in _PIN.findall(text)}
    # Every requirement line is a pin with hashes: nothing unpinned or unhashed slips in.
    requirement_lines = [line for line in text.splitlines()
                         if line and not line.startswith((" ", "#"))]
    assert len(requirement_lines) == len(pins), requirement_lines
    return pins


def declared() -> list[Requirement]:
    """setup.py's requirements as installed (`make install` reinstalls when setup.py changes),
    and the build system's."""
    build = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    return ([Requirement(text) for text in importlib.metadata.requires("campus-card-switch")]
            + [Requirement(text) for text in build])


def test_every_declared_requirement_is_pinned_with_hashes_to_a_release_it_accepts():
    pins = locked()
    for requirement in declared():
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement} is not in {LOCK.name}: run `make lock`"
        assert pins[name] in requirement.specifier, (
            f"{LOCK.name} pins {name}=={pins[name]}, outside {requirement}: run `make lock`")


def test_the_install_is_the_locked_one():
    pins = locked()
    for name, version in pins.items():
        assert Version(importlib.metadata.version(name)) == version, name
