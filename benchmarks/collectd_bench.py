#!/usr/bin/env python3
"""CPU per poll: `ctxmon run` next to collectd 5.12 on the same contexts, same run.

For each size N (default 100, 1,000 and 5,000) this makes N contexts: one sleeping
process each, in a v1 `cpuacct` cgroup `ctxbench-<tag>/bench-NNNNN` (what collectd's
`cgroups` plugin reads) and a v2 cgroup of the same name under the cgroup2 mount,
which ctxmon's config names by a `[[collector.rule]]` (a rule costs what the
built-in `*.service` rule costs: each path is matched once). Not `*.service` units on
purpose: every other ctxmon on a shared host (a test suite's daemons polling the live
host at a 1 s step) would make three RRD files for each of them. Then, per way of
writing RRD files,
it starts both daemons in the foreground with configs of their own in a temporary
directory, nobody scraping:

- collectd (Debian `collectd-core`): `cgroups` + `rrdtool` plugins (or `rrdcached`),
  `Interval 10`, run as `collectd -f -C <conf>`; it stores CPU user/system per cgroup
  (2 files per context);
- `ctxmon run` (this checkout, `sys.executable -m ctxmon.cli`): cgroup source, RRD
  step 10 s, the exporter listening but not scraped; it stores cpu, mem and tasks
  files per context plus the host's interfaces, and keeps /metrics ready.

`direct`: each writes its files itself (librrd); `rrdcached`: each talks to its own
private rrdcached (`-w 3600`, so the deferred disk writes are not in the window;
rrdcached's own CPU is printed apart); `behind`: direct writes, each tool holding a
file's values up to --write-behind seconds (default 60) and writing them in one librrd
call (ctxmon's `[rrd] write_behind`, collectd's rrdtool `CacheTimeout`, whose default
0 is the `direct` row; collectd then holds one value more per call). After a warm-up (files created, two polls
done), the CPU of each process (`/proc/<pid>/stat` utime+stime, all threads) is
sampled every --per-window intervals, --windows times; a window holds exactly that
many polls of each daemon, so its CPU delta over the polls is CPU per poll. Printed: the median per
window of each, and ctxmon/collectd.

Also (each can be skipped):
- the floor (`--no-floor` skips it): after each size's first pair, on the files ctxmon
  just wrote, librrd's CPU for one `rrdtool.update` of each (a tight in-process loop)
  and the same updates as one BATCH to an rrdcached of its own (client CPU, and
  rrdcached's), printed per size next to collectd's CPU per poll: what no monitor
  writing every one of ctxmon's files can go below;
- `--scrapers`: 10 processes scraping ctxmon's /metrics (gzip, as Prometheus asks)
  every --scrape-every seconds at 1,000 contexts: scrape p50/p99 and ctxmon's poll
  duration (its log) with and without them, in alternating phases (off, on, off, on,
  ..., --scrape-cycles of each, --scrape-per-phase polls each): medians per condition,
  each phase's median, and each scraped phase against the unscraped ones either side;
- `--vserver`: a recorded VServer tree with 1,000 guests, generated from the
  tests/fixtures/vs23 formats, polled by `ctxmon run`: CPU per poll, next to the
  1,000 cgroup contexts;
- `--profile`: no daemons; cProfile of one in-process `Daemon.poll()` at --profile-n
  contexts (after two warm polls), the top functions and a per-phase split.

Every process and cgroup made is removed at the end, also on Ctrl-C or SIGTERM.
Run as root from a checkout with its venv (`make bench` installs collectd-core):

    .venv/bin/python benchmarks/collectd_bench.py [--sizes 100,1000,5000] [--ways direct,rrdcached,behind]
"""

from __future__ import annotations

import argparse
import cProfile
import http.client
import io
import json
import multiprocessing
import os
import pstats
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "tests"))

from cgroups import rmdir_cgroup  # noqa: E402  (the one busy-cgroup rmdir loop)

CLK_TCK = os.sysconf("SC_CLK_TCK")
V1_CPUACCT = "/sys/fs/cgroup/cpuacct"
PREFIX = "bench-"
COLLECTD = "/usr/sbin/collectd"


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system, all threads) of a running process."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_cpu_ns(pid: int) -> float:
    """CPU seconds of a running process, all threads, to the nanosecond
    (clock_getcpuclockid: the 10 ms ticks of /proc/<pid>/stat cannot resolve a few ms;
    schedstat is off on this kernel)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    clock = ctypes.c_int()
    err = libc.clock_getcpuclockid(pid, ctypes.byref(clock))
    if err:
        raise OSError(err, os.strerror(err))
    return time.clock_gettime(clock.value)


def v2_mount() -> str:
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, sep, right = line.partition(" - ")
            if sep and right.split()[:1] == ["cgroup2"]:
                return left.split()[4]
    sys.exit("collectd_bench: no cgroup2 mount (ctxmon's contexts live there)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------ the contexts


class Contexts:
    """N contexts: one `sleep` each, in a v1 cpuacct and a v2 cgroup of one name."""

    def __init__(self, n: int, tag: str):
        self.n = n
        self.v1 = os.path.join(V1_CPUACCT, f"ctxbench-{tag}")
        self.v2 = os.path.join(v2_mount(), f"ctxbench-{tag}")
        self.names = [f"{PREFIX}{i:05d}.service" for i in range(n)]
        self.pids: list[int] = []

    @staticmethod
    def remove_leftovers() -> None:
        """Empty ctxbench-* cgroups a killed run left behind (never one in use)."""
        for parent in (V1_CPUACCT, v2_mount()):
            for top in os.listdir(parent):
                if not top.startswith("ctxbench-"):
                    continue
                top = os.path.join(parent, top)
                try:
                    for name in os.listdir(top):
                        if os.path.isdir(os.path.join(top, name)):
                            os.rmdir(os.path.join(top, name))
                    os.rmdir(top)
                except OSError:
                    pass  # busy: another run's

    def create(self) -> None:
        for top in (self.v1, self.v2):
            os.mkdir(top)
        for name in self.names:
            for top in (self.v1, self.v2):
                os.mkdir(os.path.join(top, name))
            pid = os.posix_spawn("/bin/sleep", ["sleep", "infinity"], {})
            self.pids.append(pid)
            for top in (self.v1, self.v2):
                with open(os.path.join(top, name, "cgroup.procs"), "w") as f:
                    f.write(str(pid))

    def destroy(self) -> None:
        for pid in self.pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for pid in self.pids:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
        self.pids.clear()
        for top in (self.v1, self.v2):
            if not os.path.isdir(top):
                continue
            for name in os.listdir(top):
                if os.path.isdir(os.path.join(top, name)):
                    rmdir_cgroup(os.path.join(top, name))
            rmdir_cgroup(top)


# ------------------------------------------------------------------ the daemons


def _die_with_parent() -> None:
    """In the child: SIGTERM when the benchmark dies, even by SIGKILL (PR_SET_PDEATHSIG)."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)


class Child:
    """A daemon in the foreground, in its own session (Ctrl-C reaches only us), its
    output in a log file; stopped with SIGTERM, then SIGKILL, and sent SIGTERM by
    the kernel should the benchmark die without cleaning up."""

    def __init__(self, argv: list[str], log_path: str, cwd: str | None = None):
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, cwd=cwd,
                                     start_new_session=True, preexec_fn=_die_with_parent)
        self.pid = self.proc.pid

    def cpu(self) -> float:
        return proc_cpu(self.pid)

    def text(self) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 60) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


class Rrdcached(Child):
    def __init__(self, base: str):
        os.makedirs(os.path.join(base, "journal"))
        self.sock = os.path.join(base, "rrdcached.sock")
        self.addr = "unix:" + self.sock
        super().__init__(
            ["rrdcached", "-g", "-l", self.addr, "-p", os.path.join(base, "rrdcached.pid"),
             "-j", os.path.join(base, "journal"), "-F", "-w", "3600", "-f", "7200"],
            os.path.join(base, "rrdcached.log"))
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.socket(socket.AF_UNIX) as s:
                    s.connect(self.sock)
                return
            except OSError:
                if not self.alive() or time.monotonic() > deadline:
                    raise RuntimeError(f"rrdcached did not start:\n{self.text()}")
                time.sleep(0.05)


def collectd_config(base: str, interval: int, rrdcached: str | None,
                    cache_timeout: int = 0) -> str:
    """`cache_timeout`: the rrdtool plugin's CacheTimeout (0, its default: every
    value written at once), what ctxmon's [rrd] write_behind is to ctxmon."""
    data = os.path.join(base, "rrd")
    os.makedirs(data)
    cache = f"  CacheTimeout {cache_timeout}\n" if cache_timeout else ""
    writer = (
        f'LoadPlugin rrdcached\n<Plugin rrdcached>\n  DaemonAddress "{rrdcached}"\n'
        f'  DataDir "{data}"\n  CreateFiles true\n  CollectStatistics false\n</Plugin>\n'
        if rrdcached else
        f'LoadPlugin rrdtool\n<Plugin rrdtool>\n  DataDir "{data}"\n{cache}</Plugin>\n'
    )
    conf = os.path.join(base, "collectd.conf")
    with open(conf, "w") as f:
        f.write(
            f'Hostname "bench"\nFQDNLookup false\nInterval {interval}\n'
            f'BaseDir "{base}"\nPIDFile "{base}/collectd.pid"\n'
            'PluginDir "/usr/lib/collectd"\nTypesDB "/usr/share/collectd/types.db"\n'
            'LoadPlugin logfile\n'
            f'<Plugin logfile>\n  LogLevel info\n  File "{base}/collectd-plugin.log"\n</Plugin>\n'
            'LoadPlugin cgroups\n'
            f'<Plugin cgroups>\n  CGroup "/^{PREFIX}/"\n  IgnoreSelected false\n</Plugin>\n'
            + writer
        )
    return conf


def ctxmon_config(base: str, interval: int, rrdcached: str | None,
                  source: str = "cgroup", proc_root: str = "/proc", write_behind: int = 0) -> str:
    conf = os.path.join(base, "ctxmon.toml")
    with open(conf, "w") as f:
        f.write(
            f'[collector]\ninterval = "{interval}s"\nsource = "{source}"\n'
            f'proc_root = "{proc_root}"\n\n'
            f'[rrd]\ndir = "{base}/rrd"\nstep = "{interval}s"\ndaemon = "{rrdcached or ""}"\n'
            f'write_behind = "{write_behind}s"\n\n'
            f'[exporter]\nlisten = "127.0.0.1:{free_port()}"\n\n'
            '[graphs]\nenabled = false\n'
            # The contexts: named by a rule, not as `*.service` units (see the module doc).
            + ('\n[[collector.rule]]\nglob = "ctxbench-*/bench-*"\nname = "bench-{2}"\n'
               if source == "cgroup" else "")
        )
    return conf


_POLL = re.compile(r"poll (\d+): (\d+) contexts, (\d+) processes, (\d+) ms \(sample (\d+) ms\)"
                   r"(?:, (\d+) ms CPU)?")


class Ctxmon(Child):
    def __init__(self, conf: str, log_path: str):
        self.port = int(re.search(r"127\.0\.0\.1:(\d+)", open(conf).read()).group(1))
        super().__init__([sys.executable, "-m", "ctxmon.cli", "-v", "run", "-c", conf],
                         log_path, cwd=REPO)

    def polls(self) -> list[tuple[int, int, int, float, float, float]]:
        """(poll number, contexts, processes, poll ms, sample ms, the poll thread's CPU
        ms or NaN) of each logged poll."""
        return [(int(a), int(b), int(c), float(d), float(e), float(f or "nan"))
                for a, b, c, d, e, f in _POLL.findall(self.text())]


def count_files(directory: str, suffix: str = ".rrd") -> int:
    n = 0
    for _, _, files in os.walk(directory):
        n += sum(f.endswith(suffix) for f in files)
    return n


def wait_until(what: str, ready, children: list[Child], limit: float) -> None:
    deadline = time.monotonic() + limit
    while not ready():
        for c in children:
            if not c.alive():
                raise RuntimeError(f"{c.proc.args[0]} exited while waiting for {what}:\n"
                                   f"{c.text()[-3000:]}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.2)


def cpu_windows(children: dict[str, Child], interval: float, windows: int,
                per_window: int = 1) -> dict[str, list[float]]:
    """CPU seconds per poll of each child in `windows` consecutive windows of
    `per_window` intervals (the CPU clock ticks at 10 ms: longer windows resolve it)."""
    out: dict[str, list[float]] = {k: [] for k in children}
    last = {k: c.cpu() for k, c in children.items()}
    t = time.monotonic()
    for _ in range(windows):
        t += interval * per_window
        time.sleep(max(0.0, t - time.monotonic()))
        for k, c in children.items():
            now = c.cpu()
            out[k].append((now - last[k]) / per_window)
            last[k] = now
    return out


def settle_after_poll(ctx: Ctxmon, interval: float) -> None:
    """Start windows half an interval after a ctxmon poll, so none splits one."""
    n = len(ctx.polls())
    wait_until("a ctxmon poll", lambda: len(ctx.polls()) > n, [ctx], 3 * interval + 60)
    time.sleep(interval / 2)


# ------------------------------------------------------------------ one size, one way


def run_pair(n: int, way: str, base: str, interval: int, windows: int,
             per_window: int, write_behind: int = 0) -> dict:
    """`way`: direct, rrdcached, or behind (direct writes held up to `write_behind`
    seconds: ctxmon's [rrd] write_behind next to collectd's CacheTimeout)."""
    os.makedirs(base)
    behind = write_behind if way == "behind" else 0
    children: list[Child] = []
    try:
        caches = {}
        if way == "rrdcached":
            for who in ("ctxmon", "collectd"):
                caches[who] = Rrdcached(os.path.join(base, f"rrdcached-{who}"))
                children.append(caches[who])
        cbase, xbase = os.path.join(base, "collectd"), os.path.join(base, "ctxmon")
        os.makedirs(cbase)
        os.makedirs(xbase)
        cd = Child([COLLECTD, "-f", "-C", collectd_config(
            cbase, interval, caches["collectd"].addr if caches else None, behind)],
            os.path.join(cbase, "collectd.log"))
        children.append(cd)
        cx = Ctxmon(ctxmon_config(xbase, interval, caches["ctxmon"].addr if caches else None,
                                  write_behind=behind),
                    os.path.join(xbase, "ctxmon.log"))
        children.append(cx)
        # Warm-up: every file created, then two more ctxmon polls.
        limit = 120 + n * 0.1 + behind
        wait_until(f"collectd's {2 * n} files",
                   lambda: count_files(os.path.join(cbase, "rrd")) >= 2 * n, children, limit)
        wait_until("ctxmon's first polls", lambda: len(cx.polls()) >= 1, children, limit)
        first = len(cx.polls())
        wait_until("two more ctxmon polls", lambda: len(cx.polls()) >= first + 2, children,
                   limit)
        if behind:
            # Both hold values: a window must span whole turns of both. collectd
            # writes a file when its oldest value is CacheTimeout old (then holds
            # behind/interval + 1 values), all files at the same poll; ctxmon's files
            # take turns, each poll writing ~interval/behind of them. Start once
            # both have written every file once, over windows of two collectd turns.
            time.sleep(behind + interval)
            per_window = max(per_window, 2 * (behind // interval + 1))
            windows = min(windows, 3)  # long windows: three are enough for a median
        settle_after_poll(cx, interval)
        procs: dict[str, Child] = {"ctxmon": cx, "collectd": cd}
        for who, c in caches.items():
            procs[f"rrdcached ({who})"] = c
        polls_before = len(cx.polls())
        cpu = cpu_windows(procs, interval, windows, per_window)
        polls = cx.polls()[polls_before:]
        result = {
            "n": n, "way": way, "write_behind": behind, "per_window": per_window,
            "cpu": {k: statistics.median(v) for k, v in cpu.items()},
            "cpu_all": cpu,
            "ctxmon_polls": len(polls),
            "ctxmon_contexts": polls[-1][1] if polls else None,
            "ctxmon_poll_ms": statistics.median(p[3] for p in polls) if polls else None,
            "host_processes": statistics.median(p[2] for p in polls) if polls else None,
            "ctxmon_files": count_files(os.path.join(xbase, "rrd")),
            "collectd_files": count_files(os.path.join(cbase, "rrd")),
        }
        for c in children:
            if not c.alive():
                raise RuntimeError(f"{c.proc.args[0]} died during the measurement")
        return result
    finally:
        for c in reversed(children):
            c.stop()


# ------------------------------------------------------------------ the floor


def _next_second() -> int:
    """Sleep into a new second; that second (every file's next update is later than
    its last)."""
    now = time.time()
    time.sleep(int(now) + 1 - now + 0.01)
    return int(time.time())


def rrd_floor(rrd_dir: str, base: str, repeats: int = 3) -> dict:
    """What no monitor writing ctxmon's files can go below, on the files ctxmon just
    wrote (stopped): librrd's CPU for one `rrdtool.update` of each file, all its data
    sources given, in a tight in-process loop (the strings made beforehand); and the
    same updates sent to an rrdcached of its own as one BATCH: the client's CPU
    (making the lines and the exchange) and rrdcached's. Medians of `repeats`, each
    at a new second; the rrdcached gets one unmeasured BATCH first (a file's first
    update there reads its header: a daemon does that once)."""
    import rrdtool

    from collector import catalog
    from exporters.rrdlayout import list_rrd_files

    files = [(f.path, len(catalog.FILE_KIND[f.kind].data_sources))
             for f in list_rrd_files(rrd_dir) if f.kind in catalog.FILE_KIND]
    out: dict = {"files": len(files), "direct_cpu": [], "direct_wall": [],
                 "batch_client_cpu": [], "batch_rrdcached_cpu": [], "batch_errors": 0}
    for _ in range(repeats):
        ts = _next_second()
        args = [(path, f"{ts}:" + ":".join([str(ts)] * nds)) for path, nds in files]
        update = rrdtool.update
        t0, w0 = time.thread_time(), time.perf_counter()
        for path, value in args:
            update(path, value)
        out["direct_cpu"].append(time.thread_time() - t0)
        out["direct_wall"].append(time.perf_counter() - w0)
    if shutil.which("rrdcached"):
        cache = Rrdcached(os.path.join(base, "floor-rrdcached"))
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(cache.sock)
                reply = s.makefile("rb")
                for i in range(repeats + 1):
                    ts = _next_second()
                    values = [(path, ":".join([str(ts)] * nds)) for path, nds in files]
                    c0, t0 = proc_cpu_ns(cache.pid), time.thread_time()
                    s.sendall(b"BATCH\n")
                    reply.readline()
                    s.sendall(("".join([f"UPDATE {path} {ts}:{v}\n" for path, v in values])
                               + ".\n").encode())
                    errors = int(reply.readline().split()[0])
                    for _ in range(errors):
                        reply.readline()
                    client = time.thread_time() - t0
                    time.sleep(0.05)  # rrdcached's threads done with the batch
                    if i:
                        out["batch_client_cpu"].append(client)
                        out["batch_rrdcached_cpu"].append(proc_cpu_ns(cache.pid) - c0)
                        out["batch_errors"] += errors
        finally:
            cache.stop()
    return {k: (statistics.median(v) if v else None) if isinstance(v, list) else v
            for k, v in out.items()}


# ------------------------------------------------------------------ scrapers


def _scraper(port: int, every: float, on, stop, queue) -> None:
    """Scrape /metrics every `every` seconds while `on` is set, until `stop` is; each
    stretch of scraping starts at a random point of `every`. Puts its (wall time,
    latency) pairs and its failure count on `queue` at the end."""
    import random

    lat: list[tuple[float, float]] = []
    failures = 0
    conn = None
    scraping = False
    while not stop.is_set():
        if not on.is_set():
            scraping = False
            on.wait(0.2)
            continue
        if not scraping:
            scraping = True
            time.sleep(random.random() * every)
            continue
        t0 = time.perf_counter()
        wall = time.time()
        try:
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request("GET", "/metrics", headers={"Accept-Encoding": "gzip"})
            r = conn.getresponse()
            r.read()
            if r.status != 200:
                failures += 1
            else:
                lat.append((wall, time.perf_counter() - t0))
        except (OSError, http.client.HTTPException):
            failures += 1
            conn = None
        time.sleep(max(0.0, every - (time.perf_counter() - t0)))
    queue.put((lat, failures))


_POLL_AT = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) DEBUG ctxmon\.daemon: poll "
                      r"\d+: .*?, (\d+) ms \(sample", re.M)


def poll_spans(log: str) -> list[tuple[float, float]]:
    """(start, end) wall times of the polls a ctxmon log shows (its local times)."""
    spans = []
    for day, ms, took in _POLL_AT.findall(log):
        end = time.mktime(time.strptime(day, "%Y-%m-%d %H:%M:%S")) + int(ms) / 1000
        spans.append((end - int(took) / 1000, end))
    return spans


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] if s else float("nan")


def median_of(phases: list[dict], scraped: bool, key: str) -> float:
    values = [v for p in phases if p["scraped"] == scraped for v in p[key]]
    return statistics.median(values) if values else float("nan")


def run_scrapers(n: int, base: str, interval: int, cycles: int, per_phase: int,
                 scrapers: int, every: float) -> dict:
    """ctxmon's poll with and without `scrapers` scraping, in alternating phases of
    `per_phase` polls (off, on, off, on, ..., `cycles` of each), so that a change of
    the host's load falls on both alike. The scrapers are started once and switched
    on and off. A phase starts in the middle between two polls and lasts `per_phase`
    intervals: the polls logged in it are its polls (the daemon's own durations)."""
    os.makedirs(base)
    cx = Ctxmon(ctxmon_config(base, interval, None), os.path.join(base, "ctxmon.log"))
    ctx = multiprocessing.get_context("fork")
    on, stop, q = ctx.Event(), ctx.Event(), ctx.Queue()
    workers = []
    try:
        wait_until("ctxmon's first polls", lambda: len(cx.polls()) >= 3, [cx], 120 + n * 0.1)
        workers = [ctx.Process(target=_scraper, args=(cx.port, every, on, stop, q))
                   for _ in range(scrapers)]
        for w in workers:
            w.start()
        settle_after_poll(cx, interval)
        phases = []
        t = time.monotonic()
        for i in range(2 * cycles):
            scraped = i % 2 == 1
            (on.set if scraped else on.clear)()
            k, cpu0 = len(cx.polls()), cx.cpu()
            t += per_phase * interval
            time.sleep(max(0.0, t - time.monotonic()))
            logged = cx.polls()[k:]
            polls = [p[3] for p in logged]
            phases.append({"scraped": scraped, "poll_ms": polls,
                           "sample_ms": [p[4] for p in logged],
                           "poll_cpu_ms": [p[5] for p in logged],
                           "cpu_per_poll": (cx.cpu() - cpu0) / max(1, len(polls))})
            if not cx.alive():
                raise RuntimeError(f"ctxmon died:\n{cx.text()[-3000:]}")
        on.clear()
        stop.set()
        results = [q.get(timeout=60) for _ in workers]
        for w in workers:
            w.join()
        workers = []
        timed = [x for r, _ in results for x in r]
        lat = [x for _, x in timed]
        # Which scrapes overlapped a poll (the cause of slow ones, if they are there).
        spans = poll_spans(cx.text())
        during = [x for t, x in timed if any(a - x <= t <= b for a, b in spans)]
        apart = [x for t, x in timed if not any(a - x <= t <= b for a, b in spans)]
        quiet = [ms for p in phases if not p["scraped"] for ms in p["poll_ms"]]
        busy = [ms for p in phases if p["scraped"] for ms in p["poll_ms"]]
        # Each scraped phase against the mean of the unscraped phases either side of it.
        paired = []
        for i in range(1, len(phases), 2):
            around = [statistics.median(phases[j]["poll_ms"]) for j in (i - 1, i + 1)
                      if j < len(phases) and phases[j]["poll_ms"]]
            if around and phases[i]["poll_ms"]:
                paired.append(statistics.median(phases[i]["poll_ms"])
                              / statistics.mean(around) - 1)
        return {
            "n": n, "scrapers": scrapers, "every": every, "cycles": cycles,
            "per_phase": per_phase, "phases": phases,
            "scrapes": len(lat), "failures": sum(f for _, f in results),
            "p50_ms": percentile(lat, 0.50) * 1e3, "p99_ms": percentile(lat, 0.99) * 1e3,
            "max_ms": max(lat) * 1e3 if lat else float("nan"),
            "during_polls": len(during), "p99_during_ms": percentile(during, 0.99) * 1e3,
            "p50_during_ms": percentile(during, 0.50) * 1e3,
            "p99_apart_ms": percentile(apart, 0.99) * 1e3,
            "poll_ms_quiet": statistics.median(quiet) if quiet else float("nan"),
            "poll_ms_scraped": statistics.median(busy) if busy else float("nan"),
            "phase_medians_quiet": [statistics.median(p["poll_ms"]) for p in phases
                                    if not p["scraped"] and p["poll_ms"]],
            "phase_medians_scraped": [statistics.median(p["poll_ms"]) for p in phases
                                      if p["scraped"] and p["poll_ms"]],
            "paired_change": paired,
            "cpu_per_poll_quiet": statistics.median(p["cpu_per_poll"] for p in phases
                                                    if not p["scraped"]),
            "cpu_per_poll_scraped": statistics.median(p["cpu_per_poll"] for p in phases
                                                      if p["scraped"]),
            "host_processes": cx.polls()[-1][2],
            "polls_quiet": len(quiet), "polls_scraped": len(busy),
            # the poll thread's own CPU and the sampling part of the wall time
            "poll_cpu_ms_quiet": median_of(phases, False, "poll_cpu_ms"),
            "poll_cpu_ms_scraped": median_of(phases, True, "poll_cpu_ms"),
            "sample_ms_quiet": median_of(phases, False, "sample_ms"),
            "sample_ms_scraped": median_of(phases, True, "sample_ms"),
        }
    finally:
        stop.set()
        on.set()  # wakes a waiting scraper to see `stop`
        for w in workers:
            w.join(timeout=15)
            if w.is_alive():
                w.kill()
                w.join()
        cx.stop()


# ------------------------------------------------------------------ VServer tree


def make_vserver_tree(dest: str, guests: int) -> str:
    """A recorded VServer 2.3 host with `guests` running guests, one process each,
    from the formats of tests/fixtures/vs23 (its guest 40001 as the template)."""
    src = os.path.join(REPO, "tests", "fixtures", "vs23")
    shutil.copytree(src, dest, symlinks=True)
    proc = os.path.join(dest, "proc")
    with open(os.path.join(proc, "2310", "stat")) as f:
        stat = f.read()
    with open(os.path.join(proc, "2310", "status")) as f:
        status = f.read()
    template = os.path.join(proc, "virtual", "40001")
    rev = os.path.join(dest, "var", "run", "vservers.rev")
    os.makedirs(rev, exist_ok=True)
    for i in range(guests):
        xid, pid, name = 41000 + i, 10000 + i, f"guest{i:04d}"
        vdir = os.path.join(proc, "virtual", str(xid))
        shutil.copytree(template, vdir)
        with open(os.path.join(vdir, "info")) as f:
            info = f.read()
        with open(os.path.join(vdir, "info"), "w") as f:
            f.write(info.replace("40001", str(xid)))
        pdir = os.path.join(proc, str(pid))
        os.mkdir(pdir)
        with open(os.path.join(pdir, "stat"), "w") as f:
            f.write(stat.replace("2310 (nginx)", f"{pid} (nginx)", 1))
        with open(os.path.join(pdir, "status"), "w") as f:
            f.write(status.replace("2310", str(pid)).replace("40002", str(xid)))
        cdir = os.path.join(dest, "etc", "vservers", name)
        os.mkdir(cdir)
        for fname, text in (("context", f"{xid}\n"), ("name", f"{name}\n")):
            with open(os.path.join(cdir, fname), "w") as f:
                f.write(text)
        os.symlink(f"/var/run/vservers/{name}", os.path.join(cdir, "run"))
        with open(os.path.join(dest, "var", "run", "vservers", name), "w") as f:
            f.write(f"{xid}\n")
        os.symlink(f"/etc/vservers/{name}", os.path.join(rev, str(xid)))
    return proc


def run_vserver(guests: int, base: str, interval: int, windows: int,
                per_window: int) -> dict:
    os.makedirs(base)
    proc = make_vserver_tree(os.path.join(base, "tree"), guests)
    cx = Ctxmon(ctxmon_config(base, interval, None, source="vserver", proc_root=proc),
                os.path.join(base, "ctxmon.log"))
    try:
        wait_until("ctxmon's first polls", lambda: len(cx.polls()) >= 3, [cx], 120 + guests * 0.1)
        settle_after_poll(cx, interval)
        k = len(cx.polls())
        cpu = cpu_windows({"ctxmon": cx}, interval, windows, per_window)["ctxmon"]
        polls = cx.polls()[k:]
        return {"guests": guests, "cpu": statistics.median(cpu), "cpu_all": cpu,
                "processes": polls[-1][2] if polls else None,
                "contexts": polls[-1][1] if polls else None,
                "poll_ms": statistics.median(p[3] for p in polls) if polls else None}
    finally:
        cx.stop()


# ------------------------------------------------------------------ profile


def profile_poll(base: str, interval: int, polls: int) -> str:
    """cProfile of `polls` in-process Daemon.poll() calls after two warm polls."""
    from ctxmon.config import load_config
    from ctxmon.daemon import Daemon

    os.makedirs(base)
    cfg = load_config(ctxmon_config(base, interval, None))
    d = Daemon(cfg)
    try:
        for _ in range(2):
            d.poll()
            time.sleep(1.1)  # a new second, so every RRD update is taken
        prof = cProfile.Profile()
        walls = []
        for _ in range(polls):
            t0 = time.perf_counter()
            prof.enable()
            snap = d.poll()
            prof.disable()
            walls.append(time.perf_counter() - t0)
            time.sleep(1.1)
        out = io.StringIO()
        st = pstats.Stats(prof, stream=out)
        st.sort_stats("cumulative").print_stats(35)
        st.sort_stats("tottime").print_stats(20)
        head = (f"{len(snap.contexts)} contexts, {sum(c.processes for c in snap.contexts)} "
                f"processes on the host, {polls} profiled polls, wall per poll "
                f"(profiled) median {statistics.median(walls) * 1e3:.0f} ms\n")
        return head + out.getvalue()
    finally:
        d.rrd.close()
        d.sampler.close()


# ------------------------------------------------------------------ main


def print_table(rows: list[dict]) -> None:
    print()
    print("| contexts | RRD | ctxmon CPU/poll | collectd CPU/poll | ratio | rrdcached CPU/poll "
          "(ctxmon's / collectd's) | ctxmon poll (wall) | files (ctxmon / collectd) "
          "| processes on the host |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        c = r["cpu"]
        cached = (f"{c['rrdcached (ctxmon)'] * 1e3:.0f} / {c['rrdcached (collectd)'] * 1e3:.0f} ms"
                  if "rrdcached (ctxmon)" in c else "")
        ratio = c["ctxmon"] / c["collectd"] if c["collectd"] else float("inf")
        way = (f"direct, write_behind / CacheTimeout {r['write_behind']} s"
               if r["way"] == "behind" else r["way"])
        print(f"| {r['n']:,} | {way} | {c['ctxmon'] * 1e3:.0f} ms | "
              f"{c['collectd'] * 1e3:.0f} ms | {ratio:.2f}x | {cached} | "
              f"{r['ctxmon_poll_ms']:.0f} ms | {r['ctxmon_files']:,} / {r['collectd_files']:,} "
              f"| {r['host_processes']:,.0f} |")
    sys.stdout.flush()


def print_floors(floors: list[dict], pairs: list[dict]) -> None:
    """Per size: librrd's CPU for one update of each of ctxmon's files (what no monitor
    writing them all can go below) next to collectd's whole poll, same run."""
    if not floors:
        return
    print()
    print("| contexts | ctxmon's files | floor: librrd, one update each (CPU) | "
          "collectd CPU/poll, direct | floor / collectd | ctxmon / floor | floor: one BATCH "
          "of them, client CPU (rrdcached's) | collectd CPU/poll, rrdcached | "
          "BATCH floor / collectd |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")

    def cpu(n: int, way: str, who: str) -> float | None:
        return next((p["cpu"][who] for p in pairs if p["n"] == n and p["way"] == way), None)

    def ms(v: float | None, digits: int = 0) -> str:
        return "–" if v is None else f"{v * 1e3:.{digits}f} ms"

    def ratio(a: float | None, b: float | None) -> str:
        return f"{a / b:.2f}x" if a is not None and b else "–"

    for f in floors:
        n = f["n"]
        cd, cdc, cx = cpu(n, "direct", "collectd"), cpu(n, "rrdcached", "collectd"), \
            cpu(n, "direct", "ctxmon")
        batch, cached = f["batch_client_cpu"], f["batch_rrdcached_cpu"]
        print(f"| {n:,} | {f['files']:,} | {ms(f['direct_cpu'])} | {ms(cd)} | "
              f"{ratio(f['direct_cpu'], cd)} | {ratio(cx, f['direct_cpu'])} | "
              f"{ms(batch, 1)} ({ms(cached, 1)}) | {ms(cdc)} | {ratio(batch, cdc)} |")
    sys.stdout.flush()


def print_scrapes(s: dict) -> None:
    def ms(values: list[float]) -> str:
        return ", ".join(f"{v:.0f}" for v in values)

    quiet, busy = s["poll_ms_quiet"], s["poll_ms_scraped"]
    print(f"\n{s['scrapers']} scrapers (gzip, one scrape each per {s['every']:g} s) at "
          f"{s['n']:,} contexts, {s['cycles']} phases without and {s['cycles']} with them, "
          f"alternating, {s['per_phase']} polls each: {s['scrapes']} scrapes, "
          f"{s['failures']} failed, p50 {s['p50_ms']:.1f} ms, p99 {s['p99_ms']:.1f} ms, "
          f"max {s['max_ms']:.1f} ms; {s['during_polls']} scrapes overlapped a poll: "
          f"p50 {s['p50_during_ms']:.1f} ms, p99 {s['p99_during_ms']:.1f} ms; the others' "
          f"p99 {s['p99_apart_ms']:.1f} ms")
    print(f"  ctxmon poll (wall, its log), median of {s['polls_quiet']} polls without "
          f"scrapers {quiet:.0f} ms, of {s['polls_scraped']} with {busy:.0f} ms "
          f"({busy / quiet - 1:+.1%}); phase medians without: {ms(s['phase_medians_quiet'])} "
          f"ms, with: {ms(s['phase_medians_scraped'])} ms; each scraped phase against "
          f"the unscraped ones either side: "
          f"{', '.join(f'{c:+.0%}' for c in s['paired_change'])} "
          f"(median {statistics.median(s['paired_change']):+.1%})")
    print(f"  the poll thread's own CPU (its log), median without {s['poll_cpu_ms_quiet']:.0f} "
          f"ms, with {s['poll_cpu_ms_scraped']:.0f} ms; the sampling part of the poll "
          f"{s['sample_ms_quiet']:.0f} / {s['sample_ms_scraped']:.0f} ms")
    print(f"  ctxmon CPU per poll (all threads, phase medians): without "
          f"{s['cpu_per_poll_quiet'] * 1e3:.0f} ms, with {s['cpu_per_poll_scraped'] * 1e3:.0f} ms",
          flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="100,1000,5000", help="context counts (comma-separated)")
    ap.add_argument("--ways", default="direct,rrdcached,behind",
                    help="any of direct, rrdcached, behind (direct writes held up to "
                         "--write-behind seconds by each tool)")
    ap.add_argument("--write-behind", type=int, default=60,
                    help="seconds: ctxmon's [rrd] write_behind and collectd's CacheTimeout "
                         "in the `behind` rows")
    ap.add_argument("--interval", type=int, default=10, help="poll interval, seconds")
    ap.add_argument("--windows", type=int, default=5, help="measured windows per run")
    ap.add_argument("--per-window", type=int, default=2, help="polls per measured window")
    ap.add_argument("--no-pairs", action="store_true", help="skip the ctxmon/collectd runs")
    ap.add_argument("--no-floor", action="store_true",
                    help="skip the librrd floor measured on ctxmon's files after each size's "
                         "first run")
    ap.add_argument("--scrapers", type=int, default=10, help="0: skip the scrape test")
    ap.add_argument("--scrape-n", type=int, default=1000)
    ap.add_argument("--scrape-every", type=float, default=1.0,
                    help="seconds between one scraper's scrapes")
    ap.add_argument("--scrape-cycles", type=int, default=4,
                    help="phases without, then with scrapers, this many of each, alternating")
    ap.add_argument("--scrape-per-phase", type=int, default=3, help="polls per phase")
    ap.add_argument("--vserver", type=int, default=1000, help="guests; 0: skip")
    ap.add_argument("--profile", action="store_true", help="only profile one poll")
    ap.add_argument("--profile-n", type=int, default=1000)
    ap.add_argument("--json", help="also write the results to this file")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args()

    if os.geteuid() != 0:
        print("collectd_bench: run as root (it makes cgroups)", file=sys.stderr)
        return 2
    if not args.profile and not args.no_pairs and not os.access(COLLECTD, os.X_OK):
        print("collectd_bench: no collectd; run `make bench` or ./.ci/apt-install collectd-core",
              file=sys.stderr)
        return 2
    if "rrdcached" in args.ways and shutil.which("rrdcached") is None:
        print("collectd_bench: no rrdcached (./.ci/apt-install rrdcached)", file=sys.stderr)
        return 2
    from collector.procfs import raise_fd_limit

    raise_fd_limit()  # collectd and ctxmon inherit it
    Contexts.remove_leftovers()
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    base = os.path.realpath(tempfile.mkdtemp(prefix="ctxmon-collectd-bench-"))
    sizes = [int(s) for s in args.sizes.split(",") if s]
    ways = [w for w in args.ways.split(",") if w]
    results: dict = {"pairs": [], "floors": [], "scrape": None, "vserver": None, "profile": None,
                     "interval": args.interval, "windows": args.windows,
                     "load": os.getloadavg()}
    contexts: Contexts | None = None
    try:
        if args.profile:
            contexts = Contexts(args.profile_n, os.urandom(3).hex())
            contexts.create()
            results["profile"] = profile_poll(os.path.join(base, "profile"), args.interval, 3)
            print(results["profile"])
            return 0
        if not args.no_pairs:
            for n in sizes:
                contexts = Contexts(n, os.urandom(3).hex())
                t0 = time.monotonic()
                contexts.create()
                print(f"{n} contexts made in {time.monotonic() - t0:.1f} s", flush=True)
                for way in ways:
                    r = run_pair(n, way, os.path.join(base, f"{n}-{way}"), args.interval,
                                 args.windows, args.per_window, args.write_behind)
                    results["pairs"].append(r)
                    c = r["cpu"]
                    print(f"  {way}: ctxmon {c['ctxmon'] * 1e3:.0f} ms, collectd "
                          f"{c['collectd'] * 1e3:.0f} ms CPU per poll "
                          f"({r['ctxmon_contexts']} ctxmon contexts, "
                          f"{r['host_processes']:.0f} processes on the host)", flush=True)
                    if not args.no_floor and not any(f["n"] == n for f in results["floors"]):
                        f = rrd_floor(os.path.join(base, f"{n}-{way}", "ctxmon", "rrd"),
                                      os.path.join(base, f"{n}-{way}"))
                        f["n"] = n
                        results["floors"].append(f)
                        batch = (f"; one BATCH of them {f['batch_client_cpu'] * 1e3:.1f} ms "
                                 f"(client), {f['batch_rrdcached_cpu'] * 1e3:.1f} ms (rrdcached)"
                                 if f["batch_client_cpu"] is not None else "")
                        print(f"  floor: librrd, one update of each of ctxmon's "
                              f"{f['files']:,} files {f['direct_cpu'] * 1e3:.0f} ms CPU{batch}",
                              flush=True)
                    shutil.rmtree(os.path.join(base, f"{n}-{way}"), ignore_errors=True)
                contexts.destroy()
                contexts = None
            print_table(results["pairs"])
            print_floors(results["floors"], results["pairs"])
        if args.scrapers:
            contexts = Contexts(args.scrape_n, os.urandom(3).hex())
            contexts.create()
            s = results["scrape"] = run_scrapers(
                args.scrape_n, os.path.join(base, "scrape"), args.interval,
                args.scrape_cycles, args.scrape_per_phase, args.scrapers, args.scrape_every)
            contexts.destroy()
            contexts = None
            print_scrapes(s)
        if args.vserver:
            v = results["vserver"] = run_vserver(args.vserver, os.path.join(base, "vserver"),
                                                 args.interval, args.windows, args.per_window)
            print(f"\nVServer recorded tree, {v['guests']:,} guests ({v['contexts']} contexts): "
                  f"ctxmon {v['cpu'] * 1e3:.0f} ms CPU per poll, poll {v['poll_ms']:.0f} ms",
                  flush=True)
        print(f"\nload average at start: {results['load'][0]:.2f}")
    except KeyboardInterrupt:
        print("\ninterrupted; cleaning up", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # let the clean-up finish
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if contexts is not None:
            contexts.destroy()
        if args.keep:
            print(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
