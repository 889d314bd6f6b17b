"""A private, real Prometheus for tests: start it on loopback, wait for it, query its API.

Debian's `prometheus` package provides the binaries. The configuration is written as
JSON, which is YAML too, so no YAML library is needed. Nothing here sleeps for a fixed
time: every wait polls Prometheus' own API until the condition holds or a deadline
passes (then the error says what was last seen, with the end of Prometheus' log).

    with PrometheusServer(workdir, targets=["127.0.0.1:9717"]) as prom:
        prom.wait_for_targets(1)
        prom.query('ctxmon_build_info')
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Callable, Sequence, TypeVar

T = TypeVar("T")

NEVER = "0001-01-01T00:00:00Z"  # lastScrape of a target not scraped yet


def find_binary(name: str = "prometheus") -> str | None:
    return shutil.which(name)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrometheusError(RuntimeError):
    pass


class PrometheusServer:
    """One Prometheus process with its own config, data directory and port.

    `targets`: host:port strings scraped by one job `ctxmon`; or pass full
    `scrape_configs`. `rule_files` are loaded as given; `extra_config` is merged into
    the top level (e.g. an `alerting` section for later tests).
    """

    def __init__(
        self,
        workdir: str,
        targets: Sequence[str] = (),
        scrape_configs: list[dict] | None = None,
        scrape_interval: str = "1s",
        rule_files: Sequence[str] = (),
        extra_config: dict | None = None,
        binary: str | None = None,
    ):
        self.workdir = str(workdir)
        self.binary = binary or find_binary("prometheus")
        if self.binary is None:
            raise PrometheusError("prometheus is not installed (Debian package prometheus)")
        if scrape_configs is None:
            scrape_configs = [{
                "job_name": "ctxmon",
                "static_configs": [{"targets": list(targets)}],
            }]
        self.config: dict[str, Any] = {
            "global": {
                "scrape_interval": scrape_interval,
                "scrape_timeout": scrape_interval,
                "evaluation_interval": scrape_interval,
            },
            "scrape_configs": scrape_configs,
        }
        if rule_files:
            self.config["rule_files"] = [str(f) for f in rule_files]
        self.config.update(extra_config or {})
        self.config_file = os.path.join(self.workdir, "prom.yml")
        self.log_file = os.path.join(self.workdir, "prometheus.log")
        self.port: int | None = None
        self.proc: subprocess.Popen | None = None

    # -- lifecycle ----------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def write_config(self) -> None:
        with open(self.config_file, "w") as f:
            json.dump(self.config, f, indent=1)

    def start(self, timeout: float = 30.0) -> "PrometheusServer":
        os.makedirs(self.workdir, exist_ok=True)
        self.write_config()
        for attempt in range(3):  # a free port can be taken before Prometheus binds it
            self.port = free_port()
            log = open(self.log_file, "ab")
            try:
                self.proc = subprocess.Popen(
                    [self.binary,
                     f"--config.file={self.config_file}",
                     f"--storage.tsdb.path={os.path.join(self.workdir, 'data')}",
                     f"--web.listen-address=127.0.0.1:{self.port}",
                     "--web.enable-lifecycle",
                     "--log.level=warn"],
                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
            finally:
                log.close()
            try:
                self.wait_until(self._ready, timeout, "Prometheus ready")
                return self
            except PrometheusError:
                exited = self.proc.poll() is not None
                self.stop()
                if not exited or "address already in use" not in self.log_tail():
                    raise
        raise PrometheusError("Prometheus did not start: " + self.log_tail())

    def stop(self) -> None:
        p = self.proc
        if p is None:
            return
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)
        self.proc = None

    def reload(self) -> None:
        """Re-read the config (after write_config) and rule files."""
        self._request("POST", "/-/reload")

    def __enter__(self) -> "PrometheusServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def log_tail(self, lines: int = 20) -> str:
        try:
            with open(self.log_file, errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""

    # -- API ----------------------------------------------------------------------

    def _request(self, method: str, path: str, params: dict | None = None,
                 timeout: float = 10.0) -> bytes:
        url = self.url + path
        if params:
            url += "?" + urllib.parse.urlencode(params)
        req = urllib.request.Request(url, method=method)
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.read()

    def api(self, path: str, **params) -> Any:
        """GET /api/v1/<path>; returns `data`, raises PrometheusError on an API error."""
        try:
            body = self._request("GET", "/api/v1/" + path, params)
        except urllib.error.HTTPError as e:
            body = e.read()
        answer = json.loads(body)
        if answer.get("status") != "success":
            raise PrometheusError(f"{path} {params}: {answer.get('error', answer)}")
        return answer["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict]:
        """An instant query's result: [{"metric": {...}, "value": [t, "v"]}, ...]."""
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        data = self.api("query", **params)
        result = data["result"]
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": result}]
        return result

    def values(self, expr: str, at: float | None = None) -> dict[frozenset, float]:
        """An instant query as {label items: value}."""
        return {frozenset(r["metric"].items()): float(r["value"][1])
                for r in self.query(expr, at)}

    def targets(self) -> list[dict]:
        return self.api("targets", state="active")["activeTargets"]

    def rules(self) -> list[dict]:
        return self.api("rules")["groups"]

    def alerts(self) -> list[dict]:
        return self.api("alerts")["alerts"]

    # -- waiting ------------------------------------------------------------------

    def _ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise PrometheusError(f"Prometheus exited ({self.proc.returncode}): "
                                  + self.log_tail())
        try:
            return self._request("GET", "/-/ready", timeout=2) is not None
        except (urllib.error.URLError, OSError):
            return False

    def wait_until(self, check: Callable[[], T], timeout: float, what: str,
                   interval: float = 0.2) -> T:
        """Poll `check` until it returns something truthy; returns that."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while True:
            try:
                last = check()
            except (urllib.error.URLError, OSError) as e:
                last = e
            else:
                if last:
                    return last
            if time.monotonic() > deadline:
                raise PrometheusError(
                    f"timed out after {timeout:g}s waiting for {what}; last seen: {last!r}\n"
                    + self.log_tail()
                )
            if self.proc is not None and self.proc.poll() is not None:
                raise PrometheusError(f"Prometheus exited while waiting for {what}: "
                                      + self.log_tail())
            time.sleep(interval)

    def wait_for_targets(self, count: int, timeout: float = 30.0) -> list[dict]:
        """Until `count` targets have been scraped and are up (Debian's 2.42 applies new
        targets only every 5 s, so the first scrape comes some seconds after ready)."""

        def up():
            ts = self.targets()
            done = [t for t in ts if t["health"] == "up" and t["lastScrape"] != NEVER]
            return ts if len(done) >= count else None

        try:
            return self.wait_until(up, timeout, f"{count} target(s) up")
        except PrometheusError:
            raise PrometheusError(f"targets not up: {self.targets()}\n{self.log_tail()}")

    def wait_for_query(self, expr: str, timeout: float = 20.0,
                       accept: Callable[[list[dict]], bool] = bool) -> list[dict]:
        """Until the instant query `expr` returns a result `accept` approves."""
        def check():
            r = self.query(expr)
            return r if accept(r) else None
        return self.wait_until(check, timeout, f"query {expr!r}")

    def wait_for_absent(self, expr: str, timeout: float = 20.0) -> None:
        """Until the instant query `expr` returns nothing (e.g. a series went stale)."""
        self.wait_until(lambda: not self.query(expr), timeout, f"{expr!r} to vanish")
