"""Executes one request against the ledger: permission, idempotency, fields, handler.

Synchronous and free of I/O; the shell calls `execute` for every request frame
and sends the reply once the batch it landed in is committed.
"""

import logging

from switch import limits
from switch.core import codes
from switch.ledger import (account_settings, accounts, card_office, dorm, idempotency, offline,
                           payments, roles, schema, subsidies)
from switch.ledger.plain_debit import execute_plain_debit
from switch.ledger.accounts import _decline
from switch.logline import FailureLog

log = logging.getLogger("switch.ledger")

HANDLERS = {**accounts.HANDLERS, **card_office.HANDLERS, **account_settings.HANDLERS,
            **payments.HANDLERS, **dorm.HANDLERS, **offline.HANDLERS,
            **subsidies.HANDLERS}


_DEBIT = accounts.debit


def reply_type(request_type) -> str:
    """The `t` a reply echoes: the request's, or "error" when it is not a str or too long to
    be any request's name (an echo must never outgrow a frame)."""
    if type(request_type) is str and len(request_type) <= limits.request_type_chars_max:
        return request_type
    return "error"


failures = FailureLog(log, limits.failure_tracebacks_per_minute_max)


def execute(ledger, credential, message: dict) -> dict:
    """The reply to one request. A request that raises is undone alone and answered
    `internal`: the other requests of its batch, and the process, carry on."""
    ledger.begin_request()
    try:
        return _execute(ledger, credential, message)
    except Exception:
        ledger.rollback_request()
        ledger.failures += 1
        request_type = message.get("t")
        request_type = request_type if type(request_type) is str and request_type in HANDLERS else "error"
        # Only the type and the credential: the message may hold a PIN or a QR code.
        failures.failed("request_failed", t=request_type, who=credential.who)
        return _decline(request_type, codes.INTERNAL)
    finally:
        ledger.end_request()


def _execute(ledger, credential, message: dict) -> dict:
    request_type = message.get("t")
    if type(request_type) is not str:
        return _decline("error", codes.BAD_REQUEST)
    handler = HANDLERS.get(request_type)
    if handler is None:
        return _decline(reply_type(request_type), codes.BAD_REQUEST)
    if not roles.permitted(credential.role, credential.kind, request_type):
        return _decline(request_type, codes.NOT_PERMITTED)
    if handler is _DEBIT:
        # Most of the load: taken in one flat pass when nothing about it is unusual (not
        # when a test or the simulation has put another handler in its place).
        reply = execute_plain_debit(ledger, credential, message)
        if reply is not None:
            return reply
    if request_type in schema.WITHOUT_ID:
        code, values = schema.validate(request_type, message)
        if code is not None:
            return _decline(request_type, code)
        return handler(ledger, credential, values)

    # The id is checked before anything else in the request (docs/PROTOCOL.md §4.3).
    request_id = schema.request_id(message.get("id", schema.INVALID))
    if request_id is schema.INVALID:
        return _decline(request_type, codes.BAD_REQUEST)
    fingerprint = ledger.fingerprint(request_type,
                                     schema.fingerprint_values(request_type, message))
    replay, seen_type = idempotency.recall(ledger, credential.who, request_id, request_type,
                                           fingerprint)
    if replay is not None:
        return replay
    if seen_type is not None:
        if seen_type == payments.TOMBSTONE:
            # Reversed before it arrived: decline and remember, so its retries replay this.
            reply = payments.reversed_original(request_type)
            if reply is not None:
                ledger.remember(credential.who, request_id, request_type, fingerprint, reply)
                return reply
        return _decline(request_type, codes.ID_REUSE)
    code, values = schema.validate(request_type, message)
    if code is not None:
        return _decline(request_type, code)
    reply = handler(ledger, credential, values)
    idempotency.remember(ledger, credential.who, request_id, request_type, fingerprint, reply)
    return reply
