"""`gmpd bench`: the quick run (well-formed lines, every system verified),
the runner's handling of peers that hang, crash or are missing, the peer
adapters (with fakes where the peer is not installed), and bench/memory.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gmpd import bench

ALWAYS = ["gmpd", "ppe", "mp_pool"]


@pytest.mark.timeout(300)
def test_bench_quick_json_lines_are_well_formed_and_every_result_verified() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "gmpd.cli", "bench", "--quick", "--json", "--systems", ",".join(ALWAYS)],
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    rows = {r["workload"]: r for r in map(json.loads, proc.stdout.splitlines())}
    assert list(rows) == [w.name for w in bench.WORKLOADS]
    for name, row in rows.items():
        assert set(row) >= {
            "workload",
            "unit",
            "higher_is_better",
            "results",
            "min",
            "max",
            "ratio_vs_best_peer",
        }
        assert set(row["results"]) == set(ALWAYS) == set(row["forms"])
        ran = [s for s in ALWAYS if row["results"][s] is not None]
        # A system ran, and every one of its results was checked, or it has a reason.
        for s in ALWAYS:
            if s in ran:
                assert row["verified"][s] is True, (name, s, row)
                assert (
                    isinstance(row["min"][s], (int, float))
                    and row["min"][s] <= row["results"][s] <= row["max"][s]
                )
            else:
                assert row["failed"][s], (name, s, row)
        assert "gmpd" in ran, (name, row)
        if len(ran) > 1:
            assert isinstance(row["ratio_vs_best_peer"], float) and row["ratio_vs_best_peer"] > 0
    assert rows["nested"]["results"]["ppe"] is None and "cannot submit" in rows["nested"]["failed"]["ppe"]
    assert not any("failed" in rows[w] for w in ("noop_submit", "farm", "memory"))
    fault = rows["fault"]
    # gmpd loses nothing when a worker is SIGKILLed; PPE's pool breaks (its tasks error).
    assert fault["results"]["gmpd"] == fault["n"] and fault["lost"]["gmpd"] == fault["errored"]["gmpd"] == 0
    assert fault["errored"]["ppe"] > 0, fault
    assert (
        "p99" in rows["latency"]
        and "shutdown_s" in rows["startup"]
        and {"idle_mib", "pss_mib"} <= set(rows["memory"])
    )
    assert rows["imbalance"]["lower_bound_s"]["gmpd"] > 0 and rows["blocking_mix"]["ideal_s"]["gmpd"] > 0
    # The floor with nothing blocking: measured per system, a ratio to its own ideal.
    assert all(rows["blocking_mix"]["cpu_only"][s] >= 0.9 for s in ("gmpd", "ppe", "mp_pool"))
    assert "cpu_only" not in rows["blocking_mix_unmarked"]


def test_ratio_vs_best_peer_points_the_same_way_for_both_kinds_of_unit() -> None:
    up = {"higher_is_better": True, "results": {"gmpd": 30.0, "ppe": 10.0, "dask": 20.0}}
    down = {"higher_is_better": False, "results": {"gmpd": 2.0, "ppe": 4.0, "dask": None}}
    assert bench.ratio_vs_best_peer(up) == 1.5 and bench.best_system(up) == "gmpd"
    assert bench.ratio_vs_best_peer(down) == 2.0
    assert bench.ratio_vs_best_peer({"higher_is_better": True, "results": {"gmpd": 1.0, "ppe": None}}) is None
    assert bench.ratio_vs_best_peer({"higher_is_better": True, "results": {"gmpd": None, "ppe": 1.0}}) is None


def test_ideal_makespan_lets_sleeps_hold_no_worker() -> None:
    assert bench.ideal_makespan([1.0, 1.0, None, 1.0], 2, 0.1) == 2.0
    assert bench.ideal_makespan([None], 2, 0.1) == 0.1
    assert bench.ideal_makespan([0.5, 0.5, 0.5, None], 2, 3.0) == 3.5  # a late sleep ends it


def test_table_marks_the_best_cell_and_gives_the_ratio() -> None:
    row = {
        "workload": "farm",
        "unit": "efficiency",
        "higher_is_better": True,
        "results": {"gmpd": 0.97, "ppe": 0.95},
        "ratio_vs_best_peer": 0.97 / 0.95,
    }
    text = bench.table([row], ["gmpd", "ppe"])
    assert "0.97*" in text and "0.95 " in text and "1.02x" in text


@pytest.mark.timeout(300)
def test_memory_of_an_idle_cluster_stays_flat_after_a_million_tasks() -> None:
    """bench/memory.py: USS of the coordinator and every M after 200k tasks
    and again after 1M more; it exits 1 if any grew by 4 MiB or more (a leak
    of 4 bytes a task would show) and, if so, again over 1M more (the
    coordinator's heap after a burst varies by a few MiB; a leak grows
    again, fragmentation does not)."""
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run(
        [sys.executable, str(root / "bench" / "memory.py"), "--json"],
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    report = json.loads(proc.stdout.splitlines()[-1]) if proc.stdout else {}
    assert proc.returncode == 0, (report, proc.stderr)
    assert report["tasks"] == (1_200_000 if report["remeasured"] is None else 2_200_000)
    assert set(report["after_mib"]) >= {"coordinator", "m0", "m1"}
    assert "coordinator" in report["judged"] and len(report["judged"]) >= 2, "at least one warm M judged"
    assert report["gtab_resident_bytes"] < 1 << 20, "the G table gave its pages back"
