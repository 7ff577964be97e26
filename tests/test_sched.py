"""Scheduler rules that need a running cluster: fairness, steal order."""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import gmpd
from gmpd.sched import steal_order


def square(x: int) -> int:
    return x * x


def pingpong(deadline: float, n: int) -> int:
    """Respawn into runnext until the deadline: a chain that never yields."""
    if time.time() < deadline:
        gmpd.go(pingpong, deadline, n + 1)
    return n


def test_sched_respawning_chain_does_not_starve_the_global_queue() -> None:
    with gmpd.Executor(1) as ex:
        deadline = time.time() + 4.0
        assert ex.submit(pingpong, deadline, 0).result(timeout=10) == 0
        time.sleep(0.2)  # the chain now runs on the only P
        start = time.time()
        assert ex.submit(square, 3).result(timeout=10) == 9
        waited = time.time() - start
        assert time.time() < deadline, f"the global queue waited {waited:.2f} s, for the chain to end"


def spin(seconds: float) -> float:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass
    return seconds


def wait_for(path: str) -> bool:
    """Hold the P until ``path`` exists (the test has queued what it wants),
    busy: a sleep would be seen from /proc, and the P handed to another M."""
    deadline = time.monotonic() + 30
    while not os.path.exists(path) and time.monotonic() < deadline:
        pass
    return True


def test_sched_a_queue_fed_by_global_batches_alone_takes_no_fairness_g(tmp_path: Path) -> None:
    """Go's fairness tick (every 61st G comes from the global queue) guards
    the global queue against a local queue that children keep filling.  A
    queue filled from global batches alone holds older Gs than any left
    there: no fairness round trip.  The only P is held until all 400 Gs are
    queued, so the batches are whole: 4 of 128 or fewer, not 4 + one a 61."""
    go = str(tmp_path / "go")
    with gmpd.Executor(1) as ex:
        ex.submit(square, 1).result(timeout=30)
        held = ex.submit(wait_for, go)
        deadline = time.monotonic() + 30
        while not held.running() and time.monotonic() < deadline:
            time.sleep(0.005)
        before = ex.statistics().global_takes
        futures = [ex.submit(spin, 0.0005) for _ in range(400)]
        time.sleep(0.2)  # (the last Submit reaches the coordinator)
        Path(go).touch()
        assert held.result(timeout=30)
        assert [f.result(timeout=60) for f in futures] == [0.0005] * 400
        takes = ex.statistics().global_takes - before
        assert takes <= 5, f"{takes} global takes for 400 Gs in batches of 128"


def test_sched_steal_order_visits_every_p_once() -> None:
    rng = random.Random(3)
    for count in range(1, 12):
        for _ in range(20):
            order = steal_order(count, rng)
            assert sorted(order) == list(range(count))
