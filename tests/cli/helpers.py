"""What every operator mistake must look like from outside, and the admin command line."""

import subprocess
import sys


def one_line_error(result, *expected, usage=False):
    """Exit 2, no traceback, and a last stderr line holding each expected text: the only
    line, starting `error: `, unless it is argparse's usage error (`usage=True`)."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    if not usage:
        assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for text in expected:
        assert text in lines[-1], (text, result.stderr)
    return lines[-1]


def admin(connect, data, *words, before=()):
    """`python -m switch admin` signed on as the data dir's admin; `before` goes ahead of
    the connection options."""
    return subprocess.run([sys.executable, "-m", "switch", "admin", *before, "--connect",
                           connect, "--data", str(data), *words], capture_output=True,
                          text=True, timeout=120)
