"""What the simulation sends: one table entry per request type (its weight and how its fields
are drawn), plus a few multi-request scenarios. A new request type is one entry here.

Fields are drawn mostly from what the campus holds (known cards, opened accounts, this
terminal's holds and past ids) so requests get far into their handlers, and sometimes from
anything at all (`HOSTILE`), so refusals are exercised too.
"""

import dataclasses
from typing import Callable

from switch import limits
from switch.core import layout
from switch.ledger.qr import qr_code
from tests.simulation.campus import (CARDS, CREDENTIALS, EXTRA_CREDENTIALS, HOSTILE,
                                     ID_LAST6, PERSONS, ROOMS, SCHOOLS)

HOSTILE_FIELD_CHANCE = 0.08


@dataclasses.dataclass(frozen=True)
class Generator:
    weight: float
    send: Callable      # send(sim, rng): executes one or more requests through sim.request


def one_request(t: str, weight: float, build: Callable) -> Generator:
    """A generator of `t` requests whose fields `build(sim, rng, who)` draws; a field named
    `_fresh_qr` there is not sent: it names the account of a QR code made just now."""
    def send(sim, rng):
        who = sim.sender(t)
        fields = build(sim, rng, who)
        fresh_qr = fields.pop("_fresh_qr", None)
        message = {"t": t, **fields}
        if rng.random() < HOSTILE_FIELD_CHANCE:
            message = _spoil(rng, message)
            fresh_qr = None
        sim.request(who, message, fresh_qr=fresh_qr)
    return Generator(weight, send)


def _spoil(rng, message: dict) -> dict:
    """One field replaced by something hostile, dropped, or one added that no schema names."""
    message = dict(message)
    roll = rng.random()
    if roll < 0.6 or len(message) == 1:
        message[rng.choice(list(message))] = rng.choice(HOSTILE)
    elif roll < 0.8:
        del message[rng.choice([key for key in message if key != "t"])]
    else:
        message[rng.choice(("extra", "", "t2", "ID"))] = rng.choice(HOSTILE)
    return message


# ---------------------------------------------------------------------------- values
def school_of(who: str) -> str | None:
    for credential_id, _, school, _ in CREDENTIALS.values():
        if credential_id == who:
            return school
    return None


def a_school(rng, who: str) -> str:
    school = school_of(who)
    return school if school and rng.random() < 0.9 else rng.choice(SCHOOLS)


def a_card(sim, rng, who: str) -> str:
    school = a_school(rng, who)
    known = [card for card, (account, _, _) in sim.pending.cards.items()
             if account.startswith(school)]
    if known and rng.random() < 0.85:
        return rng.choice(known)
    return rng.choice(CARDS[school])


def a_person(rng, who: str) -> str:
    return rng.choice(PERSONS[a_school(rng, who)])


def a_room(rng, who: str) -> str:
    return rng.choice(ROOMS[a_school(rng, who)])[0]


def an_account(rng, who: str) -> str:
    return a_person(rng, who) if rng.random() < 0.75 else a_room(rng, who)


def available(sim, account: str | None) -> int:
    record = sim.ledger.account(account) if account else None
    if record is None:
        return 0
    return layout.get(record, layout.BALANCE) - layout.get(record, layout.HELD)


def an_amount(rng, drain: int = 0):
    roll = rng.random()
    if roll < 0.1 and drain > 0:
        return drain                      # all of it: empty accounts get closed
    if roll < 0.5:
        return rng.randint(1, 500)
    if roll < 0.75:
        return rng.randint(500, 6_000)
    if roll < 0.9:
        return rng.randint(6_000, 60_000)
    return rng.choice((0, -1, limits.max_amount_fen, limits.max_amount_fen + 1, 2**63 - 1))


def a_pin(sim, rng, account: str | None):
    roll = rng.random()
    if roll < 0.6:
        return sim.pending.pins.get(account, ID_LAST6)
    return f"{rng.randint(0, 999_999):06d}"


def account_of_card(sim, card: str) -> str | None:
    known = sim.pending.cards.get(card)
    return known[0] if known else None


def a_qr(sim, rng, who: str) -> dict:
    """A code as a phone would show it: mostly made now with the account's secret."""
    school = a_school(rng, who)
    with_secret = [account for account in sim.pending.qr_secrets if account.startswith(school)]
    if not with_secret or rng.random() < 0.1:
        return {"qr": rng.choice(("", "WH20230001.1.0badf00d." + "0" * 20, "garbage"))}
    account = rng.choice(with_secret)
    secret = sim.pending.qr_secrets[account]
    nonce = f"{rng.getrandbits(32):08x}"
    steps = rng.choice((0, 0, 0, 0, -1, 1, -3, 40))
    code = qr_code(secret, account, sim.true_ms // 1000 + steps * limits.qr_step_s, nonce)
    return {"qr": code, **({"_fresh_qr": account} if steps == 0 else {})}


def own_hold(sim, rng, who: str) -> str:
    mine = [hold for hold, (owner, *_) in sim.pending.holds.items() if owner == who]
    if mine and rng.random() < 0.85:
        return rng.choice(mine)
    return rng.choice(("H1", f"H{sim.store.last_txn}", "H99999999", "h1", ""))


def a_past_id(sim, rng, who: str):
    mine = [request_id for (owner, request_id) in sim.pending.payments if owner == who]
    if mine and rng.random() < 0.8:
        return rng.choice(mine)
    return sim.fresh_id(who)   # never sent: a reverse before its original


# ---------------------------------------------------------------------------- builders
def _debit(sim, rng, who):
    card = a_card(sim, rng, who)
    fields = {"card": card, "amount": an_amount(rng, available(sim, account_of_card(sim, card))),
              "id": sim.fresh_id(who)}
    if rng.random() < 0.7:
        fields["pin"] = a_pin(sim, rng, account_of_card(sim, card))
    return fields


def _qr_debit(sim, rng, who):
    return {**a_qr(sim, rng, who), "amount": an_amount(rng), "id": sim.fresh_id(who)}


def _hold(sim, rng, who):
    fields = {"amount": an_amount(rng), "id": sim.fresh_id(who)}
    if rng.random() < 0.75:
        card = a_card(sim, rng, who)
        fields["card"] = card
        if rng.random() < 0.3:
            fields["pin"] = a_pin(sim, rng, account_of_card(sim, card))
    else:
        fields.update(a_qr(sim, rng, who))
    return fields


def _complete(sim, rng, who):
    hold = own_hold(sim, rng, who)
    held = sim.pending.holds.get(hold)
    amount = rng.randint(0, held[2]) if held and rng.random() < 0.85 else an_amount(rng)
    return {"hold": hold, "amount": amount, "id": sim.fresh_id(who)}


def _offline(sim, rng, who):
    if rng.random() < 0.02:
        # As many records as allowed, each id 64 characters of 3 UTF-8 bytes: the results
        # alone would outgrow a frame.
        card = a_card(sim, rng, who)
        return {"records": [{"id": f"{n:04d}" + "脱" * 60, "card": card, "amount": 1,
                             "at": sim.true_ms} for n in range(limits.offline_records_max)]}
    records = []
    for _ in range(rng.choice((1, 1, 2, 3, 5))):
        sent_before = sim.pending.offline_sent.get(who)
        if sent_before and rng.random() < 0.3:
            records.append(dict(rng.choice(sent_before)[0]))     # a re-upload
            continue
        when = rng.random()
        if when < 0.5:
            at = sim.true_ms - rng.randint(0, 2 * 3600_000)
        elif when < 0.8:
            at = sim.true_ms - rng.randint(0, sim.config.offline_window_s * 1000 + 86_400_000)
        else:
            at = sim.true_ms + rng.randint(0, limits.offline_future_s * 1000 + 60_000)
        records.append({"id": sim.fresh_id(who), "card": a_card(sim, rng, who),
                        "amount": an_amount(rng), "at": at})
    return {"records": records}


def _meter(sim, rng, who):
    room = a_room(rng, who)
    return {"account": room, "amount": an_amount(rng, available(sim, room)),
            "what": rng.choice(("electric", "water")), "id": sim.fresh_id(who)}


def _credit(sim, rng, who):
    return {"account": an_account(rng, who), "amount": an_amount(rng), "id": sim.fresh_id(who),
            "source": rng.choice(("wechat", "alipay", "counter"))}


def _set_limits(sim, rng, who):
    fields = {"account": a_person(rng, who), "id": sim.fresh_id(who)}
    for name, high in (("per_tx", 60_000), ("daily", 120_000), ("no_pin", 6_000)):
        if rng.random() < 0.5:
            fields[name] = rng.choice((rng.randint(0, high // 20), rng.randint(0, high)))
    return fields


def _open_account(sim, rng, who):
    school = a_school(rng, who)
    if rng.random() < 0.7:
        return {"account": rng.choice(PERSONS[school]), "school": school, "kind": "person",
                "holder": "新生", "id_last6": rng.choice((ID_LAST6, "65432X")),
                "id": sim.fresh_id(who)}
    room, utility = rng.choice(ROOMS[school])
    return {"account": room, "school": school, "kind": "utility", "utility": utility,
            "id": sim.fresh_id(who)}


def _replace_card(sim, rng, who):
    account = a_person(rng, who)
    own = [card for card, (holder, _, _) in sim.pending.cards.items() if holder == account]
    school = account[:4] if account.startswith("CUIK") else "WH"
    return {"account": account, "old": rng.choice(own or CARDS[school]),
            "new": rng.choice(CARDS[school]), "id": sim.fresh_id(who)}


def _add_credential(sim, rng, who):
    school = school_of(who) or rng.choice(SCHOOLS)
    return {"who": rng.choice(EXTRA_CREDENTIALS), "role": "terminal", "school": school,
            "kind": rng.choice(("pos", "water", "meter")), "id": sim.fresh_id(who)}


def _by_account(extra: Callable | None = None, person: bool = False):
    def build(sim, rng, who):
        fields = {"account": a_person(rng, who) if person else an_account(rng, who),
                  "id": sim.fresh_id(who)}
        return {**fields, **(extra(sim, rng, fields["account"]) if extra else {})}
    return build


def _subsidy(sim, rng, account):
    """A batch of this term (or one already over: bad_request) for a person or a room."""
    from datetime import datetime, timedelta, timezone
    today = datetime.fromtimestamp(sim.true_ms / 1000, tz=timezone(timedelta(hours=8))).date()
    expires = today + timedelta(days=rng.choice((-1, 0, 0, 1, 3, 30)))
    return {"amount": rng.choice((1, 300, 1_000, 5_000)), "expires": expires.isoformat(),
            "batch": rng.choice(("2026-秋-困难补助", "meal-12", "x" * 64))}


def _rooms(sim, rng, who):
    fields = {} if school_of(who) and rng.random() < 0.8 else {"school": a_school(rng, who)}
    pick = rng.random()
    if pick < 0.3:
        fields["building"] = rng.choice(("8D", "9A", "8", "99999999", "x y"))
    elif pick < 0.6:
        fields["prefix"] = rng.choice(("WH-8D", "CUIK-9A", "WH", "-", ""))
    if rng.random() < 0.4:
        fields["limit"] = rng.choice((1, 2, 50, 200, 201, 0))
    if rng.random() < 0.3:
        fields["after"] = a_room(rng, who)
    return fields


def _by_card(sim, rng, who):
    return {"card": a_card(sim, rng, who), "id": sim.fresh_id(who)}


def _without_id(build):
    def without(sim, rng, who):
        fields = build(sim, rng, who)
        del fields["id"]
        return fields
    return without


def _settle(sim, rng, who):
    school = sim.config.schools[school_of(who) or "WH"]
    day = school.days.day_name(school.days.day_of(sim.clock.now_ms()))
    return {"day": rng.choice((day, "2026-13-45", "2026-11-19")),
            "count": rng.randint(0, 20), "total": rng.randint(0, 50_000)}


def _wrong_id(sim, rng, account):
    return {"id_last6": rng.choice((f"{rng.randint(0, 99_999):05d}9", ID_LAST6, "65432X"))}


def _pin_change(sim, rng, account):
    return {"old": a_pin(sim, rng, account), "new": f"{rng.randint(0, 999_999):06d}"}


# ---------------------------------------------------------------------------- scenarios
def _guess_identity(sim, rng):
    """Someone who knows an account number tries ID digits until something gives."""
    who = sim.sender("reset_pin")
    account = a_person(rng, who)
    for _ in range(limits.pin_failures_max + 1):
        sim.request(who, {"t": "reset_pin", "account": account,
                          "id_last6": f"{rng.randint(0, 99_999):05d}9", "id": sim.fresh_id(who)})


def _active_card(sim, rng, school: str):
    """(card, account) of an active card of `school`, chosen by `rng`; None when it has none."""
    cards = [card for card, (account, state, _) in sim.pending.cards.items()
             if account.startswith(school) and state == layout.CARD_ACTIVE]
    if not cards:
        return None
    card = rng.choice(cards)
    return card, sim.pending.cards[card][0]


def _scene(sim, rng, *kinds):
    """(card, account, credential ids of `kinds`) in a school chosen by `rng`: an active
    card, and that school's terminals or service of each kind; None when it has no card."""
    school = rng.choice(SCHOOLS)
    credentials = [CREDENTIALS[f"{kind}-{school}"][0] for kind in kinds]
    chosen = _active_card(sim, rng, school)
    return None if chosen is None else (*chosen, *credentials)


def _empty_then_close(sim, rng):
    """A till takes everything an account has, the office closes it, the till reverses."""
    scene = _scene(sim, rng, "pos")
    if scene is None:
        return
    card, account, till = scene
    amount = available(sim, account)
    debit_id = sim.fresh_id(till)
    sim.request(till, {"t": "debit", "card": card, "amount": max(amount, 1), "id": debit_id,
                       "pin": sim.pending.pins.get(account, ID_LAST6)})
    sim.request("admin", {"t": "close_account", "account": account, "id": sim.fresh_id("admin")})
    sim.request(till, {"t": "reverse", "target": debit_id, "id": sim.fresh_id(till)})


def _night_upload(sim, rng):
    """Late in the evening an account pays near its daily limit, a till uploads a tap stamped
    a few minutes after midnight (its clock runs ahead), and the account pays again today."""
    scene = _scene(sim, rng, "pos", "service")
    if scene is None:
        return
    card, account, till, service = scene
    pin = sim.pending.pins.get(account, ID_LAST6)
    daily = rng.randint(1_000, 6_000)
    sim.advance_to(sim.before_midnight_ms())
    sim.request(service, {"t": "set_limits", "account": account, "daily": daily,
                          "per_tx": daily, "no_pin": min(daily, 500), "id": sim.fresh_id(service)})
    sim.request(till, {"t": "debit", "card": card, "amount": rng.randint(daily // 2, daily),
                       "pin": pin, "id": sim.fresh_id(till)})
    at = sim.true_ms + rng.randint(4 * 60_000 + 1, limits.offline_future_s * 1000)  # tomorrow
    sim.request(till, {"t": "offline", "records": [{"id": sim.fresh_id(till), "card": card,
                                                    "amount": rng.randint(1, 200), "at": at}]})
    sim.request(till, {"t": "debit", "card": card, "amount": rng.randint(daily // 2, daily),
                       "pin": pin, "id": sim.fresh_id(till)})


def _shower_past_an_offline_tap(sim, rng):
    """A shower holds what an account has, a till that was offline uploads a tap that took
    some of the held money meanwhile (docs/PROTOCOL.md §4.10), and the shower completes in
    full: the balance may end below zero."""
    scene = _scene(sim, rng, "water", "pos")
    if scene is None:
        return
    card, account, water, till = scene
    amount = available(sim, account)
    if amount < 1:
        return
    hold = sim.request(water, {"t": "hold", "card": card, "amount": amount,
                               "pin": sim.pending.pins.get(account, ID_LAST6),
                               "id": sim.fresh_id(water)})
    if hold.get("code") != "ok":
        return
    sim.request(till, {"t": "offline", "records": [{
        "id": sim.fresh_id(till), "card": card, "amount": rng.randint(1, amount),
        "at": sim.true_ms - rng.randint(0, 600_000)}]})
    sim.request(water, {"t": "complete", "hold": hold["hold"], "amount": amount,
                        "id": sim.fresh_id(water)})


def _late_reupload(sim, rng):
    """A till that lost its acknowledgements uploads a record again near the end of the
    offline window, after housekeeping has forgotten what it could."""
    uploaded = [(who, record, uploaded_ms) for who, sent in sim.pending.offline_sent.items()
                for record, uploaded_ms in sent if type(record.get("at")) is int]
    # Half the time one stamped ahead of its upload (the till's clock ran fast): the last
    # to leave the window.
    ahead = [sent for sent in uploaded if sent[1]["at"] > sent[2]]
    if not uploaded:
        return
    who, record, _ = rng.choice(ahead if ahead and rng.random() < 0.5 else uploaded)
    sim.advance_to(record["at"] + sim.config.offline_window_s * 1000
                   - rng.randint(0, limits.offline_future_s * 1000))
    sim.housekeeping()
    sim.request(who, {"t": "offline", "records": [dict(record)]})


GENERATORS = {
    "ping": one_request("ping", 1, lambda sim, rng, who: {}),
    "debit": one_request("debit", 12, _debit),
    "qr_debit": one_request("qr_debit", 5, _qr_debit),
    "hold": one_request("hold", 5, _hold),
    "complete": one_request("complete", 4, _complete),
    "void": one_request("void", 2, lambda sim, rng, who: {"hold": own_hold(sim, rng, who),
                                                          "id": sim.fresh_id(who)}),
    "reverse": one_request("reverse", 4, lambda sim, rng, who: {
        "target": a_past_id(sim, rng, who), "id": sim.fresh_id(who)}),
    "offline": one_request("offline", 6, _offline),
    "balance": one_request("balance", 2, lambda sim, rng, who: {"card": a_card(sim, rng, who)}),
    "blacklist": one_request("blacklist", 2, lambda sim, rng, who: {
        "since": rng.randint(-1, 30), **({"after": a_card(sim, rng, who)}
                                         if rng.random() < 0.2 else {})}),
    "settle": one_request("settle", 1, _settle),
    "meter": one_request("meter", 5, _meter),
    "credit": one_request("credit", 7, _credit),
    "account": one_request("account", 2, _without_id(_by_account())),
    "history": one_request("history", 1, lambda sim, rng, who: {
        "account": an_account(rng, who), **({"limit": rng.randint(1, 250)}
                                            if rng.random() < 0.5 else {})}),
    "lost": one_request("lost", 2, _by_card),
    "found": one_request("found", 2, _by_card),
    "set_limits": one_request("set_limits", 3, _set_limits),
    "set_pin": one_request("set_pin", 1, _by_account(_pin_change, person=True)),
    "reset_pin": one_request("reset_pin", 2, _by_account(_wrong_id, person=True)),
    "verify_pin": one_request("verify_pin", 1, _without_id(_by_account(
        lambda sim, rng, account: {"pin": a_pin(sim, rng, account)}, person=True))),
    "virtual_card": one_request("virtual_card", 2, _by_account(person=True)),
    "open_account": one_request("open_account", 2, _open_account),
    "close_account": one_request("close_account", 2, _by_account()),
    "refund": one_request("refund", 1.5, _by_account()),
    "subsidy": one_request("subsidy", 2, _by_account(_subsidy)),
    "rooms": one_request("rooms", 1, _rooms),
    "issue_card": one_request("issue_card", 2, lambda sim, rng, who: {
        "account": a_person(rng, who), "card": rng.choice(CARDS[a_school(rng, who)]),
        "id": sim.fresh_id(who)}),
    "replace_card": one_request("replace_card", 1, _replace_card),
    "freeze": one_request("freeze", 1, _by_account(lambda sim, rng, account: {
        "reason": rng.choice(("operator", "报失", ""))})),
    "unfreeze": one_request("unfreeze", 1, _by_account()),
    "unlock": one_request("unlock", 1, _by_account(person=True)),
    "add_credential": one_request("add_credential", 0.5, _add_credential),
    "revoke_credential": one_request("revoke_credential", 0.5, lambda sim, rng, who: {
        "who": rng.choice(EXTRA_CREDENTIALS), "id": sim.fresh_id(who)}),
    "rotate_key": one_request("rotate_key", 0.5, lambda sim, rng, who: {
        "who": rng.choice(EXTRA_CREDENTIALS), "id": sim.fresh_id(who)}),
    "unknown type": Generator(0.5, lambda sim, rng: sim.request(
        sim.sender("ping"), {"t": rng.choice(("refund?", "", "x" * 40, 7, None))})),
    "guess identity": Generator(0.3, _guess_identity),
    "empty then close": Generator(0.3, _empty_then_close),
    "night upload": Generator(0.3, _night_upload),
    "late re-upload": Generator(1, _late_reupload),
}

# Scenarios the CI seeds leave out, run by tests of their own: a new entry in GENERATORS
# changes what every seed draws, and some defects put back are found at one seed in hundreds
# (b at seed 297 of 300 when this was written).
EXTRA_SCENARIOS = {
    "shower past an offline tap": Generator(3, _shower_past_an_offline_tap),
}
