"""What the renderer needs to know, as plain data: no config file, no ctxmon.* import.

The caller that has validated the configuration (the daemon, `ctxmon graph`) builds
RenderSettings from it (`from_config`, duck-typed on its `rrd` and `graphs` parts) and
hands it over; the daemon's renderer worker receives it as one JSON line
(`to_json`/`from_json`), so a config file edited since (even a broken one) never
reaches it.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, fields

DEFAULT_WIDTH = 800
DEFAULT_HEIGHT = 300
DEFAULT_DEPARTED_AFTER = 86400.0  # a gone context leaves the host legends after a day


class SettingsError(ValueError):
    """Settings that are not usable; `str()` is one line."""


@dataclass(frozen=True, slots=True)
class RenderSettings:
    rrd_dir: str
    rrd_step: int  # seconds per primary data point of the RRD files
    graphs_dir: str
    interval: float = 300.0  # seconds between periodic runs (and page reloads)
    rrd_daemon: str | None = None  # rrdcached address, None for the files themselves
    width: int = DEFAULT_WIDTH
    height: int = DEFAULT_HEIGHT
    departed_after: float = DEFAULT_DEPARTED_AFTER  # seconds a gone context stays in host legends
    traffic_style: str = "munin"  # "munin": in below / out above, one bps row; "mrtg": in area, out line

    def __post_init__(self) -> None:
        for name in ("rrd_dir", "graphs_dir"):
            v = getattr(self, name)
            if not isinstance(v, str) or not v or "\0" in v:
                raise SettingsError(f"{name} must be a non-empty path")
        if self.rrd_daemon is not None and (not isinstance(self.rrd_daemon, str) or "\0" in self.rrd_daemon):
            raise SettingsError("rrd_daemon must be an address or null")
        for name, low, high in (("rrd_step", 1, 86400), ("width", 300, 10000), ("height", 160, 10000)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not low <= v <= high:
                raise SettingsError(f"{name} must be a whole number from {low} to {high}")
        if self.traffic_style not in ("munin", "mrtg"):
            raise SettingsError("traffic_style must be munin or mrtg")
        for name in ("interval", "departed_after"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise SettingsError(f"{name} must be a positive number of seconds")

    @classmethod
    def from_config(cls, cfg, width: int = DEFAULT_WIDTH, height: int = DEFAULT_HEIGHT) -> "RenderSettings":
        """From the daemon's validated Config (its `rrd` and `graphs` sections)."""
        g = cfg.graphs
        return cls(
            rrd_dir=os.path.realpath(cfg.rrd.dir),  # rrdcached knows files by the path the sink writes
            rrd_step=int(cfg.rrd.step),
            graphs_dir=os.path.abspath(g.dir),
            interval=float(g.interval),
            rrd_daemon=cfg.rrd.daemon or None,
            width=width,
            height=height,
            departed_after=float(getattr(g, "departed_after", DEFAULT_DEPARTED_AFTER)),
            traffic_style=str(getattr(g, "traffic_style", "munin")),
        )

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=True, allow_nan=False)

    @classmethod
    def from_json(cls, text: str) -> "RenderSettings":
        try:
            data = json.loads(text)
        except ValueError as e:
            raise SettingsError(f"settings are not JSON: {e}") from None
        if not isinstance(data, dict):
            raise SettingsError("settings must be a JSON object")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SettingsError(f"unknown settings: {', '.join(unknown)}")
        try:
            return cls(**data)
        except TypeError as e:
            raise SettingsError(str(e)) from None


__all__ = ["RenderSettings", "SettingsError"]
