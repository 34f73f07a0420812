"""Review: an accept() error outside the four resource errnos ends serve() (the process);
trio's own listeners ignore ECONNABORTED/EPROTO/EPERM (a peer that resets in the accept
queue, a firewall)."""
import errno

import trio

from switch.shell import server as server_module
from tests.shell.harness import Switch


async def test_econnaborted_at_accept_does_not_end_the_switch(tmp_path, nursery, monkeypatch):
    switch = await Switch(tmp_path / "d").start(nursery)
    real_accept = server_module.accept
    calls = []

    async def flaky_accept(listener):
        calls.append(1)
        if len(calls) == 1:
            raise OSError(errno.ECONNABORTED, "Software caused connection abort")
        return await real_accept(listener)

    monkeypatch.setattr(server_module, "accept", flaky_accept)
    # the accept task is already parked in the real accept: one connection to cycle it
    s = await trio.open_tcp_stream("127.0.0.1", switch.port)
    await s.aclose()
    await trio.sleep(0.3)
    assert not switch._finished.is_set(), "serve() ended"
    assert (await switch.admin.request({"t": "ping"}))["code"] == "ok"
    await switch.stop()
