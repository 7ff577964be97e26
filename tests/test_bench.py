"""`gmpd bench --quick --json`: well-formed lines, every system verified."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


@pytest.mark.timeout(300)
def test_bench_quick_json_lines_are_well_formed() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "gmpd.cli", "bench", "--quick", "--json", "--reps", "1"],
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["workload"] for r in rows] == ["noop_submit", "noop_map", "latency", "farm", "fanout"]
    for row in rows:
        assert set(row) >= {"workload", "unit", "higher_is_better", "results", "min", "max"}
        for key in ("results", "min", "max"):
            assert set(row[key]) == {"gmpd", "ppe", "mp_pool"}
            # every system ran and every one of its results was checked (a wrong one gives null)
            assert all(isinstance(v, float) and v > 0 for v in row[key].values()), (row["workload"], row)
        assert "failed" not in row
    assert "p99" in rows[2]
