"""The write-back's key order: the compiled runs against the plain Python reference, on the
same keys, taken in the same pieces (switch/persistence/key_order.py)."""

import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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
@given(keys=st.sets(st.binary(max_size=24), max_size=120),
       run_keys=st.integers(1, 40), pieces=st.lists(st.integers(0, 30), max_size=8))
def test_compiled_and_reference_give_the_same_order(keys, run_keys, pieces):
    keys = list(keys)
    expected = _all_in_pieces(ReferenceKeyRuns(list(keys), run_keys), pieces)
    assert expected == sorted(keys)
    assert _all_in_pieces(key_order.KeyRuns(list(keys), run_keys), pieces) == expected


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
