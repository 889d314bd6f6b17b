"""Hostile HTTP clients against a real `ctxmon run`, and the password checks.

The attackers come from other loopback addresses than the scraper (127.0.0.2,
127.0.0.3 ...), as they would from other hosts; each attack is bounded in time. The
scraper's p50/p99 under each attack are measured in benchmarks/http_bench.py.
"""

from __future__ import annotations

import http.client
import logging
import os
import shutil
import ssl
import subprocess
import threading
import time

import pytest
from daemonproc import free_port
from httpclients import (attacker_address, basic, connect_from, exchange, flood, guess, hold,
                         make_certificate, rss_kib, stall_tls)
from test_faults import toml_str, vserver_tree, write_config

from exporters.http import HEAD_LIMIT, BasicAuth, LoginThrottle, MetricsServer, client_key

bcrypt = pytest.importorskip("bcrypt")

PASSWORD = "scrape-me-9f8e7d"


def config(tmp_path, port: int, exporter: str = "") -> str:
    """A daemon on a VServer fixture tree (fixed contexts: nobody else's cgroups)."""
    return write_config(tmp_path / "ctxmon.toml", tmp_path / "rrd", port=port,
                        source="vserver", proc_root=vserver_tree(tmp_path), exporter=exporter,
                        step="10s")  # small RRD files: the disk is shared


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    return make_certificate(str(tmp_path_factory.mktemp("tls")))


class Scraper(threading.Thread):
    """The legitimate client: a scrape every `pause` s on its own connection from
    127.0.0.1, each given `timeout` s; counts what it got."""

    def __init__(self, port: int, *, tls: ssl.SSLContext | None = None,
                 headers: dict | None = None, pause: float = 0.1, timeout: float = 2.0):
        super().__init__(daemon=True)
        self.port, self.tls, self.headers = port, tls, headers or {}
        self.pause, self.timeout = pause, timeout
        self.stop = threading.Event()
        self.ok = 0
        self.failed: list[str] = []

    def scrape(self) -> int:
        if self.tls is not None:
            conn = http.client.HTTPSConnection("127.0.0.1", self.port, timeout=self.timeout,
                                               context=self.tls)
        else:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
        try:
            conn.request("GET", "/metrics", headers=self.headers)
            r = conn.getresponse()
            body = r.read()
            return r.status if b"ctxmon_polls_total" in body or r.status != 200 else -1
        finally:
            conn.close()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                status = self.scrape()
                if status == 200:
                    self.ok += 1
                else:
                    self.failed.append(str(status))
            except (OSError, http.client.HTTPException) as e:
                self.failed.append(type(e).__name__)
            self.stop.wait(self.pause)

    def finish(self) -> float:
        self.stop.set()
        self.join()
        total = self.ok + len(self.failed)
        assert total >= 5, (self.ok, self.failed)
        return self.ok / total


def run_attack(attack, n: int, seconds: float) -> list[threading.Thread]:
    stop = threading.Event()
    threads = [threading.Thread(target=attack, args=(i, stop), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join(timeout=15)
    assert not any(t.is_alive() for t in threads)
    return threads


# --------------------------------------------------------------------------- header flood

def test_header_flood_of_120_clients_costs_under_20_mb_and_it_comes_back(tmp_path, daemons):
    d = daemons(config(tmp_path, free_port()), tmp_path / "daemon.log")
    d.wait_for_metrics()
    for _ in range(20):  # warm: the server's buffers and the exposition are made
        d.metrics()
    time.sleep(1)
    base = rss_kib(d.proc.pid)
    peak = [base]
    sent = [0]
    stop_sampling = threading.Event()

    def sample():
        while not stop_sampling.wait(0.02):
            peak[0] = max(peak[0], rss_kib(d.proc.pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    scraper = Scraper(d.port, pause=0.2, timeout=5)
    scraper.start()
    # 99 headers of 64 KB each, held open; again 0.5 s after the server hangs up
    run_attack(lambda i, stop: flood(attacker_address(i), d.port, stop, sent), 120, 8)
    success = scraper.finish()
    # Back down once the attack is over (freed memory returned to the system).
    deadline = time.monotonic() + 10
    while rss_kib(d.proc.pid) > base + 2 * 1024 and time.monotonic() < deadline:
        time.sleep(0.2)
    stop_sampling.set()
    sampler.join()
    after = rss_kib(d.proc.pid)
    print(f"RSS {base / 1024:.1f} MB, peak {peak[0] / 1024:.1f} MB, after {after / 1024:.1f} MB;"
          f" {sent[0] / 2**20:.0f} MB of headers sent; scrapes {success:.0%}")
    assert sent[0] > 120 * 64 * 1024  # the attack did send
    assert peak[0] - base < 20 * 1024, (base, peak[0])
    assert after <= base + 2 * 1024, (base, after)
    assert success >= 0.95, scraper.failed[:10]
    assert d.stop() == 0


def test_head_bound_is_64_kib_in_all_and_over_it_is_431(tmp_path):
    srv = MetricsServer("127.0.0.1:0", registry=_registry())
    srv.start()
    try:
        # 60 headers of 1.2 KB: each line short, fewer than 100, but 72 KB in all
        many = b"GET /metrics HTTP/1.0\r\n" + (b"X-Part: " + b"p" * 1200 + b"\r\n") * 60 + b"\r\n"
        assert len(many) > HEAD_LIMIT
        assert exchange(srv.port, many).startswith(b"HTTP/1.0 431 ")
        # just under the bound is served
        fits = b"GET /metrics HTTP/1.0\r\n" + (b"X-Part: " + b"p" * 1200 + b"\r\n") * 50 + b"\r\n"
        assert len(fits) < HEAD_LIMIT
        assert exchange(srv.port, fits).startswith(b"HTTP/1.0 200 ")
    finally:
        srv.stop()


def test_the_idle_loop_waits_long_and_a_connection_brings_the_deadline_turns_back():
    """Nobody connected: the event loop waits IDLE_WAIT a turn, not TURN (ten wake-ups
    a second were ~16 ms of CPU per 10 s poll); a connection holding a head brings
    the short turns back, so its deadlines are still checked, and a scrape from idle
    is answered."""
    import exporters.http

    srv = MetricsServer("127.0.0.1:0", registry=_registry())
    srv.start()
    waits: list[float] = []
    loop = srv._loop
    real = loop.sel

    class Recording:
        def __getattr__(self, name):
            return getattr(real, name)

        def select(self, timeout=None):
            waits.append(timeout)
            return real.select(timeout)

    loop.sel = Recording()
    held = None
    try:
        deadline = time.monotonic() + 5
        while len(waits) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert waits[1:3] == [exporters.http.IDLE_WAIT] * 2, waits[:10]
        held = connect_from(attacker_address(0), srv.port)
        held.sendall(b"GET /metrics HTTP/1.0\r\n")  # an unfinished head
        deadline = time.monotonic() + 5
        while exporters.http.TURN not in waits and time.monotonic() < deadline:
            time.sleep(0.05)
        assert exporters.http.TURN in waits, waits[-10:]
        held.close()
        held = None
        assert exchange(srv.port, b"GET /metrics HTTP/1.0\r\n\r\n").startswith(b"HTTP/1.0 200 ")
    finally:
        if held is not None:
            held.close()
        loop.sel = real
        srv.stop()


def test_heads_being_read_hold_a_bounded_memory_all_together(monkeypatch):
    import exporters.http

    monkeypatch.setattr(exporters.http, "HEAD_BUDGET", 100 * 1024)
    srv = MetricsServer("127.0.0.1:0", registry=_registry())
    srv.start()
    held = []
    try:
        # two unfinished 40 KB heads fit in 100 KiB; the third does not: 503 for it
        part = b"GET /metrics HTTP/1.0\r\n" + (b"X-Part: " + b"p" * 1000 + b"\r\n") * 40
        for i in range(2):
            s = connect_from(attacker_address(i), srv.port)
            s.sendall(part)
            held.append(s)
        time.sleep(0.3)
        with connect_from(attacker_address(2), srv.port) as third:
            third.sendall(part)
            assert third.recv(100).startswith(b"HTTP/1.0 503 ")
        held[0].sendall(b"\r\n")  # a held one finishes its head: served
        reply = b""
        while chunk := held[0].recv(65536):
            reply += chunk
        assert reply.startswith(b"HTTP/1.0 200 ")
    finally:
        for s in held:
            s.close()
        srv.stop()


def _registry():
    from prometheus_client import CollectorRegistry, Counter

    reg = CollectorRegistry()
    Counter("ctxmon_polls", "polls", registry=reg).inc()
    return reg


# --------------------------------------------------------------------------- slow clients


def test_200_reconnecting_slowloris_clients_leave_the_scraper_95_percent(tmp_path, daemons):
    d = daemons(config(tmp_path, free_port()), tmp_path / "daemon.log")
    d.wait_for_metrics()
    lock = threading.Lock()
    open_now = [0]
    most_open = [0]
    lifetimes: list[float] = []

    def slowloris(i: int, stop: threading.Event):
        # 10 per address from 20 addresses; a header byte every 0.5 s, never finished.
        while not stop.is_set():
            try:
                s = connect_from(attacker_address(i % 20), d.port)
            except OSError:
                stop.wait(0.05)
                continue
            opened = time.monotonic()
            with lock:
                open_now[0] += 1
                most_open[0] = max(most_open[0], open_now[0])
            try:
                s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
                hold(s, stop, b"X")
                if not stop.is_set():
                    lifetimes.append(time.monotonic() - opened)
            except OSError:
                lifetimes.append(time.monotonic() - opened)
            finally:
                with lock:
                    open_now[0] -= 1
                s.close()

    scraper = Scraper(d.port)
    scraper.start()
    run_attack(slowloris, 200, 9)
    success = scraper.finish()
    print(f"slowloris: {most_open[0]} open at most, cut after {max(lifetimes):.1f} s at most;"
          f" scrapes {success:.1%} ({scraper.ok} ok, {len(scraper.failed)} failed)")
    assert most_open[0] >= 180  # the attack did hold its connections
    assert lifetimes and max(lifetimes) < 8  # cut at the 5 s head deadline
    assert success >= 0.95, scraper.failed[:10]
    assert d.stop() == 0


def test_140_stalled_tls_hellos_leave_the_scraper_95_percent(tmp_path, daemons, certificate):
    cert, key = certificate
    port = free_port()
    d = daemons(config(tmp_path, port, f"tls_cert = {toml_str(cert)}\ntls_key = {toml_str(key)}"),
                tmp_path / "daemon.log")
    tls = ssl.create_default_context(cafile=cert)
    d.wait_for_log("serving metrics on https://")
    held = [0]

    scraper = Scraper(port, tls=tls)
    scraper.start()
    # the start of a ClientHello, never finished; again when the server hangs up
    run_attack(lambda i, stop: stall_tls(attacker_address(i), port, stop, held), 140, 9)
    success = scraper.finish()
    print(f"TLS stall: {held[0]} stalled hellos; scrapes {success:.1%}"
          f" ({scraper.ok} ok, {len(scraper.failed)} failed)")
    assert held[0] >= 140
    assert success >= 0.95, scraper.failed[:10]
    assert d.stop() == 0


def test_servers_started_and_stopped_leave_no_fd_or_thread(certificate):
    def fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    users = {"prom": bcrypt.hashpw(b"x", bcrypt.gensalt(rounds=4)).decode()}
    cert, key = certificate
    for kw in ({}, {"basic_auth": users, "tls_cert": cert, "tls_key": key}):
        srv = MetricsServer("127.0.0.1:0", registry=_registry(), **kw)
        srv.start()
        srv.stop()
    fds0, threads0 = fds(), threading.active_count()
    for i in range(20):
        srv = MetricsServer("127.0.0.1:0", registry=_registry(), basic_auth=users,
                            **({"tls_cert": cert, "tls_key": key} if i % 2 else {}))
        srv.start()
        idle = connect_from("127.0.0.2", srv.port)  # one held open across the stop
        srv.stop()
        idle.close()
    deadline = time.monotonic() + 5
    # no more than before (threads of earlier tests may end meanwhile)
    while fds() > fds0 or threading.active_count() > threads0:
        assert time.monotonic() < deadline, (fds() - fds0, threading.active_count() - threads0)
        time.sleep(0.05)


def test_a_client_is_its_ipv4_address_or_its_ipv6_64():
    assert client_key("127.0.0.2") == "127.0.0.2"
    assert client_key("::ffff:10.1.2.3") == "10.1.2.3"  # IPv4 on a dual-stack socket
    assert client_key("2001:db8:1:2::1") == client_key("2001:db8:1:2:ffff::9") \
        == "2001:db8:1:2::/64"
    assert client_key("2001:db8:1:3::1") != client_key("2001:db8:1:2::1")
    assert client_key("fe80::1%eth0") == "fe80::/64"


def test_connections_are_capped_per_client_address_too():
    srv = MetricsServer("127.0.0.1:0", registry=_registry(), max_per_client=4,
                        max_connections=64)
    srv.start()
    held = []
    try:
        held = [connect_from("127.0.0.2", srv.port) for _ in range(4)]
        time.sleep(0.3)  # accepted and counted
        with connect_from("127.0.0.2", srv.port) as fifth:
            fifth.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
            assert fifth.recv(100).startswith(b"HTTP/1.0 503 ")
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5)
        conn.request("GET", "/metrics")
        assert conn.getresponse().status == 200  # another address is served
        conn.close()
    finally:
        for s in held:
            s.close()
        srv.stop()


# --------------------------------------------------------------------------- passwords


def test_32_guessers_are_throttled_and_password_checks_take_at_most_half_a_core(
        tmp_path, daemons):
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=10)).decode()
    port = free_port()
    d = daemons(config(tmp_path, port, f"[exporter.basic_auth]\nprom = {toml_str(hashed)}"),
                tmp_path / "daemon.log")
    good = {"Authorization": basic("prom", PASSWORD)}
    d.wait_for_log("serving metrics on http://")
    scraper = Scraper(port, headers=good, pause=0.05, timeout=5)
    assert scraper.scrape() == 200  # the right password, remembered from now on
    statuses: dict[int, int] = {}
    lock = threading.Lock()

    def guesser(i: int, stop: threading.Event):
        n = 0
        while not stop.is_set():
            n += 1
            status = guess(attacker_address(i), port, f"guess-{i}-{n}")
            with lock:
                statuses[status] = statuses.get(status, 0) + 1

    def cpu() -> float:
        with open(f"/proc/{d.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    scraper.start()
    cpu0, t0 = cpu(), time.monotonic()
    run_attack(guesser, 32, 8)
    share = (cpu() - cpu0) / (time.monotonic() - t0)
    success = scraper.finish()
    failed_lines = [ln for ln in d.text().splitlines() if "failed basic auth login" in ln]
    print(f"guessers: {statuses}; daemon CPU {share:.2f} cores; scrapes {success:.1%};"
          f" {len(failed_lines)} failed-login lines")
    # never let in, never an error (past the 10 s limit a waiting guesser is cut off)
    assert set(statuses) <= {401, 503, "RemoteDisconnected", "TimeoutError"}, statuses
    assert statuses.get(401, 0) + statuses.get(503, 0) > 0.9 * sum(statuses.values())
    assert sum(statuses.values()) > 32 * 3  # they did keep guessing (refusals take 1 s)
    # bcrypt at most half a core; polling and serving the scraper take the rest
    assert share < 0.8, share
    assert success == 1.0, scraper.failed[:10]
    # failed logins logged once per client per minute: at most a line for each guesser
    logged = [ln.split(" from ")[1].split()[0] for ln in failed_lines]
    assert len(logged) == len(set(logged)) >= 8, failed_lines[:3]
    assert set(logged) <= {attacker_address(i) for i in range(32)}
    assert d.stop() == 0


def test_password_checks_run_below_the_priority_of_serving():
    def lowered() -> set[str]:
        """This process's threads 10 nice levels below it (or at the bottom, 19)."""
        want = min(19, os.getpriority(os.PRIO_PROCESS, 0) + 10)
        out = set()
        for tid in os.listdir("/proc/self/task"):
            try:
                with open(f"/proc/self/task/{tid}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[16]) == want:
                        out.add(tid)
            except FileNotFoundError:  # a thread that just ended
                pass
        return out

    before = lowered()
    users = {"prom": bcrypt.hashpw(b"x", bcrypt.gensalt(rounds=4)).decode()}
    srv = MetricsServer("127.0.0.1:0", registry=_registry(), basic_auth=users)
    srv.start()
    try:
        deadline = time.monotonic() + 5
        while not lowered() - before:  # the new bcrypt thread
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        srv.stop()


def test_login_throttle_backs_off_per_client_and_logs_once_per_interval(caplog):
    now = [1000.0]
    t = LoginThrottle(clock=lambda: now[0])
    caplog.set_level(logging.WARNING, logger="ctxmon.http")
    for _ in range(LoginThrottle.FREE):  # typos are free
        assert t.begin("10.0.0.1") == 0
        assert t.begin("10.0.0.1") > 0  # but one check at a time
        t.end("10.0.0.1", False, "prom")
    assert t.begin("10.0.0.1") == 0
    t.end("10.0.0.1", False, "prom")
    assert t.begin("10.0.0.1") == pytest.approx(1.0)  # then 1 s, 2 s, 4 s ...
    assert t.begin("10.0.0.2") == 0  # another client is not held up
    t.end("10.0.0.2", True, "prom")
    now[0] += 1.0
    assert t.begin("10.0.0.1") == 0
    t.end("10.0.0.1", False, "prom")
    assert t.begin("10.0.0.1") == pytest.approx(2.0)
    for _ in range(20):  # the wait doubles up to CAP
        now[0] += 100
        assert t.begin("10.0.0.1") == 0
        t.end("10.0.0.1", False, "x\x1b[2J")
        assert 0 < t.begin("10.0.0.1") <= LoginThrottle.CAP
    assert t.begin("10.0.0.1") == LoginThrottle.CAP
    # logged once per client per interval (the first at 1000 s, then each 100 s
    # apart), the user name escaped
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 + 20, lines
    assert all("\x1b" not in ln for ln in lines)
    assert '"x\\u001b[2J"' in lines[-1] and "27 failed in a row" in lines[-1]
    now[0] += 61
    assert t.begin("10.0.0.1") == 0
    t.end("10.0.0.1", True, "prom")  # success starts afresh
    assert t.begin("10.0.0.1") == 0
    t.end("10.0.0.1", False, "prom")  # logged: 61 s since the last line
    assert t.begin("10.0.0.1") == 0
    t.end("10.0.0.1", False, "prom")  # within the interval: not logged
    assert len(caplog.records) == 22
    assert "1 failed in a row" in caplog.records[-1].getMessage()


def test_unknown_users_are_checked_at_the_highest_configured_cost():
    users = {"a": bcrypt.hashpw(b"x", bcrypt.gensalt(rounds=4)).decode(),
             "b": bcrypt.hashpw(b"y", bcrypt.gensalt(rounds=6)).decode()}
    auth = BasicAuth(users)
    assert auth._dummy.startswith(b"$2b$06$")
    assert not auth.verify("nobody", b"x") and not auth.check("nobody", "y")
    assert auth.verify("a", b"x") and auth.check("b", "y")


@pytest.mark.skipif(shutil.which("htpasswd") is None, reason="apache2-utils not installed")
def test_passwords_over_72_bytes_work_as_with_htpasswd(tmp_path, caplog):
    """htpasswd -B uses the first 72 bytes of a password; so does the server."""
    long_pw = "correct horse battery staple " * 3  # 87 bytes
    htfile = tmp_path / "htpasswd"
    subprocess.run(["htpasswd", "-cbB", "-C", "4", str(htfile), "prom", long_pw], check=True,
                   capture_output=True)
    hashed = htfile.read_text().strip().split(":", 1)[1]
    srv = MetricsServer("127.0.0.1:0", registry=_registry(), basic_auth={"prom": hashed})
    srv.start()
    try:
        def served(pw: str) -> bool:
            conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
            conn.request("GET", "/metrics", headers={"Authorization": basic("prom", pw)})
            status = conn.getresponse().status
            conn.close()
            assert status in (200, 401)
            return status == 200

        def htpasswd_accepts(pw: str) -> bool:
            r = subprocess.run(["htpasswd", "-vb", str(htfile), "prom", pw],
                               capture_output=True)
            return r.returncode == 0

        for pw in (long_pw, long_pw[:72], long_pw[:72] + "anything", long_pw[:71],
                   long_pw[:71] + "X" + long_pw[72:], "prom"):
            assert served(pw) == htpasswd_accepts(pw), pw
        assert served(long_pw) and served(long_pw[:72] + "tail") and not served(long_pw[:71])
    finally:
        srv.stop()
