"""The Prometheus collector and its HTTP server, on synthetic snapshots.

The exposition is read back with prometheus_client's own text parser, and the HTTP
server is spoken to over real loopback sockets (plain, TLS, basic auth, and clients
that misbehave). The real Prometheus is in test_prometheus_server.py.
"""

from __future__ import annotations

import base64
import gzip
import http.client
import os
import shutil
import socket
import ssl
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import prometheus_client
import pytest
from httpclients import basic as basic_header
from httpclients import exchange, make_certificate
from prometheus_client.parser import text_string_to_metric_families

from collector.snapshot import (
    ContextSample,
    InterfaceSample,
    LimitRow,
    Snapshot,
    SocketAccounting,
)
from exporters.http import GzipPrefixCache, MetricsServer, accepts_gzip, parse_listen
from exporters.prometheus import (
    FAMILIES,
    OTHER,
    SelfMetrics,
    SnapshotCollector,
    build_registry,
    label_value,
)

# --------------------------------------------------------------------------- helpers


def ctx(name: str, ctx_id: str = "1", key: str | None = None, user: float = 0.0,
        system: float = 0.0, **kw) -> ContextSample:
    fields = dict(
        key=key if key is not None else f"/{name}", name=name, ctx_id=ctx_id,
        source="cgroup", processes=1, threads=1, vsz_bytes=0, rss_bytes=0,
        cpu_user_seconds=user, cpu_system_seconds=system, cpu_accounting="kernel",
        live_user_seconds=user, live_system_seconds=system, start_time=None,
        uptime_seconds=None, first_process_start=None,
    )
    fields.update(kw)
    return ContextSample(**fields)


def snap(*contexts: ContextSample, t: float = 1000.0, **kw) -> Snapshot:
    fields = dict(timestamp=t, duration_seconds=0.01, source="cgroup", contexts=contexts,
                  host_interfaces=(), host_uptime_seconds=100.0)
    fields.update(kw)
    return Snapshot(**fields)


def iface(name: str, *values: int) -> InterfaceSample:
    return InterfaceSample(name, *values)


class Holder:
    """What the daemon does: the latest snapshot, swapped by the poll."""

    def __init__(self, s: Snapshot | None = None, me: SelfMetrics | None = None):
        self.snapshot = s
        self.me = me or SelfMetrics()
        self.fetches = 0

    def get(self) -> Snapshot | None:
        self.fetches += 1
        return self.snapshot

    def collector(self, **kw) -> SnapshotCollector:
        return SnapshotCollector(self.get, lambda: self.me, version="9.8.7", **kw)


def exposition(collector: SnapshotCollector) -> str:
    reg = prometheus_client.CollectorRegistry()
    reg.register(collector)
    return prometheus_client.generate_latest(reg).decode("utf-8")


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    """(sample name, label items) -> value, through prometheus_client's parser."""
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            k = (s.name, frozenset(s.labels.items()))
            assert k not in out, f"duplicate series {k}"
            out[k] = s.value
    return out


def types(text: str) -> dict[str, str]:
    return {f.name: f.type for f in text_string_to_metric_families(text)}


def value(found: dict, name: str, **labels) -> float:
    return found[(name, frozenset(labels.items()))]


def series_of(found: dict, context: str) -> list:
    return [k for k in found if ("context", context) in k[1]]


# --------------------------------------------------------------------------- content


FULL = ctx(
    "web", ctx_id="42", key="42", source="vserver", xid=42, user=12.5, system=3.25,
    processes=7, threads=19, vsz_bytes=123456789, rss_bytes=4567890,
    start_time=1_700_000_000.5,
    limits=(
        LimitRow("RSS", "bytes", current=1000, minimum=10, maximum=2000, soft=5000, hard=8000,
                 hits=3),
        LimitRow("PROC", "count", current=7, hard=None, hits=0),
    ),
    sockets=(SocketAccounting("INET", 11, 1100, 12, 1200, 1, 10),),
    interfaces=(iface("eth0", 100, 2, 0, 0, 300, 4, 0, 0),),
)


def test_every_metric_of_the_table_with_the_snapshots_values():
    h = Holder(
        snap(FULL, host_interfaces=(iface("eth1", 10, 20, 30, 40, 50, 60, 70, 80),),
             errors={"vserver": 2}),
        SelfMetrics(poll_duration_seconds=0.25, last_poll_timestamp_seconds=1_700_000_100.0,
                    rrd_write_errors=1, polls_total=9, missed_polls_total=2,
                    poll_failures_total=1),
    )
    text = exposition(h.collector())
    found = samples(text)
    c = {"context": "web"}
    assert value(found, "ctxmon_context_cpu_seconds_total", mode="user", **c) == 12.5
    assert value(found, "ctxmon_context_cpu_seconds_total", mode="system", **c) == 3.25
    assert value(found, "ctxmon_context_memory_rss_bytes", **c) == 4567890
    assert value(found, "ctxmon_context_memory_virtual_bytes", **c) == 123456789
    assert value(found, "ctxmon_context_processes", **c) == 7
    assert value(found, "ctxmon_context_threads", **c) == 19
    assert value(found, "ctxmon_context_start_time_seconds", **c) == 1_700_000_000.5
    assert value(found, "ctxmon_context_info", id="42", source="vserver", **c) == 1
    assert value(found, "ctxmon_context_resource_usage", resource="RSS", **c) == 1000
    assert value(found, "ctxmon_context_resource_usage_max", resource="RSS", **c) == 2000
    assert value(found, "ctxmon_context_resource_usage_min", resource="RSS", **c) == 10
    assert value(found, "ctxmon_context_limit", resource="RSS", type="soft", **c) == 5000
    assert value(found, "ctxmon_context_limit", resource="RSS", type="hard", **c) == 8000
    assert value(found, "ctxmon_context_limit_hits_total", resource="RSS", **c) == 3
    assert value(found, "ctxmon_context_resource_usage", resource="PROC", **c) == 7
    # unlimited: no limit series at all, so `usage / limit` has nothing to divide by
    assert not [k for k in found if k[0] == "ctxmon_context_limit"
                and ("resource", "PROC") in k[1]]
    net = dict(interface="eth0", **c)
    assert value(found, "ctxmon_context_network_receive_bytes_total", **net) == 100
    assert value(found, "ctxmon_context_network_receive_packets_total", **net) == 2
    assert value(found, "ctxmon_context_network_transmit_bytes_total", **net) == 300
    assert value(found, "ctxmon_context_network_transmit_packets_total", **net) == 4
    assert value(found, "ctxmon_context_socket_receive_bytes_total", family="INET", **c) == 1100
    assert value(found, "ctxmon_context_socket_send_bytes_total", family="INET", **c) == 1200
    dev = {"device": "eth1"}
    for name, v in (("receive_bytes", 10), ("receive_packets", 20), ("receive_errors", 30),
                    ("receive_drops", 40), ("transmit_bytes", 50), ("transmit_packets", 60),
                    ("transmit_errors", 70), ("transmit_drops", 80)):
        assert value(found, f"ctxmon_network_{name}_total", **dev) == v
    assert value(found, "ctxmon_contexts") == 1
    assert value(found, "ctxmon_poll_duration_seconds") == 0.25
    assert value(found, "ctxmon_last_poll_timestamp_seconds") == 1_700_000_100.0
    assert value(found, "ctxmon_poll_errors", source="vserver") == 2
    assert value(found, "ctxmon_poll_errors", source="procfs") == 0
    assert value(found, "ctxmon_rrd_write_errors") == 1
    assert value(found, "ctxmon_polls_total") == 9
    assert value(found, "ctxmon_missed_polls_total") == 2
    assert value(found, "ctxmon_poll_failures_total") == 1
    assert value(found, "ctxmon_build_info", version="9.8.7") == 1
    # not capped: no fold metric
    assert not [k for k in found if k[0] == "ctxmon_contexts_folded"]


def test_types_units_and_no_created_or_timestamps():
    h = Holder(snap(FULL, host_interfaces=(iface("eth1", *range(8)),)))
    text = exposition(h.collector())
    fams = types(text)
    for name, (typ, _, _) in FAMILIES.items():
        if name in fams:
            assert fams[name] == typ, name
    for line in text.splitlines():
        if line.startswith("# TYPE"):
            _, _, name, typ = line.split()
            # `_total` exactly on counters
            assert name.endswith("_total") == (typ == "counter"), line
            assert name.startswith("ctxmon_"), line
        elif not line.startswith("#"):
            assert "_created" not in line.split("{")[0], line
            # name{labels} value: no timestamp after the value
            after_name = line.rsplit("}", 1)[1] if "}" in line else line.split(" ", 1)[1]
            assert len(after_name.split()) == 1, line
    assert "pid" not in text.replace("pids", "")


def test_label_values_are_escaped_and_always_valid_utf8():
    hostile = 'a"b\\c\nd <script>'
    not_utf8 = b"caf\xe9".decode("utf-8", "surrogateescape")  # how sources keep raw bytes
    h = Holder(snap(ctx(hostile, ctx_id="1"), ctx(not_utf8, ctx_id="2"),
                    ctx("nul\0x", ctx_id="3")))
    text = exposition(h.collector())
    assert text.encode("utf-8")  # encodable (no surrogates left)
    found = samples(text)
    assert value(found, "ctxmon_context_processes", context=hostile) == 1
    assert value(found, "ctxmon_context_processes", context="caf\ufffd") == 1
    assert value(found, "ctxmon_context_processes", context="nul\ufffdx") == 1
    assert label_value("plain") == "plain"


def test_names_that_become_equal_still_make_distinct_series():
    a = b"x\xe9".decode("utf-8", "surrogateescape")
    b = b"x\xea".decode("utf-8", "surrogateescape")  # both render as "x\ufffd"
    h = Holder(snap(ctx(a, ctx_id="a1", processes=1), ctx(b, ctx_id="b2", processes=2)))
    found = samples(exposition(h.collector()))  # samples() fails on a duplicate series
    assert value(found, "ctxmon_context_processes", context="x\ufffd") == 1
    assert value(found, "ctxmon_context_processes", context="x\ufffd~b2") == 2


def test_a_departed_context_is_gone_from_the_next_scrape():
    h = Holder(snap(ctx("stays", ctx_id="1"), ctx("leaves", ctx_id="2")))
    col = h.collector()
    reg = build_registry(col, process_metrics=False)
    first = samples(prometheus_client.generate_latest(reg).decode())
    assert series_of(first, "leaves")
    h.snapshot = snap(ctx("stays", ctx_id="1"), t=1001.0)
    second = samples(prometheus_client.generate_latest(reg).decode())
    assert series_of(second, "stays")
    assert series_of(second, "leaves") == []
    assert value(second, "ctxmon_contexts") == 1


def test_one_snapshot_fetch_per_collect_and_none_for_describe():
    h = Holder(snap(FULL))
    col = h.collector()
    build_registry(col)  # registration describes
    assert h.fetches == 0
    described = {m.name for m in col.describe()}
    assert "ctxmon_context_cpu_seconds" in described and "ctxmon_build_info" in described
    assert h.fetches == 0
    list(col.collect())
    assert h.fetches == 1


def test_before_the_first_poll_only_the_daemon_itself_is_exported():
    found = samples(exposition(Holder(None).collector()))
    names = {k[0] for k in found}
    assert "ctxmon_build_info" in names and "ctxmon_polls_total" in names
    assert not [n for n in names if n.startswith("ctxmon_context")]
    assert "ctxmon_contexts" not in names


def test_registry_is_private_and_has_the_daemons_process_metrics():
    before = set(prometheus_client.REGISTRY._names_to_collectors)
    reg = build_registry(Holder(snap(FULL)).collector())
    assert set(prometheus_client.REGISTRY._names_to_collectors) == before
    names = {k[0] for k in samples(prometheus_client.generate_latest(reg).decode())}
    assert "process_resident_memory_bytes" in names
    assert "ctxmon_context_processes" in names


def test_cached_exposition_is_the_same_text_and_follows_new_snapshots():
    h = Holder(snap(FULL, host_interfaces=(iface("eth0", *range(8)),)), SelfMetrics(polls_total=1))
    col = h.collector(max_contexts=5)
    reg = build_registry(col, process_metrics=False)
    assert samples(b''.join(reg.exposition()).decode()) == samples(
        prometheus_client.generate_latest(reg).decode())
    # same snapshot, new self metrics: served at once
    h.me = SelfMetrics(polls_total=2)
    assert value(samples(b''.join(reg.exposition()).decode()), "ctxmon_polls_total") == 2
    # a new snapshot replaces the cached part
    h.snapshot = snap(ctx("new", ctx_id="5", processes=3), t=2000.0)
    found = samples(b''.join(reg.exposition()).decode())
    assert value(found, "ctxmon_context_processes", context="new") == 3
    assert series_of(found, "web") == []
    # other collectors registered later are served too
    prometheus_client.ProcessCollector(registry=reg)
    assert "process_cpu_seconds_total" in b''.join(reg.exposition()).decode()


def test_a_scrape_while_the_new_text_is_being_prerendered_gets_the_previous_one(monkeypatch):
    import sys

    h = Holder(snap(ctx("old", ctx_id="1", processes=1)))
    col = h.collector()
    reg = build_registry(col, process_metrics=False)
    assert series_of(samples(b"".join(reg.exposition()).decode()), "old")
    started = []
    monkeypatch.setattr(threading.Thread, "start", lambda self: started.append(self))
    h.snapshot = snap(ctx("new", ctx_id="2", processes=2), t=2000.0)
    col.published()  # scraped since the last one: renders on a thread (held back here)
    assert len(started) == 1
    # Meanwhile a scrape is served the previous text rather than rendering itself.
    found = samples(b"".join(reg.exposition()).decode())
    assert series_of(found, "old") and not series_of(found, "new")
    switch = sys.getswitchinterval()
    started[0].run()  # the thread's work: renders, with a short GIL interval meanwhile
    assert sys.getswitchinterval() == switch
    found = samples(b"".join(reg.exposition()).decode())
    assert series_of(found, "new") and not series_of(found, "old")


def test_overlapping_prerenders_give_back_the_gil_switch_interval(monkeypatch):
    """A poll can end while the text of the one before is still rendering (a slow
    render at a short interval): the second render must not take the first's short
    switch interval for the process's own and keep it for good."""
    import sys

    h = Holder(snap(ctx("a", ctx_id="1", processes=1)))
    col = h.collector()
    reg = build_registry(col, process_metrics=False)
    b"".join(reg.exposition())  # scraped: the next published() prerenders
    started = []
    monkeypatch.setattr(threading.Thread, "start", lambda self: started.append(self))
    h.snapshot = snap(ctx("b", ctx_id="2", processes=1), t=2000.0)
    col.published()
    h.snapshot = snap(ctx("c", ctx_id="3", processes=1), t=3000.0)
    col._scraped = True  # a scrape came in meanwhile
    col.published()
    assert len(started) == 2
    monkeypatch.undo()
    render = col._text.render
    second = threading.Thread(target=started[1].run)

    def render_while_the_next_poll_ends(families):
        if not second.is_alive() and second.ident is None:
            second.start()  # it reads the interval, then waits for the lock
            time.sleep(0.2)
        return render(families)

    monkeypatch.setattr(col._text, "render", render_while_the_next_poll_ends)
    switch = sys.getswitchinterval()
    try:
        started[0].run()
        second.join(10)
        assert not second.is_alive()
        assert sys.getswitchinterval() == switch
    finally:
        sys.setswitchinterval(switch)
    found = samples(b"".join(reg.exposition()).decode())
    assert series_of(found, "c")


def test_process_figures_are_prometheus_clients_with_open_fds_counted_cheaply():
    from exporters.prometheus import _ProcessCollector

    held = [os.open("/dev/null", os.O_RDONLY) for _ in range(300)]
    try:
        ours = {m.name: m for m in _ProcessCollector(registry=None).collect()}
        theirs = {m.name: m for m in prometheus_client.ProcessCollector(registry=None).collect()}
    finally:
        for fd in held:
            os.close(fd)
    assert ours.keys() == theirs.keys() and "process_open_fds" in ours
    for name, m in theirs.items():
        assert (ours[name].type, ours[name].documentation) == (m.type, m.documentation)
    fds = ours["process_open_fds"].samples[0].value
    # prometheus_client's listing counts the fd it lists /proc/self/fd with
    assert 300 < fds and theirs["process_open_fds"].samples[0].value - fds in (0, 1)
    for name in ("process_max_fds", "process_start_time_seconds", "process_virtual_memory_bytes"):
        assert ours[name].samples[0].value == pytest.approx(theirs[name].samples[0].value, rel=0.01)


# --------------------------------------------------------------------------- the cap


def test_cap_exports_the_busiest_and_sums_the_rest_into_other():
    contexts = (
        ctx("a", ctx_id="1", user=50, system=50, rss_bytes=1, processes=1, threads=1),
        ctx("b", ctx_id="2", user=1, system=2, rss_bytes=10, processes=2, threads=3,
            interfaces=(iface("eth0", 5, 1, 0, 0, 7, 1, 0, 0),)),
        ctx("c", ctx_id="3", user=80, system=0, rss_bytes=100, processes=3, threads=4),
        ctx("d", ctx_id="4", user=0, system=4, rss_bytes=1000, processes=4, threads=5,
            interfaces=(iface("eth0", 6, 2, 0, 0, 8, 2, 0, 0),), start_time=5.0),
    )
    found = samples(exposition(Holder(snap(*contexts)).collector(max_contexts=2)))
    exported = {dict(k[1])["context"] for k in found if k[0] == "ctxmon_context_processes"}
    assert exported == {"a", "c", OTHER}
    o = {"context": OTHER}
    assert value(found, "ctxmon_context_cpu_seconds_total", mode="user", **o) == 1
    assert value(found, "ctxmon_context_cpu_seconds_total", mode="system", **o) == 6
    assert value(found, "ctxmon_context_memory_rss_bytes", **o) == 1010
    assert value(found, "ctxmon_context_processes", **o) == 6
    assert value(found, "ctxmon_context_threads", **o) == 8
    assert value(found, "ctxmon_context_network_receive_bytes_total", interface="eth0", **o) == 11
    # identity and start time make no sense for a sum
    assert not [k for k in series_of(found, OTHER) if k[0] in (
        "ctxmon_context_info", "ctxmon_context_start_time_seconds")]
    assert value(found, "ctxmon_contexts_folded") == 2
    assert value(found, "ctxmon_contexts") == 4


def test_other_counters_stay_monotonic_as_contexts_move_in_and_out():
    h = Holder()
    col = h.collector(max_contexts=1)

    def other_user(*contexts, t):
        h.snapshot = snap(*contexts, t=t)
        found = samples(exposition(col))
        return value(found, "ctxmon_context_cpu_seconds_total", mode="user", context=OTHER)

    # big leads; small1 + small2 are other
    assert other_user(ctx("big", "1", user=100), ctx("s1", "2", user=10),
                      ctx("s2", "3", user=20), t=1) == 30
    # s2 overtakes big: big (its 100 already exported under its name) joins other,
    # only its growth since (5) counts; s2 leaves and takes nothing away.
    assert other_user(ctx("big", "1", user=105), ctx("s1", "2", user=11),
                      ctx("s2", "3", user=200), t=2) == 30 + 5 + 1
    # s1 departs: other keeps what it had; big grows 10
    assert other_user(ctx("big", "1", user=115), ctx("s2", "3", user=300), t=3) == 46
    # the same snapshot scraped again adds nothing
    found = samples(exposition(col))
    assert value(found, "ctxmon_context_cpu_seconds_total", mode="user", context=OTHER) == 46
    # the clock stepped back an hour: the next snapshot still counts
    assert other_user(ctx("big", "1", user=120), ctx("s2", "3", user=300), t=3 - 3600) == 51


def test_a_context_called_other_does_not_collide_with_the_bucket():
    h = Holder(snap(ctx(OTHER, ctx_id="7", user=9), ctx("x", ctx_id="8", user=1)))
    found = samples(exposition(h.collector(max_contexts=1)))
    assert value(found, "ctxmon_context_processes", context=f"{OTHER}~7") == 1
    assert value(found, "ctxmon_context_processes", context=OTHER) == 1  # x folded
    with pytest.raises(ValueError):
        Holder().collector(max_contexts=0)


# --------------------------------------------------------------------------- HTTP helpers


def test_parse_listen():
    assert parse_listen("127.0.0.1:9717") == ("127.0.0.1", 9717)
    assert parse_listen("[::1]:0") == ("::1", 0)
    assert parse_listen("localhost:80") == ("localhost", 80)
    for bad in ("9717", ":9717", "::1:80", "[::1]", "[::1]80", "h:port", "h:70000", "[]:1"):
        with pytest.raises(ValueError):
            parse_listen(bad)


def test_accepts_gzip():
    assert accepts_gzip("gzip")
    assert accepts_gzip("deflate, gzip;q=0.5")
    assert accepts_gzip("GZIP")
    assert not accepts_gzip("gzip;q=0")
    assert not accepts_gzip("identity")
    assert not accepts_gzip(None)
    assert not accepts_gzip("gzip;q=bogus")


# --------------------------------------------------------------------------- HTTP server


@pytest.fixture
def serve():
    """serve(**MetricsServer kwargs) -> started server on 127.0.0.1:0, stopped at the end."""
    started = []

    def make(holder: Holder | None = None, **kw) -> MetricsServer:
        holder = holder or Holder(snap(FULL))
        srv = MetricsServer("127.0.0.1:0", build_registry(holder.collector()), **kw)
        srv.start()
        started.append(srv)
        return srv

    yield make
    for srv in started:
        srv.stop()


def get(srv: MetricsServer, path: str, headers: dict | None = None, method: str = "GET",
        context: ssl.SSLContext | None = None):
    if context is not None:
        conn = http.client.HTTPSConnection("127.0.0.1", srv.port, timeout=10, context=context)
    else:
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
    try:
        conn.request(method, path, headers=headers or {})
        r = conn.getresponse()
        return r.status, dict(r.getheaders()), r.read()
    finally:
        conn.close()


def test_metrics_landing_page_and_404(serve):
    srv = serve()
    status, headers, body = get(srv, "/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert value(samples(body.decode()), "ctxmon_context_processes", context="web") == 7
    status, headers, body = get(srv, "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert b'href="metrics"' in body and b"graphs" not in body
    for path in ("/metrics/x", "/favicon.ico", "/graphs/", "/../etc/passwd"):
        assert get(srv, path)[0] == 404, path
    status, headers, body = get(srv, "/metrics", method="HEAD")
    assert status == 200 and body == b"" and int(headers["Content-Length"]) > 0
    assert get(srv, "/metrics", method="POST")[0] == 501


def test_gzip_when_asked(serve):
    srv = serve()
    plain = get(srv, "/metrics")[2]
    status, headers, body = get(srv, "/metrics", {"Accept-Encoding": "gzip"})
    assert status == 200 and headers["Content-Encoding"] == "gzip"
    assert len(body) < len(plain)
    def ours(text):
        return {k: v for k, v in samples(text).items() if k[0].startswith("ctxmon_")}

    assert ours(gzip.decompress(body).decode()) == ours(plain.decode())
    status, headers, body = get(srv, "/metrics", {"Accept-Encoding": "gzip;q=0"})
    assert "Content-Encoding" not in headers and body.startswith(b"# HELP")


def test_gzip_prefix_cache_makes_one_valid_stream_per_body():
    cache = GzipPrefixCache()
    first = b"cached part\n" * 1000
    for live in (b"live 1\n", b"live 2\n", b""):
        body = b"".join(cache.compress([first, live, b"tail\n"]))
        assert gzip.decompress(body) == first + live + b"tail\n"
    other = b"a new snapshot\n"
    assert gzip.decompress(b"".join(cache.compress([other, b"x"]))) == other + b"x"
    assert gzip.decompress(b"".join(cache.compress([]))) == b""


def test_ipv6_loopback(serve):
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    srv = MetricsServer("[::1]:0", build_registry(Holder(snap(FULL)).collector()))
    try:
        srv.start()
    except OSError as e:
        pytest.skip(f"cannot bind [::1]: {e}")
    try:
        conn = http.client.HTTPConnection("::1", srv.port, timeout=10)
        conn.request("GET", "/metrics")
        assert conn.getresponse().status == 200
        conn.close()
    finally:
        srv.stop()


# --------------------------------------------------------------------------- graphs


def test_graphs_are_served_and_nothing_outside(serve, tmp_path):
    graphs = tmp_path / "graphs"
    (graphs / "web").mkdir(parents=True)
    (graphs / "index.html").write_text("<h1>index</h1>")
    (graphs / "web" / "cpu-day.png").write_bytes(b"\x89PNG fake")
    (tmp_path / "secret.txt").write_text("secret")
    (graphs / "link-out").symlink_to(tmp_path / "secret.txt")
    (graphs / "dir-out").symlink_to(tmp_path)
    (graphs / ".ctxmon-graphs-state.json").write_text('{"secret": 1}')
    (graphs / "web" / ".cpu-day.png.tmp").write_bytes(b"secret half PNG")
    srv = serve(graphs_dir=str(graphs))

    assert b'href="graphs/"' in get(srv, "/")[2]
    status, headers, body = get(srv, "/graphs/web/cpu-day.png")
    assert status == 200 and body == b"\x89PNG fake" and headers["Content-Type"] == "image/png"
    status, _, body = get(srv, "/graphs/")
    assert status == 200 and body == b"<h1>index</h1>"
    status, headers, _ = get(srv, "/graphs")
    assert status == 301 and headers["Location"] == "/graphs/"
    status, headers, _ = get(srv, "/graphs/web")
    assert status == 301 and headers["Location"] == "/graphs/web/"
    assert get(srv, "/graphs/web/")[0] == 404  # a directory without index.html
    for path in ("/graphs/../secret.txt", "/graphs/%2e%2e/secret.txt",
                 "/graphs/web/%2E%2E/%2e%2e/secret.txt", "/graphs/link-out",
                 "/graphs/dir-out/secret.txt", "/graphs/%2fetc%2fpasswd", "/graphs//etc/passwd",
                 "/graphs/x%00.png", "/graphs/%ff", "/graphs/missing.png",
                 "/graphs/.ctxmon-graphs-state.json", "/graphs/%2Ectxmon-graphs-state.json",
                 "/graphs/web/.cpu-day.png.tmp"):
        status, _, body = get(srv, path)
        assert status == 404, path
        assert b"secret" not in body


# --------------------------------------------------------------------------- TLS and auth


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    """A throwaway self-signed certificate for 127.0.0.1 made with the openssl CLI."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    return make_certificate(str(tmp_path_factory.mktemp("tls")))


def client_context(cert: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=cert)  # verifies chain and the IP address
    return ctx


def basic(user: str, password: str | bytes) -> dict:
    return {"Authorization": basic_header(user, password)}


@pytest.fixture(scope="module")
def users():
    bcrypt = pytest.importorskip("bcrypt")
    # cost 4: the minimum, so the test is quick; the check is the same at any cost
    return {"prom": bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=4)).decode()}


def test_tls_with_basic_auth_over_a_real_tls_connection(serve, certificate, users):
    cert, key = certificate
    srv = serve(tls_cert=cert, tls_key=key, basic_auth=users)
    tls = client_context(cert)
    status, headers, _ = get(srv, "/metrics", context=tls)
    assert status == 401 and headers["WWW-Authenticate"].startswith("Basic realm=")
    assert get(srv, "/metrics", basic("prom", "wrong"), context=tls)[0] == 401
    assert get(srv, "/metrics", basic("nobody", "s3cret"), context=tls)[0] == 401
    assert get(srv, "/", basic("prom", "wrong"), context=tls)[0] == 401
    status, _, body = get(srv, "/metrics", basic("prom", "s3cret"), context=tls)
    assert status == 200
    assert value(samples(body.decode()), "ctxmon_context_processes", context="web") == 7
    # again: served from the remembered check, still right
    assert get(srv, "/metrics", basic("prom", "s3cret"), context=tls)[0] == 200
    assert get(srv, "/metrics", basic("prom", "s3cret!"), context=tls)[0] == 401

    # plain HTTP to the TLS port gets no metrics, and the server carries on
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
        s.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
        try:
            got = s.recv(65536)
        except ConnectionResetError:
            got = b""
        assert b"ctxmon_" not in got
    assert get(srv, "/metrics", basic("prom", "s3cret"), context=tls)[0] == 200


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_tls_clients_that_never_handshake_are_cut_off_and_nothing_leaks(serve, certificate):
    cert, key = certificate
    srv = serve(tls_cert=cert, tls_key=key, request_timeout=0.5)
    tls = client_context(cert)
    assert get(srv, "/metrics", context=tls)[0] == 200
    before = open_fds()
    silent = socket.create_connection(("127.0.0.1", srv.port))
    half = socket.create_connection(("127.0.0.1", srv.port))
    half.sendall(b"\x16\x03\x01\x00\xff")  # the start of a ClientHello, never finished
    try:
        assert get(srv, "/metrics", context=tls)[0] == 200  # served meanwhile
        assert _wait_closed(silent) and _wait_closed(half)
    finally:
        silent.close()
        half.close()
    for _ in range(20):
        get(srv, "/metrics", context=tls)
        with socket.create_connection(("127.0.0.1", srv.port)) as s:
            s.sendall(os.urandom(64))
    deadline = time.monotonic() + 10
    while open_fds() > before:  # the server closes each connection just after replying
        assert time.monotonic() < deadline, f"{open_fds() - before} fds left open"
        time.sleep(0.05)


def test_malformed_credentials_are_401_not_errors(serve, users):
    srv = serve(basic_auth=users)
    for headers in (basic("prom", b"x" * 100),  # over bcrypt's 72 bytes
                    basic("prom", b"\xff\xfe"),  # not UTF-8
                    {"Authorization": "Basic !!!notbase64"},
                    {"Authorization": "Basic " + base64.b64encode(b"no-colon").decode()},
                    {"Authorization": "Bearer abc"},
                    {"Authorization": ""}):
        assert get(srv, "/metrics", headers)[0] == 401, headers
    assert get(srv, "/metrics", basic("prom", "s3cret"))[0] == 200


def test_bad_tls_and_auth_settings_are_refused(tmp_path, certificate):
    reg = build_registry(Holder().collector())
    with pytest.raises(ValueError):
        MetricsServer("127.0.0.1:0", reg, basic_auth={"u": "plaintext-password"})
    with pytest.raises(ValueError):
        MetricsServer("127.0.0.1:0", reg, tls_cert=certificate[0])  # no key
    with pytest.raises(OSError):
        MetricsServer("127.0.0.1:0", reg, tls_cert=str(tmp_path / "none.pem"),
                      tls_key=str(tmp_path / "none.key"))


# --------------------------------------------------------------------------- hostile clients


def test_garbage_clients_get_an_error_and_the_server_goes_on(serve):
    srv = serve()
    for junk in (os.urandom(300) + b"\r\n\r\n",
                 b"GET /" + b"a" * 70000 + b" HTTP/1.0\r\n\r\n",  # request line too long
                 b"GET /metrics HTTP/1.0\r\nX: " + b"b" * 70000 + b"\r\n\r\n",  # header too long
                 b"GET /metrics HTTP/1.0\r\n" + b"X-A: 1\r\n" * 200 + b"\r\n",  # too many
                 b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"):  # TLS to a plain port
        reply = exchange(srv.port, junk)
        assert b"ctxmon_" not in reply
        if reply:
            assert reply.split()[1][:1] == b"4", reply[:80]  # a 4xx, never a 5xx
    assert get(srv, "/metrics")[0] == 200


def _wait_closed(s: socket.socket) -> bool:
    """Read until the server closes (True) or 10 s pass (False)."""
    s.settimeout(10)
    try:
        while s.recv(4096):
            pass
        return True
    except (TimeoutError, socket.timeout):
        return False
    except ConnectionResetError:
        return True


def test_slow_clients_neither_stall_scrapes_nor_stay_forever(serve):
    srv = serve(request_timeout=0.5)
    silent = socket.create_connection(("127.0.0.1", srv.port))
    trickle = socket.create_connection(("127.0.0.1", srv.port))
    stop = threading.Event()

    def drip():  # slowloris: a byte every 0.1 s never finishes the request
        try:
            for b in b"GET /metrics HTTP/1.0\r\nX-Slow: " + b"z" * 1000:
                if stop.wait(0.1):
                    return
                trickle.send(bytes([b]))
        except OSError:
            return

    dripper = threading.Thread(target=drip)
    dripper.start()
    try:
        assert get(srv, "/metrics")[0] == 200  # served while both are hanging
        assert _wait_closed(silent)
        assert _wait_closed(trickle)  # closed although it keeps sending
    finally:
        stop.set()
        dripper.join()
        silent.close()
        trickle.close()


def test_too_many_connections_are_refused_not_queued(serve):
    srv = serve(max_connections=2, request_timeout=1.0)
    idle = [socket.create_connection(("127.0.0.1", srv.port)) for _ in range(2)]
    try:
        deadline = time.monotonic() + 10
        status = None
        while time.monotonic() < deadline:  # until both idle ones hold their slot
            status = get(srv, "/metrics")[0]
            if status == 503:
                break
        assert status == 503
    finally:
        for s in idle:
            s.close()
    deadline = time.monotonic() + 10
    while get(srv, "/metrics")[0] != 200:  # slots come back
        assert time.monotonic() < deadline


def test_a_hundred_concurrent_scrapes_all_get_the_same_metrics(serve):
    srv = serve()
    with ThreadPoolExecutor(100) as pool:
        results = list(pool.map(lambda _: get(srv, "/metrics"), range(100)))
    assert [r[0] for r in results] == [200] * 100
    bodies = {samples(r[2].decode())[("ctxmon_context_processes",
                                     frozenset({("context", "web")}))] for r in results}
    assert bodies == {7}


def test_stop_releases_the_port(serve):
    srv = serve()
    port = srv.port
    srv.stop()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    srv.stop()  # twice is harmless
