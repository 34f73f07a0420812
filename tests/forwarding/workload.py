"""A campus day in miniature, over the wire: till debits at two canteens (with reversals
and offline uploads), hot-water holds, dorm meters running rooms out of power and
recharges turning it back on, and a lost/found card (a kind no receiver here wants).

Works against the in-process harness and a real switch process alike (only `Client`).
"""

import random
from collections import defaultdict

import trio

from switch.shell.client import Client

SCHOOL = "WH"
PERSONS = 12
ROOMS = 4
START_BALANCE_FEN = 200_000
ROOM_RECHARGE_FEN = 300
DAY_MS = 24 * 3600 * 1000
BUSY_RETRIES_MAX = 200        # a request answered `busy` is sent again at most this often,
BUSY_RETRY_DELAY_S = 0.02     # this long apart (the budget refills 4 requests meanwhile)

CONNECTION_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, trio.EndOfChannel,
                     OSError)


def person(index: int) -> str:
    return f"WH2023{index:04d}"


def card(index: int) -> str:
    return f"C0FFEE{index:04d}"


def room(index: int) -> str:
    return f"WH-8D-{1000 + index}"


class Workload:
    def __init__(self, host: str, port: int, admin_key: bytes, seed: int = 7):
        self.host = host
        self.port = port
        self.random = random.Random(seed)
        self.keys = {"admin": admin_key}
        self.clients: dict[str, Client] = {}
        self.serial = 0
        self.debits_ok = defaultdict(list)      # terminal -> debit ids answered ok
        self.room_balance = defaultdict(int)    # what we believe (good enough to drive cutoffs)

    def _id(self, prefix: str) -> str:
        self.serial += 1
        return f"{prefix}-{self.serial}"

    async def connect(self, port: int | None = None) -> None:
        await self.aclose()
        self.port = port or self.port
        for who, key in self.keys.items():
            self.clients[who] = await Client.connect(self.host, self.port, who, key)

    async def aclose(self) -> None:
        for client in self.clients.values():
            await trio.aclose_forcefully(client.stream)
        self.clients = {}

    async def _ok(self, who: str, message: dict) -> dict:
        # `busy` did nothing (docs/PROTOCOL.md §2.3): a till sends the same request again
        # shortly, as a real one does. The pipelined debits run a till past its request
        # budget (200/s after a burst of 1,000) whenever the switch answers them faster
        # than that; what these tests check is forwarding, not the budget.
        for _ in range(BUSY_RETRIES_MAX):
            reply = await self.clients[who].request(message)
            if reply["code"] != "busy":
                break
            await trio.sleep(BUSY_RETRY_DELAY_S)
        assert reply["code"] == "ok", (message, reply)
        return reply

    async def setup(self) -> None:
        await self.connect()
        admin = "admin"
        for who, role, kind, merchant in (("T-POS-1", "terminal", "pos", "CANTEEN-1"),
                                          ("T-POS-2", "terminal", "pos", "CANTEEN-2"),
                                          ("T-WATER-1", "terminal", "water", "BATH-1"),
                                          ("T-METER-1", "terminal", "meter", "POWER-8"),
                                          ("RECHARGE", "service", None, None)):
            message = {"t": "add_credential", "who": who, "role": role, "id": f"add-{who}"}
            if role == "terminal":
                message.update(school=SCHOOL, kind=kind, merchant=merchant)
            reply = await self._ok(admin, message)
            self.keys[who] = reply["key"]
        for index in range(PERSONS):
            await self._ok(admin, {"t": "open_account", "account": person(index), "school": SCHOOL,
                                   "kind": "person", "holder": "学生", "id_last6": "123456",
                                   "id": f"open-{index}"})
            await self._ok(admin, {"t": "issue_card", "account": person(index), "card": card(index),
                                   "id": f"card-{index}"})
        for index in range(ROOMS):
            await self._ok(admin, {"t": "open_account", "account": room(index), "school": SCHOOL,
                                   "kind": "utility", "utility": "both", "id": f"room-{index}"})
        await self.connect()
        for index in range(PERSONS):
            await self._ok("RECHARGE", {"t": "credit", "account": person(index),
                                        "amount": START_BALANCE_FEN, "source": "wechat",
                                        "id": f"seed-{index}"})

    async def burst(self, debits: int = 40) -> None:
        """About `debits` + 20 journal records of every kind the receivers care about."""
        rng = self.random
        # Canteen tills: pipelined debits, then one reversal each.
        for terminal in ("T-POS-1", "T-POS-2"):
            messages = [{"t": "debit", "card": card(rng.randrange(PERSONS - 1)),
                         "amount": rng.randint(1, 99), "id": self._id("d")}
                        for _ in range(debits // 2)]
            replies = await self.clients[terminal].pipeline(messages)
            for message, reply in zip(messages, replies):
                if reply["code"] == "ok":
                    self.debits_ok[terminal].append(message["id"])
            if self.debits_ok[terminal]:
                target = self.debits_ok[terminal].pop(rng.randrange(len(self.debits_ok[terminal])))
                await self._ok(terminal, {"t": "reverse", "target": target, "id": self._id("r")})
        # Taps taken while the till was offline, two days ago (another settlement day).
        at_ms = self.clients["T-POS-1"].hello_reply["time"] - 2 * DAY_MS
        records = [{"id": self._id("o"), "card": card(rng.randrange(PERSONS - 1)),
                    "amount": rng.randint(1, 99), "at": at_ms + i} for i in range(3)]
        reply = await self._ok("T-POS-1", {"t": "offline", "records": records})
        assert all(result["code"] == "ok" for result in reply["results"]), reply
        # Hot water: hold, then the metered amount.
        for _ in range(2):
            held = await self._ok("T-WATER-1", {"t": "hold", "card": card(rng.randrange(PERSONS - 1)),
                                                "amount": 500, "id": self._id("h")})
            await self._ok("T-WATER-1", {"t": "complete", "hold": held["hold"],
                                         "amount": rng.randint(0, 500), "id": self._id("c")})
        # Dorm rooms: recharge the ones without money, meter them all (cutoffs follow).
        for index in range(ROOMS):
            if self.room_balance[index] <= 0:
                reply = await self._ok("RECHARGE", {"t": "credit", "account": room(index),
                                                    "amount": ROOM_RECHARGE_FEN, "source": "alipay",
                                                    "id": self._id("rc")})
                self.room_balance[index] = reply["balance"]
            reply = await self._ok("T-METER-1", {"t": "meter", "account": room(index),
                                                 "amount": rng.randint(50, 200), "what": "electric",
                                                 "id": self._id("m")})
            self.room_balance[index] = reply["balance"]
        # A card reported lost and found again: kinds the billing and utility filters skip.
        lost_card = card(PERSONS - 1)
        await self._ok("RECHARGE", {"t": "lost", "card": lost_card, "id": self._id("l")})
        await self._ok("RECHARGE", {"t": "found", "card": lost_card, "id": self._id("f")})
