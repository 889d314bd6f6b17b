#!/usr/bin/env python3
"""A scraper's latency while the HTTP endpoint is attacked, before vs after.

Runs a real `ctxmon run` (on the vs23 VServer fixture tree, so the host's own cgroups
do not matter) from two trees, in the same run:
- before: a baseline revision (default: main just before the event-loop server,
  987cf8b~1), exported with `git archive` into a temporary directory;
- after: this checkout.
Against each, a scraper on its own connections from 127.0.0.1 scrapes /metrics every
50 ms for --seconds, idle and under each attack; the attackers run in a child process
from 127.0.0.2, 127.0.0.3 ... :
- flood: 120 clients sending 99 headers of 64 KB each (held open, again 0.5 s after a
  hang-up); the daemon's RSS is sampled every 20 ms (the attack stops early when it
  passes --rss-cap, so the baseline cannot take the machine down);
- slowloris: 200 clients trickling a header byte every 0.5 s, reconnecting when cut;
- tls: 140 clients sending the start of a ClientHello and stalling (TLS daemon);
- guess: 32 clients guessing passwords as fast as they are answered (basic auth with
  one bcrypt cost-10 user; the scraper's credentials are remembered after its first
  scrape).
Printed: scrapes answered (share), p50 and p99 of the answered ones, and for the flood
the daemon's RSS before, at its peak and 3 s after. Medians over one run each; the
machine is shared, so compare the two columns of one run, not runs.

    .venv/bin/python benchmarks/http_bench.py [--seconds 10] [--baseline REV]
"""

from __future__ import annotations

import argparse
import http.client
import multiprocessing
import os
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(ROOT, "tests"))

# The attackers are the ones tests/test_http_attacks.py runs (one module for both).
from daemonproc import free_port  # noqa: E402
from httpclients import (attacker_address, basic, flood, guess, make_certificate,  # noqa: E402
                         rss_kib, slowloris, stall_tls)

PASSWORD = "bench-scrape-secret"


def rss_mb(pid: int) -> float:
    return rss_kib(pid) / 1024


# --------------------------------------------------------------------------- daemon


class Daemon:
    def __init__(self, tree: str, workdir: str, *, tls=None, auth_hash=None):
        self.port = free_port()
        proc_root = os.path.join(workdir, "vs23", "proc")
        if not os.path.exists(proc_root):
            shutil.copytree(os.path.join(ROOT, "tests", "fixtures", "vs23"),
                            os.path.join(workdir, "vs23"), symlinks=True)
        exporter = f'listen = "127.0.0.1:{self.port}"\n'
        if tls:
            exporter += f'tls_cert = "{tls[0]}"\ntls_key = "{tls[1]}"\n'
        if auth_hash:
            exporter += f'[exporter.basic_auth]\nprom = "{auth_hash}"\n'
        name = f"{os.path.basename(tree)}-{self.port}"
        cfg = os.path.join(workdir, f"{name}.toml")
        with open(cfg, "w") as f:
            f.write(f'[collector]\ninterval = "1s"\nsource = "vserver"\nproc_root = "{proc_root}"\n'
                    f'[rrd]\ndir = "{workdir}/rrd-{name}"\nstep = "60s"\n'
                    f'[graphs]\nenabled = false\n[exporter]\n{exporter}')
        env = dict(os.environ, PYTHONPATH=tree)
        self.log = open(os.path.join(workdir, f"{name}.log"), "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "ctxmon.cli", "run", "-c", cfg],
                                     cwd=tree, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        self.tls = ssl.create_default_context(cafile=tls[0]) if tls else None
        self.headers = {"Authorization": basic("prom", PASSWORD)} if auth_hash else {}
        deadline = time.monotonic() + 30
        while True:
            try:
                if scrape(self) is not None:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise SystemExit(f"daemon from {tree} did not serve; see {self.log.name}")
            time.sleep(0.2)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def scrape(d: Daemon, timeout: float = 5.0) -> float | None:
    """Seconds for one /metrics over a new connection; None when not answered 200."""
    t = time.perf_counter()
    if d.tls is not None:
        conn = http.client.HTTPSConnection("127.0.0.1", d.port, timeout=timeout, context=d.tls)
    else:
        conn = http.client.HTTPConnection("127.0.0.1", d.port, timeout=timeout)
    try:
        conn.request("GET", "/metrics", headers=d.headers)
        r = conn.getresponse()
        body = r.read()
        ok = r.status == 200 and b"ctxmon_polls_total" in body
    finally:
        conn.close()
    return time.perf_counter() - t if ok else None


# --------------------------------------------------------------------------- attacks
# (in a child process, so their threads do not take the scraper's GIL)


def _flood(i, port, stop):
    flood(attacker_address(i), port, stop)


def _slowloris(i, port, stop):
    slowloris(attacker_address(i % 20), port, stop)


def _tls_stall(i, port, stop):
    stall_tls(attacker_address(i), port, stop)


def _guess(i, port, stop):
    n = 0
    while not stop.is_set():
        n += 1
        if not isinstance(guess(attacker_address(i), port, f"g{i}-{n}"), int):
            stop.wait(0.05)


ATTACKS = {"flood": (_flood, 120), "slowloris": (_slowloris, 200), "tls": (_tls_stall, 140),
           "guess": (_guess, 32)}


def _attack_main(kind: str, port: int, stop_evt) -> None:
    fn, n = ATTACKS[kind]
    stop = threading.Event()
    threads = [threading.Thread(target=fn, args=(i, port, stop), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    stop_evt.wait()
    stop.set()
    for t in threads:
        t.join(timeout=10)


# --------------------------------------------------------------------------- measuring


def measure(d: Daemon, kind: str | None, seconds: float, rss_cap: float) -> dict:
    ctx = multiprocessing.get_context("fork")
    stop_evt = ctx.Event()
    attacker = None
    rss0 = rss_mb(d.proc.pid)
    peak = [rss0]
    capped = [False]
    sampling = threading.Event()

    def sample():
        while not sampling.wait(0.02):
            r = rss_mb(d.proc.pid)
            peak[0] = max(peak[0], r)
            if r > rss_cap and not capped[0]:
                capped[0] = True
                stop_evt.set()

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    if kind is not None:
        attacker = ctx.Process(target=_attack_main, args=(kind, d.port, stop_evt), daemon=True)
        attacker.start()
        time.sleep(2)  # the attack builds up
    times: list[float] = []
    failed = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end and not capped[0]:
        try:
            t = scrape(d)
        except (OSError, http.client.HTTPException):
            t = None
        if t is None:
            failed += 1
        else:
            times.append(t)
        time.sleep(0.05)
    stop_evt.set()
    if attacker is not None:
        attacker.join(20)
        if attacker.is_alive():
            attacker.kill()
    time.sleep(3)
    sampling.set()
    sampler.join()
    times.sort()
    n = len(times) + failed
    return {
        "ok": len(times) / n if n else 0.0,
        "p50": statistics.median(times) * 1000 if times else float("nan"),
        "p99": times[min(len(times) - 1, int(0.99 * len(times)))] * 1000 if times else float("nan"),
        "rss0": rss0, "peak": peak[0], "after": rss_mb(d.proc.pid), "capped": capped[0],
        "n": n,
    }


def baseline_tree(rev: str, workdir: str) -> str:
    tree = os.path.join(workdir, "before")
    os.makedirs(tree)
    archive = subprocess.run(["git", "-C", ROOT, "archive", rev], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", tree], input=archive, check=True)
    return tree


def fmt(r: dict) -> str:
    return f"{r['ok']:6.1%} {r['p50']:8.1f} {r['p99']:8.1f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=10.0, help="scraping per scenario")
    ap.add_argument("--baseline", default="987cf8b~1", help="git revision of 'before'")
    ap.add_argument("--rss-cap", type=float, default=1500.0,
                    help="MB of daemon RSS at which an attack is stopped early")
    ap.add_argument("--only", choices=["idle", *ATTACKS], action="append",
                    help="scenarios to run (default: all)")
    args = ap.parse_args()
    import bcrypt

    auth_hash = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=10)).decode()
    workdir = tempfile.mkdtemp(prefix="ctxmon-http-bench-")
    try:
        trees = {"before": baseline_tree(args.baseline, workdir), "after": ROOT}
        tls = make_certificate(workdir)
        plan = [  # (scenario, daemon kind, attack)
            ("idle", "plain", None), ("flood", "plain", "flood"),
            ("slowloris", "plain", "slowloris"), ("idle (TLS)", "tls", None),
            ("tls", "tls", "tls"), ("idle (auth)", "auth", None), ("guess", "auth", "guess"),
        ]
        if args.only:
            plan = [p for p in plan if p[0].split()[0] in args.only or p[2] in args.only]
        results: dict[tuple[str, str], dict] = {}
        for kind in ("plain", "tls", "auth"):
            for which, tree in trees.items():
                steps = [p for p in plan if p[1] == kind]
                if not steps:
                    continue
                d = Daemon(tree, workdir, tls=tls if kind == "tls" else None,
                           auth_hash=auth_hash if kind == "auth" else None)
                try:
                    for _ in range(20):  # warm: exposition made, credentials remembered
                        scrape(d)
                    time.sleep(1)
                    for scenario, _, attack in steps:
                        r = measure(d, attack, args.seconds, args.rss_cap)
                        results[(scenario, which)] = r
                        print(f"{which:6} {scenario:12} {fmt(r)}  (n={r['n']})", flush=True)
                        if attack == "flood":
                            print(f"       RSS {r['rss0']:.1f} -> peak {r['peak']:.1f}"
                                  f"{' (attack stopped at the cap)' if r['capped'] else ''}"
                                  f" -> {r['after']:.1f} MB 3 s after", flush=True)
                        time.sleep(6)  # the attack's connections time out
                finally:
                    d.stop()
        print(f"\nbaseline (before) = {args.baseline}; {args.seconds:.0f} s of scrapes every 50 ms "
              "per scenario; p50/p99 in ms of answered scrapes\n")
        print("| scenario | before: answered | p50 | p99 | after: answered | p50 | p99 |")
        print("|---|---|---|---|---|---|---|")
        for scenario, _, _ in plan:
            b, a = results.get((scenario, "before")), results.get((scenario, "after"))
            cells = []
            for r in (b, a):
                cells += ([f"{r['ok']:.1%}", f"{r['p50']:.1f}", f"{r['p99']:.1f}"] if r
                          else ["–"] * 3)
            print(f"| {scenario} | " + " | ".join(cells) + " |")
        for which in ("before", "after"):
            r = results.get(("flood", which))
            if r:
                print(f"header flood, {which}: RSS {r['rss0']:.1f} MB, peak {r['peak']:.1f} MB"
                      f" (+{r['peak'] - r['rss0']:.1f}){' capped' if r['capped'] else ''},"
                      f" {r['after']:.1f} MB 3 s after")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
