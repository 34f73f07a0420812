"""Idempotency (docs/PROTOCOL.md §4.4), once for requests and offline records alike: a
remembered id answers with its first reply, or `id_reuse` when the request differs."""

from switch.core import codes

# Codes that mean "not understood or not allowed": not remembered, so a corrected retry
# under the same id is still possible (bad input changes nothing).
NOT_REMEMBERED = frozenset(codes.CODE_NAMES[code] for code in (
    codes.BAD_REQUEST, codes.BAD_AMOUNT, codes.NOT_PERMITTED, codes.BUSY, codes.INTERNAL))


def recall(ledger, who: str, request_id, kind: str, fingerprint: bytes):
    """(the first reply as a replay, or None when the id is new, or the remembered kind when
    it was remembered for another kind or other fields)."""
    seen = ledger.recall(who, request_id)
    if seen is None:
        return None, None
    seen_kind, seen_fingerprint, seen_reply = seen
    if seen_kind == kind and seen_fingerprint == fingerprint:
        return {**seen_reply, "replay": True}, None
    return None, seen_kind


def remember(ledger, who: str, request_id, kind: str, fingerprint: bytes, reply: dict) -> None:
    """Remember `reply` under the id, unless its code is one a corrected retry may reuse."""
    if reply["code"] not in NOT_REMEMBERED:
        ledger.remember(who, request_id, kind, fingerprint, reply)
