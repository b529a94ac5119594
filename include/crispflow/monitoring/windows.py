"""One monitoring window of one served model version: its reference profile from MLflow, its rows from the
prediction log, its drift report, stored (`crispflow.monitoring.store`) and summarised for the sensor and gauges.

- `load_reference_profile(mlf, model, version)`: the profile named by the version's tag
  `crispflow.reference_profile` (an MLflow artifact URI, logged at training time); a version without one, or one
  whose artifact is gone or is not a profile, raises `ReferenceProfileMissing` naming the version and the URI.
- `window_data(predictions, version=, alias=)`: the rows the version answered (`served` and `status == "ok"`;
  shadow rows are never served), features without their `feature.` prefix, scores (the log's `score`), the
  multiclass `probabilities` (a row without them is NaN), and labels (float64) where feedback came.
- `drift_of_window(profile, data)`: `compute_drift` over every row (features and prediction) in the profile's
  task (binary: `score` = P(positive); regression: `score` = the prediction; multiclass: the logged class
  probabilities, so both P(predicted class) and the predicted class are judged); label and performance drift
  from the labelled rows (labels as the task's: 0/1, the observed value, the class code). When every row is
  labelled that is one call (one Benjamini-Hochberg family); otherwise the labelled rows are a second call with
  its own family, and its label/performance findings are merged into the verdict (so the false-alarm bound is
  at most twice `alpha` in that case).
- `judge_window(...)`: all of the above, then `store.write_window` (report JSON + HTML, then the summary); returns
  the summary, the report and its HTML page (rendered once). An empty or tiny window is an explicit
  "insufficient_data" summary, written like any other.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import pandas as pd

from crispflow.lake import PathLike
from crispflow.model.reference_profile import DriftInputError, check_profile, profile_task
from crispflow.monitoring.drift import DriftSettings, compute_drift, label_reason, performance_reason
from crispflow.monitoring.report import render_html
from crispflow.monitoring.store import summarise, window_key, write_window
from crispflow.predictions.schema import FEATURE_PREFIX
from crispflow.predictions.store import display_path, drift_dir

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

REFERENCE_TAG = "crispflow.reference_profile"
TASK_TAG = "crispflow.task"


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
        profile = check_profile(data, origin)
    except DriftInputError as exc:
        raise ReferenceProfileMissing(str(exc)) from None
    tagged = (mv.tags or {}).get(TASK_TAG)
    if tagged and tagged != profile_task(profile):
        raise ReferenceProfileMissing(f"{origin}: task: the profile is for a {profile_task(profile)} model, the "
                                      f"version's tag {TASK_TAG!r} says {tagged!r}")
    return profile


def load_drift_weights(mlf: MlflowClient, model: str, version: str | int,
                       features: Sequence[str]) -> dict[str, float] | None:
    """The feature weights of the version's global explanation (`drift_weights` of the artifact named by tag
    `crispflow.explanations`: permutation importance), restricted to `features`; None (equal weights) for a version
    explained before weights existed, or whose explanation is missing or not JSON (logged: never a failed window;
    an unreachable MLflow raises, and the task is retried)."""
    from crispflow.model.registry import EXPLANATIONS_TAG

    uri = (mlf.get_model_version(model, str(version)).tags or {}).get(EXPLANATIONS_TAG)
    if not uri:
        return None
    try:
        data = json.loads(_artifact_text(mlf, uri))
    except Exception as exc:
        if not (_not_found(exc) or isinstance(exc, json.JSONDecodeError)):
            raise  # an unreachable MLflow: the task is retried, as for the reference profile
        log.warning("%s v%s: drift weights unreadable (%s): equal weights", model, version, type(exc).__name__)
        return None
    weights = data.get("drift_weights") if isinstance(data, dict) else None
    if not isinstance(weights, dict):
        return None
    return chosen_weights(weights, features, f"{model} v{version} drift_weights")


def chosen_weights(weights: Mapping[str, Any], features: Sequence[str], origin: str) -> dict[str, float] | None:
    """The finite weights >= 0 of `features` among `weights`; None if they sum to 0. A weight that is not a real
    number (a bool, a string, null) is a DriftInputError naming `origin` and the feature."""
    wanted = set(features)
    chosen: dict[str, float] = {}
    for feature, weight in weights.items():
        if feature not in wanted:
            continue
        if isinstance(weight, bool) or not isinstance(weight, int | float):
            raise DriftInputError(f"{origin}: {feature}: {weight!r} is not a weight (must be a real number)")
        if math.isfinite(weight) and weight >= 0:
            chosen[feature] = float(weight)
    return chosen if sum(chosen.values()) > 0 else None


# --------------------------------------------------------------------------------------------- the window


@dataclass(frozen=True)
class WindowData:
    """The rows one version answered in a window: features (unprefixed), scores (the log's `score`), labels
    (float64, NaN = no feedback) and, for a multiclass model, the (n, k) class probabilities (NaN rows where the
    log holds none; None when no row has any)."""

    features: pd.DataFrame
    scores: np.ndarray
    labels: np.ndarray
    probabilities: np.ndarray | None = None

    @property
    def rows(self) -> int:
        return len(self.features)

    @property
    def labelled(self) -> np.ndarray:
        return ~np.isnan(self.labels)

    @property
    def labelled_rows(self) -> int:
        return int(self.labelled.sum())

    def output(self, task: str) -> np.ndarray | None:
        """The model's output in `task`'s convention (`compute_drift`'s `scores`), or None if the log has none."""
        out = self.probabilities if task == "multiclass" else self.scores
        return out if out is not None and self.rows and not np.isnan(out).all() else None


def _probabilities(column: pd.Series) -> np.ndarray | None:
    """The logged probability lists as an (n, k) array (NaN rows where missing); None if no row has any."""
    lists = [None if v is None or (isinstance(v, float) and np.isnan(v)) else list(v) for v in column]
    sizes = {len(v) for v in lists if v is not None}
    if not sizes:
        return None
    if len(sizes) > 1:
        raise DriftInputError(f"prediction log: probabilities: rows of one version hold {sorted(sizes)} classes")
    k = sizes.pop()
    return np.array([[np.nan] * k if v is None else v for v in lists], dtype="float64")


def window_data(predictions: pd.DataFrame, *, version: str | int, alias: str | None = None,
                model: str | None = None) -> WindowData:
    """The served, successful rows of `version` (and `alias`, and `model`, if given) in a `read_predictions`
    frame. Version numbers are per model: `model` keeps another model's rows out of a frame that holds several."""
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
    if model is not None and "model" in predictions.columns:
        keep &= (predictions["model"] == model).fillna(False)
    rows = predictions[keep.to_numpy(dtype=bool)]
    columns = [c for c in rows.columns if c.startswith(FEATURE_PREFIX)]
    frame = rows[columns].rename(columns=lambda c: c.removeprefix(FEATURE_PREFIX)).reset_index(drop=True)
    scores = pd.to_numeric(rows["score"], errors="coerce").to_numpy(dtype="float64", na_value=np.nan) \
        if "score" in rows.columns else np.full(len(rows), np.nan)
    labels = pd.to_numeric(rows["label"], errors="coerce").astype("Float64").to_numpy(dtype="float64",
                                                                                     na_value=np.nan) \
        if "label" in rows.columns else np.full(len(rows), np.nan)
    probabilities = _probabilities(rows["probabilities"]) if "probabilities" in rows.columns else None
    return WindowData(frame, scores, labels, probabilities)


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
        reasons.append(label_reason(label, f" ({label['rows']} labelled rows)"))
    for name, metric in ((sub.get("performance") or {}).get("metrics") or {}).items():
        if metric.get("degraded"):
            reasons.append(performance_reason(name, metric))
    return reasons


def drift_of_window(profile: Mapping[str, Any], data: WindowData, *, settings: DriftSettings | None = None,
                    importance: Mapping[str, float] | None = None) -> dict[str, Any]:
    """The drift report of a window (see the module docstring for how labels are used)."""
    settings = settings or DriftSettings()
    profile = check_profile(profile)
    task = profile_task(profile)
    frame, absent = _with_profile_columns(profile, data.features)
    scores = data.output(task)
    k = len(profile.get("classes") or [])
    if scores is not None and task == "multiclass" and scores.shape[1] != k:
        raise DriftInputError(f"prediction log: probabilities hold {scores.shape[1]} classes, the reference "
                              f"profile's model has {k} ({profile['classes']})")
    labels = data.labels.astype(bool) if task == "binary" else data.labels
    labelled = data.labelled
    if data.rows and labelled.all() and scores is not None:
        report = compute_drift(profile, frame, scores=scores, labels=labels, importance=importance, settings=settings)
        report["feedback"] = {"labelled_rows": data.labelled_rows, "family": "joint"}
    else:
        report = compute_drift(profile, frame, scores=scores, importance=importance, settings=settings)
        report["feedback"] = {"labelled_rows": data.labelled_rows, "family": None}
        if scores is not None and data.labelled_rows >= settings.min_rows and report["status"] != "insufficient_data":
            sub = compute_drift(profile, frame[labelled].reset_index(drop=True), scores=scores[labelled],
                                labels=labels[labelled], importance=importance, settings=settings)
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
    data = window_data(predictions, version=version, alias=alias, model=model)
    report = drift_of_window(profile, data, settings=settings, importance=importance)
    report["window"] = {"model": model, "alias": alias, "version": str(version), "start": start.isoformat(),
                        "end": end.isoformat(), "labelled_rows": data.labelled_rows}
    summary = summarise(report, model=model, alias=alias, version=str(version), start=start, end=end,
                        rows=data.rows, labelled_rows=data.labelled_rows,
                        report_path=display_path(report_location(root, model, alias, end)))
    page = render_html(report, title=report_title(model, alias, version, start, end))
    write_window(root, summary, report, page)
    return JudgedWindow(summary, report, page)

