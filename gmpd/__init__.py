"""gmpd: Go's G-M-P scheduler rebuilt for Python as a multi-process task scheduler.

The public surface is re-exported here; the modules are private kernels:
``gmpd.Executor`` (a concurrent.futures.Executor on an embedded local
cluster), ``gmpd.go`` (start a G from a client or from inside a task) and
``gmpd.syscall`` (mark a blocking section of a task so its P can move on).
"""

from gmpd.api import checkpoint, go, syscall
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
from gmpd.executor import Executor

__version__ = "0.1.0"
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
