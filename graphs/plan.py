"""The plan: which graphs exist for a set of RRD files (host and per context), and
what each is drawn from. Pure: it reads no file."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable

from exporters import rrdlayout
from exporters.names import decode_name
from exporters.rrdlayout import CONTEXT_KINDS, RrdFile

from .legend import display_name

NAN = math.nan
# The graphs folder's own layout (pages and PNGs, as URLs show it): ctx/<folder>/...,
# <folder> being the context's encoded name as the RRD layout gives it (RrdFile.slug).
PAGES_DIR = "ctx"

@dataclass(frozen=True, slots=True)
class GraphSpec:
    """One graph (for every period): a PNG per period, `<stem>-<period>.png`."""

    stem: str  # path under the graphs folder without the period, e.g. ctx/<enc>/cpu
    kind: str  # host-cpu host-mem host-tasks traffic ctx-cpu ctx-mem ctx-tasks ctx-traffic
    title: str  # without the period
    files: tuple[RrdFile, ...]
    context: str | None = None

    def png(self, period: str) -> str:
        return f"{self.stem}-{period}.png"


@dataclass
class ContextEntry:
    name: str  # decoded (may end with … when the name was too long to keep)
    slug: str  # the directory name the RRD layout uses: safe as a file name
    files: dict[str, RrdFile] = field(default_factory=dict)  # cpu mem tasks
    interfaces: list[tuple[str, str, RrdFile]] = field(default_factory=list)  # (name, slug, file)


@dataclass
class Plan:
    contexts: list[ContextEntry]
    host_interfaces: list[tuple[str, str, RrdFile]]
    host_specs: list[GraphSpec]
    context_specs: dict[str, list[GraphSpec]]  # slug -> its graphs

    def all_specs(self) -> list[GraphSpec]:
        out = list(self.host_specs)
        for specs in self.context_specs.values():
            out.extend(specs)
        return out


def context_rrd_files(rrd_dir: str, slug: str) -> list[RrdFile]:
    """The RRD files of the context whose folder is `slug` (none for a name the layout
    cannot have made): one folder listed, whatever the number of contexts."""
    try:
        context = decode_name(slug)
    except ValueError:
        return []
    found = [rrdlayout.identify_context_file(e.path, e.name, context, slug)
             for e in rrdlayout.scandir(rrdlayout.context_dir(rrd_dir, context))
             if e.is_file(follow_symlinks=False)]
    return sorted((rf for rf in found if rf is not None), key=lambda rf: rf.path)


def make_plan(files: Iterable[RrdFile]) -> Plan:
    """The graphs for a set of RRD files (from exporters.rrdlayout.list_rrd_files)."""
    contexts: dict[str, ContextEntry] = {}
    host_ifs: list[tuple[str, str, RrdFile]] = []
    for rf in files:
        if rf.kind == "host-if":
            host_ifs.append((rf.interface or "", rf.interface_slug or "", rf))
            continue
        slug = rf.slug or ""
        entry = contexts.setdefault(slug, ContextEntry(rf.context or "", slug))
        if rf.kind in CONTEXT_KINDS:
            entry.files[rf.kind] = rf
        elif rf.kind == "net":
            entry.interfaces.append((rf.interface or "", rf.interface_slug or "", rf))
    ordered = sorted(contexts.values(), key=lambda c: (c.name, c.slug))
    host_ifs.sort(key=lambda x: (x[0], x[1]))
    host_specs = []
    for kind, title in (("cpu", "CPU by context"), ("mem", "Memory by context"),
                        ("tasks", "Processes by context")):
        inputs = tuple(c.files[kind] for c in ordered if kind in c.files)
        if inputs:
            host_specs.append(GraphSpec(kind, "host-" + kind, title, inputs))
    traffic = tuple(c.files["traffic"] for c in ordered if "traffic" in c.files)
    if traffic:  # [traffic] accounting: the contexts and the rest of the host's interfaces
        host_specs.append(GraphSpec("traffic", "host-traffic", "Traffic by context",
                                    traffic + tuple(rf for name, _, rf in host_ifs if name != "lo")))
    for name, slug, rf in host_ifs:
        host_specs.append(GraphSpec(f"if-{slug}", "traffic", f"{display_name(name)} traffic", (rf,)))
    context_specs: dict[str, list[GraphSpec]] = {}
    for c in ordered:
        specs = []
        label = display_name(c.name)
        for kind, what in (("cpu", "CPU"), ("mem", "memory"), ("tasks", "processes")):
            if kind in c.files:
                specs.append(GraphSpec(f"{PAGES_DIR}/{c.slug}/{kind}", "ctx-" + kind, f"{label} {what}",
                                       (c.files[kind],), c.name))
        if "traffic" in c.files:  # [traffic] accounting: one figure, however measured
            specs.append(GraphSpec(f"{PAGES_DIR}/{c.slug}/traffic", "ctx-traffic", f"{label} traffic",
                                   (c.files["traffic"],), c.name))
        for name, slug, rf in sorted(c.interfaces, key=lambda x: (x[0], x[1])):
            specs.append(GraphSpec(f"{PAGES_DIR}/{c.slug}/net-{slug}", "traffic",
                                   f"{label} {display_name(name)} traffic", (rf,), c.name))
        context_specs[c.slug] = specs
    return Plan(ordered, host_ifs, host_specs, context_specs)



@dataclass
class ContextFigures:
    """A context's latest figures for the overview table (NaN = unknown)."""

    cpu_percent: float = NAN
    rss: float = NAN
    vsz: float = NAN
    processes: float = NAN
    threads: float = NAN
    last_update: int | None = None
