"""The `ctxmon` command: stat, run, check-config, graph, rules, plan, demo-history.

Start-up is part of the product (`ctxmon stat` is run by hand and by scripts): this
module imports only argparse, and each command imports what it needs when it runs;
the parser of a command is only filled in when that command is asked for.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

from . import __version__
from .errors import UserError

if TYPE_CHECKING:
    import argparse

    from collector.snapshot import Snapshot

EXIT_USAGE = 2  # bad input or config: one line on stderr, nothing written
SOURCES = ("vserver", "cgroup")  # as collector.SOURCES (a test keeps them equal)


def load_config(path, **kwargs):
    from .config import load_config as load

    return load(path, **kwargs)


def _log():
    import logging

    return logging.getLogger("ctxmon")


def _check_root(proc_root: str) -> None:
    if not os.path.isdir(proc_root):
        raise UserError(f"proc root {proc_root}: no such directory")
    try:
        # Opening it is the test: a listing would read all 20,000 entries of a busy
        # /proc once more before the scan reads them (~20 ms).
        with os.scandir(proc_root):
            pass
    except OSError as e:
        raise UserError(f"proc root {proc_root}: {e.strerror}") from None
    if not os.path.exists(os.path.join(proc_root, "uptime")):
        raise UserError(f"proc root {proc_root}: not a proc tree (no 'uptime' file)")


def snapshot_json(snap: "Snapshot") -> list[dict]:
    """`ctxmon stat --json`: one object per context, base units (fields: the catalog's)."""
    from collector.catalog import context_json

    return [context_json(c) for c in snap.contexts]


def cmd_stat(args: argparse.Namespace) -> int:
    import gc

    # One pass, then exit: the cyclic GC would only walk the 20,000 process tuples of
    # a busy host through its generations (none of them is in a cycle).
    gc.disable()
    from collector import build_source
    from collector.sampler import Sampler

    proc_root = args.proc_root
    _check_root(proc_root)
    if args.vservers_dir and not os.path.isdir(args.vservers_dir):
        raise UserError(f"vservers dir {args.vservers_dir}: no such directory")
    if args.source == "vserver" and not os.path.isdir(os.path.join(proc_root, "virtual")):
        raise UserError(f"--source vserver: no {os.path.join(proc_root, 'virtual')} "
                        "(not a Linux-VServer kernel); try --source cgroup")
    source = build_source(
        args.source,
        proc_root=proc_root,
        vservers_dir=args.vservers_dir,
        cgroup_root=args.cgroup_root,
    )
    # vserver-stat lists itself in context 0 too; keep the stat files closed after
    # this one-shot run (no point holding thousands of fds for one read).
    from collector.procfs import ProcessScanner

    sampler = Sampler(source, proc_root, scanner=ProcessScanner(proc_root, max_open=0))
    try:
        snap = sampler.sample()
    except OSError as e:  # the tree failed while it was read (I/O error, taken away)
        raise UserError(f"proc root {proc_root}: {e.strerror or e}") from None
    finally:
        sampler.close()
    if args.json:
        import json

        # ASCII escapes: names may hold undecodable bytes or terminal controls. One
        # context per line: json's C encoder only runs without `indent` (5x faster
        # at thousands of contexts).
        dumps = json.JSONEncoder(ensure_ascii=True).encode
        sys.stdout.write("[\n" + ",\n".join(map(dumps, snapshot_json(snap))) + "\n]\n")
    else:
        from collector.vserverstat import format_table

        sys.stdout.write(format_table(snap))
    sys.stdout.flush()
    for src, n in sorted(snap.errors.items()):
        _log().warning("%d %s file(s) skipped (unreadable or malformed); -v shows which", n, src)
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    print(f"{args.config}: OK")
    from .wiring import storage_estimate  # not .daemon: no APScheduler for a check

    print(storage_estimate(cfg))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from .daemon import Daemon

    cfg = load_config(args.config)
    if not args.verbose:
        import logging

        logging.getLogger().setLevel(cfg.log.level.upper())
    try:
        daemon = Daemon(cfg, config_path=args.config)
    except (ValueError, OSError) as e:  # e.g. a cgroup hierarchy that is not mounted
        raise UserError(f"{args.config}: {e}") from None
    return daemon.run()


def cmd_rules(args: argparse.Namespace) -> int:
    """`ctxmon rules`: a ConfigError propagates (main prints it as one line)."""
    from alerts.promrules import generate_rules

    cfg = load_config(args.config, check_rrd_files=False)
    text = generate_rules(cfg.alerts, source=args.config, group=args.group)
    if not args.output:
        sys.stdout.write(text)
        sys.stdout.flush()
        return 0
    from exporters.files import write_atomic

    folder = os.path.dirname(args.output) or "."
    if not os.path.isdir(folder):  # a typo in the path makes no folders
        raise UserError(f"rules: {args.output}: no such directory {folder}")
    try:
        write_atomic(args.output, text.encode("ascii"), make_dirs=False)
    except OSError as e:
        raise UserError(f"rules: {args.output}: {e.strerror or e}") from None
    return 0


def cmd_graph(args: argparse.Namespace) -> int:
    from graphs.__main__ import run

    return run(args, load_config(args.config))


def cmd_plan(args: argparse.Namespace) -> int:
    from planner import PlanError
    from planner.cli import run

    local = None
    if not args.history and not args.prometheus:
        if not args.config:
            raise UserError("plan: give -c FILE (this host's [rrd] dir), --history NAME=DIR "
                            "or --prometheus URL")
        local = load_config(args.config).rrd.dir
    try:
        return run(args, local)
    except PlanError as e:
        raise UserError(f"plan: {e}") from None


def cmd_demo_history(args: argparse.Namespace) -> int:
    from planner import PlanError
    from planner.cli import run_demo

    try:
        return run_demo(args)
    except PlanError as e:
        raise UserError(f"demo-history: {e}") from None


def _stat_arguments(st: argparse.ArgumentParser) -> None:
    st.add_argument("--proc-root", default="/proc", metavar="DIR",
                    help="proc tree to read (a chroot's or a recorded one; default /proc). "
                    "Its parent is the root that absolute paths stored by "
                    "util-vserver resolve under.")
    st.add_argument("--vservers-dir", default=None, metavar="DIR",
                    help="util-vserver config dir (default <root>/etc/vservers)")
    st.add_argument("--source", choices=("auto",) + SOURCES, default="auto",
                    help="how processes are grouped: vserver (xid), cgroup, or auto "
                    "(vserver when <proc>/virtual exists; default)")
    st.add_argument("--cgroup-root", default=None, metavar="DIR",
                    help="cgroup mount point (default <root>/sys/fs/cgroup)")
    st.add_argument("--json", action="store_true", help="print a JSON array instead")


def _config_argument(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("-c", "--config", required=True, metavar="FILE",
                    help="TOML config file (see conf/ctxmon.toml)")


def _graph_arguments(gp: argparse.ArgumentParser) -> None:
    from graphs.__main__ import add_arguments

    add_arguments(gp)


def _rules_arguments(ru: argparse.ArgumentParser) -> None:
    ru.add_argument("-c", "--config", required=True, metavar="FILE",
                    help="TOML config file whose [[alerts.rule]] entries to convert")
    ru.add_argument("-o", "--output", metavar="FILE", default=None,
                    help="write the rules here (atomically; its folder must exist) instead "
                    "of to standard output")
    ru.add_argument("--group", default="ctxmon", metavar="NAME",
                    help="name of the rule group (default ctxmon)")


def _plan_arguments(pl: argparse.ArgumentParser) -> None:
    from planner.cli import add_arguments

    add_arguments(pl)


def _demo_arguments(dh: argparse.ArgumentParser) -> None:
    from planner.cli import add_demo_arguments

    add_demo_arguments(dh)


_RULES_TEXT = "print the [[alerts.rule]] entries as a Prometheus alerting rules file"
_DEMO_TEXT = "write a demo history (the talk's 24 servers on 3 hosts, 30 days of RRD files)"

# name -> (help, description, fills in its options, runs it)
COMMANDS: dict[str, tuple[str, str, object, object]] = {
    "stat": (
        "print util-vserver's vserver-stat table for every context, once",
        "Print CTX PROC VSZ RSS userTIME sysTIME UPTIME NAME for every "
        "context, in vserver-stat's layout and formats. CPU times there are "
        "vserver-stat's own: the sum over live processes including their reaped "
        "children (--json adds the monotonic per-context counters).",
        _stat_arguments, cmd_stat),
    "run": ("run the polling daemon", "Run the polling daemon: sample every [collector] "
            "interval into the RRD files, serve /metrics, evaluate alerts, draw graphs. "
            "SIGHUP reloads the config (a bad one is refused and the old one kept); "
            "SIGTERM stops it.", _config_argument, cmd_run),
    "check-config": ("validate a config file and exit",
                     "Validate a config file and exit: 0 and `FILE: OK`, or one line "
                     "`FILE:LINE: KEY: problem` and exit status 2.",
                     _config_argument, cmd_check_config),
    "graph": ("draw the graphs and HTML pages from the RRD files now",
              "Draw the day/week/month/year graphs and the HTML pages under "
              "[graphs] dir from the RRD files. Graphs whose archive has no new row are kept.",
              _graph_arguments, cmd_graph),
    "rules": (_RULES_TEXT, _RULES_TEXT + ", for Prometheus to evaluate the same alerts as "
              "the daemon (ctxmon_* series).", _rules_arguments, cmd_rules),
    "plan": ("plan where contexts should run, from their stored CPU and memory history",
             "Place every context on one host so that each host's time-aligned CPU "
             "sum stays under target at a percentile and its memory peaks fit; fewest hosts "
             "first, then the most even headroom. Prints a table per host, the moves, and "
             "what sizing by each context's own peak would need.",
             _plan_arguments, cmd_plan),
    "demo-history": (_DEMO_TEXT, _DEMO_TEXT + ", to try ctxmon plan and the graph pages on "
                     "a fresh machine.", _demo_arguments, cmd_demo_history),
}


def _command_in(argv: list[str]) -> str | None:
    """The command named in `argv` (the first word that is no option: the top level's
    options take no value)."""
    return next((a for a in argv if not a.startswith("-")), None)


def build_parser(command: str | None = "*") -> argparse.ArgumentParser:
    """The parser; the options of `command` only ("*": of every command), so that a
    command never imports what another one needs to describe its options."""
    import argparse

    # -v works before and after the command (`ctxmon run -c FILE -v`); SUPPRESS keeps
    # the command's parser from resetting what the top level set.
    verbose = argparse.ArgumentParser(add_help=False)
    verbose.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                         help="log debug messages")
    p = argparse.ArgumentParser(
        prog="ctxmon", parents=[verbose],
        description="Per-context monitor for consolidated Linux hosts: Linux-VServer "
        "guests, containers and services. Samples processes, memory, CPU and traffic "
        "per context, stores them in RRD files and serves them to Prometheus.",
    )
    p.add_argument("--version", action="version", version=f"ctxmon {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name, (text, description, arguments, func) in COMMANDS.items():
        sp = sub.add_parser(name, help=text, description=description, parents=[verbose])
        if command in ("*", name):
            arguments(sp)
        sp.set_defaults(func=func)
    return p


def setup_logging(verbose: bool) -> None:
    import logging

    # Under systemd, journald timestamps each line itself.
    fmt = "%(levelname)s %(name)s: %(message)s"
    if not os.environ.get("JOURNAL_STREAM") and not os.environ.get("INVOCATION_ID"):
        fmt = "%(asctime)s " + fmt
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format=fmt,
                        stream=sys.stderr)
    # APScheduler logs two lines per job run at INFO; its warnings (missed runs) and
    # errors still show, and -v shows everything.
    if not verbose:
        logging.getLogger("apscheduler").setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv == ["--version"]:  # the quickest answer there is
        print(f"ctxmon {__version__}")
        return 0
    parser = build_parser(_command_in(argv))
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    args.verbose = getattr(args, "verbose", False)
    setup_logging(args.verbose)
    try:
        return args.func(args)
    except UserError as e:  # a ConfigError is one too, already one line: FILE:LINE: KEY: ...
        print(f"ctxmon: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
