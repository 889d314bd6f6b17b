"""The contexts tables of the HTML pages are derived from the metric catalog
(collector.catalog.CONTEXT_TABLE): a column declared there shows up in the overview's
table and on each context's page, with its latest value read from the real RRD files."""

from __future__ import annotations

import html.parser
import os

import pytest

from collector import catalog
from collector.catalog import CONTEXT_TABLE, FILE_KIND, TableColumn
from exporters.rrd import RrdSink
from exporters.rrdlayout import list_rrd_files
from factories import FakeClock, context, snapshot
from graphs import html as pages
from graphs.plan import make_plan
from graphs.run import GraphRun
from graphs.settings import RenderSettings

STEP = 60
T0 = 1_700_000_000 // STEP * STEP


class Cells(html.parser.HTMLParser):
    """The text of every <th> and of every <tr>'s <td>s, in order."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.head: list[str] = []
        self.rows: list[list[str]] = []
        self._cell: str | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "tr":
            self.rows.append([])
        if tag in ("th", "td"):
            self._cell = ""

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data

    def handle_endtag(self, tag):
        if tag == "th":
            self.head.append(self._cell)
        elif tag == "td":
            self.rows[-1].append(self._cell)
        if tag in ("th", "td"):
            self._cell = None


def cells(page: str) -> Cells:
    p = Cells()
    p.feed(page)
    p.close()
    return p


@pytest.fixture
def files(tmp_path):
    """Real RRD files of one context "web": 0.25 + 0.125 CPU seconds per second,
    300 MiB RSS, 900 MiB VSZ, 4 processes, 11 threads, for 30 polls."""
    rrd_dir = str(tmp_path / "rrd")
    clock = FakeClock(T0)
    sink = RrdSink(rrd_dir, STEP, clock=clock)
    for i in range(30):
        clock.now = T0 + i * STEP
        sink.write(snapshot(context("web", user=0.25 * i * STEP, system=0.125 * i * STEP,
                                    rss=300 << 20, vsz=900 << 20, processes=4, threads=11),
                            t=clock.now))
    sink.close()
    assert sink.error_count == 0
    settings = RenderSettings(rrd_dir=rrd_dir, rrd_step=STEP, graphs_dir=str(tmp_path / "graphs"))
    return GraphRun(settings, clock=lambda: T0 + 29 * STEP + 5), make_plan(list_rrd_files(rrd_dir))


def tables(run: GraphRun, plan) -> tuple[Cells, Cells]:
    now = T0 + 29 * STEP + 5
    figures = run.figures(plan.contexts, now)
    index = pages.index_page("host", "day", plan, figures, 60, lambda _p: True, now, (640, 260))
    entry = plan.contexts[0]
    page = pages.context_page("host", "day", entry, plan.context_specs[entry.slug],
                              figures[entry.slug], 60, lambda _p: True, now, (640, 260))
    return cells(index), cells(page)


def test_every_catalog_column_is_a_context_file_kinds_data_source():
    assert CONTEXT_TABLE
    for col in CONTEXT_TABLE:
        kind = FILE_KIND[col.kind]
        assert kind.scope == "context", col
        assert col.ds and set(col.ds) <= set(kind.ds), col
        assert col.format in pages._FORMATS, col
    assert len({c.title for c in CONTEXT_TABLE}) == len(CONTEXT_TABLE)


def test_the_tables_columns_and_values_are_the_catalogs(files):
    run, plan = files
    index, page = tables(run, plan)
    titles = [c.title for c in CONTEXT_TABLE]
    assert index.head == ["Context", *titles, "Updated"]
    assert page.head == ["Now", *titles, "Updated"]
    for got in (index.rows[-1], page.rows[-1]):
        assert got[0] == "web"
        shown = dict(zip(titles, got[1:]))
        assert shown == {"CPU": "37.5 %", "RSS": "300.0 MiB", "VSZ": "900.0 MiB",
                         "Processes": "4", "Threads": "11"}
        assert got[-1] != "–"  # Updated: the newest row's time


def test_a_column_added_to_the_catalog_appears_in_both_tables(files, monkeypatch):
    run, plan = files
    added = TableColumn("User CPU", "cpu", ("user",), "percent", 100.0)
    monkeypatch.setattr(catalog, "CONTEXT_TABLE", CONTEXT_TABLE + (added,))
    index, page = tables(run, plan)
    for table in (index, page):
        assert table.head[-2:] == ["User CPU", "Updated"]
        assert table.rows[-1][-2] == "25.0 %"
        assert len(table.rows[-1]) == len(table.head)
