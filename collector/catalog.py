"""The metric catalog: every per-context and host series ctxmon exports, declared once.

Sinks and pages derive what they show from here; a new series is one declaration
here (plus, where the kernel gives a new figure, the source that reads it into
`ContextSample.figures`). This module imports only `collector.snapshot` and the
standard library, so every sink, the graphs and the alerts may import it.

API (all tables are tuples in a fixed order; the order is the exposition order)
----------------------------------------------------------------------------
`FAMILIES: tuple[Family, ...]` — Prometheus families, and the README table.
    `Family.name` (without `_total`), `.exposed` (with it for counters), `.type`
    ("counter" | "gauge"), `.help`, `.labels` (all label names, `context` first for
    context families), `.unit`, `.scope` ("context" | "host" | "daemon"),
    `.samples(subject)` -> iterable of (label values, value):
      - scope "context": subject is a ContextSample; label values exclude `context`
        (the exporter supplies it, made unique);
      - scope "host": subject is the Snapshot; all label values;
      - scope "daemon" or `samples is None`: filled by the exporter itself (the
        daemon's own counters, the fold count), declared here for name/help/type.
    `.summed`: context families that stay meaningful summed into `other`.
    Label values are raw names: the exporter cleans them for the text format.
`FAMILY: dict[str, Family]` — by name.

`FILE_KINDS: tuple[FileKind, ...]` / `FILE_KIND: dict[str, FileKind]` — RRD files.
    `FileKind.name` (cpu, mem, tasks, net, host-if, ...), `.scope` ("context": one
    file per context; "context-interface": per interface of a context's own netns;
    "host-interface": per host interface), `.ds_type` (DERIVE | GAUGE), `.data_sources`
    (`DataSource`: `.name`, `.value(subject)` in base units, `.legend`, `.colour`
    role, `.style` "area" | "line"; a colour role the painter has no colour for
    should get a stable one derived from the role's name, so that a new kind draws
    without a change to graphs/), `.ds` (the names), `.unit` (of what
    `exporters.rrd.fetch` returns), `.store_scale` (stored = int(value * store_scale);
    CPU seconds are stored as microseconds), `.scale` (= 1 / store_scale: fetch
    multiplies by it), `.values(subject)` -> list of the DS values in base units (None =
    unknown), `.present(context)` -> whether this context has such a file at all
    (files of kernel figures a context lacks are never created), `.graph`.
    File names and directories are `exporters.rrdlayout`'s business, not the catalog's.
`Graph` (`FileKind.graph`, None for a file not drawn): `.title` (what, after the
    context's name: "CPU", "memory"), `.vertical_label`, `.base` (1000, 1024 or None
    for percentages), `.factor` (fetched unit -> graph unit: CPU ratio x 100 = %,
    bytes x 8 = bits), `.shown` (DS drawn, in order; their legend/colour/style come
    from the DataSource), `.host_title` (a host graph stacking every context's file
    of this kind, None for none), `.host_ds` (DS summed per context on it),
    `.host_vertical_label`, `.host_base`, `.stacked` (a context's own graph stacks
    its areas), `.replaces_on_host` (another kind's name, e.g. "mem": on
    that kind's host graph a context that has a file of this kind is drawn from this
    kind's `host_ds` instead: the cgroup's memory charge instead of summed RSS).
`ALERT_METRICS: tuple[AlertMetric, ...]` / `ALERT_METRIC: dict[str, AlertMetric]` —
    what alert rules may name in `metric`: `.name`, `.unit` (ratio, bytes, count,
    per_second, bits_per_second, seconds_per_second), `.limit_resources` (for "N%"
    levels: the context's lowest hard limit among these resources), `.summary`,
    `.summary_of_limit`, `.gauge(context)` (gauges) or `.counter` (a
    `CounterSource`: `.kind`, `.series(context) -> {series: value}`, `.factor`),
    `.family`, `.matchers` and `.summed_label` (the PromQL twin: `sum
    without(summed_label) (rate(family{matchers}[w])) * factor`, or the gauge family
    itself; `matchers` are (label, value) pairs, e.g. (("resource", "cpu"),) picks one
    resource of a family that has several), `.host_share` (divided
    by the host's CPUs), `.drawn_on` (file kind whose graph shows its threshold
    lines) and `.drawn_as` (the legend label there), `.doc` (README text).
    `absent` is declared too (no value; it is about a context missing).
`CONTEXT_JSON: tuple[tuple[str, Callable], ...]` — `ctxmon stat --json`: key and
    accessor of each field of one context object, in order.
`DEPARTED_STATE_SECONDS` — how long sinks and the sampler keep a departed context's
    counter state (a context back within it continues its counters).
`readme_table()`, `alert_metrics_readme()` — the README's metric table and its alert
    rules' `metric` row (`python -m collector.catalog` prints both).

Special cases that stay hand-written elsewhere, on purpose: the `other` fold
(exporters.prometheus: monotonic sums across contexts moving in and out), and host
CPU totals (`cpu_host` divides by the host's CPU count, which no snapshot holds).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Mapping

from .snapshot import ContextSample, Snapshot

# How long the counter state of a departed context is kept, so that a service or
# guest restarted within that time continues its counters instead of resetting them.
DEPARTED_STATE_SECONDS = 3600.0

OTHER = "other"  # the context label of contexts folded by the export cap

# Keys of `ContextSample.figures` (sources fill them, in base units; absent = the
# context has no such figure, never 0).
MEMORY_ANON = "memory_anon_bytes"  # cgroup memory.stat anon (v1 total_rss)
MEMORY_FILE = "memory_file_bytes"  # cgroup memory.stat file (v1 total_cache)
PRESSURE_RESOURCES = ("cpu", "memory", "io")  # cgroup v2 <resource>.pressure (PSI)


def pressure_key(resource: str, line: str) -> str:
    """Figures key of a PSI total in seconds: line "some" (some tasks waited) or
    "full" (all non-idle tasks stalled at once)."""
    return f"pressure_{resource}_{line}_seconds"

Samples = Iterable[tuple[tuple[str, ...], float]]


# ------------------------------------------------------------------ declarations


@dataclass(frozen=True, slots=True)
class Family:
    """One Prometheus metric family (see the module doc)."""

    name: str
    type: str  # counter | gauge
    help: str
    labels: tuple[str, ...]
    unit: str
    scope: str  # context | host | daemon
    samples: Callable[[Any], Samples] | None = None
    summed: bool = False
    readme_labels: str | None = None  # README labels column; None: the label names
    readme: str | None = None  # README meaning column; None: the help text
    readme_group: str | None = None  # families sharing a group make one README row
    readme_type: str | None = None  # README type column; None: the type

    @property
    def exposed(self) -> str:
        return self.name + "_total" if self.type == "counter" else self.name


@dataclass(frozen=True, slots=True)
class DataSource:
    """One data source of an RRD file."""

    name: str
    value: Callable[[Any], float | int | None]
    legend: str = ""  # its row in a graph's legend
    colour: str = ""  # colour role (graphs map roles to colours)
    style: str = "area"  # area | line


@dataclass(frozen=True, slots=True)
class Graph:
    """How one kind of RRD file is drawn (see the module doc)."""

    title: str
    vertical_label: str
    base: int | None
    factor: float = 1.0
    shown: tuple[str, ...] = ()
    host_title: str | None = None
    host_ds: tuple[str, ...] = ()
    host_vertical_label: str = ""
    host_base: int | None = None
    stacked: bool = False
    replaces_on_host: str | None = None


@dataclass(frozen=True, slots=True)
class FileKind:
    """One kind of RRD file (see the module doc)."""

    name: str
    scope: str  # context | context-interface | host-interface
    ds_type: str  # DERIVE | GAUGE
    data_sources: tuple[DataSource, ...]
    unit: str
    store_scale: float = 1.0
    graph: Graph | None = None
    present: Callable[[ContextSample], bool] | None = None  # None: always
    readme: str = ""  # README's line on its files: data sources, type, stored unit

    @property
    def ds(self) -> tuple[str, ...]:
        return tuple(d.name for d in self.data_sources)

    @property
    def scale(self) -> float:
        return 1.0 / self.store_scale

    def values(self, subject: Any) -> list[float | int | None]:
        return [d.value(subject) for d in self.data_sources]

    def has_file(self, c: ContextSample) -> bool:
        return self.present is None or self.present(c)


@dataclass(frozen=True, slots=True)
class CounterSource:
    """A counter alert metric's samples: `kind` names the history kept for it."""

    kind: str
    series: Callable[[ContextSample], Mapping[str, float]]
    factor: float = 1.0


@dataclass(frozen=True, slots=True)
class AlertMetric:
    """A `metric` alert rules may use (see the module doc)."""

    name: str
    unit: str
    summary: str
    doc: str
    limit_resources: tuple[str, ...] = ()
    summary_of_limit: str | None = None
    gauge: Callable[[ContextSample], float] | None = None
    counter: CounterSource | None = None
    family: str | None = None
    summed_label: str | None = None
    matchers: tuple[tuple[str, str], ...] = ()  # label = value, on `family` in PromQL
    host_share: bool = False
    drawn_on: str | None = None
    drawn_as: str = ""


# --------------------------------------------------------------------- helpers


def _one(get: Callable[[Any], float | None]) -> Callable[[Any], Samples]:
    """Samples of a family without labels beyond `context`; nothing when None."""
    def samples(subject: Any) -> Samples:
        v = get(subject)
        return () if v is None else (((), v),)
    return samples


def _limit_field(attr: str, extra: tuple[str, ...] = ()) -> Callable[[ContextSample], Samples]:
    def samples(c: ContextSample) -> Iterator[tuple[tuple[str, ...], float]]:
        for lim in c.limits:
            v = getattr(lim, attr)
            if v is not None:
                yield (lim.resource, *extra), v
    return samples


def _limits(c: ContextSample) -> Iterator[tuple[tuple[str, ...], float]]:
    """`ctxmon_context_limit`: soft then hard of each limited resource."""
    for lim in c.limits:
        if lim.soft is not None:
            yield (lim.resource, "soft"), lim.soft
        if lim.hard is not None:
            yield (lim.resource, "hard"), lim.hard


def _per_interface(attr: str) -> Callable[[ContextSample], Samples]:
    return lambda c: (((i.name,), getattr(i, attr)) for i in c.interfaces)


def _per_family(attr: str) -> Callable[[ContextSample], Samples]:
    return lambda c: (((s.family,), getattr(s, attr)) for s in c.sockets)


def _host_interface(attr: str) -> Callable[[Snapshot], Samples]:
    return lambda snap: (((i.name,), getattr(i, attr)) for i in snap.host_interfaces)


def _poll_errors(snap: Snapshot) -> Samples:
    # The usual sources always have a series (0 when clean), so an alert on `> 0`
    # sees a change of value rather than a series appearing.
    errors = dict.fromkeys(("procfs", "net", snap.source), 0)
    errors.update(snap.errors)
    return (((src,), n) for src, n in sorted(errors.items()))


def _figures(*pairs: tuple[str, str]) -> Callable[[ContextSample], Samples]:
    """Samples of a family labelled by figure: ((label value, figures key), ...);
    a figure the context lacks has no sample."""
    def samples(c: ContextSample) -> Iterator[tuple[tuple[str, ...], float]]:
        figures = c.figures
        for label, key in pairs:
            if key in figures:
                yield (label,), figures[key]
    return samples


def _traffic(attr: str) -> Callable[[ContextSample], Samples]:
    """`ctxmon_context_traffic_*`: one sample labelled by how it was measured."""
    def samples(c: ContextSample) -> Samples:
        t = c.traffic
        return () if t is None else (((t.method,), getattr(t, attr)),)
    return samples


def _traffic_value(attr: str) -> Callable[[ContextSample], int | None]:
    return lambda c: None if c.traffic is None else getattr(c.traffic, attr)


def _figure(key: str) -> Callable[[ContextSample], float | None]:
    return lambda c: c.figures.get(key)


_PRESSURE_KEYS = tuple(pressure_key(r, line) for r in PRESSURE_RESOURCES
                       for line in ("some", "full"))


def _memory_charged(c: ContextSample) -> int | None:
    """What the kernel charges to the context's cgroup (v2 memory.current, v1
    memory.usage_in_bytes): the source's `memory` limit row. None where there is no
    memory controller, and for VServer contexts."""
    for lim in c.limits:
        if lim.resource == "memory":
            return lim.current
    return None


def _cpu(c: ContextSample) -> Samples:
    return ((("user",), c.cpu_user_seconds), (("system",), c.cpu_system_seconds))


_NET_DOCS = {
    "receive": ("Bytes received on", "Packets received on", "Receive errors on",
                "Received packets dropped by"),
    "transmit": ("Bytes sent on", "Packets sent on", "Transmit errors on",
                 "Packets to send dropped by"),
}
_NET_ATTR = {"receive": "rx", "transmit": "tx"}
_NET_UNITS = {"bytes": "bytes", "packets": "packets", "errors": "errors", "drops": "packets"}


# ------------------------------------------------------------------ the families

FAMILIES: tuple[Family, ...] = (
    # per context
    Family("ctxmon_context_cpu_seconds", "counter",
           "CPU seconds used by the context's processes, including exited ones.",
           ("context", "mode"), "seconds", "context", _cpu, summed=True,
           readme_labels="context, mode=`user`\\|`system`",
           readme="CPU seconds, including exited processes; never decreases (no false "
                  "resets when processes exit)"),
    Family("ctxmon_context_memory_rss_bytes", "gauge",
           "Resident set size summed over the context's processes.", ("context",),
           "bytes", "context", _one(lambda c: c.rss_bytes), summed=True,
           readme="resident memory, summed over processes"),
    Family("ctxmon_context_memory_virtual_bytes", "gauge",
           "Virtual memory size summed over the context's processes.", ("context",),
           "bytes", "context", _one(lambda c: c.vsz_bytes), summed=True,
           readme="virtual memory (VSZ), summed"),
    Family("ctxmon_context_processes", "gauge",
           "Processes (thread-group leaders) in the context.", ("context",), "count",
           "context", _one(lambda c: c.processes), summed=True, readme="processes"),
    Family("ctxmon_context_threads", "gauge", "Threads in the context.", ("context",),
           "count", "context", _one(lambda c: c.threads), summed=True, readme="threads"),
    Family("ctxmon_context_start_time_seconds", "gauge",
           "When the context started, in seconds since the epoch.", ("context",),
           "epoch seconds", "context", _one(lambda c: c.start_time),
           readme="when the context started (epoch seconds)"),
    Family("ctxmon_context_info", "gauge",
           "Identity of the context: id is the VServer xid or the cgroup path, "
           "source the context source (vserver, cgroup).", ("context", "id", "source"),
           "", "context", lambda c: (((c.key, c.source), 1),),
           readme_type="gauge, always 1",
           readme="`id`: the VServer xid or the cgroup path; `source`: `vserver` or `cgroup`"),
    Family("ctxmon_context_resource_usage", "gauge",
           "Current use of a limited resource (bytes for memory-like resources, "
           "else a count).", ("context", "resource"), "bytes or count", "context",
           _limit_field("current"), readme="current use of a limited resource"),
    Family("ctxmon_context_resource_usage_max", "gauge",
           "High-water mark of a limited resource's use.", ("context", "resource"),
           "bytes or count", "context", _limit_field("maximum"),
           readme="its high-water mark (VServer `max`, cgroup `memory.peak`, `pids.peak`)"),
    Family("ctxmon_context_resource_usage_min", "gauge",
           "Low-water mark of a limited resource's use (VServer 2.2+).",
           ("context", "resource"), "bytes or count", "context", _limit_field("minimum"),
           readme="its low-water mark (VServer 2.2+)"),
    Family("ctxmon_context_limit", "gauge",
           "Limit of a resource, type soft or hard; absent when unlimited.",
           ("context", "resource", "type"), "bytes or count", "context", _limits,
           readme_labels="context, resource, type=`soft`\\|`hard`",
           readme="the limit; **absent when unlimited**"),
    Family("ctxmon_context_limit_hits", "counter",
           "Times a limit refused the context something.", ("context", "resource"),
           "count", "context", lambda c: (((lim.resource,), lim.hits) for lim in c.limits),
           readme="times the limit refused something (VServer hits, cgroup `max` events, "
                  "v1 `failcnt`)"),
    Family("ctxmon_context_network_receive_bytes", "counter",
           "Bytes received on an interface of the context's own network namespace.",
           ("context", "interface"), "bytes", "context", _per_interface("rx_bytes"),
           summed=True, readme_group="ctxmon_context_network_{receive,transmit}_{bytes,packets}_total",
           readme="interfaces of the context's own network namespace (none when it "
                  "shares the host's)"),
    Family("ctxmon_context_network_transmit_bytes", "counter",
           "Bytes sent on an interface of the context's own network namespace.",
           ("context", "interface"), "bytes", "context", _per_interface("tx_bytes"),
           summed=True, readme_group="ctxmon_context_network_{receive,transmit}_{bytes,packets}_total"),
    Family("ctxmon_context_network_receive_packets", "counter",
           "Packets received on an interface of the context's own network namespace.",
           ("context", "interface"), "packets", "context", _per_interface("rx_packets"),
           summed=True, readme_group="ctxmon_context_network_{receive,transmit}_{bytes,packets}_total"),
    Family("ctxmon_context_network_transmit_packets", "counter",
           "Packets sent on an interface of the context's own network namespace.",
           ("context", "interface"), "packets", "context", _per_interface("tx_packets"),
           summed=True, readme_group="ctxmon_context_network_{receive,transmit}_{bytes,packets}_total"),
    Family("ctxmon_context_traffic_receive_bytes", "counter",
           "IP bytes received by the context, on every interface of the host's network namespace "
           "(method cgroup: by socket cgroup; address: by the guest's addresses) or on "
           "its own namespace's interfaces but lo (method netns); [traffic] accounting.",
           ("context", "method"), "bytes", "context", _traffic("rx_bytes"), summed=True,
           readme_group="ctxmon_context_traffic_{receive,transmit}_{bytes,packets}_total",
           readme_labels="context, method=`cgroup`\\|`address`\\|`netns`",
           readme="traffic per context, also where it shares the host's network (only "
                  "with `[traffic] accounting = \"nftables\"`; see Traffic accounting)"),
    Family("ctxmon_context_traffic_transmit_bytes", "counter",
           "IP bytes sent by the context, on every interface of the host's network namespace "
           "(method cgroup: by socket cgroup; address: by the guest's addresses) or on "
           "its own namespace's interfaces but lo (method netns); [traffic] accounting.",
           ("context", "method"), "bytes", "context", _traffic("tx_bytes"), summed=True,
           readme_group="ctxmon_context_traffic_{receive,transmit}_{bytes,packets}_total"),
    Family("ctxmon_context_traffic_receive_packets", "counter",
           "Packets received by the context, on every interface of the host's network namespace "
           "(method cgroup: by socket cgroup; address: by the guest's addresses) or on "
           "its own namespace's interfaces but lo (method netns); [traffic] accounting.",
           ("context", "method"), "packets", "context", _traffic("rx_packets"), summed=True,
           readme_group="ctxmon_context_traffic_{receive,transmit}_{bytes,packets}_total"),
    Family("ctxmon_context_traffic_transmit_packets", "counter",
           "Packets sent by the context, on every interface of the host's network namespace "
           "(method cgroup: by socket cgroup; address: by the guest's addresses) or on "
           "its own namespace's interfaces but lo (method netns); [traffic] accounting.",
           ("context", "method"), "packets", "context", _traffic("tx_packets"), summed=True,
           readme_group="ctxmon_context_traffic_{receive,transmit}_{bytes,packets}_total"),
    Family("ctxmon_context_socket_receive_bytes", "counter",
           "Payload bytes received through sockets of an address family (VServer cacct).",
           ("context", "family"), "bytes", "context", _per_family("recv_bytes"), summed=True,
           readme_group="ctxmon_context_socket_{receive,send}_bytes_total",
           readme="VServer socket accounting (`cacct`) per address family"),
    Family("ctxmon_context_socket_send_bytes", "counter",
           "Payload bytes sent through sockets of an address family (VServer cacct).",
           ("context", "family"), "bytes", "context", _per_family("send_bytes"), summed=True,
           readme_group="ctxmon_context_socket_{receive,send}_bytes_total"),
    Family("ctxmon_context_memory_cgroup_bytes", "gauge",
           "Memory the kernel charges to the context's cgroup, by type: anon (process "
           "memory) or file (page cache), from memory.stat.", ("context", "type"), "bytes",
           "context", _figures(("anon", MEMORY_ANON), ("file", MEMORY_FILE)), summed=True,
           readme_labels="context, type=`anon`\\|`file`",
           readme="the cgroup's own memory by type (v2 `memory.stat` anon/file, v1 "
                  "total_rss/total_cache); the whole charge is `ctxmon_context_resource_usage"
                  "{resource=\"memory\"}`. Unlike summed RSS, shared pages count once"),
    Family("ctxmon_context_pressure_waiting_seconds", "counter",
           "Time some of the context's tasks waited for a resource (cgroup v2 PSI some "
           "total).", ("context", "resource"), "seconds", "context",
           _figures(*((r, pressure_key(r, "some")) for r in PRESSURE_RESOURCES)),
           readme_labels="context, resource=`cpu`\\|`memory`\\|`io`",
           readme="time some of the context's tasks waited for the resource (PSI `some` "
                  "of `<resource>.pressure`); cgroup v2 contexts only: **absent** for "
                  "VServer and v1-only contexts"),
    Family("ctxmon_context_pressure_stalled_seconds", "counter",
           "Time all of the context's non-idle tasks were stalled on a resource at once "
           "(cgroup v2 PSI full total).", ("context", "resource"), "seconds", "context",
           _figures(*((r, pressure_key(r, "full")) for r in PRESSURE_RESOURCES)),
           readme_labels="context, resource=`cpu`\\|`memory`\\|`io`",
           readme="time all of its non-idle tasks were stalled at once (PSI `full`); "
                  "absent where the kernel has no such line"),
    # host
    Family("ctxmon_contexts", "gauge", "Contexts in the latest snapshot.", (), "count",
           "host", lambda snap: (((), len(snap.contexts)),), readme="contexts in the snapshot"),
    Family("ctxmon_host_cpus", "gauge", "Online CPUs of the host.", (), "count", "host",
           lambda snap: () if snap.host_cpus is None else (((), snap.host_cpus),),
           readme="the host's online CPUs (for `ctxmon plan`)"),
    Family("ctxmon_host_memory_bytes", "gauge", "Memory of the host (MemTotal).", (), "bytes",
           "host", lambda snap: () if snap.host_memory_bytes is None
           else (((), snap.host_memory_bytes),),
           readme="the host's memory, MemTotal (for `ctxmon plan`)"),
    *(
        Family(f"ctxmon_network_{d}_{what}", "counter", f"{doc} a host network interface.",
               ("device",), _NET_UNITS[what], "host", _host_interface(f"{_NET_ATTR[d]}_{what}"),
               readme_group="ctxmon_network_{receive,transmit}_{bytes,packets,errors,drops}_total",
               readme="the host's interfaces")
        for d, docs in _NET_DOCS.items()
        for what, doc in zip(("bytes", "packets", "errors", "drops"), docs)
    ),
    # the daemon itself: filled by the exporter from its own counters
    Family("ctxmon_poll_duration_seconds", "gauge", "How long the last poll took.", (),
           "seconds", "daemon", readme="how long the last poll took"),
    Family("ctxmon_last_poll_timestamp_seconds", "gauge",
           "When the last poll ended, in seconds since the epoch.", (), "epoch seconds",
           "daemon", readme="when the last poll ended"),
    Family("ctxmon_poll_errors", "gauge",
           "Files skipped in the last poll (unreadable or malformed), per source.",
           ("source",), "count", "host", _poll_errors,
           readme="files skipped in the last poll (unreadable or malformed), per source; "
                  "0 when clean"),
    Family("ctxmon_rrd_write_errors", "gauge", "RRD updates that failed in the last poll.",
           (), "count", "daemon", readme="RRD updates that failed in the last poll"),
    Family("ctxmon_polls", "counter", "Polls done since the daemon started.", (), "count",
           "daemon", readme_group="ctxmon_polls_total`, `ctxmon_missed_polls_total`, "
                                  "`ctxmon_poll_failures_total",
           readme="polls done, skipped for being late, failed"),
    Family("ctxmon_missed_polls", "counter",
           "Polls skipped because the previous one or the host was too slow.", (), "count",
           "daemon", readme_group="ctxmon_polls_total`, `ctxmon_missed_polls_total`, "
                                  "`ctxmon_poll_failures_total"),
    Family("ctxmon_poll_failures", "counter", "Polls that failed and produced no snapshot.",
           (), "count", "daemon", readme_group="ctxmon_polls_total`, "
                                                "`ctxmon_missed_polls_total`, "
                                                "`ctxmon_poll_failures_total"),
    Family("ctxmon_stuck_polls", "counter", "Polls that ran longer than three intervals.",
           (), "count", "daemon", readme="polls that ran past three intervals (logged "
                                         "once each, with where they hang)"),
    Family("ctxmon_poll_stuck", "gauge",
           "1 while the poll in progress runs past three intervals: the snapshot served is "
           "not being renewed.", (), "", "daemon",
           readme="1 while a poll is stuck: the context series served are not renewed"),
    Family("ctxmon_snapshot_age_seconds", "gauge",
           "Seconds since the snapshot served was taken.", (), "seconds", "daemon",
           readme="age of the snapshot served (grows past the interval when polls stall)"),
    Family("ctxmon_rrd_clock_back_skips", "counter",
           "RRD updates skipped because the clock was behind a file's last update "
           "(a clock stepped back).", (), "count", "daemon",
           readme="RRD updates skipped while the clock is behind a file's last update"),
    Family("ctxmon_rrd_files_refused", "counter",
           "RRD files not created because the data directory reached [rrd] max_bytes.",
           (), "count", "daemon",
           readme="RRD files not created because the data directory reached `[rrd] max_bytes`"),
    # Special: the exporter's cap decides it, not the snapshot.
    Family("ctxmon_contexts_folded", "gauge",
           f"Contexts summed into context=\"{OTHER}\" by the export cap.", (), "count",
           "host", readme="contexts summed into `context=\"other\"` (only with a cap)"),
    Family("ctxmon_build_info", "gauge", "ctxmon's version; always 1.", ("version",), "",
           "daemon", readme_type="gauge, always 1", readme=""),
)

FAMILY: dict[str, Family] = {f.name: f for f in FAMILIES}


# ------------------------------------------------------------------- RRD files

INTERFACE_DS = ("rx_bytes", "tx_bytes", "rx_packets", "tx_packets",
                "rx_errors", "tx_errors", "rx_drops", "tx_drops")


def _interface_sources() -> tuple[DataSource, ...]:
    legend = {"rx_bytes": ("In", "in", "area"), "tx_bytes": ("Out", "out", "line")}
    out = []
    for ds in INTERFACE_DS:
        text, colour, style = legend.get(ds, (ds, "", "line"))
        out.append(DataSource(ds, (lambda a: lambda i: getattr(i, a))(ds), text, colour, style))
    return tuple(out)


_TRAFFIC = Graph("traffic", "bits per second", 1000, factor=8.0, shown=("rx_bytes", "tx_bytes"))

FILE_KINDS: tuple[FileKind, ...] = (
    FileKind("cpu", "context", "DERIVE", (
        DataSource("user", lambda c: c.cpu_user_seconds, "user", "user", "area"),
        DataSource("system", lambda c: c.cpu_system_seconds, "system", "system", "area"),
    ), "CPU seconds per second", store_scale=1_000_000,  # DERIVE takes integers: µs
        readme="user, system           DERIVE  CPU microseconds",
        graph=Graph("CPU", "% of one CPU", None, factor=100.0, shown=("user", "system"),
                    host_title="CPU by context", host_ds=("user", "system"),
                    host_vertical_label="% of one CPU", host_base=None, stacked=True)),
    FileKind("mem", "context", "GAUGE", (
        DataSource("rss", lambda c: c.rss_bytes, "RSS", "rss", "area"),
        DataSource("vsz", lambda c: c.vsz_bytes, "VSZ", "vsz", "line"),
    ), "bytes", readme="rss, vsz               GAUGE   bytes",
        graph=Graph("memory", "bytes", 1024, shown=("rss", "vsz"),
                            host_title="Memory by context", host_ds=("rss",),
                            host_vertical_label="bytes (RSS)", host_base=1024)),
    FileKind("tasks", "context", "GAUGE", (
        DataSource("processes", lambda c: c.processes, "processes", "processes", "area"),
        DataSource("threads", lambda c: c.threads, "threads", "threads", "line"),
    ), "count", readme="processes, threads     GAUGE   count",
        graph=Graph("processes", "count", 1000, shown=("processes", "threads"),
                            host_title="Processes by context", host_ds=("processes",),
                            host_vertical_label="processes", host_base=1000)),
    # The cgroup's own memory figures, where it has a memory controller. The host
    # memory graph takes `usage` instead of the mem file's summed RSS where a context
    # has this file: RSS counts pages shared between processes once per process.
    FileKind("cgmem", "context", "GAUGE", (
        DataSource("usage", _memory_charged, "charged", "usage", "line"),
        DataSource("anon", lambda c: c.figures.get(MEMORY_ANON), "anon", "anon", "area"),
        DataSource("file", lambda c: c.figures.get(MEMORY_FILE), "page cache", "file", "area"),
    ), "bytes", present=lambda c: _memory_charged(c) is not None,
        readme="usage, anon, file      GAUGE   bytes (cgroup contexts with a memory controller)",
        graph=Graph("cgroup memory", "bytes", 1024, shown=("anon", "file", "usage"),
                    stacked=True, host_ds=("usage",), host_vertical_label="bytes",
                    host_base=1024, replaces_on_host="mem")),
    # [traffic] accounting: one figure per context, however it was measured.
    FileKind("traffic", "context", "DERIVE", (
        DataSource("rx_bytes", _traffic_value("rx_bytes"), "In", "in", "area"),
        DataSource("tx_bytes", _traffic_value("tx_bytes"), "Out", "out", "line"),
        DataSource("rx_packets", _traffic_value("rx_packets"), "rx_packets", "", "line"),
        DataSource("tx_packets", _traffic_value("tx_packets"), "tx_packets", "", "line"),
    ), "per second", present=lambda c: c.traffic is not None,
        readme="rx/tx bytes, packets   DERIVE  ([traffic] accounting on)",
        graph=Graph("traffic", "bits per second", 1000, factor=8.0,
                    shown=("rx_bytes", "tx_bytes"), host_title="Traffic by context",
                    host_ds=("rx_bytes", "tx_bytes"), host_vertical_label="bits per second",
                    host_base=1000)),
    # Pressure stall totals (PSI) of cgroup v2 contexts: stored like CPU time, as
    # integer microseconds, so a rate is the share of time stalled.
    FileKind("pressure", "context", "DERIVE", tuple(
        DataSource(f"{short}_{line}", _figure(pressure_key(r, line)), f"{r} {line}",
                   f"pressure-{r}-{line}", "line")
        for r, short in zip(PRESSURE_RESOURCES, ("cpu", "mem", "io"))
        for line in ("some", "full")
    ), "seconds per second", store_scale=1_000_000,
        present=lambda c: any(k in c.figures for k in _PRESSURE_KEYS),
        readme="cpu/mem/io _some, _full DERIVE  stall microseconds (cgroup v2 contexts)",
        graph=Graph("pressure", "% of time stalled", None, factor=100.0,
                    shown=("cpu_some", "mem_some", "io_some", "cpu_full", "mem_full",
                           "io_full"))),
    FileKind("net", "context-interface", "DERIVE", _interface_sources(), "per second",
             graph=_TRAFFIC, readme="rx/tx bytes, packets, errors, drops   DERIVE"),
    FileKind("host-if", "host-interface", "DERIVE", _interface_sources(), "per second",
             graph=_TRAFFIC, readme="rx/tx bytes, packets, errors, drops   DERIVE"),
)

FILE_KIND: dict[str, FileKind] = {k.name: k for k in FILE_KINDS}
CONTEXT_KINDS = tuple(k.name for k in FILE_KINDS if k.scope == "context")


@dataclass(frozen=True, slots=True)
class TableColumn:
    """A column of the HTML pages' contexts tables (graphs/html.py): the latest row
    of a context's `kind` file, the sum of its data sources `ds` (in the units the
    graphs read them) times `factor`, shown as `format`: percent | bytes | count."""

    title: str
    kind: str
    ds: tuple[str, ...]
    format: str
    factor: float = 1.0


# The overview's and each context page's table: after the name, before "Updated".
CONTEXT_TABLE: tuple[TableColumn, ...] = (
    TableColumn("CPU", "cpu", ("user", "system"), "percent", 100.0),
    TableColumn("RSS", "mem", ("rss",), "bytes"),
    TableColumn("VSZ", "mem", ("vsz",), "bytes"),
    TableColumn("Processes", "tasks", ("processes",), "count"),
    TableColumn("Threads", "tasks", ("threads",), "count"),
)


# ------------------------------------------------------------------------ alerts


def _interfaces(attr: str) -> Callable[[ContextSample], Mapping[str, float]]:
    return lambda c: {i.name: float(getattr(i, attr)) for i in c.interfaces}


_CPU_COUNTER = CounterSource(
    "cpu", lambda c: {"user": c.cpu_user_seconds, "system": c.cpu_system_seconds})

ALERT_METRICS: tuple[AlertMetric, ...] = (
    AlertMetric("cpu", "ratio", "{context}: CPU {value} of one CPU (threshold {threshold})",
                "CPU seconds per second, 1.0 = one CPU", counter=_CPU_COUNTER,
                family="ctxmon_context_cpu_seconds", summed_label="mode",
                drawn_on="cpu", drawn_as="CPU"),
    AlertMetric("cpu_host", "ratio",
                "{context}: CPU {value} of the host's CPUs (threshold {threshold})",
                "the same as a share of all the host's CPUs", counter=_CPU_COUNTER,
                family="ctxmon_context_cpu_seconds", summed_label="mode", host_share=True,
                drawn_on="cpu", drawn_as="CPU"),
    AlertMetric("rss", "bytes", "{context}: resident memory {value} (threshold {threshold})",
                "bytes", limit_resources=("RSS", "memory"),
                summary_of_limit="{context}: resident memory at {value} of its limit "
                                 "(threshold {threshold})",
                gauge=lambda c: float(c.rss_bytes), family="ctxmon_context_memory_rss_bytes",
                drawn_on="mem", drawn_as="RSS"),
    AlertMetric("vsz", "bytes", "{context}: virtual memory {value} (threshold {threshold})",
                "bytes", limit_resources=("VM",),
                summary_of_limit="{context}: virtual memory at {value} of its limit "
                                 "(threshold {threshold})",
                gauge=lambda c: float(c.vsz_bytes),
                family="ctxmon_context_memory_virtual_bytes", drawn_on="mem", drawn_as="VSZ"),
    AlertMetric("processes", "count", "{context}: {value} processes (threshold {threshold})",
                "count", gauge=lambda c: float(c.processes), family="ctxmon_context_processes",
                drawn_on="tasks", drawn_as="processes"),
    AlertMetric("threads", "count", "{context}: {value} threads (threshold {threshold})",
                "count", limit_resources=("PROC", "pids"),  # both limits count tasks
                summary_of_limit="{context}: threads at {value} of the task limit "
                                 "(threshold {threshold})",
                gauge=lambda c: float(c.threads), family="ctxmon_context_threads",
                drawn_on="tasks", drawn_as="threads"),
    AlertMetric("limit_hits", "per_second", "{context}: limits refused {value} "
                "(threshold {threshold})", "refusals by any limit, per second",
                counter=CounterSource(
                    "hits", lambda c: {lim.resource: float(lim.hits) for lim in c.limits}),
                family="ctxmon_context_limit_hits", summed_label="resource"),
    AlertMetric("net_receive_bps", "bits_per_second",
                "{context}: receiving {value} (threshold {threshold})",
                "bits per second over the context's own interfaces",
                counter=CounterSource("rx", _interfaces("rx_bytes"), 8.0),
                family="ctxmon_context_network_receive_bytes", summed_label="interface",
                drawn_on="net", drawn_as="In"),
    AlertMetric("net_transmit_bps", "bits_per_second",
                "{context}: sending {value} (threshold {threshold})",
                "bits per second over the context's own interfaces",
                counter=CounterSource("tx", _interfaces("tx_bytes"), 8.0),
                family="ctxmon_context_network_transmit_bytes", summed_label="interface",
                drawn_on="net", drawn_as="Out"),
    AlertMetric("traffic_receive_bps", "bits_per_second",
                "{context}: receiving {value} (threshold {threshold})",
                "bits per second the context received ([traffic] accounting)",
                counter=CounterSource("traffic_rx", lambda c: {} if c.traffic is None else
                                      {c.traffic.method: float(c.traffic.rx_bytes)}, 8.0),
                family="ctxmon_context_traffic_receive_bytes", summed_label="method",
                drawn_on="traffic", drawn_as="In"),
    AlertMetric("traffic_transmit_bps", "bits_per_second",
                "{context}: sending {value} (threshold {threshold})",
                "bits per second the context sent ([traffic] accounting)",
                counter=CounterSource("traffic_tx", lambda c: {} if c.traffic is None else
                                      {c.traffic.method: float(c.traffic.tx_bytes)}, 8.0),
                family="ctxmon_context_traffic_transmit_bytes", summed_label="method",
                drawn_on="traffic", drawn_as="Out"),
    *(
        AlertMetric(f"{r}_pressure", "ratio",
                    f"{{context}}: tasks waiting for {r} {{value}} of the time "
                    "(threshold {threshold})",
                    f"share of time some of the context's tasks waited for {r} (PSI "
                    "some; cgroup v2 contexts only)",
                    counter=CounterSource(f"psi_{r}", (lambda k: lambda c: (
                        {"some": c.figures[k]} if k in c.figures else {}))(
                            pressure_key(r, "some"))),
                    family="ctxmon_context_pressure_waiting_seconds",
                    summed_label="resource", matchers=(("resource", r),),
                    drawn_on="pressure", drawn_as=f"{r} some")
        for r in PRESSURE_RESOURCES
    ),
    AlertMetric("absent", "", "{context} is not running",
                "a context named in `contexts` is not running"),
)

ALERT_METRIC: dict[str, AlertMetric] = {m.name: m for m in ALERT_METRICS}


# ------------------------------------------------------------ ctxmon stat --json


def _r(v: float | None, digits: int) -> float | None:
    return None if v is None else round(v, digits)


CONTEXT_JSON: tuple[tuple[str, Callable[[ContextSample], Any]], ...] = (
    ("context", lambda c: c.label),
    ("name", lambda c: c.name),
    ("id", lambda c: c.xid if c.xid is not None else c.ctx_id),
    ("source", lambda c: c.source),
    ("cgroup", lambda c: c.cgroup),
    ("processes", lambda c: c.processes),
    ("threads", lambda c: c.threads),
    ("vsz_bytes", lambda c: c.vsz_bytes),
    ("rss_bytes", lambda c: c.rss_bytes),
    ("cpu_user_seconds", lambda c: round(c.cpu_user_seconds, 6)),
    ("cpu_system_seconds", lambda c: round(c.cpu_system_seconds, 6)),
    ("cpu_accounting", lambda c: c.cpu_accounting),
    ("live_user_seconds", lambda c: round(c.live_user_seconds, 6)),
    ("live_system_seconds", lambda c: round(c.live_system_seconds, 6)),
    ("uptime_seconds", lambda c: _r(c.uptime_seconds, 2)),
    ("start_time", lambda c: _r(c.start_time, 2)),
    ("limits", lambda c: [
        {"resource": lim.resource, "unit": lim.unit, "current": lim.current,
         "min": lim.minimum, "max": lim.maximum, "soft": lim.soft, "hard": lim.hard,
         "hits": lim.hits}
        for lim in c.limits]),
    ("sockets", lambda c: [
        {"family": s.family, "recv_bytes": s.recv_bytes, "send_bytes": s.send_bytes,
         "recv_calls": s.recv_calls, "send_calls": s.send_calls}
        for s in c.sockets]),
    ("interfaces", lambda c: [dataclasses.asdict(i) for i in c.interfaces]),
    ("cgroup_memory", lambda c: None if _memory_charged(c) is None else {
        "charged_bytes": _memory_charged(c), "anon_bytes": c.figures.get(MEMORY_ANON),
        "file_bytes": c.figures.get(MEMORY_FILE)}),
    ("pressure", lambda c: {
        r: {"waiting_seconds": c.figures.get(pressure_key(r, "some")),
            "stalled_seconds": c.figures.get(pressure_key(r, "full"))}
        for r in PRESSURE_RESOURCES if pressure_key(r, "some") in c.figures} or None),
)


def context_json(c: ContextSample) -> dict[str, Any]:
    """One context as `ctxmon stat --json` prints it."""
    return {key: get(c) for key, get in CONTEXT_JSON}


# ---------------------------------------------------------------- README table

README_BEGIN = "<!-- metric table: generated by `python -m collector.catalog`; edit the catalog -->"
README_END = "<!-- end of the generated metric table -->"

# Families exported beside the catalog's (prometheus_client's process collector).
_README_EXTRA = ("| `process_*` | gauge, counter | | the daemon's own CPU, memory and file "
                 "descriptors |",)


def readme_table() -> str:
    """The README's metric table, between its markers."""
    rows = ["| metric | type | labels | meaning |", "|---|---|---|---|"]
    seen_groups: set[str] = set()
    for fam in FAMILIES:
        if fam.readme_group:
            if fam.readme_group in seen_groups:
                continue
            seen_groups.add(fam.readme_group)
            name = fam.readme_group
        else:
            name = fam.exposed
        labels = fam.readme_labels if fam.readme_labels is not None else ", ".join(fam.labels)
        meaning = fam.readme if fam.readme is not None else fam.help
        typ = fam.readme_type or fam.type
        rows.append(f"| `{name}` | {typ} | {labels} | {meaning} |".replace("|  |", "| |"))
    rows.extend(_README_EXTRA)
    return "\n".join([README_BEGIN, *rows, README_END])


def alert_metrics_readme() -> str:
    """The README's row of the alert rules' `metric` key: every alert metric, those
    sharing a description grouped."""
    groups: list[tuple[list[str], str]] = []
    for m in ALERT_METRICS:
        if groups and groups[-1][1] == m.doc:
            groups[-1][0].append(m.name)
        else:
            groups.append(([m.name], m.doc))
    cells = ", ".join(", ".join(f"`{n}`" for n in names) + (f" ({doc})" if doc else "")
                      for names, doc in groups)
    return f"| `metric` | {cells} |"


def main() -> None:
    print(readme_table())
    print()
    print(alert_metrics_readme())


if __name__ == "__main__":
    main()


__all__ = [
    "ALERT_METRIC", "ALERT_METRICS", "AlertMetric", "CONTEXT_JSON", "CONTEXT_KINDS",
    "CONTEXT_TABLE", "CounterSource", "DEPARTED_STATE_SECONDS", "DataSource", "FAMILIES", "FAMILY",
    "FILE_KIND", "FILE_KINDS", "Family", "FileKind", "Graph", "INTERFACE_DS", "OTHER",
    "context_json", "readme_table", "MEMORY_ANON", "MEMORY_FILE", "PRESSURE_RESOURCES",
    "pressure_key", "TableColumn",
]
