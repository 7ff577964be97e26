"""gmpd's one error tree, rooted at GmpdError.

User errors say what to do next.  `InternalError` means a broken invariant:
a bug in gmpd, never the user's fault.
"""

from __future__ import annotations


class GmpdError(Exception):
    """Base class of every error gmpd raises on purpose."""


class NativeExtensionMissing(GmpdError, ImportError):
    """The C extension (native/) was not built or does not match this Python."""


class SegmentError(GmpdError, OSError):
    """A node shared-memory segment could not be created, attached or read."""


class Deadlock(GmpdError):
    """No G can run again: every M is blocked waiting on child tasks that no
    M is left to run (Go's "all goroutines are asleep - deadlock!")."""


class InternalError(GmpdError, AssertionError):
    """An internal invariant failed: this is a bug in gmpd; please report it."""

    def __init__(self, what: str) -> None:
        super().__init__(f"{what} (this is a bug in gmpd; please report it with the traceback)")
