"""ctxmon.config: the TOML file, its one-line errors and conf/ctxmon.toml itself."""

from __future__ import annotations

import dataclasses
import re
import sys
import tomllib
import types
from pathlib import Path

import pytest

from ctxmon.config import (
    AlertsConfig,
    CollectorConfig,
    Config,
    ConfigError,
    ExporterConfig,
    GraphsConfig,
    DaemonConfig,
    LogConfig,
    RrdConfig,
    TrafficConfig,
    RULE_KEYS,
    Rule,
    _LineIndex,
    default_config,
    load_config,
    parse_duration,
    parse_listen,
    toml_keys,
)

CHECKOUT = Path(__file__).resolve().parent.parent
SHIPPED = CHECKOUT / "conf" / "ctxmon.toml"


def write(tmp_path: Path, text: str | bytes, name: str = "ctxmon.toml") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def line_of(text: str, needle: str, occurrence: int = 1) -> int:
    """1-based number of the line holding `needle` (its n-th occurrence)."""
    seen = 0
    for n, line in enumerate(text.splitlines(), start=1):
        if needle in line:
            seen += 1
            if seen == occurrence:
                return n
    raise AssertionError(f"{needle!r} not in the test text")


def error_of(tmp_path: Path, text: str | bytes, **kw) -> tuple[Path, str]:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, **kw)
    message = str(info.value)
    assert "\n" not in message
    return path, message


@pytest.fixture(autouse=True)
def no_rrd_hook(monkeypatch):
    """Keep exporters.rrd (another module's files and opinions) out of these tests
    unless a test puts its own stand-in there."""
    monkeypatch.setitem(sys.modules, "exporters.rrd", None)


# ----------------------------------------------------------------- syntax, files


def test_syntax_error_names_its_line(tmp_path):
    text = '[collector]\ninterval = "60s"\n\nsource = auto\n'
    path, message = error_of(tmp_path, text)
    assert message.startswith(f"{path}:{line_of(text, 'source = auto')}: syntax error: ")
    assert "(at line" not in message  # tomllib's position is turned into ours
    assert "column" in message


def test_syntax_error_at_end_of_document_points_at_the_last_line(tmp_path):
    text = '[log]\nlevel = "info"\n[rrd]\ndaemon = """unterminated\n'
    path, message = error_of(tmp_path, text)
    assert message.startswith(f"{path}:{len(text.splitlines())}: syntax error: ")


def test_duplicate_table_is_a_syntax_error_with_line(tmp_path):
    text = "[log]\n\n[graphs]\n[log]\n"
    path, message = error_of(tmp_path, text)
    assert message.startswith(f"{path}:{line_of(text, '[log]', 2)}: syntax error: ")


def test_missing_file_cannot_read(tmp_path):
    path = tmp_path / "nowhere.toml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: cannot read: No such file or directory"


def test_directory_cannot_read(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path)


def test_non_utf8_file_names_the_line_of_the_bad_byte(tmp_path):
    data = b'[collector]\ninterval = "60s"\nsource = "v\xe9server"\n'
    path, message = error_of(tmp_path, data)
    assert message.startswith(f"{path}:3: ")
    assert "UTF-8" in message and "0xe9" in message


# ---------------------------------------------------------- unknown keys, tables


def test_unknown_key_with_line_and_suggestion(tmp_path):
    text = '[collector]\nsource = "auto"\nintervall = "30s"\n'
    path, message = error_of(tmp_path, text)
    assert message == (
        f"{path}:{line_of(text, 'intervall')}: [collector] intervall: unknown key "
        '(did you mean "interval"?)'
    )


def test_unknown_key_far_from_anything_has_no_suggestion(tmp_path):
    text = '[exporter]\nenabled = true\nzzzzqqq = 1\n'
    path, message = error_of(tmp_path, text)
    assert message == f"{path}:{line_of(text, 'zzzzqqq')}: [exporter] zzzzqqq: unknown key"


def test_unknown_table_with_suggestion(tmp_path):
    text = '[log]\nlevel = "info"\n\n[colector]\ninterval = "60s"\n'
    path, message = error_of(tmp_path, text)
    assert message == (
        f"{path}:{line_of(text, '[colector]')}: [colector]: unknown table "
        "(did you mean [collector]?)"
    )


def test_unknown_top_level_key(tmp_path):
    text = '# a comment\ninterval = "60s"\n[collector]\n'
    path, message = error_of(tmp_path, text)
    assert message.startswith(f"{path}:{line_of(text, 'interval =')}: interval: unknown key")


def test_alerts_is_empty_and_rejects_keys(tmp_path):
    assert load_config(write(tmp_path, "[alerts]\n")).alerts == AlertsConfig()
    text = "[alerts]\n\ncpu_high = 90\n"
    path, message = error_of(tmp_path, text)
    assert message == f"{path}:{line_of(text, 'cpu_high')}: [alerts] cpu_high: unknown key"


def test_unknown_key_in_dotted_form_points_at_its_line(tmp_path):
    text = '# top level\n\ncollector.internal = 5\n[log]\nlevel = "info"\n'
    path, message = error_of(tmp_path, text)
    assert message.startswith(f"{path}:{line_of(text, 'collector.internal')}: "
                              "[collector] internal: unknown key")


# ------------------------------------------------------------- types and values


@pytest.mark.parametrize(
    "table, line, expect",
    [
        ("exporter", 'enabled = "yes"', 'must be true or false, got "yes"'),
        ("graphs", "enabled = 1", "must be true or false, got 1"),
        ("collector", "interval = true", "must be a duration"),
        ("collector", "interval = 1.5", "must be a duration"),
        ("collector", "source = 1", "must be a string, got 1"),
        ("collector", 'source = "vservr"', 'did you mean "vserver"?'),
        ("collector", "proc_root = []", "must be a string, got an array"),
        ("collector", 'proc_root = ""', "must not be empty"),
        ("collector", "kernel_hz = 0", 'must be "auto" or a positive integer'),
        ("collector", "kernel_hz = true", 'must be "auto" or a positive integer'),
        ("collector", 'kernel_hz = "250"', 'must be "auto" or a positive integer'),
        ("collector", 'cgroup_hierarchy = "cpu acct"', "must be \"auto\", \"unified\""),
        ("rrd", 'step = "0s"', "must be at least 1s"),
        ("rrd", 'step = "90500ms"', "must be a whole number of seconds"),
        ("rrd", 'retention = "-1d"', "invalid duration"),
        ("graphs", 'interval = "10 minutes"', "invalid duration"),
        ("log", 'level = "warn"', 'did you mean "warning"?'),
        ("log", 'level = "INFO"', "must be one of debug, info, warning, error"),
    ],
)
def test_wrong_type_or_value_names_line_and_key(tmp_path, table, line, expect):
    key = line.split(" =")[0]
    text = f"# ctxmon\n\n[{table}]\n# the key:\n{line}\n"
    path, message = error_of(tmp_path, text)
    assert message.startswith(f"{path}:{line_of(text, line)}: [{table}] {key}: ")
    assert expect in message


def test_table_that_is_not_a_table(tmp_path):
    text = '# top level\n\ncollector = 5\n[log]\nlevel = "info"\n'
    path, message = error_of(tmp_path, text)
    assert message == f"{path}:{line_of(text, 'collector = 5')}: [collector]: must be a table, got 5"


def test_interval_below_one_second(tmp_path):
    text = '[collector]\nsource = "auto"\ninterval = "500ms"\n'
    path, message = error_of(tmp_path, text)
    assert message == (
        f'{path}:{line_of(text, "500ms")}: [collector] interval: must be at least 1s, got "500ms"'
    )


def test_bad_duration(tmp_path):
    text = '[collector]\ninterval = "1 hour"\n'
    path, message = error_of(tmp_path, text)
    assert message.startswith(
        f'{path}:{line_of(text, "1 hour")}: [collector] interval: invalid duration "1 hour"'
    )


def test_fractional_interval_makes_default_step_an_error_at_the_interval(tmp_path):
    text = '[collector]\ninterval = "1500ms"\n[rrd]\ndaemon = ""\n'
    path, message = error_of(tmp_path, text)
    assert message.startswith(f"{path}:{line_of(text, '1500ms')}: [rrd] step: ")
    assert "whole number of seconds" in message


def test_error_values_with_newlines_stay_on_one_line(tmp_path):
    text = '[collector]\nsource = "vserver\\ncgroup"\n'
    path, message = error_of(tmp_path, text)  # error_of asserts one line
    assert message.startswith(f"{path}:2: [collector] source: ")


@pytest.mark.parametrize(
    "listen",
    [
        "localhost",
        "127.0.0.1:0",
        "127.0.0.1:65536",
        "127.0.0.1:http",
        "127.0.0.1:",
        ":9717",
        "::1:9717",
        "[::1:9717",
        "[::1]9717",
        "[not-v6]:9717",
        "bad_host!:9717",
        "-bad.example:9717",
        "",
    ],
)
def test_bad_listen(tmp_path, listen):
    text = f'[exporter]\nenabled = true\nlisten = "{listen}"\n'
    path, message = error_of(tmp_path, text)
    assert message.startswith(f"{path}:3: [exporter] listen: ")
    with pytest.raises(ValueError):
        parse_listen(listen)


@pytest.mark.parametrize(
    "listen, host, port",
    [
        ("127.0.0.1:9717", "127.0.0.1", 9717),
        ("[::1]:9717", "::1", 9717),
        ("[::]:1", "::", 1),
        ("0.0.0.0:65535", "0.0.0.0", 65535),
        ("monitor.example.org:80", "monitor.example.org", 80),
    ],
)
def test_good_listen(tmp_path, listen, host, port):
    assert parse_listen(listen) == (host, port)
    cfg = load_config(write(tmp_path, f'[exporter]\nlisten = "{listen}"\n'))
    assert (cfg.exporter.listen, cfg.exporter.host, cfg.exporter.port) == (listen, host, port)


@pytest.mark.parametrize(
    "daemon", ["", "unix:/run/rrdcached.sock", "/run/rrdcached.sock", "127.0.0.1:42217",
               "[::1]:42217", "rrd.example:42217"]
)
def test_good_rrdcached_address_kept_as_written(tmp_path, daemon):
    cfg = load_config(write(tmp_path, f'[rrd]\ndaemon = "{daemon}"\n'))
    assert cfg.rrd.daemon == daemon


@pytest.mark.parametrize(
    "daemon", ["unix:", "unix:run/rrdcached.sock", "rrdcached.sock", "localhost", "host:0"]
)
def test_bad_rrdcached_address(tmp_path, daemon):
    text = f'[rrd]\n\ndaemon = "{daemon}"\n'
    path, message = error_of(tmp_path, text)
    assert message.startswith(f"{path}:3: [rrd] daemon: ")


# ------------------------------------------------------------------------- rules

TWO_RULES = """[collector]
source = "cgroup"

[[collector.rule]]
glob = "/system.slice/*.service"
name = "{1}"

[[collector.rule]]
name = "vm-{1}"
regex = "/machine-(.+\\\\.scope"
"""


def test_bad_regex_rule_names_its_index_and_line(tmp_path):
    # (The loader had a fallback, re.compile, for a tree without collector.cgroup; it
    # imports the one rule validator plainly now, whose message this is.)
    path, message = error_of(tmp_path, TWO_RULES)
    assert message.startswith(
        f"{path}:{line_of(TWO_RULES, 'regex =')}: [[collector.rule]] #2 regex: "
        "bad regex '/machine-(.+\\\\.scope': missing )"
    )


def test_bad_regex_rule_with_whatever_cgroup_module_there_is(tmp_path):
    path, message = error_of(tmp_path, TWO_RULES)
    assert message.startswith(f"{path}:{line_of(TWO_RULES, 'regex =')}: [[collector.rule]] #2 ")


def test_rules_are_validated_by_compile_rules_when_it_exists(tmp_path, monkeypatch):
    seen = []

    def compile_rules(rules):
        seen.append(rules)
        if "glob" in rules[0]:
            raise ValueError("glob rules need a leading /")

    monkeypatch.setattr("ctxmon.config.loader.compile_rules", compile_rules)
    text = '[[collector.rule]]\nregex = "a(b)"\nname = "{1}"\n\n[[collector.rule]]\nglob = "x*"\nname = "{1}"\n'
    path, message = error_of(tmp_path, text)
    assert message == (f"{path}:{line_of(text, 'glob =')}: [[collector.rule]] #2 glob: "
                       "glob rules need a leading /")
    assert seen == [[{"regex": "a(b)", "name": "{1}"}], [{"glob": "x*", "name": "{1}"}]]


@pytest.mark.parametrize(
    "message, key, shown",
    [
        ("cgroup rule: bad name template '{2}': {2} but the pattern has 1", "name",
         "bad name template '{2}': {2} but the pattern has 1"),
        ("cgroup rule: lookup must be one of docker", "lookup", "lookup must be one of docker"),
        ("cgroup rule: bad glob '/a/[': no", "glob", "bad glob '/a/[': no"),
    ],
)
def test_compile_rules_message_lands_on_the_key_it_is_about(tmp_path, monkeypatch, message,
                                                            key, shown):
    def compile_rules(rules):
        raise ValueError(message)

    monkeypatch.setattr("ctxmon.config.loader.compile_rules", compile_rules)
    text = '[[collector.rule]]\nglob = "/a/*"\nname = "{2}"\nlookup = "dockr"\n'
    path, got = error_of(tmp_path, text)
    assert got == f"{path}:{line_of(text, key + ' =')}: [[collector.rule]] #1 {key}: {shown}"


def test_bad_template_with_the_real_cgroup_module(tmp_path):
    pytest.importorskip("collector.cgroup")
    text = '[collector]\n[[collector.rule]]\nglob = "/a/*"\nname = "{2}"\n'
    path, message = error_of(tmp_path, text)
    assert message.startswith(f"{path}:{line_of(text, 'name =')}: [[collector.rule]] #1 name: ")


def test_good_rules_kept_in_order_and_usable_as_dicts(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "collector.cgroup", None)
    text = TWO_RULES.replace("(.+\\\\.scope", "(.+)\\\\.scope") + 'lookup = "docker"\n'
    rules = load_config(write(tmp_path, text)).collector.rules
    assert rules == (
        Rule(glob="/system.slice/*.service", name="{1}"),
        Rule(regex="/machine-(.+)\\.scope", name="vm-{1}", lookup="docker"),
    )
    assert [dict(r) for r in rules] == [
        {"glob": "/system.slice/*.service", "name": "{1}"},
        {"regex": "/machine-(.+)\\.scope", "name": "vm-{1}", "lookup": "docker"},
    ]


@pytest.mark.parametrize(
    "body, at, expect",
    [
        ('glob = "a"\nregex = "b"\nname = "x"', "[[collector.rule]]",
         "[[collector.rule]] #1: needs exactly one of glob or regex, got glob and regex"),
        ('name = "x"', "[[collector.rule]]",
         "[[collector.rule]] #1: needs exactly one of glob or regex, got neither"),
        ('glob = "a"', "[[collector.rule]]", "[[collector.rule]] #1: needs a name"),
        ('glob = "a"\nname = 5', "name = 5", "[[collector.rule]] #1 name: must be a string"),
        ('glob = "a"\nname = "x"\nnmae = "y"', "nmae",
         '[[collector.rule]] #1 nmae: unknown key (did you mean "name"?)'),
    ],
)
def test_malformed_rule(tmp_path, monkeypatch, body, at, expect):
    monkeypatch.setitem(sys.modules, "collector.cgroup", None)
    text = f"[collector]\n\n[[collector.rule]]\n{body}\n"
    path, message = error_of(tmp_path, text)
    assert message.startswith(f"{path}:{line_of(text, at)}: {expect}")


def test_rule_table_instead_of_array(tmp_path):
    text = '[collector]\n\n[collector.rule]\nglob = "a"\nname = "b"\n'
    path, message = error_of(tmp_path, text)
    assert message.startswith(f"{path}:{line_of(text, '[collector.rule]')}: [collector] rule: "
                              "must be an array of tables")


def test_inline_rules_fall_back_to_the_rule_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "collector.cgroup", None)
    text = '[collector]\nrule = [\n  {glob = "a", name = "b"},\n  {regex = "[", name = "c"},\n]\n'
    path, message = error_of(tmp_path, text)
    assert message.startswith(f"{path}:{line_of(text, 'rule = [')}: [[collector.rule]] #2 regex: ")


# ------------------------------------------------------------- rrd step hook


def fake_rrd_module(monkeypatch, answer):
    calls = []

    def check_step(directory, step):
        calls.append((directory, step))
        return answer

    monkeypatch.setitem(sys.modules, "exporters.rrd", types.SimpleNamespace(check_step=check_step))
    return calls


def test_rrd_step_mismatch_reported_at_the_step_line(tmp_path, monkeypatch):
    calls = fake_rrd_module(monkeypatch, "existing files in it have step 300s")
    (tmp_path / "rrd").mkdir()
    text = '[rrd]\ndir = "rrd"\nstep = "1m"\n'
    path, message = error_of(tmp_path, text)
    assert message == f"{path}:3: [rrd] step: existing files in it have step 300s"
    assert calls == [(str(tmp_path / "rrd"), 60)]


def test_rrd_step_mismatch_with_default_step_points_at_the_interval(tmp_path, monkeypatch):
    fake_rrd_module(monkeypatch, "existing files in it have step 300s")
    (tmp_path / "var" / "rrd").mkdir(parents=True)
    text = '[collector]\ninterval = "2m"\n'
    path, message = error_of(tmp_path, text)
    assert message.startswith(f"{path}:2: [rrd] step: ")


def test_rrd_step_hook_agreeing_or_skipped(tmp_path, monkeypatch):
    calls = fake_rrd_module(monkeypatch, None)
    (tmp_path / "present").mkdir()
    assert load_config(write(tmp_path, '[rrd]\ndir = "present"\n')).rrd.step == 60
    assert len(calls) == 1
    load_config(write(tmp_path, '[rrd]\ndir = "absent"\n'))  # nothing to compare with
    load_config(write(tmp_path, '[rrd]\ndir = "present"\n'), check_rrd_files=False)
    assert len(calls) == 1


# --------------------------------------------------------------- defaults, paths


def test_empty_file_gives_the_defaults(tmp_path):
    cfg = load_config(write(tmp_path, ""))
    assert cfg.collector == CollectorConfig(
        interval=60.0, source="auto", proc_root="/proc", vservers_dir="/etc/vservers",
        cgroup_root="/sys/fs/cgroup", cgroup_hierarchy="auto", kernel_hz=None, rules=())
    assert cfg.rrd == RrdConfig(dir=str(tmp_path / "var" / "rrd"), step=60.0, daemon="",
                                retention=30 * 24 * 3600.0)
    assert cfg.exporter == ExporterConfig(listen="127.0.0.1:9717", enabled=True)
    assert cfg.graphs == GraphsConfig(dir=str(tmp_path / "var" / "graphs"), interval=300.0,
                                      enabled=True)
    assert cfg.log == LogConfig(level="info")
    assert cfg.source_path == str(tmp_path / "ctxmon.toml")


def test_default_config_without_a_file():
    cfg = default_config()
    assert cfg.source_path is None
    assert cfg.collector.interval == 60.0 and cfg.rrd.step == 60.0
    assert (cfg.rrd.dir, cfg.graphs.dir) == ("var/rrd", "var/graphs")
    assert cfg.exporter.listen == "127.0.0.1:9717"


def test_config_is_frozen(tmp_path):
    cfg = load_config(write(tmp_path, ""))
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.collector.interval = 1.0  # type: ignore[misc]


def test_step_defaults_to_the_interval(tmp_path):
    cfg = load_config(write(tmp_path, '[collector]\ninterval = "10s"\n'))
    assert cfg.rrd.step == 10.0
    cfg = load_config(write(tmp_path, '[collector]\ninterval = "10s"\n[rrd]\nstep = 300\n'))
    assert (cfg.collector.interval, cfg.rrd.step) == (10.0, 300.0)


def test_kernel_hz(tmp_path):
    assert load_config(write(tmp_path, '[collector]\nkernel_hz = "auto"\n')).collector.kernel_hz is None
    assert load_config(write(tmp_path, "[collector]\nkernel_hz = 250\n")).collector.kernel_hz == 250


@pytest.mark.parametrize("hierarchy", ["auto", "unified", "cpuacct", "cpu,cpuacct", "name=systemd"])
def test_cgroup_hierarchy_forms(tmp_path, hierarchy):
    cfg = load_config(write(tmp_path, f'[collector]\ncgroup_hierarchy = "{hierarchy}"\n'))
    assert cfg.collector.cgroup_hierarchy == hierarchy


def test_relative_paths_resolve_against_the_file_not_the_cwd(tmp_path, monkeypatch):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    text = """[collector]
proc_root = "../recorded/proc"
cgroup_root = "/sys/fs/cgroup"
[rrd]
dir = "../var/rrd"
[graphs]
dir = "/srv/graphs"
"""
    cfg = load_config(write(tmp_path, text, "checkout/conf/ctxmon.toml"))
    checkout = tmp_path / "checkout"
    assert cfg.rrd.dir == str(checkout / "var" / "rrd")
    assert cfg.graphs.dir == "/srv/graphs"
    assert cfg.collector.proc_root == str(checkout / "recorded" / "proc")
    assert cfg.collector.cgroup_root == "/sys/fs/cgroup"
    # util-vserver's tree sits under the parent of the proc root
    assert cfg.collector.vservers_dir == str(checkout / "recorded" / "etc" / "vservers")


def test_vservers_dir_and_cgroup_root_given_or_derived(tmp_path):
    cfg = load_config(write(tmp_path, '[collector]\nproc_root = "/srv/host/proc/"\n'))
    assert cfg.collector.vservers_dir == "/srv/host/etc/vservers"
    assert cfg.collector.cgroup_root == "/srv/host/sys/fs/cgroup"
    text = '[collector]\nproc_root = "/srv/host/proc"\nvservers_dir = "/etc/vs"\ncgroup_root = "/cg"\n'
    cfg = load_config(write(tmp_path, text))
    assert (cfg.collector.vservers_dir, cfg.collector.cgroup_root) == ("/etc/vs", "/cg")


def test_loading_writes_nothing(tmp_path):
    path = write(tmp_path, '[rrd]\ndir = "data/rrd"\n[graphs]\ndir = "data/png"\n')
    before = sorted(p.name for p in tmp_path.rglob("*"))
    load_config(path)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


# --------------------------------------------------------------------- durations


@pytest.mark.parametrize(
    "value, seconds",
    [
        ("30s", 30), ("5m", 300), ("1h", 3600), ("2d", 172800), ("1w", 604800),
        ("1h30m", 5400), ("1d2h3m4s", 93784), ("250ms", 0.25), ("1.5m", 90),
        ("90", 90), (" 45s ", 45), (90, 90), (0, 0),
    ],
)
def test_parse_duration(value, seconds):
    assert parse_duration(value) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "value",
    ["", "s", "5 m", "5min", "-5s", "1h-30m", "1e3s", "5x", ".5s", "5.s",
     True, 1.5, None, [30]],
)
def test_parse_duration_rejects(value):
    with pytest.raises(ValueError):
        parse_duration(value)


# ------------------------------------------------------------------- line index


def test_line_index_ignores_multiline_values_and_follows_dotted_keys():
    text = """[rrd]
daemon = '''
[collector]
interval = 1
'''
extra = [
  "x = 1",
  [ "y" ],
]
collector.interval = "5s"

[[collector.rule]]
glob = "a"
[[collector.rule]]
name.first = 1
"""
    idx = _LineIndex(text)
    assert idx.line_of(("rrd", "collector", "interval")) == line_of(text, 'collector.interval =')
    assert idx.line_of(("collector",)) is None  # "[collector]" is only inside a string
    assert idx.line_of(("rrd", "extra", 3)) == line_of(text, "extra = [")
    assert idx.line_of(("collector", "rule", 0, "glob")) == line_of(text, 'glob = "a"')
    assert idx.line_of(("collector", "rule", 1, "glob")) == line_of(text, "[[collector.rule]]", 2)
    assert idx.line_of(("collector", "rule", 1, "name")) == line_of(text, "name.first")


# ------------------------------------------------------------ conf/ctxmon.toml


def test_shipped_config_loads_with_data_under_the_checkout():
    cfg = load_config(SHIPPED, check_rrd_files=False)
    assert cfg.rrd.dir == str(CHECKOUT / "var" / "rrd")
    assert cfg.graphs.dir == str(CHECKOUT / "var" / "graphs")
    assert cfg.exporter.host in ("127.0.0.1", "::1", "localhost")


def _commented_rule_examples(text: str) -> list[dict]:
    """The `[[collector.rule]]` examples, commented out in the shipped file."""
    lines = re.findall(r"^# ?(\[\[collector\.rule\]\]|(?:glob|regex|name|lookup) = .*)$",
                       text, re.M)
    return tomllib.loads("\n".join(lines)).get("collector", {}).get("rule", [])


def test_shipped_config_documents_every_key():
    text = SHIPPED.read_text(encoding="utf-8")
    data = tomllib.loads(text)
    tables = {"collector": CollectorConfig, "rrd": RrdConfig, "exporter": ExporterConfig,
              "graphs": GraphsConfig, "alerts": AlertsConfig, "log": LogConfig,
              "daemon": DaemonConfig, "traffic": TrafficConfig}
    assert set(tables) == set(toml_keys(Config))
    rules = _commented_rule_examples(text)
    assert rules, "the rule examples are gone"
    present = {(t, k) for t, v in data.items() for k in v}
    present |= {("collector", "rule")}
    rule_keys = {k for r in rules for k in r}
    assert rule_keys == set(RULE_KEYS)
    for table, cls in tables.items():
        assert table in data, f"[{table}] missing"
        for key in toml_keys(cls):
            assert (table, key) in present, f"[{table}] {key} missing from {SHIPPED.name}"
    # each key line comes right after a comment that explains it
    lines = text.splitlines()
    for n, line in enumerate(lines):
        if re.match(r"[a-z_]+ = ", line):
            assert lines[n - 1].startswith("#"), f"undocumented: {line}"


def test_shipped_rule_examples_are_valid(tmp_path):
    rules = _commented_rule_examples(SHIPPED.read_text(encoding="utf-8"))
    text = "".join(
        "[[collector.rule]]\n" + "".join(f"{k} = {tomllib_str(v)}\n" for k, v in r.items())
        for r in rules
    )
    cfg = load_config(write(tmp_path, text))
    assert [dict(r) for r in cfg.collector.rules] == rules


def tomllib_str(value: str) -> str:
    return "'" + value + "'" if "'" not in value else '"' + value.replace("\\", "\\\\") + '"'


def test_exporter_tls_auth_and_cap(tmp_path):
    cert = tmp_path / "c.pem"
    cert.write_text("x")
    ok = "$2b$10$" + "a" * 53
    path = tmp_path / "c.toml"
    path.write_text(f'[exporter]\ntls_cert = "c.pem"\ntls_key = "c.pem"\nmax_contexts = 5\n'
                    f'[exporter.basic_auth]\nprom = "{ok}"\n')
    cfg = load_config(str(path))
    assert cfg.exporter.tls_cert == str(cert) and cfg.exporter.max_contexts == 5
    assert dict(cfg.exporter.basic_auth) == {"prom": ok}
    for body, key in (
        ('[exporter]\ntls_cert = "c.pem"\n', "tls_cert"),
        ('[exporter]\ntls_cert = "missing.pem"\ntls_key = "c.pem"\n', "tls_cert"),
        ('[exporter]\nmax_contexts = -1\n', "max_contexts"),
        ('[exporter.basic_auth]\nprom = "secret"\n', "prom"),
    ):
        path.write_text(body)
        with pytest.raises(ConfigError) as e:
            load_config(str(path))
        msg = str(e.value)
        assert "\n" not in msg and key in msg and re.search(r"c\.toml:[12]: ", msg), msg


def test_daemon_user_must_exist(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[daemon]\nuser = "nobody"\n')
    assert load_config(str(path)).daemon.user == "nobody"
    path.write_text('[daemon]\n\nuser = "no-such-user-ctxmon"\n')
    with pytest.raises(ConfigError) as e:
        load_config(str(path))
    assert "c.toml:3:" in str(e.value) and "user" in str(e.value)


def test_graphs_departed_after_and_traffic_style_reach_the_renderer(tmp_path):
    from graphs.settings import RenderSettings

    cfg = load_config(write(tmp_path, '[graphs]\ndeparted_after = "6h"\ntraffic_style = "mrtg"\n'))
    settings = RenderSettings.from_config(cfg)
    assert (settings.departed_after, settings.traffic_style) == (6 * 3600.0, "mrtg")
    default = RenderSettings.from_config(load_config(write(tmp_path, "")))
    assert (default.departed_after, default.traffic_style) == (86400.0, "munin")


@pytest.mark.parametrize("line, says", [
    ('traffic_style = "rrd"', "must be one of munin, mrtg"),
    ('departed_after = "400d"', "must be at most"),
    ('departed_after = "-1s"', ""),
])
def test_graphs_bad_departed_after_or_traffic_style_is_one_line(tmp_path, line, says):
    text = f"[graphs]\n{line}\n"
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, text))
    message = str(e.value)
    assert "\n" not in message and ":2:" in message and says in message
