import pytest

from tests.shell.harness import Switch


@pytest.fixture
async def switch(tmp_path, nursery):
    instance = await Switch(tmp_path / "data").start(nursery)
    yield instance
    await instance.stop()
