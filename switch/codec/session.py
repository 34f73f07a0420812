"""Session state machines for both ends of a connection (docs/PROTOCOL.md §2).

`ServerSession` is what the switch runs per inbound connection; `ClientSession`
is what a terminal (the simulator, tests) or the switch's own forwarder runs.
Both are pure: bytes in, messages or frames out.
"""

import os
from typing import Callable, NamedTuple

from switch import limits
from switch.codec import mac
from switch.codec.errors import ProtocolError
from switch.identifiers import is_credential_id
from switch.codec.framing import (
    decode_body, encode_body, encode_frame, encode_unauthenticated_error, split_payload)

AWAITING_HELLO = "awaiting_hello"
OPEN = "open"
CLOSED = "closed"

# (state, event) -> next state. Anything not listed is a bug in the caller.
TRANSITIONS = {
    (AWAITING_HELLO, "hello_accepted"): OPEN,
    (AWAITING_HELLO, "protocol_error"): CLOSED,
    (OPEN, "request"): OPEN,
    (OPEN, "protocol_error"): CLOSED,
    (OPEN, "close"): CLOSED,
    (AWAITING_HELLO, "close"): CLOSED,
    (CLOSED, "close"): CLOSED,
}


_MAC_INVALID = object()   # open_request: the tag did not match

class Hello(NamedTuple):
    who: str
    client_nonce: bytes
    message: dict


class Request(NamedTuple):
    seq: int
    message: dict


def _is_int(value) -> bool:
    return type(value) is int


class ServerSession:
    """The switch's side of one connection."""

    __slots__ = ("state", "who", "_key", "_k_c2s", "_k_s2c", "_next_seq", "_push", "proven")

    def __init__(self) -> None:
        self.state = AWAITING_HELLO
        self.who = None
        self._key = None
        self._k_c2s = None
        self._k_s2c = None
        self._next_seq = 1
        self._push = 0
        self.proven = False

    def _move(self, event: str) -> None:
        self.state = TRANSITIONS[(self.state, event)]

    def _fail(self, code: str, detail: str = "", re=None) -> ProtocolError:
        self._move("protocol_error")
        return ProtocolError(code, detail, re)

    def receive_hello(self, payload: bytes, key_of: Callable[[str], bytes | None]) -> Hello:
        """Check the first frame. `key_of(who)` gives a live credential's key or None."""
        assert self.state == AWAITING_HELLO, self.state
        body, received_tag = split_payload(payload)
        if len(body) > limits.hello_body_bytes_max:
            # Decoded before any key is known: a stranger's 64 KiB of tiny containers took
            # the loop 12 ms a frame. A hello's fields fit many times over.
            raise self._fail("frame_too_large", f"hello of {len(body)} bytes")
        try:
            message = decode_body(body)
        except ProtocolError:
            self._move("protocol_error")
            raise
        if message.get("t") != "hello":
            raise self._fail("unauthenticated", "first frame is not hello")
        version = message.get("v")
        if not _is_int(version) or version != limits.protocol_version:
            raise self._fail("version_unsupported", f"v={version!r}")
        who = message.get("who")
        nonce = message.get("nonce")
        # One answer for unknown, revoked and forged alike, so ids cannot be probed.
        # The syntax first: a lookup never sees an id that could not be a credential's.
        key = key_of(who) if is_credential_id(who) else None
        if (key is None or type(nonce) is not bytes or len(nonce) != limits.nonce_size_bytes
                or not mac.verify(key, body, received_tag)):
            refused = self._fail("unauthenticated")
            refused.who = who   # for the operator's log only; never in the reply
            raise refused
        self.who = who
        self._key = key
        return Hello(who, nonce, message)

    def accept_hello(self, hello: Hello, reply: dict, server_nonce: bytes | None = None) -> bytes:
        """Open the session; `reply` holds role, time and (terminals) blacklist."""
        assert self.state == AWAITING_HELLO, self.state
        server_nonce = os.urandom(limits.nonce_size_bytes) if server_nonce is None else server_nonce
        message = {"t": "hello", "re": 0, "code": "ok", "nonce": server_nonce}
        message.update(reply)
        frame = encode_frame(self._key, message)
        self._k_c2s, self._k_s2c = mac.session_keys(self._key, hello.client_nonce, server_nonce)
        self._move("hello_accepted")
        return frame


    def receive_request(self, payload: bytes) -> Request:
        return self.accept_request(self.open_request(payload))

    def open_request(self, payload: bytes, pay=None) -> tuple:
        """The tag checked and the body decoded, changing nothing: (message, None), or
        (None, what was wrong) for `accept_request` to fail with in its turn. Apart from
        `accept_request` so a server can open every frame of a pass before it executes any,
        and execute them a pass later when its time ran out. `pay()`, when given, is asked
        once the tag verifies and before the body is decoded: False leaves it unread, and
        what was wrong is `busy`."""
        body, received_tag = split_payload(payload)
        if not mac.verify(self._k_c2s, body, received_tag):
            return None, _MAC_INVALID
        # A frame under the session's keys: only the key's holder can send one (a hello
        # replayed off the wire opens a session that never does).
        self.proven = True
        if pay is not None and not pay():
            return None, ProtocolError("busy", "a large frame past the budget")
        try:
            return decode_body(body), None
        except ProtocolError as error:
            return None, error

    def accept_request(self, opened: tuple) -> Request:
        """The next request of the session, from `open_request`'s result, in order: a frame
        that failed to open, or is out of sequence, ends the session here."""
        assert self.state == OPEN, self.state
        message, failure = opened[0], opened[1]     # a server may carry more after them
        if failure is _MAC_INVALID:
            raise self._fail("mac_invalid")
        if failure is not None:
            self._move("protocol_error")
            raise failure
        seq = message.get("seq")
        if not _is_int(seq) or seq != self._next_seq:
            # `re` echoes the seq received when it is an int: anything else might not even
            # fit in the error frame.
            raise self._fail("seq_invalid", f"expected {self._next_seq}",
                             re=seq if _is_int(seq) else None)
        self._next_seq += 1
        return Request(seq, message)

    def encode_reply(self, message: dict) -> bytes:
        return encode_frame(self._k_s2c, message)

    def encode_push(self, message: dict) -> bytes:
        self._push += 1
        return encode_frame(self._k_s2c, {**message, "push": self._push})

    def encode_error(self, error: ProtocolError) -> bytes:
        """The error frame for a connection-level error (state already CLOSED)."""
        fields = {"re": error.re} if error.code == "seq_invalid" and error.re is not None else {}
        if self._k_s2c is None:
            return encode_unauthenticated_error(error.code, **fields)
        return encode_frame(self._k_s2c, {"t": "error", "code": error.code, **fields})

    def close(self) -> None:
        self._move("close")


class ClientSession:
    """A terminal's (or the forwarder's) side of one connection."""

    def __init__(self, who: str, key: bytes, client_nonce: bytes | None = None) -> None:
        self.who = who
        self.key = key
        self.client_nonce = os.urandom(limits.nonce_size_bytes) if client_nonce is None else client_nonce
        self.state = AWAITING_HELLO
        self.next_seq = 1
        self.last_push = 0
        self._k_c2s = None
        self._k_s2c = None

    def hello_frame(self, at_ms: int, **extra) -> bytes:
        return encode_frame(self.key, {"t": "hello", "v": limits.protocol_version, "who": self.who,
                                       "nonce": self.client_nonce, "at": at_ms, **extra})

    def receive_hello_reply(self, payload: bytes) -> dict:
        """Returns the hello reply; raises ProtocolError for an error frame or a forgery."""
        body, received_tag = split_payload(payload)
        message = decode_body(body)
        if message.get("t") == "error":
            self.state = CLOSED
            raise ProtocolError(str(message.get("code")), "refused by peer")
        if not mac.verify(self.key, body, received_tag):
            raise ProtocolError("mac_invalid", "hello reply tag")
        if message.get("code") != "ok" or type(message.get("nonce")) is not bytes:
            raise ProtocolError("unauthenticated", "hello reply not ok")
        self._k_c2s, self._k_s2c = mac.session_keys(self.key, self.client_nonce, message["nonce"])
        self.state = OPEN
        return message

    def request_frame(self, message: dict) -> tuple[int, bytes]:
        """Assign the next `seq` and sign; returns (seq, frame)."""
        assert self.state == OPEN, self.state
        seq = self.next_seq
        self.next_seq += 1
        return seq, encode_frame(self._k_c2s, {**message, "seq": seq})

    def raw_request_frame(self, message: dict) -> bytes:
        """Sign `message` as-is (tests use this to send bad seqs and fields)."""
        return encode_frame(self._k_c2s, message)

    def receive(self, payload: bytes) -> dict:
        """A reply, push or error frame from the peer, tag checked."""
        body, received_tag = split_payload(payload)
        message = decode_body(body)
        if not mac.verify(self._k_s2c, body, received_tag):
            if message.get("t") == "error" and received_tag == mac.ZERO_TAG:
                return message
            raise ProtocolError("mac_invalid", "reply tag")
        return message


def sign_body(key: bytes, body: bytes) -> bytes:
    """A frame around an already-encoded body (used by fuzzers and tests)."""
    return (len(body) + limits.tag_size_bytes).to_bytes(4, "big") + body + mac.tag(key, body)


__all__ = ["ServerSession", "ClientSession", "Hello", "Request", "ProtocolError",
           "encode_body", "sign_body"]
