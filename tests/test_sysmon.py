"""sysmon, gmpd.syscall, handoff and the M pool (issue 4)."""

from __future__ import annotations

import contextlib
import functools
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import psutil
import pytest

import gmpd
from gmpd import sched as gmpd_sched
from gmpd.runq import PStatus
from gmpd.sched import FORCE_PREEMPT_S, Doom, MState
from gmpd.shm import NodeMemory
from gmpd.sysmon import CHECKDEAD_S, QUIET_MAX_S, UNMARKED_MIN_S, WCHAN_MISSES, WCHAN_TRIES, Quiet, Sysmon
from tests.test_executor import fib  # recursive fan-out with a threshold (n < 10)

pytestmark = pytest.mark.timeout(90)


def blocking(seconds: float) -> float:
    """A marked blocking call; returns when it ended."""
    with gmpd.syscall():
        time.sleep(seconds)
    return time.monotonic()


def cpu(seconds: float) -> float:
    """Pure-Python CPU work; returns when it ended."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass
    return time.monotonic()


def m_processes(ex: gmpd.Executor) -> int:
    """Live M processes (the template's children), counted from the OS, not
    from statistics (which can only list max_ms slots)."""
    agent = psutil.Process(ex._cluster.proc.pid)
    return sum(len(child.children()) for child in agent.children())


def test_syscall_outside_a_task_does_nothing() -> None:
    with gmpd.syscall():
        pass


@pytest.fixture
def one_thread_ms(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ms without standby threads (max_threads 1): a P left in a syscall
    goes to another M, the path these tests are about (tests/test_standby.py
    has the standby threads')."""
    monkeypatch.setenv("GMPD_M_MAX_THREADS", "1")


@pytest.mark.usefixtures("one_thread_ms")
def test_a_marked_syscall_gives_its_p_to_other_work() -> None:
    """One P: a task sleeping in gmpd.syscall() must not keep the queued
    CPU tasks waiting; sysmon retakes the P and hands it to another M."""
    with gmpd.Executor(1) as ex:
        time.sleep(0.3)  # every P idle: sysmon deep-sleeps; entersyscall must wake it
        sleeper = ex.submit(blocking, 1.5)
        workers = [ex.submit(cpu, 0.02) for _ in range(10)]  # queued while the P is in the syscall
        ends = [f.result(timeout=30) for f in workers]
        assert max(ends) < sleeper.result(timeout=30), "CPU work waited behind a blocked M"
        stats = ex.statistics()
        assert stats.syscalls >= 1 and stats.retakes >= 1 and stats.handoffs >= 1, stats
        assert stats.running_max <= 1


def spawn_then_block(n: int, seconds: float) -> tuple[list[float], float]:
    """Spawn n CPU children (into this P's queue), then block: the children
    run on the P handed off meanwhile.  Returns their ends and our wake."""
    kids = [gmpd.go(cpu, 0.01) for _ in range(n)]
    with gmpd.syscall():
        time.sleep(seconds)
        woke = time.monotonic()
    return [k.result() for k in kids], woke


@pytest.mark.usefixtures("one_thread_ms")
def test_a_hand_off_of_a_p_with_queued_gs_grants_it_in_the_parked_ms_slot() -> None:
    """The P of a task blocked in a syscall, its children queued in the
    P's ring, goes to the parked spare M in its slot (the M reads it on
    waking, no Grant message through ZeroMQ): the children all run while
    their parent sleeps, and never two Ms on one P."""
    with gmpd.Executor(1) as ex:
        ex.submit(cpu, 0.001).result(timeout=30)
        time.sleep(0.3)  # the spare M parks
        ends, woke = ex.submit(spawn_then_block, 4, 0.5).result(timeout=30)
        assert max(ends) < woke, "the children waited for their blocked parent's P"
        stats = ex.statistics()
        assert stats.handoffs >= 1 and stats.memory_grants >= 1, stats
        assert stats.running_max <= 1


@pytest.mark.usefixtures("one_thread_ms")
def test_a_hand_off_that_took_the_last_parked_m_starts_a_spare() -> None:
    """One P; three sleepers then a hog queued on it.  Each sleeper's P is
    handed to the next M; once a hand-off took the last parked M, the
    coordinator starts one more ahead of the next hand-off, so an M is
    parked while every other one sleeps or runs the hog."""
    with gmpd.Executor(1) as ex:
        sleepers = [ex.submit(blocking, 3.0) for _ in range(3)]
        hog = ex.submit(cpu, 2.5)
        deadline, parked = time.monotonic() + 2.5, False
        while not parked and time.monotonic() < deadline:
            states = [m.state for m in ex.statistics().ms]
            busy = states.count(gmpd_sched.MState.SYSCALL) == 3 and gmpd_sched.MState.RUNNING in states
            parked = busy and gmpd_sched.MState.PARKED in states
            time.sleep(0.02)
        assert not any(f.done() for f in sleepers), "the sleepers were to be still asleep"
        assert parked, f"no spare M was parked after the hand-offs: {ex.statistics().ms}"
        hog.result(timeout=30)
        assert all(f.result(timeout=30) for f in sleepers)


def test_an_m_back_from_a_syscall_without_a_free_p_parks_then_continues() -> None:
    with gmpd.Executor(1) as ex:
        sleeper = ex.submit(blocking, 0.2)
        time.sleep(0.05)
        hog = ex.submit(cpu, 1.0)  # takes the retaken P and keeps it past the sleep
        hog_end = hog.result(timeout=30)
        assert sleeper.result(timeout=30) >= hog_end - 0.05, "it ran task code without a P"
        stats = ex.statistics()
        assert stats.running_max <= 1
        assert stats.parks >= 1


def test_recursive_fib_with_a_threshold_finishes_on_one_and_two_ps() -> None:
    """Parents waiting on children that run elsewhere block like a syscall:
    their P goes on, so the recursion cannot hold every P and deadlock."""
    for ps in (1, 2):
        with gmpd.Executor(ps) as ex:
            assert ex.submit(fib, 20).result(timeout=60) == 6765
            stats = ex.statistics()
            assert stats.running_max <= ps
            assert m_processes(ex) <= 8 * ps


def test_a_fresh_executor_flooded_at_once_starts_no_m_beyond_its_first() -> None:
    """The node agent starts GOMAXPROCS + 1 Ms on its own; a flood submitted
    while they start waits for them rather than asking for more (the
    coordinator asked for two more, whose starts took ~10% of a fresh
    executor's first noop flood)."""
    with gmpd.Executor(2) as ex:
        futures = [ex.submit(abs, -i) for i in range(3000)]
        assert [f.result(timeout=60) for f in futures] == list(range(3000))
        # (The flood may end before the agent's other Ms are up: wait for them.)
        deadline = time.monotonic() + 10
        while len([m for m in ex.statistics().ms if m.pid]) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.3)  # (and for any M asked for beyond them)
        ms = [m for m in ex.statistics().ms if m.pid]
        assert len(ms) == 3 and all(m.m < 3 for m in ms), ms


def test_the_m_count_stays_within_max_ms_under_a_flood_of_blocking_tasks() -> None:
    with gmpd.Executor(2, max_ms=4) as ex:
        futures = [ex.submit(blocking, 0.2) for _ in range(40)]
        futures += [ex.submit(fib, 16) for _ in range(4)]
        seen = 0
        while not all(f.done() for f in futures):
            seen = max(seen, m_processes(ex))
            time.sleep(0.01)
        for f in futures:
            f.result(timeout=60)
        assert seen <= 4
        assert ex.statistics().m_pool_full >= 1, "the bound was reached and hand-offs waited"


def test_sysmon_killed_is_restarted_and_scheduling_goes_on() -> None:
    with gmpd.Executor(1) as ex:
        first = ex.statistics().sysmon_pid
        deadline = time.monotonic() + 10
        while not first and time.monotonic() < deadline:
            time.sleep(0.01)
            first = ex.statistics().sysmon_pid
        assert first
        sleeper = ex.submit(blocking, 1.0)
        os.kill(first, signal.SIGKILL)
        assert [f.result(timeout=30) for f in [ex.submit(pow, 2, k) for k in range(20)]] == [
            2**k for k in range(20)
        ], "scheduling stops while sysmon is down"
        while ex.statistics().sysmon_pid in (0, first) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert ex.statistics().sysmon_pid not in (0, first)
        stats = ex.statistics()
        acted = stats.retakes + stats.takeovers
        sleeper.result(timeout=30)
        blocked = ex.submit(blocking, 1.0)
        time.sleep(0.05)
        quick = ex.submit(cpu, 0.01)
        assert quick.result(timeout=30) < blocked.result(timeout=30), "the new sysmon retakes too"
        stats = ex.statistics()
        assert stats.retakes + stats.takeovers > acted  # (a standby woken by it, or a retake)


SCHED = re.compile(
    r"^SCHED (\d+)ms: gomaxprocs=2 idleprocs=\d+ threads=\d+ spinningthreads=\d+ needspinning=[01]"
    r" idlethreads=\d+ runqueue=\d+ \[ \d+ \d+ \] schedticks=\[ \d+ \d+ \]$"
)


def _traced(env: dict[str, str]) -> list[str]:
    code = """
        import time, gmpd
        with gmpd.Executor(2) as ex:
            time.sleep(0.35)
            assert sum(ex.map(abs, range(-50, 50))) == 2500
    """
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    return out.stderr.splitlines()


def test_schedtrace_prints_gos_sched_line() -> None:
    lines = [line for line in _traced({"GMPD_SCHEDTRACE": "50"}) if line.startswith("SCHED")]
    assert len(lines) >= 4, lines
    for line in lines:
        assert SCHED.match(line), line
    times = [int(SCHED.match(line).group(1)) for line in lines]  # type: ignore[union-attr]
    assert times == sorted(times) and times[0] < 50


def test_scheddetail_adds_the_p_and_m_lines() -> None:
    lines = _traced({"GMPD_SCHEDTRACE": "100", "GMPD_SCHEDDETAIL": "1"})
    heads = [line for line in lines if line.startswith("SCHED")]
    assert heads and all(
        re.search(r" runqueue=\d+ gcwaiting=false nmidlelocked=0 stopwait=0 sysmonwait=(true|false)$", h)
        for h in heads
    ), heads
    p_line = re.compile(
        r"^  P[01]: status=\d schedtick=\d+ syscalltick=\d+ m=(\d+|nil) runqsize=\d+ gfreecnt=0 timerslen=0$"
    )
    m_line = re.compile(
        r"^  M\d+: p=(\d+|nil) curg=(\d+|nil) mallocing=0 throwing=0 preemptoff= locks=0 dying=0"
        r" spinning=(true|false) blocked=(true|false) lockedg=nil$"
    )
    assert sum(bool(p_line.match(line)) for line in lines) >= 2 * len(heads)
    assert any(m_line.match(line) for line in lines)


def whoami() -> int:
    return os.getpid()


def test_idle_ms_beyond_the_low_water_mark_exit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GMPD_M_IDLE_EXIT_MS", "300")
    monkeypatch.setenv("GMPD_M_MAX_THREADS", "1")  # (the sleepers' Ps go to other Ms: the pool grows)
    with gmpd.Executor(1) as ex:
        # Four Ms asleep in syscalls at once: each hands the P on, so the pool
        # grows.  (Counted while they sleep: the first ones may be idle long
        # enough to exit before the last one is done.)
        futures = [ex.submit(blocking, 1.0) for _ in range(4)]
        grown = 0
        while not all(f.done() for f in futures):
            grown = max(grown, len(ex.statistics().ms))
            time.sleep(0.01)
        assert len([f.result(timeout=60) for f in futures]) == 4
        assert grown >= 4, "Ms blocked in syscalls hold no P: more Ms were needed"
        deadline = time.monotonic() + 10
        while len(ex.statistics().ms) > 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        stats = ex.statistics()
        assert len(stats.ms) == 2 and stats.m_exits >= grown - 2, stats
        assert ex.submit(fib, 15).result(timeout=60) == 610, "the pool grows again"


def test_ms_are_recycled_after_max_tasks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GMPD_M_MAX_TASKS", "25")
    with gmpd.Executor(2) as ex:
        pids = [f.result(timeout=60) for f in [ex.submit(whoami) for _ in range(300)]]
        assert len(set(pids)) >= 300 // 25 - 1, "each M ran at most 25 tasks, then a fresh one came"
        assert all(count <= 25 for count in (pids.count(p) for p in set(pids)))
        assert ex.statistics().m_exits >= 300 // 25 - 3


def checkpointing(children: int, seconds: float) -> tuple[bool, int]:
    """Queue children behind itself, then run long, calling gmpd.checkpoint()."""
    futures = [gmpd.go(pow, 2, k) for k in range(children)]
    yielded = False
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        yielded |= gmpd.checkpoint()
    return yielded, sum(f.result() for f in futures)


def test_a_long_running_g_is_flagged_and_checkpoint_gives_its_queue_away() -> None:
    assert not gmpd.checkpoint(), "outside a task there is nothing to yield"
    for ps in (1, 2):
        with gmpd.Executor(ps) as ex:
            yielded, total = ex.submit(checkpointing, 30, 0.3).result(timeout=60)
            assert total == sum(2**k for k in range(30))
            assert yielded, "sysmon flags a P whose G ran past the 10 ms slice"
            stats = ex.statistics()
            assert stats.preempts >= 1 and stats.yields >= 1, stats


def chain(n: int) -> int:
    """A chain of nested waits, deeper than join-helping's inline bound (32)."""
    return 0 if n == 0 else gmpd.go(chain, n - 1).result() + 1


def test_a_deadlock_is_reported_not_hung() -> None:
    """Each M inlines 32 levels, then blocks: 70 levels need 3 Ms.  With
    max_ms=2 every M ends up waiting on a child no M is left to run."""
    with gmpd.Executor(1, max_ms=3) as ex:
        assert ex.submit(chain, 70).result(timeout=60) == 70
    with gmpd.Executor(1, max_ms=2) as ex:
        with pytest.raises(gmpd.Deadlock, match="max_ms"):
            ex.submit(chain, 70).result(timeout=60)
        assert ex.submit(chain, 10).result(timeout=60) == 10, "the executor works on afterwards"


def unmarked(seconds: float) -> float:
    """Blocks without telling gmpd (no gmpd.syscall)."""
    time.sleep(seconds)
    return time.monotonic()


def test_unmarked_blocking_is_seen_from_proc_and_gives_its_p_away() -> None:
    with gmpd.Executor(1) as ex:
        sleeper = ex.submit(unmarked, 1.5)
        workers = [ex.submit(cpu, 0.02) for _ in range(10)]
        ends = [f.result(timeout=30) for f in workers]
        assert max(ends) < sleeper.result(timeout=30), "CPU work waited behind an M asleep in time.sleep"
        stats = ex.statistics()
        assert stats.unmarked_blocks >= 1 and stats.retakes >= 1, stats
        assert stats.running_max <= 1
        # The woken M took a P back (or another) at the end of its G: the pool goes on.
        assert ex.submit(cpu, 0.01).result(timeout=30) > 0


def tangle(depth: int, k: int) -> int:
    """Joins, marked and unmarked sleeps and spawns, interleaved: retakes and
    hand-offs happen while children finish and batches are in flight."""
    if k % 3 == 0:
        with gmpd.syscall():
            time.sleep(0.012)  # past the 10 ms grace: retaken even when other Ps idle
    elif k % 3 == 1:
        time.sleep(0.003)  # unmarked
    if depth == 0:
        return k
    kids = [gmpd.go(tangle, depth - 1, k * 3 + i) for i in range(3)]
    return k + sum(int(f.result()) for f in kids)


def _tangle_sum(depth: int, k: int) -> int:
    return k if depth == 0 else k + sum(_tangle_sum(depth - 1, k * 3 + i) for i in range(3))


def test_blocking_joins_and_retakes_interleaved_lose_and_repeat_nothing() -> None:
    with gmpd.Executor(2, max_ms=12) as ex:
        futures = [ex.submit(tangle, 3, k) for k in range(24)]
        assert [f.result(timeout=120) for f in futures] == [_tangle_sum(3, k) for k in range(24)]
        stats = ex.statistics()
        assert stats.retakes >= 1 and stats.syscalls >= 1
        assert stats.running_max <= 2


def leaves_a_syscall_open() -> int:
    gmpd.syscall().__enter__()  # never left: the M must still come out whole
    return 7


def test_a_task_that_returns_inside_gmpd_syscall_does_not_wedge_its_m() -> None:
    with gmpd.Executor(1) as ex:
        assert ex.submit(leaves_a_syscall_open).result(timeout=30) == 7
        assert [f.result(timeout=30) for f in [ex.submit(pow, 3, k) for k in range(30)]] == [
            3**k for k in range(30)
        ]
        assert ex.statistics().running_max <= 1


def test_an_m_that_claimed_its_mark_and_blocks_again_unmarked_loses_its_p(nm: NodeMemory) -> None:
    """Two races in a row: sysmon moved P0 to SYSCALL after its M had claimed
    the mark (so the P waits in SYSCALL under an M that runs, which retake
    leaves alone), then the M blocked unmarked before its next look.  sysmon
    must mark it again and retake the P, or nobody ever would."""
    node = nm.node
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    mon = Sysmon(nm, "ipc:///nonexistent/gmpd-test")  # (its messages only queue)
    try:
        time.sleep(0.3)  # the sleeper's main thread is asleep (state S)
        assert node.acquirep(0, 0, 1)
        g = node.g_new(0, b"x")
        node.m_set(0, pid=sleeper.pid, p=0, curg=g, state=MState.RUNNING)
        assert node.p_cas(0, (PStatus.RUNNING, 0, 1), (PStatus.SYSCALL, 0, 1))  # the late move
        now = time.monotonic()
        for _ in range(10):
            mon.retake(now)
            now += 2 * UNMARKED_MIN_S + mon.grace_s
            if node.p_state(0)[1] != 0:
                break
        assert node.m_info(0)[0] == MState.ASLEEP, "marked asleep again"
        assert node.p_state(0)[:2] == (PStatus.IDLE, -1), "and its P retaken"
    finally:
        mon.close()
        sleeper.kill()
        sleeper.wait()


def test_a_syscall_that_lasted_a_tick_is_retaken_at_sysmons_first_look(nm: NodeMemory) -> None:
    """Go gives a syscall one sysmon tick (20 us at the quickest) before it
    retakes the P.  The M stamps its entry, so a call that has lasted that
    long when sysmon first looks is retaken then, not a Python round later
    (~0.7 ms: blocking_mix waited that long at each hand-off); a call that
    has just begun is given its tick."""
    node = nm.node
    mon = Sysmon(nm, "ipc:///nonexistent/gmpd-test")  # (its messages only queue)
    try:
        for p in (0, 1):
            assert node.acquirep(p, p, 1)
            node.m_set(p, pid=os.getpid(), p=p, state=MState.SYSCALL)  # (as entersyscall leaves it)
            assert node.runq(p, p).put(node.g_new(p, b"queued")) is None  # work waits behind the call
        node.sched_add(gmpd_sched.Counter.NPIDLE, -node.sched()[gmpd_sched.Counter.NPIDLE])  # none idle
        assert node.entersyscall(0, 0, 1)
        time.sleep(0.001)  # P0's call has lasted 1 ms when sysmon first looks
        assert node.entersyscall(1, 1, 1)
        assert mon.retake(node.p_syscallwhen(1) / 1e9) == 1, "only the call that lasted a tick"
        assert node.p_state(0)[:2] == (PStatus.IDLE, -1)
        assert node.p_state(1)[0] == PStatus.SYSCALL, "a call just begun gets its tick"
        assert mon.retake(time.monotonic() + 0.001) == 1
        assert node.p_state(1)[:2] == (PStatus.IDLE, -1)
    finally:
        mon.close()


def test_a_p_sysmon_marked_asleep_gets_the_grace_of_a_new_syscall(nm: NodeMemory) -> None:
    """The entry stamp is the last real syscall's: a P that sysmon itself
    moved to SYSCALL (an M seen asleep, unmarked) must not read it as a
    call that has lasted since then, which would skip Go's 10 ms grace
    for an empty queue while a P is idle (found by review)."""
    node = nm.node
    mon = Sysmon(nm, "ipc:///nonexistent/gmpd-test")  # (its messages only queue)
    try:
        assert node.acquirep(0, 0, 1)
        node.m_set(0, pid=os.getpid(), p=0, state=MState.RUNNING)
        assert node.entersyscall(0, 0, 1) and node.exitsyscall(0, 0, 1)  # an old, finished call
        node.sched_add(gmpd_sched.Counter.NPIDLE, 1)  # P1 idle: it could take P0's work
        time.sleep(0.02)  # (older than the grace)
        mon.retake(time.monotonic())  # sysmon sees P0 RUNNING
        assert node.p_cas(0, (PStatus.RUNNING, 0, 1), (PStatus.SYSCALL, 0, 1))  # as mark_asleep does
        node.m_set(0, state=MState.ASLEEP)
        assert mon.retake(time.monotonic()) == 0, "an empty queue with a P idle waits out the grace"
        assert node.p_state(0)[0] == PStatus.SYSCALL
        assert mon.retake(time.monotonic() + mon.grace_s + 0.001) == 1, "and is retaken after it"
    finally:
        mon.close()


@pytest.mark.parametrize("state", [MState.SPINNING, MState.OWNING])
def test_an_m_whose_p_was_marked_after_it_looked_keeps_it(nm: NodeMemory, state: MState) -> None:
    """sysmon's move of a P to SYSCALL can land after its M's last G ended
    and its M checked the lease; the M then spins on it (its state SPINNING,
    no G): a retake then gave the P, and the arena the M still uses until
    drop_p, to a second M.  Likewise after an M claimed the mark's first
    half and entered OWNING (task code writing the P's arena and queue)."""
    node = nm.node
    mon = Sysmon(nm, "ipc:///nonexistent/gmpd-test")  # (its messages only queue)
    try:
        assert node.acquirep(0, 0, 1)
        curg = node.g_new(0, b"x") if state == MState.OWNING else 0
        node.m_set(0, pid=os.getpid(), p=0, curg=curg, state=state)
        assert node.p_cas(0, (PStatus.RUNNING, 0, 1), (PStatus.SYSCALL, 0, 1))  # the late move
        now = time.monotonic()
        for _ in range(5):
            mon.retake(now)
            now += 2 * UNMARKED_MIN_S + mon.grace_s
        assert node.p_state(0) == (PStatus.SYSCALL, 0, 1)  # (the M takes it back to RUNNING itself)
    finally:
        mon.close()


def test_quiet_rounds_return_for_checkdead_only_while_an_m_waits_on_a_child(nm: NodeMemory) -> None:
    """checkdead can find a deadlock only among Ms waiting on a child (in a
    join, or with a thread in one): without one, its looks stay in C and
    the quiet run goes on past them; one that starts waiting ends the run
    at the next look that is due."""
    node = nm.node
    mon = Sysmon(nm, "ipc:///nonexistent/gmpd-test")  # (its messages only queue)
    lifeline = os.pidfd_open(os.getpid())
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        assert node.acquirep(0, 0, 1)  # a P busy with a G: no deep sleep
        node.m_set(0, pid=spinner.pid, p=0, curg=node.g_new(0, b"x"), state=MState.RUNNING)
        node.set_preempt(0, True)  # (its G's slice passes: no PREEMPT return)
        assert mon.thread_state(spinner.pid, spinner.pid) is not None  # (its /proc file open: no NOFD)
        for how in ({"state": MState.JOIN}, {"blocked": 1 << 16}):
            node.m_set(1, pid=os.getpid(), state=MState.IDLE, blocked=0)
            timer = threading.Timer(0.3, lambda how=how: node.m_set(1, **how))
            timer.start()
            t = time.monotonic()
            mon.last_checkdead = t - CHECKDEAD_S + 0.02  # due in 20 ms
            why, _nap = mon.quiet(1000, lifeline)
            timer.join()
            assert (why, time.monotonic() - t >= 0.3) == (Quiet.TIME, True), how
        node.m_set(1, state=MState.IDLE, blocked=0)
        t = time.monotonic()
        mon.last_checkdead = t  # nobody waits: the run still ends by QUIET_MAX_S (stat's looks, the watchdog)
        assert mon.quiet(1000, lifeline)[0] == Quiet.TIME
        assert QUIET_MAX_S * 0.9 <= time.monotonic() - t <= QUIET_MAX_S + 0.5
    finally:
        os.close(lifeline)
        mon.close()
        spinner.kill()
        spinner.wait()


def test_checkdead_forgets_what_it_saw_across_looks_a_quiet_run_skipped(nm: NodeMemory) -> None:
    """Quiet runs skip checkdead's looks while no M waits on a child; the
    next look must not take its memory from before them: the same Ms
    deadlocked again are reported again (a memory of the first report hid
    it: the Ms waited forever), and only on two looks of their own."""
    node = nm.node
    mon = Sysmon(nm, "ipc:///nonexistent/gmpd-test")  # (its messages only queue)
    ms = range(node.nms - 1)

    def reports() -> int:
        return node.sched()[gmpd_sched.Counter.DEADLOCK]

    try:
        for m in ms:  # every M slot live and waiting on a child: nothing can run the children
            node.m_set(m, pid=os.getpid(), state=MState.JOIN)
        mon.checkdead()
        mon.checkdead()
        assert reports() == 1, "two looks: a deadlock"
        mon.checkdead()
        assert reports() == 1, "one report per deadlock"
        for m in ms:
            node.m_set(m, state=MState.RUNNING)  # woken by the report, they leave their joins
        # ... and quiet runs skip the looks while none waits; then the same Ms wait again:
        for m in ms:
            node.m_set(m, state=MState.JOIN)
        mon.checkdead(stale=True)
        assert reports() == 1, "the first look after the gap is one look, not the second"
        mon.checkdead()
        assert reports() == 2, "the new deadlock is reported"
    finally:
        for m in ms:
            node.m_set(m, pid=0, state=MState.PARKED)
        mon.close()


def test_the_looks_go_back_to_stat_when_wchan_says_a_sleeping_m_runs(nm: NodeMemory, tmp_path: Path) -> None:
    """An M thread stat saw asleep on two looks whose wchan says "0" (its
    M hidden from us, say) is one the quiet looks cannot see: after
    WCHAN_MISSES such marks in a row, the looks read stat for good; a
    named one in between starts the count again."""
    mon = Sysmon(nm, "ipc:///nonexistent/gmpd-test")  # (its messages only queue)
    runnable, named = tmp_path / "runnable", tmp_path / "named"
    runnable.write_bytes(b"0")
    named.write_bytes(b"hrtimer_nanosleep")
    try:
        mon.wchan = True
        mon.wchanfds = {1: os.open(runnable, os.O_RDONLY), 2: os.open(named, os.O_RDONLY)}
        for tid in [1] * (WCHAN_MISSES - 1) + [2] + [1] * (WCHAN_MISSES - 1):
            mon.check_wchan(tid)
        assert (mon.wchan, len(mon.wchanfds)) == (True, 2), "never WCHAN_MISSES in a row"
        mon.check_wchan(1)
        assert (mon.wchan, mon.wchanfds) == (False, {}), "back to stat, its wchan files closed"
        mon.agent = os.getppid()  # (a process of ours, asleep in pytest's wait: named)
        for _ in range(WCHAN_TRIES):
            mon.probe_wchan()
        assert not mon.wchan, "for good: no probe turns wchan on again"
    finally:
        mon.close()


@functools.cache
def wchan_names_sleepers() -> bool:
    """Whether this kernel names where another process's thread sleeps in
    /proc/PID/wchan (not without kallsyms, nor where a policy hides it;
    sysmon's looks then read stat, which its other tests cover)."""
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        for _ in range(100):
            time.sleep(0.02)
            with contextlib.suppress(OSError), open(f"/proc/{sleeper.pid}/wchan", "rb") as f:
                if f.read() not in (b"", b"0"):
                    return True
        return False
    finally:
        sleeper.kill()
        sleeper.wait()


def needs_wchan() -> None:
    if not wchan_names_sleepers():
        pytest.skip(
            "this kernel does not name where a sleeping thread waits (/proc/PID/wchan): sysmon reads stat"
        )


def test_wchan_is_read_once_a_sleeping_node_agent_was_seen_named(nm: NodeMemory) -> None:
    """The quiet looks read an M thread's /proc wchan ("0" while it runs),
    not its stat, only once probe_wchan saw the node agent (here: a
    process of ours) named asleep in it: a kernel or a policy that says "0"
    for every thread would hide every unmarked block.  An agent seen only
    running, or gone, leaves them on stat."""
    needs_wchan()
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        time.sleep(0.2)  # (both running their loops)
        for agent, named in ((spinner.pid, False), (sleeper.pid, True), (2**22 + 1, False)):
            mon = Sysmon(nm, "ipc:///nonexistent/gmpd-test", agent=agent)
            try:
                for _ in range(WCHAN_TRIES):  # (it stops probing once it knows)
                    mon.probe_wchan()
                assert mon.wchan == named, agent
            finally:
                mon.close()
    finally:
        for p in (spinner, sleeper):
            p.kill()
            p.wait()


@pytest.mark.parametrize("wchan", [False, True])
def test_quiet_rounds_return_for_what_the_python_round_acts_on(nm: NodeMemory, wchan: bool) -> None:
    """native/sysmon.c naps and looks while nothing needs sysmon's Python
    round; each look that finds work for it must end the quiet run (a look
    that missed one would leave a syscall unretaken, an unmarked block
    undetected or a timeout unenforced), and nothing else may.  The looks
    read each M thread's /proc stat, or its wchan once probe_wchan found
    it named."""
    node = nm.node
    mon = Sysmon(nm, "ipc:///nonexistent/gmpd-test")  # (its messages only queue)
    if wchan:
        needs_wchan()
    mon.wchan = wchan
    lifeline = os.pidfd_open(os.getpid())  # never readable: we are alive
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:

        def quiet(for_s: float = 0.05) -> Quiet:
            mon.last_checkdead = time.monotonic() + for_s - CHECKDEAD_S  # return by then
            t = time.monotonic()
            why, nap_us = mon.quiet(1000, lifeline)
            assert time.monotonic() - t < for_s + 0.5 and 1000 <= nap_us <= mon.max_us
            return why

        assert quiet() == Quiet.IDLE, "every P idle: the deep sleep"
        node.m_set(
            2, pid=sleeper.pid, state=MState.JOIN
        )  # an M waiting on a child: checkdead's looks are due
        assert node.acquirep(0, 0, 1)
        g = node.g_new(0, b"x")
        node.m_set(0, pid=os.getpid(), p=0, curg=g, state=MState.RUNNING)  # our main thread runs (R)
        assert quiet() == Quiet.NOFD, "its /proc file is opened by the Python round"
        assert mon.thread_state(os.getpid(), os.getpid()) is not None  # (as detect_blocked does)
        node.set_preempt(0, True)  # (a G past its slice that has its flag already)
        assert quiet(0.05) == Quiet.TIME, "nothing to do: the loop runs until checkdead is due"
        assert (
            mon.watch[0].schedtick == node.p_ticks(0)[0]
            and time.monotonic() - mon.watch[0].running_when < 0.06
        )
        node.set_preempt(0, False)
        mon.watch[0].schedwhen = time.monotonic()
        t = time.monotonic()
        assert quiet(1.0) == Quiet.PREEMPT, "a G that has had its P for 10 ms"
        assert time.monotonic() - t >= FORCE_PREEMPT_S * 0.9
        node.schedtick(0)  # a new G: its slice starts at the next look
        assert quiet(0.005) == Quiet.TIME and node.p_ticks(0)[0] == mon.watch[0].schedtick
        node.set_preempt(0, True)

        node.m_set_deadline(1, time.monotonic_ns() - 1)
        node.m_set_doom(1, Doom.TIMEOUT)  # killed for it already: not the watchdog's any more
        assert quiet(0.05) == Quiet.TIME
        node.m_set_doom(1, Doom.NONE)
        assert quiet(1.0) == Quiet.DEADLINE, "a task past its deadline"
        node.m_set_deadline(1, 0)

        node.m_set(0, pid=sleeper.pid)
        time.sleep(0.2)  # the sleeper's main thread is asleep (S)
        assert mon.thread_state(sleeper.pid, sleeper.pid) is not None
        assert quiet(1.0) == Quiet.ASLEEP, "a running M asleep: unmarked blocking?"
        stopped = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        try:
            time.sleep(0.1)
            assert mon.thread_state(stopped.pid, stopped.pid) is not None
            node.m_set(0, pid=stopped.pid)
            assert quiet(0.05) == Quiet.TIME, "a running M that runs"
            stopped.send_signal(signal.SIGSTOP)
            assert quiet(1.0) == Quiet.ASLEEP, "a running M stopped (SIGSTOP, a debugger)"
        finally:
            stopped.kill()
            stopped.wait()
        node.m_set(0, pid=os.getpid())

        # A standby thread holds the M (gmpd.m, takeover): the look is at
        # that thread, not the main one (which may sleep in its task's call).
        napper, tid = threading.Event(), []

        def nap() -> None:
            tid.append(threading.get_native_id())
            napper.wait()

        thread = threading.Thread(target=nap)
        thread.start()
        while not tid:
            time.sleep(0.001)
        node.m_set(0, tid=tid[0])
        assert node.m_thread(0) == (os.getpid(), tid[0])
        assert quiet() == Quiet.NOFD, "the holding thread's own /proc file"
        assert mon.thread_state(os.getpid(), tid[0]) is not None
        time.sleep(0.05)
        assert quiet(1.0) == Quiet.ASLEEP, "the thread that holds the M is asleep"
        napper.set()
        thread.join()
        node.m_set(0, tid=0)
        assert node.m_thread(0) == (os.getpid(), os.getpid())

        assert node.entersyscall(0, 0, 1)
        t = time.monotonic()
        assert quiet(1.0) == Quiet.SYSCALL, "a P in a syscall: retake"
        # ... after the Python nap's short sleep, as before: a round at once
        # for a call that ends meanwhile came back here at once (review).
        assert time.monotonic() - t >= mon.syscall_us / 1e6
        assert node.exitsyscall(0, 0, 1)

        sleeper.kill()
        sleeper.wait()
        node.m_set(2, pid=0, state=MState.PARKED)
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        gone = os.pidfd_open(dead.pid)
        dead.wait()
        try:
            mon.last_checkdead = time.monotonic()
            assert mon.quiet(1000, gone)[0] == Quiet.LIFELINE, "the node agent exited"
        finally:
            os.close(gone)
    finally:
        os.close(lifeline)
        mon.close()
        sleeper.kill()
        sleeper.wait()
