"""The reference receivers against a switch that sends nonsense and a crowd that sends
nothing: every field of every record checked before it is applied, a refused or failed
frame leaves nothing behind, CSV cells that cannot run as formulas, silent sockets that
cannot keep the switch out, and an exception that ends one connection only."""

import csv
import errno
import json
import os
import time

import pytest
import trio
import trio.testing

from switch import limits
from switch.codec import ClientSession, FrameDecoder
from switch.receivers import base
from switch.receivers.billing import BillingReceiver
from switch.receivers.utility import UtilityReceiver

WHO = "sw-receiver"
KEY = b"k" * 32
AT = 1_795_000_000_000          # 2026-11-18 in Shanghai
TIME_MAX = limits.receiver_time_ms_max
FEN_MAX = limits.balance_fen_max


def money(txn, kind="debit", **fields):
    record = {"txn": txn, "at": AT, "kind": kind, "account": "WH20230001", "school": "WH",
              "amount": -120, "balance": 880, "who": "T-POS-1", "merchant": "CANTEEN-1",
              "ref": f"r-{txn}"}
    if kind == "reverse":
        record.update(amount=120, target=txn - 1)
    if kind == "offline":
        record.update(tapped_at=AT - 60_000, card="0A1B2C3D")
    return {**record, **fields}


def room(txn, kind="meter", **fields):
    record = {"txn": txn, "at": AT, "kind": kind, "account": "WH-D1-101", "school": "WH",
              "amount": {"meter": -30, "credit": 500}.get(kind, 0), "balance": 470,
              "who": "T-METER-1", "merchant": None, "ref": f"r-{txn}"}
    return {**record, **fields}


def frame(records, first=1, last=None):
    last = records[-1]["txn"] if last is None else last
    return {"t": "records", "from": first, "to": last, "records": records}


def refused(reply) -> bool:
    return reply == {"t": "records", "code": "bad_request"}


# ------------------------------------------------------------------ fields
BILLING_CASES = [
    # (what, the frame's records, applied?)
    ("at at its minimum", [money(1, at=limits.receiver_time_ms_min)], True),
    ("at below it", [money(1, at=limits.receiver_time_ms_min - 1)], False),
    ("at at its maximum", [money(1, at=TIME_MAX)], True),
    ("at past it", [money(1, at=TIME_MAX + 1)], False),
    ("at past any date", [money(1, at=2**70)], False),
    ("at a float", [money(1, at=float(AT))], False),
    ("at missing", [{k: v for k, v in money(1).items() if k != "at"}], False),
    ("amount at its bound", [money(1, amount=-FEN_MAX)], True),
    ("amount past it", [money(1, amount=-FEN_MAX - 1)], False),
    ("amount a bool", [money(1, amount=True)], False),
    ("a payment that gives money", [money(1, amount=120)], False),
    ("balance at its bound", [money(1, balance=FEN_MAX)], True),
    ("balance past it", [money(1, balance=FEN_MAX + 1)], False),
    ("balance below minus it", [money(1, balance=-FEN_MAX - 1)], False),
    ("merchant at its length", [money(1, merchant="M" * limits.source_chars_max)], True),
    ("merchant past it", [money(1, merchant="M" * (limits.source_chars_max + 1))], False),
    ("merchant empty", [money(1, merchant="")], False),
    ("merchant missing", [money(1, merchant=None)], False),
    ("merchant a list", [money(1, merchant=["M"])], False),
    ("account at its length", [money(1, account="A" * limits.account_id_chars_max)], True),
    ("account past it", [money(1, account="A" * (limits.account_id_chars_max + 1))], False),
    ("account an int", [money(1, account=7)], False),
    ("school at its length", [money(1, school="S" * limits.school_code_chars_max)], True),
    ("school past it", [money(1, school="S" * (limits.school_code_chars_max + 1))], False),
    ("who at its length", [money(1, who="w" * limits.credential_id_chars_max)], True),
    ("who past it", [money(1, who="w" * (limits.credential_id_chars_max + 1))], False),
    ("ref at its length", [money(1, ref="r" * limits.id_str_chars_max)], True),
    ("ref text past it", [money(1, ref="r" * (limits.id_str_chars_max + 1))], False),
    ("ref the largest int id", [money(1, ref=limits.id_int_max)], True),
    ("ref int past it", [money(1, ref=limits.id_int_max + 1)], False),
    ("ref a map", [money(1, ref={"a": 1})], False),
    ("tapped_at at its maximum", [money(1, "offline", tapped_at=TIME_MAX)], True),
    ("tapped_at past it", [money(1, "offline", tapped_at=TIME_MAX + 1)], False),
    ("a reverse of the txn before", [money(1), money(2, "reverse")], True),
    ("a reverse of itself", [money(1), money(2, "reverse", target=2)], False),
    ("a reverse of txn 0", [money(1), money(2, "reverse", target=0)], False),
    ("a reverse without a target", [money(1), money(2, "reverse", target=None)], False),
    ("a reverse that takes money", [money(1), money(2, "reverse", amount=-120)], False),
    ("a payment all from subsidy", [money(1, from_subsidy=120)], True),
    ("a payment's subsidy past it", [money(1, from_subsidy=121)], False),
    ("a payment's subsidy negative", [money(1, from_subsidy=-1)], False),
    ("a reverse giving subsidy back", [money(1, from_subsidy=50),
                                       money(2, "reverse", from_subsidy=-50)], True),
    ("a reverse taking subsidy", [money(1), money(2, "reverse", from_subsidy=1)], False),
    ("a subsidy part not an int", [money(1, from_subsidy="5")], False),
]


@pytest.mark.parametrize("what, records, applied", BILLING_CASES,
                         ids=[case[0] for case in BILLING_CASES])
async def test_billing_checks_every_field_before_applying(tmp_path, what, records, applied):
    receiver = BillingReceiver(str(tmp_path / "b"), {WHO: KEY})
    settlement = (tmp_path / "b" / "settlement.csv").read_bytes()
    reply = await receiver.handle_records(frame(records))
    if applied:
        assert reply == {"t": "records", "code": "ok", "upto": records[-1]["txn"]}
        assert receiver.position == records[-1]["txn"] and receiver.settlement_rows()
        return
    assert refused(reply)
    assert receiver.position == 0 and receiver.settlement_rows() == []
    assert (tmp_path / "b" / "settlement.csv").read_bytes() == settlement
    # Refused, not stuck: the next good frame is taken.
    good = await receiver.handle_records(frame([money(1)]))
    assert good["upto"] == 1 and receiver.settlement_rows()[0][2:] == (1, 120, 0)


async def test_billing_takes_a_frame_with_a_refund_and_counts_only_the_tills(tmp_path):
    """A refund (离校退款) is paid by the card office, not a till: the billing receiver,
    sent every kind, acknowledges it and leaves it out of the settlement."""
    receiver = BillingReceiver(str(tmp_path / "b"), {WHO: KEY})
    refund = money(2, "refund", amount=-880, balance=0, who="admin", merchant=None)
    reply = await receiver.handle_records(frame([money(1), refund]))
    assert reply == {"t": "records", "code": "ok", "upto": 2}
    assert [row[2:] for row in receiver.settlement_rows()] == [(1, 120, 0)]


UTILITY_CASES = [
    ("a meter", [room(1)], True),
    ("a meter that gives money", [room(1, amount=30)], False),
    ("a credit that takes money", [room(1, "credit", amount=-500)], False),
    ("a cutoff that moves money", [room(1, "cutoff", amount=-1)], False),
    ("a restore", [room(1, "restore")], True),
    ("a refund of a room", [room(1), room(2, "refund", amount=-470, balance=0)], True),
    ("a refund that gives money", [room(1), room(2, "refund", amount=1, balance=0)], False),
    ("a refund that leaves money", [room(1), room(2, "refund", amount=-400, balance=70)],
     False),
    ("at past its maximum", [room(1, at=TIME_MAX + 1)], False),
    ("balance past its bound", [room(1, balance=FEN_MAX + 1)], False),
    ("account a list", [room(1, account=["WH-D1-101"])], False),
    ("school missing", [room(1, school=None)], False),
]


@pytest.mark.parametrize("what, records, applied", UTILITY_CASES,
                         ids=[case[0] for case in UTILITY_CASES])
async def test_utility_checks_every_field_before_applying(tmp_path, what, records, applied):
    receiver = UtilityReceiver(str(tmp_path / "u"), {WHO: KEY})
    reply = await receiver.handle_records(frame(records))
    if applied:
        assert reply["code"] == "ok" and receiver.position == records[-1]["txn"]
        assert receiver.rooms
    else:
        assert refused(reply) and receiver.position == 0 and receiver.rooms == {}


async def test_utility_takes_a_rooms_refund_to_zero_and_its_power_off_on_the_cutoff(tmp_path):
    """A room refunded (closed) with power on: its `refund` then the `cutoff` the same request
    wrote (docs/PROTOCOL.md §4.12). The room kept its old balance before refunds were taken."""
    receiver = UtilityReceiver(str(tmp_path / "u"), {WHO: KEY})
    records = [room(1, "credit", balance=500), room(2, "restore", balance=500, ref="r-1"),
               room(3, balance=470),
               room(4, "refund", amount=-470, balance=0, who="admin", ref="leaving"),
               room(5, "cutoff", balance=0, who="admin", ref="leaving")]
    assert (await receiver.handle_records(frame(records)))["upto"] == 5
    with open(tmp_path / "u" / "rooms.csv", newline="") as handle:
        [row] = list(csv.DictReader(handle))
    assert {name: row[name] for name in ("power", "balance_fen", "recharged_fen", "metered_fen",
                                         "refunded_fen", "power_changed_txn")} == {
        "power": "off", "balance_fen": "0", "recharged_fen": "500", "metered_fen": "30",
        "refunded_fen": "470", "power_changed_txn": "5"}


async def test_utility_leaves_a_persons_refund_out_and_forgets_its_waiting_credit(tmp_path):
    receiver = UtilityReceiver(str(tmp_path / "u"), {WHO: KEY})
    person = {"account": "WH20230001", "who": "admin"}
    records = [room(1, "credit", balance=500, **person),
               room(2, "refund", amount=-500, balance=0, **person)]
    assert (await receiver.handle_records(frame(records)))["upto"] == 2
    assert receiver.rooms == {} and not receiver.pending_credits


async def test_utility_state_saved_before_refunds_were_taken_still_loads(tmp_path):
    receiver = UtilityReceiver(str(tmp_path / "u"), {WHO: KEY})
    assert (await receiver.handle_records(frame([room(1)])))["upto"] == 1
    saved = receiver.snapshot()
    del saved["rooms"]["WH-D1-101"]["refunded_fen"]
    receiver.restore(json.loads(json.dumps(saved)))
    assert receiver.rooms["WH-D1-101"]["refunded_fen"] == 0
    assert dict(receiver.outputs())["rooms.csv"].splitlines()[0].endswith(b",refunded_fen")


async def test_a_to_beyond_what_the_switch_sends_does_not_swallow_later_records(tmp_path):
    receiver = BillingReceiver(str(tmp_path / "b"), {WHO: KEY})
    assert refused(await receiver.handle_records(frame([money(1)], last=2**40)))
    assert receiver.position == 0
    reply = await receiver.handle_records(frame([money(1), money(2)]))
    assert reply["upto"] == 2
    assert receiver.settlement_rows() == [("CANTEEN-1", "2026-11-18", 2, 240, 0)]


# ------------------------------------------------------------------ CSV
FORMULAS = ["=HYPERLINK(\"http://x\",\"pay\")", "+1", "-2+3", "@SUM(A1:A9)", "\tTAB", "\rCR"]


async def test_settlement_cells_cannot_run_as_formulas(tmp_path):
    receiver = BillingReceiver(str(tmp_path / "b"), {WHO: KEY})
    names = FORMULAS + ["plain", "quote \" and, comma"]
    records = [money(n + 1, merchant=name) for n, name in enumerate(names)]
    # A reverse with no payment of that merchant that day: a negative total, a number.
    records.append(money(len(names) + 1, "reverse", merchant="refunds", target=1))
    assert (await receiver.handle_records(frame(records)))["code"] == "ok"
    with open(tmp_path / "b" / "settlement.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["merchant", "day", "count", "total_fen", "subsidy_fen"]
    merchants = {row[0]: row[2:] for row in rows[1:]}
    for name in FORMULAS:
        assert merchants["'" + name] == ["1", "120", "0"]
    assert merchants["plain"] == ["1", "120", "0"]
    assert merchants["quote \" and, comma"] == ["1", "120", "0"]
    assert merchants["refunds"] == ["-1", "-120", "0"]


async def test_room_cells_cannot_run_as_formulas(tmp_path):
    receiver = UtilityReceiver(str(tmp_path / "u"), {WHO: KEY})
    reply = await receiver.handle_records(frame([room(1, account="-WH-D1-1", balance=-5)]))
    assert reply["code"] == "ok"
    with open(tmp_path / "u" / "rooms.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(row["account"], row["balance_fen"], row["metered_fen"]) for row in rows] == \
        [("'-WH-D1-1", "-5", "30")]


# ------------------------------------------------------------------ on the wire
class Sender:
    """The switch's side of one connection to a receiver, by hand."""

    def __init__(self, stream):
        self.stream = stream
        self.decoder = FrameDecoder()
        self.payloads = []
        self.session = ClientSession(WHO, KEY)

    @classmethod
    async def sign_on(cls, port) -> "Sender":
        sender = cls(await trio.open_tcp_stream("127.0.0.1", port))
        await sender.stream.send_all(sender.session.hello_frame(time.time_ns() // 1_000_000))
        reply = sender.session.receive_hello_reply(await sender.next_payload())
        assert reply["role"] == "downstream"
        return sender

    async def next_payload(self) -> bytes | None:
        with trio.fail_after(30):
            while not self.payloads:
                data = await self.stream.receive_some(65536)
                if not data:
                    return None
                self.payloads.extend(self.decoder.feed(data))
        return self.payloads.pop(0)

    async def records(self, message) -> dict | None:
        """The reply, or None when the receiver closed the connection instead."""
        seq, request = self.session.request_frame(message)
        await self.stream.send_all(request)
        payload = await self.next_payload()
        return None if payload is None else self.session.receive(payload)


@pytest.fixture
async def billing(tmp_path, nursery):
    receiver = BillingReceiver(str(tmp_path / "b"), {WHO: KEY})
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    await nursery.start(receiver.serve, listeners)
    receiver.port = listeners[0].socket.getsockname()[1]
    return receiver


async def test_a_flood_of_bad_hellos_is_a_few_log_lines_not_one_each(billing, caplog,
                                                                  monkeypatch):
    caplog.set_level("INFO", logger=base.log.name)
    for _ in range(100):
        stream = await trio.open_tcp_stream("127.0.0.1", billing.port)
        await stream.send_all(ClientSession(WHO, b"x" * 32).hello_frame(0))   # a wrong key
        with trio.fail_after(30):
            while await stream.receive_some(65536):    # the error frame, then closed
                pass
        await stream.aclose()
    assert billing.hellos_refused == 100
    logged = [record.getMessage() for record in caplog.records
              if "event=hello_refused" in record.getMessage()]
    # The 1st, 2nd, 4th ... 64th, each with the count so far.
    assert [line.rpartition("refused_total=")[2] for line in logged] == [
        "1", "2", "4", "8", "16", "32", "64"]
    # A new window: the next refusal is logged at once (a wrong key retrying after a flood).
    monkeypatch.setattr(limits, "receiver_hellos_refused_window_s", 0.0)
    stream = await trio.open_tcp_stream("127.0.0.1", billing.port)
    await stream.send_all(ClientSession(WHO, b"x" * 32).hello_frame(0))
    with trio.fail_after(30):
        while await stream.receive_some(65536):
            pass
    await stream.aclose()
    last = [record.getMessage() for record in caplog.records
            if "event=hello_refused" in record.getMessage()][-1]
    assert last.endswith("refused_total=101")
    sender = await Sender.sign_on(billing.port)        # the right key is still let in
    assert (await sender.records(frame([money(1)])))["code"] == "ok"


async def test_a_flood_of_silent_sockets_does_not_keep_the_switch_out(billing):
    bound = limits.receiver_pending_connections_max
    silent = [await trio.open_tcp_stream("127.0.0.1", billing.port) for _ in range(bound)]
    await trio.testing.wait_all_tasks_blocked(0.05)
    assert len(billing._pending) == bound and billing.pending_evicted == 0
    silent.append(await trio.open_tcp_stream("127.0.0.1", billing.port))
    await trio.testing.wait_all_tasks_blocked(0.05)
    assert len(billing._pending) == bound and billing.pending_evicted == 1
    with trio.fail_after(30):
        assert await silent[0].receive_some(100) == b""     # the oldest made room
    for _ in range(3 * bound):
        silent.append(await trio.open_tcp_stream("127.0.0.1", billing.port))
    sender = await Sender.sign_on(billing.port)
    reply = await sender.records(frame([money(1)]))
    assert reply["code"] == "ok" and reply["upto"] == 1
    for stream in silent:
        await stream.aclose()
    await sender.stream.aclose()


async def test_a_replayed_hello_neither_cuts_the_switchs_session_nor_piles_up(billing):
    """The outside test's repro: each copy of the switch's hello sent again replaced the
    switch's live session at once (forwarding cut at every copy). A session replaces the
    credential's only once it sends a request, and at most a few silent ones wait."""
    sender = await Sender.sign_on(billing.port)
    assert (await sender.records(frame([money(1)])))["code"] == "ok"
    captured = ClientSession(WHO, KEY).hello_frame(0)
    refused_before = billing.hellos_refused
    replays = []
    for _ in range(3):          # one copy signs on; copies of a hello seen are refused
        stream = await trio.open_tcp_stream("127.0.0.1", billing.port)
        await stream.send_all(captured)
        replays.append(stream)
    await trio.testing.wait_all_tasks_blocked(0.05)
    assert billing.hellos_refused == refused_before + 2
    for _ in range(3 * limits.receiver_silent_sessions_max):   # hellos it never saw
        stream = await trio.open_tcp_stream("127.0.0.1", billing.port)
        await stream.send_all(ClientSession(WHO, KEY).hello_frame(0))
        replays.append(stream)
    await trio.testing.wait_all_tasks_blocked(0.05)
    assert len(billing._silent[WHO]) == limits.receiver_silent_sessions_max
    reply = await sender.records(frame([money(2)], first=2))       # still the session
    assert reply["code"] == "ok" and reply["upto"] == 2
    again = await Sender.sign_on(billing.port)                    # the switch reconnecting
    assert (await again.records(frame([money(3)], first=3)))["upto"] == 3
    assert await sender.records(frame([money(4)], first=4)) is None   # the old one gave way
    for stream in replays:
        await stream.aclose()
    await again.stream.aclose()


async def test_a_requests_t_is_echoed_up_to_the_switchs_bound_and_a_longer_one_as_error(
        billing, caplog):
    """A `t` of 65,500 characters made a reply larger than a frame: no reply, the connection
    closed and a 65 KB traceback logged. The receivers echo `t` the way the switch does."""
    caplog.set_level("INFO", logger=base.log.name)
    sender = await Sender.sign_on(billing.port)
    at_bound = "t" * limits.request_type_chars_max
    for request_type, echoed in ((at_bound, at_bound), (at_bound + "t", "error"),
                                 ("t" * 65_500, "error"), (7, "error")):
        reply = await sender.records({"t": request_type})
        assert reply == {"t": echoed, "code": "bad_request", "re": reply["re"]}, reply
    assert (await sender.records(frame([money(1)])))["upto"] == 1   # the same session
    assert billing.connection_failures == 0
    assert "Traceback" not in caplog.text and "connection_failed" not in caplog.text
    await sender.stream.aclose()


async def test_a_reply_larger_than_a_frame_is_one_line_and_internal_not_a_traceback(
        billing, monkeypatch, caplog):
    caplog.set_level("INFO", logger=base.log.name)

    async def answers_too_much(message):
        return {"t": "ping", "code": "ok", "padding": "p" * limits.frame_size_bytes_max}

    monkeypatch.setattr(billing, "_answer", answers_too_much)
    sender = await Sender.sign_on(billing.port)
    reply = await sender.records({"t": "ping"})
    assert reply == {"t": "ping", "code": "internal", "re": reply["re"]}, reply
    logged = [record for record in caplog.records if "reply_too_large" in record.getMessage()]
    assert len(logged) == 1 and logged[0].exc_info is None
    assert billing.connection_failures == 0 and "Traceback" not in caplog.text
    monkeypatch.undo()
    assert (await sender.records(frame([money(1)])))["upto"] == 1   # the session goes on
    await sender.stream.aclose()


async def test_an_exception_in_one_connection_ends_it_alone_and_applies_nothing(
        billing, monkeypatch, caplog):
    apply = billing.apply
    calls = []

    def fails_on_the_second_record_once(record):
        calls.append(record["txn"])
        if len(calls) == 2:
            raise RuntimeError("a bug in apply")
        apply(record)

    monkeypatch.setattr(billing, "apply", fails_on_the_second_record_once)
    sender = await Sender.sign_on(billing.port)
    assert await sender.records(frame([money(1), money(2)])) is None
    assert billing.connection_failures == 1
    assert "a bug in apply" in caplog.text and "Traceback" in caplog.text
    # The first record's effect was rolled back with the rest of the frame.
    assert billing.position == 0 and billing.settlement_rows() == []
    again = await Sender.sign_on(billing.port)
    reply = await again.records(frame([money(1), money(2)]))
    assert reply["upto"] == 2
    assert billing.settlement_rows() == [("CANTEEN-1", "2026-11-18", 2, 240, 0)]
    await again.stream.aclose()


async def test_a_failed_write_applies_nothing_and_the_resend_counts_once(billing,
                                                                        monkeypatch):
    write = base.write_atomically
    failures = []

    def disk_full_once(directory, files):
        if not failures:
            failures.append(1)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        write(directory, files)

    monkeypatch.setattr(base, "write_atomically", disk_full_once)
    sender = await Sender.sign_on(billing.port)
    assert await sender.records(frame([money(1)])) is None
    assert billing.connection_failures == 1 and billing.position == 0
    again = await Sender.sign_on(billing.port)
    assert (await again.records(frame([money(1)])))["upto"] == 1
    assert billing.settlement_rows() == [("CANTEEN-1", "2026-11-18", 1, 120, 0)]
    reopened = BillingReceiver(billing.state_dir, {WHO: KEY})
    assert reopened.position == 1 and reopened.settlement_rows() == billing.settlement_rows()
    await again.stream.aclose()


async def test_billing_separates_what_subsidies_paid_from_cash(tmp_path):
    receiver = BillingReceiver(str(tmp_path / "b"), {WHO: KEY})
    records = [money(1, from_subsidy=100), money(2, amount=-300, from_subsidy=50),
               money(3, "reverse", amount=300, target=2, from_subsidy=-50), money(4)]
    assert (await receiver.handle_records(frame(records)))["code"] == "ok"
    # total 120 + 300 - 300 + 120; of it the subsidies paid 100 + 50 - 50.
    assert receiver.settlement_rows() == [("CANTEEN-1", "2026-11-18", 2, 240, 100)]
    reopened = BillingReceiver(str(tmp_path / "b"), {WHO: KEY})
    assert reopened.settlement_rows() == receiver.settlement_rows()


def test_billing_state_saved_before_subsidies_reads_as_no_subsidy(tmp_path):
    receiver = BillingReceiver(str(tmp_path / "b"), {WHO: KEY})
    receiver.restore({"totals": [["CANTEEN-1", "2026-11-18", 2, 240]], "segments": [[], []]})
    assert receiver.settlement_rows() == [("CANTEEN-1", "2026-11-18", 2, 240, 0)]


# ------------------------------------------------------------------ a switch restored from an older copy
async def test_a_new_record_under_a_txn_already_taken_is_refused_not_dropped(tmp_path):
    """A switch restored from a backup numbers its new records from the backup's last txn:
    a receiver that took records past it gets new money under txns it has. Dropping them as
    duplicates would lose that money without a word; it refuses the frame instead, and
    goes on refusing, across a restart, until its own state is restored."""
    receiver = BillingReceiver(str(tmp_path / "b"), {WHO: KEY})
    taken = [money(txn, at=AT + txn) for txn in range(1, 6)]
    assert (await receiver.handle_records(frame(taken)))["upto"] == 5
    assert receiver.rewind == base.RewindCheck(AT + 5, 0, frozenset({"debit"}), 5)
    # At least once: the same records again are duplicates, dropped quietly.
    assert (await receiver.handle_records(frame(taken[2:], first=3)))["upto"] == 5
    assert receiver.duplicates == 3 and receiver.rewinds == 0
    rows = receiver.settlement_rows()
    # The restored switch's journal ends at txn 3; its next records are txns 4 and 5 again,
    # tapped after everything the receiver took.
    again = [money(4, at=AT + 60_000, amount=-700), money(5, at=AT + 61_000),
             money(6, at=AT + 62_000)]
    reply = await receiver.handle_records(frame(again, first=4))
    assert reply == {"t": "records", "code": "journal_rewound"}
    assert receiver.rewinds == 1 and receiver.position == 5
    assert receiver.settlement_rows() == rows     # nothing of the frame was taken
    reopened = BillingReceiver(str(tmp_path / "b"), {WHO: KEY})
    assert reopened.rewind == receiver.rewind
    assert (await reopened.handle_records(frame(again, first=4)))["code"] == "journal_rewound"


async def test_a_resend_is_never_refused_though_times_go_back_in_txn_order(tmp_path):
    """The switch's clock may step back (and offline records carry older times): the check
    keeps the latest time taken, not the last record's."""
    receiver = BillingReceiver(str(tmp_path / "b"), {WHO: KEY})
    taken = [money(1, at=AT + 10_000), money(2, at=AT), money(3, kind="reverse", at=AT + 5)]
    assert (await receiver.handle_records(frame(taken)))["upto"] == 3
    assert (await receiver.handle_records(frame(taken)))["upto"] == 3
    assert receiver.rewinds == 0 and receiver.duplicates == 3


def test_check_records_tells_a_resend_from_a_rewound_journal():
    check = base.RewindCheck(AT + 10, 0, frozenset({"debit"}), 2)
    taken = [money(1, at=AT), money(2, at=AT + 10)]
    # Resends are never later than the newest record taken.
    assert base.check_records(2, frame(taken), check).action == base.APPLY
    # Later than that under a txn we have: rewound.
    later = frame([money(2, at=AT + 11)], first=2)
    assert base.check_records(2, later, check).action == base.REWOUND
    # Nothing taken yet, or a kind never taken (the filter widened since), or a txn at or
    # below where the check began (a state file from before it): nothing can be told apart.
    assert base.check_records(2, later, base.RewindCheck()).action == base.APPLY
    assert base.check_records(2, frame([money(2, kind="reverse", at=AT + 11)], first=2),
                              check).action == base.APPLY
    assert base.check_records(2, later, check._replace(from_txn=2)).action == base.APPLY
    # Above the newest record taken, a txn was only covered by `to` (our filter skipped it).
    assert base.check_records(2, later, check._replace(last_taken_txn=1)).action == base.APPLY
    # Resends and new records in one frame: the new ones are taken.
    mixed = base.check_records(2, frame(taken + [money(3, at=AT + 99)]), check)
    assert mixed.action == base.APPLY and [r["txn"] for r in mixed.records] == [3]
    # A time out of range is never judged (it was never counted either).
    assert base.check_records(2, frame([money(2, at=TIME_MAX + 1)], first=2),
                              check).action == base.APPLY
    # A txn above our position is new whatever its time.
    assert base.check_records(2, frame([money(3, at=AT + 99)], first=3),
                              check).action == base.APPLY


async def test_a_kind_it_does_not_want_with_a_time_out_of_range_does_not_blind_the_check(
        tmp_path):
    receiver = BillingReceiver(str(tmp_path / "b"), {WHO: KEY})
    await receiver.handle_records(frame([money(1), room(2, kind="meter", at=2**62)]))
    assert receiver.position == 2 and receiver.rewind.newest_at_ms == AT


async def test_a_state_file_from_before_the_check_judges_nothing_it_took_then(tmp_path):
    """Such a file says nothing of the times it took: what it holds up to its position is
    never judged, so a resend after the clock stepped back is still taken as a resend."""
    receiver = BillingReceiver(str(tmp_path / "b"), {WHO: KEY})
    old = [money(1, at=AT), money(2, at=AT + 8_000)]
    await receiver.handle_records(frame(old))
    path = tmp_path / "b" / base.STATE_FILE
    data = json.loads(path.read_bytes())
    del data["rewind_check"]
    path.write_text(json.dumps(data))
    reopened = BillingReceiver(str(tmp_path / "b"), {WHO: KEY})
    assert reopened.position == 2 and reopened.rewind == base.RewindCheck(0, 2, frozenset(), 2)
    await reopened.handle_records(frame([money(3, at=AT + 3_000)], first=3))
    assert reopened.rewind == base.RewindCheck(AT + 3_000, 2, frozenset({"debit"}), 3)
    # The switch resends from before its lazily kept position: 2 is later than 3, and fine.
    reply = await reopened.handle_records(frame(old + [money(3, at=AT + 3_000)]))
    assert reply["upto"] == 3 and reopened.rewinds == 0


@pytest.mark.parametrize("saved", [
    {"newest_at_ms": -1, "from_txn": 0, "kinds": []},
    {"newest_at_ms": "1795000000000", "from_txn": 0, "kinds": []},
    {"newest_at_ms": True, "from_txn": 0, "kinds": []},
    {"newest_at_ms": TIME_MAX + 1, "from_txn": 0, "kinds": []},
    {"newest_at_ms": AT, "from_txn": 3, "kinds": []},          # past the position
    {"newest_at_ms": AT, "from_txn": 0, "kinds": [""]},
    {"newest_at_ms": AT, "from_txn": 0, "kinds": "debit"},
    {"newest_at_ms": AT, "from_txn": 0},
    {"newest_at_ms": AT, "from_txn": 0, "kinds": [], "last_taken_txn": 3},   # past the position
    {"newest_at_ms": AT, "from_txn": 1, "kinds": [], "last_taken_txn": 0},   # below where it began
    [AT, 0, []],
    None,
])
async def test_a_damaged_rewind_check_is_a_state_error_not_a_guess(tmp_path, saved):
    receiver = BillingReceiver(str(tmp_path / "b"), {WHO: KEY})
    await receiver.handle_records(frame([money(1), money(2)]))
    path = tmp_path / "b" / base.STATE_FILE
    data = json.loads(path.read_bytes())
    data["rewind_check"] = saved
    path.write_text(json.dumps(data))
    with pytest.raises(base.StateError, match="damaged rewind_check"):
        BillingReceiver(str(tmp_path / "b"), {WHO: KEY})


async def test_a_kind_skipped_then_sent_again_is_a_resend_not_a_rewind(tmp_path):
    """The destination's kinds narrowed, then widened again, and the switch resends from a
    position it kept behind ours: the records our filter skipped come now, later than the
    newest we took, under txns covered only by `to`. They are no rewind."""
    receiver = BillingReceiver(str(tmp_path / "b"), {WHO: KEY})
    await receiver.handle_records(frame([money(1, at=AT + 1), money(2, at=AT + 2),
                                         money(3, kind="reverse", at=AT + 3)]))
    narrowed = await receiver.handle_records(frame([money(4, at=AT + 4)], first=4, last=6))
    assert narrowed["upto"] == 6 and receiver.rewind.last_taken_txn == 4
    widened = [money(4, at=AT + 4), money(5, kind="reverse", at=AT + 5),
               money(6, kind="reverse", at=AT + 6)]
    reply = await receiver.handle_records(frame(widened, first=4))
    assert reply == {"t": "records", "code": "ok", "upto": 6} and receiver.rewinds == 0


async def test_the_kinds_remembered_are_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(limits, "receiver_rewind_kinds_max", 2)
    receiver = BillingReceiver(str(tmp_path / "b"), {WHO: KEY})
    await receiver.handle_records(frame([money(1), money(2, kind="reverse"),
                                         room(3, kind="meter")]))
    assert receiver.rewind.kinds == {"debit", "reverse"} and receiver.rewind.last_taken_txn == 3
    # More kinds than the bound in a state file is damage, not a guess.
    path = tmp_path / "b" / base.STATE_FILE
    data = json.loads(path.read_bytes())
    data["rewind_check"]["kinds"] = ["a", "b", "c"]
    path.write_text(json.dumps(data))
    with pytest.raises(base.StateError, match="damaged rewind_check"):
        BillingReceiver(str(tmp_path / "b"), {WHO: KEY})


async def test_a_state_dir_deleted_under_a_running_receiver_stops_it_to_be_started_again(
        tmp_path, caplog):
    # The outside test's operator pass: `rm -rf` of a running receiver's state dir left it
    # up, each frame failing with a traceback, the switch's lag growing until a human came.
    import shutil
    receiver = UtilityReceiver(str(tmp_path / "u"), {WHO: KEY})
    stopped = []
    receiver.on_lost = lambda: stopped.append(True)
    assert (await receiver.handle_records(frame([room(1)])))["upto"] == 1
    shutil.rmtree(tmp_path / "u")
    with pytest.raises(base.StateDirLost, match="is gone; nothing taken can be kept"):
        await receiver.handle_records(frame([room(2)], first=2))
    assert stopped == [True] and receiver.lost is not None
    assert [r.getMessage() for r in caplog.records if "state_dir_lost" in r.getMessage()] == [
        f"event=state_dir_lost receiver=utility state={tmp_path / 'u'} "
        f"action=stopping_exit_1"]
