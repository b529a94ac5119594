"""Monitor a served model: judge each serving alias's traffic in a window against its version's reference profile.

`monitor(...)` is the whole monitoring step of one window: the registry's aliases, the logged predictions, each
version's reference profile, `crispflow.monitoring.windows.judge_window` (report JSON + HTML and the summary next
to the prediction log), and the report as artifacts `drift/<window_key>-<alias>.json|.html` of the version's
MLflow run. `window_length` checks a run's request (ParamsError names the field); the drift settings come from the
spec (`DriftSettings.of_spec`, tighten-only overrides).
Cheap to import: the numerical modules are imported when a window is judged.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from crispflow.errors import GateMisconfigured, ParamsError
from crispflow.lake import PathLike

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from crispflow.monitoring.drift import DriftSettings

MONITORED_ALIASES = ("champion", "canary")
MAX_WINDOW_MINUTES = 7 * 24 * 60

log = logging.getLogger(__name__)


class ReferenceProfilesMissing(GateMisconfigured):
    """A served version has no reference profile: a misconfiguration, raised after the other aliases are stored."""


def window_length(window_minutes: Any) -> timedelta | None:
    """The requested window length (an integer number of minutes, also as text), or None for the run's interval."""
    minutes = window_minutes
    if minutes in (None, ""):
        return None
    if isinstance(minutes, str) and minutes.strip().isdigit():
        minutes = int(minutes)
    if isinstance(minutes, bool) or not isinstance(minutes, int) or not 1 <= minutes <= MAX_WINDOW_MINUTES:
        raise ParamsError(f"window_minutes: must be an integer in [1, {MAX_WINDOW_MINUTES}] or null, "
                          f"got {window_minutes!r}")
    return timedelta(minutes=minutes)


def monitor(mlf: MlflowClient, root: PathLike, model: str, *, start: datetime, end: datetime,
            settings: DriftSettings | None = None, aliases: Sequence[str] = MONITORED_ALIASES) -> dict[str, Any]:
    """Judge and store [start, end) for every alias in `aliases` that is set; returns the summaries (small).

    No champion: nothing is served, nothing is judged. A version without a reference profile raises
    `ReferenceProfilesMissing` after the other aliases are stored.
    """
    from crispflow.monitoring.report import render_json
    from crispflow.monitoring.store import window_key
    from crispflow.monitoring.windows import (
        ReferenceProfileMissing,
        judge_window,
        load_drift_weights,
        load_reference_profile,
    )
    from crispflow.predictions.reader import read_predictions
    from crispflow.predictions.store import display_path
    from crispflow.release import promotion

    state = promotion.registry_state(mlf, model)
    out: dict[str, Any] = {"model": model, "window_start": start.isoformat(), "window_end": end.isoformat(),
                           "summaries": []}
    if not state.get("champion"):
        log.info("%s has no champion: nothing is served, nothing to monitor", model)
        return out
    predictions = read_predictions(root, model, start, end)
    log.info("%s: %d logged predictions in [%s, %s)", model, len(predictions), start, end)
    missing: list[str] = []
    for alias, version in [(alias, state[alias]) for alias in aliases if state.get(alias)]:
        try:
            profile = load_reference_profile(mlf, model, version)
        except ReferenceProfileMissing as exc:
            log.error("%s: %s", alias, exc)
            missing.append(f"{alias}: {exc}")
            continue
        weights = load_drift_weights(mlf, model, version, list(profile["features"]))  # None: equal weights
        judged = judge_window(profile, predictions, root=root, model=model, alias=alias, version=version,
                              start=start, end=end, settings=settings, importance=weights)
        summary, report = judged.summary, judged.report
        stem = f"drift/{window_key(end)}-{alias}"
        run_id = mlf.get_model_version(model, version).run_id
        mlf.log_text(run_id, render_json(report), f"{stem}.json")
        mlf.log_text(run_id, judged.html, f"{stem}.html")
        log.info("%s %s v%s: %s on %d rows (drift share %.3f) %s", model, alias, version, summary["status"],
                 summary["rows"], summary["drift_share"], "; ".join(report.get("reasons") or []))
        small = {k: v for k, v in summary.items() if k != "feature_statistics"}  # XCom stays small: drifted only
        out["summaries"].append({**small, "mlflow_artifact": f"runs:/{run_id}/{stem}.json"})
    out["store"] = display_path(root)
    if missing:
        raise ReferenceProfilesMissing("drift cannot be judged without a reference profile (other aliases were "
                                       "stored): " + " | ".join(missing))
    return out
