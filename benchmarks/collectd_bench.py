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
- `--scrapers`: 10 processes scraping ctxmon's /metrics (gzip, as Prometheus asks)
  every --scrape-every seconds at 1,000 contexts: scrape p50/p99 and ctxmon's poll
  duration (its log) with and without them;
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


_POLL = re.compile(r"poll (\d+): (\d+) contexts, (\d+) processes, (\d+) ms \(sample (\d+) ms\)")


class Ctxmon(Child):
    def __init__(self, conf: str, log_path: str):
        self.port = int(re.search(r"127\.0\.0\.1:(\d+)", open(conf).read()).group(1))
        super().__init__([sys.executable, "-m", "ctxmon.cli", "-v", "run", "-c", conf],
                         log_path, cwd=REPO)

    def polls(self) -> list[tuple[int, int, int, float, float]]:
        """(poll number, contexts, processes, poll ms, sample ms) of each logged poll."""
        return [(int(a), int(b), int(c), float(d), float(e))
                for a, b, c, d, e in _POLL.findall(self.text())]


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


# ------------------------------------------------------------------ scrapers


def _scraper(port: int, every: float, stop_at: float, queue) -> None:
    import random

    lat: list[float] = []
    failures = 0
    time.sleep(random.random() * every)
    conn = None
    while time.monotonic() < stop_at:
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


def run_scrapers(n: int, base: str, interval: int, polls: int, scrapers: int,
                 every: float) -> dict:
    os.makedirs(base)
    cx = Ctxmon(ctxmon_config(base, interval, None), os.path.join(base, "ctxmon.log"))
    try:
        wait_until("ctxmon's first polls", lambda: len(cx.polls()) >= 3, [cx], 120 + n * 0.1)
        k = len(cx.polls())
        wait_until("quiet polls", lambda: len(cx.polls()) >= k + polls, [cx],
                   (polls + 2) * interval + 60)
        quiet = [p[3] for p in cx.polls()[k:k + polls]]
        settle_after_poll(cx, interval)
        k = len(cx.polls())
        stop_at = time.monotonic() + polls * interval
        ctx = multiprocessing.get_context("fork")
        q = ctx.Queue()
        workers = [ctx.Process(target=_scraper, args=(cx.port, every, stop_at, q))
                   for _ in range(scrapers)]
        for w in workers:
            w.start()
        results = [q.get(timeout=polls * interval + 60) for _ in workers]
        for w in workers:
            w.join()
        busy = [p[3] for p in cx.polls()[k:]]
        timed = [x for r, _ in results for x in r]
        lat = [x for _, x in timed]
        # Which scrapes overlapped a poll (the cause of slow ones, if they are there).
        spans = poll_spans(cx.text())
        during = [x for t, x in timed if any(a - x <= t <= b for a, b in spans)]
        apart = [x for t, x in timed if not any(a - x <= t <= b for a, b in spans)]
        return {
            "n": n, "scrapers": scrapers, "every": every,
            "scrapes": len(lat), "failures": sum(f for _, f in results),
            "p50_ms": percentile(lat, 0.50) * 1e3, "p99_ms": percentile(lat, 0.99) * 1e3,
            "max_ms": max(lat) * 1e3 if lat else float("nan"),
            "during_polls": len(during), "p99_during_ms": percentile(during, 0.99) * 1e3,
            "p50_during_ms": percentile(during, 0.50) * 1e3,
            "p99_apart_ms": percentile(apart, 0.99) * 1e3,
            "poll_ms_quiet": statistics.median(quiet),
            "poll_ms_scraped": statistics.median(busy) if busy else float("nan"),
            "host_processes": cx.polls()[-1][2],
            "polls_scraped": len(busy),
        }
    finally:
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
    ap.add_argument("--scrapers", type=int, default=10, help="0: skip the scrape test")
    ap.add_argument("--scrape-n", type=int, default=1000)
    ap.add_argument("--scrape-every", type=float, default=1.0,
                    help="seconds between one scraper's scrapes")
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
    results: dict = {"pairs": [], "scrape": None, "vserver": None, "profile": None,
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
                    shutil.rmtree(os.path.join(base, f"{n}-{way}"), ignore_errors=True)
                contexts.destroy()
                contexts = None
            print_table(results["pairs"])
        if args.scrapers:
            contexts = Contexts(args.scrape_n, os.urandom(3).hex())
            contexts.create()
            s = results["scrape"] = run_scrapers(
                args.scrape_n, os.path.join(base, "scrape"), args.interval,
                args.windows, args.scrapers, args.scrape_every)
            contexts.destroy()
            contexts = None
            print(f"\n{s['scrapers']} scrapers (gzip, one scrape each per {s['every']:g} s) at "
                  f"{s['n']:,} contexts: {s['scrapes']} scrapes, {s['failures']} failed, "
                  f"p50 {s['p50_ms']:.1f} ms, p99 {s['p99_ms']:.1f} ms, max {s['max_ms']:.1f} ms; "
                  f"ctxmon poll median {s['poll_ms_quiet']:.0f} ms without scrapers, "
                  f"{s['poll_ms_scraped']:.0f} ms with "
                  f"({s['poll_ms_scraped'] / s['poll_ms_quiet'] - 1:+.0%}); "
                  f"{s['during_polls']} scrapes overlapped a poll: p50 {s['p50_during_ms']:.1f} ms, "
                  f"p99 {s['p99_during_ms']:.1f} ms; the others' p99 {s['p99_apart_ms']:.1f} ms",
                  flush=True)
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
