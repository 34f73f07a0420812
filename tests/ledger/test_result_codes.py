"""Every result code of docs/PROTOCOL.md §4.16 is produced by some test of tests/ledger, and
every request type produces each code the spec gives it.

`conftest.World.request` records the (type, code) of every reply; the last test of the run
compares what was seen with the table below, taken from docs/PROTOCOL.md §3 and §4.
"""

import pytest

from tests.ledger.conftest import (OBSERVED, OBSERVED_OFFLINE, REQUEST_TYPES, RESULT_CODES,
                                   whole_directory_ran)

# Codes no request reaches `execute` with: the shell answers them on its own.
EXCLUDED = {
    "busy": "answered by the shell before execute, for a full commit queue or a spent request "
            "budget (docs/PROTOCOL.md §2.3, §4.3); tests/shell/test_abuse.py",
}
# Connection-level codes end a connection in an error frame (§1.4): the shell's, never a reply.
CONNECTION_LEVEL = {
    "unauthenticated": "hello and revocation, tests/shell and tests/conformance",
    "version_unsupported": "hello, tests/conformance",
    "mac_invalid": "frame tags, tests/codec and tests/shell",
    "seq_invalid": "request order on a connection, tests/codec and tests/shell",
    "frame_invalid": "framing, tests/codec",
    "frame_too_large": "framing, tests/codec",
}

# What any request with an id can produce (§4.3): its id well formed and not reused.
_ID = {"bad_request", "not_permitted", "id_reuse"}
# §4.6: the rules of a payment, by card or by code.
_STANDING = {"wrong_school", "account_closed", "account_frozen", "pin_locked", "limit_per_tx",
             "limit_daily", "insufficient_funds"}
_CARD = {"card_unknown", "card_lost", "card_blocked", "pin_required", "pin_invalid"}
_QR = {"qr_invalid", "virtual_card_off", "qr_expired", "qr_used"}
_ACCOUNT = {"unknown_account", "wrong_school"}           # §4.14 for a service's request

CODES_BY_REQUEST = {
    "ping": {"ok"},
    "debit": {"ok", "bad_amount", "reversed", "repeat_tap", "meal_limit"} | _ID | _CARD
    | _STANDING,
    "qr_debit": {"ok", "bad_amount", "reversed", "repeat_tap", "meal_limit"} | _ID | _QR
    | _STANDING,
    "hold": {"ok", "bad_amount"} | _ID | _CARD | _QR | _STANDING,
    "complete": {"ok", "bad_amount", "hold_unknown", "hold_expired", "hold_closed", "over_hold",
                 "reversed"} | _ID,
    "void": {"ok", "hold_unknown", "hold_expired", "hold_closed"} | _ID,
    "reverse": {"ok", "reverse_window", "account_closed"} | _ID,
    "offline": {"ok", "bad_request", "not_permitted"},
    "balance": {"ok", "bad_request", "not_permitted", "card_unknown", "wrong_school",
                "card_lost", "card_blocked"},
    "blacklist": {"ok", "bad_request", "not_permitted"},
    "settle": {"ok", "bad_request", "not_permitted"},
    "meter": {"ok", "bad_amount", "account_closed"} | _ID | _ACCOUNT,
    "credit": {"ok", "bad_amount", "account_closed"} | _ID | _ACCOUNT,
    "account": {"ok", "bad_request", "not_permitted"} | _ACCOUNT,
    "history": {"ok", "bad_request", "not_permitted"} | _ACCOUNT,
    "rooms": {"ok", "bad_request", "not_permitted", "wrong_school"},
    "lost": {"ok", "card_unknown", "wrong_school", "card_blocked"} | _ID,
    "found": {"ok", "card_unknown", "wrong_school"} | _ID,
    "set_limits": {"ok", "account_closed"} | _ID | _ACCOUNT,
    "set_pin": {"ok", "pin_locked", "pin_invalid", "account_closed"} | _ID | _ACCOUNT,
    "reset_pin": {"ok", "identity_mismatch", "pin_locked", "account_closed"} | _ID | _ACCOUNT,
    "verify_pin": {"ok", "bad_request", "not_permitted", "pin_locked",
                   "pin_invalid", "account_closed"} | _ACCOUNT,
    "virtual_card": {"ok", "account_closed"} | _ID | _ACCOUNT,
    # Admin requests: an admin has no school, so none of them can be wrong_school (§3).
    "open_account": {"ok", "exists"} | _ID,
    "close_account": {"ok", "unknown_account", "not_empty"} | _ID,
    # Only admins may issue subsidies, and an admin has no school: never wrong_school.
    "subsidy": {"ok", "bad_amount", "account_closed", "unknown_account", "exists"} | _ID,
    "issue_card": {"ok", "unknown_account", "account_closed", "exists"} | _ID,
    "replace_card": {"ok", "unknown_account", "account_closed", "card_unknown", "card_blocked",
                     "exists"} | _ID,
    "freeze": {"ok", "unknown_account", "account_closed"} | _ID,
    "unfreeze": {"ok", "unknown_account", "account_closed"} | _ID,
    "unlock": {"ok", "unknown_account", "account_closed"} | _ID,
    "refund": {"ok", "unknown_account", "account_closed", "not_empty",
               "insufficient_funds"} | _ID,
    "add_credential": {"ok", "exists"} | _ID,
    "revoke_credential": {"ok"} | _ID,
    "rotate_key": {"ok"} | _ID,
}
# §4.10: the results of an offline upload's records.
OFFLINE_RECORD_CODES = {"ok", "bad_request", "id_reuse", "bad_amount", "card_unknown",
                        "wrong_school", "too_old", "account_closed"}
# A request that fails inside the switch, whatever its type (§4.3); a type that is no str.
ANY_REQUEST = {("error", "bad_request"), ("error", "internal")} | {
    (t, "internal") for t in REQUEST_TYPES}


def test_the_table_covers_every_request_type_and_every_code():
    assert set(CODES_BY_REQUEST) == REQUEST_TYPES
    assert not set(CONNECTION_LEVEL) & RESULT_CODES
    named = set().union(*CODES_BY_REQUEST.values()) | OFFLINE_RECORD_CODES | {"internal"}
    assert named <= RESULT_CODES
    assert RESULT_CODES - named == set(EXCLUDED)


def test_every_result_code_is_produced(request):
    """Runs last (conftest moves it there); only meaningful after the whole directory ran."""
    if not whole_directory_ran(request.node.nodeid):
        pytest.skip("checks the codes of a run of the whole of tests/ledger")
    missing = {t: sorted(codes - {code for seen_t, code in OBSERVED if seen_t == t})
               for t, codes in CODES_BY_REQUEST.items()}
    assert {t: codes for t, codes in missing.items() if codes} == {}
    assert sorted(OFFLINE_RECORD_CODES - OBSERVED_OFFLINE) == []
    seen = {code for _, code in OBSERVED} | OBSERVED_OFFLINE
    assert sorted(RESULT_CODES - set(EXCLUDED) - seen) == []
    unexpected = {(t, code) for t, code in OBSERVED
                  if code not in CODES_BY_REQUEST.get(t, ()) and (t, code) not in ANY_REQUEST}
    # Unknown types answered bad_request echo their own `t`.
    assert {(t, code) for t, code in unexpected
            if not (t not in REQUEST_TYPES and code == "bad_request")} == set()
