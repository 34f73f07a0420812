"""README's set-up names the operating system's packages the install needs, by their Debian
names: `make install` creates a venv (its pip comes from `ensurepip`, which Debian packages
apart from Python) and compiles the Cython core (against `Python.h`, packaged apart too)."""

import os
import re
import shutil
import subprocess

import pytest

from tests.paths import REPO_ROOT


def setup_packages() -> set[str]:
    """The packages of README's `apt-get install` line under "Set-up"."""
    text = (REPO_ROOT / "README.md").read_text()
    setup = text[text.index("## Set-up"):text.index("## Running it")]
    (line,) = re.findall(r"apt-get install ([^\n#]+)", setup)
    return set(line.split())


def test_the_setup_names_the_compiler_make_and_the_python_it_builds_with():
    assert {"python3.11", "python3.11-venv", "libpython3.11-dev", "gcc", "libc6-dev",
            "make"} <= setup_packages()
    text = (REPO_ROOT / "README.md").read_text()
    # The two set-up commands stay what they are.
    assert "    make demo " in text and "    make test " in text


def _package_of(path: str) -> str:
    owner = subprocess.run(["dpkg-query", "-S", path], capture_output=True, text=True)
    assert owner.returncode == 0, owner.stderr
    return owner.stdout.split(":", 1)[0]


DEBIAN_PYTHON = "/usr/bin/python3.11"


@pytest.mark.skipif(shutil.which("dpkg-query") is None or not os.path.exists(DEBIAN_PYTHON),
                    reason="not a Debian system with its python3.11")
def test_the_packages_named_are_the_ones_holding_what_the_install_uses():
    """Debian's python3.11 (whatever Python runs these tests): where its `Python.h` and its
    `ensurepip` are, and which packages hold them."""
    where = subprocess.run(
        [DEBIAN_PYTHON, "-c", "import importlib.util, os, sysconfig; "
         "print(os.path.join(sysconfig.get_config_var('INCLUDEPY'), 'Python.h')); "
         "print(os.path.dirname(importlib.util.find_spec('ensurepip').origin))"],
        capture_output=True, text=True)
    if where.returncode != 0:
        pytest.skip(f"{DEBIAN_PYTHON} has no ensurepip: {where.stderr.strip()}")
    python_h, ensurepip = where.stdout.split()
    if not os.path.exists(python_h):
        pytest.skip(f"{python_h} is not installed here")
    named = setup_packages()
    assert _package_of(python_h) in named
    assert _package_of(ensurepip) in named
