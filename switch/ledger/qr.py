"""QR payment codes (付款码, docs/PROTOCOL.md §5): pure parsing, signing and checking."""

import hmac
import re

QR_STEP_S = 30
QR_NONCE_CHARS = 8
QR_TAG_CHARS = 20
_QR = re.compile(r"([A-Z0-9-]{1,32})\.(0|[1-9][0-9]{0,15})\.([0-9a-f]{8})\.([0-9a-f]{20})\Z")


def qr_tag(secret: bytes, account: str, step: int, nonce: str) -> str:
    message = f"{account}.{step}.{nonce}".encode("ascii")
    return hmac.digest(secret, message, "sha256").hex()[:QR_TAG_CHARS]


def qr_code(secret: bytes, account: str, unix_seconds: int, nonce: str) -> str:
    step = unix_seconds // QR_STEP_S
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
