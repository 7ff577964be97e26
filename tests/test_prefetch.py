"""Prefetch: an M asks for the next global batch before its queue runs dry
(gmpd/m.py PREFETCH_AT), and the batch stays revocable until the M claims
it (docs/design.md §6, prefetch).

The claim and the revocation are driven by hand on node memory and the
coordinator's own methods; the whole path by real clusters: a flood, and a
G that blocks right after its M prefetched, whose batch must not wait for it.
"""

from __future__ import annotations

import collections
import functools
import os
import time
import types

import pytest

import gmpd
from gmpd import wire
from gmpd.coordinator import PREFETCH_HOLD_S, Coordinator, MInfo, Root, Stats
from gmpd.shm import NodeMemory

pytestmark = pytest.mark.timeout(90)

REVOKED = 0xFFFFFFFF


def coordinator(nm: NodeMemory) -> types.SimpleNamespace:
    """The parts of a Coordinator revocation reads and writes, around ``nm``."""
    c = types.SimpleNamespace(nm=nm, ms={}, roots={}, grq=collections.deque(), stats=Stats())
    for name in ("forget_placed", "revoke_prefetch", "revoke_stale_prefetches"):
        setattr(c, name, functools.partial(getattr(Coordinator, name), c))
    return c


def prefetched(c: types.SimpleNamespace, m: int, seq: int, tids: list[int], age: float = 1.0) -> MInfo:
    """M ``m`` was sent batch ``seq`` of roots ``tids`` as a prefetch ``age`` seconds ago."""
    info: MInfo = c.ms.setdefault(m, MInfo(m, b"m%d" % m, os.getpid()))
    info.seq = seq
    info.batches[seq] = [(tid, 0) for tid in tids]
    info.prefetched = (seq, time.monotonic() - age)
    for tid in tids:
        c.roots[tid] = Root(b"client", b"payload", 3, started=True, taken=True)
    return info


def test_the_first_of_claim_and_revoke_wins() -> None:
    with NodeMemory.create(2, 4) as nm:
        node, c = nm.node, coordinator(nm)
        node.m_set_placing(0, 2, 5)  # batch 2 queued in full
        info = prefetched(c, 0, 3, [11, 12])
        c.grq.append((99, 0))
        assert c.revoke_prefetch(info)
        # Back at the front of the global queue, in order, queued again.
        assert list(c.grq) == [(11, 0), (12, 0), (99, 0)] and not info.batches
        assert not c.roots[11].started and c.roots[11].taken and c.stats.prefetch_revoked == 1
        assert node.m_placing(0) == (3, REVOKED)
        assert not node.m_claim_batch(0, 3)  # the M drops it
        assert node.m_claim_batch(0, 4) and node.m_placing(0) == (4, 0)  # and goes on with the next
        # Claimed first: the coordinator leaves it.
        node.m_set_placing(0, 4, 1)
        info = prefetched(c, 0, 5, [13])
        assert node.m_claim_batch(0, 5)
        assert not c.revoke_prefetch(info)
        assert info.prefetched is None and list(c.grq) == [(11, 0), (12, 0), (99, 0)]
        assert node.m_placing(0) == (5, 0)


def test_a_batch_behind_one_not_queued_in_full_is_not_revoked() -> None:
    """The placing word says one batch: revoking the next while an earlier
    one is half queued would make recovery forget the earlier one's rest."""
    with NodeMemory.create(2, 4) as nm:
        node, c = nm.node, coordinator(nm)
        node.m_set_placing(0, 6, 1)
        info = prefetched(c, 0, 6, [21, 22, 23])  # batch 6: one of three queued
        info = prefetched(c, 0, 7, [24])
        assert not c.revoke_prefetch(info)
        assert set(info.batches) == {6, 7} and not c.grq  # the M queues both, in order
        # ...and it is no longer a prefetch the timer would try again (at
        # 0 ms: with a P idle the coordinator spun on it; review).
        assert info.prefetched is None


def test_a_claim_past_a_revoked_batch_fails() -> None:
    """Review: batches 6 and 7 both revoked (the M lost its P with 6 in its
    stash and prefetched 7 meanwhile); a claim of 6 read the word (7,
    REVOKED) as past it, claimed, and both batches ran twice."""
    with NodeMemory.create(2, 4) as nm:
        node = nm.node
        node.m_set_placing(0, 5, 4)
        assert node.m_revoke_batch(0, 6) and node.m_revoke_batch(0, 7)
        assert not node.m_claim_batch(0, 6) and not node.m_claim_batch(0, 7)
        assert node.m_placing(0) == (7, REVOKED)
        assert node.m_claim_batch(0, 8) and node.m_placing(0) == (8, 0)
        assert node.m_claim_batch(0, 8)  # (claimed already)


def test_only_prefetches_past_the_hold_and_not_the_askers_own_are_revoked() -> None:
    with NodeMemory.create(2, 4) as nm:
        c = coordinator(nm)
        young = prefetched(c, 0, 1, [31], age=0.0)
        old = prefetched(c, 1, 1, [32], age=PREFETCH_HOLD_S * 2)
        own = prefetched(c, 2, 1, [33], age=1.0)
        assert c.revoke_stale_prefetches(time.monotonic(), but=own)
        assert list(c.grq) == [(32, 0)]
        assert young.prefetched is not None and own.prefetched is not None and old.prefetched is None


def noop(x: int) -> int:
    return x


def nap_marked(seconds: float) -> str:
    with gmpd.syscall():
        time.sleep(seconds)
    return "woke"


def test_a_short_global_queue_is_taken_whole_while_every_p_is_busy() -> None:
    """Go's batch is len/GOMAXPROCS + 1 (at most 128).  While every P is
    busy, a tail under 128/GOMAXPROCS is taken whole: with 2 Ps Go's
    halving of it (36, 18, 9, 5, 2, 1) cost a coordinator round trip per
    batch, where Ms balance a short queue by steals on their node.  With
    an idle P, or an M spinning in a long-poll, the batch stays Go's (that
    M gets its share at once)."""

    def taken(queued: int, nprocs: int = 2, idle: int = 0, waiting: bool = False) -> list[int]:
        c = types.SimpleNamespace(nprocs=nprocs, stats=Stats(), out_started=collections.defaultdict(list))
        c.ms = {0: MInfo(0, b"m0", os.getpid())}
        c.ms[0].waiting = wire.GetWork(0, 0, 1, 128, 1) if waiting else None
        c.watching, c.roots = set(), {t: Root(b"client", b"x", 0) for t in range(1, queued + 1)}
        c.grq = collections.deque((t, 0) for t in range(1, queued + 1))
        c.idle_ps = collections.deque(range(idle))
        c.mark_started = functools.partial(Coordinator.mark_started, c)  # type: ignore[arg-type]
        sizes = []
        while c.grq:
            roots, _locals = Coordinator.take_batch(c, 128)  # type: ignore[arg-type]
            sizes.append(len(roots))
        return sizes

    assert taken(400) == [128, 128, 73, 71]
    assert taken(60) == [60]
    assert taken(1) == [1]
    assert taken(60, idle=1) == [31, 15, 8, 4, 2]
    assert taken(60, waiting=True) == [31, 15, 8, 4, 2], "a spinning M's long-poll is served its share"
    assert taken(100, nprocs=8) == [13, 11, 10, 9, 8, 7, 6, 5, 4, 4, 3, 3, 17]


def test_a_flood_runs_every_task_once_with_prefetches() -> None:
    with gmpd.Executor(2) as ex:
        for _ in range(3):
            assert [f.result(timeout=60) for f in [ex.submit(noop, i) for i in range(20_000)]] == list(
                range(20_000)
            )
        assert ex.statistics().duplicate_results == 0


def test_a_batch_prefetched_before_a_g_blocks_does_not_wait_for_it() -> None:
    """One P: the M prefetches the next batch a few no-ops before a G that
    sleeps in a syscall (one of five a round, three rounds: the batch
    boundaries are the coordinator's, and without revocation a round
    showed it in about one run in two).  sysmon retakes the P and the
    coordinator takes the unclaimed batch back, so the tasks in it run on
    the P's next M while the sleepers sleep, not after them."""
    sleep_s = 2.0
    with gmpd.Executor(1) as ex:
        ex.submit(noop, 0).result(timeout=30)
        for _round in range(3):
            noops, sleepers = [], []
            for i in range(5):
                noops += [ex.submit(noop, 20 * i + j) for j in range(20)]
                sleepers.append(ex.submit(nap_marked, sleep_s))
            noops += [ex.submit(noop, 100 + j) for j in range(200)]
            start = time.monotonic()
            assert [f.result(timeout=60) for f in noops] == list(range(300))
            took = time.monotonic() - start
            assert not any(s.done() for s in sleepers), "a sleeper woke first: nothing shown"
            assert took < sleep_s / 2, took
            assert [s.result(timeout=60) for s in sleepers] == ["woke"] * 5
