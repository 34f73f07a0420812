"""Request fields (docs/PROTOCOL.md §4.2, §4.3 step 4, the tables of §4.5 and §4.14): which
fields each request lists, their formats at their bounds, and `bad_amount` before
`bad_request`."""

import pytest

from tests.ledger.conftest import CARD, ID_LAST6, PIN, REQUEST_TYPES, ROOM, STUDENT, limits

# docs/PROTOCOL.md §4.5, §4.13.1 and §4.14: (required, optional) fields of each request,
# `id` aside (tests/ledger/test_dispatch.py), and a sender and message with all of them
# well formed.
FIELDS = {
    "ping": ((), (), "pos", {}),
    "debit": (("card", "amount"), ("pin",), "pos", {"card": CARD, "amount": 100, "pin": PIN}),
    "qr_debit": (("qr", "amount"), (), "pos",
                 {"qr": f"{STUDENT}.1.0badf00d.{'0' * 20}", "amount": 100}),
    "hold": (("amount",), ("card", "pin", "qr"), "water",
             {"card": CARD, "amount": 100, "pin": PIN}),
    "complete": (("hold", "amount"), (), "water", {"hold": "H999", "amount": 0}),
    "void": (("hold",), (), "water", {"hold": "H999"}),
    "reverse": (("target",), (), "pos", {"target": "earlier"}),
    "offline": (("records",), (), "pos",
                {"records": [{"id": "r", "card": CARD, "amount": 1, "at": 0}]}),
    "balance": (("card",), (), "pos", {"card": CARD}),
    "blacklist": (("since",), ("after",), "pos", {"since": 0, "after": "0000"}),
    "settle": (("day", "count", "total"), (), "pos", {"day": "2026-11-18", "count": 0,
                                                      "total": 0}),
    "meter": (("account", "amount", "what"), (), "meter",
              {"account": ROOM, "amount": 1, "what": "water"}),
    "credit": (("account", "amount", "source"), (), "service",
               {"account": STUDENT, "amount": 1, "source": "alipay"}),
    "account": (("account",), (), "service", {"account": STUDENT}),
    "history": (("account",), ("before", "limit"), "service",
                {"account": STUDENT, "before": 5, "limit": 2}),
    "lost": (("card",), (), "service", {"card": CARD}),
    "found": (("card",), (), "service", {"card": CARD}),
    "set_limits": (("account",), ("per_tx", "daily", "no_pin"), "service",
                   {"account": STUDENT, "per_tx": 9000, "daily": 9000, "no_pin": 100}),
    "set_pin": (("account", "old", "new"), (), "service",
                {"account": STUDENT, "old": PIN, "new": "654321"}),
    "reset_pin": (("account", "id_last6"), (), "service",
                  {"account": STUDENT, "id_last6": ID_LAST6}),
    "verify_pin": (("account", "pin"), (), "service", {"account": STUDENT, "pin": PIN}),
    "virtual_card": (("account",), (), "service", {"account": STUDENT}),
    "rooms": ((), ("school", "building", "prefix", "after", "limit"), "service",
              {"school": "WH", "building": "8", "prefix": "WH-8", "after": "WH-8A", "limit": 5}),
    "open_account": (("account", "school", "kind"), ("holder", "id_last6", "utility"), "admin",
                     {"account": "WH20239999", "school": "WH", "kind": "person",
                      "holder": "李四", "id_last6": "111111"}),
    "close_account": (("account",), (), "admin", {"account": STUDENT}),
    "refund": (("account",), (), "admin", {"account": STUDENT}),
    "subsidy": (("account", "amount", "expires", "batch"), (), "admin",
                {"account": STUDENT, "amount": 100, "expires": "2099-12-31", "batch": "2026-11"}),
    "issue_card": (("account", "card"), (), "admin", {"account": STUDENT, "card": "0A0A0A0A"}),
    "replace_card": (("account", "old", "new"), (), "admin",
                     {"account": STUDENT, "old": CARD, "new": "0A0A0A0A"}),
    "freeze": (("account",), ("reason",), "admin", {"account": STUDENT, "reason": "x"}),
    "unfreeze": (("account",), ("reason",), "admin", {"account": STUDENT, "reason": "x"}),
    "unlock": (("account",), (), "admin", {"account": STUDENT}),
    "add_credential": (("who", "role"), ("school", "kind", "merchant"), "admin",
                       {"who": "WH-POS-9", "role": "terminal", "school": "WH", "kind": "pos",
                        "merchant": "canteen"}),
    "revoke_credential": (("who",), (), "admin", {"who": "WH-POS-2"}),
    "rotate_key": (("who",), (), "admin", {"who": "WH-POS-2"}),
}
NO_ID = {"ping", "balance", "blacklist", "settle", "account", "history", "verify_pin", "rooms",
         "offline"}
FIELD_CODES = {"bad_request", "bad_amount"}


def sender(world, name):
    return world.admin if name == "admin" else getattr(world, name)


def send(world, t, message, request_id="F-1"):
    fields = dict(message) if t in NO_ID else {**message, "id": request_id}
    return world.send(sender(world, FIELDS[t][2]), t, **fields)


def expected_code(field: str) -> str:
    return "bad_amount" if field == "amount" else "bad_request"


def test_the_field_table_names_every_request_type():
    assert set(FIELDS) == REQUEST_TYPES


@pytest.mark.parametrize("t", sorted(FIELDS))
def test_well_formed_fields_pass_the_field_checks(campus, t):
    # The base of the tests below: with every field well formed, the reply is the request's
    # own (ok or one of its rules), never a field error.
    assert send(campus, t, FIELDS[t][3])["code"] not in FIELD_CODES


@pytest.mark.parametrize("t", sorted(t for t in FIELDS if FIELDS[t][0]))
def test_each_required_field_left_out_is_a_field_error(campus, t):
    required, _, _, message = FIELDS[t]
    before = campus.last_txn
    for field in required:
        partial = {name: value for name, value in message.items() if name != field}
        assert send(campus, t, partial) == {"t": t, "code": expected_code(field)}, field
    assert campus.last_txn == before


@pytest.mark.parametrize("t", sorted(t for t in FIELDS if FIELDS[t][0] or FIELDS[t][1]))
def test_each_listed_field_sent_as_nil_is_present_and_mistyped(campus, t):
    required, optional, _, message = FIELDS[t]
    for field in required + optional:
        assert send(campus, t, {**message, field: None}) == {
            "t": t, "code": expected_code(field)}, field


MISTYPED_AMOUNTS = ["100", 1.0, True, None, b"1", [1], {"fen": 1}]


@pytest.mark.parametrize("t", sorted(t for t in FIELDS
                                     if "amount" in FIELDS[t][0] and t != "complete"))
@pytest.mark.parametrize("amount", MISTYPED_AMOUNTS + ["missing"], ids=repr)
def test_a_missing_or_mistyped_amount_is_bad_amount_whatever_else_is_wrong(campus, t, amount):
    required, _, _, message = FIELDS[t]
    # Every other required field mistyped as well.
    broken = {name: ["mistyped"] for name in required if name != "amount"}
    if amount != "missing":
        broken["amount"] = amount
    assert send(campus, t, broken) == {"t": t, "code": "bad_amount"}


@pytest.mark.parametrize("amount", MISTYPED_AMOUNTS + ["missing", -1], ids=repr)
def test_completes_amount_is_checked_among_its_own_rules(campus, amount):
    # docs/PROTOCOL.md §4.3 step 4 and §4.8: `complete` types and ranges its amount first
    # among its own rules, so after the field checks of the other fields.
    message = {"hold": "H999"} if amount == "missing" else {"hold": "H999", "amount": amount}
    assert send(campus, "complete", message) == {"t": "complete", "code": "bad_amount"}
    if amount != "missing":
        assert send(campus, "complete", {**message, "hold": 7}) == {
            "t": "complete", "code": "bad_request"}


def test_complete_without_amount_and_a_mistyped_hold_is_bad_request(campus):
    assert send(campus, "complete", {"hold": 7}) == {"t": "complete", "code": "bad_request"}


# msgpack's extremes: nothing outside them can come off the wire.
@pytest.mark.parametrize("t", ["debit", "qr_debit", "hold", "meter", "credit", "complete"])
@pytest.mark.parametrize("amount", [limits.int64_max + 1, limits.id_int_max, -2**63])
def test_an_amount_beyond_its_range_up_to_msgpacks_ints_is_bad_amount(campus, t, amount):
    assert send(campus, t, {**FIELDS[t][3], "amount": amount}) == {"t": t, "code": "bad_amount"}


# ---------------------------------------------------------------- formats at their bounds
def _bound_cases():
    """(t, field, value, code): a value at a format's bound, and one past it."""
    a32, a33 = "A" * limits.account_id_chars_max, "A" * (limits.account_id_chars_max + 1)
    c_min, c_max = "0" * limits.card_id_chars_min, "0" * limits.card_id_chars_max
    text = "s" * limits.source_chars_max
    return [
        ("account", "account", a32, "unknown_account"),
        ("account", "account", a33, "bad_request"),
        ("account", "account", "", "bad_request"),
        ("account", "account", "wh20230001", "bad_request"),
        ("account", "account", "WH_1", "bad_request"),
        ("account", "account", "WH-8D-1006", "ok"),
        ("balance", "card", c_min, "card_unknown"),
        ("balance", "card", c_min[1:], "bad_request"),
        ("balance", "card", c_max, "card_unknown"),
        ("balance", "card", c_max + "0", "bad_request"),
        ("balance", "card", CARD.lower(), "bad_request"),
        ("balance", "card", "04A1B2C3DG", "bad_request"),
        ("verify_pin", "pin", "000000", "pin_invalid"),
        ("verify_pin", "pin", "00000", "bad_request"),
        ("verify_pin", "pin", "0000000", "bad_request"),
        ("verify_pin", "pin", "12345a", "bad_request"),
        ("verify_pin", "pin", 123456, "bad_request"),
        ("set_pin", "new", "12345", "bad_request"),
        ("set_pin", "old", "1234567", "bad_request"),
        ("reset_pin", "id_last6", "12345X", "identity_mismatch"),
        ("reset_pin", "id_last6", "1234X5", "bad_request"),
        ("reset_pin", "id_last6", "12345x", "bad_request"),
        ("reset_pin", "id_last6", "1234567", "bad_request"),
        ("credit", "source", text, "ok"),
        ("credit", "source", text + "s", "bad_request"),
        ("credit", "source", "", "bad_request"),
        ("add_credential", "merchant", text, "ok"),
        ("add_credential", "merchant", text + "s", "bad_request"),
        ("add_credential", "merchant", "", "bad_request"),
        ("add_credential", "who", "a" * limits.credential_id_chars_max, "ok"),
        ("add_credential", "who", "a" * (limits.credential_id_chars_max + 1), "bad_request"),
        ("add_credential", "who", "", "bad_request"),
        ("add_credential", "who", "till/1", "bad_request"),
        ("add_credential", "who", "till\x001", "bad_request"),
        ("add_credential", "who", "A.b_c:d@e-1", "ok"),
        ("add_credential", "role", "downstream", "bad_request"),
        ("add_credential", "kind", "atm", "bad_request"),
        ("open_account", "holder", "名" * limits.holder_chars_max, "ok"),
        ("open_account", "holder", "名" * (limits.holder_chars_max + 1), "bad_request"),
        ("open_account", "holder", "", "ok"),
        ("open_account", "kind", "shop", "bad_request"),
        ("freeze", "reason", "r" * limits.holder_chars_max, "ok"),
        ("freeze", "reason", "r" * (limits.holder_chars_max + 1), "bad_request"),
        ("qr_debit", "qr", "q" * 256, "qr_invalid"),
        ("qr_debit", "qr", "q" * 257, "bad_request"),
        ("qr_debit", "qr", b"q", "bad_request"),
        ("complete", "hold", "H" + "1" * 255, "hold_unknown"),
        ("complete", "hold", "H" + "1" * 256, "bad_request"),
        ("void", "hold", "", "hold_unknown"),
        ("void", "hold", "H0", "hold_unknown"),
        ("void", "hold", "h1", "hold_unknown"),
        ("meter", "what", "gas", "bad_request"),
        ("settle", "day", "2028-02-29", "ok"),
        ("settle", "day", "2026-02-29", "bad_request"),
        ("settle", "day", "2026-13-01", "bad_request"),
        ("settle", "day", "2026-11-31", "bad_request"),
        ("settle", "day", "20261118", "bad_request"),
        ("settle", "day", "2026-1-18", "bad_request"),
        ("settle", "count", limits.int64_max, "ok"),
        ("settle", "count", limits.int64_max + 1, "bad_request"),
        ("settle", "count", -1, "bad_request"),
        ("settle", "count", limits.id_int_max, "bad_request"),
        ("settle", "total", True, "bad_request"),
        ("history", "before", 1, "ok"),
        ("history", "before", 0, "bad_request"),
        ("history", "before", limits.int64_max + 1, "bad_request"),
        ("history", "limit", 1, "ok"),
        ("history", "limit", 0, "bad_request"),
        ("history", "limit", limits.history_limit_max, "ok"),
        ("history", "limit", limits.history_limit_max + 1, "bad_request"),
        ("set_limits", "no_pin", -1, "bad_request"),
        ("set_limits", "no_pin", 0, "ok"),
        ("set_limits", "per_tx", 1.5, "bad_request"),
        ("blacklist", "since", limits.int64_max + 1, "bad_request"),
        ("blacklist", "after", "000", "bad_request"),
        ("blacklist", "after", "0000", "ok"),
        ("reverse", "target", "t" * limits.id_str_chars_max, "ok"),
        ("reverse", "target", "t" * (limits.id_str_chars_max + 1), "bad_request"),
        ("reverse", "target", limits.id_int_max, "ok"),
        ("reverse", "target", -1, "bad_request"),
    ]


@pytest.mark.parametrize("t, field, value, code", _bound_cases(),
                         ids=lambda value: repr(value)[:24])
def test_field_formats_at_their_bounds(campus, t, field, value, code):
    assert send(campus, t, {**FIELDS[t][3], field: value})["code"] == code


def test_every_int_but_the_id_must_fit_int64_even_in_its_own_range(campus):
    # `since` 0 or below asks for the full list (docs/PROTOCOL.md §4.13 rule 2).
    assert send(campus, "blacklist", {"since": -limits.int64_max}) == {
        "t": "blacklist", "code": "ok", "version": 0, "full": [], "more": False}


def test_the_smallest_int64_is_a_valid_since(campus):
    assert send(campus, "blacklist", {"since": -2**63}) == {
        "t": "blacklist", "code": "ok", "version": 0, "full": [], "more": False}
