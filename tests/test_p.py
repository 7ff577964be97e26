"""P lease transitions on the shared state word, and futex parking of Ms."""

from __future__ import annotations

import collections
import functools
import os
import subprocess
import sys
import textwrap
import time
import types

from gmpd import wire
from gmpd.coordinator import Coordinator, MInfo, PLease
from gmpd.runq import PStatus
from gmpd.shm import NodeMemory

IDLE, RUNNING, SYSCALL = PStatus.IDLE, PStatus.RUNNING, PStatus.SYSCALL


def test_p_starts_idle_unowned_epoch_zero(nm: NodeMemory) -> None:
    assert nm.node.p_state(0) == (IDLE, -1, 0)


def test_p_acquire_release_with_epoch(nm: NodeMemory) -> None:
    node = nm.node
    assert node.acquirep(0, 2, 1)
    assert node.p_state(0) == (RUNNING, 2, 1)
    assert not node.acquirep(0, 3, 2), "a running P cannot be acquired"
    assert not node.releasep(0, 2, 0), "release needs the current epoch"
    assert node.releasep(0, 2, 1)
    assert not node.acquirep(0, 3, 0), "epochs never go back"
    assert node.acquirep(0, 3, 2)


def test_p_exitsyscall_fast_path_keeps_the_p(nm: NodeMemory) -> None:
    node = nm.node
    node.acquirep(0, 1, 5)
    assert node.entersyscall(0, 1, 5)
    assert node.p_state(0) == (SYSCALL, 1, 5)
    assert node.exitsyscall(0, 1, 5)
    assert node.p_state(0) == (RUNNING, 1, 5)
    assert node.p_ticks(0)[1] == 1  # syscalltick moved


def test_p_retake_bumps_epoch_and_fences_the_old_m(nm: NodeMemory) -> None:
    node = nm.node
    node.acquirep(0, 1, 5)
    node.entersyscall(0, 1, 5)
    seen = node.p_state(0)
    assert node.retake(0, seen) == 6
    assert node.p_state(0) == (IDLE, -1, 6)
    assert not node.exitsyscall(0, 1, 5), "a retaken P must not come back to the old M"
    assert node.retake(0, seen) is None, "retake from a stale sample fails"
    assert node.acquirep(0, 2, 6)
    assert not node.entersyscall(0, 1, 5), "the stale M cannot touch the P"


def test_p_cas_generic_and_ticks(nm: NodeMemory) -> None:
    node = nm.node
    assert node.p_cas(1, (IDLE, -1, 0), (PStatus.DEAD, -1, 0))
    assert not node.p_cas(1, (IDLE, -1, 0), (RUNNING, 0, 1))
    assert node.schedtick(1) == 1
    node.set_preempt(1, True)
    assert node.p_ticks(1) == (1, 0, 1)


def test_m_slot_fields(nm: NodeMemory) -> None:
    node = nm.node
    node.m_set(2, state=3, curg=42, p=1, pid=os.getpid())
    state, curg, p, pid, _hb, _park, _nrun = node.m_info(2)
    assert (state, curg, p, pid) == (3, 42, 1, os.getpid())
    assert node.m_cas_state(2, 3, 4)
    assert not node.m_cas_state(2, 3, 5)
    t = node.heartbeat(2)
    assert node.m_info(2)[4] == t > 0


def test_park_times_out_and_ignores_a_stale_seen_value(nm: NodeMemory) -> None:
    node = nm.node
    seen = node.m_info(0)[5]
    assert node.park(0, seen, 0.01) is False
    node.wake(0)
    assert node.park(0, seen, 5.0) is True, "a wake before the park is not lost"


def test_park_across_processes_wakes_fast_and_burns_no_cpu(nm: NodeMemory) -> None:
    seen = nm.node.m_info(1)[5]
    code = f"""
        import sys, time
        from gmpd.shm import NodeMemory
        nm = NodeMemory.attach({nm.name!r})
        print("parked", flush=True)
        t = time.monotonic()
        woken = nm.node.park(1, {seen}, 20.0)
        print(woken, time.monotonic() - t, flush=True)
        nm.close()
    """
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "parked"
    time.sleep(0.5)  # the child sits in futex_wait
    nm.node.wake(1)
    woken, _waited = proc.stdout.readline().split()
    proc.stdout.close()
    _pid, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    assert woken == "True"
    assert proc.returncode == 0
    # Python start-up costs CPU; half a second of spinning would cost ~0.5 s more.
    assert usage.ru_utime + usage.ru_stime < 0.4, "a parked M must not burn CPU"


def test_an_m_granted_on_its_own_request_leaves_the_line_for_freed_ps(nm: NodeMemory) -> None:
    """An M back from a syscall with a G and no P to get waits in want_p,
    woken first when a P frees; granted on a later request of its own, it
    leaves that line (else a P freed afterwards woke it for nothing)."""
    sent: list[wire.Message] = []
    c = types.SimpleNamespace(
        nm=nm,
        ps=[PLease(p) for p in range(nm.node.nprocs)],
        idle_ps=collections.deque(),
        want_p=collections.deque(),
        stats=types.SimpleNamespace(grants=0),
        lease_ttl=5.0,
        send=lambda _ident, msg: sent.append(msg),
        batch_for=lambda _info, _limit: (0, [], []),
    )
    c.next_epoch = functools.partial(Coordinator.next_epoch, c)  # type: ignore[arg-type]
    grant = functools.partial(Coordinator.grant, c)  # type: ignore[arg-type]
    info = MInfo(2, b"m2", 123)
    grant(info, True)
    assert sent[-1] == wire.Grant(-1, 0, 0, 0, [], []) and list(c.want_p) == [2]
    c.idle_ps.append(1)
    grant(info, True)  # (it asked again after its park: a P was idle by then)
    assert isinstance(sent[-1], wire.Grant) and sent[-1].p == 1 and not c.want_p
