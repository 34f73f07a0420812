"""The alert rules in prometheus/ read series that exist: every metric an expression names
is one the switch exports (or Prometheus's own `up`, or the node exporter's that the
example configuration scrapes), and a switch that is down, whose own series have vanished,
still pages. Plain Python, no Prometheus needed: tests/shell/test_prometheus.py runs the
rules' unit tests under promtool where it can install it."""

import re

from switch import limits
from switch.shell.metrics import Metrics
from tests.paths import REPO_ROOT

PROMETHEUS = REPO_ROOT / "prometheus"
# What the node exporter exports that the rules read (the data dir's filesystem).
NODE_EXPORTER_METRICS = {"node_filesystem_avail_bytes", "node_filesystem_size_bytes"}
# Prometheus writes `up` for every target it scrapes; it is all that is left of one down.
SCRAPE_METRICS = {"up"}
_PROMQL_WORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left",
                 "group_right", "bool", "offset", "inf", "nan"}


def alert_rules() -> dict[str, dict]:
    """Each alert of rules.yml by name: its `expr` (a block scalar joined into one line),
    `for` and `labels` as written. The file's shape is fixed enough to need no YAML library."""
    rules: dict[str, dict] = {}
    current = None
    block_indent = None
    for line in (PROMETHEUS / "rules.yml").read_text().splitlines():
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        if block_indent is not None:
            if stripped and indent >= block_indent:
                current["expr"] += " " + stripped
                continue
            block_indent = None
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.startswith("- alert:"):
            current = rules.setdefault(stripped.partition(":")[2].strip(), {"indent": indent})
        elif current is not None and stripped.startswith(("expr:", "for:", "labels:")):
            key, _, value = stripped.partition(":")
            value = value.strip()
            if key == "expr" and value == "|":
                current["expr"] = ""
                block_indent = indent + 1
            else:
                current[key] = value
    return rules


def metric_names(expr: str) -> set[str]:
    """The metric names an expression reads: what is left of its identifiers once strings,
    label matchers, ranges, grouping clauses, function calls and operators are taken out."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}", " ", expr)
    expr = re.sub(r"\[[^\]]*\]", " ", expr)
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ",
                  expr)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", expr):
        rest = expr[match.end():].lstrip()
        if rest.startswith("(") or match.group().lower() in _PROMQL_WORDS:
            continue
        names.add(match.group())
    return names


def switch_series_names() -> set[str]:
    """Every series name the switch's registry can expose: counters with `_total`,
    histograms with their buckets, sum and count, gauges as they are."""
    names = set()
    for family in Metrics().registry.collect():
        if family.type == "counter":
            names.add(family.name + "_total")
        elif family.type == "histogram":
            names.update(family.name + suffix for suffix in ("_bucket", "_sum", "_count"))
        else:
            names.add(family.name)
    return names


def scrape_jobs() -> dict[str, list[str]]:
    """prometheus.yml's scrape jobs and their targets."""
    jobs: dict[str, list[str]] = {}
    job = None
    for line in (PROMETHEUS / "prometheus.yml").read_text().splitlines():
        stripped = line.split("#", 1)[0].strip()
        if stripped.startswith("- job_name:"):
            job = jobs.setdefault(stripped.partition(":")[2].strip(), [])
        elif stripped.startswith("- targets:") and job is not None:
            job.extend(re.findall(r'"([^"]+)"', stripped))
    return jobs


def test_the_rule_parser_reads_every_alert_with_its_expression():
    rules = alert_rules()
    text = (PROMETHEUS / "rules.yml").read_text()
    assert len(rules) == text.count("- alert:")
    for name, rule in rules.items():
        assert rule.get("expr"), name
        assert re.search(r"severity: (page|ticket)\b", rule["labels"]), name
    assert metric_names('sum by (le) (rate(a_bucket{x="y"}[5m])) > 0 and on() hour() == 3 '
                        'or absent(up{job="switch"}) unless b / c') == {"a_bucket", "up", "b",
                                                                          "c"}


def test_every_rule_reads_only_series_the_switch_or_its_scrape_exports():
    exported = switch_series_names() | SCRAPE_METRICS | NODE_EXPORTER_METRICS
    for name, rule in alert_rules().items():
        unknown = metric_names(rule["expr"]) - exported
        assert not unknown, (name, unknown)


def test_a_switch_that_is_down_or_not_scraped_at_all_pages():
    """The other rules compare the switch's own series, which vanish with the process: only
    `up` is left of a switch that is down, and nothing of one Prometheus no longer scrapes."""
    jobs = scrape_jobs()
    (switch_job,) = [job for job, targets in jobs.items() if "127.0.0.1:7090" in targets]
    exprs = {" ".join(rule["expr"].split()): rule for rule in alert_rules().values()}
    for expr in (f'up{{job="{switch_job}"}} == 0', f'absent(up{{job="{switch_job}"}})'):
        assert expr in exprs, expr
        assert exprs[expr]["labels"] == "{severity: page}", expr


def test_alerts_are_sent_to_an_alertmanager():
    text = (PROMETHEUS / "prometheus.yml").read_text()
    alerting = text.partition("\nalerting:\n")[2]
    assert alerting, "prometheus.yml has no alerting: section"
    assert "alertmanagers:" in alerting and "127.0.0.1:9093" in alerting
    # The README tells the operator that pages need a route of their own.
    readme = (REPO_ROOT / "README.md").read_text()
    assert "severity: page" in readme and "Alertmanager" in readme


def test_no_rule_waits_for_a_map_ratio_the_switch_never_lets_it_reach():
    """The committer doubles the LMDB map once a commit leaves it past
    `lmdb_map_grow_threshold_ratio`: a rule on a fuller map can never fire."""
    for name, rule in alert_rules().items():
        for threshold in re.findall(
                r"switch_lmdb_map_used_bytes\s*/\s*switch_lmdb_map_size_bytes\s*>\s*([0-9.]+)",
                rule["expr"]):
            assert float(threshold) < limits.lmdb_map_grow_threshold_ratio, name


def test_the_data_dirs_disk_is_watched_through_a_scraped_node_exporter():
    """What fills is the disk under the data dir: rules on the node exporter's free space,
    a job prometheus.yml scrapes, and one that says when those rules watch nothing."""
    jobs = scrape_jobs()
    (node_job,) = [job for job, targets in jobs.items() if "127.0.0.1:9100" in targets]
    rules = alert_rules()
    disk = {name: rule for name, rule in rules.items()
            if "node_filesystem_avail_bytes" in rule["expr"]}
    severities = {rule["labels"] for rule in disk.values()}
    assert severities == {"{severity: page}", "{severity: ticket}"}, disk
    for name, rule in disk.items():
        assert f'job="{node_job}"' in rule["expr"] and 'mountpoint="' in rule["expr"], name
    assert any(rule["expr"].startswith("absent(node_filesystem_avail_bytes{")
               for rule in disk.values())
    readme = (REPO_ROOT / "README.md").read_text()
    assert "prometheus-node-exporter" in readme
    assert "df --output=target /var/lib/campus-switch/data" in readme


def comments_above_each_alert() -> dict[str, str]:
    """The comment lines directly above each `- alert:` line, joined."""
    above: dict[str, str] = {}
    comment: list[str] = []
    for line in (PROMETHEUS / "rules.yml").read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            comment.append(stripped.lstrip("# "))
            continue
        if stripped.startswith("- alert:"):
            above[stripped.partition(":")[2].strip()] = " ".join(comment)
        comment = []
    return above


def test_each_comment_sits_above_the_rule_it_explains():
    above = comments_above_each_alert()
    # What a comment says -> the one rule it may explain.
    belongs_to = {"Meal periods": "SwitchNoTrafficInMealPeriod",
                  "The wall clock left": "SwitchClockJumped",
                  "Past saturation": "SwitchShedding",
                  "keeps refusing what it is sent": "SwitchForwardDeclined"}
    for words, rule in belongs_to.items():
        assert [name for name, comment in above.items() if words in comment] == [rule], words


def test_the_readme_names_every_alert():
    readme = (REPO_ROOT / "README.md").read_text()
    missing = [name for name in alert_rules() if f"`{name}`" not in readme]
    assert not missing


def test_a_few_tills_switched_off_do_not_page_as_terminals_dropping_off():
    """A pilot's 2 tills, one switched off, are 50 % gone: the rule needs a count too."""
    expr = " ".join(alert_rules()["SwitchTerminalsDroppingOff"]["expr"].split())
    (minimum,) = re.findall(r'- sum\(switch_connections\{role="terminal"\}\) >= (\d+)', expr)
    assert int(minimum) >= 5


def test_the_readme_says_how_to_silence_the_meal_alert_for_a_vacation():
    readme = (REPO_ROOT / "README.md").read_text()
    assert "amtool silence add alertname=SwitchNoTrafficInMealPeriod" in readme
