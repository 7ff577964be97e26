"""G records and payloads in per-P arenas of node shared memory."""

from __future__ import annotations

import os
import pickle
import random
import subprocess
import sys
import textwrap

import pytest

from gmpd.g import GState, dumps, handle_p
from gmpd.shm import NodeMemory
from tests.conftest import run_child
from tests.test_runq_crash import point as crash_point


def test_g_new_payload_and_info(nm: NodeMemory) -> None:
    node = nm.node
    h = node.g_new(2, b"hello", parent=7, root_id=99)
    assert handle_p(h) == 2
    assert node.g_payload(h) == b"hello"
    state, gen, parent, root_id, length, result, _status, waiter, owner, *_rest = node.g_info(h)
    assert (state, parent, root_id, length, result, waiter, owner) == (GState.RUNNABLE, 7, 99, 5, 0, 0, 0)
    assert gen >= 1


def test_g_result_roundtrip_and_free(nm: NodeMemory) -> None:
    node = nm.node
    h = node.g_new(0, b"task")
    assert node.g_result(h) is None
    assert node.g_cas_state(h, GState.RUNNABLE, GState.RUNNING)
    assert not node.g_cas_state(h, GState.RUNNABLE, GState.RUNNING)
    rh = node.g_set_result(h, 1, b"answer", 0)  # run on another P: result lives in P1's arena
    assert handle_p(rh) == 1
    assert node.g_result(h) == (0, b"answer")
    node.g_free(h)
    node.g_reclaim(0)
    node.g_reclaim(1)
    assert node.g_arena(0)[0] == 0
    assert node.g_arena(1)[0] == 0, "freeing a G frees its result too"
    with pytest.raises(ValueError, match="free"):
        node.g_payload(h)


def test_g_large_payload_20_mb(nm: NodeMemory) -> None:
    blob = os.urandom(20 * 2**20)
    h = nm.node.g_new(0, blob)
    assert nm.node.g_payload(h) == blob
    nm.node.g_free(h)


def test_g_arena_full_is_a_clear_error(nm: NodeMemory) -> None:
    with pytest.raises(MemoryError, match="arena has no room"):
        nm.node.g_new(0, b"x" * (257 * 2**20))


def test_g_arena_reuses_pages_so_memory_stays_flat(nm: NodeMemory) -> None:
    node = nm.node
    live: list[int] = []
    for i in range(200_000):
        live.append(node.g_new(0, b"x" * 200))
        if len(live) > 50:  # a window of in-flight Gs, freed out of order too
            node.g_free(live.pop(i % 7))
    for h in live:
        node.g_free(h)
    assert node.g_arena(0)[0] == 0
    assert nm.gtab.path.stat().st_blocks * 512 <= 5 * 2**20, "200k small Gs reuse the same pages"
    node.g_reclaim(0)
    assert node.g_arena(0)[2] == 1, "reclaim lowers top past trailing free blocks"


def test_g_arena_shrinks_back_after_a_burst(nm: NodeMemory) -> None:
    node = nm.node
    burst = [node.g_new(1, b"y" * 2**20) for _ in range(40)]  # 40 MiB live at once
    blocks_peak = nm.gtab.path.stat().st_blocks
    assert blocks_peak * 512 >= 40 * 2**20
    for h in burst:
        node.g_free(h)
    freed = node.g_trim(1)
    assert freed >= 39 * 2**20
    assert nm.gtab.path.stat().st_blocks * 512 <= 2**20


def test_g_a_long_lived_g_pins_only_its_own_block(nm: NodeMemory) -> None:
    node = nm.node
    parent = node.g_new(0, b"parent")  # lives throughout, first in the arena
    for _ in range(100):
        batch = [node.g_new(0, b"c" * 1000) for _ in range(5000)]
        for h in batch:
            node.g_free(h)
    assert node.g_arena(0)[0] == 2, "only the parent's block (header + payload) is live"
    assert node.g_payload(parent) == b"parent"
    assert nm.gtab.path.stat().st_blocks * 512 <= 12 * 2**20


def test_g_reuse_after_reclaim_never_hands_out_a_live_block(nm: NodeMemory) -> None:
    """A rover left inside a coalesced block once handed out a live block."""
    node = nm.node
    a, live, b = node.g_new(0, b"a" * 1000), node.g_new(0, b"L"), node.g_new(0, b"b")
    node.g_free(a)
    node.g_free(b)
    node.g_reclaim(0)
    g1 = node.g_new(0, b"g" * 100)  # splits A's block
    node.g_free(g1)
    node.g_reclaim(0)  # coalesces the split block back
    g2 = node.g_new(0, b"precious")
    node.g_free(live)
    node.g_reclaim(0)  # must not drop top below the live g2
    x = node.g_new(0, b"X" * 2000)
    assert x != g2
    assert node.g_payload(g2) == b"precious"
    assert node.g_payload(x) == b"X" * 2000


def test_g_random_alloc_free_reclaim_keeps_payloads_intact(nm: NodeMemory) -> None:
    rng = random.Random(5)
    node = nm.node
    live: dict[int, bytes] = {}
    for step in range(20_000):
        if live and rng.random() < 0.5:
            h = rng.choice(list(live))
            assert node.g_payload(h) == live.pop(h)
            node.g_free(h)
        else:
            data = rng.randbytes(rng.randrange(0, 3000))
            h = node.g_new(0, data)
            assert h not in live, "a live block was handed out again"
            live[h] = data
        if step % 97 == 0:
            node.g_reclaim(0) if step % 2 else node.g_trim(0)
    for h, data in live.items():
        assert node.g_payload(h) == data


def test_g_sweep_frees_records_of_a_dead_allocator(nm: NodeMemory) -> None:
    node = nm.node
    keep = node.g_new(3, b"queued")
    assert node.g_cas_state(keep, GState.RUNNABLE, GState.BUILDING)  # as if killed mid g_new
    done = node.g_new(3, b"other")
    assert node.g_sweep(3) == 1
    assert node.g_info(keep)[0] == GState.FREE
    assert node.g_info(done)[0] == GState.RUNNABLE


@pytest.mark.parametrize("point", ["GALLOC_RESTED", "GALLOC_SIZED", "GALLOC_CLEARED", "GALLOC_AT_TOP"])
def test_g_an_allocator_killed_anywhere_leaves_an_arena_the_next_one_can_walk(
    nm: NodeMemory, point: str
) -> None:
    """A child, as P0's owner, is SIGKILLed at each step of g_new: the
    P's next owner sweeps it and allocates at once, and every G before and
    after the dead one is intact (its header was zeroed first, and a kill
    right after left units 0: g_new then walked that block forever,
    holding the GIL, and the M's task was lost)."""
    node = nm.node
    live = {node.g_new(0, bytes([i]) * 300): bytes([i]) * 300 for i in range(4)}
    gap = next(iter(live))
    node.g_free(gap)  # a free block ahead of the rover's next pass: split by the child's g_new
    del live[gap]
    node.g_reclaim(0)  # (the rover back to the front)
    size = 100 if point != "GALLOC_AT_TOP" else 4000  # (too big for the gap: a new block at top)
    code = f"""
        from gmpd.native import _native
        from gmpd.shm import NodeMemory
        nm = NodeMemory.attach({nm.name!r})
        _native._set_crash_point({crash_point(point)})
        nm.node.g_new(0, b"x" * {size})
        raise SystemExit(3)  # (the crash point was not reached)
    """
    assert run_child(code).returncode == -9
    assert node.g_sweep(0) == 0  # (killed before the state said BUILDING: nothing to free)
    code = f"""
        from gmpd.shm import NodeMemory
        nm = NodeMemory.attach({nm.name!r})
        for i in range(50):
            h = nm.node.g_new(0, bytes([i]) * (37 * i + 1))
            assert nm.node.g_payload(h) == bytes([i]) * (37 * i + 1)
    """
    assert run_child(code, timeout=20).returncode == 0  # (hung before: a walk that never ends)
    for h, data in live.items():
        assert node.g_payload(h) == data
    assert set(live) <= set(node.g_scan(0))  # (a scan walks past the dead one's block too)


@pytest.mark.parametrize("point", ["GALLOC_RESTED", "GALLOC_SIZED", "GALLOC_CLEARED"])
def test_g_an_allocator_killed_in_its_second_pass_leaves_no_block_handed_out_twice(
    nm: NodeMemory, point: str
) -> None:
    """Past the arena's soft size galloc scans again from the front, and
    coalescing there may absorb the block its rover is on: killed then, it
    left the rover on that stale header, and the next owner handed out units
    the bigger free block also held (two live Gs overlapping)."""
    node, block = nm.node, 60_000  # (939 units: 70 of them pass the 4 MiB soft size)
    live = [node.g_new(0, bytes([i]) * block) for i in range(70)]
    node.g_free(live.pop(0))  # A, at the front
    node.g_free(live.pop(0))  # B, after it
    node.g_free(node.g_new(0, b"a" * block))  # A again, taken in a second pass: the rover is on B now
    code = f"""
        from gmpd.native import _native
        from gmpd.shm import NodeMemory
        nm = NodeMemory.attach({nm.name!r})
        _native._set_crash_point({crash_point(point)})
        nm.node.g_new(0, b"y" * 100_000)  # (fits only A and B together: found in the second pass)
        raise SystemExit(3)  # (the crash point was not reached)
    """
    assert run_child(code).returncode == -9
    x = node.g_new(0, b"x" * 1000)
    y = node.g_new(0, b"y" * 89_000)
    assert node.g_payload(x) == b"x" * 1000 and node.g_payload(y) == b"y" * 89_000
    for i, h in enumerate(live, 2):
        assert node.g_payload(h) == bytes([i]) * block


def test_g_result_wakes_a_waiter_in_another_process(nm: NodeMemory) -> None:
    node = nm.node
    h = node.g_new(0, b"child")
    seen = node.m_info(2)[5]
    assert node.g_wait_register(h, 2) is False
    code = f"""
        from gmpd.shm import NodeMemory
        nm = NodeMemory.attach({nm.name!r})
        nm.node.g_set_result({h}, 1, b"done", 0)
        nm.close()
    """
    subprocess.run([sys.executable, "-c", textwrap.dedent(code)], check=True, timeout=30)
    assert node.park(2, seen, 5.0) is True, "the waiter's park word was bumped"
    assert node.g_result(h) == (0, b"done")
    assert node.g_wait_register(h, 2) is True


def test_g_handles_are_checked(nm: NodeMemory) -> None:
    with pytest.raises(ValueError, match="names no arena unit"):
        nm.node.g_payload(4 << 22 | 1)
    with pytest.raises(ValueError, match="names no arena unit"):
        nm.node.g_payload(1 << 22)


def test_dumps_uses_the_c_pickler_for_plain_values() -> None:
    value = ((1, "a", [2.5, None]), {"k": b"v"})
    assert dumps(value) == pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)


def test_dumps_falls_back_to_cloudpickle_for_what_an_m_could_not_load() -> None:
    def local(x: int) -> int:
        return x + 1

    assert pickle.loads(dumps(local))(1) == 2  # the C pickler refuses local functions
    main = sys.modules["__main__"]
    main_cls = type("InMain", (), {"__module__": "__main__"})
    setattr(main, "InMain", main_cls)  # noqa: B010 - so plain pickle would name __main__.InMain
    try:
        assert b"__main__" in pickle.dumps(main_cls(), protocol=pickle.HIGHEST_PROTOCOL)
        data = dumps(main_cls())
    finally:
        delattr(main, "InMain")
    assert type(pickle.loads(data)).__name__ == "InMain", "sent by value: loads without __main__.InMain"
