"""Independent conformance test of the switch against docs/PROTOCOL.md (wire version 1).

Written only from docs/PROTOCOL.md and tests/vectors/v1.json: the switch of the
checkout under test runs as a real subprocess (`python -m switch serve`, started
with the interpreter running these tests) and is talked to with ``vendor_client``
(plain trio sockets + msgpack + hmac).  At the end of the module the switch gets
SIGTERM (must exit 0) and `python -m switch audit` must pass on its data dir.
"""

from __future__ import annotations

import itertools
import os
import queue
import signal
import stat
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

import msgpack
import pytest
import trio
import trio.testing

from tests.paths import REPO_ROOT, load_vectors

from . import vendor_client as vc

# The switch under test is the one in this checkout, run by the interpreter running the tests.
PYTHON = sys.executable
PROJECT = REPO_ROOT
VECTORS = load_vectors()

MISSING = object()  # "leave this field out of the request"

# Defaults from docs/PROTOCOL.md §4.6-4.7.
NO_PIN = 5_000
PER_TX = 50_000
DAILY = 100_000
MAX_AMOUNT = 10_000_000

ID_LAST6 = "53012X"
PIN = "530120"  # id_last6 with the final X read as 0
WRONG_PIN = "111111"

_counter = itertools.count(1)
_RUN = os.urandom(3).hex().upper()


def uid() -> str:
    """A request id never used before by anyone in this module."""
    return f"cf-{_RUN}-{next(_counter)}"


def new_account(school: str = "WH") -> str:
    return f"{school}{_RUN}{next(_counter):06d}"


def new_card() -> str:
    return f"CA{_RUN}{next(_counter):08X}"


def new_who(school: str, kind: str) -> str:
    return f"{school}-{kind.upper()}-{_RUN}-{next(_counter)}"


def strip(d: dict, *keys) -> dict:
    return {k: v for k, v in d.items() if k not in keys}


def vbytes(name: str) -> bytes:
    return bytes.fromhex(VECTORS[name])


# ====================================================================== server


@dataclass
class Switch:
    host: str
    port: int
    admin_key: bytes
    data: Path
    creds: dict = field(default_factory=dict)  # cached (who, key) by purpose


@pytest.fixture(scope="module")
def switch(tmp_path_factory):
    base = tmp_path_factory.mktemp("conformance")
    data = base / "data"
    data.mkdir()
    errlog = open(base / "stderr.log", "wb")
    proc = subprocess.Popen(
        [PYTHON, "-m", "switch", "serve", "--data", str(data), "--listen", "127.0.0.1:0",
         "--metrics", "off"],
        cwd=PROJECT,
        stdout=subprocess.PIPE,
        stderr=errlog,
    )
    lines: queue.Queue = queue.Queue()

    def pump():
        for line in proc.stdout:
            lines.put(line.decode(errors="replace"))
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    try:
        host = port = None
        seen = []
        while port is None:
            try:
                line = lines.get(timeout=20)
            except queue.Empty:
                pytest.fail(f"switch did not print 'listening on' within 20 s: {seen}")
            if line is None:
                pytest.fail(
                    f"switch exited ({proc.wait()}) before listening: {seen} "
                    f"{(base / 'stderr.log').read_text(errors='replace')}"
                )
            seen.append(line)
            if line.startswith("listening on "):
                host, _, p = line[len("listening on ") :].strip().rpartition(":")
                port = int(p)
        key_hex = (data / "admin.key").read_text().strip()
        sw = Switch(host=host, port=port, admin_key=bytes.fromhex(key_hex), data=data)
        yield sw
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                rc = proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                rc = "timeout"
        else:
            rc = f"exited early with {proc.returncode}"
        errlog.close()
    stderr = (base / "stderr.log").read_text(errors="replace")
    audit = subprocess.run(
        [PYTHON, "-m", "switch", "audit", "--data", str(data)],
        cwd=PROJECT,
        capture_output=True,
        timeout=120,
    )
    problems = []
    if rc != 0:
        problems.append(f"switch did not exit 0 on SIGTERM: {rc}\n{stderr[-3000:]}")
    if audit.returncode != 0:
        problems.append(
            f"audit failed ({audit.returncode}): {audit.stdout.decode()[-3000:]} "
            f"{audit.stderr.decode()[-3000:]}"
        )
    assert not problems, "\n".join(problems)


class Ctx:
    """Per-test helpers: an admin session plus ways to make the rest."""

    def __init__(self, sw: Switch):
        self.sw = sw
        self.conns: list[vc.Connection] = []
        self.adm: vc.Connection | None = None

    async def raw_conn(self) -> vc.Connection:
        conn = await vc.Connection.connect(self.sw.host, self.sw.port)
        self.conns.append(conn)
        return conn

    async def session(self, who: str, key: bytes) -> vc.Connection:
        conn = await self.raw_conn()
        reply = await conn.hello(who, key)
        assert reply.get("code") == "ok", reply.body
        return conn

    async def ok(self, conn: vc.Connection, t: str, **fields) -> dict:
        r = await conn.call(t, **fields)
        assert r.get("code") == "ok", (t, fields, r)
        assert r["t"] == t
        return r

    async def credential(self, role: str, school=None, kind=None, merchant=None,
                         who=None) -> tuple[str, bytes]:
        fields = {"who": who or new_who(school or role, kind or role), "role": role}
        if school is not None:
            fields["school"] = school
        if kind is not None:
            fields["kind"] = kind
        if merchant is not None:
            fields["merchant"] = merchant
        r = await self.ok(self.adm, "add_credential", id=uid(), **fields)
        key = r["key"]
        assert isinstance(key, bytes) and len(key) == 32, r
        return fields["who"], key

    async def cached(self, name: str, role: str, **kw) -> tuple[str, bytes]:
        if name not in self.sw.creds:
            self.sw.creds[name] = await self.credential(role, **kw)
        return self.sw.creds[name]

    async def terminal(self, school="WH", kind="pos", fresh=False) -> vc.Connection:
        kw = dict(school=school, kind=kind, merchant=f"{school}-CANTEEN-1")
        if fresh:
            who, key = await self.credential("terminal", **kw)
        else:
            who, key = await self.cached(f"term-{school}-{kind}", "terminal", **kw)
        conn = await self.session(who, key)
        conn.who = who
        return conn

    async def service(self, school=None, fresh=False) -> vc.Connection:
        if fresh:
            who, key = await self.credential("service", school=school)
        else:
            who, key = await self.cached(f"svc-{school}", "service", school=school)
        conn = await self.session(who, key)
        conn.who = who
        return conn

    async def person(self, school="WH", balance=0, id_last6=ID_LAST6,
                     holder="张三", card=True) -> tuple[str, str | None]:
        acct = new_account(school)
        await self.ok(self.adm, "open_account", account=acct, school=school,
                      kind="person", holder=holder, id_last6=id_last6, id=uid())
        c = None
        if card:
            c = new_card()
            await self.ok(self.adm, "issue_card", account=acct, card=c, id=uid())
        if balance:
            await self.credit(acct, balance)
        return acct, c

    async def credit(self, acct: str, amount: int) -> dict:
        return await self.ok(self.adm, "credit", account=acct, amount=amount,
                             id=uid(), source="test-recharge")

    async def account(self, acct: str) -> dict:
        return await self.ok(self.adm, "account", account=acct)

    async def snap(self, acct: str) -> tuple:
        """What must not change when a request is declined."""
        a = await self.account(acct)
        h = await self.ok(self.adm, "history", account=acct, limit=1)
        top = h["items"][0]["txn"] if h["items"] else None
        return a["balance"], a["available"], top


@pytest.fixture
async def ctx(switch):
    c = Ctx(switch)
    c.adm = await c.session("admin", switch.admin_key)
    try:
        yield c
    finally:
        for conn in c.conns:
            await conn.aclose()


async def debit(term: vc.Connection, card=MISSING, amount=MISSING, pin=MISSING,
                id=MISSING, **extra) -> dict:
    fields = {"card": card, "amount": amount, "id": uid() if id is MISSING else id,
              "pin": pin, **extra}
    fields = {k: v for k, v in fields.items() if v is not MISSING}
    r = await term.call("debit", **fields)
    assert r["t"] == "debit", r
    return r


async def expect_error_then_close(conn: vc.Connection, code: str) -> vc.Frame:
    with trio.fail_after(5):
        fr = await conn.recv()
    assert fr.get("t") == "error" and fr.get("code") == code, fr.body
    assert await conn.at_eof(5), "switch did not close the connection after an error frame"
    return fr


# ===================================================================== vectors


def test_vector_direction_keys():
    k_c2s, k_s2c = vc.derive_keys(vbytes("credential_key"), vbytes("client_nonce"),
                                  vbytes("server_nonce"))
    assert k_c2s == vbytes("k_c2s")
    assert k_s2c == vbytes("k_s2c")


def test_vector_hello_frame():
    body = vc.hello_body("WH-POS-0001", vbytes("client_nonce"), 1795000000000)
    assert vc.frame_obj(body, vbytes("credential_key")) == vbytes("hello_frame")


def test_vector_debit_frame():
    body = vc.request_body("debit", 1, {"id": "T0001-000001", "card": "04A1B2C3D4",
                                        "amount": 1250})
    assert vc.frame_obj(body, vbytes("k_c2s")) == vbytes("debit_frame")


def test_vector_reply_tags_verify():
    hello_reply, rest = vc.decode_frame(vbytes("hello_reply_frame"))
    assert rest == b""
    assert hello_reply.tag_ok(vbytes("credential_key"))
    assert hello_reply.body["code"] == "ok" and hello_reply.body["re"] == 0
    assert hello_reply.body["nonce"] == vbytes("server_nonce")
    debit_reply, rest = vc.decode_frame(vbytes("debit_reply_frame"))
    assert rest == b""
    assert debit_reply.tag_ok(vbytes("k_s2c"))
    # and not with the wrong keys
    assert not debit_reply.tag_ok(vbytes("k_c2s"))
    assert not debit_reply.tag_ok(vbytes("credential_key"))
    assert not hello_reply.tag_ok(vbytes("k_s2c"))
    assert debit_reply.body == {"t": "debit", "re": 1, "code": "ok", "txn": 42,
                                "balance": 8750, "available": 8750, "account": "WH20230001"}


async def _scripted_switch(stream, sent: list, replies: list[bytes]):
    """Read one frame per reply, then answer with the canned reply."""
    buf = b""
    for reply in replies:
        while len(buf) < 4 or len(buf) < 4 + int.from_bytes(buf[:4], "big"):
            buf += await stream.receive_some(65536)
        n = 4 + int.from_bytes(buf[:4], "big")
        sent.append(buf[:n])
        buf = buf[n:]
        await stream.send_all(reply)


async def test_vector_full_client_path():
    """The client's real code path (hello, key derivation, seq, call) puts the
    vector bytes on the wire and accepts the vector replies."""
    client_stream, server_stream = trio.testing.memory_stream_pair()
    conn = vc.Connection(client_stream)
    sent: list[bytes] = []
    async with trio.open_nursery() as n:
        n.start_soon(_scripted_switch, server_stream, sent,
                     [vbytes("hello_reply_frame"), vbytes("debit_reply_frame")])
        r = await conn.hello("WH-POS-0001", vbytes("credential_key"),
                             nonce=vbytes("client_nonce"), at=1795000000000)
        assert r["code"] == "ok" and r["role"] == "terminal" and r["blacklist"] == 0
        assert conn.k_c2s == vbytes("k_c2s") and conn.k_s2c == vbytes("k_s2c")
        reply = await conn.call("debit", id="T0001-000001", card="04A1B2C3D4", amount=1250)
    assert sent == [vbytes("hello_frame"), vbytes("debit_frame")]
    assert reply["txn"] == 42 and reply["balance"] == 8750


async def test_vector_client_rejects_bad_reply_tag():
    bad = bytearray(vbytes("debit_reply_frame"))
    bad[-1] ^= 1
    client_stream, server_stream = trio.testing.memory_stream_pair()
    conn = vc.Connection(client_stream)
    async with trio.open_nursery() as n:
        n.start_soon(_scripted_switch, server_stream, [],
                     [vbytes("hello_reply_frame"), bytes(bad)])
        await conn.hello("WH-POS-0001", vbytes("credential_key"),
                         nonce=vbytes("client_nonce"), at=1795000000000)
        with pytest.raises(vc.TagMismatch):
            await conn.call("debit", id="T0001-000001", card="04A1B2C3D4", amount=1250)


# ===================================================================== session


def test_admin_key_file(switch):
    p = switch.data / "admin.key"
    text = p.read_text().strip()
    assert len(text) == 64 and all(c in "0123456789abcdefABCDEF" for c in text)
    assert stat.S_IMODE(p.stat().st_mode) == 0o600


async def test_hello_ok_terminal(ctx):
    who, key = await ctx.credential("terminal", school="WH", kind="pos", merchant="WH-SHOP-1")
    conn = await ctx.raw_conn()
    before = vc.now_ms()
    fr = await conn.hello(who, key)
    after = vc.now_ms()
    r = fr.body
    assert r["t"] == "hello" and r["re"] == 0 and r["code"] == "ok", r
    assert r["role"] == "terminal"
    assert isinstance(r["nonce"], bytes) and len(r["nonce"]) == 16
    assert isinstance(r["time"], int) and before - 5000 <= r["time"] <= after + 5000
    assert type(r["blacklist"]) is int and r["blacklist"] >= 0
    assert fr.tag_ok(key)
    assert (await conn.call("ping"))["code"] == "ok"


async def test_hello_ok_admin_and_service(ctx):
    assert ctx.adm.hello_reply["role"] == "admin"
    assert isinstance(ctx.adm.hello_reply["time"], int)
    svc = await ctx.service(fresh=True)
    assert svc.hello_reply["role"] == "service"
    assert svc.hello_reply["re"] == 0


async def test_ping(ctx):
    conn = await ctx.session("admin", ctx.sw.admin_key)
    assert await conn.call("ping") == {"t": "ping", "re": 1, "code": "ok"}
    assert await conn.call("ping") == {"t": "ping", "re": 2, "code": "ok"}
    term = await ctx.terminal()
    assert await term.call("ping") == {"t": "ping", "re": 1, "code": "ok"}


@pytest.mark.parametrize("known", [True, False])
async def test_version_unsupported(ctx, known):
    conn = await ctx.raw_conn()
    if known:
        fr = await conn.hello("admin", ctx.sw.admin_key, v=2)
    else:  # v is checked first: even an unknown id gets version_unsupported
        fr = await conn.hello("nobody-" + uid(), os.urandom(32), v=2)
    assert fr.body == {"t": "error", "code": "version_unsupported"}
    assert fr.tag == vc.ZERO_TAG
    assert await conn.at_eof()


async def test_unauthenticated_unknown_id_and_bad_tag_same_answer(ctx):
    c1 = await ctx.raw_conn()
    f1 = await c1.hello("nobody-" + uid(), os.urandom(32))
    c2 = await ctx.raw_conn()
    f2 = await c2.hello("admin", ctx.sw.admin_key, sign_with=os.urandom(32))
    assert f1.body == {"t": "error", "code": "unauthenticated"}
    assert f1.tag == vc.ZERO_TAG
    assert f1.raw == f2.raw, (f1.body, f2.body)
    assert await c1.at_eof()
    assert await c2.at_eof()


@pytest.mark.parametrize("good_first,bad_seq", [(0, 2), (0, 0), (1, 1), (1, 3), (2, 7)])
async def test_seq_invalid(ctx, good_first, bad_seq):
    conn = await ctx.session("admin", ctx.sw.admin_key)
    for _ in range(good_first):
        assert (await conn.call("ping"))["code"] == "ok"
    _, data = conn.build("ping", {}, seq=bad_seq)
    await conn.send_raw(data)
    fr = await expect_error_then_close(conn, "seq_invalid")
    assert fr.body == {"t": "error", "code": "seq_invalid", "re": bad_seq}
    assert fr.tag_ok(conn.k_s2c)


@pytest.mark.parametrize("which", ["random", "long_term", "k_s2c", "zero"])
async def test_mac_invalid(ctx, which):
    conn = await ctx.session("admin", ctx.sw.admin_key)
    assert (await conn.call("ping"))["code"] == "ok"
    key = {"random": os.urandom(32), "long_term": ctx.sw.admin_key,
           "k_s2c": conn.k_s2c, "zero": None}[which]
    body = vc.pack({"t": "ping", "seq": 2})
    await conn.send_raw(vc.encode_frame(body, key))
    fr = await expect_error_then_close(conn, "mac_invalid")
    assert "re" not in fr.body
    assert fr.tag_ok(conn.k_s2c)


@pytest.mark.parametrize("in_session", [False, True])
@pytest.mark.parametrize("length", [65537, 0xFFFFFFFF])
async def test_frame_too_large_from_length_alone(ctx, in_session, length):
    if in_session:
        conn = await ctx.session("admin", ctx.sw.admin_key)
    else:
        conn = await ctx.raw_conn()
    await conn.send_raw(length.to_bytes(4, "big"))  # and nothing else
    fr = await expect_error_then_close(conn, "frame_too_large")
    assert fr.body == {"t": "error", "code": "frame_too_large"}
    if in_session:
        assert fr.tag_ok(conn.k_s2c)
    else:
        assert fr.tag == vc.ZERO_TAG


@pytest.mark.parametrize("length", [0, 1, 16])
async def test_frame_too_short_from_length_alone(ctx, length):
    conn = await ctx.raw_conn()
    await conn.send_raw(length.to_bytes(4, "big"))
    fr = await expect_error_then_close(conn, "frame_invalid")
    assert fr.tag == vc.ZERO_TAG


async def test_max_len_frame_accepted(ctx):
    conn = await ctx.session("admin", ctx.sw.admin_key)
    base = len(vc.pack({"t": "ping", "seq": 1, "pad": ""}))
    # pad so that LEN == 65536 exactly (str header grows to 5 bytes: str32 / 3 for str16)
    pad = 65536 - 16 - base - 2
    body = vc.pack({"t": "ping", "seq": 1, "pad": "x" * pad})
    assert len(body) + 16 == 65536, len(body)
    await conn.send_raw(vc.encode_frame(body, conn.k_c2s))
    conn.next_seq = 2
    r = await conn.wait_reply(1)
    assert r == {"t": "ping", "re": 1, "code": "ok"}


BAD_BODIES = {
    "list": vc.pack([1, 2, 3]),
    "int": vc.pack(12345),
    "str": vc.pack("hello"),
    "int_keys": vc.pack({1: "ping", 2: 1}),
    "bin_keys": vc.pack({b"t": "ping", b"seq": 1}),
    "two_maps": vc.pack({"t": "ping", "seq": 1}) + vc.pack({}),
    "not_msgpack": b"\xc1",
    "truncated_map": vc.pack({"t": "ping", "seq": 1})[:-1],
}


@pytest.mark.parametrize("in_session", [False, True])
@pytest.mark.parametrize("kind", list(BAD_BODIES))
async def test_frame_invalid_body(ctx, kind, in_session):
    if in_session:
        conn = await ctx.session("admin", ctx.sw.admin_key)
        await conn.send_raw(vc.encode_frame(BAD_BODIES[kind], conn.k_c2s))
    else:
        conn = await ctx.raw_conn()
        await conn.send_raw(vc.encode_frame(BAD_BODIES[kind], None))
    fr = await expect_error_then_close(conn, "frame_invalid")
    assert fr.body == {"t": "error", "code": "frame_invalid"}
    if in_session:
        assert fr.tag_ok(conn.k_s2c)
    else:
        assert fr.tag == vc.ZERO_TAG


async def test_pre_session_error_frames_have_zero_tag(ctx):
    frames = []
    c = await ctx.raw_conn()
    frames.append(await c.hello("nobody-" + uid(), os.urandom(32)))
    c = await ctx.raw_conn()
    frames.append(await c.hello("admin", ctx.sw.admin_key, v=2))
    c = await ctx.raw_conn()
    await c.send_raw((70000).to_bytes(4, "big"))
    frames.append(await c.read_frame())
    c = await ctx.raw_conn()
    await c.send_raw(vc.encode_frame(vc.pack([1]), None))
    frames.append(await c.read_frame())
    codes = [f.body["code"] for f in frames]
    assert codes == ["unauthenticated", "version_unsupported", "frame_too_large", "frame_invalid"]
    for f in frames:
        assert f.tag == vc.ZERO_TAG, f.body


async def test_unknown_t_is_bad_request_and_session_continues(ctx):
    conn = await ctx.session("admin", ctx.sw.admin_key)
    assert await conn.call("frobnicate", id=uid()) == {"t": "frobnicate", "re": 1,
                                                       "code": "bad_request"}
    assert await conn.call("ping") == {"t": "ping", "re": 2, "code": "ok"}


@pytest.mark.parametrize("t", [MISSING, 5, None, b"ping", ["ping"]])
async def test_missing_or_non_str_t(ctx, t):
    conn = await ctx.session("admin", ctx.sw.admin_key)
    body = {"seq": 1} if t is MISSING else {"t": t, "seq": 1}
    _, data = conn.build(None, {}, body=body)
    await conn.send_raw(data)
    r = await conn.wait_reply(1)
    assert r == {"t": "error", "re": 1, "code": "bad_request"}
    assert await conn.call("ping") == {"t": "ping", "re": 2, "code": "ok"}


async def test_pipeline_64_in_one_write(ctx):
    acct, _ = await ctx.person(balance=100)
    conn = await ctx.session("admin", ctx.sw.admin_key)
    reqs = [("ping", {}) if i % 2 else ("account", {"account": acct}) for i in range(64)]
    seqs = await conn.send_many(reqs)
    assert seqs == list(range(1, 65))
    with trio.fail_after(15):
        got = {}
        while len(got) < 64:
            fr = await conn.recv()
            assert "re" in fr.body, fr.body
            assert fr["re"] not in got, f"two replies for seq {fr['re']}"
            got[fr["re"]] = fr.body
    assert sorted(got) == seqs
    for seq, (t, _) in zip(seqs, reqs):
        assert got[seq]["t"] == t and got[seq]["code"] == "ok", got[seq]
        if t == "account":
            assert got[seq]["balance"] == 100
    assert await conn.call("ping") == {"t": "ping", "re": 65, "code": "ok"}


async def test_pipeline_beyond_64_backpressure_no_error(ctx):
    conn = await ctx.session("admin", ctx.sw.admin_key)
    n = 200
    seqs = await conn.send_many([("ping", {})] * n)
    with trio.fail_after(15):
        got = set()
        while len(got) < n:
            fr = await conn.recv()
            assert fr.body.get("code") == "ok" and fr["t"] == "ping", fr.body
            got.add(fr["re"])
    assert got == set(seqs)


# ============================================================ admin / service


async def test_open_account_person_and_account_fields(ctx):
    acct = new_account("WH")
    r = await ctx.ok(ctx.adm, "open_account", account=acct, school="WH", kind="person",
                     holder="李四", id_last6="53012X", id=uid())
    assert type(r["txn"]) is int and r["txn"] > 0
    a = await ctx.account(acct)
    assert a["t"] == "account"
    assert a["school"] == "WH"
    assert a["kind"] == "person"
    assert a["status"] == "active"
    assert a["pin_locked"] is False
    assert a["balance"] == 0 and a["available"] == 0
    assert a["cards"] == []
    assert a["limits"] == {"per_tx": PER_TX, "daily": DAILY, "no_pin": NO_PIN}
    assert a["holder"] == "李四"


async def test_open_account_utility(ctx):
    acct = f"WH-8D-{_RUN}{next(_counter)}"
    r = await ctx.ok(ctx.adm, "open_account", account=acct, school="WH", kind="utility",
                     utility="both", id=uid())
    assert type(r["txn"]) is int
    a = await ctx.account(acct)
    assert a["kind"] == "utility" and a["school"] == "WH" and a["status"] == "active"
    assert a["balance"] == 0
    c = await ctx.credit(acct, 3000)
    assert c["balance"] == 3000
    h = await ctx.ok(ctx.adm, "history", account=acct)
    kinds = [i["kind"] for i in h["items"]]
    assert "credit" in kinds and "restore" in kinds, kinds  # first recharge powers on


async def test_open_account_bad_fields(ctx):
    # person without id_last6; bad kind; lowercase account id
    for fields in (
        dict(account=new_account(), school="WH", kind="person", holder="x"),
        dict(account=new_account(), school="WH", kind="robot", id_last6="123456"),
        dict(account="wh-lower" + uid()[-4:], school="WH", kind="person", id_last6="123456"),
    ):
        r = await ctx.adm.call("open_account", id=uid(), **fields)
        assert r["code"] == "bad_request", (fields, r)


async def test_issue_card(ctx):
    acct, _ = await ctx.person(card=False)
    c1, c2 = new_card(), new_card()
    r = await ctx.ok(ctx.adm, "issue_card", account=acct, card=c1, id=uid())
    assert type(r["txn"]) is int
    assert (await ctx.account(acct))["cards"] == [{"card": c1, "state": "active"}]
    await ctx.ok(ctx.adm, "issue_card", account=acct, card=c2, id=uid())
    cards = (await ctx.account(acct))["cards"]
    assert sorted(cards, key=lambda c: c["card"]) == sorted(
        [{"card": c1, "state": "active"}, {"card": c2, "state": "active"}],
        key=lambda c: c["card"])


async def test_add_credential_kinds(ctx):
    wh_who, wh_key = await ctx.credential("terminal", school="WH", kind="pos",
                                          merchant="WH-CANTEEN-2")
    cu_who, cu_key = await ctx.credential("terminal", school="CUIK", kind="pos",
                                          merchant="CUIK-SHOP-1")
    sv_who, sv_key = await ctx.credential("service")
    for who, key, role in ((wh_who, wh_key, "terminal"), (cu_who, cu_key, "terminal"),
                           (sv_who, sv_key, "service")):
        conn = await ctx.session(who, key)
        assert conn.hello_reply["role"] == role
        assert (await conn.call("ping"))["code"] == "ok"
    assert len({wh_key, cu_key, sv_key}) == 3


async def test_credit(ctx):
    acct, _ = await ctx.person()
    r1 = await ctx.ok(ctx.adm, "credit", account=acct, amount=1000, id=uid(), source="alipay")
    assert r1["balance"] == 1000 and r1["available"] == 1000 and type(r1["txn"]) is int
    r2 = await ctx.ok(ctx.adm, "credit", account=acct, amount=500, id=uid(), source="wechat")
    assert r2["balance"] == 1500 and r2["available"] == 1500 and r2["txn"] > r1["txn"]
    svc = await ctx.service()
    r3 = await ctx.ok(svc, "credit", account=acct, amount=1, id=uid(), source="order-77")
    assert r3["balance"] == 1501
    before = await ctx.snap(acct)
    for src in (MISSING, "", "x" * 65, 5):
        f = dict(account=acct, amount=100, id=uid(), source=src)
        if src is MISSING:
            del f["source"]
        r = await svc.call("credit", **f)
        assert r["code"] == "bad_request", (src, r)
    for amt in (0, -5, "100", 1.0, True, MAX_AMOUNT + 1):
        r = await svc.call("credit", account=acct, amount=amt, id=uid(), source="s")
        assert r["code"] == "bad_amount", (amt, r)
    assert await ctx.snap(acct) == before


async def test_history(ctx):
    acct, card = await ctx.person()
    for amt in (100, 200, 300, 400, 500):
        await ctx.credit(acct, amt)
    term = await ctx.terminal()
    d = await debit(term, card, 50)
    assert d["code"] == "ok"
    full = await ctx.ok(ctx.adm, "history", account=acct, limit=200)
    items = full["items"]
    assert full["next"] is None
    txns = [i["txn"] for i in items]
    assert txns == sorted(txns, reverse=True) and len(set(txns)) == len(txns)
    for i in items:
        assert set(i) >= {"txn", "at", "kind", "amount", "balance", "who", "merchant"}, i
    top = items[0]
    assert top["txn"] == d["txn"] and top["kind"] == "debit"
    assert top["amount"] == -50 and top["balance"] == 1450
    assert top["who"] == term.who and top["merchant"] == "WH-CANTEEN-1"
    credits = [i for i in items if i["kind"] == "credit"]
    assert [c["amount"] for c in credits] == [500, 400, 300, 200, 100]
    assert [c["balance"] for c in credits] == [1500, 1000, 600, 300, 100]
    assert all(c["who"] == "admin" for c in credits)
    # paging with limit / before / next
    pages, before = [], MISSING
    for _ in range(20):
        f = {"account": acct, "limit": 2}
        if before is not MISSING:
            f["before"] = before
        page = await ctx.ok(ctx.adm, "history", **f)
        assert len(page["items"]) <= 2
        pages.extend(page["items"])
        if page["next"] is None:
            break
        assert page["next"] == page["items"][-1]["txn"], page
        before = page["next"]
    assert pages == items
    # before is exclusive
    p = await ctx.ok(ctx.adm, "history", account=acct, before=items[0]["txn"], limit=1)
    assert p["items"] == [items[1]]
    for lim in (0, 201, "5", -1):
        r = await ctx.adm.call("history", account=acct, limit=lim)
        assert r["code"] == "bad_request", (lim, r)


async def test_revoke_credential(ctx):
    who, key = await ctx.credential("terminal", school="WH", kind="pos", merchant="WH-X")
    victim = await ctx.session(who, key)
    assert (await victim.call("ping"))["code"] == "ok"
    r = await ctx.ok(ctx.adm, "revoke_credential", who=who, id=uid())
    fr = await expect_error_then_close(victim, "unauthenticated")
    assert fr.tag_ok(victim.k_s2c)
    assert "re" not in fr.body
    again = await ctx.raw_conn()
    f2 = await again.hello(who, key)
    assert f2.body == {"t": "error", "code": "unauthenticated"} and f2.tag == vc.ZERO_TAG
    assert await again.at_eof()


async def test_exists_on_duplicate_create(ctx):
    acct, card = await ctx.person()
    r = await ctx.adm.call("open_account", account=acct, school="WH", kind="person",
                           holder="x", id_last6="123456", id=uid())
    assert r["code"] == "exists", r
    other, _ = await ctx.person(card=False)
    r = await ctx.adm.call("issue_card", account=other, card=card, id=uid())
    assert r["code"] == "exists", r
    assert (await ctx.account(other))["cards"] == []
    who, _ = await ctx.credential("service")
    r = await ctx.adm.call("add_credential", who=who, role="service", id=uid())
    assert r["code"] == "exists", r
    r = await ctx.adm.call("add_credential", who="admin", role="service", id=uid())
    assert r["code"] == "exists", r


async def test_unknown_account(ctx):
    ghost = new_account()
    for t, f in (("credit", dict(amount=100, id=uid(), source="s")),
                 ("account", {}),
                 ("history", {}),
                 ("issue_card", dict(card=new_card(), id=uid()))):
        r = await ctx.adm.call(t, account=ghost, **f)
        assert r["code"] == "unknown_account", (t, r)
        assert r["t"] == t


async def test_not_permitted(ctx):
    acct, card = await ctx.person(balance=1000)
    term = await ctx.terminal()
    for t, f in (("credit", dict(account=acct, amount=100, id=uid(), source="s")),
                 ("account", dict(account=acct)),
                 ("open_account", dict(account=new_account(), school="WH", kind="person",
                                       id_last6="123456", id=uid()))):
        r = await term.call(t, **f)
        assert r["code"] == "not_permitted", (t, r)
    svc = await ctx.service()
    new = new_account()
    for t, f in (("open_account", dict(account=new, school="WH", kind="person",
                                       id_last6="123456", id=uid())),
                 ("issue_card", dict(account=acct, card=new_card(), id=uid())),
                 ("freeze", dict(account=acct, id=uid())),
                 ("add_credential", dict(who=new_who("WH", "svc"), role="service", id=uid())),
                 ("debit", dict(card=card, amount=100, id=uid()))):
        r = await svc.call(t, **f)
        assert r["code"] == "not_permitted", (t, r)
    r = await ctx.adm.call("account", account=new)
    assert r["code"] == "unknown_account"
    a = await ctx.account(acct)
    assert a["balance"] == 1000 and a["status"] == "active" and len(a["cards"]) == 1


async def test_not_permitted_kind_mismatch(ctx):
    """A pos terminal may not send hold (water only); a meter may not debit."""
    acct, card = await ctx.person(balance=1000)
    meter = await ctx.terminal(kind="meter")
    r = await meter.call("debit", card=card, amount=100, id=uid())
    assert r["code"] == "not_permitted", r
    term = await ctx.terminal()
    r = await term.call("hold", card=card, amount=100, id=uid())
    assert r["code"] == "not_permitted", r
    assert (await ctx.account(acct))["available"] == 1000


# ================================================================ idempotency


async def test_replay_same_fields(ctx):
    acct, card = await ctx.person()
    cid = uid()
    r1 = await ctx.ok(ctx.adm, "credit", account=acct, amount=700, id=cid, source="s1")
    assert not r1.get("replay")
    r2 = await ctx.adm.call("credit", account=acct, amount=700, id=cid, source="s1")
    assert r2["replay"] is True
    assert strip(r2, "re", "replay") == strip(r1, "re", "replay")
    # a field the contract does not list is ignored
    r3 = await ctx.adm.call("credit", account=acct, amount=700, id=cid, source="s1",
                            note="unlisted")
    assert r3["replay"] is True and r3["txn"] == r1["txn"]
    assert (await ctx.account(acct))["balance"] == 700
    term = await ctx.terminal()
    did = uid()
    d1 = await debit(term, card, 120, id=did)
    assert d1["code"] == "ok"
    before = await ctx.snap(acct)
    d2 = await debit(term, card, 120, id=did)
    assert d2["replay"] is True
    assert strip(d2, "re", "replay") == strip(d1, "re", "replay")
    assert await ctx.snap(acct) == before == (580, 580, d1["txn"])


async def test_id_reuse_different_fields(ctx):
    acct, card = await ctx.person()
    other, _ = await ctx.person()
    cid = uid()
    await ctx.ok(ctx.adm, "credit", account=acct, amount=700, id=cid, source="s1")
    for f in (dict(account=acct, amount=701, source="s1"),
              dict(account=acct, amount=700, source="s2"),
              dict(account=other, amount=700, source="s1")):
        r = await ctx.adm.call("credit", id=cid, **f)
        assert r["code"] == "id_reuse", (f, r)
    assert (await ctx.account(acct))["balance"] == 700
    assert (await ctx.account(other))["balance"] == 0


async def test_id_reuse_different_t(ctx):
    acct, card = await ctx.person()
    cid = uid()
    await ctx.ok(ctx.adm, "credit", account=acct, amount=5000, id=cid, source="s1")
    r = await ctx.adm.call("freeze", account=acct, id=cid)
    assert r["code"] == "id_reuse", r
    assert (await ctx.account(acct))["status"] == "active"
    term = await ctx.terminal()
    did = uid()
    assert (await debit(term, card, 100, id=did))["code"] == "ok"
    r = await term.call("qr_debit", qr="whatever", amount=100, id=did)
    assert r["code"] == "id_reuse", r
    assert (await ctx.account(acct))["balance"] == 4900


async def test_id_checked_before_anything_else(ctx):
    acct, card = await ctx.person(balance=5000)
    term = await ctx.terminal()
    did = uid()
    assert (await debit(term, card, 100, id=did))["code"] == "ok"
    before = await ctx.snap(acct)
    for f in (dict(card=card, amount=0), dict(card=card.lower(), amount=100),
              dict(card=new_card(), amount=100), dict(card=card, amount=100, pin="12")):
        r = await debit(term, id=did, **f)
        assert r["code"] == "id_reuse", (f, r)
    assert await ctx.snap(acct) == before


async def test_int_and_str_ids_are_different(ctx):
    acct, _ = await ctx.person()
    svc = await ctx.service(fresh=True)  # fresh credential: ids 5 and "5" unused
    r1 = await ctx.ok(svc, "credit", account=acct, amount=100, id=5, source="s")
    r2 = await ctx.ok(svc, "credit", account=acct, amount=200, id="5", source="s")
    assert not r2.get("replay") and r2["txn"] != r1["txn"]
    assert r2["balance"] == 300
    r3 = await svc.call("credit", account=acct, amount=100, id=5, source="s")
    assert r3["replay"] is True and r3["txn"] == r1["txn"]
    r4 = await svc.call("credit", account=acct, amount=100, id="5", source="s")
    assert r4["code"] == "id_reuse"
    # ids are per credential: another credential may use 5 too
    svc2 = await ctx.service(fresh=True)
    r5 = await ctx.ok(svc2, "credit", account=acct, amount=1, id=5, source="s")
    assert not r5.get("replay")
    assert (await ctx.account(acct))["balance"] == 301


async def test_declines_are_remembered(ctx):
    acct, card = await ctx.person(balance=1000)
    term = await ctx.terminal()
    did = uid()
    d1 = await debit(term, card, 2000, id=did)
    assert d1["code"] == "insufficient_funds"
    await ctx.credit(acct, 5000)
    before = await ctx.snap(acct)
    d2 = await debit(term, card, 2000, id=did)
    assert d2["code"] == "insufficient_funds" and d2["replay"] is True
    assert strip(d2, "re", "replay") == strip(d1, "re", "replay")
    assert (await debit(term, card, 1999, id=did))["code"] == "id_reuse"
    assert await ctx.snap(acct) == before
    assert before[0] == 6000


# ====================================================================== debit


async def setup_debit(ctx, balance=200_000, **kw):
    acct, card = await ctx.person(balance=balance, **kw)
    term = await ctx.terminal()
    return term, acct, card


async def assert_declined(ctx, term, acct, code, **fields):
    before = await ctx.snap(acct)
    r = await debit(term, **fields)
    assert r["code"] == code, (fields, r)
    assert "txn" not in r or r["txn"] is None, r
    assert await ctx.snap(acct) == before, "a declined debit moved something"
    return r


async def test_debit_ok(ctx):
    term, acct, card = await setup_debit(ctx, balance=10_000)
    r = await debit(term, card, 1250)
    assert r["code"] == "ok" and r["t"] == "debit"
    assert type(r["txn"]) is int
    assert r["balance"] == 8750 and r["available"] == 8750 and r["account"] == acct
    a = await ctx.account(acct)
    assert a["balance"] == 8750 and a["available"] == 8750
    h = await ctx.ok(ctx.adm, "history", account=acct, limit=1)
    assert h["items"][0]["txn"] == r["txn"] and h["items"][0]["amount"] == -1250
    r2 = await debit(term, card, 1, pin=PIN)  # a right pin below the threshold
    assert r2["code"] == "ok" and r2["balance"] == 8749 and r2["txn"] > r["txn"]


@pytest.mark.parametrize("amount", [0, -1, -5000, True, False, 1.5, 100.0, MAX_AMOUNT + 1,
                                    2**63, "100", None, [100], MISSING],
                         ids=lambda a: "missing" if a is MISSING else repr(a))
async def test_debit_bad_amount(ctx, amount):
    term, acct, card = await setup_debit(ctx)
    await assert_declined(ctx, term, acct, "bad_amount", card=card, amount=amount)


async def test_debit_max_amount_is_not_bad_amount(ctx):
    term, acct, card = await setup_debit(ctx)
    await assert_declined(ctx, term, acct, "limit_per_tx", card=card, amount=MAX_AMOUNT, pin=PIN)


BAD_REQUEST_DEBITS = {
    "card_missing": dict(card=MISSING),
    "card_lowercase": dict(card="lower"),
    "card_too_short": dict(card="ABC"),
    "card_too_long": dict(card="A" * 33),
    "card_not_hex": dict(card="04A1B2G3"),
    "card_int": dict(card=0x04A1B2C3),
    "card_bin": dict(card=b"\x04\xa1\xb2\xc3"),
    "pin_5_digits": dict(pin="53012"),
    "pin_7_digits": dict(pin="5301200"),
    "pin_letters": dict(pin="53O12O"),
    "pin_int": dict(pin=530120),
    "pin_fullwidth_digits": dict(pin="５３０１２０"),
    "pin_null": dict(pin=None),
    "id_missing": dict(id=MISSING),
    "id_empty": dict(id=""),
    "id_too_long": dict(id="x" * 65),
    "id_negative": dict(id=-1),
    "id_float": dict(id=1.5),
    "id_bool": dict(id=True),
    "id_null": dict(id=None),
}


@pytest.mark.parametrize("case", list(BAD_REQUEST_DEBITS))
async def test_debit_bad_request(ctx, case):
    term, acct, card = await setup_debit(ctx)
    f = {"card": card, "amount": 100, "id": uid()}
    f.update(BAD_REQUEST_DEBITS[case])
    if f.get("card") == "lower":
        f["card"] = card.lower()
    if "id" in BAD_REQUEST_DEBITS[case] and f["id"] is MISSING:
        del f["id"]
        before = await ctx.snap(acct)
        r = await term.call("debit", **{k: v for k, v in f.items() if v is not MISSING})
        assert r["code"] == "bad_request", r
        assert await ctx.snap(acct) == before
        return
    await assert_declined(ctx, term, acct, "bad_request", **f)


async def test_debit_id_64_chars_ok(ctx):
    term, acct, card = await setup_debit(ctx)
    long_id = (uid() + "Z" * 64)[:64]
    assert len(long_id) == 64
    r = await debit(term, card, 10, id=long_id)
    assert r["code"] == "ok", r
    r = await debit(term, card, 10, id=next(_counter) + 10**12)  # non-negative int id
    assert r["code"] == "ok", r


async def test_debit_card_unknown(ctx):
    term, acct, card = await setup_debit(ctx)
    await assert_declined(ctx, term, acct, "card_unknown", card=new_card(), amount=100)


async def test_debit_card_lost(ctx):
    term, acct, card = await setup_debit(ctx)
    svc = await ctx.service()
    r = await ctx.ok(svc, "lost", card=card, id=uid())
    assert type(r["txn"]) is int and type(r["blacklist"]) is int
    await assert_declined(ctx, term, acct, "card_lost", card=card, amount=100)
    assert (await ctx.account(acct))["cards"] == [{"card": card, "state": "lost"}]


async def test_found_restores_card(ctx):
    term, acct, card = await setup_debit(ctx)
    svc = await ctx.service()
    await ctx.ok(svc, "lost", card=card, id=uid())
    r = await ctx.ok(svc, "found", card=card, id=uid())
    assert type(r["txn"]) is int and type(r["blacklist"]) is int
    assert (await debit(term, card, 100))["code"] == "ok"


async def test_blacklist_push_on_lost(ctx):
    term, acct, card = await setup_debit(ctx)
    v0 = term.hello_reply["blacklist"]
    svc = await ctx.service()
    r = await ctx.ok(svc, "lost", card=card, id=uid())
    assert r["blacklist"] > v0
    push = await term.next_push()
    assert push["t"] == "blacklist" and push["push"] == 1 and "re" not in push
    assert push["version"] == r["blacklist"]
    assert card in push["add"] and push["remove"] == []
    # lost again: ok, same version, nothing changes
    r2 = await ctx.ok(svc, "lost", card=card, id=uid())
    assert r2["blacklist"] == r["blacklist"]


async def test_debit_card_blocked_after_replace(ctx):
    term, acct, old = await setup_debit(ctx, balance=10_000)
    new = new_card()
    r = await ctx.ok(ctx.adm, "replace_card", account=acct, old=old, new=new, id=uid())
    assert type(r["txn"]) is int
    await assert_declined(ctx, term, acct, "card_blocked", card=old, amount=100)
    ok = await debit(term, new, 100)
    assert ok["code"] == "ok" and ok["balance"] == 9900 and ok["account"] == acct
    cards = {c["card"]: c["state"] for c in (await ctx.account(acct))["cards"]}
    assert cards == {old: "blocked", new: "active"}


async def test_debit_wrong_school(ctx):
    _, acct, card = await setup_debit(ctx)
    cuik = await ctx.terminal(school="CUIK")
    await assert_declined(ctx, cuik, acct, "wrong_school", card=card, amount=100)


async def test_debit_card_unknown_beats_wrong_school(ctx):
    _, acct, _ = await setup_debit(ctx)
    cuik = await ctx.terminal(school="CUIK")
    await assert_declined(ctx, cuik, acct, "card_unknown", card=new_card(), amount=100)


async def test_debit_account_closed(ctx):
    term, acct, card = await setup_debit(ctx, balance=0)
    r = await ctx.ok(ctx.adm, "close_account", account=acct, id=uid())
    assert type(r["txn"]) is int
    assert (await ctx.account(acct))["status"] == "closed"
    await assert_declined(ctx, term, acct, "account_closed", card=card, amount=100)


async def test_close_account_not_empty(ctx):
    term, acct, card = await setup_debit(ctx, balance=300)
    r = await ctx.adm.call("close_account", account=acct, id=uid())
    assert r["code"] == "not_empty", r
    assert (await debit(term, card, 300))["balance"] == 0  # make it empty, then close
    await ctx.ok(ctx.adm, "close_account", account=acct, id=uid())
    await assert_declined(ctx, term, acct, "account_closed", card=card, amount=1)


async def test_refund_pays_out_and_closes(ctx):
    """§4.14-4.15 `refund` (离校退款): the whole balance paid out, a `refund` record, closed."""
    term, acct, card = await setup_debit(ctx, balance=1_234)
    r = await ctx.ok(ctx.adm, "refund", account=acct, id=uid())
    assert type(r["txn"]) is int and r["amount"] == 1_234 and r["balance"] == 0, r
    account = await ctx.account(acct)
    assert account["status"] == "closed" and account["balance"] == 0
    await assert_declined(ctx, term, acct, "account_closed", card=card, amount=1)
    again = await ctx.adm.call("refund", account=acct, id=uid())
    assert again["code"] == "account_closed", again
    credit = await ctx.adm.call("credit", account=acct, amount=100, source="x", id=uid())
    assert credit["code"] == "account_closed", credit


async def test_debit_account_frozen(ctx):
    term, acct, card = await setup_debit(ctx)
    r = await ctx.ok(ctx.adm, "freeze", account=acct, reason="suspicious", id=uid())
    assert type(r["txn"]) is int
    assert (await ctx.account(acct))["status"] == "frozen"
    await assert_declined(ctx, term, acct, "account_frozen", card=card, amount=100)


async def test_unfreeze(ctx):
    term, acct, card = await setup_debit(ctx)
    await ctx.ok(ctx.adm, "freeze", account=acct, id=uid())
    await ctx.ok(ctx.adm, "unfreeze", account=acct, id=uid())
    assert (await ctx.account(acct))["status"] == "active"
    assert (await debit(term, card, 100))["code"] == "ok"


async def test_debit_pin_locked_and_unlock(ctx):
    term, acct, card = await setup_debit(ctx)
    for i in range(4):
        await assert_declined(ctx, term, acct, "pin_invalid", card=card, amount=100,
                              pin=WRONG_PIN)
    await assert_declined(ctx, term, acct, "pin_locked", card=card, amount=100, pin=WRONG_PIN)
    assert (await ctx.account(acct))["pin_locked"] is True
    # locked: even a small no-PIN debit, and the right PIN, are refused
    await assert_declined(ctx, term, acct, "pin_locked", card=card, amount=1)
    await assert_declined(ctx, term, acct, "pin_locked", card=card, amount=6000, pin=PIN)
    r = await ctx.ok(ctx.adm, "unlock", account=acct, id=uid())
    assert type(r["txn"]) is int
    assert (await ctx.account(acct))["pin_locked"] is False
    assert (await debit(term, card, 1))["code"] == "ok"
    assert (await debit(term, card, 6000, pin=PIN))["code"] == "ok"


async def test_pin_lock_counts_only_wrong_pins_in_a_row(ctx):
    term, acct, card = await setup_debit(ctx)
    for _ in range(4):
        assert (await debit(term, card, 100, pin=WRONG_PIN))["code"] == "pin_invalid"
    # a right PIN resets the run
    assert (await debit(term, card, 100, pin=PIN))["code"] == "ok"
    for _ in range(4):
        assert (await debit(term, card, 100, pin=WRONG_PIN))["code"] == "pin_invalid"
    # a malformed pin neither counts nor breaks the run
    assert (await debit(term, card, 100, pin="12345"))["code"] == "bad_request"
    assert (await ctx.account(acct))["pin_locked"] is False
    assert (await debit(term, card, 100, pin=WRONG_PIN))["code"] == "pin_locked"
    assert (await ctx.account(acct))["pin_locked"] is True


async def test_debit_limit_per_tx(ctx):
    term, acct, card = await setup_debit(ctx)
    await assert_declined(ctx, term, acct, "limit_per_tx", card=card, amount=PER_TX + 1, pin=PIN)
    r = await debit(term, card, PER_TX, pin=PIN)
    assert r["code"] == "ok" and r["balance"] == 200_000 - PER_TX


async def test_debit_limit_daily(ctx):
    term, acct, card = await setup_debit(ctx)
    assert (await debit(term, card, 40_000, pin=PIN))["code"] == "ok"
    assert (await debit(term, card, 40_000, pin=PIN))["code"] == "ok"
    await assert_declined(ctx, term, acct, "limit_daily", card=card, amount=20_001, pin=PIN)
    r = await debit(term, card, 20_000, pin=PIN)  # exactly the daily limit
    assert r["code"] == "ok" and r["balance"] == 200_000 - DAILY
    await assert_declined(ctx, term, acct, "limit_daily", card=card, amount=1)


async def test_debit_pin_required(ctx):
    term, acct, card = await setup_debit(ctx)
    await assert_declined(ctx, term, acct, "pin_required", card=card, amount=NO_PIN + 1)
    r = await debit(term, card, NO_PIN)  # at the threshold: no PIN needed
    assert r["code"] == "ok", r


@pytest.mark.parametrize("id_last6,pin", [("53012X", "530120"), ("481516", "481516")])
async def test_debit_pin_invalid(ctx, id_last6, pin):
    term, acct, card = await setup_debit(ctx, id_last6=id_last6)
    await assert_declined(ctx, term, acct, "pin_invalid", card=card, amount=NO_PIN + 1,
                          pin=WRONG_PIN)
    # a pin given below the threshold is still checked
    await assert_declined(ctx, term, acct, "pin_invalid", card=card, amount=100, pin=WRONG_PIN)
    if id_last6.endswith("X"):
        await assert_declined(ctx, term, acct, "pin_invalid", card=card, amount=NO_PIN + 1,
                              pin=id_last6[:5] + "1")
    r = await debit(term, card, NO_PIN + 1, pin=pin)
    assert r["code"] == "ok", r


async def test_debit_insufficient_funds(ctx):
    term, acct, card = await setup_debit(ctx, balance=1000)
    await assert_declined(ctx, term, acct, "insufficient_funds", card=card, amount=1001)
    r = await debit(term, card, 1000)
    assert r["code"] == "ok" and r["balance"] == 0 and r["available"] == 0
    await assert_declined(ctx, term, acct, "insufficient_funds", card=card, amount=1)


# --- precedence between rules


async def test_prec_bad_amount_beats_lost_card(ctx):
    term, acct, card = await setup_debit(ctx)
    await ctx.ok(await ctx.service(), "lost", card=card, id=uid())
    await assert_declined(ctx, term, acct, "bad_amount", card=card, amount=0)


async def test_prec_bad_amount_beats_unknown_card(ctx):
    term, acct, card = await setup_debit(ctx)
    await assert_declined(ctx, term, acct, "bad_amount", card=new_card(), amount=-1)
    await assert_declined(ctx, term, acct, "bad_amount", card=new_card(), amount=True)


async def test_prec_bad_amount_beats_wrong_school(ctx):
    _, acct, card = await setup_debit(ctx)
    cuik = await ctx.terminal(school="CUIK")
    await assert_declined(ctx, cuik, acct, "bad_amount", card=card, amount=MAX_AMOUNT + 1)


async def test_prec_card_lost_beats_wrong_school(ctx):
    _, acct, card = await setup_debit(ctx)
    await ctx.ok(await ctx.service(), "lost", card=card, id=uid())
    cuik = await ctx.terminal(school="CUIK")
    await assert_declined(ctx, cuik, acct, "card_lost", card=card, amount=100)


async def test_prec_card_lost_beats_frozen(ctx):
    term, acct, card = await setup_debit(ctx)
    await ctx.ok(ctx.adm, "freeze", account=acct, id=uid())
    await ctx.ok(await ctx.service(), "lost", card=card, id=uid())
    await assert_declined(ctx, term, acct, "card_lost", card=card, amount=100)


async def test_prec_card_blocked_beats_frozen(ctx):
    term, acct, card = await setup_debit(ctx)
    await ctx.ok(ctx.adm, "replace_card", account=acct, old=card, new=new_card(), id=uid())
    await ctx.ok(ctx.adm, "freeze", account=acct, id=uid())
    await assert_declined(ctx, term, acct, "card_blocked", card=card, amount=100)


async def test_prec_wrong_school_beats_frozen(ctx):
    _, acct, card = await setup_debit(ctx)
    await ctx.ok(ctx.adm, "freeze", account=acct, id=uid())
    cuik = await ctx.terminal(school="CUIK")
    await assert_declined(ctx, cuik, acct, "wrong_school", card=card, amount=100)


async def test_prec_frozen_beats_wrong_pin(ctx):
    term, acct, card = await setup_debit(ctx)
    await ctx.ok(ctx.adm, "freeze", account=acct, id=uid())
    await assert_declined(ctx, term, acct, "account_frozen", card=card, amount=NO_PIN + 1,
                          pin=WRONG_PIN)
    await assert_declined(ctx, term, acct, "account_frozen", card=card, amount=PER_TX + 1)
    # the wrong PINs above were never checked: none counted toward the lock
    assert (await ctx.account(acct))["pin_locked"] is False


async def test_prec_frozen_beats_pin_locked(ctx):
    term, acct, card = await setup_debit(ctx)
    for _ in range(5):
        await debit(term, card, 100, pin=WRONG_PIN)
    assert (await ctx.account(acct))["pin_locked"] is True
    await ctx.ok(ctx.adm, "freeze", account=acct, id=uid())
    await assert_declined(ctx, term, acct, "account_frozen", card=card, amount=100)


async def test_prec_closed_beats_limits(ctx):
    term, acct, card = await setup_debit(ctx, balance=0)
    await ctx.ok(ctx.adm, "close_account", account=acct, id=uid())
    await assert_declined(ctx, term, acct, "account_closed", card=card, amount=PER_TX + 1)


async def test_prec_pin_locked_beats_limit_per_tx(ctx):
    term, acct, card = await setup_debit(ctx)
    for _ in range(5):
        await debit(term, card, 100, pin=WRONG_PIN)
    await assert_declined(ctx, term, acct, "pin_locked", card=card, amount=PER_TX + 1, pin=PIN)


async def test_prec_limit_per_tx_beats_pin_required_and_funds(ctx):
    term, acct, card = await setup_debit(ctx, balance=100)
    await assert_declined(ctx, term, acct, "limit_per_tx", card=card, amount=PER_TX + 1)
    await assert_declined(ctx, term, acct, "limit_per_tx", card=card, amount=PER_TX + 1,
                          pin=WRONG_PIN)


async def test_prec_limit_daily_beats_wrong_pin(ctx):
    term, acct, card = await setup_debit(ctx)
    assert (await debit(term, card, PER_TX, pin=PIN))["code"] == "ok"
    assert (await debit(term, card, PER_TX, pin=PIN))["code"] == "ok"
    await assert_declined(ctx, term, acct, "limit_daily", card=card, amount=NO_PIN + 1,
                          pin=WRONG_PIN)
    assert (await ctx.account(acct))["pin_locked"] is False


async def test_prec_pin_before_insufficient_funds(ctx):
    term, acct, card = await setup_debit(ctx, balance=100)
    await assert_declined(ctx, term, acct, "pin_required", card=card, amount=NO_PIN + 1)
    await assert_declined(ctx, term, acct, "pin_invalid", card=card, amount=NO_PIN + 1,
                          pin=WRONG_PIN)
    await assert_declined(ctx, term, acct, "pin_invalid", card=card, amount=200, pin=WRONG_PIN)
    await assert_declined(ctx, term, acct, "insufficient_funds", card=card, amount=NO_PIN + 1,
                          pin=PIN)


# ==================================================================== balance


async def test_balance(ctx):
    term, acct, card = await setup_debit(ctx, balance=4321)
    r = await ctx.ok(term, "balance", card=card)
    assert r["balance"] == 4321 and r["available"] == 4321 and r["account"] == acct
    assert (await debit(term, card, 321))["code"] == "ok"
    r = await ctx.ok(term, "balance", card=card)
    assert r["balance"] == 4000 and r["available"] == 4000
    assert (await term.call("balance", card=new_card()))["code"] == "card_unknown"
    assert (await term.call("balance", card=card.lower()))["code"] == "bad_request"
    assert (await term.call("balance"))["code"] == "bad_request"


async def test_balance_wrong_school(ctx):
    _, acct, card = await setup_debit(ctx, balance=4321)
    cuik = await ctx.terminal(school="CUIK")
    r = await cuik.call("balance", card=card)
    assert r["code"] == "wrong_school", r
    assert "balance" not in r and "account" not in r
    assert (await cuik.call("balance", card=new_card()))["code"] == "card_unknown"


# ========================================================= robustness (last)
#
# These run last on purpose: if a client's TCP reset takes the switch down,
# the tests above have already been measured against a live switch (and the
# module teardown then reports the non-zero exit).


async def test_zz_client_reset_does_not_take_the_switch_down(ctx):
    """An unauthenticated peer resetting its TCP connection must not stop
    the switch from serving everyone else."""
    import socket
    import struct

    conn = await ctx.raw_conn()
    # close with SO_LINGER 0: the kernel sends a RST instead of a FIN
    conn.stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    await conn.stream.aclose()
    conn._eof = True
    await trio.sleep(0.3)
    other = await ctx.session("admin", ctx.sw.admin_key)
    assert await other.call("ping") == {"t": "ping", "re": 1, "code": "ok"}


# ===================================================================== campus rules


async def test_rooms_pages_utility_accounts_of_one_school(ctx):
    building = f"7{next(_counter) % 1000:03d}"
    rooms = [f"WH-{building}A-{n:04d}" for n in range(3)]
    for room in rooms:
        await ctx.ok(ctx.adm, "open_account", account=room, school="WH", kind="utility",
                     id=uid())
    svc = await ctx.service(school="WH")
    first = await ctx.ok(svc, "rooms", building=building, limit=2)
    assert [i["account"] for i in first["items"]] == rooms[:2] and first["next"] == rooms[1]
    for item in first["items"]:
        assert item == {"account": item["account"], "utility": "both", "power": "off",
                        "balance": 0}
    rest = await ctx.ok(svc, "rooms", building=building, after=first["next"])
    assert [i["account"] for i in rest["items"]] == rooms[2:] and rest["next"] is None
    assert (await svc.call("rooms", school="CUIK"))["code"] == "wrong_school"
    assert (await svc.call("rooms", building="7A"))["code"] == "bad_request"
    assert (await ctx.adm.call("rooms"))["code"] == "bad_request"     # no school named


async def test_confirm_is_a_bool_and_with_the_guard_off_identical_taps_pay(ctx):
    acct, card = await ctx.person(balance=1000)
    term = await ctx.terminal()
    assert (await debit(term, card, 100))["code"] == "ok"
    assert (await debit(term, card, 100))["code"] == "ok"
    assert (await debit(term, card, 100, confirm=True))["code"] == "ok"
    assert (await debit(term, card, 100, confirm=1))["code"] == "bad_request"
    assert (await ctx.account(acct))["balance"] == 700


async def test_subsidy_fields_on_replies_history_and_account(ctx):
    acct, card = await ctx.person(balance=1000)
    granted = await ctx.ok(ctx.adm, "subsidy", account=acct, amount=300, expires="2099-12-31",
                           batch=f"cf-{_RUN}", id=uid())
    assert {k: granted[k] for k in ("balance", "subsidy", "available")} == {
        "balance": 1000, "subsidy": 300, "available": 1300}
    term = await ctx.terminal()
    d = await debit(term, card, 100)
    assert (d["code"], d["balance"], d["subsidy"], d["available"]) == ("ok", 1000, 200, 1200)
    account = await ctx.account(acct)
    assert (account["balance"], account["subsidy"], account["available"]) == (1000, 200, 1200)
    h = await ctx.ok(ctx.adm, "history", account=acct, limit=2)
    assert [(i["kind"], i["amount"], i["from_subsidy"]) for i in h["items"]] == [
        ("debit", -100, 100), ("subsidy", 300, -300)]
    assert (await ctx.adm.call("subsidy", account=acct, amount=1, expires="2000-01-01",
                               batch="old", id=uid()))["code"] == "bad_request"


async def test_meals_is_a_bool_of_pos_terminals_and_uncapped_without_meal_periods(ctx):
    who = new_who("WH", "pos")
    added = await ctx.ok(ctx.adm, "add_credential", who=who, role="terminal", school="WH",
                         kind="pos", meals=True, id=uid())
    assert (await ctx.adm.call("add_credential", who=new_who("WH", "water"), role="terminal",
                               school="WH", kind="water", meals=True, id=uid()))["code"] \
        == "bad_request"
    assert (await ctx.adm.call("add_credential", who=new_who("WH", "pos"), role="terminal",
                               school="WH", kind="pos", meals=1, id=uid()))["code"] \
        == "bad_request"
    acct, card = await ctx.person(balance=1000)
    till = await ctx.session(who, added["key"])
    for _ in range(3):       # the default configuration has no meal periods
        assert (await debit(till, card, 100))["code"] == "ok"
