"""Go's per-P run queue, as the Python side of gmpd sees it.

The queue itself lives in node shared memory and is operated only by the C
extension (native/runq.c; the protocol and its crash-recovery design are
explained at the top of that file).  Python never touches head or tail.  This
module names what the extension returns:

- ``RunQ`` (from ``Node.runq(p, m)``): M ``m``'s handle on P ``p``'s queue.
  ``put``/``put_next``/``get``/``drain`` run in the owner M of ``p``;
  ``steal(victim)`` runs in the owner of ``p`` and takes from ``victim``.
  A G returned by get/steal/drain, or a spilled batch from put, is *held* by
  the M until its next queue operation: record it (as the M's curg, or in
  the global queue) before calling into the queue again.
- :func:`recover_m`: after an M died, hand back what it held and finish or
  roll back its half-done step.  Runs in: a survivor that holds the dead M's
  P (or keeps it from being leased) until recovery is done.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from gmpd.native import RUNQ_SIZE, Node, RunQ

__all__ = ["RUNQ_SIZE", "OpState", "PStatus", "Recovery", "RunQ", "recover_m"]


class PStatus(enum.IntEnum):
    """P status word values; Go's numbers, so traces compare."""

    IDLE = 0
    RUNNING = 1
    SYSCALL = 2
    GCSTOP = 3  # unused, kept for Go's numbering
    DEAD = 4


class OpState(enum.IntEnum):
    """State of an M's op record."""

    IDLE = 0  # nothing in flight, nothing held
    INFLIGHT = 1  # killed between the first and last store of an operation
    HELD = 2  # the M had taken Gs out of every queue and not yet recorded them


PUT_KINDS = frozenset({"put", "put_next", "put_slow"})


@dataclass(frozen=True)
class Recovery:
    """What :func:`recover_m` found and did for one dead M."""

    kind: str  # last operation: put, put_next, put_slow, get, get_next, steal, ...
    state: OpState  # the record's state when the M died
    arg: int  # the G passed to put/put_next (0 for other operations)
    took_effect: bool  # whether the in-flight step had happened
    orphans: tuple[int, ...]  # Gs the M had out of every queue: requeue them

    def accepted(self, g: int) -> bool:
        """Whether a put of ``g`` by the dead M reached the queue layer.

        True means ``g`` is queued or among ``orphans``: do not put it again.
        """
        return self.kind in PUT_KINDS and self.arg == g


def recover_m(node: Node, m: int) -> Recovery:
    """Recover dead M ``m``'s op record (runq.c §3) and return what it held."""
    (kind, state, arg, _seq), orphans, took = node.recover_m(m)
    return Recovery(kind, OpState(state), arg, took, orphans)
