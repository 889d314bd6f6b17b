"""The `[[alerts.rule]]` definitions as a Prometheus alerting rules file (`ctxmon rules`).

The PromQL reads the exporter's series (exporters.prometheus) and means what the local
evaluation (alerts.engine) computes from the snapshot, so a site that alerts from
Prometheus gets the same alerts:

- rates are `rate()` over `[alerts] rate_window`, summed over a context's series
  (CPU modes, interfaces, limits); cpu_host divides by `ctxmon_host_cpus`;
- a "N%" level divides by the lowest hard `ctxmon_context_limit` of the metric's
  resources; contexts without one get no alert;
- warning and critical are two rules of one alert name, told apart by `severity`;
- hysteresis: a firing alert stays firing while above its clear level, by joining
  the `ALERTS` series Prometheus keeps for it;
- overrides are rules of their own for the contexts their glob matches, which the
  rules before them exclude (globs become anchored regular expressions);
- absent: `ctxmon_contexts` of an instance without that context's `ctxmon_context_info`;
- the rules of one alert name differ in their labels, as promtool wants: an override's
  alerts carry `override: <glob>`, an absent rule's its `context`.

Known differences: a context that vanishes resolves its local alerts at once, while
Prometheus still has rate() samples of it for up to the window; and contexts the
exporter folds into context="other" (its max_contexts cap) have no series of their
own, so Prometheus cannot alert on them (and an absent rule sees them as missing).

The YAML is written here, not by a library: every string that is not a fixed word
goes out double-quoted with escapes valid both in YAML and in PromQL/Go.
"""

from __future__ import annotations

import os
import string
from typing import Iterator

from collector import catalog

from .engine import CompiledRule, Settings
from .formats import VALUE_FORMATS, format_value, value_unit
from .model import ALERT_METRICS, AlertRule, AlertsConfig

GROUP = "ctxmon"

# From the catalog: metric -> its gauge series; metric -> (counter series, the label
# summed away, factor).
_GAUGE_SERIES = {m.name: m.family for m in catalog.ALERT_METRICS if m.gauge is not None}
_COUNTER_SERIES = {
    m.name: (catalog.FAMILY[m.family].exposed, m.summed_label,
             "" if m.counter.factor == 1 else f" * {m.counter.factor:g}")
    for m in catalog.ALERT_METRICS if m.counter is not None}
_HOST_SHARE = frozenset(m.name for m in catalog.ALERT_METRICS if m.host_share)


def quote(s: str) -> str:
    """A double-quoted string that YAML, PromQL and Go templates all read back as `s`.

    Only printable ASCII goes out as is; everything else is a \\u or \\U escape, which
    the three share (JSON's surrogate pairs they do not). Lone surrogates (names that
    were not UTF-8) become U+FFFD, as in the exporter's label values."""
    out = ['"']
    for ch in s:
        o = ord(ch)
        if ch == '"' or ch == "\\":
            out.append("\\" + ch)
        elif 0x20 <= o < 0x7F:
            out.append(ch)
        elif 0xD800 <= o <= 0xDFFF:
            out.append("\\ufffd")
        elif o <= 0xFFFF:
            out.append(f"\\u{o:04x}")
        else:
            out.append(f"\\U{o:08x}")
    out.append('"')
    return "".join(out)


def glob_regex(glob: str) -> str:
    """An fnmatch glob as an RE2 regular expression PromQL anchors: `*` any text, `?`
    one character, `[...]`/`[!...]` a set; everything else literal."""
    out, i, n = [], 0, len(glob)
    while i < n:
        ch = glob[i]
        i += 1
        if ch == "*":
            out.append(".*")
        elif ch == "?":
            out.append(".")
        elif ch == "[":
            j = i
            if j < n and glob[j] == "!":
                j += 1
            if j < n and glob[j] == "]":
                j += 1
            while j < n and glob[j] != "]":
                j += 1
            if j >= n:  # no closing bracket: a literal "[", as fnmatch has it
                out.append("\\[")
                continue
            body = glob[i:j]
            i = j + 1
            negate = body.startswith("!")
            if negate:
                body = body[1:]
            items = []
            k = 0
            while k < len(body):  # keep ranges a-z, escape everything else
                if k + 2 < len(body) and body[k + 1] == "-":
                    items.append(_class_char(body[k]) + "-" + _class_char(body[k + 2]))
                    k += 3
                else:
                    items.append(_class_char(body[k]))
                    k += 1
            out.append("[" + ("^" if negate else "") + "".join(items) + "]")
        else:
            out.append(_literal(ch))
    return "(?s:" + "".join(out) + ")"


def _literal(ch: str) -> str:
    # RE2 takes any escaped ASCII punctuation as itself; letters and digits must not be.
    return "\\" + ch if ch.isascii() and not ch.isalnum() and ch != "_" else ch


def _class_char(ch: str) -> str:
    return "\\" + ch if ch in "\\]^-[" else ch


def globs_regex(globs) -> str:
    return "|".join(glob_regex(g) for g in globs)


def number(v: float) -> str:
    """A threshold in PromQL: exact (repr), integers without ".0"."""
    if v == int(v) and abs(v) < 1e15:
        return str(int(v))
    return repr(v)


def prom_duration(seconds: float) -> str:
    """5m, 1h30m, 2s, 500ms: Prometheus' duration syntax."""
    ms = round(seconds * 1000)
    if ms == 0:
        return "0s"
    out = []
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000),
                       ("ms", 1)):
        if ms >= size:
            out.append(f"{ms // size}{unit}")
            ms %= size
    return "".join(out)


# ------------------------------------------------------------------------ PromQL


def _selector(name: str, matchers: list[str]) -> str:
    return f"{name}{{{', '.join(matchers)}}}" if matchers else name


def value_expr(metric: str, of_limit: bool, matchers: list[str], window: float) -> str:
    """PromQL for a context's value of `metric`, as alerts.engine computes it."""
    # The catalog's own label matchers pick the metric's part of its family
    # (resource="cpu" of a family with several resources).
    own = matchers + [f"{k}={quote(v)}" for k, v in catalog.ALERT_METRIC[metric].matchers]
    if metric in _GAUGE_SERIES:
        expr = _selector(_GAUGE_SERIES[metric], own)
    else:
        series, summed, factor = _COUNTER_SERIES[metric]
        expr = (f"sum without({summed}) (rate({_selector(series, own)}"
                f"[{prom_duration(window)}])){factor}")
        if metric in _HOST_SHARE:
            expr = f"({expr} / ignoring(context) group_left() ctxmon_host_cpus)"
    if of_limit:
        resources = ALERT_METRICS[metric][1]
        limit = _selector("ctxmon_context_limit", matchers + [
            f"resource=~{quote('|'.join(resources))}", 'type="hard"'])
        expr = f"({expr} / min without(resource, type) ({limit}))"
    return expr


def alert_expr(name: str, severity: str, value: str, threshold: float, clear: float) -> str:
    """Above the threshold, or, while firing, above the clear level."""
    first = f"{value} > {number(threshold)}"
    if clear >= threshold:
        return first
    firing = (f'ALERTS{{alertname={quote(name)}, alertstate="firing", '
              f"severity={quote(severity)}}}")
    return (f"{first}\nor\n({value} > {number(clear)}\n"
            f"  and ignoring(alertname, alertstate, severity) {firing})")


def absent_expr(context: str) -> str:
    """1 for each instance whose latest snapshot lacks the context (the rule's static
    `context` label names it)."""
    info = _selector("ctxmon_context_info", [f"context={quote(context)}"])
    return f"(ctxmon_contexts * 0 + 1)\n  unless ignoring(context, id, source) {info}"


def go_literal(s: str) -> str:
    """Text for a templated field (labels and annotations are Go templates)."""
    return "{{ " + quote(s) + " }}" if "{{" in s or s.endswith("{") else s


def go_template(template: str, unit: str, literals: dict[str, str]) -> str:
    """A summary template ({context}, {value} ...) as a Prometheus annotation.

    `literals`: the placeholders that are constants of the generated rule, as text:
    threshold, alert and severity (the rule's own labels, which `$labels` lacks), and
    context for an absent rule. The others come from the alert."""
    _fmt, func, suffix = VALUE_FORMATS[unit]
    fields = {
        "context": "{{ $labels.context }}",
        "value": "{{ $value | " + func + " }}" + suffix,
    }
    out: list[str] = []
    text: list[str] = []  # literal text since the last action

    def flush() -> None:
        s = "".join(text)
        text.clear()
        # "{{", or a "{" right before an action's "{{", would open an action: such
        # text goes out as a Go string instead.
        out.append(go_literal(s))

    # (Formatter splits "{{" into two pieces; they are joined again here.)
    for literal, field, _spec, _conv in string.Formatter().parse(template):
        text.append(literal)
        if field in literals:
            text.append(literals[field])
        elif field is not None:
            flush()
            out.append(fields[field])
    flush()
    return "".join(out)


# ------------------------------------------------------------------------ rules


def _scopes(rule: AlertRule) -> Iterator[tuple[str | None, list[str]]]:
    """(override glob or None, context matchers): each override, then the rest."""
    include = [] if tuple(rule.contexts) == ("*",) else \
        [f"context=~{quote(globs_regex(rule.contexts))}"]
    taken = list(rule.exclude)
    for o in rule.overrides:
        matchers = include + [f"context=~{quote(glob_regex(o.glob))}"]
        if taken:
            matchers.append(f"context!~{quote(globs_regex(taken))}")
        yield o.glob, matchers
        taken.append(o.glob)
    yield None, include + ([f"context!~{quote(globs_regex(taken))}"] if taken else [])


def _rule_entries(index: int, compiled: CompiledRule, window: float) -> Iterator[str]:
    """The rules of one [[alerts.rule]]: per override and severity, or per absent name.

    Rules of one alert name need distinct labels (promtool's duplicate check): an
    override's carry `override: <glob>`, an absent rule's its static `context`."""
    rule = compiled.rule
    if rule.metric == "absent":
        for context in rule.contexts:
            s = compiled.settings(context)
            yield from _entry(index, rule, s, {"context": context}, rule.severity,
                              absent_expr(context), 0.0, 0.0)
        return
    settings = dict(compiled.by_override)
    for glob, matchers in _scopes(rule):
        s = settings[glob] if glob is not None else compiled.base
        value = value_expr(rule.metric, s.of_limit, matchers, window)
        for severity, threshold, clear in s.levels:
            expr = alert_expr(rule.name, severity, value, threshold.value, clear.value)
            yield from _entry(index, rule, s, {} if glob is None else {"override": glob},
                              severity, expr, threshold.value, clear.value)


def _entry(index: int, rule: AlertRule, s: Settings, labels: dict[str, str], severity: str,
           expr: str, threshold: float, clear: float) -> Iterator[str]:
    unit = value_unit(rule.metric, s.of_limit)
    note = f"# [[alerts.rule]] #{index + 1} {rule.metric}"
    if clear < threshold:
        note += f", clears at {format_value(clear, unit)}"
    yield f"      {note}"
    yield f"      - alert: {rule.name}"
    yield "        expr: |-"
    for line in expr.splitlines():
        yield f"          {line}"
    yield f"        for: {prom_duration(s.for_)}"
    yield "        labels:"
    yield f"          severity: {severity}"
    for name, value in labels.items():
        yield f"          {name}: {quote(go_literal(value))}"
    yield "        annotations:"
    literals = {"alert": rule.name, "severity": severity,
                "threshold": format_value(threshold, unit), **labels}
    literals.pop("override", None)
    yield f"          summary: {quote(go_template(s.summary, unit, literals))}"


def generate_rules(cfg: AlertsConfig, source: str | None = None, group: str = GROUP) -> str:
    """The rules file for `cfg` as text."""
    head = ["# Prometheus alerting rules generated by `ctxmon rules`"
            + (f" from {os.path.basename(source)}" if source else "") + ".",
            "# Do not edit: change the [[alerts.rule]] entries and generate it again.",
            f"# Rates are over {prom_duration(cfg.rate_window)} ([alerts] rate_window); "
            "scrape ctxmon at least twice in that time."]
    if not cfg.rules:
        return "\n".join(head + ["groups: []", ""])
    lines = head + ["groups:", f"  - name: {quote(group)}", "    rules:"]
    for i, rule in enumerate(cfg.rules):
        lines.extend(_rule_entries(i, CompiledRule(rule), cfg.rate_window))
    return "\n".join(lines) + "\n"
