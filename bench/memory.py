"""Memory of an idle cluster after many tasks (USS per process, psutil).

    python bench/memory.py [--tasks N] [--json]

Runs 200,000 no-op tasks, measures each cluster process's USS once the
cluster idles, runs N more (default 1,000,000), measures again.  The last
line with --json is one object: MiB per process before and after, and
``grown_max_mib``.  Exit status 1 if any process grew by 4 MiB or more.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import psutil

import gmpd
from gmpd.bench import ident

BATCH = 50_000


def run(ex: gmpd.Executor, n: int) -> None:
    for _ in range(n // BATCH):
        futures = [ex.submit(ident, i) for i in range(BATCH)]
        assert sum(f.result() for f in futures) == BATCH * (BATCH - 1) // 2


def idle_uss(agent: psutil.Process) -> dict[str, float]:
    """USS in MiB of the coordinator and of each M, once the cluster idles."""
    time.sleep(1.5)  # the coordinator trims one second after a burst
    out: dict[str, float] = {}
    for child in agent.children():
        if child.children():  # the template: its children are the Ms
            for i, m in enumerate(child.children()):
                out[f"m{i}"] = round(m.memory_full_info().uss / 2**20, 2)
        else:
            out["coordinator"] = round(child.memory_full_info().uss / 2**20, 2)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=1_000_000)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    with gmpd.Executor(2) as ex:
        agent = psutil.Process(ex._cluster.proc.pid)
        run(ex, 200_000)
        before = idle_uss(agent)
        run(ex, args.tasks)
        after = idle_uss(agent)
        gtab = ex.statistics().gtab_resident_bytes
    grown = max(after[k] - before.get(k, after[k]) for k in after)
    out = {
        "before_mib": before,
        "after_mib": after,
        "tasks": 200_000 + args.tasks,
        "grown_max_mib": round(grown, 2),
    }
    out["gtab_resident_bytes"] = gtab
    print(json.dumps(out) if args.json else out)
    return 0 if grown < 4.0 else 1


if __name__ == "__main__":
    sys.exit(main())
