"""Result codes of the wire contract (docs/PROTOCOL.md §4.16), as small ints for the core.

The core returns an int; the shell turns it into the wire string with
`CODE_NAMES[code]`. Order here is this project's, not the contract's.
"""

OK = 0
INSUFFICIENT_FUNDS = 1
CARD_UNKNOWN = 2
CARD_LOST = 3
CARD_BLOCKED = 4
ACCOUNT_FROZEN = 5
ACCOUNT_CLOSED = 6
PIN_LOCKED = 7
PIN_REQUIRED = 8
PIN_INVALID = 9
LIMIT_PER_TX = 10
LIMIT_DAILY = 11
QR_INVALID = 12
QR_EXPIRED = 13
QR_USED = 14
VIRTUAL_CARD_OFF = 15
WRONG_SCHOOL = 16
BAD_AMOUNT = 17
BAD_REQUEST = 18
ID_REUSE = 19
HOLD_UNKNOWN = 20
HOLD_EXPIRED = 21
HOLD_CLOSED = 22
OVER_HOLD = 23
REVERSE_WINDOW = 24
REVERSED = 25
TOO_OLD = 26
NOT_PERMITTED = 27
UNKNOWN_ACCOUNT = 28
EXISTS = 29
NOT_EMPTY = 30
IDENTITY_MISMATCH = 31
BUSY = 32
INTERNAL = 33
REPEAT_TAP = 34
MEAL_LIMIT = 35

CODE_NAMES = (
    "ok", "insufficient_funds", "card_unknown", "card_lost", "card_blocked",
    "account_frozen", "account_closed", "pin_locked", "pin_required",
    "pin_invalid", "limit_per_tx", "limit_daily", "qr_invalid", "qr_expired",
    "qr_used", "virtual_card_off", "wrong_school", "bad_amount", "bad_request",
    "id_reuse", "hold_unknown", "hold_expired", "hold_closed", "over_hold",
    "reverse_window", "reversed", "too_old", "not_permitted", "unknown_account",
    "exists", "not_empty", "identity_mismatch", "busy", "internal", "repeat_tap",
    "meal_limit",
)

# Connection-level codes: sent in an error frame, then the connection closes.
UNAUTHENTICATED = "unauthenticated"
VERSION_UNSUPPORTED = "version_unsupported"
MAC_INVALID = "mac_invalid"
SEQ_INVALID = "seq_invalid"
FRAME_INVALID = "frame_invalid"
FRAME_TOO_LARGE = "frame_too_large"
