"""Executes one request against the ledger: permission, idempotency, fields, handler.

Synchronous and free of I/O; the shell calls `execute` for every request frame
and sends the reply once the batch it landed in is committed.
"""

import logging
import math
import time

from switch import limits
from switch.core import codes
from switch.ledger import (account_settings, accounts, card_office, dorm, idempotency, offline,
                           payments, roles, schema, subsidies)
from switch.ledger.plain_debit import execute_plain_debit
from switch.ledger.accounts import _decline

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


class FailureLog:
    """Logs events a peer can cause over and over, at most `logged_max` a window: a peer that
    can make one request raise, or send bad hellos in a loop, must not be able to flood the
    log (and journald's rate limit, which then drops real events). What is left out is
    counted and said once the window is over, one `event=<event>_suppressed count=N` line
    an event: at the next such event, or at `summarize`, whichever comes first. Failures
    are logged with their traceback (`traceback`, at ERROR); other events at `level`."""

    window_s = 60.0

    def __init__(self, logger: logging.Logger, logged_max: int, level: int = logging.ERROR,
                 traceback: bool = True):
        self.logger = logger
        self.logged_max = logged_max
        self.level = level
        self.traceback = traceback
        self._window_start_s = -math.inf
        self._logged = 0
        self.suppressed: dict[str, int] = {}    # event -> left out in this window

    def failed(self, event: str, level: int | None = None, **fields) -> None:
        """`level`: this line's, if not the log's (no traceback)."""
        now_s = time.monotonic()
        if now_s - self._window_start_s >= self.window_s:
            self._start_window(now_s)
        if self._logged >= self.logged_max:
            self.suppressed[event] = self.suppressed.get(event, 0) + 1
            return
        self._logged += 1
        # Each value its own argument, so the log's formatter quotes it as one value.
        template = "event=%s" + "".join(f" {key}=%s" for key in fields)
        if self.traceback and level is None:
            self.logger.exception(template, event, *fields.values())
        else:
            self.logger.log(level or self.level, template, event, *fields.values())

    def summarize(self) -> None:
        """Say what the window that is over left out, without waiting for the next event
        (the shell calls this on its housekeeping timer: a flood that stopped is told too)."""
        now_s = time.monotonic()
        if self.suppressed and now_s - self._window_start_s >= self.window_s:
            self._start_window(now_s)

    def _start_window(self, now_s: float) -> None:
        for event, count in self.suppressed.items():
            self.logger.log(max(self.level, logging.WARNING),
                            "event=%s_suppressed count=%d window_s=%.0f", event, count,
                            self.window_s)
        self._window_start_s, self._logged, self.suppressed = now_s, 0, {}


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
