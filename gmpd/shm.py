"""Node shared memory: segment files under /dev/shm, mapped MAP_SHARED.

A segment is a plain file ``/dev/shm/gmpd-<uid>-<pid>-<kind>-<random>``
created with O_EXCL and mode 0600 by the process that owns the node, mapped
with :mod:`mmap`, and unlinked by that owner when the node shuts down.  Other
processes attach by name.  The pid in the name lets :func:`sweep_stale`
remove segments whose creator died without cleaning up.

Not ``multiprocessing.shared_memory.SharedMemory``: on Python 3.11 its
resource tracker unlinks a segment when a process that attached it exits,
even one multiprocessing did not start, which would pull the node out from
under every other M.

Runs in: any gmpd process (the creator owns the file; attachers never unlink).
"""

from __future__ import annotations

import contextlib
import mmap
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from gmpd.errors import SegmentError
from gmpd.native import Node, RunQ, gtab_size, node_size

SHM_DIR = Path("/dev/shm")
PREFIX = "gmpd-"


def _name(kind: str, token: str | None = None) -> str:
    return f"{PREFIX}{os.getuid()}-{os.getpid()}-{kind}-{token or secrets.token_hex(4)}"


@dataclass
class Segment:
    """One mapped segment file.  ``owner`` segments are unlinked on close."""

    name: str
    size: int
    owner: bool
    buf: mmap.mmap = field(repr=False)

    @property
    def path(self) -> Path:
        return SHM_DIR / self.name

    @classmethod
    def create(cls, size: int, kind: str, token: str | None = None) -> Segment:
        """A new segment of ``size`` bytes (sparse: pages cost memory once touched)."""
        if size <= 0:
            raise ValueError(f"segment size must be positive, not {size}")
        name = _name(kind, token)
        path = SHM_DIR / name
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as exc:
            raise SegmentError(
                exc.errno,
                f"cannot create shared-memory segment {path}: {exc.strerror} (is /dev/shm mounted?)",
            ) from exc
        try:
            os.ftruncate(fd, size)
            buf = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError as exc:
            os.unlink(path)
            raise SegmentError(
                exc.errno, f"cannot size or map {path} ({size} bytes): {exc.strerror}"
            ) from exc
        finally:
            os.close(fd)
        return cls(name, size, True, buf)

    @classmethod
    def attach(cls, name: str) -> Segment:
        if "/" in name or not name.startswith(PREFIX):
            raise SegmentError(f"not a gmpd segment name: {name!r}")
        path = SHM_DIR / name
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError as exc:
            raise SegmentError(
                exc.errno, f"segment {path} does not exist: its node has shut down or was never started"
            ) from exc
        try:
            size = os.fstat(fd).st_size
            buf = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)
        return cls(name, size, False, buf)

    def close(self) -> None:
        """Unmap; the owner also unlinks the file.  Idempotent."""
        if not self.buf.closed:
            self.buf.close()
        if self.owner:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)


class NodeMemory:
    """A node's two segments with their :class:`gmpd.native.Node` view.

    ``gmpd-…-node-<token>`` holds Ps, Ms and run queues; ``gmpd-…-gtab-<token>``
    (sparse, 256 MiB of address space per P) holds G records and payloads.
    ``NodeMemory.create(nprocs, nms)`` formats a new node (the caller owns
    both files); ``NodeMemory.attach(name)`` maps an existing one.  Use as a
    context manager, or call :meth:`close`.
    """

    def __init__(self, segment: Segment, gtab: Segment, node: Node) -> None:
        self.segment = segment
        self.gtab = gtab
        self.node = node

    @classmethod
    def create(cls, nprocs: int, nms: int, *, counter_base: int = 0) -> NodeMemory:
        token = secrets.token_hex(4)
        seg = Segment.create(node_size(nprocs, nms), "node", token)
        gtab: Segment | None = None
        try:
            node = Node(seg.buf, create=True, nprocs=nprocs, nms=nms, counter_base=counter_base)
            gtab = Segment.create(gtab_size(nprocs), "gtab", token)
            node.attach_gtab(gtab.buf)
        except BaseException:
            if gtab is not None:
                gtab.close()
            seg.close()
            raise
        return cls(seg, gtab, node)

    @classmethod
    def attach(cls, name: str) -> NodeMemory:
        seg = Segment.attach(name)
        gtab: Segment | None = None
        try:
            node = Node(seg.buf)
            gtab = Segment.attach(name.replace("-node-", "-gtab-", 1))
            node.attach_gtab(gtab.buf)
        except (ValueError, SegmentError) as exc:
            if gtab is not None:
                gtab.close()
            seg.close()
            raise SegmentError(f"{seg.path}: {exc}") from exc
        return cls(seg, gtab, node)

    @property
    def name(self) -> str:
        return self.segment.name

    def runq(self, p: int, m: int) -> RunQ:
        return self.node.runq(p, m)

    def close(self) -> None:
        self.node.close()
        self.gtab.close()
        self.segment.close()

    def __enter__(self) -> NodeMemory:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def list_segments() -> list[str]:
    """Names of this user's gmpd segments in /dev/shm."""
    mine = f"{PREFIX}{os.getuid()}-"
    try:
        return sorted(n for n in os.listdir(SHM_DIR) if n.startswith(mine))
    except FileNotFoundError:
        return []


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale() -> list[str]:
    """Unlink this user's segments whose creating process is gone."""
    removed = []
    for name in list_segments():
        parts = name.split("-")
        if len(parts) >= 3 and parts[2].isdigit() and not _pid_alive(int(parts[2])):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(SHM_DIR / name)
            removed.append(name)
    return removed
