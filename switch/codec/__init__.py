"""Sans-IO wire codec (docs/PROTOCOL.md §1-2): bytes in, messages out, no sockets."""

from switch.codec.errors import ProtocolError
from switch.codec.framing import FrameDecoder, encode_frame, encode_unauthenticated_error
from switch.codec.mac import direction_keys, tag
from switch.codec.session import ClientSession, ServerSession

__all__ = [
    "ProtocolError", "FrameDecoder", "encode_frame", "encode_unauthenticated_error",
    "direction_keys", "tag", "ClientSession", "ServerSession",
]
