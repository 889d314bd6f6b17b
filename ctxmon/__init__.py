"""ctxmon: per-context monitor for consolidated Linux hosts.

Samples every context (a Linux-VServer guest, or a container or service cgroup) into
one immutable snapshot per poll, for the RRD files, the Prometheus endpoint, alerts
and graphs.
"""

__version__ = "0.1.0"
