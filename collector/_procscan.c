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
 * The reads run without the GIL, split between two threads when there are two CPUs
 * and at least 4,096 files: nearly all of a scan is the kernel's path lookup and
 * line building, which runs on both CPUs at once. At 20,000 processes the admin
 * waits a quarter less (119 -> 91 ms) for a fifth more CPU (119 -> 143 ms: the
 * threads contend in the kernel); benchmarks/startup_bench.py prints both.
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

struct entry {
    size_t name; /* offset into the names buffer */
    int kind;
    int err;     /* FAILED: errno, 0 = not a regular file */
    uint64_t v[8];
    char *raw;   /* RAW: the line as read */
    size_t rawlen;
};

struct job {
    int dfd;
    const char *names;
    struct entry *e;
    size_t n;
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

static void *run_job(void *arg)
{
    struct job *j = arg;
    for (size_t i = 0; i < j->n; i++)
        read_one(j->dfd, j->names + j->e[i].name, &j->e[i]);
    return NULL;
}

#define MAX_THREADS 2 /* measured here: 2 CPUs; more would only be a guess */
#define PER_THREAD 2048 /* fewer files than this per thread: not worth a thread */

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
    int dfd = open(PyBytes_AS_STRING(root_obj), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    int lfd = dfd < 0 ? -1 : dup(dfd);
    DIR *dir = lfd < 0 ? NULL : fdopendir(lfd);
    if (dir == NULL) {
        PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, root_obj);
        if (lfd >= 0)
            close(lfd);
        if (dfd >= 0)
            close(dfd);
        Py_DECREF(root_obj);
        return NULL;
    }
    Py_DECREF(root_obj);

    PyObject *procs = NULL, *unparsed = NULL, *failures = NULL;
    char *names = NULL;
    struct entry *ents = NULL;
    size_t n = 0, cap_e = 0, used = 0, cap_n = 0;
    long errors = 0, vanished = 0;
    int listed = 0, err = 0;

    /* 1. The listing: names that are all ASCII digits, less the pid to skip. */
    Py_BEGIN_ALLOW_THREADS
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
        if (n == cap_e) {
            cap_e = cap_e ? 2 * cap_e : 1024;
            struct entry *g = realloc(ents, cap_e * sizeof *ents);
            if (g == NULL) {
                err = ENOMEM;
                break;
            }
            ents = g;
        }
        if (used + len + 1 > cap_n) {
            cap_n = cap_n ? 2 * cap_n + len + 1 : 16384;
            char *g = realloc(names, cap_n);
            if (g == NULL) {
                err = ENOMEM;
                break;
            }
            names = g;
        }
        memcpy(names + used, name, len + 1);
        memset(&ents[n], 0, sizeof ents[n]);
        ents[n++].name = used;
        used += len + 1;
    }
    closedir(dir);

    /* 2. The reads, split among up to MAX_THREADS threads: the time is the kernel's
     * (path lookup, building each line), and it runs on every CPU at once. */
    if (listed && n > 0) {
        long cpus = sysconf(_SC_NPROCESSORS_ONLN);
        size_t k = (size_t)(cpus < 1 ? 1 : cpus > max_threads ? max_threads : cpus);
        if (k > n / PER_THREAD)
            k = n / PER_THREAD ? n / PER_THREAD : 1;
        struct job jobs[MAX_THREADS];
        pthread_t tids[MAX_THREADS];
        int started[MAX_THREADS] = {0};
        size_t per = (n + k - 1) / k;
        for (size_t t = 0; t < k; t++) {
            size_t a = t * per, b = a + per < n ? a + per : n;
            jobs[t] = (struct job){dfd, names, ents + a, a < b ? b - a : 0};
            if (t > 0)
                started[t] = pthread_create(&tids[t], NULL, run_job, &jobs[t]) == 0;
        }
        run_job(&jobs[0]);
        for (size_t t = 1; t < k; t++) {
            if (started[t])
                pthread_join(tids[t], NULL);
            else
                run_job(&jobs[t]); /* no thread to be had: this one does it */
        }
    }
    Py_END_ALLOW_THREADS
    close(dfd);
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
        struct entry *e = &ents[i];
        const char *name = names + e->name;
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
    procs = unparsed = failures = NULL;
    for (size_t i = 0; i < n; i++)
        free(ents[i].raw);
    free(ents);
    free(names);
    return result;

fail:
    Py_XDECREF(procs);
    Py_XDECREF(unparsed);
    Py_XDECREF(failures);
done:
    for (size_t i = 0; i < n; i++)
        free(ents[i].raw);
    free(ents);
    free(names);
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
