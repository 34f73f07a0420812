"""The write-back's key order: the compiled runs against the plain Python reference, on the
same keys, taken in the same pieces (switch/persistence/key_order.py)."""

import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from switch.persistence import _key_order as key_order_compiled
from switch.persistence import key_order
from switch.persistence.key_order import ReferenceKeyRuns

IMPLEMENTATIONS = [pytest.param(ReferenceKeyRuns, id="reference")]
if key_order.COMPILED:
    IMPLEMENTATIONS.append(pytest.param(key_order.KeyRuns, id="compiled"))

# Keys that tell byte order from a careless comparison: empty, NULs (the zero padding of a
# short key's head), keys that begin others, and keys alike in their first 16 bytes (the
# heads) that differ after them.
AWKWARD = [b"", b"\0", b"\0\0", b"A", b"A\0", b"A\0\1", b"A\1", b"\xff", b"\xff" * 9,
           b"x" * 16, b"x" * 16 + b"\0", b"x" * 16 + b"a", b"x" * 17, b"x" * 30,
           b"x" * 15 + b"y", b"x" * 8, b"x" * 7 + b"\0"]


def _all_in_pieces(runs, pieces) -> list:
    while not runs.ready:
        assert runs.sort_next() > 0
    assert runs.sort_next() == 0
    taken = []
    for size in pieces:
        taken.extend(runs.take(size))
    while True:
        more = runs.take(3)
        if not more:
            return taken
        taken.extend(more)


def test_the_compiled_one_is_what_the_switch_uses():
    # `make install` builds it; a tree without it runs the reference (and says so here).
    assert key_order.COMPILED and key_order.KeyRuns is not ReferenceKeyRuns


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("run_keys", [1, 2, 5, 16, 17, 1000])
def test_awkward_keys_come_out_in_byte_order(implementation, run_keys):
    keys = AWKWARD[::-1] + [b"WH%d" % n for n in range(40, 0, -3)]
    runs = implementation(list(keys), run_keys)
    assert runs.length == len(keys) and (runs.ready is (not keys))
    assert _all_in_pieces(runs, [1, 0, 4, 2]) == sorted(keys)


@settings(max_examples=300, deadline=None)
@given(keys=st.sets(st.binary(max_size=40), max_size=400),
       run_keys=st.integers(1, 500), pieces=st.lists(st.integers(0, 60), max_size=8),
       arranged=st.sampled_from(["as drawn", "sorted", "reversed", "organ pipe"]))
def test_compiled_and_reference_give_the_same_order(keys, run_keys, pieces, arranged):
    keys = list(keys)
    if arranged != "as drawn":
        keys.sort(reverse=arranged == "reversed")
        if arranged == "organ pipe":
            keys = keys[::2] + keys[1::2][::-1]
    expected = _all_in_pieces(ReferenceKeyRuns(list(keys), run_keys), pieces)
    assert expected == sorted(keys)
    assert _all_in_pieces(key_order.KeyRuns(list(keys), run_keys), pieces) == expected


def _against_quicksort(count: int) -> list[bytes]:
    """Keys in an order made against the runs' quicksort (McIlroy's adversary, on a
    transcription of its partitions): each comparison fixes values so that the pivot lands
    at an end, and quicksort alone would take about count²/4 comparisons."""
    gas = count
    value = [gas] * count
    state = {"solid": 0, "candidate": 0}

    def compare(x, y):
        if value[x] == gas and value[y] == gas:
            if x == state["candidate"]:
                value[x] = state["solid"]
            else:
                value[y] = state["solid"]
            state["solid"] += 1
        if value[x] == gas:
            state["candidate"] = x
        elif value[y] == gas:
            state["candidate"] = y
        return value[x] - value[y]

    def quicksort(entries, low, size):
        while size > 16:
            middle, first, last = low + size // 2, low, low + size - 1
            for a, b in ((middle, first), (last, first), (last, middle)):
                if compare(entries[a], entries[b]) < 0:
                    entries[a], entries[b] = entries[b], entries[a]
            pivot, i, j = entries[middle], low, low + size - 1
            while True:
                while compare(entries[i], pivot) < 0:
                    i += 1
                while compare(pivot, entries[j]) < 0:
                    j -= 1
                if i >= j:
                    break
                entries[i], entries[j] = entries[j], entries[i]
                i, j = i + 1, j - 1
            left = j - low + 1
            if left < size - left:
                quicksort(entries, low, left)
                low, size = low + left, size - left
            else:
                quicksort(entries, low + left, size - left)
                size = left
    quicksort(list(range(count)), 0, count)
    for index in range(count):   # the few left to the insertion sort: any values above
        if value[index] == gas:
            value[index] = state["solid"]
            state["solid"] += 1
    return [b"%08d" % v for v in value]


def test_an_order_made_against_quicksort_costs_n_log_n_comparisons_not_n_squared():
    """Remembered ids are the tills' own: a till could hand the switch keys in an order
    that makes quicksort quadratic, on the event loop. Past twice log2 n partitions the
    runs heapsort the rest."""
    count = 2_048
    keys = _against_quicksort(count)
    assert len(set(keys)) == count
    runs = key_order.KeyRuns(list(keys), count)
    before = key_order_compiled.comparisons()
    runs.sort_next()
    made = key_order_compiled.comparisons() - before
    assert runs.take(count) == sorted(keys)
    # n log2 n is 22,528 here; quicksort alone made about a million.
    assert made < 4 * count * count.bit_length(), made


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_a_run_size_past_its_bound_and_a_list_changed_after_it_was_handed_over_are_refused(
        implementation):
    for run_keys in (0, -1, key_order.RUN_KEYS_MAX + 1, sys.maxsize):
        with pytest.raises(ValueError):
            implementation([b"a"], run_keys)
    keys = [b"b", b"a", b"c"]
    runs = implementation(keys, 2)
    runs.sort_next()
    keys.clear() if implementation is ReferenceKeyRuns else keys.pop()
    with pytest.raises(RuntimeError):
        runs.sort_next()


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_take_before_every_run_is_sorted_is_refused_and_a_bad_key_changes_nothing(
        implementation):
    runs = implementation([b"b", b"a", b"c"], 2)
    runs.sort_next()
    with pytest.raises(RuntimeError):
        runs.take(1)
    with pytest.raises(ValueError):
        implementation([b"a"], 0)
    mixed = implementation([b"a", "b", b"c"], 3)
    with pytest.raises(TypeError):
        mixed.sort_next()
    assert not mixed.ready


def test_a_key_handed_on_is_no_longer_held_and_the_rest_are_freed_with_the_runs():
    """The runs own their keys once sorted and hand each on when taken: a round's keys are
    freed a slice at a time, and what was never taken is released with the runs."""
    keys = [b"key-%03d" % n for n in range(50)]     # not interned: counted exactly

    def counts():
        return [sys.getrefcount(key) for key in keys]
    before = counts()

    def held():
        return [now - then for now, then in zip(counts(), before)]
    runs = key_order.KeyRuns(list(keys), 7)
    assert held() == [1] * 50                       # in the list it took over
    while runs.sort_next():
        pass
    assert held() == [1] * 50                       # in its entries now, the list emptied
    taken = runs.take(20)
    assert held() == [1] * 50                       # the first 20 are the list's now
    assert taken == keys[:20]
    del taken
    assert held() == [0] * 20 + [1] * 30
    del runs
    assert held() == [0] * 50
