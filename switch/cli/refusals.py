"""Every result code and connection-level error as a sentence an operator can act on.

`SENTENCES` is the one table of code -> sentence; a command that can be refused in a way
of its own adds a `(code, request type)` entry. Sentences are `str.format` templates over
the facts `facts_of` gathers from the request (and, for `NEEDS_ACCOUNT`, from a look at
the account after the refusal: a refusal reply carries no more than its code,
docs/PROTOCOL.md §4.1).
"""

from switch.core.codes import (CODE_NAMES, FRAME_INVALID, FRAME_TOO_LARGE, MAC_INVALID,
                               SEQ_INVALID, UNAUTHENTICATED, VERSION_UNSUPPORTED)

CONNECTION_CODES = (UNAUTHENTICATED, VERSION_UNSUPPORTED, MAC_INVALID, SEQ_INVALID,
                    FRAME_INVALID, FRAME_TOO_LARGE)

# Codes whose sentence needs the account's balance, read after the refusal.
NEEDS_ACCOUNT = frozenset({"not_empty"})

SENTENCES = {
    "insufficient_funds": "account {account} has less than {yuan} yuan available",
    "repeat_tap": "the same payment was just approved at this till (the double-tap guard); "
                  "a second identical purchase is sent again with confirm",
    "meal_limit": "the card has reached this meal period's cap on taps or yuan at the "
                  "school's canteen tills",
    "card_unknown": "the switch knows no card {card}; check the number printed on the card",
    "card_lost": "card {card} is reported lost; `found` it first if it turned up",
    "card_blocked": "card {card} was replaced and is blocked for good; use the account's "
                    "new card",
    "account_frozen": "account {account} is frozen; `unfreeze` it first",
    "account_closed": "account {account} is closed; nothing more can be done with it",
    "pin_locked": "the PIN of account {account} is locked; `unlock` it at the card office",
    "pin_required": "a PIN is needed above the account's no-PIN amount",
    "pin_invalid": "wrong PIN; each wrong one counts toward the lock",
    "limit_per_tx": "{yuan} yuan is above account {account}'s limit for one payment",
    "limit_daily": "{yuan} yuan would pass account {account}'s limit for the day",
    "qr_invalid": "the payment code is malformed, of no known account, or forged",
    "qr_expired": "the payment code has expired; refresh it on the phone",
    "qr_used": "this payment code was used already",
    "virtual_card_off": "account {account} has no virtual card opened",
    "wrong_school": "{subject} belongs to another school than credential {signon}",
    "bad_amount": "the amount is missing or outside 0.01 yuan .. the switch's largest amount",
    "bad_request": "the switch refused the request as malformed or against its rules "
                   "(docs/PROTOCOL.md §4.2, §4.15)",
    "id_reuse": "request id {id} was used before for a different request; give a new --id",
    "hold_unknown": "this terminal has no such hold",
    "hold_expired": "the hold expired and its money was released",
    "hold_closed": "the hold was completed or voided already",
    "over_hold": "{yuan} yuan is more than the hold reserved",
    "reverse_window": "the payment is too old to be reversed",
    "reversed": "this payment was reversed before it arrived",
    "too_old": "the offline record is older than the offline window",
    "not_permitted": "credential {signon} may not send {t}; sign on with an admin key "
                     "(--data DIR or --key-file FILE)",
    "unknown_account": "the switch knows no account {account}",
    "exists": "it exists already",
    "not_empty": "account {account} still holds {balance} yuan; refund it first",
    "identity_mismatch": "the ID digits do not match those given when the account was "
                         "opened",
    "busy": "the switch is overloaded and did nothing; try again shortly with the same --id",
    "internal": "the switch could not finish it and did nothing; try again with the same "
                "--id",
    UNAUTHENTICATED: "the switch refused the sign-on of {signon}: the key is wrong, or the "
                     "credential is revoked",
    VERSION_UNSUPPORTED: "the switch does not speak protocol version 1",
    MAC_INVALID: "the switch could not verify our message's tag: the key does not match "
                 "the credential",
    SEQ_INVALID: "the switch received our messages out of order",
    FRAME_INVALID: "the switch could not read our message as a request",
    FRAME_TOO_LARGE: "our message was larger than one frame (64 KiB) may be",
    # A command's own readings of a shared code (docs/PROTOCOL.md §4.15).
    ("exists", "open_account"): "account {account} exists already",
    ("exists", "issue_card"): "card {card} is issued already (`account` shows whose)",
    ("exists", "replace_card"): "card {new} is issued already (`account` shows whose)",
    ("exists", "add_credential"): "credential {who} exists already (revoked ones too); "
                                  "choose another name",
    ("bad_request", "open_account"): "school {school} is not configured, account {account} "
                                     "begins with another school's code, or the ID digits, "
                                     "kind or utility do not fit the account (a room takes "
                                     "the utility its building has)",
    ("bad_request", "issue_card"): "account {account} takes no card: a utility account, or "
                                   "one that holds 32 cards already",
    ("bad_request", "replace_card"): "card {old} is not account {account}'s, or the account "
                                     "holds 32 cards already",
    ("bad_request", "add_credential"): "school {school} is not configured, or a terminal "
                                       "lacks --school/--kind",
    ("bad_request", "revoke_credential"): "no credential {who}, or it is the one signed on",
    ("bad_request", "history"): "--limit is above what the switch allows",
    ("bad_request", "rotate_key"): "no credential {who}, or it is revoked",
    ("id_reuse", "subsidy"): "batch {batch} was issued to account {account} before with "
                             "another amount or last day; nothing changed (a batch keeps "
                             "its first rows: a correction, or a new term soon after the "
                             "last, is a batch of another name, e.g. with its month)",
    ("bad_request", "subsidy"): "the term ending {expires} is over in the school's time "
                                "zone, account {account} holds batch {batch} with another "
                                "last day or 64 batches already, or it is a room's account",
    ("insufficient_funds", "refund"): "account {account} is below zero; credit the debt back "
                                      "first, then refund",
    ("wrong_school", "open_account"): "credential {signon} may not open accounts of "
                                      "school {school}",
}

# `not_empty` when the account could not be read after the refusal.
NOT_EMPTY_UNREAD = ("account {account} still holds money or open holds; `account` shows them; "
                    "refund it first")
# `not_empty` of an account at zero: the money is reserved by hot-water holds.
NOT_EMPTY_HELD = ("account {account} has {held} yuan reserved by open holds; wait until they "
                  "complete or expire")

# An `ok` that changed nothing (no `txn`, docs/PROTOCOL.md §4.15): what was already so.
NOTHING_CHANGED = {
    "found": "card {card} was not lost (active, or replaced: a replaced card stays blocked)",
    "lost": "card {card} was already lost",
    "freeze": "account {account} was already frozen",
    "unfreeze": "account {account} was not frozen",
    "unlock": "the PIN of account {account} was neither locked nor had wrong tries",
    "close_account": "account {account} was already closed",
}


def fen_to_yuan(fen: int) -> str:
    sign = "-" if fen < 0 else ""
    return f"{sign}{abs(fen) // 100}.{abs(fen) % 100:02d}"


class _Facts(dict):
    def __missing__(self, key):
        return "?"


def facts_of(request: dict, signon: str = "?", account_reply: dict | None = None) -> _Facts:
    """What a sentence may name: the request's fields, amounts in yuan, the account's money."""
    facts = _Facts({key: value for key, value in request.items() if isinstance(value, str)})
    facts["signon"] = signon
    if isinstance(request.get("amount"), int):
        facts["yuan"] = fen_to_yuan(request["amount"])
    facts["card"] = request.get("card") or request.get("old") or "?"
    facts["subject"] = (f"account {request['account']}" if "account" in request
                        else f"card {request['card']}" if "card" in request
                        else f"credential {request['who']}" if "who" in request
                        else "it")
    if account_reply and account_reply.get("code") == "ok":
        facts["balance"] = fen_to_yuan(account_reply["balance"])
        facts["held"] = fen_to_yuan(account_reply["balance"] - account_reply["available"])
    return facts


def sentence(code: str, request: dict | None = None, signon: str = "?",
             account_reply: dict | None = None) -> str:
    """`code: sentence` for a refusal (or a connection-level error) of `request`."""
    request = request or {}
    facts = facts_of(request, signon, account_reply)
    kind = request.get("t")
    template = SENTENCES.get((code, kind)) or SENTENCES.get(code)
    if code == "not_empty" and "balance" not in facts:
        template = NOT_EMPTY_UNREAD
    elif code == "not_empty" and (kind == "refund" or account_reply.get("balance") == 0):
        template = NOT_EMPTY_HELD
    if template is None:
        return f"{code}: the switch answered a code this tool does not know"
    return f"{code}: {template.format_map(facts)}"


def nothing_changed(reply: dict, request: dict) -> str | None:
    """The sentence for an `ok` that changed nothing, or None when it changed something."""
    template = NOTHING_CHANGED.get(reply.get("t"))
    if template is None or reply.get("txn") is not None or reply.get("code") != "ok":
        return None
    return "nothing changed: " + template.format_map(facts_of(request))


def every_code() -> tuple:
    """Every code a reply or an error frame can carry but `ok`."""
    return tuple(name for name in CODE_NAMES if name != "ok") + CONNECTION_CODES
