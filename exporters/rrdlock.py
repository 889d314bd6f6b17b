"""librrd's file locks, waited out for a moment.

librrd (1.7) takes an fcntl lock on every RRD file it opens and does not wait for it:
shared for readers (`info`, `fetch`, `last`, `graph`, `dump`), exclusive for `update`.
A call that finds the file locked by another process fails at once with "could not
lock RRD". So the daemon writing a file and a reader of it (`ctxmon graph`, `ctxmon
plan`, a backup's `rrdtool dump`) fail each other for the instant they overlap; each
holds a lock for microseconds to milliseconds. A few short waits get past it; a lock
held longer (a stuck or hostile process) costs a bounded wait, then the call fails as
it did before.
"""

from __future__ import annotations

import time
from typing import Callable, TypeVar

import rrdtool

LOCKED = "could not lock RRD"  # librrd's message
WAITS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05)  # seconds between tries: 88 ms at most
POLL_BUDGET = 0.25  # seconds of such waits in one poll of the RRD sink, over all its files

T = TypeVar("T")


def is_locked(error: BaseException) -> bool:
    return isinstance(error, rrdtool.OperationalError) and LOCKED in str(error)


class LockWaits:
    """Seconds left to wait for locks, shared by the calls of one poll or run."""

    def __init__(self, budget: float):
        self.left = budget

    def after(self, error: rrdtool.OperationalError, call: Callable[..., T], *args) -> T:
        """`call(*args)` just failed with `error`. On a lock, call again after each
        wait while the waits and the budget last, and return its result; raise the
        last error (at once, `error` itself, when it was no lock)."""
        for pause in WAITS:
            if not is_locked(error) or pause > self.left:
                break
            self.left -= pause
            time.sleep(pause)
            try:
                return call(*args)
            except rrdtool.OperationalError as e:
                error = e
        raise error

    def call(self, call: Callable[..., T], *args) -> T:
        """`call(*args)`, waited for while another process holds the file's lock.
        Raises rrdtool.OperationalError as the call does."""
        try:
            return call(*args)
        except rrdtool.OperationalError as e:
            return self.after(e, call, *args)


def call(fn: Callable[..., T], *args) -> T:
    """One reader's `fn(*args)` (an rrdtool binding), with its own waits for a lock."""
    return LockWaits(sum(WAITS)).call(fn, *args)
