"""The ceiling of the network path: a bare server that frames, checks tags, decodes and
answers with a tag, and does nothing else (no state, no disk, no metrics).

    .venv/bin/python bench/bare_server.py --credentials FILE --listen 127.0.0.1:0
    .venv/bin/python bench/bare_server.py --credentials FILE --loop uvloop

It speaks docs/PROTOCOL.md §1-2 with the switch's own sans-IO codec (`switch/codec/`), so
bench/e2e_load.py runs against it unchanged: a `hello` from any credential in FILE (JSON,
{"terminals": [[who, key hex], ...]}) opens a session with direction keys; every request frame
has its tag verified, its body decoded and its `seq` checked, and is answered
{"t": t, "re": seq, "code": "ok", "txn": n, "balance": 0, "available": 0, "account": "X"}.
Two event loops, the same codec and replies:
- `--loop trio` (the switch's own): written the fastest way trio allows, non-blocking stdlib
  sockets under trio.lowlevel.wait_readable/wait_writable (as switch/shell/transport.py), one
  task per connection, every frame of one receive parsed and the replies coalesced into one send;
- `--loop uvloop`: an asyncio Protocol on uvloop (libuv), callbacks instead of tasks, every
  frame of one `data_received` answered with one write: what Python itself can do, a second
  ceiling that the switch is not built on.
Prints `listening on HOST:PORT`; stops on SIGTERM/SIGINT or after --lifetime seconds.
"""

import argparse
import json
import pathlib
import signal
import socket
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import trio  # noqa: E402

from switch import limits  # noqa: E402
from switch.codec import FrameDecoder, ProtocolError, ServerSession  # noqa: E402
from switch.config.endpoints import host_port_argument  # noqa: E402

LIFETIME_S_DEFAULT = 3600.0          # a forgotten bare server stops by itself
HELLO_TIMEOUT_S = limits.hello_timeout_s
RECEIVES_BETWEEN_CHECKPOINTS = 8     # as switch/shell/transport.py: a flooding peer cannot starve the rest
SEND_BUFFER_BYTES_MAX = limits.send_buffer_bytes_max


def read_credentials(path) -> dict[str, bytes]:
    document = json.loads(pathlib.Path(path).read_text())
    return {who: bytes.fromhex(key) for who, key in document["terminals"]}


class Counters:
    __slots__ = ("txn", "connections", "refused", "connections_max")

    def __init__(self):
        self.txn = 0
        self.connections = 0
        self.refused = 0
        self.connections_max = limits.connections_max


def open_session(session: ServerSession, hello) -> bytes:
    """The hello reply of both loops: a terminal, no blacklist."""
    return session.accept_hello(
        hello, {"role": "terminal", "time": time.time_ns() // 1_000_000, "blacklist": 0})


def answer(session: ServerSession, payloads, counters: Counters) -> bytes:
    """Every request of one receive checked (tag, body, seq) and answered, in one buffer."""
    receive_request = session.receive_request
    encode_reply = session.encode_reply
    frames = []
    for payload in payloads:
        request = receive_request(payload)
        counters.txn += 1
        frames.append(encode_reply({
            "t": request.message.get("t"), "re": request.seq, "code": "ok",
            "txn": counters.txn, "balance": 0, "available": 0, "account": "X"}))
    return frames[0] if len(frames) == 1 else b"".join(frames)


async def _send_all(sock: socket.socket, data: bytes) -> None:
    while data:
        try:
            sent = sock.send(data)
        except BlockingIOError:
            sent = 0
        data = data[sent:]
        if data:
            await trio.lowlevel.wait_writable(sock)


async def serve_connection(sock: socket.socket, keys: dict[str, bytes], counters: Counters) -> None:
    session = ServerSession()
    decoder = FrameDecoder()
    recv = sock.recv
    receive_size = limits.receive_size_bytes
    wait_readable = trio.lowlevel.wait_readable
    try:
        # ---- hello (docs/PROTOCOL.md §2.1), bounded like the switch's
        payloads = []
        with trio.move_on_after(HELLO_TIMEOUT_S):
            while not payloads:
                try:
                    data = recv(receive_size)
                except BlockingIOError:
                    await wait_readable(sock)
                    continue
                if not data:
                    return
                payloads = decoder.feed(data)
        if not payloads:
            return
        hello = session.receive_hello(payloads[0], keys.get)
        await _send_all(sock, open_session(session, hello))
        backlog = payloads[1:]

        # ---- requests: everything one receive holds, answered with one send
        ready_receives = 0
        while True:
            if backlog:
                data = answer(session, backlog, counters)
                try:
                    sent = sock.send(data)
                except BlockingIOError:
                    sent = 0
                if sent < len(data):
                    await _send_all(sock, data[sent:])
            try:
                data = recv(receive_size)
            except BlockingIOError:
                ready_receives = 0
                await wait_readable(sock)
                backlog = ()
                continue
            if not data:
                return
            ready_receives += 1
            if ready_receives >= RECEIVES_BETWEEN_CHECKPOINTS:
                ready_receives = 0
                await trio.lowlevel.checkpoint()
            backlog = decoder.feed(data)
    except ProtocolError as error:
        try:
            await _send_all(sock, session.encode_error(error))
        except OSError:
            pass
    except OSError:
        pass
    finally:
        counters.connections -= 1
        trio.lowlevel.notify_closing(sock)
        sock.close()


async def serve(listener: socket.socket, keys: dict[str, bytes], lifetime_s: float,
                connections_max: int, task_status=trio.TASK_STATUS_IGNORED) -> None:
    counters = Counters()
    async with trio.open_nursery() as nursery:
        nursery.cancel_scope.deadline = trio.current_time() + lifetime_s

        async def stop_on_signal(task_status=trio.TASK_STATUS_IGNORED):
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                task_status.started()
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    return

        await nursery.start(stop_on_signal)
        task_status.started()
        while True:
            try:
                sock, _ = listener.accept()
            except BlockingIOError:
                await trio.lowlevel.wait_readable(listener)
                continue
            except OSError:
                # Out of descriptors: existing sessions go on; try again shortly.
                await trio.sleep(0.1)
                continue
            if counters.connections >= connections_max:
                counters.refused += 1
                sock.close()
                continue
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            counters.connections += 1
            nursery.start_soon(serve_connection, sock, keys, counters)


class BareProtocol:
    """One connection under asyncio: the same session, checks and replies as serve_connection.

    (asyncio.Protocol's interface, without subclassing it: asyncio is imported only with
    --loop uvloop.)"""

    def __init__(self, keys: dict[str, bytes], counters: Counters, loop):
        self.keys = keys
        self.counters = counters
        self.loop = loop
        self.session = ServerSession()
        self.decoder = FrameDecoder()
        self.transport = None
        self.hello_timer = None
        self.counted = False

    def connection_made(self, transport) -> None:
        self.transport = transport
        if self.counters.connections >= self.counters.connections_max:
            self.counters.refused += 1
            transport.abort()
            return
        self.counters.connections += 1
        self.counted = True
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.hello_timer = self.loop.call_later(HELLO_TIMEOUT_S, transport.abort)

    def data_received(self, data: bytes) -> None:
        session = self.session
        try:
            payloads = self.decoder.feed(data)
            if payloads and self.hello_timer is not None:
                hello = session.receive_hello(payloads[0], self.keys.get)
                self.hello_timer.cancel()
                self.hello_timer = None
                self.transport.write(open_session(session, hello))
                payloads = payloads[1:]
            if payloads:
                self.transport.write(answer(session, payloads, self.counters))
        except ProtocolError as error:
            self.transport.write(session.encode_error(error))
            self.transport.close()

    # As the trio server waits for the socket to be writable before it reads on: a client
    # that does not read its replies stops being read.
    def pause_writing(self) -> None:
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.transport.resume_reading()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, error) -> None:
        if self.hello_timer is not None:
            self.hello_timer.cancel()
        if self.counted:
            self.counters.connections -= 1


def serve_uvloop(listener: socket.socket, keys: dict[str, bytes], lifetime_s: float,
                 connections_max: int, listening: str) -> None:
    import asyncio
    import uvloop

    async def run() -> None:
        loop = asyncio.get_running_loop()
        counters = Counters()
        counters.connections_max = connections_max
        stopped = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stopped.set)
        server = await loop.create_server(lambda: BareProtocol(keys, counters, loop),
                                          sock=listener, backlog=limits.listen_backlog)
        print(listening, flush=True)
        try:
            await asyncio.wait_for(stopped.wait(), lifetime_s)
        except asyncio.TimeoutError:
            pass
        server.close()

    uvloop.run(run())


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--credentials", required=True, help="JSON {\"terminals\": [[who, key hex]]}")
    parser.add_argument("--listen", type=host_port_argument(), default=("127.0.0.1", 0),
                        help="HOST:PORT (port 0: any free port)")
    parser.add_argument("--lifetime", type=float, default=LIFETIME_S_DEFAULT,
                        help="stop after this many seconds in any case")
    parser.add_argument("--connections-max", type=int, default=limits.connections_max)
    parser.add_argument("--loop", choices=("trio", "uvloop"), default="trio",
                        help="the event loop (uvloop: asyncio on libuv, the bench extra)")
    return parser


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    keys = read_credentials(args.credentials)
    host, port = args.listen
    listener = socket.create_server((host, port), backlog=limits.listen_backlog,
                                    reuse_port=False)
    listener.setblocking(False)
    bound_host, bound_port = listener.getsockname()[:2]
    listening = f"listening on {bound_host}:{bound_port}"
    if args.loop == "uvloop":
        try:
            serve_uvloop(listener, keys, args.lifetime, args.connections_max, listening)
        finally:
            listener.close()
        return 0

    async def run():
        async with trio.open_nursery() as nursery:
            await nursery.start(serve, listener, keys, args.lifetime, args.connections_max)
            print(listening, flush=True)

    try:
        trio.run(run)
    finally:
        listener.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
