"""An in-process switch on 127.0.0.1:0 with a fake clock, and helpers to provision it."""

import msgpack
import trio

from switch import limits
from switch.shell.client import Client
from switch.codec import ClientSession, FrameDecoder
from switch.clock import FakeClock
from switch.config import default_config
from switch.cli.datadir import open_data_dir, read_admin_key
from switch.ledger import Ledger
from switch.shell.server import Server
from switch.shell.transport import open_listeners


class Switch:
    def __init__(self, path, config=None, clock=None):
        self.path = str(path)
        self.config = config or default_config()
        self.clock = clock or FakeClock()
        self.store = open_data_dir(self.path)
        self.ledger = Ledger(self.store, self.config, self.clock)
        self.server = Server(self.store, self.ledger, self.config, self.clock)
        self.port = None
        self._scope = None
        self.clients: list[Client] = []

    async def start(self, nursery):
        listeners = open_listeners("127.0.0.1", 0, 128)
        self.port = listeners[0].getsockname()[1]

        self._finished = trio.Event()

        async def run(task_status=trio.TASK_STATUS_IGNORED):
            try:
                with trio.CancelScope() as scope:
                    self._scope = scope
                    await self.server.serve(listeners, task_status=task_status)
            finally:
                self._finished.set()

        await nursery.start(run)
        self.admin = await self.connect("admin", read_admin_key(self.path))
        return self

    async def connect(self, who, key) -> Client:
        client = await Client.connect("127.0.0.1", self.port, who, key)
        self.clients.append(client)
        return client

    async def stop(self):
        """Drain like SIGTERM does, so no commit is running when the store closes."""
        for client in self.clients:
            await client.aclose()
        self.server.drain()
        with trio.move_on_after(15):
            await self._finished.wait()
        if not self._finished.is_set():
            self._scope.cancel()
            await self._finished.wait()
        self.store.close()

    # ------------------------------------------------------------- provisioning
    async def ok(self, client, message):
        reply = await client.request(message)
        assert reply["code"] == "ok", (message, reply)
        return reply

    async def terminal(self, who, school="WH", kind="pos") -> Client:
        reply = await self.ok(self.admin, {"t": "add_credential", "who": who, "role": "terminal",
                                           "school": school, "kind": kind, "id": f"add-{who}"})
        return await self.connect(who, reply["key"])

    async def service(self, who, school=None) -> Client:
        message = {"t": "add_credential", "who": who, "role": "service", "id": f"add-{who}"}
        if school:
            message["school"] = school
        reply = await self.ok(self.admin, message)
        return await self.connect(who, reply["key"])

    async def person(self, account, card=None, school="WH", balance=0, id_last6="123456"):
        await self.ok(self.admin, {"t": "open_account", "account": account, "school": school,
                                   "kind": "person", "holder": "测试", "id_last6": id_last6,
                                   "id": f"open-{account}"})
        if card:
            await self.ok(self.admin, {"t": "issue_card", "account": account, "card": card,
                                       "id": f"card-{card}"})
        if balance:
            await self.ok(self.admin, {"t": "credit", "account": account, "amount": balance,
                                       "source": "test", "id": f"seed-{account}"})


# ------------------------------------------------------------- raw sessions
async def next_payloads(stream, decoder, count: int = 1, within_s: float = 10) -> list[bytes]:
    """Frame payloads until `count` have come or the switch closed (then fewer)."""
    payloads = []
    with trio.fail_after(within_s):
        while len(payloads) < count:
            data = await stream.receive_some(limits.receive_size_bytes)
            if not data:
                break
            payloads += decoder.feed(data)
    return payloads


def unverified_body(payload: bytes) -> dict:
    """A frame's message without checking its tag (error frames before a session)."""
    return msgpack.unpackb(payload[:-limits.tag_size_bytes], raw=False)


async def signed_on(port: int, who: str, key: bytes):
    """(stream, session, decoder) after a hello: for frames a Client would not send."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    session = ClientSession(who, key)
    await stream.send_all(session.hello_frame(0))
    decoder = FrameDecoder()
    payloads = await next_payloads(stream, decoder)
    assert payloads, "hello refused"
    session.receive_hello_reply(payloads[0])
    return stream, session, decoder
