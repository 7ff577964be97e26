"""``gmpd.go``: start a G from anywhere; ``gmpd.syscall``: mark a blocking call.

Inside a running task the child goes into the current P's ``runnext`` with
no socket message (gmpd.m.M.go); in a client it is ``submit`` on the active
Executor (the most recent one not shut down).

Runs in: a client thread or a task on an M.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from concurrent.futures import Future
from typing import Any

from gmpd import m
from gmpd.errors import GmpdError
from gmpd.g import encode_task


def go(fn: Any, /, *args: Any, **kwargs: Any) -> Future[Any]:
    """Run ``fn(*args, **kwargs)`` as a new G; returns its future."""
    cur = m.CURRENT
    if cur is not None and cur.in_task_thread():
        return cur.go(encode_task(fn, args, kwargs))
    from gmpd.executor import active_executor  # noqa: PLC0415 (a client's path: Ms never import it)

    ex = active_executor()
    if ex is None:
        raise GmpdError("gmpd.go() outside a task needs a running gmpd.Executor: create one first")
    return ex.submit(fn, *args, **kwargs)


@contextlib.contextmanager
def syscall() -> Iterator[None]:
    """Mark a blocking section of a task (I/O, sleep, waiting on a process).

    Go's entersyscall / exitsyscall: the P stays with this M, so a short
    call costs two atomic operations; if the call lasts, sysmon retakes the
    P and another M runs the P's queue meanwhile.  On the way out the M
    takes its P back if nobody took it, else any idle P, else it waits for
    one.  Outside a task (in a client) it does nothing."""
    cur = m.CURRENT
    if cur is None or not cur.in_task_thread() or not cur.entersyscall(True):
        yield
        return
    try:
        yield
    finally:
        cur.exitsyscall()


def checkpoint() -> bool:
    """Cooperate with sysmon's preemption, from a long-running task.

    True when sysmon had flagged this task's P (the task has run for Go's
    10 ms time slice): the Gs queued behind it on its P were just given to
    the global queue, so idle Ps run them now.  Cheap (one shared-memory
    read) when there is nothing to do; False outside a task."""
    cur = m.CURRENT
    return cur is not None and cur.in_task_thread() and cur.checkpoint()
