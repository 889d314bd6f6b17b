"""Sources → one immutable snapshot per poll.

`build_source` is the one place sources are registered.
"""

from __future__ import annotations

from .source import Source, detect_source

SOURCES = ("vserver", "cgroup")


def build_source(
    kind: str = "auto",
    proc_root: str = "/proc",
    vservers_dir: str | None = None,
    cgroup_root: str | None = None,
    cgroup_hierarchy: str = "auto",
    rules: list[dict] | None = None,
    kernel_hz: int | None = None,
) -> Source:
    """Build the source named `kind` (`auto`: VServer when `<proc>/virtual` exists).

    Paths left as None are taken under the tree's root, the parent of `proc_root`.
    """
    if kind == "auto":
        kind = detect_source(proc_root)
    if kind == "vserver":
        from .vserver import VServerSource

        return VServerSource(proc_root, vservers_dir=vservers_dir or None, kernel_hz=kernel_hz)
    if kind == "cgroup":
        from .cgroup import CgroupSource

        return CgroupSource(
            proc_root, cgroup_root=cgroup_root, hierarchy=cgroup_hierarchy, rules=rules
        )
    raise ValueError(f"unknown source {kind!r} (expected auto, {', '.join(SOURCES)})")
