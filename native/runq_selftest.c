/*
 * runq_selftest.c -- the ring layer compiled and exercised with no Python:
 * FIFO, runnext, overflow, steal and recovery of a HELD record.  Run by
 * `make native`; the full behaviour is tested from tests/test_runq.py.
 */
#include <stdio.h>
#include <stdlib.h>

#include "runq.h"

#define CHECK(c)                                                        \
    do {                                                                \
        if (!(c)) {                                                     \
            fprintf(stderr, "runq_selftest: %s:%d: %s\n", __FILE__, __LINE__, #c); \
            return 1;                                                   \
        }                                                               \
    } while (0)

int main(void)
{
    size_t len = gmpd_node_size(2, 2);
    void *mem = aligned_alloc(4096, (len + 4095) & ~(size_t)4095);
    CHECK(mem != NULL);
    CHECK(gmpd_node_init(mem, len, 2, 2, 0xffffff00u, 1) == GMPD_OK);
    CHECK(gmpd_node_check(mem, len) == GMPD_OK);
    gmpd_node *nd = mem;
    int inherit;
    for (uint32_t g = 1; g <= 256; g++)
        CHECK(gmpd_runqput(nd, 0, 0, g, 0) == 0);
    CHECK(gmpd_runqput(nd, 0, 0, 257, 0) == 129); /* half + 1 out */
    CHECK(gmpd_node_m(nd, 0)->batch[0] == 1 && gmpd_node_m(nd, 0)->batch[128] == 257);
    CHECK(gmpd_runqlen(nd, 0) == 128);
    CHECK(gmpd_runqput(nd, 0, 0, 500, 1) == 0);
    CHECK(gmpd_runqget(nd, 0, 0, &inherit) == 500 && inherit == 1);
    CHECK(gmpd_runqget(nd, 0, 0, &inherit) == 129 && inherit == 0);
    uint32_t g;
    CHECK(gmpd_runqsteal(nd, 1, 0, 1, 0, &g) == 64); /* ceil(127 / 2) */
    CHECK(g == 130 + 63 && gmpd_runqlen(nd, 1) == 63 && gmpd_runqlen(nd, 0) == 63);
    uint32_t orphans[GMPD_RUNQ_SIZE + 1];
    uint64_t w;
    int completed;
    CHECK(gmpd_recover_m(nd, 1, orphans, &w, &completed) == 1 && orphans[0] == g);
    CHECK(gmpd_op_state(w) == GMPD_REC_HELD && gmpd_op_kind(w) == GMPD_OP_STEAL);
    CHECK(gmpd_runqdrain(nd, 0, 0) == 63 && gmpd_runqempty(nd, 0));
    free(mem);
    puts("runq_selftest: ok");
    return 0;
}
