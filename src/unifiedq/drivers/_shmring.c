/* Compiled fast path of the shm:// ring (optional: the driver falls back to Python).
 *
 * One object, Segment, wraps a writable buffer (the mapped shared-memory segment) and offers:
 *
 *   load(i) / store(i, v) / cas(i, expected, desired)
 *       Atomic access to 64-bit word i (acquire load, release store, sequentially
 *       consistent compare-and-swap), through the compiler's __atomic builtins: correct on
 *       x86-64 and on weakly ordered CPUs such as ARM64, with no library in between.
 *   put(body, job_id, now) / get()
 *       The fast path of Vyukov's algorithm as written in shm.py (_Ring.put and _Ring.get):
 *       claim a slot with one CAS, copy, publish with a release store. Everything that needs
 *       the clock, /proc or the owner table (deciding that a claim's owner is dead) stays in
 *       Python: put/get return the marker they are stuck on and let shm.py decide.
 *   put_many(bodies, job_ids, now) / take() / take_many(limit)
 *       Batches of put, and get that builds the unifiedq.Job itself (configure_jobs): the
 *       dequeue path then runs no Python code at all. A Job is a slotted dataclass; its slots
 *       are written directly at the offsets its member descriptors declare, exactly what
 *       make_job() does through the descriptors' __set__.
 *
 * The slot layout and the seq-word encoding must match shm.py exactly; both are described in
 * docs/drivers/shm.md and tests/test_shm.py runs processes with and without this module on
 * one ring.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdint.h>
#include <string.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the shm:// slot layout is little-endian"
#endif

#define MARK ((uint64_t)1 << 63)
#define CONSUMER ((uint64_t)1 << 62)
#define TBITS 46
#define TMASK (((uint64_t)1 << TBITS) - 1)
#define THALF ((uint64_t)1 << (TBITS - 1))
#define SLOT_HDR 64
#define ID_MAX 40
/* Slot header after the seq word (little-endian): u32 body length at +8, u16 id length at +12,
 * u16 flags at +14, f64 enqueued_at at +16, id bytes at +24 (ID_MAX), body at +64. */

#define LOAD_ACQ(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)
#define LOAD_RLX(p) __atomic_load_n((p), __ATOMIC_RELAXED)
#define STORE_REL(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)
#define STORE_RLX(p, v) __atomic_store_n((p), (v), __ATOMIC_RELAXED)
#define CAS(p, e, d) \
    __atomic_compare_exchange_n((p), (e), (d), 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)

typedef struct {
    PyObject_HEAD
    Py_buffer view;
    uint64_t *w; /* NULL once released */
    uint64_t nwords;
    /* ring geometry (configure) and this handle's claim markers (set_marks) */
    int ring;
    uint64_t cap, stride_w, first, head, tail, slot_size, pmark, cmark;
    /* Job construction (configure_jobs): the type, constant slot values, slot offsets */
    PyTypeObject *job_type;
    PyObject *queue, *headers, *one;
    /* id, queue, body, attempt, enqueued_at, headers, priority, receipt, deadline, timeout */
    Py_ssize_t off[10];
} Segment;

#define N_JOB_SLOTS 10
static const char *job_slots[N_JOB_SLOTS] = {
    "id", "queue", "body", "attempt", "enqueued_at", "headers", "priority", "receipt",
    "deadline", "timeout",
};

/* Rebuild the full ticket of marker s from its low bits, nearest to ref. */
static inline uint64_t ticket(uint64_t s, uint64_t ref) {
    uint64_t d = ((s & TMASK) - ref) & TMASK;
    return d >= THALF ? ref + d - ((uint64_t)1 << TBITS) : ref + d;
}

static int live(Segment *self) {
    if (self->w == NULL) {
        PyErr_SetString(PyExc_ValueError, "shm segment view is released");
        return 0;
    }
    return 1;
}

static int word_index(Segment *self, PyObject *o, uint64_t *out) {
    unsigned long long i = PyLong_AsUnsignedLongLong(o);
    if (i == (unsigned long long)-1 && PyErr_Occurred()) return 0;
    if (i >= self->nwords) {
        PyErr_Format(PyExc_IndexError, "word %llu outside the segment", i);
        return 0;
    }
    *out = i;
    return 1;
}

static int u64(PyObject *o, uint64_t *out) {
    unsigned long long v = PyLong_AsUnsignedLongLong(o);
    if (v == (unsigned long long)-1 && PyErr_Occurred()) return 0;
    *out = v;
    return 1;
}

static int Segment_init(Segment *self, PyObject *args, PyObject *kw) {
    PyObject *buf;
    static char *kwlist[] = {"buffer", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O", kwlist, &buf)) return -1;
    if (self->w != NULL) {
        PyErr_SetString(PyExc_TypeError, "Segment is already initialised");
        return -1;
    }
    if (PyObject_GetBuffer(buf, &self->view, PyBUF_WRITABLE | PyBUF_SIMPLE) < 0) return -1;
    if (((uintptr_t)self->view.buf & 7) != 0) {
        PyBuffer_Release(&self->view);
        PyErr_SetString(PyExc_ValueError, "the buffer must be 8-byte aligned");
        return -1;
    }
    self->w = (uint64_t *)self->view.buf;
    self->nwords = (uint64_t)self->view.len / 8;
    self->ring = 0;
    return 0;
}

static void Segment_dealloc(Segment *self) {
    if (self->w != NULL) {
        PyBuffer_Release(&self->view);
        self->w = NULL;
    }
    Py_CLEAR(self->job_type);
    Py_CLEAR(self->queue);
    Py_CLEAR(self->headers);
    Py_CLEAR(self->one);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* configure_jobs(job_type, queue, headers): take() builds job_type instances with these. */
static PyObject *Segment_configure_jobs(Segment *self, PyObject *args) {
    PyObject *type, *queue, *headers;
    if (!PyArg_ParseTuple(args, "O!UO", &PyType_Type, &type, &queue, &headers)) return NULL;
    PyTypeObject *tp = (PyTypeObject *)type;
    Py_ssize_t off[N_JOB_SLOTS];
    for (int k = 0; k < N_JOB_SLOTS; k++) {
        PyObject *d = PyObject_GetAttrString(type, job_slots[k]);
        if (d == NULL) {
            if (!PyErr_ExceptionMatches(PyExc_AttributeError)) return NULL;
            PyErr_Clear();
        }
        int ok = d != NULL && Py_IS_TYPE(d, &PyMemberDescr_Type)
                 && ((PyMemberDescrObject *)d)->d_common.d_type == tp
                 && ((PyMemberDescrObject *)d)->d_member->type == T_OBJECT_EX
                 && !(((PyMemberDescrObject *)d)->d_member->flags & READONLY);
        if (ok) off[k] = ((PyMemberDescrObject *)d)->d_member->offset;
        Py_XDECREF(d);
        if (!ok || off[k] < (Py_ssize_t)sizeof(PyObject)
            || off[k] + (Py_ssize_t)sizeof(PyObject *) > tp->tp_basicsize) {
            PyErr_Format(PyExc_TypeError, "%s.%s is not a plain object slot", tp->tp_name,
                         job_slots[k]);
            return NULL;
        }
    }
    PyObject *one = PyLong_FromLong(1);
    if (one == NULL) return NULL;
    memcpy(self->off, off, sizeof off);
    Py_INCREF(type);
    Py_XSETREF(self->job_type, tp);
    Py_INCREF(queue);
    Py_XSETREF(self->queue, queue);
    Py_INCREF(headers);
    Py_XSETREF(self->headers, headers);
    Py_XSETREF(self->one, one);
    Py_RETURN_NONE;
}

/* Steal body, jid and at into a new job; NULL (and every reference dropped) on failure. */
static PyObject *new_job(Segment *self, PyObject *body, PyObject *jid, PyObject *at) {
    PyObject *job = self->job_type->tp_alloc(self->job_type, 0);
    if (job == NULL) {
        Py_DECREF(body);
        Py_DECREF(jid);
        Py_DECREF(at);
        return NULL;
    }
    PyObject *v[N_JOB_SLOTS] = {jid, Py_NewRef(self->queue), body, Py_NewRef(self->one), at,
                                Py_NewRef(self->headers), Py_NewRef(Py_None),
                                Py_NewRef(Py_None), Py_NewRef(Py_None), Py_NewRef(Py_None)};
    for (int k = 0; k < N_JOB_SLOTS; k++) *(PyObject **)((char *)job + self->off[k]) = v[k];
    return job;
}

static PyObject *Segment_release(Segment *self, PyObject *unused) {
    if (self->w != NULL) {
        self->w = NULL;
        self->ring = 0;
        PyBuffer_Release(&self->view);
    }
    Py_RETURN_NONE;
}

static PyObject *Segment_load(Segment *self, PyObject *arg) {
    uint64_t i;
    if (!live(self) || !word_index(self, arg, &i)) return NULL;
    return PyLong_FromUnsignedLongLong(LOAD_ACQ(&self->w[i]));
}

static PyObject *Segment_store(Segment *self, PyObject *const *args, Py_ssize_t n) {
    uint64_t i, v;
    if (n != 2) {
        PyErr_SetString(PyExc_TypeError, "store(i, value) takes 2 arguments");
        return NULL;
    }
    if (!live(self) || !word_index(self, args[0], &i) || !u64(args[1], &v)) return NULL;
    STORE_REL(&self->w[i], v);
    Py_RETURN_NONE;
}

static PyObject *Segment_cas(Segment *self, PyObject *const *args, Py_ssize_t n) {
    uint64_t i, e, d;
    if (n != 3) {
        PyErr_SetString(PyExc_TypeError, "cas(i, expected, desired) takes 3 arguments");
        return NULL;
    }
    if (!live(self) || !word_index(self, args[0], &i) || !u64(args[1], &e) || !u64(args[2], &d))
        return NULL;
    return PyBool_FromLong(CAS(&self->w[i], &e, d));
}

static PyObject *Segment_configure(Segment *self, PyObject *args) {
    unsigned long long cap, stride, slot_size, first, head, tail;
    if (!PyArg_ParseTuple(args, "KKKKKK", &cap, &stride, &slot_size, &first, &head, &tail))
        return NULL;
    if (!live(self)) return NULL;
    if (cap < 2 || stride % 64 != 0 || stride < SLOT_HDR + slot_size || slot_size > UINT32_MAX
        || head >= self->nwords || tail >= self->nwords
        || first + cap * (stride / 8) > self->nwords) {
        PyErr_SetString(PyExc_ValueError, "ring geometry does not fit the segment");
        return NULL;
    }
    self->cap = cap;
    self->stride_w = stride / 8;
    self->slot_size = slot_size;
    self->first = first;
    self->head = head;
    self->tail = tail;
    self->ring = 1;
    Py_RETURN_NONE;
}

static PyObject *Segment_set_marks(Segment *self, PyObject *args) {
    unsigned long long pmark, cmark;
    if (!PyArg_ParseTuple(args, "KK", &pmark, &cmark)) return NULL;
    if ((pmark & MARK) == 0 || (cmark & (MARK | CONSUMER)) != (MARK | CONSUMER)) {
        PyErr_SetString(PyExc_ValueError, "claim markers need the marker bit");
        return NULL;
    }
    self->pmark = pmark;
    self->cmark = cmark;
    Py_RETURN_NONE;
}

static int ready(Segment *self) {
    if (!live(self)) return 0;
    if (!self->ring || self->pmark == 0) {
        PyErr_SetString(PyExc_ValueError, "configure() and set_marks() come first");
        return 0;
    }
    return 1;
}

/* Publish one job. Returns 0: published; 1: full; otherwise the claim marker of an earlier
 * lap that holds the slot (the caller decides whether its owner died and repairs, or the ring
 * is full); ERR with an exception set. A marker always has bits 56-61 clear, so never ERR. */
#define ERR ((uint64_t)-1)

static uint64_t put_one(Segment *self, PyObject *bobj, PyObject *jobj, double now) {
    if (!PyBytes_Check(bobj)) {
        PyErr_SetString(PyExc_TypeError, "body must be bytes");
        return ERR;
    }
    const char *body = PyBytes_AS_STRING(bobj);
    Py_ssize_t blen = PyBytes_GET_SIZE(bobj);
    const char *jid;
    Py_ssize_t idn;
    if (PyUnicode_Check(jobj)) {
        jid = PyUnicode_AsUTF8AndSize(jobj, &idn);
        if (jid == NULL) return ERR;
    } else if (PyBytes_Check(jobj)) {
        jid = PyBytes_AS_STRING(jobj);
        idn = PyBytes_GET_SIZE(jobj);
    } else {
        PyErr_SetString(PyExc_TypeError, "job_id must be str or bytes");
        return ERR;
    }
    /* Never write past a slot, whatever the caller checked. */
    if ((uint64_t)blen > self->slot_size) {
        PyErr_Format(PyExc_ValueError, "body of %zd bytes exceeds slot_size %llu", blen,
                     (unsigned long long)self->slot_size);
        return ERR;
    }
    if (idn > ID_MAX) {
        PyErr_Format(PyExc_ValueError, "job id of %zd bytes exceeds %d", idn, ID_MAX);
        return ERR;
    }
    uint64_t *w = self->w, cap = self->cap, sw = self->stride_w, first = self->first;
    uint64_t *hint = &w[self->head];
    for (;;) {
        uint64_t pos = LOAD_RLX(hint);
        uint64_t *seq = &w[first + (pos % cap) * sw];
        uint64_t s = LOAD_ACQ(seq);
        if (s == pos) {
            uint64_t e = pos;
            if (!CAS(seq, &e, self->pmark | (pos & TMASK))) continue;
            if (LOAD_RLX(hint) == pos) STORE_RLX(hint, pos + 1);
            char *slot = (char *)seq;
            uint32_t n32 = (uint32_t)blen;
            uint16_t id16 = (uint16_t)idn, flags = 0;
            memcpy(slot + 8, &n32, 4);
            memcpy(slot + 12, &id16, 2);
            memcpy(slot + 14, &flags, 2);
            memcpy(slot + 16, &now, 8);
            memcpy(slot + 24, jid, (size_t)idn);
            memset(slot + 24 + idn, 0, (size_t)(ID_MAX - idn));
            memcpy(slot + SLOT_HDR, body, (size_t)blen);
            STORE_REL(seq, pos + 1); /* publish */
            return 0;
        }
        if (s & MARK) {
            if (ticket(s, pos) >= pos) { /* ticket pos was claimed: move the hint on */
                if (LOAD_RLX(hint) == pos) STORE_RLX(hint, pos + 1);
                continue;
            }
            return s; /* an earlier lap's claim: alive? */
        }
        if (s > pos) {
            if (LOAD_RLX(hint) == pos) STORE_RLX(hint, pos + 1);
            continue;
        }
        return 1; /* the previous lap's job is still there: full */
    }
}

/* put(body: bytes, job_id: str, now: float) -> int: put_one's result. */
static PyObject *Segment_put(Segment *self, PyObject *const *args, Py_ssize_t n) {
    if (n != 3) {
        PyErr_SetString(PyExc_TypeError, "put(body, job_id, now) takes 3 arguments");
        return NULL;
    }
    if (!ready(self)) return NULL;
    double now = PyFloat_AsDouble(args[2]);
    if (now == -1.0 && PyErr_Occurred()) return NULL;
    uint64_t r = put_one(self, args[0], args[1], now);
    return r == ERR ? NULL : PyLong_FromUnsignedLongLong(r);
}

/* put_many(bodies: list[bytes], job_ids: list[str], now: float) -> int: how many were
 * published, in order; stops at the first that is not (the caller finds out why through
 * put()). */
static PyObject *Segment_put_many(Segment *self, PyObject *const *args, Py_ssize_t n) {
    if (n != 3 || !PyList_Check(args[0]) || !PyList_Check(args[1])
        || PyList_GET_SIZE(args[0]) != PyList_GET_SIZE(args[1])) {
        PyErr_SetString(PyExc_TypeError,
                        "put_many(bodies, job_ids, now) takes two lists of one length");
        return NULL;
    }
    if (!ready(self)) return NULL;
    double now = PyFloat_AsDouble(args[2]);
    if (now == -1.0 && PyErr_Occurred()) return NULL;
    Py_ssize_t k, len = PyList_GET_SIZE(args[0]);
    for (k = 0; k < len; k++) {
        uint64_t r = put_one(self, PyList_GET_ITEM(args[0], k), PyList_GET_ITEM(args[1], k), now);
        if (r == ERR) {
            if (k == 0) return NULL;
            PyErr_Clear(); /* report the ones published; the next put() raises again */
            break;
        }
        if (r != 0) break;
    }
    return PyLong_FromSsize_t(k);
}

/* Take the oldest job into *body, *jid, *at (new references) and return 0; or return 1 when
 * empty, the claim marker that stops us (a producer still writing, or an earlier lap's
 * claim: the caller checks its owner), or -1 with an exception set. */
static uint64_t take_one(Segment *self, PyObject **body, PyObject **jid, PyObject **at);

/* get() -> (body: bytes, job_id: str, enqueued_at: float) | int */
static PyObject *Segment_get(Segment *self, PyObject *unused) {
    if (!ready(self)) return NULL;
    PyObject *body, *jid, *at;
    uint64_t r = take_one(self, &body, &jid, &at);
    if (r == ERR) return NULL;
    if (r != 0) return PyLong_FromUnsignedLongLong(r);
    PyObject *item = PyTuple_Pack(3, body, jid, at);
    Py_DECREF(body);
    Py_DECREF(jid);
    Py_DECREF(at);
    return item;
}

static int jobs_ready(Segment *self) {
    if (!ready(self)) return 0;
    if (self->job_type == NULL) {
        PyErr_SetString(PyExc_ValueError, "configure_jobs() comes first");
        return 0;
    }
    return 1;
}

/* take() -> Job | int: like get(), but builds the Job. */
static PyObject *Segment_take(Segment *self, PyObject *unused) {
    if (!jobs_ready(self)) return NULL;
    PyObject *body, *jid, *at;
    uint64_t r = take_one(self, &body, &jid, &at);
    if (r == ERR) return NULL;
    if (r != 0) return PyLong_FromUnsignedLongLong(r);
    return new_job(self, body, jid, at);
}

/* take_many(limit, errors) -> list[Job]: stops at the first slot that is not ready (the
 * caller retries through the Python path, which repairs dead claims), or at a corrupt one: its
 * job is dropped, the error goes into the list `errors`, and the jobs taken are returned. */
static PyObject *Segment_take_many(Segment *self, PyObject *const *args, Py_ssize_t n) {
    if (n != 2 || !PyList_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "take_many(limit, errors: list)");
        return NULL;
    }
    if (!jobs_ready(self)) return NULL;
    Py_ssize_t limit = PyLong_AsSsize_t(args[0]);
    if (limit == -1 && PyErr_Occurred()) return NULL;
    PyObject *out = PyList_New(0);
    if (out == NULL) return NULL;
    for (Py_ssize_t k = 0; k < limit; k++) {
        PyObject *body, *jid, *at;
        uint64_t r = take_one(self, &body, &jid, &at);
        if (r == ERR) goto fail;
        if (r != 0) break;
        PyObject *job = new_job(self, body, jid, at);
        if (job == NULL) goto fail;
        int bad = PyList_Append(out, job);
        Py_DECREF(job);
        if (bad) goto fail;
    }
    return out;
fail:
    /* Never drop jobs already taken: hand them over, and the error as a value. The failing
     * slot's job (a corrupt slot, or no memory for its copy) is lost either way. */
    {
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        PyErr_NormalizeException(&type, &value, &tb);
        int bad = value == NULL || PyList_Append(args[1], value) < 0;
        Py_XDECREF(type);
        Py_XDECREF(value);
        Py_XDECREF(tb);
        if (bad) {
            Py_DECREF(out);
            return NULL;
        }
    }
    return out;
}

static uint64_t take_one(Segment *self, PyObject **pbody, PyObject **pjid, PyObject **pat) {
    uint64_t *w = self->w, cap = self->cap, sw = self->stride_w, first = self->first;
    uint64_t *hint = &w[self->tail];
    for (;;) {
        uint64_t pos = LOAD_RLX(hint);
        uint64_t *seq = &w[first + (pos % cap) * sw];
        uint64_t s = LOAD_ACQ(seq);
        if (s == pos + 1) {
            uint64_t e = s;
            if (!CAS(seq, &e, self->cmark | (pos & TMASK))) continue;
            if (LOAD_RLX(hint) == pos) STORE_RLX(hint, pos + 1);
            const char *slot = (const char *)seq;
            uint32_t n32;
            uint16_t id16;
            double at;
            memcpy(&n32, slot + 8, 4);
            memcpy(&id16, slot + 12, 2);
            memcpy(&at, slot + 16, 8);
            PyObject *body = NULL, *jid = NULL, *t = NULL;
            if (n32 > self->slot_size || id16 > ID_MAX) {
                PyErr_Format(PyExc_ValueError,
                             "corrupt shm slot (body length %u, id length %u): job dropped",
                             (unsigned)n32, (unsigned)id16);
            } else {
                body = PyBytes_FromStringAndSize(slot + SLOT_HDR, n32);
                jid = body ? PyUnicode_DecodeUTF8(slot + 24, id16, "replace") : NULL;
                t = jid ? PyFloat_FromDouble(at) : NULL;
            }
            /* Free the slot whatever happened: a failed copy loses this job, never the ring. */
            STORE_REL(seq, pos + cap);
            if (t == NULL) {
                Py_XDECREF(body);
                Py_XDECREF(jid);
                return ERR;
            }
            *pbody = body;
            *pjid = jid;
            *pat = t;
            return 0;
        }
        if (s & MARK) {
            uint64_t t = ticket(s, pos);
            if (t > pos || (t == pos && (s & CONSUMER))) {
                if (LOAD_RLX(hint) == pos) STORE_RLX(hint, pos + 1);
                continue;
            }
            return s;
        }
        if (s > pos + 1) {
            if (LOAD_RLX(hint) == pos) STORE_RLX(hint, pos + 1);
            continue;
        }
        return 1;
    }
}

static PyMethodDef Segment_methods[] = {
    {"load", (PyCFunction)Segment_load, METH_O, "load(i) -> int: acquire load of word i."},
    {"store", (PyCFunction)(void (*)(void))Segment_store, METH_FASTCALL,
     "store(i, value): release store of word i."},
    {"cas", (PyCFunction)(void (*)(void))Segment_cas, METH_FASTCALL,
     "cas(i, expected, desired) -> bool: sequentially consistent compare-and-swap."},
    {"configure", (PyCFunction)Segment_configure, METH_VARARGS,
     "configure(capacity, stride, slot_size, first_slot_word, head_word, tail_word)."},
    {"set_marks", (PyCFunction)Segment_set_marks, METH_VARARGS,
     "set_marks(producer_marker, consumer_marker): this handle's claim markers."},
    {"put", (PyCFunction)(void (*)(void))Segment_put, METH_FASTCALL,
     "put(body, job_id, now) -> 0 published, 1 full, or a blocking claim marker."},
    {"put_many", (PyCFunction)(void (*)(void))Segment_put_many, METH_FASTCALL,
     "put_many(bodies, job_ids, now) -> how many were published, in order."},
    {"configure_jobs", (PyCFunction)Segment_configure_jobs, METH_VARARGS,
     "configure_jobs(job_type, queue, headers): what take() builds."},
    {"take", (PyCFunction)Segment_take, METH_NOARGS,
     "take() -> Job, 1 when empty, or a blocking claim marker."},
    {"take_many", (PyCFunction)(void (*)(void))Segment_take_many, METH_FASTCALL,
     "take_many(limit, errors) -> Jobs taken before the first slot that is not ready."},
    {"get", (PyCFunction)Segment_get, METH_NOARGS,
     "get() -> (body, job_id, enqueued_at), 1 when empty, or a blocking claim marker."},
    {"release", (PyCFunction)Segment_release, METH_NOARGS,
     "release(): drop the buffer export (before the mapping is closed)."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject SegmentType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "unifiedq.drivers._shmring.Segment",
    .tp_basicsize = sizeof(Segment),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Atomic words and the ring fast path over one shared-memory mapping.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Segment_init,
    .tp_dealloc = (destructor)Segment_dealloc,
    .tp_methods = Segment_methods,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_shmring", "Compiled fast path of the shm:// ring.", -1, NULL,
};

PyMODINIT_FUNC PyInit__shmring(void) {
    if (PyType_Ready(&SegmentType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    Py_INCREF(&SegmentType);
    if (PyModule_AddObject(m, "Segment", (PyObject *)&SegmentType) < 0) {
        Py_DECREF(&SegmentType);
        Py_DECREF(m);
        return NULL;
    }
    /* shm.py's slot layout version, and this module's interface version: _shm_atomics.py
     * refuses a stale build whose API differs from the one it was written for. */
    if (PyModule_AddIntConstant(m, "LAYOUT", 1) < 0 || PyModule_AddIntConstant(m, "API", 4) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
