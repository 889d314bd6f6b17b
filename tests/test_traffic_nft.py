"""Traffic accounting with real nftables, in a private network and mount namespace
(tests/nftns.py): never the host's own ruleset."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


def _unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root (namespaces, nftables)"
    for tool in ("unshare", "nft", "ip"):
        if shutil.which(tool, path="/usr/sbin:/usr/bin:/sbin:/bin") is None:
            return f"{tool} not installed"
    return None


pytestmark = pytest.mark.skipif(_unavailable() is not None, reason=_unavailable() or "")


def run_scenario(*args: str) -> dict:
    # Own pid namespace too: the samplers and the daemon see the scenario's processes
    # only, not every process on the host.
    p = subprocess.run(["unshare", "-m", "-n", "-p", "-f", "--mount-proc", "--", sys.executable,
                        os.path.join(HERE, "nftns.py"), *args],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout)


def near(value: int, reference: int, tolerance: float = 0.02) -> bool:
    return abs(value - reference) <= tolerance * reference


@pytest.fixture(scope="module")
def cgroup_run() -> dict:
    return run_scenario("cgroup")


def test_cgroup_contexts_count_ip_level_bytes_both_ways(cgroup_run):
    r = cgroup_run
    assert r["received_by_server"] == 20_000_000
    client, server = r["after"]["nft-client"], r["after"]["nft-server"]
    assert client["method"] == server["method"] == "cgroup"
    sent = r["ref"]["to_port"]  # IP-level bytes client -> server, counted by nft itself
    assert sent >= 20_000_000
    assert near(client["tx_bytes"], sent), (client, r["ref"])
    assert near(server["rx_bytes"], sent), (server, r["ref"])
    # The other direction (acknowledgements) is small and counted too.
    assert 0 < client["rx_bytes"] <= r["ref"]["from_port"]
    assert 0 < server["tx_bytes"] <= r["ref"]["from_port"]
    assert client["tx_packets"] > 0 and server["rx_packets"] > 0


def test_context_removed_and_recreated_counts_upwards(cgroup_run):
    r = cgroup_run
    first = r["after"]["nft-client"]
    assert r["gone"] is None
    assert r["back"]["tx_bytes"] >= first["tx_bytes"]
    # 5 MB more from the recreated cgroup (a new cgroup id) add on top.
    assert r["back_after"]["tx_bytes"] - first["tx_bytes"] >= 5_000_000
    for k in ("rx_bytes", "rx_packets", "tx_bytes", "tx_packets"):
        assert r["back_after"][k] >= r["back"][k] >= first[k]


def test_table_deleted_by_someone_is_made_anew_and_counts_on(cgroup_run):
    r = cgroup_run
    assert r["tables_after_recreate"].count("table inet ctxmon") == 1
    assert r["after_delete"]["tx_bytes"] - r["back_after"]["tx_bytes"] >= 1_000_000


def test_hostile_cgroup_name_never_reaches_nft_input_and_still_counts(cgroup_run):
    r = cgroup_run
    # The name carries `" } ; delete table inet neighbour ...`: it went to nft as a
    # /proc/self/fd path, so it is counted and nothing was injected.
    assert r["hostile_after"]["tx_bytes"] >= 1_000_000
    assert "table inet owned" not in r["tables_after_start"]


def test_one_table_of_ours_and_the_neighbours_table_untouched(cgroup_run):
    r = cgroup_run
    assert r["tables_after_start"].count("table inet ctxmon") == 1
    assert "table inet ctxmon" not in r["tables_after_close"]
    assert "table inet neighbour" in r["tables_after_close"]
    # Listed at the start, after the table was built, after a change, after exit.
    assert len(r["neighbour"]) == 4 and len(set(r["neighbour"])) == 1
    assert "192.0.2.7" in r["neighbour"][0]
    assert r["errors"] == {}


def test_vserver_guest_counted_by_its_address(tmp_path):
    r = run_scenario("vserver", os.path.join(HERE, "fixtures", "vs23"))
    guest = r["after"]
    assert guest["method"] == "address"
    # 10 MB from 127.0.1.5 count; 1 MB from 127.0.0.1 does not.
    assert near(guest["tx_bytes"], r["ref"]["guest_to_port"])
    assert r["ref"]["guest_to_port"] >= 10_000_000
    assert guest["tx_bytes"] < 10_500_000
    assert near(guest["rx_bytes"], r["ref"]["port_to_guest"])
    # Guests without addresses and the root server have no figure.
    assert [k for k, v in r["others"].items() if v] == ["customer-portal-staging-01"]
    assert "table inet ctxmon" not in r["tables_after_close"]


def test_kill_9_then_restart_leaves_one_table():
    r = run_scenario("kill9")
    assert r["after_kill"].count("table inet ctxmon") == 1
    assert r["after_restart"].count("table inet ctxmon") == 1
    assert "table inet ctxmon" not in r["after_close"]
    # libnftables' errors come back as nft's one line.
    assert r["libnft_error"].startswith("Error: No such file or directory"), r


def test_daemon_exports_the_series_writes_rrd_and_removes_its_table_at_exit(tmp_path):
    r = run_scenario("daemon", str(tmp_path))
    assert r["exit"] == 0, r["log"]
    assert r["tables_running"].count("table inet ctxmon") == 1
    series = {}
    for line in r["metrics"]:
        name, value = line.rsplit(" ", 1)
        series[name] = float(value)
    key = 'ctxmon_context_traffic_transmit_bytes_total{context="nft-client",method="cgroup"}'
    assert key in series, r["metrics"]
    assert near(series[key], r["sent"], 0.05), (series[key], r["sent"])
    rx = 'ctxmon_context_traffic_receive_bytes_total{context="nft-server",method="cgroup"}'
    assert near(series[rx], r["sent"], 0.05), (series[rx], r["sent"])
    assert "traffic: accounting in nftables table inet ctxmon" in r["log"]
    assert "Traceback" not in r["log"]
    assert "table inet ctxmon" not in r["tables_after_off"]  # SIGHUP, accounting off
    assert r["tables_after_on"].count("table inet ctxmon") == 1  # SIGHUP, on again
    # SIGTERM deleted the table; the neighbour's table never changed.
    assert "table inet ctxmon" not in r["tables_after_exit"]
    assert len(set(r["neighbour"])) == 1
    # One RRD file per counted context; none for processes outside the scenario.
    traffic_files = [f for f in r["rrd_files"] if f.endswith("traffic.rrd")]
    assert len(traffic_files) == 2, r["rrd_files"]
    assert len(r["rrd_files"]) < 40, r["rrd_files"]


def test_hybrid_host_cgroup2_at_unified_is_counted():
    # nft resolves cgroup paths under /sys/fs/cgroup: named unified/<path> they count.
    r = run_scenario("hybrid")
    client, server = r["after"]["nft-client"], r["after"]["nft-server"]
    assert client["method"] == server["method"] == "cgroup"
    assert near(client["tx_bytes"], r["sent"]) and near(server["rx_bytes"], r["sent"]), r
    assert r["errors"] == {}


def test_without_cap_net_admin_it_says_so_once_and_counts_what_it_can():
    r = run_scenario("nocap")
    assert "stderr" not in r, r
    said = [line for line in r["log"] if line.startswith("traffic:")]  # three polls, one close
    assert len(said) == 1, r["log"]
    assert "cannot create table inet ctxmon" in said[0] and "CAP_NET_ADMIN" in said[0]
    assert r["out"] == {"own": ["netns", 100]}  # the shared-network context has no figure
    assert "table inet ctxmon" not in r["tables"] and r["neighbour_same"]
