/*
 * gtab.c -- see gtab.h.  Allocator steps, for a reader checking it:
 *
 *   galloc(p, n):  1 reclaim FREE records at the tail
 *                  2 find `need` units: at head if it fits before the end
 *                    (or before tail when wrapped); otherwise, past the soft
 *                    size or at the end, wrap head to unit 1 if [1, tail)
 *                    has room
 *                  3 write the header (state BUILDING), then advance head
 *   The caller fills the payload and sets state RUNNABLE (release) before
 *   the handle goes anywhere.  A process killed between 3 and that leaves
 *   one BUILDING record: gmpd_gtab_sweep_building() frees it when the P is
 *   recovered.
 *
 * Runs in: the owner M of P p for galloc/greclaim/trim/sweep; any M for
 * gmpd_gfree and reads.
 */
#define _GNU_SOURCE
#include "gtab.h"

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

uint32_t gmpd_greclaim(gmpd_node *nd, void *gtab, uint32_t p)
{
    gmpd_p *pp = gmpd_node_p(nd, p);
    uint32_t n = 0;
    for (;;) {
        if (pp->arena_tail == pp->arena_head) {
            pp->arena_head = pp->arena_tail = 1; /* empty: restart at the front */
            pp->arena_wrap = 0;
            break;
        }
        if (pp->arena_wrap != 0 && pp->arena_tail == pp->arena_wrap) {
            pp->arena_tail = 1;
            pp->arena_wrap = 0;
            continue;
        }
        gmpd_grec *r = unit_at(gtab, p, pp->arena_tail);
        /* acquire: pairs with gmpd_gfree's release, so whoever freed it has
         * finished reading it before we hand the units out again. */
        if (__atomic_load_n(&r->state, __ATOMIC_ACQUIRE) != GMPD_G_FREE)
            break;
        pp->arena_tail += r->units;
        n++;
    }
    return n;
}

uint32_t gmpd_galloc(gmpd_node *nd, void *gtab, uint32_t p, uint32_t nbytes)
{
    gmpd_p *pp = gmpd_node_p(nd, p);
    if (nbytes > GMPD_ARENA_BYTES - 2 * GMPD_GUNIT)
        return 0;
    uint32_t need = 1u + (uint32_t)(((uint64_t)nbytes + GMPD_GUNIT - 1) / GMPD_GUNIT);
    gmpd_greclaim(nd, gtab, p);
    uint32_t head = pp->arena_head, tail = pp->arena_tail, at;
    if (pp->arena_wrap != 0) { /* wrapped: free space is [head, tail) */
        if (head + need >= tail)
            return 0;
        at = head;
    } else if ((head + need > GMPD_ARENA_SOFT_UNITS || head + need > GMPD_ARENA_UNITS) && 1u + need < tail) {
        pp->arena_wrap = head; /* past the soft size and the front is free: reuse it */
        at = 1;
    } else if (head + need <= GMPD_ARENA_UNITS) {
        at = head;
    } else {
        return 0;
    }
    gmpd_grec *r = unit_at(gtab, p, at);
    uint32_t gen = r->gen + 1u;
    memset(r, 0, sizeof(*r));
    r->units = need;
    r->gen = gen;
    r->len = nbytes;
    /* relaxed: nobody can reach this record until its handle is published
     * through a run queue (release) or a message. */
    __atomic_store_n(&r->state, GMPD_G_BUILDING, __ATOMIC_RELAXED);
    pp->arena_head = at + need;
    if (at + need > pp->arena_hwm)
        pp->arena_hwm = at + need;
    return (p << 22) | at;
}

void gmpd_gfree(void *gtab, uint32_t handle)
{
    /* release: everything this M did with the record happens before the
     * owner's reclaim (acquire) can reuse its units. */
    __atomic_store_n(&gmpd_grec_at(gtab, handle)->state, GMPD_G_FREE, __ATOMIC_RELEASE);
}

static void free_with_result(void *gtab, uint32_t handle)
{
    gmpd_grec *r = gmpd_grec_at(gtab, handle);
    uint32_t rh = __atomic_load_n(&r->result, __ATOMIC_ACQUIRE); /* acquire: linked before DONE */
    if (rh != 0)
        gmpd_gfree(gtab, rh);
    gmpd_gfree(gtab, handle);
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
int gmpd_gtake(void *gtab, uint32_t handle)
{
    gmpd_grec *r = gmpd_grec_at(gtab, handle);
    uint32_t want = GMPD_G_RUNNABLE;
    /* acq_rel on success: the payload is read after; acquire on failure:
     * see the joiner's refs (gmpd_gclaim). */
    if (__atomic_compare_exchange_n(&r->state, &want, GMPD_G_RUNNING, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
        return 1;
    gmpd_grelease(gtab, handle);
    return 0;
}

/* Drop one reference; the last one frees the G and its result.
 * Runs in: whoever is done with the G (the consumer of its result, or the
 * popper of a claimed G's stale queue entry). */
void gmpd_grelease(void *gtab, uint32_t handle)
{
    gmpd_grec *r = gmpd_grec_at(gtab, handle);
    /* acquire: pairs with gmpd_gclaim's CAS (refs == 2 is visible). */
    if (__atomic_load_n(&r->refs, __ATOMIC_ACQUIRE) == 0 ||
        /* acq_rel: the last dropper sees everything the other did. */
        __atomic_sub_fetch(&r->refs, 1, __ATOMIC_ACQ_REL) == 0)
        free_with_result(gtab, handle);
}

uint32_t gmpd_gtab_live_units(gmpd_node *nd, uint32_t p)
{
    gmpd_p *pp = gmpd_node_p(nd, p);
    if (pp->arena_wrap == 0)
        return pp->arena_head - pp->arena_tail;
    return (pp->arena_wrap - pp->arena_tail) + (pp->arena_head - 1u);
}

/* Give back the pages above the live region (MADV_REMOVE punches the hole
 * in the tmpfs file, so the memory really returns).  Returns bytes freed. */
size_t gmpd_gtab_trim(gmpd_node *nd, void *gtab, uint32_t p)
{
    gmpd_p *pp = gmpd_node_p(nd, p);
    gmpd_greclaim(nd, gtab, p);
    uint32_t top = pp->arena_wrap != 0 ? pp->arena_wrap : pp->arena_head;
    size_t from = ((size_t)top * GMPD_GUNIT + 4095u) & ~(size_t)4095u;
    size_t to = ((size_t)pp->arena_hwm * GMPD_GUNIT + 4095u) & ~(size_t)4095u;
    if (to <= from)
        return 0;
    if (madvise((char *)gtab + (size_t)p * GMPD_ARENA_BYTES + from, to - from, MADV_REMOVE) != 0)
        return 0;
    pp->arena_hwm = top;
    return to - from;
}

/* Free BUILDING records (an allocator died before publishing).  Runs in:
 * whoever recovers P p, before leasing it again. */
uint32_t gmpd_gtab_sweep_building(gmpd_node *nd, void *gtab, uint32_t p)
{
    gmpd_p *pp = gmpd_node_p(nd, p);
    uint32_t n = 0, u = pp->arena_tail, end = pp->arena_wrap != 0 ? pp->arena_wrap : pp->arena_head;
    for (int pass = 0; pass < 2; pass++) {
        while (u < end) {
            gmpd_grec *r = unit_at(gtab, p, u);
            if (r->units == 0)
                break; /* torn header: nothing past it was handed out */
            if (__atomic_load_n(&r->state, __ATOMIC_ACQUIRE) == GMPD_G_BUILDING) { /* acquire: as in reclaim */
                gmpd_gfree(gtab, (p << 22) | u);
                n++;
            }
            u += r->units;
        }
        if (pp->arena_wrap == 0)
            break;
        u = 1;
        end = pp->arena_head;
    }
    return n;
}
