/*
 * stress.h -- C-level loops that push Gs through the run queues as fast as
 * the protocol allows, for the multi-process stress and crash tests and for
 * bench/runq.py.  They call only the public runq.h operations, the same ones
 * the Python binding calls.  No Python here.
 *
 * The control segment (separate from the node segment):
 *     gmpd_stress header   one page: counters the harness reads
 *     logs[nlogs]          per M: count, then the Gs it consumed in order
 * A G is "consumed" once it is appended to its consumer's log (entry first,
 * then count, store-release), so a supervisor can tell after a crash
 * whether a G the dead M held had already been recorded.
 */
#ifndef GMPD_STRESS_H
#define GMPD_STRESS_H

#include "runq.h"

#define GMPD_STRESS_MAXLOGS 64u

typedef struct gmpd_stress {
    uint32_t total;        /* Gs are 1..total */
    uint32_t cursor;       /* producer: the next G it will put */
    uint32_t produced_all; /* producer has put every G */
    uint32_t stop;         /* harness asks every loop to return */
    uint32_t nlogs;
    uint32_t logcap;
    uint32_t nprocs;       /* Ps taking part (0..nprocs-1) */
    uint32_t go;           /* harness: every worker is in its loop */
    uint64_t stolen[GMPD_STRESS_MAXLOGS]; /* Gs moved by steals, per M */
    uint64_t steals[GMPD_STRESS_MAXLOGS]; /* successful steal calls, per M */
    uint64_t steal_ns[GMPD_STRESS_MAXLOGS]; /* thief loop wall time, per M */
} gmpd_stress;

size_t gmpd_stress_size(uint32_t nlogs, uint32_t logcap);
int gmpd_stress_init(void *mem, size_t len, uint32_t total, uint32_t nlogs, uint32_t nprocs);
uint64_t *gmpd_stress_log_count(gmpd_stress *st, uint32_t log);
uint32_t *gmpd_stress_log(gmpd_stress *st, uint32_t log);

int gmpd_stress_owner(gmpd_node *nd, gmpd_stress *st, uint32_t p, uint32_t mid, uint64_t seed);
int gmpd_stress_thief(gmpd_node *nd, gmpd_stress *st, uint32_t p, uint32_t mid, uint64_t seed);

#endif /* GMPD_STRESS_H */
