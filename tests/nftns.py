"""Traffic-accounting scenarios with real nftables, run inside a private network and
mount namespace so the host's own ruleset is never touched:

    unshare -m -n -- python tests/nftns.py SCENARIO [ARGS...]

Each scenario sets up `lo` and a cgroup2 mount at /sys/fs/cgroup (where nft resolves
`socket cgroupv2` paths), makes real TCP traffic between real processes in real
cgroups, samples through the real collector, and prints what it observed as one JSON
object on stdout. The assertions are in tests/test_traffic_nft.py.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from collector.cgroup import CgroupSource  # noqa: E402
from collector.procfs import ErrorCounts  # noqa: E402
from collector.sampler import Sampler  # noqa: E402
from collector.traffic import LibNft, NftError, NftTable, TrafficAccounting, run_nft  # noqa: E402
from collector.vserver import VServerSource  # noqa: E402

PORT = 5201
# A neighbour's table: rules, a set, a named counter. ctxmon must never change it.
NEIGHBOUR = """table inet neighbour {
	set blocked { type ipv4_addr; elements = { 192.0.2.1, 192.0.2.7 } }
	counter dropped { }
	chain input { type filter hook input priority 10; policy accept;
		ip saddr @blocked counter name "dropped" drop
		tcp dport 9 reject
	}
}
"""
# The IP-level reference: every packet to and from the test port, counted by nft.
REFERENCE = f"""table ip reference {{
	chain out {{ type filter hook output priority 400; policy accept;
		tcp dport {PORT} counter
		tcp sport {PORT} counter
		ip saddr 127.0.1.5 tcp dport {PORT} counter
		ip daddr 127.0.1.5 tcp sport {PORT} counter
	}}
}}
"""

# A process that joins a cgroup, then waits for commands on stdin:
# "listen", "send N [SRC]", "exit". It answers one line per command.
WORKER = r"""
import socket, sys
cg = sys.argv[1]
if cg:
    with open(cg + "/cgroup.procs", "w") as f:
        f.write("0")
srv = None
conns = []
got = 0
print("ready", flush=True)
for line in sys.stdin:
    cmd = line.split()
    if cmd[0] == "listen":
        srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("127.0.0.1", int(cmd[1]))); srv.listen(8)
        print("ok", flush=True)
    elif cmd[0] == "recv":
        c, _ = srv.accept()
        n = 0
        while True:
            b = c.recv(1 << 16)
            if not b:
                break
            n += len(b)
        c.close()
        print(n, flush=True)
    elif cmd[0] == "send":
        s = socket.socket()
        if len(cmd) > 3:
            s.bind((cmd[3], 0))
        s.connect(("127.0.0.1", int(cmd[2])))
        left = int(cmd[1]); chunk = b"x" * 65536
        while left:
            left -= s.send(chunk[:min(left, len(chunk))])
        s.shutdown(socket.SHUT_WR); s.recv(1); s.close()
        print("sent", flush=True)
    elif cmd[0] == "exit":
        break
"""


def sh(*args: str, stdin: str | None = None) -> str:
    return subprocess.run(args, input=stdin, capture_output=True, text=True, check=True).stdout


def setup_namespace(hybrid: bool = False) -> None:
    # Never run outside a private namespace: a fresh one has nothing but lo.
    with open("/proc/self/net/dev") as f:
        devs = [l.split(":")[0].strip() for l in f.read().splitlines()[2:]]
    if devs != ["lo"]:
        raise SystemExit("refusing: run me under `unshare -m -n` (found %s)" % devs)
    sh("ip", "link", "set", "lo", "up")
    if hybrid:  # a hybrid host's layout: a tmpfs, cgroup2 at unified/ in it
        sh("mount", "-t", "tmpfs", "cgroup", "/sys/fs/cgroup")
        os.mkdir("/sys/fs/cgroup/unified")
        sh("mount", "-t", "cgroup2", "none", "/sys/fs/cgroup/unified")
    elif not os.path.isfile("/sys/fs/cgroup/cgroup.controllers"):
        sh("mount", "-t", "cgroup2", "none", "/sys/fs/cgroup")
    sh("nft", "-f", "-", stdin=NEIGHBOUR)
    sh("nft", "-f", "-", stdin=REFERENCE)


def neighbour() -> str:
    return sh("nft", "list", "table", "inet", "neighbour")


def tables() -> list[str]:
    return [l.strip() for l in sh("nft", "list", "tables").splitlines() if l.strip()]


def reference() -> dict[str, int]:
    """IP-level bytes to the port (client -> server) and from it."""
    data = json.loads(sh("nft", "-j", "list", "table", "ip", "reference"))
    counts = []
    for item in data["nftables"]:
        rule = item.get("rule")
        if rule:
            for e in rule["expr"]:
                if "counter" in e:
                    counts.append(e["counter"]["bytes"])
    return {"to_port": counts[0], "from_port": counts[1],
            "guest_to_port": counts[2], "port_to_guest": counts[3]}


class Worker:
    def __init__(self, cgroup: str):
        self.p = subprocess.Popen([sys.executable, "-c", WORKER, cgroup], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True)
        assert self.p.stdout.readline().strip() == "ready"

    def ask(self, cmd: str) -> str:
        self.p.stdin.write(cmd + "\n")
        self.p.stdin.flush()
        return self.p.stdout.readline().strip()

    def tell(self, cmd: str) -> None:
        self.p.stdin.write(cmd + "\n")
        self.p.stdin.flush()

    def answer(self) -> str:
        return self.p.stdout.readline().strip()

    def stop(self) -> None:
        try:
            self.tell("exit")
        except BrokenPipeError:
            pass
        self.p.wait(10)


def transfer(server: Worker, client: Worker, nbytes: int, src: str | None = None) -> int:
    server.tell("recv")
    assert client.ask(f"send {nbytes} {PORT}" + (f" {src}" if src else "")) == "sent"
    return int(server.answer())


def traffic_of(snap, name: str) -> dict | None:
    c = snap.context(name)
    if c is None or c.traffic is None:
        return None
    t = c.traffic
    return {"method": t.method, "rx_bytes": t.rx_bytes, "rx_packets": t.rx_packets,
            "tx_bytes": t.tx_bytes, "tx_packets": t.tx_packets}


def scenario_cgroup() -> dict:
    """Two cgroups, a known transfer, then the client's context removed and recreated."""
    base_name = f"ctxmon-nfttest-{os.getpid()}"
    base = f"/sys/fs/cgroup/{base_name}"
    out: dict = {"neighbour": [neighbour()]}
    # A hostile cgroup name: were it pasted into nft's input, the neighbour's table
    # would go and a table of the attacker's would appear.
    evil = 'x" } ; delete table inet neighbour ; add table inet owned { "'
    for d in ("client", "server", evil):
        os.makedirs(f"{base}/{d}")
    source = CgroupSource("/proc", cgroup_root="/sys/fs/cgroup",
                          rules=[{"glob": f"{base_name}/*", "name": "nft-{1}"}])
    sampler = Sampler(source, traffic=TrafficAccounting("/sys/fs/cgroup"))
    workers: list[Worker] = []
    try:
        server = Worker(f"{base}/server")
        client = Worker(f"{base}/client")
        hostile = Worker(f"{base}/{evil}")
        workers += [server, client, hostile]
        assert server.ask(f"listen {PORT}") == "ok"
        s0 = sampler.sample()  # builds the table with both contexts
        out["tables_after_start"] = tables()
        out["neighbour"].append(neighbour())
        out["before"] = {n: traffic_of(s0, n) for n in ("nft-client", "nft-server")}
        out["hostile_before"] = traffic_of(s0, "nft-" + evil)
        ref0 = reference()
        out["received_by_server"] = transfer(server, client, 20_000_000)
        s1 = sampler.sample()
        ref1 = reference()
        out["ref"] = {k: ref1[k] - ref0[k] for k in ref1}
        out["after"] = {n: traffic_of(s1, n) for n in ("nft-client", "nft-server")}
        transfer(server, hostile, 1_000_000)
        out["hostile_after"] = traffic_of(sampler.sample(), "nft-" + evil)

        # The client's context goes away (process gone, cgroup removed) ...
        client.stop()
        workers.remove(client)
        os.rmdir(f"{base}/client")
        s2 = sampler.sample()
        out["gone"] = traffic_of(s2, "nft-client")
        out["neighbour"].append(neighbour())
        # ... and comes back as a new cgroup (a new id), sending more.
        os.makedirs(f"{base}/client")
        client = Worker(f"{base}/client")
        workers.append(client)
        s3 = sampler.sample()
        out["back"] = traffic_of(s3, "nft-client")
        transfer(server, client, 5_000_000)
        s4 = sampler.sample()
        out["back_after"] = traffic_of(s4, "nft-client")
        out["errors"] = dict(s4.errors)
        # Someone deletes our table: the next poll makes it anew, counting on upwards.
        sh("nft", "delete", "table", "inet", "ctxmon")
        sampler.sample()
        out["tables_after_recreate"] = tables()
        transfer(server, client, 1_000_000)
        out["after_delete"] = traffic_of(sampler.sample(), "nft-client")
    finally:
        for w in workers:
            w.p.kill()
            w.p.wait()
        sampler.close()
        for d in ("client", "server", evil):
            if os.path.isdir(f"{base}/{d}"):
                os.rmdir(f"{base}/{d}")
        os.rmdir(base)
    out["tables_after_close"] = tables()
    out["neighbour"].append(neighbour())
    return out


def scenario_vserver(fixture: str) -> dict:
    """A recorded VServer tree whose guest `portal` has 127.0.1.5: real traffic from it."""
    tmp = tempfile.mkdtemp()
    try:
        root = os.path.join(tmp, "vs")
        shutil.copytree(fixture, root, symlinks=True)
        ifdir = os.path.join(root, "etc/vservers/portal/interfaces/0")
        os.makedirs(ifdir)
        with open(os.path.join(ifdir, "ip"), "w") as f:
            f.write("127.0.1.5/8\n")
        # The recorded tree's processes, not the live ones: a live pid of the same
        # number is in the host's network namespace, which is not this one.
        proc = os.path.join(root, "proc")
        sampler = Sampler(VServerSource(proc), proc,
                          traffic=TrafficAccounting("/sys/fs/cgroup"))
        server, client = Worker(""), Worker("")
        try:
            assert server.ask(f"listen {PORT}") == "ok"
            s0 = sampler.sample()
            name = "customer-portal-staging-01"
            out = {"before": traffic_of(s0, name)}
            ref0 = reference()
            transfer(server, client, 10_000_000, src="127.0.1.5")
            transfer(server, client, 1_000_000)  # from 127.0.0.1: not the guest's
            s1 = sampler.sample()
            ref1 = reference()
            out["after"] = traffic_of(s1, name)
            out["ref"] = {k: ref1[k] - ref0[k] for k in ref1}
            out["others"] = {c.label: traffic_of(s1, c.label) for c in s1.contexts}
        finally:
            for w in (server, client):
                w.p.kill()
                w.p.wait()
            sampler.close()
        out["tables_after_close"] = tables()
        return out
    finally:
        shutil.rmtree(tmp)


def scenario_hybrid() -> dict:
    """cgroup2 at /sys/fs/cgroup/unified, where nft does not look by itself."""
    base_name = f"ctxmon-nfthybrid-{os.getpid()}"
    base = f"/sys/fs/cgroup/unified/{base_name}"
    for d in ("client", "server"):
        os.makedirs(f"{base}/{d}")
    source = CgroupSource("/proc", cgroup_root="/sys/fs/cgroup",
                          rules=[{"glob": f"{base_name}/*", "name": "nft-{1}"}])
    sampler = Sampler(source, traffic=TrafficAccounting("/sys/fs/cgroup"))
    workers: list[Worker] = []
    out: dict = {}
    try:
        server, client = Worker(f"{base}/server"), Worker(f"{base}/client")
        workers += [server, client]
        assert server.ask(f"listen {PORT}") == "ok"
        sampler.sample()
        ref0 = reference()
        transfer(server, client, 5_000_000)
        s1 = sampler.sample()
        ref1 = reference()
        out["sent"] = ref1["to_port"] - ref0["to_port"]
        out["after"] = {n: traffic_of(s1, n) for n in ("nft-client", "nft-server")}
        out["errors"] = dict(s1.errors)
    finally:
        for w in workers:
            w.p.kill()
            w.p.wait()
        sampler.close()
        for d in ("client", "server"):
            os.rmdir(f"{base}/{d}")
        os.rmdir(base)
    return out


NOCAP_CHILD = r"""
import json, logging, sys
sys.path.insert(0, sys.argv[1])
from collector.procfs import ErrorCounts
from collector.snapshot import ContextSample, InterfaceSample
from collector.traffic import TrafficAccounting
lines = []
class Keep(logging.Handler):
    def emit(self, record):
        lines.append(record.getMessage())
logging.getLogger().addHandler(Keep())
logging.getLogger().setLevel(logging.INFO)
def ctx(key, **kw):
    return ContextSample(key=key, name=key, ctx_id=key, source="cgroup", processes=1, threads=1,
                         vsz_bytes=0, rss_bytes=0, cpu_user_seconds=0.0, cpu_system_seconds=0.0,
                         cpu_accounting="kernel", live_user_seconds=0.0, live_system_seconds=0.0,
                         start_time=None, uptime_seconds=None, first_process_start=None, **kw)
own = ctx("own", cgroup="own", interfaces=(InterfaceSample("eth0", 100, 1, 0, 0, 50, 1, 0, 0),))
shared = ctx("shared", cgroup="shared")
acc = TrafficAccounting("/sys/fs/cgroup")
out = {}
for t in range(3):
    got = acc.sample([own, shared], float(t), ErrorCounts())
    out = {k: [v.method, v.rx_bytes] for k, v in got.items()}
acc.close()
print(json.dumps({"log": lines, "out": out}))
"""


def scenario_nocap() -> dict:
    """Without CAP_NET_ADMIN (root, but the capability dropped): one line, no table,
    the contexts with their own namespace still counted."""
    os.makedirs("/sys/fs/cgroup/shared", exist_ok=True)
    try:
        before = neighbour()
        p = subprocess.run(["setpriv", "--inh-caps=-net_admin", "--bounding-set=-net_admin", "--",
                            sys.executable, "-c", NOCAP_CHILD, os.path.dirname(HERE)],
                           capture_output=True, text=True, timeout=30)
        out = json.loads(p.stdout) if p.returncode == 0 else {"stderr": p.stderr[-2000:]}
    finally:
        os.rmdir("/sys/fs/cgroup/shared")
    out["tables"] = tables()
    out["neighbour_same"] = neighbour() == before
    return out


def scenario_kill9() -> dict:
    """A collector killed with SIGKILL leaves its table; the next start replaces it."""
    code = ("import sys, time; sys.path.insert(0, %r)\n"
            "from collector.traffic import TrafficAccounting\n"
            "t = TrafficAccounting('/sys/fs/cgroup'); t.start()\n"
            "print('started', flush=True); time.sleep(60)\n") % os.path.dirname(HERE)
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "started"
    p.kill()
    p.wait()
    out = {"after_kill": tables()}
    # This start goes through the nft executable (the fallback where libnftables does
    # not load); the other scenarios through libnftables in-process.
    t = TrafficAccounting("/sys/fs/cgroup", table=NftTable(run=run_nft))
    t.start()
    out["after_restart"] = tables()
    t.close()
    out["after_close"] = tables()
    try:
        LibNft()(["list", "table", "inet", "ctxmon"])
    except NftError as e:
        out["libnft_error"] = str(e)
    return out


def scenario_daemon(workdir: str) -> dict:
    """`ctxmon run` with `[traffic] accounting = "nftables"`, as an admin runs it: the
    series on /metrics, traffic.rrd, the table gone after SIGTERM. Run in a private
    pid namespace too (`unshare -p -f --mount-proc`), so the daemon sees only this
    scenario's processes and writes RRD files for them alone."""
    from daemonproc import POLLED, Daemon, write_config

    import pathlib
    base_name = f"ctxmon-nftdaemon-{os.getpid()}"
    base = f"/sys/fs/cgroup/{base_name}"
    for d in ("client", "server"):
        os.makedirs(f"{base}/{d}")
    work = pathlib.Path(workdir)
    config = write_config(work / "ctxmon.toml", work / "rrd", extra=f"""
[[collector.rule]]
glob = "{base_name}/*"
name = "nft-{{1}}"

[traffic]
accounting = "nftables"
""")
    out: dict = {"neighbour": [neighbour()]}
    workers: list[Worker] = []
    daemon = None
    try:
        server, client = Worker(f"{base}/server"), Worker(f"{base}/client")
        workers += [server, client]
        assert server.ask(f"listen {PORT}") == "ok"
        daemon = Daemon(config, work / "daemon.log")
        daemon.wait_for_log(POLLED, limit=30)
        out["tables_running"] = tables()
        ref0 = reference()
        transfer(server, client, 5_000_000)
        ref1 = reference()
        out["sent"] = ref1["to_port"] - ref0["to_port"]
        polls = daemon.text().count(POLLED)
        daemon.wait_for_log(POLLED, limit=30, count=polls + 2)
        out["metrics"] = [line for line in daemon.metrics().splitlines()
                          if line.startswith("ctxmon_context_traffic_")]
        out["neighbour"].append(neighbour())
        # A SIGHUP with accounting turned off deletes the table, the daemon runs on.
        text = open(config).read().replace('accounting = "nftables"', 'accounting = "off"')
        with open(config, "w") as f:
            f.write(text)
        polls = daemon.text().count(POLLED)
        daemon.proc.send_signal(signal.SIGHUP)
        daemon.wait_for_log(POLLED, limit=30, count=polls + 3)
        out["tables_after_off"] = tables()
        # ... and back on: a new table, which SIGTERM then deletes.
        with open(config, "w") as f:
            f.write(text.replace('accounting = "off"', 'accounting = "nftables"'))
        polls = daemon.text().count(POLLED)
        daemon.proc.send_signal(signal.SIGHUP)
        daemon.wait_for_log(POLLED, limit=30, count=polls + 3)
        out["tables_after_on"] = tables()
        out["exit"] = daemon.stop()
        out["log"] = daemon.text()[-100_000:]
    finally:
        if daemon is not None and daemon.proc.poll() is None:
            daemon.proc.kill()
            daemon.proc.wait()
        for w in workers:
            w.p.kill()
            w.p.wait()
        for d in ("client", "server"):
            os.rmdir(f"{base}/{d}")
        os.rmdir(base)
    out["tables_after_exit"] = tables()
    out["neighbour"].append(neighbour())
    out["rrd_files"] = sorted(os.path.relpath(os.path.join(d, f), work / "rrd")
                              for d, _, fs in os.walk(work / "rrd") for f in fs)
    return out


def main() -> None:
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    name, args = sys.argv[1], sys.argv[2:]
    setup_namespace(hybrid=name == "hybrid")
    result = globals()[f"scenario_{name}"](*args)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
