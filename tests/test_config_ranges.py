"""Every duration, number and template has a range check-config enforces, and nothing
check-config accepts fails at start or at reload (issue 11 item 5)."""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import pytest
from daemonproc import POLLED, write_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ctxmon.config import ConfigError, load_config
from ctxmon.daemon import Daemon

HERE = os.path.dirname(__file__)
VS20 = os.path.join(HERE, "fixtures", "vs20")
DEEP = "x = " + "[" * 5000 + "1" + "]" * 5000 + "\n"

# (table, line, what the one-line error says)
REFUSED = [
    ("collector", 'interval = "99999999999d"', "must be at most 1d"),
    ("collector", 'interval = "3650000d"', "must be at most 1d"),
    ("collector", "interval = 1e23", "must be a duration"),
    ("collector", "interval = 99999999999999999999", "must be at most 1d"),
    ("collector", 'interval = "' + "9" * 5000 + 's"', "duration too long"),
    ("collector", "kernel_hz = 1000000000", "up to 100000"),
    ("rrd", 'step = "2d"', "must be at most 1d"),
    ("rrd", 'retention = "99999999999d"', "must be at most 36500d"),
    ("graphs", 'interval = "3650000d"', "must be at most 1d"),
    ("exporter", "max_contexts = 9223372036854775807", "must be at most 1000000"),
    ("exporter", 'listen = "127.0.0.1:99999"', "port must be 1..65535"),
    ("alerts", 'command_timeout = "99999999999d"', "must be at most 1h"),
    ("alerts", 'alertmanager_timeout = "2h"', "must be at most 1h"),
    ("alerts", 'rate_window = "99999999999d"', "must be at most 1d"),
    ("alerts", 'rate_window = "20m"', "at most 1000 polls"),  # 1200 polls at 1s
    ("alerts", "[[alerts.rule]]\nname = \"A\"\nmetric = \"cpu\"\nwarning = 1\n"
               "for = \"3650000d\"", "must be at most 365d"),
    ("alerts", "[[alerts.rule]]\nname = \"A\"\nmetric = \"rss\"\nwarning = 1e23",
     "must be a number 0.."),
    ("alerts", "[[alerts.rule]]\nname = \"A\"\nmetric = \"rss\"\nwarning = \"99999999EiB\"",
     "must be at most"),
    ("alerts", "[[alerts.rule]]\nname = \"A\"\nmetric = \"rss\"\nwarning = \"1e300%\"",
     "percentage"),
    ("alerts", "[[alerts.rule]]\nname = \"" + "A" * 300 + "\"\nmetric = \"cpu\"\nwarning = 1",
     "at most 200 characters"),
    ("collector", '[[collector.rule]]\nregex = "x(.*)"\nname = "{1:>999999999999}"',
     "width or precision above 255"),
    ("collector", '[[collector.rule]]\nregex = "x(.*)"\nname = "{1:>50000000}"',
     "width or precision above 255"),
    ("collector", '[[collector.rule]]\nregex = "x(.*)"\nname = "{1:.99999}"',
     "width or precision above 255"),
    ("exporter", '[exporter.basic_auth]\nu = "$2b$31$' + "a" * 53 + '"', "bcrypt cost must be"),
]


def _config_with(tmp_path, table: str, line: str) -> str:
    """A small config with `line` in `[table]` (or appended, for `[[...]]` lines)."""
    tables = {"collector": 'source = "cgroup"', "exporter": "enabled = false",
              "graphs": "enabled = false"}
    if not (table == "collector" and line.startswith("interval")):
        tables["collector"] += '\ninterval = "1s"'
    tail = ""
    if line.startswith("["):
        tail = line
    elif table in tables:
        tables[table] += "\n" + line
    else:
        tail = f"[{table}]\n{line}"
    path = tmp_path / "c.toml"
    path.write_text("".join(f"[{t}]\n{body}\n" for t, body in tables.items()) + tail + "\n")
    return str(path)


@pytest.mark.parametrize("table,line,message", REFUSED, ids=[r[1][:40] for r in REFUSED])
def test_out_of_range_values_are_one_line_errors_with_their_line(tmp_path, table, line, message):
    path = _config_with(tmp_path, table, line)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    text = str(e.value)
    assert message in text
    assert "\n" not in text and text.startswith(f"{path}:")
    assert e.value.line is not None
    assert len(text) < 800


def test_check_config_refuses_them_in_one_line_exit_2(tmp_path):
    for i, body in enumerate(['[collector]\ninterval = "99999999999d"', DEEP,
                              '[[collector.rule]]\nregex = "x(.*)"\nname = "{1:>50000000}"']):
        path = tmp_path / f"c{i}.toml"
        path.write_text(body)
        r = subprocess.run([sys.executable, "-m", "ctxmon.cli", "check-config", "-c", str(path)],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 2, r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and re.match(rf"ctxmon: {re.escape(str(path))}:\d+: ", lines[0]), \
            r.stderr
        assert "Traceback" not in r.stderr and "Recursion" not in r.stderr


def test_deep_nesting_is_a_config_error_not_a_recursion_error(tmp_path):
    for body in (DEEP, "x = " + "{a=" * 3000 + "1" + "}" * 3000,
                 "a = [\n" + "[\n" * 3000 + "]\n" * 3001):
        path = tmp_path / "deep.toml"
        path.write_text(body)
        with pytest.raises(ConfigError) as e:
            load_config(str(path))
        assert "nested" in str(e.value) and e.value.line is not None


def test_a_huge_file_is_refused_unread(tmp_path):
    path = tmp_path / "big.toml"
    path.write_text("# " + "x" * (2 << 20) + "\n")
    with pytest.raises(ConfigError, match="not a config file"):
        load_config(str(path))


# ------------------------------------------------------------------ fuzzing

SANE_DURATIONS = st.sampled_from(['"1s"', '"2s"', '"60s"', '"5m"', '"1h"', '"1d"', "90"])
SANE_LEVELS = st.sampled_from(["1", "100", "0.5", '"90%"', '"512MiB"', '"1M"'])
HOSTILE_DURATIONS = st.one_of(
    st.sampled_from(['"99999999999d"', '"3650000d"', "1e23", "9223372036854775807"]),
    st.integers(min_value=-10, max_value=2**70).map(str),
    st.tuples(st.integers(0, 10**15), st.sampled_from(["ms", "s", "m", "h", "d", "w"]))
    .map(lambda t: f'"{t[0]}{t[1]}"'),
    st.sampled_from(['"99999999999d"', '"3650000d"', "1e23", '"1.5s"', '"1h30m"', '"0s"',
                     '"86401s"', "true", '"x"', "-1", "[1]", '"' + "9" * 5000 + '"']),
)
HOSTILE_NUMBERS = st.one_of(
    st.integers(-2**63, 2**63 - 1).map(str), st.floats(allow_nan=False).map(repr),
    st.sampled_from(['"1e300%"', '"99999999EiB"', "1e23", "nan", "inf", '"100Mbit/s"']))
TEMPLATE = st.tuples(
    st.sampled_from(["{1}", "{path}", "{basename}", "{0}", "{}", "{2}"]),
    st.one_of(st.just(""), st.integers(0, 10**13).map(lambda n: f":>{n}"),
              st.integers(0, 10**9).map(lambda n: f":.{n}"),
              st.sampled_from([":{", ":>{1}", "!r", ":x", ":^20.3"])),
).map(lambda t: '"' + t[0][:-1] + t[1] + '}"')

# (table, key, a sane value, a hostile value). A text has sane values everywhere but
# in one key (or none), so that most texts load and go on to start and reload.
KEYS = [
    ("collector", "interval", SANE_DURATIONS, HOSTILE_DURATIONS),
    ("collector", "kernel_hz", st.sampled_from(['"auto"', "100", "250"]),
     st.integers(-2**63, 2**63 - 1).map(str)),
    ("rrd", "step", SANE_DURATIONS, HOSTILE_DURATIONS),
    ("rrd", "retention", SANE_DURATIONS, HOSTILE_DURATIONS),
    ("graphs", "interval", SANE_DURATIONS, HOSTILE_DURATIONS),
    ("exporter", "max_contexts", st.sampled_from(["0", "10"]),
     st.integers(-2**63, 2**63 - 1).map(str)),
    ("alerts", "rate_window", st.sampled_from(['"5m"', '"1h"']), HOSTILE_DURATIONS),
    ("alerts", "command_timeout", SANE_DURATIONS, HOSTILE_DURATIONS),
    ("alerts", "alertmanager_timeout", SANE_DURATIONS, HOSTILE_DURATIONS),
    ("rule", "warning", SANE_LEVELS, HOSTILE_NUMBERS),
    ("rule", "for", SANE_DURATIONS, HOSTILE_DURATIONS),
    ("cgroup", "name", st.just('"{1}"'), TEMPLATE),
]


@st.composite
def config_texts(draw, rrd_dir: str):
    hostile = draw(st.sampled_from([None] + [(t, k) for t, k, _, _ in KEYS]))
    values: dict[tuple[str, str], str] = {}
    for table, key, sane, bad in KEYS:
        if (table, key) == hostile:
            values[table, key] = draw(bad)
        elif draw(st.booleans()):
            values[table, key] = draw(sane)
    tables: dict[str, list[str]] = {
        "collector": ['source = "vserver"', f'proc_root = "{VS20}/proc"'],
        "rrd": [f'dir = "{rrd_dir}"'], "graphs": ["enabled = false"],
        "exporter": ["enabled = false"], "alerts": []}
    for (table, key), value in values.items():
        if table in tables:
            tables[table].append(f"{key} = {value}")
    text = "".join(f"[{t}]\n" + "\n".join(lines) + "\n" for t, lines in tables.items())
    if ("cgroup", "name") in values:
        text += f'[[collector.rule]]\nregex = "ctx-(.*)"\nname = {values["cgroup", "name"]}\n'
    if draw(st.booleans()) or hostile and hostile[0] == "rule":
        metric = draw(st.sampled_from(["cpu", "rss", "threads", "limit_hits"]))
        text += (f'[[alerts.rule]]\nname = "R"\nmetric = "{metric}"\n'
                 f'warning = {values.get(("rule", "warning"), "1")}\ncritical = 1e12\n'
                 f'for = {values.get(("rule", "for"), "0")}\n')
    return text


def _baseline(path, rrd_dir) -> str:
    path.write_text(f'[collector]\ninterval = "60s"\nsource = "vserver"\n'
                    f'proc_root = "{VS20}/proc"\n[rrd]\ndir = "{rrd_dir}"\n'
                    f'[exporter]\nenabled = false\n[graphs]\nenabled = false\n')
    return str(path)


def _fire_times(daemon: Daemon) -> None:
    """What APScheduler computes after each run: the next fire time of every job."""
    now = datetime.now(timezone.utc)
    for job in daemon.scheduler.get_jobs():
        assert job.trigger.get_next_fire_time(now, now) is not None


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_fuzz_whatever_loads_starts_and_reloads(tmp_path, data, caplog):
    caplog.set_level(logging.CRITICAL)
    # tmp_path is the same for every example: each gets its own data dir (files made
    # with another step would be refused).
    tmp_path = Path(tempfile.mkdtemp(dir=tmp_path))
    rrd_dir = str(tmp_path / "rrd")
    text = data.draw(config_texts(rrd_dir))
    path = tmp_path / "fuzz.toml"
    path.write_text(text)
    try:
        cfg = load_config(str(path))
    except ConfigError as e:
        assert "\n" not in str(e) and str(e).startswith(str(path))
        accepted = False
    else:
        accepted = True
        _starts_and_polls(Daemon(cfg, config_path=str(path)))  # as `ctxmon run` would
    # Reload: a daemon on a plain config takes the text in, or refuses it, and runs on.
    base = _baseline(tmp_path / "base.toml", str(tmp_path / "base-rrd"))
    d = Daemon(load_config(base), config_path=base)
    d.config_path = str(path)
    _starts_and_polls(d, reload_to=accepted)


def _starts_and_polls(d: Daemon, reload_to: bool | None = None) -> None:
    """(Reload, when `reload_to` says what it must answer,) schedule, poll once: no
    exception, no failure; the daemon's parts are closed after."""
    try:
        if reload_to is not None:
            assert d.reload() is reload_to
        d._schedule()
        _fire_times(d)
        assert d.poll() is not None
        assert d.stats.poll_failures == 0 and not d.stats.sink_errors
    finally:
        d.rrd.close()
        d.sampler.close()
        if d.alerts is not None:
            d.alerts.close()


def test_sighup_with_an_absurd_interval_is_refused_and_polling_goes_on(tmp_path, daemons):
    cfg_path = tmp_path / "ctxmon.toml"
    write_config(cfg_path, tmp_path / "rrd")
    # The recorded tree: a poll costs the same whatever else runs on this host.
    cfg_path.write_text(cfg_path.read_text().replace(
        'source = "cgroup"', f'source = "vserver"\nproc_root = "{VS20}/proc"'))
    d = daemons(str(cfg_path), tmp_path / "daemon.log")
    d.wait_for_log(POLLED, count=2)
    good = cfg_path.read_text()
    for bad in ('"99999999999d"', '"3650000d"', "1e23"):
        cfg_path.write_text(good.replace('interval = "1s"', f"interval = {bad}", 1))
        refused = d.text().count("reload refused")
        d.proc.send_signal(signal.SIGHUP)
        d.wait_for_log("reload refused", count=refused + 1)
        polls = d.text().count(POLLED)
        d.wait_for_log(POLLED, count=polls + 2)
    assert d.stop() == 0
    assert "Traceback" not in d.text()


def test_run_refuses_an_absurd_interval_before_binding(tmp_path):
    cfg = write_config(tmp_path / "ctxmon.toml", tmp_path / "rrd", interval="3650000d")
    r = subprocess.run([sys.executable, "-m", "ctxmon.cli", "run", "-c", cfg],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "must be at most 1d" in lines[0], r.stderr
    assert not (tmp_path / "rrd").exists()
