"""Where the tests find the checkout they run from: every path is derived from this file."""

import json
import pathlib

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
VECTORS_V1 = REPO_ROOT / "tests" / "vectors" / "v1.json"


def load_vectors() -> dict:
    """The wire contract's test vectors (docs/PROTOCOL.md §8), as stored in this checkout."""
    return json.loads(VECTORS_V1.read_text())
