"""gmpd.Executor: concurrent.futures semantics on the embedded cluster."""

from __future__ import annotations

import contextlib
import copy
import gc
import os
import pickle
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import types
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import CancelledError, as_completed, wait
from pathlib import Path
from typing import Any

import psutil
import pytest

import gmpd
from gmpd import executor, wire
from gmpd.m import RemoteTraceback
from gmpd.shm import SHM_DIR
from tests.conftest import children_of, run_child, run_dirs

pytestmark = pytest.mark.timeout(60)


def square(x: int) -> int:
    return x * x


def boom(msg: str) -> None:
    raise ValueError(msg)


def sleep_then(x: int, seconds: float) -> int:
    time.sleep(seconds)
    return x


def echo(x: object) -> object:
    return x


def exit_task() -> None:
    raise SystemExit(3)


def unpicklable_result() -> object:
    return threading.Lock()


def fan(n: int) -> int:
    futures = [gmpd.go(square, i) for i in range(n)]
    return sum(f.result() for f in futures)


def fib(n: int) -> int:
    if n < 10:
        a, b = 0, 1
        for _ in range(n):
            a, b = b, a + b
        return a
    left, right = gmpd.go(fib, n - 1), gmpd.go(fib, n - 2)
    return int(left.result() + right.result())


def spin_ms(ms: float) -> int:
    end = time.perf_counter() + ms / 1000
    n = 0
    while time.perf_counter() < end:
        n += 1
    return n


@pytest.fixture
def ex() -> Iterator[gmpd.Executor]:
    """A fresh 2-P cluster per test, so conftest's leftover check covers each."""
    with gmpd.Executor(2) as executor:
        yield executor


def test_executor_submit_and_map(ex: gmpd.Executor) -> None:
    assert ex.submit(square, 7).result() == 49
    assert list(ex.map(square, range(100))) == [x * x for x in range(100)]
    assert list(ex.map(square, range(1000), chunksize=64)) == [x * x for x in range(1000)]
    assert list(ex.map(pow, [2, 3], [5, 2])) == [32, 9]


def test_executor_closures_and_lambdas(ex: gmpd.Executor) -> None:
    k = 10
    assert ex.submit(lambda x: x + k, 5).result() == 15


def test_executor_exception_carries_remote_traceback(ex: gmpd.Executor) -> None:
    fut = ex.submit(boom, "bad input")
    with pytest.raises(ValueError, match="bad input") as info:
        fut.result()
    cause = info.value.__cause__
    assert isinstance(cause, RemoteTraceback)
    assert "boom" in str(cause)
    assert ex.submit(square, 3).result() == 9, "the M keeps working after a task raised"


def test_executor_system_exit_fails_only_that_task(ex: gmpd.Executor) -> None:
    with pytest.raises(SystemExit):
        ex.submit(exit_task).result()
    assert ex.submit(square, 4).result() == 16


def test_executor_unpicklable_argument_fails_only_that_task(ex: gmpd.Executor) -> None:
    fut = ex.submit(echo, threading.Lock())
    with pytest.raises(TypeError, match="pickle"):
        fut.result()
    assert ex.submit(square, 5).result() == 25


def test_executor_unpicklable_result_fails_only_that_task(ex: gmpd.Executor) -> None:
    with pytest.raises(pickle.PicklingError, match="cannot be pickled"):
        ex.submit(unpicklable_result).result()
    assert ex.submit(square, 6).result() == 36


def test_executor_large_arguments_and_results(ex: gmpd.Executor) -> None:
    blob = os.urandom(20 * 2**20)
    assert ex.submit(echo, blob).result() == blob


def test_executor_ten_thousand_tiny_tasks(ex: gmpd.Executor) -> None:
    futures = [ex.submit(square, i) for i in range(10_000)]
    assert sum(f.result() for f in futures) == sum(i * i for i in range(10_000))


def assert_squares(ex: gmpd.Executor, n: int) -> None:
    assert [f.result(timeout=30) for f in [ex.submit(square, i) for i in range(n)]] == [
        i * i for i in range(n)
    ]


def sized(n: int) -> bytes:
    return b"x" * n


def test_executor_results_on_one_node_come_as_datagrams(ex: gmpd.Executor) -> None:
    """An M on the client's node sends Results as datagrams from its own
    thread (no ZeroMQ IO thread on either side); one larger than a
    datagram may be goes by ZeroMQ, and so does every one once the
    client's datagram socket is gone.  Nothing is lost either way."""
    io = ex._io
    assert_squares(ex, 200)
    assert io.dgrams > 0, "no result came as a datagram"
    before = io.dgrams
    assert ex.submit(sized, wire.DGRAM_MAX + 1).result(timeout=30) == sized(wire.DGRAM_MAX + 1)
    assert io.dgrams == before, "a frame over DGRAM_MAX went as a datagram"
    os.unlink(os.path.join(ex._cluster.rundir, wire.RESULTS_DGRAM))
    assert_squares(ex, 200)
    assert io.dgrams == before


def test_executor_drops_garbage_datagrams(ex: gmpd.Executor) -> None:
    """Frames on the results datagram socket are checked like any other
    (wire.decode): garbage, a truncated frame, a result for no task and
    any message but Results (a Cancelled for a running task) are dropped,
    and the client goes on."""
    path = os.path.join(ex._cluster.rundir, wire.RESULTS_DGRAM)
    slow = ex.submit(time.sleep, 0.5)
    slow_tid = slow._tid  # type: ignore[attr-defined]
    good = wire.encode(wire.Results([(10**9, wire.OK, pickle.dumps(1))]))
    cancelled = wire.encode(wire.Cancelled([slow_tid], []))
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        for frame in (b"", b"junk", good[:-3], good, cancelled, b"\xff" * (wire.DGRAM_MAX + 10)):
            with contextlib.suppress(OSError):
                s.sendto(frame, path)
    assert ex.submit(square, 7).result(timeout=30) == 49
    assert slow.result(timeout=30) is None and not slow.cancelled()
    deadline = time.monotonic() + 10
    while ex._io.duplicates < 1 and time.monotonic() < deadline:
        time.sleep(0.01)  # (the lone task's result may come back in node memory first)
    assert ex._io.duplicates == 1  # the result for no task


def test_executor_without_its_datagram_socket_gets_every_result_by_zeromq(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A results datagram socket that cannot be bound (a path too long for
    one, say) leaves the cluster on ZeroMQ alone: it starts, and no result
    is lost."""

    class Unbindable(socket.socket):
        def bind(self, address: Any) -> None:
            raise OSError("AF_UNIX path too long")

    monkeypatch.setattr(socket, "socket", Unbindable)  # (the client binds it; Ms run in other processes)
    with gmpd.Executor(2) as ex:
        assert ex._cluster.dgram is None
        assert_squares(ex, 300)
        assert ex._io.dgrams == 0


def test_executor_in_a_run_directory_too_long_for_a_socket_says_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run directory whose socket paths would pass the 107 bytes a Unix
    socket path holds fails the start with a GmpdError that names the fix,
    and leaves nothing behind."""
    base = tmp_path / ("d" * 100)
    base.mkdir()
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(base))
    with pytest.raises(gmpd.GmpdError, match="XDG_RUNTIME_DIR"):
        gmpd.Executor(1)
    assert list(base.iterdir()) == []


def test_executor_results_of_gs_under_long_g_wait_for_company() -> None:
    """The results of 15 ms Gs with more queued go in batches (up to
    FLUSH_AGE), not one message each: each costs the client wake-ups that a
    busy node takes from its tasks.  Only a G of LONG_G or more, or an M
    whose queue ran dry, sends at once."""
    with gmpd.Executor(1) as ex:
        ex.submit(square, 1).result(timeout=30)
        before = ex._io.dgrams
        futures = [ex.submit(spin_ms, 15.0) for _ in range(60)]
        wait(futures, timeout=60)
        frames = ex._io.dgrams - before
        assert frames <= 35, f"{frames} results frames for 60 Gs of 15 ms"


def test_executor_results_of_a_stream_wait_up_to_a_tenth_of_a_second() -> None:
    """The results of short Gs with more queued behind them go together
    for up to FLUSH_AGE (0.1 s): a Results frame costs the client two
    wake-ups, cold, which a busy farm takes from its tasks (at 50 ms the
    client spent 3-4 ms more of CPU in a 400-task farm)."""
    with gmpd.Executor(1) as ex:
        ex.submit(square, 1).result(timeout=30)
        time.sleep(0.05)  # (its datagram copy, behind the node-memory result, is counted by then)
        before, start = ex._io.dgrams, time.monotonic()
        futures = [ex.submit(spin_ms, 5.0) for _ in range(100)]
        wait(futures, timeout=60)
        elapsed, frames = time.monotonic() - start, ex._io.dgrams - before
        # ~6 at 0.1 s (~11 at 50 ms); + 3: the first and last flushes, a G
        # descheduled past LONG_G on a loaded machine.
        assert frames <= elapsed / 0.1 + 3, f"{frames} results frames in {elapsed:.2f} s"


def test_executor_batches_finished_while_tasks_are_in_flight(ex: gmpd.Executor) -> None:
    """Every result is reported to the coordinator once (it forgets the task),
    and not one frame per result while others are in flight: each frame
    costs the coordinator a wake-up, CPU a busy farm takes from its tasks."""
    io = ex._io
    finished: list[list[int]] = []
    results = 0
    send, on_message = io.send, io.on_message

    def spy_send(msg: wire.Message) -> None:
        if isinstance(msg, wire.Finished):
            finished.append(list(msg.tids))
        send(msg)

    def spy_message(msg: wire.Message) -> None:
        nonlocal results
        results += isinstance(msg, wire.Results)
        on_message(msg)

    io.send, io.on_message = spy_send, spy_message  # type: ignore[method-assign]
    start = time.monotonic()
    futures = [ex.submit(spin_ms, 1.0) for _ in range(1000)]  # ~0.5 s: FLUSH_EVERY sends 16 frames at least
    wait(futures, timeout=50)
    elapsed = time.monotonic() - start
    deadline = time.monotonic() + 5
    while sum(map(len, finished)) < 1000 and time.monotonic() < deadline:
        time.sleep(0.01)  # (the last Finished goes when the last result is in)
    tids = sorted(t for frame in finished for t in frame)
    assert tids == sorted(f._tid for f in futures), "each result reported exactly once"  # type: ignore[attr-defined]
    assert results > 10, "the tasks' results came in many frames"
    assert len(finished) <= elapsed / executor.FINISHED_AGE + 2, (len(finished), results, elapsed)


def test_a_finished_waits_for_a_wake_up_of_the_client_until_it_is_late(ex: gmpd.Executor) -> None:
    """A result's Finished goes with the IO thread's next wake-up once it
    has waited FINISHED_AGE (a Results frame, a submit), and without one at
    FINISHED_LATE: while a long task runs, nothing else wakes the thread,
    and the coordinator still hears of the result in time."""
    io = ex._io
    sent: list[tuple[float, list[int]]] = []
    send = io.send

    def spy_send(msg: wire.Message) -> None:
        if isinstance(msg, wire.Finished):
            sent.append((time.monotonic(), list(msg.tids)))
        send(msg)

    io.send = spy_send  # type: ignore[method-assign]
    long = ex.submit(spin_ms, 3000.0)  # in flight all along: the Finished waits for company
    quick = ex.submit(spin_ms, 1.0)
    quick.result(timeout=30)
    came = time.monotonic()
    while not sent and time.monotonic() < came + 10:
        time.sleep(0.01)
    assert sent and sent[0][1] == [quick._tid], sent  # type: ignore[attr-defined]
    waited = sent[0][0] - came
    assert executor.FINISHED_AGE < executor.FINISHED_LATE
    assert executor.FINISHED_LATE * 0.8 <= waited <= executor.FINISHED_LATE + 1.0, waited
    assert not long.done()
    assert long.result(timeout=30) > 0


def spin_until(path: str, limit: float) -> bool:
    """Hold a P (CPU, no syscall for sysmon to retake) until ``path`` exists."""
    end = time.monotonic() + limit
    while not os.path.exists(path):
        if time.monotonic() > end:
            return False
    return True


def late_beside_held_flood(ex: gmpd.Executor, gate: str, looked_after: float) -> tuple[list, Any, bool]:  # type: ignore[type-arg]
    """More tasks in flight than SUBMIT_EAGER, all sent, the Ms held on
    the first two until ``gate`` exists (made here, after the look); then
    one more task: (the held, the late one, whether it was still in the
    outbox ``looked_after`` seconds later)."""
    held = [ex.submit(spin_until, gate, 30.0) for _ in range(executor.SUBMIT_EAGER + 6)]
    ex._io.pump_out()
    late = ex.submit(square, 7)
    time.sleep(looked_after)
    waiting = late._tid in {tid for tid, _payload in ex._io.outbox}  # type: ignore[attr-defined]
    open(gate, "w").close()
    return held, late, waiting


def test_a_task_submitted_beside_many_in_flight_waits_for_company_until_a_caller_waits(
    ex: gmpd.Executor, tmp_path: os.PathLike[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the Ms' queues full, a submit is left in the outbox for the
    submitter's next ones (a flood goes in Submits of SUBMIT_EAGER, not a
    few tasks at each wake of the IO thread), and result() sends it."""
    monkeypatch.setattr(executor, "SUBMIT_DELAY", 60.0)  # (the IO thread would send it after this)
    held, late, waiting = late_beside_held_flood(ex, os.path.join(tmp_path, "go"), 0.2)
    assert waiting, "sent alone"
    assert late.result(timeout=20) == 49  # (not 60 s: result() sends the outbox)
    assert all(f.result(timeout=20) for f in held)


def test_what_a_burst_leaves_in_the_outbox_goes_within_submit_delay(
    ex: gmpd.Executor, tmp_path: os.PathLike[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nobody calls result(): the IO thread sends the rest once it has waited SUBMIT_DELAY."""
    monkeypatch.setattr(executor, "SUBMIT_DELAY", 0.5)
    held, late, waiting = late_beside_held_flood(ex, os.path.join(tmp_path, "go"), 0.1)
    done, _ = wait([late, *held], timeout=20)
    assert waiting and len(done) == len(held) + 1 and late.result() == 49
    assert not ex._io.outbox


def _done_times(futures: list) -> list[float]:  # type: ignore[type-arg]
    """When each future got its result (its done-callback runs then)."""
    times = [0.0] * len(futures)
    for i, f in enumerate(futures):
        f.add_done_callback(lambda _f, i=i: times.__setitem__(i, time.monotonic()))
    wait(futures, timeout=50)
    return times


def test_a_long_tasks_result_is_sent_when_it_ends_not_with_the_next() -> None:
    """A result waited for company until the next G ended: with 0.5 s tasks
    queued on one P, each came 0.5 s late, with the next one."""
    with gmpd.Executor(1) as ex:
        ex.submit(square, 2).result()
        futures = [ex.submit(spin_ms, 500) for _ in range(3)]
        # In the order they ended: the queue need not keep the submit order
        # (a fresh clone's run once ran the third before the second).
        first, second, third = sorted(_done_times(futures))
    assert second - first > 0.3 and third - second > 0.3, (first, second, third)


def test_a_short_tasks_result_does_not_wait_behind_a_long_one() -> None:
    """A short G's result waits for company; if the next G runs long, the
    heartbeat thread sends it (it waited for the long G to end before)."""
    with gmpd.Executor(1) as ex:
        ex.submit(square, 2).result()
        blocker = ex.submit(spin_ms, 300)  # the next two queue up behind it, one batch
        short, long_ = ex.submit(square, 3), ex.submit(spin_ms, 1500)
        _blocked, short_at, long_at = _done_times([blocker, short, long_])
    assert short.result() == 9
    assert long_at - short_at > 0.8, (short_at, long_at)


def test_executor_many_threads_submitting_at_once(ex: gmpd.Executor) -> None:
    """Submitters and the IO thread all drain the outbox: each task exactly once."""
    out: dict[int, list[int]] = {}

    def submitter(k: int) -> None:
        futures = [ex.submit(square, k * 10_000 + i) for i in range(3000)]
        out[k] = [f.result(timeout=60) for f in futures]

    threads = [threading.Thread(target=submitter, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    for k in range(4):
        assert out[k] == [(k * 10_000 + i) ** 2 for i in range(3000)]
    assert ex.statistics().tasks_completed == ex.statistics().tasks_submitted == 12_000


def test_executor_futures_work_with_wait_and_as_completed(ex: gmpd.Executor) -> None:
    futures = [ex.submit(sleep_then, i, 0.01 * (i % 3)) for i in range(12)]
    done, not_done = wait(futures, timeout=30)
    assert len(done) == 12 and not not_done
    assert sorted(f.result() for f in as_completed(futures)) == list(range(12))


def test_executor_map_timeout(ex: gmpd.Executor) -> None:
    it = ex.map(sleep_then, [1, 2], [2.0, 2.0], timeout=0.2)
    with pytest.raises(TimeoutError):
        list(it)


def test_executor_map_left_early_cancels_what_is_left(monkeypatch: pytest.MonkeyPatch) -> None:
    """Leaving a map early asks the coordinator once for everything left."""
    with gmpd.Executor(1) as ex:
        asked: list[list[int]] = []
        real = ex._io.cancel_tasks

        def spy(tids: list[int]) -> set[int]:
            asked.append(list(tids))
            return real(tids)

        monkeypatch.setattr(ex._io, "cancel_tasks", spy)
        it = ex.map(sleep_then, range(300), [0.005] * 300)
        first = next(it)
        assert isinstance(it, Generator)
        it.close()  # the caller stops reading: what is still queued is withdrawn, not run
        assert first == 0
        assert len(asked) == 1 and 150 <= len(asked[0]) <= 299, [len(a) for a in asked]


def test_executor_cancel_while_pending(ex: gmpd.Executor) -> None:
    blockers = [ex.submit(sleep_then, i, 0.3) for i in range(4)]
    queued = [ex.submit(square, i) for i in range(50)]
    cancelled = [f for f in queued if f.cancel()]
    assert cancelled, "some queued futures must still be cancellable"
    done, _ = wait(cancelled, timeout=0.2)
    assert len(done) == len(cancelled), "wait() counts a withdrawn future as done"
    for f in cancelled:
        with pytest.raises(CancelledError):
            f.result()
    assert [f.result() for f in blockers] == list(range(4))
    for i, f in enumerate(queued):
        assert f.cancelled() or f.result() == i * i
    ran = sum(m.tasks_run for m in ex.statistics().ms)
    assert ran == len(blockers) + len(queued) - len(cancelled), "a cancelled task ran, or a task was lost"


def test_executor_cancel_true_means_the_task_never_runs(ex: gmpd.Executor) -> None:
    """cancel() racing the M that takes the task: True only when the
    coordinator withdrew it before any M took it."""
    before = sum(m.tasks_run for m in ex.statistics().ms)
    futures, cancelled = [], 0
    for i in range(200):
        futures.append(f := ex.submit(sleep_then, i, 0.002))
        time.sleep((i % 9) * 250e-6)  # cancel at different points of the task's way to an M
        cancelled += f.cancel()
        f.result(timeout=30) if not f.cancelled() else None
    assert sum(f.cancelled() for f in futures) == cancelled
    ran = sum(m.tasks_run for m in ex.statistics().ms) - before
    assert ran == 200 - cancelled, f"{cancelled} cancelled, but {ran} of 200 ran"
    assert 0 < cancelled < 200, cancelled


def test_executor_nested_fan_out_and_recursion(ex: gmpd.Executor) -> None:
    assert ex.submit(fan, 400).result() == sum(i * i for i in range(400))
    assert ex.submit(fib, 18).result() == 2584


def test_executor_go_from_the_client_uses_the_active_executor(ex: gmpd.Executor) -> None:
    assert gmpd.go(square, 9).result() == 81


def test_executor_stealing_shows_in_statistics(ex: gmpd.Executor) -> None:
    before = ex.statistics()
    assert ex.submit(lambda: sum(f.result() for f in [gmpd.go(spin_ms, 2) for _ in range(200)])).result() > 0
    after = ex.statistics()
    assert after.steals > before.steals, "the other P must have stolen some of the 200 children"
    assert after.stolen > before.stolen


def test_executor_gomaxprocs_invariant_under_load(ex: gmpd.Executor) -> None:
    futures = [ex.submit(spin_ms, 1) for _ in range(300)]
    futures += [ex.submit(fan, 50) for _ in range(20)]
    wait(futures)
    stats = ex.statistics()
    assert 3 <= len(stats.ms) <= 16, "GOMAXPROCS + 1 Ms, more while parents block in joins, at most 8 per P"
    assert stats.running_max <= stats.gomaxprocs == 2
    assert stats.running_max >= 1
    assert sum(m.tasks_run for m in stats.ms) >= 300
    assert {p.p for p in stats.ps} == {0, 1}


def test_executor_max_workers_validation() -> None:
    for bad in (0, -1):
        with pytest.raises(ValueError, match="max_workers must be greater than 0"):
            gmpd.Executor(bad)
    for ttl in (0, -1.0, 0.05, float("nan")):  # (0 made the coordinator's slow timer a busy loop)
        with pytest.raises(ValueError, match=r"lease_ttl=.* is too short"):
            gmpd.Executor(1, lease_ttl=ttl)


def test_executor_submit_after_shutdown_raises() -> None:
    ex = gmpd.Executor(1)
    ex.shutdown()
    with pytest.raises(RuntimeError, match="after shutdown"):
        ex.submit(square, 1)


def touch_then_sleep(path: str, seconds: float) -> int:
    Path(path).touch()
    time.sleep(seconds)
    return 7


def test_executor_started_only_once_running_is_asked(tmp_path: Path) -> None:
    """No Started message comes until user code asks a pending future
    whether it runs: each cost a farm ~4 thread wake-ups in three
    processes.  The first running() asks the coordinator (Watch), whose
    answer says which tasks Ms have; Started follows for later ones."""

    def when_touched(path: Path) -> None:
        deadline = time.monotonic() + 10
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.002)
        assert path.exists(), "the task never started"

    with gmpd.Executor(2) as ex:
        burst = [ex.submit(sleep_then, i, 0.002) for i in range(300)]  # taken in global batches
        assert [f.result() for f in burst] == list(range(300))
        assert (ex._io.started_msgs, ex._io.watch_sent) == (0, False)
        first = ex.submit(touch_then_sleep, str(tmp_path / "first"), 0.5)
        when_touched(tmp_path / "first")
        assert first.running(), "the first running() asks, and hears the task runs"
        assert (ex._io.watch_sent, ex._io.watched.is_set()) == (True, True)
        later = ex.submit(touch_then_sleep, str(tmp_path / "later"), 0.5)
        when_touched(tmp_path / "later")
        deadline = time.monotonic() + 10
        while later._state != "RUNNING" and time.monotonic() < deadline:
            time.sleep(0.001)  # (not running(): Started alone must bring it now)
        assert later.running() and ex._io.started_msgs >= 1
        assert first.result() == later.result() == 7


def test_executor_running_waits_for_a_lost_answer_once_and_briefly() -> None:
    """running() is a query: the first one's wait for the coordinator's
    answer is bounded (RUNNING_WAIT), and once it ran out no later call
    waits (it blocked 10 s each, every call, when the answer was lost)."""
    with gmpd.Executor(1) as ex:
        send = ex._io.send

        def drop_watch(msg: wire.Message) -> None:
            if not isinstance(msg, wire.Watch):
                send(msg)

        ex._io.send = drop_watch  # type: ignore[method-assign]
        fut = ex.submit(sleep_then, 1, 0.3)
        start = time.monotonic()
        fut.running()
        assert time.monotonic() - start < executor.RUNNING_WAIT + 1
        start = time.monotonic()
        fut.running()
        assert time.monotonic() - start < 0.1
        assert fut.result(timeout=30) == 1


def test_executor_shutdown_cancel_futures() -> None:
    ex = gmpd.Executor(1)
    running = ex.submit(sleep_then, 1, 0.5)
    deadline = time.monotonic() + 10
    while not running.running() and time.monotonic() < deadline:
        time.sleep(0.001)
    assert running.running(), "the client learns when a task has started"
    queued = [ex.submit(square, i) for i in range(100)]
    ex.shutdown(wait=True, cancel_futures=True)
    assert running.result() == 1
    assert all(f.done() for f in queued)
    assert any(f.cancelled() for f in queued)


def test_executor_shutdown_without_wait_still_finishes_and_cleans_up() -> None:
    ex = gmpd.Executor(2)
    futures = [ex.submit(sleep_then, i, 0.05) for i in range(8)]
    ex.shutdown(wait=False)
    assert [f.result(timeout=30) for f in futures] == list(range(8))
    ex._io.done.wait(30)


def test_executor_client_sigkilled_takes_the_cluster_down() -> None:
    code = """
        import sys, time, gmpd
        ex = gmpd.Executor(2)
        print(ex._cluster.proc.pid, ex._cluster.node_name, ex._cluster.rundir, flush=True)
        ex.submit(time.sleep, 60)
        time.sleep(60)
    """
    client = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)], stdout=subprocess.PIPE, text=True
    )
    assert client.stdout is not None
    try:
        agent_pid, node_name, rundir = client.stdout.readline().split()
        deadline = time.monotonic() + 10
        while len(cluster := children_of(client.pid)) < 5 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert int(agent_pid) in cluster and len(cluster) >= 5  # agent, coordinator, template, 2 Ms
    finally:
        client.send_signal(signal.SIGKILL)
        client.wait()
        client.stdout.close()
    deadline = time.monotonic() + 10
    alive: set[int] = set(cluster)
    while alive and time.monotonic() < deadline:
        alive = {pid for pid in cluster if os.path.exists(f"/proc/{pid}") and _not_zombie(pid)}
        time.sleep(0.05)
    assert not alive, f"cluster processes outlived their client: {sorted(alive)}"
    assert not (SHM_DIR / node_name).exists()
    assert not os.path.exists(rundir), "the killed client's run directory (its sockets) was left"


def test_a_client_that_exits_after_shutdown_without_waiting_leaves_no_run_directory() -> None:
    # Its IO thread (a daemon) is cut short at exit, before its own cleanup:
    # the coordinator, going last, removes the directory.
    code = """
        import sys, time, gmpd
        ex = gmpd.Executor(2)
        print(ex._cluster.rundir, flush=True)
        assert ex.submit(abs, -3).result(timeout=30) == 3
        ex.shutdown(wait=False)
        time.sleep(float(sys.argv[1]))  # (its Bye out, the cluster going: the thread waits for it)
    """
    for pause in ("0", "0.02", "0.05"):
        out = run_child(code, args=[pause])
        assert out.returncode == 0, out.stderr
        rundir = out.stdout.split()[0]
        deadline = time.monotonic() + 10
        while os.path.exists(rundir) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not os.path.exists(rundir), "the run directory outlived its cluster"


def test_a_coordinator_whose_client_died_before_it_started_removes_the_run_dir(tmp_path: Path) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # (its pid is free: pidfd_open fails as when a client dies in startup)
    rundir = tmp_path / "gmpd-run"
    rundir.mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "gmpd.coordinator", str(rundir), "2", str(gone.pid), "5.0", "3"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0 and not done.stderr, done.stderr
    assert not rundir.exists()


def _not_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def spawn_and_forget(n: int) -> int:
    for i in range(n):
        gmpd.go(square, i)  # the future is dropped at once: fire and forget
    return n


def test_executor_g_table_shrinks_back_after_load() -> None:
    """Fire-and-forget children are freed; an idle cluster gives memory back."""
    with gmpd.Executor(2) as ex:
        assert sum(f.result() for f in [ex.submit(spawn_and_forget, 5_000) for _ in range(20)]) == 100_000
        assert sum(ex.map(square, range(20_000), chunksize=1)) > 0
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # Ms trim their arena when they go idle
            stats = ex.statistics()
            if all(p.status == 0 for p in stats.ps) and stats.gtab_resident_bytes <= 2 * 2**20:
                break
            time.sleep(0.05)
        assert all(p.arena_live_bytes == 0 for p in stats.ps), stats.ps
        assert stats.gtab_resident_bytes <= 2 * 2**20, stats.gtab_resident_bytes


def big_result(mb: int) -> bytes:
    return b"x" * (mb * 2**20)


def child_with_big_result(mb: int) -> str:
    try:
        gmpd.go(big_result, mb).result()
    except gmpd.GmpdError as exc:
        return str(exc)
    return "no error"


def test_executor_a_result_too_big_for_the_arena_fails_only_that_child(ex: gmpd.Executor) -> None:
    assert "too large" in ex.submit(child_with_big_result, 300).result(timeout=60)
    assert ex.submit(square, 2).result() == 4


def long_c_call(n: int) -> int:
    return sum(range(n))  # one C call: holds the GIL the whole time


def test_executor_a_long_c_call_keeps_its_lease() -> None:
    """The lease outlives a task that never releases the GIL (native heartbeat)."""
    with gmpd.Executor(2, lease_ttl=0.3) as ex:
        fut = ex.submit(long_c_call, 60_000_000)
        deadline = time.monotonic() + 30
        while not fut.done() and time.monotonic() < deadline:
            stats = ex.statistics()
            for m in stats.ms:
                if m.p >= 0:
                    assert stats.ps[m.p].owner == m.m, f"M{m.m} still uses P{m.p}, re-leased to another M"
            time.sleep(0.02)
        assert fut.result() == sum(range(60_000_000))


def cancel_children(n: int) -> tuple[int, int]:
    blocker = gmpd.go(spin_ms, 1)
    children = [gmpd.go(square, i) for i in range(n)]
    cancelled = [f for f in children if f.cancel()]
    done = sum(1 for f in children if not f.cancelled() and f.result() is not None)
    blocker.result()
    return len(cancelled), done


def test_executor_child_future_cancel_really_cancels(ex: gmpd.Executor) -> None:
    before = sum(m.tasks_run for m in ex.statistics().ms)
    cancelled, done = ex.submit(cancel_children, 50).result(timeout=30)
    assert cancelled + done == 50
    assert cancelled > 0, "unstarted children can be cancelled"
    ran = sum(m.tasks_run for m in ex.statistics().ms) - before
    assert ran == 1 + 1 + done, "a cancelled child ran"  # the parent, the blocker, the rest


def test_executor_main_module_classes_and_functions_travel_by_value() -> None:
    """A script's own classes and functions reach the M by value, as
    arguments and results (the M's __main__ is not the script)."""
    code = """
        import gmpd
        from tests.test_executor import echo

        class Point:
            def __init__(self, x):
                self.x = x

        def double(p):
            return Point(p.x * 2)

        with gmpd.Executor(2) as ex:
            p = ex.submit(echo, Point(21)).result(timeout=30)
            f = ex.submit(echo, double).result(timeout=30)
            print(type(p).__name__, p.x, f(p).x)
    """
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], check=False, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["Point", "21", "42"]


def test_executor_an_idle_cluster_burns_no_cpu(ex: gmpd.Executor) -> None:
    """Idle Ms park and an idle coordinator sleeps between its 50 ms timers
    (it polled every 2 ms before: 20 ms of CPU a second; ~4 ms now)."""
    list(ex.map(square, range(50)))
    time.sleep(2.5)  # past the Ms' spin, the heap trim and the Started timer
    pids = [p.pid for p in psutil.Process(ex._cluster.proc.pid).children(recursive=True)]
    before = [_cpu_ns(pid) for pid in pids]
    time.sleep(1.0)
    used_ms = [(_cpu_ns(pid) - b) / 1e6 for pid, b in zip(pids, before, strict=True)]
    assert max(used_ms) < 10, f"CPU ms in one idle second, per process: {used_ms}"


def _cpu_ns(pid: int) -> int:
    """CPU time of a process in ns, all its threads (schedstat: finer than
    cpu_times' 10 ms ticks; /proc/<pid>/schedstat alone is the main thread's,
    and missed an M's heartbeat thread spinning at 40% of a core)."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{tid}/schedstat") as f:
            total += int(f.read().split()[0])
    return total


def modules_loaded(names: list[str]) -> list[bool]:
    return [name in sys.modules for name in names]


PROBES = ["colorsys", "wave"]  # stdlib modules that nothing in gmpd or this file imports


def test_preload_imports_modules_before_any_task() -> None:
    with gmpd.Executor(1) as ex:
        assert ex.submit(modules_loaded, PROBES).result(timeout=60) == [False, False]
    with gmpd.Executor(1, preload=PROBES) as ex:
        assert ex.submit(modules_loaded, PROBES).result(timeout=60) == [True, True]
    with pytest.raises(TypeError, match="list of module names"):
        gmpd.Executor(1, preload="colorsys")


def test_a_chunked_map_imports_nothing_in_the_m() -> None:
    """map(chunksize > 1) runs its chunks with a function of a module every M
    has imported: the first chunk on each fresh M imported gmpd.executor
    (10-25 ms, while a whole 20,000-item map takes ~20)."""
    with gmpd.Executor(1) as ex:  # (a lambda and a builtin: this file imports gmpd.executor)
        assert list(ex.map(abs, range(-5, 5), chunksize=5)) == [abs(x) for x in range(-5, 5)]
        assert ex.submit(lambda: "gmpd.executor" in sys.modules).result(timeout=60) is False


def test_a_preload_that_fails_is_reported_and_the_executor_works(capfd: pytest.CaptureFixture[str]) -> None:
    with gmpd.Executor(1, preload=["gmpd_no_such_module"]) as ex:
        assert ex.submit(square, 7).result(timeout=60) == 49
    assert "importing gmpd_no_such_module failed" in capfd.readouterr().err


def test_ms_started_later_come_with_what_decoding_tasks_imported(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each M runs one task, then a fresh one is forked from the template.
    Decoding hue imports tests._hinted and colorsys in its M, which tells
    the template; Ms forked after that start with both (at most one spare M
    forked before it is still around for the first task after)."""
    monkeypatch.setenv("GMPD_M_MAX_TASKS", "1")
    names = ["tests._hinted", "colorsys"]
    with gmpd.Executor(1) as ex:
        assert ex.submit(modules_loaded, names).result(timeout=60) == [False, False]
        from tests._hinted import hue  # noqa: PLC0415

        assert ex.submit(hue, 1.0, 0.0, 0.0).result(timeout=60) == 0.0
        later = [ex.submit(modules_loaded, names).result(timeout=60) for _ in range(3)]
        assert later[1:] == [[True, True], [True, True]], later


def test_a_future_nobody_waited_on_gets_no_condition_and_works_all_the_same(ex: gmpd.Executor) -> None:
    fut = ex.submit(square, 3)
    while not fut.done():  # done() looks without a Condition
        time.sleep(0.001)
    assert fut.result() == 9 and fut.exception() is None
    assert getattr(fut, "_cond", 0) is None, "a Condition was made for a future nobody waited on"
    called: list[int] = []
    fut.add_done_callback(lambda f: called.append(f.result()))  # finished: runs at once
    assert called == [9]
    failed = ex.submit(boom, "late")
    while not failed.done():
        time.sleep(0.001)
    assert isinstance(failed.exception(), ValueError)
    with pytest.raises(ValueError, match="late"):
        failed.result()


def test_a_future_in_flight_is_one_gc_tracked_object() -> None:
    """A flood holds its futures across many collections, and each object
    they hold counts toward Python's full collection (~50 ms mid-flood in a
    process with Ray and Dask imported).  A future's Condition, its two
    lists and its instance dict are made only when something needs them:
    submitted, marked running and finished, it is one tracked object."""
    io = types.SimpleNamespace()
    gc.collect()
    gc.disable()
    try:
        before = len(gc.get_objects())
        futs = [executor.TaskFuture(io, tid) for tid in range(1000)]  # type: ignore[arg-type]
        for tid, fut in enumerate(futs):
            fut.mark_running()
            fut.set_result(tid)
        per_future = (len(gc.get_objects()) - before) / len(futs)
    finally:
        gc.enable()
    assert per_future < 1.1, per_future
    assert [f.result() for f in futs[:3]] == [0, 1, 2]
    got: list[int] = []
    futs[0].add_done_callback(lambda f: got.append(f.result()))  # finished: runs at once
    assert got == [0]
    waiting = executor.TaskFuture(io, 0)  # type: ignore[arg-type]
    threading.Timer(0.05, waiting.set_result, (7,)).start()
    done, _ = wait([waiting], timeout=10)  # (wait makes the Condition and lists)
    assert done == {waiting} and waiting.result() == 7


def child_futures_without_conditions() -> tuple[list[str], list[int], bool, str]:
    kids = [gmpd.go(square, i) for i in range(20)]
    made = [f"child {i}" for i, f in enumerate(kids) if getattr(f, "_cond", 0) is not None]
    if copy.copy(kids[1]) is not kids[1] or copy.deepcopy(kids[1]) is not kids[1]:
        made.append("a copy: its G would be detached twice")
    called: list[int] = []
    kids[0].add_done_callback(lambda f: called.append(f.result()))  # before it is collected
    total = sum(f.result() for f in kids)
    failed = gmpd.go(boom, "child")
    err = failed.exception()
    return made, [*called, total], failed.done(), repr(err)


def test_child_futures_get_no_condition_until_something_looks(ex: gmpd.Executor) -> None:
    """A ChildFuture is a LazyFuture too: a spawn makes no Condition (10 us
    of a gmpd.go); a callback added before the collect still runs, once."""
    made, called, done, err = ex.submit(child_futures_without_conditions).result(timeout=60)
    assert made == [], made
    assert called == [0, sum(i * i for i in range(20))]
    assert done and "ValueError('child')" in err


def test_futures_waited_on_while_their_results_arrive_all_finish(ex: gmpd.Executor) -> None:
    """Waiters that make the Condition race the IO thread that sets results
    without one: every waiter wakes, every callback runs once."""
    futures = [ex.submit(square, i) for i in range(2000)]
    calls = [0] * len(futures)

    def count(i: int) -> Callable[[object], None]:
        def done(_f: object) -> None:
            calls[i] += 1

        return done

    for i, f in enumerate(futures[::3]):
        f.add_done_callback(count(3 * i))
    results: list[int] = []
    threads = [
        threading.Thread(target=lambda k=k: results.extend(f.result(timeout=60) for f in futures[k::4]))
        for k in range(4)
    ]
    for t in threads:
        t.start()
    done, _ = wait(futures, timeout=60)
    for t in threads:
        t.join(60)
    assert len(done) == len(futures) and sorted(results) == sorted(i * i for i in range(2000))
    assert [calls[i] for i in range(0, 2000, 3)] == [1] * len(range(0, 2000, 3))


@pytest.mark.timeout(120)
def test_ctrl_c_while_an_executor_starts_leaves_nothing_behind() -> None:
    """Ctrl-C reaches a script and its cluster together (one process
    group).  At any moment of the start, its run directory, segments and
    processes must go (conftest checks each).  An interrupt while the node
    agent started used to leave the run directory."""
    code = (
        "import signal, time, gmpd\n"
        "signal.signal(signal.SIGINT, signal.default_int_handler)  # (even if ours is ignored)\n"
        "with gmpd.Executor(2) as ex:\n"
        "    ex.submit(time.sleep, 1).result()\n"
    )
    for delay in (0.0, 0.01, 0.03):  # (the start: its run directory is made, the node agent not yet up)
        before = run_dirs()
        proc = subprocess.Popen(
            [sys.executable, "-c", code],
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 30
            while not run_dirs() - before and time.monotonic() < deadline:
                time.sleep(0.001)
            time.sleep(delay)
            os.killpg(proc.pid, signal.SIGINT)
            proc.wait(30)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        deadline = time.monotonic() + 10
        while run_dirs() - before and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not run_dirs() - before, f"Ctrl-C {delay} s into the start left its run directory"
