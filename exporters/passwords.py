"""The one check of a bcrypt hash, for the config loader and the HTTP server alike."""

from __future__ import annotations

import re

# As htpasswd -B and Prometheus' web config write them. ($2x$, an old buggy variant,
# is not accepted by the bcrypt library.)
BCRYPT_HASH = re.compile(r"\$2[aby]?\$(\d\d)\$[./A-Za-z0-9]{53}")
BCRYPT_COSTS = (4, 17)  # cost 18 already takes seconds of CPU per login


def bcrypt_cost(hashed: object) -> int:
    """The cost of a bcrypt hash; ValueError (one line) for anything else."""
    m = BCRYPT_HASH.fullmatch(hashed) if isinstance(hashed, str) else None
    if m is None:
        raise ValueError("must be a bcrypt hash ($2b$..., see `htpasswd -nBC 10`)")
    cost = int(m.group(1))
    if not BCRYPT_COSTS[0] <= cost <= BCRYPT_COSTS[1]:
        raise ValueError(f"bcrypt cost must be {BCRYPT_COSTS[0]}..{BCRYPT_COSTS[1]} "
                         f"(each login costs 2^cost rounds), got {cost}")
    return cost
