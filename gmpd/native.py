"""The one place that imports the C extension built from ``native/``.

Everything else imports ``Node``/``RunQ`` from here, so an unbuilt or
mismatched extension fails in one spot with an error that says how to fix it.
"""

from __future__ import annotations

from gmpd.errors import NativeExtensionMissing

try:
    from gmpd import _native
except ImportError as exc:  # pragma: no cover - exercised only on broken installs
    raise NativeExtensionMissing(
        "gmpd's C extension (gmpd._native, built from native/) is not importable: "
        f"{exc}.  Build it with `make` (or `pip install -e .` in this checkout) using the same "
        "Python that imports gmpd; it needs gcc and the Python headers."
    ) from exc

Node = _native.Node
RunQ = _native.RunQ
node_size = _native.node_size
gtab_size = _native.gtab_size
ARENA_BYTES: int = _native.ARENA_BYTES
RUNQ_SIZE: int = _native.RUNQ_SIZE
MAX_PROCS: int = _native.MAX_PROCS
MAX_MS: int = _native.MAX_MS
CRASH_POINTS: int = _native.CRASH_POINTS
OFFER_SLOTS: int = _native.OFFER_SLOTS
OFFER_BYTES: int = _native.OFFER_BYTES
REPLY_BYTES: int = _native.REPLY_BYTES

__all__ = [
    "ARENA_BYTES",
    "CRASH_POINTS",
    "MAX_MS",
    "MAX_PROCS",
    "OFFER_BYTES",
    "OFFER_SLOTS",
    "REPLY_BYTES",
    "RUNQ_SIZE",
    "Node",
    "RunQ",
    "_native",
    "gtab_size",
    "node_size",
]
