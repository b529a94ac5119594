"""The drift-monitoring store, next to the prediction log: one full report per window and alias, one small summary
per window (what the DriftSensor reads), and the sensor's records of drift episodes and retrains.

Layout under `<predictions root>/<model>/drift/` (window ends formatted `%Y%m%dT%H%M%SZ`, so names sort by time):

    reports/<alias>/<window_end>/report.json, report.html   the full report (per-feature statistics and plots)
    windows/<window_end>-<alias>.json                        the summary of that window (see `summarise`)
    alerts/<dedup key>.json                                  the alert of an episode (`crispflow.monitoring.alerts`)
    episodes/<episode_id>.json                               a drift episode that fired a retrain (written once)

Every file is written atomically (write-then-rename locally, one PUT on S3); episode records are created
exclusively, so two sensors can never fire the same episode twice. Roots are path-likes: pathlib.Path, UPath or
Airflow's ObjectStoragePath (`crispflow.predictions.store.root_of(url)` for a URL string).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from crispflow.lake import PathLike, canonical_json, create_exclusive, fresh_listing, json_safe, write_atomic
from crispflow.predictions.store import drift_dir

WINDOW_FORMAT = "%Y%m%dT%H%M%SZ"


def window_key(end: datetime) -> str:
    """A window's name: its end in UTC, sortable as text."""
    if end.tzinfo is None:
        raise ValueError(f"window end must be timezone-aware, got {end.isoformat()}")
    return end.astimezone(UTC).strftime(WINDOW_FORMAT)


STATISTICS = ("test", "statistic", "p_adjusted", "psi")


def summarise(report: Mapping[str, Any], *, model: str, alias: str, version: str, start: datetime, end: datetime,
              rows: int, labelled_rows: int, report_path: str) -> dict[str, Any]:
    """The few fields the sensor, the gauges and the UI need from a drift report (`compute_drift`'s output).

    `statistics` holds the drifted features only (what episodes and alerts quote, full precision);
    `feature_statistics` holds every feature of the window (test, statistic, p_adjusted, psi, drifted; numbers to
    6 significant digits: the report keeps the exact ones), so a features x windows view needs no full report.
    Summaries written before `feature_statistics` existed lack it (and `min_drift_share`): readers treat the
    statistics of the features they do not name as missing.
    """
    features = report.get("features", {})
    drifted = list(report.get("drifted_features", []))
    return json_safe({
        "model": model, "alias": alias, "version": str(version),
        "window_start": start.astimezone(UTC).isoformat(), "window_end": end.astimezone(UTC).isoformat(),
        "rows": rows, "labelled_rows": labelled_rows,
        "status": report.get("status"), "drift": bool(report.get("drift")),
        "drift_share": float(report.get("drift_share") or 0.0), "drifted_features": drifted,
        "min_drift_share": (report.get("settings") or {}).get("min_drift_share"),
        "statistics": {name: {k: features[name].get(k) for k in STATISTICS}
                       for name in drifted if name in features},
        "feature_statistics": {name: {**{k: _short(stats.get(k)) for k in STATISTICS},
                                      "drifted": bool(stats.get("drifted"))}
                               for name, stats in features.items() if isinstance(stats, Mapping)},
        "prediction_drift": any(bool((report.get(k) or {}).get("drifted")) for k in ("prediction", "predicted_class")),
        "report": report_path,
    })


def _short(value: Any) -> Any:
    """A float to 6 significant digits (a summary for display); anything else as it is."""
    if isinstance(value, float) and math.isfinite(value):
        return float(f"{value:.6g}")
    return value


def write_window(root: PathLike, summary: Mapping[str, Any], report: Mapping[str, Any], html: str) -> dict[str, str]:
    """Store a window's full report (JSON + HTML) and then its summary (the summary last: readers of summaries
    always find the report). Rewriting the same window replaces it with the same content."""
    end = datetime.fromisoformat(summary["window_end"])
    key, alias = window_key(end), summary["alias"]
    base = drift_dir(root, summary["model"])
    folder = base / "reports" / alias / key
    write_atomic(folder / "report.json", json.dumps(json_safe(dict(report)), indent=2, default=str).encode())
    write_atomic(folder / "report.html", html.encode())
    write_atomic(base / "windows" / f"{key}-{alias}.json", canonical_json(dict(summary)))
    return {"json": str(folder / "report.json"), "html": str(folder / "report.html"),
            "summary": str(base / "windows" / f"{key}-{alias}.json")}


def read_windows(root: PathLike, model: str, *, alias: str | None = "champion",
                 last: int | None = None) -> list[dict[str, Any]]:
    """Window summaries of `model` (one alias, or all with None), oldest first; the newest `last` if given."""
    folder = fresh_listing(drift_dir(root, model) / "windows")
    if not folder.exists():
        return []
    names = sorted(p.name for p in folder.iterdir() if p.name.endswith(".json") and not p.name.startswith("."))
    if alias is not None:
        names = [n for n in names if n.removesuffix(".json").split("-", 1)[1] == alias]
    if last is not None:
        names = names[-last:] if last > 0 else []
    return [json.loads((folder / n).read_bytes()) for n in names]


def read_windows_by_alias(root: PathLike, model: str, *, last: int | None = None) -> dict[str, list[dict[str, Any]]]:
    """Window summaries of `model` per alias (aliases sorted by name), oldest first; the newest `last` of each if
    given. One listing of the store, whatever the number of aliases."""
    folder = fresh_listing(drift_dir(root, model) / "windows")
    if not folder.exists():
        return {}
    names: dict[str, list[str]] = {}
    for name in sorted(p.name for p in folder.iterdir() if p.name.endswith(".json") and not p.name.startswith(".")):
        _, sep, alias = name.removesuffix(".json").partition("-")
        if sep and alias:
            names.setdefault(alias, []).append(name)
    if last is not None:
        names = {a: (n[-last:] if last > 0 else []) for a, n in names.items()}
    return {alias: [json.loads((folder / n).read_bytes()) for n in names[alias]] for alias in sorted(names)}


def episode_path(root: PathLike, model: str, episode_id: str) -> PathLike:
    return drift_dir(root, model) / "episodes" / f"{episode_id}.json"


def record_episode(root: PathLike, model: str, episode_id: str, record: Mapping[str, Any]) -> bool:
    """Record that `episode_id` fired a retrain; True only for the one caller that created the record."""
    return create_exclusive(episode_path(root, model, episode_id), canonical_json(json_safe(dict(record))))


def read_episode(root: PathLike, model: str, episode_id: str) -> dict[str, Any] | None:
    """The stored record of an episode, or None."""
    path = episode_path(root, model, episode_id)
    return json.loads(path.read_bytes()) if path.exists() else None


def claim_episode(root: PathLike, model: str, record: Mapping[str, Any]) -> dict[str, Any]:
    """The stored record of `record`'s episode: `record` itself if this call created it, else the one stored
    earlier (by another sensor, or by a previous try of this one; its `fired_by` says which). {} if it vanished."""
    if record_episode(root, model, record["episode_id"], record):
        return dict(record)
    return read_episode(root, model, record["episode_id"]) or {}


def read_episodes(root: PathLike, model: str) -> list[dict[str, Any]]:
    """Every recorded episode of `model`, oldest first (by its `fired_at`)."""
    folder = fresh_listing(drift_dir(root, model) / "episodes")
    if not folder.exists():
        return []
    records = [json.loads(p.read_bytes()) for p in folder.iterdir()
               if p.name.endswith(".json") and not p.name.startswith(".")]
    return sorted(records, key=lambda r: r.get("fired_at", ""))
