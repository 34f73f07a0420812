import pytest

from tests.paths import load_vectors


@pytest.fixture(scope="session")
def vectors():
    return load_vectors()
