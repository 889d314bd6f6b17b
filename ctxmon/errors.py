"""The errors an admin sees: one line each, exit status 2, never a traceback.

A module of its own (and nothing else) so that `ctxmon` can catch them without
importing the config loader for commands that never read a config.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem the admin can fix; printed as one line, exit status 2."""


class ConfigError(UserError):
    """A configuration problem; `str()` is one line: `FILE:LINE: KEY: message`."""

    def __init__(self, message: str, path: str | None = None, line: int | None = None,
                 key: str | None = None):
        # One line whatever the parts contain: the CLI prints it as a log line.
        self.message = _one_line(message)
        self.path = path
        self.line = line
        self.key = key
        super().__init__(self._text())

    def _text(self) -> str:
        where = ""
        if self.path is not None:
            where = _one_line(self.path) + (f":{self.line}" if self.line else "") + ": "
        key = f"{_one_line(self.key)}: " if self.key else ""
        return where + key + self.message


def _one_line(text: str) -> str:
    return " ".join(str(text).splitlines())
