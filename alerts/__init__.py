"""Alerts: rules evaluated on every snapshot, notifications, and the same rules for
Prometheus.

- `alerts.model`: the rule model (`AlertRule`, `Level`, ...) that `ctxmon.config`
  builds from the file; `ALERT_METRICS` derived from the metric catalog;
- `alerts.engine`: the state machine (`AlertEngine`), on `alerts.rate` (PromQL's
  rate()) and `alerts.formats` (values and summaries as Prometheus prints them);
- `alerts.notify`: the command and Alertmanager notifiers;
- `alerts.promrules`: the rules as a Prometheus alerting rules file;
- `alerts.collector`: the alert series for the exporter's registry;
- `alerts.handoff`: the schema of the hand-off file the graph renderer reads.

Nothing here imports `ctxmon.*`; importing this package imports nothing else.
"""
