"""`ctxmon run`: the core that only schedules.

Every `[collector] interval` the poll job samples one snapshot and hands it to each
sink in turn; a sink that fails is logged and counted, the others still get the
snapshot. APScheduler runs the job on one worker thread (coalesced, one instance at
a time) while the main thread waits for signals: SIGTERM/SIGINT let the poll in
progress finish, flush rrdcached and exit 0; SIGHUP reloads the config, keeping the
old one when the new one is bad.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field

from apscheduler.events import (
    EVENT_JOB_ERROR,
    EVENT_JOB_MAX_INSTANCES,
    EVENT_JOB_MISSED,
)
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger

from collector import build_source
from collector.sampler import Sampler
from collector.snapshot import Snapshot
from exporters.names import loggable

from .config import Config, ConfigError, load_config

log = logging.getLogger("ctxmon.daemon")



@dataclass
class DaemonStats:
    """Self-metrics the exporter serves."""

    polls: int = 0
    poll_failures: int = 0
    missed_polls: int = 0
    sink_errors: dict[str, int] = field(default_factory=dict)
    last_poll_duration: float | None = None
    last_poll_end: float | None = None
    last_rrd_errors: int = 0  # RRD updates that failed in the last poll


def build_context_source(cfg: Config):
    c = cfg.collector
    return build_source(
        c.source,
        proc_root=c.proc_root,
        vservers_dir=c.vservers_dir or None,
        cgroup_root=c.cgroup_root,
        cgroup_hierarchy=c.cgroup_hierarchy,
        rules=[dict(r) for r in c.rules],
        kernel_hz=c.kernel_hz,
    )


def build_traffic(cfg: Config):
    """[traffic] accounting: None when off (the firewall is never touched)."""
    if cfg.traffic.accounting != "nftables":
        return None
    from collector.traffic import TrafficAccounting

    return TrafficAccounting(cfg.collector.cgroup_root)


def build_sampler(cfg: Config) -> Sampler:
    return Sampler(build_context_source(cfg), cfg.collector.proc_root,
                   traffic=build_traffic(cfg))


def _served_graphs(cfg: Config) -> str | None:
    return cfg.graphs.dir if cfg.graphs.enabled else None


def build_metrics_server(cfg: Config, daemon: "Daemon"):
    """The Prometheus endpoint over `daemon.latest`; None when disabled."""
    if not cfg.exporter.enabled:
        return None
    from exporters.http import MetricsServer
    from exporters.prometheus import SnapshotCollector, build_registry

    e = cfg.exporter
    collector = SnapshotCollector(lambda: daemon.latest, daemon.self_metrics,
                                  max_contexts=e.max_contexts or None, version=_version())
    from alerts.collector import AlertCollector

    registry = build_registry(collector)
    # ctxmon_alert_firing ...; ctxmon_host_cpus comes from the snapshot (catalog)
    registry.register(AlertCollector(lambda: daemon.alerts, host_cpus=False))
    return MetricsServer(
        e.listen, registry, tls_cert=e.tls_cert or None,
        tls_key=e.tls_key or None, basic_auth=dict(e.basic_auth) or None,
        graphs_dir=_served_graphs(cfg),
        graph_hook=daemon.graph_request if cfg.graphs.enabled else None,
    )


def build_alert_engine(cfg: Config):
    """Local alert evaluation; None when there are no [[alerts.rule]] entries."""
    if not cfg.alerts.rules:
        return None
    from alerts.engine import STATE_FILE, AlertEngine

    # The state lives with the daemon's other data, so a restart resumes it.
    return AlertEngine(cfg.alerts, state_path=os.path.join(cfg.rrd.dir, STATE_FILE))


def build_renderer(cfg: Config):
    """The graph renderer worker's handle (graphs.client); None when graphs are off."""
    if not cfg.graphs.enabled:
        return None
    from graphs.client import Renderer
    from graphs.settings import RenderSettings

    renderer = Renderer(RenderSettings.from_config(cfg))
    renderer.start()
    return renderer


def build_rrd_sink(cfg: Config):
    from exporters.rrd import RrdSink

    r = cfg.rrd
    return RrdSink(r.dir, step=int(r.step), daemon=r.daemon or None,
                   retention_seconds=r.retention)


class Daemon:
    def __init__(self, cfg: Config, config_path: str | None = None):
        self.cfg = cfg
        self.config_path = config_path
        self.stats = DaemonStats()
        self.latest: Snapshot | None = None  # what the exporter serves
        self._lock = threading.Lock()  # a poll and a reload never interleave
        self._wake = threading.Event()
        self._stop = False
        self._reload = False
        self._known: set[str] = set()
        self.renderer = build_renderer(cfg)
        self.sampler = build_sampler(cfg)
        self.rrd = build_rrd_sink(cfg)
        self.alerts = build_alert_engine(cfg)
        self.server = build_metrics_server(cfg, self)
        self.scheduler = BackgroundScheduler(
            # Polls on their own thread; starting the graph renderer never waits on one.
            executors={"default": ThreadPoolExecutor(1), "graphs": ThreadPoolExecutor(1)},
            job_defaults={"coalesce": True, "max_instances": 1},
        )
        self.scheduler.add_listener(
            self._job_event, EVENT_JOB_MISSED | EVENT_JOB_MAX_INSTANCES | EVENT_JOB_ERROR
        )

    # -- jobs -------------------------------------------------------------------

    def poll(self) -> Snapshot | None:
        with self._lock:
            t0 = time.monotonic()
            try:
                snap = self.sampler.sample()
            except Exception:
                self.stats.poll_failures += 1
                log.exception("poll failed")
                return None
            self._log_changes(snap)
            self._write(snap)
            if self.alerts is not None:
                try:
                    self.alerts.evaluate(snap)
                except Exception:
                    self.stats.sink_errors["alerts"] = self.stats.sink_errors.get("alerts", 0) + 1
                    log.exception("alert evaluation failed; the poll goes on")
            self._hand_alerts_to_graphs(self.alerts)
            self.stats.polls += 1
            self.stats.last_poll_duration = time.monotonic() - t0
            self.stats.last_poll_end = time.time()
            self.latest = snap  # from now on scrapes see it
            if self.server is not None:  # its text: rendered now if scraped lately, else lazily
                self.server.registry.snapshot_collector.published()
            log.debug(
                "poll %d: %d contexts, %d processes, %.0f ms (sample %.0f ms)",
                self.stats.polls, len(snap.contexts),
                sum(c.processes for c in snap.contexts),
                self.stats.last_poll_duration * 1e3, snap.duration_seconds * 1e3,
            )
            return snap

    def _write(self, snap: Snapshot) -> None:
        rrd_errors = self.rrd.error_count
        for name, sink in (("rrd", self.rrd),):
            try:
                sink.write(snap)
            except Exception:
                self.stats.sink_errors[name] = self.stats.sink_errors.get(name, 0) + 1
                log.exception("%s sink failed; the other sinks go on", name)
        self.stats.last_rrd_errors = self.rrd.error_count - rrd_errors

    def _hand_alerts_to_graphs(self, engine) -> None:
        """The graph renderer is another process: it reads firing alerts and levels
        (banner, threshold lines) from a file in the graphs folder."""
        if self.cfg.graphs.enabled:
            from alerts.handoff import ALERT_STATE_FILE, write_alert_state

            write_alert_state(engine, os.path.join(self.cfg.graphs.dir, ALERT_STATE_FILE))

    def self_metrics(self):
        """What the exporter serves about the daemon itself (called at scrape time)."""
        from exporters.prometheus import SelfMetrics

        st = self.stats
        return SelfMetrics(
            poll_duration_seconds=st.last_poll_duration,
            last_poll_timestamp_seconds=st.last_poll_end,
            rrd_write_errors=st.last_rrd_errors,
            polls_total=st.polls,
            missed_polls_total=st.missed_polls,
            poll_failures_total=st.poll_failures,
        )

    def _log_changes(self, snap: Snapshot) -> None:
        now = {c.label for c in snap.contexts}
        for name in sorted(now - self._known):
            log.info("context appeared: %s", loggable(name))
        for name in sorted(self._known - now):
            log.info("context departed: %s", loggable(name))
        self._known = now
        for src, n in sorted(snap.errors.items()):
            log.debug("%s: %d file(s) skipped this poll", src, n)

    def _job_event(self, event) -> None:
        if event.code == EVENT_JOB_MISSED:
            self.stats.missed_polls += 1
            log.warning("poll at %s was missed (the previous one or the host was too slow)",
                        event.scheduled_run_time)
        elif event.code == EVENT_JOB_MAX_INSTANCES:
            self.stats.missed_polls += 1
            log.warning("poll skipped: the previous poll is still running")
        elif event.code == EVENT_JOB_ERROR:
            log.error("job %s failed: %s", event.job_id, event.exception)

    def render_graphs(self) -> None:
        """Ask the renderer worker (a child: matplotlib never enters this process) for
        a run; it kills and restarts a worker stuck past max(3 intervals, 120 s)."""
        if self.renderer is not None:
            self.renderer.periodic()

    def graph_request(self, rel: str) -> None:
        """The HTTP hook: a context's page drawn on request (graphs.client)."""
        renderer = self.renderer
        if renderer is not None:
            renderer.on_request(rel)

    def _schedule(self) -> None:
        interval = self.cfg.collector.interval
        self.scheduler.add_job(
            self.poll, IntervalTrigger(seconds=interval), id="poll",
            name="poll", replace_existing=True, next_run_time=_now_aware(),
            misfire_grace_time=max(1, int(interval)),
        )
        if self.cfg.graphs.enabled:
            g = self.cfg.graphs.interval
            # The first pages come soon after the first polls, not one interval later.
            first = min(g, 2 * interval + 5)
            self.scheduler.add_job(
                self.render_graphs, IntervalTrigger(seconds=g), id="graphs", name="graphs",
                replace_existing=True, misfire_grace_time=max(1, int(g)),
                executor="graphs", next_run_time=_now_aware(first),
            )
        elif self.scheduler.get_job("graphs") is not None:
            self.scheduler.remove_job("graphs")

    # -- lifecycle --------------------------------------------------------------

    def _on_signal(self, signum, _frame) -> None:
        if signum == signal.SIGHUP:
            self._reload = True
        else:
            self._stop = True
        self._wake.set()

    def reload(self) -> bool:
        """Load the config file again; a bad one is logged and the old stays in force.

        New parts are built before old ones are let go, so a config that loads but
        cannot be put in force (an rrdcached path it cannot carry, say) changes
        nothing. The stat files held open and the CPU counters survive a reload
        unless the proc tree itself changes.
        """
        try:
            new = load_config(self.config_path)
        except ConfigError as e:
            log.error("reload refused, keeping the running config: %s", e)
            return False
        old = self.cfg
        source = rrd = None
        try:
            if _without_interval(new.collector) != _without_interval(old.collector):
                source = build_context_source(new)
            if new.rrd != old.rrd:
                rrd = build_rrd_sink(new)
        except (ValueError, OSError) as e:
            if source is not None:
                source.close()
            log.error("reload refused, keeping the running config: %s", e)
            return False
        with self._lock:
            if source is not None:
                if new.collector.proc_root == old.collector.proc_root:
                    self.sampler.replace_source(source)
                else:  # another tree: its pids and counters are not these
                    self.sampler.close()
                    self.sampler = Sampler(source, new.collector.proc_root,
                                           traffic=build_traffic(new))
            if (new.traffic != old.traffic
                    or new.collector.cgroup_root != old.collector.cgroup_root):
                previous = self.sampler.traffic
                if previous is not None:
                    previous.close()  # deletes the table
                self.sampler.traffic = build_traffic(new)
                if previous is not None and self.sampler.traffic is not None:
                    self.sampler.traffic.totals = previous.totals  # never decreasing
            if rrd is not None:
                try:
                    self.rrd.flush()
                except Exception as e:
                    log.error("flushing RRD updates failed: %s", e)
                self.rrd.close()
                self.rrd = rrd
            if new.alerts != old.alerts:
                if self.alerts is not None and new.alerts.rules:
                    self.alerts.reconfigure(new.alerts)  # alert states carry over
                else:
                    if self.alerts is not None:
                        self.alerts.close()
                    self.alerts = build_alert_engine(new)
            if new.graphs != old.graphs or new.rrd != old.rrd:
                # The worker holds the settings it was started with: a new one for new ones.
                renderer, self.renderer = self.renderer, build_renderer(new)
                if renderer is not None:
                    renderer.close()
            if new.exporter != old.exporter or _served_graphs(new) != _served_graphs(old):
                self._restart_server(new, old)
            self.cfg = new
        if (new.collector.interval != old.collector.interval
                or new.graphs.interval != old.graphs.interval
                or new.graphs.enabled != old.graphs.enabled):
            self._schedule()
        log.info("config reloaded from %s", self.config_path)
        return True

    def _restart_server(self, new: Config, old: Config) -> None:
        """Serve with the new settings; failing that the old ones; failing that, log."""
        if self.server is not None:
            self.server.stop()
            self.server = None
        for cfg in (new, old):
            try:
                self.server = build_metrics_server(cfg, self)
                if self.server is not None:
                    self.server.start()
                    log.info("serving /metrics on %s", cfg.exporter.listen)
                return
            except (OSError, ValueError) as e:
                self.server = None
                log.error("cannot serve /metrics on %s: %s", cfg.exporter.listen, e)
        log.error("no /metrics endpoint until the next successful reload")

    def run(self) -> int:
        for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(s, self._on_signal)
        log.info(
            "ctxmon %s starting: source %s, interval %gs, rrd %s%s (pid %d)",
            _version(), self.sampler.source.name, self.cfg.collector.interval,
            self.cfg.rrd.dir,
            f" via rrdcached {self.cfg.rrd.daemon}" if self.cfg.rrd.daemon else "",
            os.getpid(),
        )
        if self.server is not None:
            try:
                self.server.start()
            except OSError as e:
                log.error("cannot listen on %s: %s", self.cfg.exporter.listen, e.strerror or e)
                self.rrd.close()
                self.sampler.close()
                return 1
            log.info("serving /metrics on %s", self.cfg.exporter.listen)
        if self.cfg.daemon.user:
            try:
                drop_privileges(self.cfg.daemon.user,
                                [self.cfg.rrd.dir] + ([self.cfg.graphs.dir]
                                                      if self.cfg.graphs.enabled else []))
            except (OSError, KeyError) as e:
                log.error("cannot switch to user %s: %s", self.cfg.daemon.user, e)
                if self.server is not None:
                    self.server.stop()
                self.rrd.close()
                self.sampler.close()
                return 1
        self._schedule()
        self.scheduler.start()
        try:
            while not self._stop:
                self._wake.wait()
                self._wake.clear()
                if self._reload and not self._stop:
                    self._reload = False
                    if self.config_path:
                        self.reload()
        finally:
            log.info("stopping: finishing the poll in progress")
            self.scheduler.shutdown(wait=True)
            with self._lock:
                try:
                    self.rrd.flush()
                except Exception as e:
                    log.error("flushing RRD updates failed: %s", e)
                self.rrd.close()
                self.sampler.close()
            if self.server is not None:
                self.server.stop()
            if self.alerts is not None:
                self.alerts.close()  # gives queued notifications a few seconds
            self._hand_alerts_to_graphs(None)  # no banner claims what nobody evaluates
            if self.renderer is not None:
                self.renderer.close()
        log.info("stopped after %d polls", self.stats.polls)
        return 0


def _without_interval(c):
    """The collector settings that shape the source (the interval only schedules)."""
    import dataclasses

    return dataclasses.replace(c, interval=0)


def drop_privileges(user: str, data_dirs: list[str]) -> None:
    """Become `user` for good, handing it the data folders first.

    Called after the exporter's port is bound and the stat scanner has raised its
    fd limit. A daemon already running as `user` does nothing.
    """
    import pwd

    pw = pwd.getpwnam(user)
    if os.getuid() == pw.pw_uid and os.geteuid() == pw.pw_uid:
        return
    if os.geteuid() != 0:
        raise PermissionError(f"must start as root to become {user}")
    for top in data_dirs:
        os.makedirs(top, exist_ok=True)
        for d, dirs, files in os.walk(top):
            for name in [d] + [os.path.join(d, f) for f in dirs + files]:
                st = os.lstat(name)
                if (st.st_uid, st.st_gid) != (pw.pw_uid, pw.pw_gid):
                    os.lchown(name, pw.pw_uid, pw.pw_gid)
    os.initgroups(user, pw.pw_gid)
    os.setgid(pw.pw_gid)
    os.setuid(pw.pw_uid)
    # The graph renderer (a child) keeps matplotlib's cache where it may write.
    if data_dirs:
        os.environ.setdefault("MPLCONFIGDIR", os.path.join(data_dirs[-1], ".matplotlib"))
    os.environ["HOME"] = pw.pw_dir
    log.info("running as user %s (uid %d)", user, pw.pw_uid)
    # Modules imported later (the graph renderer is a new interpreter) must be
    # readable by the user: say so now rather than fail at the first render.
    import graphs

    for path in (os.path.realpath(sys.executable), os.path.dirname(graphs.__file__),
                 os.path.dirname(os.__file__)):
        if not os.access(path, os.R_OK | os.X_OK):
            log.warning("user %s cannot read %s: the graph renderer will fail; "
                        "install ctxmon where %s can read it", user, path, user)


def _now_aware(later: float = 0.0):
    from datetime import datetime, timedelta, timezone

    return datetime.now(timezone.utc) + timedelta(seconds=later)


def _version() -> str:
    from . import __version__

    return __version__
