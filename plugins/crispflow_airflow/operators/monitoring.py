"""Drift monitoring: judge each served version's traffic in a window against that version's reference profile."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from crispflow_airflow.context import run_window
from crispflow_airflow.exceptions import GateConfigurationError, InvalidRequest

if TYPE_CHECKING:
    from airflow.sdk import Context

MONITORED_ALIASES = ("champion", "canary")
MAX_WINDOW_MINUTES = 7 * 24 * 60


class DriftMonitorOperator(BaseOperator):
    """Compute drift for the champion and the live canary (if any) over the run's window of the prediction log.

    The window is the run's data interval; for runs without one, or when `window_minutes` is given, the
    `window_minutes` (default 60) before the interval's end (or `run_after`). For each alias: the version's
    reference profile from MLflow, `crispflow.monitoring.windows.run_window` (report JSON + HTML and the summary
    next to the prediction log), and the report as artifacts `drift/<window_key>-<alias>.json|.html` of the
    version's run. An empty window is an explicit "insufficient_data" summary. No champion yet: nothing to do.
    A version without a reference profile fails the task (GateConfigurationError, not retried) after the other
    aliases are stored. Returns the summaries (small) as XCom.

    :param pipeline: pipeline spec name (templated)
    :param window_minutes: length of the window for manual runs, or None for the data interval (templated)
    :param settings: overrides of `crispflow.monitoring.DriftSettings` fields (templated)
    :param aliases: the serving aliases to judge
    """

    template_fields: Sequence[str] = ("pipeline", "window_minutes", "settings")
    ui_color = "#e3f2fd"

    def __init__(self, *, pipeline: str, window_minutes: Any = None, settings: Mapping[str, Any] | None = None,
                 aliases: Sequence[str] = MONITORED_ALIASES, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pipeline = pipeline
        self.window_minutes = window_minutes
        self.settings = settings
        self.aliases = tuple(aliases)

    def _drift_settings(self) -> Any:
        from crispflow.monitoring import DriftInputError, DriftSettings

        overrides = self.settings or {}
        if not isinstance(overrides, Mapping):
            raise InvalidRequest(f"invalid request: settings: must be an object, got {type(overrides).__name__}")
        try:
            return DriftSettings(**dict(overrides))
        except TypeError as exc:
            raise InvalidRequest(f"invalid request: settings: {exc}") from None
        except DriftInputError as exc:
            raise InvalidRequest(f"invalid request: {exc}") from None

    def _window(self, context: Context) -> tuple[Any, Any]:
        minutes = self.window_minutes
        if minutes in (None, ""):
            return run_window(context, timedelta(hours=1))
        if isinstance(minutes, str) and minutes.strip().isdigit():
            minutes = int(minutes)
        if isinstance(minutes, bool) or not isinstance(minutes, int) or not 1 <= minutes <= MAX_WINDOW_MINUTES:
            raise InvalidRequest(f"invalid request: window_minutes: must be an integer in [1, {MAX_WINDOW_MINUTES}]"
                                 f" or null, got {self.window_minutes!r}")
        _, end = run_window(context, timedelta(minutes=minutes))
        return end - timedelta(minutes=minutes), end

    def execute(self, context: Context) -> dict[str, Any]:
        from crispflow.model.registry import model_name
        from crispflow.monitoring.report import render_html, render_json
        from crispflow.monitoring.store import window_key
        from crispflow.monitoring.windows import ReferenceProfileMissing, load_reference_profile, report_title
        from crispflow.monitoring.windows import run_window as drift_window
        from crispflow.predictions.reader import read_predictions
        from crispflow.predictions.store import display_path
        from crispflow.release import promotion
        from crispflow_airflow.hooks.mlflow import MlflowHook
        from crispflow_airflow.hooks.predictions import PredictionStoreHook

        settings = self._drift_settings()
        start, end = self._window(context)
        model = model_name(str(self.pipeline))
        mlf = MlflowHook().get_client()
        state = promotion.registry_state(mlf, model)
        targets = [(alias, state[alias]) for alias in self.aliases if state.get(alias)]
        out: dict[str, Any] = {"model": model, "window_start": start.isoformat(), "window_end": end.isoformat(),
                               "summaries": []}
        if not state.get("champion"):
            self.log.info("%s has no champion: nothing is served, nothing to monitor", model)
            return out
        root = PredictionStoreHook().get_root()
        predictions = read_predictions(root, model, start, end)
        self.log.info("%s: %d logged predictions in [%s, %s)", model, len(predictions), start, end)
        missing: list[str] = []
        for alias, version in targets:
            try:
                profile = load_reference_profile(mlf, model, version)
            except ReferenceProfileMissing as exc:
                self.log.error("%s: %s", alias, exc)
                missing.append(f"{alias}: {exc}")
                continue
            summary, report = drift_window(profile, predictions, root=root, model=model, alias=alias,
                                           version=version, start=start, end=end, settings=settings)
            stem = f"drift/{window_key(end)}-{alias}"
            run_id = mlf.get_model_version(model, version).run_id
            mlf.log_text(run_id, render_json(report), f"{stem}.json")
            title = report_title(model, alias, version, start, end)
            mlf.log_text(run_id, render_html(report, title=title), f"{stem}.html")
            self.log.info("%s %s v%s: %s on %d rows (drift share %.3f) %s", model, alias, version, summary["status"],
                          summary["rows"], summary["drift_share"], "; ".join(report.get("reasons") or []))
            out["summaries"].append({**summary, "mlflow_artifact": f"runs:/{run_id}/{stem}.json"})
        out["store"] = display_path(root)
        if missing:
            raise GateConfigurationError("drift cannot be judged without a reference profile (other aliases were "
                                         "stored): " + " | ".join(missing))
        return out
