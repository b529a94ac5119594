"""The Prometheus alert rules (include/monitoring/alerts.yml), checked and unit-tested by the real promtool.

`promtool test rules` runs include/monitoring/alerts_test.yml: every alert at its threshold, one step either side,
and on both sides of its `for:`. The other tests keep that file honest: a broken threshold or `for:` makes it fail,
every alert has a firing and a silent case (a new rule cannot land untested), and every alert carries the labels
Alertmanager routes on (team, severity) and a summary.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from crispflow.settings import project_root

MONITORING = project_root() / "include" / "monitoring"
RULES = MONITORING / "alerts.yml"
RULE_TESTS = MONITORING / "alerts_test.yml"
SEVERITIES = {"info", "warning", "high", "critical"}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    """Run promtool (Debian's prometheus package) from the project root."""
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool not found on PATH: `make monitoring-tools` installs Debian's prometheus package "
                    "(apt-get install prometheus), which provides it")
    return subprocess.run([path, *args], capture_output=True, text=True, timeout=300, cwd=project_root())


def rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def rule_tests() -> list[dict[str, Any]]:
    """Every alert_rule_test entry of alerts_test.yml."""
    suite = yaml.safe_load(RULE_TESTS.read_text())
    return [case for test in suite["tests"] for case in test.get("alert_rule_test") or []]


def grouped_by(expr: str) -> set[str]:
    """The labels of every `by (...)` clause of a PromQL expression."""
    return {label.strip() for clause in re.findall(r"\bby\s*\(([^)]*)\)", expr) for label in clause.split(",")}


def test_promtool_accepts_the_rules() -> None:
    done = promtool("check", "rules", str(RULES))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(rules())} rules found" in done.stdout


def test_the_rule_unit_tests_pass() -> None:
    suite = yaml.safe_load(RULE_TESTS.read_text())
    assert suite["rule_files"] == ["alerts.yml"]  # relative to the test file: the rules under test
    done = promtool("test", "rules", str(RULE_TESTS))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


@pytest.mark.parametrize(("alert", "old", "new"), [
    ("CrispflowServerErrorRate", "[5m])) > 0.02", "[5m])) >= 0.02"),  # exactly 2 % must not fire
    ("CrispflowLatencyP99High", "            > 0.25", "            >= 0.25"),  # p99 of exactly 0.25 s neither
    ("CrispflowModelServerDown", "for: 2m", "for: 1m45s"),
])
def test_the_rule_unit_tests_catch_a_broken_rule(tmp_path: Path, alert: str, old: str, new: str) -> None:
    text = RULES.read_text()
    assert text.count(old) == 1, old
    (tmp_path / "alerts.yml").write_text(text.replace(old, new))
    (tmp_path / "alerts_test.yml").write_text(RULE_TESTS.read_text())
    done = promtool("test", "rules", str(tmp_path / "alerts_test.yml"))
    assert done.returncode != 0
    assert f"alertname: {alert}," in done.stdout + done.stderr


def test_every_alert_has_a_firing_and_a_silent_case() -> None:
    names = {rule["alert"] for rule in rules()}
    cases = rule_tests()
    unknown = {case["alertname"] for case in cases} - names
    assert unknown == set(), f"alerts_test.yml tests alerts that alerts.yml does not define: {sorted(unknown)}"
    firing = {case["alertname"] for case in cases if case.get("exp_alerts")}
    silent = {case["alertname"] for case in cases if not case.get("exp_alerts")}
    assert names - firing == set(), f"no test case in alerts_test.yml where these fire: {sorted(names - firing)}"
    assert names - silent == set(), f"no test case in alerts_test.yml where these are silent: {sorted(names - silent)}"


def test_every_alert_has_routing_labels_and_a_summary() -> None:
    expected: dict[str, set[str]] = {}
    for case in rule_tests():
        for alert in case.get("exp_alerts") or []:
            expected.setdefault(case["alertname"], set()).add(alert["exp_labels"].get("severity"))
    for rule in rules():
        name, labels = rule["alert"], rule.get("labels") or {}
        assert labels.get("team") == "ml", name
        if "severity" in labels:
            assert labels["severity"] in SEVERITIES, name
        else:  # the series carry it (the drift episode's): the rule must keep it, and the tests must show it
            assert "severity" in grouped_by(rule["expr"]), f"{name}: no severity label, none kept from the series"
        assert expected.get(name) and expected[name] <= SEVERITIES, name
        annotations = rule.get("annotations") or {}
        assert annotations.get("summary") and annotations.get("description"), name
        assert re.fullmatch(r"\d+[smh]", rule["for"]), name


def test_the_drift_episode_alert_carries_the_airflow_dedup_key() -> None:
    """Acknowledging in Airflow silences on `dedup_key`: the alert must keep it, and one per episode."""
    (rule,) = [r for r in rules() if r["alert"] == "CrispflowDriftPersistent"]
    assert grouped_by(rule["expr"]) == {"model", "alias", "dedup_key", "severity"}
    assert "crispflow_drift_episode_windows" in rule["expr"] and rule["labels"] == {"team": "ml"}
    assert "{{ $labels.dedup_key }}" in rule["annotations"]["description"]
