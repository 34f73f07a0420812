"""Typed access to the switch's state on top of the store: accounts, cards, credentials,
the journal and idempotency. Synchronous; runs on the event loop."""

import hashlib
import logging
import operator
import os
import struct
from dataclasses import dataclass

import msgpack

from switch import limits
from switch.config.masterkey import SealError
from switch.core import layout
from switch.ledger.state.blacklist import Blacklist
from switch.ledger.effects import BlacklistPush, JournalAdvanced
from switch.ledger.state.holds import Holds
from switch.ledger.state import sealing
from switch.ledger.state.subsidies import SubsidyBatches
from switch.ledger.payment_path import SchoolLimits
from switch.persistence.keys import (BLACKLIST_RESTORES, BLACKLIST_RESTORES_HANDLED,
                                     CLOSED_TAPS_RECEIVED_LAST, RETENTION_CLOCK, SCHOOL_TIME_ZONE_PREFIX, room_index_keys,
                                     txn_key)

log = logging.getLogger("switch.ledger")
_pack = msgpack.Packer(use_bin_type=True).pack
_SETTLEMENT = struct.Struct("<qq")  # count, total fen
_SCHOOL_SLICE = slice(layout.SCHOOL[0], layout.SCHOOL[0] + 8)
# Where the retention sweep stands, in `meta`: the last remembered id it visited.
IDS_SWEPT_TO = b"ids_swept_to"


def unpack(data: bytes):
    return msgpack.unpackb(data, raw=False)


def _remembered_at_ms(data: bytes) -> int:
    """When an `idempotency` value was remembered (its last element)."""
    return unpack(data)[3]


_UINT64 = 0xCF   # msgpack's marker of an unsigned 64-bit int, its 8 bytes big-endian after it


def remembered_at_ms_read_fast(data: bytes) -> int:
    """`_remembered_at_ms` from the value's last 9 bytes, unpacking nothing, when they are a
    msgpack uint64. Every time from 1970-02-19 (2**32 ms) on is packed so: on a real clock
    this is the time exactly, at a fraction of an unpack (the sweep reads every id).

    Never earlier than the time, whatever the value: a time packed shorter ends the value
    with its own big-endian bytes, so when the 9th byte from the end is 0xCF by chance the
    8 bytes read are those bytes with more above them. A wrong reading only keeps an id
    longer, never forgets it early."""
    if len(data) > 9 and data[-9] == _UINT64:
        return int.from_bytes(data[-8:], "big")
    return unpack(data)[3]


# How every remembered credit's value begins: an array of four, then "credit" (remember_at).
_CREDIT_HEAD = b"\x94" + msgpack.packb("credit")


def _forgettable(data: bytes, cutoffs: tuple, remembered_at_ms) -> bool:
    """Whether an `idempotency` value is past its retention: a credit's is the longer one
    (`limits.credit_ids_retention_s`), read from the value's first bytes, unpacking nothing.
    `cutoffs`: (ids remembered up to this time, their cutoff and credits' cutoff; the
    others' cutoff and credits' cutoff), `Ledger._id_cutoffs`."""
    at_ms = remembered_at_ms(data)
    started_ms, before_start, since_start = cutoffs
    cutoff_ms, credit_cutoff_ms = before_start if at_ms <= started_ms else since_start
    return at_ms < cutoff_ms and (at_ms < credit_cutoff_ms
                                  or not data.startswith(_CREDIT_HEAD))


_VALUE = operator.itemgetter(1)
_LAST_9_BYTES = operator.itemgetter(slice(-9, None))
_ABOVE_UINT64 = bytes([_UINT64 + 1])


def none_remembered_before(items: list, cutoff_ms: int) -> bool:
    """True when no (key, `idempotency` value) of `items` was remembered before `cutoff_ms`
    by `remembered_at_ms_read_fast`'s reading; False when one was, or when one is not read
    so (the caller then reads each).

    The sweep visits thousands of ids a pass, and almost never finds one to forget (only ids
    eight days old): so the pass asks this first, in C loops (`map`, `min`, `max`) with no
    Python step per id, about a third of reading each. True only when every value ends in
    0xCF and 8 big-endian bytes at or above the cutoff's, so comparing those 9 bytes as bytes
    compares times; a value ending otherwise (a time packed shorter) sends the caller to read
    each. Every stored value is an array of four, longer than 9 bytes."""
    if not items:
        return True
    if cutoff_ms >= 2**64:
        return False
    floor = bytes([_UINT64]) + max(cutoff_ms, 0).to_bytes(8, "big")
    ends = list(map(_LAST_9_BYTES, map(_VALUE, items)))
    return min(ends) >= floor and max(ends) < _ABOVE_UINT64


@dataclass
class Credential:
    who: str
    key: bytes
    role: str
    school: str | None = None
    kind: str | None = None
    merchant: str | None = None
    revoked: bool = False
    meals: bool = False      # a canteen till: its payments count toward meal caps

    def to_bytes(self, master) -> bytes:
        """Stored with its key sealed under the master key, bound to `who`."""
        key = master.seal(sealing.CREDENTIAL_KEY, self.who.encode(), self.key)
        fields = {"key": key, "role": self.role, "school": self.school,
                  "kind": self.kind, "merchant": self.merchant, "revoked": self.revoked}
        if self.meals:   # other credentials are stored as they always were
            fields["meals"] = True
        return _pack(fields)

    @classmethod
    def from_bytes(cls, who: str, data: bytes, master) -> "Credential":
        fields = unpack(data)
        fields["key"] = master.open(sealing.CREDENTIAL_KEY, who.encode(), fields["key"])
        return cls(who=who, **fields)

    def __repr__(self) -> str:   # never the key in a log or a traceback
        return f"Credential({self.who!r}, role={self.role!r}, revoked={self.revoked})"


class Ledger:
    def __init__(self, store, config, clock):
        self.store = store
        self.config = config
        self.clock = clock
        self._request_ms: int | None = None   # while a request executes: its one time
        assert store.master is not None, "open the data dir with its master key first"
        self.master = store.master
        self._credentials: dict[str, Credential | None] = {}
        self._schools_by_raw: dict[bytes, object] = {}
        self._limits_by_school: dict[str, SchoolLimits] = {}
        sealed = store.get("meta", sealing.FINGERPRINT_KEY)
        if sealed is None:
            secret = os.urandom(32)
            store.write_now("meta", sealing.FINGERPRINT_KEY,
                            self.master.seal(sealing.META, sealing.FINGERPRINT_KEY, secret))
        else:
            secret = self.master.open(sealing.META, sealing.FINGERPRINT_KEY, sealed)
        self._fingerprint_key = secret
        # Keyed once: each fingerprint copies this state rather than keying BLAKE2b anew
        # (0.52 against 0.87 µs a request).
        self._fingerprint_hash = hashlib.blake2b(key=secret, digest_size=16)
        self._effects: list = []           # effects.* for the shell, once the batch is durable
        self._effects_last_txn = store.last_txn
        self.blacklist = Blacklist(store)
        self._restart_blacklists_after_restore()
        self._note_time_zones()
        self.holds = Holds(self)
        self.subsidy_batches = SubsidyBatches(store)
        # The last id the retention sweep visited (`forget_old_ids`); None: start at the first.
        # Also saved in `meta` (`_save_sweep_position`): a cycle takes 10 minutes, and a
        # switch that started a cycle over at each restart never reached the end of the key
        # range if restarted more often (a crash loop, a restart by a watchdog), so the ids
        # there were never forgotten.
        self._ids_swept_to: bytes | None = store.get("meta", IDS_SWEPT_TO) or None
        self._ids_position_saved = self._ids_swept_to   # what the last save put
        self._ids_position_saved_ms: int | None = None
        # The retention clock (`retention_now_ms`): where the last run left it; for books
        # from before it, their newest record's time (never the wall clock's word alone).
        saved = store.get("meta", RETENTION_CLOCK)
        newest_ms = self._books_newest_ms()
        self._notice_clock_far_from_books(newest_ms)
        self._retention_ms = int(saved) if saved else newest_ms
        if not saved:      # at once, as the blacklist's: a first pass then writes nothing
            store.write_now("meta", RETENTION_CLOCK, str(newest_ms).encode())
        self._retention_saved_ms = self._retention_ms
        self._retention_elapsed_ms = clock.elapsed_ms()
        # How far behind the wall clock it starts (a stop, or a clock set ahead before the
        # start): only this much may it make up faster than time passes. A jump while
        # running, believed or not, is never made up faster.
        self._retention_catch_up_ms = max(0, clock.now_ms() - self._retention_ms)
        # Where the books stood at this start (`_id_cutoffs`): ids remembered up to it (plus
        # the retention clock's save interval, which it may lag by) age from it at 1x.
        self._started_ms = max(self._retention_ms, newest_ms)
        self._started_elapsed_ms = self._retention_elapsed_ms
        # The ids the database held when the sweep's cycle under way started (`ids_to_sweep`).
        self._ids_held_at_cycle_start = 0
        # When a sweep that reached the last id last asked for the logged ids to be written
        # back (ledger ms; None: never), so a cycle is never short of them for long.
        self._write_back_asked_ms: int | None = None
        # Requests (and housekeeping passes) that raised and were undone; exported as a metric.
        self.failures = 0
        self._request_effects = 0
        self._request_holds_open = 0

    # ----------------------------------------------------------- one request, all or nothing
    def begin_request(self) -> None:
        """Everything until `end_request` can be undone by `rollback_request`; and it all
        happens at one time (`now_ms`), read from the clock once."""
        self.store.begin_request()
        self._request_ms = self.clock.now_ms()
        self._request_effects = len(self._effects)
        self._request_holds_open = self.holds.open_count

    def end_request(self) -> None:
        self.store.end_request()
        self._request_ms = None

    def now_ms(self) -> int:
        """The time of the request being executed (every record it writes carries the same
        time, the day its limit counts on is the day it settles on); outside one, the clock's."""
        request_ms = self._request_ms
        return self.clock.now_ms() if request_ms is None else request_ms

    def rollback_request(self) -> None:
        """Undo a request that raised: its writes, its effects and what it cached."""
        self.store.rollback()
        del self._effects[self._request_effects:]
        self.holds.open_count = self._request_holds_open
        self._credentials.clear()  # read through the overlay again on next use

    # ----------------------------------------------------------- after commit
    def emit(self, effect) -> None:
        """Ask the shell for `effect` (switch.ledger.effects) once the open batch is durable;
        it is dropped if the commit fails or the request is undone."""
        self._effects.append(effect)

    def take_effects(self) -> list:
        """The effects of everything executed since the last call, in order."""
        effects, self._effects = self._effects, []
        if self.store.last_txn > self._effects_last_txn:
            self._effects_last_txn = self.store.last_txn
            effects.append(JournalAdvanced(self.store.last_txn))
        return effects

    def change_blacklist(self, school: str, add=(), remove=()) -> int:
        """Change the school's list; the push goes out after commit. Returns the version."""
        message = self.blacklist.change(school, add, remove)
        if message is not None:
            self.emit(BlacklistPush(school, message))
        return self.blacklist.version(school)

    # ----------------------------------------------------------- credentials
    def credential(self, who: str) -> Credential | None:
        if who in self._credentials:
            return self._credentials[who]
        data = self.store.get("credentials", who.encode())
        try:
            credential = None if data is None else Credential.from_bytes(who, data, self.master)
        except SealError:
            # Copied from another credential's record, or tampered with: it signs on no one.
            log.error("event=credential_unsealable who=%s", who)
            credential = None
        if len(self._credentials) > 100_000:
            self._credentials.clear()
        self._credentials[who] = credential
        return credential

    def live_key(self, who: str) -> bytes | None:
        credential = self.credential(who)
        return None if credential is None or credential.revoked else credential.key

    def save_credential(self, credential: Credential) -> None:
        self._credentials[credential.who] = credential
        self.store.put("credentials", credential.who.encode(), credential.to_bytes(self.master))

    def discard_uncommitted(self) -> None:
        """A commit failed: every write not on disk, the effects asked for and what was
        derived from them are gone; txn numbers restart from disk."""
        self._effects = []
        self.store.discard_uncommitted()
        self._credentials.clear()
        self.holds.recount()
        self._effects_last_txn = self.store.last_txn

    # ----------------------------------------------------------- accounts
    def account(self, account_id: str) -> bytearray | None:
        """The account record, safe to change in place (then `save_account`)."""
        return self.store.get_mutable("accounts", account_id.encode())

    def account_as_read(self, account_id: str) -> bytes | bytearray | None:
        """The account record as the store holds it, not to be changed: a reader that
        decides on a copy of its own (the plain debit) then copies it once, not twice."""
        return self.store.get("accounts", account_id.encode())

    def save_account(self, account_id: str, record: bytearray) -> None:
        assert len(record) == layout.ACCOUNT_RECORD_SIZE
        self.store.put("accounts", account_id.encode(), record)

    def account_info(self, account_id: str) -> dict:
        data = self.store.get("account_info", account_id.encode())
        return {} if data is None else unpack(data)

    def save_account_info(self, account_id: str, info: dict) -> None:
        self.store.put("account_info", account_id.encode(), _pack(info))

    def school(self, record):
        # The 8 raw bytes are the cache key: decoding them showed in the debit profile.
        raw = bytes(record[_SCHOOL_SLICE])
        school = self._schools_by_raw.get(raw)
        if school is None:
            school = self._schools_by_raw[raw] = self.config.schools.get(layout.school_of(record))
        return school

    def school_limits(self, school) -> SchoolLimits:
        """The school's payment bounds, built once: a payment should not rebuild them."""
        bounds = self._limits_by_school.get(school.code)
        if bounds is None:
            bounds = self._limits_by_school[school.code] = SchoolLimits.of(
                school, self.config.max_amount_fen)
        return bounds

    # ----------------------------------------------------------- the double-tap guard
    def last_tap(self, account_id: str, who: str) -> bytearray | None:
        """The account's last approved payment at terminal `who` (layout.TAP_*), or None."""
        return self.store.get_mutable("last_taps", account_id.encode() + b"\0" + who.encode())

    def save_last_tap(self, account_id: str, who: str, tap: bytearray) -> None:
        assert len(tap) == layout.TAP_RECORD_SIZE
        self.store.put("last_taps", account_id.encode() + b"\0" + who.encode(), tap)

    def forget_last_tap(self, account_id: str, who: str) -> None:
        self.store.delete("last_taps", account_id.encode() + b"\0" + who.encode())

    # ----------------------------------------------------------- meal periods
    def meal_record(self, period: int, account_id: str) -> bytearray | None:
        """The account's count in meal `period` (layout.MEAL_*), or None."""
        return self.store.get_mutable("meal_counts", period.to_bytes(8, "big") + account_id.encode())

    def save_meal_record(self, period: int, account_id: str, meal: bytearray) -> None:
        assert len(meal) == layout.MEAL_RECORD_SIZE
        self.store.put("meal_counts", period.to_bytes(8, "big") + account_id.encode(), meal)

    def forget_meals_before(self, period: int, count_max: int) -> int:
        """Forget up to `count_max` committed counts of periods below `period`."""
        return self._forget_below("meal_counts", period, count_max)

    def _forget_below(self, db: str, number: int, count_max: int) -> int:
        """Delete up to `count_max` committed keys of `db` whose 8-byte big-endian head is
        below `number`; how many were deleted."""
        limit = number.to_bytes(8, "big")
        forgotten = 0
        for key, _ in self.store.committed_items(db):
            if key[:8] >= limit or forgotten >= count_max:
                break
            self.store.delete(db, key)
            forgotten += 1
        return forgotten

    # ----------------------------------------------------------- dorm rooms
    def index_room(self, school: str, account_id: str) -> None:
        """List a new utility account among its school's (and building's) rooms."""
        by_school, by_building = room_index_keys(school, account_id)
        self.store.put("school_rooms", by_school, b"")
        if by_building is not None:
            self.store.put("building_rooms", by_building, b"")

    def rooms(self, school: str, building: str | None, prefix: str, after: str | None,
              count: int) -> tuple[list[str], bool]:
        """Up to `count` room account ids of `school` (in `building` when given) starting
        with `prefix`, above `after`, in account-id order, and whether more follow."""
        if building is None:
            db, head = "school_rooms", school.encode() + b"\0"
        else:
            db, head = "building_rooms", school.encode() + b"\0" + building.encode() + b"\0"
        low = head + prefix.encode()
        # An `after` below the prefix's range would start the scan outside it.
        after_key = None if after is None or head + after.encode() < low else head + after.encode()
        keys, more = self.store.keys_after(db, low, after_key, count)
        return [key[len(head):].decode() for key in keys], more

    # ----------------------------------------------------------- cards
    def card(self, card_id: str):
        """[account id, state, changed_at_ms] or None."""
        data = self.store.get("cards", card_id.encode())
        return None if data is None else unpack(data)

    def save_card(self, card_id: str, account_id: str, state: int, changed_at_ms: int) -> None:
        self.store.put("cards", card_id.encode(), _pack([account_id, state, changed_at_ms]))
        self.store.put("account_cards", account_id.encode() + b"\0" + card_id.encode(), b"")

    def lost_periods(self, card_id: str) -> list:
        """[[lost at ms, found at ms], ...], oldest first: the card's times lost and found."""
        data = self.store.get("card_lost_periods", card_id.encode())
        return [] if data is None else unpack(data)

    def note_lost_period(self, card_id: str, lost_ms: int, found_ms: int) -> None:
        periods = self.lost_periods(card_id) + [[lost_ms, found_ms]]
        self.store.put("card_lost_periods", card_id.encode(),
                       _pack(periods[-limits.card_lost_periods_kept_max:]))

    def cards_of(self, account_id: str) -> list[str]:
        """The account's cards in card-id order (at most `cards_per_account_max` + 1, so a
        caller can tell an account that is full)."""
        prefix = account_id.encode() + b"\0"
        return [key[len(prefix):].decode() for key in self.store.keys_with_prefix(
            "account_cards", prefix, limits.cards_per_account_max + 1)]

    # ----------------------------------------------------------- journal
    def append_journal(self, kind: str, account_id: str, school: str, amount: int, balance: int,
                       credential: Credential | None, ref,
                       account_record: bytearray | None = None, **extra) -> int:
        """Journal a record of the account's and make it the head of the account's history:
        the record names the account's previous txn (`prev`, 0 for its first), the account
        record its newest (layout.LAST_TXN). A caller that changed its copy of the account
        record either saves it first (this then changes the open batch's copy in place) or
        hands it over as `account_record`, which is saved here once, head and all."""
        txn = self.store.next_txn()
        account = self.account(account_id) if account_record is None else account_record
        record = {"txn": txn, "at": self.now_ms(), "kind": kind, "account": account_id,
                  "school": school, "amount": amount, "balance": balance,
                  "who": credential.who if credential else None,
                  "merchant": credential.merchant if credential else None, "ref": ref,
                  "prev": layout.get(account, layout.LAST_TXN)}
        record.update(extra)
        self.store.put("journal", txn_key(txn), _pack(record))
        if layout.set_history_head(account, txn) % limits.records_between_history_marks == 0:
            self.store.put("history_marks", account_id.encode() + b"\0" + txn_key(txn), b"")
        self.save_account(account_id, account)
        return txn

    def journal_record(self, txn: int) -> dict | None:
        data = self.store.get("journal", txn_key(txn))
        return None if data is None else unpack(data)

    # ----------------------------------------------------------- settlement
    def count_for_settlement(self, who: str, school, at_ms: int, amount: int,
                             count: int = 1) -> None:
        """Add a till's successful debit (or, negative, its reversal) to its day's totals."""
        key = who.encode() + b"\0" + school.days.day_name(school.days.day_of(at_ms)).encode()
        data = self.store.get("settlement", key)
        day_count, day_total = (0, 0) if data is None else _SETTLEMENT.unpack(data)
        self.store.put("settlement", key, _SETTLEMENT.pack(day_count + count, day_total + amount))

    def settlement(self, who: str, day_name: str) -> tuple[int, int]:
        data = self.store.get("settlement", who.encode() + b"\0" + day_name.encode())
        return (0, 0) if data is None else _SETTLEMENT.unpack(data)

    # ----------------------------------------------------------- idempotency
    def idempotency_key(self, who: str, request_id) -> bytes:
        """Where the reply to `who`'s request `request_id` is remembered."""
        return who.encode() + b"\0" + _pack(request_id)

    def remembers(self, key: bytes) -> bool:
        """Whether a reply is remembered at `key` (`idempotency_key`): the plain debit asks
        this and then remembers at the same key, built once."""
        return self.store.get("idempotency", key) is not None

    def fingerprint(self, request_type: str, values: list) -> bytes:
        # Keyed, so a stored fingerprint reveals nothing of a PIN it covered.
        keyed = self._fingerprint_hash.copy()
        keyed.update(_pack([request_type, values]))
        return keyed.digest()

    def recall(self, who: str, request_id):
        """(type, fingerprint, reply) remembered for this id, or None."""
        key = self.idempotency_key(who, request_id)
        data = self.store.get("idempotency", key)
        if data is None:
            return None
        request_type, fingerprint, reply, _ = unpack(data)
        if type(reply) is bytes:   # it holds a secret: remembered sealed
            reply = unpack(self.master.open(sealing.REPLY, key, reply))
        return request_type, fingerprint, reply

    def remember(self, who: str, request_id, request_type: str, fingerprint: bytes,
                 reply: dict) -> None:
        self.remember_at(self.idempotency_key(who, request_id), request_type, fingerprint,
                         reply)

    def remember_at(self, key: bytes, request_type: str, fingerprint: bytes,
                    reply: dict) -> None:
        """`remember` at a key from `idempotency_key`."""
        now_ms = self.now_ms()
        remembered = self.master.seal(sealing.REPLY, key, _pack(reply)) \
            if sealing.holds_secret(reply) else reply
        self.store.put("idempotency", key, _pack([request_type, fingerprint, remembered, now_ms]))

    # ----------------------------------------------------------- the retention clock
    def retention_now_ms(self) -> int:
        """The time by which ids and grants are forgotten: the wall clock's (`now_ms`), but
        never further past where it stood than the time elapsed since (the clock's
        `elapsed_ms`, which no one sets), and where it stood is carried from run to run. What
        it was behind the wall clock at the start (a stop, or a clock set ahead before it)
        it makes up at most `retention_clock_speed_max` times as fast. So a jump ahead while
        running, believed after `clock_jump_confirm_s` (docs/PROTOCOL.md §7.7), forgets no
        id before its retention has really passed; a start on a clock a year ahead forgets
        none before a quarter of it: put right and sent the same orders again, the switch
        answers replays, not second credits."""
        elapsed_ms = self.clock.elapsed_ms()
        passed_ms = max(0, elapsed_ms - self._retention_elapsed_ms)
        self._retention_elapsed_ms = elapsed_ms
        now_ms = self.now_ms()
        # It moves on with the time that passed whatever the wall clock does, and only the
        # reading is capped by the wall clock: a clock stepped back (an RTC reset at boot,
        # an operator's slip) is followed while it is behind and leaves no lag behind it.
        paced_ms = self._retention_ms + passed_ms
        if now_ms > paced_ms:
            made_up_ms = min(self._retention_catch_up_ms, now_ms - paced_ms,
                             passed_ms * (limits.retention_clock_speed_max - 1))
            self._retention_catch_up_ms -= made_up_ms
            paced_ms += made_up_ms
        self._retention_ms = paced_ms
        return min(now_ms, paced_ms)

    def _id_cutoffs(self) -> tuple:
        """(started_ms, (cutoff, credits' cutoff) of ids remembered up to it, the same of
        the others). The retention clock may make up a start's lag four times as fast, which
        would forget an id remembered before a start on a clock set ahead after a quarter of
        its retention (a till's offline record sent again once the clock is put right, taken
        twice). Ids remembered before this start are aged from where the books stood at it,
        at the pace time really passes: each is kept at least its retention of running, at
        most that past the start (the lag of a summer break is bounded by it)."""
        retention_ms = self.config.idempotency_retention_s * 1000
        credit_ms = max(limits.credit_ids_retention_s * 1000, retention_ms)
        since_ms = self.retention_now_ms()
        before_ms = min(since_ms, self._started_ms
                        + max(0, self.clock.elapsed_ms() - self._started_elapsed_ms))
        return (self._started_ms + limits.retention_clock_saved_every_s * 1000,
                (before_ms - retention_ms, before_ms - credit_ms),
                (since_ms - retention_ms, since_ms - credit_ms))

    def save_retention_clock(self) -> None:
        """Into the open batch, when it moved `retention_clock_saved_every_s` past the last
        save (it never moves back): a restart starts it at most that far behind, which only
        keeps ids longer."""
        now_ms = self._retention_ms
        saved_ms = self._retention_saved_ms
        if saved_ms is not None and 0 <= now_ms - saved_ms < \
                limits.retention_clock_saved_every_s * 1000:
            return
        self.store.put("meta", RETENTION_CLOCK, str(now_ms).encode())
        self._retention_saved_ms = now_ms

    def _notice_clock_far_from_books(self, newest_ms: int) -> None:
        """A start whose clock is months past the books' newest record, or behind it, is
        said once: the switch believes it (docs/PROTOCOL.md §7.7), and if the host's clock
        is wrong every record it writes will carry the wrong time."""
        now_ms = self.clock.now_ms()
        ahead_s = (now_ms - newest_ms) / 1000
        if ahead_s > limits.clock_ahead_of_books_noticed_s or ahead_s < -limits.clock_jump_s_max:
            log.warning("event=clock_far_from_books wall_ms=%d books_newest_ms=%d ahead_s=%.0f "
                        "advice=check_the_host_clock_(a_summer_break_is_fine)",
                        now_ms, newest_ms, ahead_s)

    def _books_newest_ms(self) -> int:
        """The time of the newest journal record; the wall clock's for empty books."""
        last = self.store.last_txn
        record = self.journal_record(last) if last else None
        return record["at"] if record is not None else self.clock.now_ms()

    def ids_to_sweep(self) -> int:
        """The remembered ids the sweep's cycle under way paces itself by: those the database
        held when it started, or holds now if more. Set at its start, so the ids it forgets
        (all of them, after a switch stood still past the retention) do not slow the rest of
        the cycle; a cycle paced by the count left took six times as long."""
        held = self.store.committed_entries("idempotency")
        if self._ids_swept_to is None:       # this pass starts a cycle at the first id
            self._ids_held_at_cycle_start = held
        return max(held, self._ids_held_at_cycle_start)

    def forget_old_ids(self, keys_max: int) -> int:
        """Visit up to `keys_max` committed remembered ids from where the last pass stopped and
        forget those remembered longer ago than the retention period; a pass that reaches the
        last id ends there, the next starts again at the first. Returns how many were
        forgotten.

        The sweep is the only retention: an id is kept at least the retention period and at
        most that plus two cycles through every id and `ids_write_back_asked_every_s`
        (docs/RELIABILITY.md). An index by time would cost each remembered id a second key,
        a randomly placed page in every commit.

        Ids still in the log (persistence/writeback.py) are not in the database the sweep
        walks: a pass that reaches the last id asks for them to be written back, at most
        every `ids_write_back_asked_every_s`, which a busy switch does sooner by itself."""
        if keys_max <= 0:
            return 0     # a pass that may visit nothing stays where the last one stopped
        now_ms = self.now_ms()
        cutoffs = self._id_cutoffs()
        items = self.store.committed_after("idempotency", self._ids_swept_to, keys_max + 1)
        self._ids_swept_to = None   # unless the pass stops short of the last id
        if len(items) > keys_max:
            items = items[:keys_max]
            self._ids_swept_to = items[-1][0]
        forgotten = 0
        # The later cutoff of the two (since_start's) bounds them both.
        if not none_remembered_before(items, cutoffs[2][0]):
            for key, data in items:
                if _forgettable(data, cutoffs, remembered_at_ms_read_fast):
                    # The open batch may hold it again, newer (a tombstone, then its original).
                    current = self.store.get("idempotency", key)
                    if current is not None and _forgettable(current, cutoffs, _remembered_at_ms):
                        self.store.delete("idempotency", key)
                        forgotten += 1
        self._save_sweep_position(now_ms, forgotten)
        self.save_retention_clock()     # with what it decided: a restart starts from it
        asked = self._write_back_asked_ms
        if self._ids_swept_to is None and (
                asked is None or not 0 <= now_ms - asked < limits.ids_write_back_asked_every_s * 1000):
            self.store.write_back_soon()
            self._write_back_asked_ms = now_ms
        return forgotten

    def _save_sweep_position(self, now_ms: int, forgotten: int) -> None:
        """Where the sweep stands, into the open batch when it already holds writes (the
        pass forgot ids, or requests wrote), else at most every
        `ids_sweep_position_saved_every_s`, so an idle switch does not commit every pass;
        at once when the last save was undone. A restart goes on from the position saved,
        at most that long behind, and visits those ids again: it only keeps them longer,
        never forgets one early."""
        position = self._ids_swept_to
        stored = self.store.get("meta", IDS_SWEPT_TO)
        if position == stored:
            return
        saved_ms = self._ids_position_saved_ms
        if stored != self._ids_position_saved:
            saved_ms = None   # the last save was undone (its pass rolled back, its commit failed)
        if not forgotten and not self.store.uncommitted_writes and saved_ms is not None \
                and 0 <= now_ms - saved_ms < limits.ids_sweep_position_saved_every_s * 1000:
            return
        if position is None:
            self.store.delete("meta", IDS_SWEPT_TO)   # the next pass starts at the first id
        else:
            self.store.put("meta", IDS_SWEPT_TO, position)
        self._ids_position_saved = position
        self._ids_position_saved_ms = now_ms

    # ----------------------------------------------------------- history of one account
    def account_txns_before(self, account_id: str, before_txn: int | None):
        """The account's committed txns, newest first, below `before_txn` when given: a walk
        back along the `prev` of its records from its head (layout.LAST_TXN), or from the
        first history mark above `before_txn`: at most `records_between_history_marks` records of the
        account are passed over before the first one below it."""
        account = self.store.get_committed("accounts", account_id.encode())
        txn = 0 if account is None else layout.get(account, layout.LAST_TXN)
        if before_txn is not None:
            start = self._committed_journal_record(before_txn)
            if start is not None and start["account"] == account_id:
                txn = start["prev"]   # a page's `next`: go on from it, not from the head
            else:
                prefix = account_id.encode() + b"\0"
                for key, _ in self.store.committed_items("history_marks", prefix,
                                                         start=prefix + txn_key(before_txn)):
                    txn = int.from_bytes(key[len(prefix):], "big")
                    break
        while txn:
            if before_txn is None or txn < before_txn:
                yield txn
            txn = self._committed_journal_record(txn)["prev"]

    def _committed_journal_record(self, txn: int) -> dict | None:
        data = self.store.get_committed("journal", txn_key(txn))
        return None if data is None else unpack(data)

    # ----------------------------------------------------------- QR codes
    def qr_secret(self, account_id: str) -> bytes | None:
        sealed = self.store.get("qr_secrets", account_id.encode())
        return None if sealed is None else self.master.open(sealing.QR_SECRET,
                                                            account_id.encode(), sealed)

    def save_qr_secret(self, account_id: str, secret: bytes) -> None:
        self.store.put("qr_secrets", account_id.encode(),
                       self.master.seal(sealing.QR_SECRET, account_id.encode(), secret))

    def qr_code_used(self, used_key: bytes) -> bool:
        return self.store.get("qr_used", used_key) is not None

    def mark_qr_code_used(self, used_key: bytes) -> None:
        self.store.put("qr_used", used_key, b"")

    def qr_floor_step(self) -> int:
        """Codes of a step below this are expired whatever the clock says."""
        data = self.store.get("meta", b"qr_floor_step")
        return 0 if data is None else int(data)

    def forget_used_qr_codes_below(self, step: int, count_max: int) -> int:
        """Forget up to `count_max` used codes of steps below `step`; when none is left,
        raise the floor to `step`. Returns how many were forgotten."""
        forgotten = self._forget_below("qr_used", step, count_max)
        if forgotten < count_max:
            self.store.put("meta", b"qr_floor_step", str(step).encode())
        return forgotten

    # ----------------------------------------------------------- closed accounts
    def keep_closed_account_tap(self, credential: Credential, record_id, account_id: str,
                                card_id: str, amount: int, at_ms: int) -> None:
        """Keep an offline tap refused `account_closed` for the operator: the meal was eaten,
        its money is collected by hand (listed by `python -m switch closed-taps`).

        Its "received" time is after every tap kept before it, even on a clock stepped
        back: a listing's `--after` (the last one it showed) then never hides a later tap,
        which would be a meal never collected."""
        kept_last = self.store.get("meta", CLOSED_TAPS_RECEIVED_LAST)
        received_ms = self.now_ms()
        if kept_last is not None:
            received_ms = max(received_ms, int(kept_last) + 1)
        self.store.put("meta", CLOSED_TAPS_RECEIVED_LAST, str(received_ms).encode())
        key = (received_ms.to_bytes(8, "big") + credential.who.encode() + b"\0"
               + _pack(record_id))
        self.store.put("closed_account_taps", key, _pack({
            "account": account_id, "school": credential.school, "card": card_id,
            "amount": amount, "at": at_ms, "received_at": received_ms, "who": credential.who,
            "merchant": credential.merchant, "id": record_id}))

    def _note_time_zones(self) -> None:
        """Each school's time zone is kept in `meta`; a start under another one is said once
        (it is allowed: a zone set wrong is put right so). What the books count by local
        day (today's spending, the tills' day totals, meal periods, subsidy terms) was
        counted in the old zone, and today's day changes at the new zone's midnight."""
        for code, school in sorted(self.config.schools.items()):
            key = SCHOOL_TIME_ZONE_PREFIX + code.encode()
            kept = self.store.get("meta", key)
            zone = school.time_zone.encode()
            if kept == zone:
                continue
            if kept is not None:
                log.warning("event=config_questionable school=%s time_zone=%s was=%s "
                            "why=days_counted_before_are_the_old_zones_the_day_boundary_moves",
                            code, school.time_zone, kept.decode())
            self.store.write_now("meta", key, zone)

    def _restart_blacklists_after_restore(self) -> None:
        """The first open after a `restore`: every configured school's blacklist starts past
        the versions tills saw since the backup (Blacklist.start_after_restore)."""
        restores = self.store.get("meta", BLACKLIST_RESTORES)
        if restores is None or restores == self.store.get("meta", BLACKLIST_RESTORES_HANDLED):
            return
        for school in sorted(self.config.schools):
            version = self.blacklist.start_after_restore(school)
            log.warning("event=blacklist_restarted_after_restore school=%s version=%d "
                        "action=every_till_loads_the_full_list", school, version)
        self.store.write_now("meta", BLACKLIST_RESTORES_HANDLED, restores)

    # ----------------------------------------------------------- reversals
    # The first reverse of a target is remembered as a request id of its own, `reversal_id`,
    # so the id sweep forgets it with the ids (it was kept for ever in a table of its own),
    # beside the payment it judged: a till reuses its ids once they are forgotten, and the
    # reversal of an older payment under the same id is not this one's.
    def first_reversal(self, who: str, target) -> tuple[dict, int | None] | None:
        """(the reply to the first reverse of `target` by `who`, the txn of the payment it
        judged, None when none was there to reverse), or None."""
        seen = self.recall(who, reversal_id(target))
        if seen is None:
            return None
        kept = seen[2]
        return kept["reply"], kept["original"]

    def save_first_reversal(self, who: str, target, reply: dict, original: int | None) -> None:
        self.remember(who, reversal_id(target), REVERSAL_KEPT, b"",
                      {"reply": reply, "original": original})


# No request's id is an array (switch/identifiers.py): this id cannot be a request's.
REVERSAL_KEPT = "reverse_first"   # the idempotency type the first reverse is kept under


def reversal_id(target) -> list:
    return ["reverse_of", target]


def has_credential(store, who: str) -> bool:
    return store.get("credentials", who.encode()) is not None


def write_first_credential(store, credential: Credential) -> None:
    """A data dir's first credential (the admin), written at once, before any Ledger."""
    store.write_now("credentials", credential.who.encode(), credential.to_bytes(store.master))
