/*
 * gtab.h -- G records and their payloads in node shared memory.
 *
 * A G handle (uint32, the value the run queues carry) names an allocation
 * in one P's arena: handle = p << 22 | unit, where a unit is 64 bytes, so
 * each P owns 2^22 units = 256 MiB of one sparse segment ("gtab"):
 *
 *     [ P0 arena: 256 MiB ][ P1 arena ] ...      (only touched pages use memory)
 *
 * An allocation is a 64-byte gmpd_grec header followed by the payload (a
 * pickled task, or a result).  Only the owner M of P p allocates in p's
 * arena and reclaims it (single writer: no locks).  Any M may read a G by
 * its handle (after taking the handle from a run queue, whose release/acquire
 * publish the record) and may mark it FREE when done with it.
 *
 * The arena is tiled by blocks and allocated next-fit (gtab.c): freed
 * blocks are coalesced and reused, the arena grows past a soft size
 * (GMPD_ARENA_SOFT) only when nothing free fits, so steady load reuses the
 * same pages and memory stays flat; gmpd_gtab_trim() returns the pages
 * above the last live block to the kernel when a P goes idle, so the table
 * shrinks back after a burst (Go's allgs never shrinks).
 */
#ifndef GMPD_GTAB_H
#define GMPD_GTAB_H

#include "runq.h"

#define GMPD_GUNIT 64u
#define GMPD_ARENA_UNITS (1u << 22)          /* 256 MiB per P */
#define GMPD_ARENA_BYTES ((size_t)GMPD_ARENA_UNITS * GMPD_GUNIT)
#define GMPD_ARENA_SOFT_UNITS ((4u << 20) / GMPD_GUNIT) /* wrap after 4 MiB */

enum gmpd_gstate {
    GMPD_G_FREE = 0,      /* reclaimable */
    GMPD_G_BUILDING = 1,  /* being written by its allocator */
    GMPD_G_RUNNABLE = 2,  /* complete; may sit in a run queue */
    GMPD_G_RUNNING = 3,
    GMPD_G_DONE = 4,      /* result (if any) linked in `result` */
    GMPD_G_DATA = 5,      /* not a G: a result payload */
};

typedef struct gmpd_grec {
    uint32_t state;   /* gmpd_gstate; store-release when it changes */
    uint32_t units;   /* allocation size, header included */
    uint32_t gen;     /* bumped on every allocation at this unit */
    uint32_t parent;  /* handle of the spawning G; 0 for a root task */
    uint64_t root_id; /* the submitter's task id (roots), 0 otherwise */
    uint32_t len;     /* payload bytes after the header */
    uint32_t result;  /* handle of the result allocation, 0 if none yet */
    uint32_t status;  /* result status (runtime-defined: ok / exception) */
    uint32_t waiter;  /* M index + 1 to wake when DONE, 0 if nobody waits */
    uint32_t owner;   /* M index + 1 running it, 0 if none */
    uint32_t refs;    /* 0: one owner frees it; 2: claimed by a joiner while
                       * still queued -- the queue entry and the joiner each
                       * drop one, the last frees (gmpd_gclaim) */
    uint32_t detach;  /* 0; 1: nobody will read the result (the finisher
                       * frees); 2: result published first (the detacher
                       * frees).  One CAS each side decides who frees. */
    uint32_t outer;   /* the G its M was running when it started this one
                       * inline (join-helping), 0 if none: with the M's
                       * curg, the chain of Gs a dead M was running */
    uint32_t attempts; /* times an M died running it (recovery retries) */
    uint8_t _pad[GMPD_GUNIT - 60];
} gmpd_grec;

static inline uint32_t gmpd_gh_p(uint32_t h) { return h >> 22; }
static inline uint32_t gmpd_gh_unit(uint32_t h) { return h & (GMPD_ARENA_UNITS - 1u); }

size_t gmpd_gtab_size(uint32_t nprocs);
gmpd_grec *gmpd_grec_at(void *gtab, uint32_t handle);
uint32_t gmpd_galloc(gmpd_node *nd, void *gtab, uint32_t p, uint32_t nbytes);
void gmpd_gfree(gmpd_node *nd, void *gtab, uint32_t handle);
int gmpd_gclaim(void *gtab, uint32_t handle);
int gmpd_gtake(gmpd_node *nd, void *gtab, uint32_t handle);
void gmpd_grelease(gmpd_node *nd, void *gtab, uint32_t handle);
void gmpd_gdetach(gmpd_node *nd, void *gtab, uint32_t handle);
int gmpd_gpublished(gmpd_node *nd, void *gtab, uint32_t handle);
uint32_t gmpd_greclaim(gmpd_node *nd, void *gtab, uint32_t p);
uint32_t gmpd_gtab_live_units(gmpd_node *nd, uint32_t p);
size_t gmpd_gtab_trim(gmpd_node *nd, void *gtab, uint32_t p);
uint32_t gmpd_gtab_sweep_building(gmpd_node *nd, void *gtab, uint32_t p);
int gmpd_gpublish(gmpd_node *nd, void *gtab, uint32_t handle, uint32_t status, uint32_t rh);
uint32_t gmpd_gtab_scan(gmpd_node *nd, void *gtab, uint32_t p, uint32_t *out, uint32_t cap);

#endif /* GMPD_GTAB_H */
