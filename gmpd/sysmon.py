"""sysmon: one process per node, Go's sysmon across processes.

It holds no P and runs no task code, in its own process so that it works
when every M is stuck.  The node agent starts it and starts it again if it
dies.  Its loop is Go's (reference §4): sleep ``min_us`` (20 µs), doubling
once ``idle_rounds`` (50) rounds in a row retook nothing, up to ``max_us``
(10 ms); a retake resets it.  The values are in configs/gmpd.toml.  When every P is idle it deep-sleeps on its
futex (the last M slot of the node is its park word) until an M enters a
syscall, which wakes it (``sysmonwait`` in the node counters says it sleeps);
its backed-off sleeps (longer than ``syscall_us``) are such parks too.  Idle
rounds count time in ``min_us`` units: a Python round oversleeps 20 us
several times over.

Quiet rounds run in C (native/sysmon.c, ``quiet``): once backed off, with
no P in a syscall and no M looking asleep, the loop of naps and looks moves
into one native call that returns as soon as a look finds work for the
Python round (a syscall, a G past its slice, an M asleep, a passed
deadline, every P idle, the node agent gone) or when checkdead is due
(every 100 ms, while an M waits on a child: without one it has nothing to
find).  A round in Python cost 100-200 us of CPU, cold after the Ms'
tasks, ~100 times a second while every P runs (20 ms of a farm's second;
~9 in C, mostly the wake-ups themselves; ~3.5 since checkdead's idle
looks stay in C, and ~2.5 since a look reads an M thread's /proc wchan,
not its stat: see ``probe_wchan``).

``retake`` reads each P's state word and ticks in node shared memory:

- a P whose ``schedtick`` has not moved for 10 ms (Go's forcePreemptNS)
  gets its preempt flag, and an idle P may steal its queue at once;
- a P in SYSCALL whose ``syscalltick`` has not moved since the last round
  (or whose call, stamped by its M at entry, had lasted a ``min_us`` tick
  already when first seen) is retaken (CAS on its state word, epoch + 1)
  unless its run queue is empty, another M is spinning or a P is idle,
  and the syscall is under 10 ms old (Go's rule: nothing would run on it
  yet);
- then ``handoffp``: sysmon tells the coordinator (``Retaken``), which owns
  the lease table, and the coordinator gives the P to the M that came back
  from a syscall first, or wakes an idle M if the P or the global queue has
  work.  The M in the syscall finds its P gone when it returns
  (``exitsyscall`` fails its CAS) and asks for any idle P, or parks.

Unmarked blocking (a task calls time.sleep or reads a pipe without
gmpd.syscall): ``detect_blocked`` reads the M's main thread in
/proc/PID/task/PID/stat (a kept-open file, ~4 µs a read): asleep (S or D)
on two looks at least 1 ms apart, with no CPU tick gained and the same G
and schedtick, it is treated as a syscall that began at the first look:
sysmon CASes the M's state RUNNING -> ASLEEP (so a wake-up that raced us
wins), drops the M from RUNNING, CASes the P RUNNING -> SYSCALL and
retakes it at once.  The M claims the mark by CAS at its next scheduling
point and gives the count back then.

GOMAXPROCS invariant: an M counts as running task code (``RUNNING``) only
while it holds a P in RUNNING; entersyscall moves the P to SYSCALL and
drops the count before the call blocks, and exitsyscall's CAS back (or a
new grant) comes before the M runs Python task code again.  For unmarked
blocking that cannot be fully true: nothing runs between the blocking call
returning and the task's next bytecode.  The M notices at its next
scheduling point (gmpd.go, a child's result(), gmpd.syscall,
gmpd.checkpoint, or the end of the G) and gets a P there before going on;
until then it runs the task's own Python without a P and without being
counted.  So with unmarked blocking the bound is GOMAXPROCS plus the Ms
woken from such calls and not yet at a scheduling point; mark blocking
calls with gmpd.syscall() to keep it exact.

``GMPD_SCHEDTRACE=<ms>`` prints Go's ``SCHED`` line every <ms> to stderr;
``GMPD_SCHEDDETAIL=1`` adds the per-P and per-M lines (reference §6).

Runs in: the sysmon process (forked by the node agent).
"""

from __future__ import annotations

import array
import contextlib
import enum
import os
import select
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

import psutil
import zmq

from gmpd import config, wire
from gmpd.errors import SegmentError
from gmpd.runq import PStatus
from gmpd.sched import DEEP_SLEEP, FORCE_PREEMPT_S, Counter, Doom, MState
from gmpd.shm import NodeMemory

CHECKDEAD_S = 0.1  # checkdead looks this often; a deadlock shows on two looks


def sysmon_slot(node_nms: int) -> int:
    """The M slot whose park word sysmon sleeps on (no M uses it)."""
    return node_nms - 1


@dataclass
class PWatch:
    """sysmon's memory of one P (Go's sysmontick), and of the M on it."""

    schedtick: int = -1
    schedwhen: float = 0.0
    syscalltick: int = -1
    syscallwhen: float = 0.0
    running_when: float = 0.0  # the last round that saw it RUNNING
    asleep: tuple[int, int, int, int] | None = None  # (tid, curg, schedtick, cpu ticks) seen asleep
    asleep_when: float = 0.0
    standby_for: tuple[int, int] = (-1, -1)  # (M, syscalltick) whose standby thread we woke
    standby_when: float = 0.0


class Quiet(enum.IntEnum):
    """Why native/sysmon.c's quiet rounds returned (enum gmpd_quiet_reason)."""

    TIME = 0  # checkdead or memcheck is due
    SYSCALL = 1  # a P is in a syscall: retake
    PREEMPT = 2  # a G has had its P for FORCE_PREEMPT_S: preemptone
    ASLEEP = 3  # a running M's thread sleeps: detect_blocked
    NOFD = 4  # a running M whose /proc file is not open yet
    DEADLINE = 5  # a task's deadline passed: the watchdog
    IDLE = 6  # every P is idle: the deep sleep
    LIFELINE = 7  # the node agent exited


WATCHDOG_DOOMS = (Doom.NONE, Doom.MEMORY)  # a deadline the watchdog acts on (not one of an M doomed already)
QUIET_DOOMS = sum(1 << d for d in WATCHDOG_DOOMS)

UNMARKED_MIN_S = 0.001  # two looks at least this far apart (the 1 ms)
# A standby thread woken for a P in a syscall has this long to take it
# before the P is retaken and handed to another M (it takes ~0.1 ms).
STANDBY_WAIT_S = 0.01
WATCHDOG_S = 0.005  # task deadlines are checked this often
WCHAN_TRIES = 100  # Python rounds that look for a sleeping node agent in /proc wchan (probe_wchan)
WCHAN_MISSES = 3  # marks in a row whose M's wchan said "0" (runnable) before the looks go back to stat
# Without an M waiting on a child, quiet runs skip checkdead's looks, but
# return for a Python round (stat's look at each running M, the watchdog,
# pruning) at least this often.
QUIET_MAX_S = 1.0
MEMCHECK_S = 0.1  # M memory (RSS) is read this often, when a limit is set


class Sysmon:
    def __init__(
        self, nm: NodeMemory, endpoint: str, trace_ms: int = 0, detail: bool = False, agent: int = 0
    ) -> None:
        self.nm, self.node = nm, nm.node
        self.slot = sysmon_slot(self.node.nms)
        self.trace_ms, self.detail = trace_ms, detail
        conf = config.load()["sysmon"]
        self.min_us, self.max_us, self.idle_rounds = conf["min_us"], conf["max_us"], conf["idle_rounds"]
        self.grace_s, self.deep_sleep_s = conf["syscall_grace_ms"] / 1000, conf["deep_sleep_ms"] / 1000
        self.syscall_us = conf["syscall_us"]
        self.pending_retake = False  # the last round saw a P in a syscall, or an M asleep
        self.watch = [PWatch() for _ in range(self.node.nprocs)]
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)
        self.sock.send(wire.encode(wire.Hello("sysmon", os.getpid(), nm.name, self.slot)))
        self.start = time.monotonic()
        self.last_trace = self.last_checkdead = self.last_watchdog = self.last_memcheck = 0.0
        mconf = config.load()["m"]
        self.max_rss, self.rss_kill = mconf["max_rss_mb"] << 20, bool(mconf["rss_kill"])
        self.procs: dict[int, psutil.Process] = {}  # M pid -> its psutil handle
        self.joined: set[int] = set()
        self.procfds: dict[int, int] = {}  # M thread id -> its kept-open /proc stat file
        self.wchanfds: dict[int, int] = {}  # ...and its wchan file, once probe_wchan found them named
        self.wchan, self.wchan_tries, self.wchan_misses, self.agent = False, 0, 0, agent
        self.reported: set[int] = set()

    def retake(self, now: float) -> int:
        """Go's retake: take Ps from Ms that stayed in a syscall a full round."""
        node, n = self.node, 0
        self.pending_retake = False
        for p, pd in enumerate(self.watch):
            status, owner, epoch = node.p_state(p)
            schedtick, syscalltick, preempt = node.p_ticks(p)
            if status not in (PStatus.RUNNING, PStatus.SYSCALL):
                continue
            if status == PStatus.RUNNING:
                pd.running_when = now
            if pd.schedtick != schedtick:
                pd.schedtick, pd.schedwhen = schedtick, now
            elif status == PStatus.RUNNING and now - pd.schedwhen >= FORCE_PREEMPT_S and not preempt:
                self.preemptone(p)
            if status != PStatus.SYSCALL:
                # Asleep in an unmarked call: now a syscall, retaken by the next rounds.
                self.detect_blocked(p, pd, owner, epoch, now)
                self.pending_retake |= pd.asleep is not None or node.p_state(p)[0] == PStatus.SYSCALL
                continue
            self.pending_retake = True
            if pd.syscalltick != syscalltick:  # a new syscall since last round
                # Go gives it one sysmon tick (20 us at the quickest).  The M
                # stamped its entry: one that has lasted a tick already is
                # not given another (ours, in Python, are ~0.7 ms: a
                # hand-off waited that long for nothing).
                began = node.p_syscallwhen(p) / 1e9
                if began < pd.running_when:
                    # An older call's stamp: we moved the P to SYSCALL
                    # ourselves (mark_asleep), or missed the RUNNING in
                    # between; count from now, as before the stamp.
                    began = now
                pd.syscalltick, pd.syscallwhen = syscalltick, min(now, began)
                if now - began < self.min_us / 1e6:
                    continue
            sched = node.sched()
            idle_help = sched[Counter.NMSPINNING] + sched[Counter.NPIDLE] > 0
            if node.runq_empty(p) and idle_help and now - pd.syscallwhen < self.grace_s:
                continue
            mstate = node.m_info(owner)[0]
            if mstate in (MState.RUNNING, MState.IDLE, MState.SPINNING, MState.OWNING):
                # Its M claimed our mark before we moved the P (mark_asleep)
                # and runs on it, or spins on it: leave it; the M takes the P
                # word back to RUNNING at its next look (check_lease,
                # entersyscall, drop_p).  If
                # it blocks unmarked before that look, it is marked again
                # like any M (the P is in SYSCALL already), and retaken.
                self.detect_blocked(p, pd, owner, epoch, now)
                continue
            if self.standby(pd, owner, mstate, syscalltick, now):
                continue
            new_epoch = node.retake(p, (status, owner, epoch))
            if new_epoch is None:
                continue  # it left the syscall meanwhile
            n += 1
            node.sched_add(Counter.RETAKES, 1)
            self.sock.send(wire.encode(wire.Retaken(p, new_epoch)))  # handoffp, by the lease owner
        return n

    def standby(self, pd: PWatch, m: int, mstate: int, syscalltick: int, now: float) -> bool:
        """Go hands a P left in a syscall to another thread (handoffp,
        startm); an M here has standby threads for that (gmpd.m, takeover):
        wake one, which takes the P back under the same lease and runs its
        queue, no coordinator and no other process.  True while that is on
        its way; if the P is still in the same syscall STANDBY_WAIT_S later
        (the M stopped, or its standby could not take it), retake it."""
        if pd.standby_for == (m, syscalltick):
            return now - pd.standby_when < STANDBY_WAIT_S
        if mstate != MState.SYSCALL or not self.node.m_standby(m)[1]:
            return False  # (a join, a mark of ours, or no standby parked: the coordinator hands it on)
        pd.standby_for, pd.standby_when = (m, syscalltick), now
        self.node.standby_wake(m)
        return True

    def detect_blocked(self, p: int, pd: PWatch, m: int, epoch: int, now: float) -> None:
        """If M ``m`` on P ``p`` sleeps in an unmarked blocking call (two
        looks), mark it (mark_asleep): its P is then in SYSCALL, ready for
        retake.  See the module docstring for what this means for the
        GOMAXPROCS invariant."""
        node = self.node
        state, curg, _p, pid, *_ = node.m_info(m)
        tid = node.m_thread(m)[1]  # (the thread running its Gs: with standby threads, maybe not the main one)
        seen = self.thread_state(pid, tid) if state == MState.RUNNING and curg and pid else None
        if seen is None or seen[0] not in "SDTt":  # asleep, or stopped (SIGSTOP, a debugger)
            pd.asleep = None
            return
        look = (tid, curg, pd.schedtick, seen[1])
        if pd.asleep != look:
            pd.asleep, pd.asleep_when = look, now
            return
        if now - pd.asleep_when < UNMARKED_MIN_S:
            return
        pd.asleep = None
        if self.wchan:
            self.check_wchan(tid)
        self.mark_asleep(p, m, curg, epoch, pd.schedtick)

    def check_wchan(self, tid: int) -> None:
        """A thread stat saw asleep on two looks: its wchan should name
        where.  One that says "0" (runnable) WCHAN_MISSES marks in a row is
        one the quiet looks cannot see (its M hidden from us, say): back to
        stat for good.  (Once in a while a thread just asleep still reads
        "0": the kernel names none while it is on a run queue, which a
        sleeper can stay on briefly since EEVDF's delayed dequeue.)"""
        fd = self.wchanfds.get(tid)
        try:
            runnable = fd is not None and os.pread(fd, 64, 0) == b"0"
        except OSError:
            return
        self.wchan_misses = self.wchan_misses + 1 if runnable else 0
        if self.wchan_misses >= WCHAN_MISSES:
            self.wchan, self.wchan_tries = False, WCHAN_TRIES  # (no probe turns it on again)
            for fd in self.wchanfds.values():
                os.close(fd)
            self.wchanfds.clear()

    def mark_asleep(self, p: int, m: int, curg: int, epoch: int, schedtick: int) -> None:
        """Treat M ``m``, seen asleep running G ``curg``, as in a syscall:
        mark it ASLEEP (its count is ours until it claims the mark) and put
        its P in SYSCALL, unless it moved on before either CAS."""
        node = self.node
        if not node.m_cas_state(m, MState.RUNNING, MState.ASLEEP):
            return  # it woke and moved on
        node.sched_add(Counter.RUNNING, -1)  # it gives the count back when it claims the mark (resync)
        if node.m_info(m)[1] != curg or node.p_ticks(p)[0] != schedtick:
            # It woke and started another G between our last look and the CAS
            # (the state word carries no G): take the mark back, retake
            # nothing.  The M may have claimed it already (resync's CAS):
            # then it gives the count back, not us.
            if node.m_cas_state(m, MState.ASLEEP, MState.RUNNING):
                node.sched_add(Counter.RUNNING, 1)
            return
        node.sched_add(Counter.UNMARKED, 1)
        # If the P moved on meanwhile, the M finds its state at its next
        # scheduling point.  If the M claimed the mark before this CAS, the
        # P is in SYSCALL under an M that runs: retake leaves such a P alone
        # until the M is marked again (then the P is in SYSCALL already).
        node.p_cas(p, (PStatus.RUNNING, m, epoch), (PStatus.SYSCALL, m, epoch))

    def prune_procfds(self, tids: set[int]) -> None:
        """Close the /proc files of M threads that no longer run Gs (recycled
        Ms come and go; an M's standby threads take turns)."""
        for tid in [tid for tid in self.procfds if tid not in tids]:
            os.close(self.procfds.pop(tid))
        for tid in [tid for tid in self.wchanfds if tid not in tids]:
            os.close(self.wchanfds.pop(tid))

    def probe_wchan(self) -> None:
        """/proc/PID/task/TID/wchan says "0" while a thread is runnable and
        else names the kernel function it waits in (or stopped in): enough
        for the quiet looks (native/sysmon.c), at ~a third of the cost of
        stat's fifty fields (3.2 -> 1.3 us here, warm; ~9 us cold, ~200
        reads a second in a farm: a third of sysmon's CPU).  A kernel
        without symbol names, or a policy that hides them from us, says "0"
        for every thread, which would hide every unmarked block: the looks
        read wchan only once the node agent (another process of ours,
        mostly asleep in its poll) was seen named, within WCHAN_TRIES
        Python rounds; stat until then, or for good."""
        if self.wchan or self.wchan_tries >= WCHAN_TRIES or self.agent <= 0:
            return
        self.wchan_tries += 1
        try:
            with open(f"/proc/{self.agent}/task/{self.agent}/wchan", "rb") as f:
                self.wchan = f.read() not in (b"", b"0")
        except OSError:
            self.wchan_tries = WCHAN_TRIES  # (the agent gone, or no wchan here: stat)

    def thread_state(self, pid: int, tid: int) -> tuple[str, int] | None:
        """(state letter, utime + stime ticks) of the M's thread ``tid``."""
        fd = self.procfds.get(tid)
        try:
            if fd is None:
                fd = self.procfds[tid] = os.open(f"/proc/{pid}/task/{tid}/stat", os.O_RDONLY)
            if self.wchan and tid not in self.wchanfds:  # (for the quiet looks)
                self.wchanfds[tid] = os.open(f"/proc/{pid}/task/{tid}/wchan", os.O_RDONLY)
            fields = os.pread(fd, 1024, 0).rsplit(b")", 1)[1].split()
        except OSError:  # the M (or that thread) exited
            if fd is not None:
                os.close(self.procfds.pop(tid))
            if tid in self.wchanfds:
                os.close(self.wchanfds.pop(tid))
            return None
        return fields[0].decode(), int(fields[11]) + int(fields[12])

    def preemptone(self, p: int) -> None:
        """One G has had P ``p`` for Go's 10 ms slice.  A Python frame cannot
        be stopped from outside, so: flag the P (the task may call
        gmpd.checkpoint() to give its queue away) and let an idle P steal its
        queued Gs now, by waking a parked M, instead of waiting for a spinner."""
        node = self.node
        node.set_preempt(p, True)
        node.sched_add(Counter.PREEMPTS, 1)
        sched = node.sched()
        if node.runq_empty(p) or not sched[Counter.NPIDLE] or sched[Counter.NMSPINNING]:
            return
        for m in range(node.nms - 1):
            state, _curg, mp, pid, *_ = node.m_info(m)
            if (
                pid
                and mp < 0
                and state == MState.PARKED
                and node.m_cas_state(m, MState.PARKED, MState.WAKING)
            ):
                node.wake(m)
                node.sched_add(Counter.WAKEUPS, 1)
                return

    def checkdead(self, stale: bool = False) -> None:
        """Go's checkdead, for joins: when every live M is blocked waiting on
        a child (state JOIN) on two looks CHECKDEAD_S apart, no child can run
        (only Ms run Gs, and either every M slot is taken or nothing is
        queued for a new M to run): count a DEADLOCK and wake them; each M that was already
        waiting when it was counted fails its wait with gmpd.Deadlock, so the
        submitters get an error, not a hang.  An M in
        a gmpd.syscall() is SYSCALL, not JOIN: it may return, so it is not
        a deadlock."""
        node = self.node
        if stale:  # (the looks between saw no M waiting: no deadlock, none reported)
            self.joined, self.reported = set(), set()
        states = [node.m_info(m) for m in range(node.nms - 1)]
        idle = not node.sched()[Counter.GRQLEN] and all(node.runq_empty(p) for p in range(node.nprocs))
        blocked = [node.m_standby(m)[2] for m in range(node.nms - 1)]
        joined = {m for m, info in enumerate(states) if info[3] and self.joined_m(info[0], blocked[m], idle)}
        live = {m for m, info in enumerate(states) if info[3] and info[0] != MState.EXITING}
        self.prune_procfds({node.m_thread(m)[1] for m, info in enumerate(states) if info[3]})
        # No new M can help: every slot is taken by a live M (one starting,
        # or one retiring, leaves its slot's pid at 0 and rules this out), or
        # nothing is queued anywhere for it to run (the children waited on
        # sit in the stacks of the waiting Ms: join-helping ran them inline).
        full = len(live) == node.nms - 1
        dead = (full or idle) and joined == live and joined == self.joined
        self.joined = joined
        if dead and joined != self.reported:
            self.reported = joined  # one report per deadlock
            node.sched_add(Counter.DEADLOCK, 1)
            for m in joined:
                node.wake(m)
        elif not dead:
            self.reported = set()

    @staticmethod
    def joined_m(state: int, blocked: int, idle: bool) -> bool:
        """An M blocked on children, for checkdead: in a join, or (its
        standby threads, gmpd.m) a thread of it is and the thread holding
        it parked with nothing queued anywhere; never with a thread in a
        gmpd.syscall(), which may return (``blocked``: M.blocked)."""
        if blocked & 0xFFFF:
            return False
        return state == MState.JOIN or (idle and blocked >> 16 > 0 and state == MState.PARKED)

    def watchdog(self) -> None:
        """Kill the Ms whose task ran past its timeout (the M published the
        deadline; the doom word tells recovery why, so the task fails with
        gmpd.TaskTimeout or runs again, as its submitter asked)."""
        node, now_ns = self.node, time.monotonic_ns()
        for m in range(node.nms - 1):
            deadline, doom = node.m_doom(m)
            if deadline and now_ns > deadline and doom in WATCHDOG_DOOMS:
                pid = node.m_info(m)[3]
                if pid > 0:
                    node.m_set_doom(m, Doom.TIMEOUT)
                    node.sched_add(Counter.TIMEOUTS, 1)
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)

    def memcheck(self) -> None:
        """Ms over ``[m] max_rss_mb``: doom word MEMORY, so the M retires
        after its current task (it checks after each G) and the node agent
        starts a fresh one; with ``rss_kill`` killed at once instead (its
        task runs again elsewhere within its retry budget)."""
        node = self.node
        live = set()
        for m in range(node.nms - 1):
            state, _curg, _p, pid, *_ = node.m_info(m)
            if pid <= 0 or state == MState.EXITING or node.m_doom(m)[1] != Doom.NONE:
                continue
            live.add(pid)
            try:
                proc = self.procs.get(pid) or self.procs.setdefault(pid, psutil.Process(pid))
                rss = proc.memory_info().rss
            except psutil.Error:
                continue
            if rss > self.max_rss:
                node.m_set_doom(m, Doom.MEMORY)
                node.sched_add(Counter.MEMKILLS, 1)
                if self.rss_kill:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
        for pid in set(self.procs) - live:
            del self.procs[pid]

    def all_idle(self) -> bool:
        return all(self.node.p_state(p)[0] == PStatus.IDLE for p in range(self.node.nprocs))

    def deep_sleep(self) -> None:
        """Every P is idle: sleep until an M enters a syscall or takes a P (it wakes us)."""
        self.wakeable_sleep(self.deep_sleep_s, self.all_idle, DEEP_SLEEP)

    def nap(self, delay_us: int) -> None:
        """Sleep between rounds.  A backed-off sleep (longer than
        ``syscall_us``) is one an M entering a syscall cuts short: a retake
        otherwise waited up to ``max_us`` (10 ms) at each blocking call that
        came after a quiet spell, and the P's queue with it."""
        if delay_us <= self.syscall_us:
            time.sleep(delay_us / 1e6)
            return
        self.wakeable_sleep(delay_us / 1e6, lambda: not self.any_syscall(), 1)

    def any_syscall(self) -> bool:
        return any(self.node.p_state(p)[0] == PStatus.SYSCALL for p in range(self.node.nprocs))

    def wakeable_sleep(self, seconds: float, still: Callable[[], bool], how: int) -> None:
        """Park on our futex (Ms wake it while ``sysmonwait`` is set: ``how``
        is 1 for a backed-off sleep, which only a syscall cuts short, and
        DEEP_SLEEP for the deep one, which a P taken also ends), if
        ``still()`` holds after we said so: an M that entered its syscall
        before it could see the flag is caught by that re-check."""
        node = self.node
        seen = node.m_info(self.slot)[5]
        node.sched_add(Counter.SYSMONWAIT, how)
        try:
            if still():
                node.park(self.slot, seen, seconds)
            else:
                time.sleep(self.syscall_us / 1e6)
        finally:
            node.sched_add(Counter.SYSMONWAIT, -how)

    def quiet(self, delay_us: int, lifeline: int) -> tuple[Quiet, int]:
        """Leave the rounds to native/sysmon.c while nothing needs this one:
        it naps, looks at each P as ``retake`` and ``detect_blocked`` would,
        and returns when a look finds work for them (or the watchdog, the
        deep sleep, the lifeline), or when checkdead or memcheck is due.
        Returns why, and the length of its last nap."""
        until = self.last_checkdead + CHECKDEAD_S
        # checkdead's looks, every CHECKDEAD_S, stay in C while no M waits on
        # a child (they would find nothing: ~10 Python rounds a second, ~1 ms
        # of CPU); memcheck's are Python's own.
        period, limit = CHECKDEAD_S, self.last_checkdead + QUIET_MAX_S
        if self.max_rss:
            until, period = min(until, self.last_memcheck + MEMCHECK_S), 0.0
        watch = array.array("q")
        for pd in self.watch:
            pd.asleep = None  # its looks start again (a stale one only delays a mark)
            watch.extend((pd.schedtick, round(pd.schedwhen * 1e9), round(pd.running_when * 1e9)))
        files = self.wchanfds if self.wchan else self.procfds  # (a tid without one: NOFD, opened then)
        fds = array.array("i", [x for pid_fd in files.items() for x in pid_fd])
        why, _arg, nap_s = self.node.sysmon_quiet(
            self.slot, MState.RUNNING, MState.JOIN, QUIET_DOOMS, lifeline, delay_us / 1e6, self.max_us / 1e6,
            self.syscall_us / 1e6, until, period, limit, FORCE_PREEMPT_S, watch, fds, self.wchan,
        )  # fmt: skip
        for p, pd in enumerate(self.watch):
            pd.schedtick, pd.schedwhen, pd.running_when = (
                watch[3 * p],
                watch[3 * p + 1] / 1e9,
                watch[3 * p + 2] / 1e9,
            )
        return Quiet(why), round(nap_s * 1e6)

    def run(self, lifeline: int) -> None:
        delay_us, idle, last = self.min_us, 0, time.monotonic()
        while True:
            if idle == 0:
                delay_us = self.min_us
            elif idle > self.idle_rounds:
                # Doubling from the first sleep an M's syscall cuts short
                # (nap): the doubling rounds below it, 20 us to 0.5 ms, were
                # ~5 rounds a retake at ~100 us of CPU each (Go's cost ~1 us)
                # and caught nothing a woken backed-off sleep misses
                # (blocking_mix: sysmon 43-57 -> 38-46 ms of CPU a run).
                delay_us = min(max(2 * delay_us, 2 * self.syscall_us), self.max_us)
            if idle > self.idle_rounds and not self.pending_retake and self.trace_ms <= 0:
                why, delay_us = self.quiet(delay_us, lifeline)
                if why == Quiet.LIFELINE:
                    return
                if why == Quiet.DEADLINE:
                    self.last_watchdog = 0.0
            else:
                self.nap(delay_us)
                if not _alive(lifeline):
                    return
            now = time.monotonic()
            self.probe_wchan()
            if now - self.last_checkdead >= CHECKDEAD_S:  # also between deep sleeps: a
                # (deadlock leaves every P idle).  Looks a quiet run skipped
                # found no M waiting on a child: checkdead's memory of
                # the last look is stale then.
                stale = now - self.last_checkdead > 1.5 * CHECKDEAD_S
                self.last_checkdead = now
                self.checkdead(stale)
            if now - self.last_watchdog >= WATCHDOG_S:  # (a task blocked past its timeout holds no P)
                self.last_watchdog = now
                self.watchdog()
            if self.max_rss and now - self.last_memcheck >= MEMCHECK_S:
                self.last_memcheck = now
                self.memcheck()
            if self.trace_ms <= 0 and self.all_idle():
                self.deep_sleep()
                idle, delay_us, last = 0, self.min_us, time.monotonic()  # (the sleep is no idle rounds)
                continue
            # A round counts for the min_us rounds its sleep covered: Python
            # sleeps ~150 us when asked for 20 (and spends ~25 us of CPU
            # doing it), so 50 rounds would hold sysmon at the minimum for
            # 7.5 ms after each retake instead of Go's 1 ms.
            idle = 0 if self.retake(now) else idle + max(1, round((now - last) * 1e6 / self.min_us))
            last = now
            if self.pending_retake:  # a P waits in a syscall (or an M looks asleep): look again soon
                delay_us = min(delay_us, self.syscall_us)
            if self.trace_ms > 0 and now - self.last_trace >= self.trace_ms / 1000:
                self.last_trace = now
                schedtrace(self.nm, int((now - self.start) * 1000), self.detail, sys.stderr)

    def close(self) -> None:
        self.prune_procfds(set())
        self.sock.close(0)
        self.ctx.term()


def _alive(pidfd: int) -> bool:
    """False once the process behind ``pidfd`` (the node agent) has exited."""
    return not select.select([pidfd], [], [], 0)[0]


def schedtrace(nm: NodeMemory, ms: int, detail: bool, out: TextIO) -> None:
    """Go's schedtrace lines (reference §6), from node shared memory."""
    node = nm.node
    sched = node.sched()
    nprocs = node.nprocs
    ms_live = [m for m in range(node.nms - 1) if node.m_info(m)[3] and node.m_info(m)[0] != MState.EXITING]
    head = (
        f"SCHED {ms}ms: gomaxprocs={nprocs} idleprocs={sched[Counter.NPIDLE]} threads={len(ms_live)}"
        f" spinningthreads={sched[Counter.NMSPINNING]} needspinning=0 idlethreads={sched[Counter.NMIDLE]}"
        f" runqueue={sched[Counter.GRQLEN]}"
    )
    if not detail:
        lens = " ".join(str(node.runq_len(p)) for p in range(nprocs))
        ticks = "".join(f"{node.p_ticks(p)[0]} " for p in range(nprocs))
        out.write(f"{head} [ {lens} ] schedticks=[ {ticks}]\n")
        out.flush()
        return
    waiting = "true" if sched[Counter.SYSMONWAIT] >= DEEP_SLEEP else "false"  # (Go's: the deep sleep)
    lines = [f"{head} gcwaiting=false nmidlelocked=0 stopwait=0 sysmonwait={waiting}"]
    for p in range(nprocs):
        status, owner, _epoch = node.p_state(p)
        schedtick, syscalltick, _ = node.p_ticks(p)
        lines.append(
            f"  P{p}: status={status} schedtick={schedtick} syscalltick={syscalltick}"
            f" m={owner if owner >= 0 else 'nil'} runqsize={node.runq_len(p)} gfreecnt=0 timerslen=0"
        )
    for m in reversed(ms_live):  # Go prints allm newest first
        state, curg, p, *_ = node.m_info(m)
        lines.append(
            f"  M{m}: p={p if p >= 0 else 'nil'} curg={curg or 'nil'} mallocing=0 throwing=0 preemptoff="
            f" locks=0 dying=0 spinning={'true' if state == MState.SPINNING else 'false'}"
            f" blocked={'true' if state in (MState.PARKED, MState.SYSCALL, MState.ASLEEP) else 'false'}"
            " lockedg=nil"
        )
    out.write("\n".join(lines) + "\n")
    out.flush()


def main(endpoint: str, node_name: str, lifeline: int) -> int:
    """Entry point (a process forked by the node agent)."""
    trace_ms = int(os.environ.get("GMPD_SCHEDTRACE", "0") or 0)
    detail = os.environ.get("GMPD_SCHEDDETAIL", "") == "1"
    try:
        nm = NodeMemory.attach(node_name)
    except SegmentError:  # the node agent died as we started, and its memory went with it
        return 0
    nm.node.m_set(sysmon_slot(nm.node.nms), pid=os.getpid())  # for statistics and tests
    mon = Sysmon(nm, endpoint, trace_ms, detail, agent=lifeline)
    try:
        pidfd = os.pidfd_open(lifeline)
    except ProcessLookupError:  # the node agent died as we started
        mon.close()
        nm.close()
        return 0
    try:
        mon.run(pidfd)
    finally:
        os.close(pidfd)
        mon.close()
        nm.close()
    return 0
