"""`ctxmon plan` and `ctxmon demo-history`: options and the run. `ctxmon.cli` adds these
options to its sub-parsers and calls `run`/`run_demo`; PlanError is its one-line exit 2."""

from __future__ import annotations

import argparse
import logging
import math
import os
import socket
import sys
import time

from . import PlanError

log = logging.getLogger("ctxmon.plan")


def _number(kind, low, high, name):
    def parse(text: str):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not (low <= v <= high) or (isinstance(v, float) and not math.isfinite(v)):
            raise argparse.ArgumentTypeError(f"{name} must be from {low:g} to {high:g}")
        return v
    return parse


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_argument_group("history (default: this host's [rrd] dir from -c FILE)")
    src.add_argument("-c", "--config", metavar="FILE",
                     help="ctxmon config: plan from its [rrd] dir (this host)")
    src.add_argument("--history", action="append", default=[], metavar="NAME=DIR",
                     help="host NAME's RRD dir (a copy of its [rrd] dir); repeatable")
    src.add_argument("--prometheus", metavar="URL",
                     help="a Prometheus holding the ctxmon_* series of many hosts (the host "
                     "is the instance label), e.g. http://prom:9090")
    src.add_argument("--days", type=_number(float, 0.01, 3660, "--days"), default=14.0,
                     help="window of history to plan on, ending now (default 14)")
    src.add_argument("--min-days", type=_number(float, 0, 3660, "--min-days"), default=None,
                     help="refuse contexts with less history than this (default 1, or half "
                     "the window if that is shorter)")
    src.add_argument("--end", type=_number(float, 0, 2**33, "--end"), default=None,
                     metavar="EPOCH", help="window end in seconds since the epoch (default now)")
    src.add_argument("--step", type=_number(int, 1, 86400, "--step"), default=None,
                     metavar="SECONDS", help="grid step (default: the finest the history "
                     "holds for the whole window; with --prometheus 300, or coarser to stay "
                     "within 11,000 points)")
    pl = p.add_argument_group("placement")
    pl.add_argument("--host", action="append", default=[], metavar="NAME=CPUS,MEMORY",
                    help="add a target host or override one's capacity, e.g. new1=8,32GiB; "
                    "repeatable")
    pl.add_argument("--percentile", type=_number(float, 0.01, 100, "--percentile"), default=99.0,
                    help="percentile of each host's summed CPU that must stay under "
                    "--cpu-target (default 99; the sum never exceeds 100 %% in any case)")
    pl.add_argument("--cpu-target", type=_number(float, 0.01, 1, "--cpu-target"), default=0.8,
                    help="share of a host's CPUs the percentile may use (default 0.8)")
    pl.add_argument("--mem-target", type=_number(float, 0.01, 1, "--mem-target"), default=0.9,
                    help="share of a host's memory the sum of its contexts' memory peaks "
                    "may use (default 0.9)")
    pl.add_argument("--keep", action="append", default=[], metavar="CTX=HOST",
                    help="pin a context to a host; repeatable")
    pl.add_argument("--max-moves", type=_number(int, 0, 10**6, "--max-moves"), default=None,
                    metavar="N", help="move at most N contexts from where they run now")
    pl.add_argument("--move", action="append", default=[], metavar="CTX=HOST",
                    help="what-if: evaluate these moves (repeatable) instead of optimising")
    out = p.add_argument_group("output")
    out.add_argument("--json", action="store_true", help="print the plan as JSON")
    out.add_argument("--html", metavar="DIR",
                     help="also write DIR/index.html with one PNG per host (demand stacked "
                     "now and planned, capacity and target lines)")


def add_demo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", metavar="DIR", help="where to write <host>/ctx/... for hosts vs1-vs3")
    p.add_argument("--days", type=_number(int, 1, 62, "--days"), default=30,
                   help="days of history, ending now (default 30)")


def run_demo(args: argparse.Namespace) -> int:
    from .demo import write_demo

    if os.path.exists(args.dir) and not os.path.isdir(args.dir):
        raise PlanError(f"{args.dir}: not a directory")
    try:
        dirs = write_demo(args.dir, int(time.time()), args.days)
    except OSError as e:
        raise PlanError(f"{args.dir}: {e.strerror or e}") from None
    history = " ".join(f"--history {h}={d}" for h, d in dirs.items())
    first = next(iter(dirs))
    print(f"wrote {args.days} days of 24 servers on {len(dirs)} hosts under {args.dir}; try:\n"
          f"  ctxmon plan {history}\n"
          f"  ctxmon graph -c {os.path.join(args.dir, first + '.toml')}   # pages in "
          f"{os.path.join(args.dir, first + '-graphs')}/")
    return 0


def _pairs(option: str, specs: list[str]) -> dict[str, str]:
    from .model import parse_pair

    out: dict[str, str] = {}
    for spec in specs:
        ctx, host = parse_pair(option, spec)
        out[ctx] = host
    return out


def run(args: argparse.Namespace, local_dir: str | None = None) -> int:
    from . import history
    from .model import Host, Targets, parse_host
    from .place import Placement, host_figures, optimise, peak_sizing
    from .report import Plan, format_json, format_text, write_html

    targets = Targets(args.percentile, args.cpu_target, args.mem_target)
    end = int(args.end if args.end is not None else time.time())
    window = int(args.days * 86400)
    min_days = args.min_days if args.min_days is not None else min(1.0, args.days / 2)
    extra = {h.name: h for h in (parse_host(s) for s in args.host)}
    keep = _pairs("--keep", args.keep)
    moves = _pairs("--move", args.move)
    if moves and (keep or args.max_moves is not None):
        raise PlanError("--move evaluates given moves: it does not go with --keep or --max-moves")

    sources: list[tuple[str, str]] = []
    for spec in args.history:
        name, eq, d = spec.partition("=")
        if not eq or not name or not d:
            raise PlanError(f"--history {spec!r}: expected NAME=DIR")
        sources.append((name, d))
    if local_dir is not None:
        cap = history.read_capacity(local_dir) if os.path.isdir(local_dir) else None
        sources.append(((cap or {}).get("hostname") or socket.gethostname(), local_dir))
    names = [n for n, _ in sources]
    if len(set(names)) != len(names):
        raise PlanError("--history: a host name is given twice")

    raw = []
    capacities: dict[str, Host] = {}
    start = end - window
    raw.extend(history.read_rrd_dirs(sources, start, end))
    for name, d in sources:
        cap = history.read_capacity(d)
        if cap is not None:
            capacities[name] = Host(name, cap["cpus"], cap["memory_bytes"])
    step = args.step
    if args.prometheus:
        from .prom import read_prometheus

        if step is None:
            step = max(300, -(-window // 11000))
        series, caps = read_prometheus(args.prometheus, start, end, step)
        dup = {s.host for s in series} & set(names)
        if dup:
            raise PlanError(f"host {sorted(dup)[0]} is both in --history and in Prometheus")
        raw.extend(series)
        for name, (cpus, mem) in caps.items():
            capacities.setdefault(name, Host(name, cpus, mem))
    capacities.update(extra)
    for s in raw:
        if s.host not in capacities:
            raise PlanError(f"host {s.host} has no capacity (no {history.CAPACITY_FILE} and no "
                            f"ctxmon_host_cpus series): give --host {s.host}=CPUS,MEMORY")
    hosts = sorted(capacities.values(), key=lambda h: h.name)
    problem = history.build_problem(raw, hosts, end, args.days, min_days * 86400, step)
    for name, why in problem.refused:
        log.warning("context %s refused: %s", name, why)

    known = {d.name for d in problem.contexts}
    for option, pairs in (("--keep", keep), ("--move", moves)):
        for ctx, host in pairs.items():
            if ctx not in known:
                refused = dict(problem.refused)
                why = f" ({refused[ctx]})" if ctx in refused else ""
                raise PlanError(f"{option} {ctx}={host}: no context {ctx!r} in the history{why}")
            if ctx in {d.name for d in problem.contexts if d.fixed}:
                raise PlanError(f"{option} {ctx}={host}: {ctx!r} is a host's own processes, "
                                "which stay with their host")
            if problem.host(host) is None:
                raise PlanError(f"{option} {ctx}={host}: no host {host!r} (known: "
                                f"{', '.join(h.name for h in hosts)}; add one with --host)")

    current = {d.name: d.host for d in problem.contexts}
    if moves:
        placement = Placement({**current, **moves})
    else:
        placement = optimise(problem, targets, keep, args.max_moves)
    plan = Plan(problem, targets, placement,
                host_figures(problem, targets, current),
                host_figures(problem, targets, placement.assign),
                peak_sizing(problem, targets), what_if=bool(moves))
    if args.html:
        try:
            write_html(plan, args.html)
        except OSError as e:
            raise PlanError(f"--html {args.html}: {e.strerror or e}") from None
    sys.stdout.write(format_json(plan) if args.json else format_text(plan))
    sys.stdout.flush()
    return 0
