"""Non-blocking stdlib sockets driven by trio's I/O waits: the fastest path trio allows.

Replies are written straight to the socket from the committer, without waking a
task per reply; only what the kernel will not take now is left to a writer task
that waits for the socket to become writable.
"""

import errno
import socket

import trio

from switch import limits


class PeerGone(Exception):
    """The peer closed or reset the connection."""


class Transport:
    __slots__ = ("sock", "_ready_receives", "closed")

    def __init__(self, sock: socket.socket):
        sock.setblocking(False)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        self.sock = sock
        self._ready_receives = 0
        self.closed = False

    def address(self) -> str:
        """The peer's address without its port: what per-address bounds count by."""
        try:
            return str(self.sock.getpeername()[0])
        except OSError:
            return "?"

    def peer(self) -> str:
        try:
            host, port = self.sock.getpeername()[:2]
            return f"{host}:{port}"
        except OSError:
            return "?"

    async def receive(self, max_bytes: int) -> bytes:
        """Bytes from the peer; b"" when it closed or reset."""
        while True:
            try:
                data = self.sock.recv(max_bytes)
            except BlockingIOError:
                self._ready_receives = 0
                await trio.lowlevel.wait_readable(self.sock)
                continue
            except OSError:
                return b""
            self._ready_receives += 1
            if self._ready_receives >= limits.receives_between_checkpoints:
                self._ready_receives = 0
                await trio.lowlevel.checkpoint()
            else:
                await trio.lowlevel.checkpoint_if_cancelled()
            return data

    def receive_now(self, max_bytes: int) -> bytes | None:
        """What the kernel holds now: None when nothing, b"" when the peer closed or reset."""
        try:
            return self.sock.recv(max_bytes)
        except BlockingIOError:
            return None
        except OSError:
            return b""

    def send_now(self, data: bytes) -> bytes:
        """Write what the kernel takes now; returns the rest. Raises PeerGone."""
        if self.closed:
            raise PeerGone()
        try:
            sent = self.sock.send(data)
        except BlockingIOError:
            return data
        except OSError as error:
            if error.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                return data
            raise PeerGone() from None
        return data[sent:] if sent < len(data) else b""

    async def send_all(self, data: bytes) -> None:
        while data:
            data = self.send_now(data)
            if data:
                await trio.lowlevel.wait_writable(self.sock)
        await trio.lowlevel.checkpoint_if_cancelled()

    async def wait_writable(self) -> None:
        await trio.lowlevel.wait_writable(self.sock)

    async def close_after_peer(self) -> None:
        """Close once the peer has had its last frames: stop writing (it reads them, then
        end of stream), read and discard whatever it still sends until it closes, or
        `limits.close_linger_bytes_max` or `limits.close_linger_s` pass, then close.
        Closing with unread bytes makes the kernel answer with a reset, which destroys the
        frames the peer has not read yet: a refusal's error frame to a peer still sending
        (Apache's lingering close, for the same reason)."""
        if self.closed:
            return
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self.close()
            return
        discarded = 0
        with trio.move_on_after(limits.close_linger_s):
            while discarded < limits.close_linger_bytes_max:
                data = await self.receive(limits.receive_size_bytes)
                if not data:
                    break
                discarded += len(data)
        self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            trio.lowlevel.notify_closing(self.sock)
            self.sock.close()


def open_listeners(host: str, port: int, backlog: int) -> list[socket.socket]:
    """Listening sockets for HOST:PORT (port 0: any free port)."""
    listeners = []
    for family, kind, proto, _, address in socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE):
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(backlog)
            sock.setblocking(False)
        except OSError:
            for opened in listeners + [sock]:
                opened.close()
            raise
        listeners.append(sock)
        if port == 0:
            break  # one family is enough when the kernel picks the port
    return listeners


async def accept(listener: socket.socket) -> socket.socket:
    while True:
        try:
            sock, _ = listener.accept()
            return sock
        except BlockingIOError:
            await trio.lowlevel.wait_readable(listener)
