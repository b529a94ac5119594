"""One monitoring window of one served model version: its reference profile from MLflow, its rows from the
prediction log, its drift report, stored (`crispflow.monitoring.store`) and summarised for the sensor and gauges.

- `load_reference_profile(mlf, model, version)`: the profile named by the version's tag
  `crispflow.reference_profile` (an MLflow artifact URI, logged at training time); a version without one, or one
  whose artifact is gone or is not a profile, raises `ReferenceProfileMissing` naming the version and the URI.
- `window_data(predictions, version=, alias=)`: the rows the version answered (`served` and `status == "ok"`;
  shadow rows are never served), features without their `feature.` prefix, scores, and labels where feedback came.
- `drift_of_window(profile, data)`: `compute_drift` over every row (features and prediction); label and
  performance drift from the labelled rows. When every row is labelled that is one call (one Benjamini-Hochberg
  family); otherwise the labelled rows are a second call with its own family, and its label/performance
  findings are merged into the verdict (so the false-alarm bound is at most twice `alpha` in that case).
- `judge_window(...)`: all of the above, then `store.write_window` (report JSON + HTML, then the summary); returns
  the summary, the report and its HTML page (rendered once). An empty or tiny window is an explicit
  "insufficient_data" summary, written like any other.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import pandas as pd

from crispflow.lake import PathLike
from crispflow.model.reference_profile import DriftInputError, check_profile
from crispflow.monitoring.drift import DriftSettings, compute_drift
from crispflow.monitoring.report import render_html
from crispflow.monitoring.store import summarise, window_key, write_window
from crispflow.predictions.schema import FEATURE_PREFIX
from crispflow.predictions.store import display_path, drift_dir

if TYPE_CHECKING:
    from mlflow import MlflowClient

REFERENCE_TAG = "crispflow.reference_profile"


class ReferenceProfileMissing(DriftInputError):
    """A model version has no readable reference profile: drift cannot be judged until one is logged."""


# --------------------------------------------------------------------------------------------- the reference


def _artifact_text(mlf: MlflowClient, uri: str) -> str:
    """The text of an artifact URI, through `mlf`'s own tracking server for `runs:/<run_id>/<path>`."""
    import tempfile
    from pathlib import Path

    if uri.startswith("runs:/"):
        run_id, _, path = uri.removeprefix("runs:/").partition("/")
        with tempfile.TemporaryDirectory(prefix="crispflow-profile-") as tmp:
            return Path(mlf.download_artifacts(run_id, path, tmp)).read_text()
    import mlflow.artifacts

    return mlflow.artifacts.load_text(uri)


def _not_found(exc: Exception) -> bool:
    """An artifact that is not there (as opposed to a server that is unavailable: that is retried)."""
    from mlflow.exceptions import MlflowException

    if isinstance(exc, FileNotFoundError | IsADirectoryError):
        return True
    if isinstance(exc, MlflowException):
        return exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND") or \
            "404" in str(exc) or "No such file" in str(exc)
    return False


def load_reference_profile(mlf: MlflowClient, model: str, version: str | int) -> dict[str, Any]:
    """The checked reference profile of `model` v`version` (see the module docstring); ReferenceProfileMissing
    if the version has none. An unreachable MLflow raises MLflow's own error (transient: retry)."""
    mv = mlf.get_model_version(model, str(version))
    uri = (mv.tags or {}).get(REFERENCE_TAG)
    if not uri:
        raise ReferenceProfileMissing(
            f"{model} v{version}: no tag {REFERENCE_TAG!r}: the version was registered without a reference "
            "profile (retrain it, or log `build_profile(...)` of its training data and set the tag to its URI)")
    origin = f"{model} v{version} reference profile ({uri})"
    try:
        text = _artifact_text(mlf, uri)
    except Exception as exc:
        if _not_found(exc):
            raise ReferenceProfileMissing(f"{origin}: the artifact cannot be found: {exc}") from exc
        raise
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ReferenceProfileMissing(f"{origin}: not JSON: {exc}") from None
    try:
        return check_profile(data, origin)
    except DriftInputError as exc:
        raise ReferenceProfileMissing(str(exc)) from None


# --------------------------------------------------------------------------------------------- the window


@dataclass(frozen=True)
class WindowData:
    """The rows one version answered in a window: features (unprefixed), scores, labels (NaN = no feedback)."""

    features: pd.DataFrame
    scores: np.ndarray
    labels: np.ndarray

    @property
    def rows(self) -> int:
        return len(self.features)

    @property
    def labelled(self) -> np.ndarray:
        return ~np.isnan(self.labels)

    @property
    def labelled_rows(self) -> int:
        return int(self.labelled.sum())


def window_data(predictions: pd.DataFrame, *, version: str | int, alias: str | None = None) -> WindowData:
    """The served, successful rows of `version` (and `alias`, if given) in a `read_predictions` frame."""
    required = ("version", "served", "status")
    absent = [c for c in (*required, *(("alias",) if alias is not None else ())) if c not in predictions.columns]
    if absent and len(predictions):
        raise DriftInputError(f"prediction log: missing column(s) {absent}")
    if len(predictions) == 0:
        return WindowData(pd.DataFrame(index=pd.RangeIndex(0)), np.empty(0), np.empty(0))
    keep = (predictions["version"].astype("string") == str(version)).fillna(False)
    keep &= predictions["served"].fillna(False).astype(bool)
    keep &= (predictions["status"] == "ok").fillna(False)
    if alias is not None:
        keep &= (predictions["alias"] == alias).fillna(False)
    rows = predictions[keep.to_numpy(dtype=bool)]
    columns = [c for c in rows.columns if c.startswith(FEATURE_PREFIX)]
    frame = rows[columns].rename(columns=lambda c: c.removeprefix(FEATURE_PREFIX)).reset_index(drop=True)
    scores = pd.to_numeric(rows["score"], errors="coerce").to_numpy(dtype="float64", na_value=np.nan) \
        if "score" in rows.columns else np.full(len(rows), np.nan)
    labels = rows["label"].astype("Float64").to_numpy(dtype="float64", na_value=np.nan) \
        if "label" in rows.columns else np.full(len(rows), np.nan)
    return WindowData(frame, scores, labels)


def _with_profile_columns(profile: Mapping[str, Any], frame: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """The frame with every profiled feature: one that no logged request carried is all-missing (and the
    missing-rate test judges it), not an error."""
    absent = [name for name in profile["features"] if name not in frame.columns]
    if absent and len(frame):
        frame = frame.assign(**{name: pd.Series(np.nan, index=frame.index, dtype="float64") for name in absent})
    return frame, absent


def _labelled_findings(sub: Mapping[str, Any]) -> list[str]:
    reasons: list[str] = []
    label = sub.get("label") or {}
    if label.get("drifted"):
        reasons.append(f"label rate {label['reference_rate']:.3f} -> {label['current_rate']:.3f} "
                       f"({label['rows']} labelled rows)")
    for name, metric in ((sub.get("performance") or {}).get("metrics") or {}).items():
        if metric.get("degraded"):
            reasons.append(f"{name} degraded: {metric['reference']:.3f} -> {metric['current']:.3f}")
    return reasons


def drift_of_window(profile: Mapping[str, Any], data: WindowData, *, settings: DriftSettings | None = None,
                    importance: Mapping[str, float] | None = None) -> dict[str, Any]:
    """The drift report of a window (see the module docstring for how labels are used)."""
    settings = settings or DriftSettings()
    profile = check_profile(profile)
    frame, absent = _with_profile_columns(profile, data.features)
    scores = data.scores if data.rows and not np.isnan(data.scores).all() else None
    labelled = data.labelled
    if data.rows and labelled.all() and scores is not None:
        report = compute_drift(profile, frame, scores=scores, labels=data.labels.astype(bool),
                               importance=importance, settings=settings)
        report["feedback"] = {"labelled_rows": data.labelled_rows, "family": "joint"}
    else:
        report = compute_drift(profile, frame, scores=scores, importance=importance, settings=settings)
        report["feedback"] = {"labelled_rows": data.labelled_rows, "family": None}
        if scores is not None and data.labelled_rows >= settings.min_rows and report["status"] != "insufficient_data":
            sub = compute_drift(profile, frame[labelled].reset_index(drop=True), scores=scores[labelled],
                                labels=data.labels[labelled].astype(bool), importance=importance, settings=settings)
            report["label"], report["performance"] = sub["label"], sub["performance"]
            report["feedback"]["family"] = "labelled_rows"
            findings = _labelled_findings(sub)
            if findings:
                report["reasons"] = [*report["reasons"], *findings]
                report["drift"], report["status"] = True, "drift"
    if absent and data.rows:
        report["notes"] = [*report.get("notes", []),
                           f"no logged request carried feature(s) {absent}: judged as all missing"]
    return report


# --------------------------------------------------------------------------------------------- one window, stored


def report_location(root: PathLike, model: str, alias: str, end: datetime) -> PathLike:
    """Where `store.write_window` puts a window's report.json (its documented layout)."""
    return drift_dir(root, model) / "reports" / alias / window_key(end) / "report.json"


def report_title(model: str, alias: str, version: str | int, start: datetime, end: datetime) -> str:
    return f"Drift of {model} {alias} v{version}: {start:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M} UTC"


class JudgedWindow(NamedTuple):
    """A stored window: its summary, its full report and the report's HTML page."""

    summary: dict[str, Any]
    report: dict[str, Any]
    html: str


def judge_window(profile: Mapping[str, Any], predictions: pd.DataFrame, *, root: PathLike, model: str, alias: str,
                 version: str | int, start: datetime, end: datetime, settings: DriftSettings | None = None,
                 importance: Mapping[str, float] | None = None) -> JudgedWindow:
    """Drift of `alias` v`version` over [start, end) of `predictions`, stored under `root`.

    Safe to run twice (the same window is rewritten with the same content) and concurrently for other windows
    or aliases (every file is written atomically under its own name).
    """
    if not (isinstance(start, datetime) and isinstance(end, datetime)) or start.tzinfo is None \
            or end.tzinfo is None or not start < end:
        raise DriftInputError(f"window: start ({start!r}) and end ({end!r}) must be timezone-aware, start < end")
    data = window_data(predictions, version=version, alias=alias)
    report = drift_of_window(profile, data, settings=settings, importance=importance)
    report["window"] = {"model": model, "alias": alias, "version": str(version), "start": start.isoformat(),
                        "end": end.isoformat(), "labelled_rows": data.labelled_rows}
    summary = summarise(report, model=model, alias=alias, version=str(version), start=start, end=end,
                        rows=data.rows, labelled_rows=data.labelled_rows,
                        report_path=display_path(report_location(root, model, alias, end)))
    page = render_html(report, title=report_title(model, alias, version, start, end))
    write_window(root, summary, report, page)
    return JudgedWindow(summary, report, page)

