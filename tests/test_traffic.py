"""The pure parts of traffic accounting: rule text, counter JSON, guest addresses,
monotonic totals, and which contexts are matched how (no nftables needed)."""

from __future__ import annotations

import os

import pytest

from collector.procfs import ErrorCounts
from collector.snapshot import ContextSample, InterfaceSample
from collector.traffic import (
    AddressMatch,
    CgroupMatch,
    NftError,
    NftTable,
    TableLayout,
    TrafficAccounting,
    TrafficTotals,
    build_transaction,
    counter_names,
    nft_ref,
    parse_counters,
    parse_guest_ip,
    read_guest_addresses,
)


def ctx(key: str, source: str = "cgroup", cgroup: str | None = None, xid: int | None = None,
        interfaces=()) -> ContextSample:
    return ContextSample(
        key=key, name=key, ctx_id="1", source=source, processes=1, threads=1, vsz_bytes=0,
        rss_bytes=0, cpu_user_seconds=0.0, cpu_system_seconds=0.0, cpu_accounting="kernel",
        live_user_seconds=0.0, live_system_seconds=0.0, start_time=None, uptime_seconds=None,
        first_process_start=None, xid=xid, cgroup=cgroup, interfaces=tuple(interfaces))


def test_fresh_transaction_replaces_only_our_table_and_uses_maps():
    layout = TableLayout(frozenset({0, 1}), ((2, "system.slice/a.service", 0),),
                         (("10.0.0.5", 1), ("2001:db8::5", 1)))
    text = build_transaction(None, layout)
    lines = text.splitlines()
    assert lines[:3] == ["add table inet ctxmon", "delete table inet ctxmon",
                         "add table inet ctxmon"]
    # Every statement names our table and nothing else.
    assert all(" inet ctxmon" in l for l in lines)
    assert 'add element inet ctxmon cgi2 { "system.slice/a.service" : "rx0" }' in lines
    assert 'add element inet ctxmon cgo2 { "system.slice/a.service" : "tx0" }' in lines
    assert 'add element inet ctxmon a4o { 10.0.0.5 : "tx1" }' in lines
    assert 'add element inet ctxmon a6i { 2001:db8::5 : "rx1" }' in lines
    # Rules: one per depth and family and hook, however many contexts.
    rules = [l for l in lines if l.startswith("add rule")]
    assert len(rules) == 2 + 4


def test_rule_count_does_not_grow_with_contexts():
    many = TableLayout(frozenset(range(1000)),
                       tuple((2, f"s/c{i}", i) for i in range(1000)),
                       tuple((f"10.0.{i // 256}.{i % 256}", i) for i in range(1000)))
    rules = [l for l in build_transaction(None, many).splitlines() if l.startswith("add rule")]
    assert len(rules) == 6


def test_change_keeps_counters_of_contexts_that_stay():
    old = TableLayout(frozenset({0, 1}), ((2, "a/x", 0), (3, "a/b/y", 1)), ())
    new = TableLayout(frozenset({1, 2}), ((3, "a/b/y", 1), (2, "a/z", 2)), ())
    lines = build_transaction(old, new).splitlines()
    assert "delete table inet ctxmon" not in lines
    assert "delete counter inet ctxmon rx0" in lines and "add counter inet ctxmon rx2" in lines
    assert not any("counter inet ctxmon rx1" in l for l in lines)  # kept, counting on
    assert "flush map inet ctxmon cgi3" in lines
    # Flushes come before the adds that refill them.
    assert lines.index("flush map inet ctxmon cgi2") < lines.index(
        'add element inet ctxmon cgi2 { "a/z" : "rx2" }')


def test_unquotable_strings_are_refused_by_the_builder():
    bad = TableLayout(frozenset({0}), ((1, 'x" } ; flush ruleset ; {"', 0),), ())
    with pytest.raises(ValueError):
        build_transaction(None, bad)


@pytest.mark.parametrize("name, safe", [
    ("system.slice/a.service", True), ("system.slice/getty@tty1.service", True),
    ("machine.slice/machine-a\\x2db.scope", True), ('x"y', False), ("a\nb", False),
    ("caf\xe9", False), ("a\x1bb", False),
])
def test_nft_ref_only_for_quotable_paths(name, safe):
    ref = nft_ref(f"/sys/fs/cgroup/unified/{name}")
    assert (ref == f"unified/{name}") if safe else ref is None


def test_hybrid_host_paths_are_relative_to_sys_fs_cgroup():
    assert nft_ref("/sys/fs/cgroup/unified/system.slice/x.service") == \
        "unified/system.slice/x.service"
    assert nft_ref("/mnt/cg2/a") == "../../../mnt/cg2/a"


def _counters_text(*items) -> str:
    """What `nft list counters` prints (nft 1.0.6), tables in the order given."""
    out, table = [], None
    for f, t, n, p, b in items:
        if (f, t) != table:
            if table:
                out.append("}")
            out.append(f"table {f} {t} {{")
            table = (f, t)
        out += [f"\tcounter {n} {{", f"\t\tpackets {p} bytes {b}", "\t}"]
    return "\n".join(out + ["}"]) + "\n"


def test_parse_counters_takes_only_ours():
    text = _counters_text(("inet", "other", "rx0", 9, 999), ("inet", "ctxmon", "rx0", 3, 300),
                          ("inet", "ctxmon", "tx0", 1, 60), ("ip", "ctxmon", "rx1", 7, 7),
                          ("inet", "ctxmon2", "rx2", 5, 5))
    assert parse_counters(text) == {"rx0": (3, 300), "tx0": (1, 60)}
    text = _counters_text(("inet", "ctxmon", "rx0", 3, 300), ("inet", "ctxmon", "evil", 1, 1),
                          ("inet", "ctxmon", "tx0", 1, 60))
    assert parse_counters(text) == {"rx0": (3, 300), "tx0": (1, 60)}
    assert parse_counters("table inet ctxmon {\n}\n") == {}
    assert parse_counters("") == {}  # what nft prints for a table without counters


@pytest.mark.parametrize("text", [
    "nope", "table inet other {\n}\n", "xtable inet ctxmon {\n}\n",
    "table inet ctxmon {\n\tcounter rx0 {\n",  # cut short
    _counters_text(("inet", "ctxmon", "rx0", -1, 5)),
    _counters_text(("inet", "ctxmon", "rx0", 1, "5x")),
    _counters_text(("inet", "ctxmon", "rx0", 1, 1)).replace("\t\tpackets", "\t\tcomment \"x\"\n\t\tpackets"),
])
def test_parse_counters_rejects_what_is_not_nfts_listing(text):
    with pytest.raises(ValueError):
        parse_counters(text)


@pytest.mark.parametrize("text, want", [
    ("192.168.1.5\n", "192.168.1.5"), ("192.168.1.5/24\n", "192.168.1.5"),
    ("  10.0.0.1 \n", "10.0.0.1"), ("2001:DB8::0005/64", "2001:db8::5"),
    ("0.0.0.0", None), ("", None), ("host.example", None), ("1.2.3.4; rm -rf /", None),
    ("999.1.1.1", None), ("x" * 500, None),
])
def test_parse_guest_ip(text, want):
    assert parse_guest_ip(text) == want


def test_read_guest_addresses_skips_junk_fifos_and_big_files(tmp_path):
    for i, content in enumerate(["10.0.0.5/24\n", "2001:db8::5\n", "garbage", "x" * 5000,
                                 "10.0.0.5\n"]):
        d = tmp_path / "interfaces" / str(i)
        d.mkdir(parents=True)
        (d / "ip").write_text(content)
    fifo_dir = tmp_path / "interfaces" / "9"
    fifo_dir.mkdir()
    os.mkfifo(fifo_dir / "ip")  # must not block the poll
    assert read_guest_addresses(str(tmp_path)) == ("10.0.0.5", "2001:db8::5")
    assert read_guest_addresses(str(tmp_path / "missing")) == ()


def test_totals_never_decrease_across_new_counters_and_resets():
    t = TrafficTotals()
    assert t.observe("a", (1, 0), (100, 2, 50, 1), 0) == (100, 2, 50, 1)
    assert t.observe("a", (1, 0), (150, 3, 60, 2), 1) == (150, 3, 60, 2)
    # A new counter (table rebuilt, context back) starts at zero but already counted
    # more than the old one had: still carried over.
    assert t.observe("a", (2, 0), (200, 5, 10, 1), 2) == (350, 8, 70, 3)
    # Not read this poll: held.
    assert t.observe("a", (2, 0), None, 3) == (350, 8, 70, 3)
    # Same generation but lower (a namespace recreated): offset.
    assert t.observe("a", (2, 0), (5, 1, 1, 1), 4) == (355, 9, 71, 4)
    t.expire(4 + 3601)
    assert t.observe("a", (3, 0), (1, 1, 1, 1), 4 + 3602) == (1, 1, 1, 1)


class FakeNft:
    """Records what would go to nft; answers reads from `counters`."""

    def __init__(self):
        self.calls: list[tuple] = []
        self.counters: dict[str, tuple[int, int]] = {}
        self.fail_with: str | None = None

    def __call__(self, args, stdin=None, pass_fds=()):
        self.calls.append((tuple(args), stdin))
        if self.fail_with:
            raise NftError(self.fail_with)
        if args[0] == "list":
            return _counters_text(*[("inet", "ctxmon", n, p, b)
                                    for n, (p, b) in self.counters.items()]) \
                if self.counters else "table inet ctxmon {\n}\n"
        return ""


def test_only_context_changes_cause_transactions(tmp_path):
    (tmp_path / "cgroup.controllers").write_text("")
    (tmp_path / "svc").mkdir()
    nft = FakeNft()
    acc = TrafficAccounting(str(tmp_path), table=NftTable(run=nft))
    contexts = [ctx("svc", cgroup="svc"), ctx("", cgroup="")]
    out = acc.sample(contexts, 0.0, ErrorCounts())
    assert set(out) == {"svc"}  # the host is the rest, never a context of its own
    writes = [c for c in nft.calls if c[0] == ("-f", "-")]
    assert len(writes) == 3  # probe, empty table, the contexts
    nft.counters = {"rx0": (2, 200), "tx0": (1, 100)}
    for i in range(3):
        out = acc.sample(contexts, 1.0 + i, ErrorCounts())
    assert [c for c in nft.calls if c[0] == ("-f", "-")] == writes  # nothing changed
    assert (out["svc"].rx_bytes, out["svc"].tx_packets) == (200, 1)
    # A new context: one transaction adding it, the old counter kept.
    (tmp_path / "web").mkdir()
    acc.sample(contexts + [ctx("web", cgroup="web")], 5.0, ErrorCounts())
    last = [c for c in nft.calls if c[0] == ("-f", "-")][-1][1]
    assert "add counter inet ctxmon rx1" in last and "counter inet ctxmon rx0" not in last


def test_totals_handed_to_a_new_table_count_on(tmp_path):
    # What the daemon does when a SIGHUP changes [traffic] or the cgroup root: a new
    # table (its counters from 0, the same slot names) takes the old totals.
    (tmp_path / "cgroup.controllers").write_text("")
    (tmp_path / "svc").mkdir()
    contexts = [ctx("svc", cgroup="svc")]
    first = FakeNft()
    old = TrafficAccounting(str(tmp_path), table=NftTable(run=first))
    old.sample(contexts, 0.0, ErrorCounts())
    first.counters = {"rx0": (20, 5000), "tx0": (10, 900)}
    assert old.sample(contexts, 1.0, ErrorCounts())["svc"].rx_bytes == 5000
    old.close()
    second = FakeNft()
    new = TrafficAccounting(str(tmp_path), table=NftTable(run=second))
    new.totals = old.totals
    new.sample(contexts, 2.0, ErrorCounts())
    second.counters = {"rx0": (30, 6000), "tx0": (1, 100)}  # more than before: still new
    t = new.sample(contexts, 3.0, ErrorCounts())["svc"]
    assert (t.rx_bytes, t.rx_packets, t.tx_bytes, t.tx_packets) == (11000, 50, 1000, 11)


def test_context_in_its_own_namespace_is_the_sum_of_its_interfaces_but_lo(tmp_path):
    nft = FakeNft()
    acc = TrafficAccounting(str(tmp_path), table=NftTable(run=nft))
    ifs = [InterfaceSample("lo", 999, 9, 0, 0, 999, 9, 0, 0),
           InterfaceSample("eth0", 100, 2, 0, 0, 50, 1, 0, 0),
           InterfaceSample("eth1", 10, 1, 0, 0, 5, 1, 0, 0)]
    out = acc.sample([ctx("c", cgroup="c", interfaces=ifs)], 0.0, ErrorCounts())
    t = out["c"]
    assert (t.method, t.rx_bytes, t.rx_packets, t.tx_bytes, t.tx_packets) == \
        ("netns", 110, 3, 55, 2)


def test_without_nft_it_says_so_once_and_goes_on(tmp_path, caplog):
    def missing(args, stdin=None, pass_fds=()):
        raise FileNotFoundError(2, "nft not found")

    acc = TrafficAccounting(str(tmp_path), table=NftTable(run=missing))
    ifs = [InterfaceSample("eth0", 100, 2, 0, 0, 50, 1, 0, 0)]
    for i in range(3):
        out = acc.sample([ctx("a", cgroup="a"), ctx("n", cgroup="n", interfaces=ifs)],
                         float(i), ErrorCounts())
    assert list(out) == ["n"]
    said = [r for r in caplog.records if "nft not found" in r.getMessage()]
    assert len(said) == 1


def test_no_permission_leaves_no_table_and_says_so_once(tmp_path, caplog):
    nft = FakeNft()
    nft.fail_with = "Error: Could not process rule: Operation not permitted"
    acc = TrafficAccounting(str(tmp_path), table=NftTable(run=nft))
    for i in range(3):
        assert acc.sample([ctx("a", cgroup="a")], float(i), ErrorCounts()) == {}
    said = [r.getMessage() for r in caplog.records if "CAP_NET_ADMIN" in r.getMessage()]
    assert len(said) == 1
    assert not acc.table.active


def test_hostile_cgroup_paths_are_not_followed_out_of_the_hierarchy(tmp_path):
    root = tmp_path / "cg"
    root.mkdir()
    (root / "cgroup.controllers").write_text("")
    (root / "svc").mkdir()
    os.symlink("/etc", root / "link")
    acc = TrafficAccounting(str(root), table=NftTable(run=FakeNft()))
    acc.start()
    for path in ("../../etc", "svc/../../x", "link", "a//b"):
        assert acc._match(ctx(path, cgroup=path), None, 0.0) is None, path
    m = acc._match(ctx("svc", cgroup="svc"), None, 0.0)
    assert isinstance(m, CgroupMatch) and m.level == 1
    assert m.cgroup_id == os.stat(root / "svc").st_ino


def test_guest_addresses_come_from_its_config_dir(tmp_path):
    d = tmp_path / "interfaces" / "0"
    d.mkdir(parents=True)
    (d / "ip").write_text("192.0.2.10/24\n")
    acc = TrafficAccounting(str(tmp_path), table=NftTable(run=FakeNft()))
    acc.start()
    asked = []

    def guest_dir(xid):
        asked.append(xid)
        return str(tmp_path)

    m = acc._match(ctx("40002", source="vserver", xid=40002), guest_dir, 0.0)
    assert m == AddressMatch(("192.0.2.10",))
    acc._match(ctx("40002", source="vserver", xid=40002), guest_dir, 1.0)
    assert asked == [40002]  # cached, re-read after a while
    assert acc._match(ctx("0", source="vserver", xid=0), guest_dir, 0.0) is None
    assert counter_names(7) == ("rx7", "tx7")


def test_probe_table_is_deleted_when_the_plain_table_cannot_be_made():
    # The probe transaction made a table, the next one failed: nothing may stay.
    calls = []

    def nft(args, stdin=None, pass_fds=()):
        calls.append(stdin)
        if len(calls) == 2:
            raise NftError("Error: Could not process rule: Device or resource busy")
        return ""

    table = NftTable(run=nft)
    with pytest.raises(NftError):
        table.start()
    assert len(calls) == 3 and "delete table inet ctxmon" in calls[2]
    assert not table.active


def test_accounting_setting_is_off_by_default_and_checked(tmp_path):
    import subprocess
    import sys

    from ctxmon.config import load_config

    cfg = tmp_path / "ctxmon.toml"
    cfg.write_text('[collector]\ninterval = "10s"\n')
    assert load_config(str(cfg)).traffic.accounting == "off"
    cfg.write_text('[traffic]\naccounting = "nftables"\n')
    assert load_config(str(cfg)).traffic.accounting == "nftables"
    cfg.write_text('[traffic]\naccounting = "iptables"\n')
    p = subprocess.run([sys.executable, "-m", "ctxmon.cli", "check-config", "-c", str(cfg)],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "accounting" in lines[0] and "Traceback" not in p.stderr


def test_a_cgroup_gone_before_the_transaction_does_not_stop_the_others(tmp_path):
    (tmp_path / "cgroup.controllers").write_text("")
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
    nft = FakeNft()
    acc = TrafficAccounting(str(tmp_path), table=NftTable(run=nft))
    acc.sample([ctx("a", cgroup="a")], 0.0, ErrorCounts())
    real_match = acc._match

    def match_then_vanish(c, guest_dir, now):
        m = real_match(c, guest_dir, now)
        if c.cgroup == "b":
            (tmp_path / "b").rmdir()  # removed after it was looked at
        return m

    acc._match = match_then_vanish
    calls = []

    def refusing(args, stdin=None, pass_fds=()):
        calls.append(stdin)
        if stdin and '/b" :' in stdin:  # what nft says for an element it cannot stat
            raise NftError("Error: cgroupv2 path fails: No such file or directory")
        return nft(args, stdin, pass_fds)

    acc.table.run = refusing
    errors = ErrorCounts()
    acc.sample([ctx("a", cgroup="a"), ctx("b", cgroup="b")], 1.0, errors)
    assert not errors and len(calls) >= 2
    assert set(acc.table.plan) == {"a"}


def test_kernel_without_socket_cgroupv2_counts_guests_and_says_so_once(tmp_path, caplog):
    (tmp_path / "cgroup.controllers").write_text("")
    (tmp_path / "svc").mkdir()
    d = tmp_path / "guest" / "interfaces" / "0"
    d.mkdir(parents=True)
    (d / "ip").write_text("192.0.2.10\n")
    nft = FakeNft()

    def no_cgroupv2(args, stdin=None, pass_fds=()):
        if stdin and "socket cgroupv2" in stdin:  # what nft 1.0.6 says on Linux < 5.13
            raise NftError("Error: Could not process rule: No such file or directory")
        return nft(args, stdin, pass_fds)

    acc = TrafficAccounting(str(tmp_path), table=NftTable(run=no_cgroupv2))
    contexts = [ctx("svc", cgroup="svc"), ctx("40002", source="vserver", xid=40002)]
    with caplog.at_level("WARNING"):
        for t in range(3):
            out = acc.sample(contexts, float(t), ErrorCounts(), lambda xid: str(tmp_path / "guest"))
    assert set(out) == {"40002"} and out["40002"].method == "address"
    said = [r.getMessage() for r in caplog.records if "cgroupv2" in r.getMessage()]
    assert len(said) == 1 and "cgroup contexts are not counted" in said[0]
    last = [c for c in nft.calls if c[0] == ("-f", "-")][-1][1]
    assert "192.0.2.10" in last and "cgroupv2" not in last
