"""What a config builds on the collection side: the context source, traffic
accounting, the sampler; and check-config's estimate of the RRD files' size.

Kept apart from ctxmon.daemon so that `ctxmon check-config` (which samples this host
once for the estimate) imports neither the daemon nor APScheduler.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Callable

from collector import build_source
from collector.sampler import Sampler

if TYPE_CHECKING:
    from .config import Config


def build_context_source(cfg: Config):
    c = cfg.collector
    return build_source(
        c.source,
        proc_root=c.proc_root,
        vservers_dir=c.vservers_dir or None,
        cgroup_root=c.cgroup_root,
        cgroup_hierarchy=c.cgroup_hierarchy,
        rules=[dict(r) for r in c.rules],
        kernel_hz=c.kernel_hz,
    )


def build_traffic(cfg: Config):
    """[traffic] accounting: None when off (the firewall is never touched)."""
    if cfg.traffic.accounting != "nftables":
        return None
    from collector.traffic import TrafficAccounting

    return TrafficAccounting(cfg.collector.cgroup_root)


def build_sampler(cfg: Config, clock: Callable[[], float] = time.time) -> Sampler:
    return Sampler(build_context_source(cfg), cfg.collector.proc_root,
                   traffic=build_traffic(cfg), clock=clock)


def storage_estimate(cfg: Config) -> str:
    """check-config's line on disk use: bytes per context and per interface at the
    configured step, times what the source sees on this host now."""
    from exporters.rrd import CONTEXT_KINDS, expected_bytes

    step = int(cfg.rrd.step)
    per_context = sum(expected_bytes(k, step) for k in CONTEXT_KINDS)
    per_if = expected_bytes("host-if", step)
    line = (f"RRD files at a {step} s step: up to {per_context / 1024:.0f} KiB per context, "
            f"{per_if / 1024:.0f} KiB per interface")
    try:
        from collector.procfs import ProcessScanner

        source = build_context_source(cfg)
        sampler = Sampler(source, cfg.collector.proc_root,
                          scanner=ProcessScanner(cfg.collector.proc_root, max_open=0))
        try:
            snap = sampler.sample()
        finally:
            sampler.close()
    except Exception as e:  # a source this host lacks: the rates alone
        return f"{line} (no estimate for this host: {e})"
    ifaces = sum(len(c.interfaces) for c in snap.contexts) + len(snap.host_interfaces)
    total = len(snap.contexts) * per_context + ifaces * per_if
    budget = (f"max_bytes {cfg.rrd.max_bytes / 2**20:.0f} MiB" if cfg.rrd.max_bytes
              else "no max_bytes")
    return (f"{line}; this host now: {len(snap.contexts)} contexts, {ifaces} interfaces "
            f"-> about {total / 2**20:.1f} MiB, plus archives for {cfg.rrd.archive_keep / 86400:g} "
            f"days ({budget})")
