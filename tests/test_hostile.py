"""Hostile input through a running `ctxmon run`: context and interface names, and HTTP.

Names come from guests (cgroup directory names, VServer `name` files, interface names
in a network namespace), so they are made hostile here at their source: `/`, `..`,
control characters, quotes, HTML, very long strings, bytes that are not UTF-8. After
a real daemon run: every file written lies in the data folders under a safe name
that decodes back to the name, `promtool check metrics` passes the scrape, and the
pages `ctxmon graph` draws show the names as text, never as markup.

HTTP abuse against the daemon with basic auth (oversized headers, slowloris, path
traversal on /graphs/, wrong credentials) gets clear status codes while polling
goes on. Unit-level variants of each are in tests/test_prometheus.py,
tests/test_names.py and tests/test_graphs.py.
"""

from __future__ import annotations

import base64
import html.parser
import http.client
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.parse

import pytest
from daemonproc import POLLED, free_port
from test_faults import (
    add_guest,
    no_traceback,
    samples,
    scrape,
    toml_str,
    try_scrape,
    value,
    vserver_tree,
    wait_until,
    write_config,
)

from collector import build_source
from collector.sampler import Sampler
from exporters.names import MAX_LENGTH, decode_name, encode_name, is_truncated

SLEEP = ["sleep", "600"]
SAFE = re.compile(r"[A-Za-z0-9_.%~=-]+")

# Legal cgroup directory names (anything but `/`, NUL and newline), each hostile.
HOSTILE = [
    "...",
    "<img src=x onerror=alert(1)>",
    "q\"uote'back\\slash",
    "\x1b[31mred\x07\r\x01\x7f",
    "tab\there sp",
    b"caf\xe9-\xff\xfe".decode("utf-8", "surrogateescape"),  # not UTF-8
    "\u202eevil\u200b",  # bidi override, zero width
    "x%41~DCFF=0{1}",  # looks like the file name encoding, and a template field
    "L" * 240,
    "a\\x2f..\\x2fb",  # a systemd escape: the name holds "a/../b"
]


def expected_name(child: str, template: str) -> str:
    """The context name a rule gives: the template around the child's name, whose
    `\\xNN` escapes are systemd's (undone, as systemctl spells units)."""
    raw = child.encode("utf-8", "surrogateescape")
    raw = re.sub(rb"\\x([0-9a-fA-F]{2})", lambda m: bytes([int(m.group(1), 16)]), raw)
    return template.replace("{1}", raw.decode("utf-8", "surrogateescape"))


def label_of(name: str) -> str:
    """The Prometheus label value of a name: bytes that are not UTF-8 become U+FFFD."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace").replace("\0", "\ufffd")


def walk(root: str) -> set[str]:
    out = set()
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            out.add(os.path.join(dirpath, name))
    return out


def promtool_check(text: str) -> None:
    if shutil.which("promtool") is None:
        return
    r = subprocess.run(["promtool", "check", "metrics"], input=text.encode("utf-8"),
                       capture_output=True, timeout=30)
    assert (r.returncode, r.stdout, r.stderr) == (0, b"", b""), r


class Page(html.parser.HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def check_pages(graphs_dir: str, names: list[str]) -> None:
    """Every page: no markup from a name, every link inside the folder, and each name
    shown as text (as graphs.legend.display_name makes it readable)."""
    from graphs.legend import display_name

    root = os.path.realpath(graphs_dir)
    pages = sorted(p for p in walk(root) if p.endswith(".html"))
    assert pages
    shown = ""
    for path in pages:
        raw = open(path, encoding="utf-8").read()  # valid UTF-8, or this raises
        assert "<img src=x" not in raw and "<script" not in raw.lower(), path
        page = Page()
        page.feed(raw)
        for tag, attrs in page.tags:
            assert tag not in ("script", "iframe", "object", "embed"), (path, tag)
            assert not [a for a in attrs if a.startswith("on")], (path, tag, attrs)
            for attr in ("href", "src"):
                link = attrs.get(attr)
                if not link or link.startswith(("data:", "#")):
                    continue
                assert "://" not in link and not link.startswith("/"), (path, link)
                target = os.path.realpath(os.path.join(
                    os.path.dirname(path), urllib.parse.unquote(link.split("#")[0])))
                assert target == root or target.startswith(root + os.sep), (path, link)
                assert os.path.exists(target), (path, link)
        shown += "".join(page.text)
    for name in names:
        readable = display_name(name)
        if is_truncated(encode_name(name)):
            readable = readable[:20]  # pages name a long one by its folder: a prefix and …
        assert readable in shown, readable


def check_files(data: str, names: list[str]) -> None:
    """Every entry under the data folders has a safe name; each context's folder
    decodes back to its name (a long one to its prefix and an ellipsis)."""
    for path in walk(data):
        for part in os.path.relpath(path, data).split(os.sep):
            assert SAFE.fullmatch(part) and part not in (".", ".."), path
            # an encoded name (at most MAX_LENGTH) with a prefix and suffix: "net-...-month.png"
            assert len(part) <= MAX_LENGTH + len("net--month.png"), path
    decoded = {decode_name(n): n for n in os.listdir(os.path.join(data, "rrd", "ctx"))}
    for name in names:
        enc = encode_name(name)
        assert os.path.isfile(os.path.join(data, "rrd", "ctx", enc, "tasks.rrd")), name
        if is_truncated(enc):
            assert any(d.endswith("…") and name.startswith(d[:-1]) for d in decoded), name
        else:
            assert name in decoded, name


def run_graphs(cfg: str, tmp_path) -> None:
    env = dict(os.environ, MPLCONFIGDIR=str(tmp_path / "mpl"))
    # --force: the pages now, although the day graphs wait for their first 108 s row
    r = subprocess.run([sys.executable, "-m", "ctxmon.cli", "graph", "-c", cfg, "--period", "day", "--force"],
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr


# ------------------------------------------------------------------ context names


def test_hostile_cgroup_names_end_to_end(tmp_path, cgroup_factory, daemons):
    data = tmp_path / "a" / "b" / "c" / "data"  # deep, so a `..` escape would land in tmp_path
    rrd_dir, graphs_dir = data / "rrd", data / "graphs"
    plain = cgroup_factory(suffix=".hostile")
    framed = cgroup_factory(suffix=".hostile")
    frame = "../../{1}/..\\\"<b>"  # a template with its own `/`, `..`, quote and markup
    rules = (("regex", re.escape(plain.rel) + "/(.+)", "{1}"),
             ("regex", re.escape(framed.rel) + "/(.+)", frame))
    names = []
    for child in HOSTILE:
        cgroup_factory(name=child, parent=plain).spawn(SLEEP)
        names.append(expected_name(child, "{1}"))
    for child in HOSTILE[1:6]:
        cgroup_factory(name=child, parent=framed).spawn(SLEEP)
        names.append(expected_name(child, frame))
    assert len(set(names)) == len(names)

    port = free_port()
    cfg = write_config(tmp_path / "ctxmon.toml", rrd_dir, port=port, rules=rules)
    graphs_cfg = write_config(tmp_path / "graphs.toml", rrd_dir, port=port, rules=rules,
                              graphs_dir=str(graphs_dir))
    before = walk(str(tmp_path))
    d = daemons(cfg, tmp_path / "daemon.log")
    want = {label_of(n) for n in names}
    found = wait_until(lambda: (lambda t: t if t and want <= {dict(k[1]).get("context") for k in samples(t)}
                                else None)(try_scrape(port)), "every hostile context in /metrics",
                       daemon=d)
    promtool_check(found)
    d.wait_for_log(POLLED, count=d.text().count(POLLED) + 2)  # a second update of every file
    assert d.stop() == 0, d.text()
    no_traceback(d)
    run_graphs(graphs_cfg, tmp_path)

    new = walk(str(tmp_path)) - before
    allowed = (str(rrd_dir), str(graphs_dir), str(tmp_path / "mpl"), str(tmp_path / "daemon.log"))
    outside = [p for p in new if not p.startswith(allowed) and not str(data).startswith(p)]
    assert outside == []
    check_files(str(data), names)
    check_pages(str(graphs_dir), names)


def test_hostile_vserver_names_and_interfaces_end_to_end(tmp_path, daemons):
    """A VServer tree whose guest names its config dir's `name` file holds, and whose
    `net/dev` lists interfaces whose names are hostile."""
    proc = vserver_tree(tmp_path)
    root = os.path.dirname(proc)
    guests = {
        40011: b"<script>alert('x')</script>",
        40012: b"../../../../etc/passwd",
        40013: b"\x1b]0;pwned\x07 \"q\" \\ caf\xe9 \xff\n2nd line ignored",
        40014: b"&amp;&#60;" + b"W" * 800,
    }
    names = []
    for n, (xid, raw) in enumerate(guests.items()):
        add_guest(proc, xid, 5000 + n)
        cfgdir = os.path.join(root, "etc", "vservers", f"guest{n}")
        os.makedirs(cfgdir)
        with open(os.path.join(cfgdir, "run"), "w") as f:
            f.write(f"{xid}\n")
        with open(os.path.join(cfgdir, "name"), "wb") as f:
            f.write(raw)
        # util-vserver's reading: the first line, bytes that are not UTF-8 replaced
        names.append(raw.split(b"\n")[0].decode("utf-8", "replace"))
    # As net/dev holds them, bytes: the last one UTF-8 with a byte that is not, and long.
    raw_ifaces = [b"../../x", b"a/b", b"<i>if\"'&", b"\x1b[7m", "é".encode() + b"\xff" + b"N" * 200]
    ifaces = [r.decode("utf-8", "surrogateescape") for r in raw_ifaces]
    dev = os.path.join(proc, "net", "dev")
    with open(dev, "rb") as f:
        lines = f.read().splitlines(keepends=True)
    for i, raw in enumerate(raw_ifaces):
        counters = " ".join(str(1000 * i + k) for k in range(16))
        lines.append(raw + b": " + counters.encode() + b"\n")
    with open(dev, "wb") as f:
        f.writelines(lines)

    data = tmp_path / "a" / "b" / "c" / "data"
    rrd_dir, graphs_dir = data / "rrd", data / "graphs"
    port = free_port()
    cfg = write_config(tmp_path / "ctxmon.toml", rrd_dir, port=port, source="vserver",
                       proc_root=proc)
    graphs_cfg = write_config(tmp_path / "graphs.toml", rrd_dir, port=port, source="vserver",
                              proc_root=proc, graphs_dir=str(graphs_dir))
    before = walk(str(tmp_path))
    d = daemons(cfg, tmp_path / "daemon.log")
    d.wait_for_log(POLLED, count=3)
    text = wait_until(lambda: try_scrape(port), "/metrics", daemon=d)
    promtool_check(text)
    found = samples(text)
    labels = {dict(k[1]).get("context") for k in found}
    assert {label_of(n) for n in names} <= labels
    devices = {dict(k[1]).get("device") for k in found if k[0] == "ctxmon_network_receive_bytes_total"}
    assert {label_of(i) for i in ifaces} <= devices, devices
    assert d.stop() == 0
    no_traceback(d)
    run_graphs(graphs_cfg, tmp_path)

    new = walk(str(tmp_path)) - before
    allowed = (str(rrd_dir), str(graphs_dir), str(tmp_path / "mpl"), str(tmp_path / "daemon.log"))
    assert [p for p in new if not p.startswith(allowed) and not str(data).startswith(p)] == []
    check_files(str(data), names)
    check_pages(str(graphs_dir), names + ifaces)
    host_files = os.listdir(os.path.join(str(rrd_dir), "host"))
    for name in ifaces:
        assert f"if-{encode_name(name)}.rrd" in host_files, (name, host_files)


def test_odd_interface_names_in_a_network_namespace(tmp_path, cgroup_factory, daemons):
    """A context in its own network namespace with veth pairs named with odd but legal
    characters (the kernel refuses `/`, `:`, `%`, blanks; names are up to 15 bytes)."""
    if shutil.which("ip") is None or shutil.which("unshare") is None:
        pytest.skip("needs ip and unshare")
    odd = [b"<i>\"&'\\`", b"..x\xff\x1b", b"$(id)v", b"\x01-..", b"v-.", b"v\xe2\x80\xaeX"]
    script = ("set -e; ip link add \"$1\" type veth peer name \"$2\"; "
              "ip link add \"$3\" type veth peer name \"$4\"; "
              "ip link add \"$5\" type veth peer name \"$6\"; "
              "for n in \"$@\"; do ip link set \"$n\" up; done; echo ready; exec sleep 600")
    cg = cgroup_factory()
    p = cg.spawn([b"unshare", b"-n", b"sh", b"-c", script.encode(), b"sh", *odd],
                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    line = p.stdout.readline()
    if line.strip() != b"ready":
        pytest.skip(f"cannot make veth pairs here: {p.stderr.read(300)!r}")
    context = os.path.basename(cg.rel)
    data = tmp_path / "data"
    port = free_port()
    cfg = write_config(tmp_path / "ctxmon.toml", data / "rrd", port=port)
    d = daemons(cfg, tmp_path / "daemon.log")

    def series():
        text = try_scrape(port)
        if text is None:
            return None
        found = samples(text)
        got = {dict(k[1])["interface"] for k in found
               if k[0] == "ctxmon_context_network_receive_bytes_total"
               and dict(k[1]).get("context") == context}
        return got if len(got) == len(odd) + 1 else None  # and lo

    got = wait_until(series, "the namespace's interfaces in /metrics", daemon=d)
    assert got == {"lo"} | {label_of(n.decode("utf-8", "surrogateescape")) for n in odd}, got
    promtool_check(scrape(port))
    d.wait_for_log(POLLED, count=d.text().count(POLLED) + 2)
    assert d.stop() == 0
    no_traceback(d)
    files = os.listdir(os.path.join(str(data), "rrd", "ctx", encode_name(context)))
    nets = [f for f in files if f.startswith("net-")]
    assert len(nets) == len(odd) + 1, files
    for f in nets:
        assert SAFE.fullmatch(f), f
        decode_name(f[len("net-"):-len(".rrd")])  # ours: decodes


# ------------------------------------------------------------------ odd trees: bugs


def test_a_proc_entry_of_non_ascii_digits_is_skipped(tmp_path):
    proc = vserver_tree(tmp_path)
    os.mkdir(os.path.join(proc, "²"))
    sampler = Sampler(build_source("vserver", proc_root=proc), proc)
    try:
        snap = sampler.sample()
    finally:
        sampler.close()
    portal = snap.context("customer-portal-staging-01")
    assert portal is not None and (portal.xid, portal.processes) == (40002, 2)
    assert len(snap.contexts) == 4  # the odd entry made no context


def test_a_proc_virtual_entry_of_non_ascii_digits_is_skipped(tmp_path):
    proc = vserver_tree(tmp_path)
    os.mkdir(os.path.join(proc, "virtual", "²"))
    sampler = Sampler(build_source("vserver", proc_root=proc), proc)
    try:
        snap = sampler.sample()
    finally:
        sampler.close()
    portal = snap.context("customer-portal-staging-01")
    assert portal is not None and (portal.xid, portal.processes) == (40002, 2)
    assert len(snap.contexts) == 4  # the odd entry made no context


def test_an_interface_named_in_utf8_keeps_its_name(tmp_path):
    proc = vserver_tree(tmp_path)
    with open(os.path.join(proc, "net", "dev"), "ab") as f:
        f.write("café".encode() + b": " + b" ".join(b"1" for _ in range(16)) + b"\n")
    sampler = Sampler(build_source("vserver", proc_root=proc), proc)
    try:
        snap = sampler.sample()
    finally:
        sampler.close()
    assert "café" in {i.name for i in snap.host_interfaces}


# --------------------------------------------------------------------------- HTTP

SECRET = "ctxmon-test-secret-9f8e7d"


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def request(port: int, path: str, headers: dict | None = None) -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        conn.putrequest("GET", path, skip_accept_encoding=True)  # the path as it is
        for k, v in (headers or {}).items():
            conn.putheader(k, v)
        conn.endheaders()
        r = conn.getresponse()
        return r.status, dict(r.getheaders()), r.read()
    finally:
        conn.close()


def raw_exchange(port: int, data: bytes) -> bytes | None:
    """The server's reply to `data`; None if it reset the connection before replying
    (it may refuse a request while the client is still sending it)."""
    reply = b""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        try:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
            while chunk := s.recv(65536):
                reply += chunk
        except (ConnectionResetError, BrokenPipeError):
            return reply or None
    return reply


TRAVERSALS = [
    "/graphs/../secret.txt", "/graphs/%2e%2e/secret.txt", "/graphs/..%2fsecret.txt",
    "/graphs/%2e%2e%2fsecret.txt", "/graphs/%252e%252e%252fsecret.txt",
    "/graphs/..%5csecret.txt", "/graphs//etc/passwd", "/graphs/%2fetc%2fpasswd",
    "/graphs/leak.html", "/graphs/sub/../../secret.txt", "/graphs/.ctxmon-graphs-state.json",
    "/graphs/%00", "/graphs/index.html%00.png", "/graphs/%ff%fe", "/../secret.txt",
    "/graphs/ctx/../../secret.txt",
]


def test_http_abuse_against_a_running_daemon(tmp_path, daemons, monkeypatch):
    bcrypt = pytest.importorskip("bcrypt")
    password = "right horse battery"
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=8)).decode()
    good = {"Authorization": basic("prom", password)}
    graphs_dir = tmp_path / "graphs"
    (graphs_dir / "sub").mkdir(parents=True)
    (graphs_dir / "index.html").write_text("<!DOCTYPE html><p>graphs</p>\n")
    (graphs_dir / "sub" / "page.html").write_text("<p>sub</p>\n")
    (graphs_dir / ".ctxmon-graphs-state.json").write_text(SECRET)
    (tmp_path / "secret.txt").write_text(SECRET)
    os.symlink(tmp_path / "secret.txt", graphs_dir / "leak.html")
    monkeypatch.setenv("MPLCONFIGDIR", str(tmp_path / "mpl"))  # the daemon's renderer
    port = free_port()
    proc = vserver_tree(tmp_path)  # fixed contexts: the test does not depend on the host
    cfg = write_config(tmp_path / "ctxmon.toml", tmp_path / "rrd", port=port, source="vserver",
                       proc_root=proc, graphs_dir=str(graphs_dir),
                       exporter=f"[exporter.basic_auth]\nprom = {toml_str(hashed)}")
    d = daemons(cfg, tmp_path / "daemon.log")
    d.wait_for_log(POLLED, count=2)

    problems: list[str] = []
    polls: list[float] = []
    stop = threading.Event()

    def expect(what: str, ok: bool) -> None:
        if not ok:
            problems.append(what)

    def monitor():  # the legitimate scraper, all along
        while not stop.is_set():
            status, _, body = request(port, "/metrics", good)
            expect(f"/metrics with the right password: {status}", status == 200)
            if status == 200:
                polls.append(value(samples(body.decode()), "ctxmon_last_poll_timestamp_seconds"))
            stop.wait(0.5)

    def brute_force():
        creds = [basic("prom", "wrong"), basic("admin", password), basic("prom", ""),
                 basic("prom", password + "x"), "Basic !!!", "Bearer x", "Basic " + "A" * 5000,
                 basic("prom", "p" * 200)]
        n = 0
        while not stop.is_set():
            header = creds[n % len(creds)]
            n += 1
            status, headers, body = request(port, "/metrics", {"Authorization": header})
            expect(f"wrong credentials {header[:30]!r}: {status}",
                   status == 401 and "WWW-Authenticate" in headers and b"ctxmon_" not in body)
            status, headers, _ = request(port, "/graphs/index.html")  # none at all
            expect(f"no credentials: {status}", status == 401)

    def oversized():
        junk = [
            (b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 70000 + b"\r\n\r\n", (431, 400)),
            (b"GET /metrics HTTP/1.1\r\n" + b"X-Many: 1\r\n" * 150 + b"\r\n", (431,)),
            (b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n", (414,)),
        ]
        while not stop.is_set():
            for data, statuses in junk:
                reply = raw_exchange(port, data)
                if reply is None:
                    continue  # refused mid-send: nothing served either
                status = int(reply.split()[1]) if reply.startswith(b"HTTP/") else None
                expect(f"oversized request: {reply[:40]!r}",
                       status in statuses and b"ctxmon_" not in reply)
            stop.wait(0.2)

    def traversal():
        while not stop.is_set():
            for path in TRAVERSALS:
                status, _, body = request(port, path, good)
                expect(f"{path}: {status}", status == 404 and SECRET.encode() not in body)
            status, _, body = request(port, "/graphs/sub/page.html", good)
            expect(f"a page inside: {status}", status == 200)
            stop.wait(0.2)

    slow_closed: list[float] = []

    def slowloris(i: int):
        s = socket.create_connection(("127.0.0.1", port), timeout=30)
        opened = time.monotonic()
        try:
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
            s.settimeout(0.3)
            while time.monotonic() - opened < 20:
                try:
                    s.send(b"X")  # a header that never ends
                    if s.recv(4096) == b"":
                        break
                except (socket.timeout, TimeoutError):
                    continue
                except OSError:
                    break
            slow_closed.append(time.monotonic() - opened)
        finally:
            s.close()

    polls_before = value(samples(request(port, "/metrics", good)[2].decode()), "ctxmon_polls_total")
    threads = [threading.Thread(target=f) for f in (monitor, brute_force, oversized, traversal)]
    slow = [threading.Thread(target=slowloris, args=(i,)) for i in range(20)]
    started = time.monotonic()
    for t in threads + slow:
        t.start()
    for t in slow:
        t.join()
    stop.set()
    for t in threads:
        t.join()
    attack = time.monotonic() - started

    assert problems == [], sorted(set(problems))[:10]
    # The server cut every slow client at its 10 s limit, however it trickled.
    assert len(slow_closed) == 20 and max(slow_closed) < 16, slow_closed
    # Polling went on: the last poll time kept advancing all along.
    distinct = sorted(set(p for p in polls if p))
    assert len(distinct) >= attack / 2, (attack, distinct)
    gaps = [b - a for a, b in zip(distinct, distinct[1:])]
    assert max(gaps) < 4, gaps
    polls_after = value(samples(request(port, "/metrics", good)[2].decode()), "ctxmon_polls_total")
    assert polls_after - polls_before >= attack / 2
    assert d.proc.poll() is None
    # Clients cut off mid-response are logged at debug level only, as routine.
    no_traceback(d)
    assert d.stop() == 0
