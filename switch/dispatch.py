"""Executes one request against the ledger: permission, idempotency, fields, handler.

Synchronous and free of I/O; the shell calls `execute` for every request frame
and sends the reply once the batch it landed in is committed.
"""

from switch import (account_settings, card_office, dorm, handlers, offline, payments, requests,
                    roles)

HANDLERS = {**handlers.HANDLERS, **card_office.HANDLERS, **account_settings.HANDLERS,
            **payments.HANDLERS, **dorm.HANDLERS, **offline.HANDLERS}


def _reply(request_type: str, code: str) -> dict:
    return {"t": request_type, "code": code}


# Codes that mean "the request was not understood or not allowed": not remembered,
# so a corrected retry under the same id is still possible (bad input changes nothing).
_NOT_REMEMBERED = frozenset({"bad_request", "bad_amount", "not_permitted", "busy", "internal"})


def execute(ledger, credential, message: dict) -> dict:
    request_type = message.get("t")
    if type(request_type) is not str:
        return _reply("error", "bad_request")
    handler = HANDLERS.get(request_type)
    if handler is None:
        return _reply(request_type, "bad_request")
    if not roles.permitted(credential.role, credential.kind, request_type):
        return _reply(request_type, "not_permitted")
    if request_type in requests.WITHOUT_ID:
        code, values = requests.validate(request_type, message)
        if code is not None:
            return _reply(request_type, code)
        return handler(ledger, credential, values)

    # The id is checked before anything else in the request (docs/PROTOCOL.md §4.3).
    request_id = requests.request_id(message.get("id", requests.INVALID))
    if request_id is requests.INVALID:
        return _reply(request_type, "bad_request")
    fingerprint = ledger.fingerprint(request_type,
                                     requests.fingerprint_values(request_type, message))
    seen = ledger.recall(credential.who, request_id)
    if seen is not None:
        seen_type, seen_fingerprint, seen_reply = seen
        if seen_type == request_type and seen_fingerprint == fingerprint:
            return {**seen_reply, "replay": True}
        if seen_type == payments.TOMBSTONE:
            # Reversed before it arrived: decline and remember, so its retries replay this.
            reply = payments.reversed_original(request_type)
            if reply is not None:
                ledger.remember(credential.who, request_id, request_type, fingerprint, reply)
                return reply
        return _reply(request_type, "id_reuse")
    code, values = requests.validate(request_type, message)
    if code is not None:
        return _reply(request_type, code)
    reply = handler(ledger, credential, values)
    if reply["code"] not in _NOT_REMEMBERED:
        ledger.remember(credential.who, request_id, request_type, fingerprint, reply)
    return reply
