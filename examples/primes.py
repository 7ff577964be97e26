"""Count primes over ranges of heavy-tailed cost, on gmpd and on ProcessPoolExecutor.

    python examples/primes.py [--workers N] [--tasks N] [--seed S]

Each task counts the primes in one range by trial division (pure-Python CPU
work).  Range lengths are lognormal, so a few tasks cost far more than the
rest.  On gmpd a range longer than SPLIT is split inside the task: it
spawns its halves with gmpd.go and sums their counts (nested fan-out); a
waiting task runs its own unstarted halves inline and idle Ps steal the rest.
ProcessPoolExecutor gets the same leaf ranges submitted from the client.
Both answers must agree.  The task functions live in primeswork.py, so
both systems send them by name.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor

from primeswork import count_primes, count_split, leaves, make_ranges

import gmpd


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--tasks", type=int, default=300)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    ranges = make_ranges(args.tasks, args.seed)
    span = sum(hi - lo for lo, hi in ranges)
    print(f"counting primes in {span:,} numbers: {len(ranges)} heavy-tailed ranges, {args.workers} workers")

    t = time.perf_counter()
    with gmpd.Executor(args.workers) as ex:
        started = time.perf_counter()
        futures = [ex.submit(count_split, lo, hi) for lo, hi in ranges]
        gmpd_total = sum(f.result() for f in futures)
        stats = ex.statistics()
    gmpd_run, gmpd_all = time.perf_counter() - started, time.perf_counter() - t

    flat = [leaf for lo, hi in ranges for leaf in leaves(lo, hi)]
    t = time.perf_counter()
    with ProcessPoolExecutor(args.workers) as pool:
        started = time.perf_counter()
        futures = [pool.submit(count_primes, lo, hi) for lo, hi in flat]
        ppe_total = sum(f.result() for f in futures)
    ppe_run, ppe_all = time.perf_counter() - started, time.perf_counter() - t

    rows = (("gmpd", gmpd_total, gmpd_run, gmpd_all), ("PPE", ppe_total, ppe_run, ppe_all))
    for name, total, run, whole in rows:
        print(f"{name:<5} primes={total:,}  farm {run:6.2f} s  (with start and stop {whole:6.2f} s)")
    print(
        f"gmpd scheduler: {stats.steals} steals moved {stats.stolen} Gs; {stats.inline_runs} Gs run inline "
        f"by waiting parents; {stats.global_takes} global batches; "
        f"at most {stats.running_max} Ms running task code at once"
    )
    if gmpd_total != ppe_total:
        print("MISMATCH: the two answers differ", file=sys.stderr)
        return 1
    print(f"answers agree; gmpd/PPE farm time ratio {gmpd_run / ppe_run:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
