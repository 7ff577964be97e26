"""Go's runq semantics on the native ring, one behaviour per test."""

from __future__ import annotations

import pytest

from gmpd.native import RUNQ_SIZE
from gmpd.shm import NodeMemory


def test_runq_fifo_order(nm: NodeMemory) -> None:
    q = nm.runq(0, 0)
    for g in range(1, 101):
        assert q.put(g) is None
    assert [q.get() for _ in range(100)] == list(range(1, 101))
    assert q.get() is None


def test_runq_runnext_has_priority_and_inherits_time(nm: NodeMemory) -> None:
    q = nm.runq(0, 0)
    q.put(1)
    q.put(2)
    q.put_next(3)
    assert q.get() == 3
    assert q.inherit_time
    assert q.get() == 1
    assert not q.inherit_time


def test_runq_put_next_kicks_old_runnext_to_tail(nm: NodeMemory) -> None:
    q = nm.runq(0, 0)
    q.put(1)
    q.put_next(2)
    q.put_next(3)  # 2 is kicked out behind 1
    assert len(q) == 2
    assert [q.get(), q.get(), q.get(), q.get()] == [3, 1, 2, None]


def test_runq_overflow_hands_out_half_plus_one_in_order(nm: NodeMemory) -> None:
    q = nm.runq(0, 0)
    for g in range(1, RUNQ_SIZE + 1):
        assert q.put(g) is None
    batch = q.put(1000)
    assert batch == (*range(1, 129), 1000)
    assert len(q) == 128
    assert [q.get() for _ in range(128)] == list(range(129, 257))
    assert q.get() is None


def test_runq_overflow_through_put_next_spills_the_kicked_g(nm: NodeMemory) -> None:
    q = nm.runq(0, 0)
    q.put_next(500)
    for g in range(1, RUNQ_SIZE + 1):
        q.put(g)
    batch = q.put_next(600)  # 500 is kicked into a full ring
    assert batch == (*range(1, 129), 500)
    assert q.get() == 600
    assert [q.get() for _ in range(128)] == list(range(129, 257))


@pytest.mark.parametrize("n", [1, 2, 3, 7, 128, 255, 256])
def test_runq_steal_takes_ceil_half_and_leaves_the_rest(nm: NodeMemory, n: int) -> None:
    victim, thief = nm.runq(0, 0), nm.runq(1, 1)
    for g in range(1, n + 1):
        victim.put(g)
    want = n - n // 2
    assert thief.steal(0) == want  # the last grabbed G is returned to run now
    assert len(thief) == want - 1
    assert len(victim) == n - want
    assert [thief.get() for _ in range(want - 1)] == list(range(1, want))
    assert [victim.get() for _ in range(n - want)] == list(range(want + 1, n + 1))


def test_runq_runnext_stolen_only_when_asked(nm: NodeMemory) -> None:
    victim, thief = nm.runq(0, 0), nm.runq(1, 1)
    victim.put_next(7)
    assert thief.steal(0) is None
    assert thief.steal(0, runnext=False) is None
    assert thief.steal(0, runnext=True) == 7
    assert victim.get() is None


def test_runq_steal_prefers_ring_over_runnext(nm: NodeMemory) -> None:
    victim, thief = nm.runq(0, 0), nm.runq(1, 1)
    victim.put(1)
    victim.put_next(2)
    assert thief.steal(0, runnext=True) == 1
    assert victim.get() == 2


def test_runq_empty_edges(nm: NodeMemory) -> None:
    q, thief = nm.runq(0, 0), nm.runq(1, 1)
    assert q.empty()
    assert len(q) == 0
    assert q.get() is None
    assert thief.steal(0, runnext=True) is None
    assert q.drain() == ()
    q.put_next(1)
    assert not q.empty()
    assert len(q) == 0  # runnext is not in the ring


def test_runq_full_edge(nm: NodeMemory) -> None:
    q = nm.runq(0, 0)
    for g in range(1, RUNQ_SIZE + 1):
        assert q.put(g) is None
    assert len(q) == RUNQ_SIZE
    assert q.get() == 1
    assert q.put(RUNQ_SIZE + 1) is None  # one free slot: no spill
    assert len(q) == RUNQ_SIZE


def test_runq_steal_refuses_when_thief_queue_is_half_full(nm: NodeMemory) -> None:
    victim, thief = nm.runq(0, 0), nm.runq(1, 1)
    victim.put(1)
    for g in range(100, 228):
        thief.put(g)
    with pytest.raises(RuntimeError, match="more than 127"):
        thief.steal(0)


def test_runq_drain_takes_runnext_then_ring(nm: NodeMemory) -> None:
    q = nm.runq(0, 0)
    for g in (1, 2, 3):
        q.put(g)
    q.put_next(9)
    assert q.drain() == (9, 1, 2, 3)
    assert q.empty()


def test_runq_counters_wrap_around_2_32() -> None:
    with NodeMemory.create(2, 2, counter_base=2**32 - 300) as node:
        q, thief = node.runq(0, 0), node.runq(1, 1)
        expected: list[int] = []
        for g in range(1, 700):
            batch = q.put(g)
            if batch is not None:
                assert batch[-1] == g
                assert list(batch[:-1]) == expected[:128]
                expected = expected[128:]
            else:
                expected.append(g)
            if g % 3 == 0:
                got = q.get()
                assert got == expected.pop(0)
        stolen = thief.steal(0)
        n = len(expected) - len(expected) // 2
        assert stolen == expected[n - 1]
        assert [thief.get() for _ in range(n - 1)] == expected[: n - 1]
        assert list(q.drain()) == expected[n:]


def test_runq_rejects_bad_handles_and_indexes(nm: NodeMemory) -> None:
    q = nm.runq(0, 0)
    with pytest.raises(ValueError, match="G handle"):
        q.put(0)
    with pytest.raises(ValueError, match="G handle"):
        q.put(2**32)
    with pytest.raises(IndexError, match="P index"):
        nm.runq(4, 0)
    with pytest.raises(IndexError, match="M index"):
        nm.runq(0, 4)
    with pytest.raises(ValueError, match="itself"):
        q.steal(0)


def test_runq_handle_fails_cleanly_after_close() -> None:
    node = NodeMemory.create(1, 1)
    q = node.runq(0, 0)
    node.close()
    with pytest.raises(ValueError, match="closed"):
        q.put(1)
