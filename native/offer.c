/*
 * offer.c -- the node-local submit path: offer slots in node memory.
 *
 * A client on the node writes a root task into a FREE slot and wakes a
 * spinning M, which takes it, queues it as a G and runs it; the client also
 * sends the task's Submit to the coordinator as before, and the coordinator
 * settles the slot when it reads that Submit (gmpd/offer.py has the whole
 * protocol and the recovery after an M dies).  A slot's state word is
 * [seq:32][owner mid+1:24][state:8], moved by CAS only; seq counts the
 * slot's offers, so a word from an earlier offer never matches.
 */
#include <string.h>

#include "offer.h"

uint64_t gmpd_offer_word(uint32_t seq, int32_t mid, uint32_t state)
{
    return ((uint64_t)seq << 32) | ((uint64_t)(uint32_t)(mid + 1) << 8) | (state & 0xffu);
}

uint64_t gmpd_offer_load(gmpd_node *nd, uint32_t slot)
{
    /* acquire: pairs with the release CAS that published the state, so the
     * fields written before it (tid, len, payload) are visible. */
    return __atomic_load_n(&gmpd_node_offer(nd, slot)->state, __ATOMIC_ACQUIRE);
}

int gmpd_offer_cas(gmpd_node *nd, uint32_t slot, uint64_t old, uint64_t new_)
{
    /* acq_rel: release publishes what the caller wrote before; acquire sees
     * what the previous owner of the slot wrote. */
    return __atomic_compare_exchange_n(&gmpd_node_offer(nd, slot)->state, &old, new_, 0, __ATOMIC_ACQ_REL,
                                       __ATOMIC_ACQUIRE);
}

/* Runs in: the client, one thread at a time (its send lock), in a slot of
 * `lanes` (a bit per slot whose previous task the client is done with).
 * FREE -> WRITING -> OFFERED(seq + 1); the reply wanted becomes tid's. */
int gmpd_offer_put(gmpd_node *nd, uint64_t tid, const void *buf, uint32_t len, uint32_t lanes, uint32_t *slot,
                   uint32_t *seq)
{
    if (len > GMPD_OFFER_BYTES || tid == 0 || tid > GMPD_OFFER_TID_MAX)
        return GMPD_ENOSPACE;
    for (uint32_t i = 0; i < GMPD_OFFER_SLOTS; i++) {
        uint64_t w = gmpd_offer_load(nd, i);
        if (!(lanes & (1u << i)) || GMPD_OFFER_STATE(w) != GMPD_OFFER_FREE)
            continue;
        gmpd_offer *o = gmpd_node_offer(nd, i);
        /* The previous task's reply: never one an M is writing (its bytes
         * would be torn); a reply still wanted is not any more (the CAS
         * makes a late writer fail its claim). */
        uint64_t want = __atomic_load_n(&o->want, __ATOMIC_ACQUIRE);
        if ((want & GMPD_REPLY_WRITING) ||
            !__atomic_compare_exchange_n(&o->want, &want, tid, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
            continue;
        __atomic_store_n(&o->done, 0, __ATOMIC_RELAXED); /* relaxed: published by the state's release */
        uint32_t s = GMPD_OFFER_SEQ(w) + 1;
        if (!gmpd_offer_cas(nd, i, w, gmpd_offer_word(s, -1, GMPD_OFFER_WRITING)))
            continue; /* (nobody else moves a FREE slot) */
        o->tid = tid;
        o->len = len;
        memcpy(o->payload, buf, len);
        /* release: tid, len and payload are in place before anyone sees OFFERED. */
        __atomic_store_n(&o->state, gmpd_offer_word(s, -1, GMPD_OFFER_OFFERED), __ATOMIC_RELEASE);
        *slot = i;
        *seq = s;
        return GMPD_OK;
    }
    return GMPD_ENOSPACE;
}

/* Runs in: an M holding a P.  OFFERED -> TAKEN(mid); returns the slot, or -1. */
int gmpd_offer_take(gmpd_node *nd, uint32_t mid, uint32_t *seq)
{
    for (uint32_t i = 0; i < GMPD_OFFER_SLOTS; i++) {
        uint64_t w = gmpd_offer_load(nd, i);
        if (GMPD_OFFER_STATE(w) != GMPD_OFFER_OFFERED)
            continue;
        if (gmpd_offer_cas(nd, i, w, gmpd_offer_word(GMPD_OFFER_SEQ(w), (int32_t)mid, GMPD_OFFER_TAKEN))) {
            *seq = GMPD_OFFER_SEQ(w);
            return (int)i;
        }
    }
    return -1;
}

/* Runs in: M `mid` that ran root task `tid`, whichever M it is (a thief
 * too): if a client thread wants its result here, write it and wake the
 * thread.  Returns 1 if written. */
int gmpd_offer_reply(gmpd_node *nd, uint32_t mid, uint64_t tid, uint32_t status, const void *buf, uint32_t len)
{
    if (len > GMPD_REPLY_BYTES || tid == 0 || tid > GMPD_OFFER_TID_MAX)
        return 0; /* (the result goes by ZeroMQ only, as every result does) */
    uint64_t claim = tid | GMPD_REPLY_WRITING | ((uint64_t)(mid + 1) << GMPD_REPLY_WRITER_SHIFT);
    for (uint32_t i = 0; i < GMPD_OFFER_SLOTS; i++) {
        gmpd_offer *o = gmpd_node_offer(nd, i);
        uint64_t want = tid;
        if (__atomic_load_n(&o->want, __ATOMIC_RELAXED) != tid) /* relaxed: the CAS below decides */
            continue;
        /* acq_rel: claims the reply area; the client's re-use of the slot
         * (a CAS of want) cannot happen while the claim holds. */
        if (!__atomic_compare_exchange_n(&o->want, &want, claim, 0, __ATOMIC_ACQ_REL, __ATOMIC_RELAXED))
            continue;
        o->status = status;
        o->rlen = len;
        memcpy(o->reply, buf, len);
        /* release: the reply's bytes are in place before done names the task. */
        __atomic_store_n(&o->done, tid, __ATOMIC_RELEASE);
        __atomic_store_n(&o->want, 0, __ATOMIC_RELEASE);
        gmpd_offer_poke(nd, i);
        return 1;
    }
    return 0;
}

/* Wake the client threads waiting on slot's reply (they re-check). */
void gmpd_offer_poke(gmpd_node *nd, uint32_t slot)
{
    gmpd_offer *o = gmpd_node_offer(nd, slot);
    /* release: what the poker wrote before is visible to the woken thread. */
    __atomic_add_fetch(&o->wake, 1, __ATOMIC_RELEASE);
    gmpd_futex_wake(&o->wake, 1 << 30);
}

/* Runs in: the coordinator, after M `mid` died: replies it was writing are
 * given up (the client has the result by ZeroMQ; the slot is free again).
 * Returns how many. */
int gmpd_offer_unclaim(gmpd_node *nd, uint32_t mid)
{
    int n = 0;
    for (uint32_t i = 0; i < GMPD_OFFER_SLOTS; i++) {
        gmpd_offer *o = gmpd_node_offer(nd, i);
        uint64_t want = __atomic_load_n(&o->want, __ATOMIC_ACQUIRE);
        if ((want & GMPD_REPLY_WRITING) && ((want >> GMPD_REPLY_WRITER_SHIFT) & 0x3ffu) == mid + 1 &&
            __atomic_compare_exchange_n(&o->want, &want, 0, 0, __ATOMIC_ACQ_REL, __ATOMIC_RELAXED)) {
            gmpd_offer_poke(nd, i);
            n++;
        }
    }
    return n;
}
