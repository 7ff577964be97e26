"""gmpd: Go's G-M-P scheduler rebuilt for Python as a multi-process task scheduler.

The public surface is re-exported here; the modules are private kernels.
So far: the node shared memory with Go's per-P run queues (``gmpd.runq``,
``gmpd.shm``).  The runtime (``Executor``, ``go``) arrives with issue 3.
"""

from gmpd.errors import GmpdError, InternalError, NativeExtensionMissing, SegmentError

__version__ = "0.1.0"
__all__ = ["GmpdError", "InternalError", "NativeExtensionMissing", "SegmentError", "__version__"]
