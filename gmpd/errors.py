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


class WorkerLost(GmpdError):
    """A task's every attempt died with the worker process (M) running it.

    ``m`` and ``pid`` name the last M; ``exitcode`` is its exit status or
    ``None``, ``signal`` the signal name that killed it or ``None``;
    ``attempts`` counts the runs lost; ``hint`` guesses why."""

    def __init__(
        self,
        message: str = "",
        *,
        m: int = -1,
        pid: int = 0,
        exitcode: int | None = None,
        signal: str | None = None,
        attempts: int = 0,
        hint: str = "",
    ) -> None:
        super().__init__(message)
        self.m, self.pid, self.exitcode, self.signal = m, pid, exitcode, signal
        self.attempts, self.hint = attempts, hint

    def __reduce__(self) -> tuple[object, ...]:
        kwargs = {
            "m": self.m,
            "pid": self.pid,
            "exitcode": self.exitcode,
            "signal": self.signal,
            "attempts": self.attempts,
            "hint": self.hint,
        }
        return (_rebuild_worker_lost, (str(self), kwargs))


def _rebuild_worker_lost(message: str, kwargs: dict[str, object]) -> WorkerLost:
    return WorkerLost(message, **kwargs)  # type: ignore[arg-type]


class TaskTimeout(GmpdError, TimeoutError):
    """A task ran past its timeout; the M running it was killed and replaced."""


class ClusterLost(GmpdError):
    """The embedded cluster exited while tasks were outstanding."""


class CoordinatorLost(ClusterLost):
    """The cluster's coordinator process died: outstanding tasks cannot finish."""
