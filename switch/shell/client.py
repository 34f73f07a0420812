"""A trio client for the switch: what the demo, the tests and the operator CLI speak with.

It is a thin shell over `codec.ClientSession`: pipelined requests, replies matched
by `re`, pushes collected.
"""

import time

import trio

from switch import limits
from switch.codec import ClientSession, FrameDecoder, ProtocolError


async def pipeline_through_busy(client, messages: list[dict], depth: int,
                                reply_timeout_s: float = float("inf"), on_busy=None) -> list:
    """Every message's reply, in order, sent `depth` at a time through `client.pipeline`
    (each batch within `reply_timeout_s`); one answered `busy` did nothing and is sent again,
    same id, after a pause that doubles (`on_busy(count, pause_s)` is told first), until the
    pauses reach `client_busy_wait_s_max`: then its `busy` reply stands."""
    replies: list = [None] * len(messages)
    unanswered = list(range(len(messages)))
    pause_s, waited_s = limits.client_busy_pause_first_s, 0.0
    while True:
        for start in range(0, len(unanswered), depth):
            indexes = unanswered[start:start + depth]
            with trio.fail_after(reply_timeout_s):
                answered = await client.pipeline([messages[index] for index in indexes])
            for index, reply in zip(indexes, answered):
                replies[index] = reply
        unanswered = [index for index in unanswered if replies[index].get("code") == "busy"]
        if not unanswered or waited_s >= limits.client_busy_wait_s_max:
            return replies
        if on_busy is not None:
            on_busy(len(unanswered), pause_s)
        await trio.sleep(pause_s)
        waited_s += pause_s
        pause_s = min(2 * pause_s, limits.client_busy_pause_longest_s)


class SwitchError(Exception):
    """The switch closed the session with a connection-level error."""

    def __init__(self, message: dict):
        super().__init__(message.get("code"))
        self.message = message
        self.code = message.get("code")


class Client:
    def __init__(self, stream, session: ClientSession):
        self.stream = stream
        self.session = session
        self.decoder = FrameDecoder()
        self.hello_reply: dict = {}
        self.pushes: list = []
        self.errors: list = []
        self._pending: dict[int, dict] = {}
        self._buffered: list = []

    @classmethod
    async def connect(cls, host: str, port: int, who: str, key: bytes) -> "Client":
        stream = await trio.open_tcp_stream(host, port)
        client = cls(stream, ClientSession(who, key))
        try:
            await stream.send_all(client.session.hello_frame(time.time_ns() // 1_000_000))
            payload = await client._next_payload()
            client.hello_reply = client.session.receive_hello_reply(payload)
        except BaseException:
            await stream.aclose()
            raise
        return client

    async def _next_payload(self) -> bytes:
        while True:
            if self._buffered:
                return self._buffered.pop(0)
            data = await self.stream.receive_some(limits.receive_size_bytes)
            if not data:
                raise trio.EndOfChannel("switch closed the connection")
            self._buffered.extend(self.decoder.feed(data))

    async def send(self, message: dict) -> int:
        seq, frame = self.session.request_frame(message)
        await self.stream.send_all(frame)
        return seq

    async def receive(self) -> dict:
        """The next reply (pushes are kept in `self.pushes`); raises SwitchError on error frames."""
        while True:
            message = self.session.receive(await self._next_payload())
            if "push" in message:
                self.pushes.append(message)
                continue
            if message.get("t") == "error" and message.get("code") in _CONNECTION_CODES:
                self.errors.append(message)
                raise SwitchError(message)
            return message

    async def request(self, message: dict) -> dict:
        seq = await self.send(message)
        return await self.reply_to(seq)

    async def reply_to(self, seq: int) -> dict:
        if seq in self._pending:
            return self._pending.pop(seq)
        while True:
            message = await self.receive()
            if message.get("re") == seq:
                return message
            self._pending[message.get("re")] = message

    async def pipeline(self, messages: list[dict]) -> list[dict]:
        """Send all, then collect every reply; returned in request order."""
        frames = []
        seqs = []
        for message in messages:
            seq, frame = self.session.request_frame(message)
            seqs.append(seq)
            frames.append(frame)
        await self.stream.send_all(b"".join(frames))
        return [await self.reply_to(seq) for seq in seqs]

    async def load_blacklist(self, version: int = 0, cards=()) -> tuple[int, set]:
        """A terminal's catch-up from (`version`, `cards`): a delta, or the full list in
        pages (docs/PROTOCOL.md §4.13.1). Returns the new (version, cards)."""
        cards = set(cards)
        while True:
            reply = await self._blacklist_reply({"t": "blacklist", "since": version})
            if "full" not in reply:
                cards.update(reply["add"])
                cards.difference_update(reply["remove"])
                return reply["version"], cards
            first_version = reply["version"]
            cards = set(reply["full"])
            while reply["more"]:
                reply = await self._blacklist_reply({"t": "blacklist", "since": version,
                                                     "after": reply["full"][-1]})
                cards.update(reply["full"])
            version = first_version
            if reply["version"] == first_version:
                return version, cards
            # The list changed while paging: catch up from the first page's version.

    async def _blacklist_reply(self, message: dict) -> dict:
        reply = await self.request(message)
        if reply["code"] != "ok":
            raise ValueError(f"blacklist {message} answered {reply['code']}")
        return reply

    async def aclose(self) -> None:
        await self.stream.aclose()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.aclose()


_CONNECTION_CODES = frozenset({"unauthenticated", "version_unsupported", "mac_invalid",
                               "seq_invalid", "frame_invalid", "frame_too_large",
                               "busy"})    # an error frame `busy` ends the session (§1.4)

__all__ = ["Client", "SwitchError", "ProtocolError"]
