"""The bench's peer adapters (gmpd/peers.py) and its runner's handling of
peers that hang, crash, return wrong results or are not installed.

loky, Dask and Ray are optional (``pip install 'gmpd[peers]'``).  Where one
is installed its adapter is tested against the real thing; where it is not
(as in ``make test``), against a small in-process fake of the calls the
adapter makes, which checks the adapter's plumbing (forms, deadlines,
timeouts mapped to RunTimeout, close), not the peer.  Each test says which
it ran in its id ("real" or "fake").
"""

from __future__ import annotations

import concurrent.futures as cf
import importlib.util
import os
import signal
import subprocess
import sys
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import psutil
import pytest

from gmpd import bench, peers
from gmpd.peers import Deadline, RunTimeout, Unavailable
from tests import _fake_peers


def slow(x: int) -> int:
    time.sleep(x)
    return x


def double(x: int) -> int:
    return 2 * x


# ---- fakes of the peers' APIs (threads, in process) ---------------------------


def fake_loky() -> types.ModuleType:
    class Executor(cf.ThreadPoolExecutor):
        _processes: ClassVar[dict[int, object]] = {}

        def __init__(self, max_workers: int) -> None:
            super().__init__(max_workers)

        def shutdown(
            self, wait: bool = True, *, cancel_futures: bool = False, kill_workers: bool = False
        ) -> None:
            super().shutdown(wait=wait, cancel_futures=cancel_futures or kill_workers)

    mod = types.ModuleType("loky")
    mod.ProcessPoolExecutor = Executor  # type: ignore[attr-defined]
    return mod


def fake_distributed() -> types.ModuleType:
    class Future:
        def __init__(self, fut: cf.Future[Any]) -> None:
            self.fut = fut

        def result(self, timeout: float | None = None) -> Any:
            try:
                return self.fut.result(timeout)
            except cf.TimeoutError:
                raise TimeoutError from None

        def done(self) -> bool:
            return self.fut.done()

        @property
        def status(self) -> str:
            if not self.fut.done():
                return "pending"
            return "finished" if self.fut.exception() is None else "error"

    class LocalCluster:
        def __init__(self, **kwargs: Any) -> None:
            assert kwargs["processes"] is True and kwargs["threads_per_worker"] == 1
            self.pool = cf.ThreadPoolExecutor(kwargs["n_workers"])

        def close(self) -> None:
            self.pool.shutdown(wait=False, cancel_futures=True)

    class Client:
        def __init__(self, cluster: LocalCluster) -> None:
            self.cluster = cluster

        def submit(self, fn: Callable[..., Any], *args: Any, pure: bool = True) -> Future:
            assert pure is False  # every bench task must run, never be taken from a cache
            return Future(self.cluster.pool.submit(fn, *args))

        def map(self, fn: Callable[..., Any], items: list[Any], pure: bool = True) -> list[Future]:
            return [self.submit(fn, x, pure=pure) for x in items]

        def gather(self, futures: list[Future]) -> list[Any]:
            return [f.result() for f in futures]

        def run(self, fn: Callable[[], Any]) -> dict[str, Any]:
            return {"tcp://fake:1": fn()}

        def close(self) -> None:
            pass

    def wait(futures: list[Future], timeout: float | None = None) -> None:
        _done, pending = cf.wait([f.fut for f in futures], timeout)
        if pending:
            raise TimeoutError

    mod = types.ModuleType("distributed")
    mod.LocalCluster, mod.Client, mod.wait, mod.TimeoutError = LocalCluster, Client, wait, TimeoutError  # type: ignore[attr-defined]
    return mod


def fake_ray() -> types.ModuleType:
    pool: list[cf.ThreadPoolExecutor] = []

    class GetTimeoutError(TimeoutError):
        pass

    class Remote:
        def __init__(self, fn: Callable[..., Any]) -> None:
            self.fn = fn

        def remote(self, *args: Any) -> cf.Future[Any]:
            return pool[0].submit(self.fn, *args)

    def init(**kwargs: Any) -> None:
        assert kwargs["num_cpus"] >= 1 and kwargs["include_dashboard"] is False
        pool.append(cf.ThreadPoolExecutor(kwargs["num_cpus"]))

    def get(refs: Any, timeout: float | None = None) -> Any:
        one = isinstance(refs, cf.Future)
        futures = [refs] if one else list(refs)
        _done, pending = cf.wait(futures, timeout)
        if pending:
            raise GetTimeoutError
        out = [f.result() for f in futures]
        return out[0] if one else out

    def wait(refs: list[cf.Future[Any]], timeout: float | None = None) -> tuple[list[Any], list[Any]]:
        return [r for r in refs if r.done()], [r for r in refs if not r.done()]

    def shutdown() -> None:
        pool.pop().shutdown(wait=False, cancel_futures=True)

    mod = types.ModuleType("ray")
    mod.init, mod.remote, mod.get, mod.wait, mod.shutdown = init, Remote, get, wait, shutdown  # type: ignore[attr-defined]
    mod.exceptions = types.SimpleNamespace(GetTimeoutError=GetTimeoutError)  # type: ignore[attr-defined]
    return mod


FAKES = {"loky": ("loky", fake_loky), "dask": ("distributed", fake_distributed), "ray": ("ray", fake_ray)}


def kind(name: str) -> str:
    return "real" if importlib.util.find_spec(FAKES[name][0]) is not None else "fake"


@pytest.fixture(params=[f"{name}-{kind(name)}" for name in FAKES])
def peer(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    name, how = request.param.split("-")
    if how == "fake":
        module, make = FAKES[name]
        monkeypatch.setitem(sys.modules, module, make())
    yield name


@pytest.mark.timeout(120)
def test_a_peer_adapter_runs_tasks_in_its_forms_and_maps_timeouts(peer: str) -> None:
    s = peers.start(peer, 2)
    try:
        d = Deadline(60)
        assert s.run_all(double, range(20), d) == [2 * i for i in range(20)]
        assert s.map(double, range(20), 5, d) == [2 * i for i in range(20)]
        assert s.call(double, 21, d) == 42
        h = s.submit(double, 4)
        assert s.result(h, d) == 8 and s.done(h) and s.ok(h)
        with pytest.raises(RunTimeout):
            s.result(s.submit(slow, 3), Deadline(0.2))
        assert all(isinstance(pid, int) for pid in s.worker_pids())
    finally:
        s.close(clean=False)


def test_a_missing_peer_is_unavailable_with_the_extra_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    assert "pip install 'gmpd[peers]'" in (peers.installed("ray") or "")
    with pytest.raises(Unavailable, match="ray is not installed"):
        peers.start("ray", 2)


# ---- the runner: a peer that hangs, crashes, lies or is missing ----------------


def check_row(row: dict[str, Any]) -> None:
    assert isinstance(row["results"]["good"], float) and row["verified"]["good"] is True
    for name in ("hang", "crash", "wrong", "missing"):
        assert row["results"][name] is None and row["min"][name] is None
    assert row["failed"]["hang"].startswith("timed out")
    assert "BrokenPipeError: a worker died" in row["failed"]["crash"]
    assert row["failed"]["wrong"].startswith("wrong result") and row["verified"]["wrong"] is False
    assert "not installed" in row["failed"]["missing"] and row["verified"]["missing"] is None
    assert row["ratio_vs_best_peer"] is None  # no gmpd in this row


FAKES_IN_PROCESS = ["good", "hang", "crash", "wrong", "missing"]
SHORT = bench.Workload("noop_submit", "tasks/s", True, bench.noop_submit, 50, 50, budget_s=0.5)


@pytest.mark.timeout(60)
def test_the_bench_gives_null_and_a_reason_for_a_hung_crashed_wrong_or_missing_peer_in_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in FAKES_IN_PROCESS:
        monkeypatch.setitem(peers.ADAPTERS, name, _fake_peers.SYSTEMS[name])
        monkeypatch.setitem(peers.FORMS, name, "a fake")
    monkeypatch.setattr(peers, "wait_ready", lambda s, d: None)
    start = time.monotonic()
    row = bench.run_workload(SHORT, FAKES_IN_PROCESS, 2, reps=2, quick=False, isolated=False)
    assert time.monotonic() - start < 10, "the hung peer was given up on at its budget"
    check_row(row)


@pytest.mark.timeout(120)
def test_each_run_has_a_runner_that_is_killed_with_its_processes_when_it_overstays(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The bench runs each run in a fresh interpreter (bench.run_isolated):
    the same outcomes come back from it.  A runner stuck past its budget
    and grace (in C, ignoring its deadline) is killed with the process it
    holds; one whose interpreter dies is reported at once, and a worker
    it forked, which outlives it, is killed after it."""
    names = [*FAKES_IN_PROCESS, "stuck", "dies", "orphans"]
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    monkeypatch.setattr(
        bench,
        "RUNNER",
        f"import sys; sys.path.insert(0, {here!r}); from tests import _fake_peers;"
        f" _fake_peers.register({names!r}); from gmpd.bench import serve; serve()",
    )
    monkeypatch.setattr(bench, "RUNNER_GRACE_S", 10.0)
    pids = tmp_path / "held.pids"
    monkeypatch.setenv(_fake_peers.STUCK_PIDS, str(pids))
    for name in names:  # (the row names the parent's forms)
        monkeypatch.setitem(peers.FORMS, name, "a fake")
    row = bench.run_workload(SHORT, names, 2, reps=2, quick=False)
    check_row(row)
    stuck = row["failed"]["stuck"]
    assert stuck.startswith("timed out") and "runner gave no outcome (killed)" in stuck, stuck
    assert row["failed"]["dies"] == "its runner exited (3) without an outcome", row["failed"]
    # Not a timeout: its forked worker does not hold the outcome's pipe open.
    assert row["failed"]["orphans"] == "its runner exited (3) without an outcome", row["failed"]
    assert row["elapsed_s"]["orphans"] < 9, row["elapsed_s"]
    held = [int(pid) for pid in pids.read_text().split()]
    assert len(held) == 2  # the stuck one's and the orphan (a failed system is not run again)
    for pid in held:
        assert not psutil.pid_exists(pid), f"process {pid} of a failed run was left behind"


def test_sweep_kills_what_a_run_left_but_lets_resource_trackers_end(monkeypatch: pytest.MonkeyPatch) -> None:
    """After a runner exits, the processes carrying its run's mark are
    killed once SWEEP_WAIT_S is up, except resource trackers, which leave
    by themselves after their cleanup (loky's takes 1-2 s: waited for, it
    pushed the quick bench past its 2 minutes)."""
    monkeypatch.setattr(bench, "SWEEP_WAIT_S", 0.3)
    env = {**os.environ, bench.RUN_MARK: "test-sweep"}
    tracker = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(3)  # resource_tracker import main"], env=env
    )
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], env=env)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])  # not of this run
    try:
        time.sleep(0.5)  # (their environments are theirs once they run)
        t = time.monotonic()
        bench.sweep("test-sweep")
        assert time.monotonic() - t < 2.5, "the sweep waited for the tracker"
        assert not psutil.pid_exists(worker.pid), "the run's worker was left"  # (psutil reaped it)
        assert tracker.poll() is None and other.poll() is None
        assert tracker.wait(10) == 0
    finally:
        for p in (tracker, worker, other):
            p.kill()
            p.wait()


def test_mp_pool_close_returns_when_a_killed_worker_held_the_task_queue_lock() -> None:
    """An idle mp.Pool worker waits for work holding the task queue's read
    lock; SIGKILLed there (as the fault workload may do), it never lets it
    go, and Pool.terminate() waits for that lock forever.  close() must
    still return and leave no worker behind (the autouse fixture checks)."""
    s = peers.PoolSystem(2)
    assert s.result(s.submit(double, 21), Deadline(30)) == 42  # both workers up
    time.sleep(0.3)  # idle now: one of them holds the read lock in get()
    for pid in s.worker_pids():
        os.kill(pid, signal.SIGKILL)
    t = time.monotonic()
    s.close()
    assert time.monotonic() - t < 5  # (1 s for terminate(), 2 more once the lock is let go)
