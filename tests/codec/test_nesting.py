"""Nesting depth of anything a peer sends is bounded (limits.message_nesting_depth_max)."""

import msgpack
import pytest

from switch import limits
from switch.codec.errors import ProtocolError
from switch.codec.framing import decode_body


def _nested(depth: int, kind: str):
    """A value whose maps/lists go `depth` levels deep (1: a flat container)."""
    value = 1
    for level in range(depth):
        value = [value] if (kind == "list" or level % 2) else {"k": value}
    return value


def _message(depth_of_value: int, kind: str) -> bytes:
    # The frame's own map is level 1, so a value nested `d` deep reaches level d + 1.
    return msgpack.packb({"t": "offline", "records": _nested(depth_of_value, kind)})


@pytest.mark.parametrize("kind", ["list", "mixed"])
def test_nesting_at_the_limit_is_accepted(kind):
    message = decode_body(_message(limits.message_nesting_depth_max - 1, kind))
    assert message["t"] == "offline"


@pytest.mark.parametrize("kind", ["list", "mixed"])
def test_nesting_one_past_the_limit_is_frame_invalid(kind):
    with pytest.raises(ProtocolError) as error:
        decode_body(_message(limits.message_nesting_depth_max, kind))
    assert error.value.code == "frame_invalid"


def test_deep_nesting_in_an_unlisted_field_or_late_in_a_list_is_refused():
    deep = _nested(limits.message_nesting_depth_max, "list")
    with pytest.raises(ProtocolError):
        decode_body(msgpack.packb({"t": "debit", "whatever": deep}))
    with pytest.raises(ProtocolError):
        decode_body(msgpack.packb({"t": "offline", "records": [{}] * 50 + [{"x": deep}]}))


def test_a_thousand_levels_is_refused_not_a_recursion_error():
    with pytest.raises(ProtocolError):
        decode_body(b"\x81\xa1t" + b"\x91" * 1000 + b"\x01")
    with pytest.raises(ProtocolError):
        decode_body(b"\x81\xa1t" + b"\x91" * 60000 + b"\x01")


def test_a_real_offline_upload_is_well_within_the_limit():
    records = [{"card": "AAAA", "amount": 100, "at": 1, "id": f"o{n}"} for n in range(500)]
    assert decode_body(msgpack.packb({"t": "offline", "records": records}))["records"] == records
