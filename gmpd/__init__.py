"""gmpd: Go's G-M-P scheduler rebuilt for Python as a multi-process task scheduler.

The public surface is re-exported here; the modules are private kernels:
``gmpd.Executor`` (a concurrent.futures.Executor on an embedded local
cluster), ``gmpd.go`` (start a G from a client or from inside a task) and
``gmpd.syscall`` (mark a blocking section of a task so its P can move on).
"""

from typing import TYPE_CHECKING, Any

from gmpd.errors import (
    ClusterLost,
    CoordinatorLost,
    Deadlock,
    GmpdError,
    InternalError,
    NativeExtensionMissing,
    SegmentError,
    TaskTimeout,
    WorkerLost,
)

if TYPE_CHECKING:
    from gmpd.api import checkpoint, go, syscall
    from gmpd.executor import Executor

__version__ = "0.1.0"
_LAZY = {"Executor": "gmpd.executor", "go": "gmpd.api", "syscall": "gmpd.api", "checkpoint": "gmpd.api"}


def __getattr__(name: str) -> Any:
    """The executor and the task API are imported on first use, so the
    coordinator's and node agent's interpreters (``python -m gmpd.<module>``)
    start without what only a client needs (startup is on every Executor's
    critical path)."""
    if name in _LAZY:
        import importlib  # noqa: PLC0415

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'gmpd' has no attribute {name!r}")


__all__ = [
    "ClusterLost",
    "CoordinatorLost",
    "Deadlock",
    "Executor",
    "GmpdError",
    "InternalError",
    "NativeExtensionMissing",
    "SegmentError",
    "TaskTimeout",
    "WorkerLost",
    "__version__",
    "checkpoint",
    "go",
    "syscall",
]
