import json
import pathlib

import pytest

SHARED = pathlib.Path(__file__).resolve().parents[2] / "shared"
VECTORS_PATH = SHARED / "vectors" / "v1.json"


@pytest.fixture(scope="session")
def vectors():
    return json.loads(VECTORS_PATH.read_text())
