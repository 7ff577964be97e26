"""Frozen statistics snapshots, read from node shared memory.

Runs in: the client (``Executor.statistics()``); reads only.
"""

from __future__ import annotations

from dataclasses import dataclass

from gmpd.runq import PStatus
from gmpd.sched import Counter, MState
from gmpd.shm import NodeMemory


@dataclass(frozen=True)
class PStats:
    p: int
    status: PStatus
    owner: int  # M index, -1 if idle
    epoch: int
    runqsize: int
    schedtick: int
    syscalltick: int
    arena_live_bytes: int  # G records and payloads live in this P's arena


@dataclass(frozen=True)
class MStats:
    m: int
    state: MState
    pid: int
    p: int
    curg: int
    tasks_run: int  # by this M slot since the cluster started (a recycled M's successor goes on counting)


@dataclass(frozen=True)
class Statistics:
    gomaxprocs: int
    ps: tuple[PStats, ...]
    ms: tuple[MStats, ...]
    tasks_submitted: int
    tasks_completed: int
    duplicate_results: int  # results the client dropped: a task run again after its M died had delivered
    steals: int
    stolen: int  # Gs moved by steals
    global_takes: int
    spins: int
    parks: int
    wakeups: int
    spills: int
    inline_runs: int  # Gs a waiting parent ran itself (join-helping)
    running_max: int  # most Ms ever seen running task code at once
    syscalls: int  # entersyscall calls (gmpd.syscall, joins that block)
    retakes: int  # Ps sysmon took from Ms that stayed in a syscall
    handoffs: int  # retaken Ps given on to another M
    takeovers: int  # Ps in a gmpd.syscall() another thread of the same M ran on meanwhile
    m_exits: int  # Ms that left the pool on their own (idle too long, or recycled)
    preempts: int  # preempt flags sysmon set (one G held a P for 10 ms)
    unmarked_blocks: int  # Ms sysmon found asleep in calls not marked with gmpd.syscall()
    m_pool_full: int  # times a hand-off wanted a new M while max_ms were alive (it waited)
    bad_frames: int  # frames the coordinator dropped (malformed, unknown kind, wrong peer)
    m_lost: int  # Ms that died (crashed or killed) instead of retiring
    retried: int  # tasks queued again after the M running or holding them died
    worker_lost: int  # tasks that failed with WorkerLost (retry budget spent)
    timeouts: int  # Ms killed because their task ran past its timeout
    fenced: int  # Ms killed because their lease expired (stopped or wedged)
    mem_kills: int  # Ms killed or retired over the per-M memory limit
    nodes_lost: int  # node agents that died; a new one took over and their tasks ran again
    offers_taken: int  # tasks submitted alone that a spinning M took from node memory (gmpd.offer)
    memory_grants: int  # Ps with queued Gs granted in node memory with the M's wake (hand-offs)
    spin_repairs: int  # spinning counts no spinning M held, taken back (should stay 0; see docs/design.md)
    yields: int  # gmpd.checkpoint() calls that gave a flagged P's queue away
    sysmon_pid: int  # this node's sysmon process (it is restarted if it dies)
    gtab_resident_bytes: int  # memory the G table segment holds now


def snapshot(nm: NodeMemory, submitted: int, completed: int, duplicates: int = 0) -> Statistics:
    node = nm.node
    ps = []
    for p in range(node.nprocs):
        status, owner, epoch = node.p_state(p)
        schedtick, syscalltick, _preempt = node.p_ticks(p)
        live = node.g_arena(p)[0] * 64
        ps.append(PStats(p, PStatus(status), owner, epoch, node.runq_len(p), schedtick, syscalltick, live))
    ms = []
    for m in range(node.nms - 1):  # the last slot is sysmon's
        state, curg, p, pid, _hb, _park, nrun = node.m_info(m)
        if pid:
            ms.append(MStats(m, MState(state), pid, p, curg, nrun))
    c = node.sched()
    return Statistics(
        gomaxprocs=node.nprocs,
        ps=tuple(ps),
        ms=tuple(ms),
        tasks_submitted=submitted,
        tasks_completed=completed,
        duplicate_results=duplicates,
        steals=c[Counter.STEALS],
        stolen=c[Counter.STOLEN],
        global_takes=c[Counter.GLOBAL_TAKES],
        spins=c[Counter.SPINS],
        parks=c[Counter.PARKS],
        wakeups=c[Counter.WAKEUPS],
        spills=c[Counter.SPILLS],
        inline_runs=c[Counter.INLINE],
        running_max=c[Counter.RUNNING_MAX],
        syscalls=c[Counter.SYSCALLS],
        retakes=c[Counter.RETAKES],
        handoffs=c[Counter.HANDOFFS],
        takeovers=c[Counter.TAKEOVERS],
        m_exits=c[Counter.MEXITS],
        preempts=c[Counter.PREEMPTS],
        unmarked_blocks=c[Counter.UNMARKED],
        m_pool_full=c[Counter.MPOOLFULL],
        bad_frames=c[Counter.BADFRAMES],
        m_lost=c[Counter.MLOST],
        retried=c[Counter.RETRIED],
        worker_lost=c[Counter.WORKERLOST],
        timeouts=c[Counter.TIMEOUTS],
        fenced=c[Counter.FENCED],
        mem_kills=c[Counter.MEMKILLS],
        nodes_lost=c[Counter.NODESLOST],
        offers_taken=c[Counter.OFFERS],
        memory_grants=c[Counter.MEMGRANTS],
        spin_repairs=c[Counter.SPINFIXES],
        yields=c[Counter.YIELDS],
        sysmon_pid=node.m_info(node.nms - 1)[3],
        gtab_resident_bytes=nm.gtab.path.stat().st_blocks * 512,
    )
