"""The node-local submit path: offers in node memory.

A task submitted alone (nothing else in flight) by the client on the node
goes two ways at once.  The client writes it into a free offer slot of the
node's memory (native/offer.c, under the client's send lock), sends the
Submit to the coordinator as always, naming the slot, and then writes a
byte to a FIFO in its run directory that spinning Ms poll.  An M holding a
P (spinning, or whose queue ran dry) takes the offer, queues it as a root G
in its own P and runs it, without waiting for the coordinator; whichever M
runs the G writes the result back into the slot, where the caller waits on
a futex.  The coordinator stays the owner of the root table: when it reads
the Submit it settles the slot, and the task is either started on the M
that took it, or (no M took it) queued in the global run queue as if it
had never been offered.  An offer still untaken when its Submit is read
waits up to 1 ms if an M between Gs is about to look (``deferred``).

Slot states, and who moves them (each move is one CAS of the slot's state
word ``[seq][owner M + 1][state]``; ``seq`` counts the slot's offers)::

    FREE -client-> WRITING -client-> OFFERED
    OFFERED   -M takes->                TAKEN(m)
    TAKEN(m)  -M has queued its G->     QUEUED(m)
    TAKEN(m)  -coordinator reads Submit-> ACKED(m)   (started on m)
    ACKED(m)  -M has queued its G->     FREE
    QUEUED(m) -coordinator reads Submit-> FREE        (started on m)
    OFFERED   -coordinator reads Submit-> FREE        (no M took it: global queue)
    WITHDRAWN -coordinator reads Submit-> FREE        (global queue)

After M m died (the coordinator's ``recover_offers``): a TAKEN(m) or
ACKED(m) slot whose G never reached a queue has that G freed; TAKEN becomes
WITHDRAWN (the Submit, still unread, queues the task as usual) and ACKED
FREE (the root is started and held nowhere: recovery's census runs it
again).  If the G did reach a queue, TAKEN becomes QUEUED and ACKED FREE:
the queue holds it.  A QUEUED slot (its Submit unread) whose run died with
an M, or m's own whose G is gone, becomes WITHDRAWN
(``withdraw_lost_offers``).  A reply m was writing is given up.  So a task
is never lost and, but for a run that died with its M, never runs twice.

Runs in: the client (offer), the Ms (take, queued) and the coordinator
(settle, recovery).
"""

from __future__ import annotations

import enum

from gmpd.native import OFFER_SLOTS, Node

__all__ = ["OFFER_FIFO", "OFFER_SLOTS", "Offer", "held", "queued", "settle", "untaken"]

OFFER_FIFO = "offer"  # in the client's run directory: a byte written there wakes spinning Ms


class Offer(enum.IntEnum):
    """A slot's state (native/offer.h)."""

    FREE = 0
    OFFERED = 1
    TAKEN = 2
    QUEUED = 3
    ACKED = 4
    WITHDRAWN = 5
    WRITING = 6


def queued(node: Node, slot: int, seq: int, m: int) -> None:
    """M ``m`` has queued the G of the offer it took: TAKEN -> QUEUED, or,
    if the coordinator acknowledged it meanwhile, ACKED -> FREE."""
    if not node.offer_cas(slot, (seq, m, Offer.TAKEN), (seq, m, Offer.QUEUED)):
        node.offer_cas(slot, (seq, m, Offer.ACKED), (seq, -1, Offer.FREE))


def untaken(node: Node, slot: int, seq: int) -> bool:
    """Whether offer (slot, seq) waits for an M still."""
    s, _m, state, _tid = node.offer_state(slot)
    return s == seq and state == Offer.OFFERED


def settle(node: Node, slot: int, seq: int) -> int:
    """The coordinator read the Submit of offer (slot, seq): the M that took
    it (the task is started there), or -1 (queue it as usual)."""
    while True:
        s, m, state, _tid = node.offer_state(slot)
        if s != seq:
            return -1  # (not ours: a client naming a slot it did not offer)
        if state in (Offer.OFFERED, Offer.WITHDRAWN):
            new, took = (seq, -1, Offer.FREE), -1
        elif state == Offer.TAKEN:
            new, took = (seq, m, Offer.ACKED), m
        elif state == Offer.QUEUED:
            new, took = (seq, -1, Offer.FREE), m
        else:
            return -1
        if node.offer_cas(slot, (s, m, state), new):
            return took


def held(
    node: Node, states: tuple[Offer, ...], m: int | None = None
) -> list[tuple[int, int, int, int, Offer]]:
    """(slot, seq, owner M, tid, state) of the slots in one of ``states``
    (held by M ``m``, if given)."""
    out = []
    for slot in range(OFFER_SLOTS):
        seq, owner, state, tid = node.offer_state(slot)
        if state in states and (m is None or owner == m):
            out.append((slot, seq, owner, tid, Offer(state)))
    return out
