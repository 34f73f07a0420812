"""Request field schemas (docs/PROTOCOL.md §4.2, §4.5, §4.14): which fields each `t`
carries and their types.

`validate(t, message)` returns (code, values): code is None when the fields are
well-formed, else codes.BAD_REQUEST or codes.BAD_AMOUNT. The listed fields, in schema
order, are also what idempotency compares (`fingerprint_values`).
"""

from switch import limits
from switch.core import codes
from switch.identifiers import ACCOUNT as _ACCOUNT, CARD as _CARD, DAY as _DAY
from switch.identifiers import BUILDING as _BUILDING, ID_LAST6 as _ID_LAST6, PIN as _PIN
from switch.identifiers import is_credential_id

# Codes are ints everywhere in the ledger; a reply names them (codes.CODE_NAMES).
BAD_REQUEST = codes.BAD_REQUEST
BAD_AMOUNT = codes.BAD_AMOUNT
INVALID = object()


def account_id(value):
    return value if type(value) is str and _ACCOUNT.match(value) else INVALID


def card_id(value):
    return value if type(value) is str and _CARD.match(value) else INVALID


def building(value):
    return value if type(value) is str and _BUILDING.match(value) else INVALID


def pin(value):
    return value if type(value) is str and _PIN.match(value) else INVALID


def id_last6(value):
    return value if type(value) is str and _ID_LAST6.match(value) else INVALID


def request_id(value):
    if type(value) is str:
        return value if 1 <= len(value) <= limits.id_str_chars_max else INVALID
    if type(value) is int:
        return value if 0 <= value <= limits.id_int_max else INVALID
    return INVALID


def credential_id(value):
    return value if is_credential_id(value) else INVALID


def short_text(value):
    return value if type(value) is str and 1 <= len(value) <= limits.source_chars_max else INVALID


def any_text(value):
    return value if type(value) is str and len(value) <= limits.holder_chars_max else INVALID


# Integers a peer sends are stored and compared as int64: anything outside is refused here.
def non_negative_int(value):
    return value if type(value) is int and 0 <= value <= limits.int64_max else INVALID


def positive_int(value):
    return value if type(value) is int and 1 <= value <= limits.int64_max else INVALID


def any_int(value):
    return value if type(value) is int and -limits.int64_max - 1 <= value <= limits.int64_max else INVALID


def day(value):
    return value if type(value) is str and _DAY.match(value) else INVALID


def boolean(value):
    return value if type(value) is bool else INVALID


def one_of(*choices):
    def check(value):
        return value if type(value) is str and value in choices else INVALID
    return check


def str_value(value):
    return value if type(value) is str and len(value) <= 256 else INVALID


def amount(value):
    # Range against max_amount is the core's check_amount; here only the type.
    return value if type(value) is int else INVALID


def any_value(value):
    return value


# t -> ((name, validator, required), ...). `amount` fields give bad_amount.
_R, _O = True, False
SCHEMAS = {
    "ping": (),
    "debit": (("card", card_id, _R), ("amount", amount, _R), ("id", request_id, _R),
              ("pin", pin, _O), ("confirm", boolean, _O)),
    "qr_debit": (("qr", str_value, _R), ("amount", amount, _R), ("id", request_id, _R),
                 ("confirm", boolean, _O)),
    "hold": (("card", card_id, _O), ("qr", str_value, _O), ("amount", amount, _R),
             ("id", request_id, _R), ("pin", pin, _O)),
    # complete's amount, missing or not, is checked among its own rules (§4.8).
    "complete": (("hold", str_value, _R), ("amount", any_value, _O), ("id", request_id, _R)),
    "void": (("hold", str_value, _R), ("id", request_id, _R)),
    "reverse": (("target", request_id, _R), ("id", request_id, _R)),
    "offline": (("records", any_value, _R),),
    "balance": (("card", card_id, _R),),
    "blacklist": (("since", any_int, _R), ("after", card_id, _O)),
    "settle": (("day", day, _R), ("count", non_negative_int, _R), ("total", non_negative_int, _R)),
    "meter": (("account", account_id, _R), ("amount", amount, _R),
              ("what", one_of("electric", "water"), _R), ("id", request_id, _R)),
    "credit": (("account", account_id, _R), ("amount", amount, _R), ("id", request_id, _R),
               ("source", short_text, _R)),
    "account": (("account", account_id, _R),),
    "history": (("account", account_id, _R), ("before", positive_int, _O),
                ("limit", positive_int, _O)),
    "lost": (("card", card_id, _R), ("id", request_id, _R)),
    "found": (("card", card_id, _R), ("id", request_id, _R)),
    "set_limits": (("account", account_id, _R), ("per_tx", non_negative_int, _O),
                   ("daily", non_negative_int, _O), ("no_pin", non_negative_int, _O),
                   ("id", request_id, _R)),
    "set_pin": (("account", account_id, _R), ("old", pin, _R), ("new", pin, _R),
                ("id", request_id, _R)),
    "reset_pin": (("account", account_id, _R), ("id_last6", id_last6, _R), ("id", request_id, _R)),
    "verify_pin": (("account", account_id, _R), ("pin", pin, _R)),
    # `prefix` is the start of an account id, so it has an account id's syntax.
    "rooms": (("school", str_value, _O), ("building", building, _O), ("prefix", account_id, _O),
              ("after", account_id, _O), ("limit", positive_int, _O)),
    "virtual_card": (("account", account_id, _R), ("id", request_id, _R)),
    "open_account": (("account", account_id, _R), ("school", str_value, _R),
                     ("kind", one_of("person", "utility"), _R), ("holder", any_text, _O),
                     ("id_last6", id_last6, _O), ("utility", one_of("both", "electric", "water"), _O),
                     ("id", request_id, _R)),
    "close_account": (("account", account_id, _R), ("id", request_id, _R)),
    "refund": (("account", account_id, _R), ("id", request_id, _R)),
    "subsidy": (("account", account_id, _R), ("amount", amount, _R), ("expires", day, _R),
                ("batch", short_text, _R), ("id", request_id, _R)),
    "issue_card": (("account", account_id, _R), ("card", card_id, _R), ("id", request_id, _R)),
    "replace_card": (("account", account_id, _R), ("old", card_id, _R), ("new", card_id, _R),
                     ("id", request_id, _R)),
    "freeze": (("account", account_id, _R), ("reason", any_text, _O), ("id", request_id, _R)),
    "unfreeze": (("account", account_id, _R), ("reason", any_text, _O), ("id", request_id, _R)),
    "unlock": (("account", account_id, _R), ("id", request_id, _R)),
    "add_credential": (("who", credential_id, _R), ("role", one_of("terminal", "service", "admin"), _R),
                       ("school", str_value, _O), ("kind", one_of("pos", "water", "meter"), _O),
                       ("merchant", short_text, _O), ("meals", boolean, _O),
                       ("id", request_id, _R)),
    "revoke_credential": (("who", credential_id, _R), ("id", request_id, _R)),
    "rotate_key": (("who", credential_id, _R), ("id", request_id, _R)),
}

# Requests without an `id` of their own (docs/PROTOCOL.md §4.1): never remembered for idempotency.
WITHOUT_ID = frozenset(t for t, schema in SCHEMAS.items() if not any(n == "id" for n, _, _ in schema))


def validate(request_type: str, message: dict):
    """(None, values) when well-formed, else (code, None). `amount` is checked first."""
    schema = SCHEMAS[request_type]
    values = {}
    bad = None
    for name, check, required in schema:
        raw = message.get(name, INVALID)
        if raw is INVALID:
            if required:
                if name == "amount":
                    return BAD_AMOUNT, None
                bad = BAD_REQUEST
            continue
        value = check(raw)
        if value is INVALID:
            if name == "amount":
                return BAD_AMOUNT, None
            bad = BAD_REQUEST
            continue
        values[name] = value
    if bad is not None:
        return bad, None
    return None, values


def fingerprint_values(request_type: str, message: dict) -> list:
    """The values idempotency compares: every listed field, present or not."""
    return [message.get(name) for name, _, _ in SCHEMAS[request_type]]
