"""`python -m graphs -c FILE [--period P] [--context NAME] [--force]`: render now.

The daemon runs this in a child process every `[graphs] interval`, so matplotlib
never enters the polling process; `ctxmon graph` reuses `add_arguments` and `run`.
Exit status: 0 done, 1 some graphs failed or another rendering holds the folder,
2 bad input (one line on stderr).
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
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("-c", "--config", metavar="FILE",
                        help="TOML config file: [rrd] dir/step/daemon to read, [graphs] dir to write")
    # The daemon's child: its validated config in force, serialized on stdin (the
    # file may hold a newer config the daemon refused).
    source.add_argument("--config-stdin", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--period", choices=PERIODS, action="append", metavar="PERIOD",
                        help="day, week, month or year (repeatable; default all four)")
    parser.add_argument("--context", metavar="NAME",
                        help="only this context's graphs and pages")
    parser.add_argument("--force", action="store_true",
                        help="redraw every graph, even those whose archive has no new row")
    parser.add_argument("--width", type=int, default=800, metavar="PX", help="PNG width (default 800)")
    parser.add_argument("--height", type=int, default=300, metavar="PX", help="PNG height (default 300)")
    # The daemon's own runs: it has checked the RRD files' step already, so the
    # config load need not run `rrdtool info` on every file again each interval.
    parser.add_argument("--daemon-child", action="store_true", help=argparse.SUPPRESS)


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


def run(args: argparse.Namespace, stderr: TextIO | None = None) -> int:
    """Render as `args` (from add_arguments) says; errors are one line on stderr."""
    from ctxmon.config import ConfigError, config_from_json, load_config

    from .paint import Painter
    from .run import GraphError, GraphRun, UnknownContextError

    err = stderr or sys.stderr
    try:
        if getattr(args, "config_stdin", False):
            cfg = config_from_json(sys.stdin.buffer.read())
        else:
            cfg = load_config(args.config, check_rrd_files=not args.daemon_child)
    except (ConfigError, ValueError) as e:
        print(f"ctxmon graph: {e}", file=err)
        return EXIT_USAGE
    try:
        painter = Painter(args.width, args.height)
    except ValueError as e:
        print(f"ctxmon graph: {e}", file=err)
        return EXIT_USAGE
    periods = tuple(dict.fromkeys(args.period)) if args.period else PERIODS
    t0 = time.monotonic()
    try:
        result = GraphRun(cfg, painter).run(periods, context=args.context, force=args.force,
                                            progress=Progress(err))
    except GraphError as e:
        print(f"ctxmon graph: {e}", file=err)
        return EXIT_USAGE if isinstance(e, UnknownContextError) else EXIT_FAILED
    except OSError as e:
        print(f"ctxmon graph: {cfg.graphs.dir}: {e.strerror or e}", file=err)
        return EXIT_FAILED
    log.info("%d graphs drawn, %d unchanged, %d failed, %d pages in %.1f s (%s)",
             result.rendered, result.skipped, result.failed, result.pages, time.monotonic() - t0,
             cfg.graphs.dir)
    return EXIT_FAILED if result.failed else 0


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not usage + message
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see --help)\n")


def main(argv: list[str] | None = None) -> int:
    parser = _OneLineParser(prog="python -m graphs",
                            description="Draw the graphs and pages from the RRD files now.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    add_arguments(parser)
    args = parser.parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                            format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        return run(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
