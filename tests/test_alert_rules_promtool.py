"""The generated Prometheus rules against promtool, and the local engine against the
same unit tests.

tests/promtool/*.test.json are promtool unit tests (JSON is YAML): synthetic series,
and the alerts expected to fire at given times, with their summaries. promtool runs
them on the generated rules; then the same series, turned into snapshots, go through
the local AlertEngine, which must fire exactly the same alerts with the same text.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from collector import catalog
from collector.snapshot import ContextSample, InterfaceSample, LimitRow, Snapshot
from ctxmon.config import load_config, parse_duration
from alerts.engine import AlertEngine
from alerts.promrules import generate_rules

pytestmark = [pytest.mark.live]

CHECKOUT = Path(__file__).resolve().parent.parent
PROMTOOL_DIR = CHECKOUT / "tests" / "promtool"
SHIPPED_CONFIG = CHECKOUT / "conf" / "ctxmon.toml"
SHIPPED_RULES = CHECKOUT / "conf" / "alerts.rules.yml"
ALL_METRICS = PROMTOOL_DIR / "all_metrics.toml"

needs_promtool = pytest.mark.skipif(shutil.which("promtool") is None,
                                    reason="promtool not installed (Debian package prometheus)")


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["promtool", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=60)


@pytest.fixture
def all_metrics_dir(tmp_path) -> Path:
    """all_metrics.rules.yml generated next to a copy of its promtool tests."""
    cfg = load_config(ALL_METRICS, check_rrd_files=False)
    (tmp_path / "all_metrics.rules.yml").write_text(
        generate_rules(cfg.alerts, source=str(ALL_METRICS)))
    shutil.copy(PROMTOOL_DIR / "all_metrics.test.json", tmp_path)
    return tmp_path


# ------------------------------------------------------------------ the shipped file


def test_shipped_rules_are_generated_from_the_shipped_config():
    cfg = load_config(SHIPPED_CONFIG, check_rrd_files=False)
    assert cfg.alerts.rules, "conf/ctxmon.toml ships no alert rules"
    assert SHIPPED_RULES.read_text() == generate_rules(cfg.alerts, source=str(SHIPPED_CONFIG)), \
        "conf/alerts.rules.yml is stale: run ctxmon rules -c conf/ctxmon.toml -o conf/alerts.rules.yml"


def test_rules_command_prints_the_file(tmp_path):
    r = subprocess.run([sys.executable, "-m", "ctxmon.cli", "rules", "-c", str(SHIPPED_CONFIG)],
                       capture_output=True, text=True, timeout=30, cwd=CHECKOUT)
    if r.returncode == 2 and "invalid choice" in r.stderr:
        pytest.skip("ctxmon.cli has no rules subcommand yet")
    assert r.returncode == 0, r.stderr
    assert r.stdout == SHIPPED_RULES.read_text()


def test_rules_command_bad_config_is_one_line(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[[alerts.rule]]\nname = "X"\nmetric = "rss"\nwarning = "lots"\n')
    r = subprocess.run([sys.executable, "-m", "ctxmon.cli", "rules", "-c", str(bad)],
                       capture_output=True, text=True, timeout=30, cwd=CHECKOUT)
    if r.returncode == 2 and "invalid choice" in r.stderr:
        pytest.skip("ctxmon.cli has no rules subcommand yet")
    assert r.returncode == 2 and r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{bad}:4: [[alerts.rule]] #1 (X) warning:" in lines[0], r.stderr


@needs_promtool
def test_promtool_checks_the_shipped_rules():
    r = promtool("check", "rules", str(SHIPPED_RULES))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout


@needs_promtool
def test_promtool_unit_tests_of_the_shipped_rules():
    r = promtool("test", "rules", "default_rules.test.json", cwd=PROMTOOL_DIR)
    assert r.returncode == 0, r.stdout + r.stderr


@needs_promtool
def test_promtool_checks_and_tests_rules_of_every_metric(all_metrics_dir):
    r = promtool("check", "rules", "all_metrics.rules.yml", cwd=all_metrics_dir)
    assert r.returncode == 0, r.stdout + r.stderr
    r = promtool("test", "rules", "all_metrics.test.json", cwd=all_metrics_dir)
    assert r.returncode == 0, r.stdout + r.stderr


@needs_promtool
def test_promtool_unit_tests_can_fail(all_metrics_dir):
    """The unit tests check what they claim: a rule with another level fails them."""
    rules = all_metrics_dir / "all_metrics.rules.yml"
    text = rules.read_text()
    assert "> 1073741824" in text
    rules.write_text(text.replace("> 1073741824", "> 3221225472"))  # Rss: 1GiB -> 3GiB
    r = promtool("test", "rules", "all_metrics.test.json", cwd=all_metrics_dir)
    out = r.stdout + r.stderr
    assert r.returncode != 0 and "alertname: Rss" in out, out


@needs_promtool
def test_promtool_checks_rules_with_hostile_names(tmp_path):
    """Quotes, backslashes, braces, dollars, non-ASCII and regex metacharacters in
    context names and globs make valid rules."""
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        "[[alerts.rule]]\n"
        'name = "Odd"\nmetric = "rss"\nwarning = "1G"\n'
        "contexts = ['we\"b\\\\*', 'ü{{x}}$1?', 'a[!]b].(c)|d^', 'e[a-c\\\\]*']\n"
        "exclude = ['*{{']\n"
        "summary = '{context} {{{{ $value }}}} \u2028 \U0001F600 {value}'\n"
        "[alerts.rule.overrides.'x{{y}}\"']\nwarning = \"2G\"\n"
        "[[alerts.rule]]\n"
        "name = \"Gone\"\nmetric = \"absent\"\ncontexts = ['q\"{{u}}$1\\\\', 'ñ']\n"
    )
    out = tmp_path / "odd.rules.yml"
    out.write_text(generate_rules(load_config(cfg, check_rrd_files=False).alerts))
    r = promtool("check", "rules", str(out))
    assert r.returncode == 0, r.stdout + r.stderr + out.read_text()


# ------------------------------------------------- the local engine on the same tests

_SERIES = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{(.*)\}")
_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*("(?:[^"\\]|\\.)*")\s*,?')
_NUM = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:e[-+]?\d+)?"
_EXPANSION = re.compile(rf"({_NUM})([-+](?:\d+(?:\.\d*)?|\.\d+)(?:e[-+]?\d+)?)x(\d+)")


def parse_series(text: str) -> tuple[str, dict[str, str]]:
    """`name{a="b", ...}` as promtool writes input series."""
    m = _SERIES.fullmatch(text.strip())
    assert m, text
    labels, pos, body = {}, 0, m.group(2)
    while pos < len(body):
        lm = _LABEL.match(body, pos)
        assert lm, body[pos:]
        labels[lm.group(1)] = json.loads(lm.group(2))
        pos = lm.end()
    return m.group(1), labels


def expand_values(text: str) -> list[float | None]:
    """promtool's value notation: `a+bxn` is a, a+b, ... (n+1 values, added up as
    Prometheus does); `_` and `stale` are no sample (these tests use `_` only after
    `stale`, where Prometheus sees nothing either)."""
    out: list[float | None] = []
    for token in text.split():
        if token in ("_", "stale"):
            out.append(None)
            continue
        m = _EXPANSION.fullmatch(token)
        if m:
            value, step = float(m.group(1)), float(m.group(2))
            for _ in range(int(m.group(3)) + 1):
                out.append(value)
                value += step
        else:
            out.append(float(token))
    return out


def test_expand_values():
    assert expand_values("1+2x3 _ stale 5 -1-1x1 1e3+0x1") == [
        1, 3, 5, 7, None, None, 5, -1, -2, 1000, 1000]


def test_parse_series():
    assert parse_series('m_total{a="x", b="q\\"u{o}te", c="é"}') == (
        "m_total", {"a": "x", "b": 'q"u{o}te', "c": "é"})


WAITING = "ctxmon_context_pressure_waiting_seconds_total"
STALLED = "ctxmon_context_pressure_stalled_seconds_total"


def snapshot_at(series: list[tuple[str, dict, list]], step: int, t: float) -> tuple[Snapshot, int]:
    """The snapshot the exporter would have had to serve for these series at `step`,
    and the host's CPUs (ctxmon_host_cpus)."""
    ctx: dict[str, dict] = {}
    cpus = 1
    for name, labels, values in series:
        v = values[step] if step < len(values) else None
        if v is None:
            continue
        if name == "ctxmon_host_cpus":
            cpus = int(v)
            continue
        if "context" not in labels:
            continue
        c = ctx.setdefault(labels["context"], {"limits": {}, "ifaces": {}, "fields": {},
                                                 "figures": {}})
        f = c["fields"]
        if name == "ctxmon_context_cpu_seconds_total":
            f[f"cpu_{labels['mode']}_seconds"] = v
        elif name in ("ctxmon_context_memory_rss_bytes", "ctxmon_context_memory_virtual_bytes",
                      "ctxmon_context_processes", "ctxmon_context_threads"):
            f[{"ctxmon_context_memory_rss_bytes": "rss_bytes",
               "ctxmon_context_memory_virtual_bytes": "vsz_bytes"}.get(
                name, name.removeprefix("ctxmon_context_"))] = int(v)
        elif name == "ctxmon_context_limit":
            c["limits"].setdefault(labels["resource"], {})[labels["type"]] = int(v)
        elif name == "ctxmon_context_limit_hits_total":
            c["limits"].setdefault(labels["resource"], {})["hits"] = int(v)
        elif name.startswith("ctxmon_context_network_"):
            way = "rx_bytes" if "receive" in name else "tx_bytes"
            c["ifaces"].setdefault(labels["interface"], {})[way] = int(v)
        elif name in (WAITING, STALLED):  # PSI totals, kept in the snapshot's figures
            line = "some" if name == WAITING else "full"
            c["figures"][catalog.pressure_key(labels["resource"], line)] = v
        elif name != "ctxmon_context_info":
            raise AssertionError(f"harness does not know {name}")
    contexts = []
    for label, c in sorted(ctx.items()):
        f = {"processes": 1, "threads": 1, "vsz_bytes": 0, "rss_bytes": 0,
             "cpu_user_seconds": 0.0, "cpu_system_seconds": 0.0, **c["fields"]}
        limits = tuple(LimitRow(res, "count", 0, soft=d.get("soft"), hard=d.get("hard"),
                                hits=d.get("hits", 0)) for res, d in sorted(c["limits"].items()))
        ifaces = tuple(InterfaceSample(n, d.get("rx_bytes", 0), 0, 0, 0, d.get("tx_bytes", 0),
                                       0, 0, 0) for n, d in sorted(c["ifaces"].items()))
        contexts.append(ContextSample(
            key=label, name=label, ctx_id=label, source="cgroup", cpu_accounting="kernel",
            live_user_seconds=0.0, live_system_seconds=0.0, start_time=None,
            uptime_seconds=None, first_process_start=None, limits=limits, interfaces=ifaces,
            figures=c["figures"], **f))
    return Snapshot(timestamp=t, duration_seconds=0.0, source="cgroup", contexts=tuple(contexts),
                    host_interfaces=(), host_uptime_seconds=t), cpus


def replay(config: Path, test_file: Path) -> list[str]:
    """Run each promtool test's series through a local engine; the differences."""
    alerts_cfg = load_config(config, check_rrd_files=False).alerts
    spec = json.loads(test_file.read_text())
    problems = []
    for case in spec["tests"]:
        interval = parse_duration(case.get("interval", "1m"))
        series = [(*parse_series(s["series"]), expand_values(s["values"]))
                  for s in case["input_series"]]
        checks: dict[int, list[dict]] = {}
        for check in case["alert_rule_test"]:
            checks.setdefault(round(parse_duration(check["eval_time"]) / interval), []).append(check)
        now = [0.0]
        _, cpus = snapshot_at(series, 0, 0.0)
        engine = AlertEngine(alerts_cfg, clock=lambda: now[0], cpus=cpus, host="h")
        try:
            for step in range(max(checks) + 1):
                now[0] = step * interval
                snap, _ = snapshot_at(series, step, now[0])
                engine.evaluate(snap)
                for check in checks.get(step, []):
                    got = sorted((a.context, a.severity, a.summary) for a in engine.firing()
                                 if a.name == check["alertname"])
                    want = sorted((e["exp_labels"]["context"], e["exp_labels"]["severity"],
                                   e["exp_annotations"]["summary"]) for e in check["exp_alerts"])
                    if got != want:
                        problems.append(f"{case['name']} @ {check['eval_time']} "
                                        f"{check['alertname']}: local {got}, promtool {want}")
        finally:
            engine.close()
    return problems


@pytest.mark.parametrize("config, test_file", [
    (SHIPPED_CONFIG, PROMTOOL_DIR / "default_rules.test.json"),
    (ALL_METRICS, PROMTOOL_DIR / "all_metrics.test.json"),
], ids=["shipped", "all_metrics"])
def test_local_engine_agrees_with_the_promtool_tests(config, test_file):
    assert replay(config, test_file) == []


def test_replay_notices_a_disagreement(tmp_path):
    """The replay is a real comparison: a config with another level disagrees."""
    text = ALL_METRICS.read_text().replace('warning = "1GiB"', 'warning = "3GiB"')
    changed = tmp_path / "all_metrics.toml"
    changed.write_text(text)
    problems = replay(changed, PROMTOOL_DIR / "all_metrics.test.json")
    assert problems and all(" Rss: " in p for p in problems), problems
