"""The ``gmpd`` command.

    gmpd bench [--workers N] [--reps N] [--quick] [--json] [WORKLOAD ...]

Runs in: the user's shell (it is a client of an embedded cluster).
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="gmpd", description="Go's G-M-P scheduler for Python task farms.")
    sub = ap.add_subparsers(dest="command", required=True)
    b = sub.add_parser("bench", help="gmpd side by side with ProcessPoolExecutor and multiprocessing.Pool")
    b.add_argument("workloads", nargs="*", help="workloads to run (default: all)")
    b.add_argument("--workers", type=int, default=None, help="workers for every system (default: CPU count)")
    b.add_argument("--reps", type=int, default=3, help="repetitions after a warm-up round (default 3)")
    b.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    b.add_argument("--json", action="store_true", help="one JSON line per workload")
    args = ap.parse_args(argv)
    if args.command == "bench":
        from gmpd import bench  # noqa: PLC0415 - only this subcommand needs the peers

        if args.reps < 1 or (args.workers is not None and args.workers < 1):
            ap.error("--reps and --workers must be at least 1")
        return bench.main(args.workers, args.reps, args.quick, args.json, args.workloads)
    return 2  # pragma: no cover - argparse rejects unknown commands


if __name__ == "__main__":
    sys.exit(main())
