/*
 * stress.c -- see stress.h.  The owner loop is Go's producer side (newproc
 * puts into runnext one time in eight, otherwise at the tail, and spills a
 * full ring's half to the "global queue", here its log); thieves run Go's
 * stealWork: 4 passes over the other Ps in coprime random order, runnext
 * only on the last pass.  Runs in: one process per M, each on its own P.
 */
#define _GNU_SOURCE
#include "stress.h"

#include <sched.h>
#include <string.h>
#include <time.h>

#define LOG_HDR 64u

size_t gmpd_stress_size(uint32_t nlogs, uint32_t logcap)
{
    size_t per = LOG_HDR + (((size_t)logcap * 4u + 63u) & ~(size_t)63u);
    return 4096u + (size_t)nlogs * per;
}

int gmpd_stress_init(void *mem, size_t len, uint32_t total, uint32_t nlogs, uint32_t nprocs)
{
    if (nlogs == 0 || nlogs > GMPD_STRESS_MAXLOGS || total == 0 || nprocs == 0)
        return GMPD_EINVAL;
    if (len < gmpd_stress_size(nlogs, total))
        return GMPD_EINVAL;
    memset(mem, 0, 4096u);
    gmpd_stress *st = mem;
    st->total = total;
    st->cursor = 1;
    st->nlogs = nlogs;
    st->logcap = total;
    st->nprocs = nprocs;
    for (uint32_t i = 0; i < nlogs; i++)
        *gmpd_stress_log_count(st, i) = 0;
    return GMPD_OK;
}

static char *log_base(gmpd_stress *st, uint32_t log)
{
    size_t per = LOG_HDR + (((size_t)st->logcap * 4u + 63u) & ~(size_t)63u);
    return (char *)st + 4096u + (size_t)log * per;
}

uint64_t *gmpd_stress_log_count(gmpd_stress *st, uint32_t log) { return (uint64_t *)log_base(st, log); }
uint32_t *gmpd_stress_log(gmpd_stress *st, uint32_t log) { return (uint32_t *)(log_base(st, log) + LOG_HDR); }

/* Append n Gs: entries first, then the count (release), so the count never
 * covers an entry that is not there.  Runs in: the log's M only. */
static void log_append(gmpd_stress *st, uint32_t log, const uint32_t *gs, uint32_t n)
{
    uint64_t *cp = gmpd_stress_log_count(st, log);
    uint64_t c = *cp; /* own log: only this M writes it */
    uint32_t *e = gmpd_stress_log(st, log);
    for (uint32_t i = 0; i < n && c + i < st->logcap; i++)
        e[c + i] = gs[i];
    /* release: a reader that sees the count sees the entries. */
    __atomic_store_n(cp, c + n, __ATOMIC_RELEASE);
}

static uint64_t rnd(uint64_t *s)
{
    /* xorshift64* */
    uint64_t x = *s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * 0x2545F4914F6CDD1DULL;
}

static int stopped(gmpd_stress *st)
{
    return __atomic_load_n(&st->stop, __ATOMIC_ACQUIRE) != 0; /* pairs with the harness */
}

/* Start barrier: wait until the harness has every worker in its loop, so
 * thieves race the owner from the first G. */
static void wait_go(gmpd_stress *st)
{
    while (!__atomic_load_n(&st->go, __ATOMIC_ACQUIRE) && !stopped(st)) /* pairs with the harness */
        sched_yield();
}

int gmpd_stress_owner(gmpd_node *nd, gmpd_stress *st, uint32_t p, uint32_t mid, uint64_t seed)
{
    uint64_t rs = seed | 1u;
    int inherit;
    gmpd_m *mp = gmpd_node_m(nd, mid);
    wait_go(st);
    /* acquire: the harness set the resume point before starting us. */
    for (uint32_t g = __atomic_load_n(&st->cursor, __ATOMIC_ACQUIRE); g <= st->total; g++) {
        if ((g & 1023u) == 0 && stopped(st))
            return 1;
        int r = gmpd_runqput(nd, p, mid, g, (rnd(&rs) & 7u) == 0);
        if (r < 0)
            return r;
        if (r > 0) {
            log_append(st, mid, mp->batch, (uint32_t)r); /* "global queue" */
            gmpd_release(nd, mid);
        }
        /* release: the harness reads the cursor only after we are dead. */
        __atomic_store_n(&st->cursor, g + 1, __ATOMIC_RELEASE);
        if ((rnd(&rs) & 3u) == 0) {
            uint32_t x = gmpd_runqget(nd, p, mid, &inherit);
            if (x)
                log_append(st, mid, &x, 1);
        }
    }
    __atomic_store_n(&st->produced_all, 1, __ATOMIC_RELEASE); /* read by thieves */
    for (;;) {
        uint32_t x = gmpd_runqget(nd, p, mid, &inherit);
        if (!x)
            break;
        log_append(st, mid, &x, 1);
    }
    gmpd_release(nd, mid);
    return 0;
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static uint32_t gcd(uint32_t a, uint32_t b)
{
    while (b) {
        uint32_t t = a % b;
        a = b;
        b = t;
    }
    return a;
}

/* Go's stealWork over Ps 0..np-1 except p: 4 passes, each visiting every P
 * once in the order start + k*inc (inc coprime with np), runnext last. */
static uint32_t steal_work(gmpd_node *nd, gmpd_stress *st, uint32_t p, uint32_t mid, uint64_t *rs)
{
    uint32_t np = st->nprocs;
    for (int pass = 0; pass < 4; pass++) {
        uint32_t pos = (uint32_t)(rnd(rs) % np), inc;
        do
            inc = 1u + (uint32_t)(rnd(rs) % np);
        while (gcd(inc, np) != 1u);
        for (uint32_t k = 0; k < np; k++, pos = (pos + inc) % np) {
            if (pos == p)
                continue;
            uint32_t g;
            int n = gmpd_runqsteal(nd, p, pos, mid, pass == 3, &g);
            if (n > 0) {
                st->stolen[mid] += (uint64_t)n;
                st->steals[mid] += 1;
                return g;
            }
        }
    }
    return 0;
}

static int all_empty(gmpd_node *nd, gmpd_stress *st)
{
    for (uint32_t i = 0; i < st->nprocs; i++)
        if (!gmpd_runqempty(nd, i))
            return 0;
    return 1;
}

int gmpd_stress_thief(gmpd_node *nd, gmpd_stress *st, uint32_t p, uint32_t mid, uint64_t seed)
{
    wait_go(st);
    uint64_t rs = seed | 1u, t0 = now_ns();
    int inherit;
    for (uint32_t i = 0;; i++) {
        if ((i & 255u) == 0 && stopped(st))
            break;
        uint32_t x = gmpd_runqget(nd, p, mid, &inherit);
        if (!x)
            x = steal_work(nd, st, p, mid, &rs);
        if (x) {
            log_append(st, mid, &x, 1);
            continue;
        }
        /* acquire: pairs with the producer's release of produced_all. */
        if (__atomic_load_n(&st->produced_all, __ATOMIC_ACQUIRE) && all_empty(nd, st))
            break;
        sched_yield();
    }
    gmpd_release(nd, mid);
    st->steal_ns[mid] += now_ns() - t0;
    return 0;
}
