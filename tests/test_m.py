"""An M's own steps, run on stand-ins for its sockets around real node memory."""

from __future__ import annotations

import functools
import itertools
import sys
import time
import types

import pytest

from gmpd import m as m_module
from gmpd import wire
from gmpd.g import encode_task
from gmpd.m import M
from gmpd.runq import PStatus
from gmpd.sched import Counter, MState
from gmpd.shm import NodeMemory


class OneMessage:
    """A DEALER socket with one message waiting."""

    def __init__(self, msg: wire.Message) -> None:
        self.frames = [wire.encode(msg)]

    def poll(self, _timeout_ms: int) -> bool:
        return bool(self.frames)

    def recv(self) -> bytes:
        return self.frames.pop()


def test_a_recv_that_may_not_wait_still_reads_a_waiting_message(monkeypatch: pytest.MonkeyPatch) -> None:
    """stopm's recv(0): preempted for 2 ms between its two clock reads, it
    raised Shutdown ("the coordinator stopped answering") with the message
    there, and the M exited, counted lost."""
    clock = itertools.count(0, 0.002)
    monkeypatch.setattr(time, "monotonic", lambda: next(clock))  # (gmpd.m reads time.monotonic)
    fake = types.SimpleNamespace(sock=OneMessage(wire.Revoke(0, 3)))
    assert M.recv(fake, 0) == wire.Revoke(0, 3)  # type: ignore[arg-type]
    with pytest.raises(m_module.Shutdown):  # (and with none there, it does not wait)
        M.recv(fake, 0)  # type: ignore[arg-type]


def dropping(nm: NodeMemory, sent: list[wire.Message]) -> types.SimpleNamespace:
    """M 1 holding P 0 at epoch 4, as drop_p reads it."""
    fake = types.SimpleNamespace(nm=nm, node=nm.node, m=1, p=0, epoch=4, runq=None, in_syscall=False)
    fake.send = sent.append
    fake.finish_wait = fake.flush = lambda: None
    for name in ("marked_p", "check_lease"):
        setattr(fake, name, functools.partial(getattr(M, name), fake))
    return fake


def test_a_p_marked_after_its_last_g_is_released_for_real(nm: NodeMemory) -> None:
    """sysmon may move the P to SYSCALL for a mark as the M's last G ends,
    after check_lease looked: drop_p takes it back and releases it (a failed
    releasep left the word SYSCALL under an M that had told the coordinator
    the P was idle)."""
    node = nm.node
    sent: list[wire.Message] = []
    assert node.acquirep(0, 1, 4)
    assert node.p_cas(0, (PStatus.RUNNING, 1, 4), (PStatus.SYSCALL, 1, 4))  # (mark_asleep's move)
    fake = dropping(nm, sent)
    M.drop_p(fake)  # type: ignore[arg-type]
    assert node.p_state(0) == (PStatus.IDLE, -1, 4)
    assert sent == [wire.Release(1, 0, 4)] and fake.p == -1


def test_a_p_retaken_before_drop_p_is_left_alone(nm: NodeMemory) -> None:
    """Retaken meanwhile (its epoch moved), the P and its arena are another
    M's: drop_p neither trims the arena (its top and pages are the new
    owner's) nor releases the P."""
    node = nm.node
    sent: list[wire.Message] = []
    assert node.acquirep(0, 1, 4)
    assert node.p_cas(0, (PStatus.RUNNING, 1, 4), (PStatus.RUNNING, 2, 5))  # (retaken, granted to M 2)
    h = node.g_new(0, b"x" * 5000)
    node.g_free(node.g_new(0, b"y" * 5000))  # (a trim would lower top past this one)
    top = node.g_arena(0)[2]
    M.drop_p(dropping(nm, sent))  # type: ignore[arg-type]
    assert node.p_state(0) == (PStatus.RUNNING, 2, 5) and not sent
    assert node.g_arena(0)[2] == top and node.g_payload(h) == b"x" * 5000


def ident(x: int) -> int:
    return x


def test_an_exception_right_after_a_g_leaves_running_gives_the_count_back_once(nm: NodeMemory) -> None:
    """CPython runs a raising signal handler right after a native call
    returns (stood in for here by a profile hook on that return).  Raised
    just after ``g_leave``, it reached execute's ``finally``, which gave the
    RUNNING count back a second time when g_leave had given it back too:
    the gauge then read one too low for good (found by review)."""
    node = nm.node
    assert node.acquirep(0, 1, 4)
    fake = types.SimpleNamespace(
        nm=nm, node=node, m=1, p=0, epoch=4, runq=nm.runq(0, 1), curg=0, in_syscall=False, deadline=0,
        slice_start=0.0, max_message=1 << 30, results=[], units=[], bottom=0, deadline_g=0,
    )  # fmt: skip
    fake.add_result = lambda *a: fake.results.append(a)
    for name in ("execute", "resync", "exitsyscall", "marked_p", "check_lease", "chain"):
        setattr(fake, name, types.MethodType(getattr(M, name), fake))
    h = node.g_new(0, encode_task(ident, (5,), {}), root_id=7)

    def interrupt(_frame: object, event: str, arg: object) -> None:
        if event == "c_return" and getattr(arg, "__name__", "") == "g_leave":
            sys.setprofile(None)
            raise KeyboardInterrupt("a signal handler that raised")

    sys.setprofile(interrupt)
    try:
        with pytest.raises(KeyboardInterrupt):
            fake.execute(h, False)
    finally:
        sys.setprofile(None)
    assert node.sched()[Counter.RUNNING] == 0, "given back exactly once"
    assert node.m_info(1)[0] == MState.IDLE
