"""``gmpd chaos``: a task stream under injected faults, and its accounting.

A stream of small CPU tasks (every tenth a parent that spawns children with
gmpd.go and sums them) runs on an embedded cluster while faults are
injected every ``--min``..``--max`` seconds, chosen at random:

  kill_m       SIGKILL an M (a worker process)
  stop_m       SIGSTOP an M, SIGCONT it 0.1-2 s later (past the lease TTL of
               1 s it is fenced: killed, its task run elsewhere)
  kill_sysmon  SIGKILL the node's sysmon (the node agent starts another)

At the end it waits for every future and prints one JSON line: tasks
submitted, completed, errored (a terminal error, e.g. WorkerLost past the
retry budget), lost (no terminal state, or a wrong result), duplicated
(a task whose future was completed more than once, which concurrent.futures
itself makes impossible, so this is a check of gmpd's use of it rather than
a measurement), retried (tasks the coordinator queued again), reexecuted
(task runs beyond one per task, counted by the tasks themselves in a log
file), duplicate_results_dropped (results that reached the client for a
task already answered: execution is at-least-once, delivery exactly-once),
and the faults injected.  The exit status is 1 on any loss or duplicate.

Runs in: the client process of the ``gmpd`` command.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import random
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import Future
from typing import Any

import psutil

import gmpd

LEASE_TTL = 1.0  # seconds: a stop longer than this is fenced
IN_FLIGHT_PER_WORKER = 8
DRAIN_S = 60.0  # after the faults stop, every task must have answered within this


def work(i: int, ms: float, log: str) -> int:
    """~ms of CPU; logs that it ran (for the re-execution count)."""
    end = time.perf_counter() + ms / 1000
    x = 0
    while time.perf_counter() < end:
        x += 1
    fd = os.open(log, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, b"%d\n" % i)
    finally:
        os.close(fd)
    return i * i


def parent(i: int, ms: float, log: str) -> int:
    """Spawns four children (node-local Gs) and sums their results."""
    children = [gmpd.go(work, -1, ms, log) for _ in range(4)]
    total: int = sum(f.result() for f in children)
    return work(i, ms, log) + total - 4


def m_pids(ex: gmpd.Executor) -> list[int]:
    """The live M processes (children of the node agent's template)."""
    agent = psutil.Process(ex._cluster.proc.pid)
    return [m.pid for child in agent.children() for m in child.children()]


class Injector(threading.Thread):
    def __init__(self, ex: gmpd.Executor, low: float, high: float, rng: random.Random) -> None:
        super().__init__(name="gmpd-chaos", daemon=True)
        self.ex, self.low, self.high, self.rng = ex, low, high, rng
        self.stop = threading.Event()
        self.faults: Counter[str] = Counter()
        self.stopped: list[tuple[float, int]] = []  # (when to SIGCONT, pid)

    def run(self) -> None:
        while not self.stop.wait(self.rng.uniform(self.low, self.high)):
            self.resume(time.monotonic())
            fault = self.rng.choice(["kill_m", "stop_m", "kill_sysmon"])
            try:
                if fault == "kill_sysmon":
                    os.kill(self.ex.statistics().sysmon_pid, signal.SIGKILL)
                else:
                    pids = m_pids(self.ex)
                    if not pids:
                        continue
                    pid = self.rng.choice(pids)
                    if fault == "kill_m":
                        os.kill(pid, signal.SIGKILL)
                    else:
                        os.kill(pid, signal.SIGSTOP)
                        self.stopped.append((time.monotonic() + self.rng.uniform(0.1, 2.0), pid))
            except (ProcessLookupError, psutil.NoSuchProcess, RuntimeError):
                continue
            self.faults[fault] += 1
        self.resume(float("inf"))

    def resume(self, now: float) -> None:
        for when, pid in [s for s in self.stopped if s[0] <= now]:
            self.stopped.remove((when, pid))
            with contextlib.suppress(ProcessLookupError):  # fenced meanwhile
                os.kill(pid, signal.SIGCONT)


def _completed(completions: Counter[int], i: int, _fut: Future[Any]) -> None:
    completions[i] += 1


def run(
    seconds: float, workers: int, *, low: float, high: float, seed: int, task_ms: float
) -> dict[str, Any]:
    rng = random.Random(seed)
    fd, log = tempfile.mkstemp(prefix="gmpd-chaos-")
    os.close(fd)
    submitted = 0
    expected: dict[int, int] = {}
    futures: dict[int, Future[Any]] = {}
    completions: Counter[int] = Counter()
    try:
        with gmpd.Executor(workers, lease_ttl=LEASE_TTL, retries=10) as ex:
            injector = Injector(ex, low, high, rng)
            injector.start()
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                while sum(not f.done() for f in futures.values()) < IN_FLIGHT_PER_WORKER * workers:
                    i = submitted
                    fn = parent if i % 10 == 0 else work
                    fut = ex.submit(fn, i, task_ms, log)
                    fut.add_done_callback(functools.partial(_completed, completions, i))
                    futures[i], expected[i] = fut, i * i
                    submitted += 1
                time.sleep(0.002)
            injector.stop.set()
            injector.join()
            deadline = time.monotonic() + DRAIN_S
            for fut in futures.values():
                left = deadline - time.monotonic()
                if left > 0:
                    with contextlib.suppress(TimeoutError):
                        fut.exception(timeout=left)
            stats = ex.statistics()
            pending = [i for i, fut in futures.items() if not fut.done()]
            if pending:  # what a hang looks like, for whoever debugs it
                print(
                    f"gmpd chaos: {len(pending)} tasks without an answer after {DRAIN_S} s: "
                    f"{pending[:20]}\n{stats}",
                    file=sys.stderr,
                )
            completed = errored = lost = 0
            for i, fut in futures.items():
                if not fut.done():
                    lost += 1
                elif fut.exception() is not None:
                    errored += 1
                elif fut.result() == expected[i]:
                    completed += 1
                else:
                    lost += 1  # a wrong result is as bad as none
            with open(log) as f:
                runs = sum(1 for line in f if not line.startswith("-"))
            return {
                "seconds": seconds,
                "workers": workers,
                "seed": seed,
                "submitted": submitted,
                "completed": completed,
                "errored": errored,
                "lost": lost,
                "duplicated": sum(1 for n in completions.values() if n > 1),
                "retried": stats.retried,
                "reexecuted": runs - submitted,
                "duplicate_results_dropped": stats.duplicate_results,
                "faults": dict(injector.faults),
                "faults_injected": sum(injector.faults.values()),
                "m_lost": stats.m_lost,
                "fenced": stats.fenced,
                "worker_lost": stats.worker_lost,
            }
    finally:
        os.unlink(log)


def main(
    seconds: float, workers: int | None, *, low: float, high: float, seed: int | None, task_ms: float
) -> int:
    seed = seed if seed is not None else random.randrange(2**32)
    summary = run(seconds, workers or os.cpu_count() or 1, low=low, high=high, seed=seed, task_ms=task_ms)
    print(json.dumps(summary), flush=True)
    if summary["lost"] or summary["duplicated"]:
        print(
            f"gmpd chaos: {summary['lost']} lost, {summary['duplicated']} duplicated (seed {seed})",
            file=sys.stderr,
        )
        return 1
    return 0
