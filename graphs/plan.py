"""The plan: which graphs exist for a set of RRD files (host and per context), and
what each is drawn from. Pure: it reads no file."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

from exporters import rrdlayout
from exporters.names import decode_name
from collector.catalog import FILE_KIND, FILE_KINDS
from exporters.rrdlayout import RrdFile

from .legend import display_name

# The graphs folder's own layout (pages and PNGs, as URLs show it): ctx/<folder>/...,
# <folder> being the context's encoded name as the RRD layout gives it (RrdFile.slug).
PAGES_DIR = "ctx"

@dataclass(frozen=True, slots=True)
class GraphSpec:
    """One graph (for every period): a PNG per period, `<stem>-<period>.png`."""

    stem: str  # path under the graphs folder without the period, e.g. ctx/<enc>/cpu
    kind: str  # host-<file kind>, ctx-<file kind>, or traffic (an interface's file)
    title: str  # without the period
    files: tuple[RrdFile, ...]
    context: str | None = None

    def png(self, period: str) -> str:
        return f"{self.stem}-{period}.png"


@dataclass
class ContextEntry:
    name: str  # decoded (may end with … when the name was too long to keep)
    slug: str  # the directory name the RRD layout uses: safe as a file name
    files: dict[str, RrdFile] = field(default_factory=dict)  # file kind -> file
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
    """The graphs for a set of RRD files (from exporters.rrdlayout.list_rrd_files), as
    the metric catalog declares them: each context-scope kind with a `graph` gives a
    graph on the context's page (in the catalog's order), each kind with a
    `host_title` a host graph stacking every context's file of that kind, each
    interface file a traffic graph."""
    contexts: dict[str, ContextEntry] = {}
    host_ifs: list[tuple[str, str, RrdFile]] = []
    for rf in files:
        fk = FILE_KIND.get(rf.kind)
        if fk is None:
            continue
        if fk.scope == "host-interface":
            host_ifs.append((rf.interface or "", rf.interface_slug or "", rf))
            continue
        slug = rf.slug or ""
        entry = contexts.setdefault(slug, ContextEntry(rf.context or "", slug))
        if fk.scope == "context":
            entry.files[rf.kind] = rf
        else:
            entry.interfaces.append((rf.interface or "", rf.interface_slug or "", rf))
    ordered = sorted(contexts.values(), key=lambda c: (c.name, c.slug))
    host_ifs.sort(key=lambda x: (x[0], x[1]))
    # A kind whose host graph stands in for another's where a context has it (cgroup
    # memory for summed RSS, which counts shared pages once per process).
    stand_ins = {fk.graph.replaces_on_host: fk.name for fk in FILE_KINDS
                 if fk.scope == "context" and fk.graph is not None and fk.graph.replaces_on_host}
    host_specs = []
    for fk in FILE_KINDS:
        if fk.scope != "context" or fk.graph is None or not fk.graph.host_title:
            continue
        stand_in = stand_ins.get(fk.name)
        inputs = []
        for c in ordered:
            rf = c.files.get(stand_in) if stand_in else None
            rf = rf or c.files.get(fk.name)
            if rf is not None:
                inputs.append(rf)
        if fk.name == "traffic" and inputs:
            # [traffic] accounting: with the host's interfaces (lo left out), so that
            # what no context accounts for shows (charts.ChartBuilder._traffic_by_context).
            inputs += [rf for name, _, rf in host_ifs if name != "lo"]
        if inputs:
            host_specs.append(GraphSpec(fk.name, "host-" + fk.name, fk.graph.host_title, tuple(inputs)))
    for name, slug, rf in host_ifs:
        host_specs.append(GraphSpec(f"if-{slug}", "traffic", f"{display_name(name)} traffic", (rf,)))
    context_specs: dict[str, list[GraphSpec]] = {}
    for c in ordered:
        specs = []
        label = display_name(c.name)
        for fk in FILE_KINDS:
            if fk.scope == "context" and fk.graph is not None and fk.name in c.files:
                specs.append(GraphSpec(f"{PAGES_DIR}/{c.slug}/{fk.name}", "ctx-" + fk.name,
                                       f"{label} {fk.graph.title}", (c.files[fk.name],), c.name))
        for name, slug, rf in sorted(c.interfaces, key=lambda x: (x[0], x[1])):
            specs.append(GraphSpec(f"{PAGES_DIR}/{c.slug}/net-{slug}", "traffic",
                                   f"{label} {display_name(name)} traffic", (rf,), c.name))
        context_specs[c.slug] = specs
    return Plan(ordered, host_ifs, host_specs, context_specs)


@dataclass
class ContextFigures:
    """A context's latest figures for the contexts tables: the catalog's
    CONTEXT_TABLE columns by title (absent = unknown)."""

    values: dict[str, float] = field(default_factory=dict)
    last_update: int | None = None  # end of the newest row with data
    last_seen: int | None = None  # the newest update of any of its files
    departed: bool = False  # no update for a few steps: the context is gone
