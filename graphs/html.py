"""The admin's pages: plain static HTML + CSS, no script, readable on a phone.

`index.html` (day), `week.html`, `month.html`, `year.html` at the top of the graphs
folder: host CPU, memory and processes by context, every host interface, and a table
of contexts with their latest figures, linking to each context's own pages under
`ctx/<encoded name>/` (same four file names). Pages reload themselves at the graph
interval.

Names come from guests: every one is shown through `display_name` and HTML-escaped,
and every URL is built from the encoded (file-safe) names, percent-quoted per segment.
"""

from __future__ import annotations

import html
import math
import time
from typing import TYPE_CHECKING, Callable, Mapping, Sequence
from urllib.parse import quote

from collector import catalog
from exporters.names import encode_name

from .legend import auto_scale, display_name

if TYPE_CHECKING:
    from .alertstate import AlertShown, AlertState
    from .plan import ContextEntry, ContextFigures, GraphSpec, Plan

PAGE_NAMES = {"day": "index.html", "week": "week.html", "month": "month.html", "year": "year.html"}
PERIOD_TITLES = {"day": "Day", "week": "Week", "month": "Month", "year": "Year"}

CSS = """\
*{box-sizing:border-box}
body{margin:0;font:15px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;background:#f4f4f4;color:#222}
header{background:#2f3b45;color:#fff;padding:.6em 1em}
header h1{font-size:1.15em;margin:0 0 .3em;overflow-wrap:anywhere}
header a{color:#fff}
nav{display:flex;flex-wrap:wrap;gap:.3em}
nav a{color:#fff;text-decoration:none;padding:.25em .7em;border-radius:3px;background:#46535e}
nav a[aria-current=page]{background:#f0f0f0;color:#222;font-weight:bold}
main{max-width:840px;margin:0 auto;padding:.5em .6em 1em}
section{margin:1em 0}
h2{font-size:1.05em;margin:.4em 0;overflow-wrap:anywhere}
figure{margin:.4em 0}
figcaption{font:12px/1.35 ui-monospace,"DejaVu Sans Mono",monospace;color:#444;padding:.2em 0;overflow-wrap:anywhere}
.departed{color:#777}
.idle{color:#555;font-size:.9em}
img{display:block;max-width:100%;height:auto;border:1px solid #ccc;background:#f0f0f0}
.missing{color:#777;font-style:italic}
.scroll{overflow-x:auto}
table{border-collapse:collapse;width:100%;font-size:.9em;background:#fff}
th,td{padding:.3em .5em;border-bottom:1px solid #ddd;text-align:right;white-space:nowrap}
th{background:#e8e8e8}
th:first-child,td:first-child{text-align:left;white-space:normal;overflow-wrap:anywhere;min-width:8em}
footer{color:#666;font-size:.8em;padding:0 1em 1em;text-align:center}
.alerts{margin:.6em 0 1em;border:2px solid #b71c1c;border-radius:4px;background:#fff}
.alerts.warning{border-color:#c77c00}
.alerts.pending{border-color:#888}
.alerts h2{margin:0;padding:.35em .6em;background:#b71c1c;color:#fff}
.alerts.warning h2{background:#ffb000;color:#222}
.alerts.pending h2{background:#666;color:#fff}
.alerts ul{list-style:none;margin:0;padding:0}
.alerts li{padding:.4em .6em;border-top:1px solid #ddd;overflow-wrap:anywhere}
.alerts li.critical{background:#ffebee}
.alerts li.warning{background:#fff8e1}
.alerts li.pending{background:#f6f6f6;color:#555}
.alerts a{color:inherit}
.sev{display:inline-block;min-width:5.2em;text-align:center;padding:0 .3em;margin-right:.3em;border-radius:3px;font-size:.8em;font-weight:bold;text-transform:uppercase}
.sev.critical{background:#b71c1c;color:#fff}
.sev.warning{background:#ffb000;color:#222}
.sev.pending{background:#ddd;color:#333}
.since{color:#666;font-size:.85em;white-space:nowrap}
"""
BANNER_MAX = 20  # alerts listed on a page; more are counted


def page_name(period: str) -> str:
    return PAGE_NAMES[period]


def url(*segments: str) -> str:
    """A relative URL from path segments (file-safe names), each percent-quoted:
    encoded names hold `%`, which must reach the server as `%25`."""
    return "/".join(quote(s, safe="") for s in segments)


def esc(text: str) -> str:
    """Any name as HTML text: readable (see display_name), then escaped."""
    return html.escape(display_name(text), quote=True)


def _percent(v: float) -> str:
    return "–" if math.isnan(v) else f"{v:.1f} %"


def _bytes(v: float) -> str:
    if math.isnan(v):
        return "–"
    scaled, symbol = auto_scale(v, 1024)
    unit = {"": "B", "k": "KiB"}.get(symbol, f"{symbol}iB")
    return f"{scaled:.1f} {unit}" if symbol else f"{v:.0f} B"


def _count(v: float) -> str:
    return "–" if math.isnan(v) else f"{v:.0f}"


def _when(t: int | None) -> str:
    return "–" if not t else time.strftime("%Y-%m-%d %H:%M", time.localtime(t))


# The contexts tables' columns are the catalog's (catalog.CONTEXT_TABLE), each shown by its format.
_FORMATS: dict[str, Callable[[float], str]] = {"percent": _percent, "bytes": _bytes, "count": _count}


def _table_head(first: str) -> str:
    return ('<div class="scroll"><table>\n<thead><tr><th scope="col">' + first + "</th>"
            + "".join(f'<th scope="col">{html.escape(c.title)}</th>' for c in catalog.CONTEXT_TABLE)
            + '<th scope="col">Updated</th></tr></thead>\n')


def _table_cells(f: "ContextFigures") -> list[str]:
    return ([_FORMATS[c.format](f.values.get(c.title, math.nan)) for c in catalog.CONTEXT_TABLE]
            + [_when(f.last_update)])


def _alert_item(a: "AlertShown", link: str | None, pending: bool = False) -> str:
    cls = "pending" if pending else html.escape(a.severity, quote=True)
    badge = f"{html.escape(a.severity)} pending" if pending else html.escape(a.severity)
    name = esc(a.context)
    where = f'<a href="{link}">{name}</a>' if link else name
    since = a.since if pending or a.fired_at is None else a.fired_at
    when = f' <span class="since">{"pending" if pending else "firing"} since {_when(int(since))}</span>' \
        if since else ""
    return (f'<li class="{cls}"><span class="sev {cls}">{badge}</span> <strong>{esc(a.alert)}</strong> '
            f"on {where}: {esc(a.summary)}{when}</li>\n")


def alert_banner(alerts: "AlertState | None", link: Callable[[str], str | None],
                 context: str | None = None, others_link: str | None = None) -> str:
    """The alerts at the top of a page: firing ones (the worst first), then pending
    ones. `context`: only that context's, with a line counting the others' firing
    alerts linked to `others_link`. `link(context)` is a context's page, or None."""
    if alerts is None:
        return ""
    firing, pending = alerts.firing, alerts.pending
    others = 0
    if context is not None:
        others = sum(1 for a in firing if a.context != context)
        firing = [a for a in firing if a.context == context]
        pending = [a for a in pending if a.context == context]
    if not firing and not pending and not others:
        return ""
    if firing:
        n = len(firing)
        cls = "critical" if any(a.severity == "critical" for a in firing) else "warning"
        heading = f"{n} alert{'s' if n != 1 else ''} firing"
    elif pending:
        cls, heading = "pending", f"{len(pending)} alert{'s' if len(pending) != 1 else ''} pending"
    else:
        cls, heading = "pending", "No alert firing here"
    items = [_alert_item(a, link(a.context)) for a in firing[:BANNER_MAX]]
    room = max(0, BANNER_MAX - len(items))
    items += [_alert_item(a, link(a.context), pending=True) for a in pending[:room]]
    hidden = len(firing) + len(pending) - len(items)
    if hidden > 0:
        items.append(f'<li class="pending">… and {hidden} more</li>\n')
    if others:
        text = f"{others} alert{'s' if others != 1 else ''} firing on other contexts"
        items.append('<li class="pending">' + (f'<a href="{others_link}">{text}</a>' if others_link else text)
                     + "</li>\n")
    return (f'<section class="alerts {cls}" aria-label="Alerts">\n<h2>{heading}</h2>\n<ul>\n'
            + "".join(items) + "</ul>\n</section>\n")


def _page(title: str, heading: str, nav: str, body: str, refresh: int, now: int, home: str) -> str:
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        '<link rel="icon" href="data:,">\n'
        f'<meta http-equiv="refresh" content="{int(refresh)}">\n'
        f"<title>{title}</title>\n<style>\n{CSS}</style>\n</head>\n<body>\n"
        f"<header>\n<h1>{heading}</h1>\n{nav}\n</header>\n<main>\n{body}</main>\n"
        f'<footer>Drawn {html.escape(time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(now)))} '
        f"by ctxmon; this page reloads every {int(refresh)} s. "
        f'<a href="{home}">Overview</a></footer>\n'
        "</body>\n</html>\n"
    )


def _nav(period: str, prefix: str = "") -> str:
    links = []
    for p in PAGE_NAMES:
        current = ' aria-current="page"' if p == period else ""
        links.append(f'<a href="{prefix}{page_name(p)}"{current}>{PERIOD_TITLES[p]}</a>')
    return '<nav aria-label="period">' + "".join(links) + "</nav>"


def _figure(src_segments: Sequence[str], rel_path: str, alt: str, exists: Callable[[str], bool],
            size: tuple[int, int], legend: Sequence[str] = ()) -> str:
    """A graph, its legend's figures also as text (alt and caption: they can be read,
    searched and copied)."""
    if not exists(rel_path):
        return f'<p class="missing">{alt}: not drawn yet.</p>\n'
    w, h = size
    lines = [esc(line) for line in legend]
    full_alt = alt + ("; " + "; ".join(lines) if lines else "")
    caption = ("<figcaption>" + "<br>".join(lines) + "</figcaption>") if lines else ""
    return (f'<figure><img src="{url(*src_segments)}" alt="{full_alt}" width="{w}" height="{h}">'
            f"{caption}</figure>\n")


def _no_legend(_png: str) -> Sequence[str]:
    return ()


def index_page(host: str, period: str, plan: "Plan", figures: Mapping[str, "ContextFigures"],
               refresh: int, exists: Callable[[str], bool], now: int, size: tuple[int, int],
               alerts: "AlertState | None" = None, legend: Callable[[str], Sequence[str]] = _no_legend,
               idle: Callable[[str], bool] = lambda _png: False) -> str:
    """The overview page of one period, with every context's alerts on top.
    `legend(png)`: a graph's legend figures as text; `idle(png)`: an interface that
    carried no traffic in the period (listed in one line, not drawn)."""
    host_e = esc(host)
    pages = set(plan.context_specs)

    def link(context: str) -> str | None:
        slug = encode_name(context)
        return url("ctx", slug, page_name(period)) if slug in pages else None

    parts = [alert_banner(alerts, link)]
    for spec in plan.host_specs:
        if spec.kind.startswith("host-"):  # the catalog's host graphs, by their titles
            parts.append(f"<section>\n<h2>{esc(spec.title)}</h2>\n")
            parts.append(_figure([spec.png(period)], spec.png(period), esc(spec.title), exists, size,
                                 legend(spec.png(period))))
            parts.append("</section>\n")
    traffic = [s for s in plan.host_specs if s.kind == "traffic"]
    if traffic:
        parts.append("<section>\n<h2>Network interfaces</h2>\n")
        quiet = [s for s in traffic if idle(s.png(period))]
        for spec in traffic:
            if spec not in quiet:
                parts.append(_figure([spec.png(period)], spec.png(period), esc(spec.title), exists, size,
                                     legend(spec.png(period))))
        if quiet:
            names = ", ".join(esc(s.title[: -len(" traffic")] if s.title.endswith(" traffic") else s.title)
                              for s in quiet)
            parts.append(f'<p class="idle">No traffic this {period}: {names}.</p>\n')
        parts.append("</section>\n")
    parts.append("<section>\n<h2>Contexts</h2>\n")
    if plan.contexts:
        rows = []
        for c in plan.contexts:
            f = figures.get(c.slug)
            link = url("ctx", c.slug, page_name(period))
            if f is not None and f.departed:
                rows.append(f'<tr class="departed"><td><a href="{link}">{esc(c.name)}</a></td>'
                            f'<td colspan="{len(catalog.CONTEXT_TABLE) + 1}">departed, last seen '
                            f'{_when(f.last_seen)}</td></tr>\n')
                continue
            cells = ["–"] * (len(catalog.CONTEXT_TABLE) + 1) if f is None else _table_cells(f)
            rows.append(f'<tr><td><a href="{link}">{esc(c.name)}</a></td>'
                        + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>\n")
        parts.append(_table_head("Context") + "<tbody>\n" + "".join(rows) + "</tbody>\n</table></div>\n")
    else:
        parts.append('<p class="missing">No context has been recorded yet.</p>\n')
    parts.append("</section>\n")
    title = f"ctxmon on {host_e}: {PERIOD_TITLES[period].lower()}"
    return _page(title, f"ctxmon on {host_e}", _nav(period), "".join(parts), refresh, now, page_name(period))


def waiting_page(host: str, now: int, first_graphs: int, step: int) -> str:
    """The page at /graphs/ before the first graphs: when they will be drawn, and why
    not sooner (a rate needs two polls, and the day graph a full row)."""
    at = html.escape(time.strftime("%H:%M:%S", time.localtime(first_graphs)))
    body = ("<section>\n<h2>No graphs yet</h2>\n"
            f"<p>ctxmon started at {html.escape(time.strftime('%H:%M:%S', time.localtime(now)))}. "
            f"The first graphs will be drawn at about <strong>{at}</strong>, once the RRD files "
            f"hold data for the day graph (two polls for a rate, then a full {int(step)} s step). "
            "This page reloads by itself.</p>\n</section>\n")
    refresh = max(5, min(30, int(step)))
    return _page(f"ctxmon on {esc(host)}", f"ctxmon on {esc(host)}", _nav("day"), body, refresh, now,
                 page_name("day"))


def drawing_page(host: str, context: str, period: str, now: int) -> str:
    """A context's page while its graphs are being drawn on request (the renderer is
    busy): it says so and reloads in a few seconds, instead of a 404."""
    home = "../../" + page_name(period)
    name_e = esc(context)
    body = ('<section>\n<p class="missing">The graphs of this context are being drawn; '
            "this page reloads by itself in a few seconds.</p>\n</section>\n")
    heading = f'<a href="{home}">ctxmon on {esc(host)}</a> › {name_e}'
    return _page(f"{name_e} – ctxmon on {esc(host)}", heading, _nav(period), body, 3, now, home)


def _alert_context(alerts: "AlertState | None", entry: "ContextEntry") -> str | None:
    """The name the alerts know the context by: the one whose encoding is its folder
    (its decoded name may be cut short); its own name when no alert is about it."""
    if alerts is None:
        return None
    for a in alerts.alerts:
        if encode_name(a.context) == entry.slug:
            return a.context
    return entry.name


def context_page(host: str, period: str, entry: "ContextEntry", specs: Sequence["GraphSpec"],
                 figures: "ContextFigures | None", refresh: int, exists: Callable[[str], bool], now: int,
                 size: tuple[int, int], alerts: "AlertState | None" = None,
                 legend: Callable[[str], Sequence[str]] = _no_legend) -> str:
    """One context's page of one period (lives in ctx/<slug>/), its alerts on top."""
    name_e = esc(entry.name)
    home = "../../" + page_name(period)
    context = _alert_context(alerts, entry)
    parts = [alert_banner(alerts, lambda _c: None, context, home)] if context is not None else []
    if figures is not None and figures.departed:
        parts.append(f'<section>\n<p class="departed">{name_e} has departed: last seen '
                     f"{_when(figures.last_seen)}. Its graphs stay until its files are archived.</p>\n"
                     "</section>\n")
    elif figures is not None:
        parts.append(
            "<section>\n" + _table_head("Now") + f"<tbody><tr><td>{name_e}</td>"
            + "".join(f"<td>{cell}</td>" for cell in _table_cells(figures))
            + "</tr></tbody>\n</table></div>\n</section>\n")
    for spec in specs:
        png = spec.png(period)
        parts.append(f"<section>\n<h2>{esc(spec.title)}</h2>\n")
        parts.append(_figure([png.rsplit("/", 1)[-1]], png, esc(spec.title), exists, size, legend(png)))
        parts.append("</section>\n")
    if not specs:
        parts.append('<p class="missing">No graphs for this context.</p>\n')
    heading = f'<a href="{home}">ctxmon on {esc(host)}</a> › {name_e}'
    title = f"{name_e} – ctxmon on {esc(host)}: {PERIOD_TITLES[period].lower()}"
    return _page(title, heading, _nav(period), "".join(parts), refresh, now, home)
