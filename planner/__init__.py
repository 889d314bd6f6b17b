"""Capacity planning from stored history: which context should run on which host.

Data flows one way: a history reader (`planner.history` for RRD directories,
`planner.prom` for a Prometheus server) builds a `Problem` of per-context demand
series on one time grid and the hosts' capacities; `planner.place` finds an
assignment; `planner.report` prints it (text, JSON, PNG pages). `planner.cli` wires
them for `ctxmon plan`. Nothing here imports `ctxmon.*`.
"""


class PlanError(ValueError):
    """Bad input the admin can fix: printed as one line, exit status 2."""
