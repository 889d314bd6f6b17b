"""The graph renderer's public names in one place, for callers (and tests) written
before graphs/ was split along its seams: data, plan, charts, paint, run. New code
imports from those modules; this one only re-exports and imports nothing of its own."""

from __future__ import annotations

from . import PERIODS, SPANS
from .charts import (
    CRITICAL_COLOR,
    CRITICAL_TEXT,
    IN_COLOR,
    OTHER_COLOR,
    OUT_COLOR,
    PROC_COLOR,
    RSS_COLOR,
    SYSTEM_COLOR,
    THREAD_COLOR,
    TOP_N,
    TOTAL_COLOR,
    USER_COLOR,
    VSZ_COLOR,
    WARNING_COLOR,
    WARNING_TEXT,
    Chart,
    ChartBuilder,
    Layer,
    LegendRow,
    ThresholdLine,
    context_color,
    threshold_lines,
)
from .data import (
    Series,
    add_series,
    align,
    archive_step,
    effective_step,
    load_series,
    mean_known,
    reduce_rows,
    request_step,
    sum_known,
)
from .paint import THRESHOLD_SCALE, Painter, axis_scale, data_peak, time_ticks, y_scale
from .plan import ContextEntry, ContextFigures, GraphSpec, Plan, make_plan
from .run import (
    LOCK_FILE,
    MIN_REDRAW,
    STATE_FILE,
    BusyError,
    GraphError,
    GraphRun,
    RunResult,
    UnknownContextError,
)

__all__ = [
    "CRITICAL_COLOR", "CRITICAL_TEXT", "IN_COLOR", "LOCK_FILE", "MIN_REDRAW", "OTHER_COLOR",
    "OUT_COLOR", "PERIODS", "PROC_COLOR", "RSS_COLOR", "SPANS", "STATE_FILE", "SYSTEM_COLOR",
    "THREAD_COLOR", "THRESHOLD_SCALE", "TOP_N", "TOTAL_COLOR", "USER_COLOR", "VSZ_COLOR",
    "WARNING_COLOR", "WARNING_TEXT", "BusyError", "Chart", "ChartBuilder", "ContextEntry",
    "ContextFigures", "GraphError", "GraphRun", "GraphSpec", "Layer", "LegendRow", "Painter",
    "Plan", "RunResult", "Series", "ThresholdLine", "UnknownContextError", "add_series", "align",
    "archive_step", "axis_scale", "context_color", "data_peak", "effective_step", "load_series",
    "make_plan", "mean_known", "reduce_rows", "request_step", "sum_known", "threshold_lines",
    "time_ticks", "y_scale",
]
