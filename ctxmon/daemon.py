"""`ctxmon run`: the core that only schedules.

Every `[collector] interval` the poll job samples one snapshot and hands it to each
sink of `Daemon.sinks` in turn (exporters.sink.Sink: the RRD writer, the alert
evaluation, any a caller adds); a sink that fails is logged once and counted, the
others still get the snapshot. APScheduler runs the job on one worker thread
(coalesced, one instance at a time) while the main thread waits for signals and
watches the poll: one running past STUCK_INTERVALS intervals is logged, counted and
shown in /metrics (`ctxmon_poll_stuck`, `ctxmon_snapshot_age_seconds`).
SIGTERM/SIGINT let the poll in progress finish (at most STOP_POLL_WAIT seconds),
flush rrdcached and exit 0, always within STOP_LIMIT seconds; SIGHUP reloads the
config, keeping the old one when the new one is bad. Time comes from an injectable
clock, so a benchmark can drive `Daemon.poll` through days of RRD steps in minutes.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Callable, Sequence

from apscheduler.events import (
    EVENT_JOB_ERROR,
    EVENT_JOB_MAX_INSTANCES,
    EVENT_JOB_MISSED,
)
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger

from collector.sampler import Sampler
from collector.snapshot import Snapshot
from exporters.names import loggable
from exporters.sink import Complaints, Sink

from .config import Config, ConfigError, load_config
from .wiring import build_context_source, build_sampler, build_traffic, storage_estimate  # noqa: F401

log = logging.getLogger("ctxmon.daemon")

STUCK_INTERVALS = 3  # a poll running longer than this many intervals is stuck
STOP_POLL_WAIT = 5.0  # seconds SIGTERM waits for the poll in progress
STOP_LIMIT = 9.0  # seconds after SIGTERM the process is gone, whatever hangs
SERVER_RETRY = 30.0  # at most this many seconds (else one interval) between tries of
# an exporter address that was busy at a reload


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
    stuck_polls: int = 0  # polls that ran past STUCK_INTERVALS intervals


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


def build_rrd_sink(cfg: Config, clock: Callable[[], float] = time.time):
    from exporters.rrd import RrdSink

    r = cfg.rrd
    return RrdSink(r.dir, step=int(r.step), daemon=r.daemon or None,
                   retention_seconds=r.retention, clock=clock,
                   archive_keep_seconds=r.archive_keep, max_bytes=r.max_bytes,
                   write_behind=r.write_behind)


class AlertSink:
    """The alert evaluation as a sink: each snapshot evaluated by the engine (if any
    rules), firing alerts and levels handed to the graph renderer, which is another
    process and reads them from a file in the graphs folder."""

    name = "alerts"

    def __init__(self, engine, state_path: str | None):
        self.engine = engine
        self.state_path = state_path
        self.error_count = 0

    def write(self, snapshot: Snapshot) -> None:
        try:
            if self.engine is not None:
                self.engine.evaluate(snapshot)
        finally:
            self._hand_over(self.engine)

    def flush(self) -> None:
        pass

    def close(self, timeout: float = 5.0) -> None:
        if self.engine is not None:
            self.engine.close(timeout)  # gives queued notifications a few seconds
        self._hand_over(None)  # no banner claims what nobody evaluates

    def _hand_over(self, engine) -> None:
        if self.state_path is not None:
            from alerts.handoff import write_alert_state

            write_alert_state(engine, self.state_path)


def _alert_state_path(cfg: Config) -> str | None:
    if not cfg.graphs.enabled:
        return None
    from alerts.handoff import ALERT_STATE_FILE

    return os.path.join(cfg.graphs.dir, ALERT_STATE_FILE)


class _QuietScheduler(logging.Filter):
    """APScheduler's own lines about a skipped or missed run: the daemon logs one
    line of its own per skipped poll (`Daemon._job_event`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = str(record.msg)
        return not (msg.startswith("Run time of job") or msg.startswith("Execution of job"))


class Daemon:
    """`sinks` are added after the daemon's own (RRD, alerts); `clock` gives the wall
    time of snapshots, RRD updates and snapshot ages (durations use the monotonic
    clock)."""

    def __init__(self, cfg: Config, config_path: str | None = None,
                 sinks: Sequence[Sink] = (), clock: Callable[[], float] = time.time):
        self.cfg = cfg
        self.config_path = config_path
        self.clock = clock
        self.stats = DaemonStats()
        self.latest: Snapshot | None = None  # what the exporter serves
        self._lock = threading.Lock()  # a poll and a reload never interleave
        self._wake = threading.Event()
        self._stop = False
        self._reload = False
        self._known: set[str] = set()
        self.renderer = build_renderer(cfg)
        self._poll_started: float | None = None  # monotonic start of the poll running
        self._poll_thread: threading.Thread | None = None
        self._stuck = False  # the poll running was reported stuck
        self._complaints = Complaints(log)  # sink failures, the exporter's address
        self.sampler = build_sampler(cfg, clock)
        self.rrd = build_rrd_sink(cfg, clock)
        self.alerts = build_alert_engine(cfg)
        self._alert_sink = AlertSink(self.alerts, _alert_state_path(cfg))
        self.extra_sinks = list(sinks)
        self.server = build_metrics_server(cfg, self)
        self._serving: Config | None = None  # the config whose exporter really serves
        self._wanted: Config | None = None  # one whose address was busy: retried
        self._next_server_try = 0.0
        self.scheduler = BackgroundScheduler(
            # Polls on their own thread; starting the graph renderer never waits on one.
            executors={"default": ThreadPoolExecutor(1), "graphs": ThreadPoolExecutor(1)},
            job_defaults={"coalesce": True, "max_instances": 1},
        )
        self.scheduler.add_listener(
            self._job_event, EVENT_JOB_MISSED | EVENT_JOB_MAX_INSTANCES | EVENT_JOB_ERROR
        )

    @property
    def sinks(self) -> list[Sink]:
        """What each poll's snapshot is handed to, in this order."""
        return [self.rrd, self._alert_sink, *self.extra_sinks]

    # -- jobs -------------------------------------------------------------------

    def poll(self) -> Snapshot | None:
        with self._lock:
            t0 = time.monotonic()
            self._poll_thread = threading.current_thread()
            self._poll_started = t0
            try:
                return self._poll(t0)
            finally:
                self._poll_started = None
                if self._stuck:
                    self._stuck = False
                    log.warning("the stuck poll ended after %.0f s", time.monotonic() - t0)

    def _poll(self, t0: float) -> Snapshot | None:
        cpu0 = time.thread_time()  # the poll's own CPU, next to its wall time in the log
        try:
            snap = self.sampler.sample()
        except Exception:
            self.stats.poll_failures += 1
            log.exception("poll failed")
            return None
        self._log_changes(snap)
        self._write(snap)
        self.stats.polls += 1
        self.stats.last_poll_duration = time.monotonic() - t0
        cpu = time.thread_time() - cpu0
        self.stats.last_poll_end = self.clock()
        self.latest = snap  # from now on scrapes see it
        if self.server is not None:  # its text: rendered now if scraped lately, else lazily
            self.server.registry.snapshot_collector.published()
        log.debug(
            "poll %d: %d contexts, %d processes, %.0f ms (sample %.0f ms), %.0f ms CPU",
            self.stats.polls, len(snap.contexts),
            sum(c.processes for c in snap.contexts),
            self.stats.last_poll_duration * 1e3, snap.duration_seconds * 1e3, cpu * 1e3,
        )
        return snap

    def _write(self, snap: Snapshot) -> None:
        rrd_errors = self.rrd.error_count
        for sink in self.sinks:
            name = getattr(sink, "name", type(sink).__name__)
            try:
                sink.write(snap)
            except Exception as e:
                self.stats.sink_errors[name] = self.stats.sink_errors.get(name, 0) + 1
                if self._complaints.complain(f"sink {name}", f"{type(e).__name__}: {e}",
                                             "failed; the other sinks go on (logged once "
                                             "until it works again)"):
                    log.error("%s", "".join(traceback.format_exception(e)).rstrip())
            else:
                self._complaints.release(f"sink {name}", "works again")
        self.stats.last_rrd_errors = self.rrd.error_count - rrd_errors

    def self_metrics(self):
        """What the exporter serves about the daemon itself (called at scrape time)."""
        from exporters.prometheus import SelfMetrics

        st = self.stats
        latest = self.latest
        return SelfMetrics(
            poll_duration_seconds=st.last_poll_duration,
            last_poll_timestamp_seconds=st.last_poll_end,
            rrd_write_errors=st.last_rrd_errors,
            polls_total=st.polls,
            missed_polls_total=st.missed_polls,
            poll_failures_total=st.poll_failures,
            stuck_polls_total=st.stuck_polls,
            poll_stuck=self._stuck,
            snapshot_age_seconds=(None if latest is None
                                  else max(0.0, self.clock() - latest.timestamp)),
            rrd_clock_back_total=self.rrd.clock_back_count,
            rrd_files_refused_total=self.rrd.refused_count,
        )

    def check_poll(self) -> None:
        """Called often from the main thread: report a poll running past
        STUCK_INTERVALS intervals, once, with where it is stuck."""
        started = self._poll_started
        if started is None or self._stuck:
            return
        running = time.monotonic() - started
        limit = STUCK_INTERVALS * self.cfg.collector.interval
        if running <= limit:
            return
        self._stuck = True
        self.stats.stuck_polls += 1
        log.error("stuck poll: running for %.0f s (over %d intervals) in %s; /metrics shows "
                  "ctxmon_poll_stuck 1 and the snapshot's age until it ends",
                  running, STUCK_INTERVALS, self._poll_location())

    def _poll_location(self) -> str:
        """The poll thread's three innermost frames, `file:line in function < caller ...`."""
        thread = self._poll_thread
        frame = sys._current_frames().get(thread.ident) if thread is not None else None
        if frame is None:
            return "an unknown place"
        frames = traceback.extract_stack(frame)[-3:]
        return " < ".join(f"{os.path.basename(f.filename)}:{f.lineno} in {f.name}"
                          for f in reversed(frames))

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
        if event.job_id != "poll" and event.code != EVENT_JOB_ERROR:
            return  # the renderer's job logs for itself
        if event.code == EVENT_JOB_MISSED:
            self.stats.missed_polls += 1
            log.warning("missed the poll of %s (the previous one or the host was too slow)",
                        event.scheduled_run_time)
        elif event.code == EVENT_JOB_MAX_INSTANCES:
            self.stats.missed_polls += 1
            started = self._poll_started
            running = "" if started is None else f" (for {time.monotonic() - started:.0f} s)"
            log.warning("skipped a poll: the previous one is still running%s", running)
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
        if not self._lock.acquire(timeout=2.0):
            # The poll in progress is stuck: try again once it has ended.
            self._complaints.complain("reload", "waiting", "postponed until the stuck poll ends")
            self._reload = True
            return False
        try:
            return self._reload_locked(new)
        finally:
            self._lock.release()
            self._complaints.release("reload", "done")

    def _reload_locked(self, new: Config) -> bool:
        old = self.cfg
        source = rrd = None
        try:
            if _without_interval(new.collector) != _without_interval(old.collector):
                source = build_context_source(new)
            if new.rrd != old.rrd:
                rrd = build_rrd_sink(new, self.clock)
        except (ValueError, OSError) as e:
            if source is not None:
                source.close()
            log.error("reload refused, keeping the running config: %s", e)
            return False
        if source is not None:
            if new.collector.proc_root == old.collector.proc_root:
                self.sampler.replace_source(source)
            else:  # another tree: its pids and counters are not these
                self.sampler.close()
                self.sampler = Sampler(source, new.collector.proc_root,
                                       traffic=build_traffic(new), clock=self.clock)
        if (new.traffic != old.traffic
                or new.collector.cgroup_root != old.collector.cgroup_root):
            previous = self.sampler.traffic
            if previous is not None:
                previous.close()  # deletes the table
            self.sampler.traffic = build_traffic(new)
            if previous is not None and self.sampler.traffic is not None:
                self.sampler.traffic.totals = previous.totals  # never decreasing
        if rrd is None and self.rrd.write_behind:
            self.rrd.flush()  # an admin may look at the files after a HUP: held updates go now
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
        self._alert_sink = AlertSink(self.alerts, _alert_state_path(new))
        if new.graphs != old.graphs or new.rrd != old.rrd:
            # The worker holds the settings it was started with: a new one for new ones.
            renderer, self.renderer = self.renderer, build_renderer(new)
            if renderer is not None:
                renderer.close()
        served = self._wanted or self._serving or old
        if new.exporter != served.exporter or _served_graphs(new) != _served_graphs(served):
            self._restart_server(new)
        self.cfg = new
        if (new.collector.interval != old.collector.interval
                or new.graphs.interval != old.graphs.interval
                or new.graphs.enabled != old.graphs.enabled):
            self._schedule()
        log.info("config reloaded from %s", self.config_path)
        return True

    def _restart_server(self, new: Config) -> None:
        """Serve /metrics with `new`'s exporter settings.

        A new address is bound before the old server stops: when it is busy, the
        old address goes on serving (and is what the log names), and the new one is
        tried again every SERVER_RETRY seconds (`retry_server`). The same address
        with other settings (TLS, auth) must be let go first; failing to take it
        back, no endpoint serves until a retry succeeds.
        """
        self._wanted = None
        current = self._serving
        if current is not None and self.server is not None:
            if (new.exporter.enabled and new.exporter.host == current.exporter.host
                    and new.exporter.port == current.exporter.port):
                self.server.stop()
                self.server = None
                self._serving = None
        try:
            server = build_metrics_server(new, self)
            if server is not None:
                server.start()
        except (OSError, ValueError) as e:
            self._wanted = new
            retry = min(SERVER_RETRY, max(1.0, self.cfg.collector.interval))
            self._next_server_try = time.monotonic() + retry
            where = (f"still serving on {current.exporter.listen}" if self.server is not None
                     else "no /metrics endpoint until it can be had")
            self._complaints.complain(
                "/metrics", "unavailable",
                f"cannot serve on {new.exporter.listen}: {getattr(e, 'strerror', None) or e}; "
                f"{where}; trying again every {retry:g} s")
            if self.server is None and current is not None and current.exporter != new.exporter:
                self._start_server(current)  # take the old address back
            return
        if self.server is not None:
            self.server.stop()
        self.server, self._serving = server, (new if server is not None else None)
        if server is not None:
            log.info("serving /metrics on %s", new.exporter.listen)
        self._complaints.release("/metrics", f"now serving on {new.exporter.listen}")

    def _start_server(self, cfg: Config) -> bool:
        try:
            server = build_metrics_server(cfg, self)
            if server is not None:
                server.start()
        except (OSError, ValueError) as e:
            log.error("cannot serve /metrics on %s: %s", cfg.exporter.listen,
                      getattr(e, "strerror", None) or e)
            return False
        self.server, self._serving = server, (cfg if server is not None else None)
        return True

    def retry_server(self) -> None:
        """Try again an exporter address that was busy at a reload (main thread)."""
        if self._wanted is not None and time.monotonic() >= self._next_server_try:
            self._restart_server(self._wanted)

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
            self._serving = self.cfg
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
        quiet = _QuietScheduler()
        for name in ("apscheduler.scheduler", "apscheduler.executors.default"):
            logging.getLogger(name).addFilter(quiet)
        self._schedule()
        self.scheduler.start()
        try:
            while not self._stop:
                self._wake.wait(1.0)  # also a tick to watch the poll and retry the exporter
                self._wake.clear()
                self.check_poll()
                self.retry_server()
                if self._reload and not self._stop:
                    self._reload = False
                    if self.config_path:
                        self.reload()
        finally:
            clean = self._shut_down()
        log.info("stopped after %d polls", self.stats.polls)
        if not clean:
            # The stuck poll's thread is not a daemon thread: the interpreter would
            # wait for it at exit, for good.
            logging.shutdown()
            os._exit(0)
        return 0

    def _shut_down(self) -> bool:
        """Stop within STOP_LIMIT seconds; False if the poll in progress was left stuck."""
        deadline = time.monotonic() + STOP_LIMIT
        watchdog = threading.Timer(STOP_LIMIT, _exit_now)  # should all else hang
        watchdog.daemon = True
        watchdog.start()
        log.info("stopping: finishing the poll in progress")
        self.scheduler.shutdown(wait=False)
        clean = self._lock.acquire(timeout=STOP_POLL_WAIT)
        if not clean:
            log.error("stopping without the poll in progress: stuck in %s", self._poll_location())
        try:
            for sink in self.sinks:
                try:
                    if clean:
                        sink.flush()
                    elif sink is self.rrd:
                        self.rrd.flush()  # its own connection, with a deadline: safe
                except Exception as e:
                    log.error("flushing the %s sink failed: %s",
                              getattr(sink, "name", type(sink).__name__), e)
            if self.server is not None:
                self.server.stop()
            if clean:
                left = max(0.5, deadline - time.monotonic() - 2.0)
                for sink in self.sinks:
                    try:
                        if isinstance(sink, AlertSink):
                            sink.close(min(left, 5.0))
                        else:
                            sink.close()
                    except Exception as e:
                        log.error("closing the %s sink failed: %s",
                                  getattr(sink, "name", type(sink).__name__), e)
                self.sampler.close()
            if self.renderer is not None:
                self.renderer.close()  # at most 5 s
        finally:
            if clean:
                self._lock.release()
        watchdog.cancel()
        return clean


def _exit_now() -> None:
    log.error("stopping took over %g s: exiting now", STOP_LIMIT)
    logging.shutdown()
    os._exit(1)


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
