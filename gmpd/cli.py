"""The ``gmpd`` command.

    gmpd bench [--workers N] [--reps N] [--quick] [--json] [--systems A,B] [--plot F.png] [WORKLOAD ...]
    gmpd chaos [--seconds S] [--workers N] [--min S] [--max S] [--seed N]

Runs in: the user's shell (it is a client of an embedded cluster).
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="gmpd", description="Go's G-M-P scheduler for Python task farms.")
    sub = ap.add_subparsers(dest="command", required=True)
    b = sub.add_parser("bench", help="gmpd side by side with PPE, multiprocessing.Pool, loky, Dask, Ray")
    b.add_argument("workloads", nargs="*", help="workloads to run (default: all)")
    b.add_argument("--workers", type=int, default=None, help="workers for every system (default: CPU count)")
    b.add_argument(
        "--reps",
        type=int,
        default=None,
        help="repetitions after a warm-up round (default 3; --quick: 1, no warm-up)",
    )
    b.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    b.add_argument("--json", action="store_true", help="one JSON line per workload")
    b.add_argument(
        "--systems",
        default=None,
        help="comma-separated systems to run (default: all; loky, dask and ray when installed)",
    )
    b.add_argument(
        "--plot", metavar="FILE.png", default=None, help="a bar chart per workload (needs matplotlib)"
    )
    c = sub.add_parser("chaos", help="a task stream under injected faults; JSON summary, exit 1 on loss")
    c.add_argument("--seconds", type=float, default=60.0, help="how long faults are injected (default 60)")
    c.add_argument("--workers", type=int, default=None, help="Ps (default: CPU count)")
    c.add_argument("--min", type=float, default=0.2, help="shortest pause between faults, s (default 0.2)")
    c.add_argument("--max", type=float, default=0.5, help="longest pause between faults, s (default 0.5)")
    c.add_argument("--seed", type=int, default=None, help="random seed (default: random, printed)")
    c.add_argument("--task-ms", type=float, default=2.0, help="CPU per task, ms (default 2)")
    args = ap.parse_args(argv)
    if args.command == "chaos":
        from gmpd import chaos  # noqa: PLC0415

        if (
            args.seconds <= 0
            or not 0 < args.min <= args.max
            or (args.workers is not None and args.workers < 1)
        ):
            ap.error("--seconds must be > 0, 0 < --min <= --max, --workers >= 1")
        return chaos.main(
            args.seconds, args.workers, low=args.min, high=args.max, seed=args.seed, task_ms=args.task_ms
        )
    if args.command == "bench":
        from gmpd import bench  # noqa: PLC0415 - only this subcommand needs the peers

        if args.reps is None:
            args.reps = 1 if args.quick else 3
        if args.reps < 1 or (args.workers is not None and args.workers < 1):
            ap.error("--reps and --workers must be at least 1")
        systems = [x.strip() for x in args.systems.split(",") if x.strip()] if args.systems else None
        return bench.main(
            args.workers,
            args.reps,
            args.quick,
            args.json,
            args.workloads,
            systems=systems,
            plot_path=args.plot,
        )
    return 2  # pragma: no cover - argparse rejects unknown commands


if __name__ == "__main__":
    sys.exit(main())
