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
 * scan(root: str, skip_pid: int, cls: type) ->
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
    const char *close = memrchr(buf, ')', n);
    if (close == NULL)
        return 0;
    const char *p = close + 1, *end = buf + n;
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

static PyObject *scan(PyObject *self, PyObject *args)
{
    PyObject *root_obj;
    long long skip_pid;
    PyTypeObject *cls;
    if (!PyArg_ParseTuple(args, "O&LO!", PyUnicode_FSConverter, &root_obj, &skip_pid,
                          &PyType_Type, &cls))
        return NULL;
    if (!PyType_IsSubtype(cls, &PyTuple_Type) || cls->tp_dictoffset != 0) {
        Py_DECREF(root_obj);
        PyErr_SetString(PyExc_TypeError, "cls must be a tuple subclass without __dict__");
        return NULL;
    }
    int dfd = open(PyBytes_AS_STRING(root_obj), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0) {
        PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, root_obj);
        Py_DECREF(root_obj);
        return NULL;
    }
    int lfd = dup(dfd);
    DIR *dir = lfd < 0 ? NULL : fdopendir(lfd);
    if (dir == NULL) {
        PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, root_obj);
        if (lfd >= 0)
            close(lfd);
        close(dfd);
        Py_DECREF(root_obj);
        return NULL;
    }
    Py_DECREF(root_obj);

    PyObject *procs = PyList_New(0), *unparsed = PyList_New(0), *failures = PyList_New(0);
    long errors = 0, vanished = 0;
    char path[300], buf[STAT_CAP];
    if (procs == NULL || unparsed == NULL || failures == NULL)
        goto fail;
    for (;;) {
        errno = 0;
        struct dirent *d = readdir(dir);
        if (d == NULL) {
            if (errno != 0) {
                PyErr_SetFromErrno(PyExc_OSError);
                goto fail;
            }
            break;
        }
        const char *name = d->d_name;
        size_t len = strlen(name);
        if (len == 0 || len > 255)
            continue;
        int digits = 1;
        for (size_t i = 0; i < len; i++)
            if (name[i] < '0' || name[i] > '9') {
                digits = 0;
                break;
            }
        if (!digits)
            continue;
        PyObject *pid = PyLong_FromString(name, NULL, 10);
        if (pid == NULL)
            goto fail;
        int ovf = 0;
        long long pid_ll = PyLong_AsLongLongAndOverflow(pid, &ovf);
        if (!ovf && pid_ll == skip_pid) {
            Py_DECREF(pid);
            continue;
        }
        memcpy(path, name, len);
        memcpy(path + len, "/stat", 6);
        int fd = openat(dfd, path, O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
        if (fd < 0) {
            int e = errno;
            Py_DECREF(pid);
            if (gone(e)) {
                vanished++;
            } else {
                errors++;
                if (append_pair(failures, PyUnicode_DecodeFSDefault(name), PyLong_FromLong(e)))
                    goto fail;
            }
            continue;
        }
        struct stat st;
        int not_file = fstat(fd, &st) < 0 ? errno : S_ISREG(st.st_mode) ? -1 : 0;
        if (not_file >= 0) {
            int e = not_file;
            close(fd);
            Py_DECREF(pid);
            errors++;
            if (append_pair(failures, PyUnicode_DecodeFSDefault(name), PyLong_FromLong(e)))
                goto fail;
            continue;
        }
        ssize_t n = pread(fd, buf, sizeof buf, 0);
        int e = errno;
        close(fd);
        if (n < 0 && !gone(e)) {
            Py_DECREF(pid);
            errors++;
            if (append_pair(failures, PyUnicode_DecodeFSDefault(name), PyLong_FromLong(e)))
                goto fail;
            continue;
        }
        if (n <= 0) {
            Py_DECREF(pid);
            vanished++;
            continue;
        }
        uint64_t v[8];
        if (parse_fast(buf, (size_t)n, v)) {
            PyObject *p = make_proc(cls, pid, v);
            Py_DECREF(pid);
            if (p == NULL)
                goto fail;
            int r = PyList_Append(procs, p);
            Py_DECREF(p);
            if (r)
                goto fail;
        } else if (append_pair(unparsed, pid, PyBytes_FromStringAndSize(buf, n))) {
            goto fail;
        }
    }
    closedir(dir);
    close(dfd);
    return Py_BuildValue("(NNllN)", procs, unparsed, errors, vanished, failures);

fail:
    closedir(dir);
    close(dfd);
    Py_XDECREF(procs);
    Py_XDECREF(unparsed);
    Py_XDECREF(failures);
    return NULL;
}

static PyMethodDef methods[] = {
    {"scan", scan, METH_VARARGS,
     "scan(root, skip_pid, cls) -> (procs, unparsed, errors, vanished, failures)"},
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
