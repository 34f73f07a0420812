"""Who may send what (docs/PROTOCOL.md §3)."""

TERMINAL_KINDS = {
    "pos": frozenset({"debit", "qr_debit", "reverse", "offline", "balance", "blacklist", "settle"}),
    "water": frozenset({"hold", "complete", "void", "reverse", "offline", "balance", "blacklist",
                        "settle"}),
    "meter": frozenset({"meter"}),
}
SERVICE = frozenset({"credit", "account", "history", "lost", "found", "set_limits", "set_pin",
                     "reset_pin", "verify_pin", "virtual_card", "rooms"})
ADMIN = SERVICE | frozenset({"open_account", "close_account", "issue_card", "replace_card",
                             "freeze", "unfreeze", "unlock", "add_credential",
                             "revoke_credential", "rotate_key", "refund", "subsidy"})
ROLES = ("terminal", "service", "admin")


def permitted(role: str, kind: str | None, request_type: str) -> bool:
    if request_type == "ping":
        return True
    if role == "terminal":
        return request_type in TERMINAL_KINDS.get(kind, ())
    if role == "service":
        return request_type in SERVICE
    if role == "admin":
        return request_type in ADMIN
    return False
