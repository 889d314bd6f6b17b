"""Placement checks shared by tests/test_plan.py and benchmarks/plan_cpsat.py (which
imports this module; tests never import benchmarks): small random instances, a host's
constraints recomputed from the series themselves (the planner's own figures are not
trusted), and the exhaustive optimum they give.
"""

from __future__ import annotations

import numpy as np

from planner.model import Demand, GiB, Host, Problem, Targets


def fits(series: list[np.ndarray], memory: list[float], host: Host, tg: Targets) -> bool:
    if not series:
        return True
    total = np.sum(series, axis=0)
    p = np.percentile(total, tg.percentile, method="inverted_cdf")
    return bool(p <= tg.cpu_target * host.cpus * (1 + 1e-9)
                and total.max() <= host.cpus * (1 + 1e-9)
                and sum(memory) <= tg.mem_target * host.memory_bytes * (1 + 1e-9))


def random_instance(rng, n: int, nhosts: int, points: int = 96) -> Problem:
    t = np.arange(points)
    hosts = [Host(f"h{j}", float(rng.choice([4, 4, 8, 8])), float(rng.choice([8, 16, 32])) * GiB)
             for j in range(nhosts)]
    contexts = []
    for i in range(n):
        base, amp, phase = rng.uniform(0.05, 1.0), rng.uniform(0, 2.0), rng.uniform(0, points)
        cpu = (base + amp * np.maximum(0, np.sin(2 * np.pi * (t - phase) / points)) ** 3
               + rng.uniform(0, 0.2, points))
        mem = np.full(points, rng.uniform(0.5, 12) * GiB)
        contexts.append(Demand(f"c{i}", f"h{rng.integers(nhosts)}", cpu, mem, points * 900.0))
    return Problem(0, 900, hosts, contexts)


def exhaustive_hosts(problem: Problem, tg: Targets) -> int | None:
    """Fewest hosts over all assignments (depth first; adding a context never makes
    a host's figures smaller, so a host that fails prunes the branch)."""
    n, hosts = len(problem.contexts), problem.hosts
    groups: list[list[int]] = [[] for _ in hosts]
    best: list[int | None] = [None]

    def ok(h: int) -> bool:
        members = [problem.contexts[i] for i in groups[h]]
        return fits([d.cpu for d in members], [d.memory.max() for d in members], hosts[h], tg)

    def dfs(i: int, used: int) -> None:
        if best[0] is not None and used >= best[0]:
            return
        if i == n:
            best[0] = used
            return
        for h in range(len(hosts)):
            groups[h].append(i)
            if ok(h):
                dfs(i + 1, used + (len(groups[h]) == 1))
            groups[h].pop()

    dfs(0, 0)
    return best[0]
