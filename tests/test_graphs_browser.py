"""The admin's pages in a real browser: Debian's chromium, headless, fresh profile,
loading them from the exporter's own HTTP server at /graphs/ on 127.0.0.1.

Chromium is driven over the DevTools protocol on a pipe (--remote-debugging-pipe:
JSON messages ending in NUL, written to its fd 3 and read from its fd 4), so that the
test can ask what a user would see: whether every image decoded (naturalWidth),
which requests failed, what the console said, and a screenshot at a phone's size.
"""

from __future__ import annotations

import base64
import fcntl
import io
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

import pytest

from exporters.names import encode_name
from test_graphs import EVIL, HEIGHT, NOW, WIDTH, Env, ctx, graph_run, make_env, snap

CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None or shutil.which("rrdtool") is None,
    reason="Debian chromium (and rrdtool) not installed; `make test` installs them",
)
pytestmark = [pytestmark, pytest.mark.live, pytest.mark.slow]

PHONE = (390, 844)
NAMES = ("web", *EVIL)


class Browser:
    """One headless Chromium driven over --remote-debugging-pipe."""

    def __init__(self, profile: str):
        def high(fd: int) -> int:  # out of the way of fds 3 and 4 in the child
            new = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
            os.close(fd)
            return new

        to_r, to_w = map(high, os.pipe())
        from_r, from_w = map(high, os.pipe())
        args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-extensions", f"--user-data-dir={profile}", "--remote-debugging-pipe", "about:blank"]
        # bash (not dash) for two-digit fds in redirections; exec keeps the pid.
        script = f'exec "$0" "$@" 3<&{to_r} 4>&{from_w} {to_r}<&- {from_w}>&-'
        self.proc = subprocess.Popen(["bash", "-c", script, CHROMIUM, *args], pass_fds=(to_r, from_w),
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        os.close(to_r)
        os.close(from_w)
        self._out = os.fdopen(to_w, "wb", buffering=0)
        self._in = os.fdopen(from_r, "rb", buffering=0)
        self._id = 0
        self._replies: dict[int, dict] = {}
        self.events: list[dict] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        buf = b""
        while True:
            chunk = self._in.read(1 << 16)
            if not chunk:
                break
            buf += chunk
            *messages, buf = buf.split(b"\0")
            with self._cond:
                for raw in messages:
                    msg = json.loads(raw)
                    if "id" in msg:
                        self._replies[msg["id"]] = msg
                    else:
                        self.events.append(msg)
                self._cond.notify_all()

    def call(self, method: str, params: dict | None = None, session: str | None = None,
             timeout: float = 20) -> dict:
        self._id += 1
        mid = self._id
        msg = {"id": mid, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        self._out.write(json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        with self._cond:
            while mid not in self._replies:
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    raise AssertionError(f"chromium did not answer {method}")
                self._cond.wait(min(left, 0.5))
            reply = self._replies.pop(mid)
        if "error" in reply:
            raise AssertionError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    def wait_event(self, method: str, session: str, since: int, timeout: float = 20) -> dict:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for e in self.events[since:]:
                    if e.get("method") == method and e.get("sessionId") == session:
                        return e
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no {method} from chromium")
                self._cond.wait(min(left, 0.5))

    def page(self, width: int, height: int) -> "Page":
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for method in ("Page.enable", "Runtime.enable", "Log.enable", "Network.enable"):
            self.call(method, session=session)
        self.call("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": True}, session=session)
        return Page(self, session)

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=5)
        except AssertionError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._out.close()


class Page:
    def __init__(self, browser: Browser, session: str):
        self.browser = browser
        self.session = session

    def load(self, url: str) -> list[dict]:
        """Navigate and wait for the load event; the problems the page caused: console
        errors and warnings, uncaught exceptions, failed or non-2xx requests."""
        b = self.browser
        since = len(b.events)
        b.call("Page.navigate", {"url": url}, session=self.session)
        b.wait_event("Page.loadEventFired", self.session, since)
        time.sleep(0.1)  # late log entries
        problems = []
        for e in b.events[since:]:
            if e.get("sessionId") != self.session:
                continue
            m, p = e["method"], e.get("params", {})
            if m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "warning", "assert"):
                problems.append(e)
            elif m == "Runtime.exceptionThrown":
                problems.append(e)
            elif m == "Log.entryAdded" and p["entry"].get("level") in ("error", "warning"):
                problems.append(e)
            elif m == "Network.loadingFailed":
                problems.append(e)
            elif m == "Network.responseReceived" and p["response"]["status"] >= 400:
                problems.append(e)
        return problems

    def evaluate(self, expression: str):
        r = self.browser.call("Runtime.evaluate", {"expression": expression, "returnByValue": True},
                              session=self.session)
        assert "exceptionDetails" not in r, r
        return r["result"]["value"]

    def screenshot(self) -> bytes:
        data = self.browser.call("Page.captureScreenshot", {"format": "png"}, session=self.session)["data"]
        return base64.b64decode(data)


INSPECT = """JSON.stringify({
  images: [...document.images].map(i => ({src: i.currentSrc, complete: i.complete, width: i.naturalWidth,
                                            height: i.naturalHeight})),
  links: [...document.links].map(a => a.href),
  scripts: document.scripts.length,
  cells: [...document.querySelectorAll('td:first-child')].map(td => td.textContent),
  headings: [...document.querySelectorAll('h1, h2')].map(h => h.textContent),
  scrollWidth: document.documentElement.scrollWidth,
  title: document.title,
})"""


@dataclass
class Site:
    env: Env
    base: str  # URL of the graphs folder
    browser: Browser
    scratch: str


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A rendered graphs folder served by the exporter's HTTP server."""
    from prometheus_client import CollectorRegistry

    from exporters.http import MetricsServer

    root = os.path.realpath(tmp_path_factory.mktemp("site"))
    scratch = os.path.realpath(tmp_path_factory.mktemp("browser"))  # profile, screenshots
    env = make_env(root, names=NAMES, days=1.2)
    write_alerts(env)
    result = graph_run(env).run(periods=("day", "week"))
    assert result.failed == 0
    server = MetricsServer("127.0.0.1:0", registry=CollectorRegistry(), graphs_dir=env.graphs_dir)
    server.start()
    browser = Browser(tempfile.mkdtemp(prefix="profile-", dir=scratch))
    try:
        yield Site(env, f"http://127.0.0.1:{server.port}/graphs/", browser, scratch)
    finally:
        browser.close()
        server.stop()


def write_alerts(env: Env) -> None:
    """Alerts firing for `<script>alert(1)</script>` (critical) and web (warning), handed
    over as the daemon does."""
    from alerts.engine import AlertEngine
    from alerts.handoff import ALERT_STATE_FILE, write_alert_state
    from alerts.model import AlertRule, AlertsConfig, Level

    rules = (AlertRule(name="Procs", metric="processes", warning=Level(1), critical=Level(2),
                       contexts=(EVIL[0],)),
             AlertRule(name="Mem", metric="rss", warning=Level(2**20), contexts=("web",)))
    engine = AlertEngine(AlertsConfig(rules=rules), cpus=2, host="h")
    try:
        engine.evaluate(snap(NOW, [ctx(EVIL[0], 1, 1, 2**20, 2**20, 3, 3), ctx("web", 1, 1, 2**30, 2**30, 2, 2)],
                             []))
        assert write_alert_state(engine, os.path.join(env.graphs_dir, ALERT_STATE_FILE))
    finally:
        engine.close()


BANNER = """JSON.stringify((() => {
  const b = document.querySelector('section.alerts');
  if (!b) return null;
  const r = b.getBoundingClientRect();
  return {text: b.innerText, items: [...b.querySelectorAll('li')].map(li => li.textContent),
          elements: [...b.querySelectorAll('*')].map(e => e.tagName.toLowerCase()),
          top: r.top, right: r.right, heading: getComputedStyle(b.querySelector('h2')).backgroundColor};
})())"""


def fetch_status(url: str) -> int:
    with urllib.request.urlopen(url, timeout=10) as r:
        r.read()
        return r.status


def test_overview_loads_every_image_and_link_and_shows_names_as_text(site):
    page = site.browser.page(*PHONE)
    problems = page.load(site.base + "index.html")
    assert problems == []
    info = json.loads(page.evaluate(INSPECT))
    assert info["scripts"] == 0
    # host cpu, mem, tasks and both host interfaces, each decoded at its real size
    assert len(info["images"]) == 5
    for img in info["images"]:
        assert img["complete"] and (img["width"], img["height"]) == (WIDTH, HEIGHT), img
    # names are text, exactly as the admin reads them
    for name in ("<script>alert(1)</script>", "../../etc", "caf\\xc3\\xa9 \"q\" 'x'"):
        assert name in info["cells"]
    assert info["scrollWidth"] <= PHONE[0]  # nothing wider than a phone: the table scrolls in its box
    # every link resolves on the server, and stays under /graphs/
    links = set(info["links"])
    assert len(links) >= 4 + len(NAMES)
    for link in links:
        assert urlsplit(link).path.startswith("/graphs/"), link
        assert fetch_status(link) == 200, link
    shot = page.screenshot()
    with open(os.path.join(site.scratch, "overview-phone.png"), "wb") as f:
        f.write(shot)
    assert_not_blank(shot, PHONE)


def test_context_pages_of_hostile_names_load_cleanly(site):
    page = site.browser.page(*PHONE)
    for name in EVIL:
        for period_page, drawn in (("index.html", True), ("week.html", True), ("year.html", False)):
            url = site.base + "ctx/" + quote(encode_name(name), safe="") + "/" + period_page
            assert page.load(url) == [], url
            info = json.loads(page.evaluate(INSPECT))
            assert info["scripts"] == 0
            assert any(name.replace("\udcc3\udca9", "\\xc3\\xa9") in h for h in info["headings"])
            if drawn:
                assert len(info["images"]) == 3  # cpu, mem, tasks
                assert all(i["complete"] and i["width"] == WIDTH for i in info["images"])
            else:
                assert info["images"] == []  # not drawn yet: said in words, no broken image
            for link in set(info["links"]):
                assert fetch_status(link) == 200, link
    # nothing was written beside the graphs folder: `../../etc` is only a name
    assert sorted(os.listdir(site.env.root)) == ["ctxmon.toml", "graphs", "rrd"]


def test_phone_screenshot_of_a_context_page(site):
    page = site.browser.page(*PHONE)
    assert page.load(site.base + "ctx/web/index.html") == []
    shot = page.screenshot()
    with open(os.path.join(site.scratch, "web-phone.png"), "wb") as f:
        f.write(shot)
    assert_not_blank(shot, PHONE)


def test_the_harness_sees_a_broken_image(site):
    """The checks above can fail: a page with a missing PNG is reported."""
    broken = os.path.join(site.env.graphs_dir, "broken-test.html")
    with open(broken, "w") as f:
        f.write('<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>t</title>'
                '<link rel="icon" href="data:,"></head><body><img src="missing-day.png" alt="x"></body></html>')
    try:
        page = site.browser.page(*PHONE)
        problems = page.load(site.base + "broken-test.html")
        assert problems and any("404" in json.dumps(p) for p in problems)
        info = json.loads(page.evaluate(INSPECT))
        assert info["images"][0]["width"] == 0
    finally:
        os.unlink(broken)


def assert_not_blank(png: bytes, size: tuple[int, int]) -> None:
    from PIL import Image

    with Image.open(io.BytesIO(png)) as im:
        assert im.size == size
        colors = im.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colors is not None and len(colors) > 200  # header, text, graph colours
    assert max(count for count, _ in colors) < 0.8 * size[0] * size[1]  # no colour fills the page


def test_the_alert_banner_shows_hostile_names_as_text_at_the_top(site):
    page = site.browser.page(*PHONE)
    assert page.load(site.base + "index.html") == []
    banner = json.loads(page.evaluate(BANNER))
    assert banner is not None
    assert banner["text"].startswith("2 alerts firing")
    assert banner["heading"] == "rgb(183, 28, 28)"  # a critical alert: red
    [critical, warning] = banner["items"]
    assert critical.startswith("critical Procs on <script>alert(1)</script>: "
                               "<script>alert(1)</script>: 3 processes (threshold 2)")
    assert warning.startswith("warning Mem on web: web: resident memory 1GiB (threshold 1MiB)")
    assert set(banner["elements"]) <= {"h2", "ul", "li", "span", "strong", "a"}  # no script, no markup from names
    assert banner["right"] <= PHONE[0] and banner["top"] < 200  # on a phone, near the top
    assert page.evaluate("document.scripts.length") == 0
    # a context's page shows its own alert, and the state file itself is never served
    url = site.base + "ctx/" + quote(encode_name(EVIL[0]), safe="") + "/index.html"
    assert page.load(url) == []
    banner = json.loads(page.evaluate(BANNER))
    assert banner["text"].startswith("1 alert firing") and "1 alert firing on other contexts" in banner["text"]
    with pytest.raises(urllib.error.HTTPError) as e:
        fetch_status(site.base + ".ctxmon-alerts.json")
    assert e.value.code == 404
