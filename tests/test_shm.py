"""Segment files: created 0600 under /dev/shm, attached by name, unlinked by the owner."""

from __future__ import annotations

import os
import stat

import pytest

from gmpd.errors import SegmentError
from gmpd.shm import SHM_DIR, NodeMemory, Segment, list_segments, sweep_stale
from tests.conftest import run_child


def test_shm_create_is_private_and_close_unlinks() -> None:
    nm = NodeMemory.create(2, 2)
    path = nm.segment.path
    assert path.parent == SHM_DIR
    assert nm.name.startswith(f"gmpd-{os.getuid()}-{os.getpid()}-node-")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert nm.name in list_segments()
    nm.close()
    assert not path.exists()
    nm.close()  # idempotent


def test_shm_attach_sees_the_same_queues_and_never_unlinks(nm: NodeMemory) -> None:
    nm.runq(0, 0).put(5)
    code = f"""
        from gmpd.shm import NodeMemory
        other = NodeMemory.attach({nm.name!r})
        assert other.node.nprocs == 4 and other.node.nms == 4
        assert other.runq(0, 1).get() == 5
        other.runq(0, 1).put(6)
        other.close()
    """
    assert run_child(code).returncode == 0
    assert nm.segment.path.exists()
    assert nm.runq(0, 0).get() == 6


def test_shm_attach_missing_segment_says_what_happened() -> None:
    with pytest.raises(SegmentError, match="does not exist"):
        NodeMemory.attach(f"gmpd-{os.getuid()}-1-node-deadbeef")


def test_shm_attach_refuses_foreign_names_and_foreign_contents() -> None:
    with pytest.raises(SegmentError, match="not a gmpd segment"):
        Segment.attach("../etc/passwd")
    seg = Segment.create(65536, "junk")
    try:
        with pytest.raises(SegmentError, match="not a gmpd node"):
            NodeMemory.attach(seg.name)
    finally:
        seg.close()


def test_shm_create_rejects_impossible_sizes() -> None:
    with pytest.raises(ValueError, match="nprocs=0"):
        NodeMemory.create(0, 1)
    with pytest.raises(ValueError, match="positive"):
        Segment.create(0, "x")


def test_shm_sweep_removes_segments_of_dead_creators() -> None:
    proc = run_child("import os; print(os.getpid())")
    dead = int(proc.stdout)
    path = SHM_DIR / f"gmpd-{os.getuid()}-{dead}-node-0badc0de"
    path.write_bytes(b"")
    assert path.name in sweep_stale()
    assert not path.exists()
    with NodeMemory.create(1, 1) as live:
        assert live.name not in sweep_stale()
