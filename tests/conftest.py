"""Shared fixtures.  Every test proves it left no process and no segment behind."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from gmpd.shm import NodeMemory, list_segments


def children_of(pid: int) -> set[int]:
    """Every live (or unreaped) descendant of ``pid``, read from /proc."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {c for c, p in parents.items() if p in frontier} - found
        found |= frontier
    return found


def resource_tracker(pid: int) -> bool:
    """multiprocessing's (and loky's) resource tracker: one daemon per process,
    started by a spawn-context pool (Dask's, loky's in tests/test_peers.py when
    those peers are installed) and reused until its parent exits.  gmpd starts none."""
    try:
        return b"resource_tracker import main" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


@pytest.fixture(autouse=True, scope="session")
def own_run_dirs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The clusters the tests start put their run directories here, so
    that another gmpd user on the machine is never taken for a leak."""
    old = os.environ.get("XDG_RUNTIME_DIR")
    os.environ["XDG_RUNTIME_DIR"] = str(tmp_path_factory.mktemp("run"))
    yield
    if old is None:
        del os.environ["XDG_RUNTIME_DIR"]
    else:
        os.environ["XDG_RUNTIME_DIR"] = old


def run_dirs() -> set[str]:
    """The clusters' run directories (their ipc sockets): gmpd-* in XDG_RUNTIME_DIR."""
    return {p.name for p in Path(os.environ["XDG_RUNTIME_DIR"]).glob("gmpd-*") if p.is_dir()}


def someone_elses(pid: int) -> bool:
    """A live process that is not this one (none of its children is left by then)."""
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # (another user's)
    return True


@pytest.fixture(autouse=True)
def no_leftovers() -> Iterator[None]:
    before, dirs = set(list_segments()), run_dirs()
    yield
    deadline = time.monotonic() + 5
    while (
        kids := {k for k in children_of(os.getpid()) if not resource_tracker(k)}
    ) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not kids, f"test left processes behind: {sorted(kids)}"
    # A segment's name carries its creator's pid: one whose creator lives
    # now, other than us, is another gmpd user's (none of our children is left).
    leaked = {n for n in set(list_segments()) - before if not someone_elses(int(n.split("-")[2]))}
    assert not leaked, f"test left shared-memory segments behind: {sorted(leaked)}"
    while (left := run_dirs() - dirs) and time.monotonic() < deadline:
        time.sleep(0.02)  # (an executor shut down without waiting removes it as its thread ends)
    assert not left, f"test left run directories behind: {sorted(left)}"


@pytest.fixture
def nm() -> Iterator[NodeMemory]:
    with NodeMemory.create(4, 4) as node:
        yield node


def run_child(code: str, timeout: float = 30, args: Sequence[str] = ()) -> subprocess.CompletedProcess[str]:
    """Run Python ``code`` in a fresh interpreter (so it can be killed alone)."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
