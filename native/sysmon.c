/*
 * sysmon.c -- sysmon's quiet rounds (gmpd/sysmon.py has the whole loop).
 *
 * While every P runs Gs and nothing needs it, sysmon naps its backed-off
 * delay (up to 10 ms), looks, and naps again: ~100 rounds a second, each a
 * handful of loads from node memory and one read of /proc per running M
 * (its wchan file where the kernel names where threads sleep, else stat).
 * In Python such a round cost 100-200 us of CPU, because each of its lines
 * ran cold after the Ms' tasks had evicted the caches: 1.5-2% of a 2-core
 * node in a farm of 5 ms tasks, taken from those tasks.  Here a round costs
 * a few us.  The loop only looks: it returns to the Python round as soon as
 * a look finds something that round acts on (a P in a syscall, a G past
 * its time slice, an M whose main thread sleeps, a passed deadline, every P
 * idle, the node agent gone) or until_ns comes (checkdead and the other
 * periodic checks; while no M waits on a child, checkdead has nothing to
 * look at, and the loop goes on to limit_ns).  Every decision and every
 * store other than its own watch records stays in Python.
 */
#include <poll.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "sysmon.h"

#define NOTHING (-1)

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int any_syscall(gmpd_node *nd)
{
    for (uint32_t p = 0; p < nd->nprocs; p++)
        if (gmpd_pstate_status(gmpd_p_load(nd, p)) == GMPD_PSYSCALL)
            return 1;
    return 0;
}

static int all_idle(gmpd_node *nd)
{
    for (uint32_t p = 0; p < nd->nprocs; p++)
        if (gmpd_pstate_status(gmpd_p_load(nd, p)) != GMPD_PIDLE)
            return 0;
    return 1;
}

/* The backed-off sleep of gmpd/sysmon.py (wakeable_sleep, how = 1): an M
 * entering a syscall wakes it while SYSMONWAIT says we sleep; the P states
 * are read after saying so, which catches an M that entered its syscall
 * before it could see the flag.  Returns 1 if a P is in a syscall. */
static int nap(gmpd_node *nd, const gmpd_quiet *q, int64_t ns)
{
    uint32_t *word = &gmpd_node_m(nd, q->slot)->park;
    /* acquire: as node_m_info's read of the park word. */
    uint32_t seen = __atomic_load_n(word, __ATOMIC_ACQUIRE);
    gmpd_sched_add(nd, GMPD_SC_SYSMONWAIT, 1);
    int busy = any_syscall(nd);
    if (!busy)
        gmpd_futex_wait(word, seen, ns);
    gmpd_sched_add(nd, GMPD_SC_SYSMONWAIT, -1);
    if (busy) { /* as the Python nap: a short sleep, then the round (a call that
                 * ends meanwhile is no reason for a round at once) */
        struct timespec ts = {.tv_sec = q->busy_ns / 1000000000, .tv_nsec = q->busy_ns % 1000000000};
        nanosleep(&ts, NULL);
    }
    return busy;
}

static int gone(int pidfd)
{
    struct pollfd pfd = {.fd = pidfd, .events = POLLIN};
    return pidfd >= 0 && poll(&pfd, 1, 0) > 0;
}

static int deadline_passed(gmpd_node *nd, const gmpd_quiet *q, int64_t now, int32_t *arg)
{
    for (uint32_t m = 0; m + 1 < nd->nms; m++) {
        gmpd_m *mp = gmpd_node_m(nd, m);
        /* acquire: pairs with the M's release store (node_m_set_deadline). */
        uint64_t deadline = __atomic_load_n(&mp->deadline_ns, __ATOMIC_ACQUIRE);
        if (deadline == 0 || (uint64_t)now <= deadline)
            continue;
        uint32_t doom = __atomic_load_n(&mp->doom, __ATOMIC_ACQUIRE);
        if (doom < 32 && (q->doom_watch >> doom & 1)) {
            *arg = (int32_t)m;
            return 1;
        }
    }
    return 0;
}

/* checkdead (gmpd/sysmon.py) can find a deadlock only among Ms waiting on
 * a child: in a join, or with a thread of theirs in one (the high half of
 * gmpd_m.blocked). */
static int any_join(gmpd_node *nd, const gmpd_quiet *q)
{
    for (uint32_t m = 0; m + 1 < nd->nms; m++) {
        gmpd_m *mp = gmpd_node_m(nd, m);
        /* acquire: as node_m_info and node_m_standby. */
        if (__atomic_load_n(&mp->pid, __ATOMIC_ACQUIRE) <= 0)
            continue;
        if (__atomic_load_n(&mp->state, __ATOMIC_ACQUIRE) == q->m_join ||
            __atomic_load_n(&mp->blocked, __ATOMIC_ACQUIRE) >> 16)
            return 1;
    }
    return 0;
}

static int procfd(const gmpd_quiet *q, int32_t tid)
{
    for (uint32_t i = 0; i < q->nprocfds; i++)
        if (q->procfds[2 * i] == tid)
            return q->procfds[2 * i + 1];
    return -1;
}

/* The state letter of a thread's /proc stat file, 0 if unreadable; from
 * its wchan file, 'R' (it says "0": runnable) or 'S' (the kernel function
 * it waits in: asleep or stopped), at ~a third of stat's cost (stat's
 * fifty fields were a third of sysmon's CPU in a farm, ~200 reads a
 * second at ~9 us each, cold). */
static char thread_state(int fd, int wchan)
{
    char buf[1024];
    ssize_t n = pread(fd, buf, sizeof buf - 1, 0);
    if (n <= 0)
        return 0;
    if (wchan)
        return n == 1 && buf[0] == '0' ? 'R' : 'S';
    buf[n] = 0;
    char *close = strrchr(buf, ')'); /* the name may hold anything, even ')' */
    if (close == NULL || close[1] != ' ')
        return 0;
    return close[2];
}

/* One P's look: gmpd/sysmon.py's retake and detect_blocked for a P that
 * needs nothing (NOTHING), or why the Python round is needed. */
static int look(gmpd_node *nd, const gmpd_quiet *q, uint32_t p, int64_t now, int32_t *arg)
{
    uint64_t s = gmpd_p_load(nd, p);
    uint32_t status = gmpd_pstate_status(s);
    *arg = (int32_t)p;
    if (status == GMPD_PSYSCALL)
        return GMPD_QUIET_SYSCALL;
    if (status != GMPD_PRUNNING)
        return NOTHING;
    gmpd_p *pp = gmpd_node_p(nd, p);
    gmpd_pwatch *w = &q->watch[p];
    /* relaxed: as node_p_ticks (owner-only counters sysmon samples). */
    uint32_t tick = __atomic_load_n(&pp->schedtick, __ATOMIC_RELAXED);
    uint32_t preempt = __atomic_load_n(&pp->preempt, __ATOMIC_RELAXED);
    w->running_when_ns = now;
    if (w->schedtick != (int64_t)tick) {
        w->schedtick = tick;
        w->schedwhen_ns = now;
    } else if (now - w->schedwhen_ns >= q->preempt_ns && !preempt) {
        return GMPD_QUIET_PREEMPT;
    }
    int32_t owner = gmpd_pstate_owner(s);
    if (owner < 0 || (uint32_t)owner >= nd->nms)
        return NOTHING;
    gmpd_m *mp = gmpd_node_m(nd, (uint32_t)owner);
    /* acquire: as node_m_info. */
    uint32_t state = __atomic_load_n(&mp->state, __ATOMIC_ACQUIRE);
    uint32_t curg = __atomic_load_n(&mp->curg, __ATOMIC_ACQUIRE);
    int32_t pid = __atomic_load_n(&mp->pid, __ATOMIC_ACQUIRE);
    int32_t tid = __atomic_load_n(&mp->tid, __ATOMIC_ACQUIRE); /* the thread that runs its Gs */
    if (state != q->m_running || curg == 0 || pid <= 0)
        return NOTHING;
    if (tid <= 0)
        tid = pid;
    int fd = procfd(q, tid);
    char letter = fd < 0 ? 0 : thread_state(fd, (int)q->wchan);
    if (letter == 0) {
        *arg = tid;
        return GMPD_QUIET_NOFD; /* Python opens it, or finds the M gone */
    }
    if (strchr("SDTt", letter) != NULL)
        return GMPD_QUIET_ASLEEP; /* asleep, or stopped (SIGSTOP, a debugger) */
    return NOTHING;
}

int gmpd_sysmon_quiet(gmpd_node *nd, const gmpd_quiet *q, int64_t *nap_ns, int32_t *arg)
{
    int64_t ns = q->nap_ns, until = q->until_ns;
    *arg = -1;
    for (;; ns = ns < q->max_ns / 2 ? 2 * ns : q->max_ns) {
        *nap_ns = ns;
        int64_t now = now_ns();
        if (now >= until) {
            if (q->period_ns <= 0 || any_join(nd, q))
                return GMPD_QUIET_TIME;
            while (until <= now)
                until += q->period_ns;
            if (until > q->limit_ns)
                return GMPD_QUIET_TIME;
        }
        int busy = nap(nd, q, ns < until - now ? ns : until - now);
        if (busy)
            return GMPD_QUIET_SYSCALL;
        if (gone(q->lifeline))
            return GMPD_QUIET_LIFELINE;
        now = now_ns();
        if (deadline_passed(nd, q, now, arg))
            return GMPD_QUIET_DEADLINE;
        if (all_idle(nd))
            return GMPD_QUIET_IDLE;
        for (uint32_t p = 0; p < nd->nprocs; p++) {
            int why = look(nd, q, p, now, arg);
            if (why != NOTHING)
                return why;
        }
        *arg = -1;
    }
}
