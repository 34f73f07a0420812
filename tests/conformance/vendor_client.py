"""A minimal terminal-vendor client, written only from docs/PROTOCOL.md (wire version 1).

Nothing in here is imported from the switch package: the point is that a
vendor holding nothing but the contract can talk to the switch.

Framing (docs/PROTOCOL.md §1):

    frame   = LEN (4 bytes, unsigned big-endian) || payload
    payload = BODY (one msgpack map, str keys) || TAG (16 bytes)
    TAG     = HMAC-SHA256(K, BODY)[:16]

K is the credential's long-term key for ``hello`` and its reply, then the
direction keys ``k_c2s`` / ``k_s2c``.  Connection-level error frames sent
before a session exists carry 16 zero bytes as their tag.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time
from dataclasses import dataclass, field
from typing import Any

import msgpack
import trio

PROTOCOL_VERSION = 1
TAG_LEN = 16
MIN_LEN = 17
MAX_LEN = 65536
ZERO_TAG = b"\x00" * TAG_LEN
MAX_IN_FLIGHT = 64


class ProtocolError(Exception):
    """The peer sent something the contract does not allow."""


class TagMismatch(ProtocolError):
    pass


class ConnectionClosed(ProtocolError):
    """EOF where a frame was expected."""


# ---------------------------------------------------------------- primitives


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def unpack(body: bytes) -> Any:
    return msgpack.unpackb(body, raw=False)


def tag(key: bytes, body: bytes) -> bytes:
    return hmac.new(key, body, hashlib.sha256).digest()[:TAG_LEN]


def derive_keys(key: bytes, client_nonce: bytes, server_nonce: bytes) -> tuple[bytes, bytes]:
    """Return (k_c2s, k_s2c)."""
    k_c2s = hmac.new(key, b"c2s" + client_nonce + server_nonce, hashlib.sha256).digest()
    k_s2c = hmac.new(key, b"s2c" + client_nonce + server_nonce, hashlib.sha256).digest()
    return k_c2s, k_s2c


def encode_frame(body: bytes, key: bytes | None) -> bytes:
    """Frame raw BODY bytes; key None means the 16-zero-byte tag."""
    t = ZERO_TAG if key is None else tag(key, body)
    payload = body + t
    return len(payload).to_bytes(4, "big") + payload


def frame_obj(obj: Any, key: bytes | None) -> bytes:
    return encode_frame(pack(obj), key)


def hello_body(who: str, nonce: bytes, at: int, v: int = PROTOCOL_VERSION) -> dict:
    # Key order as in the contract's example (and the vector).
    return {"t": "hello", "v": v, "who": who, "nonce": nonce, "at": at}


def request_body(t: str | None, seq: int, fields: dict) -> dict:
    body: dict = {}
    if t is not None:
        body["t"] = t
    body["seq"] = seq
    body.update(fields)
    return body


@dataclass
class Frame:
    raw_body: bytes
    tag: bytes
    body: Any  # normally a dict

    @property
    def raw(self) -> bytes:
        payload = self.raw_body + self.tag
        return len(payload).to_bytes(4, "big") + payload

    def tag_ok(self, key: bytes | None) -> bool:
        want = ZERO_TAG if key is None else tag(key, self.raw_body)
        return hmac.compare_digest(want, self.tag)

    def get(self, k, default=None):
        return self.body.get(k, default)

    def __getitem__(self, k):
        return self.body[k]


def decode_frame(data: bytes) -> tuple[Frame, bytes]:
    """Split one complete frame off ``data``; return (frame, rest)."""
    if len(data) < 4:
        raise ProtocolError("short frame")
    n = int.from_bytes(data[:4], "big")
    if not MIN_LEN <= n <= MAX_LEN:
        raise ProtocolError(f"LEN {n} out of range")
    if len(data) < 4 + n:
        raise ProtocolError("truncated frame")
    payload = data[4 : 4 + n]
    body, t = payload[:-TAG_LEN], payload[-TAG_LEN:]
    obj = unpack(body)
    if not isinstance(obj, dict) or not all(isinstance(k, str) for k in obj):
        raise ProtocolError("body is not a map with str keys")
    return Frame(body, t, obj), data[4 + n :]


def now_ms() -> int:
    return int(time.time() * 1000)


# ---------------------------------------------------------------- connection


class Connection:
    """One TCP connection to the switch.

    Single-task design: ``send*`` writes frames, ``recv`` reads the next
    frame.  ``call`` and ``wait_reply`` park replies for other seqs in
    ``self.replies`` and pushes in ``self.pushes``, so requests may be
    pipelined and answered in any order.
    """

    def __init__(self, stream: trio.abc.Stream):
        self.stream = stream
        self._buf = bytearray()
        self._eof = False
        self.key: bytes | None = None
        self.k_c2s: bytes | None = None
        self.k_s2c: bytes | None = None
        self.client_nonce: bytes | None = None
        self.server_nonce: bytes | None = None
        self.hello_reply: dict | None = None
        self.next_seq = 1
        self.replies: dict[int, Frame] = {}
        self.pushes: list[dict] = []
        self.errors: list[Frame] = []  # connection-level error frames seen
        self.verify_tags = True

    # -- lifecycle

    @classmethod
    async def connect(cls, host: str, port: int) -> "Connection":
        stream = await trio.open_tcp_stream(host, port)
        return cls(stream)

    async def aclose(self) -> None:
        """Close politely: half-close, drain until the switch closes too, so
        that no unread data makes the kernel answer with a RST."""
        with trio.move_on_after(1):
            try:
                if not self._eof:
                    await self.stream.send_eof()
                    while await self.stream.receive_some(65536):
                        pass
            except (trio.BrokenResourceError, trio.ClosedResourceError, AttributeError):
                pass
        with trio.move_on_after(2):
            await self.stream.aclose()

    @property
    def in_session(self) -> bool:
        return self.k_s2c is not None

    # -- raw bytes

    async def send_raw(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def _fill(self, n: int) -> bool:
        """Make sure ``n`` bytes are buffered; False on EOF before that."""
        while len(self._buf) < n:
            if self._eof:
                return False
            try:
                chunk = await self.stream.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                chunk = b""
            if not chunk:
                self._eof = True
                return False
            self._buf += chunk
        return True

    async def read_frame(self) -> Frame | None:
        """Next frame, or None on a clean EOF (no byte of a new frame)."""
        if not await self._fill(4):
            if self._buf:
                raise ConnectionClosed("EOF inside a length prefix")
            return None
        n = int.from_bytes(self._buf[:4], "big")
        if not MIN_LEN <= n <= MAX_LEN:
            raise ProtocolError(f"switch sent LEN {n}")
        if not await self._fill(4 + n):
            raise ConnectionClosed("EOF inside a frame")
        payload = bytes(self._buf[4 : 4 + n])
        del self._buf[: 4 + n]
        body, t = payload[:-TAG_LEN], payload[-TAG_LEN:]
        obj = unpack(body)
        if not isinstance(obj, dict):
            raise ProtocolError(f"switch sent a non-map body: {obj!r}")
        return Frame(body, t, obj)

    async def at_eof(self, timeout: float = 5.0) -> bool:
        """True if the switch closes the connection (without more frames)
        within ``timeout``."""
        with trio.move_on_after(timeout):
            return not await self._fill(len(self._buf) + 1)
        return False

    # -- session

    async def hello(
        self,
        who: str,
        key: bytes,
        *,
        v: int = PROTOCOL_VERSION,
        nonce: bytes | None = None,
        at: int | None = None,
        sign_with: bytes | None = None,
    ) -> Frame:
        """Send hello and return the reply frame (ok or error).

        ``sign_with`` lets a test sign the hello with a wrong key.
        """
        self.key = key
        self.client_nonce = nonce if nonce is not None else os.urandom(16)
        body = hello_body(who, self.client_nonce, now_ms() if at is None else at, v)
        await self.send_raw(frame_obj(body, sign_with if sign_with is not None else key))
        fr = await self.read_frame()
        if fr is None:
            raise ConnectionClosed("no reply to hello")
        if fr.get("t") == "error":
            if self.verify_tags and fr.tag != ZERO_TAG:
                raise TagMismatch("pre-session error frame without zero tag")
            self.errors.append(fr)
            return fr
        if self.verify_tags and not fr.tag_ok(key):
            raise TagMismatch("hello reply tag does not verify with the long-term key")
        if fr.get("code") == "ok":
            self.server_nonce = fr["nonce"]
            self.k_c2s, self.k_s2c = derive_keys(key, self.client_nonce, self.server_nonce)
            self.hello_reply = fr.body
        return fr

    # -- requests

    def build(self, t: str | None, fields: dict, *, seq: int | None = None,
              key: bytes | None = None, body: Any = None) -> tuple[int, bytes]:
        """Build one request frame; returns (seq, frame bytes).

        ``seq``/``key``/``body`` override the normal values so tests can send
        broken frames.  Normal use consumes the next seq.
        """
        if seq is None:
            seq = self.next_seq
            self.next_seq += 1
        if body is None:
            body = request_body(t, seq, fields)
        raw = body if isinstance(body, bytes) else pack(body)
        return seq, encode_frame(raw, self.k_c2s if key is None else key)

    async def send(self, t: str | None, **fields) -> int:
        seq, data = self.build(t, fields)
        await self.send_raw(data)
        return seq

    async def send_many(self, reqs: list[tuple[str | None, dict]]) -> list[int]:
        """Pipeline: all frames in a single write."""
        seqs, chunks = [], []
        for t, fields in reqs:
            seq, data = self.build(t, fields)
            seqs.append(seq)
            chunks.append(data)
        await self.send_raw(b"".join(chunks))
        return seqs

    async def recv(self) -> Frame:
        """Next frame from the switch, tag checked; raises on EOF."""
        fr = await self.read_frame()
        if fr is None:
            raise ConnectionClosed("switch closed the connection")
        if self.verify_tags:
            key = self.k_s2c if self.in_session else None
            if not fr.tag_ok(key):
                raise TagMismatch(f"bad tag on {fr.body!r}")
        if fr.get("t") == "error" and "re" not in fr.body and "push" not in fr.body:
            self.errors.append(fr)
        elif "push" in fr.body and "re" not in fr.body:
            self.pushes.append(fr.body)
        return fr

    async def wait_reply(self, seq: int, timeout: float = 10.0) -> dict:
        with trio.fail_after(timeout):
            while seq not in self.replies:
                fr = await self.recv()
                if "re" in fr.body:
                    self.replies[fr["re"]] = fr
                elif fr.get("t") == "error":
                    raise ProtocolError(f"connection-level error: {fr.body!r}")
            return self.replies.pop(seq).body

    async def call(self, t: str | None, **fields) -> dict:
        seq = await self.send(t, **fields)
        return await self.wait_reply(seq)

    async def next_push(self, timeout: float = 5.0) -> dict:
        with trio.fail_after(timeout):
            while not self.pushes:
                fr = await self.recv()
                if "re" in fr.body:
                    self.replies[fr["re"]] = fr
                elif fr.get("t") == "error":
                    raise ProtocolError(f"connection-level error: {fr.body!r}")
            return self.pushes.pop(0)


async def open_session(host: str, port: int, who: str, key: bytes) -> Connection:
    conn = await Connection.connect(host, port)
    reply = await conn.hello(who, key)
    if reply.get("code") != "ok":
        await conn.aclose()
        raise ProtocolError(f"hello refused: {reply.body!r}")
    return conn
