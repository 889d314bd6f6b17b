"""graphs with alerts: threshold lines at their height in the PNGs, the alert banner on
the pages (names escaped), redrawing when the levels change, and a missing or broken
alert state that changes nothing.

The alert state comes from the real AlertEngine and write_alert_state where the test
is about the hand-over, and from hand-written files where it is about what is drawn.
"""

from __future__ import annotations

import json
import logging
import math
import os
from urllib.parse import unquote

import pytest

from alerts.engine import AlertEngine
from alerts.handoff import ALERT_STATE_FILE, write_alert_state
from alerts.model import AlertRule, AlertsConfig, Level
from exporters.names import encode_name
from exporters.rrd import list_rrd_files
from graphs.alertstate import LevelShown
from graphs.render import (
    CRITICAL_COLOR,
    RSS_COLOR,
    VSZ_COLOR,
    WARNING_COLOR,
    Chart,
    ChartBuilder,
    GraphSpec,
    Layer,
    LegendRow,
    Painter,
    ThresholdLine,
    axis_scale,
    make_plan,
    threshold_lines,
)
from test_graphs import EVIL, HEIGHT, NOW, WIDTH, count_color, graph_run, make_env, mtimes, parse_page, pixels

MiB = 2**20
HOSTILE = EVIL[0]  # <script>alert(1)</script>


# ------------------------------------------------------ levels in graph units


def spec(kind: str, context: str | None = "web") -> GraphSpec:
    return GraphSpec(f"ctx/{context}/{kind}", kind, "t", (), context)


def test_levels_become_lines_in_each_graphs_own_unit():
    levels = [LevelShown("Cpu", "cpu", "warning", 0.9), LevelShown("HostCpu", "cpu_host", "critical", 0.25),
              LevelShown("Mem", "rss", "warning", 900.0), LevelShown("Virt", "vsz", "critical", 5000.0),
              LevelShown("Threads", "threads", "warning", 40.0), LevelShown("Hits", "limit_hits", "warning", 0),
              LevelShown("Rx", "net_receive_bps", "warning", 1e6), LevelShown("Cpu2", "cpu", "warning", 0.9)]
    shown = {kind: [(t.label, t.severity, t.value) for t in threshold_lines(spec(kind), levels, host_cpus=4)]
             for kind in ("ctx-cpu", "ctx-mem", "ctx-tasks", "traffic")}
    assert shown == {
        # % of one CPU: 0.9 of one CPU, and a quarter of 4 CPUs; the same level twice is one line
        "ctx-cpu": [("CPU", "warning", pytest.approx(90.0)), ("CPU", "critical", pytest.approx(100.0))],
        "ctx-mem": [("RSS", "warning", 900.0), ("VSZ", "critical", 5000.0)],
        "ctx-tasks": [("threads", "warning", 40.0)],
        "traffic": [("In", "warning", 1e6)],
    }
    assert threshold_lines(spec("host-cpu", None), levels, 4) == []  # the overview: none


# -------------------------------------------------------------- the pixels

START = 1_700_000_000


def mem_chart(thresholds) -> Chart:
    n = 288
    rss = [100 * MiB * (1 + 0.3 * math.sin(i / 20)) for i in range(n)]
    layers = [Layer("RSS", RSS_COLOR, rss, "area"), Layer("VSZ", VSZ_COLOR, [200.0 * MiB] * n, "line")]
    legend = [LegendRow(layer.label, layer.color, layer.style, None) for layer in layers]
    return Chart("web memory - by day", "bytes", START, START + 86400, START, 300, layers, legend, 1024, None,
                 False, list(thresholds))


def color_rows(img, color: str, painter: Painter) -> dict[int, int]:
    """Plot rows holding `color`, with how many pixels each."""
    left, top, width, height = painter.plot_box
    out = {}
    for row in range(top, top + height + 1):
        n = count_color(img[row: row + 1, left: left + width], color)
        if n:
            out[row] = n
    return out


def test_a_level_is_a_line_at_its_height_and_a_far_one_is_named_off_scale(tmp_path):
    painter = Painter(WIDTH, HEIGHT)
    warning = ThresholdLine("RSS", "warning", 300 * MiB)
    far = ThresholdLine("VSZ", "critical", 5 * 1024 * MiB)  # 25x the data: would squash it
    chart = mem_chart([warning, far])
    # The axis takes the data (VSZ, 200 MiB) and the warning level (300 MiB) with round
    # MiB steps: 0-400 MiB in 100s (a top at 300 would leave the line on the frame).
    y_top, ticks, off = axis_scale(chart)
    assert y_top == 400 * MiB and ticks[-1] == 400 * MiB and off == [far]
    _, top, _, height = painter.plot_box
    expected = top + height * (1 - 300 / 400)
    assert painter.y_pixel(chart, 300 * MiB) == pytest.approx(expected)
    png = tmp_path / "mem.png"
    png.write_bytes(painter.paint(chart, "day"))
    img = pixels(str(png))
    rows = color_rows(img, WARNING_COLOR, painter)
    assert rows and all(abs(r + 0.5 - expected) <= 1.5 for r in rows), (rows, expected)
    assert sum(rows.values()) >= painter.plot_width  # a dashed line across, 2 px thick
    assert color_rows(img, CRITICAL_COLOR, painter) == {}  # off scale: no line
    # without levels there is no such colour at all (the check above can fail)
    png.write_bytes(painter.paint(mem_chart([]), "day"))
    img = pixels(str(png))
    assert color_rows(img, WARNING_COLOR, painter) == {}
    assert axis_scale(mem_chart([]))[0] == 250 * MiB  # the data alone: 200 MiB + headroom


def test_a_level_near_the_data_stretches_the_axis_and_no_data_shows_the_levels():
    near = ThresholdLine("RSS", "critical", 700 * MiB)  # 3.5x the 200 MiB peak
    assert axis_scale(mem_chart([near]))[:1] == (800 * MiB,)
    empty = mem_chart([near])
    empty.layers = [Layer(x.label, x.color, [math.nan] * len(x.values), x.style) for x in empty.layers]
    y_top, _, off = axis_scale(empty)
    assert y_top == 800 * MiB and off == []


# ------------------------------------------------------------------ the runs


@pytest.fixture
def env(tmp_path):
    return make_env(os.path.realpath(tmp_path), names=("web", HOSTILE), days=1.2)


def state_path(env) -> str:
    return os.path.join(env.graphs_dir, ALERT_STATE_FILE)


def write_state(env, alerts=(), thresholds=None, host_cpus=2) -> None:
    os.makedirs(env.graphs_dir, exist_ok=True)
    with open(state_path(env), "w") as f:
        json.dump({"version": 1, "host_cpus": host_cpus, "alerts": list(alerts),
                   "thresholds": thresholds or {}}, f)


def level(alert, metric, severity, value):
    return {"alert": alert, "metric": metric, "severity": severity, "value": value}


def alert(name, context, severity, state="firing", summary="", since=START, fired_at=START + 60):
    return {"alert": name, "context": context, "severity": severity, "state": state, "metric": "rss",
            "unit": "bytes", "value": 1.0, "threshold": 0.5, "since": since,
            "fired_at": fired_at if state == "firing" else None, "summary": summary}


def chart_of(env, slug: str, kind: str, painter: Painter, lines) -> Chart:
    plan = make_plan(list_rrd_files(env.rrd_dir))
    [s] = [s for s in plan.context_specs[slug] if s.kind == kind]
    chart = ChartBuilder(painter.plot_width).build(s, "day", NOW, None)
    chart.thresholds = list(lines)
    return chart


def test_engine_levels_are_drawn_on_the_contexts_graphs_and_its_alert_on_the_pages(env):
    # The hand-over as the daemon does it: the engine on a snapshot, then the file.
    rules = (AlertRule(name="TooManyProcs", metric="processes", warning=Level(2), contexts=(HOSTILE,)),
             AlertRule(name="Mem", metric="rss", critical=Level(80 * MiB), contexts=("web",)))
    engine = AlertEngine(AlertsConfig(rules=rules), cpus=2, host="h")
    try:
        from test_graphs import ctx, snap

        engine.evaluate(snap(NOW, [ctx(HOSTILE, 1, 1, 10 * MiB, 20 * MiB, 3, 5),
                                   ctx("web", 1, 1, 100 * MiB, 200 * MiB, 2, 2)], []))
        assert write_alert_state(engine, state_path(env))
    finally:
        engine.close()
    result = graph_run(env).run(periods=("day",))
    assert result.failed == 0
    painter = Painter(WIDTH, HEIGHT)
    # the hostile context's processes graph: processes 3 (area), threads 5 (line), level 2
    slug = encode_name(HOSTILE)
    chart = chart_of(env, slug, "ctx-tasks", painter, [ThresholdLine("processes", "warning", 2.0)])
    assert axis_scale(chart)[0] == 6  # 0-6 in ones: the data's 5 plus headroom
    expected = painter.y_pixel(chart, 2.0)
    _, top, _, height = painter.plot_box
    assert expected == pytest.approx(top + height * (1 - 2 / 6))
    img = pixels(os.path.join(env.graphs_dir, "ctx", slug, "tasks-day.png"))
    rows = color_rows(img, WARNING_COLOR, painter)
    assert rows and all(abs(r + 0.5 - expected) <= 1.5 for r in rows), (rows, expected)
    # web's memory graph: a critical line; its other graphs and the hostile one's memory: none
    chart = chart_of(env, "web", "ctx-mem", painter, [ThresholdLine("RSS", "critical", 80.0 * MiB)])
    expected = painter.y_pixel(chart, 80 * MiB)
    rows = color_rows(pixels(os.path.join(env.graphs_dir, "ctx", "web", "mem-day.png")), CRITICAL_COLOR, painter)
    assert rows and all(abs(r + 0.5 - expected) <= 1.5 for r in rows), (rows, expected)
    for png in ("ctx/web/tasks-day.png", "ctx/web/cpu-day.png", f"ctx/{slug}/mem-day.png", "mem-day.png"):
        img = pixels(os.path.join(env.graphs_dir, png))
        assert not color_rows(img, WARNING_COLOR, painter) and not color_rows(img, CRITICAL_COLOR, painter), png
    # the pages: both alerts in the overview's banner, the name as text, escaped
    index = os.path.join(env.graphs_dir, "index.html")
    text = open(index, encoding="utf-8").read()
    banner = text[text.index('<section class="alerts'):text.index("</section>")]
    assert "2 alerts firing" in banner and "TooManyProcs" in banner and "Mem" in banner
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in banner and "<script" not in text.lower()
    assert banner.index("critical") < banner.index("TooManyProcs")  # the worst first
    shown = "".join(parse_page(index).text)
    assert f"{HOSTILE}: 3 processes (threshold 2)" in shown
    links = [a["href"] for t, a in parse_page(index).tags if t == "a" and a["href"].startswith("ctx/")]
    for target in (f"ctx/{slug}/index.html", "ctx/web/index.html"):
        assert any(unquote(h) == target for h in links), (target, links)
        assert os.path.isfile(os.path.join(env.graphs_dir, target))
    # a context's page: its own alert, and the others counted with a link home
    page = os.path.join(env.graphs_dir, "ctx", slug, "index.html")
    text = open(page, encoding="utf-8").read()
    assert "1 alert firing" in text and "TooManyProcs" in text and "Mem</strong>" not in text
    assert '<a href="../../index.html">1 alert firing on other contexts</a>' in text
    parse_page(page)


def test_changed_levels_redraw_only_the_graphs_they_are_on(env):
    write_state(env, thresholds={"web": [level("Mem", "rss", "warning", 80 * MiB)]})
    first = graph_run(env).run(periods=("day", "week"))
    assert first.failed == 0 and first.rendered == 24
    assert graph_run(env).run(periods=("day", "week")).rendered == 0  # nothing new
    before = mtimes(env.graphs_dir)
    # new levels, no new row in any archive: only web's memory graphs change
    write_state(env, thresholds={"web": [level("Mem", "rss", "warning", 90 * MiB),
                                         level("Cpu", "cpu", "warning", 0.5)]})
    result = graph_run(env).run(periods=("day", "week"))
    after = mtimes(env.graphs_dir)
    changed = sorted(k for k in after if after[k] != before[k])
    assert changed == ["ctx/web/cpu-day.png", "ctx/web/cpu-week.png", "ctx/web/mem-day.png",
                       "ctx/web/mem-week.png"]
    assert result.rendered == 4
    # the alerts going away (the file removed) takes the lines away again
    os.unlink(state_path(env))
    assert graph_run(env).run(periods=("day", "week")).rendered == 4
    img = pixels(os.path.join(env.graphs_dir, "ctx", "web", "mem-day.png"))
    assert not color_rows(img, WARNING_COLOR, Painter(WIDTH, HEIGHT))


def test_pending_alerts_are_listed_after_the_firing_ones(env):
    write_state(env, alerts=[
        alert("Slow", "web", "warning", state="pending", summary="web: maybe slow"),
        alert("Mem", "web", "warning", summary="web: memory <b>high</b>"),
        alert("Mem", "web", "critical", summary="web: memory very high"),
        alert("Gone", "not-graphed", "critical", summary="not-graphed is not running"),
    ])
    assert graph_run(env).run(periods=("day",)).failed == 0
    p = parse_page(os.path.join(env.graphs_dir, "ctx", "web", "week.html"))
    shown = "".join(p.text)
    # the warning of Mem folds under its critical; the pending one comes last
    assert shown.index("web: memory very high") < shown.index("web: maybe slow")
    assert "web: memory <b>high</b>" not in shown and "2 alerts firing" not in shown
    assert "1 alert firing" in shown and "firing on other contexts" in shown
    index = open(os.path.join(env.graphs_dir, "index.html"), encoding="utf-8").read()
    assert '<section class="alerts critical"' in index
    assert "not-graphed is not running" in index  # a context without graphs: named, not linked
    assert 'href="ctx/not-graphed' not in index


@pytest.mark.parametrize("content", [None, b"{not json", b'{"version": 99}', b"\xff" * 10])
def test_a_missing_or_broken_alert_state_changes_nothing(env, caplog, content):
    caplog.set_level(logging.DEBUG, logger="ctxmon.graphs")
    if content is not None:
        os.makedirs(env.graphs_dir, exist_ok=True)
        with open(state_path(env), "wb") as f:
            f.write(content)
    result = graph_run(env).run(periods=("day",))
    assert result.failed == 0 and result.rendered == 12
    for dirpath, _, files in os.walk(env.graphs_dir):
        for f in files:
            if f.endswith(".html"):
                assert 'class="alerts' not in open(os.path.join(dirpath, f), encoding="utf-8").read()
    img = pixels(os.path.join(env.graphs_dir, "ctx", "web", "mem-day.png"))
    assert not color_rows(img, WARNING_COLOR, Painter(WIDTH, HEIGHT))
    about = [r for r in caplog.records if "alert state" in r.getMessage()]
    assert [r.levelno for r in about] == [logging.DEBUG]
