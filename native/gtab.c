/*
 * gtab.c -- see gtab.h.  The allocator of one P's arena, for a reader
 * checking it:
 *
 *   [1, top) is tiled by blocks; each starts with a gmpd_grec header whose
 *   `units` is the block size.  A block is free when its state is FREE.
 *   Only the P's owner allocates, splits and coalesces (single writer);
 *   any M frees a block by storing FREE (release) and counting its units.
 *
 *   galloc(n): next-fit from `rover`: walk the blocks; at a FREE block,
 *     absorb the FREE blocks that follow it (coalesce), and take it if it
 *     is big enough (splitting off the rest as a FREE block).  At `top`,
 *     bump `top` if the arena is still under its soft size, else wrap the
 *     scan to unit 1 once; only when a whole pass finds nothing, bump `top`
 *     beyond the soft size.  A long-lived G pins only its own block.
 *   The new block is BUILDING; the caller fills it and sets RUNNABLE
 *   (release) before its handle goes anywhere.  A process killed between
 *   the two leaves one BUILDING block: gmpd_gtab_sweep_building() frees it.
 *   A process killed anywhere in galloc leaves the blocks tiling [1, top)
 *   (crash order, below): a header with units 0 inside it would stop every
 *   later walk for good (galloc looped on one, holding the GIL: an M hung in
 *   g_new after SIGKILLs of the P's previous owner, and a task was lost).
 *   trim: lower `top` past trailing FREE blocks and punch the pages above
 *     it out of the tmpfs file, so an idle node gives memory back.
 *
 * Runs in: the owner M of P p for galloc/greclaim/trim/sweep; any M for
 * gmpd_gfree and reads.
 */
#define _GNU_SOURCE
#include "gtab.h"

#include <stddef.h>
#include <string.h>
#include <sys/mman.h>

_Static_assert(sizeof(gmpd_grec) == GMPD_GUNIT, "a G record header is one unit");

size_t gmpd_gtab_size(uint32_t nprocs) { return (size_t)nprocs * GMPD_ARENA_BYTES; }

gmpd_grec *gmpd_grec_at(void *gtab, uint32_t handle)
{
    return (gmpd_grec *)((char *)gtab + (size_t)gmpd_gh_p(handle) * GMPD_ARENA_BYTES +
                         (size_t)gmpd_gh_unit(handle) * GMPD_GUNIT);
}

static gmpd_grec *unit_at(void *gtab, uint32_t p, uint32_t unit)
{
    return (gmpd_grec *)((char *)gtab + (size_t)p * GMPD_ARENA_BYTES + (size_t)unit * GMPD_GUNIT);
}

static int is_free(gmpd_grec *r)
{
    /* acquire: pairs with gmpd_gfree's release, so whoever freed the block
     * has finished with it before we hand its units out again. */
    return __atomic_load_n(&r->state, __ATOMIC_ACQUIRE) == GMPD_G_FREE;
}

/* A header no allocator can have left (crash order, above): the walks stop
 * there rather than loop on it for good, holding the GIL. */
static int torn(gmpd_grec *r, uint32_t u, uint32_t top) { return r->units == 0 || r->units > top - u; }

/* Absorb the FREE blocks that follow the FREE block at u. */
static void coalesce(void *gtab, uint32_t p, uint32_t u, uint32_t top)
{
    gmpd_grec *r = unit_at(gtab, p, u);
    for (uint32_t v = u + r->units; v < top; v = u + r->units) {
        gmpd_grec *next = unit_at(gtab, p, v);
        if (!is_free(next) || torn(next, v, top))
            return;
        r->units += next->units;
    }
}

uint32_t gmpd_greclaim(gmpd_node *nd, void *gtab, uint32_t p)
{
    /* Lower top past trailing FREE blocks (one forward walk). */
    gmpd_p *pp = gmpd_node_p(nd, p);
    uint32_t u = 1, last_live_end = 1, n = 0;
    while (u < pp->arena_top) {
        gmpd_grec *r = unit_at(gtab, p, u);
        if (torn(r, u, pp->arena_top)) {
            last_live_end = pp->arena_top; /* (keep all: what lies past it is unknown) */
            break;
        }
        if (is_free(r)) {
            coalesce(gtab, p, u, pp->arena_top);
            n++;
        } else {
            last_live_end = u + r->units;
        }
        u += r->units;
    }
    pp->arena_top = last_live_end;
    /* Coalescing may have absorbed the block the rover pointed at, leaving it
     * on a stale header inside a bigger free block: restart from the front. */
    pp->arena_rover = 1;
    return n;
}

/* Crash order: the stores below are made in program order (each a relaxed
 * atomic; a compiler barrier between the steps), so a process killed
 * between any two leaves a tiling: first the split-off rest's header (still
 * inside the free block, which no walk enters), then the block's new size
 * (the rest becomes a FREE block of its own), then the other fields, the
 * state last (BUILDING: swept if we die now).  The old code zeroed the
 * whole header first: a kill right after it left units 0. */
static uint32_t take(void *gtab, uint32_t p, uint32_t at, uint32_t need, uint32_t have)
{
    gmpd_grec *r = unit_at(gtab, p, at);
    if (have > need) { /* split: the rest stays a FREE block */
        gmpd_grec *rest = unit_at(gtab, p, at + need);
        /* relaxed (all here): owner-only until handed out; the order is for a crash. */
        __atomic_store_n(&rest->state, GMPD_G_FREE, __ATOMIC_RELAXED);
        __atomic_store_n(&rest->units, have - need, __ATOMIC_RELAXED);
        __atomic_signal_fence(__ATOMIC_SEQ_CST);
        GMPD_CRASH_POINT(GMPD_CRASH_GALLOC_RESTED);
    }
    /* release: a concurrent gmpd_gtab_scan that reads the new size (acquire)
     * also sees the rest's header (the crash order needs no more). */
    __atomic_store_n(&r->units, need, __ATOMIC_RELEASE);
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    GMPD_CRASH_POINT(GMPD_CRASH_GALLOC_SIZED);
    uint32_t gen = r->gen + 1u;
    memset((char *)r + offsetof(gmpd_grec, gen), 0, sizeof(*r) - offsetof(gmpd_grec, gen));
    r->gen = gen;
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    GMPD_CRASH_POINT(GMPD_CRASH_GALLOC_CLEARED);
    /* relaxed: nobody can reach this record until its handle is published
     * through a run queue (release) or a message. */
    __atomic_store_n(&r->state, GMPD_G_BUILDING, __ATOMIC_RELAXED);
    return (p << 22) | at;
}

/* A new block at `top`, past every walk until `top` moves over it. */
static uint32_t take_at_top(gmpd_p *pp, void *gtab, uint32_t p, uint32_t need)
{
    uint32_t h = take(gtab, p, pp->arena_top, need, need);
    __atomic_signal_fence(__ATOMIC_SEQ_CST); /* (crash order: the header, then top) */
    GMPD_CRASH_POINT(GMPD_CRASH_GALLOC_AT_TOP);
    /* release: pairs with gmpd_gtab_scan's acquire of top (a racy snapshot). */
    __atomic_store_n(&pp->arena_top, pp->arena_top + need, __ATOMIC_RELEASE);
    return h;
}

uint32_t gmpd_galloc(gmpd_node *nd, void *gtab, uint32_t p, uint32_t nbytes)
{
    gmpd_p *pp = gmpd_node_p(nd, p);
    if (nbytes > GMPD_ARENA_BYTES - 2 * GMPD_GUNIT)
        return 0;
    uint32_t need = 1u + (uint32_t)(((uint64_t)nbytes + GMPD_GUNIT - 1) / GMPD_GUNIT);
    uint32_t u = pp->arena_rover, h = 0;
    for (int pass = 0; pass < 2 && h == 0; pass++) {
        while (u < pp->arena_top) {
            gmpd_grec *r = unit_at(gtab, p, u);
            if (torn(r, u, pp->arena_top))
                break; /* (then a new block at top) */
            if (is_free(r)) {
                coalesce(gtab, p, u, pp->arena_top);
                if (r->units >= need) {
                    h = take(gtab, p, u, need, r->units);
                    break;
                }
            }
            u += r->units;
        }
        if (h == 0 && pp->arena_top + need <= GMPD_ARENA_SOFT_UNITS) {
            u = pp->arena_top; /* still small: grow rather than scan again */
            h = take_at_top(pp, gtab, p, need);
        }
        if (h == 0) {
            /* Second pass: from the front.  Its coalescing may absorb the
             * block the rover is on: the rover goes to the front first, so
             * that a kill (or no fit) in this pass never leaves it on a stale
             * header inside a bigger free block (the next owner would hand
             * out units that block also holds). */
            u = 1;
            pp->arena_rover = 1;
            __atomic_signal_fence(__ATOMIC_SEQ_CST);
        }
    }
    if (h == 0) {
        if ((uint64_t)pp->arena_top + need > GMPD_ARENA_UNITS)
            return 0;
        u = pp->arena_top; /* nothing free fits anywhere: grow past the soft size */
        h = take_at_top(pp, gtab, p, need);
    }
    gmpd_grec *r = gmpd_grec_at(gtab, h);
    r->len = nbytes;
    pp->arena_rover = u + need;
    pp->arena_alloc += need;
    if (pp->arena_top > pp->arena_hwm)
        pp->arena_hwm = pp->arena_top;
    return h;
}

void gmpd_gfree(gmpd_node *nd, void *gtab, uint32_t handle)
{
    gmpd_grec *r = gmpd_grec_at(gtab, handle);
    /* relaxed: a statistic (live units = alloc - freed). */
    __atomic_add_fetch(&gmpd_node_p(nd, gmpd_gh_p(handle))->arena_freed, r->units, __ATOMIC_RELAXED);
    /* release: everything this M did with the record happens before the
     * owner's acquire in is_free() can reuse its units. */
    __atomic_store_n(&r->state, GMPD_G_FREE, __ATOMIC_RELEASE);
}

static void free_with_result(gmpd_node *nd, void *gtab, uint32_t handle)
{
    gmpd_grec *r = gmpd_grec_at(gtab, handle);
    uint32_t rh = __atomic_load_n(&r->result, __ATOMIC_ACQUIRE); /* acquire: linked before DONE */
    if (rh != 0)
        gmpd_gfree(nd, gtab, rh);
    gmpd_gfree(nd, gtab, handle);
}

/* Join-helping: a parent waiting for child `handle` that is still RUNNABLE
 * (somewhere in a queue) takes it to run inline.  The queue entry stays, so
 * the record gets two references: that entry's (dropped by whoever pops it:
 * gmpd_gtake fails and releases) and the joiner's (dropped after it read the
 * result).  refs is stored before the claiming CAS, whose release makes it
 * visible to a popper whose CAS then fails (acquire on failure).
 * Returns 1 if claimed.  Runs in: the parent's M. */
int gmpd_gclaim(void *gtab, uint32_t handle)
{
    gmpd_grec *r = gmpd_grec_at(gtab, handle);
    __atomic_store_n(&r->refs, 2, __ATOMIC_RELAXED); /* relaxed: published by the CAS */
    uint32_t want = GMPD_G_RUNNABLE;
    /* acq_rel: see above. */
    if (__atomic_compare_exchange_n(&r->state, &want, GMPD_G_RUNNING, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
        return 1;
    __atomic_store_n(&r->refs, 0, __ATOMIC_RELAXED); /* relaxed: nobody else reads refs of a non-claimed G */
    return 0;
}

/* A G popped from a queue: RUNNABLE -> RUNNING, or, if a joiner claimed it
 * first, drop the queue's reference.  Returns 1 if the caller must run it.
 * Runs in: any M that took `handle` from a run queue or the global queue. */
int gmpd_gtake(gmpd_node *nd, void *gtab, uint32_t handle)
{
    gmpd_grec *r = gmpd_grec_at(gtab, handle);
    uint32_t want = GMPD_G_RUNNABLE;
    /* acq_rel on success: the payload is read after; acquire on failure:
     * see the joiner's refs (gmpd_gclaim). */
    if (__atomic_compare_exchange_n(&r->state, &want, GMPD_G_RUNNING, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
        return 1;
    gmpd_grelease(nd, gtab, handle);
    return 0;
}

/* Drop one reference; the last one frees the G and its result.
 * Runs in: whoever is done with the G (the consumer of its result, or the
 * popper of a claimed G's stale queue entry). */
void gmpd_grelease(gmpd_node *nd, void *gtab, uint32_t handle)
{
    gmpd_grec *r = gmpd_grec_at(gtab, handle);
    /* acquire: pairs with gmpd_gclaim's CAS (refs == 2 is visible). */
    if (__atomic_load_n(&r->refs, __ATOMIC_ACQUIRE) == 0 ||
        /* acq_rel: the last dropper sees everything the other did. */
        __atomic_sub_fetch(&r->refs, 1, __ATOMIC_ACQ_REL) == 0)
        free_with_result(nd, gtab, handle);
}

/* The future of child `handle` was dropped unread (a fire-and-forget
 * gmpd.go): free it now if its result is out, else let the finisher do it.
 * Runs in: the M that spawned it (a finalizer). */
void gmpd_gdetach(gmpd_node *nd, void *gtab, uint32_t handle)
{
    gmpd_grec *r = gmpd_grec_at(gtab, handle);
    uint32_t want = 0;
    /* acq_rel: pairs with gmpd_gpublished's CAS; the loser frees. */
    if (!__atomic_compare_exchange_n(&r->detach, &want, 1, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
        gmpd_grelease(nd, gtab, handle);
}

/* After a child's result is published (DONE): returns 0 if its future was
 * detached, in which case this call freed it.  Runs in: the finisher. */
int gmpd_gpublished(gmpd_node *nd, void *gtab, uint32_t handle)
{
    gmpd_grec *r = gmpd_grec_at(gtab, handle);
    uint32_t want = 0;
    /* acq_rel: as in gmpd_gdetach. */
    if (__atomic_compare_exchange_n(&r->detach, &want, 2, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
        return 1;
    gmpd_grelease(nd, gtab, handle);
    return 0;
}

uint32_t gmpd_gtab_live_units(gmpd_node *nd, uint32_t p)
{
    gmpd_p *pp = gmpd_node_p(nd, p);
    /* relaxed: statistics; freed units are added by any M. */
    return pp->arena_alloc - __atomic_load_n(&pp->arena_freed, __ATOMIC_RELAXED);
}

/* Give back the pages above the live blocks (MADV_REMOVE punches the hole
 * in the tmpfs file, so the memory really returns).  Returns bytes freed. */
size_t gmpd_gtab_trim(gmpd_node *nd, void *gtab, uint32_t p)
{
    gmpd_p *pp = gmpd_node_p(nd, p);
    gmpd_greclaim(nd, gtab, p);
    size_t from = ((size_t)pp->arena_top * GMPD_GUNIT + 4095u) & ~(size_t)4095u;
    size_t to = ((size_t)pp->arena_hwm * GMPD_GUNIT + 4095u) & ~(size_t)4095u;
    pp->arena_hwm = pp->arena_top;
    if (to <= from)
        return 0;
    if (madvise((char *)gtab + (size_t)p * GMPD_ARENA_BYTES + from, to - from, MADV_REMOVE) != 0)
        return 0;
    return to - from;
}

/* Free BUILDING blocks (an allocator died before publishing).  Runs in:
 * whoever recovers P p, before leasing it again. */
uint32_t gmpd_gtab_sweep_building(gmpd_node *nd, void *gtab, uint32_t p)
{
    gmpd_p *pp = gmpd_node_p(nd, p);
    uint32_t n = 0;
    for (uint32_t u = 1; u < pp->arena_top;) {
        gmpd_grec *r = unit_at(gtab, p, u);
        if (torn(r, u, pp->arena_top))
            break; /* (see torn(): none is left by a crash now) */
        /* acquire: as in is_free(). */
        if (__atomic_load_n(&r->state, __ATOMIC_ACQUIRE) == GMPD_G_BUILDING) {
            gmpd_gfree(nd, gtab, (p << 22) | u);
            n++;
        }
        u += r->units;
    }
    return n;
}

/* Publish G `handle` DONE with `status` and result allocation `rh` (0: no
 * payload, e.g. a G whose every attempt died with its M; the waiter builds
 * the error), then futex-wake its waiter.  Returns 0 if its future was
 * detached, in which case this freed it.  Runs in: the M that finished it,
 * or the coordinator (recovery), which needs no P for rh == 0. */
int gmpd_gpublish(gmpd_node *nd, void *gtab, uint32_t handle, uint32_t status, uint32_t rh)
{
    gmpd_grec *r = gmpd_grec_at(gtab, handle);
    r->status = status;
    __atomic_store_n(&r->result, rh, __ATOMIC_RELAXED); /* relaxed: published below */
    /* release: the result is complete before anyone sees DONE. */
    __atomic_store_n(&r->state, GMPD_G_DONE, __ATOMIC_RELEASE);
    if (!gmpd_gpublished(nd, gtab, handle))
        return 0; /* nobody wanted it: freed */
    /* acquire: a waiter registered before DONE is seen here (seq_cst pair
     * with g_wait's registration, so one of us always sees the other). */
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    uint32_t w = __atomic_load_n(&r->waiter, __ATOMIC_ACQUIRE);
    if (w != 0 && w - 1 < nd->nms) {
        uint32_t *word = &gmpd_node_m(nd, w - 1)->park;
        __atomic_add_fetch(word, 1, __ATOMIC_RELEASE); /* release: as in wake() */
        gmpd_futex_wake(word, GMPD_WAKE_ALL); /* (all: as node_wake) */
    }
    return 1;
}

/* Handles of RUNNABLE and RUNNING Gs in P p's arena, at most `cap`; returns
 * how many.  The owner of p may be allocating meanwhile: a header caught
 * mid-split reads as units 0 or past top and ends the walk early, so a
 * scan of a live arena may miss Gs but never invents one (each hit is
 * re-read by the caller).  Runs in: the coordinator, after an M died. */
uint32_t gmpd_gtab_scan(gmpd_node *nd, void *gtab, uint32_t p, uint32_t *out, uint32_t cap)
{
    gmpd_p *pp = gmpd_node_p(nd, p);
    uint32_t n = 0, top = __atomic_load_n(&pp->arena_top, __ATOMIC_ACQUIRE); /* acquire: racy snapshot */
    for (uint32_t u = 1; u < top && n < cap;) {
        gmpd_grec *r = unit_at(gtab, p, u);
        uint32_t units = __atomic_load_n(&r->units, __ATOMIC_ACQUIRE); /* acquire: pairs with take()'s size */
        if (units == 0 || units > top - u)
            break;
        /* acquire: as in is_free(). */
        uint32_t st = __atomic_load_n(&r->state, __ATOMIC_ACQUIRE);
        if (st == GMPD_G_RUNNABLE || st == GMPD_G_RUNNING)
            out[n++] = (p << 22) | u;
        u += units;
    }
    return n;
}
