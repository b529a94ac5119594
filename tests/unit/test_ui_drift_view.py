"""The Drift page's data from a real drift store (windows, episodes and alerts written by the monitoring code into
tmp_path, no Airflow): rows per alias, the PSI heatmap of every feature (old summaries included), episodes, alert
digests, the SVG charts, and report files reachable only through validated names."""

from __future__ import annotations

import shutil
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from crispflow.lake import canonical_json, write_atomic
from crispflow.monitoring.alerts import acknowledge, list_alerts, read_alert, send_alert
from crispflow.monitoring.store import read_windows, record_episode, summarise, write_window
from crispflow.predictions.store import drift_dir
from crispflow.ui import NotFound
from crispflow.ui.drift_view import drift_page, heatmap_svg, report_file, share_chart

MODEL = "crispflow-t_ui"
T0 = datetime(2026, 3, 1, tzinfo=UTC)
HOUR = timedelta(hours=1)
EVIL = "<script>alert(1)</script>"
FEATURES = ("int_rate", "annual_inc", EVIL, "grade")
NS = {"s": "http://www.w3.org/2000/svg"}


def window(root: Path, end: datetime, psi: dict[str, float], *, alias: str = "champion", version: str = "3",
           rows: int = 500, legacy: bool = False) -> dict:
    """One window as the monitoring DAG stores it; a feature drifts when its PSI >= 0.2. `legacy`: the summary
    as written before `feature_statistics` existed (drifted features' statistics only)."""
    drifted = [n for n in FEATURES if psi.get(n, 0.0) >= 0.2]
    features = {n: {"kind": "numeric", "test": "ks", "statistic": 0.1, "p_adjusted": 1e-6 if n in drifted else 0.4,
                    "psi": psi.get(n, 0.001), "drifted": n in drifted, "status": "ok"} for n in FEATURES}
    status = "insufficient_data" if rows < 30 else ("drift" if drifted else "no_drift")
    report = {"status": status, "drift": bool(drifted), "drift_share": len(drifted) / len(FEATURES),
              "drifted_features": drifted, "features": features, "prediction": None,
              "settings": {"min_drift_share": 0.1}}
    summary = summarise(report, model=MODEL, alias=alias, version=version, start=end - HOUR, end=end, rows=rows,
                        labelled_rows=0, report_path=f"reports/{alias}/{end:%Y%m%dT%H%M%SZ}/report.json")
    if legacy:
        summary = {k: v for k, v in summary.items() if k not in ("feature_statistics", "min_drift_share")}
    write_window(root, summary, report, f"<html><body>{alias} {end.isoformat()}</body></html>")
    return summary


def episode(root: Path, end: datetime, features: list[str], share: float) -> dict:
    record = {"pipeline": "t_ui", "model": MODEL, "alias": "champion", "episode_id": f"champion-{end:%Y%m%dT%H%M%SZ}",
              "fired_at": (end + HOUR).isoformat(), "fired_by": {"dag_id": "drift_sensor", "run_id": "r"},
              "features": features, "statistics": {f: {"test": "ks", "psi": 0.3} for f in features},
              "windows": [{"window_end": end.isoformat(), "drifted_features": features}],
              "max_drift_share": share, "prediction_drift": False, "versions": ["3"], "new_labels": 0}
    assert record_episode(root, MODEL, record["episode_id"], record)
    return record


@pytest.fixture()
def store(tmp_path: Path) -> Path:
    window(tmp_path, T0 + HOUR, {"int_rate": 0.05}, legacy=True)  # old summary, nothing drifted
    window(tmp_path, T0 + 2 * HOUR, {"int_rate": 0.3}, legacy=True)  # old summary, int_rate drifted
    window(tmp_path, T0 + 3 * HOUR, {"int_rate": 0.4, EVIL: 0.25})
    window(tmp_path, T0 + 4 * HOUR, {}, rows=10)  # insufficient data
    window(tmp_path, T0 + 5 * HOUR, {"annual_inc": 0.15})
    window(tmp_path, T0 + 3 * HOUR, {"grade": 0.5}, alias="canary", version="4")
    window(tmp_path, T0 + 5 * HOUR, {}, alias="canary", version="4")
    first = episode(tmp_path, T0 + 2 * HOUR, ["int_rate"], 0.25)
    second = episode(tmp_path, T0 + 3 * HOUR, ["int_rate", EVIL], 0.5)
    delivered: list[str] = []
    for record in (first, second):
        result = send_alert(tmp_path, record, [{"kind": "webhook", "conn_id": "hook"}],
                            by={"dag_id": "drift_sensor", "run_id": record["episode_id"]},
                            deliver=lambda ch, d: delivered.append(d["dedup_key"]), connection_exists=lambda c: True)
        assert result["sent"] == ["webhook:hook"]
    acknowledge(tmp_path, MODEL, f"{MODEL}.{first['episode_id']}", "ana")
    assert len(delivered) == 2
    return tmp_path


def test_summaries_keep_the_statistics_of_every_feature(store: Path) -> None:
    newest = read_windows(store, MODEL)[-1]
    assert sorted(newest["feature_statistics"]) == sorted(FEATURES)
    assert newest["feature_statistics"]["annual_inc"] == {"test": "ks", "statistic": 0.1, "p_adjusted": 0.4,
                                                          "psi": 0.15, "drifted": False}
    assert newest["statistics"] == {} and newest["min_drift_share"] == 0.1  # drifted-only, as the sensor reads it


def test_drift_page_rows_per_alias_heatmap_episodes_and_alerts(store: Path) -> None:
    page = drift_page(store, MODEL)
    assert page["model"] == MODEL and list(page["aliases"]) == ["champion", "canary"]
    champion = page["aliases"]["champion"]
    assert [r["window_key"] for r in champion] == [f"20260301T0{h}0000Z" for h in range(1, 6)]
    assert [r["status"] for r in champion] == ["no_drift", "drift", "drift", "insufficient_data", "no_drift"]
    assert champion[2] | {"window_start": None} == {
        "window_start": None, "window_end": (T0 + 3 * HOUR).isoformat(), "window_key": "20260301T030000Z",
        "version": "3", "rows": 500, "labelled_rows": 0, "status": "drift", "drift": True, "drift_share": 0.5,
        "drifted_features": ["int_rate", EVIL], "prediction_drift": False}
    assert [r["version"] for r in page["aliases"]["canary"]] == ["4", "4"]
    assert page["min_drift_share"] == 0.1

    h = page["heatmap"]
    assert h["alias"] == "champion" and h["windows"] == [r["window_key"] for r in champion]
    # most drifted windows first, then the largest PSI, then the name
    assert h["features"] == ["int_rate", EVIL, "annual_inc", "grade"]
    psi = dict(zip(h["features"], h["psi"], strict=True))
    drifted = dict(zip(h["features"], h["drifted"], strict=True))
    # legacy windows (first two) kept only drifted features: the rest is missing
    assert psi["int_rate"] == [None, 0.3, 0.4, 0.001, 0.001]
    assert drifted["int_rate"] == [False, True, True, False, False]
    assert psi["annual_inc"] == [None, None, 0.001, 0.001, 0.15] and not any(drifted["annual_inc"])
    assert drifted[EVIL] == [False, False, True, False, False]

    episodes = page["episodes"]
    assert [e["episode_id"] for e in episodes] == ["champion-20260301T030000Z", "champion-20260301T020000Z"]
    assert episodes[0]["features"] == ["int_rate", EVIL] and episodes[0]["windows"] == 1
    assert episodes[0]["retrain_run_id"] == f"drift__{MODEL}__champion-20260301T030000Z"
    alerts = page["alerts"]
    assert [a["key"] for a in alerts] == [f"{MODEL}.champion-20260301T030000Z", f"{MODEL}.champion-20260301T020000Z"]
    assert [a["severity"] for a in alerts] == ["critical", "high"]
    assert alerts[0]["acknowledged"] is False and alerts[0]["acknowledged_by"] is None
    assert alerts[0]["acknowledged_at"] is None and alerts[0]["sent"] == ["webhook:hook"]
    assert alerts[1]["acknowledged_by"] == "ana" and alerts[1]["acknowledged_at"] and alerts[1]["pipeline"] == "t_ui"
    assert alerts[1]["episode_id"] == "champion-20260301T020000Z" and alerts[1]["opened"]
    assert [a["dedup_key"] for a in list_alerts(store, MODEL)] == [a["key"] for a in reversed(alerts)]


def test_drift_page_limits_windows_and_reads_summaries_only(store: Path) -> None:
    page = drift_page(store, MODEL, last=2)
    assert [len(rows) for rows in page["aliases"].values()] == [2, 2]
    assert page["heatmap"]["windows"] == ["20260301T040000Z", "20260301T050000Z"]
    shutil.rmtree(drift_dir(store, MODEL) / "reports")  # the page never opens a full report
    assert drift_page(store, MODEL) == drift_page(store, MODEL, last=1000)
    assert drift_page(store, "crispflow-other") == {"model": "crispflow-other", "aliases": {}, "heatmap": {
        "alias": None, "features": [], "windows": [], "window_ends": [], "psi": [], "drifted": []},
        "min_drift_share": None, "episodes": [], "alerts": []}
    heat = ET.fromstring(heatmap_svg(drift_page(store, "crispflow-other")))
    assert not heat.findall("s:rect[@data-row]", NS)
    for bad in ("../etc", "/abs", ".hidden", "a/b"):
        with pytest.raises(NotFound):
            drift_page(store, bad)


def test_charts_of_the_page_are_escaped_svg_with_a_cell_per_feature_and_window(store: Path) -> None:
    page = drift_page(store, MODEL)
    heat = heatmap_svg(page)
    assert "<script" not in heat and heat == heatmap_svg(drift_page(store, MODEL))
    root = ET.fromstring(heat)
    cells = root.findall("s:rect[@data-row]", NS)
    assert len(cells) == 4 * 5
    assert len([c for c in cells if "drifted" in c.get("class")]) == 3  # int_rate in windows 2 and 3, EVIL in 3
    assert len(root.findall("s:circle[@class='mark']", NS)) == 3
    assert len([c for c in cells if "missing" in c.get("class")]) == 4 + 3  # legacy windows' undrifted features
    chart = ET.fromstring(share_chart(page))
    series = chart.findall("s:g[@class='series']", NS)
    assert len(series) == 2  # champion, canary
    # the insufficient-data window (4th) is a gap: 4 points, a line through the first three, the 5th on its own
    assert len(series[0].findall("s:circle", NS)) == 4 and len(series[0].findall("s:polyline", NS)) == 1
    assert len(series[0].find("s:polyline", NS).get("points").split()) == 3
    assert chart.find("s:line[@class='threshold']", NS) is not None


def test_report_file_serves_stored_reports_and_refuses_anything_else(store: Path) -> None:
    html = report_file(store, MODEL, "champion", "20260301T030000Z", "html")
    assert Path(html).read_text() == f"<html><body>champion {(T0 + 3 * HOUR).isoformat()}</body></html>"
    assert Path(report_file(store, MODEL, "canary", "20260301T050000Z", "json")).name == "report.json"
    good = {"model": MODEL, "alias": "champion", "window_key": "20260301T030000Z", "kind": "html"}
    bad = {
        "model": ["../" + MODEL, "/etc", "%2e%2e", "..", ""],
        "alias": ["../champion", "..", "%2e%2e", "/etc", "champion/../canary", "Champion", "champion\n", "a" * 33, ""],
        "window_key": ["../../../../etc/passwd", "%2e%2e%2f", "/etc/passwd", "20260301T030000Z/../x",
                       "20260301T030000Z\n", "20261399T999999Z", "2026-03-01T03:00:00Z", str(store), ""],
        "kind": ["pdf", "../report.json", "HTML"],
    }
    for field, values in bad.items():
        for value in values:
            with pytest.raises(NotFound):
                report_file(store, **(good | {field: value}))
    with pytest.raises(NotFound, match="no html report"):  # well-formed but not stored
        report_file(store, MODEL, "shadow", "20260301T030000Z", "html")
    with pytest.raises(NotFound):
        report_file(store, MODEL, "champion", "20260301T060000Z", "json")


def test_an_acknowledgement_claimed_but_not_yet_recorded_shows_as_acknowledged(store: Path) -> None:
    key = f"{MODEL}.champion-20260301T030000Z"
    # the acknowledging task claimed the alert (its marker, as `acknowledge` writes it) and stopped before
    # recording it in the alert's state
    marker = drift_dir(store, MODEL) / "alerts" / f"{key}.acknowledged"
    write_atomic(marker, canonical_json({"by": "bob", "at": "2026-03-01T05:00:00+00:00", "note": "on it",
                                         "ref": "t9"}))
    assert read_alert(store, MODEL, key)["acknowledged"] is False
    shown = drift_page(store, MODEL)["alerts"][0]
    assert (shown["key"], shown["acknowledged"], shown["acknowledged_by"], shown["acknowledged_note"]) == (
        key, True, "bob", "on it")
    acknowledge(store, MODEL, key, "bob", ref="t9")  # its retry records it
    assert read_alert(store, MODEL, key)["acknowledged_by"] == "bob"
    assert drift_page(store, MODEL)["alerts"][0] == shown
