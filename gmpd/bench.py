"""``gmpd bench``: gmpd side by side with ProcessPoolExecutor and multiprocessing.Pool.

Every workload runs on every system with the same number of workers, the
systems interleaved (A B C A B C ...), after one warm-up round, for
``reps`` repetitions; the median, min and max are reported.  Each run checks
every result; a system that returns a wrong or missing result fails that
workload (its cell becomes null, with the reason on stderr).

Workloads (issue 3; issue 6 adds more):
  noop_submit  N no-op tasks submitted one by one, all results collected   tasks/s
  noop_map     the same through map(chunksize=100)                        tasks/s
  latency      one no-op submitted and awaited, N times in a row          p50 µs (p99 too)
  farm         400 tasks of ~5 ms pure-Python CPU                         efficiency
  fanout       one task spawns 400 ~5 ms children with gmpd.go and sums   makespan / ideal
               (peers: the client submits the 400 and sums)
  fault        2,000 tasks of ~2 ms; after ~300 results one worker        tasks completed
               process of each system is SIGKILLed (lost, errored and
               wall time beside; a task with no result 5 s after the
               last one came is lost)

Runs in: the client process of the ``gmpd`` command.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import Executor as BaseExecutor
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import gmpd
from gmpd import chaos

SYSTEMS = ("gmpd", "ppe", "mp_pool")
FORMS = {
    "gmpd": "gmpd.Executor.submit / map / gmpd.go",
    "ppe": "ProcessPoolExecutor.submit / map",
    "mp_pool": "Pool.imap(chunksize=1) / Pool.map / Pool.apply_async",
}


# ---- task bodies (module level, so every system imports them by reference) ----


def ident(x: int) -> int:
    return x


def burn(ms: float) -> float:
    """~ms of pure-Python CPU; returns the CPU seconds it used."""
    t0 = time.thread_time()
    end = time.perf_counter() + ms / 1000
    x = 0
    while time.perf_counter() < end:
        x += 1
    return time.thread_time() - t0


def fan(n: int, ms: float) -> list[float]:
    """gmpd: spawn n children with gmpd.go, return their CPU times."""
    futures = [gmpd.go(burn, ms) for _ in range(n)]
    return [f.result() for f in futures]


# ---- systems ----


class Pool:
    """multiprocessing.Pool behind the small interface the workloads use."""

    def __init__(self, workers: int) -> None:
        self.pool = multiprocessing.get_context("fork").Pool(workers)
        self.lost_tasks = False  # a killed worker's task never completes: join() would wait forever

    def close(self) -> None:
        if self.lost_tasks:
            self.pool.terminate()
        else:
            self.pool.close()
        self.pool.join()


def start(system: str, workers: int) -> BaseExecutor | Pool:
    if system == "gmpd":
        return gmpd.Executor(workers)
    if system == "ppe":
        return ProcessPoolExecutor(workers)
    return Pool(workers)


def stop(ex: BaseExecutor | Pool) -> None:
    if isinstance(ex, Pool):
        ex.close()
    else:
        ex.shutdown(wait=True)


def warm(ex: BaseExecutor | Pool, workers: int) -> None:
    if isinstance(ex, Pool):
        ex.pool.map(ident, range(workers * 4), chunksize=1)
    else:
        list(ex.map(ident, range(workers * 4)))


# ---- workloads: each returns (value, extra) for one run, or raises on a wrong result ----


class WrongResult(Exception):
    pass


def check(ok: bool, what: str) -> None:
    if not ok:
        raise WrongResult(what)


def noop_submit(ex: BaseExecutor | Pool, n: int, workers: int) -> tuple[float, dict[str, float]]:
    t = time.perf_counter()
    if isinstance(ex, Pool):
        out = list(ex.pool.imap(ident, range(n), chunksize=1))
    else:
        futures = [ex.submit(ident, i) for i in range(n)]
        out = [f.result() for f in futures]
    dt = time.perf_counter() - t
    check(out == list(range(n)), "noop_submit results")
    return n / dt, {}


def noop_map(ex: BaseExecutor | Pool, n: int, workers: int) -> tuple[float, dict[str, float]]:
    t = time.perf_counter()
    out = (
        ex.pool.map(ident, range(n), chunksize=100)
        if isinstance(ex, Pool)
        else list(ex.map(ident, range(n), chunksize=100))
    )
    dt = time.perf_counter() - t
    check(out == list(range(n)), "noop_map results")
    return n / dt, {}


def latency(ex: BaseExecutor | Pool, n: int, workers: int) -> tuple[float, dict[str, float]]:
    samples = []
    for i in range(n):
        t = time.perf_counter()
        r = ex.pool.apply_async(ident, (i,)).get() if isinstance(ex, Pool) else ex.submit(ident, i).result()
        samples.append(time.perf_counter() - t)
        check(r == i, "latency result")
    samples.sort()
    return samples[len(samples) // 2] * 1e6, {"p99": samples[int(len(samples) * 0.99)] * 1e6}


def farm(ex: BaseExecutor | Pool, n: int, workers: int) -> tuple[float, dict[str, float]]:
    t = time.perf_counter()
    if isinstance(ex, Pool):
        cpu = ex.pool.map(burn, [5.0] * n, chunksize=1)
    else:
        futures = [ex.submit(burn, 5.0) for _ in range(n)]
        cpu = [f.result() for f in futures]
    makespan = time.perf_counter() - t
    check(len(cpu) == n and all(c > 0 for c in cpu), "farm results")
    return sum(cpu) / (workers * makespan), {}


def fanout(ex: BaseExecutor | Pool, n: int, workers: int) -> tuple[float, dict[str, float]]:
    t = time.perf_counter()
    if isinstance(ex, Pool):
        cpu = ex.pool.map(burn, [5.0] * n, chunksize=1)
    elif isinstance(ex, gmpd.Executor):
        cpu = ex.submit(fan, n, 5.0).result()
    else:
        cpu = [f.result() for f in [ex.submit(burn, 5.0) for _ in range(n)]]
    makespan = time.perf_counter() - t
    check(len(cpu) == n and all(c > 0 for c in cpu), "fanout results")
    return makespan / (n * 0.005 / workers), {}


FAULT_AT = 300  # results before the kill
FAULT_WAIT_S = 5.0  # a task with no result this long after the last result is counted lost


def worker_pids(ex: BaseExecutor | Pool) -> list[int]:
    """The worker processes of a running system."""
    if isinstance(ex, Pool):
        return [p.pid for p in ex.pool._pool if p.pid]  # type: ignore[attr-defined]
    if isinstance(ex, gmpd.Executor):
        return chaos.m_pids(ex)
    return list(ex._processes or {})  # type: ignore[attr-defined]


def fault(ex: BaseExecutor | Pool, n: int, workers: int) -> tuple[float, dict[str, float]]:
    """SIGKILL one worker after FAULT_AT results; count what each system
    delivers.  Lost and errored tasks do not fail the run: they are the
    measurement."""
    t = time.monotonic()
    if isinstance(ex, Pool):
        pending: list[Any] = [ex.pool.apply_async(burn, (2.0,)) for _ in range(n)]
        done: Callable[[Any], bool] = lambda r: r.ready()  # noqa: E731
        ok: Callable[[Any], bool] = lambda r: r.successful() and r.get() > 0  # noqa: E731
    else:
        pending = [ex.submit(burn, 2.0) for _ in range(n)]
        done = lambda f: f.done()  # noqa: E731
        ok = lambda f: f.exception() is None and f.result() > 0  # noqa: E731
    killed, finished, last = False, 0, time.monotonic()
    wait = FAULT_WAIT_S if n >= 2000 else 1.0  # (--quick: a shorter wait for mp.Pool's lost task)
    while finished < n and time.monotonic() - last < wait:
        count = sum(1 for r in pending if done(r))
        if count > finished:
            finished, last = count, time.monotonic()
        if not killed and finished >= FAULT_AT:
            pids = worker_pids(ex)
            if pids:
                os.kill(pids[0], signal.SIGKILL)
                killed = True
                if isinstance(ex, Pool):
                    ex.lost_tasks = True
        time.sleep(0.001)
    wall = last - t  # to the last result that came
    completed = sum(1 for r in pending if done(r) and ok(r))
    errored = sum(1 for r in pending if done(r) and not ok(r))
    check(killed, "fault: no worker to kill")
    return completed, {"lost": n - completed - errored, "errored": errored, "wall_s": wall}


@dataclass(frozen=True)
class Workload:
    name: str
    unit: str
    higher_is_better: bool
    run: Callable[[BaseExecutor | Pool, int, int], tuple[float, dict[str, float]]]
    n: int
    quick_n: int


WORKLOADS = [
    Workload("noop_submit", "tasks/s", True, noop_submit, 20_000, 2_000),
    Workload("noop_map", "tasks/s", True, noop_map, 20_000, 2_000),
    Workload("latency", "p50 us", False, latency, 2_000, 200),
    Workload("farm", "efficiency", True, farm, 400, 60),
    Workload("fanout", "makespan/ideal", False, fanout, 400, 60),
    Workload("fault", "tasks completed", True, fault, 2_000, 600),
]


def run_workload(w: Workload, workers: int, reps: int, quick: bool) -> dict[str, Any]:
    n = w.quick_n if quick else w.n
    samples: dict[str, list[float]] = {s: [] for s in SYSTEMS}
    extras: dict[str, list[dict[str, float]]] = {s: [] for s in SYSTEMS}
    failed: dict[str, str] = {}
    for rep in range(reps + 1):  # round 0 is the warm-up
        for system in SYSTEMS:
            if system in failed:
                continue
            ex = start(system, workers)
            try:
                warm(ex, workers)
                value, extra = w.run(ex, n, workers)
            except Exception as exc:
                failed[system] = f"{type(exc).__name__}: {exc}"
                print(f"gmpd bench: {w.name} on {system} failed: {failed[system]}", file=sys.stderr)
                continue
            finally:
                stop(ex)
            if rep:
                samples[system].append(value)
                extras[system].append(extra)
    ok = [s for s in SYSTEMS if samples[s] and s not in failed]
    out: dict[str, Any] = {
        "workload": w.name,
        "unit": w.unit,
        "higher_is_better": w.higher_is_better,
        "results": {s: (statistics.median(samples[s]) if s in ok else None) for s in SYSTEMS},
        "min": {s: (min(samples[s]) if s in ok else None) for s in SYSTEMS},
        "max": {s: (max(samples[s]) if s in ok else None) for s in SYSTEMS},
        "n": n,
        "workers": workers,
        "repetitions": reps,
    }
    for key in {k for s in ok for e in extras[s] for k in e}:
        out[key] = {s: (statistics.median(e[key] for e in extras[s]) if s in ok else None) for s in SYSTEMS}
    if failed:
        out["failed"] = failed
    return out


def main(workers: int | None, reps: int, quick: bool, as_json: bool, only: list[str]) -> int:
    workers = workers or os.cpu_count() or 1
    chosen = [w for w in WORKLOADS if not only or w.name in only]
    unknown = set(only) - {w.name for w in WORKLOADS}
    if unknown:
        print(f"gmpd bench: unknown workload(s) {sorted(unknown)}; choose from {[w.name for w in WORKLOADS]}")
        return 2
    print(
        f"# gmpd bench: {workers} workers, {reps} repetitions, loadavg {os.getloadavg()[0]:.2f}",
        file=sys.stderr,
    )
    status = 0
    for w in chosen:
        row = run_workload(w, workers, reps, quick)
        if row["results"]["gmpd"] is None:
            status = 1
        if as_json:
            print(json.dumps(row), flush=True)
        else:
            cells = "  ".join(
                f"{s}={v:,.3g}" if v is not None else f"{s}=null" for s, v in row["results"].items()
            )
            print(f"{w.name:<12} {w.unit:<15} {cells}", flush=True)
    return status
