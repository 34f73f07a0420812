"""Start of term over the wire: credentials, students, cards, dorm rooms, first recharges.

The admin key opens accounts, issues cards and adds credentials; a recharge service
credential makes the first recharges; the mini-program backend raises daily limits
and opens virtual cards (QR secrets). Each phase is pipelined 64 deep over several
connections; a phase starts when the one it depends on is answered.
"""

import time
from collections import Counter

import trio

from onecard_sim import limits
from onecard_sim.context import Run
from onecard_sim.population import Population
from onecard_sim.wire import Wire, pipeline

DAILY_LIMIT_RAISED_FEN = 500_000    # the default school maximum (docs/PROTOCOL.md §4.7)
# The meal subsidy (补助, docs/PROTOCOL.md §4.17) of every SUBSIDISED_EVERY-th student.
SUBSIDISED_EVERY = 3
SUBSIDY_FEN = 1_500
SUBSIDY_BATCH = "sim meal subsidy"
SUBSIDY_EXPIRES = "2099-12-31"


class ProvisionError(Exception):
    pass


async def sharded(wires: list, messages: list) -> list:
    """Pipeline `messages` over `wires` in contiguous shards; replies in request order."""
    if not messages:
        return []
    shards = len(wires)
    size = -(-len(messages) // shards)
    results: list = [None] * shards

    async def one(index: int):
        chunk = messages[index * size:(index + 1) * size]
        results[index] = await pipeline(wires[index], chunk) if chunk else []

    async with trio.open_nursery() as nursery:
        for index in range(shards):
            nursery.start_soon(one, index)
    return [reply for shard in results for reply in shard]


async def open_wires(address, who: str, key: bytes, count: int) -> list:
    wires = []
    try:
        for _ in range(count):
            wires.append(await Wire.open(address, who, key))
    except BaseException:
        for wire in wires:
            wire.close()
        raise
    return wires


def _check(phase: str, messages: list, replies: list, failures: Counter, examples: list,
           allowed=("ok",)) -> None:
    for message, reply in zip(messages, replies):
        code = reply.get("code") if reply else None
        if code not in allowed:
            failures[(phase, message["t"], code)] += 1
            if len(examples) < 10:
                shown = {k: v for k, v in message.items() if k not in ("id_last6", "pin")}
                examples.append(f"{phase}: {shown} -> {code}")


async def provision(run: Run, population: Population, address, admin_key: bytes,
                    connections: int = limits.provision_connections, tag: str = "") -> dict:
    started = time.perf_counter()
    ledger = run.ledger
    failures: Counter = Counter()
    examples: list = []
    requests = 0
    admin = await open_wires(address, "admin", admin_key, connections)
    service_wires: list = []
    try:
        # 1. Service credentials: the recharge system's and the mini-program backend's.
        services = [c for c in population.credentials if c.role == "service"] + [population.office]
        messages = [{"t": "add_credential", "who": c.who, "role": "service",
                     "id": f"sim-add-{c.who}"} for c in services]
        replies = await sharded(admin, messages)
        requests += len(messages)
        _check("service credentials", messages, replies, failures, examples)
        for credential, reply in zip(services, replies):
            credential.key = reply.get("key")
        if failures:
            raise ProvisionError("; ".join(examples))

        # 2. Accounts and terminal credentials.
        messages = []
        for student in population.students:
            messages.append({"t": "open_account", "account": student.account,
                             "school": student.school, "kind": "person",
                             "holder": student.holder, "id_last6": student.id_last6,
                             "id": f"sim-open-{student.account}"})
        for room in population.rooms:
            messages.append({"t": "open_account", "account": room.account, "school": room.school,
                             "kind": "utility", "utility": room.utility,
                             "id": f"sim-open-{room.account}"})
        terminals = [c for c in population.credentials if c.role == "terminal"]
        for credential in terminals:
            message = {"t": "add_credential", "who": credential.who, "role": "terminal",
                       "school": credential.school, "kind": credential.kind,
                       "merchant": credential.merchant, "id": f"sim-add-{credential.who}"}
            if credential.kind == "pos" and run.behaviour.meal_tills:
                # Canteen tills: meal caps apply where the school configures meal periods.
                message["meals"] = True
            messages.append(message)
        replies = await sharded(admin, messages)
        requests += len(messages)
        _check("accounts and terminals", messages, replies, failures, examples)
        for credential, reply in zip(terminals, replies[-len(terminals):] if terminals else []):
            credential.key = reply.get("key")
        for account in population.accounts:
            ledger.open(account)
        # The switch refuses a shared ("both") account in a split building (CUIK 9).
        probe = {"t": "open_account", "account": f"CUIK-9D-{tag}9999", "school": "CUIK",
                 "kind": "utility", "utility": "both", "id": f"sim-probe-split-{tag}"}
        probe_reply = (await pipeline(admin[0], [probe]))[0]
        requests += 1
        if failures:
            raise ProvisionError("; ".join(examples))

        # 3. Cards (admin), first recharges (a recharge service), limits and QR (backend).
        recharge = next((c for c in population.credentials if c.kind == "recharge"),
                        population.office)
        service_wires = await open_wires(address, recharge.who, recharge.key, connections)
        office_wires = await open_wires(address, population.office.who,
                                         population.office.key, connections)
        service_wires += office_wires
        cards = [{"t": "issue_card", "account": s.account, "card": s.card,
                  "id": f"sim-card-{s.card}"} for s in population.students]
        # Every third student has a meal subsidy (补助), spent before their own money.
        subsidised = population.students[::SUBSIDISED_EVERY]
        subsidies = [{"t": "subsidy", "account": s.account, "amount": SUBSIDY_FEN,
                      "expires": SUBSIDY_EXPIRES, "batch": SUBSIDY_BATCH,
                      "id": f"sim-subsidy-{s.account}"} for s in subsidised]
        credits = []
        targets = []
        for student in population.students:
            credits.append({"t": "credit", "account": student.account,
                            "amount": student.initial_fen, "id": f"sim-init-{student.account}",
                            "source": "start-of-term"})
            targets.append((student.account, None))
        for room in population.rooms:
            credits.append({"t": "credit", "account": room.account, "amount": room.initial_fen,
                            "id": f"sim-init-{room.account}", "source": "start-of-term"})
            targets.append((room.account, room))
        raised = [s for s in population.students if s.raise_daily_limit]
        limit_messages = [{"t": "set_limits", "account": s.account,
                           "daily": DAILY_LIMIT_RAISED_FEN, "id": f"sim-limit-{s.account}"}
                          for s in raised]
        qr_students = [s for s in population.students if s.wants_qr]
        qr_messages = [{"t": "virtual_card", "account": s.account, "id": f"sim-vc-{s.account}"}
                       for s in qr_students]
        results = {}

        async def phase(name, wires, batch):
            results[name] = await sharded(wires, batch)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(phase, "cards", admin, cards + subsidies)
            nursery.start_soon(phase, "credits", service_wires[:connections], credits)
            nursery.start_soon(phase, "backend", office_wires, limit_messages + qr_messages)
        requests += (len(cards) + len(subsidies) + len(credits) + len(limit_messages)
                     + len(qr_messages))
        _check("cards", cards, results["cards"][:len(cards)], failures, examples)
        _check("subsidies", subsidies, results["cards"][len(cards):], failures, examples)
        for message, reply in zip(subsidies, results["cards"][len(cards):]):
            if reply.get("code") == "ok":
                ledger.apply(message["account"], message["amount"])
        _check("first recharges", credits, results["credits"], failures, examples)
        backend = results["backend"]
        # A configuration with a lower daily maximum refuses the raise: not fatal.
        _check("limits", limit_messages, backend[:len(limit_messages)], Counter(), [])
        limits_refused = sum(1 for r in backend[:len(limit_messages)] if r.get("code") != "ok")
        _check("virtual cards", qr_messages, backend[len(limit_messages):], failures, examples)
        for message, (account, room), reply in zip(credits, targets, results["credits"]):
            if reply.get("code") == "ok":
                ledger.apply(account, message["amount"])
                if room is not None and reply.get("balance", 0) > 0:
                    room.power = True
        for student, reply in zip(qr_students, backend[len(limit_messages):]):
            if reply.get("code") == "ok" and type(reply.get("qr_secret")) is bytes:
                student.qr_secret = reply["qr_secret"]
                population.qr_students_of[student.school].append(student)
        if failures:
            raise ProvisionError("; ".join(examples))
    finally:
        for wire in admin + service_wires:
            wire.close()
    return {"seconds": round(time.perf_counter() - started, 3), "requests": requests,
            "students": len(population.students), "rooms": len(population.rooms),
            "terminal_credentials": len([c for c in population.credentials
                                         if c.role == "terminal"]),
            "service_credentials": len([c for c in population.credentials
                                        if c.role == "service"]) + 1,
            "virtual_cards": sum(len(v) for v in population.qr_students_of.values()),
            "daily_limits_raised": len(limit_messages) - limits_refused,
            "subsidies": len(subsidies),
            "split_building_shared_account": probe_reply.get("code")}
