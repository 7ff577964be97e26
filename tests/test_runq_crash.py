"""A process killed at each numbered point of runq.c §3: no G vanishes or doubles.

Each case prepares P0 from this process, then a child process acting as M1
runs one ring operation and SIGKILLs itself at the named crash point.  After
recovery, the Gs left in every queue plus the orphans ``recover_m`` hands
back must be exactly the Gs that existed, each once.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from gmpd.native import _native
from gmpd.runq import recover_m
from gmpd.shm import NodeMemory
from tests.conftest import run_child

pytestmark = pytest.mark.fault

CHILD = """
import sys
from gmpd.native import _native
from gmpd.runq import recover_m
from gmpd.shm import NodeMemory
nm = NodeMemory.attach({name!r})
_native._set_crash_point({point})
q = nm.runq({p}, 1)
{op}
sys.exit(0)  # the crash point was not reached
"""

# Crash-point numbers, in the order of enum gmpd_crashpoint in native/runq.h.
POINTS = [
    "PUT_RECORDED",
    "PUT_SLOT",
    "PUT_PUBLISHED",
    "PUTNEXT_RECORDED",
    "PUTNEXT_SWAPPED",
    "PUTNEXT_HELD",
    "PUTSLOW_RECORDED",
    "PUTSLOW_TAKEN",
    "PUTSLOW_HELD",
    "GET_RECORDED",
    "GET_TAKEN",
    "GET_HELD",
    "GETNEXT_TAKEN",
    "STEAL_COPIED",
    "STEAL_RECORDED",
    "STEAL_TAKEN",
    "STEAL_PUBLISHED",
    "STEAL_HELD",
    "STEALNEXT_TAKEN",
    "DRAINNEXT_TAKEN",
    "DRAIN_TAKEN",
    "GALLOC_RESTED",  # (gtab.c: tests/test_g.py)
    "GALLOC_SIZED",
    "GALLOC_CLEARED",
    "GALLOC_AT_TOP",
]


def point(name: str) -> int:
    return POINTS.index(name) + 1


def test_crash_point_table_matches_native() -> None:
    assert len(POINTS) + 1 == _native.CRASH_POINTS


def ring(n: int) -> Callable[[NodeMemory], set[int]]:
    def prep(nm: NodeMemory) -> set[int]:
        q = nm.runq(0, 0)
        for g in range(1, n + 1):
            assert q.put(g) is None
        return set(range(1, n + 1))

    return prep


def ring_and_next(n: int) -> Callable[[NodeMemory], set[int]]:
    def prep(nm: NodeMemory) -> set[int]:
        gs = ring(n)(nm)
        nm.runq(0, 0).put_next(500)
        return gs | {500}

    return prep


@dataclass(frozen=True)
class Case:
    point: str
    prep: Callable[[NodeMemory], set[int]]
    op: str  # run by the child as M1
    p: int = 0  # the P the child acts on (1: it is a thief stealing from P0)
    new: frozenset[int] = frozenset()  # Gs the op brings in
    took: bool | None = None  # whether recovery must report the step as taken
    orphans: frozenset[int] | None = None  # exact orphans, where they are determined


CASES = [
    Case("PUT_RECORDED", ring(5), "q.put(100)", new=frozenset({100}), took=False, orphans=frozenset({100})),
    Case("PUT_SLOT", ring(5), "q.put(100)", new=frozenset({100}), took=False, orphans=frozenset({100})),
    Case("PUT_PUBLISHED", ring(5), "q.put(100)", new=frozenset({100}), took=True, orphans=frozenset()),
    Case("PUTNEXT_RECORDED", ring_and_next(5), "q.put_next(100)", new=frozenset({100}), took=False),
    Case("PUTNEXT_SWAPPED", ring_and_next(5), "q.put_next(100)", new=frozenset({100}), took=True),
    Case("PUTNEXT_HELD", ring_and_next(5), "q.put_next(100)", new=frozenset({100}), orphans=frozenset({500})),
    Case("PUTSLOW_RECORDED", ring(256), "q.put(1000)", new=frozenset({1000}), took=False),
    Case("PUTSLOW_TAKEN", ring(256), "q.put(1000)", new=frozenset({1000}), took=True),
    Case("PUTSLOW_HELD", ring(256), "q.put(1000)", new=frozenset({1000})),
    Case("PUTSLOW_TAKEN", ring_and_next(256), "q.put_next(1000)", new=frozenset({1000}), took=True),
    Case("GET_RECORDED", ring(5), "q.get()", took=False, orphans=frozenset()),
    Case("GET_TAKEN", ring(5), "q.get()", took=True, orphans=frozenset({1})),
    Case("GET_HELD", ring(5), "q.get()", orphans=frozenset({1})),
    Case("GETNEXT_TAKEN", ring_and_next(5), "q.get()", took=True, orphans=frozenset({500})),
    Case("STEAL_COPIED", ring(10), "q.steal(0)", p=1, orphans=frozenset()),
    Case("STEAL_RECORDED", ring(10), "q.steal(0)", p=1, took=False, orphans=frozenset()),
    Case("STEAL_TAKEN", ring(10), "q.steal(0)", p=1, took=True, orphans=frozenset()),
    Case("STEAL_PUBLISHED", ring(10), "q.steal(0)", p=1, took=True, orphans=frozenset()),
    Case("STEAL_HELD", ring(10), "q.steal(0)", p=1, orphans=frozenset({5})),
    Case(
        "STEALNEXT_TAKEN", ring_and_next(0), "q.steal(0, runnext=True)", p=1, took=True, orphans=frozenset()
    ),
    Case("DRAINNEXT_TAKEN", ring_and_next(5), "q.drain()", took=True, orphans=frozenset({500})),
    Case("DRAIN_TAKEN", ring_and_next(5), "q.drain()", took=True, orphans=frozenset({500, 1, 2, 3, 4, 5})),
]


def crash_child(nm: NodeMemory, case: Case) -> None:
    code = CHILD.format(name=nm.name, point=point(case.point), p=case.p, op=case.op)
    proc = run_child(code)
    assert proc.returncode == -signal.SIGKILL, f"crash point {case.point} not reached: {proc.stderr}"


def collect(nm: NodeMemory, orphans: tuple[int, ...]) -> list[int]:
    """Everything still queued (drained by spare M 3) plus the orphans."""
    everything = list(orphans)
    for p in range(nm.node.nprocs):
        everything += nm.runq(p, 3).drain()
    nm.node.release(3)
    return everything


@pytest.mark.parametrize(
    "case", CASES, ids=[f"{c.point}-{c.op.split('(')[0]}-{i}" for i, c in enumerate(CASES)]
)
def test_runq_crash_at_point_loses_and_duplicates_nothing(nm: NodeMemory, case: Case) -> None:
    before = case.prep(nm)
    crash_child(nm, case)
    rec = recover_m(nm.node, 1)
    if case.took is not None:
        assert rec.took_effect == case.took, f"{rec.kind}: recovery misjudged whether the step took effect"
    if case.orphans is not None:
        assert set(rec.orphans) == case.orphans
    everything = collect(nm, rec.orphans)
    assert sorted(everything) == sorted(before | case.new), "a G vanished or appears twice"
    for g in case.new:  # a supervisor can tell the G passed to put was accepted
        assert rec.accepted(g)
    assert nm.node.op_record(1)[1] == 0, "recovery leaves the record idle"


def test_recover_sees_a_take_whose_tag_was_overwritten(nm: NodeMemory) -> None:
    """M1 dies just after its CAS on head; M2 then moves head on (confirming M1)."""
    before = ring(10)(nm)
    crash_child(nm, Case("GET_TAKEN", ring(0), "q.get()"))
    stolen = nm.runq(2, 2).steal(0)  # replaces M1's tag on P0's head
    assert stolen is not None
    _op, orphans, took = nm.node.recover_m(1)
    assert took
    assert orphans == (1,)
    assert sorted([*collect(nm, orphans), stolen]) == sorted(before)


def test_recover_sees_a_runnext_take_whose_tag_was_overwritten(nm: NodeMemory) -> None:
    before = ring_and_next(3)(nm)
    crash_child(nm, Case("GETNEXT_TAKEN", ring(0), "q.get()"))
    assert nm.runq(0, 0).put_next(77) is None  # the owner of P0 replaces runnext
    _op, orphans, took = nm.node.recover_m(1)
    assert took
    assert orphans == (500,)
    assert sorted(collect(nm, orphans)) == sorted(before | {77})


def test_recover_of_a_never_used_m_is_a_no_op(nm: NodeMemory) -> None:
    ring(3)(nm)
    (kind, state, _arg, _seq), orphans, took = nm.node.recover_m(2)
    assert (kind, state, orphans, took) == ("none", 0, (), False)
    assert sorted(collect(nm, ())) == [1, 2, 3]
