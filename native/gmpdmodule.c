/*
 * gmpdmodule.c -- gmpd._native: a thin CPython binding over runq.c and
 * stress.c.  Only gmpd/runq.py and gmpd/shm.py import it.
 *
 *   Node(buffer, *, create=False, nprocs=0, nms=0, counter_base=0)
 *       formats (create=True) or attaches a node segment held in a writable
 *       buffer (an mmap of a /dev/shm file); keeps the buffer exported, so
 *       the mmap cannot be closed under it.
 *   Node.runq(p, m) -> RunQ: M m's handle on P p's queue (put/get/steal...).
 *
 * Every function that fails sets an exception and returns NULL.  Blocking
 * calls (park, the stress loops) release the GIL.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <pthread.h>
#include <stdlib.h>
#include <time.h>

#include "gtab.h"
#include "offer.h"
#include "runq.h"
#include "stress.h"
#include "sysmon.h"

typedef struct {
    PyObject_HEAD
    Py_buffer view;
    gmpd_node *nd;
    Py_buffer gview; /* the G table segment, once attach_gtab() was called */
    void *gtab;
} NodeObject;

typedef struct {
    PyObject_HEAD
    NodeObject *node;
    gmpd_node *nd;
    uint32_t p;
    uint32_t m;
    int inherit;
} RunQObject;

typedef struct {
    PyTypeObject *node_type;
    PyTypeObject *runq_type;
} module_state;

static const char *const kind_names[GMPD_OP__COUNT] = {
    "none", "put", "put_next", "put_slow", "get", "get_next", "steal", "steal_next", "drain_next", "drain",
};

/* ---- helpers ------------------------------------------------------------ */

static int node_ok(NodeObject *self)
{
    if (self->nd == NULL) {
        PyErr_SetString(PyExc_ValueError, "node is closed");
        return 0;
    }
    return 1;
}

static int check_p(NodeObject *self, long p)
{
    if (!node_ok(self))
        return 0;
    if (p < 0 || (unsigned long)p >= self->nd->nprocs) {
        PyErr_Format(PyExc_IndexError, "P index %ld out of range (node has %u Ps)", p, self->nd->nprocs);
        return 0;
    }
    return 1;
}

static int check_m(NodeObject *self, long m)
{
    if (!node_ok(self))
        return 0;
    if (m < 0 || (unsigned long)m >= self->nd->nms) {
        PyErr_Format(PyExc_IndexError, "M index %ld out of range (node has %u M slots)", m, self->nd->nms);
        return 0;
    }
    return 1;
}

/* A single P or M index argument (METH_O), range-checked. */
static int arg_p(NodeObject *self, PyObject *arg, uint32_t *out)
{
    long v = PyLong_AsLong(arg);
    if ((v == -1 && PyErr_Occurred()) || !check_p(self, v))
        return 0;
    *out = (uint32_t)v;
    return 1;
}

static int arg_m(NodeObject *self, PyObject *arg, uint32_t *out)
{
    long v = PyLong_AsLong(arg);
    if ((v == -1 && PyErr_Occurred()) || !check_m(self, v))
        return 0;
    *out = (uint32_t)v;
    return 1;
}

static PyObject *u32_tuple(const uint32_t *v, int n)
{
    PyObject *t = PyTuple_New(n);
    if (t == NULL)
        return NULL;
    for (int i = 0; i < n; i++) {
        PyObject *x = PyLong_FromUnsignedLong(v[i]);
        if (x == NULL) {
            Py_DECREF(t);
            return NULL;
        }
        PyTuple_SET_ITEM(t, i, x);
    }
    return t;
}

static int parse_g(PyObject *arg, uint32_t *g)
{
    unsigned long v = PyLong_AsUnsignedLong(arg);
    if (v == (unsigned long)-1 && PyErr_Occurred())
        return 0;
    if (v == 0 || v > 0xffffffffUL) {
        PyErr_SetString(PyExc_ValueError, "a G handle is an integer in 1..2**32-1");
        return 0;
    }
    *g = (uint32_t)v;
    return 1;
}

/* ---- RunQ ----------------------------------------------------------------- */

static void runq_dealloc(RunQObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    Py_XDECREF(self->node);
    tp->tp_free(self);
    Py_DECREF(tp);
}

static int runq_live(RunQObject *self) { return node_ok(self->node); }

static PyObject *runq_put_common(RunQObject *self, PyObject *arg, int next)
{
    uint32_t g;
    if (!runq_live(self) || !parse_g(arg, &g))
        return NULL;
    int r = gmpd_runqput(self->nd, self->p, self->m, g, next);
    if (r == 0)
        Py_RETURN_NONE;
    if (r < 0) {
        PyErr_SetString(PyExc_ValueError, "runqput: invalid arguments");
        return NULL;
    }
    return u32_tuple(gmpd_node_m(self->nd, self->m)->batch, r);
}

static PyObject *runq_put(RunQObject *self, PyObject *arg) { return runq_put_common(self, arg, 0); }
static PyObject *runq_put_next(RunQObject *self, PyObject *arg) { return runq_put_common(self, arg, 1); }

static PyObject *runq_get(RunQObject *self, PyObject *Py_UNUSED(ignored))
{
    if (!runq_live(self))
        return NULL;
    uint32_t g = gmpd_runqget(self->nd, self->p, self->m, &self->inherit);
    if (g == 0)
        Py_RETURN_NONE;
    return PyLong_FromUnsignedLong(g);
}

static PyObject *runq_steal(RunQObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"victim", "runnext", NULL};
    long victim;
    int runnext = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "l|p:steal", kwlist, &victim, &runnext))
        return NULL;
    if (!check_p(self->node, victim))
        return NULL;
    if ((uint32_t)victim == self->p) {
        PyErr_SetString(PyExc_ValueError, "a P cannot steal from itself");
        return NULL;
    }
    uint32_t g;
    int n = gmpd_runqsteal(self->nd, self->p, (uint32_t)victim, self->m, runnext, &g);
    if (n == GMPD_ENOSPACE) {
        PyErr_SetString(PyExc_RuntimeError,
                        "steal into a P whose run queue holds more than 127 Gs (steal only when it is nearly empty)");
        return NULL;
    }
    if (n < 0) {
        PyErr_SetString(PyExc_ValueError, "runqsteal: invalid arguments");
        return NULL;
    }
    if (n == 0)
        Py_RETURN_NONE;
    return PyLong_FromUnsignedLong(g);
}

static PyObject *runq_drain(RunQObject *self, PyObject *Py_UNUSED(ignored))
{
    if (!runq_live(self))
        return NULL;
    int n = gmpd_runqdrain(self->nd, self->p, self->m);
    if (n < 0) {
        PyErr_SetString(PyExc_ValueError, "runqdrain: invalid arguments");
        return NULL;
    }
    return u32_tuple(gmpd_node_m(self->nd, self->m)->batch, n);
}

static PyObject *runq_release(RunQObject *self, PyObject *Py_UNUSED(ignored))
{
    if (!runq_live(self))
        return NULL;
    gmpd_release(self->nd, self->m);
    Py_RETURN_NONE;
}

static PyObject *runq_empty(RunQObject *self, PyObject *Py_UNUSED(ignored))
{
    if (!runq_live(self))
        return NULL;
    return PyBool_FromLong(gmpd_runqempty(self->nd, self->p));
}

static Py_ssize_t runq_len(RunQObject *self)
{
    if (!runq_live(self))
        return -1;
    return (Py_ssize_t)gmpd_runqlen(self->nd, self->p);
}

static PyObject *runq_get_inherit(RunQObject *self, void *Py_UNUSED(c)) { return PyBool_FromLong(self->inherit); }
static PyObject *runq_get_p(RunQObject *self, void *Py_UNUSED(c)) { return PyLong_FromUnsignedLong(self->p); }
static PyObject *runq_get_m(RunQObject *self, void *Py_UNUSED(c)) { return PyLong_FromUnsignedLong(self->m); }

static PyMethodDef runq_methods[] = {
    {"put", (PyCFunction)runq_put, METH_O,
     "put(g) -> None | tuple: runqput at the tail; a full ring returns the 129 Gs (half + g) for the global queue."},
    {"put_next", (PyCFunction)runq_put_next, METH_O,
     "put_next(g) -> None | tuple: runqput into runnext, kicking the old runnext to the tail."},
    {"get", (PyCFunction)runq_get, METH_NOARGS, "get() -> int | None: runqget (runnext first)."},
    {"steal", (PyCFunction)(void (*)(void))runq_steal, METH_VARARGS | METH_KEYWORDS,
     "steal(victim, runnext=False) -> int | None: runqsteal ceil(half) of victim's ring into ours."},
    {"drain", (PyCFunction)runq_drain, METH_NOARGS, "drain() -> tuple: take runnext and the whole ring."},
    {"release", (PyCFunction)runq_release, METH_NOARGS, "release(): the held Gs are recorded elsewhere."},
    {"empty", (PyCFunction)runq_empty, METH_NOARGS, "empty() -> bool: Go's runqempty."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef runq_getset[] = {
    {"inherit_time", (getter)runq_get_inherit, NULL, "whether the last get() came from runnext", NULL},
    {"p", (getter)runq_get_p, NULL, "P index", NULL},
    {"m", (getter)runq_get_m, NULL, "M index", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot runq_slots[] = {
    {Py_tp_dealloc, runq_dealloc},
    {Py_tp_methods, runq_methods},
    {Py_tp_getset, runq_getset},
    {Py_sq_length, runq_len},
    {Py_tp_doc, "M m's handle on P p's run queue.  Made by Node.runq(p, m)."},
    {0, NULL},
};

static PyType_Spec runq_spec = {
    .name = "gmpd._native.RunQ",
    .basicsize = sizeof(RunQObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = runq_slots,
};

/* ---- Node ----------------------------------------------------------------- */

static PyObject *node_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"buffer", "create", "nprocs", "nms", "counter_base", NULL};
    PyObject *buf;
    int create = 0;
    unsigned int nprocs = 0, nms = 0, counter_base = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|$pIII:Node", kwlist, &buf, &create, &nprocs, &nms,
                                     &counter_base))
        return NULL;
    NodeObject *self = (NodeObject *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    if (PyObject_GetBuffer(buf, &self->view, PyBUF_WRITABLE) < 0) {
        Py_DECREF(self);
        return NULL;
    }
    void *mem = self->view.buf;
    size_t len = (size_t)self->view.len;
    if (((uintptr_t)mem % GMPD_CACHELINE) != 0) {
        PyBuffer_Release(&self->view);
        Py_DECREF(self);
        PyErr_SetString(PyExc_ValueError, "node buffer must be cache-line aligned (use an mmap)");
        return NULL;
    }
    int r = create ? gmpd_node_init(mem, len, nprocs, nms, counter_base, (int32_t)getpid()) : gmpd_node_check(mem, len);
    if (r != GMPD_OK) {
        PyBuffer_Release(&self->view);
        Py_DECREF(self);
        if (create)
            PyErr_Format(PyExc_ValueError,
                         "cannot format a node with nprocs=%u nms=%u in %zu bytes "
                         "(need 1..%u Ps, 1..%u Ms, %zu bytes)",
                         nprocs, nms, len, GMPD_MAX_PROCS, GMPD_MAX_MS, gmpd_node_size(nprocs ? nprocs : 1, nms ? nms : 1));
        else
            PyErr_SetString(PyExc_ValueError, "not a gmpd node segment of this layout version "
                                              "(created by another gmpd version, or not a node at all)");
        return NULL;
    }
    self->nd = mem;
    return (PyObject *)self;
}

static PyObject *node_close(NodeObject *self, PyObject *Py_UNUSED(ignored))
{
    if (self->gtab != NULL) {
        self->gtab = NULL;
        PyBuffer_Release(&self->gview);
    }
    if (self->nd != NULL) {
        self->nd = NULL;
        PyBuffer_Release(&self->view);
    }
    Py_RETURN_NONE;
}

static void node_dealloc(NodeObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    if (self->gtab != NULL)
        PyBuffer_Release(&self->gview);
    if (self->nd != NULL)
        PyBuffer_Release(&self->view);
    tp->tp_free(self);
    Py_DECREF(tp);
}

static PyObject *node_runq(NodeObject *self, PyObject *args)
{
    long p, m;
    if (!PyArg_ParseTuple(args, "ll:runq", &p, &m) || !check_p(self, p) || !check_m(self, m))
        return NULL;
    module_state *st = PyType_GetModuleState(Py_TYPE(self));
    RunQObject *q = PyObject_New(RunQObject, st->runq_type);
    if (q == NULL)
        return NULL;
    Py_INCREF(self);
    q->node = self;
    q->nd = self->nd;
    q->p = p;
    q->m = m;
    q->inherit = 0;
    return (PyObject *)q;
}

static PyObject *op_tuple(uint64_t w)
{
    uint32_t k = gmpd_op_kind(w);
    return Py_BuildValue("(sIkI)", k < GMPD_OP__COUNT ? kind_names[k] : "?", gmpd_op_state(w),
                         (unsigned long)gmpd_op_arg(w), gmpd_op_seq(w));
}

static PyObject *node_recover_m(NodeObject *self, PyObject *arg)
{
    uint32_t m;
    if (!arg_m(self, arg, &m))
        return NULL;
    uint32_t orphans[GMPD_RUNQ_SIZE + 1];
    uint64_t w;
    int completed;
    int n = gmpd_recover_m(self->nd, m, orphans, &w, &completed);
    if (n < 0) {
        PyErr_SetString(PyExc_ValueError, "recover_m: invalid arguments");
        return NULL;
    }
    PyObject *op = op_tuple(w), *gs = u32_tuple(orphans, n);
    if (op == NULL || gs == NULL) {
        Py_XDECREF(op);
        Py_XDECREF(gs);
        return NULL;
    }
    return Py_BuildValue("(NNO)", op, gs, completed ? Py_True : Py_False);
}

static PyObject *node_op_record(NodeObject *self, PyObject *arg)
{
    uint32_t m;
    if (!arg_m(self, arg, &m))
        return NULL;
    /* acquire: the record's fields as its M published them. */
    return op_tuple(__atomic_load_n(&gmpd_node_m(self->nd, m)->op, __ATOMIC_ACQUIRE));
}

static PyObject *node_release(NodeObject *self, PyObject *arg)
{
    uint32_t m;
    if (!arg_m(self, arg, &m))
        return NULL;
    gmpd_release(self->nd, m);
    Py_RETURN_NONE;
}

static PyObject *node_runq_len(NodeObject *self, PyObject *arg)
{
    uint32_t p;
    if (!arg_p(self, arg, &p))
        return NULL;
    return PyLong_FromUnsignedLong(gmpd_runqlen(self->nd, p));
}

static PyObject *node_runq_empty(NodeObject *self, PyObject *arg)
{
    uint32_t p;
    if (!arg_p(self, arg, &p))
        return NULL;
    return PyBool_FromLong(gmpd_runqempty(self->nd, p));
}

/* -- P state -- */

static PyObject *pstate_tuple(uint64_t s)
{
    return Py_BuildValue("(IiI)", gmpd_pstate_status(s), gmpd_pstate_owner(s), gmpd_pstate_epoch(s));
}

static int parse_pstate(PyObject *t, uint64_t *out)
{
    unsigned int status, epoch;
    int owner;
    if (!PyArg_ParseTuple(t, "IiI:pstate", &status, &owner, &epoch))
        return 0;
    if (status > GMPD_PDEAD || owner < -1 || owner >= (int)GMPD_MAX_MS) {
        PyErr_SetString(PyExc_ValueError, "P state is (status 0..4, owner -1..1021, epoch)");
        return 0;
    }
    *out = gmpd_pstate_make(status, owner, epoch);
    return 1;
}

static PyObject *node_p_state(NodeObject *self, PyObject *arg)
{
    uint32_t p;
    if (!arg_p(self, arg, &p))
        return NULL;
    return pstate_tuple(gmpd_p_load(self->nd, p));
}

/* p_state(p) == (RUNNING, m, epoch), without the tuple (an M's check of
 * its lease after each G). */
static PyObject *node_p_held(NodeObject *self, PyObject *args)
{
    long p, m;
    unsigned int epoch;
    if (!PyArg_ParseTuple(args, "llI:p_held", &p, &m, &epoch) || !check_p(self, p) || !check_m(self, m))
        return NULL;
    return PyBool_FromLong(gmpd_p_load(self->nd, (uint32_t)p) == gmpd_pstate_make(GMPD_PRUNNING, (int32_t)m, epoch));
}

static PyObject *node_p_cas(NodeObject *self, PyObject *args)
{
    long p;
    PyObject *a, *b;
    uint64_t ea, eb;
    if (!PyArg_ParseTuple(args, "lO!O!:p_cas", &p, &PyTuple_Type, &a, &PyTuple_Type, &b) || !check_p(self, p) ||
        !parse_pstate(a, &ea) || !parse_pstate(b, &eb))
        return NULL;
    return PyBool_FromLong(gmpd_p_cas(self->nd, p, ea, eb));
}

typedef int (*ptrans_fn)(gmpd_node *, uint32_t, uint32_t, uint32_t);

static PyObject *p_transition(NodeObject *self, PyObject *args, const char *fmt, ptrans_fn fn)
{
    long p, m;
    unsigned int epoch;
    if (!PyArg_ParseTuple(args, fmt, &p, &m, &epoch) || !check_p(self, p) || !check_m(self, m))
        return NULL;
    return PyBool_FromLong(fn(self->nd, p, m, epoch));
}

static PyObject *node_acquirep(NodeObject *self, PyObject *args)
{
    return p_transition(self, args, "llI:acquirep", gmpd_acquirep);
}
static PyObject *node_releasep(NodeObject *self, PyObject *args)
{
    return p_transition(self, args, "llI:releasep", gmpd_releasep);
}
static PyObject *node_entersyscall(NodeObject *self, PyObject *args)
{
    return p_transition(self, args, "llI:entersyscall", gmpd_entersyscall);
}
static PyObject *node_exitsyscall(NodeObject *self, PyObject *args)
{
    return p_transition(self, args, "llI:exitsyscall", gmpd_exitsyscall);
}

static PyObject *node_retake(NodeObject *self, PyObject *args)
{
    long p;
    PyObject *seen;
    uint64_t s;
    if (!PyArg_ParseTuple(args, "lO!:retake", &p, &PyTuple_Type, &seen) || !check_p(self, p) ||
        !parse_pstate(seen, &s))
        return NULL;
    int64_t e = gmpd_retake(self->nd, p, s);
    if (e < 0)
        Py_RETURN_NONE;
    return PyLong_FromLongLong(e);
}

static PyObject *node_p_ticks(NodeObject *self, PyObject *arg)
{
    uint32_t p;
    if (!arg_p(self, arg, &p))
        return NULL;
    gmpd_p *pp = gmpd_node_p(self->nd, p);
    /* relaxed: statistics */
    return Py_BuildValue("(III)", __atomic_load_n(&pp->schedtick, __ATOMIC_RELAXED),
                         __atomic_load_n(&pp->syscalltick, __ATOMIC_RELAXED),
                         __atomic_load_n(&pp->preempt, __ATOMIC_RELAXED));
}

static PyObject *node_p_syscallwhen(NodeObject *self, PyObject *arg)
{
    uint32_t p;
    if (!arg_p(self, arg, &p))
        return NULL;
    /* relaxed after sysmon's acquire load of the state word (p_state): the
     * entersyscall CAS that made it SYSCALL published this. */
    return PyLong_FromUnsignedLongLong(__atomic_load_n(&gmpd_node_p(self->nd, p)->syscallwhen, __ATOMIC_RELAXED));
}

static PyObject *node_schedtick(NodeObject *self, PyObject *arg)
{
    uint32_t p;
    if (!arg_p(self, arg, &p))
        return NULL;
    /* relaxed: owner-only counter that sysmon samples. */
    return PyLong_FromUnsignedLong(__atomic_add_fetch(&gmpd_node_p(self->nd, p)->schedtick, 1, __ATOMIC_RELAXED));
}

static PyObject *node_set_preempt(NodeObject *self, PyObject *args)
{
    long p;
    int v;
    if (!PyArg_ParseTuple(args, "lp:set_preempt", &p, &v) || !check_p(self, p))
        return NULL;
    /* release: whatever sysmon decided before is visible to the owner. */
    __atomic_store_n(&gmpd_node_p(self->nd, p)->preempt, (uint32_t)v, __ATOMIC_RELEASE);
    Py_RETURN_NONE;
}

/* -- M slots -- */

static PyObject *node_m_info(NodeObject *self, PyObject *arg)
{
    uint32_t m;
    if (!arg_m(self, arg, &m))
        return NULL;
    gmpd_m *mp = gmpd_node_m(self->nd, m);
    /* acquire: each word is read as its writer published it. */
    uint32_t p = __atomic_load_n(&mp->p, __ATOMIC_ACQUIRE);
    return Py_BuildValue("(IIiiKII)", __atomic_load_n(&mp->state, __ATOMIC_ACQUIRE),
                         __atomic_load_n(&mp->curg, __ATOMIC_ACQUIRE), (int)p - 1,
                         __atomic_load_n(&mp->pid, __ATOMIC_ACQUIRE),
                         (unsigned long long)__atomic_load_n(&mp->heartbeat_ns, __ATOMIC_ACQUIRE),
                         __atomic_load_n(&mp->park, __ATOMIC_ACQUIRE), __atomic_load_n(&mp->nrun, __ATOMIC_RELAXED));
}

/* The global batch an M is queueing: (seq, items placed).  Written by the
 * M after each item, read by recovery once the M is dead. */
static PyObject *node_m_placing(NodeObject *self, PyObject *arg)
{
    uint32_t m;
    if (!arg_m(self, arg, &m))
        return NULL;
    /* acquire: pairs with the M's release store. */
    uint64_t w = __atomic_load_n(&gmpd_node_m(self->nd, m)->placing, __ATOMIC_ACQUIRE);
    return Py_BuildValue("(II)", (unsigned int)(w >> 32), (unsigned int)(w & 0xffffffffu));
}

static PyObject *node_m_set_placing(NodeObject *self, PyObject *args)
{
    long m;
    unsigned int seq, n;
    if (!PyArg_ParseTuple(args, "lII:m_set_placing", &m, &seq, &n) || !check_m(self, m))
        return NULL;
    /* release: the queue stores of the items before it. */
    __atomic_store_n(&gmpd_node_m(self->nd, (uint32_t)m)->placing, ((uint64_t)seq << 32) | n, __ATOMIC_RELEASE);
    Py_RETURN_NONE;
}

/* A prefetched global batch (gmpd/m.py, prefetch) is the M's once it
 * claims it, or the coordinator's again once it revokes it: whichever CAS
 * on the placing word comes first.  The M claims batch seq before its
 * first item, moving the word from an earlier batch's to (seq, 0); the
 * coordinator revokes it by moving an earlier batch's word to
 * (seq, GMPD_BATCH_REVOKED), and queues its items again. */
#define GMPD_BATCH_REVOKED 0xffffffffu

static int placing_args(NodeObject *self, PyObject *args, const char *fmt, uint64_t **word, uint64_t *seq)
{
    long m;
    unsigned int s;
    if (!PyArg_ParseTuple(args, fmt, &m, &s) || !check_m(self, m))
        return 0;
    *word = &gmpd_node_m(self->nd, (uint32_t)m)->placing;
    *seq = s;
    return 1;
}

/* m_claim_batch(m, seq) -> False if the coordinator revoked batch seq. */
static PyObject *node_m_claim_batch(NodeObject *self, PyObject *args)
{
    uint64_t *word, seq;
    if (!placing_args(self, args, "lI:m_claim_batch", &word, &seq))
        return NULL;
    /* acq_rel: acquire pairs with a revoke's release (its word says so
     * before we queue anything); release orders the claim before the
     * items, as m_set_placing's store does. */
    uint64_t w = __atomic_load_n(word, __ATOMIC_ACQUIRE);
    for (;;) {
        /* A word past seq: seq was revoked and so was a later batch (the M
         * queues batches in the order they came).  Found by review: a
         * claim that took it for claimed queued both batches again. */
        if (w >> 32 > seq || (w >> 32 == seq && (uint32_t)w == GMPD_BATCH_REVOKED))
            Py_RETURN_FALSE;
        if (w >> 32 == seq)
            Py_RETURN_TRUE; /* (claimed already) */
        if (__atomic_compare_exchange_n(word, &w, seq << 32, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
            Py_RETURN_TRUE;
    }
}

/* m_revoke_batch(m, seq) -> True if batch seq was not claimed and is now
 * revoked: the caller queues its items again. */
static PyObject *node_m_revoke_batch(NodeObject *self, PyObject *args)
{
    uint64_t *word, seq;
    if (!placing_args(self, args, "lI:m_revoke_batch", &word, &seq))
        return NULL;
    uint64_t w = __atomic_load_n(word, __ATOMIC_ACQUIRE);
    for (;;) {
        if (w >> 32 >= seq)
            Py_RETURN_FALSE; /* the M claimed it (or a later one) */
        if (__atomic_compare_exchange_n(word, &w, (seq << 32) | GMPD_BATCH_REVOKED, 0, __ATOMIC_ACQ_REL,
                                        __ATOMIC_ACQUIRE))
            Py_RETURN_TRUE;
    }
}

/* (deadline_ns, doom) of M m: its task's deadline, and why it was killed. */
static PyObject *node_m_doom(NodeObject *self, PyObject *arg)
{
    uint32_t m;
    if (!arg_m(self, arg, &m))
        return NULL;
    gmpd_m *mp = gmpd_node_m(self->nd, m);
    /* acquire: pairs with the release stores below. */
    return Py_BuildValue("(KI)", (unsigned long long)__atomic_load_n(&mp->deadline_ns, __ATOMIC_ACQUIRE),
                         __atomic_load_n(&mp->doom, __ATOMIC_ACQUIRE));
}

static PyObject *node_m_set_deadline(NodeObject *self, PyObject *args)
{
    long m;
    unsigned long long ns;
    unsigned int g = 0;
    if (!PyArg_ParseTuple(args, "lK|I:m_set_deadline", &m, &ns, &g) || !check_m(self, m))
        return NULL;
    gmpd_m *mp = gmpd_node_m(self->nd, (uint32_t)m);
    /* release: read by sysmon, and the G by recovery after the kill. */
    __atomic_store_n(&mp->deadline_g, (uint32_t)g, __ATOMIC_RELEASE);
    __atomic_store_n(&mp->deadline_ns, (uint64_t)ns, __ATOMIC_RELEASE);
    Py_RETURN_NONE;
}

/* The G whose timeout M m's deadline is (0: not known). */
static PyObject *node_m_deadline_g(NodeObject *self, PyObject *arg)
{
    uint32_t m;
    if (!arg_m(self, arg, &m))
        return NULL;
    /* acquire: as node_m_doom. */
    return PyLong_FromUnsignedLong(__atomic_load_n(&gmpd_node_m(self->nd, m)->deadline_g, __ATOMIC_ACQUIRE));
}

/* The P and epoch the coordinator granted M m with a GRANTED wake, or
 * (-1, 0) when that Grant comes as a message (gmpd/coordinator.py startm). */
static PyObject *node_m_grant(NodeObject *self, PyObject *arg)
{
    uint32_t m;
    if (!arg_m(self, arg, &m))
        return NULL;
    /* The M reads this after its state load (acquire) saw GRANTED, which
     * the coordinator's CAS (acq_rel) set after this store: that pair
     * orders it.  acquire here for the word on its own. */
    uint64_t w = __atomic_load_n(&gmpd_node_m(self->nd, m)->grant, __ATOMIC_ACQUIRE);
    return Py_BuildValue("(iI)", (int)(w & 0xffffffffu) - 1, (unsigned int)(w >> 32));
}

static PyObject *node_m_set_grant(NodeObject *self, PyObject *args)
{
    long m, p;
    unsigned int epoch;
    if (!PyArg_ParseTuple(args, "llI:m_set_grant", &m, &p, &epoch) || !check_m(self, m))
        return NULL;
    if (p != -1 && !check_p(self, p))
        return NULL;
    uint64_t w = p < 0 ? 0 : ((uint64_t)epoch << 32) | (uint64_t)(p + 1);
    /* Published by the PARKED -> GRANTED CAS that follows it (acq_rel). */
    __atomic_store_n(&gmpd_node_m(self->nd, (uint32_t)m)->grant, w, __ATOMIC_RELEASE);
    Py_RETURN_NONE;
}

static PyObject *node_m_set_doom(NodeObject *self, PyObject *args)
{
    long m;
    unsigned int why;
    if (!PyArg_ParseTuple(args, "lI:m_set_doom", &m, &why) || !check_m(self, m))
        return NULL;
    /* release: stored before the kill, read by recovery after the death. */
    __atomic_store_n(&gmpd_node_m(self->nd, (uint32_t)m)->doom, why, __ATOMIC_RELEASE);
    Py_RETURN_NONE;
}

static PyObject *node_m_ran(NodeObject *self, PyObject *arg)
{
    uint32_t m;
    if (!arg_m(self, arg, &m))
        return NULL;
    /* relaxed: a statistic. */
    return PyLong_FromUnsignedLong(__atomic_add_fetch(&gmpd_node_m(self->nd, m)->nrun, 1, __ATOMIC_RELAXED));
}

/* M state (unless < 0), then curg (unless < 0): release, so readers
 * (sysmon, scheddetail, recovery) see what preceded each update. */
static void m_publish(gmpd_m *mp, long long state, long long curg)
{
    if (state >= 0)
        __atomic_store_n(&mp->state, (uint32_t)state, __ATOMIC_RELEASE);
    if (curg >= 0)
        __atomic_store_n(&mp->curg, (uint32_t)curg, __ATOMIC_RELEASE);
}

/* M state old -> new by CAS; acq_rel: M state changes hand work between
 * the M and sysmon (which marks an asleep M by CAS too). */
static int m_cas_state(gmpd_m *mp, uint32_t old, uint32_t new_)
{
    return __atomic_compare_exchange_n(&mp->state, &old, new_, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
}

static PyObject *node_m_set(NodeObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"m", "state", "curg", "p", "pid", "tid", "blocked", NULL};
    long m;
    long long state = -1, curg = -1, p = -2, pid = -1, tid = -1, blocked = -1;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "l|$LLLLLL:m_set", kwlist, &m, &state, &curg, &p, &pid, &tid,
                                     &blocked) ||
        !check_m(self, m))
        return NULL;
    gmpd_m *mp = gmpd_node_m(self->nd, m);
    m_publish(mp, state, curg);
    /* release: as m_publish. */
    if (p >= -1)
        __atomic_store_n(&mp->p, (uint32_t)(p + 1), __ATOMIC_RELEASE);
    if (pid >= 0) {
        /* A process takes the slot (or leaves it): no standby thread of
         * the last one is parked any more (a killed M never counted out). */
        __atomic_store_n(&mp->nstandby, 0, __ATOMIC_RELAXED);
        __atomic_store_n(&mp->blocked, 0, __ATOMIC_RELAXED);
        __atomic_store_n(&mp->pid, (int32_t)pid, __ATOMIC_RELEASE);
    }
    if (tid >= 0)
        __atomic_store_n(&mp->tid, (int32_t)tid, __ATOMIC_RELEASE);
    if (blocked >= 0)
        __atomic_store_n(&mp->blocked, (uint32_t)blocked, __ATOMIC_RELEASE);
    Py_RETURN_NONE;
}

/* (pid, tid): the M's process and the thread that holds it (tid 0: the
 * main thread, whose id is the pid). */
static PyObject *node_m_thread(NodeObject *self, PyObject *arg)
{
    uint32_t m;
    if (!arg_m(self, arg, &m))
        return NULL;
    gmpd_m *mp = gmpd_node_m(self->nd, m);
    /* acquire: as node_m_info. */
    int32_t pid = __atomic_load_n(&mp->pid, __ATOMIC_ACQUIRE);
    int32_t tid = __atomic_load_n(&mp->tid, __ATOMIC_ACQUIRE);
    return Py_BuildValue("(ii)", pid, tid > 0 ? tid : pid);
}

static PyObject *node_m_cas_state(NodeObject *self, PyObject *args)
{
    long m;
    unsigned int old, new_;
    if (!PyArg_ParseTuple(args, "lII:m_cas_state", &m, &old, &new_) || !check_m(self, m))
        return NULL;
    return PyBool_FromLong(m_cas_state(gmpd_node_m(self->nd, m), old, new_));
}

static PyObject *node_heartbeat(NodeObject *self, PyObject *arg)
{
    uint32_t m;
    if (!arg_m(self, arg, &m))
        return NULL;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    uint64_t now = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
    /* relaxed: a liveness timestamp; nothing is published through it. */
    __atomic_store_n(&gmpd_node_m(self->nd, m)->heartbeat_ns, now, __ATOMIC_RELAXED);
    return PyLong_FromUnsignedLongLong(now);
}

/* -- native heartbeat --
 * A pthread that never takes the GIL stamps the M's heartbeat word, so a
 * task stuck in one long C call (holding the GIL) still looks alive, while a
 * stopped or dead process does not.  It runs until the process exits; the
 * node segment must stay mapped that long (an M never unmaps it). */

typedef struct {
    uint64_t *word;
    struct timespec period;
} heartbeat_arg;

static void *heartbeat_main(void *p)
{
    heartbeat_arg *a = p;
    for (;;) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        /* relaxed: a liveness timestamp; nothing is published through it. */
        __atomic_store_n(a->word, (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec, __ATOMIC_RELAXED);
        nanosleep(&a->period, NULL);
    }
    return NULL;
}

static PyObject *node_start_heartbeat(NodeObject *self, PyObject *args)
{
    long m;
    unsigned int period_ms;
    if (!PyArg_ParseTuple(args, "lI:start_heartbeat", &m, &period_ms) || !check_m(self, m))
        return NULL;
    heartbeat_arg *a = malloc(sizeof(*a)); /* lives as long as the thread: the process */
    if (a == NULL)
        return PyErr_NoMemory();
    a->word = &gmpd_node_m(self->nd, (uint32_t)m)->heartbeat_ns;
    a->period.tv_sec = period_ms / 1000;
    a->period.tv_nsec = (long)(period_ms % 1000) * 1000000L;
    pthread_t t;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    int r = pthread_create(&t, &attr, heartbeat_main, a);
    pthread_attr_destroy(&attr);
    if (r != 0) {
        free(a);
        errno = r;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    Py_RETURN_NONE;
}

/* -- parking -- */

/* futex-sleep without the GIL while *word == seen (timeout < 0: forever);
 * False on timeout. */
static PyObject *futex_sleep(uint32_t *word, uint32_t seen, double timeout)
{
    int64_t ns = timeout < 0 ? -1 : (int64_t)(timeout * 1e9);
    int r;
    Py_BEGIN_ALLOW_THREADS
    r = gmpd_futex_wait(word, seen, ns);
    Py_END_ALLOW_THREADS
    if (r < 0) {
        errno = -r;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    return PyBool_FromLong(r == 0);
}

static PyObject *node_park(NodeObject *self, PyObject *args)
{
    long m;
    unsigned int seen;
    double timeout = -1.0;
    if (!PyArg_ParseTuple(args, "lI|d:park", &m, &seen, &timeout) || !check_m(self, m))
        return NULL;
    return futex_sleep(&gmpd_node_m(self->nd, m)->park, seen, timeout);
}

/* A standby thread of M m parks until sysmon bumps the standby word past
 * ``seen`` (or the timeout), counted in nstandby meanwhile (sysmon wakes
 * standbys only where one is parked).  True if woken. */
static PyObject *node_standby_park(NodeObject *self, PyObject *args)
{
    long m;
    unsigned int seen;
    double timeout = -1.0;
    if (!PyArg_ParseTuple(args, "lI|d:standby_park", &m, &seen, &timeout) || !check_m(self, m))
        return NULL;
    gmpd_m *mp = gmpd_node_m(self->nd, m);
    /* relaxed: a hint for sysmon; the word's futex protocol carries the wake. */
    __atomic_add_fetch(&mp->nstandby, 1, __ATOMIC_RELAXED);
    PyObject *r = futex_sleep(&mp->standby, seen, timeout);
    __atomic_sub_fetch(&mp->nstandby, 1, __ATOMIC_RELAXED);
    return r;
}

/* (standby word, standby threads parked, threads blocked in a gmpd.syscall()
 * while another holds the M) of M m. */
static PyObject *node_m_standby(NodeObject *self, PyObject *arg)
{
    uint32_t m;
    if (!arg_m(self, arg, &m))
        return NULL;
    gmpd_m *mp = gmpd_node_m(self->nd, m);
    /* acquire: read before a check that a wake-up after it must not be lost (as park). */
    return Py_BuildValue("(III)", __atomic_load_n(&mp->standby, __ATOMIC_ACQUIRE),
                         __atomic_load_n(&mp->nstandby, __ATOMIC_RELAXED),
                         __atomic_load_n(&mp->blocked, __ATOMIC_ACQUIRE));
}

/* Bump a futex word and wake up to n of its waiters; how many woke. */
static PyObject *bump_and_wake(uint32_t *word, int n)
{
    /* release: work published before the wake is visible to the woken
     * thread, which re-reads what it waits on after futex_wait returns. */
    __atomic_add_fetch(word, 1, __ATOMIC_RELEASE);
    int r = gmpd_futex_wake(word, n);
    if (r < 0) {
        errno = -r;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    return PyLong_FromLong(r);
}

/* Bump M m's standby word and wake one standby thread. */
static PyObject *node_standby_wake(NodeObject *self, PyObject *arg)
{
    uint32_t m;
    if (!arg_m(self, arg, &m))
        return NULL;
    return bump_and_wake(&gmpd_node_m(self->nd, m)->standby, 1);
}

static PyObject *node_wake(NodeObject *self, PyObject *arg)
{
    uint32_t m;
    if (!arg_m(self, arg, &m))
        return NULL;
    /* All waiters: threads of one M may wait on it at once (the holder in
     * stopm, a joiner whose M a standby took over); each looks again. */
    return bump_and_wake(&gmpd_node_m(self->nd, m)->park, GMPD_WAKE_ALL);
}

/* -- stress loops (tests and bench/runq.py) -- */

static PyObject *node_stress(NodeObject *self, PyObject *args)
{
    const char *role;
    Py_buffer ctl;
    long p, m;
    unsigned long long seed;
    if (!PyArg_ParseTuple(args, "sw*llK:stress", &role, &ctl, &p, &m, &seed))
        return NULL;
    PyObject *res = NULL;
    if (!check_p(self, p) || !check_m(self, m))
        goto done;
    if (m >= (long)GMPD_STRESS_MAXLOGS) {
        PyErr_SetString(PyExc_ValueError, "stress: M index must be < 64");
        goto done;
    }
    gmpd_stress *st = ctl.buf;
    if ((size_t)ctl.len < 4096 || (size_t)ctl.len < gmpd_stress_size(st->nlogs, st->logcap) ||
        m >= st->nlogs || st->nprocs > self->nd->nprocs) {
        PyErr_SetString(PyExc_ValueError, "stress: control segment too small or not initialised");
        goto done;
    }
    int owner = strcmp(role, "owner") == 0;
    if (!owner && strcmp(role, "thief") != 0) {
        PyErr_SetString(PyExc_ValueError, "stress: role is 'owner' or 'thief'");
        goto done;
    }
    int r;
    Py_BEGIN_ALLOW_THREADS
    r = owner ? gmpd_stress_owner(self->nd, st, p, m, seed)
              : gmpd_stress_thief(self->nd, st, p, m, seed);
    Py_END_ALLOW_THREADS
    res = PyLong_FromLong(r);
done:
    PyBuffer_Release(&ctl);
    return res;
}


/* -- G table (gtab.c) -- */

static int gtab_ok(NodeObject *self)
{
    if (!node_ok(self))
        return 0;
    if (self->gtab == NULL) {
        PyErr_SetString(PyExc_ValueError, "no G table attached (call attach_gtab first)");
        return 0;
    }
    return 1;
}

/* A G handle argument that names a unit inside an existing P's arena. */
static int parse_handle(NodeObject *self, PyObject *arg, uint32_t *h)
{
    if (!gtab_ok(self) || !parse_g(arg, h))
        return 0;
    if (gmpd_gh_p(*h) >= self->nd->nprocs || gmpd_gh_unit(*h) == 0) {
        PyErr_Format(PyExc_ValueError, "G handle %#x names no arena unit of this node", *h);
        return 0;
    }
    return 1;
}

static PyObject *node_attach_gtab(NodeObject *self, PyObject *buf)
{
    if (!node_ok(self))
        return NULL;
    if (self->gtab != NULL) {
        PyErr_SetString(PyExc_ValueError, "a G table is already attached");
        return NULL;
    }
    if (PyObject_GetBuffer(buf, &self->gview, PyBUF_WRITABLE) < 0)
        return NULL;
    if ((size_t)self->gview.len < gmpd_gtab_size(self->nd->nprocs)) {
        PyBuffer_Release(&self->gview);
        PyErr_Format(PyExc_ValueError, "G table buffer too small: %zd bytes, need %zu", self->gview.len,
                     gmpd_gtab_size(self->nd->nprocs));
        return NULL;
    }
    self->gtab = self->gview.buf;
    Py_RETURN_NONE;
}

static PyObject *node_g_new(NodeObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"p", "payload", "parent", "root_id", NULL};
    long p;
    Py_buffer data;
    unsigned int parent = 0;
    unsigned long long root_id = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "ly*|$IK:g_new", kwlist, &p, &data, &parent, &root_id))
        return NULL;
    PyObject *res = NULL;
    if (!gtab_ok(self) || !check_p(self, p))
        goto done;
    if ((size_t)data.len > UINT32_MAX) {
        PyErr_SetString(PyExc_OverflowError, "payload larger than 4 GiB");
        goto done;
    }
    uint32_t h = gmpd_galloc(self->nd, self->gtab, (uint32_t)p, (uint32_t)data.len);
    if (h == 0) {
        PyErr_Format(PyExc_MemoryError, "P %ld's G arena has no room for %zd bytes (%u units live of %u)", p,
                     data.len, gmpd_gtab_live_units(self->nd, (uint32_t)p), GMPD_ARENA_UNITS);
        goto done;
    }
    gmpd_grec *r = gmpd_grec_at(self->gtab, h);
    r->parent = parent;
    r->root_id = root_id;
    memcpy(r + 1, data.buf, (size_t)data.len);
    /* release: header and payload are complete before the state says so. */
    __atomic_store_n(&r->state, GMPD_G_RUNNABLE, __ATOMIC_RELEASE);
    res = PyLong_FromUnsignedLong(h);
done:
    PyBuffer_Release(&data);
    return res;
}

/* G h's record, or NULL with ValueError if it is free. */
static gmpd_grec *live_record(NodeObject *self, uint32_t h)
{
    gmpd_grec *r = gmpd_grec_at(self->gtab, h);
    /* acquire: pairs with the release that published the record. */
    if (__atomic_load_n(&r->state, __ATOMIC_ACQUIRE) == GMPD_G_FREE) {
        PyErr_Format(PyExc_ValueError, "G %#x is free", h);
        return NULL;
    }
    return r;
}

/* G r's owner M m (-1: none) and the G it runs inside (0: none). */
static void g_own(gmpd_grec *r, int m, uint32_t outer)
{
    __atomic_store_n(&r->outer, outer, __ATOMIC_RELAXED); /* relaxed: published by the owner store */
    /* release: read by sysmon and by recovery after the M dies. */
    __atomic_store_n(&r->owner, (uint32_t)(m + 1), __ATOMIC_RELEASE);
}

static PyObject *node_g_payload(NodeObject *self, PyObject *arg)
{
    uint32_t h;
    gmpd_grec *r;
    if (!parse_handle(self, arg, &h) || (r = live_record(self, h)) == NULL)
        return NULL;
    return PyBytes_FromStringAndSize((const char *)(r + 1), (Py_ssize_t)r->len);
}

static PyObject *node_g_info(NodeObject *self, PyObject *arg)
{
    uint32_t h;
    if (!parse_handle(self, arg, &h))
        return NULL;
    gmpd_grec *r = gmpd_grec_at(self->gtab, h);
    /* acquire on state: the other fields were written before it. */
    uint32_t st = __atomic_load_n(&r->state, __ATOMIC_ACQUIRE);
    return Py_BuildValue("(IIIKIIIIIIII)", st, r->gen, r->parent, (unsigned long long)r->root_id, r->len,
                         __atomic_load_n(&r->result, __ATOMIC_ACQUIRE), r->status,
                         __atomic_load_n(&r->waiter, __ATOMIC_ACQUIRE), __atomic_load_n(&r->owner, __ATOMIC_ACQUIRE),
                         __atomic_load_n(&r->outer, __ATOMIC_ACQUIRE), __atomic_load_n(&r->attempts, __ATOMIC_ACQUIRE),
                         __atomic_load_n(&r->refs, __ATOMIC_ACQUIRE));
}

/* One more attempt of G h died with its M; returns the count.  Runs in: the coordinator. */
static PyObject *node_g_attempt(NodeObject *self, PyObject *arg)
{
    uint32_t h;
    if (!parse_handle(self, arg, &h))
        return NULL;
    /* relaxed: only recovery counts, single-threaded. */
    return PyLong_FromUnsignedLong(__atomic_add_fetch(&gmpd_grec_at(self->gtab, h)->attempts, 1, __ATOMIC_RELAXED));
}

static PyObject *node_g_fail(NodeObject *self, PyObject *args)
{
    PyObject *ho;
    unsigned int status;
    uint32_t h;
    if (!PyArg_ParseTuple(args, "OI:g_fail", &ho, &status) || !parse_handle(self, ho, &h))
        return NULL;
    gmpd_gpublish(self->nd, self->gtab, h, status, 0);
    Py_RETURN_NONE;
}

static PyObject *node_g_scan(NodeObject *self, PyObject *arg)
{
    uint32_t p;
    if (!gtab_ok(self) || !arg_p(self, arg, &p))
        return NULL;
    enum { CAP = 1u << 16 };
    uint32_t *buf = PyMem_Malloc(CAP * sizeof(uint32_t));
    if (buf == NULL)
        return PyErr_NoMemory();
    uint32_t n = gmpd_gtab_scan(self->nd, self->gtab, p, buf, CAP);
    PyObject *res = u32_tuple(buf, (int)n);
    PyMem_Free(buf);
    return res;
}

static PyObject *node_g_cas_state(NodeObject *self, PyObject *args)
{
    PyObject *ho;
    unsigned int old, new_;
    uint32_t h;
    if (!PyArg_ParseTuple(args, "OII:g_cas_state", &ho, &old, &new_) || !parse_handle(self, ho, &h))
        return NULL;
    /* acq_rel: a state change hands the G between Ms. */
    return PyBool_FromLong(__atomic_compare_exchange_n(&gmpd_grec_at(self->gtab, h)->state, &old, new_, 0,
                                                       __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE));
}

static PyObject *node_g_set_owner(NodeObject *self, PyObject *args)
{
    PyObject *ho;
    int m;
    unsigned int outer = 0;
    uint32_t h;
    if (!PyArg_ParseTuple(args, "Oi|I:g_set_owner", &ho, &m, &outer) || !parse_handle(self, ho, &h))
        return NULL;
    if (m >= 0 && !check_m(self, m))
        return NULL;
    g_own(gmpd_grec_at(self->gtab, h), m, outer);
    Py_RETURN_NONE;
}

/* Store a G's result: allocate it in P p's arena (the caller owns p), link
 * it, mark the G DONE, and futex-wake the waiting M if one registered. */
static PyObject *node_g_set_result(NodeObject *self, PyObject *args)
{
    PyObject *ho;
    long p;
    Py_buffer data;
    unsigned int status;
    uint32_t h;
    if (!PyArg_ParseTuple(args, "Oly*I:g_set_result", &ho, &p, &data, &status))
        return NULL;
    PyObject *res = NULL;
    if (!parse_handle(self, ho, &h) || !check_p(self, p))
        goto done;
    if ((size_t)data.len > UINT32_MAX) {
        PyErr_SetString(PyExc_MemoryError, "result larger than 4 GiB");
        goto done;
    }
    uint32_t rh = gmpd_galloc(self->nd, self->gtab, (uint32_t)p, (uint32_t)data.len);
    if (rh == 0) {
        PyErr_Format(PyExc_MemoryError, "P %ld's G arena has no room for a %zd-byte result", p, data.len);
        goto done;
    }
    gmpd_grec *rr = gmpd_grec_at(self->gtab, rh);
    memcpy(rr + 1, data.buf, (size_t)data.len);
    __atomic_store_n(&rr->state, GMPD_G_DATA, __ATOMIC_RELAXED); /* relaxed: published below */
    /* 0: nobody wanted it, freed */
    res = PyLong_FromUnsignedLong(gmpd_gpublish(self->nd, self->gtab, h, status, rh) ? rh : 0);
done:
    PyBuffer_Release(&data);
    return res;
}

/* (status, bytes) once the G is DONE, else None. */
static PyObject *node_g_result(NodeObject *self, PyObject *arg)
{
    uint32_t h;
    if (!parse_handle(self, arg, &h))
        return NULL;
    gmpd_grec *r = gmpd_grec_at(self->gtab, h);
    /* acquire: pairs with g_set_result's release of DONE. */
    if (__atomic_load_n(&r->state, __ATOMIC_ACQUIRE) != GMPD_G_DONE)
        Py_RETURN_NONE;
    uint32_t rh = r->result;
    if (rh == 0)
        return Py_BuildValue("(Iy#)", r->status, "", (Py_ssize_t)0);
    gmpd_grec *rr = gmpd_grec_at(self->gtab, rh);
    return Py_BuildValue("(Iy#)", r->status, (const char *)(rr + 1), (Py_ssize_t)rr->len);
}

/* Register M m as the waiter of G h; returns True if h is already DONE. */
static PyObject *node_g_wait_register(NodeObject *self, PyObject *args)
{
    PyObject *ho;
    long m;
    uint32_t h;
    if (!PyArg_ParseTuple(args, "Ol:g_wait_register", &ho, &m) || !parse_handle(self, ho, &h) || !check_m(self, m))
        return NULL;
    gmpd_grec *r = gmpd_grec_at(self->gtab, h);
    __atomic_store_n(&r->waiter, (uint32_t)(m + 1), __ATOMIC_RELEASE); /* release: read by the finisher */
    __atomic_thread_fence(__ATOMIC_SEQ_CST); /* seq_cst: Dekker pair with g_set_result */
    return PyBool_FromLong(__atomic_load_n(&r->state, __ATOMIC_ACQUIRE) == GMPD_G_DONE); /* acquire: as above */
}

static PyObject *node_g_free(NodeObject *self, PyObject *arg)
{
    uint32_t h;
    if (!parse_handle(self, arg, &h))
        return NULL;
    gmpd_grelease(self->nd, self->gtab, h);
    Py_RETURN_NONE;
}

static PyObject *node_g_detach(NodeObject *self, PyObject *arg)
{
    uint32_t h;
    if (!parse_handle(self, arg, &h))
        return NULL;
    gmpd_gdetach(self->nd, self->gtab, h);
    Py_RETURN_NONE;
}

static PyObject *node_g_claim(NodeObject *self, PyObject *arg)
{
    uint32_t h;
    if (!parse_handle(self, arg, &h))
        return NULL;
    return PyBool_FromLong(gmpd_gclaim(self->gtab, h));
}

/* M.execute's prologue (gmpd/m.py), in its order, one call instead of
 * nine (a no-op flood spent ~3 us a task on their call sites): a new slice
 * (schedtick + 1, the preempt flag cleared) if asked; G h's owner m and
 * outer G; M m's state (unless < 0) then curg; the op record released;
 * the RUNNING count + 1 unless nested (state < 0: a top-level G of a
 * standby thread has an outer G, a blocked thread's).  Returns (payload,
 * parent, root_id). */
static PyObject *node_g_begin(NodeObject *self, PyObject *args)
{
    PyObject *ho;
    long m, p;
    unsigned int outer;
    int new_slice, state;
    uint32_t h;
    gmpd_grec *r;
    if (!PyArg_ParseTuple(args, "OllIpi:g_begin", &ho, &m, &p, &outer, &new_slice, &state) ||
        !parse_handle(self, ho, &h) || !check_m(self, m) || !check_p(self, p) || (r = live_record(self, h)) == NULL)
        return NULL;
    if (new_slice) {
        gmpd_p *pp = gmpd_node_p(self->nd, (uint32_t)p);
        __atomic_add_fetch(&pp->schedtick, 1, __ATOMIC_RELAXED); /* as node_schedtick */
        if (__atomic_load_n(&pp->preempt, __ATOMIC_RELAXED))
            __atomic_store_n(&pp->preempt, 0, __ATOMIC_RELEASE); /* as node_set_preempt */
    }
    g_own(r, (int)m, outer);
    m_publish(gmpd_node_m(self->nd, (uint32_t)m), state, h);
    gmpd_release(self->nd, (uint32_t)m);
    if (state >= 0)
        gmpd_sched_add(self->nd, GMPD_SC_RUNNING, 1);
    return Py_BuildValue("(y#IK)", (const char *)(r + 1), (Py_ssize_t)r->len, r->parent,
                         (unsigned long long)r->root_id);
}

/* M m's state (unless < 0) then its curg, as m_set(m, state=, curg=). */
static PyObject *node_m_run(NodeObject *self, PyObject *args)
{
    long m;
    unsigned int curg;
    int state;
    if (!PyArg_ParseTuple(args, "lIi:m_run", &m, &curg, &state) || !check_m(self, m))
        return NULL;
    m_publish(gmpd_node_m(self->nd, (uint32_t)m), state, curg);
    Py_RETURN_NONE;
}

/* M.execute's epilogue in the common case: M m leaves state running for
 * idle (MState values) by CAS (so sysmon, which marks an asleep M by CAS
 * too, cannot count it out twice), and counts the G run.  False, with
 * nothing done, if its state is not running (sysmon marked it asleep):
 * the caller's slow path.  The RUNNING count stays the caller's to give
 * back, in its `finally` (an exception raised between this call and the
 * caller's next store would otherwise give it back twice: review). */
static PyObject *node_g_leave(NodeObject *self, PyObject *args)
{
    long m;
    unsigned int running, idle;
    if (!PyArg_ParseTuple(args, "lII:g_leave", &m, &running, &idle) || !check_m(self, m))
        return NULL;
    gmpd_m *mp = gmpd_node_m(self->nd, (uint32_t)m);
    if (!m_cas_state(mp, running, idle))
        Py_RETURN_FALSE;
    __atomic_add_fetch(&mp->nrun, 1, __ATOMIC_RELAXED); /* as node_m_ran */
    Py_RETURN_TRUE;
}

static PyObject *node_g_take(NodeObject *self, PyObject *arg)
{
    uint32_t h;
    if (!parse_handle(self, arg, &h))
        return NULL;
    return PyBool_FromLong(gmpd_gtake(self->nd, self->gtab, h));
}

static PyObject *node_g_arena(NodeObject *self, PyObject *arg)
{
    uint32_t p;
    if (!gtab_ok(self) || !arg_p(self, arg, &p))
        return NULL;
    gmpd_p *pp = gmpd_node_p(self->nd, p); /* a racy read for statistics: the owner writes these */
    return Py_BuildValue("(III)", gmpd_gtab_live_units(self->nd, p), pp->arena_rover, pp->arena_top);
}

static PyObject *node_g_reclaim(NodeObject *self, PyObject *arg)
{
    uint32_t p;
    if (!gtab_ok(self) || !arg_p(self, arg, &p))
        return NULL;
    return PyLong_FromUnsignedLong(gmpd_greclaim(self->nd, self->gtab, p));
}

static PyObject *node_g_trim(NodeObject *self, PyObject *arg)
{
    uint32_t p;
    if (!gtab_ok(self) || !arg_p(self, arg, &p))
        return NULL;
    return PyLong_FromSize_t(gmpd_gtab_trim(self->nd, self->gtab, p));
}

static PyObject *node_g_sweep(NodeObject *self, PyObject *arg)
{
    uint32_t p;
    if (!gtab_ok(self) || !arg_p(self, arg, &p))
        return NULL;
    return PyLong_FromUnsignedLong(gmpd_gtab_sweep_building(self->nd, self->gtab, p));
}

/* -- offers (the node-local submit path, offer.c) -- */

static int arg_slot(NodeObject *self, unsigned int slot)
{
    if (!node_ok(self))
        return 0;
    if (slot >= GMPD_OFFER_SLOTS) {
        PyErr_Format(PyExc_IndexError, "offer slot %u out of range", slot);
        return 0;
    }
    return 1;
}

static PyObject *node_offer_put(NodeObject *self, PyObject *args)
{
    unsigned long long tid;
    Py_buffer buf;
    unsigned int lanes = (1u << GMPD_OFFER_SLOTS) - 1;
    if (!node_ok(self) || !PyArg_ParseTuple(args, "Ky*|I:offer_put", &tid, &buf, &lanes))
        return NULL;
    uint32_t slot = 0, seq = 0;
    int r = GMPD_ENOSPACE;
    /* Only worth it while an M holds a P (it looks at the offers whenever its
     * queue runs dry; a spinning one is woken): a parked M needs the
     * coordinator's grant anyway. */
    gmpd_node *nd = self->nd;
    if (buf.len <= GMPD_OFFER_BYTES &&
        (gmpd_sched_load(nd, GMPD_SC_NMSPINNING) > 0 || gmpd_sched_load(nd, GMPD_SC_NPIDLE) < nd->nprocs))
        r = gmpd_offer_put(nd, tid, buf.buf, (uint32_t)buf.len, lanes, &slot, &seq);
    PyBuffer_Release(&buf);
    if (r != GMPD_OK)
        Py_RETURN_NONE;
    return Py_BuildValue("(II)", slot, seq);
}

static PyObject *node_offer_take(NodeObject *self, PyObject *arg)
{
    uint32_t m, seq = 0;
    if (!arg_m(self, arg, &m))
        return NULL;
    int slot = gmpd_offer_take(self->nd, m, &seq);
    if (slot < 0)
        Py_RETURN_NONE;
    gmpd_offer *o = gmpd_node_offer(self->nd, (uint32_t)slot);
    uint32_t len = o->len > GMPD_OFFER_BYTES ? GMPD_OFFER_BYTES : o->len; /* (a torn slot stays in bounds) */
    return Py_BuildValue("(IIKy#)", (unsigned int)slot, seq, (unsigned long long)o->tid, (const char *)o->payload,
                         (Py_ssize_t)len);
}

static PyObject *node_offer_state(NodeObject *self, PyObject *args)
{
    unsigned int slot;
    if (!PyArg_ParseTuple(args, "I:offer_state", &slot) || !arg_slot(self, slot))
        return NULL;
    uint64_t w = gmpd_offer_load(self->nd, slot);
    return Py_BuildValue("(IiIK)", GMPD_OFFER_SEQ(w), (int)GMPD_OFFER_MID(w), GMPD_OFFER_STATE(w),
                         (unsigned long long)gmpd_node_offer(self->nd, slot)->tid);
}

static PyObject *node_offer_cas(NodeObject *self, PyObject *args)
{
    unsigned int slot, seq0, st0, seq1, st1;
    int m0, m1;
    if (!PyArg_ParseTuple(args, "I(IiI)(IiI):offer_cas", &slot, &seq0, &m0, &st0, &seq1, &m1, &st1) ||
        !arg_slot(self, slot))
        return NULL;
    return PyBool_FromLong(gmpd_offer_cas(self->nd, slot, gmpd_offer_word(seq0, m0, st0),
                                          gmpd_offer_word(seq1, m1, st1)));
}

static PyObject *node_offer_reply(NodeObject *self, PyObject *args)
{
    long m;
    unsigned long long tid;
    unsigned int status;
    Py_buffer buf;
    if (!PyArg_ParseTuple(args, "lKIy*:offer_reply", &m, &tid, &status, &buf))
        return NULL;
    if (!check_m(self, m)) {
        PyBuffer_Release(&buf);
        return NULL;
    }
    int r = buf.len <= GMPD_REPLY_BYTES ? gmpd_offer_reply(self->nd, (uint32_t)m, tid, status, buf.buf, (uint32_t)buf.len)
                                        : 0;
    PyBuffer_Release(&buf);
    return PyBool_FromLong(r);
}

static PyObject *node_offer_unclaim(NodeObject *self, PyObject *arg)
{
    uint32_t m;
    if (!arg_m(self, arg, &m))
        return NULL;
    return PyLong_FromLong(gmpd_offer_unclaim(self->nd, m));
}

static PyObject *node_offer_result(NodeObject *self, PyObject *args)
{
    unsigned int slot;
    unsigned long long tid;
    if (!PyArg_ParseTuple(args, "IK:offer_result", &slot, &tid) || !arg_slot(self, slot))
        return NULL;
    gmpd_offer *o = gmpd_node_offer(self->nd, slot);
    /* acquire: pairs with the replier's release store of done.  The bytes
     * stay while the GIL is held: only this client re-uses the slot. */
    if (__atomic_load_n(&o->done, __ATOMIC_ACQUIRE) != tid || tid == 0)
        Py_RETURN_NONE;
    uint32_t len = o->rlen > GMPD_REPLY_BYTES ? GMPD_REPLY_BYTES : o->rlen;
    return Py_BuildValue("(Iy#)", o->status, (const char *)o->reply, (Py_ssize_t)len);
}

static PyObject *node_offer_wake(NodeObject *self, PyObject *args)
{
    unsigned int slot;
    if (!PyArg_ParseTuple(args, "I:offer_wake", &slot) || !arg_slot(self, slot))
        return NULL;
    return PyLong_FromUnsignedLong(__atomic_load_n(&gmpd_node_offer(self->nd, slot)->wake, __ATOMIC_ACQUIRE));
}

static PyObject *node_offer_wait(NodeObject *self, PyObject *args)
{
    unsigned int slot, seen;
    double timeout;
    if (!PyArg_ParseTuple(args, "IId:offer_wait", &slot, &seen, &timeout) || !arg_slot(self, slot))
        return NULL;
    return futex_sleep(&gmpd_node_offer(self->nd, slot)->wake, seen, timeout);
}

static PyObject *node_offer_poke(NodeObject *self, PyObject *args)
{
    unsigned int slot;
    if (!PyArg_ParseTuple(args, "I:offer_poke", &slot) || !arg_slot(self, slot))
        return NULL;
    gmpd_offer_poke(self->nd, slot);
    Py_RETURN_NONE;
}

/* -- sysmon's quiet rounds (sysmon.c) -- */

static PyObject *node_sysmon_quiet(NodeObject *self, PyObject *args)
{
    gmpd_quiet q;
    double nap_s, max_s, busy_s, until_s, period_s, limit_s, preempt_s;
    Py_buffer watch, fds;
    int wchan;
    if (!node_ok(self) ||
        !PyArg_ParseTuple(args, "IIIIidddddddw*y*p:sysmon_quiet", &q.slot, &q.m_running, &q.m_join, &q.doom_watch,
                          &q.lifeline, &nap_s, &max_s, &busy_s, &until_s, &period_s, &limit_s, &preempt_s, &watch,
                          &fds, &wchan))
        return NULL;
    PyObject *ret = NULL;
    if (!check_m(self, q.slot))
        goto out;
    if (watch.len != (Py_ssize_t)(self->nd->nprocs * sizeof(gmpd_pwatch)) || fds.len % (2 * sizeof(int32_t))) {
        PyErr_SetString(PyExc_ValueError, "sysmon_quiet: watch is 3 int64 per P, procfds (pid, fd) int32 pairs");
        goto out;
    }
    q.nap_ns = (int64_t)(nap_s * 1e9);
    q.max_ns = (int64_t)(max_s * 1e9);
    q.busy_ns = (int64_t)(busy_s * 1e9);
    q.until_ns = (int64_t)(until_s * 1e9);
    q.period_ns = (int64_t)(period_s * 1e9);
    q.limit_ns = (int64_t)(limit_s * 1e9);
    q.preempt_ns = (int64_t)(preempt_s * 1e9);
    q.watch = watch.buf;
    q.procfds = fds.buf;
    q.nprocfds = (uint32_t)(fds.len / (2 * sizeof(int32_t)));
    q.wchan = (uint32_t)wchan;
    int64_t next_ns;
    int32_t arg;
    int why;
    Py_BEGIN_ALLOW_THREADS
    why = gmpd_sysmon_quiet(self->nd, &q, &next_ns, &arg);
    Py_END_ALLOW_THREADS
    ret = Py_BuildValue("(iid)", why, arg, (double)next_ns / 1e9);
out:
    PyBuffer_Release(&watch);
    PyBuffer_Release(&fds);
    return ret;
}

/* -- scheduler counters -- */

static PyObject *node_sched_add(NodeObject *self, PyObject *args)
{
    unsigned int i;
    int delta;
    if (!node_ok(self) || !PyArg_ParseTuple(args, "Ii:sched_add", &i, &delta))
        return NULL;
    if (i >= GMPD_SC__COUNT) {
        PyErr_Format(PyExc_IndexError, "scheduler counter %u out of range", i);
        return NULL;
    }
    return PyLong_FromLong((int32_t)gmpd_sched_add(self->nd, i, delta));
}

static PyObject *node_sched_dec(NodeObject *self, PyObject *args)
{
    unsigned int i;
    if (!node_ok(self) || !PyArg_ParseTuple(args, "I:sched_dec", &i))
        return NULL;
    if (i >= GMPD_SC__COUNT) {
        PyErr_Format(PyExc_IndexError, "scheduler counter %u out of range", i);
        return NULL;
    }
    return PyLong_FromUnsignedLong(gmpd_sched_dec(self->nd, i));
}

static PyObject *node_sched(NodeObject *self, PyObject *Py_UNUSED(ignored))
{
    if (!node_ok(self))
        return NULL;
    PyObject *t = PyTuple_New(GMPD_SC__COUNT);
    if (t == NULL)
        return NULL;
    for (int i = 0; i < GMPD_SC__COUNT; i++) {
        PyObject *x = PyLong_FromLong((int32_t)gmpd_sched_load(self->nd, (uint32_t)i));
        if (x == NULL) {
            Py_DECREF(t);
            return NULL;
        }
        PyTuple_SET_ITEM(t, i, x);
    }
    return t;
}

static PyObject *node_get_nprocs(NodeObject *self, void *Py_UNUSED(c))
{
    return node_ok(self) ? PyLong_FromUnsignedLong(self->nd->nprocs) : NULL;
}
static PyObject *node_get_nms(NodeObject *self, void *Py_UNUSED(c))
{
    return node_ok(self) ? PyLong_FromUnsignedLong(self->nd->nms) : NULL;
}
static PyObject *node_get_creator(NodeObject *self, void *Py_UNUSED(c))
{
    return node_ok(self) ? PyLong_FromLong(self->nd->creator_pid) : NULL;
}
static PyObject *node_get_closed(NodeObject *self, void *Py_UNUSED(c)) { return PyBool_FromLong(self->nd == NULL); }

static PyMethodDef node_methods[] = {
    {"close", (PyCFunction)node_close, METH_NOARGS, "Release the buffer; the node is unusable afterwards."},
    {"runq", (PyCFunction)node_runq, METH_VARARGS, "runq(p, m) -> RunQ"},
    {"recover_m", (PyCFunction)node_recover_m, METH_O,
     "recover_m(m) -> ((kind, state, arg, seq), orphans, completed): recover a dead M's op record."},
    {"op_record", (PyCFunction)node_op_record, METH_O, "op_record(m) -> (kind, state, arg, seq)"},
    {"release", (PyCFunction)node_release, METH_O, "release(m): drop what M m holds."},
    {"runq_len", (PyCFunction)node_runq_len, METH_O, "runq_len(p) -> int (runnext not counted)"},
    {"runq_empty", (PyCFunction)node_runq_empty, METH_O, "runq_empty(p) -> bool"},
    {"p_state", (PyCFunction)node_p_state, METH_O, "p_state(p) -> (status, owner, epoch)"},
    {"p_held", (PyCFunction)node_p_held, METH_VARARGS, "p_held(p, m, epoch) -> bool: p_state(p) == (RUNNING, m, epoch)"},
    {"p_cas", (PyCFunction)node_p_cas, METH_VARARGS, "p_cas(p, expect, new) -> bool"},
    {"acquirep", (PyCFunction)node_acquirep, METH_VARARGS, "acquirep(p, m, epoch) -> bool: IDLE -> RUNNING"},
    {"releasep", (PyCFunction)node_releasep, METH_VARARGS, "releasep(p, m, epoch) -> bool: RUNNING -> IDLE"},
    {"entersyscall", (PyCFunction)node_entersyscall, METH_VARARGS, "entersyscall(p, m, epoch) -> bool"},
    {"exitsyscall", (PyCFunction)node_exitsyscall, METH_VARARGS,
     "exitsyscall(p, m, epoch) -> bool: fast path, fails if the P was retaken"},
    {"retake", (PyCFunction)node_retake, METH_VARARGS, "retake(p, seen_state) -> new epoch | None"},
    {"p_ticks", (PyCFunction)node_p_ticks, METH_O, "p_ticks(p) -> (schedtick, syscalltick, preempt)"},
    {"p_syscallwhen", (PyCFunction)node_p_syscallwhen, METH_O,
     "p_syscallwhen(p) -> monotonic ns of P p's last entersyscall"},
    {"schedtick", (PyCFunction)node_schedtick, METH_O, "schedtick(p) -> int: bump and return"},
    {"set_preempt", (PyCFunction)node_set_preempt, METH_VARARGS, "set_preempt(p, flag)"},
    {"m_info", (PyCFunction)node_m_info, METH_O, "m_info(m) -> (state, curg, p, pid, heartbeat_ns, park, nrun)"},
    {"m_placing", (PyCFunction)node_m_placing, METH_O, "m_placing(m) -> (seq, placed): the batch M m queues"},
    {"m_set_placing", (PyCFunction)node_m_set_placing, METH_VARARGS, "m_set_placing(m, seq, placed)"},
    {"m_claim_batch", (PyCFunction)node_m_claim_batch, METH_VARARGS,
     "m_claim_batch(m, seq) -> False if the coordinator revoked prefetched batch seq"},
    {"m_revoke_batch", (PyCFunction)node_m_revoke_batch, METH_VARARGS,
     "m_revoke_batch(m, seq) -> True if unclaimed batch seq is revoked"},
    {"m_doom", (PyCFunction)node_m_doom, METH_O, "m_doom(m) -> (deadline_ns, doom)"},
    {"m_set_deadline", (PyCFunction)node_m_set_deadline, METH_VARARGS,
     "m_set_deadline(m, ns, g=0): 0 for none; g, the G whose timeout it is"},
    {"m_deadline_g", (PyCFunction)node_m_deadline_g, METH_O, "m_deadline_g(m) -> the G whose timeout the deadline is"},
    {"m_grant", (PyCFunction)node_m_grant, METH_O, "m_grant(m) -> (p, epoch) of a GRANTED wake; p -1: by message"},
    {"m_set_grant", (PyCFunction)node_m_set_grant, METH_VARARGS, "m_set_grant(m, p, epoch): p -1 for by message"},
    {"m_set_doom", (PyCFunction)node_m_set_doom, METH_VARARGS, "m_set_doom(m, why): before killing M m"},
    {"m_ran", (PyCFunction)node_m_ran, METH_O, "m_ran(m) -> int: count one more G run by M m"},
    {"m_set", (PyCFunction)(void (*)(void))node_m_set, METH_VARARGS | METH_KEYWORDS,
     "m_set(m, *, state, curg, p, pid)"},
    {"m_cas_state", (PyCFunction)node_m_cas_state, METH_VARARGS, "m_cas_state(m, old, new) -> bool"},
    {"heartbeat", (PyCFunction)node_heartbeat, METH_O, "heartbeat(m) -> ns: store CLOCK_MONOTONIC now"},
    {"start_heartbeat", (PyCFunction)node_start_heartbeat, METH_VARARGS,
     "start_heartbeat(m, period_ms): a native thread stamps M m's heartbeat until the process exits"},
    {"sysmon_quiet", (PyCFunction)node_sysmon_quiet, METH_VARARGS,
     "sysmon_quiet(slot, m_running, m_join, doom_watch, lifeline, nap_s, max_s, busy_s, until_s, period_s, limit_s,"
     " preempt_s, watch, procfds, wchan) -> (reason, arg, last_nap_s): sysmon's quiet rounds until one needs"
     " Python (native/sysmon.h)"},
    {"park", (PyCFunction)node_park, METH_VARARGS,
     "park(m, seen, timeout=-1) -> bool: futex-sleep while M m's park word == seen; False on timeout"},
    {"wake", (PyCFunction)node_wake, METH_O, "wake(m) -> int: bump M m's park word and wake it"},
    {"standby_park", (PyCFunction)node_standby_park, METH_VARARGS,
     "standby_park(m, seen, timeout=-1) -> bool: a standby thread of M m waits for sysmon's wake"},
    {"standby_wake", (PyCFunction)node_standby_wake, METH_O, "standby_wake(m) -> int: wake one standby of M m"},
    {"m_standby", (PyCFunction)node_m_standby, METH_O, "m_standby(m) -> (word, parked, blocked)"},
    {"m_thread", (PyCFunction)node_m_thread, METH_O, "m_thread(m) -> (pid, tid of the thread holding it)"},
    {"offer_put", (PyCFunction)node_offer_put, METH_VARARGS,
     "offer_put(tid, payload, lanes=all) -> (slot, seq) | None: offer a root task to spinning Ms "
     "(gmpd/offer.py) in a free slot of the `lanes` bit mask; None when no M spins, no slot is free or the "
     "payload is too large"},
    {"offer_reply", (PyCFunction)node_offer_reply, METH_VARARGS,
     "offer_reply(m, tid, status, data) -> bool: M m writes root task tid's result into the slot that wants it, "
     "and wakes the client thread waiting there"},
    {"offer_unclaim", (PyCFunction)node_offer_unclaim, METH_O,
     "offer_unclaim(m) -> int: give up the replies dead M m was writing"},
    {"offer_result", (PyCFunction)node_offer_result, METH_VARARGS,
     "offer_result(slot, tid) -> (status, data) | None: task tid's result, if it is in the slot"},
    {"offer_wake", (PyCFunction)node_offer_wake, METH_VARARGS, "offer_wake(slot) -> int: the slot's wake word"},
    {"offer_wait", (PyCFunction)node_offer_wait, METH_VARARGS,
     "offer_wait(slot, seen, timeout) -> bool: futex-sleep while the slot's wake word == seen"},
    {"offer_poke", (PyCFunction)node_offer_poke, METH_VARARGS,
     "offer_poke(slot): bump the slot's wake word and wake its waiters"},
    {"offer_take", (PyCFunction)node_offer_take, METH_O,
     "offer_take(m) -> (slot, seq, tid, payload) | None: take an offered task (OFFERED -> TAKEN by M m)"},
    {"offer_state", (PyCFunction)node_offer_state, METH_VARARGS, "offer_state(slot) -> (seq, m, state, tid)"},
    {"offer_cas", (PyCFunction)node_offer_cas, METH_VARARGS,
     "offer_cas(slot, (seq, m, state), (seq, m, state)) -> bool: CAS the slot's state word"},
    {"stress", (PyCFunction)node_stress, METH_VARARGS, "stress(role, ctl, p, m, seed) -> int (C-level loop)"},
    {"sched_add", (PyCFunction)node_sched_add, METH_VARARGS, "sched_add(i, delta) -> new value of counter i"},
    {"sched_dec", (PyCFunction)node_sched_dec, METH_VARARGS, "sched_dec(i) -> counter i less 1, never below 0"},
    {"sched", (PyCFunction)node_sched, METH_NOARGS, "sched() -> tuple of every scheduler counter"},
    {"attach_gtab", (PyCFunction)node_attach_gtab, METH_O, "attach_gtab(buffer): map the node's G table"},
    {"g_new", (PyCFunction)(void (*)(void))node_g_new, METH_VARARGS | METH_KEYWORDS,
     "g_new(p, payload, *, parent=0, root_id=0) -> handle: a RUNNABLE G in P p's arena (owner of p only)"},
    {"g_payload", (PyCFunction)node_g_payload, METH_O, "g_payload(h) -> bytes"},
    {"g_begin", (PyCFunction)node_g_begin, METH_VARARGS,
     "g_begin(h, m, p, outer, new_slice, state) -> (payload, parent, root_id): M.execute's prologue"},
    {"m_run", (PyCFunction)node_m_run, METH_VARARGS, "m_run(m, curg, state): state (unless < 0), then curg"},
    {"g_leave", (PyCFunction)node_g_leave, METH_VARARGS,
     "g_leave(m, running, idle) -> bool: M m running -> idle by CAS, nrun + 1; False if it was not running"},
    {"g_info", (PyCFunction)node_g_info, METH_O,
     "g_info(h) -> (state, gen, parent, root_id, len, result, status, waiter, owner, outer, attempts, refs)"},
    {"g_cas_state", (PyCFunction)node_g_cas_state, METH_VARARGS, "g_cas_state(h, old, new) -> bool"},
    {"g_set_owner", (PyCFunction)node_g_set_owner, METH_VARARGS,
     "g_set_owner(h, m, outer=0): M running it (-1: none), and the G it runs it inside"},
    {"g_attempt", (PyCFunction)node_g_attempt, METH_O, "g_attempt(h) -> int: count an attempt lost with its M"},
    {"g_fail", (PyCFunction)node_g_fail, METH_VARARGS, "g_fail(h, status): DONE with no result payload"},
    {"g_scan", (PyCFunction)node_g_scan, METH_O, "g_scan(p) -> tuple: RUNNABLE and RUNNING Gs in P p's arena"},
    {"g_set_result", (PyCFunction)node_g_set_result, METH_VARARGS,
     "g_set_result(h, p, data, status) -> result handle: store in P p's arena, mark DONE, wake the waiter"},
    {"g_result", (PyCFunction)node_g_result, METH_O, "g_result(h) -> (status, bytes) | None"},
    {"g_wait_register", (PyCFunction)node_g_wait_register, METH_VARARGS,
     "g_wait_register(h, m) -> bool: M m waits for h (its park word is bumped at DONE); True if already DONE"},
    {"g_free", (PyCFunction)node_g_free, METH_O, "g_free(h): drop a reference; the last frees the G and its result"},
    {"g_detach", (PyCFunction)node_g_detach, METH_O,
     "g_detach(h): nobody will read child h's result; it is freed when done"},
    {"g_claim", (PyCFunction)node_g_claim, METH_O, "g_claim(h) -> bool: a joiner takes a queued RUNNABLE G"},
    {"g_take", (PyCFunction)node_g_take, METH_O,
     "g_take(h) -> bool: a popped G becomes RUNNING; False if a joiner claimed it (reference dropped)"},
    {"g_arena", (PyCFunction)node_g_arena, METH_O,
     "g_arena(p) -> (live, rover, top) in 64-byte units (read-only)"},
    {"g_reclaim", (PyCFunction)node_g_reclaim, METH_O, "g_reclaim(p) -> n: reclaim freed Gs (owner of p only)"},
    {"g_trim", (PyCFunction)node_g_trim, METH_O, "g_trim(p) -> bytes returned to the kernel (owner of p only)"},
    {"g_sweep", (PyCFunction)node_g_sweep, METH_O, "g_sweep(p) -> n: free BUILDING records of a dead allocator"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef node_getset[] = {
    {"nprocs", (getter)node_get_nprocs, NULL, "number of Ps", NULL},
    {"nms", (getter)node_get_nms, NULL, "number of M slots", NULL},
    {"creator_pid", (getter)node_get_creator, NULL, "pid that formatted the segment", NULL},
    {"closed", (getter)node_get_closed, NULL, "whether close() was called", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot node_slots[] = {
    {Py_tp_new, node_new},
    {Py_tp_dealloc, node_dealloc},
    {Py_tp_methods, node_methods},
    {Py_tp_getset, node_getset},
    {Py_tp_doc, "A node segment: Ps (status, epoch, ticks, runnext, ring), M slots and op records."},
    {0, NULL},
};

static PyType_Spec node_spec = {
    .name = "gmpd._native.Node",
    .basicsize = sizeof(NodeObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = node_slots,
};

/* ---- module ---------------------------------------------------------------- */

static PyObject *mod_node_size(PyObject *Py_UNUSED(mod), PyObject *args)
{
    unsigned int nprocs, nms;
    if (!PyArg_ParseTuple(args, "II:node_size", &nprocs, &nms))
        return NULL;
    return PyLong_FromSize_t(gmpd_node_size(nprocs, nms));
}

static PyObject *mod_gtab_size(PyObject *Py_UNUSED(mod), PyObject *arg)
{
    unsigned long n = PyLong_AsUnsignedLong(arg);
    if (n == (unsigned long)-1 && PyErr_Occurred())
        return NULL;
    return PyLong_FromSize_t(gmpd_gtab_size((uint32_t)n));
}

static PyObject *mod_stress_size(PyObject *Py_UNUSED(mod), PyObject *args)
{
    unsigned int nlogs, total;
    if (!PyArg_ParseTuple(args, "II:stress_size", &nlogs, &total))
        return NULL;
    return PyLong_FromSize_t(gmpd_stress_size(nlogs, total));
}

static PyObject *mod_stress_init(PyObject *Py_UNUSED(mod), PyObject *args)
{
    Py_buffer b;
    unsigned int total, nlogs, nprocs;
    if (!PyArg_ParseTuple(args, "w*III:stress_init", &b, &total, &nlogs, &nprocs))
        return NULL;
    int r = gmpd_stress_init(b.buf, (size_t)b.len, total, nlogs, nprocs);
    PyBuffer_Release(&b);
    if (r != GMPD_OK) {
        PyErr_SetString(PyExc_ValueError, "stress_init: buffer too small or bad counts (nlogs <= 64)");
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *mod_set_crash_point(PyObject *Py_UNUSED(mod), PyObject *arg)
{
    long n = PyLong_AsLong(arg);
    if (n == -1 && PyErr_Occurred())
        return NULL;
    if (n < 0 || n >= GMPD_CRASH__COUNT) {
        PyErr_Format(PyExc_ValueError, "crash point must be 0..%d", GMPD_CRASH__COUNT - 1);
        return NULL;
    }
    gmpd_crash_at = (int)n;
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"_set_crash_point", mod_set_crash_point, METH_O,
     "_set_crash_point(n): tests only -- SIGKILL this process when it reaches crash point n (0: off)."},
    {"node_size", mod_node_size, METH_VARARGS, "node_size(nprocs, nms) -> bytes needed"},
    {"gtab_size", mod_gtab_size, METH_O, "gtab_size(nprocs) -> bytes (sparse) of the G table segment"},
    {"stress_size", mod_stress_size, METH_VARARGS, "stress_size(nlogs, total) -> bytes needed"},
    {"stress_init", mod_stress_init, METH_VARARGS, "stress_init(buffer, total, nlogs, nprocs)"},
    {NULL, NULL, 0, NULL},
};

static int module_exec(PyObject *mod)
{
    module_state *st = PyModule_GetState(mod);
    st->node_type = (PyTypeObject *)PyType_FromModuleAndSpec(mod, &node_spec, NULL);
    if (st->node_type == NULL || PyModule_AddType(mod, st->node_type) < 0)
        return -1;
    st->runq_type = (PyTypeObject *)PyType_FromModuleAndSpec(mod, &runq_spec, NULL);
    if (st->runq_type == NULL || PyModule_AddType(mod, st->runq_type) < 0)
        return -1;
    if (PyModule_AddIntConstant(mod, "RUNQ_SIZE", GMPD_RUNQ_SIZE) < 0 ||
        PyModule_AddIntConstant(mod, "LAYOUT_VERSION", GMPD_LAYOUT_VERSION) < 0 ||
        PyModule_AddIntConstant(mod, "MAX_PROCS", GMPD_MAX_PROCS) < 0 ||
        PyModule_AddIntConstant(mod, "MAX_MS", GMPD_MAX_MS) < 0 ||
        PyModule_AddIntConstant(mod, "OFFER_SLOTS", GMPD_OFFER_SLOTS) < 0 ||
        PyModule_AddIntConstant(mod, "OFFER_BYTES", GMPD_OFFER_BYTES) < 0 ||
        PyModule_AddIntConstant(mod, "REPLY_BYTES", GMPD_REPLY_BYTES) < 0 ||
        PyModule_AddIntConstant(mod, "STRESS_HEADER", 4096) < 0 ||
        PyModule_AddIntConstant(mod, "CRASH_POINTS", GMPD_CRASH__COUNT) < 0 ||
        PyModule_AddIntConstant(mod, "ARENA_BYTES", (long)GMPD_ARENA_BYTES) < 0)
        return -1;
    return 0;
}

static int module_traverse(PyObject *mod, visitproc visit, void *arg)
{
    module_state *st = PyModule_GetState(mod);
    Py_VISIT(st->node_type);
    Py_VISIT(st->runq_type);
    return 0;
}

static int module_clear(PyObject *mod)
{
    module_state *st = PyModule_GetState(mod);
    Py_CLEAR(st->node_type);
    Py_CLEAR(st->runq_type);
    return 0;
}

static PyModuleDef_Slot module_slots[] = {
    {Py_mod_exec, module_exec},
    {0, NULL},
};

static struct PyModuleDef gmpd_native_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "gmpd._native",
    .m_doc = "gmpd's node shared memory: Go's per-P run queues, P/M state words, futex parking.",
    .m_size = sizeof(module_state),
    .m_methods = module_methods,
    .m_slots = module_slots,
    .m_traverse = module_traverse,
    .m_clear = module_clear,
};

PyMODINIT_FUNC PyInit__native(void) { return PyModuleDef_Init(&gmpd_native_module); }
