"""One log line format for every program of the switch: `key=value` tokens, UTC millisecond
timestamps, and a value holding a space, a quote, an `=` or a character that is not printable
quoted, so `ts=... level=... logger=... event=...` always splits on spaces into key=value.

Values a peer chooses (a credential id in a refused hello, an error text) go through `%s`
arguments, which are quoted here before they meet the message: a peer cannot forge a key
or a line of its own.
"""

import logging
import math
import re
import sys
import time

KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*\Z")
# A value left bare: no space, quote, backslash or `=`, and printable (see `is_bare`).
BARE = re.compile(r"[^\s\"\\=\x00-\x1f\x7f]+\Z")
# One token of a finished line: key=bare or key="quoted with \" \\ \n \t \xNN \uNNNN
# \UNNNNNNNN escapes".
TOKEN = re.compile(r'([A-Za-z_][A-Za-z0-9_.]*)=("(?:[^"\\\x00-\x1f\x7f]|\\.)*"|[^\s"\\=\x00-\x1f\x7f]*)')
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
# What a quoted value may need escaped: a quote, a backslash, anything outside printable
# ASCII (the printable rest of Unicode, a merchant's Chinese name, is kept as it is).
_MAYBE_ESCAPED = re.compile(r'["\\]|[^ -~]')


def is_bare(text: str) -> bool:
    """Whether `text` can be a value unquoted. Not when it holds a character that is not
    printable (str.isprintable: a control, C1 included, a format character such as a bidi
    override, a line or paragraph separator, a space other than ' ', a surrogate, a private
    or unassigned code point): a terminal acts on those, str.splitlines() breaks a line at
    U+0085 or U+2028, and a bidi override reorders what a reader sees."""
    return bool(text) and BARE.match(text) is not None and text.isprintable()


def _escaped(match: re.Match) -> str:
    character = match.group()
    escape = _ESCAPES.get(character)
    if escape is not None:
        return escape
    if character.isprintable():
        return character
    code = ord(character)
    return (f"\\x{code:02x}" if code <= 0xff else f"\\u{code:04x}" if code <= 0xffff
            else f"\\U{code:08x}")


def quote(value) -> str:
    """`value` as one log token's value: bare when it can be, else quoted and escaped."""
    text = value if isinstance(value, str) else str(value)
    if is_bare(text):
        return text
    return '"' + _MAYBE_ESCAPED.sub(_escaped, text) + '"'


def bounded(value, chars_max: int) -> str:
    """A peer-supplied value cut to `chars_max` characters (marked), for a log line only."""
    if value is None:
        return "-"
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= chars_max else text[:chars_max] + "..."


def split(line: str) -> dict | None:
    """The key=value pairs of a line this module wrote (values unquoted), or None if it is
    not one."""
    if not line.isprintable():
        return None     # this module escapes every character that is not printable
    pairs = {}
    position = 0
    for match in TOKEN.finditer(line):
        if match.start() != position:
            return None
        pairs[match.group(1)] = _unquote(match.group(2))
        position = match.end()
        if position < len(line):
            if line[position] != " ":
                return None
            position += 1
    return pairs if position == len(line) and pairs else None


_UNESCAPE = re.compile(r'\\(x[0-9a-f]{2}|u[0-9a-f]{4}|U[0-9a-f]{8}|.)')
_UNESCAPES = {"n": "\n", "r": "\r", "t": "\t"}


def _unescaped(match: re.Match) -> str:
    escape = match.group(1)
    if len(escape) > 1:
        return chr(int(escape[1:], 16))
    return _UNESCAPES.get(escape, escape)


def _unquote(value: str) -> str:
    if not value.startswith('"'):
        return value
    return _UNESCAPE.sub(_unescaped, value[1:-1])


class _Quoted:
    """A `%s`/`%r` argument rendered as a quoted token value."""

    __slots__ = ("text",)

    def __init__(self, text: str):
        self.text = quote(text)

    def __str__(self) -> str:
        return self.text

    __repr__ = __str__


class KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = self._message(record)
        head = (f"ts={_utc_ms(record.created)} level={record.levelname} "
                f"logger={quote(record.name)}")
        line = f"{head} {message}"
        if record.exc_info:
            # One line still: the traceback is a quoted value, its newlines escaped.
            line += " traceback=" + quote(self.formatException(record.exc_info))
        return line

    def _message(self, record: logging.LogRecord) -> str:
        args = record.args
        if args and isinstance(args, tuple):
            args = tuple(_Quoted(a) if isinstance(a, str) else a for a in args)
        try:
            message = str(record.msg) % args if args else str(record.msg)
        except (TypeError, ValueError):
            message = f"{record.msg} {record.args!r}"
        if split(message) is None:
            # Someone else's free text (a library's warning): kept whole as one value.
            return "msg=" + quote(message)
        return message


def _utc_ms(created: float) -> str:
    seconds = int(created)
    millis = int((created - seconds) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


def configure(level: str = "INFO") -> None:
    """Every program's logging: key=value lines on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(KeyValueFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))


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
