"""SIGTERM always drains and exits 0, whatever the sessions are doing at that moment (issue 12):
pipelined debits in flight, a session ended by a protocol error with replies still owed, a
credential revoked with requests queued."""

import signal
import subprocess
import sys

import pytest
import trio

from switch.shell.client import Client
from switch.cli.datadir import read_admin_key

pytestmark = pytest.mark.slow


def _start(data):
    return subprocess.Popen([sys.executable, "-m", "switch", "serve", "--data", str(data),
                             "--listen", "127.0.0.1:0", "--metrics", "off"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


async def _provision(port, admin_key, tills: int):
    admin = await Client.connect("127.0.0.1", port, "admin", admin_key)
    keys = {}
    for n in range(tills):
        reply = await admin.request({"t": "add_credential", "who": f"WH-POS-{n}",
                                     "role": "terminal", "school": "WH", "kind": "pos",
                                     "id": f"add-{n}"})
        keys[f"WH-POS-{n}"] = reply["key"]
    await admin.request({"t": "open_account", "account": "WH1", "school": "WH",
                         "kind": "person", "holder": "x", "id_last6": "123456", "id": "o"})
    await admin.request({"t": "issue_card", "account": "WH1", "card": "AAAA", "id": "c"})
    await admin.request({"t": "credit", "account": "WH1", "amount": 10_000_000,
                         "source": "s", "id": "f"})
    return admin, keys


async def _load(port, admin, keys, process):
    async def pipelining(who, key):
        client = await Client.connect("127.0.0.1", port, who, key)
        n = 0
        try:
            while True:
                await client.pipeline([{"t": "debit", "card": "AAAA", "amount": 1,
                                        "id": f"{who}-{n + k}"} for k in range(32)])
                n += 32
        except Exception:
            return  # the switch is draining: the connection goes away

    async def ends_with_replies_owed(who, key):
        client = await Client.connect("127.0.0.1", port, who, key)
        for k in range(40):
            await client.send({"t": "debit", "card": "AAAA", "amount": 1, "id": f"owed-{k}"})
        # A seq out of order ends the session while the 40 replies are still owed.
        await client.stream.send_all(client.session.raw_request_frame(
            {"t": "ping", "seq": 10_000}))

    async with trio.open_nursery() as nursery:
        who_revoked = "WH-POS-0"
        for who, key in keys.items():
            if who == "WH-POS-1":
                nursery.start_soon(ends_with_replies_owed, who, key)
            else:
                nursery.start_soon(pipelining, who, key)
        await trio.sleep(0.5)
        # Revoked while its session has requests queued.
        await admin.request({"t": "revoke_credential", "who": who_revoked, "id": "rv"})
        await trio.sleep(0.3)
        process.send_signal(signal.SIGTERM)
        with trio.move_on_after(20):
            while process.poll() is None:
                await trio.sleep(0.05)
        nursery.cancel_scope.cancel()


def test_sigterm_under_load_drains_and_exits_zero(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    process = _start(data)
    try:
        port = int(process.stdout.readline().strip().rpartition(":")[2])

        async def main():
            admin, keys = await _provision(port, read_admin_key(str(data)), 6)
            await _load(port, admin, keys, process)

        trio.run(main)
        assert process.wait(timeout=30) == 0, process.stderr.read()[-3000:]
        stderr = process.stderr.read()
        assert "Traceback" not in stderr, stderr[-3000:]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    audit = subprocess.run([sys.executable, "-m", "switch", "audit", "--data", str(data)],
                           capture_output=True, text=True)
    assert audit.returncode == 0 and "audit: sound" in audit.stdout, audit.stdout
