"""Standby threads: while a G blocks in gmpd.syscall(), another thread of
the same M takes its P over (gmpd.m, takeover; gmpd.sysmon, standby)."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

import gmpd
from tests.test_sysmon import m_processes

pytestmark = pytest.mark.timeout(90)


def where() -> tuple[int, int]:
    return os.getpid(), threading.get_native_id()


def sleeper(seconds: float) -> tuple[int, int, float, float]:
    """Sleeps in gmpd.syscall(); (pid, thread, when it woke, when it went on)."""
    pid, tid = where()
    with gmpd.syscall():
        time.sleep(seconds)
        woke = time.monotonic()
    return pid, tid, woke, time.monotonic()


def burner(seconds: float) -> tuple[int, int, float, float]:
    """Pure-Python CPU work; (pid, thread, start, end)."""
    pid, tid = where()
    start = time.monotonic()
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass
    return pid, tid, start, time.monotonic()


def test_a_long_gmpd_syscall_is_taken_over_by_a_thread_of_its_own_m() -> None:
    """One P: the CPU tasks queued behind a sleeping task run while it
    sleeps, in the same M process on another thread: no other M, no
    hand-off through the coordinator, and never two Gs running at once."""
    with gmpd.Executor(1) as ex:
        ex.submit(burner, 0.001).result(timeout=30)
        before = m_processes(ex)
        slept = ex.submit(sleeper, 0.6)
        work = [ex.submit(burner, 0.02) for _ in range(8)]
        pid, tid, woke, _ = slept.result(timeout=30)
        ran = [f.result(timeout=30) for f in work]
        assert all(r[0] == pid for r in ran), "the queued work went to another M process"
        assert all(r[1] != tid for r in ran), "(the sleeping thread ran them?)"
        assert max(r[3] for r in ran) < woke, "the CPU work waited behind the sleep"
        stats = ex.statistics()
        assert stats.takeovers >= 1 and stats.handoffs == 0, stats
        assert stats.running_max <= 1
        assert m_processes(ex) == before


def test_a_thread_back_from_its_call_waits_for_the_running_g() -> None:
    """The sleeper wakes while the thread that took its P runs a long G:
    it goes on only once that G is over (one P, one G running at a time),
    then finishes; the pool goes on after."""
    with gmpd.Executor(1) as ex:
        slept = ex.submit(sleeper, 0.3)  # (room for a slow takeover on a loaded machine)
        hog = ex.submit(burner, 1.0)
        _, _, woke, went_on = slept.result(timeout=30)
        _, _, start, end = hog.result(timeout=30)
        assert start < woke < end, "the hog was to run through the sleep's end"
        assert went_on >= end - 0.005, "the sleeper ran task code while the hog held the P"
        assert ex.statistics().running_max <= 1
        assert [f.result(timeout=30) for f in [ex.submit(pow, 2, k) for k in range(10)]] == [
            2**k for k in range(10)
        ]


def test_a_short_gmpd_syscall_is_not_taken_over() -> None:
    """A call that returns before sysmon looks keeps its P (two atomic
    operations); nothing wakes a standby thread for it.  (One the OS
    preempts for a tick inside may be taken over: a few in 2000.)"""

    def many(n: int) -> int:
        for _ in range(n):
            with gmpd.syscall():
                pass
        return n

    with gmpd.Executor(1) as ex:
        assert ex.submit(many, 2000).result(timeout=30) == 2000
        stats = ex.statistics()
        assert stats.syscalls >= 2000 and stats.takeovers <= 20 and stats.handoffs <= 20, stats


def test_with_one_thread_per_m_the_p_goes_to_another_m(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GMPD_M_MAX_THREADS", "1")
    with gmpd.Executor(1) as ex:
        slept = ex.submit(sleeper, 0.5)
        work = [ex.submit(burner, 0.02) for _ in range(5)]
        pid = slept.result(timeout=30)[0]
        assert all(f.result(timeout=30)[0] != pid for f in work)
        stats = ex.statistics()
        assert stats.takeovers == 0 and stats.handoffs >= 1, stats


def square_later(x: int) -> int:
    """gmpd.go and a child's result() from inside a gmpd.syscall() whose
    P another thread took over meanwhile."""
    with gmpd.syscall():
        time.sleep(0.2)
        child = gmpd.go(pow, x, 2)
        got = int(child.result())
        time.sleep(0.05)
    return got


def test_gmpd_go_inside_a_taken_over_syscall() -> None:
    with gmpd.Executor(1) as ex:
        f = ex.submit(square_later, 7)
        hogs = [ex.submit(burner, 0.05) for _ in range(6)]
        assert f.result(timeout=30) == 49
        assert all(h.result(timeout=30) for h in hogs)
        assert ex.statistics().takeovers >= 1


def test_the_thread_that_holds_the_m_is_the_one_sysmon_watches() -> None:
    """The main thread sleeps in a marked call while a standby thread runs
    a long G: sysmon looks at that thread (not the sleeping main one), so it
    takes nothing for an unmarked block; a standby thread that then blocks
    unmarked is seen, and its P goes on."""
    with gmpd.Executor(1) as ex:
        slept = ex.submit(sleeper, 1.0)
        hog = ex.submit(burner, 0.5)  # queued behind it: a standby thread of its M runs it
        assert hog.result(timeout=30)[0] == slept.result(timeout=30)[0]
        stats = ex.statistics()
        assert stats.takeovers >= 1 and stats.unmarked_blocks == 0, (
            "the sleeping main thread was taken for the M"
        )
        # Now a standby thread's G blocks without telling gmpd.
        slept = ex.submit(sleeper, 1.0)
        nap = ex.submit(unmarked_nap, 0.8)
        quick = [ex.submit(burner, 0.01) for _ in range(5)]
        assert max(f.result(timeout=30)[3] for f in quick) < nap.result(timeout=30)
        assert ex.statistics().unmarked_blocks >= 1
        slept.result(timeout=30)


def unmarked_nap(seconds: float) -> float:
    time.sleep(seconds)
    return time.monotonic()


def blocked_or_burning(marker: str, kind: str) -> str:
    """First run: leaves a marker, then blocks in gmpd.syscall() (``sleep``)
    or burns CPU (``burn``) until killed.  A run after that returns.  The
    burner first waits, in marked sleeps, for the sleeper's marker: whichever
    starts first, the other runs on a thread of the same M meanwhile."""
    path = Path(marker)
    if path.exists():
        return f"{kind} again"
    while kind == "burn" and not (path.parent / "sleep").exists():
        with gmpd.syscall():
            time.sleep(0.01)
    (path.parent / f"{kind}.tmp").write_text(str(os.getpid()))
    (path.parent / f"{kind}.tmp").rename(path)  # (whole when the test sees it)
    if kind == "sleep":
        with gmpd.syscall():
            time.sleep(60)
    else:
        end = time.perf_counter() + 60
        while time.perf_counter() < end:
            pass
    return "not killed"


@pytest.mark.parametrize("retries", [0, 1])
def test_an_m_killed_with_a_g_blocked_on_another_thread_loses_neither(tmp_path: Path, retries: int) -> None:
    """SIGKILL an M whose main thread sleeps in a taken-over gmpd.syscall()
    while a standby thread runs another G: both Gs were running there and
    are charged: with retries they run again, with none they fail with
    WorkerLost (a G blocked on another thread is not retried for free,
    which would loop forever on a task that kills its M from a syscall)."""
    sleep_mark, burn_mark = tmp_path / "sleep", tmp_path / "burn"
    with gmpd.Executor(1, retries=retries) as ex:
        ex.submit(pow, 2, 2).result(timeout=30)
        slept = ex.submit(blocked_or_burning, str(sleep_mark), "sleep")
        burned = ex.submit(blocked_or_burning, str(burn_mark), "burn")
        deadline = time.monotonic() + 20
        while not (sleep_mark.exists() and burn_mark.exists()) and time.monotonic() < deadline:
            time.sleep(0.01)
        pid = int(sleep_mark.read_text())
        assert int(burn_mark.read_text()) == pid, "the second G was to run on a thread of the same M"
        assert ex.statistics().takeovers >= 1
        os.kill(pid, signal.SIGKILL)
        if retries:
            assert slept.result(timeout=30) == "sleep again"
            assert burned.result(timeout=30) == "burn again"
        else:
            for f in (slept, burned):
                with pytest.raises(gmpd.WorkerLost):
                    f.result(timeout=30)
        assert [f.result(timeout=30) for f in [ex.submit(pow, 3, k) for k in range(5)]] == [
            3**k for k in range(5)
        ]


def producer(path: str, delay: float) -> str:
    """Writes ``path`` after its call: it needs the M back to do so."""
    with gmpd.syscall():
        time.sleep(delay)
    Path(path).write_text("x")
    return "produced"


def consumer(path: str, limit: float) -> str:
    """Waits in gmpd.syscall() for the producer's file."""
    start = time.monotonic()
    with gmpd.syscall():
        while not Path(path).exists():
            if time.monotonic() - start > limit:
                return "gave up"
            time.sleep(0.01)
    return "consumed"


@pytest.mark.parametrize("case", ["no standby left", "a timed task"])
def test_a_thread_back_from_its_call_takes_the_m_from_a_holder_blocked_in_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    """The producer's P was taken over and the new holder's task now waits,
    in a gmpd.syscall(), for what the producer writes once back: the
    producer must take the M over from the blocked holder (it must not
    wait for that call to end), even when no standby thread could have
    (all max_threads in use, or a task with a timeout, which no standby
    takes over)."""
    flag = str(tmp_path / "flag")
    if case == "no standby left":
        monkeypatch.setenv("GMPD_M_MAX_THREADS", "2")
    with gmpd.Executor(1) as ex:
        ex.submit(pow, 2, 2).result(timeout=30)
        produced = ex.submit(producer, flag, 0.2)
        submit = ex.options(timeout=30).submit if case == "a timed task" else ex.submit
        consumed = submit(consumer, flag, 10.0)
        assert consumed.result(timeout=30) == "consumed"
        assert produced.result(timeout=30) == "produced"
        assert ex.statistics().takeovers >= 1


def test_a_timeout_kill_fails_only_its_own_task(tmp_path: Path) -> None:
    """A timed task on a standby thread runs past its timeout and sysmon
    kills the M, where an untimed task sleeps on the main thread: the
    timed one fails with TaskTimeout, the sleeper runs again uncharged
    (with retries=0 it would otherwise fail with WorkerLost)."""
    with gmpd.Executor(1, retries=0) as ex:
        ex.submit(pow, 2, 2).result(timeout=30)
        slept = ex.submit(sleeper, 2.0)
        timed = ex.options(timeout=0.5).submit(burner, 3.0)
        with pytest.raises(gmpd.TaskTimeout):
            timed.result(timeout=30)
        assert slept.result(timeout=30)[2] > 0
        stats = ex.statistics()
        assert stats.timeouts == 1 and stats.takeovers >= 1, stats
