"""One signed-on connection over a raw trio socket, framed and signed by `switch.codec`.

No task per request and no reader task: the owner sends coalesced frames with `send`
and collects whatever has arrived with `receive(deadline)`.
"""

import math
import socket as _socket
import time

import trio

from switch.codec import ClientSession, FrameDecoder, ProtocolError

from onecard_sim import limits

CONNECTION_CODES = frozenset({"unauthenticated", "version_unsupported", "mac_invalid",
                              "seq_invalid", "frame_invalid", "frame_too_large"})


class ConnectionLost(Exception):
    """The connection is gone (reset, closed, refused, error frame): reconnect."""

    def __init__(self, reason: str, code: str | None = None):
        super().__init__(reason)
        self.reason = reason
        self.code = code   # the switch's error-frame code, when it sent one


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class Wire:
    """A signed-on connection. Sends go straight to the non-blocking socket and wait only
    when the kernel buffer is full; a receive waits for readability once and reads once,
    so a request costs one pass through trio's scheduler, not three."""

    __slots__ = ("raw", "sock", "session", "decoder", "hello_reply", "early")

    def __init__(self, raw, sock, session: ClientSession, decoder: FrameDecoder):
        self.raw = raw          # the stdlib socket, non-blocking
        self.sock = sock        # trio's wrapper of the same descriptor
        self.session = session
        self.decoder = decoder
        self.hello_reply: dict = {}
        self.early: list = []   # frames that came in the same read as the hello reply

    @classmethod
    async def open(cls, address: tuple[str, int], who: str, key: bytes,
                   timeout_s: float = limits.connect_timeout_s) -> "Wire":
        """Connect and sign on; ConnectionLost on any failure (the caller retries)."""
        raw = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)
        try:
            raw.setblocking(False)
            raw.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
            sock = trio.socket.from_stdlib_socket(raw)
            wire = cls(raw, sock, ClientSession(who, key), FrameDecoder())
            with trio.fail_after(timeout_s):
                await sock.connect(address)
                await wire.send(wire.session.hello_frame(_now_ms()))
                payloads = []
                while not payloads:
                    data = await sock.recv(limits.receive_size_bytes)
                    if not data:
                        raise ConnectionLost("closed during hello")
                    payloads = wire.decoder.feed(data)
            wire.hello_reply = wire.session.receive_hello_reply(payloads[0])
            wire.early = [wire.session.receive(p) for p in payloads[1:]]
            return wire
        except ConnectionLost:
            raw.close()
            raise
        except ProtocolError as error:
            raw.close()
            raise ConnectionLost(f"hello refused: {error.code}", error.code) from None
        except trio.TooSlowError:
            raw.close()
            raise ConnectionLost("hello timed out") from None
        except OSError as error:
            raw.close()
            raise ConnectionLost(f"connect: {error.strerror or error}") from None
        except BaseException:
            raw.close()
            raise

    def request_frame(self, message: dict) -> tuple[int, bytes]:
        return self.session.request_frame(message)

    async def send(self, data: bytes) -> None:
        try:
            try:
                sent = self.raw.send(data)
            except BlockingIOError:
                sent = 0
            if sent == len(data):
                return
            view = memoryview(data)[sent:]
            while view:
                sent = await self.sock.send(view)
                view = view[sent:]
        except OSError as error:
            raise ConnectionLost(f"send: {error.strerror or error}") from None

    async def receive(self, deadline: float) -> list:
        """Every message that has arrived, waiting until `deadline` (trio time) for some.

        An empty list means the deadline passed (math.inf: no deadline).
        """
        if self.early:
            messages, self.early = self.early, []
            return messages
        raw = self.raw
        while True:
            if deadline == math.inf:
                await trio.lowlevel.wait_readable(raw)
            else:
                with trio.move_on_at(deadline) as scope:
                    await trio.lowlevel.wait_readable(raw)
                if scope.cancelled_caught:
                    return []
            try:
                data = raw.recv(limits.receive_size_bytes)
                break
            except BlockingIOError:
                continue
            except OSError as error:
                raise ConnectionLost(f"receive: {error.strerror or error}") from None
        if not data:
            raise ConnectionLost("closed by the switch")
        try:
            payloads = self.decoder.feed(data)
            receive = self.session.receive
            messages = [receive(payload) for payload in payloads]
        except ProtocolError as error:
            raise ConnectionLost(f"protocol: {error}", error.code) from None
        for message in messages:
            if message.get("t") == "error" and message.get("code") in CONNECTION_CODES:
                raise ConnectionLost(f"error frame {message.get('code')}", message.get("code"))
        return messages

    def close(self) -> None:
        self.sock.close()


async def pipeline(wire: Wire, messages: list, depth: int = limits.provision_pipeline_depth,
                   timeout_s: float = 120.0) -> list:
    """Send `messages` with up to `depth` in flight; replies in request order.

    A `busy` reply is resent with the same id (`busy` is not remembered by the switch).
    """
    replies: list = [None] * len(messages)
    in_flight: dict[int, int] = {}
    queue = list(range(len(messages) - 1, -1, -1))   # popped from the end: request order
    with trio.fail_after(timeout_s):
        while queue or in_flight:
            frames = []
            while queue and len(in_flight) < depth:
                index = queue.pop()
                seq, frame = wire.request_frame(messages[index])
                in_flight[seq] = index
                frames.append(frame)
            if frames:
                await wire.send(b"".join(frames))
            retry = []
            for reply in await wire.receive(math.inf):
                index = in_flight.pop(reply.get("re"), None)
                if index is None:
                    continue   # a push
                if reply.get("code") == "busy":
                    retry.append(index)
                else:
                    replies[index] = reply
            if retry:
                await trio.sleep(limits.busy_retry_s)
                queue.extend(sorted(retry, reverse=True))
    return replies
