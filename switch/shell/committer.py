"""Group commit: gather the writes of every request executed since the last commit into
one LMDB transaction and one fsync, off the event loop, then release their replies."""

import logging
import time

import lmdb
import trio

from switch import limits
from switch.ledger.dispatch import failures
from switch.logline import FailureLog

log = logging.getLogger("switch.commit")
# Failed commits on a budget of their own (a full disk fails every one, a few ms apart).
commit_failures = FailureLog(log, limits.failure_tracebacks_per_minute_max)

# Pre-grow the map when a commit leaves it this full, so a batch rarely meets MapFull.


class Committer:
    def __init__(self, store, ledger, metrics, batch_requests_max: int, batch_wait_s: float,
                 batch_done):
        self.store = store
        self.ledger = ledger
        self.metrics = metrics
        self.batch_requests_max = batch_requests_max
        self.batch_wait_s = batch_wait_s
        # batch_done(effects, replies): the server acts on a durable batch's effects and
        # answers its replies ((connection, reply, started_s) each); a failed batch has none.
        self._batch_done = batch_done
        self._held = None             # (batch, effects, replies) being committed
        self._held_durable = False    # whether that batch reached the disk
        # (connection, reply, started_s, reply_bytes) awaiting the next commit; reply_bytes is
        # what the connection reserved for the reply, released with whatever reply goes out.
        self._open: list = []
        self._wake = trio.Event()
        self._idle = trio.lowlevel.ParkingLot()
        # Forwarders park here and wake when a commit makes new journal records readable.
        self.journal_advanced = trio.lowlevel.ParkingLot()
        self.committing = False
        self.commits = 0
        # Once the switch drains, a commit writes back all that is left of the round being
        # written back and starts no other, and no more commits are made for the write-back:
        # the store's close writes back the last round's log in one transaction. A slice a
        # commit (256 writes an fsync when idle) took the whole 10 s of the drain's bound at
        # a million accounts; leaving the whole to the close rewrote the part already written
        # back (its log is dropped only when the round ends).
        self.draining = False

    # ------------------------------------------------------------- event loop side
    def add(self, connection, reply: dict, started_s: float, reply_bytes: int) -> None:
        self._open.append((connection, reply, started_s, reply_bytes))
        self._wake.set()

    def kick(self) -> None:
        """Commit writes made outside any request (housekeeping) with the next batch."""
        if self.store.open_writes:
            self._wake.set()

    @property
    def queued(self) -> int:
        return len(self._open)

    @property
    def full(self) -> bool:
        return len(self._open) >= self.batch_requests_max

    def _work_waiting(self) -> bool:
        """Whether something waits for a commit: requests, writes made outside any, or the
        write-back of logged writes (draining: of the round being written back only)."""
        if self.draining:
            return bool(self._open or self.store.uncommitted_writes
                        or not self.store.round_written_back)
        return bool(self._open or self.store.open_writes)

    async def wait_idle(self, draining: bool = False) -> None:
        """Until nothing is waiting for a commit. `draining` (the shutdown): from now on
        the round being written back is finished by one commit, and the last round left to
        the store's close."""
        if draining:
            self.draining = True
        while self.committing or self._work_waiting():
            await self._idle.park()

    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        busy = False
        while True:
            if not self._work_waiting():
                self._idle.unpark_all()
                await self._wake.wait()
            self._wake = trio.Event()
            if not busy and self.batch_wait_s and len(self._open) < self.batch_requests_max:
                # At light load a short wait lets a few more requests share the fsync.
                await trio.sleep(self.batch_wait_s)
            try:
                await self._commit_open_batch()
            except Exception:
                # A fault of ours around a commit: it is logged and counted, every request
                # it held is still answered, and the committer goes on: every till waits on it.
                failures.failed("committer_failed")
                self.metrics.failures.labels("commit").inc()
                self._recover()
                await trio.sleep(limits.task_restart_delay_s)
            busy = bool(self._open)

    async def _commit_open_batch(self) -> None:
        self.metrics.commit_queue.set(len(self._open))
        replies, self._open = self._open, []
        effects = self.ledger.take_effects()
        batch = self.store.seal(finish_round=self.draining)
        self._held, self._held_durable = (batch, effects, replies), False
        if batch.writes or batch.writes_back:
            self.committing = True
            started = time.perf_counter()
            try:
                handed, began, ended, back = await self._write(batch)
            except Exception as error:
                # On a budget: a full disk fails every commit, one a few ms apart, and a line
                # with its traceback each would flood the log (and journald's rate limit
                # would drop the rest). The cause is on the line itself.
                commit_failures.failed("commit_failed", batch=batch.number,
                                requests=len(replies) + len(self._open), answered="internal",
                                error=f"{type(error).__name__}: {error}")
                self.metrics.commit_failures.inc()
                self._held = None
                self._discard(replies)
                return
            finally:
                self.committing = False
            self._held_durable = True
            self.store.committed(batch)
            self.metrics.commit_duration.observe(time.perf_counter() - started)
            phases = self.metrics.commit_phase
            phases["to_worker"].observe(began - handed)
            phases["write"].observe(ended - began)
            phases["to_loop"].observe(back - ended)
            self.metrics.journal_txn.set(batch.last_txn)
            self.metrics.holds_open.set(self.ledger.holds.open_count)
            self.metrics.write_back_held.set(self.store.logs_pending)
            self.metrics.write_back_round.set(self.store.round_bounds()[0])
            self.commits += 1
            try:
                self._check_map()
            except Exception:  # the batch is durable: its replies must still go out
                failures.failed("map_check_failed", batch=batch.number)
                self.metrics.failures.labels("commit").inc()
        self.metrics.commit_batch_size.observe(len(replies))
        self._held = None
        self._batch_done(effects, replies)

    def _recover(self) -> None:
        """After a fault around a commit: answer what it held, truthfully. Written to disk:
        the replies as they are (the money moved); else `internal`, and nothing stays."""
        held, self._held = self._held, None
        if held is None:
            return
        batch, effects, replies = held
        if self._held_durable:
            self.store.committed(batch)  # again: it only moves reads on to what is on disk
            self._batch_done(effects, replies)
        else:
            self._discard(replies)

    def _discard(self, replies) -> None:
        """A batch did not reach the disk: it, and the batch executed after it (whose
        decisions depended on it), are answered `internal` and leave nothing behind."""
        self._fail(replies + self._open)
        self._open = []
        self.ledger.discard_uncommitted()  # the open batch's effects die with it

    async def _write(self, batch) -> tuple[float, float, float, float]:
        """Write the batch (growing the map as it must); returns when the write that took
        was handed to the worker thread, began, ended, and was taken back by the loop."""
        for _ in range(limits.commit_retries_map_full_max):
            try:
                handed = time.perf_counter()
                began, ended = await trio.to_thread.run_sync(self._timed_write, batch)
                return handed, began, ended, time.perf_counter()
            except lmdb.MapFullError:
                # The aborted transaction left nothing behind; grow and write it again.
                new_size = self.store.grow_map()
                log.warning("event=map_grown size_bytes=%d", new_size)
        raise RuntimeError("LMDB map still full after growing")

    def _timed_write(self, batch) -> tuple[float, float]:
        """On the worker thread: the write, and when it began and ended."""
        began = time.perf_counter()
        self.store.write_batch(batch)
        return began, time.perf_counter()

    def _fail(self, replies) -> None:
        self._batch_done([], [(connection, {"t": reply.get("t"), "re": reply.get("re"),
                                            "code": "internal"}, started_s, reply_bytes)
                              for connection, reply, started_s, reply_bytes in replies])

    def _check_map(self) -> None:
        used, size = self.store.map_usage()
        self.metrics.map_used.set(used)
        self.metrics.map_size.set(size)
        if used > size * limits.lmdb_map_grow_threshold_ratio:
            new_size = self.store.grow_map()
            self.metrics.map_size.set(new_size)
            # Said as the growth on MapFull is: a map growing fast is a disk filling (a
            # killed backup's reader slot kept pages from reuse, or a real load).
            log.warning("event=map_grown size_bytes=%d used_bytes=%d", new_size, used)
