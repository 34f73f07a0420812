"""A downstream receiver written only from docs/PROTOCOL.md §1, §2 and §6.3.

Nothing here comes from the switch package: it frames, signs and checks by hand, the way a
school's own billing or utility system would, and records every txn it takes so the tests
can check "every record, in order, once, after restarts on both sides".
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import time

import msgpack
import trio

TAG_LEN = 16
MAX_LEN = 65536


def _tag(key: bytes, body: bytes) -> bytes:
    return hmac.new(key, body, hashlib.sha256).digest()[:TAG_LEN]


def _frame(key: bytes, message: dict) -> bytes:
    body = msgpack.packb(message, use_bin_type=True)
    return (len(body) + TAG_LEN).to_bytes(4, "big") + body + _tag(key, body)


class Refused(Exception):
    pass


class SpecReceiver:
    """One state file: {"position": last acknowledged txn, "txns": every txn taken, in order}."""

    def __init__(self, state_path: str, who: str, key: bytes):
        self.state_path = state_path
        self.who = who
        self.key = key
        self.frames: list[dict] = []      # this run's frames: from, to, upto, kinds, txns
        self.gaps = 0
        self.duplicates = 0
        self.port = None
        self.scope = None
        try:
            with open(state_path) as handle:
                state = json.load(handle)
        except FileNotFoundError:
            state = {"position": 0, "txns": []}
        self.position = state["position"]
        self.txns = state["txns"]

    def _save(self) -> None:
        temporary = self.state_path + ".tmp"
        with open(temporary, "w") as handle:
            json.dump({"position": self.position, "txns": self.txns}, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, self.state_path)

    # ----------------------------------------------------------------- serving
    async def run(self, port: int = 0, task_status=trio.TASK_STATUS_IGNORED) -> None:
        with trio.CancelScope() as self.scope:
            listeners = await trio.open_tcp_listeners(port, host="127.0.0.1")
            self.port = listeners[0].socket.getsockname()[1]
            await trio.serve_listeners(self._connection, listeners, task_status=task_status)

    def stop(self) -> None:
        self.scope.cancel()

    async def _connection(self, stream) -> None:
        buffer = bytearray()

        async def next_payload() -> bytes:
            while True:
                if len(buffer) >= 4:
                    length = int.from_bytes(buffer[:4], "big")
                    if not 17 <= length <= MAX_LEN:
                        raise Refused(f"LEN {length}")
                    if len(buffer) >= 4 + length:
                        payload = bytes(buffer[4:4 + length])
                        del buffer[:4 + length]
                        return payload
                data = await stream.receive_some(MAX_LEN + 4)
                if not data:
                    raise Refused("closed")
                buffer.extend(data)

        try:
            async with stream:
                payload = await next_payload()
                body, tag = payload[:-TAG_LEN], payload[-TAG_LEN:]
                hello = msgpack.unpackb(body, raw=False)
                if (hello.get("t") != "hello" or hello.get("v") != 1 or hello.get("who") != self.who
                        or not hmac.compare_digest(_tag(self.key, body), tag)):
                    await stream.send_all(_frame(bytes(TAG_LEN), {"t": "error",
                                                                 "code": "unauthenticated"}))
                    return
                client_nonce = hello["nonce"]
                server_nonce = os.urandom(16)
                await stream.send_all(_frame(self.key, {
                    "t": "hello", "re": 0, "code": "ok", "nonce": server_nonce,
                    "role": "downstream", "time": time.time_ns() // 1_000_000}))
                k_c2s = hmac.new(self.key, b"c2s" + client_nonce + server_nonce,
                                 hashlib.sha256).digest()
                k_s2c = hmac.new(self.key, b"s2c" + client_nonce + server_nonce,
                                 hashlib.sha256).digest()
                expected_seq = 1
                while True:
                    payload = await next_payload()
                    body, tag = payload[:-TAG_LEN], payload[-TAG_LEN:]
                    if not hmac.compare_digest(_tag(k_c2s, body), tag):
                        raise Refused("mac")
                    message = msgpack.unpackb(body, raw=False)
                    if message.get("seq") != expected_seq:
                        raise Refused("seq")
                    expected_seq += 1
                    if message.get("t") != "records":
                        await stream.send_all(_frame(k_s2c, {"t": message.get("t"),
                                                             "re": message["seq"],
                                                             "code": "bad_request"}))
                        continue
                    upto = self._take(message)
                    await stream.send_all(_frame(k_s2c, {"t": "records", "re": message["seq"],
                                                         "code": "ok", "upto": upto}))
        except (Refused, trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    def _take(self, message: dict) -> int:
        first, last, records = message["from"], message["to"], message["records"]
        frame = {"from": first, "to": last, "kinds": [r["kind"] for r in records],
                 "txns": [r["txn"] for r in records]}
        self.frames.append(frame)
        if first > self.position + 1:
            # A gap: ask for everything after what we have.
            self.gaps += 1
            frame["upto"] = self.position
            return self.position
        for record in records:
            assert first <= record["txn"] <= last, (first, last, record["txn"])
            if record["txn"] <= self.position:
                self.duplicates += 1
                continue
            assert not self.txns or record["txn"] > self.txns[-1], "out of order"
            self.txns.append(record["txn"])
        self.position = max(self.position, last)
        self._save()   # before the reply: what we acknowledge is on disk
        frame["upto"] = last
        return last
