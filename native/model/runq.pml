/*
 * runq.pml -- SPIN model of native/runq.c: Go's per-P run queue (runnext +
 * ring with free-running head/tail counters) with gmpd's crash recovery
 * (tagged CAS words, confirmations, per-M op records, gmpd_recover_m).
 *
 * Run: `make` here (or `make spin` at the top level).  Result on this 2-core
 * machine (SPIN 6.5.2, pan -DSAFETY -DCOLLAPSE, partial order reduction on,
 * exhaustive: no bitstate/hash compaction), all "errors: 0", complete search:
 *
 *   set  parameters                              config   states      time
 *   A    SIZE 4, NG 3, PRE 0, REPLACE 1          nocrash    5,328,698    4 s
 *        (empty start: put/put_next/get/steal    thief     59,230,127   57 s
 *         interleavings, wrap at 255->0)         owner     75,403,490   80 s
 *   B    SIZE 4, NG 6, PRE 4, REPLACE 1          nocrash    6,232,039    4 s
 *        (full ring: runqputslow, putslow of a   thief     97,740,785  116 s
 *         kicked runnext G, 2-G steals)          owner     89,272,848  106 s
 *   C    SIZE 4, NG 3, OSTEAL 1, NEXTMASK 8      thief     20,228,795   17 s
 *        (M0 also steals once from P1)           owner     22,408,699   19 s
 *
 * (peak memory about 5 GB, for B-thief; `make` takes about 7 minutes.)
 * Also passed, not in the Makefile: SIZE 2 / NG 3 in all three configs
 * (5.3M / 58M / 74M states), and A-thief with -DNOREDUCE (126M states).
 *
 * Sanity check (done by hand, not left in): making recovery's took_effect()
 * always answer "did not take effect" gives an assertion violation in both
 * crash configurations within a second; so do: not reading confirmed[],
 * confirm() as a no-op, publishing t+n-1 instead of t+n after a dead
 * thief's steal, dropping the kicked G of a PUTNEXT, the harness not
 * deduplicating HELD orphans or ignoring Recovery.accepted(), storing the
 * op word before batch[] in rec_hold1, tail before slot in put_tail, and
 * runqputslow without its head re-check (set B only).
 *
 * What is modelled (names follow runq.c):
 *   - P0, owned by M0 (proctype Owner = gmpd_stress_owner): puts G 1..NG in
 *     order, each one nondeterministically with runnext (put_next) or at the
 *     tail (put_tail, which spills HALF+1 Gs with runqputslow when the ring
 *     is full; the batch goes to M0's log = "global queue"), and after each
 *     put nondeterministically does one runqget; then drains P0 with
 *     runqget until empty.
 *   - P1, owned by M1 (proctype Thief = gmpd_stress_thief): runqget on its
 *     own P1, otherwise runqsteal from P0 (steal_runnext chosen
 *     nondeterministically, which covers stealWork's "runnext on the last
 *     pass"), logging what it gets; stops once the owner is done.
 *   - CRASH_THIEF / CRASH_OWNER: the Recovery process may, once, at any
 *     moment before it is done, SIGKILL M1 / M0 (kflag).  The victim's body
 *     is wrapped in `unless { kflag[m] }`, so it stops before any of its
 *     atomic steps (never inside one: an `atomic`/`d_step` below is one C
 *     atomic access) and never runs again.  Then Recovery (only after the
 *     death, as the C precondition "the M is dead (reaped)" demands) runs
 *     gmpd_recover_m's decision logic, and the
 *     harness part of gmpd/_runq_stress.py: drop HELD orphans that the dead
 *     M's log already ends with, put the rest in the recovered list, work
 *     out the owner's resume point with Recovery.accepted(), and start a
 *     replacement M on the same M slot and P (REPLACE).  The other M keeps
 *     running concurrently with the recovery.
 *   - At the end (every M done) the checker drains runnext and both rings
 *     and asserts that every G 1..NG was seen exactly once across the logs,
 *     the recovered orphans and the queues (plus, with REPLACE 0, the Gs the
 *     dead owner never got to put).  Duplicates are also caught eagerly.
 *
 * Granularity.  Every shared access of the C code is its own Promela
 * statement: loads of head / tail / runnext / slots, the slot stores, the
 * tail store, each CAS (one d_step: compare the whole 64-bit word, tag
 * included), the confirmation (one d_step: the C load + CAS-max loop is a
 * linearizable atomic max), and every store of the op word.  The plain
 * record fields written just before an op-word store (rp, g, t, h, n, old,
 * victim, batch, nheld) are grouped into one d_step each: only recovery
 * reads them, after the death, so the only thing that matters is where the
 * crash can fall relative to the op-word store (before the group, or after
 * it and before the op word: both are crash points here).  Reads by an M of
 * words only it writes (its own tail, its own slots, its own record) are
 * folded into a neighbouring statement, and so is a thief's store into its
 * own slot past its own tail with the victim-slot load it copies (no one
 * but recovery reads such a slot, and recovery only after the death).
 *
 * Not modelled: runqdrain, runqempty/runqlen, the P lease word, more than
 * one thief, a G put more than once (so runnext ABA is not exercised; head
 * ABA needs 2^32 wraps), two crashes in one run, the 2^20 confirmation
 * refresh and 22-bit seq wrap, usleep3.
 *
 * Memory model: SPIN explores sequentially consistent interleavings only.
 * The C code's acquire/release orders are claimed (runq.c §1, §2(c)) to
 * give the same outcomes as SC for these accesses; weak-memory behaviour is
 * NOT checked by this model.
 *
 * Counters are bytes that wrap mod 256 (the C ones wrap mod 2^32); they
 * start at BASE (default 254) so every run crosses the wrap.  SIZE divides
 * 256, as 256 divides 2^32 in C.  Tags are (mid+1, seq) pairs; seqs are
 * bytes compared with the C seq_after() rule scaled to 8 bits (they never
 * get near wrapping at this scale).
 */

/* ---- parameters (override with spin -D...) ---------------------------- */
#ifndef SIZE
#define SIZE 4                  /* GMPD_RUNQ_SIZE */
#endif
#define HALF (SIZE / 2)         /* GMPD_RUNQ_HALF */
#define B (HALF + 1)            /* batch / held capacity used here */
#ifndef NG
#define NG 3                    /* Gs 1..NG */
#endif
#ifndef BASE
#define BASE 254                /* counter_base */
#endif
#ifndef PRE
#define PRE 0                   /* Gs 1..PRE already queued in P0 at start */
#endif
#ifndef OSTEAL
#define OSTEAL 0                /* owner M0 steals once from P1 when P0 is empty */
#endif
#ifndef REPLACE
#define REPLACE 1               /* start a replacement M after recovery */
#endif
#ifndef NEXTMASK
#define NEXTMASK 255            /* bit g: G g may be put with runnext */
#endif
#ifndef GETMASK
#define GETMASK 255             /* bit g: the owner may runqget after putting g */
#endif
#define NEXTOK(g) ((NEXTMASK >> (g)) & 1)
#define GETOK(g) ((GETMASK >> (g)) & 1)

#define NP 2
#define NM 2
#define WRAP(x) ((x) & 255)
#define DIFF(a, b) (((a) - (b)) & 255)
#define SEQ_AFTER(a, b) (DIFF(a, b) != 0 && DIFF(a, b) < 128)

/* gmpd_opkind */
#define OP_NONE 0
#define OP_PUT 1
#define OP_PUTNEXT 2
#define OP_PUTSLOW 3
#define OP_GET 4
#define OP_GETNEXT 5
#define OP_STEAL 6
#define OP_STEALNEXT 7
/* gmpd_opstate */
#define IDLE 0
#define INFLIGHT 1
#define HELD 2

#define ENOSPACE 255

/* ---- shared memory: the Ps ------------------------------------------- */
byte head_c[NP];                /* head = [tag: tm, ts][counter: c] */
byte head_tm[NP];               /*   tm = mid + 1 (0: no tag) */
byte head_ts[NP];               /*   ts = seq */
byte tail[NP];
byte rn_g[NP];                  /* runnext = [tag: tm, ts][g] */
byte rn_tm[NP];
byte rn_ts[NP];
byte runq[NP * SIZE];

/* ---- shared memory: the Ms ------------------------------------------- */
byte confirmed[NM];
byte op_arg[NM];                /* op word = [arg][seq][kind][state] */
byte op_seq[NM];
byte op_kind[NM];
byte op_st[NM];
byte rp[NM];
byte vic[NM];
byte mh[NM];
byte mt[NM];
byte mg[NM];
byte mold[NM];
byte mn[NM];
byte nheld[NM];
byte batch[NM * B];

/* ---- harness (gmpd_stress + _runq_stress.py) -------------------------- */
byte cnt[NG + 1];               /* times each G was consumed/recovered/seen */
byte lt[NM * B];                /* the last B entries of each M's log */
byte cursor = 1;                /* owner: next G it will put */
bool owner_done;                /* owner finished (thieves may stop) */
bool done[NM];                  /* M slot finished (incl. replacement) */
bool kflag[NM];                 /* M was SIGKILLed */
bool dead[NM];                  /* M stopped because of kflag[] */

/* ---- the op record (runq.c: rec_set, rec_begin, rec_step, rec_hold1) -- */
inline rec_set(M, ARG, SEQ, KIND, ST)
{
    d_step { op_arg[M] = ARG; op_seq[M] = SEQ; op_kind[M] = KIND; op_st[M] = ST }
}

inline rec_begin(M)
{
    d_step {
        if
        :: op_st[M] != IDLE -> op_st[M] = IDLE
        :: else
        fi
    }
}

/* seq := op seq + 1; op word := {ARG, seq, KIND, INFLIGHT}.  (The 2^20
 * refresh of confirmed[] never triggers at this scale.) */
inline rec_step(M, ARG, KIND)
{
    d_step {
        seq = op_seq[M] + 1;
        op_arg[M] = ARG; op_seq[M] = seq; op_kind[M] = KIND; op_st[M] = INFLIGHT
    }
}

inline rec_hold1(M, G, ARG, SEQ, KIND)
{
    d_step { batch[M * B] = G; nheld[M] = 1 };
    rec_set(M, ARG, SEQ, KIND, HELD)
}

/* confirm(tag (TM, TS), self): confirmed[m] = max(confirmed[m], s). */
inline confirm(TM, TS, SELF)
{
    d_step {
        if
        :: TM != 0 && TM - 1 != SELF && SEQ_AFTER(TS, confirmed[TM - 1]) ->
            confirmed[TM - 1] = TS
        :: else
        fi
    }
}

/* CAS head[P]: (htm, hts, hc) -> (M+1, seq, NEWC); ok := success. */
inline cas_head(P, M, NEWC)
{
    d_step {
        if
        :: head_c[P] == hc && head_tm[P] == htm && head_ts[P] == hts ->
            head_c[P] = NEWC; head_tm[P] = M + 1; head_ts[P] = seq; ok = 1
        :: else -> ok = 0
        fi
    }
}

/* CAS runnext[P]: (nt, ns, ng) -> (M+1, seq, NEWG); ok := success; on
 * failure (nt, ns, ng) := the current word (C's expected is updated). */
inline cas_next(P, M, NEWG)
{
    d_step {
        if
        :: rn_g[P] == ng && rn_tm[P] == nt && rn_ts[P] == ns ->
            rn_g[P] = NEWG; rn_tm[P] = M + 1; rn_ts[P] = seq; ok = 1
        :: else -> ok = 0; ng = rn_g[P]; nt = rn_tm[P]; ns = rn_ts[P]
        fi
    }
}

/* ---- the harness's log (stress.c log_append): entries then count ----- */
inline log_entry(M, X)
{
    assert(X >= 1 && X <= NG && cnt[X] == 0);       /* consumed twice? */
    cnt[X]++;
    q = 0;
    do
    :: q < B - 1 -> lt[M * B + q] = lt[M * B + q + 1]; q++
    :: else -> break
    od;
    lt[M * B + B - 1] = X;
    q = 0
}

inline log1(M, X)
{
    d_step { log_entry(M, X) }
}

/* ---- put_tail (runq.c) ----------------------------------------------- */
/* Put G (arg ARG) at the tail of P; r := 0, or B when the batch is held. */
inline put_tail(P, M, G, ARG)
{
    do
    :: h = head_c[P];                                   /* load-acquire head */
        d_step { t = tail[P]; rp[M] = P; mg[M] = G; mt[M] = t };
        rec_step(M, ARG, OP_PUT);
        if
        :: DIFF(t, h) < SIZE ->
            runq[P * SIZE + t % SIZE] = G;              /* slot */
            tail[P] = WRAP(t + 1);                      /* store-release tail */
            rec_set(M, ARG, seq, OP_PUT, IDLE);
            r = 0;
            break
        :: else
        fi;
        /* runqputslow */
        d_step { hc = head_c[P]; htm = head_tm[P]; hts = head_ts[P] };
        if
        :: hc != h -> skip                              /* continue */
        :: else ->
            d_step {                                    /* own slots, batch */
                j = 0;
                do
                :: j < HALF -> batch[M * B + j] = runq[P * SIZE + (h + j) % SIZE]; j++
                :: else -> break
                od;
                j = 0;
                batch[M * B + HALF] = G; mh[M] = h
            };
            rec_step(M, ARG, OP_PUTSLOW);
            confirm(htm, hts, M);
            cas_head(P, M, WRAP(h + HALF));
            if
            :: ok ->
                nheld[M] = B;
                rec_set(M, ARG, seq, OP_PUTSLOW, HELD);
                r = B;
                break
            :: else                                     /* R2: retry */
            fi
        fi
    od
}

/* ---- gmpd_runqput ---------------------------------------------------- */
inline runqput(P, M, G, NEXT)
{
    rec_begin(M);
    if
    :: !NEXT -> put_tail(P, M, G, G)
    :: else ->
        d_step { nt = rn_tm[P]; ns = rn_ts[P]; ng = rn_g[P] };   /* load runnext */
        d_step { rp[M] = P; mg[M] = G; mold[M] = ng };
        rec_step(M, G, OP_PUTNEXT);
        do
        :: confirm(nt, ns, M);
            cas_next(P, M, G);
            if
            :: ok -> break
            :: else -> mold[M] = ng                     /* R2 rewrite */
            fi
        od;
        if
        :: ng == 0 ->
            rec_set(M, G, seq, OP_PUTNEXT, IDLE);
            r = 0
        :: else ->
            kicked = ng;
            rec_hold1(M, kicked, G, seq, OP_PUTNEXT);
            put_tail(P, M, kicked, G)
        fi
    fi
}

/* ---- gmpd_runqget: x := the G (HELD), or 0 --------------------------- */
inline runqget(P, M)
{
    rec_begin(M);
    x = 0;
    d_step { nt = rn_tm[P]; ns = rn_ts[P]; ng = rn_g[P] };
    if
    :: ng != 0 ->
        d_step { rp[M] = P; mg[M] = ng };
        rec_step(M, 0, OP_GETNEXT);
        confirm(nt, ns, M);
        cas_next(P, M, 0);
        if
        :: ok ->
            rec_hold1(M, mg[M], 0, seq, OP_GETNEXT);
            x = mg[M]
        :: else
        fi
    :: else
    fi;
    if
    :: x == 0 ->
        do
        :: d_step { hc = head_c[P]; htm = head_tm[P]; hts = head_ts[P]; t = tail[P] };
            if
            :: t == hc -> rec_begin(M); break
            :: else
            fi;
            gg = runq[P * SIZE + hc % SIZE];            /* slot read */
            d_step { rp[M] = P; mh[M] = hc; mg[M] = gg };
            rec_step(M, 0, OP_GET);
            confirm(htm, hts, M);
            cas_head(P, M, WRAP(hc + 1));
            if
            :: ok -> rec_hold1(M, gg, 0, seq, OP_GET); x = gg; break
            :: else
            fi
        od
    :: else
    fi
}

/* ---- gmpd_runqsteal: n := grabbed (0 none, ENOSPACE), x := the G ------ */
inline runqsteal(P, V, M)
{
    x = 0; n = 0; kind = 0;
    rec_begin(M);
    d_step { t = tail[P]; h = head_c[P] };              /* own tail; own head */
    if
    :: DIFF(t, h) > HALF - 1 -> n = ENOSPACE
    :: else ->
        do
        :: d_step { hc = head_c[V]; htm = head_tm[V]; hts = head_ts[V] };
            vt = tail[V];                               /* load-acquire */
            d_step { n = DIFF(vt, hc); n = n - n / 2 };
            if
            :: n == 0 ->
                /* steal_runnext, chosen per iteration rather than per
                 * call: a superset of C (a call with steal_runnext = 1
                 * may here also give up after a failed runnext CAS, which
                 * only skips re-reads and leaves the record IDLE as C's
                 * next == 0 exit would) */
                if
                :: break                                /* steal_runnext == 0 */
                :: skip                                 /* steal_runnext == 1 */
                fi;
                d_step { nt = rn_tm[V]; ns = rn_ts[V]; ng = rn_g[V] };
                if
                :: ng == 0 -> break
                :: else
                fi;
                runq[P * SIZE + t % SIZE] = ng;         /* copy to own slot */
                d_step { rp[M] = P; vic[M] = V; mg[M] = ng; mt[M] = t };
                rec_step(M, 0, OP_STEALNEXT);
                confirm(nt, ns, M);
                cas_next(V, M, 0);
                if
                :: ok -> n = 1; kind = OP_STEALNEXT; break
                :: else -> n = 0                        /* continue */
                fi
            :: n > HALF -> skip                         /* inconsistent h, t */
            :: else ->
                j = 0;
                do
                :: j < n ->
                    /* load victim slot, store own slot past own tail (no
                     * one else reads it: no crash point needed between) */
                    runq[P * SIZE + (t + j) % SIZE] = runq[V * SIZE + (hc + j) % SIZE];
                    j++
                :: else -> break
                od;
                j = 0;
                d_step { rp[M] = P; vic[M] = V; mh[M] = hc; mn[M] = n; mt[M] = t };
                rec_step(M, 0, OP_STEAL);
                confirm(htm, hts, M);
                cas_head(V, M, WRAP(hc + n));
                if
                :: ok -> kind = OP_STEAL; break
                :: else
                fi
            fi
        od;
        if
        :: kind != 0 ->                                 /* grabbed: */
            x = runq[P * SIZE + (t + n - 1) % SIZE];    /* own slot */
            if
            :: n > 1 -> tail[P] = WRAP(t + n - 1)       /* store-release */
            :: else
            fi;
            rec_hold1(M, x, 0, seq, kind)
        :: else ->
            rec_begin(M);
            n = 0
        fi
    fi
}

/* ---- the two Ms -------------------------------------------------------- */
#define LOCALS \
    byte x, r, n, j, q, h, t, vt, hc, htm, hts, nt, ns, ng, gg, kicked, seq, kind; \
    bit ok, nxt
/* A dead process keeps its slot in the state vector: zero its locals so
 * that states after the crash do not differ by what it had in registers. */
#define DIE(m) \
    d_step { dead[m] = 1; x = 0; r = 0; n = 0; j = 0; q = 0; h = 0; t = 0; vt = 0; hc = 0; htm = 0; \
             hts = 0; nt = 0; ns = 0; ng = 0; gg = 0; kicked = 0; seq = 0; kind = 0; ok = 0; nxt = 0; g = 0; osteal = 0 }

proctype Owner(byte g0; bit first)
{
    LOCALS;
    byte g = g0;
    bit osteal;
    {
        do
        :: g <= NG ->
            if
            :: nxt = 0
            :: NEXTOK(g) -> nxt = 1
            fi;
            runqput(0, 0, g, nxt);
            if
            :: r > 0 ->                                 /* "global queue" */
                d_step {
                    j = 0;
                    do
                    :: j < r -> log_entry(0, batch[j]); j++   /* batch of M0 */
                    :: else -> break
                    od;
                    j = 0
                };
                rec_begin(0)                            /* gmpd_release */
            :: else
            fi;
            cursor = g + 1;
            d_step { r = 0; kicked = 0; nxt = 0; ok = 0; seq = 0 };
            if
            :: skip
            :: GETOK(g) ->
                runqget(0, 0);
                if
                :: x != 0 -> log1(0, x)
                :: else
                fi
            fi;
            d_step { x = 0; h = 0; t = 0; hc = 0; htm = 0; hts = 0; nt = 0; ns = 0; ng = 0; gg = 0; ok = 0; seq = 0 };
            g++
        :: else -> break
        od;
        do                                              /* drain own P0 */
        :: runqget(0, 0);
            if
            :: x != 0 -> log1(0, x)
#if OSTEAL
            :: x == 0 && !osteal ->                     /* findrunnable: steal */
                osteal = 1;                             /* once, from P1 */
                runqsteal(0, 1, 0);
                if
                :: x != 0 -> log1(0, x)
                :: else
                fi
#endif
            :: else -> break
            fi
        od;
        rec_begin(0);                                   /* gmpd_release */
        d_step { owner_done = 1; done[0] = 1 }
    } unless { (first && kflag[0]) -> DIE(0) }
}

proctype Thief(bit first)
{
    LOCALS;
    byte g;                                             /* unused (DIE) */
    bit osteal;                                         /* unused (DIE) */
    {
        do
        :: runqget(1, 1);
            if
            :: x == 0 ->
                /* stealWork: steal_runnext is chosen where it matters,
                 * inside runqsteal (only when the ring looks empty) */
                runqsteal(1, 0, 1)
            :: else
            fi;
            if
            :: x != 0 -> log1(1, x)
            :: else
            fi;
            d_step { x = 0; n = 0; h = 0; t = 0; vt = 0; hc = 0; htm = 0; hts = 0; nt = 0; ns = 0; ng = 0;
                     gg = 0; seq = 0; kind = 0; ok = 0 }
        :: owner_done -> break
        od;
        rec_begin(1);                                   /* gmpd_release */
        done[1] = 1
    } unless { (first && kflag[1]) -> DIE(1) }
}


/* ---- gmpd_recover_m + the harness (_runq_stress.py recover) ----------- */
#define IS_PUT(k) ((k) == OP_PUT || (k) == OP_PUTNEXT || (k) == OP_PUTSLOW)

/* took := did the dead M's step w_seq install (M+1, w_seq, WANT) in the
 * word (TMv, TSv, LOWv)?  One load of the word, then one of confirmed[]. */
inline took_effect(M, TMv, TSv, LOWv, WANT)
{
    d_step { wtm = TMv; wts = TSv; wlow = LOWv };
    if
    :: wtm == M + 1 && wts == w_seq && wlow == WANT -> took = 1
    :: else -> took = (confirmed[M] == w_seq)
    fi
}

proctype Recovery(byte m)
{
    byte w_arg, w_seq, w_kind, w_st, took, no, i, pp, vp, wtm, wts, wlow, resume;
    byte orph[B];
    /* the crash: M `m` may be SIGKILLed once, at any point before it is
     * done (its `unless` then stops it before its next step) */
    /* (if m finishes first this waits forever: a valid end state) */
end_kill:
    atomic { !done[m] -> kflag[m] = 1 };
    dead[m];                                            /* reaped */
    d_step { w_arg = op_arg[m]; w_seq = op_seq[m]; w_kind = op_kind[m]; w_st = op_st[m] };
    if
    :: w_st == HELD ->
        d_step {
            no = nheld[m];
            i = 0;
            do
            :: i < no -> orph[i] = batch[m * B + i]; i++
            :: else -> break
            od;
            i = 0
        }
    :: w_st == INFLIGHT ->
        d_step { pp = rp[m]; vp = vic[m] };
        if
        :: w_kind == OP_PUT ->
            took = (tail[pp] != mt[m]);
            if
            :: !took -> orph[no] = mg[m]; no++
            :: else
            fi
        :: w_kind == OP_PUTNEXT ->
            took_effect(m, rn_tm[pp], rn_ts[pp], rn_g[pp], mg[m]);
            if
            :: !took -> orph[no] = mg[m]; no++
            :: took && mold[m] != 0 -> orph[no] = mold[m]; no++
            :: else
            fi
        :: w_kind == OP_PUTSLOW ->
            took_effect(m, head_tm[pp], head_ts[pp], head_c[pp], WRAP(mh[m] + HALF));
            if
            :: took ->
                d_step {
                    i = 0;
                    do
                    :: i < B -> orph[i] = batch[m * B + i]; i++
                    :: else -> break
                    od;
                    no = B; i = 0
                }
            :: else -> orph[no] = batch[m * B + HALF]; no++
            fi
        :: w_kind == OP_GET ->
            took_effect(m, head_tm[pp], head_ts[pp], head_c[pp], WRAP(mh[m] + 1));
            if
            :: took -> orph[no] = mg[m]; no++
            :: else
            fi
        :: w_kind == OP_GETNEXT ->
            took_effect(m, rn_tm[pp], rn_ts[pp], rn_g[pp], 0);
            if
            :: took -> orph[no] = mg[m]; no++
            :: else
            fi
        :: w_kind == OP_STEAL ->
            took_effect(m, head_tm[vp], head_ts[vp], head_c[vp], WRAP(mh[m] + mn[m]));
            if
            :: took -> tail[pp] = WRAP(mt[m] + mn[m])   /* publish the copies */
            :: else
            fi
        :: w_kind == OP_STEALNEXT ->
            took_effect(m, rn_tm[vp], rn_ts[vp], rn_g[vp], 0);
            if
            :: took -> tail[pp] = WRAP(mt[m] + 1)
            :: else
            fi
        :: else
        fi
    :: else
    fi;
    nheld[m] = 0;
    rec_set(m, w_arg, w_seq, w_kind, IDLE);

    /* harness: HELD orphans the dead M's log already ends with are dropped */
    d_step {
        if
        :: w_st == HELD && no > 0 ->
            i = 0;
            do
            :: i < no && lt[m * B + B - no + i] == orph[i] -> i++
            :: else -> break
            od;
            if
            :: i == no -> no = 0
            :: else
            fi;
            i = 0
        :: else
        fi
    };
    d_step {                                            /* recovered list */
        i = 0;
        do
        :: i < no ->
            assert(orph[i] >= 1 && orph[i] <= NG && cnt[orph[i]] == 0);
            cnt[orph[i]]++;
            i++
        :: else -> break
        od;
        i = 0
    };
    if
    :: m == 0 ->
        /* Recovery.accepted(cursor): the put of `cursor` reached the queues */
        d_step {
            resume = cursor;
            if
            :: IS_PUT(w_kind) && w_arg == cursor -> resume = cursor + 1
            :: else
            fi
        };
#if REPLACE
        run Owner(resume, 0)
#else
        d_step {                                        /* never put */
            i = resume;
            do
            :: i <= NG -> cnt[i]++; i++
            :: else -> break
            od;
            owner_done = 1;
            done[0] = 1
        }
#endif
    :: else ->
#if REPLACE
        run Thief(0)
#else
        done[1] = 1
#endif
    fi;
    d_step { w_arg = 0; w_seq = 0; w_kind = 0; w_st = 0; took = 0; no = 0; i = 0; pp = 0; vp = 0;
             wtm = 0; wts = 0; wlow = 0; resume = 0; orph[0] = 0; orph[1] = 0; orph[B - 1] = 0 }
}

/* ---- setup and the final check --------------------------------------- */
init
{
    byte p, i, k;
    d_step {
        p = 0;
        do
        :: p < NP -> head_c[p] = BASE; tail[p] = BASE; p++
        :: else -> break
        od;
        p = 0;
        i = 1;
        do
        :: i <= PRE -> runq[WRAP(BASE + i - 1) % SIZE] = i; i++
        :: else -> break
        od;
        i = 0;
        tail[0] = WRAP(BASE + PRE);
        cursor = PRE + 1
    };
    atomic {
        run Owner(PRE + 1, 1);
        run Thief(1);
#ifdef CRASH_OWNER
        run Recovery(0);
#endif
#ifdef CRASH_THIEF
        run Recovery(1);
#endif
    };
    (done[0] && done[1]);
    /* everything quiesced: drain what is left in runnext and the rings */
    d_step {
        p = 0;
        do
        :: p < NP ->
            assert(DIFF(tail[p], head_c[p]) <= SIZE);
            if
            :: rn_g[p] != 0 ->
                assert(rn_g[p] <= NG && cnt[rn_g[p]] == 0);
                cnt[rn_g[p]]++
            :: else
            fi;
            i = head_c[p];
            do
            :: i != tail[p] ->
                k = runq[p * SIZE + i % SIZE];
                assert(k >= 1 && k <= NG && cnt[k] == 0);
                cnt[k]++;
                i = WRAP(i + 1)
            :: else -> break
            od;
            p++
        :: else -> break
        od;
        k = 1;
        do
        :: k <= NG -> assert(cnt[k] == 1); k++
        :: else -> break
        od
    }
}
