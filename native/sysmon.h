/* sysmon.h -- sysmon's quiet rounds (sysmon.c). */
#ifndef GMPD_SYSMON_H
#define GMPD_SYSMON_H

#include "runq.h"

/* sysmon's memory of one P that a quiet round keeps (gmpd/sysmon.py's
 * PWatch holds the rest): CLOCK_MONOTONIC ns. */
typedef struct gmpd_pwatch {
    int64_t schedtick; /* -1: not seen yet */
    int64_t schedwhen_ns;
    int64_t running_when_ns;
} gmpd_pwatch;

typedef struct gmpd_quiet {
    uint32_t slot;            /* the M slot whose park word sysmon sleeps on */
    uint32_t m_running;       /* MState.RUNNING */
    uint32_t m_join;          /* MState.JOIN */
    uint32_t doom_watch;      /* bit d set: a passed deadline under doom d is the watchdog's */
    int lifeline;             /* pidfd of the node agent (readable once it exited) */
    int64_t nap_ns, max_ns;   /* the first nap, doubled after each round up to max_ns */
    int64_t busy_ns;          /* the sleep instead of a nap that finds a P in a syscall */
    int64_t until_ns;         /* return by then (checkdead's look, memcheck) */
    int64_t period_ns;        /* > 0: until_ns is checkdead's alone, which has nothing to
                               * look at while no M waits on a child: until_ns moves on
                               * by this much instead of returning, up to limit_ns */
    int64_t limit_ns;
    int64_t preempt_ns;       /* Go's forcePreemptNS */
    const int32_t *procfds;   /* (tid, fd) pairs: the /proc/PID/task/TID/wchan (or, with
                               * wchan 0, stat) of each M's thread that runs its Gs
                               * (gmpd_m.tid) */
    uint32_t nprocfds;
    uint32_t wchan;           /* the files are wchan: "0" while the thread runs */
    gmpd_pwatch *watch;       /* [nprocs] */
} gmpd_quiet;

/* Why a quiet run returned: the Python round has this to do.  *arg names
 * the P (SYSCALL, PREEMPT, ASLEEP), the pid (NOFD) or the M (DEADLINE). */
enum gmpd_quiet_reason {
    GMPD_QUIET_TIME = 0,     /* until_ns came (its periodic checks) */
    GMPD_QUIET_SYSCALL = 1,  /* a P is in a syscall: retake's business */
    GMPD_QUIET_PREEMPT = 2,  /* a G has had its P for preempt_ns, flag not set */
    GMPD_QUIET_ASLEEP = 3,   /* a running M's main thread sleeps (unmarked blocking?) */
    GMPD_QUIET_NOFD = 4,     /* a running M whose /proc file sysmon has not opened */
    GMPD_QUIET_DEADLINE = 5, /* a task's deadline passed: the watchdog */
    GMPD_QUIET_IDLE = 6,     /* every P is idle: the deep sleep */
    GMPD_QUIET_LIFELINE = 7, /* the node agent exited */
};

/* Nap, look, nap again (each nap twice the last, up to max_ns) while
 * nothing needs the Python round; never sleeps past until_ns.  Returns the
 * reason; *nap_ns is the length of the last nap. */
int gmpd_sysmon_quiet(gmpd_node *nd, const gmpd_quiet *q, int64_t *nap_ns, int32_t *arg);

#endif
