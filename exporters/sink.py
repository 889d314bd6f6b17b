"""What the daemon's poll hands each snapshot to, and how sinks report their faults.

`Sink` is the small protocol every sink meets (the RRD writer, the alert evaluation,
a test's probe): the daemon walks a list of them each poll and knows nothing else of
them. `Complaints` is the one way a sink logs a fault: once when it starts, once when
it clears, counted every time (collectd's `utils_complain`), so a fault that lasts a
week is two log lines, not ten thousand.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from typing import Callable, Hashable, Protocol, runtime_checkable

from collector.snapshot import Snapshot


@runtime_checkable
class Sink(Protocol):
    """A consumer of snapshots. `write` must not raise for faults of its own medium
    (it counts them in `error_count` and logs them once); anything it does raise is
    caught, counted and logged by the daemon, and the other sinks still run."""

    name: str
    error_count: int  # data points lost to faults since the sink was made

    def write(self, snapshot: Snapshot) -> None: ...

    def flush(self) -> None: ...  # make what was written durable (SIGTERM, reload)

    def close(self) -> None: ...


class Complaints:
    """Log-once-per-state for a set of keys (files, addresses, notifiers ...).

    `complain(key, state, detail)` logs when `key` enters `state` (not again while it
    stays there; again if the state changes); `release(key)` logs that it cleared,
    if it was in one. With `gather=True` nothing is logged at once: `report()` then
    logs one line per state entered and one per state cleared since the last report
    (the RRD sink's "mem.rrd and 2,999 other files: disk full" in one line).
    With `every=S` (collectd's c_complain rather than c_complain_once), a key that
    stays in its state is logged again once S seconds of `clock` passed since its
    last line, and the occurrences not logged in between are counted for that line
    (failed logins: one line per client a minute, however many guesses).
    """

    def __init__(self, logger: logging.Logger, prefix: str = "", gather: bool = False,
                 noun: str = "file(s)", every: float | None = None,
                 clock: Callable[[], float] = time.monotonic):
        if every is not None and gather:
            raise ValueError("Complaints: every= repeats single lines; gather= has none")
        self._log = logger
        self._noun = noun
        self._prefix = prefix
        self._gather = gather
        self._every = every
        self._clock = clock
        self._last: dict[Hashable, float] = {}  # with every: when the key's line was logged
        self._quiet: dict[Hashable, int] = {}  # with every: occurrences not logged since
        self._state: dict[Hashable, str] = {}
        self._entered: dict[str, list[tuple[Hashable, str]]] = defaultdict(list)
        self._cleared: dict[str, list[Hashable]] = defaultdict(list)

    def state(self, key: Hashable) -> str | None:
        return self._state.get(key)

    def __len__(self) -> int:
        return len(self._state)

    def complain(self, key: Hashable, state: str, detail: str = "",
                 level: int = logging.WARNING,
                 text: str | Callable[[int], str] | None = None) -> bool:
        """Record that `key` is in fault `state`; True (and logged) if that is news
        (or, with `every`, due again). The line is "<prefix><key>: <detail>", or
        `text` as it is; a callable `text` is given the occurrences not logged since
        the key's last line."""
        if self._state.get(key) == state:
            if self._every is None:
                return False
            if self._clock() - self._last[key] < self._every:
                self.note(key)
                return False
        self._state[key] = state
        quiet = 0
        if self._every is not None:
            self._last[key] = self._clock()
            quiet = self._quiet.pop(key, 0)
        if callable(text):
            text = text(quiet)
        if self._gather:
            self._entered[state].append((key, detail))
        elif text is not None:
            self._log.log(level, "%s", text)
        else:
            self._log.log(level, "%s%s: %s", self._prefix, key, detail or state)
        return True

    def release(self, key: Hashable, message: str = "recovered", level: int = logging.INFO,
                text: str | None = None) -> bool:
        """`key` works again; True (and logged) if it was in a fault state. The line is
        "<prefix><key>: <message>", or `text` as it is."""
        state = self._state.pop(key, None)
        self._last.pop(key, None)
        self._quiet.pop(key, None)
        if state is None:
            return False
        if self._gather:
            self._cleared[state].append(key)
        elif text is not None:
            self._log.log(level, "%s", text)
        else:
            self._log.log(level, "%s%s: %s", self._prefix, key, message)
        return True

    def note(self, key: Hashable) -> None:
        """Count an occurrence for `key`'s next line without logging (with `every`)."""
        if key in self._state:
            self._quiet[key] = self._quiet.get(key, 0) + 1

    def last_logged(self, key: Hashable) -> float | None:
        """When `key`'s last line was logged (with `every`), by `clock`."""
        return self._last.get(key)

    def forget(self, key: Hashable) -> None:
        """Drop `key` silently (it no longer exists)."""
        self._state.pop(key, None)
        self._last.pop(key, None)
        self._quiet.pop(key, None)

    def report(self, details: dict[str, str] | None = None, shown: int = 5) -> None:
        """Log what was gathered: one line per state entered, one per state cleared.
        `details` may replace the detail shown for a state."""
        for state, entries in self._entered.items():
            keys = [str(k) for k, _ in entries]
            detail = (details or {}).get(state) or entries[0][1]
            self._log.warning("%s%s for %d %s: %s%s (%s)", self._prefix, state, len(keys), self._noun,
                              ", ".join(keys[:shown]), " ..." if len(keys) > shown else "", detail)
        for state, cleared in self._cleared.items():
            keys = [str(k) for k in cleared]
            self._log.info("%s%s: cleared for %d %s: %s%s", self._prefix, state, len(keys), self._noun,
                           ", ".join(keys[:shown]), " ..." if len(keys) > shown else "")
        self._entered.clear()
        self._cleared.clear()
