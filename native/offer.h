/* offer.h -- offer slots in node memory (offer.c). */
#ifndef GMPD_OFFER_H
#define GMPD_OFFER_H

#include "runq.h"

/* Offer states (gmpd/offer.py mirrors the numbers). */
enum gmpd_offerstate {
    GMPD_OFFER_FREE = 0,      /* the client may write it */
    GMPD_OFFER_OFFERED = 1,   /* published: an M may take it, the coordinator withdraw it */
    GMPD_OFFER_TAKEN = 2,     /* an M took it and is queueing its G */
    GMPD_OFFER_QUEUED = 3,    /* its G is queued; the coordinator has not read the Submit */
    GMPD_OFFER_ACKED = 4,     /* the coordinator read the Submit while it was TAKEN */
    GMPD_OFFER_WITHDRAWN = 5, /* its M died before queueing it: the Submit runs it as usual */
    GMPD_OFFER_WRITING = 6,   /* the client is writing it */
};

#define GMPD_OFFER_SEQ(w) ((uint32_t)((w) >> 32))
#define GMPD_OFFER_STATE(w) ((uint32_t)((w) & 0xffu))
#define GMPD_OFFER_MID(w) ((int32_t)(((w) >> 8) & 0xffffffu) - 1)

uint64_t gmpd_offer_word(uint32_t seq, int32_t mid, uint32_t state);
uint64_t gmpd_offer_load(gmpd_node *nd, uint32_t slot);
int gmpd_offer_cas(gmpd_node *nd, uint32_t slot, uint64_t old, uint64_t new_);
int gmpd_offer_put(gmpd_node *nd, uint64_t tid, const void *buf, uint32_t len, uint32_t lanes, uint32_t *slot,
                   uint32_t *seq);
int gmpd_offer_reply(gmpd_node *nd, uint32_t mid, uint64_t tid, uint32_t status, const void *buf, uint32_t len);
int gmpd_offer_unclaim(gmpd_node *nd, uint32_t mid);
void gmpd_offer_poke(gmpd_node *nd, uint32_t slot);
int gmpd_offer_take(gmpd_node *nd, uint32_t mid, uint32_t *seq);

#endif
