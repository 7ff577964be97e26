"""Millions of Gs through one owner and two thieves, in separate processes."""

from __future__ import annotations

import pytest

from gmpd._runq_stress import run_stress


@pytest.mark.stress
def test_runq_stress_every_g_exactly_once() -> None:
    r = run_stress(2_000_000, thieves=2, seed=7)
    assert r.seen == 2_000_000
    assert (r.lost, r.duplicated) == (0, 0)
    assert r.checksum_ok
    assert r.stolen > 0, "thieves never stole: the test did not exercise runqsteal"


@pytest.mark.stress
@pytest.mark.fault
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_runq_stress_random_sigkills_then_recovery_every_g_exactly_once(seed: int) -> None:
    r = run_stress(3_000_000, thieves=2, kill_interval=0.002, max_kills=80, seed=seed)
    assert r.kills >= 20, "too few kills landed to mean anything"
    assert (r.lost, r.duplicated) == (0, 0)
    assert r.checksum_ok
    assert r.seen == r.total
