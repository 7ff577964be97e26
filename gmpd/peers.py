"""The systems ``gmpd bench`` compares, each driven in its idiomatic best form.

A :class:`System` runs the workloads' tasks through one small interface:
submit a task and get a handle, wait for handles against a deadline, map
with chunks, list the worker processes, close.  Each adapter names the form
it uses (``FORMS``), and the bench prints it beside the figures, so no peer
is driven in a form its users would not choose:

  gmpd      gmpd.Executor: submit / map(chunksize) / gmpd.go inside tasks
  ppe       concurrent.futures.ProcessPoolExecutor: submit / map(chunksize)
  mp_pool   multiprocessing.Pool: imap(chunksize=1) for a stream of tasks,
            map(chunksize) for a chunked map, apply_async for one task
  loky      loky.ProcessPoolExecutor (joblib's engine): submit / map(chunksize)
  dask      distributed.LocalCluster(processes=True, threads_per_worker=1)
            + Client: client.map + client.gather for many tasks (of chunks
            for a chunked map), submit for one, worker_client() for tasks
            that spawn tasks
  ray       ray.init(num_cpus=workers): f.remote(...) + ray.get (one
            task per chunk for a chunked map), tasks that spawn tasks call
            .remote() and ray.get inside

loky, Dask and Ray are optional (``pip install 'gmpd[peers]'``); an adapter
whose package is missing raises :class:`Unavailable` and the bench reports
that system as null with the reason.

Every wait takes a timeout, so a peer that deadlocks or loses a task ends
its run with :class:`RunTimeout` instead of hanging the bench.

Runs in: a runner of ``gmpd bench`` (gmpd/bench.py: each run in its own interpreter).
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, ClassVar

import psutil

import gmpd

ALWAYS = ("gmpd", "ppe", "mp_pool")
OPTIONAL = ("loky", "dask", "ray")
SYSTEMS = ALWAYS + OPTIONAL


class Unavailable(Exception):
    """The system is not installed (or cannot start here)."""


class Unsupported(Exception):
    """The system has no form for this workload (e.g. tasks that spawn tasks)."""


class RunTimeout(Exception):
    """A run went past its time budget: the system deadlocked, lost a task, or is too slow."""


class Deadline:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.at = time.monotonic() + seconds

    def left(self) -> float:
        """Seconds left; raises RunTimeout when none are."""
        left = self.at - time.monotonic()
        if left <= 0:
            raise RunTimeout(f"no result within the run's {self.seconds:g} s budget")
        return left


def fib(n: int) -> int:
    return n if n < 2 else fib(n - 1) + fib(n - 2)


def descendants() -> list[psutil.Process]:
    """Every live process under this one (the systems' processes)."""
    try:
        return psutil.Process().children(recursive=True)
    except psutil.Error:
        return []


class System:
    """One system under test, started with ``workers`` worker processes."""

    name: ClassVar[str]
    form: ClassVar[str]

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.preexisting: set[int] = set()  # processes under ours from before it started

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        raise NotImplementedError

    def done(self, handle: Any) -> bool:
        return bool(handle.done())

    def result(self, handle: Any, deadline: Deadline) -> Any:
        try:
            return handle.result(timeout=deadline.left())
        except FutureTimeout as exc:
            raise RunTimeout(f"a task gave no result within the run's {deadline.seconds:g} s") from exc

    def ok(self, handle: Any) -> bool:
        """Done without raising."""
        return handle.exception(timeout=0) is None

    def run_all(self, fn: Callable[..., Any], args: Iterable[Any], deadline: Deadline) -> list[Any]:
        """One task per argument, results in order: the form for many tasks."""
        handles = [self.submit(fn, a) for a in args]
        return [self.result(h, deadline) for h in handles]

    def map(
        self, fn: Callable[[Any], Any], items: Iterable[Any], chunksize: int, deadline: Deadline
    ) -> list[Any]:
        return self.run_all(fn, items, deadline)

    def call(self, fn: Callable[..., Any], arg: Any, deadline: Deadline) -> Any:
        """One task, waited for: the latency form."""
        return self.result(self.submit(fn, arg), deadline)

    def nested(self, n: int, cutoff: int, deadline: Deadline) -> int:
        """fib(n) where each task above ``cutoff`` spawns its two halves as tasks and waits."""
        raise Unsupported(f"{self.name}: a task cannot submit tasks to its own pool")

    def worker_pids(self) -> list[int]:
        raise NotImplementedError

    def roles(self, procs: list[psutil.Process]) -> dict[int, str]:
        """What each of the system's processes under ours is, for the bench's
        CPU accounting (the client is ours, not listed): workers here."""
        return {p.pid: "workers" for p in procs}

    def close(self, clean: bool = True) -> None:
        """Shut down; ``clean`` False after a failed run: do not wait for lost tasks."""
        raise NotImplementedError


# ---- gmpd and the standard library -------------------------------------------


def gmpd_fib(n: int, cutoff: int) -> int:
    if n < cutoff:
        return fib(n)
    a, b = gmpd.go(gmpd_fib, n - 1, cutoff), gmpd.go(gmpd_fib, n - 2, cutoff)
    return int(a.result()) + int(b.result())


class ExecutorSystem(System):
    """A concurrent.futures executor."""

    ex: Any

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self.ex.submit(fn, *args)

    def map(
        self, fn: Callable[[Any], Any], items: Iterable[Any], chunksize: int, deadline: Deadline
    ) -> list[Any]:
        try:
            return list(self.ex.map(fn, items, chunksize=chunksize, timeout=deadline.left()))
        except FutureTimeout as exc:
            raise RunTimeout(f"map gave no result within the run's {deadline.seconds:g} s") from exc

    def worker_pids(self) -> list[int]:
        return list(getattr(self.ex, "_processes", None) or {})

    def kill_workers(self) -> None:
        """After a failed run: a broken or stuck pool must not hold the bench."""
        for pid in self.worker_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def close(self, clean: bool = True) -> None:
        if not clean:
            self.kill_workers()
        self.ex.shutdown(wait=True, cancel_futures=not clean)


class GmpdSystem(ExecutorSystem):
    name = "gmpd"
    form = "gmpd.Executor(preload=[the workloads' module]): submit, map(chunksize), gmpd.go inside tasks"

    def __init__(self, workers: int) -> None:
        super().__init__(workers)
        # Ms started for hand-offs come with the workloads' module imported,
        # as PPE's and mp.Pool's forked workers do (the bench imported it).
        self.ex = gmpd.Executor(workers, preload=["gmpd.bench"])

    def nested(self, n: int, cutoff: int, deadline: Deadline) -> int:
        return int(self.result(self.ex.submit(gmpd_fib, n, cutoff), deadline))

    def worker_pids(self) -> list[int]:
        from gmpd.chaos import m_pids  # noqa: PLC0415

        return m_pids(self.ex)

    def roles(self, procs: list[psutil.Process]) -> dict[int, str]:
        """Ms and sysmon as node memory names them, the coordinator; the
        node agent and its template are "node"."""
        stats = self.ex.statistics()
        named = {m.pid: "ms" for m in stats.ms} | {stats.sysmon_pid: "sysmon"}
        named[self.ex._cluster.coordinator] = "coordinator"
        return {p.pid: named.get(p.pid, "node") for p in procs}

    def close(self, clean: bool = True) -> None:
        self.ex.shutdown(wait=True, cancel_futures=not clean)


class PPESystem(ExecutorSystem):
    name = "ppe"
    form = "ProcessPoolExecutor: submit, map(chunksize)"

    def __init__(self, workers: int) -> None:
        super().__init__(workers)
        self.ex = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"))


class PoolSystem(System):
    name = "mp_pool"
    form = "multiprocessing.Pool: imap(chunksize=1), map(chunksize), apply_async"

    def __init__(self, workers: int) -> None:
        super().__init__(workers)
        self.pool = multiprocessing.get_context("fork").Pool(workers)

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self.pool.apply_async(fn, args)

    def done(self, handle: Any) -> bool:
        return bool(handle.ready())

    def ok(self, handle: Any) -> bool:
        return bool(handle.successful())

    def result(self, handle: Any, deadline: Deadline) -> Any:
        try:
            return handle.get(timeout=deadline.left())
        except multiprocessing.TimeoutError as exc:
            raise RunTimeout(f"a task gave no result within the run's {deadline.seconds:g} s") from exc

    def run_all(self, fn: Callable[..., Any], args: Iterable[Any], deadline: Deadline) -> list[Any]:
        it = self.pool.imap(fn, args, chunksize=1)
        out = []
        while True:
            try:
                out.append(it.next(timeout=deadline.left()))
            except StopIteration:
                return out
            except multiprocessing.TimeoutError as exc:
                raise RunTimeout(f"imap gave no result within the run's {deadline.seconds:g} s") from exc

    def map(
        self, fn: Callable[[Any], Any], items: Iterable[Any], chunksize: int, deadline: Deadline
    ) -> list[Any]:
        try:
            return list(self.pool.map_async(fn, items, chunksize=chunksize).get(timeout=deadline.left()))
        except multiprocessing.TimeoutError as exc:
            raise RunTimeout(f"map gave no result within the run's {deadline.seconds:g} s") from exc

    def worker_pids(self) -> list[int]:
        return [p.pid for p in self.pool._pool if p.pid]  # type: ignore[attr-defined]

    def close(self, clean: bool = True) -> None:
        def stop() -> None:
            self.pool.terminate()  # what `with Pool() as pool:` does on the way out
            self.pool.join()

        stopping = threading.Thread(target=stop, name="mp_pool-terminate", daemon=True)
        stopping.start()
        stopping.join(1.0)  # (a healthy pool's takes ~10 ms)
        if stopping.is_alive():
            # A worker SIGKILLed while it held the task queue's read lock (the
            # fault workload may hit one between tasks) leaves it taken for
            # good, and terminate() waits for it forever: let it go for the
            # dead holder (a plain Lock: any process may release it).
            with contextlib.suppress(ValueError):
                self.pool._inqueue._rlock.release()  # type: ignore[attr-defined]
            stopping.join(2.0)
        if stopping.is_alive():
            for p in self.pool._pool:  # type: ignore[attr-defined]
                with contextlib.suppress(OSError):
                    p.kill()  # no worker left behind, whatever terminate() waits on


# ---- optional peers ------------------------------------------------------------


def run_chunk(fn: Callable[[Any], Any], chunk: list[Any]) -> list[Any]:
    """One task for a chunk of a map: how Dask's and Ray's guides say to
    batch tiny tasks (their per-task cost is milliseconds)."""
    return [fn(x) for x in chunk]


def chunks(items: Iterable[Any], size: int) -> list[list[Any]]:
    items = list(items)
    return [items[i : i + size] for i in range(0, len(items), size)]


def _import(module: str, extra: str = "peers") -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise Unavailable(f"{module} is not installed (pip install 'gmpd[{extra}]')") from exc


class LokySystem(ExecutorSystem):
    name = "loky"
    form = "loky.ProcessPoolExecutor: submit, map(chunksize)"

    def __init__(self, workers: int) -> None:
        super().__init__(workers)
        self.ex = _import("loky").ProcessPoolExecutor(max_workers=workers)

    def close(self, clean: bool = True) -> None:
        if not clean:
            self.kill_workers()
        self.ex.shutdown(wait=True, kill_workers=not clean)


def dask_fib(n: int, cutoff: int) -> int:
    if n < cutoff:
        return fib(n)
    worker_client = importlib.import_module("distributed").worker_client

    with worker_client() as client:  # secedes from the worker's thread pool while it waits
        a, b = (
            client.submit(dask_fib, n - 1, cutoff, pure=False),
            client.submit(dask_fib, n - 2, cutoff, pure=False),
        )
        return int(a.result()) + int(b.result())


class DaskSystem(System):
    name = "dask"
    form = (
        "distributed LocalCluster(processes=True, threads_per_worker=1): "
        "client.map + gather (of chunks for map), submit, worker_client"
    )

    def __init__(self, workers: int) -> None:
        super().__init__(workers)
        distributed = _import("distributed")
        self.distributed = distributed
        self.cluster = distributed.LocalCluster(
            n_workers=workers,
            processes=True,
            threads_per_worker=1,
            dashboard_address=None,
            silence_logs=logging.ERROR,
        )
        self.client = distributed.Client(self.cluster)

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self.client.submit(fn, *args, pure=False)

    def ok(self, handle: Any) -> bool:
        return bool(handle.status == "finished")

    def result(self, handle: Any, deadline: Deadline) -> Any:
        try:
            return handle.result(timeout=deadline.left())
        except (TimeoutError, self.distributed.TimeoutError) as exc:
            raise RunTimeout(f"a task gave no result within the run's {deadline.seconds:g} s") from exc

    def run_all(self, fn: Callable[..., Any], args: Iterable[Any], deadline: Deadline) -> list[Any]:
        futures = self.client.map(fn, list(args), pure=False)
        try:
            self.distributed.wait(futures, timeout=deadline.left())
        except (TimeoutError, self.distributed.TimeoutError) as exc:
            raise RunTimeout(f"client.map gave no results within the run's {deadline.seconds:g} s") from exc
        return list(self.client.gather(futures))

    def map(
        self, fn: Callable[[Any], Any], items: Iterable[Any], chunksize: int, deadline: Deadline
    ) -> list[Any]:
        parts = self.run_all(functools.partial(run_chunk, fn), chunks(items, chunksize), deadline)
        return [x for part in parts for x in part]

    def nested(self, n: int, cutoff: int, deadline: Deadline) -> int:
        return int(self.result(self.client.submit(dask_fib, n, cutoff, pure=False), deadline))

    def worker_pids(self) -> list[int]:
        return sorted(int(pid) for pid in self.client.run(os.getpid).values())

    def close(self, clean: bool = True) -> None:
        self.client.close()
        self.cluster.close()


class RaySystem(System):
    name = "ray"
    form = "ray.init(num_cpus=workers): f.remote + ray.get (chunks for map), .remote and ray.get inside tasks"

    def __init__(self, workers: int) -> None:
        super().__init__(workers)
        self.ray = _import("ray")
        self.ray.init(
            num_cpus=workers,
            include_dashboard=False,
            log_to_driver=False,
            logging_level=logging.ERROR,
            configure_logging=False,
        )
        self.remotes: dict[Callable[..., Any], Any] = {}

    def remote(self, fn: Callable[..., Any]) -> Any:
        if fn not in self.remotes:
            self.remotes[fn] = self.ray.remote(fn)
        return self.remotes[fn]

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self.remote(fn).remote(*args)

    def done(self, handle: Any) -> bool:
        ready, _ = self.ray.wait([handle], timeout=0)
        return bool(ready)

    def ok(self, handle: Any) -> bool:
        try:
            self.ray.get(handle, timeout=0)
        except Exception:  # any task failure counts as errored
            return False
        return True

    def result(self, handle: Any, deadline: Deadline) -> Any:
        try:
            return self.ray.get(handle, timeout=deadline.left())
        except self.ray.exceptions.GetTimeoutError as exc:
            raise RunTimeout(f"a task gave no result within the run's {deadline.seconds:g} s") from exc

    def run_all(self, fn: Callable[..., Any], args: Iterable[Any], deadline: Deadline) -> list[Any]:
        refs = [self.remote(fn).remote(a) for a in args]
        try:
            return list(self.ray.get(refs, timeout=deadline.left()))
        except self.ray.exceptions.GetTimeoutError as exc:
            raise RunTimeout(f"ray.get gave no results within the run's {deadline.seconds:g} s") from exc

    def map(
        self, fn: Callable[[Any], Any], items: Iterable[Any], chunksize: int, deadline: Deadline
    ) -> list[Any]:
        refs = [self.remote(run_chunk).remote(fn, part) for part in chunks(items, chunksize)]
        try:
            parts = self.ray.get(refs, timeout=deadline.left())
        except self.ray.exceptions.GetTimeoutError as exc:
            raise RunTimeout(f"ray.get gave no results within the run's {deadline.seconds:g} s") from exc
        return [x for part in parts for x in part]

    def nested(self, n: int, cutoff: int, deadline: Deadline) -> int:
        return int(self.result(self.remote(ray_fib).remote(n, cutoff), deadline))

    def worker_pids(self) -> list[int]:
        return [p.pid for p in descendants() if _is_ray_worker(p)]

    def close(self, clean: bool = True) -> None:
        self.ray.shutdown()


def _is_ray_worker(p: psutil.Process) -> bool:
    """Ray's task workers retitle themselves "ray::IDLE" or "ray::<task>";
    its agents are "ray::...Agent" (raylet and gcs_server are not workers)."""
    try:
        title = p.cmdline()[0]
    except (psutil.Error, IndexError):
        return False
    return title.startswith("ray::") and not title.endswith("Agent")


def ray_fib(n: int, cutoff: int) -> int:
    if n < cutoff:
        return fib(n)
    ray = importlib.import_module("ray")
    f = ray.remote(ray_fib)
    return int(sum(ray.get([f.remote(n - 1, cutoff), f.remote(n - 2, cutoff)])))  # ray.get frees the CPU


ADAPTERS: dict[str, type[System]] = {
    cls.name: cls for cls in (GmpdSystem, PPESystem, PoolSystem, LokySystem, DaskSystem, RaySystem)
}
FORMS = {name: cls.form for name, cls in ADAPTERS.items()}


# The module each system's client runs from: what a user's script imports at its top.
CLIENT_MODULES = {
    "gmpd": "gmpd.executor",
    "ppe": "concurrent.futures.process",
    "mp_pool": "multiprocessing.pool",
    "loky": "loky",
    "dask": "distributed",
    "ray": "ray",
}


def installed(name: str) -> str | None:
    """None if system ``name`` can be used here, else why not (without
    starting it); its client's modules are imported either way."""
    module = CLIENT_MODULES.get(name)
    if module is None:  # (a test's fake)
        return None
    if name in ALWAYS:
        importlib.import_module(module)
        return None
    try:
        _import(module)
    except Unavailable as exc:
        return str(exc)
    return None


def start(name: str, workers: int) -> System:
    return ADAPTERS[name](workers)


def wait_ready(system: System, deadline: Deadline) -> None:
    """Every worker up and importing the task module: one task per worker, twice."""
    from gmpd.bench import ident  # noqa: PLC0415

    for _ in range(2):
        got = system.run_all(ident, range(system.workers * 2), deadline)
        if got != list(range(system.workers * 2)):
            raise RunTimeout("warm-up returned wrong results")
