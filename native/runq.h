/*
 * runq.h -- gmpd's node shared memory: per-P run queues (Go's runq), P and M
 * state words, and the crash-recovery records.  No Python here: this layer is
 * plain C11 + GCC __atomic builtins so it can be compiled and tested alone.
 *
 * Layout of one node segment (a file under /dev/shm, mapped MAP_SHARED):
 *
 *     gmpd_node header            one page
 *     gmpd_p   ps[nprocs]         cache-line aligned, hot words on own lines
 *     gmpd_m   ms[nms]            cache-line aligned
 *     gmpd_offer offers[GMPD_OFFER_SLOTS]   two pages each (offer.c)
 *
 * Every field that more than one process touches is read and written with
 * __atomic builtins only; the comment on each access names its memory order.
 * See runq.c for the protocol and the crash-recovery design.
 */
#ifndef GMPD_RUNQ_H
#define GMPD_RUNQ_H

#include <stddef.h>
#include <stdint.h>

#define GMPD_MAGIC 0x31646d70676d6721ULL /* "!gmgpmd1" */
#define GMPD_LAYOUT_VERSION 7u
#define GMPD_CACHELINE 64
#define GMPD_RUNQ_SIZE 256u           /* len(p.runq) in Go */
#define GMPD_RUNQ_HALF 128u           /* runqputslow moves this many + 1 */
#define GMPD_MAX_PROCS 1024u
#define GMPD_MAX_MS 1022u             /* (mid + 1) must fit the 10-bit tag field */
#define GMPD_OFFER_SLOTS 8u           /* root tasks a client on the node may offer at once */
#define GMPD_OFFER_BYTES 3968u        /* payload bytes of one offer */
#define GMPD_REPLY_BYTES 4096u        /* result bytes an M writes back into it: a slot is two pages */
#define GMPD_REPLY_WRITING (1ull << 63) /* in gmpd_offer.want while an M writes the reply, */
#define GMPD_REPLY_WRITER_SHIFT 48     /* with that M's index + 1 in bits 48..57 */
#define GMPD_OFFER_TID_MAX ((1ull << GMPD_REPLY_WRITER_SHIFT) - 1) /* larger task ids are never offered */

/* P status values: Go's numbers, so scheddetail output is comparable. */
enum gmpd_pstatus {
    GMPD_PIDLE = 0,
    GMPD_PRUNNING = 1,
    GMPD_PSYSCALL = 2,
    GMPD_PGCSTOP = 3, /* unused; kept so the numbers match Go */
    GMPD_PDEAD = 4,
};

/* Kinds of ring operation, recorded in an M's op word (see runq.c §Recovery). */
enum gmpd_opkind {
    GMPD_OP_NONE = 0,
    GMPD_OP_PUT = 1,        /* tail insert of rec.g at rec.t */
    GMPD_OP_PUTNEXT = 2,    /* CAS runnext rec.old -> rec.g */
    GMPD_OP_PUTSLOW = 3,    /* CAS head rec.h -> rec.h+128, batch[0..129) out */
    GMPD_OP_GET = 4,        /* CAS head rec.h -> rec.h+1, taking rec.g */
    GMPD_OP_GETNEXT = 5,    /* CAS runnext rec.g -> 0 */
    GMPD_OP_STEAL = 6,      /* CAS victim head rec.h -> rec.h+rec.n */
    GMPD_OP_STEALNEXT = 7,  /* CAS victim runnext rec.g -> 0 */
    GMPD_OP_DRAINNEXT = 8,  /* CAS runnext rec.g -> 0 into batch[0] */
    GMPD_OP_DRAIN = 9,      /* CAS head rec.h -> rec.h+rec.n into batch */
    GMPD_OP__COUNT
};

/* States of an M's op record. */
enum gmpd_opstate {
    GMPD_REC_IDLE = 0,     /* nothing in flight, nothing held */
    GMPD_REC_INFLIGHT = 1, /* between the first and last store of an op */
    GMPD_REC_HELD = 2,     /* op finished; batch[0..nheld) is in the M's hands */
};

/* Crash points: where a test may have the calling process SIGKILL itself
 * (gmpd_crash_at), to replay each numbered interleaving of runq.c §3. */
enum gmpd_crashpoint {
    GMPD_CRASH_OFF = 0,
    GMPD_CRASH_PUT_RECORDED,      /* PUT 1 done, slot not written */
    GMPD_CRASH_PUT_SLOT,          /* PUT 2 done, tail not stored */
    GMPD_CRASH_PUT_PUBLISHED,     /* PUT 3 done, record not IDLE */
    GMPD_CRASH_PUTNEXT_RECORDED,  /* PUTNEXT 1 done, CAS not tried */
    GMPD_CRASH_PUTNEXT_SWAPPED,   /* PUTNEXT 2 took effect, old not held */
    GMPD_CRASH_PUTNEXT_HELD,      /* PUTNEXT 3 done, old not at the tail */
    GMPD_CRASH_PUTSLOW_RECORDED,  /* PUTSLOW 1 done, CAS not tried */
    GMPD_CRASH_PUTSLOW_TAKEN,     /* PUTSLOW 2 took effect, not held */
    GMPD_CRASH_PUTSLOW_HELD,      /* PUTSLOW 3 done, caller not told */
    GMPD_CRASH_GET_RECORDED,      /* GET 1 done, CAS not tried */
    GMPD_CRASH_GET_TAKEN,         /* GET 2 took effect, not held */
    GMPD_CRASH_GET_HELD,          /* GET 3 done, caller not told */
    GMPD_CRASH_GETNEXT_TAKEN,     /* runnext taken, not held */
    GMPD_CRASH_STEAL_COPIED,      /* STEAL 1 done, not recorded */
    GMPD_CRASH_STEAL_RECORDED,    /* STEAL 2 done, CAS not tried */
    GMPD_CRASH_STEAL_TAKEN,       /* STEAL 3 took effect, own tail not stored */
    GMPD_CRASH_STEAL_PUBLISHED,   /* STEAL 4 done, last G not held */
    GMPD_CRASH_STEAL_HELD,        /* STEAL 5 done, caller not told */
    GMPD_CRASH_STEALNEXT_TAKEN,   /* victim runnext taken, own tail not stored */
    GMPD_CRASH_DRAINNEXT_TAKEN,   /* runnext taken into batch, ring not yet */
    GMPD_CRASH_DRAIN_TAKEN,       /* ring taken, not held */
    GMPD_CRASH_GALLOC_RESTED,     /* gtab.c take(): the split-off rest's header written */
    GMPD_CRASH_GALLOC_SIZED,      /* take(): the block's new size written */
    GMPD_CRASH_GALLOC_CLEARED,    /* take(): its other fields cleared, state not BUILDING */
    GMPD_CRASH_GALLOC_AT_TOP,     /* a new block's header past top, top not moved */
    GMPD_CRASH__COUNT
};
extern int gmpd_crash_at;
void gmpd_crash(void);
#define GMPD_CRASH_POINT(n)                                   \
    do {                                                      \
        if (__builtin_expect(gmpd_crash_at == (n), 0))       \
            gmpd_crash();                                     \
    } while (0)

/* Result codes of the C layer (never Python exceptions here). */
enum {
    GMPD_OK = 0,
    GMPD_EINVAL = -1,   /* bad argument: index out of range, G handle 0 */
    GMPD_ENOSPACE = -2, /* the thief's own ring is too full to steal into */
    GMPD_ELAYOUT = -3,  /* segment is not a gmpd node of this layout version */
};

typedef struct gmpd_p {
    /* line 0: lease and scheduling counters */
    uint64_t state;       /* [epoch:32][owner mid+1:24][status:8]; CAS only */
    uint32_t schedtick;   /* owner M only; read by sysmon */
    uint32_t syscalltick; /* owner M or retaker; read by sysmon */
    uint32_t preempt;     /* set by sysmon, cleared by the owner */
    uint32_t id;
    uint64_t syscallwhen; /* CLOCK_MONOTONIC ns of the last entersyscall try (the M); read by sysmon */
    uint8_t _pad0[GMPD_CACHELINE - 32];
    /* line 1: head = [tag:32][counter:32]; advanced by CAS by anyone */
    uint64_t head;
    uint8_t _pad1[GMPD_CACHELINE - 8];
    /* line 2: runnext = [tag:32][g:32]; owner sets non-zero, anyone CASes to 0 */
    uint64_t runnext;
    uint8_t _pad2[GMPD_CACHELINE - 8];
    /* line 3: written by the owner only: tail (store-release) and the
     * allocator state of this P's G arena (gtab.c), in 64-byte units */
    uint32_t tail;
    uint32_t arena_rover; /* next-fit scan position */
    uint32_t arena_top;   /* end of the last block: [1, top) is tiled by blocks */
    uint32_t arena_alloc; /* units handed out (owner) */
    uint32_t arena_freed; /* units freed (any M, atomic add) */
    uint32_t arena_hwm;   /* highest top since the last trim (pages touched) */
    uint8_t _pad3[GMPD_CACHELINE - 24];
    uint32_t runq[GMPD_RUNQ_SIZE]; /* G handles, never pointers */
} gmpd_p;

typedef struct gmpd_m {
    /* line 0: runtime state of the M process (owner: the M itself) */
    uint32_t state;     /* M state (runtime-defined, see gmpd/m.py) */
    uint32_t curg;      /* G handle it runs, 0 if none */
    uint32_t p;         /* P index + 1 it holds, 0 if none */
    int32_t pid;
    uint64_t heartbeat_ns; /* CLOCK_MONOTONIC ns of the M's last heartbeat */
    uint32_t park;      /* futex word: a wake counter (notewakeup bumps it) */
    uint32_t nrun;      /* Gs this M slot has run (statistics) */
    uint64_t placing;   /* [batch seq:32][items placed:32] of the global
                         * batch being queued; read by recovery (gmpd/m.py) */
    uint64_t deadline_ns; /* CLOCK_MONOTONIC ns its current task must end by, 0: none */
    uint32_t doom;      /* why sysmon or the coordinator killed it (gmpd.sched.Doom), 0 */
    int32_t tid;        /* native id of the thread that holds the M (runs its
                         * scheduler and task code: gmpd/m.py, standby threads);
                         * sysmon reads its /proc state; 0: the main thread */
    uint64_t grant;     /* [epoch:32][P index + 1:32] the coordinator granted with a
                         * GRANTED wake, stored before that state CAS; 0: the
                         * Grant comes as a message.  Read by the M in GRANTED. */
    uint8_t _pad0[GMPD_CACHELINE - 64];
    /* line 1: written by *other* Ms (see runq.c §Recovery: confirmation) */
    uint32_t confirmed;
    uint32_t standby;   /* futex word of the M's standby threads: sysmon bumps
                         * it to have one take over a P left in a syscall */
    uint32_t nstandby;  /* threads of the M parked on it */
    uint32_t blocked;   /* threads of the M blocked in a gmpd.syscall() while
                         * another holds it (checkdead: not a deadlock) */
    uint32_t deadline_g; /* the G whose timeout deadline_ns is (0: not known);
                          * recovery fails that one, not every timed G the M held */
    uint8_t _pad1[GMPD_CACHELINE - 20];
    /* line 2..: the op record; written by this M, read only by recovery */
    uint64_t op;        /* [arg:32][seq:22][kind:8][state:2] */
    uint32_t rp;        /* P index the op works on */
    uint32_t victim;    /* P index stolen from */
    uint32_t h, t, g, old, n, nheld;
    uint8_t _pad2[GMPD_CACHELINE - 40];
    uint32_t batch[GMPD_RUNQ_SIZE + 1]; /* Gs out of every queue (in flight/held) */
    uint8_t _pad3[GMPD_CACHELINE - 4];
} gmpd_m;

/* An offer: a root task the client on this node wrote here so that a
 * spinning M can start it before the coordinator has read its Submit (the
 * node-local submit path; gmpd/offer.py has the protocol). */
typedef struct gmpd_offer {
    /* line 0: the offer */
    uint64_t state;  /* [seq:32][owner mid+1:24][state:8]; CAS only */
    uint64_t tid;    /* the root task id (written by the client before OFFERED) */
    uint32_t len;    /* payload bytes */
    uint8_t _pad0[GMPD_CACHELINE - 20];
    /* line 1: the reply, for a client thread waiting on the task's result */
    uint64_t want;   /* tid whose result is wanted here (| REPLY_WRITING | writer M + 1
                      * while an M writes it), 0: none; CAS only */
    uint64_t done;   /* tid whose result is in place (stored last, release) */
    uint32_t wake;   /* futex word: bumped by each reply, and by the client (poke) */
    uint32_t status; /* the result's status (gmpd.wire) */
    uint32_t rlen;   /* the result's bytes */
    uint8_t _pad1[GMPD_CACHELINE - 28];
    uint8_t payload[GMPD_OFFER_BYTES];
    uint8_t reply[GMPD_REPLY_BYTES];
} gmpd_offer;

/* Node-wide scheduler counters (gmpd_node.sched[]), Go's sched fields and
 * the statistics the runtime exposes.  Updated with atomic adds. */
enum gmpd_sched_counter {
    GMPD_SC_NMSPINNING = 0, /* Ms spinning: out of local work, looking */
    GMPD_SC_NPIDLE,         /* idle Ps (maintained by the coordinator) */
    GMPD_SC_NMIDLE,         /* parked Ms */
    GMPD_SC_RUNNING,        /* Ms running task code right now */
    GMPD_SC_RUNNING_MAX,    /* most Ms ever seen running task code at once */
    GMPD_SC_STEALS,         /* successful steals */
    GMPD_SC_STOLEN,         /* Gs moved by steals */
    GMPD_SC_GLOBAL_TAKES,   /* batches taken from the global queue */
    GMPD_SC_SPINS,          /* times an M became spinning */
    GMPD_SC_PARKS,          /* times an M parked */
    GMPD_SC_WAKEUPS,        /* futex wake-ups sent */
    GMPD_SC_SPILLS,         /* runqputslow batches sent to the global queue */
    GMPD_SC_INLINE,         /* Gs run inline by a waiting parent (join-helping) */
    GMPD_SC_RETAKES,        /* Ps sysmon took from Ms in syscalls */
    GMPD_SC_HANDOFFS,       /* retaken Ps given on to another M (handoffp) */
    GMPD_SC_SYSCALLS,       /* entersyscall calls */
    GMPD_SC_GRQLEN,         /* length of the coordinator's global queue (it publishes it) */
    GMPD_SC_SYSMONWAIT,     /* 1 while sysmon deep-sleeps (Go's sched.sysmonwait) */
    GMPD_SC_MEXITS,         /* Ms that exited on their own: idle too long, or recycled */
    GMPD_SC_PREEMPTS,       /* preempt flags sysmon set on Ps running one G for 10 ms */
    GMPD_SC_YIELDS,         /* gmpd.checkpoint() calls that gave the P's queue away */
    GMPD_SC_DEADLOCK,       /* deadlocks checkdead reported (Ms in a join compare it) */
    GMPD_SC_UNMARKED,       /* Ms sysmon found blocked in an unmarked call (from /proc) */
    GMPD_SC_MPOOLFULL,      /* new Ms asked for while max_ms were alive (the hand-off waited) */
    GMPD_SC_BADFRAMES,      /* frames the coordinator dropped: malformed, unknown, wrong peer */
    GMPD_SC_MLOST,          /* Ms that died (crashed, killed) rather than retired */
    GMPD_SC_RETRIED,        /* tasks queued again after their M died */
    GMPD_SC_WORKERLOST,     /* tasks failed with WorkerLost (retry budget spent) */
    GMPD_SC_TIMEOUTS,       /* Ms killed because their task ran past its timeout */
    GMPD_SC_FENCED,         /* Ms killed because their lease expired (stopped, wedged) */
    GMPD_SC_MEMKILLS,       /* Ms killed or retired for going over the memory limit */
    GMPD_SC_NODESLOST,      /* node agents that died and were replaced (carried to the new node) */
    GMPD_SC_OFFERS,         /* offered root tasks Ms took from node memory (gmpd/offer.py) */
    GMPD_SC_MEMGRANTS,      /* Ps granted in the M's slot with its wake, no Grant message */
    GMPD_SC_SPINFIXES,      /* spinning counts the coordinator took back: no spinner held them */
    GMPD_SC_TAKEOVERS,      /* Ps in a syscall a standby thread of the same M took over */
    GMPD_SC__COUNT
};

typedef struct gmpd_node {
    uint64_t magic;
    uint32_t version;
    uint32_t nprocs;
    uint32_t nms;
    uint32_t header_size;
    uint64_t total_size;
    uint32_t p_offset;
    uint32_t m_offset;
    uint32_t p_stride;
    uint32_t m_stride;
    int32_t creator_pid;
    uint32_t counter_base;
    uint8_t _pad[GMPD_CACHELINE - 56];
    uint32_t sched[3 * GMPD_CACHELINE / 4]; /* enum gmpd_sched_counter; own cache lines */
} gmpd_node;

/* ---- layout ---------------------------------------------------------- */
size_t gmpd_node_size(uint32_t nprocs, uint32_t nms);
int gmpd_node_init(void *mem, size_t len, uint32_t nprocs, uint32_t nms,
                   uint32_t counter_base, int32_t creator_pid);
int gmpd_node_check(const void *mem, size_t len);
gmpd_p *gmpd_node_p(gmpd_node *nd, uint32_t p);
gmpd_m *gmpd_node_m(gmpd_node *nd, uint32_t m);
gmpd_offer *gmpd_node_offer(gmpd_node *nd, uint32_t slot);

/* ---- the run queue (runq.c); mid is the calling M's index ------------ */
int gmpd_runqput(gmpd_node *nd, uint32_t p, uint32_t mid, uint32_t g, int next);
uint32_t gmpd_runqget(gmpd_node *nd, uint32_t p, uint32_t mid, int *inherit);
int gmpd_runqsteal(gmpd_node *nd, uint32_t p, uint32_t victim, uint32_t mid,
                   int steal_runnext, uint32_t *gp);
int gmpd_runqdrain(gmpd_node *nd, uint32_t p, uint32_t mid);
uint32_t gmpd_runqlen(gmpd_node *nd, uint32_t p);
int gmpd_runqempty(gmpd_node *nd, uint32_t p);
void gmpd_release(gmpd_node *nd, uint32_t mid);
int gmpd_recover_m(gmpd_node *nd, uint32_t mid, uint32_t *orphans,
                   uint64_t *opword, int *completed);

/* ---- op word helpers ------------------------------------------------- */
static inline uint32_t gmpd_op_arg(uint64_t w) { return (uint32_t)(w >> 32); }
static inline uint32_t gmpd_op_seq(uint64_t w) { return (uint32_t)(w >> 10) & 0x3fffffu; }
static inline uint32_t gmpd_op_kind(uint64_t w) { return (uint32_t)(w >> 2) & 0xffu; }
static inline uint32_t gmpd_op_state(uint64_t w) { return (uint32_t)w & 0x3u; }

/* ---- P state word ---------------------------------------------------- */
static inline uint64_t gmpd_pstate_make(uint32_t status, int32_t owner, uint32_t epoch)
{
    return ((uint64_t)epoch << 32) | ((uint64_t)((uint32_t)(owner + 1) & 0xffffffu) << 8) | (status & 0xffu);
}
static inline uint32_t gmpd_pstate_status(uint64_t s) { return (uint32_t)s & 0xffu; }
static inline int32_t gmpd_pstate_owner(uint64_t s) { return (int32_t)(((uint32_t)s >> 8) & 0xffffffu) - 1; }
static inline uint32_t gmpd_pstate_epoch(uint64_t s) { return (uint32_t)(s >> 32); }
uint64_t gmpd_p_load(gmpd_node *nd, uint32_t p);
int gmpd_p_cas(gmpd_node *nd, uint32_t p, uint64_t expect, uint64_t desired);
int gmpd_acquirep(gmpd_node *nd, uint32_t p, uint32_t mid, uint32_t epoch);
int gmpd_releasep(gmpd_node *nd, uint32_t p, uint32_t mid, uint32_t epoch);
int gmpd_entersyscall(gmpd_node *nd, uint32_t p, uint32_t mid, uint32_t epoch);
int gmpd_exitsyscall(gmpd_node *nd, uint32_t p, uint32_t mid, uint32_t epoch);
int64_t gmpd_retake(gmpd_node *nd, uint32_t p, uint64_t seen);

uint32_t gmpd_sched_add(gmpd_node *nd, uint32_t i, int32_t delta);
uint32_t gmpd_sched_dec(gmpd_node *nd, uint32_t i);
uint32_t gmpd_sched_load(gmpd_node *nd, uint32_t i);

/* ---- parking: futex on a shared word (not FUTEX_PRIVATE) ------------- */
int gmpd_futex_wait(uint32_t *word, uint32_t expect, int64_t timeout_ns);
int gmpd_futex_wake(uint32_t *word, int n);
#define GMPD_WAKE_ALL (1 << 30) /* gmpd_futex_wake's n for every waiter */

#endif /* GMPD_RUNQ_H */
