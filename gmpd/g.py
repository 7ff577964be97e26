"""G: a task.  Its record and payload live in node shared memory (native/gtab.c).

A G handle (the uint32 the run queues carry) names an allocation in one P's
arena: ``handle >> 22`` is the P, the low 22 bits a 64-byte unit.  Only the
owner M of that P creates Gs there (``Node.g_new``) and reclaims freed ones;
any M on the node may read a G, run it, store its result (in the arena of
the P it holds) and free it.  Life of a G:

    g_new -> RUNNABLE -(taken from a queue)-> RUNNING -> DONE (result linked)
          -> FREE (by whoever consumed the result; reclaimed by the arena owner)
"""

from __future__ import annotations

import enum

UNIT_BITS = 22


class GState(enum.IntEnum):
    """G record states (``enum gmpd_gstate`` in native/gtab.h)."""

    FREE = 0
    BUILDING = 1
    RUNNABLE = 2
    RUNNING = 3
    DONE = 4
    DATA = 5  # a result payload, not a G


def handle_p(handle: int) -> int:
    """The P whose arena holds G ``handle``."""
    return handle >> UNIT_BITS
