"""The coordinator: P lease table, global run queue, root-task table.

One process per cluster, one ZeroMQ ROUTER socket.  Who sends what::

    client                      coordinator                          M (per P)
      |-- Hello ------------------> |                                    |
      |<----------------- Welcome --|                                    |
      |-- Submit(tasks) ----------> | grq.append; serve waiters; wakep   |
      |                             |-- futex wake (node shm) ---------> | parked M
      |                             |<------------ LeaseRequest(m) ------|
      |                             |-- Grant(p, epoch, batch) --------> | runs Gs
      |-- Watch ------------------> |  (once: user code asked running())  |
      |<------------ Watching(tids) |                                    |
      |<------------- Started(tids) |  (after a Watch, for tasks still    |
      |                             |   running at the next 1 ms timer)  |
      |                             |<-- GetWork(p, epoch, finished) ----| local queue empty
      |                             |-- Work(batch) / held until work -->|
      |                             |<--------------------- Spill(gs) ---| runqputslow
      |<------------------------------------------------ Results(...) ---| straight to the client
      |                             |<----------------- Finished(tids) --|
      |                             |<-------------- Renew(p, epoch) ----| (an M we cannot see; none yet)
      |                             |<------------- Release(p, epoch) ---| stopm: no work
      |                             |<-- Retaken(p, epoch) -- sysmon     | (M in a syscall)
      |                             |-- futex wake (handoffp) ---------> | parked M
      |-- Bye --------------------> |-- Bye --------------------------->  | exit

Rules kept from Go (reference §3): a global batch is
``min(128, len, len // GOMAXPROCS + 1)`` (but the whole tail of a short
queue while every P runs Gs and no M waits: ``take_batch``); new work wakes one parked M only
when there is an idle P and no spinning M (``wakep``); an M that ran out of
work "spins" by holding a long-poll GetWork (at most half the busy Ps spin)
before it releases its P and parks.

Leases: a grant carries an epoch (bumped on every grant of that P) and a TTL
renewed while the M's native heartbeat in node memory is fresh (a Renew
message would renew it for an M on a node we cannot read; none sends one
yet).  A message naming a stale epoch is
answered with Revoke; an expired lease makes the P idle under a new epoch,
which the P state word in node shared memory enforces too.

Replies to a client (Welcome, Started, Cancelled, Watching) go to the PULL socket it
names in its Hello, where results from Ms arrive too: the client's socket to
us is then send-only, so its user threads can submit on it directly.

Runs in: the coordinator process only.  Single-threaded: every handler runs
to completion on the poll loop.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import ctypes.util
import heapq
import math
import os
import select
import shutil
import signal
import socket
import struct
import sys
import time
from dataclasses import dataclass, field

import zmq

from gmpd import config, offer, runq, wire
from gmpd.errors import SegmentError, TaskTimeout, WorkerLost
from gmpd.g import GState, error_payload
from gmpd.offer import OFFER_SLOTS, Offer
from gmpd.runq import PStatus
from gmpd.sched import GLOBAL_BATCH, RETIRED, Counter, Doom, MState
from gmpd.shm import NodeMemory

# Lease expiry and heap trimming are checked every lease TTL / SLOW_TIMERS_PER_TTL,
# at most every SLOW_TIMER_MAX_S: every 0.25 s with the 5 s default, so a
# stopped M is fenced within 5% of its TTL.  (Every 50 ms, these wake-ups
# cost ~5 ms of CPU a second on a busy 2-core node: ~250 us each, cold.)
SLOW_TIMERS_PER_TTL = 20
SLOW_TIMER_MAX_S = 0.25
SLOW_TIMER_MIN_S = 0.005
# Ms in a row that died before their Hello: the node cannot start Ms (a
# module preloaded into the template, or the environment, kills a forked
# process).  Past this, a slot is given back to the node agent only after
# START_RETRY_S, and while no M lives the queued tasks fail (WorkerLost)
# instead of waiting forever: 94,000 restarts in 17 minutes, and a caller
# that hung, before.
START_FAILURES_MAX = 8
START_RETRY_S = 1.0
START_POLL_S = 0.05  # meanwhile the loop looks this often at most (not every 1 ms)
KILLED = frozenset({-signal.SIGKILL, -signal.SIGTERM, -signal.SIGINT})  # (from outside: not a failed start)
STARTED_DELAY_S = 0.001  # Started waits this long, so that quick tasks need none
LOOKING = (MState.NEW, MState.WAKING)  # an M in these states asks for a P next
STARTING_S = 2.0  # an M that said no Hello this long after it started no longer holds off newm
NODE_WAIT_S = 30.0  # how long the coordinator waits for a node agent (first, or after one died)
NODE_HELLO_S = 5.0  # for a connected agent's first record
OFFER_WAIT_S = 0.001  # an offer still untaken when its Submit is read waits this long for an M between Gs
# A prefetched batch (wire.Prefetch) not claimed this long is taken back
# when another M wants work and the global queue is empty, or a P is idle
# beside it: its M is in a long G or blocked, and it waits in its socket,
# where nobody can steal it.
PREFETCH_HOLD_S = 0.002
MAX_DEPTH = 4096  # bounds the walks over G links in a lost node's memory (it may be torn)
GAUGES = frozenset(
    {Counter.NMSPINNING, Counter.NPIDLE, Counter.NMIDLE, Counter.RUNNING, Counter.GRQLEN, Counter.SYSMONWAIT}
)  # counters that describe a node now, not its history: not carried to the next node


class NoNode(Exception):
    """No node agent came (or the client exited while we waited)."""


def describe_exit(code: int) -> str:
    """An M's end, from its exit code (negative: the signal that killed it)."""
    if code < 0:
        return f"was killed by {signame(-code)}"
    return f"exited with status {code}"


SPILL_KINDS = frozenset({"put_slow", "drain", "drain_next"})  # ring ops whose Gs an M spills


def signame(n: int) -> str:
    """SIGKILL for 9; "signal 40" for a real-time signal (no name)."""
    try:
        return signal.Signals(n).name
    except ValueError:
        return f"signal {n}"


def exit_hint(code: int) -> str:
    """A guess at why an M died, for WorkerLost."""
    if code == -signal.SIGKILL:
        return "SIGKILL: the kernel's out-of-memory killer (check dmesg), a task timeout, or a kill -9"
    if code in (-signal.SIGSEGV, -signal.SIGBUS, -signal.SIGILL, -signal.SIGFPE):
        return "a crash in native code: a segfault in a C extension?"
    if code == -signal.SIGABRT:
        return "abort() in native code: a failed assertion in a C extension?"
    if code < 0:
        return "a signal from outside the cluster"
    return "the task (or a library it called) ended the process: os._exit() or exit() in C?"


DOOM_HINTS = {
    Doom.TIMEOUT: "a task it ran went past its timeout, so sysmon killed it",
    Doom.FENCED: "its lease expired: the M was stopped (SIGSTOP) or wedged longer than the lease TTL",
    Doom.MEMORY: "it went over the per-M memory limit (configs/gmpd.toml [m] max_rss_mb), so it was killed",
}


def _load_libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
    except (OSError, AttributeError):  # not glibc: nothing to trim with
        return None
    return libc


_libc = _load_libc()


@dataclass
class PLease:
    p: int
    epoch: int = 0
    m: int = -1  # holder, -1 when idle
    expires: float = 0.0


@dataclass
class MInfo:
    m: int
    ident: bytes
    pid: int
    p: int = -1
    waiting: wire.GetWork | None = None  # a held long-poll request
    deadline: float = 0.0
    seq: int = 0  # the last global batch sent to it
    # Batches sent and not known to be queued yet: seq -> items, each a root
    # task id or (0, handle) for a node-local G (recovery re-queues the rest).
    batches: dict[int, list[tuple[int, int]]] = field(default_factory=dict)
    spilled: frozenset[int] = frozenset()  # its last Spill: never re-queue these as orphans
    fenced: bool = False  # killed on purpose; its death is on the way
    stalled: bool = False  # stopped beating; its P and task went on (on_stalled)
    stalled_tids: set[int] = field(default_factory=set)  # roots queued again when it stalled
    woken: bool = False  # we woke it and its LeaseRequest has not come yet
    prefetched: tuple[int, float] | None = None  # (seq, when sent) of its revocable batch


@dataclass(slots=True)  # (one per task in flight: ~100 ns less to make)
class Root:
    client: bytes
    payload: bytes
    retries: int  # attempts that may die with their M before the task fails
    started: bool = False  # an M has it (it is not in the global queue)
    taken: bool = False  # an M had it once: the client's future may be RUNNING; never withdrawn
    attempts: int = 0  # runs lost with their M so far


@dataclass
class Stats:
    submitted: int = 0
    completed: int = 0
    cancelled: int = 0
    grants: int = 0
    global_takes: int = 0
    spilled: int = 0
    wakeups: int = 0
    lost_peers: int = 0
    expired_leases: int = 0
    prefetch_revoked: int = 0  # prefetched batches taken back (revoke_prefetch)


@dataclass
class Coordinator:
    endpoint: str
    nprocs: int
    node_path: str  # unix socket the node agent connects to (NodeLink)
    lease_ttl: float
    lifeline: int  # pid whose exit ends the cluster (the client)
    retries: int = 3  # the default retry budget of a task
    ctx: zmq.Context[zmq.Socket[bytes]] = field(default_factory=zmq.Context)
    stats: Stats = field(default_factory=Stats)
    nm: NodeMemory = field(init=False)  # the node's memory (attach)
    node_pid: int = field(init=False, default=0)  # its node agent

    def __post_init__(self) -> None:
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.MAXMSGSIZE, config.max_frame_bytes())  # larger: dropped by ZeroMQ
        self.sock.bind(self.endpoint)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.listener.bind(self.node_path)  # (in the cluster's 0700 run directory)
        self.listener.listen(4)
        self.link: socket.socket | None = None  # to the node agent of the attached node
        self.lifeline_fd = os.pidfd_open(self.lifeline)
        self.old_nodes: list[NodeMemory] = []  # lost nodes' memory, unmapped at exit
        self.gone: set[bytes] = set()  # idents of a lost node's Ms: their last frames are ignored
        self.ps = [PLease(p) for p in range(self.nprocs)]
        self.idle_ps: collections.deque[int] = collections.deque(range(self.nprocs))
        self.grq: collections.deque[tuple[int, int]] = (
            collections.deque()
        )  # (tid, 0) root | (0, handle) local
        self.roots: dict[int, Root] = {}
        self.ms: dict[int, MInfo] = {}
        self.by_ident: dict[bytes, int] = {}  # M idents -> m
        self.clients: dict[bytes, zmq.Socket[bytes]] = {}  # ident -> PUSH to its reply_to
        self.sysmon: bytes | None = None
        self.want_p: collections.deque[int] = collections.deque()  # Ms back from a syscall, no P
        self.dead_pids: set[int] = set()  # Ms that died before their Hello was read
        self.start_failures = 0  # Ms in a row that died before their Hello
        self.start_retry_at = 0.0  # past START_FAILURES_MAX: no new M asked for before this
        self.held_slots: list[tuple[float, int]] = []  # (when, slot) given back to the agent later
        self.grq_published = 0  # the global queue length last written to the node counters
        self.asked: collections.deque[float] = collections.deque()  # Ms asked of the node agent, no "pid" yet
        self.starting: dict[int, float] = {}  # pids of Ms started, no Hello yet -> when to stop waiting
        self.out_started: dict[bytes, list[int]] = collections.defaultdict(list)
        self.watching: set[bytes] = set()  # clients that asked for Started (Watch)
        # Offers (gmpd.offer) read while untaken, while an M between Gs was
        # about to look: tid -> (slot, seq, until when they wait for it).
        self.deferred: dict[int, tuple[int, int, float]] = {}
        self.running = True
        self.spin_excess = 0  # NMSPINNING over the Ms in state SPINNING, at the last slow timer
        self.busy_since_trim, self.last_trim = False, 0.0
        self.started_due = self.next_slow_timer = 0.0
        self.slow_timer_s = min(SLOW_TIMER_MAX_S, max(SLOW_TIMER_MIN_S, self.lease_ttl / SLOW_TIMERS_PER_TTL))

    def count(self, counter: Counter, n: int = 1) -> None:
        """A node counter (Executor.statistics() reads them)."""
        self.nm.node.sched_add(counter, n)

    # ---- sending ----------------------------------------------------------

    def send(self, ident: bytes, msg: wire.Message) -> None:
        try:
            self.sock.send_multipart([ident, wire.encode(msg)], copy=False)
        except zmq.ZMQError as exc:  # ROUTER_MANDATORY: the peer is gone
            if exc.errno != zmq.EHOSTUNREACH:
                raise
            self.stats.lost_peers += 1

    def reply(self, client: bytes, msg: wire.Message) -> None:
        sock = self.clients.get(client)
        if sock is None:
            return
        try:
            sock.send(wire.encode(msg), zmq.NOBLOCK, copy=False)
        except zmq.Again:  # the client stopped reading: it is gone or going
            self.stats.lost_peers += 1

    def send_started(self) -> None:
        """Started for tasks taken by an M and still running: a task that
        finished meanwhile needs none (its result says it all), which spares
        the latency path a message."""
        for client, tids in self.out_started.items():
            running = [tid for tid in tids if tid in self.roots]
            if running:
                self.reply(client, wire.Started(running))
        self.out_started.clear()

    # ---- the global queue -------------------------------------------------

    def take_batch(self, limit: int) -> tuple[list[tuple[int, bytes]], list[int]]:
        """Go's globrunqgetbatch: min(limit, len, len/GOMAXPROCS + 1) entries.
        But while every P is busy, a tail shorter than GLOBAL_BATCH /
        GOMAXPROCS is not left behind: Go's halving of it (36, 18, 9, 5, 2,
        1 Gs with 2 Ps) was a round trip each, ~4 thread wake-ups in two
        processes, where the Ms balance it by node-local steals (the taker
        wakes a parked M for a P freed meanwhile, as Go's resetspinning
        does).  With an idle P, or a spinning M waiting here, the batch
        stays Go's: that M gets its share from here, not from a steal after
        the taker woke it.  A Prefetch's whole tail waits unclaimed in its
        M's socket until that M's G ends; an M that runs dry meanwhile gets
        it back after PREFETCH_HOLD_S (revoke_stale_prefetches)."""
        queued = len(self.grq)
        n = min(limit, queued, queued // self.nprocs + 1)
        if (
            queued - n < GLOBAL_BATCH // self.nprocs
            and not self.idle_ps
            and not any(info.waiting is not None for info in self.ms.values())
        ):
            n = min(limit, queued)
        roots: list[tuple[int, bytes]] = []
        locals_: list[int] = []
        while n > 0 and self.grq:
            tid, handle = self.grq.popleft()
            if handle:
                locals_.append(handle)
                n -= 1
                continue
            root = self.roots.get(tid)
            if root is None or root.started:
                continue  # cancelled while queued
            self.mark_started(tid, root)
            roots.append((tid, root.payload))
            n -= 1
        if roots or locals_:
            self.stats.global_takes += 1
        return roots, locals_

    def mark_started(self, tid: int, root: Root) -> None:
        """An M has root ``tid`` now; the client hears so (Started) if it
        asked to (Watch) and the task still runs at the next 1 ms timer."""
        root.started = root.taken = True
        if root.client not in self.watching:
            return
        if not self.out_started:
            self.started_due = time.monotonic() + STARTED_DELAY_S
        self.out_started[root.client].append(tid)

    def batch_for(self, info: MInfo, limit: int) -> tuple[int, list[tuple[int, bytes]], list[int]]:
        """A global batch for M ``info``, numbered and remembered until the
        M records it queued every item (``forget_placed``)."""
        roots, locals_ = self.take_batch(limit)
        if not roots and not locals_:
            return 0, roots, locals_
        info.seq += 1
        info.batches[info.seq] = [(tid, 0) for tid, _payload in roots] + [(0, h) for h in locals_]
        return info.seq, roots, locals_

    def prefetched_batch(self, info: MInfo, limit: int) -> tuple[int, list[tuple[int, bytes]], list[int]]:
        """batch_for a Prefetch, revocable until its M claims it; none while
        a batch of that M is not queued in full (a second could not be
        revoked: the placing word says one batch; review)."""
        self.forget_placed(info)
        if info.batches:
            return 0, [], []
        seq, roots, locals_ = self.batch_for(info, limit)
        if seq:
            info.prefetched = (seq, time.monotonic())
        return seq, roots, locals_

    def revoke_prefetch(self, info: MInfo) -> bool:
        """Take back ``info``'s prefetched batch if its M has not claimed it
        (m_revoke_batch, against the M's m_claim_batch): its items go back
        to the front of the global queue, in order.  Only the M's newest
        batch, once every earlier one is queued in full: the placing word
        then says the rest (recovery, forget_placed) as before."""
        if info.prefetched is None:
            return False
        seq = info.prefetched[0]
        self.forget_placed(info)
        if seq not in info.batches or any(s < seq for s in info.batches):
            info.prefetched = None  # (queued, or no longer revocable: the timer must not spin on it)
            return False
        if not self.nm.node.m_revoke_batch(info.m, seq):
            info.prefetched = None  # claimed: its items are in the M's queue
            return False
        info.prefetched = None
        for tid, h in reversed(info.batches.pop(seq)):
            if h:
                self.grq.appendleft((0, h))
            elif (root := self.roots.get(tid)) is not None:
                root.started = False  # (taken stays: the client may have heard Started)
                self.grq.appendleft((tid, 0))
        self.stats.prefetch_revoked += 1
        return True

    def revoke_stale_prefetches(self, now: float, but: MInfo | None = None) -> bool:
        """Take back the prefetched batches older than PREFETCH_HOLD_S (but
        ``but``'s): work for an M that asks, or an idle P."""
        revoked = False
        for info in self.ms.values():
            pf = info.prefetched
            if pf is not None and info is not but and now - pf[1] >= PREFETCH_HOLD_S:
                revoked = self.revoke_prefetch(info) or revoked
        return revoked

    def forget_placed(self, info: MInfo) -> None:
        """Drop the batches M ``info`` has queued in full (node memory says so)."""
        if not info.batches:
            return
        seq, placed = self.nm.node.m_placing(info.m)
        for s in [s for s, items in info.batches.items() if s < seq or (s == seq and placed >= len(items))]:
            del info.batches[s]

    def serve_waiters(self) -> None:
        """Answer held GetWork long-polls (spinning Ms) while work lasts."""
        for info in self.ms.values():
            if not self.grq:
                return
            req = info.waiting
            if req is not None and self.still_spinning(info):
                info.waiting = None
                self.send(info.ident, wire.Work(*self.batch_for(info, req.max)))

    def still_spinning(self, info: MInfo) -> bool:
        """Whether M ``info``, whose long-poll we hold or read, still waits on
        it; if it took an offer meanwhile (gmpd.offer) it runs that G, and a
        batch would wait in its socket behind it, where nobody can steal
        it: its long-poll is answered empty now."""
        if self.nm.node.m_info(info.m)[0] == MState.SPINNING:
            return True
        self.answer_empty(info)
        return False

    def answer_empty(self, info: MInfo) -> None:
        """Answer M ``info``'s long-poll with no work."""
        info.waiting = None
        self.send(info.ident, wire.Work(0, [], []))

    def spinning(self) -> int:
        return sum(1 for info in self.ms.values() if info.waiting is not None)

    def wakep(self) -> None:
        """Wake one parked M if there is queued work, an idle P and no spinner.
        Queued work includes an idle P's own ring: a P handed off to an M that
        then died (or was stopped and fenced) before it took it keeps its Gs."""
        if not self.idle_ps or self.spinning() or self.waking():
            return  # (an M already on its way takes the idle P: waking more costs a core)
        if self.work_beside_idle_p():
            self.startm()

    def work_beside_idle_p(self) -> bool:
        """Queued work (global, or an idle P's own ring) and an idle P."""
        node = self.nm.node
        return bool(self.idle_ps) and (bool(self.grq) or not all(node.runq_empty(p) for p in self.idle_ps))

    def waking(self) -> bool:
        """An M was woken and has not asked for its P yet (a stalled one aside)."""
        node = self.nm.node
        return any(i.woken or node.m_info(i.m)[0] == MState.WAKING for i in self.ms.values() if not i.stalled)

    def startm(self, m: int = -1) -> bool:
        """Wake parked M ``m``, or any parked M without a P: it will ask for
        one.  With none parked, ask the node agent for a new M (Go's newm),
        one at a time; the agent refuses past ``max_ms`` and the P waits."""
        node = self.nm.node
        for info in [self.ms[m]] if m in self.ms else self.ms.values():
            # (A woken M that has not asked yet may read PARKED again: it
            # re-parks before asking.  Its one request takes one P.)
            if info.p >= 0 or info.woken or info.stalled or info.fenced:
                continue
            if not (self.idle_ps and self.grant_parked(info)):
                if node.m_cas_state(info.m, MState.PARKED, MState.WAKING) or node.m_cas_state(
                    info.m, MState.ASKING, MState.WAKING
                ):
                    info.woken = True
                else:
                    continue
            node.wake(info.m)
            self.stats.wakeups += 1
            return True
        return m < 0 and self.coming() < self.needing() and self.newm()

    def grant_parked(self, info: MInfo) -> bool:
        """startm's wake with a Grant: the M's LeaseRequest round trip (~0.5
        ms of a hand-off on a busy node) is saved.  Only a PARKED M: one
        with a request on its way (ASKING) would take the Grant for that
        request's answer and get two.  A P whose ring holds Gs (a hand-off)
        is granted in node memory, with no global batch, as Go's handoffp
        starts an M on the P alone: the woken M finds it at once instead
        of when the Grant message comes through ZeroMQ (0.38-0.45 ms of a
        1.2 ms hand-off), runs the P's own Gs, and asks for global work
        when they run out."""
        node = self.nm.node
        if node.m_info(info.m)[0] != MState.PARKED:
            return False
        p = self.idle_ps[0]
        in_memory = not node.runq_empty(p)
        epoch = self.next_epoch(p)
        # Stored before the CAS that publishes it, and never while the M is
        # GRANTED (reading the last one): only we move it there, from PARKED.
        node.m_set_grant(info.m, p if in_memory else -1, epoch)
        if not node.m_cas_state(info.m, MState.PARKED, MState.GRANTED):
            return False
        self.grant(info, epoch=epoch, in_memory=in_memory)
        if in_memory:
            node.sched_add(Counter.MEMGRANTS, 1)
        return True

    def newm(self) -> bool:
        if self.starting_held(time.monotonic()):
            return False  # Ms die as they start: one try a START_RETRY_S (start_failed)
        if not self.tell_node(b"m"):
            return False
        self.asked.append(time.monotonic() + STARTING_S)
        return True

    def needing(self) -> int:
        """Idle Ps with work for an M: their own ring, or the global queue."""
        if self.grq:
            return len(self.idle_ps)
        return sum(1 for p in self.idle_ps if not self.nm.node.runq_empty(p))

    def coming(self) -> int:
        """Ms that will ask for a P before long: new ones (``forking``), or
        woken and not asked yet.  A new M per idle P past those (a hand-off
        waited ~8 ms per M when they were started one at a time: two Ps
        retaken together waited for two)."""
        node = self.nm.node
        woken = sum(
            1 for i in self.ms.values() if not i.stalled and (i.woken or node.m_info(i.m)[0] in LOOKING)
        )
        return self.forking() + woken

    def forking(self) -> int:
        """New Ms on their way: asked of the node agent, or started and not
        heard from."""
        now = time.monotonic()
        while self.asked and self.asked[0] < now:
            self.asked.popleft()  # (refused at max_ms, or lost: ask again)
        for pid in [pid for pid, until in self.starting.items() if until < now]:
            del self.starting[pid]  # (a slow start, or its Hello was lost: ask anyway)
        return len(self.asked) + len(self.starting)

    def spare(self) -> None:
        """A hand-off of a P with work took (or waits for) an M: keep one
        more parked or on its way, beyond those the idle Ps will take, for
        the next hand-off (an M's fork and start cost ~8 ms with the P idle
        meanwhile; Go's thread start costs microseconds).  Spares past
        GOMAXPROCS + 1 exit after ``m.idle_exit_ms`` parked."""
        node = self.nm.node
        parked = any(
            i.p < 0 and not i.woken and node.m_info(i.m)[0] == MState.PARKED for i in self.ms.values()
        )
        if not parked and self.coming() <= self.needing() and len(self.ms) + self.forking() < node.nms - 1:
            self.newm()

    def handoffp(self, p: int) -> None:
        """Go's handoffp for a P sysmon retook: an M that came back from a
        syscall and waits for a P gets it first; else wake an M if the P's
        own queue or the global queue has work (and keep a spare M coming);
        else the P stays idle."""
        if self.wake_want_p():
            self.nm.node.sched_add(Counter.HANDOFFS, 1)
        elif not self.nm.node.runq_empty(p) or self.grq:
            if self.startm():
                self.nm.node.sched_add(Counter.HANDOFFS, 1)
            self.spare()

    def wake_want_p(self) -> bool:
        """Wake the first M that came back from a syscall with no P to get."""
        while self.want_p:
            if self.startm(self.want_p.popleft()):
                return True
        return False

    def on_retaken(self, msg: wire.Retaken) -> None:
        lease = self.ps[msg.p] if 0 <= msg.p < self.nprocs else None
        if lease is None or msg.epoch <= lease.epoch:
            return  # a newer grant since: stale
        lease.epoch = msg.epoch  # the state word says so already (sysmon's CAS)
        if lease.m >= 0:  # (idle already when its M released it meanwhile)
            self.make_idle(msg.p, front=True)
            self.handoffp(msg.p)

    def retaken_meanwhile(self, lease: PLease) -> None:
        """The state word says sysmon retook this P and its Retaken is still
        on the way: act on it now (an M asking for a P again must not be
        re-sent a grant its P word no longer honours)."""
        status, owner, epoch = self.nm.node.p_state(lease.p)
        if lease.m >= 0 and epoch > lease.epoch and (status, owner) == (PStatus.IDLE, -1):
            self.on_retaken(wire.Retaken(lease.p, epoch))

    # ---- leases -----------------------------------------------------------

    def lease_ok(self, m: int, p: int, epoch: int) -> bool:
        return 0 <= p < self.nprocs and self.ps[p].m == m and self.ps[p].epoch == epoch

    def next_epoch(self, p: int) -> int:
        """A new grant's epoch: past any sysmon's retakes wrote to the state
        word, or the M would take the grant for a stale one and drop its batch."""
        return max(self.ps[p].epoch, self.nm.node.p_state(p)[2]) + 1

    def grant(self, info: MInfo, has_g: bool = False, *, epoch: int = 0, in_memory: bool = False) -> None:
        """Lease an idle P to ``info``'s M and send the Grant with a global
        batch; ``in_memory``: the M reads P and ``epoch`` from its slot
        (grant_parked), no message."""
        if info.p >= 0:  # it already holds one: re-send it (its Grant may be in flight)
            lease = self.ps[info.p]
        elif self.idle_ps:
            lease = self.ps[self.idle_ps.popleft()]
            self.nm.node.sched_add(Counter.NPIDLE, -1)
            lease.epoch = epoch or self.next_epoch(lease.p)
            lease.m = info.m
            info.p = lease.p
            self.stats.grants += 1
            if info.m in self.want_p:  # (granted on its own request: a P freed later must not wake it)
                self.want_p.remove(info.m)
        else:
            if has_g and info.m not in self.want_p:
                self.want_p.append(info.m)  # woken first when a P is freed
            self.send(info.ident, wire.Grant(-1, 0, 0, 0, [], []))
            return
        lease.expires = time.monotonic() + self.lease_ttl
        if in_memory:
            return
        seq, roots, locals_ = self.batch_for(info, 128)
        self.send(
            info.ident, wire.Grant(lease.p, lease.epoch, int(self.lease_ttl * 1000), seq, roots, locals_)
        )

    def make_idle(self, p: int, front: bool = False) -> None:
        lease = self.ps[p]
        holder = self.ms.get(lease.m)
        if holder is not None:
            # Its prefetched batch cannot reach a queue before it holds a P
            # again (retaken, released, fenced): the next M on the P asks.
            self.revoke_prefetch(holder)
            holder.p = -1
            if holder.waiting is not None:  # its long-poll names a lease it no longer has
                self.send(holder.ident, wire.Revoke(p, lease.epoch))
            holder.waiting = None
        lease.m = -1
        if front:
            self.idle_ps.appendleft(p)  # the next grant takes it, with its queued Gs
        else:
            self.idle_ps.append(p)
            self.wake_want_p()  # an M holding a G back from a syscall goes first
        self.nm.node.sched_add(Counter.NPIDLE, 1)

    def expire_leases(self, now: float) -> None:
        """Fence Ms that stopped living.  Ms on this node prove they live by
        the native heartbeat in node shared memory (a GIL-free thread, so a
        task in one long C call does not lose its P); Renew messages would be
        the signal for Ms we cannot see (other hosts, later; no M sends one
        now).  An M whose
        heartbeat is older than the lease TTL is stopped (SIGSTOP) or wedged
        (``on_stalled``)."""
        now_ns = time.monotonic_ns()
        for lease in self.ps:
            if lease.m >= 0:
                heartbeat = self.nm.node.m_info(lease.m)[4]
                if heartbeat and now_ns - heartbeat < self.lease_ttl * 1e9:
                    lease.expires = now + self.lease_ttl
        for info in list(self.ms.values()):
            heartbeat = self.nm.node.m_info(info.m)[4]
            expired = info.p >= 0 and self.ps[info.p].expires < now
            if expired or (heartbeat and now_ns - heartbeat > self.lease_ttl * 1e9):
                if not info.stalled:
                    self.stats.expired_leases += 1
                    self.on_stalled(info)
            else:
                info.stalled = False  # it lives again (SIGCONT)

    def repair_spinning(self) -> None:
        """Take back spinning counts that no spinning M holds: counted on
        two slow timers in a row (>= 5 ms apart), more than the Ms whose
        state says SPINNING.  A leaked count makes may_spin say no to every
        M for good (no M spins, no offer is taken); CI saw one stay at 1
        with no M killed, cause not found (docs/design.md, Next).  A spinner
        stores its state right after counting itself and takes the count
        back right after leaving the state, so only an M stopped in those
        few instructions on both looks would be miscounted: its own give-back
        then stops at 0 (sched_dec), and the gauge is right again once it
        is done.  An M counts itself only while it holds a P, so after its
        Hello: the Ms we know are all the spinners."""
        node = self.nm.node
        spinning = 0
        for info in self.ms.values():  # (a dead M's slot may still read SPINNING: not these)
            state, _curg, _p, pid, *_ = node.m_info(info.m)
            spinning += pid == info.pid and state == MState.SPINNING
        excess = max(0, node.sched()[Counter.NMSPINNING] - spinning)
        leaked = min(excess, self.spin_excess)
        for _ in range(leaked):
            node.sched_dec(Counter.NMSPINNING)
        if leaked:
            self.count(Counter.SPINFIXES, leaked)
        self.spin_excess = excess - leaked

    def on_stalled(self, info: MInfo) -> None:
        """M ``info`` stopped beating.  Its P (with its ring) goes to another
        M under a new epoch, and the root task it was running runs again.
        It may resume (SIGCONT): then its state word says ASLEEP, so at its
        next scheduling point it leaves that "syscall" and asks for a P like
        any M back from one; its epoch is stale, so it never touches its old
        P again, and its late result is a duplicate the client drops.

        That is only safe when the M holds nothing else: no ring operation
        in flight or Gs held (its op record is IDLE), and at most one G
        running, a root (a child's record would be finished twice, by it and
        by the re-run).  Otherwise it is SIGKILLed (doom FENCED), the one
        fence that cannot fail, and recovered like any dead M."""
        node, m = self.nm.node, info.m
        self.revoke_prefetch(info)  # (a batch it has not claimed is no reason to kill it)
        self.forget_placed(info)
        state, curg, *_ = node.m_info(m)
        g = node.g_info(curg) if curg else None
        lone_root = g is not None and g[0] == GState.RUNNING and g[2] == 0 and g[3] and g[9] == 0
        owned = sum(  # its running G, and root Gs whose results it has not sent yet
            1 for p in range(self.nprocs) for h in node.g_scan(p) if node.g_info(h)[8] == m + 1
        )
        holds_more = owned > (1 if g is not None else 0)
        # Between Gs an M uses its P's queue as its owner, with no check:
        # it may only live on if its next step is a scheduling point that
        # notices the P is gone (its state ASLEEP or SYSCALL: resync/exitsyscall).
        owns_a_p = any(node.p_state(p)[1] == m for p in range(self.nprocs))
        # A GRANTED M has a grant it has not adopted yet (one in its slot
        # carries no batch): resumed between our look and fence's CAS, it
        # would adopt the P and use its ring beside the P's next M.
        safe = (g is None and not owns_a_p and state != MState.GRANTED) or (
            lone_root and state in (MState.RUNNING, MState.SYSCALL, MState.ASLEEP, MState.JOIN)
        )
        if node.op_record(m)[1] != runq.OpState.IDLE or not safe or holds_more or info.batches:
            self.fence_m(info, Doom.FENCED)
            return
        left = state
        if state == MState.RUNNING:
            if not node.m_cas_state(m, MState.RUNNING, MState.ASLEEP):
                self.fence_m(info, Doom.FENCED)  # it moved since our look: not one to leave alive
                return
            node.sched_add(Counter.RUNNING, -1)  # it gives the count back when it resumes
            left = MState.ASLEEP
        p = self.fence(m)
        if node.m_info(m)[0] != left:
            # It moved between our look and the fence (resumed: it claimed
            # our mark, entered OWNING, left its syscall): it may be using
            # the P we just fenced.  Killed; its recovery hands the P on.
            # (The other half of the pair: an M enters OWNING or leaves its
            # mark by CAS on its state, then checks its P.)
            self.fence_m(info, Doom.FENCED)
            return
        info.stalled = True
        self.count(Counter.FENCED)
        if p >= 0:
            self.make_idle(p, front=True)
            self.handoffp(p)
        if g is not None:
            lost = WorkerLost(
                f"M {m} (pid {info.pid}) stopped responding (no heartbeat for {self.lease_ttl:g} s) "
                f"while running this task",
                m=m,
                pid=info.pid,
                hint=DOOM_HINTS[Doom.FENCED],
            )
            info.stalled_tids.add(g[3])
            self.retry(g[3], lost)  # its record stays: the M frees it if it resumes

    def fence_m(self, info: MInfo, why: Doom) -> None:
        """Kill M ``info`` on purpose, saying why (recovery follows its death)."""
        if info.fenced:
            return
        info.fenced = True
        self.nm.node.m_set_doom(info.m, why)
        with contextlib.suppress(ProcessLookupError):
            os.kill(info.pid, signal.SIGKILL)

    # ---- a dead M (DESIGN §4.4) ---------------------------------------------
    #
    # The node agent reports every M exit (pidfds: within milliseconds).  The
    # dead M's P and its ring survive in node memory.  What the M alone knew
    # is rebuilt from node memory, never from a timeout:
    #   - its P: fenced (epoch + 1) and withheld while the ring layer's
    #     recovery (runq.c §3) finishes or rolls back its last queue op;
    #   - Gs it had taken out of every queue (the op record's orphans);
    #   - Gs it was running: its curg, then each G's ``outer`` (join-helping
    #     runs Gs inline, one inside the other);
    #   - global batches it had not queued in full (``m_placing``);
    #   - root results that died in its memory or its socket: a census of
    #     every arena finds the started roots that nobody holds any more.
    # Then the P is idle again under the new epoch and the node agent may
    # start a new M in the dead one's slot.

    def on_node_records(self, data: bytes) -> None:
        """The node agent's records: "pid <m> <pid>" (an M started) and
        "exit <m> <pid> <status>"."""
        for line in data.decode().splitlines():
            kind, m, pid, *status = line.split()
            if kind == "pid":
                if self.asked:
                    self.asked.popleft()
                if not any(i.pid == int(pid) for i in self.ms.values()):  # (its Hello may come first)
                    self.starting[int(pid)] = time.monotonic() + STARTING_S
            elif kind == "exit":
                self.starting.pop(int(pid), None)
                self.on_m_exit(int(m), int(pid), int(status[0]))

    def on_m_exit(self, m: int, pid: int, status: int) -> None:
        info = self.ms.get(m)
        code = os.waitstatus_to_exitcode(status)
        # A retiring M gives its slot up (pid 0) before it exits 75; a task's os._exit(75) does not.
        crashed = self.running and not (code == RETIRED and self.nm.node.m_info(m)[3] == 0)
        if crashed:
            self.count(Counter.MLOST)
        state, _curg, p, *_ = self.nm.node.m_info(m)
        if state == MState.SPINNING and p >= 0:  # killed inside spin(): its count would stay
            # (Without this a SIGKILLed spinner left NMSPINNING at 1: may_spin
            # said no to every M after, and no M took an offer any more.)
            self.nm.node.sched_dec(Counter.NMSPINNING)
            self.nm.node.m_set(m, state=MState.EXITING)
        # (sysmon would act on it again; whose timeout it was stays for recover_gs)
        self.nm.node.m_set_deadline(m, 0, self.nm.node.m_deadline_g(m))
        if info is None or info.pid != pid:  # its Hello is not in yet (or never will be): it held nothing
            self.dead_pids.add(pid)
            self.nm.node.m_set_doom(m, Doom.NONE)
            if crashed and code not in KILLED and self.start_failed(m, pid, code):
                return
            self.free_slot(m)
            return
        del self.ms[m]
        for ident in [i for i, mm in self.by_ident.items() if mm == m]:
            del self.by_ident[ident]
        with contextlib.suppress(ValueError):
            self.want_p.remove(m)
        doom = Doom(self.nm.node.m_doom(m)[1])
        p = self.fence(m)
        recovery = runq.recover_m(self.nm.node, m)
        if crashed:
            if doom == Doom.FENCED:
                self.count(Counter.FENCED)
            lost = WorkerLost(
                f"M {m} (pid {pid}) {describe_exit(code)} while running this task",
                m=m,
                pid=pid,
                exitcode=code if code >= 0 else None,
                signal=signame(-code) if code < 0 else None,
                hint=DOOM_HINTS.get(doom) or exit_hint(code),
            )
            self.recover_gs(info, recovery, lost, doom)
        self.nm.node.m_set_doom(m, Doom.NONE)
        self.nm.node.m_set_placing(m, 0, 0)  # the next M in the slot numbers batches from 1
        if p >= 0:
            self.nm.node.g_sweep(p)  # allocations it never published
            self.make_idle(p, front=True)
            self.handoffp(p)
        self.free_slot(m)

    def start_failed(self, m: int, pid: int, code: int) -> bool:
        """M ``m`` died before its Hello.  Past START_FAILURES_MAX in a row,
        hold its slot back for START_RETRY_S (True), and if no M lives,
        fail the queued tasks: none would ever run."""
        self.start_failures += 1
        if not self.starts_failing():
            return False
        self.start_retry_at = time.monotonic() + START_RETRY_S
        heapq.heappush(self.held_slots, (self.start_retry_at, m))
        if not self.ms and not self.forking():  # (an M started and not heard from yet may live)
            lost = WorkerLost(
                f"no M can start on this node: {self.start_failures} in a row died before they "
                f"said hello (the last, pid {pid}, {describe_exit(code)})",
                m=m,
                pid=pid,
                exitcode=code if code >= 0 else None,
                signal=signame(-code) if code < 0 else None,
                hint="an M is forked from the node's template: a module it preloaded (Executor(preload=), "
                "or one a task imported) or the environment ends a forked process; the node's stderr "
                "may say more",
            )
            self.fail_queued(lost)
        return True

    def fail_queued(self, err: WorkerLost) -> None:
        """No M lives to run anything: every root fails with ``err``, queued
        or started (those wait in a P's ring, or a retired M's; should an M
        start after all and run one, its result is a duplicate the client
        drops)."""
        payload = error_payload(err, " (the coordinator)")
        for tid, root in list(self.roots.items()):
            del self.roots[tid]
            self.count(Counter.WORKERLOST)
            self.reply(root.client, wire.Results([(tid, wire.RAISED, payload)]))
        self.grq = collections.deque((tid, h) for tid, h in self.grq if h)  # (spilled Gs: in node memory)

    def starts_failing(self) -> bool:
        """START_FAILURES_MAX Ms in a row died before their Hello."""
        return self.start_failures >= START_FAILURES_MAX

    def starting_held(self, now: float) -> bool:
        """Ms keep dying as they start: ask for none before start_retry_at."""
        return self.starts_failing() and now < self.start_retry_at

    def fence(self, m: int) -> int:
        """Take dead M m's P, if it held one, under a new epoch; the P stays
        out of the idle list until recovery is done.  Returns it, or -1."""
        node = self.nm.node
        for p in range(self.nprocs):
            lease = self.ps[p]
            while True:
                seen = node.p_state(p)
                if seen[1] != m and (lease.m != m or seen[1] != -1):
                    break  # not its P (or our table is behind a hand-off: the word wins)
                lease.epoch = max(lease.epoch, seen[2]) + 1
                if node.p_cas(p, seen, (PStatus.IDLE, -1, lease.epoch)):
                    if lease.m != m:  # sysmon retook it meanwhile, or it was idle in our table
                        with contextlib.suppress(ValueError):
                            self.idle_ps.remove(p)
                            node.sched_add(Counter.NPIDLE, -1)
                    lease.m = m  # make_idle gives it back
                    return p
        return -1

    def recover_offers(self, m: int, recovery: runq.Recovery) -> None:
        """Dead M ``m``'s offers it took and had not queued (gmpd.offer):
        the G made for one that never reached a queue is freed, and the task
        runs the usual way (its Submit is unread: WITHDRAWN) or again (it is
        read: the root is started and held nowhere, for the census).  A
        result it was writing into a slot is given up."""
        node = self.nm.node
        node.offer_unclaim(m)
        for slot, seq, _m, tid, state in offer.held(node, (Offer.TAKEN, Offer.ACKED), m):
            if self.accepted(recovery, (tid, 0)):  # its G is queued: the queue holds it
                new = (seq, m, Offer.QUEUED) if state == Offer.TAKEN else (seq, -1, Offer.FREE)
            else:
                for h in self.root_gs(tid):
                    if node.g_info(h)[0] == GState.RUNNABLE:
                        node.g_free(h)
                new = (seq, -1, Offer.WITHDRAWN) if state == Offer.TAKEN else (seq, -1, Offer.FREE)
            node.offer_cas(slot, (seq, m, state), new)

    def withdraw_lost_offers(self, m: int, freed: set[int]) -> None:
        """After recovery: a QUEUED offer (its Submit unread) whose run died
        here (``freed``: its G was freed), or dead M ``m``'s own whose G is
        gone (its result may have died in m's socket), runs the usual way."""
        node = self.nm.node
        for slot, seq, owner, tid, _state in offer.held(node, (Offer.QUEUED,)):
            if tid in freed or (owner == m and not self.root_live(tid)):
                node.offer_cas(slot, (seq, owner, Offer.QUEUED), (seq, -1, Offer.WITHDRAWN))

    def root_live(self, tid: int) -> bool:
        """Whether a root G of task ``tid`` is queued, or run by a live M."""
        node = self.nm.node
        for h in self.root_gs(tid):
            g = node.g_info(h)
            state, owner = g[0], g[8] - 1
            if state == GState.RUNNABLE or (state == GState.RUNNING and owner in self.ms):
                return True
        return False

    def root_gs(self, tid: int) -> list[int]:
        """Handles of the root Gs of task ``tid`` in every arena."""
        node = self.nm.node
        return [h for p in range(self.nprocs) for h in node.g_scan(p) if node.g_info(h)[2:4] == (0, tid)]

    def recover_gs(self, info: MInfo, recovery: runq.Recovery, lost: WorkerLost, doom: Doom) -> None:
        node = self.nm.node
        m = info.m
        self.recover_offers(m, recovery)
        g: tuple[int, ...]
        live: dict[int, tuple[int, ...]] = {}  # every RUNNABLE or RUNNING G of every arena
        for p in range(self.nprocs):
            for h in node.g_scan(p):
                live[h] = node.g_info(h)
        # 1. Global batch items it never queued.  Batches are queued in the
        #    order they came, so after the last recorded item comes one that
        #    may be in flight (the op record tells), then none.
        seq, placed = node.m_placing(m)
        items = [item for s, batch in sorted(info.batches.items()) if s >= seq for item in batch]
        done = placed if info.batches.get(seq) else 0
        unplaced = items[done:]
        if unplaced and self.accepted(recovery, unplaced[0]):
            unplaced = unplaced[1:]
        requeue = {tid for tid, _h in unplaced if tid}
        self.grq.extendleft((0, h) for tid, h in reversed(unplaced) if not tid)
        # 2. Gs it had taken out of every queue (not those its last Spill,
        #    acknowledged, already put in the global queue).
        running: dict[int, tuple[int, ...]] = {}
        spilled = (
            recovery.state == runq.OpState.HELD
            and recovery.kind in SPILL_KINDS
            and set(recovery.orphans) == info.spilled
        )
        for h in () if spilled else recovery.orphans:
            g = node.g_info(h)
            if g[0] == GState.RUNNABLE:
                self.grq.appendleft((0, h))
            elif g[0] == GState.RUNNING and g[8] == 0 and g[11] != 2:  # taken, not yet its (nor a joiner's)
                running[h] = g
        # 3. Gs it was running (its curg, the Gs it ran them inside) and root
        #    Gs whose results it had not sent: RUNNING and its own.  Nobody
        #    else writes such records, so the scan sees them whole.
        running.update((h, g) for h, g in live.items() if g[0] == GState.RUNNING and g[8] == m + 1)
        # The Gs it was executing when it died: curg and each one's outer.  A
        # root of its own that is not among them had finished (its result
        # died unsent): it runs again without being charged, and a timeout
        # is not its fault.
        executing, h = set(), node.m_info(m)[1]
        while h in running and h not in executing:
            executing.add(h)
            h = running[h][9]
        # Killed for a timeout: the slot names the root whose timeout it
        # was.  Other roots it was running (threads of the M, gmpd.m) run
        # again uncharged: not their timeout, not their fault.
        guilty = node.m_deadline_g(m) if doom == Doom.TIMEOUT else 0
        if guilty not in executing or running[guilty][2]:
            guilty = 0  # (not known: every timed root it ran fails, as before)
        freed: set[int] = set()  # roots whose runs died here
        for h, g in running.items():
            parent, tid = g[2], g[3]
            if parent == 0 and tid:
                node.g_free(h)
                freed.add(tid)
                if tid in info.stalled_tids:
                    continue  # queued again when it stalled
                if h not in executing or (guilty and h != guilty):
                    self.retry(tid, None)
                elif doom != Doom.TIMEOUT or not self.fail_timed_out(tid, lost):
                    self.retry(tid, lost)
            elif parent in running:
                node.g_free(h)  # its parent died too, and runs again from the start
            elif node.g_attempt(h) > self.retries:
                node.g_set_owner(h, -1)
                node.g_fail(h, wire.LOST)
            else:
                node.g_set_owner(h, -1)
                node.g_cas_state(h, GState.RUNNING, GState.RUNNABLE)
                self.grq.appendleft((0, h))
                self.count(Counter.RETRIED)
        # 4. Census: started roots that no queue, no live M and no batch in
        #    flight holds any more (results that died in its socket) run again.
        held = {tid for i in self.ms.values() for batch in i.batches.values() for tid, _h in batch}
        # (An offer taken and acknowledged, its G not made yet, is held by its M.)
        taken = offer.held(node, (Offer.TAKEN, Offer.ACKED))
        held.update(tid for _slot, _seq, owner, tid, _state in taken if owner in self.ms)
        for h, g in live.items():
            tid = g[3]
            if g[2] != 0 or not tid or h in running:
                continue
            if g[0] == GState.RUNNABLE and tid in requeue:
                node.g_free(h)  # created, never queued: the batch item runs again
            elif g[0] == GState.RUNNABLE or (g[0] == GState.RUNNING and g[8] - 1 in self.ms):
                held.add(tid)
        for tid in requeue:
            self.retry(tid, None)
        for tid, root in list(self.roots.items()):
            if root.started and tid not in held:
                self.retry(tid, None)
        self.withdraw_lost_offers(m, freed)

    def accepted(self, recovery: runq.Recovery, item: tuple[int, int]) -> bool:
        """Whether the batch item the dead M was queueing reached a queue
        (its last op was the put of it: the put finished, or recovery made
        it an orphan, re-queued in step 2)."""
        tid, h = item
        if recovery.kind not in runq.PUT_KINDS:
            return False
        if h:
            return recovery.arg == h
        g = self.nm.node.g_info(recovery.arg) if recovery.arg else None
        return g is not None and g[2] == 0 and g[3] == tid

    def retry(self, tid: int, lost: WorkerLost | None) -> None:
        """Queue root ``tid`` again, first in line; ``lost`` (the run died
        with its M) counts an attempt, and past the budget fails the task."""
        root = self.roots.get(tid)
        if root is None or not root.started:
            return  # finished, cancelled, or queued already
        if lost is not None:
            root.attempts += 1
            if root.attempts > root.retries:
                lost.attempts = root.attempts
                del self.roots[tid]
                self.count(Counter.WORKERLOST)
                err = WorkerLost(
                    f"{lost} (attempt {root.attempts} of {root.retries + 1}; {lost.hint})",
                    m=lost.m,
                    pid=lost.pid,
                    exitcode=lost.exitcode,
                    signal=lost.signal,
                    attempts=root.attempts,
                    hint=lost.hint,
                )
                payload = error_payload(err, " (the coordinator, after the M died)")
                self.reply(root.client, wire.Results([(tid, wire.RAISED, payload)]))
                return
        root.started = False
        self.grq.appendleft((tid, 0))
        self.count(Counter.RETRIED)

    def fail_timed_out(self, tid: int, lost: WorkerLost) -> bool:
        """Root ``tid`` ran on an M sysmon killed for a task's timeout: a task
        with a timeout that fails on it (payload prefix T, gmpd.executor)
        fails now with TaskTimeout; True if it did."""
        root = self.roots.get(tid)
        if root is None or root.payload[:1] != b"T":
            return False  # no timeout of its own, or one that is retried
        seconds = int.from_bytes(root.payload[1:5], "little") / 1000
        err = TaskTimeout(
            f"the task ran past its timeout of {seconds:g} s (or an import while unpickling it past "
            f"[m] import_grace_ms): its M (pid {lost.pid}) was killed "
            f"and replaced; raise the timeout, or pass retry_timeouts=True to run it again"
        )
        del self.roots[tid]
        self.reply(
            root.client, wire.Results([(tid, wire.RAISED, error_payload(err, " (sysmon's watchdog)"))])
        )
        return True

    def free_slot(self, m: int) -> None:
        """Recovery of slot m is done: the node agent may start an M there
        (it does at once in one of the first GOMAXPROCS + 1: one coming)."""
        if self.tell_node(f"r {m}".encode()) and m <= self.nprocs:
            self.asked.append(time.monotonic() + STARTING_S)

    # ---- the node and its agent -------------------------------------------
    #
    # The node agent connects to a unix socket in the cluster's run directory
    # and names its node memory; the kernel tells us its pid (SO_PEERCRED),
    # which must be a child of our client and the creator of that memory.
    # Records on the link (SOCK_SEQPACKET, one per send): from the agent
    # "node <segment>" then "exit <m> <pid> <status>" per M that exited; to
    # it "ok", "m" (start one more M) and "r <m>" (dead M m is recovered, its
    # slot is free).  The link closing means the agent died (or shut down).

    def wait_node(self) -> NodeMemory:
        """Block until a node agent connects and checks out.  Nobody is
        served meanwhile: frames wait in ZeroMQ's queues."""
        poller = select.poll()
        poller.register(self.listener, select.POLLIN)
        poller.register(self.lifeline_fd, select.POLLIN)
        deadline = time.monotonic() + NODE_WAIT_S
        while (left := deadline - time.monotonic()) > 0:
            ready = {fd for fd, _event in poller.poll(left * 1000)}
            if self.lifeline_fd in ready:
                break
            if self.listener.fileno() in ready:
                conn, _addr = self.listener.accept()
                nm = self.check_node(conn)
                if nm is not None:
                    conn.setblocking(False)
                    self.link = conn
                    return nm
                conn.close()
        raise NoNode("no node agent connected (or the client exited)")

    def check_node(self, conn: socket.socket) -> NodeMemory | None:
        """The agent's first record, checked: its memory must exist, be
        created by it, and have our GOMAXPROCS; it must be our client's child."""
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid, uid, _gid = struct.unpack("3i", creds)
        try:
            conn.settimeout(NODE_HELLO_S)
            kind, name = conn.recv(4096).decode().split()
            with open(f"/proc/{pid}/stat") as f:
                parent = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError):
            return None
        if kind != "node" or uid != os.getuid() or parent != self.lifeline or f"-{pid}-node-" not in name:
            return None
        try:
            nm = NodeMemory.attach(name)
        except SegmentError:
            return None
        if nm.node.nprocs != self.nprocs or nm.node.creator_pid != pid:
            nm.close()
            return None
        try:
            conn.send(b"ok")
        except OSError:
            nm.close()
            return None
        self.node_pid = pid
        return nm

    def attach(self, nm: NodeMemory) -> None:
        """Run on node ``nm``: every P idle under a fresh lease table; the
        counters of a lost node carry over, so statistics() adds up."""
        old = getattr(self, "nm", None)
        self.nm = nm
        self.spin_excess = 0  # (repair_spinning's last look was at the lost node's gauge)
        if old is not None:
            before, now = old.node.sched(), nm.node.sched()
            for c in Counter:
                if c == Counter.RUNNING_MAX:
                    nm.node.sched_add(c, max(0, before[c] - now[c]))
                elif c not in GAUGES:
                    nm.node.sched_add(c, before[c])
            self.old_nodes.append(old)  # unmapped at exit: a late read must not fault
        self.ps = [PLease(p) for p in range(self.nprocs)]
        self.idle_ps = collections.deque(range(self.nprocs))
        self.grq_published = 0
        nm.node.sched_add(Counter.NPIDLE, self.nprocs)
        # The agent starts GOMAXPROCS + 1 Ms on its own (NodeAgent.run):
        # they are coming.  Uncounted, the first Submit found no M parked and
        # asked for more; a noop flood on a fresh executor ran ~10% slower
        # beside their starts (5 Ms instead of 3).
        self.asked.extend([time.monotonic() + STARTING_S] * (self.nprocs + 1))

    def tell_node(self, record: bytes) -> bool:
        if self.link is None:
            return False
        try:
            self.link.send(record, socket.MSG_DONTWAIT)
        except OSError:
            return False
        return True

    def read_link(self) -> bytes | None:
        """What the agent sent (records joined by newlines); None: it is gone."""
        assert self.link is not None
        records: list[bytes] = []
        while True:
            try:
                record = self.link.recv(65536)
            except BlockingIOError:
                return b"\n".join(records)
            except OSError:
                return None
            if not record:
                return None
            records.append(record)

    def on_node_lost(self) -> None:
        """The node agent died.  Its Ms, template and sysmon exit on their
        own (they watch it) and its memory goes with it, but every root
        task's payload is here: each root an M had taken runs again on the
        next node (Gs spawned inside tasks are rebuilt when their root runs
        again).  The roots its Ms were executing are charged an attempt: a
        task that kills its node must not do so forever."""
        assert self.link is not None
        self.link.close()
        self.link = None
        self.count(Counter.NODESLOST)
        executing = self.executing_roots()
        self.grq = collections.deque(item for item in self.grq if not item[1])  # the dead node's Gs
        self.grq.extend((tid, 0) for tid in self.deferred if tid in self.roots)  # (its offers are void)
        self.deferred.clear()
        self.held_slots, self.start_failures = [], 0  # (the next node's slots, its own starts)
        for tid, root in list(self.roots.items()):
            if not root.started:
                continue
            lost = None
            if tid in executing:
                m, pid = executing[tid]
                lost = WorkerLost(
                    f"M {m} (pid {pid}) was lost with its node agent (pid {self.node_pid}) "
                    f"while running this task",
                    m=m,
                    pid=pid,
                    hint="the node agent died (killed?): its Ms exit with it",
                )
            self.retry(tid, lost)
        self.gone.update(self.by_ident)
        self.gone.update(info.ident for info in self.ms.values())
        if self.sysmon is not None:
            self.gone.add(self.sysmon)
        self.ms.clear()
        self.by_ident.clear()
        self.want_p.clear()
        self.dead_pids.clear()
        self.sysmon = None
        self.asked.clear()
        self.starting.clear()

    def executing_roots(self) -> dict[int, tuple[int, int]]:
        """Root task id -> (M, pid) for each root an M of this node was
        executing: its curg, the Gs it runs them inside, up to their roots.
        (Its Ms may still be exiting: records that moved are skipped.)"""
        node, found = self.nm.node, {}
        for m in range(node.nms - 1):
            _state, h, _p, pid, *_ = node.m_info(m)
            try:
                for _ in range(MAX_DEPTH):  # curg, then each one's outer
                    if not h:
                        break
                    g = root = node.g_info(h)
                    for _ in range(MAX_DEPTH):  # up the parents to its root
                        if not root[2]:
                            break
                        root = node.g_info(root[2])
                    if not root[2] and root[3]:
                        found[root[3]] = (m, pid)
                    h = g[9]
            except ValueError:
                continue
        return found

    # ---- handlers ---------------------------------------------------------

    def on_hello(self, ident: bytes, msg: wire.Hello) -> None:
        """A peer says who it is; each claim is checked against what only
        that peer can know (its pid, written in node memory by itself, or
        the client's pid we were started for), so a stray or forged frame
        cannot pose as an M, sysmon or the client."""
        node = self.nm.node
        if msg.role == "client" and msg.reply_to and msg.pid == self.lifeline:
            if ident not in self.clients:
                sock = self.ctx.socket(zmq.PUSH)
                sock.setsockopt(zmq.LINGER, 0)
                sock.setsockopt(zmq.SNDHWM, 0)  # a client that stalls a while must not lose a Cancelled
                try:
                    sock.connect(msg.reply_to)
                except zmq.ZMQError:
                    sock.close(0)
                    self.count(Counter.BADFRAMES)
                    return
                self.clients[ident] = sock
            self.reply(ident, wire.Welcome(self.nprocs))
        elif msg.role == "m" and 0 <= msg.m < node.nms - 1 and msg.pid not in self.dead_pids:
            if node.m_info(msg.m)[3] != msg.pid:
                self.count(Counter.BADFRAMES)
                return
            self.starting.pop(msg.pid, None)
            self.start_failures = 0
            info = self.ms.get(msg.m)
            if info is None or info.pid != msg.pid:
                info = self.ms[msg.m] = MInfo(msg.m, ident, msg.pid)
            self.by_ident[ident] = msg.m
        elif msg.role == "sysmon" and msg.pid == node.m_info(node.nms - 1)[3]:
            self.sysmon = ident  # a restarted sysmon replaces the old one
        else:
            self.count(Counter.BADFRAMES)

    def on_submit(self, ident: bytes, msg: wire.Submit) -> None:
        if self.deferred:
            # An offer still deferred was submitted before these: it is
            # settled first (taken, or queued ahead of them).  Left to its
            # wait, a burst's first task was queued after the rest of the
            # burst and ran last (seen in test_standby, 1 run in ~15).
            self.settle_deferred(math.inf)
        offered: dict[int, tuple[int, int]] = {}
        if msg.offers and self.link is not None:  # (a lost node's offers are void: its roots ran again)
            here = self.nm.node.creator_pid
            offered = {
                tid: (slot, seq) for tid, slot, seq, nd in msg.offers if nd == here and slot < OFFER_SLOTS
            }
        for tid, payload in msg.tasks:
            root = self.roots[tid] = Root(ident, payload, self.retries)
            if tid not in offered:
                self.grq.append((tid, 0))
            elif offer.untaken(self.nm.node, *offered[tid]) and self.m_looking():
                # (On 2 cores the Submit often comes first: the M that is to
                # take the offer is still sending its last result.)
                self.deferred[tid] = (*offered[tid], time.monotonic() + OFFER_WAIT_S)
            else:
                self.place_offered(tid, root, *offered[tid])
        for tid, retries, _timeout_ms in msg.options:
            if tid in self.roots:
                self.roots[tid].retries = retries
        self.stats.submitted += len(msg.tasks)

    def place_offered(self, tid: int, root: Root, slot: int, seq: int) -> None:
        """Settle offer (slot, seq) of root ``tid``: started on the M that
        took it, or queued as usual."""
        took = offer.settle(self.nm.node, slot, seq)
        if took < 0:
            self.grq.append((tid, 0))
            return
        self.mark_started(tid, root)
        info = self.ms.get(took)
        if info is not None and info.waiting is not None:
            # It runs the task: answer its long-poll now, so that no batch
            # waits in its socket behind the task.
            self.answer_empty(info)

    def m_looking(self) -> bool:
        """Whether an M holding a P is between Gs (it looks at the offers
        before it asks us for work) or spinning."""
        for m in self.ms:
            state, _curg, p, *_ = self.nm.node.m_info(m)
            if p >= 0 and state in (MState.IDLE, MState.SPINNING):
                return True
        return False

    def settle_deferred(self, now: float, tids: list[int] | None = None) -> None:
        """Settle the deferred offers an M took, those past their wait,
        and ``tids`` (a Cancel must know whether an M has them)."""
        node = self.nm.node
        for tid, (slot, seq, until) in list(self.deferred.items()):
            if now < until and offer.untaken(node, slot, seq) and (tids is None or tid not in tids):
                continue
            del self.deferred[tid]
            root = self.roots.get(tid)
            if root is not None:
                self.place_offered(tid, root, slot, seq)
            else:  # finished (its M took it and the client's Finished came first): free the slot
                offer.settle(node, slot, seq)

    def on_cancel(self, ident: bytes, msg: wire.Cancel) -> None:
        """Withdraw the tasks no M has taken; the client waits for the answer."""
        if self.deferred:
            self.settle_deferred(time.monotonic(), msg.tids)
        done, refused = [], []
        for tid in msg.tids:
            root = self.roots.get(tid)
            if root is not None and not root.taken and root.client == ident:
                del self.roots[tid]
                done.append(tid)
            else:
                refused.append(tid)
        self.stats.cancelled += len(done)
        self.reply(ident, wire.Cancelled(done, refused))

    def on_watch(self, ident: bytes) -> None:
        """The client's user code asked a future whether it runs: say which
        of its tasks Ms have now, and send Started for those taken later."""
        if self.deferred:
            self.settle_deferred(time.monotonic())  # an offer an M took is started
        self.watching.add(ident)
        self.reply(
            ident,
            wire.Watching([tid for tid, root in self.roots.items() if root.client == ident and root.started]),
        )

    def on_finished(self, ident: bytes, tids: list[int]) -> None:
        """These results reached their client: forget the root tasks."""
        for tid in tids:
            root = self.roots.get(tid)
            if root is not None and root.client == ident:
                del self.roots[tid]
                self.stats.completed += 1

    def on_m_message(self, info: MInfo, msg: wire.Message) -> None:
        self.forget_placed(info)
        if isinstance(msg, wire.LeaseRequest):
            if info.p >= 0:
                # If sysmon retook its P and the Retaken is still on the way,
                # act on it now: the M must not be re-sent a grant its P word
                # no longer honours.  Marked woken meanwhile, so the hand-off
                # this starts does not wake (and grant) the M asking: it
                # waits for one answer, the one below.
                info.woken = True
                self.retaken_meanwhile(self.ps[info.p])
            info.woken = False
            self.grant(info, msg.has_g)
        elif isinstance(msg, wire.GetWork | wire.Prefetch):
            if not self.lease_ok(info.m, msg.p, msg.epoch):
                self.send(info.ident, wire.Revoke(msg.p, msg.epoch))
                return
            self.ps[msg.p].expires = time.monotonic() + self.lease_ttl
            if isinstance(msg, wire.Prefetch):
                self.send(info.ident, wire.Work(*self.prefetched_batch(info, msg.max)))
                return
            if msg.wait_ms and not self.still_spinning(info):
                return
            if not self.grq:
                self.revoke_stale_prefetches(time.monotonic(), but=info)
            if self.grq or msg.wait_ms == 0:
                self.send(info.ident, wire.Work(*self.batch_for(info, msg.max)))
            else:
                info.waiting, info.deadline = msg, time.monotonic() + msg.wait_ms / 1000
        elif isinstance(msg, wire.Spill):
            self.grq.extend((0, h) for h in msg.handles)
            info.spilled = frozenset(msg.handles)
            self.send(info.ident, wire.Work(0, [], []))  # the M holds them until this comes
            self.stats.spilled += len(msg.handles)
        elif isinstance(msg, wire.Renew) and self.lease_ok(info.m, msg.p, msg.epoch):
            self.ps[msg.p].expires = time.monotonic() + self.lease_ttl
        elif isinstance(msg, wire.Release) and self.lease_ok(info.m, msg.p, msg.epoch):
            queued = not self.nm.node.runq_empty(msg.p)  # a recycled M leaves its ring behind
            self.make_idle(msg.p, front=queued)
            if queued:
                self.handoffp(msg.p)

    def dispatch(self, ident: bytes, frame: bytes) -> None:
        try:
            msg = wire.decode(frame)
        except wire.WireError:
            self.count(Counter.BADFRAMES)
            return
        if ident in self.gone:
            return  # an M or sysmon of a lost node, on its way out
        if isinstance(msg, wire.Hello):
            self.on_hello(ident, msg)
        elif isinstance(msg, wire.Finished) and ident in self.clients:
            self.on_finished(ident, msg.tids)
        elif isinstance(msg, wire.Submit) and ident in self.clients:
            self.on_submit(ident, msg)
        elif isinstance(msg, wire.Cancel) and ident in self.clients:
            self.on_cancel(ident, msg)
        elif isinstance(msg, wire.Watch) and ident in self.clients:
            self.on_watch(ident)
        elif isinstance(msg, wire.Bye) and ident in self.clients:
            self.running = False
        elif isinstance(msg, wire.Retaken) and ident == self.sysmon:
            self.on_retaken(msg)
        elif ident in self.by_ident and self.by_ident[ident] in self.ms:
            self.on_m_message(self.ms[self.by_ident[ident]], msg)
        else:
            self.count(Counter.BADFRAMES)  # well-formed but from the wrong peer

    # ---- loop -------------------------------------------------------------

    def trim_when_idle(self, now: float) -> None:
        """Give freed heap back to the kernel once a burst is over: bursts of
        50k-task frames leave glibc and pymalloc holding memory that no live
        object uses (measured: < 1 MiB of live objects, USS still growing)."""
        if self.roots or self.grq:
            self.busy_since_trim = True
        elif self.busy_since_trim and now - self.last_trim > 1.0:
            self.busy_since_trim, self.last_trim = False, now
            self.roots = {}  # a dict keeps the table of its largest size; start afresh
            if _libc is not None:
                _libc.malloc_trim(0)

    def timers(self, now: float) -> None:
        for info in self.ms.values():
            if info.waiting is not None and info.deadline <= now:
                info.waiting = None
                self.send(info.ident, wire.Work(0, [], []))
        if self.out_started and now >= self.started_due:
            self.send_started()
        if self.idle_ps and self.revoke_stale_prefetches(now):
            self.serve_waiters()
            self.wakep()
        if now >= self.next_slow_timer:
            self.next_slow_timer = now + self.slow_timer_s
            self.expire_leases(now)
            self.repair_spinning()
            self.trim_when_idle(now)
        while self.held_slots and self.held_slots[0][0] <= now:
            self.free_slot(heapq.heappop(self.held_slots)[1])

    def poll_timeout(self, now: float) -> int:
        """Milliseconds until a timer is due.  An idle coordinator sleeps
        its slow timer (it used 2% of a core polling every 2 ms, CPU that a
        2-core farm misses); queued work with an idle P keeps it at 1 ms, in
        case an M that was between releasing its P and parking missed wakep."""
        due = self.next_slow_timer
        if self.held_slots:
            due = min(due, self.held_slots[0][0])
        if self.out_started:
            due = min(due, self.started_due)
        for info in self.ms.values():
            if info.waiting is not None:
                due = min(due, info.deadline)
        if self.starts_failing():
            # Ms die as they start: no M comes before start_retry_at.
            due = min(due, max(self.start_retry_at, now + START_POLL_S))
        elif self.work_beside_idle_p():
            due = min(due, now + 0.001)
        if self.idle_ps:
            for info in self.ms.values():
                if info.prefetched is not None:
                    due = min(due, info.prefetched[1] + PREFETCH_HOLD_S)
        for _slot, _seq, until in self.deferred.values():
            due = min(due, until)
        return max(0, math.ceil((due - now) * 1000))

    def run(self) -> None:
        self.attach(self.wait_node())
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        lifeline = self.lifeline_fd
        poller.register(lifeline, zmq.POLLIN)
        assert self.link is not None
        link = self.link.fileno()
        poller.register(link, zmq.POLLIN)
        while self.running:
            events = dict(poller.poll(self.poll_timeout(time.monotonic())))
            if lifeline in events:
                break  # the client is gone: the whole cluster goes
            polled = self.sock in events
            for n in range(1000):  # drain what is there, then act on it
                if not wire.drain_more(self.sock, n, polled):
                    break
                try:
                    ident, frame = self.sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                except ValueError:  # not exactly two frames
                    self.count(Counter.BADFRAMES)
                    continue
                self.dispatch(ident, frame)
            if link in events:  # after the socket: a dead M's last messages count
                data = self.read_link()
                if data is None:  # the node agent died: run its tasks on the next one
                    poller.unregister(link)
                    self.on_node_lost()
                    try:
                        self.attach(self.wait_node())
                    except NoNode:
                        break
                    assert self.link is not None
                    link = self.link.fileno()
                    poller.register(link, zmq.POLLIN)
                    continue
                self.on_node_records(data)
            if self.deferred:
                self.settle_deferred(time.monotonic())
            self.serve_waiters()
            self.wakep()
            self.timers(time.monotonic())
            if len(self.grq) != self.grq_published:  # for sysmon's schedtrace
                self.nm.node.sched_add(Counter.GRQLEN, len(self.grq) - self.grq_published)
                self.grq_published = len(self.grq)
        for info in self.ms.values():
            self.send(info.ident, wire.Bye("shutdown"))
            # A parked M made WAKING asks for a P at once and reads the Bye
            # instead (merely woken, it could park again before it came).
            self.nm.node.m_cas_state(info.m, MState.PARKED, MState.WAKING)
            self.nm.node.m_cas_state(info.m, MState.ASKING, MState.WAKING)
            self.nm.node.wake(info.m)

    def close(self) -> None:
        for sock in self.clients.values():
            sock.close(0)
        self.sock.close(0)
        self.ctx.term()
        if self.link is not None:
            self.link.close()  # the node agent sees it and shuts its node down
        self.listener.close()
        os.close(self.lifeline_fd)
        for nm in [*self.old_nodes, getattr(self, "nm", None)]:
            if nm is not None:
                nm.close()


def main(argv: list[str]) -> int:
    """``python -m gmpd.coordinator RUNDIR NPROCS CLIENT_PID LEASE_TTL RETRIES``,
    started by the client (embedded mode)."""
    rundir, nprocs, client, lease_ttl, retries = (
        argv[0],
        int(argv[1]),
        int(argv[2]),
        float(argv[3]),
        int(argv[4]),
    )
    os.setsid()  # the user's Ctrl-C reaches the client, which shuts us down
    try:
        endpoint, node = f"ipc://{rundir}/coord", f"{rundir}/node"
        coord = Coordinator(endpoint, nprocs, node, lease_ttl, client, retries=retries)
        try:
            coord.run()
        except NoNode:
            pass  # the client exited, or its node agent never came: nothing to serve
        finally:
            with contextlib.suppress(Exception):
                coord.close()
    except ProcessLookupError:
        pass  # the client died before we could watch it
    finally:
        # The run directory's sockets serve nobody once we are gone, and a
        # client that ended without its own cleanup (killed; or its daemon
        # thread cut short at exit after shutdown(wait=False)) leaves them.
        shutil.rmtree(rundir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
