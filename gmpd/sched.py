"""The scheduler: Go's G-M-P model across processes.  Read this before m.py.

Concepts (``../shared/reference/go-scheduler.md`` §0, §3):

- G, a task: a record and payload in node shared memory (gmpd.g).
- M, a worker process (gmpd.m).  It runs task code only while it holds a P.
- P, a lease granted by the coordinator with an epoch; GOMAXPROCS of them.
  Each P owns a run queue (``runnext`` + 256-slot ring, native/runq.c).

The schedule loop of an M holding P (``M.find_runnable``), Go's order:

1. every 61st schedtick, one G from the global queue (fairness: two Gs that
   keep respawning each other cannot starve the global queue).  A G taken
   from ``runnext`` inherits the time slice and does not advance schedtick,
   as in Go; Go ends such a chain by preempting it after 10 ms
   (``forcePreemptNS``).  Python Gs run to completion, so gmpd ends the
   inherited slice at the first scheduling point past 10 ms instead;
2. ``runnext``, then the local ring (``runqget``); with fewer than 32 Gs
   left in it, the next global batch is asked for meanwhile (``Prefetch``:
   the global queue is a round trip away, not a lock), revocable by the
   coordinator until the M claims it in node memory;
3. a global batch of ``min(128, len, len/GOMAXPROCS + 1)`` (the coordinator
   computes it; the M runs one and puts the rest in its ring): or all of a
   short queue's tail while every P runs Gs, which the Ms then balance by
   steals (a coordinator round trip per batch of Go's halving tail);
4. steal from a random same-node P: 4 passes over all Ps in coprime random
   order, ``runnext`` only on the last pass; only if spinning Ms are fewer
   than half the busy Ps (``2 * nmspinning < GOMAXPROCS - npidle``);
5. spin: hold a long-poll GetWork at the coordinator for a short while,
   stealing between polls (the M counts in ``nmspinning``);
6. ``stopm``: release the P (shared memory first, then tell the
   coordinator), park on the M's futex.

Wake-ups (``wakep``): new work wakes one parked M only when there is an idle
P and no spinning M.  Global work: the coordinator does it (it maps the node
segment and futex-wakes directly).  A G spawned inside a task (``gmpd.go``)
goes into the spawning P's ``runnext`` with no socket message; the spawning
M then applies the same rule itself, locally: CAS a parked M's state from
PARKED to WAKING and futex-wake it.  The woken M asks the coordinator for a
lease; if no P is free it parks again.

Invariant: at most GOMAXPROCS Ms run task code at once.  An M runs task code
only between acquiring a P (a CAS on the P state word carrying the granted
epoch) and releasing it, and a P has one holder; the ``RUNNING`` counter
(incremented around each task) and its high-water mark ``RUNNING_MAX`` are
in the node segment so tests and ``statistics()`` can prove it.

Runs in: M processes (the loop) and the coordinator (wakep for global work).
"""

from __future__ import annotations

import enum
import math
import random

RETIRED = 75  # an M's exit status when it retired (EX_TEMPFAIL), so the node agent can tell


class MState(enum.IntEnum):
    """An M's state word in node shared memory (owner: the M; the coordinator
    and spawning Ms CAS PARKED -> WAKING, the coordinator PARKED -> GRANTED
    and ASKING -> WAKING)."""

    NEW = 0
    PARKED = 1
    WAKING = 2
    SPINNING = 3
    RUNNING = 4
    IDLE = 5  # holds a P, between Gs
    EXITING = 6
    SYSCALL = 7  # in a marked (or detected) blocking call; its P may be retaken
    JOIN = 8  # blocked on a child G that runs elsewhere (a syscall that checkdead reads)
    GRANTED = 9  # woken with a Grant on its way: it reads that instead of asking for a P
    # Marked from outside (sysmon: asleep in an unmarked call; the coordinator:
    # stopped beating), its RUNNING count taken; it claims the mark (resync,
    # a CAS) at its next scheduling point.  Not SYSCALL: sysmon's undo of a
    # mark must never turn an M's own gmpd.syscall() state back to RUNNING.
    ASLEEP = 10
    ASKING = 11  # a LeaseRequest on its way (back from a syscall): wakeable, never granted
    # Task code of this M is using its P's arena and queue (gmpd.go,
    # gmpd.checkpoint): entered by CAS from RUNNING and only then is the P
    # checked, so an M stopped inside is never taken for a safe one
    # (on_stalled kills it) and one stopped before it finds its mark.
    OWNING = 12


class Counter(enum.IntEnum):
    """Node-wide counters (``enum gmpd_sched_counter`` in native/runq.h)."""

    NMSPINNING = 0
    NPIDLE = 1
    NMIDLE = 2
    RUNNING = 3
    RUNNING_MAX = 4
    STEALS = 5
    STOLEN = 6
    GLOBAL_TAKES = 7
    SPINS = 8
    PARKS = 9
    WAKEUPS = 10
    SPILLS = 11
    INLINE = 12
    RETAKES = 13
    HANDOFFS = 14
    SYSCALLS = 15
    GRQLEN = 16
    SYSMONWAIT = 17  # 1: sysmon's backed-off sleep; DEEP_SLEEP: its deep one
    MEXITS = 18
    PREEMPTS = 19
    YIELDS = 20
    DEADLOCK = 21
    UNMARKED = 22
    MPOOLFULL = 23
    BADFRAMES = 24
    MLOST = 25
    RETRIED = 26
    WORKERLOST = 27
    TIMEOUTS = 28
    FENCED = 29
    MEMKILLS = 30
    NODESLOST = 31
    OFFERS = 32  # offered root tasks Ms took from node memory (gmpd.offer)
    MEMGRANTS = 33  # Ps granted in the woken M's slot, no Grant message (coordinator.grant_parked)
    SPINFIXES = 34  # leaked NMSPINNING counts the coordinator took back (coordinator.repair_spinning)
    TAKEOVERS = 35  # Ps in a gmpd.syscall() a standby thread of the same M took over (gmpd.m)


DEEP_SLEEP = 2  # SYSMONWAIT while sysmon sleeps with every P idle (Go's sysmonwait); 1: backed off


class Doom(enum.IntEnum):
    """Why an M was killed on purpose (its slot's ``doom`` word, stored
    before the kill so recovery can say why)."""

    NONE = 0
    TIMEOUT = 1  # its task ran past its timeout (sysmon)
    FENCED = 2  # its lease expired: stopped or wedged (the coordinator)
    MEMORY = 3  # over the per-M memory limit (sysmon)


FAIRNESS_TICK = 61  # Go: schedtick % 61 takes one global G first
FORCE_PREEMPT_S = 0.010  # Go's forcePreemptNS: the time slice a runnext chain shares
STEAL_TRIES = 4  # Go's stealTries
GLOBAL_BATCH = 128  # len(p.runq) / 2


def steal_order(count: int, rng: random.Random) -> list[int]:
    """Go's randomOrder: start anywhere, step by a stride coprime with count,
    so every P is visited exactly once in a pseudo-random order."""
    coprimes = [i for i in range(1, count + 1) if math.gcd(i, count) == 1]
    pos = rng.randrange(count)
    inc = rng.choice(coprimes)
    order = []
    for _ in range(count):
        order.append(pos)
        pos = (pos + inc) % count
    return order
