"""`python -m graphs` is the daemon's renderer worker (graphs.worker: settings and
requests on stdin), so matplotlib never enters the polling process.

`ctxmon graph` draws now with `add_arguments` and `run` below, from the configuration
its caller has loaded and validated. Exit status: 0 done, 1 some graphs failed (or,
with --no-wait, another rendering holds the folder), 2 bad input (one line on stderr).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from typing import TextIO

from . import PERIODS

EXIT_FAILED = 1
EXIT_USAGE = 2

log = logging.getLogger("ctxmon.graphs")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `python -m graphs` / `ctxmon graph`."""
    parser.add_argument("-c", "--config", required=True, metavar="FILE",
                        help="TOML config file: [rrd] dir/step/daemon to read, [graphs] dir to write")
    # Checked in run(), not by argparse, so that a wrong one is one line like other errors.
    parser.add_argument("--period", action="append", metavar="PERIOD",
                        help="day, week, month or year (repeatable; default all four)")
    parser.add_argument("--context", metavar="NAME",
                        help="only this context's graphs and pages")
    parser.add_argument("--force", action="store_true",
                        help="redraw every graph, even those whose archive has no new row")
    parser.add_argument("--width", type=int, default=800, metavar="PX", help="PNG width (default 800)")
    parser.add_argument("--height", type=int, default=300, metavar="PX", help="PNG height (default 300)")
    parser.add_argument("--no-wait", action="store_true",
                        help="fail at once when another rendering (e.g. the daemon's) is "
                             "drawing; by default wait for it to finish, then draw")


class Progress:
    """A one-line bar on a terminal (`\\r` updates on stderr); silent otherwise."""

    def __init__(self, stream: TextIO, width: int = 30):
        self.stream = stream
        self.width = width
        self.active = bool(getattr(stream, "isatty", lambda: False)())
        self._last = 0.0

    def __call__(self, done: int, total: int) -> None:
        if not self.active or total <= 0:
            return
        now = time.monotonic()
        if done < total and now - self._last < 0.1:
            return  # redrawing faster than the eye reads only costs time
        self._last = now
        filled = self.width * done // total
        bar = "#" * filled + "-" * (self.width - filled)
        self.stream.write(f"\r[{bar}] {done}/{total} graphs")
        if done >= total:
            self.stream.write("\n")
        self.stream.flush()


def run(args: argparse.Namespace, cfg, stderr: TextIO | None = None) -> int:
    """Render as `args` (from add_arguments) says, with `cfg` the caller's validated
    configuration (its `rrd` and `graphs` parts); errors are one line on stderr."""
    from .paint import Painter
    from .run import BusyError, GraphError, GraphRun, UnknownContextError
    from .settings import RenderSettings

    err = stderr or sys.stderr
    for p in args.period or ():
        if p not in PERIODS:
            print(f"ctxmon graph: no such period {p!r} (day, week, month or year)", file=err)
            return EXIT_USAGE
    try:
        painter = Painter(args.width, args.height)
        settings = RenderSettings.from_config(cfg, args.width, args.height)
    except ValueError as e:
        print(f"ctxmon graph: {e}", file=err)
        return EXIT_USAGE
    periods = tuple(dict.fromkeys(args.period)) if args.period else PERIODS
    graphs = GraphRun(settings, painter)

    def waiting() -> None:
        log.info("another rendering is drawing in %s; waiting for it to finish", settings.graphs_dir)

    t0 = time.monotonic()
    try:
        result = graphs.run(periods, context=args.context, force=args.force, progress=Progress(err),
                            wait=not getattr(args, "no_wait", False), on_wait=waiting)
    except BusyError as e:
        print(f"ctxmon graph: {e} (without --no-wait, ctxmon graph waits for it)", file=err)
        return EXIT_FAILED
    except GraphError as e:
        print(f"ctxmon graph: {e}", file=err)
        return EXIT_USAGE if isinstance(e, UnknownContextError) else EXIT_FAILED
    except OSError as e:
        print(f"ctxmon graph: {settings.graphs_dir}: {e.strerror or e}", file=err)
        return EXIT_FAILED
    log.info("%d graphs drawn, %d unchanged, %d failed, %d pages in %.1f s (%s)",
             result.rendered, result.skipped, result.failed, result.pages, time.monotonic() - t0,
             settings.graphs_dir)
    return EXIT_FAILED if result.failed else 0


def main(argv: list[str] | None = None) -> int:
    from .worker import main as worker_main

    return worker_main(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
