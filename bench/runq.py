"""Benchmark of the native per-P run queue.

    python bench/runq.py [--json] [--reps N] [--pairs N] [--items N]

Measures, each over several repetitions (median, min, max reported):
  push_pop_pairs_per_s  owner put+get pairs called from Python, one process
  steal_items_per_s     Gs moved by two thief processes stealing from one owner
                        (C-level loops, native/stress.c), per second of thief time
  wake_us               cross-process futex wake: half a park/wake round trip
and checks the stress: every G seen exactly once (lost = duplicated = 0).
With --json the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable

from gmpd._runq_stress import run_stress
from gmpd.shm import NodeMemory


def push_pop_pairs_per_s(pairs: int) -> float:
    with NodeMemory.create(1, 1) as nm:
        q = nm.runq(0, 0)
        put, get = q.put, q.get
        t = time.perf_counter()
        for g in range(1, pairs + 1):
            put(g)
            get()
        elapsed = time.perf_counter() - t
        q.release()
    return pairs / elapsed


def wake_us(rounds: int) -> float:
    """Median of half the park/wake round trip between two processes."""
    with NodeMemory.create(1, 2) as nm:
        code = f"""
            from gmpd.shm import NodeMemory
            nm = NodeMemory.attach({nm.name!r})
            node = nm.node
            for _ in range({rounds}):
                seen = node.m_info(1)[5]
                node.wake(0)
                node.park(1, seen, 5.0)
            nm.close()
        """
        node = nm.node
        seen0 = node.m_info(0)[5]
        child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)])
        samples = []
        try:
            node.park(0, seen0, 30.0)  # child is up and parked-or-parking
            for _ in range(rounds - 1):
                seen0 = node.m_info(0)[5]
                t = time.perf_counter()
                node.wake(1)
                node.park(0, seen0, 5.0)
                samples.append((time.perf_counter() - t) / 2 * 1e6)
            node.wake(1)
        finally:
            child.wait(30)
    return statistics.median(samples)


def steal_run(items: int, seed: int) -> tuple[float, int, int, int]:
    r = run_stress(items, thieves=2, seed=seed)
    return r.stolen / r.steal_seconds, r.seen, r.lost, r.duplicated


def summarize(samples: list[float]) -> dict[str, float]:
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples)}


def measure(reps: int, fn: Callable[[], float]) -> dict[str, float]:
    fn()  # warm-up
    return summarize([fn() for _ in range(reps)])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    ap.add_argument("--reps", type=int, default=5, help="repetitions after a warm-up (default 5)")
    ap.add_argument("--pairs", type=int, default=2_000_000, help="put+get pairs per repetition")
    ap.add_argument("--items", type=int, default=2_000_000, help="Gs per stress repetition")
    args = ap.parse_args()

    pp = measure(args.reps, lambda: push_pop_pairs_per_s(args.pairs))
    runs = [steal_run(args.items, seed) for seed in range(1, args.reps + 1)]
    steal = summarize([r[0] for r in runs])
    wake = measure(args.reps, lambda: wake_us(2000))
    out = {
        "push_pop_pairs_per_s": round(pp["median"]),
        "push_pop_pairs_per_s_min": round(pp["min"]),
        "push_pop_pairs_per_s_max": round(pp["max"]),
        "steal_items_per_s": round(steal["median"]),
        "steal_items_per_s_min": round(steal["min"]),
        "steal_items_per_s_max": round(steal["max"]),
        "wake_us": round(wake["median"], 1),
        "wake_us_min": round(wake["min"], 1),
        "wake_us_max": round(wake["max"], 1),
        "stress_items": sum(r[1] for r in runs),
        "lost": sum(r[2] for r in runs),
        "duplicated": sum(r[3] for r in runs),
        "repetitions": args.reps,
        "cpus": os.cpu_count(),
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }
    width = max(map(len, out))
    for key, value in out.items():
        print(f"{key:<{width}}  {value:,}" if isinstance(value, int) else f"{key:<{width}}  {value}")
    ok = out["lost"] == 0 and out["duplicated"] == 0
    if not ok:
        print("FAILED: the stress lost or duplicated Gs", file=sys.stderr)
    if args.json:
        print(json.dumps(out))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
