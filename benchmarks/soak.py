#!/usr/bin/env python3
"""Soak: many polls of the daemon's real chain under context churn and scrape load.

Drives in this process the real `Daemon.poll` of `ctxmon run` (its scheduler aside):
`Sampler` on the live /proc and the cgroup v2 hierarchy -> the daemon's sinks (the
`RrdSink`, direct or through a private rrdcached with --rrdcached) -> the latest
snapshot -> /metrics rendered by its `MetricsServer` on loopback, as fast as it goes.
The daemon's injected clock is fake and moves one RRD step (60 s) per poll, so 10,000
polls cover 10,000 steps (about a week of RRD time, hourly maintenance and archiving
included) in minutes.

Between polls contexts come and go: a new cgroup with a process in it every
--churn-every polls, the oldest removed once more than --live are up; a shell loop
in a steady cgroup forks and reaps short-lived processes all the time. 10 scraper
processes hammer /metrics (every other request with gzip).

Checked and printed: polls done, contexts churned, scrapes served; RSS and open
file descriptors of this process after the warm-up and at the end; stale series
(every few polls a scrape must list exactly the snapshot's contexts, never a removed
one); RRD files complete (no unknown row while their context ran); connections left
once the scrapers stop. Exit status 1 when a check fails.

Run as root (it makes cgroups):

    /tmp/v/bin/python benchmarks/soak.py [--polls 10000] [--rrdcached]

`run_soak()` is what tests/test_soak.py runs in its short version.
"""

from __future__ import annotations

import argparse
from array import array
import gc
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass, field

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))  # cgroups.py, rrdcached.py


from collector.catalog import FILE_KINDS  # noqa: E402
from ctxmon.config import (  # noqa: E402
    CollectorConfig,
    Config,
    ExporterConfig,
    GraphsConfig,
    RrdConfig,
)
from ctxmon.daemon import Daemon  # noqa: E402
from exporters.names import encode_name  # noqa: E402
from exporters.rrd import ARCHIVE_DIR, rrd_path  # noqa: E402
from exporters.rrdlayout import context_file_name  # noqa: E402
from cgroups import rmdir_cgroup, v2_mount  # noqa: E402
from soakchecks import STEP, check_rrd, check_series, fd_census, steady_fds  # noqa: E402,F401

PREFIX = "ctxmon-soak-"
# Files every context has (cgmem.rrd, say, needs a memory controller the soak's
# cgroups may lack).
ALWAYS_KINDS = tuple(k.name for k in FILE_KINDS if k.scope == "context" and k.present is None)

# A scraper: GET /metrics in a loop on fresh connections until SIGTERM, then print
# its counts. A minimal interpreter (-S), so ten of them cost little memory. It also
# ends when the soak is gone (its parent changed: the soak was SIGKILLed, say by a
# test's timeout, and no `finally` ran), rather than hammer a dead port for good.
SCRAPER = r"""
import http.client, json, os, signal, sys, time
port, pause = int(sys.argv[1]), float(sys.argv[2])
parent = os.getppid()
stop = False
def on_term(*_):
    global stop
    stop = True
signal.signal(signal.SIGTERM, on_term)
ok = bad = n = 0
print("ready", flush=True)
while not stop:
    if os.getppid() != parent:
        sys.exit(3)
    n += 1
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        c.request("GET", "/metrics", headers={"Accept-Encoding": "gzip"} if n % 2 else {})
        r = c.getresponse()
        body = r.read()
        c.close()
        if r.status == 200 and body:
            ok += 1
        else:
            bad += 1
    except Exception:
        if not stop:
            bad += 1
    if pause:
        time.sleep(pause)
print(json.dumps({"ok": ok, "bad": bad}), flush=True)
"""

# Forks and reaps a short-lived process about 20 times a second, forever.
FORKER = ["sh", "-c", "while :; do sleep 0.05; done"]


class FakeClock:
    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class SoakResult:
    polls: int = 0
    warmup_polls: int = 0
    fake_seconds: int = 0
    wall_seconds: float = 0.0
    cpu_seconds: float = 0.0  # this process: polls, RRD writes and serving scrapes
    contexts_churned: int = 0  # cgroups created, populated, emptied and removed
    host_forks: int = 0  # processes forked on the whole host meanwhile (/proc/stat)
    scrapers: int = 0
    scrapes_served: int = 0
    scrape_errors: int = 0
    stale_checks: int = 0
    stale_series: list[str] = field(default_factory=list)  # problems found, one per line
    rss_warm: int = 0  # bytes, after the warm-up
    rss_end: int = 0
    fds_warm: dict = field(default_factory=dict)  # kind -> count
    fds_end: dict = field(default_factory=dict)
    processes_end: int = 0  # processes on the host when fds_end was taken
    rss_trace: list = field(default_factory=list)  # (polls, RSS bytes) every tenth of the run
    connections_left: int = -1  # server-side TCP connections once the scrapers stopped
    rrd_files_checked: int = 0
    rrd_unknown: list[str] = field(default_factory=list)  # files with holes, with detail
    poll_failures: int = 0
    rrd_write_errors: int = 0
    rrdcached: bool = False

    @property
    def rss_growth(self) -> int:
        return self.rss_end - self.rss_warm

    @property
    def steady_fds_warm(self) -> int:
        return steady_fds(self.fds_warm)

    @property
    def steady_fds_end(self) -> int:
        return steady_fds(self.fds_end)

    def problems(self, max_rss_growth: int = 5 << 20) -> list[str]:
        """What failed, as sentences; empty when the soak held."""
        out = []
        if self.poll_failures:
            out.append(f"{self.poll_failures} polls failed")
        if self.rss_growth >= max_rss_growth:
            out.append(f"RSS grew by {self.rss_growth / 2**20:.1f} MB after the warm-up")
        if self.steady_fds_end != self.steady_fds_warm:
            out.append(f"fds other than held stat files and live connections went from "
                       f"{self.fds_warm} to {self.fds_end}")
        if self.connections_left != 0:
            out.append(f"{self.connections_left} connections left after the scrapers stopped")
        if self.stale_series:
            out.append("stale or missing series: " + "; ".join(self.stale_series[:5]))
        if self.rrd_unknown:
            out.append("RRD rows unknown while their context ran: " + "; ".join(self.rrd_unknown[:5]))
        if self.scrape_errors:
            out.append(f"{self.scrape_errors} scrapes failed")
        if self.rrd_write_errors:
            out.append(f"{self.rrd_write_errors} RRD updates failed")
        return out


# --------------------------------------------------------------------- process census


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def quiet_census(scrapers: list[subprocess.Popen], limit: float = 15.0) -> dict[str, int]:
    """fd_census() with the scrapers stopped (SIGSTOP) and no request in flight, so that
    no connection or file a request handler holds for a moment is counted."""
    for p in scrapers:
        p.send_signal(signal.SIGSTOP)
    try:
        deadline = time.monotonic() + limit
        while True:
            census = fd_census()
            quiet = not census.get("tcp-conn") and not census.get("socket")
            if quiet or time.monotonic() > deadline:
                return census
            time.sleep(0.02)
    finally:
        for p in scrapers:
            p.send_signal(signal.SIGCONT)


def host_forks() -> int:
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("processes "):
                return int(line.split()[1])
    return 0


def cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


# --------------------------------------------------------------------------- cgroups


class Cgroup:
    """A cgroup v2 directory with processes moved in; removed by `remove()`."""

    def __init__(self, root: str, name: str):
        self.name = name
        self.path = os.path.join(root, name)
        os.mkdir(self.path)
        self.procs: list[subprocess.Popen] = []

    def start(self, argv: list[str]) -> subprocess.Popen:
        # Started, then moved in: preexec_fn is unsafe in a process with threads. The
        # caller polls only after this returns, so no poll sees it outside.
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, close_fds=True)
        with open(os.path.join(self.path, "cgroup.procs"), "w") as f:
            f.write(str(p.pid))
        self.procs.append(p)
        return p

    def remove(self) -> None:
        kill = os.path.join(self.path, "cgroup.kill")
        if os.path.exists(kill):
            with open(kill, "w") as f:
                f.write("1")
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait()
        self.procs.clear()
        rmdir_cgroup(self.path, limit=5.0)  # busy for a moment after its last process


# -------------------------------------------------------------------------- scrapers


def start_scrapers(n: int, port: int, pause: float, procs: list[subprocess.Popen]) -> None:
    """Start `n` scrapers into `procs` (the caller's list, so that the caller's
    `finally` also stops the ones started before one failed)."""
    for _ in range(n):
        p = subprocess.Popen([sys.executable, "-S", "-c", SCRAPER, str(port), str(pause)],
                             stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, close_fds=True)
        procs.append(p)
    for p in procs:
        if p.stdout.readline().strip() != b"ready":
            raise RuntimeError("a scraper did not start")


def stop_scrapers(procs: list[subprocess.Popen], wait: float = 60.0) -> tuple[int, int]:
    """SIGTERM each scraper and collect its counts; one that does not end within
    `wait` seconds is killed. Every one is reaped when this returns."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    ok = bad = 0
    for p in procs:
        try:
            out, _ = p.communicate(timeout=wait)
            counts = json.loads(out.decode().strip().splitlines()[-1])
            ok += counts["ok"]
            bad += counts["bad"]
        except (subprocess.TimeoutExpired, ValueError, IndexError):
            p.kill()
            p.wait()
            bad += 1
    return ok, bad


# ----------------------------------------------------------------------- the checks

def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as r:
        return r.read().decode("utf-8")


def find_context_dir(rrd_dir: str, name: str) -> list[str]:
    """The context's directory under ctx/ and any archived ones (archive/<enc>-<stamp>)."""
    enc = encode_name(name)
    found = []
    live = os.path.join(rrd_dir, "ctx", enc)
    if os.path.isdir(live):
        found.append(live)
    archive = os.path.join(rrd_dir, ARCHIVE_DIR)
    if os.path.isdir(archive):
        for entry in os.listdir(archive):
            if re.fullmatch(re.escape(enc) + r"-\d{14}(\.\d+)?", entry):
                found.append(os.path.join(archive, entry))
    return found


# --------------------------------------------------------------------------- the soak


def run_soak(polls: int = 10_000, warmup: int | None = None, scrapers: int = 10,
             scrape_pause: float = 0.0, churn_every: int = 10, live: int = 8,
             use_rrdcached: bool = False, retention: int = 7200, check_every: int = 10,
             workdir: str | None = None, progress=None) -> SoakResult:
    """Run the soak (see the module doc) and return its figures. Needs root and a
    writable cgroup v2 hierarchy; everything made is removed at the end."""

    root = v2_mount()
    if root is None:
        raise RuntimeError("no cgroup v2 hierarchy mounted")
    if warmup is None:
        warmup = max(100, polls // 10)
    if warmup >= polls:
        raise ValueError("the warm-up must be shorter than the run")
    res = SoakResult(scrapers=scrapers, rrdcached=use_rrdcached, warmup_polls=warmup)
    own_tmp = workdir is None
    base = os.path.realpath(tempfile.mkdtemp(prefix="ctxmon-soak-") if own_tmp else workdir)
    run_id = secrets.token_hex(3)
    cgroups: list[Cgroup] = []
    scraper_procs: list[subprocess.Popen] = []
    cached = server = sampler = sink = None
    try:
        daemon_addr = None
        if use_rrdcached:
            from rrdcached import Rrdcached  # tests/rrdcached.py

            cached = Rrdcached(base)
            cached.start()
            daemon_addr = cached.addr
        steady = Cgroup(root, f"{PREFIX}{run_id}-steady.service")
        cgroups.append(steady)
        steady.start(["sleep", "86400"])
        forker = Cgroup(root, f"{PREFIX}{run_id}-forker.service")
        cgroups.append(forker)
        forker.start(FORKER)
        permanent = ["host", steady.name, forker.name]

        # Whole hours in the past, so that every fake time is before the real one.
        t0 = (int(time.time()) - polls * STEP - 86400) // 3600 * 3600
        clock = FakeClock(float(t0))
        rrd_dir = os.path.join(base, "rrd")
        # The daemon's own core, polled by hand on the fake clock: the same sampler,
        # sinks and /metrics `ctxmon run` uses, without its scheduler.
        cfg = Config(
            collector=CollectorConfig(source="cgroup", interval=float(STEP)),
            rrd=RrdConfig(dir=rrd_dir, step=float(STEP), daemon=daemon_addr or "",
                          retention=float(retention)),
            exporter=ExporterConfig(listen="127.0.0.1:0"),
            graphs=GraphsConfig(enabled=False),
        )
        daemon = Daemon(cfg, clock=clock)
        sampler, sink, server = daemon.sampler, daemon.rrd, daemon.server
        server.start()
        start_scrapers(scrapers, server.port, scrape_pause, scraper_procs)

        # This process's own records are made up front, so that they do not grow while
        # its RSS is watched: every name a context of ours will have, and its slot.
        names = permanent + [f"{PREFIX}{run_id}-{k:05d}.service"
                             for k in range(1, polls // churn_every + 1)]
        slot = {name: k for k, name in enumerate(names)}
        first_seen = array("q", [0]) * len(names)  # poll times; 0: not seen yet
        last_seen = array("q", [0]) * len(names)
        departed = bytearray(len(names))  # 1: removed
        churn: list[Cgroup] = []
        first_ifaces: set[str] | None = None
        made = 0
        forks0 = host_forks()
        wall0, cpu0 = time.monotonic(), cpu_seconds()
        for i in range(polls):
            if i and i % churn_every == 0:
                made += 1
                cg = Cgroup(root, names[len(permanent) + made - 1])
                cgroups.append(cg)
                cg.start(["sleep", "86400"])
                churn.append(cg)
                if len(churn) > live:
                    gone = churn.pop(0)
                    gone.remove()
                    cgroups.remove(gone)
                    departed[slot[gone.name]] = 1
                    res.contexts_churned += 1
            snap = daemon.poll()  # sample, then every sink
            if snap is None:  # counted and logged by the daemon
                res.poll_failures += 1
                clock.now += STEP
                continue
            res.rrd_write_errors += daemon.stats.last_rrd_errors
            ts = int(snap.timestamp)
            if first_ifaces is None:
                first_ifaces = {iface.name for iface in snap.host_interfaces}
            for c in snap.contexts:
                k = slot.get(c.label)
                if k is not None:
                    if not first_seen[k]:
                        first_seen[k] = ts
                    last_seen[k] = ts
            if i % check_every == 0:
                res.stale_checks += 1
                gone_names = {names[k] for k, flag in enumerate(departed) if flag}
                res.stale_series += [f"poll {i}: {p}" for p in
                                     check_series(scrape(server.port), snap, gone_names)]
            res.polls += 1
            if res.polls == warmup:
                gc.collect()
                res.rss_warm, res.fds_warm = rss_bytes(), quiet_census(scraper_procs)
            if res.polls % max(1, polls // 10) == 0:
                res.rss_trace.append((res.polls, rss_bytes()))
            if progress and res.polls % max(1, polls // 20) == 0:
                progress(res)
            clock.now += STEP

        gc.collect()
        res.rss_end, res.fds_end = rss_bytes(), quiet_census(scraper_procs)
        res.processes_end = sum(1 for n in os.listdir("/proc") if n.isdigit())
        res.wall_seconds = time.monotonic() - wall0
        res.cpu_seconds = cpu_seconds() - cpu0
        res.host_forks = host_forks() - forks0
        res.fake_seconds = polls * STEP
        res.scrapes_served, res.scrape_errors = stop_scrapers(scraper_procs)
        scraper_procs = []
        deadline = time.monotonic() + 15
        while True:  # the server closes each connection after its response
            res.connections_left = fd_census().get("tcp-conn", 0)
            if res.connections_left == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.05)

        # RRD completeness: every file of our contexts, over the context's life.
        if daemon_addr:
            sink.flush()
        end = int(clock.now - STEP)
        lifetimes = {names[k]: (first_seen[k], last_seen[k])
                     for k in range(len(names)) if first_seen[k]}
        for name, (first, last) in sorted(lifetimes.items()):
            dirs = find_context_dir(rrd_dir, name)
            if not dirs:
                res.rrd_unknown.append(f"{name}: no RRD directory")
                continue
            # An archived context's files were flushed and forgotten by rrdcached.
            archived = f"{os.sep}{ARCHIVE_DIR}{os.sep}" in dirs[0]
            for kind in ALWAYS_KINDS:
                res.rrd_files_checked += 1
                problem = check_rrd(os.path.join(dirs[0], context_file_name(kind)), first, last, end,
                                    None if archived else daemon_addr)
                if problem:
                    res.rrd_unknown.append(problem)
        # Host interfaces there from the first poll to the last (others may come and
        # go on a shared host): over the whole run.
        for name in sorted(first_ifaces & {i.name for i in daemon.latest.host_interfaces}):
            res.rrd_files_checked += 1
            problem = check_rrd(rrd_path(rrd_dir, "host-if", interface=name), t0, end, end,
                                daemon_addr)
            if problem:
                res.rrd_unknown.append(problem)
        return res
    finally:
        # Also on an error, Ctrl-C or SIGTERM (main turns it into SystemExit): no
        # scraper outlives the soak. A SIGKILLed soak runs no finally; its scrapers
        # end themselves when their parent is gone (see SCRAPER).
        if scraper_procs:
            stop_scrapers(scraper_procs, wait=5.0)
        if server is not None:
            server.stop()
        if sink is not None:
            sink.close()
        if sampler is not None:
            sampler.close()
        for cg in reversed(cgroups):
            try:
                cg.remove()
            except (OSError, RuntimeError) as e:
                print(f"soak: cleanup: {e}", file=sys.stderr)
        if cached is not None:
            cached.stop()
        if own_tmp:
            shutil.rmtree(base, ignore_errors=True)


def report(r: SoakResult) -> str:
    mb = 2**20
    return "\n".join([
        f"polls:            {r.polls} in {r.wall_seconds:.0f} s wall, {r.cpu_seconds:.0f} s CPU "
        f"({r.fake_seconds / 86400:.1f} days of RRD time at {STEP} s a step; "
        f"RRD {'through rrdcached' if r.rrdcached else 'direct'})",
        f"contexts churned: {r.contexts_churned} cgroups created, populated, emptied and removed; "
        f"{r.host_forks} processes forked on the host meanwhile",
        f"scrapes served:   {r.scrapes_served} to {r.scrapers} scrapers, {r.scrape_errors} failed",
        f"RSS:              {r.rss_warm / mb:.1f} MB after {r.warmup_polls} polls of warm-up, "
        f"{r.rss_end / mb:.1f} MB at the end ({r.rss_growth / mb:+.2f} MB)",
        "RSS by polls:     " + ", ".join(f"{n}: {b / mb:.1f}" for n, b in r.rss_trace) + " MB",
        f"fds:              {r.steady_fds_warm} after the warm-up, {r.steady_fds_end} at the end "
        f"(besides {r.fds_warm.get('stat', 0)} -> {r.fds_end.get('stat', 0)} held "
        f"/proc/<pid>/stat files, one per live process: {r.processes_end} at the end); "
        f"{r.connections_left} connections left after the scrapers stopped",
        f"stale series:     {len(r.stale_series)} found in {r.stale_checks} checks",
        f"RRD:              {r.rrd_files_checked} files checked, "
        f"{len(r.rrd_unknown)} with unknown rows while their context ran; "
        f"{r.rrd_write_errors} updates failed",
        f"poll failures:    {r.poll_failures}",
    ])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--polls", type=int, default=10_000)
    p.add_argument("--warmup", type=int, default=None,
                   help="polls before the first RSS/fd figures (default a tenth, at least 100)")
    p.add_argument("--scrapers", type=int, default=10)
    p.add_argument("--scrape-pause", type=float, default=0.0,
                   help="seconds each scraper waits between scrapes (default 0: hammer)")
    p.add_argument("--churn-every", type=int, default=10,
                   help="a new context every N polls (default 10)")
    p.add_argument("--live", type=int, default=8, help="churned contexts up at once (default 8)")
    p.add_argument("--rrdcached", action="store_true", help="write through a private rrdcached")
    p.add_argument("--json", action="store_true", help="print the figures as JSON too")
    p.add_argument("--workdir", help="folder for the RRD files (default: a temporary one)")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        p.error("run as root: the soak makes cgroups")

    def on_term(signum, _frame):  # SIGTERM (a test's time limit, kill): clean up first
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)

    def progress(r: SoakResult) -> None:
        print(f"  {r.polls} polls, {r.contexts_churned} contexts churned", file=sys.stderr)

    r = run_soak(args.polls, args.warmup, args.scrapers, args.scrape_pause, args.churn_every,
                 args.live, args.rrdcached, workdir=args.workdir, progress=progress)
    print(report(r))
    if args.json:
        print(json.dumps({**asdict(r), "rss_growth": r.rss_growth,
                          "steady_fds_warm": r.steady_fds_warm,
                          "steady_fds_end": r.steady_fds_end, "problems": r.problems()},
                         indent=1))
    problems = r.problems()
    for line in problems:
        print("FAILED: " + line)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
