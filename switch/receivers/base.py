"""What every reference receiver shares (docs/PROTOCOL.md §6.3): the server side of `hello` with
role "downstream", the contiguity and duplicate rules for `records` frames, and state kept
on disk atomically before each reply.

A subclass says what it keeps (`reset`, `apply`, `snapshot`, `restore`) and which files it
derives from that (`outputs`); this module does the rest.
"""

import argparse
import collections
import csv
import io
import json
import logging
import os
import signal
import sys
import time
from typing import NamedTuple

import trio

from switch import limits, logline
from switch.logline import bounded
from switch.ledger import schema
from switch.ledger.dispatch import reply_type
from switch.codec import FrameDecoder, ProtocolError, ServerSession
from switch.codec.framing import FrameTooLarge
from switch.persistence.dirlock import DirInUse, DirLock
from switch.persistence.store import STORE_DIR
from switch.config.command_line import CommandLineParser
from switch.config.endpoints import explain, host_port_argument
from switch.config.keyfile import KeyFileError, read_key_file

log = logging.getLogger("switch.receiver")

STATE_FILE = "state.json"
STATE_VERSION = 1

APPLY = "apply"
GAP = "gap"
BAD = "bad"
REWOUND = "rewound"


class StateError(Exception):
    """The state dir holds a state file this receiver cannot take; the message says why."""


class RewindCheck(NamedTuple):
    """What tells a resend from a restored switch's new record under a txn we have: the
    latest `at` of the records taken (0: none yet), of which kinds, and the txns judged:
    above `from_txn` (the position a state file from before this check was kept had when
    it was loaded: what came before is not known) and up to `last_taken_txn`, the newest
    record taken (txns above it were only covered by `to`: records our filter skipped, whose
    times we never saw, which a widened filter may send again)."""
    newest_at_ms: int = 0
    from_txn: int = 0
    kinds: frozenset = frozenset()
    last_taken_txn: int = 0


class Verdict(NamedTuple):
    action: str          # APPLY, GAP, BAD or REWOUND
    upto: int            # what to acknowledge (APPLY, GAP)
    records: list        # the records not seen before, in txn order (APPLY)
    detail: str = ""     # why (BAD, GAP, REWOUND)


def check_records(position: int, message: dict, rewind: RewindCheck = RewindCheck()) -> Verdict:
    """The docs/PROTOCOL.md §6.3 rules for one `records` frame against our acknowledged `position`.

    - `from` > position + 1 is a gap: acknowledge `position` so the switch resends from
      position + 1;
    - records with txn <= position are duplicates (delivery is at least once): dropped;
      but one later than every record we have taken (`rewind.newest_at_ms`), of a kind we
      have taken, in `rewind.from_txn` < txn <= `rewind.last_taken_txn`, is no resend of
      one of them: the switch's journal was restored from an older copy and numbers new
      records with txns we took from the lost one. That is REWOUND, and nothing of the
      frame is taken (docs/FORWARDING.md, "After a restore");
    - otherwise everything up to `to` is ours, the records and the txns that matched no
      filter alike, and `upto` = `to`.
    """
    from_txn, to_txn, records = message.get("from"), message.get("to"), message.get("records")
    if type(from_txn) is not int or type(to_txn) is not int or type(records) is not list:
        return Verdict(BAD, position, [], "from, to and records are needed")
    # No wider than one frame of the switch's scan (`next_frame`): a `to` beyond it would
    # make us drop every later record as already seen.
    if not 1 <= from_txn <= limits.id_int_max or \
            not from_txn - 1 <= to_txn <= from_txn - 1 + limits.forward_scan_txns_max:
        return Verdict(BAD, position, [], f"range {from_txn}..{to_txn}")
    if len(records) > limits.forward_records_per_frame_max:
        return Verdict(BAD, position, [], f"{len(records)} records in one frame")
    if from_txn > position + 1:
        return Verdict(GAP, position, [], f"frame starts at {from_txn}, we have up to {position}")
    fresh = []
    previous = from_txn - 1
    for record in records:
        txn = record.get("txn") if type(record) is dict else None
        if type(txn) is not int or not previous < txn <= to_txn:
            return Verdict(BAD, position, [], f"record txn {txn!r} out of order or outside "
                                              f"{from_txn}..{to_txn}")
        if not is_text(record.get("kind"), limits.id_str_chars_max):
            return Verdict(BAD, position, [], f"record {txn}: no kind")
        previous = txn
        if txn > position:
            fresh.append(record)
        elif (rewind.newest_at_ms and rewind.from_txn < txn <= rewind.last_taken_txn
              and record["kind"] in rewind.kinds and is_time(record.get("at"))
              and record["at"] > rewind.newest_at_ms):
            return Verdict(REWOUND, position, [],
                           f"record {txn} ({record['kind']}) at {record['at']} is later than "
                           f"every record taken (newest at {rewind.newest_at_ms}), yet its txn "
                           f"is one we have")
    return Verdict(APPLY, to_txn, fresh)


def is_int_in(value, low: int, high: int) -> bool:
    return type(value) is int and low <= value <= high


def is_text(value, chars_max: int) -> bool:
    return type(value) is str and 1 <= len(value) <= chars_max


def is_time(value) -> bool:
    return is_int_in(value, limits.receiver_time_ms_min, limits.receiver_time_ms_max)


def common_field_problem(record: dict) -> str | None:
    """What is wrong with the fields every record has (docs/PROTOCOL.md §6), or None. `txn` and `kind` are
    `check_records`'s."""
    if not is_time(record.get("at")):
        return f"at {record.get('at')!r} is not a time in range"
    if schema.account_id(record.get("account")) is schema.INVALID:
        return "account is not an account id"
    if not is_text(record.get("school"), limits.school_code_chars_max):
        return "school is not a school code"
    if not is_int_in(record.get("amount"), -limits.balance_fen_max, limits.balance_fen_max):
        return "amount is not an int in range"
    if not is_int_in(record.get("balance"), -limits.balance_fen_max, limits.balance_fen_max):
        return "balance is not an int in range"
    for name, check in (("who", schema.credential_id), ("merchant", schema.short_text),
                        ("ref", schema.request_id)):
        value = record.get(name)
        if value is not None and check(value) is schema.INVALID:
            return f"{name} is not a {name}"
    return None


# A spreadsheet runs a cell that begins with one of these as a formula (OWASP, "CSV
# Injection"): such a text cell gets a leading apostrophe, which shows as nothing.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value):
    if type(value) is str and value.startswith(_FORMULA_STARTS):
        return "'" + value
    return value


def csv_bytes(header: list[str], rows) -> bytes:
    """An RFC 4180 CSV file (CRLF line ends, so a CR in a cell is quoted too) whose text
    cells cannot run as formulas."""
    out = io.StringIO(newline="")
    writer = csv.writer(out)
    writer.writerow(header)
    writer.writerows([csv_cell(value) for value in row] for row in rows)
    return out.getvalue().encode()


def write_atomically(directory: str, files: list[tuple[str, bytes]]) -> None:
    """Each file whole or not at all: temp file, fsync, rename; then fsync the directory."""
    for name, data in files:
        path = os.path.join(directory, name)
        temporary = path + ".tmp"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, path)
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _rewind_check_of(data: dict, position: int, path: str) -> RewindCheck:
    """The state file's `rewind_check`. A file from before it was kept has none: nothing up
    to its position is judged (what it took then is not known)."""
    if "rewind_check" not in data:
        return RewindCheck(from_txn=position, last_taken_txn=position)
    saved = data["rewind_check"]
    if (type(saved) is not dict or type(saved.get("kinds")) is not list
            or not all(is_text(kind, limits.id_str_chars_max) for kind in saved["kinds"])
            or len(saved["kinds"]) > limits.receiver_rewind_kinds_max
            or not (is_int_in(saved.get("newest_at_ms"), 0, 0)     # nothing taken yet
                    or is_time(saved.get("newest_at_ms")))
            or not is_int_in(saved.get("from_txn"), 0, position)
            or not is_int_in(saved.get("last_taken_txn"), saved["from_txn"], position)):
        raise StateError(f"{path}: damaged rewind_check {saved!r}; move the file away to start "
                         f"from nothing (the switch then resends everything)")
    return RewindCheck(saved["newest_at_ms"], saved["from_txn"], frozenset(saved["kinds"]),
                       saved["last_taken_txn"])


class Receiver:
    """A downstream receiver: one position, one state, shared by all its connections."""

    name = "receiver"
    wanted_kinds: frozenset | None = None   # documentation: what the switch's filter should be

    def __init__(self, state_dir: str, credentials: dict[str, bytes]):
        self.state_dir = state_dir
        self.credentials = dict(credentials)
        self.position = 0
        self.frames = 0
        self.gaps = 0
        self.duplicates = 0
        self.rewinds = 0
        # Kept with the position: a "duplicate" later than every record taken is no resend
        # (check_records).
        self.rewind = RewindCheck()
        self._dirty = False
        self._lock = trio.Lock()
        self._sessions: dict[str, trio.CancelScope] = {}
        # Signed on and not yet sent a request, per credential, oldest first (`_converse`).
        self._silent: dict[str, dict] = {}
        # (who, nonce) of recent hellos, oldest first: a copy of one is refused.
        self._hello_nonces = collections.OrderedDict()
        # Connections before `hello`, oldest first (a dict as an ordered set).
        self._pending: dict[trio.CancelScope, None] = {}
        self.pending_evicted = 0
        self.hellos_refused = 0
        self._refusals_window = (-float("inf"), 0)   # (its start, monotonic s; refusals in it)
        self.connection_failures = 0
        # Set when the state dir is gone (`_persist`): the receiver stops, exit 1, and its
        # service manager starts it again, which rebuilds from txn 1 into a new state dir.
        self.lost: StateDirLost | None = None
        self.on_lost = lambda: None
        os.makedirs(state_dir, mode=0o700, exist_ok=True)
        self.load()

    # ------------------------------------------------------------ for subclasses
    def reset(self) -> None:
        """Empty state (a receiver that has seen nothing)."""

    def validate(self, record: dict) -> str | None:
        """Why this record cannot be applied, or None (a kind not wanted is ignored)."""
        if self.wanted_kinds is not None and record["kind"] not in self.wanted_kinds:
            return None
        return common_field_problem(record) or self.kind_problem(record)

    def kind_problem(self, record: dict) -> str | None:
        """What is wrong with a wanted record's own kind's fields, or None; its common
        fields are already checked."""
        return None

    def apply(self, record: dict) -> None:
        """Take one new record (txn above our position, in txn order) into the state."""

    def snapshot(self) -> dict:
        return {}

    def restore(self, data: dict) -> None:
        pass

    def outputs(self) -> list[tuple[str, bytes]]:
        """Files derived from the state, rewritten after it."""
        return []

    # ------------------------------------------------------------ persistence
    def load(self) -> None:
        # A crash between the state and its outputs leaves the outputs behind: redo them.
        if self._reload():
            log.info("event=state_loaded receiver=%s position=%d", self.name, self.position)
        self._write_outputs_now()

    def _reload(self) -> bool:
        """Memory as the state file says (empty without one); whether there was one."""
        path = os.path.join(self.state_dir, STATE_FILE)
        self.reset()
        self.position = 0
        self.rewind = RewindCheck()
        self._dirty = False
        try:
            with open(path, "rb") as handle:
                data = json.loads(handle.read())
        except FileNotFoundError:
            return False
        except (OSError, ValueError) as error:  # unreadable, or not JSON
            raise StateError(f"cannot read {path}: {error}; move it away to start from "
                             f"nothing (the switch then resends everything)") from None
        if (type(data) is not dict or data.get("version") != STATE_VERSION
                or data.get("receiver") != self.name or type(data.get("position")) is not int):
            raise StateError(f"{path}: not a {self.name} state file of version "
                             f"{STATE_VERSION}; is --state the right directory?")
        self.position = data["position"]
        self.rewind = _rewind_check_of(data, self.position, path)
        try:
            self.restore(data["state"])
        except (KeyError, TypeError, ValueError) as error:
            raise StateError(f"{path}: damaged state ({type(error).__name__}: {error}); move it "
                             f"away to start from nothing (the switch then resends everything)"
                             ) from None
        return True

    def _note_taken(self, record: dict) -> None:
        """Every record taken counts, a kind not wanted too: a resend of any of them must
        never look newer than what we took. A time out of range is left out (and never
        judged); the kinds are a few, bounded all the same."""
        at, kinds = record.get("at"), self.rewind.kinds
        if not is_time(at):
            return
        if record["kind"] not in kinds and len(kinds) < limits.receiver_rewind_kinds_max:
            kinds = kinds | {record["kind"]}
        self.rewind = self.rewind._replace(newest_at_ms=max(self.rewind.newest_at_ms, at),
                                           kinds=kinds, last_taken_txn=record["txn"])

    def _write_outputs_now(self) -> None:
        write_atomically(self.state_dir, self.outputs())

    def state_bytes(self) -> bytes:
        rewind = {"newest_at_ms": self.rewind.newest_at_ms, "from_txn": self.rewind.from_txn,
                  "kinds": sorted(self.rewind.kinds),
                  "last_taken_txn": self.rewind.last_taken_txn}
        return json.dumps({"version": STATE_VERSION, "receiver": self.name,
                           "position": self.position, "rewind_check": rewind,
                           "state": self.snapshot()},
                          separators=(",", ":"), sort_keys=True).encode()

    async def _persist(self) -> None:
        # The state file goes last: whoever sees a position in it finds the outputs at least
        # that far. A crash in between leaves outputs ahead; `load` redoes them from state.
        files = self.outputs() + [(STATE_FILE, self.state_bytes())]
        try:
            await trio.to_thread.run_sync(write_atomically, self.state_dir, files)
        except FileNotFoundError:
            if os.path.isdir(self.state_dir):
                raise
            # Deleted under it (an `rm -rf` of the wrong directory): every frame would fail
            # from now on, a traceback each, while the switch's lag grew.
            self.lost = StateDirLost(f"the state dir {self.state_dir} is gone; nothing taken "
                                     f"can be kept: stopping (started again, the receiver "
                                     f"rebuilds from txn 1)")
            log.critical("event=state_dir_lost receiver=%s state=%s action=stopping_exit_1",
                         self.name, self.state_dir)
            self.on_lost()
            raise self.lost from None
        self._dirty = False

    # ------------------------------------------------------------ records
    async def handle_records(self, message: dict) -> dict:
        """The reply to one `records` request; state is on disk before it is returned."""
        async with self._lock:
            verdict = check_records(self.position, message, self.rewind)
            if verdict.action == BAD:
                log.error("event=bad_records_frame receiver=%s detail=%s", self.name, verdict.detail)
                return {"t": "records", "code": "bad_request"}
            if verdict.action == REWOUND:
                # Taking nothing more is the only safe answer: dropping the record as a
                # duplicate would lose its money without a word.
                self.rewinds += 1
                if self.rewinds & (self.rewinds - 1) == 0:   # 1, 2, 4, ...: every retry refuses
                    log.error("event=journal_rewound receiver=%s position=%d refusals=%d "
                              "detail=%s action=%s", self.name, self.position, self.rewinds,
                              verdict.detail,
                              "the switch was restored from a backup older than this "
                              "receiver's state; restore this receiver from a copy no newer "
                              "than that backup (docs/FORWARDING.md, After a restore)")
                return {"t": "records", "code": "journal_rewound"}
            if verdict.action == GAP:
                self.gaps += 1
                log.warning("event=gap receiver=%s detail=%s asking_from=%d", self.name,
                            verdict.detail, self.position + 1)
                return {"t": "records", "code": "ok", "upto": verdict.upto}
            for record in verdict.records:
                problem = self.validate(record)
                if problem:
                    log.error("event=record_refused receiver=%s txn=%d problem=%s", self.name, record["txn"],
                              problem)
                    return {"t": "records", "code": "bad_request"}
            try:
                for record in verdict.records:
                    self.apply(record)
                    self._note_taken(record)
                if verdict.upto > self.position:
                    self.position = verdict.upto
                    self._dirty = True
                if verdict.records:
                    self._dirty = True
                if self._dirty:
                    # Shielded: once the state has moved, the disk follows before anything.
                    with trio.CancelScope(shield=True):
                        await self._persist()
            except BaseException:
                # A frame is taken whole or not at all: back to what is on disk, whose
                # position the switch resends from (a failed write, disk full, included).
                self._reload()
                raise
            self.duplicates += len(message["records"]) - len(verdict.records)
            self.frames += 1
            return {"t": "records", "code": "ok", "upto": verdict.upto}

    # ------------------------------------------------------------ serving
    async def serve(self, listeners, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            for listener in listeners:
                nursery.start_soon(self._accept, listener, nursery)
            task_status.started()

    async def _accept(self, listener, nursery) -> None:
        async with listener:
            while True:
                stream = await listener.accept()
                if len(self._pending) >= limits.receiver_pending_connections_max:
                    # Make room by closing the socket that has been silent longest: the
                    # switch says hello at once, so a flood cannot keep it out.
                    oldest = next(iter(self._pending))
                    del self._pending[oldest]
                    oldest.cancel()
                    self.pending_evicted += 1
                    if self.pending_evicted & (self.pending_evicted - 1) == 0:  # 1, 2, 4, ...
                        log.warning("event=pending_evicted receiver=%s pending=%d evicted_total=%d",
                                    self.name,
                                    limits.receiver_pending_connections_max, self.pending_evicted)
                scope = trio.CancelScope()
                self._pending[scope] = None
                nursery.start_soon(self._connection, stream, scope)

    async def _connection(self, stream, scope) -> None:
        try:
            with scope:
                await self._converse(stream, scope)
        except (trio.BrokenResourceError, trio.ClosedResourceError, StateDirLost):
            pass   # a lost state dir stops the receiver (`on_lost`), said once there
        except Exception:
            # Whatever went wrong, it ends this connection only; the switch reconnects and
            # resends from the position on disk.
            self.connection_failures += 1
            log.exception("event=connection_failed receiver=%s", self.name)
        finally:
            self._pending.pop(scope, None)
            for who, session_scope in list(self._sessions.items()):
                if session_scope is scope:
                    del self._sessions[who]
            for who, silent in list(self._silent.items()):
                silent.pop(scope, None)
                if not silent:
                    del self._silent[who]
            await trio.aclose_forcefully(stream)

    async def _converse(self, stream, scope) -> None:
        session = ServerSession()
        decoder = FrameDecoder()
        payloads: list = []
        try:
            with trio.move_on_after(limits.hello_timeout_s):
                while not payloads:
                    data = await stream.receive_some(limits.receive_size_bytes)
                    if not data:
                        return
                    payloads = decoder.feed(data)
            if not payloads:
                return None  # no hello in time: closed without a frame (docs/PROTOCOL.md §2.1)
            hello = session.receive_hello(payloads.pop(0), self.credentials.get)
        except ProtocolError as error:
            self.hellos_refused += 1
            # Anyone can send bad hellos in a loop: the 1st, 2nd, 4th, 8th ... of a window
            # are logged with the count, so a flood is a few lines, not one line each.
            began, count = self._refusals_window
            now = time.monotonic()
            if now - began >= limits.receiver_hellos_refused_window_s:
                began, count = now, 0
            count += 1
            self._refusals_window = (began, count)
            if count & (count - 1) == 0:
                log.info("event=hello_refused receiver=%s code=%s who=%s refused_total=%d",
                         self.name, error.code,
                         bounded(error.who, limits.log_peer_value_chars_max), self.hellos_refused)
            await stream.send_all(session.encode_error(error))
            return
        self._pending.pop(scope, None)
        seen = (hello.who, hello.client_nonce)
        if seen in self._hello_nonces:        # a copy replayed off the wire
            self.hellos_refused += 1
            log.info("event=hello_replayed receiver=%s who=%s", self.name, hello.who)
            await stream.send_all(session.encode_error(ProtocolError("unauthenticated")))
            return
        self._hello_nonces[seen] = None
        if len(self._hello_nonces) > limits.receiver_hello_nonces_kept_max:
            self._hello_nonces.popitem(last=False)
        await stream.send_all(session.accept_hello(
            hello, {"role": "downstream", "time": time.time_ns() // 1_000_000}))
        # One live session per credential: a new sign-on means the old socket is dead, once
        # the new one has sent a request. A hello copied off the wire verifies too, and a
        # replay that replaced the switch's session at once cut forwarding at every copy:
        # until its first request a session replaces nothing, and at most
        # `receiver_silent_sessions_max` of them wait per credential (the oldest goes).
        silent = self._silent.setdefault(hello.who, {})
        if len(silent) >= limits.receiver_silent_sessions_max:
            oldest = next(iter(silent))
            del silent[oldest]
            oldest.cancel()
        silent[scope] = None
        log.info("event=sign_on receiver=%s who=%s position=%d", self.name, hello.who,
                 self.position)
        try:
            while True:
                while payloads:
                    request = session.receive_request(payloads.pop(0))
                    if scope in silent:
                        self._take_over(hello.who, scope)
                    reply = await self._answer(request.message)
                    reply["re"] = request.seq
                    await stream.send_all(self._encode_reply(session, reply))
                with trio.move_on_after(limits.receiver_idle_timeout_s) as idle:
                    data = await stream.receive_some(limits.receive_size_bytes)
                if idle.cancelled_caught or not data:
                    return
                payloads.extend(decoder.feed(data))
        except ProtocolError as error:
            log.warning("event=protocol_error receiver=%s who=%s error=%s", self.name, hello.who,
                        str(error))
            await stream.send_all(session.encode_error(error))

    def _take_over(self, who: str, scope) -> None:
        """The session `scope` sent its first request: it is the credential's one session."""
        silent = self._silent.get(who, {})
        silent.pop(scope, None)
        if not silent:
            self._silent.pop(who, None)
        older = self._sessions.get(who)
        if older is not None and older is not scope:
            older.cancel()
        self._sessions[who] = scope

    async def _answer(self, message: dict) -> dict:
        request_type = message.get("t")
        if request_type == "records":
            return await self.handle_records(message)
        if request_type == "ping":
            return {"t": "ping", "code": "ok"}
        # The switch's rule: a `t` too long to be any request's name is echoed as "error",
        # so a peer's 65,000-character `t` cannot make the reply outgrow a frame.
        return {"t": reply_type(request_type), "code": "bad_request"}

    def _encode_reply(self, session, reply: dict) -> bytes:
        try:
            return session.encode_reply(reply)
        except FrameTooLarge:
            # Nothing a receiver answers is that large: a bug, said in one line, and the
            # switch told `internal` (it resends from the position on disk) rather than
            # left to time out.
            log.error("event=reply_too_large receiver=%s t=%s re=%s", self.name,
                      bounded(reply.get("t"), limits.log_peer_value_chars_max), reply["re"])
            return session.encode_reply({"t": reply_type(reply.get("t")), "re": reply["re"],
                                         "code": "internal"})


# ---------------------------------------------------------------- command line
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class StateDirLost(Exception):
    """The state dir went away under a running receiver: nothing it takes can be kept."""


class StartError(Exception):
    """The receiver cannot start; the message is the one line the operator sees."""


def parser(prog: str, description: str) -> argparse.ArgumentParser:
    arguments = CommandLineParser(prog=prog, description=description)
    arguments.add_argument("--listen", required=True, type=host_port_argument(),
                           help="HOST:PORT to listen on (port 0: any free port)")
    arguments.add_argument("--state", required=True,
                           help="directory for state and outputs (created when missing); one "
                                "receiver per directory")
    arguments.add_argument("--credential", required=True,
                           help="the credential id the switch signs on with")
    arguments.add_argument("--key-file", required=True,
                           help="file holding that credential's key as 64 hex characters")
    arguments.add_argument("--log-level", default="INFO", type=str.upper, choices=LOG_LEVELS)
    return arguments


def run_main(make_receiver, args) -> int:
    """Serve until SIGTERM or SIGINT; exit 0. An operator's mistake: one line, exit 2."""
    logline.configure(args.log_level)
    try:
        key = read_key_file(args.key_file)
        receiver = trio.run(_serve_until_signal, make_receiver, args, key)
    except (KeyFileError, StartError, DirInUse) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if receiver.lost is not None:
        print(f"error: {receiver.lost}", file=sys.stderr)
        return 1   # not 2: the unit's Restart= starts it again, and it rebuilds
    log.info("event=stopped receiver=%s position=%d", receiver.name, receiver.position)
    return 0


def _claim_state_dir(path: str) -> DirLock:
    """The state dir, created if missing and locked for this process's life: two receivers
    on one directory would overwrite each other's state."""
    if os.path.isdir(os.path.join(path, STORE_DIR)):
        # A switch's data dir: its lock would keep the switch from starting, and every
        # backup of it would carry the receiver's files.
        raise StartError(f"{path} is a switch's data dir (it holds {STORE_DIR}/); give the "
                         f"receiver a directory of its own")
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        return DirLock(path)
    except OSError as error:
        raise StartError(f"cannot use {path} as the state dir: {error.strerror or error}"
                         ) from None


async def _serve_until_signal(make_receiver, args, key: bytes) -> "Receiver":
    host, port = args.listen
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        # Bound first: a port in use leaves no state dir behind.
        try:
            listeners = await trio.open_tcp_listeners(port, host=host)
        except OSError as error:
            raise StartError(explain(error, f"listen on {host}:{port}")) from None
        lock = _claim_state_dir(args.state)
        try:
            try:
                receiver = make_receiver(args.state, {args.credential: key})
            except StateError as error:
                raise StartError(str(error)) from None
            async with trio.open_nursery() as nursery:
                receiver.on_lost = nursery.cancel_scope.cancel
                await nursery.start(receiver.serve, listeners)
                bound_host, bound_port = listeners[0].socket.getsockname()[:2]
                print(f"listening on {bound_host}:{bound_port}", flush=True)
                async for signum in signals:
                    log.info("event=stopping receiver=%s signal=%d", receiver.name, signum)
                    # A frame being written finishes first: its persist is shielded.
                    async with receiver._lock:
                        nursery.cancel_scope.cancel()
                    break
        finally:
            for listener in listeners:
                await listener.aclose()
            lock.release()
    return receiver
