"""The planner's heuristic against OR-Tools CP-SAT on the same placement model: why
ctxmon does not depend on a solver.

CP-SAT model: x[i,h] (context i on host h), y[h] (host used), minimise sum y; per host
memory peaks under target; per host and time point the summed CPU (milli-cores) under
the CPUs, and under the target except at the points a boolean lets go, at most
T - 1 - k of them (k = the nearest-rank percentile's index).

Instances: the tests' small random ones (exhaustive optimum known), and two larger
ones from the benchmark's workload generator. OR-Tools is not a dependency: run
this from a venv that has it,

    python3 -m venv /tmp/ort && /tmp/ort/bin/pip install ortools numpy rrdtool
    /tmp/ort/bin/python benchmarks/plan_cpsat.py
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np
from ortools.sat.python import cp_model

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

# The tests' instances and exhaustive optimum (one module for both).
from planchecks import exhaustive_hosts, random_instance  # noqa: E402

from planner.model import Demand, GiB, Host, Problem, Targets, percentile_index  # noqa: E402
from planner.place import optimise  # noqa: E402

SCALE = 1000  # milli-cores


def cpsat(problem: Problem, tg: Targets, limit: float) -> tuple[int | None, str]:
    m = cp_model.CpModel()
    n, hosts, points = len(problem.contexts), problem.hosts, problem.points
    k = percentile_index(points, tg.percentile)
    x = {(i, h): m.NewBoolVar(f"x{i}_{h}") for i in range(n) for h in range(len(hosts))}
    y = [m.NewBoolVar(f"y{h}") for h in range(len(hosts))]
    cpu = [np.ceil(d.cpu * SCALE).astype(int) for d in problem.contexts]
    mem = [int(np.ceil(d.memory_peak / 2**20)) for d in problem.contexts]
    for i in range(n):
        m.AddExactlyOne(x[i, h] for h in range(len(hosts)))
    for h, host in enumerate(hosts):
        for i in range(n):
            m.AddImplication(x[i, h], y[h])
        m.Add(sum(mem[i] * x[i, h] for i in range(n)) <= int(tg.mem_target * host.memory_bytes / 2**20))
        over = [m.NewBoolVar("") for _ in range(points)]
        for t in range(points):
            load = sum(int(cpu[i][t]) * x[i, h] for i in range(n))
            m.Add(load <= int(host.cpus * SCALE))
            m.Add(load <= int(tg.cpu_target * host.cpus * SCALE)).OnlyEnforceIf(over[t].Not())
        m.Add(sum(over) <= points - k - 1)
    m.Minimize(sum(y))
    solver = cp_model.CpSolver()
    solver.parameters.max_time_in_seconds = limit
    solver.parameters.num_workers = 1
    status = solver.Solve(m)
    found = status in (cp_model.OPTIMAL, cp_model.FEASIBLE)
    return (int(solver.ObjectiveValue()) if found else None), solver.StatusName(status)


def small_instances(count: int):
    rng = np.random.default_rng(7)
    while count:
        p = random_instance(rng, int(rng.integers(4, 10)), int(rng.integers(2, 5)))
        best = exhaustive_hosts(p, Targets())
        if best is not None:
            count -= 1
            yield p, best


def large_instance(rng, n: int, nhosts: int, points: int) -> Problem:
    from plan_bench import workload  # needs the rrdtool bindings in this venv too

    contexts = []
    for i in range(n):
        cpu, mem = workload(rng, points * 6)  # 5-minute points averaged to 30 minutes
        contexts.append(Demand(f"c{i}", f"h{i % nhosts}", cpu.reshape(-1, 6).mean(1),
                               mem.reshape(-1, 6).max(1), points * 1800.0))
    return Problem(0, 1800, [Host(f"h{j}", 16, 64 * GiB) for j in range(nhosts)], contexts)


def main() -> int:
    tg = Targets()
    rows = []
    for p, best in small_instances(25):
        t0 = time.monotonic()
        ours = len(optimise(p, tg).hosts_used())
        t1 = time.monotonic()
        theirs, _ = cpsat(p, tg, 20)
        rows.append((best, ours, theirs, t1 - t0, time.monotonic() - t1))
    print(f"small (<= 9 contexts, <= 4 hosts, 96 points), {len(rows)} instances:")
    print(f"  heuristic at the exhaustive optimum {sum(r[1] == r[0] for r in rows)}, "
          f"CP-SAT {sum(r[2] == r[0] for r in rows)}; median time "
          f"{np.median([r[3] for r in rows]):.3f} s vs {np.median([r[4] for r in rows]):.3f} s, "
          f"max {max(r[3] for r in rows):.2f} s vs {max(r[4] for r in rows):.2f} s")
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    rng = np.random.default_rng(3)
    for n, nhosts, points in ((60, 8, 336), (150, 15, 672)):
        p = large_instance(rng, n, nhosts, points)
        t0 = time.monotonic()
        ours = len(optimise(p, tg).hosts_used())
        t1 = time.monotonic()
        theirs, status = cpsat(p, tg, 60)
        print(f"{n} contexts, {nhosts} hosts, {points} points: heuristic {ours} hosts in "
              f"{t1 - t0:.2f} s; CP-SAT {theirs} ({status}) in {time.monotonic() - t1:.1f} s "
              "(limit 60 s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
