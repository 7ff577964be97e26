"""A ``concurrent.futures.Future`` whose Condition is made on first use.

A ``threading.Condition`` is ~10 GC-tracked objects and a third of a
client submit's cost (and of a ``gmpd.go`` inside a task); most gmpd
futures finish before anybody waits on them, so most never need one.
``LazyFuture`` is a real Future: ``wait``/``as_completed``/callbacks reach
its ``_condition``, which is then made, and work unchanged.

Runs in: a client (TaskFuture) and an M (ChildFuture).
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import Future, InvalidStateError
from concurrent.futures._base import CANCELLED, CANCELLED_AND_NOTIFIED, FINISHED, PENDING, RUNNING
from typing import Any

ENDED = (CANCELLED, CANCELLED_AND_NOTIFIED, FINISHED)
# Makes the conditions; held only for a few bytecodes that allocate nothing
# (an allocation may run the GC, whose finalizers may touch another future:
# a re-entry would deadlock).  A child forked while some thread held it gets
# a fresh one.
_LAZY = threading.Lock()


def _fresh_lazy_lock() -> None:
    global _LAZY  # noqa: PLW0603 (the one module lock, replaced in a forked child)
    _LAZY = threading.Lock()


os.register_at_fork(after_in_child=_fresh_lazy_lock)


def lazy_lock() -> threading.Lock:
    """The module lock (the current one: a forked child has its own)."""
    return _LAZY


class _LazyCondition:
    """A LazyFuture's ``_condition``, made on first use (a non-data
    descriptor: once made it sits in the instance dict and is found there)."""

    def __get__(self, fut: LazyFuture | None, owner: type) -> Any:
        if fut is None:
            return self
        cond = fut.__dict__.get("_condition")
        if cond is None:
            made = threading.Condition()  # (outside the lock: it allocates)
            with _LAZY:
                cond = fut.__dict__.setdefault("_condition", made)
        return cond


class LazyFuture(Future[Any]):
    """Future without a Condition until something waits, looks or adds a
    callback; a result that comes first is set, and read, without one."""

    _condition = _LazyCondition()

    def __init__(self) -> None:
        # Future.__init__'s fields, but the Condition (made on first use).
        self._state = PENDING
        self._result: Any = None
        self._exception: BaseException | None = None
        self._waiters: list[Any] = []
        self._done_callbacks: list[Any] = []

    def _finish_unwatched(self, result: Any, exception: BaseException | None) -> bool:
        """Finish without a Condition if none was ever made: then nobody
        waits, looks or has a callback, and anyone who comes later makes
        one (under the lock) and finds the state FINISHED."""
        with _LAZY:
            if "_condition" in self.__dict__:
                return False
            ended = self._state not in (PENDING, RUNNING)
            if not ended:
                self._result = result
                self._exception = exception
                self._state = FINISHED
        if ended:
            raise InvalidStateError(f"{self._state}: {self.describe()}")  # (repr would take the lock)
        return True

    def describe(self) -> str:
        return "future"

    def set_result(self, result: Any) -> None:
        if not self._finish_unwatched(result, None):
            super().set_result(result)

    def set_exception(self, exception: BaseException | None) -> None:
        if exception is None or not self._finish_unwatched(None, exception):
            super().set_exception(exception)

    def result(self, timeout: float | None = None) -> Any:
        if self._state == FINISHED and self._exception is None:
            return self._result  # (set before the state: FINISHED is final)
        return super().result(timeout)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        if self._state == FINISHED:
            return self._exception
        return super().exception(timeout)

    def done(self) -> bool:
        return self._state in ENDED

    def running(self) -> bool:
        return self._state == RUNNING
