"""graphs: pages drawn on request by the long-lived renderer worker, runs that save
their progress as they go (a killed run resumes), the lock `ctxmon graph` waits for,
and the page /graphs/ shows before the first graphs.

The worker is the real child process (`python -I -m graphs`) started by
graphs.client.Renderer; the endpoint is the real exporters.http.MetricsServer.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from exporters.http import MetricsServer
from exporters.names import encode_name
from graphs.client import Renderer, page_request
from graphs.run import LOCK_FILE, STATE_FILE, GraphRun
from graphs.settings import RenderSettings, SettingsError
from test_graphs import EVIL, NOW, STEP, T_END, make_env, pixels

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def env(tmp_path):
    return make_env(os.path.realpath(str(tmp_path)), names=("web", "db", EVIL[0]), days=1)


def settings_of(env, **kw) -> RenderSettings:
    return RenderSettings.from_config(env.cfg, **kw)


@pytest.fixture
def renderer(env):
    r = Renderer(settings_of(env), page_timeout=60)
    yield r
    r.close()


class Registry:
    def collect(self):
        return []


def test_page_request_takes_only_a_context_page_or_graph():
    slug = encode_name(EVIL[0])
    assert page_request(f"ctx/{slug.replace('%', '%25')}/index.html") == (slug, "day")
    assert page_request("ctx/web/") == ("web", "day")
    assert page_request("ctx/web/month.html") == ("web", "month")
    assert page_request("ctx/web/cpu-week.png") == ("web", "week")
    assert page_request("ctx/web/net-veth0-year.png") == ("web", "year")
    for rel in ("", "index.html", "if-eth0-day.png", "ctx/web", "ctx/web/notes.txt", "ctx/../index.html",
                "ctx/.x/index.html", "ctx/web/../../index.html", "ctx/web/cpu-fortnight.png",
                "ctx/%ff/index.html", "ctx/a%2fb/index.html", "ctx/web/index.html%00", "ctx/<b>/index.html"):
        assert page_request(rel) is None, rel


def test_settings_go_through_json_and_bad_ones_are_refused(env):
    s = settings_of(env)
    assert RenderSettings.from_json(s.to_json()) == s
    for bad in ("[]", "{", json.dumps({**json.loads(s.to_json()), "width": 10}),
                json.dumps({**json.loads(s.to_json()), "evil": 1}),
                json.dumps({**json.loads(s.to_json()), "rrd_dir": ""})):
        with pytest.raises(SettingsError):
            RenderSettings.from_json(bad)


def test_a_context_page_is_drawn_on_request_and_kept_until_a_new_row(env, renderer):
    reply = renderer.page("web", "day")
    assert reply["ok"], reply
    assert reply["rendered"] == 4  # cpu mem tasks net-veth0
    page = os.path.join(env.graphs_dir, "ctx", "web", "index.html")
    png = os.path.join(env.graphs_dir, "ctx", "web", "cpu-day.png")
    assert os.path.isfile(page) and pixels(png).shape[:2] == (300, 800)
    # The other contexts and periods are not drawn: nobody asked.
    assert not os.path.exists(os.path.join(env.graphs_dir, "ctx", "db"))
    assert not os.path.exists(os.path.join(env.graphs_dir, "ctx", "web", "cpu-week.png"))
    mtime = os.stat(png).st_mtime_ns
    again = renderer.page("web", "day")
    assert again["ok"] and again["rendered"] == 0 and os.stat(png).st_mtime_ns == mtime
    env.write(T_END + STEP)  # a new row: the page is out of date
    env.sink.flush()
    third = renderer.page("web", "day")
    assert third["ok"] and third["rendered"] == 4 and os.stat(png).st_mtime_ns != mtime
    assert renderer.page("nobody", "day") == {"ok": False, "error": "no such context"}


def test_the_endpoint_draws_a_never_drawn_context_page(env):
    renderer = Renderer(settings_of(env))  # the daemon's: waits less than the server's request timeout
    server = MetricsServer("127.0.0.1:0", Registry(), graphs_dir=env.graphs_dir, graph_hook=renderer.on_request)
    server.start()
    try:
        slug = encode_name(EVIL[0]).replace("%", "%25")
        base = f"http://127.0.0.1:{server.port}/graphs/ctx/{slug}/"
        deadline = time.monotonic() + 120
        while True:  # drawn within the hook's wait, or (a loaded machine) a page saying so
            with urllib.request.urlopen(base + "week.html", timeout=90) as r:
                text = r.read().decode()
            assert r.status == 200 and "&lt;script&gt;" in text and "<script>" not in text
            if 'src="mem-week.png"' in text:
                break
            assert "being drawn" in text and time.monotonic() < deadline, text
            time.sleep(1)
        with urllib.request.urlopen(base + "mem-week.png", timeout=90) as r:
            body = r.read()
        assert r.headers["Content-Type"] == "image/png" and body.startswith(b"\x89PNG")
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"http://127.0.0.1:{server.port}/graphs/ctx/nobody/index.html", timeout=30)
        assert e.value.code == 404
    finally:
        server.stop()
        renderer.close()


def test_the_worker_runs_isolated_and_logs_with_timestamps(env, tmp_path):
    # A `graphs` package in the working directory must never be what runs.
    trap = tmp_path / "cwd" / "graphs"
    trap.mkdir(parents=True)
    (trap / "__init__.py").write_text("")
    (trap / "__main__.py").write_text(f"open({str(tmp_path / 'pwned')!r}, 'w').write('x')\n")
    err = tmp_path / "worker.err"
    s = settings_of(env)
    # The daemon's way of starting it, from a working directory holding the trap.
    r = Renderer(s, python=sys.executable)
    cwd = os.getcwd()
    os.chdir(trap.parent)
    try:
        with open(err, "w") as stderr:
            proc = subprocess.Popen([sys.executable, "-I", "-m", "graphs"], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=stderr, text=True)
            proc.stdin.write(s.to_json() + "\n" + json.dumps({"id": 1, "op": "run", "budget": 60}) + "\n")
            proc.stdin.flush()
            out = proc.stdout.readline()
            proc.stdin.close()  # end of input: the worker exits
            assert proc.wait(timeout=30) == 0
        # A periodic run draws the host's graphs and pages, not the contexts without alerts.
        assert os.path.isfile(os.path.join(env.graphs_dir, "cpu-day.png"))
        assert not os.path.exists(os.path.join(env.graphs_dir, "ctx", "web", "cpu-day.png"))
        assert r.page("web", "day", timeout=60)["ok"]  # Renderer's own worker, started in /
    finally:
        os.chdir(cwd)
        r.close()
    assert not (tmp_path / "pwned").exists()
    reply = json.loads(out)
    assert reply["id"] == 1 and reply["ok"], (reply, err.read_text())
    line = next(x for x in err.read_text().splitlines() if "graphs drawn" in x)
    assert time.strptime(line[:19], "%Y-%m-%d %H:%M:%S")  # the daemon's timestamp format


def test_a_periodic_run_draws_the_contexts_with_alerts(env):
    from alerts.handoff import ALERT_STATE_FILE, ALERT_STATE_VERSION

    state = {"version": ALERT_STATE_VERSION, "host_cpus": 2, "thresholds": {}, "alerts": [
        {"alert": "HighCPU", "context": "db", "severity": "warning", "state": "pending", "metric": "cpu",
         "summary": "busy", "since": T_END - 600, "fired_at": None}]}
    os.makedirs(env.graphs_dir, exist_ok=True)
    with open(os.path.join(env.graphs_dir, ALERT_STATE_FILE), "w") as f:
        json.dump(state, f)
    r = GraphRun(settings_of(env), clock=lambda: NOW).run(periods=("day",), alerting_only=True)
    assert r.failed == 0
    assert os.path.isfile(os.path.join(env.graphs_dir, "ctx", "db", "cpu-day.png"))
    assert not os.path.exists(os.path.join(env.graphs_dir, "ctx", "web"))


def test_a_run_out_of_budget_leaves_the_rest_to_the_next(env):
    g = GraphRun(settings_of(env), clock=lambda: NOW)
    first = g.run(periods=("day",), budget=0.0)  # one graph is started, then the budget is spent
    assert first.rendered == 1 and first.left > 0
    second = g.run(periods=("day",))
    assert second.skipped == 1 and second.rendered == first.left


def test_a_killed_run_resumes_where_it_stopped(env):
    """kill -9 in the middle of `ctxmon graph`: what was drawn is not drawn again."""
    cmd = [sys.executable, "-m", "ctxmon.cli", "graph", "-c", env.config, "--period", "day"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT)
    deadline = time.monotonic() + 120
    ctx_dir = os.path.join(env.graphs_dir, "ctx")
    # Killed once the host's graphs and at least one context's are drawn.
    while not (os.path.isdir(ctx_dir) and any(
            os.path.exists(os.path.join(ctx_dir, d, STATE_FILE)) for d in os.listdir(ctx_dir))):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved = [d for d in os.listdir(ctx_dir) if os.path.exists(os.path.join(ctx_dir, d, STATE_FILE))]
    r = GraphRun(settings_of(env)).run(periods=("day",))
    assert r.failed == 0
    # the host's 5 graphs and each saved context's 3-4 were kept
    assert r.skipped >= 5 + 3 * len(saved)
    assert r.rendered + r.skipped == 5 + 3 * 3 + 1


def hold_lock(graphs_dir: str):
    os.makedirs(graphs_dir, exist_ok=True)
    f = open(os.path.join(graphs_dir, LOCK_FILE), "a")
    fcntl.flock(f, fcntl.LOCK_EX)
    return f


def test_ctxmon_graph_waits_for_the_lock_then_draws_and_no_wait_refuses(env):
    cmd = [sys.executable, "-m", "ctxmon.cli", "graph", "-c", env.config, "--period", "day", "--context", "db"]
    lock = hold_lock(env.graphs_dir)
    try:
        r = subprocess.run(cmd + ["--no-wait"], capture_output=True, text=True, cwd=ROOT, timeout=120)
        assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert "another rendering" in r.stderr
        waiting = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, cwd=ROOT)
        time.sleep(2)
        assert waiting.poll() is None  # still waiting for the lock
    finally:
        lock.close()
    _, err = waiting.communicate(timeout=120)
    assert waiting.returncode == 0, err
    assert "waiting for it to finish" in err and "Traceback" not in err
    assert "\r" not in err  # no progress bar on a pipe
    assert os.path.isfile(os.path.join(env.graphs_dir, "ctx", "db", "cpu-day.png"))


def test_graphs_has_a_page_before_the_first_graphs(tmp_path):
    s = RenderSettings(rrd_dir=str(tmp_path / "rrd"), rrd_step=60, graphs_dir=str(tmp_path / "graphs"))
    r = Renderer(s)
    r.start()
    try:
        text = (tmp_path / "graphs" / "index.html").read_text()
        assert "No graphs yet" in text and "first graphs will be drawn at about" in text
        when = time.strftime("%H:%M", time.localtime(r.started_at + 3 * 60 + 2 * 60 + 5))
        assert when in text
    finally:
        r.close()


def get(url: str, timeout: float = 60) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read()
    except urllib.error.HTTPError as e:
        return e.code, "", b""


def test_the_daemon_answers_graphs_at_once_and_draws_a_context_page_on_request(tmp_path, cgroup_factory,
                                                                               daemons):
    from daemonproc import write_config

    graphs_dir = tmp_path / "graphs"
    cfg = write_config(tmp_path / "ctxmon.toml", tmp_path / "rrd",
                       graphs=f'enabled = true\ninterval = "1h"\ndir = "{graphs_dir}"')
    cg = cgroup_factory()
    name = os.path.basename(cg.rel)
    cg.spawn([sys.executable, "-c", "import time; time.sleep(600)"])
    d = daemons(cfg, tmp_path / "daemon.log")
    base = f"http://127.0.0.1:{d.port}/graphs/"
    deadline = time.monotonic() + 20
    while True:  # from the moment the port answers, /graphs/ does
        try:
            status, _, body = get(base, timeout=5)
            break
        except (urllib.error.URLError, ConnectionError):
            assert time.monotonic() < deadline, d.text()
            time.sleep(0.05)
    assert status == 200 and b"first graphs will be drawn at about" in body, d.text()
    d.wait_for_log(f"context appeared: {name}")
    cpu_rrd = tmp_path / "rrd" / "ctx" / encode_name(name) / "cpu.rrd"
    deadline = time.monotonic() + 180
    while not cpu_rrd.exists():  # the first poll may create many other contexts' files first
        assert time.monotonic() < deadline and d.proc.poll() is None, d.text()
        time.sleep(0.2)
    time.sleep(3)  # a few rows at the 1 s step
    page = f"{base}ctx/{encode_name(name)}/"
    # CPU is a rate, and below a 60 s step a day row is 108 s (the RRD row budget):
    # the first cpu-day.png can take up to about three minutes.
    deadline = time.monotonic() + 240
    while True:  # drawn within the hook's wait, or a page saying it is being drawn
        status, ctype, body = get(page + "index.html")
        assert status == 200 and ctype.startswith("text/html"), d.text()
        if b'src="cpu-day.png"' in body:
            break
        # being drawn (the worker is busy) or waiting for a second row (CPU is a rate)
        assert (b"being drawn" in body or b"not drawn yet" in body) and time.monotonic() < deadline, body
        time.sleep(1)
    status, ctype, body = get(page + "cpu-day.png")
    assert status == 200 and ctype == "image/png" and body.startswith(b"\x89PNG")
    assert "matplotlib" not in open(f"/proc/{d.proc.pid}/maps").read()  # the worker's, not ours
    assert d.stop() == 0, d.text()
    assert "Traceback" not in d.text()


def test_requests_past_max_waiting_are_served_from_disk_at_once(env):
    """The HTTP server answers on a few threads: page requests never hold them all."""
    r = Renderer(settings_of(env), page_timeout=60, max_waiting=1)
    try:
        assert r._waiting.acquire(blocking=False)  # one request is waiting already
        t0 = time.monotonic()
        r.on_request("ctx/web/index.html")
        assert time.monotonic() - t0 < 1 and r.stats["busy"] == 1
        page = os.path.join(env.graphs_dir, "ctx", "web", "index.html")
        assert "being drawn" in open(page).read()  # not a 404
        assert not os.path.exists(os.path.join(env.graphs_dir, "ctx", "web", "cpu-day.png"))
        r._waiting.release()
        r.on_request("ctx/web/index.html")
        assert 'src="cpu-day.png"' in open(page).read()
    finally:
        r.close()
