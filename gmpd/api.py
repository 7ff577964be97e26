"""``gmpd.go``: start a G from anywhere.

Inside a running task the child goes into the current P's ``runnext`` with
no socket message (gmpd.m.M.go); in a client it is ``submit`` on the active
Executor (the most recent one not shut down).

Runs in: a client thread or a task on an M.
"""

from __future__ import annotations

from concurrent.futures import Future
from typing import Any

from gmpd import m
from gmpd.errors import GmpdError
from gmpd.executor import active_executor
from gmpd.g import encode_task


def go(fn: Any, /, *args: Any, **kwargs: Any) -> Future[Any]:
    """Run ``fn(*args, **kwargs)`` as a new G; returns its future."""
    cur = m.CURRENT
    if cur is not None and cur.curg:
        return cur.go(encode_task(fn, args, kwargs))
    ex = active_executor()
    if ex is None:
        raise GmpdError("gmpd.go() outside a task needs a running gmpd.Executor: create one first")
    return ex.submit(fn, *args, **kwargs)
