"""QR payment codes (付款码, docs/PROTOCOL.md §5): pure parsing, signing and checking."""

import hmac
import re

from switch import limits

_QR = re.compile(rf"([A-Z0-9-]{{1,{limits.account_id_chars_max}}})\.(0|[1-9][0-9]{{0,15}})"
                 rf"\.([0-9a-f]{{{limits.qr_nonce_chars}}})\.([0-9a-f]{{{limits.qr_tag_chars}}})\Z")


def qr_tag(secret: bytes, account: str, step: int, nonce: str) -> str:
    message = f"{account}.{step}.{nonce}".encode("ascii")
    return hmac.digest(secret, message, "sha256").hex()[:limits.qr_tag_chars]


def qr_code(secret: bytes, account: str, unix_seconds: int, nonce: str) -> str:
    step = unix_seconds // limits.qr_step_s
    return f"{account}.{step}.{nonce}.{qr_tag(secret, account, step, nonce)}"


def parse_qr(code) -> tuple[str, int, str, str] | None:
    """(account, step, nonce, tag), or None when malformed."""
    if type(code) is not str:
        return None
    match = _QR.match(code)
    if match is None:
        return None
    account, step, nonce, tag = match.groups()
    return account, int(step), nonce, tag
