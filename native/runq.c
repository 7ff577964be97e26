/*
 * runq.c -- Go's per-P run queue (runtime/proc.go: runqput, runqputslow,
 * runqget, runqgrab, runqsteal, runqdrain, runqempty) over node shared memory,
 * made safe against a process being killed at any instruction.
 *
 * 1. The queue
 * ------------
 * A P owns `runnext` (one G that runs next and inherits the time slice) and a
 * 256-slot ring with free-running 32-bit counters `head` and `tail`; the slot
 * of counter x is x % 256, the ring is full when tail - head == 256.  Only the
 * owner M writes `tail` and the slots.  `head` is advanced by CAS by the owner
 * (runqget, runqputslow) and by thieves (runqgrab).  Only the owner sets
 * `runnext` to a G; owner and thieves CAS it back to empty.  These are Go's
 * rules, with Go's orders:
 *   - owner put:  h = load-acquire(head); slot[t] = g; store-release(tail, t+1)
 *     (acquire: a slot is reused only after the consumer that advanced head
 *     has finished reading it; release: the slot write is visible before the
 *     new tail is).
 *   - consumer/thief: h = load-acquire(head); t = load-acquire(tail) (thieves;
 *     the owner reads its own tail plainly); read slots; CAS-release(head).
 *     A failed CAS throws the slot reads away.
 * Slots hold G handles (uint32, 0 = none): never pointers or Python objects.
 *
 * 2. What dying processes break, and the op record
 * ------------------------------------------------
 * In Go a thread is never killed half way through runqsteal.  Here an M is a
 * process and can be SIGKILLed anywhere.  Two windows lose or duplicate Gs:
 *   - a thief killed after its CAS on the victim's head but before it stored
 *     its own tail: the grabbed Gs sit past its tail, invisible, lost;
 *   - anyone killed after a successful CAS that took a G out of a queue but
 *     before the caller has recorded it: lost.
 * A survivor cannot tell from `head` alone whether the dead M's CAS happened,
 * because other consumers move head too.  So:
 *
 *   (a) Every M has an op record in shared memory (gmpd_m: op word, fields,
 *       batch[]).  Before an operation's linearizing CAS or store, the M
 *       writes what it is about to do: kind, the P, the counters it read, the
 *       G(s) involved.  After it, the record says which Gs the M now holds.
 *   (b) Every CAS on `head` or `runnext` stores a tag in the upper 32 bits:
 *       tag = (mid + 1) << 22 | seq, where seq numbers the M's op steps.  A
 *       word carrying the dead M's (mid, seq) proves its CAS happened.
 *   (c) A tag is overwritten by the next CAS.  So before anyone replaces a
 *       word carrying another M's tag (m, s), it first confirms it:
 *       confirmed[m] = max(confirmed[m], s) (release; the CAS that follows is
 *       a release too, so the confirmation is visible to anyone who sees the
 *       newer word).  Hence: M's step s took effect  <=>  the word still
 *       carries (M, s), or confirmed[M] == s.  Both are checked by recovery.
 *
 * The op word is [arg:32][seq:22][kind:8][state:2] and is written with one
 * store-release.  The state is IDLE (nothing held, nothing in flight),
 * INFLIGHT (kind names the step), or HELD (batch[0..nheld) is in the M's
 * hands: a G it took and has not yet recorded elsewhere).  `arg` is the G
 * the caller passed to put/put_next, kept across every step of that call, so
 * a supervisor can tell whether that G was accepted.  Two rules keep the
 * record readable at every instruction:
 *   R1. A step writes only fields that the current state's recovery does not
 *       read, then switches the op word.  (HELD reads batch/nheld; each
 *       INFLIGHT kind reads the fields listed in runq.h.)
 *   R2. While the current step's tagged CAS has not succeeded, its fields may
 *       be rewritten (retry loops): recovery decides "did not happen" without
 *       looking at them, because no word carries an uninstalled tag.
 * A HELD state lasts until the M's next op starts (or gmpd_release): the
 * caller must have recorded the G it took before it calls into the ring
 * again.  The runtime records it as the M's curg.
 *
 * 3. Recovery (gmpd_recover_m), numbered interleavings
 * -----------------------------------------------------
 * Precondition: the M is dead (reaped), and the caller has exclusive use of
 * the dead M's P (it holds or withholds that P's lease) so it may act as
 * that P's owner.  Other Ms may keep running and stealing meanwhile.
 *
 *   PUT  g at t:   1 record {PUT, g, t}   2 slot[t] = g   3 tail = t+1   4 IDLE
 *       killed before 3: tail == t     -> g was never visible: orphan g.
 *       killed after 3:  tail == t+1   -> g is queued: nothing to do.
 *   PUTNEXT g:     1 record {PUTNEXT, g, old}   2 CAS runnext old->(tag,g)
 *                  3 batch={old}, HELD   4 PUT old at the tail (as above)
 *       killed before 2 took effect -> orphan g (old still queued or stolen).
 *       killed after 2, before 3     -> g queued, old kicked out: orphan old.
 *   PUTSLOW (ring full):  1 batch = slots h..h+127 + g, record {PUTSLOW, h}
 *                  2 CAS head h->(tag,h+128)   3 HELD 129
 *       2 not taken effect -> the 128 are still queued or taken by others,
 *       g is ours: orphan g.  2 took effect -> orphan all 129 (they were
 *       meant for the global queue; the caller puts them there).
 *   GET:  1 record {GET, h, g=slot[h]}  2 CAS head h->(tag,h+1)  3 HELD {g}
 *       2 took effect -> orphan g; else nothing.  (GETNEXT: same on runnext.)
 *   STEAL from victim v into own ring at t:
 *                  1 copy v.slot[h..h+n) to own slot[t..t+n)
 *                  2 record {STEAL, v, h, n, t}   3 CAS v.head h->(tag,h+n)
 *                  4 own tail = t+n-1   5 HELD {own slot[t+n-1]}
 *       3 not taken effect -> copies past own tail are garbage: nothing.
 *       3 took effect (killed at 3..5) -> recovery stores own tail = t+n:
 *       every grabbed G is back in the (surviving) thief P's queue.  The
 *       last one was not yet held (5 not reached), so it was never run.
 *       (STEALNEXT: the same with n = 1 and the CAS on v.runnext.)
 *   DRAIN: DRAINNEXT (runnext -> batch[0]) then DRAIN (ring -> batch[k..]),
 *       each a tagged CAS: orphan what took effect.
 *   HELD: orphan batch[0..nheld): the M took them and may have recorded
 *       them; the caller deduplicates against its own record (the runtime:
 *       by G id; the stress test: the tail of the dead M's log).
 * Recovery leaves the record IDLE with the same seq, so a restarted M in
 * that slot never reuses a tag that a stale confirmation could match.
 *
 * Limits, stated rather than hidden: tags are 22-bit sequence numbers, so
 * a confirmation delayed by more than 2^21 steps of the same M could be
 * misread (each M refreshes its own confirmation every 2^20 steps so an old
 * value never aliases); Go's own ABA limit (2^32 ops during one stalled
 * consumer) still applies to the head counter.
 */
#define _GNU_SOURCE
#include "runq.h"

#include <errno.h>
#include <signal.h>
#include <linux/futex.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

/* Process-local (not in shared memory); 0 in production.  One load and a
 * never-taken branch per point. */
int gmpd_crash_at = GMPD_CRASH_OFF;

void gmpd_crash(void)
{
    kill(getpid(), SIGKILL);
    _exit(137); /* not reached */
}
#define CRASH_POINT(n) GMPD_CRASH_POINT(n)

#define SEQ_MASK 0x3fffffu
#define SEQ_REFRESH_MASK 0xfffffu

static inline uint32_t tag_of(uint32_t mid, uint32_t seq) { return ((mid + 1u) << 22) | (seq & SEQ_MASK); }
static inline uint32_t tag_mid(uint32_t tag) { return (tag >> 22) - 1u; }
static inline uint32_t tag_seq(uint32_t tag) { return tag & SEQ_MASK; }
static inline uint32_t w_tag(uint64_t w) { return (uint32_t)(w >> 32); }
static inline uint32_t w_low(uint64_t w) { return (uint32_t)w; }
static inline uint64_t w_make(uint32_t tag, uint32_t low) { return ((uint64_t)tag << 32) | low; }
static inline uint64_t opword(uint32_t arg, uint32_t seq, uint32_t kind, uint32_t st)
{
    return ((uint64_t)arg << 32) | ((uint64_t)(seq & SEQ_MASK) << 10) | ((uint64_t)(kind & 0xffu) << 2) | (st & 3u);
}
/* a is after b in 22-bit sequence space (within half the range). */
static inline int seq_after(uint32_t a, uint32_t b)
{
    uint32_t d = (a - b) & SEQ_MASK;
    return d != 0 && d < (SEQ_MASK + 1u) / 2u;
}

/* ---- layout ----------------------------------------------------------- */

_Static_assert(sizeof(gmpd_p) % GMPD_CACHELINE == 0, "gmpd_p must be whole cache lines");
_Static_assert(sizeof(gmpd_m) % GMPD_CACHELINE == 0, "gmpd_m must be whole cache lines");
_Static_assert(sizeof(gmpd_node) <= 4096, "header must fit its page");
_Static_assert(GMPD_SC__COUNT <= 3 * GMPD_CACHELINE / 4, "sched counters must fit their lines");

#define HEADER_SIZE 4096u

size_t gmpd_node_size(uint32_t nprocs, uint32_t nms)
{
    return HEADER_SIZE + (size_t)nprocs * sizeof(gmpd_p) + (size_t)nms * sizeof(gmpd_m) +
           GMPD_OFFER_SLOTS * sizeof(gmpd_offer);
}

int gmpd_node_init(void *mem, size_t len, uint32_t nprocs, uint32_t nms, uint32_t counter_base,
                   int32_t creator_pid)
{
    if (nprocs == 0 || nprocs > GMPD_MAX_PROCS || nms == 0 || nms > GMPD_MAX_MS)
        return GMPD_EINVAL;
    if (len < gmpd_node_size(nprocs, nms))
        return GMPD_EINVAL;
    memset(mem, 0, gmpd_node_size(nprocs, nms));
    gmpd_node *nd = mem;
    nd->version = GMPD_LAYOUT_VERSION;
    nd->nprocs = nprocs;
    nd->nms = nms;
    nd->header_size = HEADER_SIZE;
    nd->total_size = gmpd_node_size(nprocs, nms);
    nd->p_offset = HEADER_SIZE;
    nd->m_offset = HEADER_SIZE + nprocs * (uint32_t)sizeof(gmpd_p);
    nd->p_stride = sizeof(gmpd_p);
    nd->m_stride = sizeof(gmpd_m);
    nd->creator_pid = creator_pid;
    nd->counter_base = counter_base;
    for (uint32_t i = 0; i < nprocs; i++) {
        gmpd_p *pp = gmpd_node_p(nd, i);
        pp->id = i;
        pp->state = gmpd_pstate_make(GMPD_PIDLE, -1, 0);
        pp->head = w_make(0, counter_base);
        pp->tail = counter_base;
        pp->arena_rover = pp->arena_top = pp->arena_hwm = 1; /* unit 0 is never handed out: handle 0 = none */
    }
    /* Publish the layout last: an attacher that sees the magic sees it all. */
    __atomic_store_n(&nd->magic, GMPD_MAGIC, __ATOMIC_RELEASE);
    return GMPD_OK;
}

int gmpd_node_check(const void *mem, size_t len)
{
    const gmpd_node *nd = mem;
    if (len < HEADER_SIZE)
        return GMPD_ELAYOUT;
    /* acquire: pairs with the release store of the magic in gmpd_node_init. */
    if (__atomic_load_n(&nd->magic, __ATOMIC_ACQUIRE) != GMPD_MAGIC || nd->version != GMPD_LAYOUT_VERSION)
        return GMPD_ELAYOUT;
    if (nd->p_stride != sizeof(gmpd_p) || nd->m_stride != sizeof(gmpd_m) || nd->header_size != HEADER_SIZE)
        return GMPD_ELAYOUT;
    if (nd->nprocs == 0 || nd->nprocs > GMPD_MAX_PROCS || nd->nms == 0 || nd->nms > GMPD_MAX_MS)
        return GMPD_ELAYOUT;
    if (nd->total_size != gmpd_node_size(nd->nprocs, nd->nms) || len < nd->total_size)
        return GMPD_ELAYOUT;
    return GMPD_OK;
}

gmpd_p *gmpd_node_p(gmpd_node *nd, uint32_t p)
{
    return (gmpd_p *)((char *)nd + HEADER_SIZE + (size_t)p * sizeof(gmpd_p));
}

gmpd_m *gmpd_node_m(gmpd_node *nd, uint32_t m)
{
    return (gmpd_m *)((char *)nd + HEADER_SIZE + (size_t)nd->nprocs * sizeof(gmpd_p) + (size_t)m * sizeof(gmpd_m));
}

gmpd_offer *gmpd_node_offer(gmpd_node *nd, uint32_t slot)
{
    return (gmpd_offer *)((char *)gmpd_node_m(nd, nd->nms) + (size_t)slot * sizeof(gmpd_offer));
}

/* ---- the op record ------------------------------------------------------
 * Runs in: the M that owns the record.  Plain fields are ordered before the
 * op word by its store-release, and before every CAS by the CAS's release. */

static inline void rec_set(gmpd_m *mp, uint64_t w)
{
    /* release: the fields written for this state are in place before any
     * reader (recovery) can see the state that names them (rule R1). */
    __atomic_store_n(&mp->op, w, __ATOMIC_RELEASE);
}

/* Start a top-level op: drop whatever the previous op left HELD. */
static inline void rec_begin(gmpd_m *mp)
{
    uint64_t w = mp->op; /* own field: only this M writes it */
    if (gmpd_op_state(w) != GMPD_REC_IDLE)
        rec_set(mp, opword(gmpd_op_arg(w), gmpd_op_seq(w), gmpd_op_kind(w), GMPD_REC_IDLE));
}

static void confirm(gmpd_node *nd, uint32_t tag, uint32_t self);

/* Enter a new INFLIGHT step; returns its seq (the tag the step's CAS uses). */
static inline uint32_t rec_step(gmpd_node *nd, gmpd_m *mp, uint32_t mid, uint32_t arg, uint32_t kind)
{
    uint32_t seq = (gmpd_op_seq(mp->op) + 1u) & SEQ_MASK;
    if ((seq & SEQ_REFRESH_MASK) == 0)
        confirm(nd, tag_of(mid, seq - 1u), GMPD_MAX_MS); /* keep confirmed[] near seq */
    rec_set(mp, opword(arg, seq, kind, GMPD_REC_INFLIGHT));
    return seq;
}

static inline void rec_hold1(gmpd_m *mp, uint32_t g, uint32_t arg, uint32_t seq, uint32_t kind)
{
    mp->batch[0] = g; /* R1: INFLIGHT GET/STEAL recovery does not read batch */
    mp->nheld = 1;
    rec_set(mp, opword(arg, seq, kind, GMPD_REC_HELD));
}

/* Confirm M tag_mid(tag)'s step before replacing a word that carries it.
 * Runs in: any M about to CAS a head or runnext word; self = caller's mid. */
static void confirm(gmpd_node *nd, uint32_t tag, uint32_t self)
{
    if (tag == 0 || tag_mid(tag) == self || tag_mid(tag) >= nd->nms)
        return;
    gmpd_m *om = gmpd_node_m(nd, tag_mid(tag));
    uint32_t s = tag_seq(tag);
    /* relaxed: the value is only compared; the CAS below publishes it. */
    uint32_t c = __atomic_load_n(&om->confirmed, __ATOMIC_RELAXED);
    while (seq_after(s, c)) {
        /* release on success: ordered before our later CAS on the word,
         * which is itself a release; recovery acquires that word first. */
        if (__atomic_compare_exchange_n(&om->confirmed, &c, s, 0, __ATOMIC_RELEASE, __ATOMIC_RELAXED))
            break;
    }
}

/* ---- runqput ---------------------------------------------------------- */

/* Tail insert, spilling half the ring to the caller when full (Go's
 * runqput tail path + runqputslow).  Returns 0, or 129 = batch held.
 * Runs in: the owner M of P p. */
static int put_tail(gmpd_node *nd, gmpd_p *pp, gmpd_m *mp, uint32_t p, uint32_t mid, uint32_t g, uint32_t arg)
{
    for (;;) {
        /* acquire: slots below head are free only once their consumers'
         * CAS-release has ordered their slot reads before it. */
        uint32_t h = w_low(__atomic_load_n(&pp->head, __ATOMIC_ACQUIRE));
        uint32_t t = pp->tail; /* owner is the only writer */
        mp->rp = p;
        mp->g = g;
        mp->t = t;
        uint32_t seq = rec_step(nd, mp, mid, arg, GMPD_OP_PUT);
        if (t - h < GMPD_RUNQ_SIZE) {
            CRASH_POINT(GMPD_CRASH_PUT_RECORDED);
            /* relaxed: published by the tail store-release below. */
            __atomic_store_n(&pp->runq[t % GMPD_RUNQ_SIZE], g, __ATOMIC_RELAXED);
            CRASH_POINT(GMPD_CRASH_PUT_SLOT);
            /* release: the slot is written before consumers see tail = t+1. */
            __atomic_store_n(&pp->tail, t + 1, __ATOMIC_RELEASE);
            CRASH_POINT(GMPD_CRASH_PUT_PUBLISHED);
            rec_set(mp, opword(arg, seq, GMPD_OP_PUT, GMPD_REC_IDLE));
            return 0;
        }
        /* runqputslow: full, so t - h == 256 and n == 128 exactly. */
        uint64_t hw = __atomic_load_n(&pp->head, __ATOMIC_ACQUIRE);
        if (w_low(hw) != h)
            continue; /* consumers freed space meanwhile */
        for (uint32_t i = 0; i < GMPD_RUNQ_HALF; i++)
            mp->batch[i] = __atomic_load_n(&pp->runq[(h + i) % GMPD_RUNQ_SIZE], __ATOMIC_RELAXED);
        mp->batch[GMPD_RUNQ_HALF] = g;
        mp->h = h;
        seq = rec_step(nd, mp, mid, arg, GMPD_OP_PUTSLOW);
        CRASH_POINT(GMPD_CRASH_PUTSLOW_RECORDED);
        confirm(nd, w_tag(hw), mid);
        /* release: batch reads and the record precede taking the slots. */
        if (__atomic_compare_exchange_n(&pp->head, &hw, w_make(tag_of(mid, seq), h + GMPD_RUNQ_HALF), 0,
                                        __ATOMIC_RELEASE, __ATOMIC_RELAXED)) {
            CRASH_POINT(GMPD_CRASH_PUTSLOW_TAKEN);
            mp->nheld = GMPD_RUNQ_HALF + 1;
            rec_set(mp, opword(arg, seq, GMPD_OP_PUTSLOW, GMPD_REC_HELD));
            CRASH_POINT(GMPD_CRASH_PUTSLOW_HELD);
            return (int)(GMPD_RUNQ_HALF + 1);
        }
        /* the CAS failed, so consumers made room: retry the fast path (R2). */
    }
}

/* Go's runqput.  next: put g in runnext, kicking the old runnext to the tail.
 * Returns 0, 129 (overflow batch held in the M's batch[], for the global
 * queue) or GMPD_EINVAL.  Runs in: the owner M of P p. */
int gmpd_runqput(gmpd_node *nd, uint32_t p, uint32_t mid, uint32_t g, int next)
{
    if (g == 0 || p >= nd->nprocs || mid >= nd->nms)
        return GMPD_EINVAL;
    gmpd_p *pp = gmpd_node_p(nd, p);
    gmpd_m *mp = gmpd_node_m(nd, mid);
    rec_begin(mp);
    if (!next)
        return put_tail(nd, pp, mp, p, mid, g, g);

    /* relaxed: only this M (the owner) makes runnext non-zero; the CAS
     * below validates whatever we read. */
    uint64_t old = __atomic_load_n(&pp->runnext, __ATOMIC_RELAXED);
    mp->rp = p;
    mp->g = g;
    mp->old = w_low(old);
    uint32_t seq = rec_step(nd, mp, mid, g, GMPD_OP_PUTNEXT);
    CRASH_POINT(GMPD_CRASH_PUTNEXT_RECORDED);
    for (;;) {
        confirm(nd, w_tag(old), mid);
        /* acq_rel: release publishes the G (and its record) to thieves;
         * acquire pairs with a thief's CAS when we replace its empty word. */
        if (__atomic_compare_exchange_n(&pp->runnext, &old, w_make(tag_of(mid, seq), g), 0, __ATOMIC_ACQ_REL,
                                        __ATOMIC_RELAXED))
            break;
        mp->old = w_low(old); /* a thief emptied it; R2 allows the rewrite */
    }
    CRASH_POINT(GMPD_CRASH_PUTNEXT_SWAPPED);
    uint32_t kicked = w_low(old);
    if (kicked == 0) {
        rec_set(mp, opword(g, seq, GMPD_OP_PUTNEXT, GMPD_REC_IDLE));
        return 0;
    }
    rec_hold1(mp, kicked, g, seq, GMPD_OP_PUTNEXT); /* step 3: old is in our hands */
    CRASH_POINT(GMPD_CRASH_PUTNEXT_HELD);
    return put_tail(nd, pp, mp, p, mid, kicked, g);
}

/* ---- runqget ---------------------------------------------------------- */

/* Go's runqget: runnext first (inherit = 1), then the ring head.
 * Returns the G (HELD by the M until its next op) or 0 when empty.
 * Runs in: the owner M of P p. */
uint32_t gmpd_runqget(gmpd_node *nd, uint32_t p, uint32_t mid, int *inherit)
{
    gmpd_p *pp = gmpd_node_p(nd, p);
    gmpd_m *mp = gmpd_node_m(nd, mid);
    rec_begin(mp);
    *inherit = 0;
    /* relaxed: validated by the CAS. */
    uint64_t next = __atomic_load_n(&pp->runnext, __ATOMIC_RELAXED);
    if (w_low(next) != 0) {
        mp->rp = p;
        mp->g = w_low(next);
        uint32_t seq = rec_step(nd, mp, mid, 0, GMPD_OP_GETNEXT);
        confirm(nd, w_tag(next), mid);
        /* acq_rel: acquire to see the G as put; release orders the record.
         * Never retried: only the owner sets runnext non-zero, so a failure
         * means a thief took it (Go's comment). */
        if (__atomic_compare_exchange_n(&pp->runnext, &next, w_make(tag_of(mid, seq), 0), 0, __ATOMIC_ACQ_REL,
                                        __ATOMIC_RELAXED)) {
            CRASH_POINT(GMPD_CRASH_GETNEXT_TAKEN);
            rec_hold1(mp, mp->g, 0, seq, GMPD_OP_GETNEXT);
            *inherit = 1;
            return mp->g;
        }
    }
    for (;;) {
        /* acquire: pairs with other consumers' CAS-release on head. */
        uint64_t hw = __atomic_load_n(&pp->head, __ATOMIC_ACQUIRE);
        uint32_t h = w_low(hw);
        uint32_t t = pp->tail; /* owner is the only writer */
        if (t == h) {
            rec_begin(mp);
            return 0;
        }
        /* relaxed: we wrote this slot ourselves; a thief that takes it first
         * makes our CAS fail and this read is dropped. */
        uint32_t g = __atomic_load_n(&pp->runq[h % GMPD_RUNQ_SIZE], __ATOMIC_RELAXED);
        mp->rp = p;
        mp->h = h;
        mp->g = g;
        uint32_t seq = rec_step(nd, mp, mid, 0, GMPD_OP_GET);
        CRASH_POINT(GMPD_CRASH_GET_RECORDED);
        confirm(nd, w_tag(hw), mid);
        /* release: the slot read completes before the slot may be reused. */
        if (__atomic_compare_exchange_n(&pp->head, &hw, w_make(tag_of(mid, seq), h + 1), 0, __ATOMIC_RELEASE,
                                        __ATOMIC_RELAXED)) {
            CRASH_POINT(GMPD_CRASH_GET_TAKEN);
            rec_hold1(mp, g, 0, seq, GMPD_OP_GET);
            CRASH_POINT(GMPD_CRASH_GET_HELD);
            return g;
        }
    }
}

/* ---- runqgrab / runqsteal --------------------------------------------- */

static void usleep3(void)
{
    /* Go's usleep(3): let a running victim schedule its runnext itself. */
    struct timespec ts = {0, 3000};
    nanosleep(&ts, NULL);
}

/* Go's runqsteal (with runqgrab inlined): grab ceil(half) of victim's ring
 * straight into our own ring past our tail, or its runnext when asked and
 * the ring is empty.  Publishes all but the last G, which is returned HELD.
 * Returns the number grabbed (0 if none), GMPD_ENOSPACE if our ring holds
 * more than half its size, or GMPD_EINVAL.  Runs in: the owner M of P p. */
int gmpd_runqsteal(gmpd_node *nd, uint32_t p, uint32_t victim, uint32_t mid, int steal_runnext, uint32_t *gp)
{
    if (p >= nd->nprocs || victim >= nd->nprocs || victim == p || mid >= nd->nms)
        return GMPD_EINVAL;
    gmpd_p *pp = gmpd_node_p(nd, p);
    gmpd_p *vp = gmpd_node_p(nd, victim);
    gmpd_m *mp = gmpd_node_m(nd, mid);
    *gp = 0;
    rec_begin(mp);
    uint32_t t = pp->tail; /* own tail: we are the only writer */
    /* acquire: our slots below head may be reused only after their readers. */
    if (t - w_low(__atomic_load_n(&pp->head, __ATOMIC_ACQUIRE)) > GMPD_RUNQ_HALF - 1u)
        return GMPD_ENOSPACE;
    uint32_t n, seq, kind;
    for (;;) {
        /* acquire both: synchronize with consumers (head) and with the
         * victim's owner (tail), so the slots we read are its writes. */
        uint64_t hw = __atomic_load_n(&vp->head, __ATOMIC_ACQUIRE);
        uint32_t h = w_low(hw);
        uint32_t vt = __atomic_load_n(&vp->tail, __ATOMIC_ACQUIRE); /* acquire: see above */
        n = vt - h;
        n = n - n / 2;
        if (n == 0) {
            if (!steal_runnext)
                break;
            /* acquire: see the G the owner published with its CAS-release. */
            uint64_t next = __atomic_load_n(&vp->runnext, __ATOMIC_ACQUIRE);
            if (w_low(next) == 0)
                break;
            /* relaxed: only a hint for the back-off, as in Go. */
            if (gmpd_pstate_status(__atomic_load_n(&vp->state, __ATOMIC_RELAXED)) == GMPD_PRUNNING)
                usleep3();
            /* relaxed: past our tail, published later by the tail store. */
            __atomic_store_n(&pp->runq[t % GMPD_RUNQ_SIZE], w_low(next), __ATOMIC_RELAXED);
            mp->rp = p;
            mp->victim = victim;
            mp->g = w_low(next);
            mp->t = t;
            seq = rec_step(nd, mp, mid, 0, GMPD_OP_STEALNEXT);
            confirm(nd, w_tag(next), mid);
            /* acq_rel: release orders the copy and the record before it. */
            if (!__atomic_compare_exchange_n(&vp->runnext, &next, w_make(tag_of(mid, seq), 0), 0, __ATOMIC_ACQ_REL,
                                             __ATOMIC_RELAXED))
                continue;
            CRASH_POINT(GMPD_CRASH_STEALNEXT_TAKEN);
            n = 1;
            kind = GMPD_OP_STEALNEXT;
            goto grabbed;
        }
        if (n > GMPD_RUNQ_HALF)
            continue; /* read an inconsistent h and t */
        for (uint32_t i = 0; i < n; i++) {
            /* relaxed: a slot overwritten meanwhile makes the CAS fail. */
            uint32_t g = __atomic_load_n(&vp->runq[(h + i) % GMPD_RUNQ_SIZE], __ATOMIC_RELAXED);
            __atomic_store_n(&pp->runq[(t + i) % GMPD_RUNQ_SIZE], g, __ATOMIC_RELAXED);
        }
        CRASH_POINT(GMPD_CRASH_STEAL_COPIED);
        mp->rp = p;
        mp->victim = victim;
        mp->h = h;
        mp->n = n;
        mp->t = t;
        seq = rec_step(nd, mp, mid, 0, GMPD_OP_STEAL);
        CRASH_POINT(GMPD_CRASH_STEAL_RECORDED);
        confirm(nd, w_tag(hw), mid);
        /* release: slot reads, our copies and the record precede the take. */
        if (__atomic_compare_exchange_n(&vp->head, &hw, w_make(tag_of(mid, seq), h + n), 0, __ATOMIC_RELEASE,
                                        __ATOMIC_RELAXED)) {
            CRASH_POINT(GMPD_CRASH_STEAL_TAKEN);
            kind = GMPD_OP_STEAL;
            goto grabbed;
        }
    }
    rec_begin(mp); /* nothing taken: back to IDLE */
    return 0;

grabbed:;
    /* relaxed: our own slot, written by this thread above. */
    uint32_t g = __atomic_load_n(&pp->runq[(t + n - 1) % GMPD_RUNQ_SIZE], __ATOMIC_RELAXED);
    if (n > 1)
        /* release: the copied slots are visible before the new tail. */
        __atomic_store_n(&pp->tail, t + n - 1, __ATOMIC_RELEASE);
    CRASH_POINT(GMPD_CRASH_STEAL_PUBLISHED);
    rec_hold1(mp, g, 0, seq, kind);
    CRASH_POINT(GMPD_CRASH_STEAL_HELD);
    *gp = g;
    return (int)n;
}

/* ---- runqdrain --------------------------------------------------------- */

/* Take everything (runnext first, then the ring) into the M's batch[], HELD.
 * Used when a P is destroyed or its queue must move to the global queue.
 * Returns the count.  Runs in: the owner of P p (or a recoverer holding it). */
int gmpd_runqdrain(gmpd_node *nd, uint32_t p, uint32_t mid)
{
    if (p >= nd->nprocs || mid >= nd->nms)
        return GMPD_EINVAL;
    gmpd_p *pp = gmpd_node_p(nd, p);
    gmpd_m *mp = gmpd_node_m(nd, mid);
    rec_begin(mp);
    uint32_t k = 0, seq = 0;
    uint64_t next = __atomic_load_n(&pp->runnext, __ATOMIC_RELAXED); /* relaxed: validated by the CAS */
    if (w_low(next) != 0) {
        mp->rp = p;
        mp->g = w_low(next);
        seq = rec_step(nd, mp, mid, 0, GMPD_OP_DRAINNEXT);
        confirm(nd, w_tag(next), mid);
        /* acq_rel: as in runqget. */
        if (__atomic_compare_exchange_n(&pp->runnext, &next, w_make(tag_of(mid, seq), 0), 0, __ATOMIC_ACQ_REL,
                                        __ATOMIC_RELAXED)) {
            CRASH_POINT(GMPD_CRASH_DRAINNEXT_TAKEN);
            mp->batch[0] = mp->g; /* R1: DRAINNEXT recovery reads rp and g only */
            k = 1;
        }
    }
    mp->nheld = k;
    for (;;) {
        uint64_t hw = __atomic_load_n(&pp->head, __ATOMIC_ACQUIRE); /* as in runqget */
        uint32_t h = w_low(hw), t = pp->tail;
        if (t == h)
            break;
        for (uint32_t i = 0; i < t - h; i++)
            /* relaxed: as in runqget; a failed CAS drops these reads. */
            mp->batch[k + i] = __atomic_load_n(&pp->runq[(h + i) % GMPD_RUNQ_SIZE], __ATOMIC_RELAXED);
        mp->rp = p;
        mp->h = h;
        mp->n = t - h;
        seq = rec_step(nd, mp, mid, 0, GMPD_OP_DRAIN);
        confirm(nd, w_tag(hw), mid);
        /* release: as in runqget. */
        if (__atomic_compare_exchange_n(&pp->head, &hw, w_make(tag_of(mid, seq), t), 0, __ATOMIC_RELEASE,
                                        __ATOMIC_RELAXED)) {
            CRASH_POINT(GMPD_CRASH_DRAIN_TAKEN);
            k += t - h;
            break;
        }
    }
    if (k == 0) {
        rec_begin(mp);
        return 0;
    }
    mp->nheld = k;
    rec_set(mp, opword(0, gmpd_op_seq(mp->op), GMPD_OP_DRAIN, GMPD_REC_HELD));
    return (int)k;
}

/* ---- queries ----------------------------------------------------------- */

uint32_t gmpd_runqlen(gmpd_node *nd, uint32_t p)
{
    gmpd_p *pp = gmpd_node_p(nd, p);
    /* acquire both: a consistent-enough snapshot for statistics. */
    uint32_t h = w_low(__atomic_load_n(&pp->head, __ATOMIC_ACQUIRE));
    uint32_t t = __atomic_load_n(&pp->tail, __ATOMIC_ACQUIRE);
    uint32_t n = t - h;
    return n > GMPD_RUNQ_SIZE ? 0 : n;
}

/* Go's runqempty: re-check tail so a runnext G kicked into the ring and
 * consumed in between cannot make a non-empty queue look empty. */
int gmpd_runqempty(gmpd_node *nd, uint32_t p)
{
    gmpd_p *pp = gmpd_node_p(nd, p);
    for (;;) {
        /* acquire on all four: the loads stay in this order (Go's runqempty). */
        uint32_t h = w_low(__atomic_load_n(&pp->head, __ATOMIC_ACQUIRE));
        uint32_t t = __atomic_load_n(&pp->tail, __ATOMIC_ACQUIRE);
        uint32_t next = w_low(__atomic_load_n(&pp->runnext, __ATOMIC_ACQUIRE));
        if (__atomic_load_n(&pp->tail, __ATOMIC_ACQUIRE) == t)
            return h == t && next == 0;
    }
}

/* Drop what the M holds: it has recorded those Gs elsewhere.
 * Runs in: the M itself. */
void gmpd_release(gmpd_node *nd, uint32_t mid)
{
    rec_begin(gmpd_node_m(nd, mid));
}

/* ---- recovery --------------------------------------------------------- */

/* Did the dead M's step `seq` install `want` into *word?  See §2 (c). */
static int took_effect(gmpd_m *mp, uint32_t mid, uint32_t seq, uint64_t *word, uint32_t want_low)
{
    /* acquire: if the word moved on, the CAS that moved it (and so the
     * confirmation stored before it) happens-before this load. */
    uint64_t w = __atomic_load_n(word, __ATOMIC_ACQUIRE);
    if (w == w_make(tag_of(mid, seq), want_low))
        return 1;
    return __atomic_load_n(&mp->confirmed, __ATOMIC_ACQUIRE) == seq; /* acquire: as above */
}

/* Recover the op record of dead M `mid`: finish or roll back its in-flight
 * step and hand back, in orphans[] (room for GMPD_RUNQ_SIZE + 1), every G it
 * had taken out of all queues.  *opword gets the record as found (kind, arg,
 * state); *completed whether the in-flight step had taken effect.  Returns
 * the number of orphans.  Runs in: a survivor holding the dead M's P (§3). */
int gmpd_recover_m(gmpd_node *nd, uint32_t mid, uint32_t *orphans, uint64_t *opword_out, int *completed)
{
    if (mid >= nd->nms)
        return GMPD_EINVAL;
    gmpd_m *mp = gmpd_node_m(nd, mid);
    /* acquire: the dead M's last stores are visible (it is reaped). */
    uint64_t w = __atomic_load_n(&mp->op, __ATOMIC_ACQUIRE);
    uint32_t seq = gmpd_op_seq(w), kind = gmpd_op_kind(w), n = 0, took = 0;
    *opword_out = w;
    if (gmpd_op_state(w) == GMPD_REC_HELD) {
        n = mp->nheld > GMPD_RUNQ_SIZE + 1 ? GMPD_RUNQ_SIZE + 1 : mp->nheld;
        memcpy(orphans, mp->batch, n * sizeof(uint32_t));
    } else if (gmpd_op_state(w) == GMPD_REC_INFLIGHT && mp->rp < nd->nprocs) {
        gmpd_p *pp = gmpd_node_p(nd, mp->rp);
        gmpd_p *vp = gmpd_node_p(nd, mp->victim < nd->nprocs ? mp->victim : mp->rp);
        switch (kind) {
        case GMPD_OP_PUT:
            /* acquire: the dead owner was the only tail writer. */
            took = __atomic_load_n(&pp->tail, __ATOMIC_ACQUIRE) != mp->t;
            if (!took)
                orphans[n++] = mp->g;
            break;
        case GMPD_OP_PUTNEXT:
            took = took_effect(mp, mid, seq, &pp->runnext, mp->g);
            if (!took)
                orphans[n++] = mp->g;
            else if (mp->old != 0)
                orphans[n++] = mp->old;
            break;
        case GMPD_OP_PUTSLOW:
            took = took_effect(mp, mid, seq, &pp->head, mp->h + GMPD_RUNQ_HALF);
            if (took) {
                n = GMPD_RUNQ_HALF + 1;
                memcpy(orphans, mp->batch, n * sizeof(uint32_t));
            } else {
                orphans[n++] = mp->batch[GMPD_RUNQ_HALF];
            }
            break;
        case GMPD_OP_GET:
            took = took_effect(mp, mid, seq, &pp->head, mp->h + 1);
            if (took)
                orphans[n++] = mp->g;
            break;
        case GMPD_OP_GETNEXT:
        case GMPD_OP_DRAINNEXT:
            took = took_effect(mp, mid, seq, &pp->runnext, 0);
            if (took)
                orphans[n++] = mp->g;
            break;
        case GMPD_OP_DRAIN:
            took = took_effect(mp, mid, seq, &pp->head, mp->h + mp->n);
            n = mp->nheld + (took ? mp->n : 0);
            if (n > GMPD_RUNQ_SIZE + 1)
                n = GMPD_RUNQ_SIZE + 1;
            memcpy(orphans, mp->batch, n * sizeof(uint32_t));
            break;
        case GMPD_OP_STEAL:
        case GMPD_OP_STEALNEXT:
            if (kind == GMPD_OP_STEAL)
                took = took_effect(mp, mid, seq, &vp->head, mp->h + mp->n);
            else
                took = took_effect(mp, mid, seq, &vp->runnext, 0);
            if (took)
                /* release: the copies the dead thief made are published
                 * (we act as the owner of its P, §3 precondition). */
                __atomic_store_n(&pp->tail, mp->t + (kind == GMPD_OP_STEAL ? mp->n : 1u), __ATOMIC_RELEASE);
            break;
        default:
            break;
        }
    }
    *completed = (int)took;
    mp->nheld = 0;
    rec_set(mp, opword(gmpd_op_arg(w), seq, kind, GMPD_REC_IDLE));
    return (int)n;
}

/* ---- P state word ------------------------------------------------------ */

uint64_t gmpd_p_load(gmpd_node *nd, uint32_t p)
{
    /* acquire: a reader acting on the state sees what its writer did first. */
    return __atomic_load_n(&gmpd_node_p(nd, p)->state, __ATOMIC_ACQUIRE);
}

int gmpd_p_cas(gmpd_node *nd, uint32_t p, uint64_t expect, uint64_t desired)
{
    /* acq_rel: every P transition hands the P (and its queue) between
     * processes, so it both publishes and observes. */
    return __atomic_compare_exchange_n(&gmpd_node_p(nd, p)->state, &expect, desired, 0, __ATOMIC_ACQ_REL,
                                       __ATOMIC_ACQUIRE);
}

/* ---- scheduler counters ----------------------------------------------- */

uint32_t gmpd_sched_add(gmpd_node *nd, uint32_t i, int32_t delta)
{
    /* acq_rel: nmspinning/npidle follow Go's "publish work, then read the
     * counters" order, so updates must not move across the caller's queue
     * operations. */
    uint32_t v = __atomic_add_fetch(&nd->sched[i], (uint32_t)delta, __ATOMIC_ACQ_REL);
    if (i == GMPD_SC_RUNNING) {
        /* relaxed: a statistic, raised by CAS so it only grows. */
        uint32_t mx = __atomic_load_n(&nd->sched[GMPD_SC_RUNNING_MAX], __ATOMIC_RELAXED);
        while ((int32_t)v > (int32_t)mx &&
               !__atomic_compare_exchange_n(&nd->sched[GMPD_SC_RUNNING_MAX], &mx, v, 0, __ATOMIC_RELAXED,
                                            __ATOMIC_RELAXED))
            ;
    }
    return v;
}

uint32_t gmpd_sched_dec(gmpd_node *nd, uint32_t i)
{
    /* A gauge's decrement that never wraps below 0: two parties may give
     * back one count (an M and the coordinator's repair, gmpd/coordinator.py
     * repair_spinning), and a wrapped gauge would read as huge for good.
     * acq_rel on success, as gmpd_sched_add. */
    uint32_t v = __atomic_load_n(&nd->sched[i], __ATOMIC_RELAXED);
    while (v > 0 && !__atomic_compare_exchange_n(&nd->sched[i], &v, v - 1, 0, __ATOMIC_ACQ_REL, __ATOMIC_RELAXED))
        ;
    return v > 0 ? v - 1 : 0;
}

uint32_t gmpd_sched_load(gmpd_node *nd, uint32_t i)
{
    return __atomic_load_n(&nd->sched[i], __ATOMIC_ACQUIRE); /* acquire: pairs with the adds */
}

/* ---- futex ------------------------------------------------------------- */

/* Sleep while *word == expect, at most timeout_ns (< 0: forever).
 * Returns 0 when woken or the word changed, 1 on timeout, -errno on error.
 * FUTEX_WAIT, not FUTEX_WAIT_PRIVATE: the word is shared between processes. */
int gmpd_futex_wait(uint32_t *word, uint32_t expect, int64_t timeout_ns)
{
    struct timespec ts, *tsp = NULL;
    if (timeout_ns >= 0) {
        ts.tv_sec = (time_t)(timeout_ns / 1000000000);
        ts.tv_nsec = (long)(timeout_ns % 1000000000);
        tsp = &ts;
    }
    long r = syscall(SYS_futex, word, FUTEX_WAIT, expect, tsp, NULL, 0);
    if (r == 0)
        return 0;
    if (errno == EAGAIN || errno == EINTR)
        return 0;
    if (errno == ETIMEDOUT)
        return 1;
    return -errno;
}

int gmpd_futex_wake(uint32_t *word, int n)
{
    long r = syscall(SYS_futex, word, FUTEX_WAKE, n, NULL, NULL, 0);
    return r < 0 ? -errno : (int)r;
}

/* ---- P lease transitions ------------------------------------------------
 * The state word packs status, owner and the lease epoch, so each
 * transition is one CAS that also checks the epoch: an M whose lease was
 * retaken (epoch bumped) can never move the P again. */

/* IDLE -> RUNNING(mid, epoch); the coordinator grants epochs that only grow.
 * Runs in: the M that was granted the lease. */
int gmpd_acquirep(gmpd_node *nd, uint32_t p, uint32_t mid, uint32_t epoch)
{
    uint64_t s = gmpd_p_load(nd, p);
    if (gmpd_pstate_status(s) != GMPD_PIDLE || (int32_t)(epoch - gmpd_pstate_epoch(s)) < 0)
        return 0;
    return gmpd_p_cas(nd, p, s, gmpd_pstate_make(GMPD_PRUNNING, (int32_t)mid, epoch));
}

/* RUNNING(mid, epoch) -> IDLE.  Runs in: the owner M. */
int gmpd_releasep(gmpd_node *nd, uint32_t p, uint32_t mid, uint32_t epoch)
{
    return gmpd_p_cas(nd, p, gmpd_pstate_make(GMPD_PRUNNING, (int32_t)mid, epoch),
                      gmpd_pstate_make(GMPD_PIDLE, -1, epoch));
}

/* entersyscall: RUNNING -> SYSCALL, P stays with the M (Go's lazy handoff).
 * The time goes first (relaxed; the CAS publishes it): sysmon, seeing the
 * SYSCALL, knows how long the call has lasted when it first looks, as
 * Go's sysmon knows from its 20 us ticks.  Runs in: the owner M. */
int gmpd_entersyscall(gmpd_node *nd, uint32_t p, uint32_t mid, uint32_t epoch)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    __atomic_store_n(&gmpd_node_p(nd, p)->syscallwhen, (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec,
                     __ATOMIC_RELAXED);
    return gmpd_p_cas(nd, p, gmpd_pstate_make(GMPD_PRUNNING, (int32_t)mid, epoch),
                      gmpd_pstate_make(GMPD_PSYSCALL, (int32_t)mid, epoch));
}

/* exitsyscall fast path: SYSCALL -> RUNNING only if nobody retook the P
 * (same owner, same epoch).  On success bumps syscalltick as Go's
 * exitsyscallfast does.  Runs in: the M returning from the syscall. */
int gmpd_exitsyscall(gmpd_node *nd, uint32_t p, uint32_t mid, uint32_t epoch)
{
    if (!gmpd_p_cas(nd, p, gmpd_pstate_make(GMPD_PSYSCALL, (int32_t)mid, epoch),
                    gmpd_pstate_make(GMPD_PRUNNING, (int32_t)mid, epoch)))
        return 0;
    /* relaxed: a counter sysmon only compares with its last sample. */
    __atomic_add_fetch(&gmpd_node_p(nd, p)->syscalltick, 1, __ATOMIC_RELAXED);
    return 1;
}

/* retake: SYSCALL(seen) -> IDLE with epoch + 1, as sysmon does after one tick.
 * `seen` is the state word the caller sampled, so a syscall that ended and
 * began again in between is not retaken by mistake.  Returns the new epoch,
 * or -1 if the state moved.  Runs in: sysmon (or whoever hands the P off). */
int64_t gmpd_retake(gmpd_node *nd, uint32_t p, uint64_t seen)
{
    if (gmpd_pstate_status(seen) != GMPD_PSYSCALL)
        return -1;
    uint32_t epoch = gmpd_pstate_epoch(seen) + 1u;
    if (!gmpd_p_cas(nd, p, seen, gmpd_pstate_make(GMPD_PIDLE, -1, epoch)))
        return -1;
    /* relaxed: a counter sysmon only compares, as above. */
    __atomic_add_fetch(&gmpd_node_p(nd, p)->syscalltick, 1, __ATOMIC_RELAXED);
    return epoch;
}
