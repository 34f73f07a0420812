# cython: language_level=3, boundscheck=False, wraparound=False
"""A write-back round's keys of one database, put in key order a run at a time (compiled).

switch/persistence/key_order.py has the plain Python reference model, with the same
interface and the same results (tests/persistence/test_key_order.py runs both).

Why compiled: at a million accounts a round holds about a million keys. A heap of them cost
the event loop about 1.4 µs a key (log2 of a million comparisons of bytes objects scattered in
memory, each popped once), 3 µs a debit; sorting them once in Python held the loop 0.4 s.
Here each key's first 16 bytes are copied, as two big-endian words, beside a pointer to it,
so nearly every comparison is of two integers in one array, and the keys are sorted a run
of at most `run_keys` at a time, a run a commit: no commit stalls the loop for the round.
Once every run is sorted, `take` merges them in order.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.list cimport PyList_New
from cpython.ref cimport PyObject, Py_INCREF, Py_XDECREF
from libc.stdint cimport uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcmp

cdef extern from "Python.h":
    # The same macros, declared to need no GIL: they only read the object's fields.
    Py_ssize_t _size "PyBytes_GET_SIZE"(PyObject*) nogil
    const char* _data "PyBytes_AS_STRING"(PyObject*) nogil
    # Stores the reference it is given (PyList_SET_ITEM steals it), without touching the key:
    # a key's object lies anywhere in memory, and an INCREF and DECREF around the store cost a
    # cache miss a key.
    void _hand_to_list "PyList_SET_ITEM"(object, Py_ssize_t, PyObject*)


# The most keys a run may hold: far above any round (limits.py), far below what would
# overflow the run arithmetic.
RUN_KEYS_MAX = 1 << 40


cdef struct Entry:
    uint64_t head0      # bytes 0-7 of the key, big-endian, zero past its end
    uint64_t head1      # bytes 8-15
    PyObject* key       # a reference this object owns until `take` hands it on


cdef inline uint64_t _word(const unsigned char* data, Py_ssize_t size,
                           Py_ssize_t start) noexcept nogil:
    cdef uint64_t word = 0
    cdef Py_ssize_t i
    for i in range(start, start + 8):
        word = (word << 8) | (data[i] if i < size else 0)
    return word


# Comparisons made by every sort of this process (read by tests through `comparisons()`:
# an order made against quicksort must cost O(n log n) of them, not n²).
cdef unsigned long long _comparisons = 0


def comparisons() -> int:
    return _comparisons


cdef inline int _compare(const Entry* x, const Entry* y) noexcept nogil:
    """<0, 0, >0 as bytes compare: zero padding orders a key before any longer key it
    begins, as in byte order, so unequal heads decide alone."""
    global _comparisons
    _comparisons += 1
    if x.head0 != y.head0:
        return -1 if x.head0 < y.head0 else 1
    if x.head1 != y.head1:
        return -1 if x.head1 < y.head1 else 1
    cdef Py_ssize_t x_size = _size(x.key), y_size = _size(y.key)
    cdef Py_ssize_t common = x_size if x_size < y_size else y_size
    cdef int result
    if common > 16:
        result = memcmp(_data(x.key) + 16, _data(y.key) + 16, common - 16)
        if result:
            return result
    return (x_size > y_size) - (x_size < y_size)


cdef void _sift_down(Entry* entries, Py_ssize_t root, Py_ssize_t end) noexcept nogil:
    cdef Py_ssize_t child
    cdef Entry swap
    while True:
        child = 2 * root + 1
        if child >= end:
            return
        if child + 1 < end and _compare(&entries[child], &entries[child + 1]) < 0:
            child += 1
        if _compare(&entries[root], &entries[child]) >= 0:
            return
        swap = entries[root]; entries[root] = entries[child]; entries[child] = swap
        root = child


cdef void _heapsort(Entry* entries, Py_ssize_t count) noexcept nogil:
    cdef Py_ssize_t start = count // 2, end = count
    cdef Entry swap
    while start > 0:
        start -= 1
        _sift_down(entries, start, count)
    while end > 1:
        end -= 1
        swap = entries[0]; entries[0] = entries[end]; entries[end] = swap
        _sift_down(entries, 0, end)


cdef void _sort(Entry* entries, Py_ssize_t count, int depth) noexcept nogil:
    """Introsort: quicksort (median of three; the smaller side recursed, so the stack is at
    most log2 of the count deep), heapsort for a part still unsorted after `depth`
    partitions (the keys' order is partly a client's: remembered ids are its own, and an
    order made against the median of three costs quicksort n² comparisons), insertion sort
    below 16 entries."""
    cdef Py_ssize_t i, j, middle
    cdef Entry pivot, swap
    while count > 16:
        if depth == 0:
            _heapsort(entries, count)
            return
        depth -= 1
        middle = count // 2
        if _compare(&entries[middle], &entries[0]) < 0:
            swap = entries[middle]; entries[middle] = entries[0]; entries[0] = swap
        if _compare(&entries[count - 1], &entries[0]) < 0:
            swap = entries[count - 1]; entries[count - 1] = entries[0]; entries[0] = swap
        if _compare(&entries[count - 1], &entries[middle]) < 0:
            swap = entries[count - 1]; entries[count - 1] = entries[middle]
            entries[middle] = swap
        pivot = entries[middle]
        i = 0
        j = count - 1
        while True:
            while _compare(&entries[i], &pivot) < 0:
                i += 1
            while _compare(&pivot, &entries[j]) < 0:
                j -= 1
            if i >= j:
                break
            swap = entries[i]; entries[i] = entries[j]; entries[j] = swap
            i += 1
            j -= 1
        # [0, j] <= pivot <= [j + 1, count)
        if j + 1 < count - j - 1:
            _sort(entries, j + 1, depth)
            entries += j + 1
            count -= j + 1
        else:
            _sort(entries + j + 1, count - j - 1, depth)
            count = j + 1
    for i in range(1, count):
        swap = entries[i]
        j = i - 1
        while j >= 0 and _compare(&swap, &entries[j]) < 0:
            entries[j + 1] = entries[j]
            j -= 1
        entries[j + 1] = swap


cdef int _depth_for(Py_ssize_t count) noexcept nogil:
    """Twice log2 of the count: quicksort's partitions before heapsort takes over."""
    cdef int depth = 0
    while count > 1:
        count >>= 1
        depth += 2
    return depth


cdef class KeyRuns:
    """The keys of `keys` (distinct bytes; the list is taken over, not copied, and emptied
    as it is sorted), in key order: `sort_next` sorts the next run of at most `run_keys`
    of them, and once every run is sorted (`ready`), `take` gives the next keys in order."""

    cdef list _keys             # the keys not yet in a sorted run
    cdef Entry* _entries
    cdef Py_ssize_t _count, _run_keys, _runs, _runs_sorted, _taken
    cdef Py_ssize_t* _next      # per run: the index of its next entry not yet taken

    def __cinit__(self, list keys, Py_ssize_t run_keys):
        if not 1 <= run_keys <= RUN_KEYS_MAX:
            raise ValueError(f"run_keys must be 1 to {RUN_KEYS_MAX}")
        self._keys = keys
        self._count = len(keys)
        self._run_keys = run_keys
        self._runs = (self._count + run_keys - 1) // run_keys
        self._entries = <Entry*>malloc(max(self._count, 1) * sizeof(Entry))
        self._next = <Py_ssize_t*>malloc(max(self._runs, 1) * sizeof(Py_ssize_t))
        if self._entries == NULL or self._next == NULL:
            raise MemoryError()
        cdef Py_ssize_t run
        for run in range(self._runs):
            self._next[run] = run * run_keys

    def __dealloc__(self):
        cdef Py_ssize_t run, i, end
        if self._entries != NULL and self._next != NULL:
            # References still owned: sorted runs' entries not yet taken.
            for run in range(self._runs_sorted):
                end = min(self._count, (run + 1) * self._run_keys)
                for i in range(self._next[run], end):
                    Py_XDECREF(self._entries[i].key)
        free(self._entries)
        free(self._next)

    @property
    def length(self) -> int:
        return self._count

    @property
    def ready(self) -> bool:
        return self._runs_sorted == self._runs

    def sort_next(self) -> int:
        """Sort the next run; how many keys it held (0: every run was sorted already)."""
        if self._runs_sorted == self._runs:
            return 0
        if len(self._keys) != self._count:
            raise RuntimeError("the keys' list changed after it was handed over")
        cdef Py_ssize_t start = self._runs_sorted * self._run_keys
        cdef Py_ssize_t end = min(self._count, start + self._run_keys)
        cdef Py_ssize_t i
        cdef object key
        cdef const unsigned char* data
        cdef Py_ssize_t size
        for i in range(start, end):
            key = self._keys[i]
            if type(key) is not bytes:
                raise TypeError(f"a key must be bytes, not {type(key).__name__}")
        for i in range(start, end):
            key = self._keys[i]
            data = <const unsigned char*>PyBytes_AS_STRING(key)
            size = PyBytes_GET_SIZE(key)
            self._entries[i].head0 = _word(data, size, 0)
            self._entries[i].head1 = _word(data, size, 8)
            Py_INCREF(key)
            self._entries[i].key = <PyObject*>key
            self._keys[i] = None    # the entry owns it now: taken keys are freed as they go
        with nogil:
            _sort(self._entries + start, end - start, _depth_for(end - start))
        self._runs_sorted += 1
        if self._runs_sorted == self._runs:
            self._keys = None
        return end - start

    def take(self, Py_ssize_t count) -> list:
        """The next `count` keys in order (fewer when fewer are left), each handed on: this
        object keeps no reference to a key it gave."""
        if self._runs_sorted != self._runs:
            raise RuntimeError("take before every run is sorted")
        count = max(0, min(count, self._count - self._taken))
        cdef list taken = PyList_New(count)
        cdef Py_ssize_t n, run, best, last_run = self._runs - 1
        cdef Py_ssize_t* next_of = self._next
        cdef Entry* entries = self._entries
        for n in range(count):
            best = -1
            # Every run but the last holds `run_keys` entries.
            for run in range(self._runs):
                if next_of[run] < (self._count if run == last_run else (run + 1) * self._run_keys) \
                        and (best < 0 or _compare(&entries[next_of[run]],
                                                  &entries[next_of[best]]) < 0):
                    best = run
            # The entry's reference passes to the list.
            _hand_to_list(taken, n, entries[next_of[best]].key)
            entries[next_of[best]].key = NULL
            next_of[best] += 1
        self._taken += count
        return taken
