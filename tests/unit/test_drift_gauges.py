"""Drift gauges read from the monitoring store at scrape time, and the Grafana/Prometheus files that use them.

The collector is scraped through a real prometheus_client registry and parsed back from the text exposition; the
dashboard and alert rules are checked to reference only series that the collector and the model server export.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from crispflow.monitoring.gauges import DriftCollector
from crispflow.monitoring.store import summarise, write_window
from crispflow.serving.metrics import ServingMetrics
from crispflow.settings import project_root

MODEL = "crispflow-t_gauges"
T0 = datetime(2026, 11, 3, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
MONITORING = project_root() / "include" / "monitoring"
DASHBOARD = MONITORING / "grafana" / "dashboards" / "crispflow-drift.json"
ALERTS = MONITORING / "alerts.yml"


def store(root: Path, end: datetime, *, alias: str = "champion", version: str = "3", drifted: tuple[str, ...] = (),
          rows: int = 500) -> dict:
    """Write one window the way the monitoring DAG does (report, HTML, summary); features a, b, c, d."""
    features = {name: {"test": "ks", "statistic": 0.3, "p_adjusted": 1e-6 if name in drifted else 0.5,
                       "psi": 0.4 if name in drifted else 0.001, "drifted": name in drifted} for name in "abcd"}
    report = {"status": "drift" if drifted else "no_drift", "drift": bool(drifted), "drift_share": len(drifted) / 4,
              "drifted_features": list(drifted), "features": features, "prediction": None}
    summary = summarise(report, model=MODEL, alias=alias, version=version, start=end - HOUR, end=end, rows=rows,
                        labelled_rows=0, report_path="x")
    write_window(root, summary, report, "<html></html>")
    return summary


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def scrape(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(samples: dict, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


@pytest.fixture
def collected(tmp_path: Path):
    clock = Clock()
    registry = CollectorRegistry()
    collector = DriftCollector(str(tmp_path), MODEL, ttl=30, clock=clock)
    registry.register(collector)  # registering reads nothing: the windows below are written afterwards
    return tmp_path, registry, clock


def test_newest_window_per_alias_is_exported(collected) -> None:
    root, registry, _ = collected
    store(root, T0)
    store(root, T0 + HOUR, drifted=("a", "c"))
    store(root, T0 + 2 * HOUR, drifted=("a",), rows=420)
    store(root, T0 + 2 * HOUR, alias="canary", version="4")
    s = scrape(registry)
    champion, canary = {"alias": "champion", "version": "3"}, {"alias": "canary", "version": "4"}
    assert value(s, "crispflow_drift_share", **champion) == 0.25
    assert value(s, "crispflow_drift_detected", **champion) == 1.0
    assert value(s, "crispflow_drift_consecutive_windows", **champion) == 2.0
    assert value(s, "crispflow_drift_feature_psi", **champion, feature="a") == 0.4
    assert value(s, "crispflow_drift_feature_psi", **champion, feature="c") == 0.001  # every feature, drifted or not
    assert value(s, "crispflow_drift_window_end_timestamp", **champion) == (T0 + 2 * HOUR).timestamp()
    assert value(s, "crispflow_drift_window_rows", **champion) == 420.0
    assert value(s, "crispflow_drift_detected", **canary) == 0.0
    assert value(s, "crispflow_drift_consecutive_windows", **canary) == 0.0
    assert value(s, "crispflow_drift_store_up") == 1.0


def test_reads_are_cached_for_the_ttl(collected) -> None:
    root, registry, clock = collected
    store(root, T0)
    assert value(scrape(registry), "crispflow_drift_detected", alias="champion", version="3") == 0.0
    store(root, T0 + HOUR, drifted=("a", "b"))
    clock.now = 29.0
    assert value(scrape(registry), "crispflow_drift_detected", alias="champion", version="3") == 0.0
    clock.now = 30.0
    assert value(scrape(registry), "crispflow_drift_detected", alias="champion", version="3") == 1.0


def test_an_ended_canary_is_not_exported_and_a_new_version_restarts_the_streak(collected) -> None:
    root, registry, _ = collected
    store(root, T0, alias="canary", version="4", drifted=("a",))
    store(root, T0, drifted=("a",))
    store(root, T0 + HOUR, version="4", drifted=("a",))  # the canary was promoted: v4 is the champion now
    s = scrape(registry)
    assert not [k for k in s if ("alias", "canary") in k[1]]
    assert value(s, "crispflow_drift_consecutive_windows", alias="champion", version="4") == 1.0
    assert value(s, "crispflow_drift_share", alias="champion", version="3") is None


def test_an_unreadable_store_keeps_the_last_values_and_says_so(collected) -> None:
    root, registry, clock = collected
    store(root, T0, drifted=("b",))
    assert value(scrape(registry), "crispflow_drift_store_up") == 1.0
    (root / MODEL / "drift" / "windows" / "20261103T020000Z-champion.json").write_text("{not json")
    clock.now = 60.0
    s = scrape(registry)  # the scrape itself succeeds
    assert value(s, "crispflow_drift_store_up") == 0.0
    assert value(s, "crispflow_drift_share", alias="champion", version="3") == 0.25


def test_no_windows_yet_exports_only_the_store_state(collected) -> None:
    _, registry, _ = collected
    s = scrape(registry)
    assert {k[0] for k in s} == {"crispflow_drift_store_up"}


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="history"):
        DriftCollector("/tmp", MODEL, history=0)
    with pytest.raises(ValueError, match="ttl"):
        DriftCollector("/tmp", MODEL, ttl=-1)


# ------------------------------------------------------------------------------------ dashboard and alert rules


def record_episode(root: Path) -> str:
    """Two drift windows and the episode the DriftSensor records for them; its id."""
    from crispflow.monitoring.episodes import DriftPolicy, check, episode_record
    from crispflow.monitoring.store import claim_episode

    for hour in (1, 2):
        store(root, T0 + hour * HOUR, drifted=("a", "b", "c"))
    decision = check(root, MODEL, DriftPolicy(), T0 + 2 * HOUR)
    assert decision.fire and decision.episode_id, decision
    claim_episode(root, MODEL, episode_record(decision, pipeline="t_gauges", fired_at=T0 + 2 * HOUR,
                                              fired_by={"run_id": "r"}))
    return decision.episode_id


def exported_names(tmp_path: Path) -> set[str]:
    """Every series name the model server's /metrics shows once each metric has a sample, drift gauges included."""
    metrics = ServingMetrics(lambda: {"written": 1, "dropped": 0, "pending": 0})
    metrics.requests.labels(MODEL, "predict", "200").inc()
    metrics.records.labels(MODEL, "3", "champion").inc()
    metrics.latency.labels(MODEL, "3", "champion").observe(0.01)
    metrics.scores.labels(MODEL, "3", "champion").observe(0.2)
    metrics.errors.labels("model").inc()
    metrics.set_served(MODEL, {"champion": "3"})
    metrics.drift.add(MODEL, DriftCollector(tmp_path, MODEL))
    record_episode(tmp_path)
    text = generate_latest(metrics.registry).decode()
    return {s.name for f in text_string_to_metric_families(text) for s in f.samples}


def referenced(expr: str) -> set[str]:
    return set(re.findall(r"\b(crispflow_[a-z0-9_]+)", expr))


def test_the_dashboard_is_valid_and_uses_only_exported_series(tmp_path: Path) -> None:
    dash = json.loads(DASHBOARD.read_text())
    for key in ("uid", "title", "panels", "schemaVersion", "tags"):
        assert dash.get(key), key
    datasources = yaml.safe_load((MONITORING / "grafana" / "datasources" / "prometheus.yml").read_text())
    uids = {d["uid"] for d in datasources["datasources"]}
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    names = exported_names(tmp_path)
    used: set[str] = set()
    for panel in dash["panels"]:
        assert panel["title"] and panel["type"] and set(panel["gridPos"]) == {"x", "y", "w", "h"}
        assert panel["datasource"]["uid"] in uids and panel["targets"]
        for target in panel["targets"]:
            assert target["refId"] and target["expr"] and target["datasource"]["uid"] in uids
            used |= referenced(target["expr"])
    assert used - names == set()
    assert {"crispflow_drift_share", "crispflow_drift_feature_psi", "crispflow_serve_requests_total",
            "crispflow_serve_request_latency_seconds_bucket", "crispflow_serve_errors_total"} <= used


def test_the_alert_rules_are_valid_and_use_only_exported_series(tmp_path: Path) -> None:
    rules = yaml.safe_load(ALERTS.read_text())
    names = exported_names(tmp_path)
    alerts = []
    for group in rules["groups"]:
        assert group["name"] and group["rules"]
        for rule in group["rules"]:
            assert set(rule) == {"alert", "expr", "for", "labels", "annotations"}, rule.get("alert")
            assert re.fullmatch(r"[A-Z][A-Za-z0-9]+", rule["alert"])
            assert re.fullmatch(r"\d+[smh]", rule["for"])
            # a fixed severity, or the series' own (the drift episode's: warning, high or critical)
            assert rule["labels"].get("severity") in ("info", "warning", "critical") or \
                re.search(r"by \([^)]*\bseverity\b", rule["expr"]), rule["alert"]
            assert rule["annotations"]["summary"] and rule["annotations"]["description"]
            assert rule["expr"].count("(") == rule["expr"].count(")")
            assert referenced(rule["expr"]) - names == set(), rule["alert"]
            alerts.append(rule["alert"])
    assert len(alerts) == len(set(alerts))
    assert {"CrispflowDriftPersistent", "CrispflowModelServerDown", "CrispflowServerErrorRate",
            "CrispflowLatencyP99High", "CrispflowPredictionLogDrops"} <= set(alerts)


def test_an_open_drift_episode_is_exported_with_the_alerts_dedup_key_until_it_ends(tmp_path: Path) -> None:
    """The episode the sensor recorded is a series keyed like the Airflow-side alert (`<model>.<episode id>`) while
    its exit rule (2 cool windows) has not been met; then it is gone, so the Prometheus alert resolves."""
    from crispflow.monitoring.alerts import dedup_key

    episode_id = record_episode(tmp_path)
    clock = Clock()
    registry = CollectorRegistry()
    registry.register(DriftCollector(tmp_path, MODEL, ttl=10, clock=clock))
    key = dedup_key(MODEL, episode_id)
    series = ("crispflow_drift_episode_windows", (("alias", "champion"), ("dedup_key", key),
                                                  ("severity", "critical"), ("version", "3")))
    assert scrape(registry)[series] == 2.0

    store(tmp_path, T0 + 3 * HOUR, drifted=("a",))  # hot: the episode goes on
    clock.now += 11
    assert scrape(registry)[series] == 3.0
    for hour in (4, 5):  # two cool windows in a row end it
        store(tmp_path, T0 + hour * HOUR)
    clock.now += 11
    assert not [name for name, _ in scrape(registry) if name == "crispflow_drift_episode_windows"]


def test_an_episode_record_the_server_cannot_read_leaves_the_scrape_whole(tmp_path: Path) -> None:
    """A record written under another policy schema (an unknown field) is skipped with a warning: the other drift
    gauges are still exported."""
    from crispflow.monitoring.store import episode_path

    episode_id = record_episode(tmp_path)
    path = episode_path(tmp_path, MODEL, episode_id)
    record = json.loads(path.read_text())
    path.write_text(json.dumps({**record, "policy": {**record["policy"], "from_the_future": 1}}))
    registry = CollectorRegistry()
    registry.register(DriftCollector(tmp_path, MODEL))
    names = {name for name, _ in scrape(registry)}
    assert "crispflow_drift_share" in names and "crispflow_drift_episode_windows" not in names
