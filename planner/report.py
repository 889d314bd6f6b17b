"""What `ctxmon plan` prints: a table per host, the moves, the peak-sizing comparison;
or the JSON document; or PNG pages (`write_html`)."""

from __future__ import annotations

import html
import json
import os
import time
from dataclasses import dataclass

from exporters.names import clean_text, loggable

from .model import Problem, Targets, format_bytes, format_duration
from .place import HostFigures, Placement


@dataclass
class Plan:
    problem: Problem
    targets: Targets
    placement: Placement
    before: list[HostFigures]  # where contexts run now
    after: list[HostFigures]
    peak: Placement  # the baseline, sizing by each context's own peak
    what_if: bool = False


def _name(s: str) -> str:
    """A name on a terminal: printable as is, else quoted and escaped."""
    return loggable(s)


def _label(s: str) -> str:
    """A name in a matplotlib text: control characters escaped, no mathtext."""
    return loggable(clean_text(s)).replace("$", r"\$")


def _utc(t: float | None) -> str:
    return "-" if t is None else time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(t))


def format_text(plan: Plan) -> str:
    p, tg = plan.problem, plan.targets
    lines = []
    end = p.start + p.points * p.step
    lines.append(
        f"{len(p.contexts)} contexts on {len(p.hosts)} hosts, {format_duration(p.points * p.step)} "
        f"to {_utc(end)} at {format_duration(p.step)} resolution ({p.points} points)")
    lines.append(
        f"targets: CPU p{tg.percentile:g} of each host's time-aligned sum <= "
        f"{tg.cpu_target:.0%} of its CPUs and never above 100 %; sum of memory peaks <= "
        f"{tg.mem_target:.0%} of its memory")
    lines.append("")
    before = {h.name: h for h in plan.before}
    header = (f"{'HOST':<14} {'CPUS':>5} {'CTX':>4} {'CPU p50':>8} {'p' + format(tg.percentile, 'g'):>7} "
              f"{'peak':>7} {'of CPUs':>8} {'MEMORY':>18} {'HEADROOM cpu/mem':>22}")
    title = "What-if: each host with the given moves" if plan.what_if else "Plan"
    lines.append(title)
    lines.append(header)
    for h in plan.after:
        cpu_room, mem_room = h.headroom(tg)
        pct_of = h.cpu_percentile / h.cpus if h.cpus else 0
        over = "  OVER TARGET" if cpu_room < -1e-9 or mem_room < -1e-9 or h.cpu_peak > h.cpus else ""
        lines.append(
            f"{_name(h.name):<14} {h.cpus:>5g} {len(h.contexts):>4} {h.cpu_p50:>8.2f} "
            f"{h.cpu_percentile:>7.2f} {h.cpu_peak:>7.2f} {pct_of:>8.0%} "
            f"{format_bytes(h.memory_peak) + '/' + format_bytes(h.memory_bytes):>18} "
            f"{f'{cpu_room:.2f} / ' + format_bytes(mem_room):>22}{over}")
        if h.contexts:
            lines.append("  " + ", ".join(_name(c) for c in h.contexts))
        b = before.get(h.name)
        if plan.what_if and b is not None:
            lines.append(
                f"  before: p{tg.percentile:g} {b.cpu_percentile:.2f}, peak {b.cpu_peak:.2f} at "
                f"{_utc(b.cpu_peak_time)}, memory {format_bytes(b.memory_peak)}; after: p"
                f"{tg.percentile:g} {h.cpu_percentile:.2f}, peak {h.cpu_peak:.2f} at "
                f"{_utc(h.cpu_peak_time)}, memory {format_bytes(h.memory_peak)}")
    moves = plan.placement.moves(p)
    lines.append("")
    if moves:
        lines.append(f"Moves ({len(moves)}):")
        w = max(len(_name(c)) for c, _, _ in moves)
        for c, frm, to in moves:
            lines.append(f"  {_name(c):<{w}}  {_name(frm or '-')} -> {_name(to)}")
    else:
        lines.append("Moves: none")
    if plan.placement.unplaced:
        lines.append(f"Unplaced ({len(plan.placement.unplaced)}), fit on no host: "
                     + ", ".join(_name(c) for c in plan.placement.unplaced))
    used = len(plan.placement.hosts_used())
    peak_used = len(plan.peak.hosts_used())
    added = sum(1 for h in plan.peak.hosts_used() if p.host(h) is None)
    biggest = max(p.hosts, key=lambda h: (h.cpus, h.memory_bytes)).name if p.hosts else "-"
    lines.append(
        f"Hosts needed: {used} (time-aligned p{tg.percentile:g}), {len(moves)} moves; sizing by "
        f"each context's own peak: {peak_used} hosts"
        + (f" ({added} more like {_name(biggest)})" if added else "")
        + f", {len(plan.peak.moves(p))} moves"
        + (f", {len(plan.peak.unplaced)} unplaced" if plan.peak.unplaced else ""))
    lines.append("")
    lines.append("History per context:")
    short = [d for d in p.contexts if d.known_seconds < p.points * p.step]
    full = len(p.contexts) - len(short)
    lines.append(f"  {full} with the whole window" + (
        "" if not short else "; " + ", ".join(
            f"{_name(d.name)} {format_duration(d.known_seconds)}" for d in short)))
    cg = [d.name for d in p.contexts if d.memory_source == "cgroup"]
    lines.append(f"  memory: the kernel's cgroup figure for {len(cg)}, summed RSS for "
                 f"{len(p.contexts) - len(cg)}")
    fixed = [d.name for d in p.contexts if d.fixed]
    if fixed:
        lines.append("  a host's own processes, never moved: " + ", ".join(_name(c) for c in fixed))
    for name, why in p.refused:
        lines.append(f"  refused {_name(name)}: {why}")
    return "\n".join(lines) + "\n"


def plan_json(plan: Plan) -> dict:
    """The `--json` document, in the issue's shape."""
    return {
        "hosts": [
            {
                "name": clean_text(h.name),
                "cpus": h.cpus,
                "memory_bytes": int(h.memory_bytes),
                "contexts": [clean_text(c) for c in h.contexts],
                "cpu_peak_cores": round(h.cpu_peak, 6),
                "cpu_percentile_cores": round(h.cpu_percentile, 6),
                "memory_peak_bytes": int(round(h.memory_peak)),
            }
            for h in plan.after
        ],
        "moves": [{"context": clean_text(c), "from": None if f is None else clean_text(f),
                   "to": clean_text(t)} for c, f, t in plan.placement.moves(plan.problem)],
        "unplaced": [clean_text(c) for c in plan.placement.unplaced],
        "peak_sizing": {"hosts_needed": len(plan.peak.hosts_used())},
    }


def format_json(plan: Plan) -> str:
    return json.dumps(plan_json(plan), indent=1, ensure_ascii=True) + "\n"


def write_html(plan: Plan, directory: str) -> list[str]:
    """index.html and one PNG per host: its contexts' CPU demand stacked over the
    window, before and after, with the capacity and target lines. Returns the files."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from exporters.files import write_atomic

    p, tg = plan.problem, plan.targets
    os.makedirs(directory, exist_ok=True)
    by_name = {d.name: d for d in p.contexts}
    times = np.array(p.start + p.step * (np.arange(p.points) + 1), dtype="datetime64[s]")
    written = []
    rows = []
    before = {h.name: h for h in plan.before}
    palette = plt.get_cmap("tab20")
    colour = {d.name: i for i, d in enumerate(p.contexts)}
    for n, after in enumerate(plan.after):
        fig, axes = plt.subplots(2, 1, figsize=(10, 6.5), sharex=True, sharey=True)
        for ax, figures, label in ((axes[0], before.get(after.name), "now"),
                                   (axes[1], after, "planned")):
            names = figures.contexts if figures else []
            if names:  # a context keeps its colour in both panels
                ax.stackplot(times, *[by_name[c].cpu for c in names],
                             labels=[_label(c) for c in names], linewidth=0,
                             colors=[palette(colour[c] % 20) for c in names])
            ax.axhline(after.cpus, color="black", linewidth=1.2, label=f"{after.cpus:g} CPUs")
            ax.axhline(after.cpus * tg.cpu_target, color="red", linestyle="--", linewidth=1,
                       label=f"target {tg.cpu_target:.0%}")
            ax.set_ylabel("CPU cores")
            ax.set_title(f"{_label(after.name)} {label}: {len(names)} contexts", fontsize=10,
                         loc="left")
            if names and len(names) <= 16:
                ax.legend(loc="upper left", fontsize=6, ncol=4, frameon=False)
            ax.margins(x=0)
        fig.autofmt_xdate()
        fig.tight_layout()
        filename = f"host-{n:03d}.png"  # by index: host names are untrusted
        buf = _png(fig)
        plt.close(fig)
        write_atomic(os.path.join(directory, filename), buf)
        written.append(filename)
        rows.append(
            f"<h2>{html.escape(clean_text(after.name))}</h2>"
            f"<p>{len(after.contexts)} contexts; CPU p{tg.percentile:g} {after.cpu_percentile:.2f} of "
            f"{after.cpus:g}, peak {after.cpu_peak:.2f}; memory {html.escape(format_bytes(after.memory_peak))}"
            f" of {html.escape(format_bytes(after.memory_bytes))}</p>"
            f'<img src="{filename}" alt="CPU demand of {html.escape(clean_text(after.name))}, '
            f'now and planned">')
    moves = "".join(f"<li>{html.escape(clean_text(c))}: {html.escape(clean_text(f or '-'))} &rarr; "
                    f"{html.escape(clean_text(t))}</li>" for c, f, t in plan.placement.moves(p))
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>ctxmon plan</title></head>"
            "<body><h1>ctxmon plan</h1><pre>" + html.escape(format_text(plan)) + "</pre>"
            + (f"<h2>Moves</h2><ul>{moves}</ul>" if moves else "") + "".join(rows)
            + "</body></html>\n")
    write_atomic(os.path.join(directory, "index.html"), page.encode())
    written.append("index.html")
    return written


def _png(fig) -> bytes:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    return buf.getvalue()
