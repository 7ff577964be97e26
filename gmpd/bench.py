"""``gmpd bench``: gmpd side by side with the systems its users run today.

Systems (gmpd/peers.py names the form each one is driven in): gmpd,
ProcessPoolExecutor, multiprocessing.Pool always; loky, Dask distributed and
Ray when installed (``pip install 'gmpd[peers]'``).  Same worker count for
all.  Each workload runs the systems interleaved (A B C A B C ...), after a
warm-up round (not in ``--quick``), for ``reps`` repetitions, each run on a
freshly started system that has run one task per worker, in a fresh
interpreter of its own (a runner: nothing another system left behind runs
beside it); the median, min and max are reported, with the load average.
Every run has a time budget: a system that deadlocks, crashes, loses a task
or is not installed gets null and a reason, never a hang (a runner that
outlives its budget is killed, with its processes).  Every task's result
is checked in every run; a wrong or missing one fails that system's
workload, gmpd's included.

Workloads (N and the --quick N are in WORKLOADS below):
  noop_submit   N no-op tasks, one task each, all results collected      tasks/s
  noop_map      the same through map(chunksize=100)                      tasks/s
  latency       one no-op submitted and awaited, N times in a row        p50 us (p99 beside)
  farm          400 tasks of ~5 ms pure-Python CPU                       efficiency (CPU / workers x makespan)
                (floor beside: the same tasks split over plain processes,
                no scheduler, once a round: what this machine allows)
  fanout        one task spawns 400 ~5 ms children with gmpd.go          makespan / ideal
                (peers: the client submits the 400; the ideal is CPU / workers)
  imbalance     400 tasks, lognormal durations (seed 7: mean ~5 ms, the  makespan / lower bound
                longest ~0.3 s), submitted in order; lower bound
                max(CPU / workers, longest task)
  blocking_mix  200 tasks of ~5 ms CPU and 40 that sleep 100 ms (one after  makespan / ideal
                every five), the sleep inside gmpd.syscall(); ideal: the
                tasks started in order on the first free worker, a sleep
                holding none (ideal_makespan); cpu_only beside: the same
                system's makespan / ideal for the CPU tasks alone
  blocking_mix_unmarked   the same with a plain time.sleep               makespan / ideal
  nested        fib(N) where each task above a cutoff spawns its two      s (makespan)
                halves as tasks and waits for them (peers whose tasks
                cannot submit tasks: null)
  fault         2,000 tasks of ~2 ms; after ~300 results one worker       tasks completed
                process is SIGKILLed (lost, errored, wall time beside)
  startup       from nothing to the first result (shutdown time beside)  s
  memory        peak RSS of all the system's processes together during   MiB (idle, and PSS, beside)
                farm

After the table it judges the targets the project set itself (issue 6, for
2 workers on its 2-core development machine; TARGETS below): met, MISSED,
or not judged when a system a target compares with did not run; each
--json line carries them as ``targets``.  Every run also reads the CPU
each of the system's processes spent, by role (``cpu_s``), and a missed
target says from it where its figure comes from (``why``).

Runs in: the ``gmpd`` command's process (the rows, the floor) and, each
run, a runner it starts (``serve``), which is that run's client process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import heapq
import importlib
import importlib.util
import itertools
import json
import math
import os
import random
import select
import signal
import statistics
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psutil

import gmpd
from gmpd import peers
from gmpd.peers import Deadline, RunTimeout, System, Unavailable, Unsupported

# ---- task bodies (module level: every system imports them by reference) --------


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


def mixed(item: tuple[str, float]) -> tuple[str, float]:
    """("cpu", ms): burn; ("sleep", ms) sleeps inside gmpd.syscall();
    ("nap", ms) sleeps unmarked.  Returns the kind and the CPU (or wall) time."""
    kind, ms = item
    if kind == "cpu":
        return kind, burn(ms)
    t = time.perf_counter()
    if kind == "sleep":
        with gmpd.syscall():
            time.sleep(ms / 1000)
    else:
        time.sleep(ms / 1000)
    return kind, time.perf_counter() - t


# ---- workloads: each returns (value, extra) for one run, or raises ----------


class WrongResult(Exception):
    pass


def check(ok: bool, what: str) -> None:
    if not ok:
        raise WrongResult(what)


# A run's figures beside its value: floats, and "cpu_s" (CPU seconds by role).
Extra = dict[str, float | dict[str, float]]


def noop_submit(s: System, n: int, d: Deadline) -> tuple[float, Extra]:
    t = time.perf_counter()
    out = s.run_all(ident, range(n), d)
    dt = time.perf_counter() - t
    check(out == list(range(n)), "noop_submit: wrong or missing results")
    return n / dt, {}


def noop_map(s: System, n: int, d: Deadline) -> tuple[float, Extra]:
    t = time.perf_counter()
    out = s.map(ident, range(n), 100, d)
    dt = time.perf_counter() - t
    check(out == list(range(n)), "noop_map: wrong or missing results")
    return n / dt, {}


def latency(s: System, n: int, d: Deadline) -> tuple[float, Extra]:
    samples = []
    for i in range(n):
        t = time.perf_counter()
        r = s.call(ident, i, d)
        samples.append(time.perf_counter() - t)
        check(r == i, "latency: wrong result")
    samples.sort()
    return samples[len(samples) // 2] * 1e6, {"p99": samples[int(len(samples) * 0.99)] * 1e6}


def cpu_times(out: list[Any], n: int, what: str) -> list[float]:
    check(
        len(out) == n and all(isinstance(c, float) and c > 0 for c in out),
        f"{what}: wrong or missing results",
    )
    return out


def farm(s: System, n: int, d: Deadline) -> tuple[float, Extra]:
    t = time.perf_counter()
    cpu = cpu_times(s.run_all(burn, [5.0] * n, d), n, "farm")
    makespan = time.perf_counter() - t
    return sum(cpu) / (s.workers * makespan), {"task_cpu_s": sum(cpu), "makespan_s": makespan}


BARE_BURNER = """
import sys
from gmpd.bench import burn
print("ready", flush=True)
sys.stdin.read(1)  # go
print(repr(sum(burn(5.0) for _ in range(int(sys.argv[1])))), flush=True)
"""


def read_line(p: subprocess.Popen[bytes], d: Deadline, what: str) -> bytes:
    """The next line ``p`` prints, within the deadline (b"" if it exited)."""
    assert p.stdout is not None
    fd, line = p.stdout.fileno(), b""
    while not line.endswith(b"\n"):
        left = d.at - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise RunTimeout(f"{what} within the run's {d.seconds:g} s budget")
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        line += chunk
    return line


def bare_farm(workers: int, n: int, d: Deadline) -> float:
    """farm's floor on this machine: the same n tasks (burn, 5 ms), split in
    advance over ``workers`` plain processes, with no scheduler, no messages
    and no results to collect; the same efficiency.  What the machine itself
    leaves of the cores (its other load, the kernel, its timer ticks), which
    no system can beat: a row short of its target and near its floor says
    the machine was not quiet."""
    procs: list[subprocess.Popen[bytes]] = []
    outs: list[bytes] = []
    try:
        for i in range(workers):
            share = str(n // workers + (i < n % workers))
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-c", BARE_BURNER, share], stdin=subprocess.PIPE, stdout=subprocess.PIPE
                )
            )
        for p in procs:  # every one imported and waiting: then all go at once
            late = "farm floor: a bare process did not start"
            check(read_line(p, d, late) == b"ready\n", late)
        t = time.perf_counter()
        for p in procs:
            assert p.stdin is not None
            os.write(p.stdin.fileno(), b"g")
        for p in procs:  # (timed to the last result, not to the interpreters' exits)
            outs.append(read_line(p, d, "farm floor: a bare process gave no result"))
        span = time.perf_counter() - t
    finally:
        for p in procs:  # (each exits once it said its result; killed if it never will)
            try:
                p.communicate(timeout=10 if len(outs) == len(procs) else 0)
            except subprocess.TimeoutExpired:
                p.kill()
                p.communicate()
    try:
        cpu = sum(float(out) for out in outs)
    except ValueError:
        cpu = 0.0
    check(all(p.returncode == 0 for p in procs) and cpu > 0, "farm floor: a bare process failed")
    return cpu / (workers * span)


def fanout(s: System, n: int, d: Deadline) -> tuple[float, Extra]:
    t = time.perf_counter()
    if isinstance(s, peers.GmpdSystem):
        out = s.result(s.submit(fan, n, 5.0), d)
    else:
        out = s.run_all(burn, [5.0] * n, d)
    cpu = cpu_times(out, n, "fanout")
    makespan = time.perf_counter() - t
    return makespan / (sum(cpu) / s.workers), {}


IMBALANCE_SEED = 7


def imbalance_ms(n: int) -> list[float]:
    """Heavy-tailed task lengths: lognormal (sigma 1.6) scaled to a mean of
    5 ms; with seed 7 and n = 400 the longest is ~0.3 s and a few pass 0.2 s."""
    rng = random.Random(IMBALANCE_SEED)
    raw = [rng.lognormvariate(0.0, 1.6) for _ in range(n)]
    scale = 5.0 * n / sum(raw)
    return [max(0.05, x * scale) for x in raw]  # (no task shorter than 50 us)


def imbalance(s: System, n: int, d: Deadline) -> tuple[float, Extra]:
    lengths = imbalance_ms(n)
    t = time.perf_counter()
    cpu = cpu_times(s.run_all(burn, lengths, d), n, "imbalance")
    makespan = time.perf_counter() - t
    bound = max(sum(cpu) / s.workers, *cpu)
    return makespan / bound, {"lower_bound_s": bound, "makespan_s": makespan, "longest_s": max(cpu)}


def ideal_makespan(tasks: list[float | None], workers: int, sleep_s: float) -> float:
    """The makespan of ``tasks`` (CPU seconds, or None for a sleep of
    ``sleep_s``) started in order, each on the first free worker, where a
    sleep holds no worker: what a scheduler with no overhead would reach."""
    free = [0.0] * workers
    end = 0.0
    for cpu in tasks:
        t = heapq.heappop(free)
        if cpu is None:
            end = max(end, t + sleep_s)
            heapq.heappush(free, t)
        else:
            end = max(end, t + cpu)
            heapq.heappush(free, t + cpu)
    return end


def blocking_items(n: int, sleep_kind: str) -> list[tuple[str, float]]:
    """n CPU tasks of 5 ms and n / 5 sleeps of 100 ms, a sleep after every fifth."""
    items: list[tuple[str, float]] = []
    for i in range(n):
        items.append(("cpu", 5.0))
        if i % 5 == 4:
            items.append((sleep_kind, 100.0))
    return items


def blocking(sleep_kind: str, cpu_only: bool) -> Callable[[System, int, Deadline], tuple[float, Extra]]:
    """With ``cpu_only``, the same system then runs the CPU tasks alone (no
    sleeps), and ``cpu_only`` beside the row is that run's makespan / ideal:
    what this machine and the system's per-task cost allow with nothing
    blocking, so the part the blocking costs is the difference."""

    def run(s: System, n: int, d: Deadline) -> tuple[float, Extra]:
        items = blocking_items(n, sleep_kind)
        gmpd_ex = s.ex if isinstance(s, peers.GmpdSystem) else None
        stats = gmpd_ex.statistics() if gmpd_ex is not None else None
        before = cpu_now(s)
        ratio, makespan, ideal, task_cpu = mix_ratio(s, items, d)
        extra: Extra = {"ideal_s": ideal, "makespan_s": makespan, "task_cpu_s": task_cpu}
        extra.update(cpu_extra(s, before))  # (the mixed run's alone, not cpu_only's)
        if gmpd_ex is not None and stats is not None:
            # Ps of Gs in syscalls that a standby thread of the same M ran
            # meanwhile, and those sysmon retook and gave on to another M.
            after = gmpd_ex.statistics()
            extra["takeovers"] = float(after.takeovers - stats.takeovers)
            extra["handoffs"] = float(after.handoffs - stats.handoffs)
        if cpu_only:
            extra["cpu_only"] = mix_ratio(s, [it for it in items if it[0] == "cpu"], d)[0]
        return ratio, extra

    return run


def mix_ratio(s: System, items: list[tuple[str, float]], d: Deadline) -> tuple[float, float, float, float]:
    """Run ``items`` (mixed) in order: makespan / ideal, makespan, ideal,
    and the CPU seconds the CPU tasks ran."""
    t = time.perf_counter()
    out = s.run_all(mixed, items, d)
    makespan = time.perf_counter() - t
    right = [
        kind == want and (v > 0 if kind == "cpu" else v >= 0.099)
        for (kind, v), (want, _ms) in zip(out, items, strict=False)
    ]
    check(len(out) == len(items) and all(right), "blocking_mix: wrong or missing results")
    ideal = ideal_makespan([v if kind == "cpu" else None for kind, v in out], s.workers, 0.1)
    return makespan / ideal, makespan, ideal, sum(v for kind, v in out if kind == "cpu")


NESTED_CUTOFF = 20


def nested(s: System, n: int, d: Deadline) -> tuple[float, Extra]:
    t = time.perf_counter()
    r = s.nested(n, NESTED_CUTOFF, d)
    makespan = time.perf_counter() - t
    check(r == peers.fib(n), f"nested: fib({n}) = {r}, expected {peers.fib(n)}")
    return makespan, {}


FAULT_AT = 300  # results before the kill


def fault(s: System, n: int, d: Deadline) -> tuple[float, Extra]:
    """SIGKILL one worker after FAULT_AT results; count what the system
    delivers.  Lost and errored tasks do not fail the run: they are the
    measurement.  A task with no result ``wait`` seconds after the last
    result came is lost."""
    t = time.monotonic()
    pending = [s.submit(burn, 2.0) for _ in range(n)]
    killed, finished, last = False, 0, time.monotonic()
    wait = 5.0 if n >= 2000 else 1.0
    while finished < n and time.monotonic() - last < wait:
        d.left()
        count = sum(1 for h in pending if s.done(h))
        if count > finished:
            finished, last = count, time.monotonic()
        if not killed and finished >= FAULT_AT:
            pids = s.worker_pids()
            if pids:
                os.kill(pids[0], signal.SIGKILL)
                killed = True
        time.sleep(0.002)
    wall = last - t  # to the last result that came
    done = [h for h in pending if s.done(h)]
    completed = [h for h in done if s.ok(h)]
    check(killed, "fault: no worker to kill")
    check(all(s.result(h, d) > 0 for h in completed), "fault: wrong results")
    errored = len(done) - len(completed)
    return len(completed), {"lost": n - len(done), "errored": errored, "wall_s": wall}


def memory_sampler(stop: threading.Event, peak: list[float], ignore: set[int]) -> None:
    """Peak RSS and peak PSS (MiB) summed over every process under this one
    but ``ignore``, every 50 ms."""
    while not stop.wait(0.05):
        rss = pss = 0
        for p in peers.descendants():
            if p.pid in ignore:
                continue
            try:
                info = p.memory_full_info()
            except psutil.Error:
                continue
            rss, pss = rss + info.rss, pss + info.pss
        peak[0], peak[1] = max(peak[0], rss / 2**20), max(peak[1], pss / 2**20)


def sample_peak(
    during: Callable[[], object], ignore: set[int], at_least_s: float = 0.0
) -> tuple[float, float]:
    """(peak RSS, peak PSS) while ``during`` runs (and at least ``at_least_s``)."""
    stop, peak = threading.Event(), [0.0, 0.0]
    sampler = threading.Thread(target=memory_sampler, args=(stop, peak, ignore), daemon=True)
    sampler.start()
    try:
        t = time.monotonic()
        during()
        time.sleep(max(0.0, at_least_s - (time.monotonic() - t)))
    finally:
        stop.set()
        sampler.join()
    return peak[0], peak[1]


IDLE_SAMPLE_S = 0.5  # ten samples of a system at rest (was 1 s: --quick outgrew its 2 minutes)


def memory(s: System, n: int, d: Deadline) -> tuple[float, Extra]:
    """Peak RSS of the system's processes together during farm (the issue's
    measure), idle beside it, and PSS too: RSS counts a page shared by N
    forked workers N times, PSS splits it among them."""
    idle, idle_pss = sample_peak(lambda: None, s.preexisting, at_least_s=IDLE_SAMPLE_S)
    busy, busy_pss = sample_peak(lambda: farm(s, n, d), s.preexisting)
    return busy, {"idle_mib": idle, "pss_mib": busy_pss, "idle_pss_mib": idle_pss}


# startup runs without a warm system: run_workload starts it inside the timing.


# ---- where a system's CPU goes (the reasons beside a missed target) --------


def process_cpu(p: psutil.Process) -> float:
    """CPU seconds process ``p``'s live threads have run: to the
    nanosecond from Linux's schedstat (its user and system times count in
    10 ms ticks, as coarse as sysmon's whole share of a run), else those."""
    try:
        ns = 0
        for tid in os.listdir(f"/proc/{p.pid}/task"):
            with open(f"/proc/{p.pid}/task/{tid}/schedstat") as f:
                ns += int(f.read().split()[0])
        return ns / 1e9
    except (OSError, ValueError, IndexError):
        t = p.cpu_times()
        return t.user + t.system


def cpu_now(s: System) -> dict[int, tuple[str, float]]:
    """CPU seconds so far of this process, the client, and of each of the
    system's processes, with its role."""
    me = psutil.Process()
    out = {me.pid: ("client", process_cpu(me))}
    procs = [p for p in peers.descendants() if p.pid not in s.preexisting]
    roles = s.roles(procs)
    for p in procs:
        try:
            out[p.pid] = (roles.get(p.pid, "workers"), process_cpu(p))
        except psutil.Error:
            continue  # (gone meanwhile)
    return out


def cpu_extra(s: System, before: dict[int, tuple[str, float]]) -> Extra:
    """``cpu_s``: CPU seconds each role spent since ``before``; and
    ``processes_started`` meanwhile.  A process started meanwhile counts
    whole; one that ended meanwhile is missing (its CPU is lost with it)."""
    after = cpu_now(s)
    spent: dict[str, float] = {}
    for pid, (role, t) in after.items():
        spent[role] = spent.get(role, 0.0) + t - before.get(pid, (role, 0.0))[1]
    return {"cpu_s": spent, "processes_started": float(len(after.keys() - before.keys()))}


@dataclass(frozen=True)
class Workload:
    name: str
    unit: str
    higher_is_better: bool
    run: Callable[[System, int, Deadline], tuple[float, Extra]] | None
    n: int
    quick_n: int
    budget_s: float = 120.0  # per run
    # Run once per round before the systems, with none running: the
    # machine's own floor for the row (``floor`` beside it), if it has one.
    floor: Callable[[int, int, Deadline], float] | None = None


WORKLOADS = [
    Workload("noop_submit", "tasks/s", True, noop_submit, 10_000, 1_000),
    Workload("noop_map", "tasks/s", True, noop_map, 20_000, 2_000),
    Workload("latency", "p50 us", False, latency, 1_000, 100),
    Workload("farm", "efficiency", True, farm, 400, 60, floor=bare_farm),
    Workload("fanout", "makespan/ideal", False, fanout, 400, 60),
    Workload("imbalance", "makespan/lower bound", False, imbalance, 400, 100),
    Workload("blocking_mix", "makespan/ideal", False, blocking("sleep", True), 200, 50),
    Workload("blocking_mix_unmarked", "makespan/ideal", False, blocking("nap", False), 200, 50),
    Workload("nested", "s", False, nested, 30, 24),
    Workload("fault", "tasks completed", True, fault, 2_000, 600),
    Workload("startup", "s to first result", False, None, 1, 1, budget_s=60.0),
    Workload("memory", "peak RSS MiB", False, memory, 400, 60),
]
WORKLOAD = {w.name: w for w in WORKLOADS}


def settle(preexisting: set[int], timeout: float = 5.0) -> None:
    """Wait for the last system's processes to be gone (Ray's and Dask's
    take a moment), so they neither compete with nor count for the next.
    A resource tracker is not waited for: multiprocessing and loky start
    one per process at a pool's first use and keep it (the first loky run
    waited the whole 5 s for it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(p.pid in preexisting or resource_tracker(p) for p in peers.descendants()):
            return
        time.sleep(0.05)


def resource_tracker(p: psutil.Process) -> bool:
    try:
        return any("resource_tracker import main" in arg for arg in p.cmdline())
    except psutil.NoSuchProcess:
        return True  # gone meanwhile: nothing to wait for
    except psutil.Error:
        return False


def run_once(w: Workload, system: str, workers: int, n: int) -> tuple[float, Extra]:
    """One run on a freshly started system; raises with the reason on failure."""
    d = Deadline(w.budget_s)
    preexisting = {p.pid for p in peers.descendants()}  # (resource trackers, a slow exit)
    try:
        return run_on(w, system, workers, n, d, preexisting=preexisting)
    finally:
        settle(preexisting)


# ---- each run in an interpreter of its own ------------------------------------

# What a runner runs (tests swap in code that first registers fake systems).
RUNNER = "from gmpd.bench import serve; serve()"
# A run's budget bounds its tasks; beyond it a runner may take this long to
# start its interpreter and system (Ray's ~3 s), close it and settle, before
# the bench ends it.
RUNNER_GRACE_S = 60.0
# What a run left after its runner exited has this long to leave by itself.
SWEEP_WAIT_S = 5.0
# How long an interrupted bench waits for its runner (Ctrl-C reached it too)
# to close its system (an Executor interrupted as it started took 3.7 s).
INTERRUPTED_WAIT_S = 15.0
# Every runner's environment, and so its processes', names its run: a
# process the run left, whoever adopted it, is found by it.
RUN_MARK = "GMPD_BENCH_RUN"
RUNS = itertools.count()
OUTCOMES: dict[str, type[Exception]] = {
    cls.__name__: cls for cls in (Unavailable, Unsupported, RunTimeout, WrongResult)
}


class RunnerFailed(Exception):
    """A run raised something that is not one of OUTCOMES: its type and message."""


def run_isolated(w: Workload, system: str, workers: int, n: int) -> tuple[float, Extra]:
    """run_once in a fresh interpreter, a runner, that exits after it.  No
    system then runs beside what another left in the bench's process: a
    process that had run the peers (Ray's threads keep waking after
    ray.shutdown()) ran gmpd's farm ~0.3 % and its noop flood ~8 % slower.
    A runner that overstays the run's budget by RUNNER_GRACE_S is killed;
    whatever its run left running is killed after it (sweep)."""
    order = {"workload": w.name, "budget_s": w.budget_s, "system": system, "workers": workers, "n": n}
    mark = f"{os.getpid()}.{next(RUNS)}"
    env = {**os.environ, RUN_MARK: mark}
    cmd = [sys.executable, "-c", RUNNER]
    with subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env) as p:
        try:
            assert p.stdin is not None
            p.stdin.write(json.dumps(order).encode() + b"\n")
            p.stdin.close()
            d = Deadline(w.budget_s + RUNNER_GRACE_S)
            line = read_line(p, d, f"{system}'s runner gave no outcome (killed)")
            status = p.wait(max(0.0, d.at - time.monotonic()))  # (after its outcome: its exit only)
            if not line:
                raise RunnerFailed(f"its runner exited ({status}) without an outcome")
            got = json.loads(line)
        except subprocess.TimeoutExpired as exc:
            raise RunTimeout(f"{system}'s runner did not exit (killed)") from exc
        except KeyboardInterrupt:
            # A Ctrl-C reached the runner too (one process group), and it is
            # closing its system: let it, not kill it halfway.
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(INTERRUPTED_WAIT_S)
            raise
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
            sweep(mark)
    if "error" in got:
        raise OUTCOMES.get(got["error"] or "", RunnerFailed)(got["message"])
    return float(got["value"]), got["extra"]


def sweep(mark: str) -> None:
    """After a runner's exit: the processes its run left (a system that did
    not close, one whose workers outlive their parent, a killed runner's)
    get SWEEP_WAIT_S to leave by themselves (gmpd's clean up after a lost
    client), then are SIGKILLed.  Not resource trackers: they leave by
    themselves once the runner is gone, after their cleanup (loky's takes
    1-2 s)."""
    mine = (q for q in psutil.process_iter() if q.pid != os.getpid() and run_of(q) == mark)
    left = [q for q in mine if not resource_tracker(q)]
    if not left:
        return
    _, left = psutil.wait_procs(left, timeout=SWEEP_WAIT_S)
    for q in left:
        with contextlib.suppress(psutil.Error):
            q.kill()
    psutil.wait_procs(left, timeout=5)


def run_of(q: psutil.Process) -> str | None:
    try:
        return q.environ().get(RUN_MARK)
    except psutil.Error:  # (gone, a zombie, or another user's)
        return None


def serve() -> None:
    """A runner's main: the run its order on stdin names, on a fresh
    system; its outcome as one JSON line on stdout.  Anything else printed
    goes to stderr."""
    order = json.loads(sys.stdin.readline())
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    # A forked worker (PPE's, mp.Pool's) must not hold our outcome's pipe:
    # the bench would not see it close if we died.
    os.register_at_fork(after_in_child=out.close)
    w = dataclasses.replace(WORKLOAD[order["workload"]], budget_s=order["budget_s"])
    try:
        # Its client's imports, before any timing (startup times the start,
        # not a user's imports; a bench process that had run a system had them).
        peers.installed(order["system"])
        value, extra = run_once(w, order["system"], order["workers"], order["n"])
        outcome: dict[str, Any] = {"value": value, "extra": extra}
    except Exception as exc:
        kind = next((name for name, cls in OUTCOMES.items() if isinstance(exc, cls)), None)
        if kind is None:
            traceback.print_exc()
        outcome = {"error": kind, "message": str(exc) if kind else f"{type(exc).__name__}: {exc}"}
    out.write(json.dumps(outcome) + "\n")
    out.close()


def run_on(
    w: Workload, system: str, workers: int, n: int, d: Deadline, *, preexisting: set[int]
) -> tuple[float, Extra]:
    if w.run is None:  # startup: the system's start is what is timed
        t = time.perf_counter()
        s = peers.start(system, workers)
        try:
            check(s.call(ident, 7, d) == 7, "startup: wrong result")
            first = time.perf_counter() - t
        finally:
            t = time.perf_counter()
            s.close()
        return first, {"shutdown_s": time.perf_counter() - t}
    s = peers.start(system, workers)
    s.preexisting = preexisting
    clean = False
    try:
        peers.wait_ready(s, d)
        before = cpu_now(s)
        value, extra = w.run(s, n, d)
        if "cpu_s" not in extra:  # (a workload that runs twice says which run it was)
            extra.update(cpu_extra(s, before))
        clean = True
        return value, extra
    finally:
        s.close(clean)


def run_workload(
    w: Workload, systems: list[str], workers: int, reps: int, quick: bool, *, isolated: bool = True
) -> dict[str, Any]:
    """The row of workload ``w``: each run in a runner of its own
    (run_isolated), or, not ``isolated``, in this process (run_once)."""
    run = run_isolated if isolated else run_once
    n = w.quick_n if quick else w.n
    samples: dict[str, list[float]] = {s: [] for s in systems}
    extras: dict[str, list[Extra]] = {s: [] for s in systems}
    failed: dict[str, str] = {}
    verified: dict[str, bool | None] = dict.fromkeys(systems)
    first = 1 if quick else 0  # round 0 is the warm-up (none in --quick)
    spent = dict.fromkeys(systems, 0.0)  # wall seconds, starts and shutdowns included
    floors: list[float] = []
    for rep in range(first, reps + 1):
        if w.floor is not None:
            try:
                floor = w.floor(workers, n, Deadline(w.budget_s))
            except Exception as exc:  # (the row goes on without it)
                print(f"gmpd bench: {w.name}'s floor on this machine failed: {exc!r}", file=sys.stderr)
            else:
                if rep:
                    floors.append(floor)
        for system in systems:
            if system in failed:
                continue
            t = time.monotonic()
            try:
                value, extra = run(w, system, workers, n)
            except (Unavailable, Unsupported) as exc:
                failed[system] = str(exc)
                continue
            except WrongResult as exc:
                failed[system] = f"wrong result: {exc}"
                verified[system] = False
                print(f"gmpd bench: {w.name} on {system}: {failed[system]}", file=sys.stderr)
                continue
            except RunTimeout as exc:
                failed[system] = f"timed out: {exc}"
                print(f"gmpd bench: {w.name} on {system}: {failed[system]}", file=sys.stderr)
                continue
            except Exception as exc:  # a peer's crash is a result to report, not ours to raise
                failed[system] = str(exc) if isinstance(exc, RunnerFailed) else f"{type(exc).__name__}: {exc}"
                print(f"gmpd bench: {w.name} on {system} failed: {failed[system]}", file=sys.stderr)
                continue
            finally:
                spent[system] += time.monotonic() - t
            verified[system] = True
            if rep:
                samples[system].append(value)
                extras[system].append(extra)
    ok = [s for s in systems if samples[s] and s not in failed]
    out: dict[str, Any] = {
        "workload": w.name,
        "unit": w.unit,
        "higher_is_better": w.higher_is_better,
        "results": {s: (statistics.median(samples[s]) if s in ok else None) for s in systems},
        "min": {s: (min(samples[s]) if s in ok else None) for s in systems},
        "max": {s: (max(samples[s]) if s in ok else None) for s in systems},
    }
    out["ratio_vs_best_peer"] = ratio_vs_best_peer(out)
    out.update(
        n=n,
        workers=workers,
        repetitions=reps,
        loadavg=round(os.getloadavg()[0], 2),
        verified={s: (verified[s] if s not in failed or verified[s] is False else None) for s in systems},
        forms={s: peers.FORMS[s] for s in systems},
    )
    for key in sorted({k for s in ok for e in extras[s] for k in e}):
        out[key] = {
            s: (median_of([e[key] for e in extras[s] if key in e]) if s in ok else None) for s in systems
        }
    if floors:
        out["floor"] = {"median": statistics.median(floors), "min": min(floors), "max": max(floors)}
    if failed:
        out["failed"] = failed
    out["elapsed_s"] = {s: round(spent[s], 2) for s in systems}  # (which peer makes a run long)
    if w.name in TARGETS:
        out["targets"] = judge_targets(out)
    return out


def median_of(values: list[float | dict[str, float]]) -> float | dict[str, float] | None:
    """The median of a figure over the repetitions; of each part, for a dict."""
    if not values:
        return None
    if all(isinstance(v, dict) for v in values):
        parts = {k for v in values if isinstance(v, dict) for k in v}
        return {
            k: statistics.median(v.get(k, 0.0) for v in values if isinstance(v, dict)) for k in sorted(parts)
        }
    return statistics.median(v for v in values if not isinstance(v, dict))


def ratio_vs_best_peer(row: dict[str, Any]) -> float | None:
    """Above 1: gmpd is ahead of the best peer, whichever way the unit points."""
    mine = row["results"].get("gmpd")
    others = [v for s, v in row["results"].items() if s != "gmpd" and v is not None]
    if mine is None or not others:
        return None
    if row["higher_is_better"]:
        best = max(others)
        return mine / best if best else None
    best = min(others)
    return best / mine if mine else None


# ---- the targets the project set itself (issue 6) ---------------------------

TARGETS_FOR = "issue 6's targets, set for 2 workers on its 2-core development machine"


@dataclass(frozen=True)
class Target:
    """A target for one workload, judged on that workload's row: (met, the
    figure judged), met None when a system it compares with did not run."""

    text: str
    judge: Callable[[dict[str, Any]], tuple[bool | None, str]]
    # Where the figure comes from, from the row's CPU accounting, said
    # beside a miss ("" when the row lacks the figures it needs).
    why: Callable[[dict[str, Any]], str] | None = None


def shown(x: float, at_least: bool) -> str:
    """x to 4 significant digits, rounded toward missing the target: down
    for one x must reach, up for one x must stay under (1.4996 against
    1.5 reads 1.499, never 1.5)."""
    if x == 0 or not math.isfinite(x):
        return f"{x:g}"
    q = 10.0 ** (math.floor(math.log10(abs(x))) - 3)
    steps = round(x / q, 6)  # (0.9699 / 1e-4 is 9698.999...)
    return f"{(math.floor(steps) if at_least else math.ceil(steps)) * q:.4g}"


def versus(peer: str, factor: float, text: str, why: Callable[[dict[str, Any]], str] | None = None) -> Target:
    """gmpd at least ``factor`` times ahead of ``peer`` (either unit direction)."""

    def judge(row: dict[str, Any]) -> tuple[bool | None, str]:
        mine, theirs = row["results"]["gmpd"], row["results"].get(peer)
        if theirs is None:
            return None, f"{peer} gave no result"
        ahead = mine / theirs if row["higher_is_better"] else theirs / mine
        return ahead >= factor, f"{shown(ahead, True)}x {peer}"

    return Target(text, judge, why)


def within(limit: float, text: str, why: Callable[[dict[str, Any]], str] | None = None) -> Target:
    """gmpd's value at least (higher is better) or at most ``limit``."""

    def judge(row: dict[str, Any]) -> tuple[bool | None, str]:
        mine, up = row["results"]["gmpd"], row["higher_is_better"]
        return (mine >= limit if up else mine <= limit), shown(mine, up)

    return Target(text, judge, why)


def best_of_peers(text: str, why: Callable[[dict[str, Any]], str] | None = None) -> Target:
    """gmpd at least level with the best peer that gave a result; the
    figure names it and the peers that gave none (not installed, not
    chosen, or failed), which this cannot speak for."""

    def judge(row: dict[str, Any]) -> tuple[bool | None, str]:
        ratio = row["ratio_vs_best_peer"]
        if ratio is None:
            return None, "no peer gave a result"
        peers_ = {s: v for s, v in row["results"].items() if s != "gmpd"}
        best = best_system({**row, "results": {s: v for s, v in peers_.items() if v is not None}})
        absent = sorted(s for s, v in peers_.items() if v is None)
        return ratio >= 1.0, f"{shown(ratio, True)}x {best}" + (
            f"; no result: {', '.join(absent)}" if absent else ""
        )

    return Target(text, judge, why)


def every_task_delivered(text: str) -> Target:
    """Every task completed in every repetition (the worst one, not the
    median: one run that lost a task misses it)."""

    def judge(row: dict[str, Any]) -> tuple[bool | None, str]:
        worst = row["min"]["gmpd"]
        return worst == row["n"], f"{worst:g} of {row['n']} in its worst run"

    return Target(text, judge)


# ---- why a target was missed: the row's CPU accounting, said plainly ------

ROLES = ("ms", "workers", "client", "coordinator", "sysmon", "node")  # the order they are named in


def by_role(cpu: dict[str, float], scale: float, fmt_: str) -> str:
    return ", ".join(f"{r} {cpu[r] * scale:{fmt_}}" for r in sorted(cpu, key=lambda r: (*ROLES, r).index(r)))


def cpu_per_task(peer: str) -> Callable[[dict[str, Any]], str]:
    """A throughput row: each system's CPU per task in all its processes,
    and how many CPUs that kept busy (a system that keeps the machine's
    CPUs busy is as fast as its CPU per task lets it be)."""

    def why(row: dict[str, Any]) -> str:
        cpu, parts = row.get("cpu_s") or {}, []
        for s in ("gmpd", peer):
            c, rate = cpu.get(s), row["results"].get(s)
            if not c or not rate:
                return ""
            total = sum(c.values())
            busy = total / (row["n"] / rate)
            each = by_role(c, 1e6 / row["n"], ".2g")
            parts.append(f"{s} {total / row['n'] * 1e6:.3g} us ({each}; {busy:.2g} CPUs busy)")
        return "CPU per task in all of a system's processes: " + "; ".join(parts)

    return why


def core_time(row: dict[str, Any]) -> str:
    """A CPU-bound row: the workers' core-seconds over gmpd's makespan,
    what its tasks ran, what the ideal schedule leaves idle (``ideal_s``:
    sleeps with no CPU task left; none without it), and how the core time
    beyond those splits: gmpd's processes beside the tasks, and the rest."""
    cpu = (row.get("cpu_s") or {}).get("gmpd")
    task = (row.get("task_cpu_s") or {}).get("gmpd")
    span = (row.get("makespan_s") or {}).get("gmpd")
    if not cpu or not task or not span:
        return ""
    workers = row["workers"]
    have = workers * span
    ideal = (row.get("ideal_s") or {}).get("gmpd")
    idle = workers * ideal - task if ideal else 0.0
    own = {**cpu, "ms": cpu.get("ms", 0.0) - task}  # (an M's CPU counts its tasks' too)
    spent = sum(own.values())
    beyond = have - task - idle
    return (
        f"{workers} workers x {span:.3g} s = {have:.3g} core-s: the tasks ran {task:.3g}"
        + (f", the ideal schedule leaves {idle:.2g} idle" if ideal else "")
        + f"; of the {beyond:.2g} beyond, gmpd's processes beside its tasks took {spent:.2g}"
        f" ({by_role(own, 1, '.2g')}), the rest {beyond - spent:.2g} (idle, other processes, the kernel)"
    )


def spread(figure: dict[str, float]) -> str:
    """A {median, min, max} figure as "median (min-max)"."""
    return f"{figure['median']:.3g} ({figure['min']:.3g}-{figure['max']:.3g})"


def farm_why(row: dict[str, Any]) -> str:
    """farm: the machine's floor in the same rounds, then core_time."""
    base, floor = core_time(row), row.get("floor")
    if not floor:
        return base
    said = (
        f"this machine's floor (the same tasks split over {row['workers']} plain processes, no scheduler)"
        f" was {spread(floor)}"
    )
    return f"{said}; {base}" if base else said


def blocking_why(row: dict[str, Any]) -> str:
    """blocking_mix: its floor with nothing blocking, the Ms started for
    the sleeps, and where the core time went."""
    base = core_time(row)
    floor = (row.get("cpu_only") or {}).get("gmpd")
    started = (row.get("processes_started") or {}).get("gmpd")
    if not base or floor is None or started is None:
        return base
    handoffs = (row.get("handoffs") or {}).get("gmpd")
    takeovers = (row.get("takeovers") or {}).get("gmpd")
    handed = f", {handoffs:g} Ps handed on to another M" if handoffs is not None else ""
    if takeovers is not None:
        handed += f", {takeovers:g} taken over by a thread of the same M"
    return (
        f"its CPU tasks alone reach {floor:.3g}; {started:g} Ms started for Gs asleep in syscalls{handed}; "
        + base
    )


TARGETS: dict[str, list[Target]] = {
    "noop_submit": [
        versus("ppe", 5, ">= 5x PPE", cpu_per_task("ppe")),
        versus("mp_pool", 1.5, ">= 1.5x mp.Pool.imap(chunksize=1)", cpu_per_task("mp_pool")),
        versus("dask", 10, ">= 10x Dask", cpu_per_task("dask")),
        versus("ray", 5, ">= 5x Ray", cpu_per_task("ray")),
    ],
    "latency": [versus("ppe", 1, "p50 <= PPE's p50")],
    "farm": [within(0.97, ">= 0.97", farm_why), best_of_peers("never below the best peer", farm_why)],
    "fanout": [within(1.05, "<= 1.05x its lower bound")],
    "imbalance": [best_of_peers("no worse than the best peer")],
    "blocking_mix": [within(1.10, "within 10% of its ideal", blocking_why)],
    "nested": [within(math.inf, "finishes")],
    "startup": [within(0.3, "<= 0.3 s to the first result")],
    "fault": [every_task_delivered("0 lost (none lost or errored)")],
}


def judge_targets(row: dict[str, Any]) -> list[dict[str, Any]]:
    """The row's targets: [{"target", "met", "figure"}], met null when a
    peer it compares with gave no result; a missed one says ``why`` where
    the row's figures tell."""
    out = []
    for target in TARGETS.get(row["workload"], []):
        # (a workload gmpd failed misses every target; the judges see a result)
        failed = row["results"].get("gmpd") is None
        met, figure = (False, "gmpd gave no result") if failed else target.judge(row)
        verdict: dict[str, Any] = {"target": target.text, "met": met, "figure": figure}
        if met is False and not failed and target.why is not None and (why := target.why(row)):
            verdict["why"] = why
        out.append(verdict)
    return out


def targets_report(rows: list[dict[str, Any]], quick: bool = False) -> str:
    """The verdicts, one line each ("" when no chosen workload has targets)."""
    judged = [row for row in rows if row.get("targets")]
    if not judged:
        return ""
    notes = [TARGETS_FOR]
    if quick:
        notes.append("--quick's runs are too small to judge them by")
    if any(row["workers"] != 2 for row in judged):
        notes.append(f"this run had {judged[0]['workers']} workers")
    lines = [f"Targets ({'; '.join(notes)}):"]
    for row in judged:
        for t in row["targets"]:
            verdict = {True: "met", False: "MISSED", None: "not judged"}[t["met"]]
            lines.append(f"  {verdict:<10}  {row['workload']} {t['target']} ({t['figure']})")
            if "why" in t:
                lines.append(f"  {'':<10}    {t['why']}")
    return "\n".join(lines)


def best_system(row: dict[str, Any]) -> str | None:
    values = {s: v for s, v in row["results"].items() if v is not None}
    if not values:
        return None
    ranked: list[str] = sorted(values, key=lambda s: values[s], reverse=row["higher_is_better"])
    return ranked[0]


def fmt(v: float | None) -> str:
    if v is None:
        return "null"
    if v == 0:
        return "0"
    magnitude = math.floor(math.log10(abs(v)))
    if magnitude >= 6:
        return f"{v / 1e6:.3g}M"
    if magnitude >= 3:
        return f"{v / 1e3:.3g}k"
    return f"{v:.3g}"


def table(rows: list[dict[str, Any]], systems: list[str]) -> str:
    """Workloads x systems; * marks the best cell; the last column is gmpd's
    ratio to the best peer (above 1: gmpd ahead)."""
    head = ["workload", "unit", *systems, "gmpd/best peer"]
    body = []
    for row in rows:
        best = best_system(row)
        cells = [fmt(row["results"].get(s)) + ("*" if s == best else "") for s in systems]
        ratio = row["ratio_vs_best_peer"]
        body.append([row["workload"], row["unit"], *cells, "null" if ratio is None else f"{ratio:.2f}x"])
    widths = [max(len(str(r[i])) for r in [head, *body]) for i in range(len(head))]
    lines = ["  ".join(str(c).ljust(wd) for c, wd in zip(r, widths, strict=True)) for r in [head, *body]]
    lines.insert(1, "  ".join("-" * wd for wd in widths))
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], systems: list[str], path: str, title: str) -> None:
    """A bar chart per workload (matplotlib, ``pip install 'gmpd[plot]'``)."""
    importlib.import_module("matplotlib").use("Agg")  # optional: not a typed dependency
    plt: Any = importlib.import_module("matplotlib.pyplot")

    cols = 4
    nrows = math.ceil(len(rows) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4 * cols, 3.2 * nrows), squeeze=False)
    for ax, row in zip(axes.flat, rows, strict=False):
        names = [s for s in systems if row["results"].get(s) is not None]
        values = [row["results"][s] for s in names]
        colors = ["tab:red" if s == "gmpd" else "tab:gray" for s in names]
        ax.bar(names, values, color=colors)
        better = "higher" if row["higher_is_better"] else "lower"
        ax.set_title(f"{row['workload']}\n{row['unit']} ({better} is better)", fontsize=9)
        ax.tick_params(axis="x", labelsize=7, rotation=30)
        ax.tick_params(axis="y", labelsize=7)
    for ax in list(axes.flat)[len(rows) :]:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def uncompiled(
    here: str = os.path.dirname(os.path.abspath(__file__)), environ: dict[str, str] | None = None
) -> list[str]:
    """gmpd's source files (in ``here``) that every new gmpd process
    compiles again: those whose bytecode cache is missing or stale, when
    the environment its processes inherit says to write none
    (PYTHONDONTWRITEBYTECODE).  The peers' modules, installed by pip or with
    Python, have theirs."""
    env = os.environ if environ is None else environ
    if not env.get("PYTHONDONTWRITEBYTECODE"):
        return []
    stale = []
    for name in sorted(os.listdir(here)):
        if name.endswith(".py"):
            source = os.path.join(here, name)
            # (the opt-0 cache: gmpd's processes run without -O)
            if not _fresh_bytecode(source, importlib.util.cache_from_source(source, optimization="")):
                stale.append(source)
    return stale


def _fresh_bytecode(source: str, cached: str) -> bool:
    """As the import system judges a timestamp-based .pyc: its magic, and
    the source's mtime and size in its header (a hash-based one counts)."""
    try:
        with open(cached, "rb") as f:
            head = f.read(16)
        st = os.stat(source)
    except OSError:
        return False
    if len(head) < 16 or head[:4] != importlib.util.MAGIC_NUMBER:
        return False
    if int.from_bytes(head[4:8], "little") != 0:
        return True  # hash-based: checked (or trusted) by the import system, not by mtime
    mtime, size = int.from_bytes(head[8:12], "little"), int.from_bytes(head[12:16], "little")
    return mtime == int(st.st_mtime) & 0xFFFFFFFF and size == st.st_size & 0xFFFFFFFF


def main(
    workers: int | None,
    reps: int,
    quick: bool,
    as_json: bool,
    only: list[str],
    *,
    systems: list[str] | None = None,
    plot_path: str | None = None,
) -> int:
    workers = workers or os.cpu_count() or 1
    chosen = [w for w in WORKLOADS if not only or w.name in only]
    unknown = set(only) - {w.name for w in WORKLOADS}
    if unknown:
        print(f"gmpd bench: unknown workload(s) {sorted(unknown)}; choose from {[w.name for w in WORKLOADS]}")
        return 2
    wanted = list(systems or peers.SYSTEMS)
    bad = set(wanted) - set(peers.SYSTEMS)
    if bad or "gmpd" not in wanted:
        print(f"gmpd bench: --systems takes gmpd and any of {list(peers.SYSTEMS[1:])}; got {wanted}")
        return 2
    if plot_path:
        try:
            importlib.import_module("matplotlib")
        except ImportError:
            print("gmpd bench: --plot needs matplotlib: pip install 'gmpd[plot]'", file=sys.stderr)
            return 2
    for s in wanted:
        if why := peers.installed(s):
            print(f"# {s}: not run: {why}", file=sys.stderr)
    if stale := uncompiled():
        print(
            f"# note: Python writes no bytecode here (PYTHONDONTWRITEBYTECODE) and {len(stale)} gmpd modules"
            f" have no up-to-date cache: each gmpd cluster compiles them as it starts (startup pays for"
            f" it); {sys.executable} -m compileall {os.path.dirname(stale[0])} (make build does)",
            file=sys.stderr,
        )
    header = (
        f"gmpd bench: {workers} workers, {reps} repetitions{' (quick)' if quick else ''}, "
        f"{os.cpu_count()} CPUs, loadavg {os.getloadavg()[0]:.2f}, {time.strftime('%Y-%m-%d %H:%M')}"
    )
    print(f"# {header}", file=sys.stderr)
    for s in wanted:
        print(f"# {s}: {peers.FORMS[s]}", file=sys.stderr)
    # Our lines go to the real stdout; anything a peer prints there (Ray's
    # raylet warnings do) goes to stderr, so --json output stays clean.
    sys.stdout.flush()
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    status = 0
    rows = []
    started = time.monotonic()
    for w in chosen:
        t = time.monotonic()
        row = run_workload(w, wanted, workers, reps, quick)
        rows.append(row)
        each = ", ".join(f"{s} {v:.1f}" for s, v in row["elapsed_s"].items())
        if floor := row.get("floor"):
            each += f"; this machine's floor, no scheduler: {spread(floor)}"
        print(f"# {w.name}: {time.monotonic() - t:.1f} s ({each})", file=sys.stderr, flush=True)
        if row["results"]["gmpd"] is None:
            status = 1
        if as_json:
            print(json.dumps(row), file=out, flush=True)
        else:
            print(
                f"{w.name:<22} " + "  ".join(f"{s}={fmt(row['results'][s])}" for s in wanted),
                file=out,
                flush=True,
            )
    print(f"# all: {time.monotonic() - started:.1f} s", file=sys.stderr)
    if not as_json:
        print(file=out)
        print(table(rows, wanted), file=out)
        if report := targets_report(rows, quick):
            print(file=out)
            print(report, file=out)
    out.close()
    if plot_path:
        plot(rows, wanted, plot_path, header)
    return status
