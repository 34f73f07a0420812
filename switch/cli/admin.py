"""`python -m switch admin …`: the card office from a terminal, speaking the wire protocol.

Every command signs on with an admin (or service) credential, sends one request
(or, for `import`, pipelined batches) and prints the reply. Amounts are typed in
yuan with at most two decimals ("12.50") and converted to fen exactly.

Everything that can be checked here (arguments, amounts, key file, CSV) is checked
before connecting. Exit status: 0 done; 2 an operator's mistake, one line on stderr
saying what to do (bad argument or file, wrong or revoked key, no switch at that
address); 3 the switch refused the request, printed as its code and a sentence (or
rows of an import were rejected or half applied); 4 the connection
broke after sign-on (the request may or may not have been done: rerun it with the
same `--id`).
"""

import argparse
import codecs
import contextlib
import csv
import datetime
import hashlib
import io
import json
import os
import re
import secrets
import sys
import time
import unicodedata
import zoneinfo
from dataclasses import dataclass, field

import trio

from switch import identifiers, limits
from switch.shell.client import Client, SwitchError, pipeline_through_busy
from switch.codec import ProtocolError
from switch.codec.framing import encode_body
from switch.cli import output, refusals
from switch.cli.datadir import is_data_dir, read_admin_key
from switch.persistence.access import permission_problem
from switch.cli.refusals import fen_to_yuan
from switch.config.command_line import CommandLineParser
from switch.config.endpoints import explain, host_port_argument
from switch.config.keyfile import KeyFileError, claim_key_file, read_key_file, write_key

# Tried in this order when no --encoding is given: Excel on a Chinese Windows saves GB18030.
IMPORT_ENCODINGS = ("utf-8-sig", "gb18030")


class UsageError(Exception):
    pass


class SignOnRefused(Exception):
    pass


# Plain ASCII digits only: Decimal() would also take 1e3, Infinity, NaN and full-width digits.
_YUAN = re.compile(r"([0-9]+)(?:\.([0-9]{1,2}))?\Z")
_YUAN_DIGITS_MAX = len(str(limits.max_amount_fen_range[1] // 100))


def yuan_to_fen(text: str) -> int:
    match = _YUAN.match(text)
    if not match:
        raise UsageError(f"not an amount in yuan: {text!r}; type plain digits with at most two "
                         f"decimals, e.g. 12.50")
    whole, cents = match.group(1), match.group(2) or "0"
    if len(whole.lstrip("0")) > _YUAN_DIGITS_MAX:
        raise UsageError(f"amount too large: {text!r}")
    fen = int(whole) * 100 + int(cents.ljust(2, "0"))
    if fen <= 0:
        raise UsageError(f"amount must be above zero: {text!r}")
    if fen > limits.max_amount_fen_range[1]:
        raise UsageError(f"amount too large: {text!r}")
    return fen


def _int_between(lowest: int, highest: int):
    """An argparse `type`: an ASCII integer in lowest..highest."""
    def parse(text: str) -> int:
        if not text.isascii() or not text.isdigit() or not lowest <= int(text) <= highest:
            raise argparse.ArgumentTypeError(f"expected a whole number {lowest}..{highest}, "
                                             f"got {text!r}")
        return int(text)
    parse.__name__ = "number"
    return parse


def _request_id(text: str) -> str:
    """--id: an empty one (a script's unset variable) would be a fresh id each time, so a
    retry meant to be safe would do it twice."""
    if not text.strip():
        raise argparse.ArgumentTypeError(
            "empty: a retry under an empty id would be done again; give the id of the "
            "request to retry, or leave --id out for a new request")
    return text


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
            if args.id_last6 is None:
                # The switch's bad_request would be said as a school not configured.
                raise UsageError("open-account of a person needs --id-last6 (the last six of "
                                 "the ID card number: the PIN is reset with them)")
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
    if command in ("unlock", "close-account", "refund"):
        return {"t": command.replace("-", "_"), "account": args.account, "id": rid}
    if command == "void-qr":
        # A new secret voids every code made with the old one (docs/PROTOCOL.md §4.15).
        return {"t": "virtual_card", "account": args.account, "id": rid}
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
        if args.meals:
            message["meals"] = True
        return message
    if command == "add-service":
        message = {"t": "add_credential", "who": args.who, "role": "service", "id": rid}
        if args.school:
            message["school"] = args.school
        return message
    if command == "revoke":
        return {"t": "revoke_credential", "who": args.who, "id": rid}
    if command == "rotate-key":
        return {"t": "rotate_key", "who": args.who, "id": rid}
    raise UsageError(f"unknown command {command}")


def _describe(reply: dict, request: dict | None = None, looked_up: dict | None = None,
              signon: str = "?") -> str:
    """One operator-readable paragraph for a reply to `request`; a refusal is its code and a
    sentence (`looked_up`: the account's reply read after a refusal that names its money)."""
    code = reply.get("code")
    if code != "ok":
        sentence = refusals.sentence(code, request, signon=signon, account_reply=looked_up)
        if reply.get("replay"):
            # Else an account opened since would be "unknown" with nothing to say why.
            sentence += (f" (replayed: the answer given when id {(request or {}).get('id')!r}"
                         " was first sent; a request id is answered once, so a new attempt"
                         " takes a new id)")
        return sentence
    kind = reply.get("t")
    if kind == "account":
        cards = ", ".join(f"{c['card']} ({c['state']})" for c in reply["cards"]) or "none"
        limits = reply["limits"]
        lines = [f"account {reply['account']} ({reply['school']}, {reply['kind']}) "
                 f"holder {reply.get('holder') or '-'}",
                 f"  status {reply['status']}{'  PIN LOCKED' if reply['pin_locked'] else ''}",
                 f"  balance {fen_to_yuan(reply['balance'])} yuan, "
                 # The school's subsidy purse (§4.17), named where it holds money: else an
                 # available above the balance would go unexplained.
                 + (f"subsidy {fen_to_yuan(reply['subsidy'])} yuan (补助), "
                    if reply.get("subsidy") else "")
                 + f"available {fen_to_yuan(reply['available'])} yuan",
                 f"  cards: {cards}",
                 f"  limits: per tx {fen_to_yuan(limits['per_tx'])}, daily "
                 f"{fen_to_yuan(limits['daily'])}, no PIN up to {fen_to_yuan(limits['no_pin'])}"]
        if "power" in reply:
            lines.append(f"  utility {reply['utility']}, power {'on' if reply['power'] else 'OFF'}")
        return "\n".join(lines)
    if kind == "history":
        return _history_table(reply)
    if kind == "virtual_card":
        return (f"ok: every payment code (付款码) of {(request or {}).get('account')} made "
                f"before now is void; the new secret is not shown: the student opens the "
                f"virtual card again in the mini-program on the phone they now hold")
    if kind == "unfreeze" and (looked_up or {}).get("status") == "frozen":
        overdrawn = looked_up.get("balance", 0) < 0
        return ("ok" + (f" txn {reply['txn']}" if reply.get("txn") is not None else "")
                + ": the card office's freeze is lifted, but the account stays frozen"
                + (f" as overdrawn (balance {fen_to_yuan(looked_up['balance'])} yuan): a "
                   f"credit that brings it to 0 or above lifts that (a second unfreeze "
                   f"lifts it with the debt still owed)"
                   if overdrawn else ": unfreeze again to lift what remains"))
    if (kind == "unfreeze" and (looked_up or {}).get("status") == "active"
            and looked_up.get("balance", 0) < 0):
        # The core lifts an overdraw's freeze when the card office's is not there: say what
        # that lets in (tills take its cards offline again) and what is still owed.
        return ("ok" + (f" txn {reply['txn']}" if reply.get("txn") is not None else "")
                + f": the overdraw's freeze is lifted with the debt still owed (balance "
                  f"{fen_to_yuan(looked_up['balance'])} yuan); its cards are off the "
                  f"blacklist and pay again")
    parts = ["ok"]
    if reply.get("replay"):
        parts.append("(already done earlier: replayed)")
    if reply.get("txn") is not None:
        parts.append(f"txn {reply['txn']}")
    if kind == "refund":
        parts.append(f"paid out {fen_to_yuan(reply['amount'])} yuan, account closed;")
    if kind == "credit" and request and "amount" in request:
        # Said back: 5000 typed for 50.00 is seen on the screen, not at the month's end.
        parts.append(f"credited {fen_to_yuan(request['amount'])} yuan to {request['account']},")
    if "balance" in reply:
        parts.append(f"balance {fen_to_yuan(reply['balance'])} yuan")
    if "blacklist" in reply:
        parts.append(f"blacklist version {reply['blacklist']}")
    unchanged = refusals.nothing_changed(reply, request or {})
    if unchanged:
        details = ", ".join(part.strip("()") for part in parts[1:])
        return f"ok: {unchanged}" + (f" ({details})" if details else "")
    return " ".join(parts)


def _history_table(reply: dict) -> str:
    """The items in the school's local time (the reply's `time_zone`; UTC from a switch that
    does not send it), with the card tapped and the terminal (credential) that sent it."""
    zone_name = reply.get("time_zone") or "UTC"
    try:
        zone = zoneinfo.ZoneInfo(zone_name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        zone_name, zone = "UTC", datetime.timezone.utc
    lines = [f"{'txn':>8}  {'when (' + zone_name + ')':25}  {'kind':12} {'amount':>10} "
             f"{'balance':>10}  {'card':16} terminal"]
    for item in reply["items"]:
        when = datetime.datetime.fromtimestamp(item["at"] / 1000, zone)
        lines.append(f"{item['txn']:>8}  {when:%Y-%m-%d %H:%M:%S}{'':6}  {item['kind']:12} "
                     f"{fen_to_yuan(item['amount']):>10} {fen_to_yuan(item['balance']):>10}"
                     f"  {item.get('card') or '-':16} {item['who'] or '-'}")
    if reply["next"] is not None:
        lines.append(f"(more: --before {reply['next']})")
    return "\n".join(lines)


# ------------------------------------------------------------------ CSV import
IMPORT_COLUMNS = ("type", "account", "school", "holder", "id_last6", "card", "utility")
# The longest each free-form cell may be (docs/PROTOCOL.md §4.2), checked before its syntax
# so a 10 KB cell is told by its length; the other columns take a few fixed words.
_IMPORT_CELL_CHARS_MAX = {"account": limits.account_id_chars_max,
                          "school": limits.school_code_chars_max,
                          "holder": limits.holder_chars_max, "card": limits.card_id_chars_max,
                          # Typed, not imported: a till's name on receipts (§4.2, 1..64).
                          "merchant": limits.source_chars_max}
# Categories no cell may hold: controls (NUL included), format characters (bidi overrides,
# zero-width), surrogates, private use, unassigned, line and paragraph separators.
_UNPRINTABLE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
_SHOWN_CHARS_MAX = 20


@dataclass
class ImportRow:
    """One CSV row: the requests it needs, in order (open the account, then issue the card),
    and what became of it."""
    line: int
    account: str = ""
    requests: list = field(default_factory=list)
    outcome: str = ""           # created | already | half | rejected | blank
    reason: str = ""
    steps: list = field(default_factory=list)   # (state, words) per request answered
    same_as: "ImportRow | None" = None          # an earlier row with the very same cells

    def settle(self) -> None:
        """The row's outcome from its steps' states: made, present or refused (a repeated
        row: what its first copy came to, made counting as already present)."""
        if self.outcome:
            return
        if self.same_as is not None:
            self.same_as.settle()
            first = self.same_as.outcome
            self.outcome = "already" if first in ("created", "already") else first
            self.reason = f"the same row as line {self.same_as.line} ({self.same_as.reason})"
            return
        states = [state for state, _ in self.steps]
        if "refused" not in states:
            self.outcome = "created" if "made" in states else "already"
        elif states.count("refused") == len(states):
            self.outcome = "rejected"
            self.reason = next(words for state, words in self.steps if state == "refused")
        else:
            self.outcome = "half"
            self.reason = "; ".join(words for _, words in self.steps)


def _shown(text: str) -> str:
    """A cell as a reason may quote it: short, with anything unprintable escaped."""
    shown = text if len(text) <= _SHOWN_CHARS_MAX else text[:_SHOWN_CHARS_MAX] + "…"
    return repr(shown)


def _text_problem(column: str, value: str) -> str | None:
    """Why a CSV cell or a typed text cannot be sent: a control character, or too long."""
    for char in value:
        if unicodedata.category(char) in _UNPRINTABLE_CATEGORIES:
            return (f"{column} {_shown(value)} holds a control character "
                    f"(U+{ord(char):04X}); retype it")
    most = _IMPORT_CELL_CHARS_MAX.get(column)
    if most is not None and len(value) > most:
        return f"{column} is {len(value)} characters long, at most {most}"
    return None


def _import_id(what: str, *keys: str) -> str:
    """The request id of one step of a row: readable while it fits the id bound, else a
    digest of the same keys; the same row gives the same id on every run."""
    readable = f"import-{what}-" + "-".join(keys)
    if len(readable) <= limits.id_str_chars_max:
        return readable
    digest = hashlib.sha256("\0".join(keys).encode()).hexdigest()
    return f"import-{what}-h{digest}"[:limits.id_str_chars_max]


def _row_problem(cells: dict) -> str | None:
    """Why a row cannot be imported, in words; None when it can be sent."""
    kind, account, school = cells["type"], cells["account"], cells["school"]
    if kind not in ("student", "room") or not account or not school:
        return "needs type (student|room), account and school"
    if not identifiers.ACCOUNT.match(account):
        return (f"account {_shown(account)} is not an account id: 1..{limits.account_id_chars_max}"
                f" of A-Z 0-9 -")
    if not account.startswith(school):
        return f"account {account} does not begin with its school's code {school}"
    if kind == "student":
        if not identifiers.ID_LAST6.match(cells["id_last6"]):
            return (f"id_last6 {_shown(cells['id_last6'])} is not the last six of an ID card "
                    f"number (5 digits, then a digit or X)")
        if cells["card"] and not identifiers.CARD.match(cells["card"]):
            return (f"card {_shown(cells['card'])} is not a card id: "
                    f"{limits.card_id_chars_min}..{limits.card_id_chars_max} of 0-9 A-F")
    elif cells["id_last6"] or cells["card"]:
        return "a room row takes no id_last6 and no card"
    elif (cells["utility"] or "both") not in ("both", "electric", "water"):
        return f"utility {_shown(cells['utility'])} is none of both, electric, water"
    return None


def import_requests(rows) -> list:
    """An `ImportRow` for each (line, row) of a start-of-term CSV: its requests, or why it is
    rejected (or blank) before anything is sent.

    Columns: type (student | room), account, school, holder, id_last6 (students),
    card (students, optional), utility (rooms: both | electric | water).
    Request ids are derived from the row, so a re-run replays instead of doubling.
    """
    planned, seen = [], {}
    for line, row in rows:
        plan = ImportRow(line)
        planned.append(plan)
        if row.get(None):
            plan.outcome, plan.reason = "rejected", "more cells than the header has columns"
            continue
        cells = {column: (row.get(column) or "").strip() for column in IMPORT_COLUMNS}
        if not any(cells.values()):
            plan.outcome = "blank"
            continue
        problem = next(filter(None, (_text_problem(c, v) for c, v in cells.items())), None)
        problem = problem or _row_problem(cells)
        if problem:
            plan.outcome, plan.reason = "rejected", problem
            continue
        plan.account = cells["account"]
        earlier = seen.get(plan.account)
        if earlier is not None:
            if earlier[1] == cells:
                plan.same_as = earlier[0]
            else:
                plan.outcome = "rejected"
                plan.reason = (f"account {plan.account} is on line {earlier[0].line} with "
                               f"other cells")
            continue
        seen[plan.account] = (plan, cells)
        message = {"t": "open_account", "account": plan.account, "school": cells["school"],
                   "id": _import_id("open", plan.account)}
        if cells["type"] == "student":
            message.update(kind="person", id_last6=cells["id_last6"])
        else:
            message.update(kind="utility", utility=cells["utility"] or "both")
        if cells["holder"]:
            message["holder"] = cells["holder"]
        plan.requests.append(message)
        if cells["card"]:
            plan.requests.append({"t": "issue_card", "account": plan.account,
                                  "card": cells["card"],
                                  "id": _import_id("card", plan.account, cells["card"])})
        problem = next(filter(None, map(unsendable, plan.requests)), None)
        if problem:
            plan.outcome, plan.reason, plan.requests = "rejected", f"row {problem}", []
    return planned


def _as_compared(value):
    """A name as a person reads it: the import strips its cells, `open-account --holder`
    sends what was typed ("张三 "), and the same characters may come composed or not."""
    if type(value) is not str:
        return value
    return unicodedata.normalize("NFC", " ".join(value.split()))


def _unlike_the_row(message: dict, shown: dict) -> list[str]:
    """What an existing account (its `account` reply) shows otherwise than the row's
    `open_account` asks, in words: school, kind, a room's utility, the holder's name."""
    unlike = []
    for name in ("school", "kind", "utility", "holder"):
        asked, found = message.get(name), shown.get(name)
        if _as_compared(asked) != _as_compared(found):
            unlike.append(f"{name} {_shown(found) if found is not None else 'none'}, not "
                          f"{_shown(asked) if asked is not None else 'none'}")
    return unlike


async def _existing_account_state(client: Client, message: dict, what: str,
                                  signon: str) -> tuple:
    """(present | refused, words) for a row whose account the switch has already (`exists`):
    opened under another request id (another operator, `open-account`, or an import whose id
    the switch has since forgotten). It is the row's only if it shows what the row asks; the
    ID digits cannot be compared without side effects (`reset_pin` would set the PIN back, a
    wrong one counts toward its lock), so a namesake at the same school and kind passes."""
    lookup = {"t": "account", "account": message["account"]}
    shown = await client.request(lookup)
    if shown.get("code") != "ok":
        return "refused", (f"{what} exists already and could not be compared with the row "
                           f"({refusals.sentence(shown.get('code'), lookup, signon)}); "
                           f"nothing done for this row: rerun the import")
    if shown.get("status") == "closed":
        # Closed for good (a refund, a room given up): counted present, a new term's student
        # or room would never get money in.
        return "refused", (f"{what} refused (it exists already and is closed for good: no "
                           f"money goes in; give the row a new account id)")
    unlike = _unlike_the_row(message, shown)
    if unlike:
        return "refused", (f"{what} refused (it exists already, with {'; '.join(unlike)}: "
                           f"another account than the row's; nothing more done for this row)")
    return "present", f"{what} already present"


async def _step_state(client: Client, message: dict, reply: dict, signon: str) -> tuple:
    """(made | present | refused, words) for one request of a row."""
    what = (f"account {message['account']}" if message["t"] == "open_account"
            else f"card {message['card']}")
    code = reply.get("code")
    if code == "ok":
        if reply.get("replay"):
            return "present", f"{what} already present"   # the same request: the same row
        return "made", f"{what} {'opened' if message['t'] == 'open_account' else 'issued'}"
    if code == "exists" and message["t"] == "open_account":
        return await _existing_account_state(client, message, what, signon)
    if code == "exists":
        # Issued before under another request id: this account's, or someone else's.
        shown = await client.request({"t": "account", "account": message["account"]})
        if any(c["card"] == message["card"] for c in shown.get("cards", ())):
            return "present", f"{what} already issued to {message['account']}"
        return "refused", (f"{what} refused (exists: it is issued to another account; "
                           f"`account` shows whose)")
    if code in ("busy", "internal"):
        return "refused", (f"{what} not done ({code}: the switch did nothing; rerun the "
                           f"import: rows already done are only counted again)")
    return "refused", f"{what} refused ({refusals.sentence(code, message, signon)})"


def _said_busy(count: int, pause_s: float) -> None:
    print(f"the switch answered busy to {count} requests (nothing done); sending them "
          f"again in {pause_s:g} s", file=sys.stderr)


async def _through_busy(client: Client, messages: list) -> list:
    """An import's replies to `messages`: pipelined, and those answered `busy` sent again
    within the wait bound, said on stderr."""
    return await pipeline_through_busy(client, messages, limits.cli_import_pipeline_depth_max,
                                       limits.cli_reply_timeout_s, _said_busy)


async def _send_import_wave(client: Client, wave: list, signon: str) -> None:
    """Send (row, request) pairs, those answered `busy` again within the wait bound, and
    note each reply in its row."""
    replies = await _through_busy(client, [message for _, message in wave])
    for (plan, message), reply in zip(wave, replies):
        with trio.fail_after(limits.cli_reply_timeout_s):   # it may ask the switch once more
            plan.steps.append(await _step_state(client, message, reply, signon))


IMPORT_OUTCOMES = (("created", "created"), ("already", "already present"),
                   ("half", "half applied"), ("rejected", "rejected"))


async def run_import(client: Client, path: str, rows: list, out=sys.stdout,
                     signon: str = "admin") -> dict:
    """Send the rows' requests in pipelined batches; print and return what became of each
    row. Counts are rows: a student with a card is one row of two requests."""
    planned = import_requests(rows)
    # One step of every row at a time: a row's card goes only once its account's open was
    # answered, and not after a refusal. Sent in one pipeline with its open, a card could run
    # while the open was answered `busy`, and its refusal (no such account) would be
    # remembered under its id and replayed by every rerun of the import.
    for step in range(max((len(plan.requests) for plan in planned), default=0)):
        wave = [(plan, plan.requests[step]) for plan in planned
                if step < len(plan.requests)
                and all(state != "refused" for state, _ in plan.steps)]
        await _send_import_wave(client, wave, signon)
    counts = {outcome: 0 for outcome, _ in IMPORT_OUTCOMES}
    counts["blank"] = 0
    for plan in planned:
        plan.settle()
        counts[plan.outcome] += 1
    blank = f", {counts['blank']} blank skipped" if counts["blank"] else ""
    print(f"import {path}: {len(planned)} rows: "
          + ", ".join(f"{counts[outcome]} {words}" for outcome, words in IMPORT_OUTCOMES)
          + blank, file=out)
    listed = [plan for plan in planned if plan.outcome in ("half", "rejected")]
    for plan in listed:
        print(f"  line {plan.line}: {dict(IMPORT_OUTCOMES)[plan.outcome]}: {plan.reason}",
              file=out)
    return {"rows": len(planned), **counts,
            "problems": [(plan.line, plan.outcome, plan.reason) for plan in listed]}


def decode_csv(raw: bytes, path: str, encoding: str | None = None) -> str:
    """The CSV's text: UTF-8 (with or without BOM), else GB18030, or the given encoding."""
    if encoding:
        try:
            codecs.lookup(encoding)
        except LookupError:
            raise UsageError(f"--encoding: unknown encoding {encoding!r} (e.g. utf-8, gb18030)"
                             ) from None
        candidates = (encoding,)
    else:
        candidates = IMPORT_ENCODINGS
    for candidate in candidates:
        try:
            return raw.decode(candidate).removeprefix("\ufeff")
        except UnicodeDecodeError as error:
            failure = error
    if encoding:
        raise UsageError(f"{path} is not {encoding} (byte {failure.start}); give the encoding it "
                         f"was saved in with --encoding")
    raise UsageError(f"{path} is neither UTF-8 nor GB18030; save it as CSV UTF-8, or give the "
                     f"encoding it was saved in with --encoding")


def _not_csv(path: str, line: int, error: csv.Error) -> UsageError:
    return UsageError(f"{path} line {line}: not readable as CSV: {error}")


def read_import_rows(path: str, encoding: str | None = None,
                     required=("type", "account", "school"), columns=IMPORT_COLUMNS) -> list:
    """(line, row) for each data row of a CSV (a start-of-term one unless `required` and
    `columns` say otherwise); UsageError says what is wrong."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except OSError as error:
        raise UsageError(f"cannot read {path}: {error.strerror or error}") from None
    reader = csv.DictReader(io.StringIO(decode_csv(raw, path, encoding), newline=""))
    try:
        header = reader.fieldnames or ()
    except csv.Error as error:
        raise _not_csv(path, 1, error) from None
    missing = set(required) - set(header)
    if missing:
        raise UsageError(f"{path}: missing column(s) {sorted(missing)}; expected "
                         f"{', '.join(columns)}")
    unknown = [name for name in header if name not in columns]
    if unknown:
        # `card_no` for `card` imported the students and issued no card, said "created".
        raise UsageError(f"{path}: unknown column(s) {unknown}; the columns are "
                         f"{', '.join(columns)} (a column misspelt would be read as empty: "
                         f"rename it, or delete the columns that are not these)")
    rows = []
    try:
        # The file's own line numbers, as an editor shows them: empty lines are skipped
        # and a quoted cell may span lines (a row is named by the line it ends on).
        for row in reader:
            if len(rows) >= limits.cli_import_rows_max:
                raise UsageError(f"{path}: more than {limits.cli_import_rows_max} rows")
            rows.append((reader.line_num, row))
    except csv.Error as error:
        raise _not_csv(path, reader.line_num + 1, error) from None  # the line being read
    return rows


def _report_import(path: str, counts: dict, rejects: list, out) -> dict:
    counts["rejected"] = len(rejects)
    print(f"import {path}: {counts['rows']} rows, {counts['created']} created, "
          f"{counts['already']} already present, {counts['rejected']} rejected", file=out)
    for line, reason in sorted(rejects):
        print(f"  line {line}: {reason}", file=out)
    return {**counts, "rejects": sorted(rejects)}


def _sendable(requests: list, rejects: list):
    """(the requests that fit in a frame, rejects with those that do not added)."""
    sendable = []
    for line, message in requests:
        problem = unsendable(message)
        if problem:
            rejects.append((line, f"row {problem}"))
        else:
            sendable.append((line, message))
    return sendable, rejects


# ------------------------------------------------------------------ subsidy batch import
SUBSIDY_COLUMNS = ("account", "amount")


def subsidy_requests(rows, batch: str, expires: str):
    """(line, request) pairs of a subsidy batch CSV (columns account, amount in yuan), and
    (line, reason) rejects. The id is derived from the batch and the account, so a re-run
    replays instead of paying twice; so an account listed twice is granted once, and its
    second row is a reject that says so (sent, it would be a replay counted as present,
    and a sum split over two rows would be half paid without a word)."""
    batch_tag = hashlib.sha256(batch.encode()).hexdigest()[:16]
    requests, rejects = [], []
    first_line: dict[str, int] = {}
    for line, row in rows:
        account = (row.get("account") or "").strip()
        if account in first_line:
            # Its first row counts even when it was refused: fixed and imported again, the
            # file would otherwise pay this row and then the corrected one too.
            rejects.append((line, f"account {account} again (line {first_line[account]}): a "
                                  f"batch grants each account once; put its sum on one row"))
            continue
        if account:
            first_line[account] = line
        if row.get(None):
            # `WH20240003,1,000`: the amount's thousands separator split it, and 1 yuan
            # would be granted where 1,000 was meant, for good (a batch keeps its rows).
            rejects.append((line, f"more cells than the header has columns ({row[None]!r} "
                                  f"left over): a thousands separator in the amount? write "
                                  f"1000.00"))
            continue
        try:
            amount = yuan_to_fen((row.get("amount") or "").strip())
        except UsageError as error:
            rejects.append((line, str(error)))
            continue
        if not account:
            rejects.append((line, "needs an account"))
            continue
        problem = _id_problem("account", account)
        if problem:     # said as `credit` says it, not as the switch's bad_request
            rejects.append((line, f"account {problem}"))
            continue
        requests.append((line, {"t": "subsidy", "account": account, "amount": amount,
                                "expires": expires, "batch": batch,
                                "id": f"subsidy-{batch_tag}-{account}"}))
    return _sendable(requests, rejects)


def check_subsidy_batch(batch: str, expires: str, today: datetime.date | None = None,
                        as_typed: bool = False) -> None:
    """The batch's name and last day, checked before anything is sent: a mistyped day would
    otherwise come back as a refusal on every row. A day over in every time zone (before
    yesterday, UTC) is refused here; one over only in the school's zone, by the switch.

    A name that Unicode's compatibility form with its spaces collapsed and its invisible
    characters dropped would change (a full-width space an IME typed, full-width digits, a
    space at an end or doubled, a letter and its accent apart, a zero-width space or a
    direction mark pasted in) is refused, naming the characters and that form: typed again
    on another machine such a name would name another batch, with other ids, and pay every
    row again. Not rewritten: a batch first imported under the name as typed (an earlier
    version sent it so) goes on under that name, with `as_typed` (--batch-as-typed)."""
    try:
        batch.encode("utf-8")
    except UnicodeEncodeError:      # bytes of another encoding, passed through by Python
        raise UsageError("--batch: not readable as text; type it in a UTF-8 terminal "
                         "(LANG=zh_CN.UTF-8 or C.UTF-8)") from None
    plain = _plain_batch(batch)
    if not 1 <= len(batch) <= limits.source_chars_max or not plain:
        raise UsageError(f"--batch: give a name of 1 to {limits.source_chars_max} characters, "
                         f"not only spaces")
    if plain != batch and not as_typed:
        raise UsageError(
            f"--batch {batch!r}: {'; '.join(_typed_otherwise(batch))}: another machine may "
            f"type it otherwise and so name another batch. For a new batch, name it "
            f"{plain!r}; to go on with a batch first imported under exactly this name, keep "
            f"it and add --batch-as-typed")
    try:
        last_day = datetime.date.fromisoformat(expires) \
            if identifiers.DAY.match(expires) else None
    except ValueError:
        last_day = None
    if last_day is None:
        raise UsageError(f"--expires: not a day: {expires!r}; type the batch's last day as "
                         f"YYYY-MM-DD, e.g. 2026-12-31")
    today = today or datetime.datetime.now(datetime.timezone.utc).date()
    if last_day < today - datetime.timedelta(days=1):
        raise UsageError(f"--expires {expires}: that day is over; give the batch's last day")
    if last_day == datetime.date.max:     # a term ends at the next midnight: none follows it
        raise UsageError(f"--expires {expires}: the calendar's last day cannot end a term; "
                         f"give the batch's last day")


def _invisible(char: str) -> bool:
    """A control or format character that is not a space (zero-width space and joiner,
    direction marks, the BOM, a soft hyphen): nothing another machine would type."""
    return unicodedata.category(char) in ("Cc", "Cf") and not char.isspace()


def _plain_batch(batch: str) -> str:
    """A batch name as any machine types it: compatibility form, invisible characters
    dropped, spaces collapsed."""
    shown = "".join(char for char in batch if not _invisible(char))
    return " ".join(unicodedata.normalize("NFKC", shown).split())


def _typed_otherwise(batch: str) -> list[str]:
    """What in a batch name its plain form would change, in words, the first few."""
    said = []
    if batch[:1].isspace():
        said.append("a space at the start")
    if batch[-1:].isspace():
        said.append("a space at the end")
    for at, (before, char) in enumerate(zip(" " + batch, batch), start=1):
        if char != " " and (char.isspace() or _invisible(char)
                             or unicodedata.normalize("NFKC", char) != char):
            name = unicodedata.name(char, "a control character")
            said.append(f"{name} (U+{ord(char):04X}) at character {at}")
        elif char == " " and before.isspace() and 1 < at:
            said.append(f"a second space at character {at}")
    if not said:     # each character is its own form, but together they compose
        at = next((at for at in range(1, len(batch) + 1)
                   if unicodedata.normalize("NFKC", batch[:at]) != batch[:at]), 1)
        said.append(f"characters that compose into one (a letter and its accent, say) "
                    f"ending at character {at}")
    shown = said[:limits.batch_name_changes_said_max]
    more = len(said) - len(shown)
    return shown + ([f"and {more} more"] if more else [])


async def run_subsidy_import(client: Client, path: str, rows: list, batch: str, expires: str,
                             out=sys.stdout, signon: str = "?") -> dict:
    requests, rejects = subsidy_requests(rows, batch, expires)
    counts = {"rows": len(rows), "created": 0, "already": 0, "rejected": 0}
    granted_fen = 0
    # A subsidy answered busy did nothing: sent again, as the accounts' import does, rather
    # than listed as a reject the operator must rerun the batch for.
    replies = await _through_busy(client, [message for _, message in requests])
    for (line, message), reply in zip(requests, replies):
        code = reply.get("code")
        # `exists`: this row's grant was made before, its id since forgotten (§4.17).
        if code == "ok" or code == "exists":
            created = not (reply.get("replay") or code == "exists")
            counts["created" if created else "already"] += 1
            granted_fen += message["amount"] if created else 0
        elif code in ("busy", "internal"):
            rejects.append((line, f"subsidy {message['account']}: not done ({code}: "
                                  f"the switch did nothing; rerun the import: subsidies "
                                  f"already issued are only counted again)"))
        elif code:
            rejects.append((line, f"subsidy {message['account']}: "
                                  f"{refusals.sentence(code, message, signon=signon)}"))
        else:
            rejects.append((line, f"subsidy {message['account']}: a reply without a code"))
    report = _report_import(path, counts, rejects, out)
    # The sum said: a column typed in fen for yuan shows as a hundredfold total.
    print(f"  granted now: {fen_to_yuan(granted_fen)} yuan in all", file=out)
    return report


# ------------------------------------------------------------------ command line
def _connection_options(parser, defaults: bool) -> None:
    """The options every command takes, before or after its name. A subcommand's parser
    sets only what was typed after the name (SUPPRESS): its defaults would otherwise
    overwrite what was typed before it."""
    def default(value):
        return {"default": value} if defaults else {"default": argparse.SUPPRESS}
    parser.add_argument("--connect", type=host_port_argument(port_min=1),
                        help="HOST:PORT of the switch (required)", **default(None))
    parser.add_argument("--data", help="data dir whose admin.key to use", **default(None))
    parser.add_argument("--key-file", help="file with the credential's key (64 hex chars)",
                        **default(None))
    parser.add_argument("--who", dest="signon_who",
                        help="credential to sign on with (default admin)", **default("admin"))
    parser.add_argument("--json", action="store_true", help="print the raw reply as JSON",
                        **default(False))
    parser.add_argument("--id", type=_request_id,
                        help="request id (default: generated); reuse it to retry safely",
                        **default(None))


class _Commands:
    """The admin subcommands' parsers: each takes the connection options as well."""

    def __init__(self, action):
        self._action = action

    def add_parser(self, name, **kwargs):
        parser = self._action.add_parser(name, epilog=ACCOUNT_DASH_HINT, **kwargs)
        _connection_options(parser, defaults=False)
        return parser


ACCOUNT_DASH_HINT = ("an account id that begins with '-' goes after a `--`: "
                     "`credit -- -WH1 12.50`")


def add_parser(commands) -> None:
    admin = commands.add_parser("admin", help="card office commands over the wire",
                                epilog=ACCOUNT_DASH_HINT)
    _connection_options(admin, defaults=True)
    sub = _Commands(admin.add_subparsers(dest="admin_command", required=True))
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
    for name, said in (("freeze", "stop every payment of the account: refused online at "
                                  "once, and its cards on every till's blacklist as soon as "
                                  "the till has it"),
                       ("unfreeze", "lift the card office's freeze; with none, an "
                                    "overdraw's (the debt stays owed)")):
        p = sub.add_parser(name, help=said)
        p.add_argument("account")
        p.add_argument("--reason")
    for name in ("unlock", "close-account", "account"):
        sub.add_parser(name).add_argument("account")
    sub.add_parser("void-qr", help="void every payment code (付款码) of the account, for a "
                   "stolen phone: the phone's secret is replaced (not shown); the student "
                   "opens the virtual card again from the new phone").add_argument("account")
    sub.add_parser("refund", help="离校退款: pay the whole balance out and close the "
                   "account").add_argument("account")
    p = sub.add_parser("credit")
    p.add_argument("account")
    p.add_argument("yuan", help="amount in yuan, e.g. 50 or 12.50")
    p.add_argument("--source", default="card-office")
    p = sub.add_parser("history")
    p.add_argument("account")
    p.add_argument("--limit", type=_int_between(1, limits.history_limit_max), default=20)
    p.add_argument("--before", type=_int_between(1, limits.id_int_max))
    p = sub.add_parser("add-terminal")
    p.add_argument("who")
    p.add_argument("--school", required=True)
    p.add_argument("--kind", choices=("pos", "water", "meter"), required=True)
    p.add_argument("--merchant")
    p.add_argument("--meals", action="store_true",
                   help="a canteen till: its payments count toward the school's meal caps")
    p.add_argument("--key-out", help="write the new key here (mode 0600) instead of printing")
    p = sub.add_parser("add-service")
    p.add_argument("who")
    p.add_argument("--school")
    p.add_argument("--key-out")
    sub.add_parser("revoke").add_argument("who")
    p = sub.add_parser("rotate-key", help="replace a credential's key; the old one stops "
                                          "working and its sessions are closed")
    p.add_argument("who")
    p.add_argument("--key-out", required=True,
                   help="write the new key here (mode 0600); an existing file is refused")
    p = sub.add_parser("import")
    p.add_argument("csv", help="start-of-term CSV (students, cards, rooms)")
    p.add_argument("--encoding", help="the CSV's encoding (default: UTF-8, else GB18030)")
    p = sub.add_parser("import-subsidies", help="issue a subsidy batch (补助) from a CSV")
    p.add_argument("csv", help="CSV with columns account, amount (yuan)")
    p.add_argument("--batch", required=True, help="the school's batch name (1..64 characters)")
    p.add_argument("--expires", required=True, help="the batch's last day, YYYY-MM-DD")
    p.add_argument("--batch-as-typed", action="store_true",
                   help="send a batch name with full-width or doubled spaces as typed (only "
                        "to go on with a batch first imported under exactly that name)")
    p.add_argument("--encoding", help="the CSV's encoding (default: UTF-8, else GB18030)")


def _key(args) -> bytes:
    if args.key_file:
        return read_key_file(args.key_file)
    if not args.data:
        raise UsageError("give --data DIR (uses DIR/admin.key) or --key-file FILE")
    if not is_data_dir(args.data):
        raise UsageError(permission_problem(args.data) or (
            f"{args.data} is not a switch data dir; give the switch's --data DIR (its "
            f"admin.key is used) or --key-file FILE"))
    return read_admin_key(args.data)


def unsendable(message: dict) -> str | None:
    """Why `message` cannot go in one frame, or None."""
    try:
        size = len(encode_body(message)) + limits.tag_size_bytes + limits.frame_length_prefix_bytes
    except (ValueError, OverflowError) as error:  # e.g. text that is not valid Unicode
        return f"cannot be sent ({error})"
    if size > limits.frame_size_bytes_max:
        return "is far too long for one request"
    return None


# The ids a single command sends, as the switch reads them (identifiers.py): a typo is said
# here, naming the argument, instead of coming back as a bare bad_request.
_CARD_RULE = (identifiers.CARD, f"a card id is {limits.card_id_chars_min} to "
                               f"{limits.card_id_chars_max} hex digits in capitals, e.g. "
                               f"04A1B2C3D4")
_ID_FIELDS = {
    "account": (identifiers.ACCOUNT, "an account id is capitals, digits and '-', e.g. "
                                     "WH20230001"),
    "card": _CARD_RULE, "old": _CARD_RULE, "new": _CARD_RULE,
    "who": (identifiers.CREDENTIAL, "a credential id is ASCII letters, digits and . _ : @ -, "
                                    "e.g. WH-POS-0001"),
    "id_last6": (identifiers.ID_LAST6, "the last six of an ID number are six digits, the "
                                       "last may be X"),
    "school": (re.compile(rf"(?=.*[A-Z])[A-Z0-9]{{1,{limits.school_code_chars_max}}}\Z"),
               "a school code is capitals and digits, e.g. WH"),
}


def _id_problem(name: str, value) -> str | None:
    pattern, rule = _ID_FIELDS[name]
    if not isinstance(value, str) or pattern.match(value):
        return None
    # Full-width letters and digits an IME typed read as their ASCII ones (NFKC).
    meant = unicodedata.normalize("NFKC", value).strip().upper()
    hint = f"; did you mean {meant}?" if meant != value and pattern.match(meant) else ""
    return f"{value!r}: {rule}{hint}"


def _checked_request(args) -> dict:
    """The single request, known to fit in a frame, before anything is sent."""
    message = _request_for(args)
    for name in _ID_FIELDS:
        problem = _id_problem(name, message[name]) if name in message else None
        if problem:
            raise UsageError(f"{name.replace('_', '-')} {problem}")
    for name in ("holder", "reason", "merchant"):
        problem = _text_problem(name, message[name]) if name in message else None
        if problem:
            raise UsageError(f"--{name}: {problem}")
    problem = unsendable(message)
    if problem:
        raise UsageError(f"that request {problem}")
    return message


async def _sign_on(args, key: bytes) -> Client:
    host, port = args.connect
    try:
        with trio.fail_after(limits.cli_connect_timeout_s):
            return await Client.connect(host, port, args.signon_who, key)
    except trio.TooSlowError:
        raise SignOnRefused(f"no answer from {host}:{port} within "
                            f"{limits.cli_connect_timeout_s:g} s: is the switch running there?"
                            ) from None
    except OSError as error:
        raise SignOnRefused(explain(error, f"connect to the switch at {host}:{port}")) from None
    except ProtocolError as error:
        if error.code == "unauthenticated":
            raise SignOnRefused(f"the switch at {host}:{port} refused the sign-on of "
                                f"{args.signon_who!r} (unauthenticated): the key is wrong or "
                                f"revoked; check --data, --key-file and --who") from None
        if error.code == "busy":
            raise SignOnRefused(f"the switch at {host}:{port} refused the sign-on of "
                                f"{args.signon_who!r} (busy): that credential holds as many "
                                f"sessions as it may (docs/PROTOCOL.md §2.1); try again once "
                                f"one of them has closed") from None
        raise SignOnRefused(f"{host}:{port} did not take our sign-on "
                            f"({refusals.sentence(error.code, signon=args.signon_who)}): is it "
                            f"the switch's port?") from None
    except trio.EndOfChannel:
        raise SignOnRefused(f"{host}:{port} closed the connection at sign-on: is it the "
                            f"switch's port?") from None


async def _run(args, key: bytes, work, looked_up: dict) -> dict | list:
    client = await _sign_on(args, key)
    try:
        if args.admin_command == "import":
            return await run_import(client, args.csv, work, signon=args.signon_who)
        if args.admin_command == "import-subsidies":
            return await run_subsidy_import(client, args.csv, work, args.batch, args.expires,
                                            signon=args.signon_who)
        with trio.fail_after(limits.cli_reply_timeout_s):
            reply = await client.request(work)
            still_frozen_maybe = work.get("t") == "unfreeze" and reply.get("code") == "ok"
            if (reply.get("code") in refusals.NEEDS_ACCOUNT or still_frozen_maybe) \
                    and "account" in work:
                # Only to say the refusal in words: losing the switch now changes nothing.
                with contextlib.suppress(SwitchError, ProtocolError, trio.EndOfChannel,
                                         OSError):
                    looked_up.update(await client.request({"t": "account",
                                                           "account": work["account"]}))
            return reply
    finally:
        await client.aclose()


def _print_reply(args, reply: dict, key_written: bool, request: dict | None = None,
                 looked_up: dict | None = None) -> None:
    done = "key replaced" if reply.get("t") == "rotate_key" else "created"
    if args.json:
        # A QR secret belongs on the student's phone only, never on a card office's screen;
        # a key written to --key-out belongs in that file only.
        hidden = ("qr_secret", "key") if key_written else ("qr_secret",)
        shown = {k: (v.hex() if isinstance(v, bytes) else v) for k, v in reply.items()
                 if k not in hidden}
        if key_written:
            shown["key_file"] = args.key_out
        print(json.dumps(shown, ensure_ascii=False))
    elif key_written:
        print(f"ok: credential {args.who} {done}; key written to {args.key_out}")
    elif reply.get("key") is not None:
        print(f"ok: credential {args.who} {done}; key {reply['key'].hex()}")
    else:
        print(_describe(reply, request, looked_up, args.signon_who))


def _retry(args, work: dict) -> str:
    """How to finish a request whose reply never came, safely."""
    if args.admin_command in ("import", "import-subsidies"):
        return "; rerun the import (rows already done are only counted again)"
    return f"; rerun with --id {work['id']} to finish it safely" if "id" in work else ""


def _stdout_gone(exit_status: int | None) -> int:
    output.discard_the_rest()
    if exit_status is None:     # an import's report: the rows were all sent before it
        print("error: standard output was closed before the import's report was printed; "
              "every row was sent (rerun the import to see it: rows done are only counted "
              "again)", file=sys.stderr)
        return 1
    print(f"error: standard output was closed before the reply was printed; the switch "
          f"answered ({'ok' if exit_status == 0 else 'refused'}, exit {exit_status})",
          file=sys.stderr)
    return exit_status


def main(argv=None) -> int:
    """`python -m switch admin ARGS...` as a function: `argv` is what follows `admin`."""
    parser = CommandLineParser(prog="python -m switch")
    add_parser(parser.add_subparsers(dest="command", required=True))
    return run(parser.parse_args(["admin", *(sys.argv[1:] if argv is None else argv)]))


def run(args) -> int:
    """One admin command, parsed by `switch.cli.main`'s parser (or `main` above)."""
    key_fd = exit_status = None
    work = {}
    looked_up = {}
    try:
        if args.connect is None:
            raise UsageError("give --connect HOST:PORT, the switch's address")
        key = _key(args)
        if args.admin_command == "import":
            work = read_import_rows(args.csv, args.encoding)
        elif args.admin_command == "import-subsidies":
            check_subsidy_batch(args.batch, args.expires, as_typed=args.batch_as_typed)
            work = read_import_rows(args.csv, args.encoding, SUBSIDY_COLUMNS, SUBSIDY_COLUMNS)
        else:
            work = _checked_request(args)
            if getattr(args, "key_out", None):
                key_fd = claim_key_file(args.key_out)
        result = trio.run(_run, args, key, work, looked_up)
        if args.admin_command == "import":
            return 0 if not result["problems"] else 3
        if args.admin_command == "import-subsidies":
            return 0 if not result["rejected"] else 3
        exit_status = 0 if result.get("code") == "ok" else 3
        key_written = key_fd is not None and result.get("key") is not None
        if key_written:
            write_key(key_fd, result["key"])    # closes it
            key_fd = None
        _print_reply(args, result, key_written, work, looked_up)
        return exit_status
    except (UsageError, KeyFileError, SignOnRefused) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # Ctrl-C while the reply was awaited: the switch may have done it. Without the id
        # (made here, never printed) the obvious rerun would do it twice.
        print(f"error: interrupted; the switch may have done it already{_retry(args, work)}",
              file=sys.stderr)
        return 4
    except (OSError, SwitchError, ProtocolError, trio.EndOfChannel, trio.TooSlowError) as error:
        if output.reader_gone(error):
            # Not a lost switch: it answered, only the reader of what we print went away.
            return _stdout_gone(exit_status)
        retry = _retry(args, work)
        code = getattr(error, "code", None)
        if isinstance(code, str):
            why = refusals.sentence(code, signon=args.signon_who)
        elif isinstance(error, trio.EndOfChannel):
            why = "the switch closed the connection"
        else:   # an exception object is always true: its words, or what it is
            why = str(error) or ("no reply in time" if isinstance(error, trio.TooSlowError)
                                 else type(error).__name__)
        print(f"error: lost the switch at {args.connect[0]}:{args.connect[1]} mid-request "
              f"({why}){retry}", file=sys.stderr)
        return 4
    finally:
        if key_fd is not None:  # claimed for a key that never came
            os.close(key_fd)
            os.unlink(args.key_out)
