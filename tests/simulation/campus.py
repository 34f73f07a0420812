"""The campus every simulation run starts from: two schools, their credentials, accounts,
cards and rooms, and the values a hostile peer may send (`make_template` provisions it)."""

from switch.clock import FakeClock
from switch.cli.datadir import open_data_dir
from switch.config import default_config
from switch.ledger import Ledger, dispatch

START_MS = 1_795_000_000_000       # the fake clock's start (a Thursday, 2026-11-19 local)

SCHOOLS = ("WH", "CUIK")
PERSONS = {"WH": [f"WH2023000{n}" for n in range(1, 6)],
           "CUIK": [f"CUIK2023000{n}" for n in range(1, 6)]}
ROOMS = {"WH": [("WH-8D-1006", "both"), ("WH-8D-1007", "both")],
         "CUIK": [("CUIK-9A-0101", "electric"), ("CUIK-3B-0201", "both")]}
OPENED_PERSONS = 3      # per school at the start, each with a card; the rest may be opened
OPENED_ROOMS = 1
CARDS = {"WH": [f"0A{n:06X}" for n in range(1, 13)], "CUIK": [f"0C{n:06X}" for n in range(1, 13)]}
ID_LAST6 = "123456"
START_BALANCE = 20_000
# name -> (credential id, role, school, terminal kind)
CREDENTIALS = {
    "admin": ("admin", "admin", None, None),
    "service": ("mini-program", "service", None, None),
    **{f"{kind}-{school}": (f"{school}-{kind.upper()}-1", "terminal", school, kind)
       for school in SCHOOLS for kind in ("pos", "water", "meter")},
    **{f"pos2-{school}": (f"{school}-POS-2", "terminal", school, "pos") for school in SCHOOLS},
    **{f"service-{school}": (f"{school.lower()}-recharge", "service", school, None)
       for school in SCHOOLS},
}
ACCOUNT_KEYS = [(account, account.encode()) for school in SCHOOLS
                for account in PERSONS[school] + [room for room, _ in ROOMS[school]]]
EXTRA_CREDENTIALS = [f"X-POS-{n}" for n in range(1, 5)]   # what add/revoke_credential name

# Values a frame can carry (msgpack's ints run from -2**63 to 2**64 - 1).
HOSTILE = (None, "", " ", "x" * 300, -1, 0, 2**63, 2**64 - 1, -2**63, 1.5, True,
           False, [], [1, 2], {}, {"a": {"b": {"c": 1}}}, "卡号", "\x00", b"\x00\xff",
           "0" * 33, "H0", "H" + "9" * 25, "WH2023000１")


def make_template(path: str) -> str:
    """A provisioned data dir (credentials, opened accounts with cards and money), copied for
    each run: provisioning costs a few fsyncs."""
    store = open_data_dir(path, fsync=False)
    ledger = Ledger(store, default_config(), FakeClock(START_MS))
    admin = ledger.credential("admin")
    serial = iter(range(1, 1000))

    def ok(t, **fields):
        reply = dispatch.execute(ledger, admin, {"t": t, "id": f"setup-{next(serial)}", **fields})
        assert reply["code"] == "ok", (t, fields, reply)

    for _, (who, role, school, kind) in CREDENTIALS.items():
        if who != "admin":
            ok("add_credential", who=who, role=role,
               **({"school": school} if school else {}), **({"kind": kind} if kind else {}))
    for school in SCHOOLS:
        for number, account in enumerate(PERSONS[school][:OPENED_PERSONS]):
            ok("open_account", account=account, school=school, kind="person", holder="学生",
               id_last6=ID_LAST6)
            ok("issue_card", account=account, card=CARDS[school][number])
            ok("credit", account=account, amount=START_BALANCE, source="setup")
        for account, utility in ROOMS[school][:OPENED_ROOMS]:
            ok("open_account", account=account, school=school, kind="utility", utility=utility)
            ok("credit", account=account, amount=START_BALANCE, source="setup")
    ledger.take_effects()
    store.commit_now()
    store.close()
    return path
