"""Sinks that take each `collector.snapshot.Snapshot`: RRD files, Prometheus, alerts."""
