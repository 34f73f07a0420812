"""A write-back round's keys of one database in key order, sorted a run at a time.

`KeyRuns` is the compiled one (switch/persistence/_key_order.pyx) where it was built, else
`ReferenceKeyRuns`, this plain Python model of it: the same interface and the same results
(tests/persistence/test_key_order.py runs both on the same keys), for a tree whose extensions
were not built and as the reference the compiled one is checked against.
"""

import heapq

RUN_KEYS_MAX = 1 << 40   # as the compiled one's: far above any round, far below an overflow


class ReferenceKeyRuns:
    """The keys of `keys` (distinct bytes; the list is taken over), in key order: `sort_next`
    sorts the next run of at most `run_keys` of them; once every run is sorted (`ready`),
    `take` gives the next keys in order."""

    def __init__(self, keys: list, run_keys: int):
        if not 1 <= run_keys <= RUN_KEYS_MAX:
            raise ValueError(f"run_keys must be 1 to {RUN_KEYS_MAX}")
        self._keys = keys
        self._run_keys = run_keys
        self.length = len(keys)
        self._runs = -(-self.length // run_keys)
        self._runs_sorted = 0
        self._merged = None
        self._taken = 0

    @property
    def ready(self) -> bool:
        return self._runs_sorted == self._runs

    def sort_next(self) -> int:
        """Sort the next run; how many keys it held (0: every run was sorted already)."""
        if self.ready:
            return 0
        if len(self._keys) != self.length:
            raise RuntimeError("the keys' list changed after it was handed over")
        start = self._runs_sorted * self._run_keys
        end = min(self.length, start + self._run_keys)
        run = self._keys[start:end]
        for key in run:
            if type(key) is not bytes:
                raise TypeError(f"a key must be bytes, not {type(key).__name__}")
        self._keys[start:end] = sorted(run)
        self._runs_sorted += 1
        return end - start

    def take(self, count: int) -> list:
        """The next `count` keys in order (fewer when fewer are left)."""
        if not self.ready:
            raise RuntimeError("take before every run is sorted")
        if self._merged is None:
            keys, size = self._keys, self._run_keys
            self._merged = list(heapq.merge(*(keys[start:start + size]
                                              for start in range(0, self.length, size))))
        count = max(0, min(count, self.length - self._taken))
        taken = self._merged[self._taken:self._taken + count]
        self._taken += count
        return taken


try:
    from switch.persistence._key_order import KeyRuns
    COMPILED = True
except ImportError:  # pragma: no cover - a tree whose extensions were not built
    KeyRuns = ReferenceKeyRuns
    COMPILED = False
