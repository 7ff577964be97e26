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
    """A LazyFuture's ``_condition``, made on first use and kept in ``_cond``
    (never in an instance ``__dict__``: reading one makes the dict, a
    GC-tracked object more per future)."""

    def __get__(self, fut: LazyFuture | None, owner: type) -> Any:
        if fut is None:
            return self
        cond = fut._cond
        if cond is None:
            made = threading.Condition()  # (outside the lock: it allocates)
            with _LAZY:
                cond = fut._cond
                if cond is None:
                    fut._cond = cond = made
        return cond


class _LazyList:
    """A LazyFuture's ``_waiters`` or ``_done_callbacks``, made on first use
    (a non-data descriptor: the list it stores on the instance is found
    there from then on).  Future touches them under its Condition only,
    except ``_invoke_callbacks`` after FINISHED, when nobody adds one."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, fut: LazyFuture | None, owner: type) -> Any:
        if fut is None:
            return self
        made: list[Any] = []
        object.__setattr__(fut, self.name, made)
        return made


class LazyFuture(Future[Any]):
    """Future without a Condition until something waits, looks or adds a
    callback; a result that comes first is set, and read, without one.
    Nor its two lists: a future in flight is one GC-tracked object, not
    four (a flood of 10,000 in a process with a large heap made Python's
    full collection run, ~50 ms with Ray and Dask imported, mid-flood)."""

    _condition = _LazyCondition()
    _waiters = _LazyList()
    _done_callbacks = _LazyList()
    _cond: threading.Condition | None = None

    def __init__(self) -> None:
        # Future.__init__'s fields, but the Condition and the lists (made on first use).
        self._state = PENDING
        self._result: Any = None
        self._exception: BaseException | None = None

    def _finish_unwatched(self, result: Any, exception: BaseException | None) -> bool:
        """Finish without a Condition if none was ever made: then nobody
        waits, looks or has a callback, and anyone who comes later makes
        one (under the lock) and finds the state FINISHED."""
        with _LAZY:
            if self._cond is not None:
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
