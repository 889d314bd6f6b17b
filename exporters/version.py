"""ctxmon's version as the sinks show it (HTTP Server header, ctxmon_build_info),
from the installed distribution: sinks never import the entry points (ctxmon.*)."""

from __future__ import annotations

from importlib import metadata


def version() -> str:
    try:
        return metadata.version("ctxmon")
    except metadata.PackageNotFoundError:  # run from a checkout that is not installed
        return "unknown"
