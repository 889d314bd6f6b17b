"""Placement: every context on one host, each host's time-aligned demand under target.

A host's constraints, for the contexts S placed on it (CPU series c_i, memory m_i):
- the `percentile` of the summed series sum(c_i) <= cpu_target x CPUs,
- its maximum <= CPUs (never above 100 % at any point),
- sum(max(m_i)) <= mem_target x memory (memory peaks add up: memory is not lent back
  at once, so it is not shared over time the way CPU is).
All three only grow as contexts are added (series are >= 0), which the search uses.

The search (a hand-written heuristic, see `optimise`):
1. first-fit decreasing of the time-aligned series over the hosts, biggest hosts first
   (each context tries its current host first, so that a fit needs no move);
2. fewer hosts: on small fleets every subset of hosts of each size, smallest first,
   packed by first fit and then a violation-minimising local search (moves and
   swaps, a few seeded restarts); on large fleets a bisection over how many of the
   biggest hosts a balanced fit fills (each context where it leaves the most
   headroom, so contexts peaking at other hours meet), then emptying hosts one by one;
3. evening out: moves from the host with the least headroom to others while the sum
   of squared utilisations falls (a move away from where a context runs costs a bit).
`--max-moves` starts from the current placement instead and spends moves on fixing
overloaded hosts, then on emptying the hosts cheapest to empty, then on evening out.

Why not CP-SAT (benchmarks/plan_cpsat.py): the percentile constraint needs one boolean
per host and time point, each summing all contexts that may land there. On the tests'
small instances both reach the exhaustive optimum; at 150 contexts x 15 hosts x 672
points CP-SAT finds no solution in 60 s where this finds 5 hosts in 2.5 s.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass, field

import numpy as np

from .model import Problem, Targets, percentile_index

EPS = 1e-9
RESTARTS = 20  # orders tried on small instances after the size order
MOVE_COST = 0.002  # in sum-of-squared-utilisation units: evening out must earn a move


@dataclass
class Placement:
    assign: dict[str, str | None]  # context -> host (None = unplaced)
    unplaced: list[str] = field(default_factory=list)

    def hosts_used(self) -> set[str]:
        return {h for h in self.assign.values() if h is not None}

    def moves(self, problem: Problem) -> list[tuple[str, str | None, str]]:
        out = []
        for d in problem.contexts:
            to = self.assign.get(d.name)
            if to is not None and to != d.host:
                out.append((d.name, d.host, to))
        return out


class _State:
    """Per-host summed series and memory, with the constraint checks on them."""

    def __init__(self, problem: Problem, targets: Targets):
        self.problem = problem
        self.C = np.array([d.cpu for d in problem.contexts], dtype=np.float64).reshape(
            len(problem.contexts), -1)
        self.M = np.array([d.memory_peak for d in problem.contexts], dtype=np.float64)
        self.N, self.T = self.C.shape
        self.H = len(problem.hosts)
        self.cap = np.array([h.cpus * targets.cpu_target for h in problem.hosts])
        self.hard = np.array([float(h.cpus) for h in problem.hosts])
        self.memcap = np.array([h.memory_bytes * targets.mem_target for h in problem.hosts])
        self.k = percentile_index(max(self.T, 1), targets.percentile)
        self.peak = self.C.max(axis=1) if self.T else np.zeros(self.N)
        self.load = np.zeros((self.H, self.T))
        self.mem = np.zeros(self.H)
        self.count = np.zeros(self.H, dtype=int)
        self.assign = np.full(self.N, -1)
        self.current = np.array([self._host_index(d.host) for d in problem.contexts], dtype=int)
        self.size: np.ndarray | None = None  # see _size_order
        # A host's own processes (VServer's root and monitoring servers, the cgroup
        # source's `host`) stay with it: their load counts on it while it is in use.
        self.fixed = np.array([d.fixed for d in problem.contexts], dtype=bool)
        self.base_load = np.zeros((self.H, self.T))
        self.base_mem = np.zeros(self.H)
        for i in np.flatnonzero(self.fixed):
            if self.current[i] >= 0:
                self.base_load[self.current[i]] += self.C[i]
                self.base_mem[self.current[i]] += self.M[i]

    def _host_index(self, name: str | None) -> int:
        for j, h in enumerate(self.problem.hosts):
            if h.name == name:
                return j
        return -1

    # -- figures of a series
    def pct(self, x: np.ndarray) -> float:
        return float(np.partition(x, self.k)[self.k]) if x.size else 0.0

    def ok(self, h: int, x: np.ndarray, mem: float) -> bool:
        if mem > self.memcap[h] * (1 + EPS):
            return False
        if not x.size:
            return True
        mx = x.max()
        if mx > self.hard[h] * (1 + EPS):
            return False
        return mx <= self.cap[h] * (1 + EPS) or self.pct(x) <= self.cap[h] * (1 + EPS)

    def adding(self, i: int, h: int) -> tuple[np.ndarray, float]:
        """Host h's summed series and memory with context i added (and the host's own
        load, when i would be its first context)."""
        if self.count[h] == 0:
            return self.base_load[h] + self.C[i], self.base_mem[h] + self.M[i]
        return self.load[h] + self.C[i], self.mem[h] + self.M[i]

    def fits(self, i: int, h: int) -> bool:
        return self.ok(h, *self.adding(i, h))

    def fits_alone(self, i: int, h: int) -> bool:
        return self.ok(h, self.base_load[h] + self.C[i], self.base_mem[h] + self.M[i])

    def violation(self, h: int, x: np.ndarray | None = None, mem: float | None = None) -> float:
        x = self.load[h] if x is None else x
        mem = self.mem[h] if mem is None else mem
        v = max(0.0, mem - self.memcap[h]) / self.memcap[h]
        if x.size:
            mx = x.max()
            v += max(0.0, mx - self.hard[h]) / self.hard[h]
            if mx > self.cap[h]:
                v += max(0.0, self.pct(x) - self.cap[h]) / self.cap[h]
        return v

    def util(self, h: int, x: np.ndarray | None = None, mem: float | None = None) -> float:
        """How full a host is against its targets, the larger of CPU and memory."""
        x = self.load[h] if x is None else x
        mem = self.mem[h] if mem is None else mem
        cpu = self.pct(x) / self.cap[h] if x.size else 0.0
        return max(cpu, mem / self.memcap[h])

    # -- changes
    def put(self, i: int, h: int) -> None:
        if self.count[h] == 0:
            self.load[h] += self.base_load[h]
            self.mem[h] += self.base_mem[h]
        self.assign[i] = h
        self.load[h] += self.C[i]
        self.mem[h] += self.M[i]
        self.count[h] += 1

    def take(self, i: int) -> int:
        h = int(self.assign[i])
        if h >= 0:
            self.load[h] -= self.C[i]
            self.mem[h] -= self.M[i]
            self.count[h] -= 1
            if self.count[h] == 0:  # no drift left behind by float sums
                self.load[h] = 0.0
                self.mem[h] = 0.0
            self.assign[i] = -1
        return h

    def snapshot(self) -> np.ndarray:
        return self.assign.copy()

    def restore(self, assign: np.ndarray) -> None:
        self.assign[:] = -1
        self.load[:] = 0.0
        self.mem[:] = 0.0
        self.count[:] = 0
        for i, h in enumerate(assign):
            if h >= 0:
                self.put(i, int(h))

    def moves(self, assign: np.ndarray | None = None) -> int:
        a = self.assign if assign is None else assign
        return int(np.sum((a >= 0) & (a != self.current)))

    def score(self, assign: np.ndarray | None = None) -> tuple:
        """Lower is better: unplaced, hosts used, unevenness (+ moves, lightly)."""
        if assign is not None:
            saved = self.snapshot()
            self.restore(assign)
        used = [h for h in range(self.H) if self.count[h] > 0]
        unplaced = int(np.sum(self.assign < 0))
        spread = sum(self.util(h) ** 2 for h in used)
        result = (unplaced, len(used), round(spread + MOVE_COST * self.moves(), 9))
        if assign is not None:
            self.restore(saved)
        return result


def _size_order(st: _State, indices) -> list[int]:
    """Biggest first: each context's percentile, peak and memory against the largest
    host's targets (whichever is the largest share)."""
    if st.size is None:
        cap, hard, memcap = st.cap.max(), st.hard.max(), st.memcap.max()
        pct = (np.partition(st.C, st.k, axis=1)[:, st.k] if st.T else np.zeros(st.N))
        st.size = np.maximum(np.maximum(pct / cap, st.peak / hard), st.M / memcap)
    size = st.size
    return sorted(indices, key=lambda i: (-size[i], st.problem.contexts[i].name))


def _host_order(st: _State) -> list[int]:
    """Biggest hosts first; among equals, those running the most contexts now."""
    cap = st.cap / st.cap.max() + st.memcap / st.memcap.max()
    now = np.bincount(st.current[st.current >= 0], minlength=st.H)
    return sorted(range(st.H), key=lambda h: (-round(cap[h], 9), -now[h], st.problem.hosts[h].name))


def _first_fit(st: _State, items: list[int], hosts: list[int], pinned: dict[int, int]) -> list[int]:
    """Place `items` in order on the first host of `hosts` they fit (their current
    host first when it is one of them); returns those that fit nowhere."""
    allowed = set(hosts)
    left = []
    for i in items:
        if i in pinned:
            h = pinned[i]
            if h in allowed and st.fits(i, h):
                st.put(i, h)
            else:
                left.append(i)
            continue
        cur = int(st.current[i])
        order = ([cur] if cur in allowed else []) + [h for h in hosts if h != cur]
        for h in order:
            if st.fits(i, h):
                st.put(i, h)
                break
        else:
            left.append(i)
    return left


def _repair(st: _State, left: list[int], hosts: list[int], pinned: dict[int, int],
            deadline: float) -> bool:
    """Put `left` on the least violated of `hosts`, then move and swap contexts to drive
    the total violation to 0. True when it gets there before `deadline`."""
    hosts = list(hosts)
    for i in left:
        if i in pinned:
            if pinned[i] not in hosts:
                return False
            st.put(i, pinned[i])
            continue
        best = min(hosts, key=lambda h: (st.violation(h, *st.adding(i, h))
                                         - st.violation(h), h))
        st.put(i, best)
    viol = {h: st.violation(h) for h in hosts}
    rounds = 0
    while True:
        bad = [h for h in hosts if viol[h] > EPS]
        if not bad:
            return True
        if time.monotonic() > deadline or rounds > 200:
            return False
        rounds += 1
        best_gain, best_action = EPS, None
        for h in bad:
            members = [i for i in np.flatnonzero(st.assign == h) if int(i) not in pinned]
            for i in members:
                x_h = st.load[h] - st.C[i]
                m_h = st.mem[h] - st.M[i]
                v_h = st.violation(h, x_h, m_h)
                for g in hosts:
                    if g == h:
                        continue
                    gain = viol[h] + viol[g] - v_h - st.violation(g, *st.adding(i, g))
                    if gain > best_gain:
                        best_gain, best_action = gain, ("move", int(i), g)
                    if len(members) * st.N > 4000:
                        continue  # swaps only where they are cheap to try
                    for j in np.flatnonzero(st.assign == g):
                        j = int(j)
                        if j in pinned:
                            continue
                        gain = viol[h] + viol[g] - (
                            st.violation(h, x_h + st.C[j], m_h + st.M[j])
                            + st.violation(g, st.load[g] - st.C[j] + st.C[i],
                                           st.mem[g] - st.M[j] + st.M[i]))
                        if gain > best_gain:
                            best_gain, best_action = gain, ("swap", int(i), j)
        if best_action is None:
            return False
        kind, i, other = best_action
        if kind == "move":
            h = st.take(i)
            st.put(i, other)
            touched = (h, other)
        else:
            h, g = st.take(i), st.take(other)
            st.put(i, g)
            st.put(other, h)
            touched = (h, g)
        for t in touched:
            viol[t] = st.violation(t)


def _pack(st: _State, items: list[int], hosts: list[int], pinned: dict[int, int],
          deadline: float) -> bool:
    """Place all `items` on `hosts` (others already placed stay); on failure the
    state is left as it was."""
    saved = st.snapshot()
    left = _first_fit(st, items, hosts, pinned)
    if not left:
        return True
    # One repair may not take all the time left: other hosts are still to be tried.
    now = time.monotonic()
    if _repair(st, left, hosts, pinned, min(deadline, now + max(0.2, (deadline - now) / 8))):
        return True
    # Small instances: a few more tries in other orders (seeded, so plans repeat).
    rng = np.random.default_rng(len(items))
    tries = RESTARTS if len(items) * len(hosts) <= 200 else 0
    for _ in range(tries):
        if time.monotonic() > deadline:
            break
        st.restore(saved)
        order = list(rng.permutation(items))
        left = _first_fit(st, [int(i) for i in order], [int(h) for h in rng.permutation(hosts)], pinned)
        if not left or _repair(st, left, hosts, pinned, deadline):
            return True
    st.restore(saved)
    return False


def _even_out(st: _State, pinned: dict[int, int], max_moves: int | None, deadline: float) -> None:
    """Move contexts off the fullest host while the sum of squared utilisations (plus a
    small cost per move away from where a context runs) falls."""
    used = [h for h in range(st.H) if st.count[h] > 0]
    if len(used) < 2:
        return
    util = {h: st.util(h) for h in used}
    tried: set[tuple] = set()
    while time.monotonic() < deadline:
        improved = False
        for h in sorted(used, key=lambda h: -util[h]):
            members = [int(i) for i in np.flatnonzero(st.assign == h) if int(i) not in pinned]
            best = (-EPS, None)
            for i in members:
                x_h, m_h = st.load[h] - st.C[i], st.mem[h] - st.M[i]
                u_h = st.util(h, x_h, m_h)
                for g in used:
                    if g == h or util[g] >= util[h] or (i, g, round(util[h], 6)) in tried:
                        continue
                    x_g, m_g = st.adding(i, g)
                    if not st.ok(g, x_g, m_g):
                        continue
                    move_delta = MOVE_COST * (int(g != st.current[i]) - int(h != st.current[i]))
                    if max_moves is not None and move_delta > 0 and st.moves() >= max_moves:
                        continue
                    delta = (u_h**2 + st.util(g, x_g, m_g) ** 2 - util[h] ** 2 - util[g] ** 2
                             + move_delta)
                    if delta < best[0]:
                        best = (delta, (i, g))
            if best[1] is not None:
                i, g = best[1]
                tried.add((i, g, round(util[h], 6)))
                st.take(i)
                st.put(i, g)
                util[h], util[g] = st.util(h), st.util(g)
                improved = True
                break  # the fullest host may have changed
        if not improved:
            return


def optimise(problem: Problem, targets: Targets, keep: dict[str, str] | None = None,
             max_moves: int | None = None, time_budget: float = 2.0) -> Placement:
    """The placement with the fewest hosts, then the most even headroom."""
    st = _State(problem, targets)
    names = [d.name for d in problem.contexts]
    index = {n: i for i, n in enumerate(names)}
    host_index = {h.name: j for j, h in enumerate(problem.hosts)}
    pinned = {index[c]: host_index[h] for c, h in (keep or {}).items()}
    deadline = time.monotonic() + time_budget
    if _small(st):  # a few ms each: let a loaded machine not cut the restarts short
        deadline = time.monotonic() + max(time_budget, 20.0)

    # Contexts that fit alone on no host they may use are listed, never split.
    unplaceable = set(int(i) for i in np.flatnonzero(st.fixed))  # placed with their host
    for i in range(st.N):
        if st.fixed[i]:
            continue
        hosts = [pinned[i]] if i in pinned else range(st.H)
        if not any(st.fits_alone(i, h) for h in hosts):
            unplaceable.add(i)
    items = [i for i in range(st.N) if i not in unplaceable]

    if max_moves is None:
        best = _from_scratch(st, items, pinned, deadline)
        # Starting from today's placement can find as few hosts with fewer moves (on
        # large fleets the balanced fit already prefers where contexts run).
        if _small(st):
            current = _from_current(st, items, pinned, None, deadline)
            if current is not None and st.score(current) < st.score(best):
                best = current
        st.restore(best)
    else:
        result = _from_current(st, items, pinned, max_moves, deadline)
        if result is None:  # today's placement cannot be fixed within the moves
            result = np.full(st.N, -1)
        st.restore(result)
    _even_out(st, pinned, max_moves, max(deadline, time.monotonic()) + 0.5)
    for i in np.flatnonzero(st.fixed):  # with their host while it is in use
        if st.current[i] >= 0 and st.count[st.current[i]] > 0:
            st.assign[i] = st.current[i]
    assign = {names[i]: (problem.hosts[int(st.assign[i])].name if st.assign[i] >= 0 else None)
              for i in range(st.N)}
    unplaced = sorted(names[i] for i in range(st.N) if st.assign[i] < 0 and not st.fixed[i])
    return Placement(assign, unplaced)


def _from_scratch(st: _State, items: list[int], pinned: dict[int, int], deadline: float) -> np.ndarray:
    st.restore(np.full(st.N, -1))
    order = _size_order(st, items)
    hosts = _host_order(st)
    if not _pack(st, order, hosts, pinned, deadline):
        # The fleet is too small for all: what first fit leaves over stays unplaced.
        st.restore(np.full(st.N, -1))
        _first_fit(st, order, hosts, pinned)
        return st.snapshot()
    best = st.snapshot()
    _try_fewer(st, order, pinned, deadline)
    if st.score() <= st.score(best):
        best = st.snapshot()
    return best


def _small(st: _State) -> bool:
    """Few enough hosts to try every subset of them."""
    return math.comb(st.H, max(1, st.H // 2)) <= 64 and st.N <= 40


def _try_fewer(st: _State, order: list[int], pinned: dict[int, int], deadline: float) -> None:
    """Shrink the set of hosts in use: exhaustively over subsets on small fleets, else
    by a balanced fit onto fewer hosts, then emptying one host at a time."""
    must = set(pinned.values())
    used = sorted(set(int(h) for h in st.assign if h >= 0))
    # a lower bound from averages and memory (both must fit in the hosts' totals)
    mean_total = float(st.C.mean(axis=1)[order].sum()) if st.T else 0.0
    mem_total = float(st.M[order].sum())
    if _small(st):
        for k in range(1, len(used)):
            for subset in itertools.combinations(_host_order(st), k):
                if not must <= set(subset):
                    continue
                if (st.hard[list(subset)].sum() < mean_total
                        or st.memcap[list(subset)].sum() < mem_total):
                    continue
                saved = st.snapshot()
                st.restore(np.full(st.N, -1))
                if _pack(st, order, list(subset), pinned, deadline):
                    return
                st.restore(saved)
                if time.monotonic() > deadline:
                    return
        return
    _fewest_balanced(st, order, pinned, mean_total, mem_total, deadline)
    _empty_hosts(st, pinned, None, deadline)


def _balanced_fit(st: _State, order: list[int], hosts: list[int], pinned: dict[int, int],
                  exact: bool) -> list[int]:
    """Each context (in order) on the host of `hosts` where it leaves the most headroom:
    the smallest resulting peak (or, `exact`, percentile) against the host's target, so
    contexts that peak at other hours end up together. Returns those that fit nowhere."""
    hs = np.array(hosts)
    left = []
    for i in order:
        if i in pinned:
            if pinned[i] in hosts and st.fits(i, pinned[i]):
                st.put(i, pinned[i])
            else:
                left.append(i)
            continue
        empty = st.count[hs] == 0
        x = st.load[hs] + st.C[i] + empty[:, None] * st.base_load[hs]
        top = np.partition(x, st.k, axis=1)[:, st.k] if exact else x.max(axis=1)
        score = np.maximum(top / st.cap[hs],
                           (st.mem[hs] + st.M[i] + empty * st.base_mem[hs]) / st.memcap[hs])
        # where it runs now wins a near tie: fewer moves for almost the same headroom
        score = np.where(hs == st.current[i], score - 0.02, score)
        for h in hs[np.argsort(score, kind="stable")]:
            if st.fits(i, int(h)):
                st.put(i, int(h))
                break
        else:
            left.append(i)
    return left


def _fewest_balanced(st: _State, order: list[int], pinned: dict[int, int], mean_total: float,
                     mem_total: float, deadline: float) -> None:
    """Large fleets: the fewest of the biggest hosts that a balanced fit fills, found by
    bisection between a lower bound (averages and memory must fit the hosts' totals)
    and the hosts in use now; the last step tries one host fewer with exact
    percentiles and a repair."""
    must = sorted(set(pinned.values()))
    pref = must + [h for h in _host_order(st) if h not in must]
    hi = int(np.sum(st.count > 0))

    def hosts_for(k: int) -> list[int]:
        return pref[:max(k, len(must))]

    lo = 1
    while lo < hi and (st.hard[hosts_for(lo)].sum() < mean_total
                       or st.memcap[hosts_for(lo)].sum() < mem_total):
        lo += 1
    # Fewer hosts than the whole fleet's percentile over their targets rarely work:
    # start the bisection there (a guide, not a bound).
    total = st.C[order].sum(axis=0)
    if total.size:
        need = float(np.partition(total, st.k)[st.k])
        caps = np.cumsum(st.cap[pref])
        lo = max(lo, min(hi, int(np.searchsorted(caps, need)) + 1))
    best = st.snapshot()

    def attempt(k: int, exact: bool, repair: bool) -> bool:
        st.restore(np.full(st.N, -1))
        hosts = hosts_for(k)
        left = _balanced_fit(st, order, hosts, pinned, exact)
        if left and repair:
            now = time.monotonic()
            if _repair(st, left, hosts, pinned, min(deadline, now + (deadline - now) / 2)):
                left = []
        return not left

    # The bisection always runs to its end (a dozen fits at most), so the number of
    # hosts does not depend on how busy the machine is; the deadline bounds the rest.
    while lo < hi:
        mid = (lo + hi) // 2
        if attempt(mid, False, False):
            hi, best = mid, st.snapshot()
        else:
            lo = mid + 1
    if hi > 1 and time.monotonic() < deadline and attempt(hi - 1, True, True):
        best = st.snapshot()
    st.restore(best)


def _empty_hosts(st: _State, pinned: dict[int, int], max_moves: int | None, deadline: float) -> None:
    """Empty hosts one by one, those with the least to move first, onto the others."""
    failed: set[int] = set()
    while time.monotonic() < deadline:
        used = [h for h in range(st.H) if st.count[h] > 0]
        candidates = [h for h in used if h not in failed and h not in pinned.values()]
        if len(used) < 2 or not candidates:
            return
        h = min(candidates, key=lambda h: (st.util(h), st.count[h]))
        members = [int(i) for i in np.flatnonzero(st.assign == h)]
        if max_moves is not None:
            cost = sum(1 for i in members if st.current[i] == h) - sum(
                1 for i in members if st.current[i] != h)
            if st.moves() + cost > max_moves:
                failed.add(h)
                continue
        saved = st.snapshot()
        for i in members:
            st.take(i)
        others = sorted((g for g in used if g != h), key=lambda g: st.util(g))
        if _pack(st, _size_order(st, members), others, pinned, deadline) and (
                max_moves is None or st.moves() <= max_moves):
            failed.clear()
            continue
        st.restore(saved)
        failed.add(h)


def _from_current(st: _State, items: list[int], pinned: dict[int, int],
                  max_moves: int | None, deadline: float) -> np.ndarray | None:
    """Start where contexts run now; fix overloaded hosts, then empty hosts, spending
    at most `max_moves` moves."""
    st.restore(np.full(st.N, -1))
    for i in items:
        h = pinned.get(i, int(st.current[i]))
        if h >= 0:
            st.put(i, h)
    homeless = [i for i in items if st.assign[i] < 0]
    budget = math.inf if max_moves is None else max_moves
    # Overloaded hosts: move away what relieves them most until they are within target.
    while True:
        bad = [h for h in range(st.H) if st.count[h] and st.violation(h) > EPS]
        if not bad or st.moves() >= budget or time.monotonic() > deadline:
            break
        best = None
        for h in bad:
            v = st.violation(h)
            for i in np.flatnonzero(st.assign == h):
                i = int(i)
                if i in pinned:
                    continue
                gain = v - st.violation(h, st.load[h] - st.C[i], st.mem[h] - st.M[i])
                targets = [g for g in _host_order(st) if g != h and st.fits(i, g)]
                if targets and gain > EPS:
                    # prefer hosts already in use, then the fullest that fits
                    g = min(targets, key=lambda g: (st.count[g] == 0, -st.util(g)))
                    if best is None or gain > best[0]:
                        best = (gain, i, g)
        if best is None:
            break
        _, i, g = best
        st.take(i)
        st.put(i, g)
    for i in homeless:
        if st.moves() >= budget:
            break
        for g in _host_order(st):
            if st.fits(i, g):
                st.put(i, g)
                break
    # Whatever still breaks its host's targets cannot stay there: unplaced.
    for h in range(st.H):
        while st.count[h] and st.violation(h) > EPS:
            members = [int(i) for i in np.flatnonzero(st.assign == h) if int(i) not in pinned]
            if not members:
                members = [int(i) for i in np.flatnonzero(st.assign == h)]
            st.take(_size_order(st, members)[0])
    _empty_hosts(st, pinned, max_moves, deadline)
    return st.snapshot()


# --------------------------------------------------------------- host figures

@dataclass
class HostFigures:
    name: str
    cpus: float
    memory_bytes: float
    contexts: list[str]
    cpu_p50: float
    cpu_percentile: float
    cpu_peak: float
    cpu_peak_time: int | None  # epoch seconds of the grid point where the sum peaks
    memory_peak: float  # sum of the contexts' own peaks
    cpu_series: np.ndarray  # the summed series (for graphs)

    def headroom(self, targets: Targets) -> tuple[float, float]:
        """(cores, bytes) left under the targets."""
        return (self.cpus * targets.cpu_target - self.cpu_percentile,
                self.memory_bytes * targets.mem_target - self.memory_peak)


def host_figures(problem: Problem, targets: Targets, assign: dict[str, str | None]) -> list[HostFigures]:
    by_name = {d.name: d for d in problem.contexts}
    k = percentile_index(max(problem.points, 1), targets.percentile)
    out = []
    for h in problem.hosts:
        names = sorted(n for n, a in assign.items() if a == h.name)
        series = np.zeros(problem.points)
        mem = 0.0
        for n in names:
            series = series + by_name[n].cpu
            mem += by_name[n].memory_peak
        if series.size and names:
            ordered = np.sort(series)
            peak_at = int(np.argmax(series))
            out.append(HostFigures(h.name, h.cpus, h.memory_bytes, names,
                                   float(ordered[percentile_index(series.size, 50)]),
                                   float(ordered[k]), float(ordered[-1]),
                                   problem.start + (peak_at + 1) * problem.step,
                                   mem, series))
        else:
            out.append(HostFigures(h.name, h.cpus, h.memory_bytes, names, 0, 0, 0, None, mem, series))
    return out


def peak_sizing(problem: Problem, targets: Targets) -> Placement:
    """The baseline: first-fit decreasing on each context's own peak (CPU and memory),
    as sizing by peaks does: the sum of peaks under the same targets, biggest hosts
    first. When the hosts run out, more like the biggest are added (named `+1`, `+2`
    ...), so `hosts_used()` is what peak sizing would need; a context too big for the
    biggest host alone stays unplaced."""
    hosts = sorted(problem.hosts, key=lambda h: (-(h.cpus), -h.memory_bytes, h.name))
    if not hosts:
        return Placement({d.name: None for d in problem.contexts},
                         sorted(d.name for d in problem.contexts))
    biggest = hosts[0]
    cpu_cap = biggest.cpus * targets.cpu_target * (1 + EPS)
    mem_cap = biggest.memory_bytes * targets.mem_target * (1 + EPS)
    used_cpu = {h.name: 0.0 for h in hosts}
    used_mem = {h.name: 0.0 for h in hosts}
    caps = {h.name: (h.cpus * targets.cpu_target * (1 + EPS),
                     h.memory_bytes * targets.mem_target * (1 + EPS)) for h in hosts}
    names = [h.name for h in hosts]
    assign: dict[str, str | None] = {}
    fixed = [d for d in problem.contexts if d.fixed and d.host in used_cpu]
    for d in fixed:  # a host's own processes stay with it
        used_cpu[d.host] += float(d.cpu.max(initial=0))
        used_mem[d.host] += d.memory_peak
    for d in sorted((d for d in problem.contexts if not d.fixed),
                    key=lambda d: (-float(d.cpu.max(initial=0)), -d.memory_peak, d.name)):
        peak = float(d.cpu.max(initial=0))
        if peak > cpu_cap or d.memory_peak > mem_cap:
            assign[d.name] = None
            continue
        for h in names:
            if (used_cpu[h] + peak <= caps[h][0] and used_mem[h] + d.memory_peak <= caps[h][1]):
                break
        else:
            h = f"+{len(names) - len(hosts) + 1}"
            names.append(h)
            caps[h] = (cpu_cap, mem_cap)
            used_cpu[h] = used_mem[h] = 0.0
        used_cpu[h] += peak
        used_mem[h] += d.memory_peak
        assign[d.name] = h
    guests = set(assign.values())
    for d in fixed:
        assign[d.name] = d.host if d.host in guests else None
    unplaced = sorted(n for n, h in assign.items() if h is None and n not in {d.name for d in fixed})
    return Placement(assign, unplaced)
