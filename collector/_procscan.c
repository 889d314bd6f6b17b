/*
 * collector._procscan: read every <root>/<pid>/stat once, for a one-shot scan
 * (`ctxmon stat`). The pure-Python loop in procfs.ProcessScanner.scan does the same
 * and stays the reference: this module only takes the per-process Python overhead
 * off a scan of 20,000 processes (about half of `ctxmon stat --json`'s time there;
 * the rest is the kernel's open/read/close, which no reader avoids).
 *
 * Same rules as the Python loop: only all-ASCII-digit names; opened with
 * O_RDONLY|O_NONBLOCK|O_CLOEXEC|O_NOCTTY (a FIFO or terminal in a recorded tree
 * never blocks); anything but a regular file is an error; one pread of at most
 * 1024 bytes; a file gone or empty is "vanished". A line is parsed here only when it
 * has the kernel's own shape (fields after the last ')' separated by single blanks,
 * the fields used plain digits below 2**63); any other line goes back to Python's
 * parse_stat unparsed, so what is accepted and what is an error is decided by one
 * parser, not two.
 *
 * All of it runs without the GIL, and on two CPUs in two threads once 2,048 names
 * are listed: nearly all of a scan is the kernel's (listing /proc, path lookup, line
 * building), which runs on both CPUs at once. The second thread reads what is listed
 * while the listing goes on (listing 20,000 pids alone takes the kernel ~18 ms), then
 * both read the rest. At 20,000 processes the admin waits 38 % less than with one
 * thread (123 -> 78 ms) for a sixth more CPU (123 -> 144 ms: the threads contend in
 * the kernel); benchmarks/startup_bench.py prints both.
 *
 * scan(root: str, skip_pid: int, cls: type[, max_threads: int = 2]) ->
 *     (procs: list[cls], unparsed: list[(pid, bytes)], errors: int, vanished: int,
 *      failures: list[(name, errno)])       errno 0: not a regular file
 * `cls` is procfs.ProcStat (a tuple subclass of 9 ints: pid, start, utime, stime,
 * cutime, cstime, threads, vsize, rss).
 */
#define _GNU_SOURCE /* memrchr */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define STAT_CAP 1024
#define NFIELDS 22 /* fields after the comm that the parse needs: f[0] .. f[21] */

static int is_blank(unsigned char c) /* bytes.split()'s whitespace */
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

/* Fields f[11..14], f[17], f[19..21] of a stat line in the kernel's shape, into out[]
 * in ProcStat's order (start, utime, stime, cutime, cstime, threads, vsize, rss).
 * 0: not in that shape (Python decides). */
static int parse_fast(const char *buf, size_t n, uint64_t out[8])
{
    const char *rparen = memrchr(buf, ')', n);
    if (rparen == NULL)
        return 0;
    const char *p = rparen + 1, *end = buf + n;
    if (p >= end || *p != ' ')
        return 0;
    p++;
    /* position in out[] of each field index, -1 if unused */
    static const signed char slot[NFIELDS] = {
        -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, 1, 2, 3, 4, -1, -1, 5, -1, 0, 6, 7};
    for (int k = 0; k < NFIELDS; k++) {
        const char *t = p;
        while (p < end && !is_blank((unsigned char)*p))
            p++;
        size_t len = (size_t)(p - t);
        if (len == 0)
            return 0;
        if (slot[k] >= 0) {
            if (len > 19)
                return 0;
            uint64_t v = 0;
            for (const char *q = t; q < p; q++) {
                if (*q < '0' || *q > '9')
                    return 0;
                v = v * 10 + (uint64_t)(*q - '0'); /* 19 digits fit in 64 bits */
            }
            if (v >> 63)
                return 0;
            out[(int)slot[k]] = v;
        }
        if (k < NFIELDS - 1) { /* exactly one blank between fields */
            if (p >= end || *p != ' ')
                return 0;
            p++;
            if (p < end && is_blank((unsigned char)*p))
                return 0;
        } else if (p < end && *p != ' ' && *p != '\n') {
            return 0;
        }
    }
    return 1;
}

static int append_pair(PyObject *list, PyObject *a, PyObject *b)
{
    if (a == NULL || b == NULL) {
        Py_XDECREF(a);
        Py_XDECREF(b);
        return -1;
    }
    PyObject *t = PyTuple_Pack(2, a, b);
    Py_DECREF(a);
    Py_DECREF(b);
    if (t == NULL)
        return -1;
    int r = PyList_Append(list, t);
    Py_DECREF(t);
    return r;
}

static PyObject *make_proc(PyTypeObject *cls, PyObject *pid, const uint64_t v[8])
{
    /* What tuple.__new__(cls, ...) does for a tuple subclass without __dict__. */
    PyObject *p = cls->tp_alloc(cls, 9);
    if (p == NULL)
        return NULL;
    Py_INCREF(pid);
    PyTuple_SET_ITEM(p, 0, pid);
    for (int i = 0; i < 8; i++) {
        PyObject *x = PyLong_FromUnsignedLongLong(v[i]);
        if (x == NULL) {
            Py_DECREF(p);
            return NULL;
        }
        PyTuple_SET_ITEM(p, i + 1, x);
    }
    return p;
}

static int gone(int e)
{
    return e == ENOENT || e == ESRCH || e == ENODEV;
}

enum { FAST, RAW, VANISHED, FAILED };

#define INLINE_NAME 24 /* pids have at most 7 digits; longer names are malloc'd */

struct entry {
    char name[INLINE_NAME]; /* NUL-terminated, or "" and the name in longname */
    char *longname;
    int kind;
    int err;     /* FAILED: errno, 0 = not a regular file */
    uint64_t v[8];
    char *raw;   /* RAW: the line as read */
    size_t rawlen;
};

/* Open, read and parse one stat file: no Python here, it runs without the GIL. */
static void read_one(int dfd, const char *name, struct entry *e)
{
    char path[300], buf[STAT_CAP];
    size_t len = strlen(name);
    memcpy(path, name, len);
    memcpy(path + len, "/stat", 6);
    int fd = openat(dfd, path, O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) {
        e->err = errno;
        e->kind = gone(e->err) ? VANISHED : FAILED;
        return;
    }
    ssize_t n = pread(fd, buf, sizeof buf, 0);
    int err = n < 0 ? errno : 0;
    int fast = n > 0 && parse_fast(buf, (size_t)n, e->v);
    /* Anything but a regular file is an error. Asked only when the read was not a
     * kernel-shaped line: fstat costs about a tenth of the scan on /proc, and what
     * else can be opened here either fails pread (a FIFO or terminal: ESPIPE, a
     * directory: EISDIR) or reads as no such line (/dev/null, /dev/zero). */
    struct stat st;
    if (!fast && fstat(fd, &st) == 0 && !S_ISREG(st.st_mode)) {
        close(fd);
        e->kind = FAILED;
        e->err = 0;
        return;
    }
    close(fd);
    if (n < 0) {
        e->err = err;
        e->kind = gone(err) ? VANISHED : FAILED;
    } else if (n == 0) {
        e->kind = VANISHED;
    } else if (fast) {
        e->kind = FAST;
    } else {
        e->raw = malloc((size_t)n);
        if (e->raw == NULL) { /* reported as MemoryError by the caller */
            e->kind = FAILED;
            e->err = ENOMEM;
            return;
        }
        memcpy(e->raw, buf, (size_t)n);
        e->rawlen = (size_t)n;
        e->kind = RAW;
    }
}

#define BLOCK 4096       /* entries per block: a block never moves once listed */
#define MAX_BLOCKS 4096  /* 16.7 million entries, four times the largest pid_max; names
                          * listed beyond are counted as errors, not read */
#define PUBLISH 128      /* the lister hands out entries in batches of this many */
#define CLAIM 32         /* a reader takes this many at a time */
#define MAX_THREADS 2    /* measured here: 2 CPUs; more would only be a guess */
#define THREAD_AT 2048   /* a second thread once this many are listed, not for fewer */

/* The listing and the reads at once: the lister appends entries to blocks and
 * publishes how many are listed; readers claim published entries in order. */
struct shared {
    int dfd;
    struct entry **blocks; /* MAX_BLOCKS pointers */
    size_t listed;         /* entries [0, listed) may be read; under m */
    size_t next;           /* the first entry nobody has claimed; under m */
    int done;              /* the listing has ended; under m */
    pthread_mutex_t m;
    pthread_cond_t c;
};

static struct entry *entry_at(struct shared *s, size_t i)
{
    return &s->blocks[i / BLOCK][i % BLOCK];
}

/* Entries [*first, *first + k) to read; 0 once the listing has ended and all are taken. */
static size_t claim(struct shared *s, size_t *first)
{
    pthread_mutex_lock(&s->m);
    while (s->next == s->listed && !s->done)
        pthread_cond_wait(&s->c, &s->m);
    size_t k = s->listed - s->next;
    if (k > CLAIM)
        k = CLAIM;
    *first = s->next;
    s->next += k;
    pthread_mutex_unlock(&s->m);
    return k;
}

static void *read_claimed(void *arg)
{
    struct shared *s = arg;
    size_t first, k;
    while ((k = claim(s, &first)) > 0) {
        for (size_t i = first; i < first + k; i++) {
            struct entry *e = entry_at(s, i);
            read_one(s->dfd, e->longname ? e->longname : e->name, e);
        }
    }
    return NULL;
}

static void publish(struct shared *s, size_t n, int done)
{
    pthread_mutex_lock(&s->m);
    s->listed = n;
    s->done = done;
    pthread_cond_broadcast(&s->c);
    pthread_mutex_unlock(&s->m);
}

static void free_entries(struct shared *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        struct entry *e = entry_at(s, i);
        free(e->raw);
        free(e->longname);
    }
    for (size_t b = 0; b < MAX_BLOCKS && s->blocks[b] != NULL; b++)
        free(s->blocks[b]);
    free(s->blocks);
}

static PyObject *scan(PyObject *self, PyObject *args)
{
    PyObject *root_obj;
    long long skip_pid;
    PyTypeObject *cls;
    int max_threads = MAX_THREADS;
    if (!PyArg_ParseTuple(args, "O&LO!|i", PyUnicode_FSConverter, &root_obj, &skip_pid,
                          &PyType_Type, &cls, &max_threads))
        return NULL;
    if (max_threads < 1 || max_threads > MAX_THREADS)
        max_threads = MAX_THREADS;
    if (!PyType_IsSubtype(cls, &PyTuple_Type) || cls->tp_dictoffset != 0) {
        Py_DECREF(root_obj);
        PyErr_SetString(PyExc_TypeError, "cls must be a tuple subclass without __dict__");
        return NULL;
    }
    struct shared s = {.dfd = -1};
    s.blocks = calloc(MAX_BLOCKS, sizeof *s.blocks);
    if (s.blocks == NULL) {
        Py_DECREF(root_obj);
        return PyErr_NoMemory();
    }
    s.dfd = open(PyBytes_AS_STRING(root_obj), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    int lfd = s.dfd < 0 ? -1 : dup(s.dfd);
    DIR *dir = lfd < 0 ? NULL : fdopendir(lfd);
    if (dir == NULL) {
        PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, root_obj);
        if (lfd >= 0)
            close(lfd);
        if (s.dfd >= 0)
            close(s.dfd);
        Py_DECREF(root_obj);
        free(s.blocks);
        return NULL;
    }
    Py_DECREF(root_obj);
    pthread_mutex_init(&s.m, NULL);
    pthread_cond_init(&s.c, NULL);

    PyObject *procs = NULL, *unparsed = NULL, *failures = NULL;
    size_t n = 0;
    long errors = 0, vanished = 0;
    int listed = 0, err = 0;

    /* 1. The listing (names that are all ASCII digits, less the pid to skip) and the
     * reads at once. Listing 20,000 pids takes the kernel ~18 ms, a fifth of the
     * scan: a second thread reads what is listed meanwhile, then both read the rest. */
    Py_BEGIN_ALLOW_THREADS
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    int want_thread = max_threads > 1 && cpus > 1;
    pthread_t tid;
    int started = 0;
    for (;;) {
        errno = 0;
        struct dirent *d = readdir(dir);
        if (d == NULL) {
            err = errno;
            listed = err == 0;
            break;
        }
        const char *name = d->d_name;
        size_t len = strlen(name);
        if (len == 0 || len > 255 || strspn(name, "0123456789") != len)
            continue;
        if (len <= 18 && strtoll(name, NULL, 10) == skip_pid)
            continue;
        if (n % BLOCK == 0) {
            if (n / BLOCK >= MAX_BLOCKS) { /* a hostile tree: the rest are errors */
                errors++;
                continue;
            }
            s.blocks[n / BLOCK] = malloc(BLOCK * sizeof(struct entry));
            if (s.blocks[n / BLOCK] == NULL) {
                err = ENOMEM;
                break;
            }
        }
        struct entry *e = entry_at(&s, n);
        memset(e, 0, sizeof *e);
        if (len < INLINE_NAME) {
            memcpy(e->name, name, len + 1);
        } else if ((e->longname = strdup(name)) == NULL) {
            err = ENOMEM;
            break;
        }
        n++;
        if (n % PUBLISH == 0) {
            publish(&s, n, 0);
            if (want_thread && !started && n >= THREAD_AT)
                started = pthread_create(&tid, NULL, read_claimed, &s) == 0;
        }
    }
    closedir(dir);
    publish(&s, n, 1);
    /* 2. The rest of the reads, with the other thread if there is one. */
    read_claimed(&s);
    if (started)
        pthread_join(tid, NULL);
    Py_END_ALLOW_THREADS
    close(s.dfd);
    pthread_mutex_destroy(&s.m);
    pthread_cond_destroy(&s.c);
    if (!listed) {
        errno = err;
        PyErr_SetFromErrno(PyExc_OSError);
        goto done;
    }

    /* 3. The results, in listing order. */
    procs = PyList_New(0);
    unparsed = PyList_New(0);
    failures = PyList_New(0);
    if (procs == NULL || unparsed == NULL || failures == NULL)
        goto fail;
    for (size_t i = 0; i < n; i++) {
        struct entry *e = entry_at(&s, i);
        const char *name = e->longname ? e->longname : e->name;
        if (e->kind == VANISHED) {
            vanished++;
            continue;
        }
        if (e->kind == FAILED) {
            if (e->err == ENOMEM) {
                PyErr_NoMemory();
                goto fail;
            }
            errors++;
            if (append_pair(failures, PyUnicode_DecodeFSDefault(name), PyLong_FromLong(e->err)))
                goto fail;
            continue;
        }
        PyObject *pid = PyLong_FromString(name, NULL, 10);
        if (pid == NULL)
            goto fail;
        if (e->kind == RAW) {
            if (append_pair(unparsed, pid, PyBytes_FromStringAndSize(e->raw, e->rawlen)))
                goto fail;
            continue;
        }
        PyObject *p = make_proc(cls, pid, e->v);
        Py_DECREF(pid);
        if (p == NULL)
            goto fail;
        int r = PyList_Append(procs, p);
        Py_DECREF(p);
        if (r)
            goto fail;
    }
    PyObject *result = Py_BuildValue("(NNllN)", procs, unparsed, errors, vanished, failures);
    free_entries(&s, n);
    return result;

fail:
    Py_XDECREF(procs);
    Py_XDECREF(unparsed);
    Py_XDECREF(failures);
done:
    free_entries(&s, n);
    return NULL;
}

static PyMethodDef methods[] = {
    {"scan", scan, METH_VARARGS,
     "scan(root, skip_pid, cls[, max_threads]) -> (procs, unparsed, errors, vanished, failures)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "collector._procscan",
    "Read every <root>/<pid>/stat once (the one-shot scan of `ctxmon stat`).", -1, methods,
};

PyMODINIT_FUNC PyInit__procscan(void)
{
    return PyModule_Create(&module);
}
