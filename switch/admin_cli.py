"""`python -m switch admin …`: the card office from a terminal, speaking the wire protocol.

Every command signs on with an admin (or service) credential, sends one request
(or, for `import`, pipelined batches) and prints the reply. Amounts are typed in
yuan with at most two decimals ("12.50") and converted to fen exactly.
"""

import argparse
import csv
import json
import os
import secrets
import sys
import time
from decimal import Decimal, InvalidOperation

import trio

from switch.shell.client import Client, SwitchError
from switch.codec import ProtocolError

import_pipeline_depth = 64      # requests in flight while importing (the switch's cap)
import_rows_max = 1_000_000


class UsageError(Exception):
    pass


def yuan_to_fen(text: str) -> int:
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise UsageError(f"not an amount: {text!r}") from None
    fen = value * 100
    if fen != fen.to_integral_value() or fen <= 0:
        raise UsageError(f"amount must be positive with at most 2 decimals: {text!r}")
    return int(fen)


def fen_to_yuan(fen: int) -> str:
    sign = "-" if fen < 0 else ""
    return f"{sign}{abs(fen) // 100}.{abs(fen) % 100:02d}"


def _new_id(prefix: str) -> str:
    return f"{prefix}-{time.strftime('%Y%m%d%H%M%S')}-{secrets.token_hex(3)}"


def _request_for(args) -> dict:
    """The wire request of a single-request command."""
    command = args.admin_command
    rid = args.id or _new_id(f"cli-{command}")
    if command == "open-account":
        message = {"t": "open_account", "account": args.account, "school": args.school,
                   "kind": args.kind, "id": rid}
        if args.holder:
            message["holder"] = args.holder
        if args.kind == "person":
            message["id_last6"] = args.id_last6
        elif args.utility:
            message["utility"] = args.utility
        return message
    if command == "issue-card":
        return {"t": "issue_card", "account": args.account, "card": args.card, "id": rid}
    if command == "replace-card":
        return {"t": "replace_card", "account": args.account, "old": args.old, "new": args.new,
                "id": rid}
    if command in ("lost", "found"):
        return {"t": command, "card": args.card, "id": rid}
    if command in ("freeze", "unfreeze"):
        message = {"t": command, "account": args.account, "id": rid}
        if args.reason:
            message["reason"] = args.reason
        return message
    if command in ("unlock", "close-account"):
        return {"t": command.replace("-", "_"), "account": args.account, "id": rid}
    if command == "credit":
        return {"t": "credit", "account": args.account, "amount": yuan_to_fen(args.yuan),
                "source": args.source, "id": rid}
    if command == "account":
        return {"t": "account", "account": args.account}
    if command == "history":
        message = {"t": "history", "account": args.account, "limit": args.limit}
        if args.before:
            message["before"] = args.before
        return message
    if command == "add-terminal":
        message = {"t": "add_credential", "who": args.who, "role": "terminal",
                   "school": args.school, "kind": args.kind, "id": rid}
        if args.merchant:
            message["merchant"] = args.merchant
        return message
    if command == "add-service":
        message = {"t": "add_credential", "who": args.who, "role": "service", "id": rid}
        if args.school:
            message["school"] = args.school
        return message
    if command == "revoke":
        return {"t": "revoke_credential", "who": args.who, "id": rid}
    raise UsageError(f"unknown command {command}")


def _describe(reply: dict) -> str:
    """One operator-readable paragraph for a reply."""
    code = reply.get("code")
    if code != "ok":
        return f"refused: {code}"
    kind = reply.get("t")
    if kind == "account":
        cards = ", ".join(f"{c['card']} ({c['state']})" for c in reply["cards"]) or "none"
        limits = reply["limits"]
        lines = [f"account {reply['account']} ({reply['school']}, {reply['kind']}) "
                 f"holder {reply.get('holder') or '-'}",
                 f"  status {reply['status']}{'  PIN LOCKED' if reply['pin_locked'] else ''}",
                 f"  balance {fen_to_yuan(reply['balance'])} yuan, available "
                 f"{fen_to_yuan(reply['available'])} yuan",
                 f"  cards: {cards}",
                 f"  limits: per tx {fen_to_yuan(limits['per_tx'])}, daily "
                 f"{fen_to_yuan(limits['daily'])}, no PIN up to {fen_to_yuan(limits['no_pin'])}"]
        if "power" in reply:
            lines.append(f"  utility {reply['utility']}, power {'on' if reply['power'] else 'OFF'}")
        return "\n".join(lines)
    if kind == "history":
        lines = [f"{'txn':>8}  {'when (UTC)':19}  {'kind':12} {'amount':>10} {'balance':>10}  who"]
        for item in reply["items"]:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(item["at"] / 1000))
            lines.append(f"{item['txn']:>8}  {when}  {item['kind']:12} "
                         f"{fen_to_yuan(item['amount']):>10} {fen_to_yuan(item['balance']):>10}"
                         f"  {item['who'] or '-'}")
        if reply["next"] is not None:
            lines.append(f"(more: --before {reply['next']})")
        return "\n".join(lines)
    parts = ["ok"]
    if reply.get("replay"):
        parts.append("(already done earlier: replayed)")
    if reply.get("txn") is not None:
        parts.append(f"txn {reply['txn']}")
    if "balance" in reply:
        parts.append(f"balance {fen_to_yuan(reply['balance'])} yuan")
    if "blacklist" in reply:
        parts.append(f"blacklist version {reply['blacklist']}")
    return " ".join(parts)


# ------------------------------------------------------------------ CSV import
IMPORT_COLUMNS = ("type", "account", "school", "holder", "id_last6", "card", "utility")


def import_requests(rows):
    """(line, request) pairs for the rows of a start-of-term CSV, and (line, reason) rejects.

    Columns: type (student | room), account, school, holder, id_last6 (students),
    card (students, optional), utility (rooms: both | electric | water).
    Request ids are derived from the row, so a re-run replays instead of doubling.
    """
    requests, rejects = [], []
    for line, row in rows:
        kind = (row.get("type") or "").strip()
        account = (row.get("account") or "").strip()
        school = (row.get("school") or "").strip()
        if kind not in ("student", "room") or not account or not school:
            rejects.append((line, "needs type (student|room), account and school"))
            continue
        if kind == "student":
            message = {"t": "open_account", "account": account, "school": school,
                       "kind": "person", "id_last6": (row.get("id_last6") or "").strip(),
                       "id": f"import-open-{account}"}
            holder = (row.get("holder") or "").strip()
            if holder:
                message["holder"] = holder
            requests.append((line, message))
            card = (row.get("card") or "").strip()
            if card:
                requests.append((line, {"t": "issue_card", "account": account, "card": card,
                                        "id": f"import-card-{account}-{card}"}))
        else:
            requests.append((line, {"t": "open_account", "account": account, "school": school,
                                    "kind": "utility",
                                    "utility": (row.get("utility") or "both").strip(),
                                    "id": f"import-open-{account}"}))
    return requests, rejects


async def run_import(client: Client, path: str, out=sys.stdout) -> dict:
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        missing = {"type", "account", "school"} - set(reader.fieldnames or ())
        if missing:
            raise UsageError(f"{path}: missing column(s) {sorted(missing)}; expected "
                             f"{', '.join(IMPORT_COLUMNS)}")
        rows = []
        for line, row in enumerate(reader, start=2):
            if len(rows) >= import_rows_max:
                raise UsageError(f"{path}: more than {import_rows_max} rows")
            rows.append((line, row))
    requests, rejects = import_requests(rows)
    counts = {"rows": len(rows), "created": 0, "already": 0, "rejected": 0}
    for start in range(0, len(requests), import_pipeline_depth):
        chunk = requests[start:start + import_pipeline_depth]
        replies = await client.pipeline([message for _, message in chunk])
        for (line, message), reply in zip(chunk, replies):
            code = reply["code"]
            if code == "ok" and reply.get("replay"):
                counts["already"] += 1
            elif code == "ok":
                counts["created"] += 1
            elif code == "exists" and message["t"] == "open_account":
                counts["already"] += 1  # opened earlier by other means: nothing to do
            elif code == "exists":
                # A card issued under another request may belong to another student.
                rejects.append((line, f"issue card {message['card']}: exists (already issued; "
                                      f"`account` shows whose it is)"))
            else:
                what = message["t"].replace("_", " ")
                rejects.append((line, f"{what} {message.get('card') or message['account']}: "
                                      f"{code}"))
    counts["rejected"] = len(rejects)
    print(f"import {path}: {counts['rows']} rows, {counts['created']} created, "
          f"{counts['already']} already present, {counts['rejected']} rejected", file=out)
    for line, reason in sorted(rejects):
        print(f"  line {line}: {reason}", file=out)
    return {**counts, "rejects": sorted(rejects)}


# ------------------------------------------------------------------ command line
def add_parser(commands) -> None:
    admin = commands.add_parser("admin", help="card office commands over the wire")
    admin.add_argument("--connect", required=True, help="HOST:PORT of the switch")
    admin.add_argument("--data", help="data dir whose admin.key to use")
    admin.add_argument("--key-file", help="file with the credential's key (64 hex chars)")
    admin.add_argument("--who", dest="signon_who", default="admin",
                       help="credential to sign on with (default admin)")
    admin.add_argument("--json", action="store_true", help="print the raw reply as JSON")
    admin.add_argument("--id", help="request id (default: generated); reuse it to retry safely")
    sub = admin.add_subparsers(dest="admin_command", required=True)
    p = sub.add_parser("open-account")
    p.add_argument("account")
    p.add_argument("--school", required=True)
    p.add_argument("--kind", choices=("person", "utility"), default="person")
    p.add_argument("--holder")
    p.add_argument("--id-last6", help="last six of the ID card number (person)")
    p.add_argument("--utility", choices=("both", "electric", "water"))
    p = sub.add_parser("issue-card")
    p.add_argument("account")
    p.add_argument("card")
    p = sub.add_parser("replace-card")
    p.add_argument("account")
    p.add_argument("old")
    p.add_argument("new")
    for name in ("lost", "found"):
        sub.add_parser(name).add_argument("card")
    for name in ("freeze", "unfreeze"):
        p = sub.add_parser(name)
        p.add_argument("account")
        p.add_argument("--reason")
    for name in ("unlock", "close-account", "account"):
        sub.add_parser(name).add_argument("account")
    p = sub.add_parser("credit")
    p.add_argument("account")
    p.add_argument("yuan", help="amount in yuan, e.g. 50 or 12.50")
    p.add_argument("--source", default="card-office")
    p = sub.add_parser("history")
    p.add_argument("account")
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--before", type=int)
    p = sub.add_parser("add-terminal")
    p.add_argument("who")
    p.add_argument("--school", required=True)
    p.add_argument("--kind", choices=("pos", "water", "meter"), required=True)
    p.add_argument("--merchant")
    p.add_argument("--key-out", help="write the new key here (mode 0600) instead of printing")
    p = sub.add_parser("add-service")
    p.add_argument("who")
    p.add_argument("--school")
    p.add_argument("--key-out")
    sub.add_parser("revoke").add_argument("who")
    sub.add_parser("import").add_argument("csv", help="start-of-term CSV (students, cards, rooms)")


def _key(args) -> bytes:
    path = args.key_file or (os.path.join(args.data, "admin.key") if args.data else None)
    if path is None:
        raise UsageError("give --data DIR (uses DIR/admin.key) or --key-file FILE")
    try:
        with open(path) as handle:
            return bytes.fromhex(handle.read().strip())
    except (OSError, ValueError) as error:
        raise UsageError(f"cannot read key from {path}: {error}") from None


def _write_key(path: str, key: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(key.hex() + "\n")


async def _run(args) -> int:
    host, _, port = args.connect.rpartition(":")
    client = await Client.connect(host, int(port), args.signon_who, _key(args))
    try:
        if args.admin_command == "import":
            result = await run_import(client, args.csv)
            return 0 if not result["rejected"] else 3
        reply = await client.request(_request_for(args))
    finally:
        await client.aclose()
    if args.json:
        print(json.dumps({k: (v.hex() if isinstance(v, bytes) else v) for k, v in reply.items()},
                         ensure_ascii=False))
    elif reply.get("key") is not None:
        if getattr(args, "key_out", None):
            _write_key(args.key_out, reply["key"])
            print(f"ok: credential {args.who} created; key written to {args.key_out}")
        else:
            print(f"ok: credential {args.who} created; key {reply['key'].hex()}")
    else:
        print(_describe(reply))
    return 0 if reply.get("code") == "ok" else 3


def main(args) -> int:
    try:
        return trio.run(_run, args)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except (OSError, SwitchError, ProtocolError, trio.EndOfChannel) as error:
        print(f"error: cannot talk to the switch at {args.connect}: {error}", file=sys.stderr)
        return 4
