"""Operator extra links: buttons on a task instance that open what the task made, computed from its XCom result.

Same-origin pages of the crispflow plugin (`<[api] base_url>/crispflow/...`: the UI drops `file://` links) or the
MLflow UI (`CRISPFLOW_MLFLOW_UI_URL`, else `MLFLOW_TRACKING_URI` when it is http(s)). A link that does not apply
(no result, a skipped task, a missing key) is the empty string, which the UI hides.

Links on the operator classes (`operator_extra_links`) are computed on the worker when the task finishes and
stored as XCom `_link_<class>`; `GLOBAL_LINKS` (registered by the plugin) are computed by the api-server for every
task and apply only to results that carry an `mlflow` reference (the `@task` functions `register`, `evaluate`).
Each link's `href(result, operator)` is pure: the result dict and the operator's rendered fields in, a URL out.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from airflow.sdk import BaseOperatorLink

if TYPE_CHECKING:
    from mlflow import MlflowClient

RETURN_KEY = "return_value"
PAGES = "/crispflow"


def base_url() -> str:
    """Where users open Airflow (`[api] base_url`, no trailing slash; empty: same-origin relative links)."""
    from airflow.configuration import conf

    return (conf.get("api", "base_url", fallback="") or "").rstrip("/")


def page(*segments: str, fragment: str = "") -> str:
    """A crispflow page under the Airflow base URL; every segment URL-quoted (no `/` inside a segment)."""
    path = "/".join(quote(str(s), safe="") for s in segments)
    return f"{base_url()}{PAGES}/{path}" + (f"#{quote(fragment, safe='-._~')}" if fragment else "")


def mlflow_ui_url() -> str:
    """The MLflow UI users open: `CRISPFLOW_MLFLOW_UI_URL`, else `MLFLOW_TRACKING_URI` if it is http(s); else ""."""
    for name in ("CRISPFLOW_MLFLOW_UI_URL", "MLFLOW_TRACKING_URI"):
        url = (os.environ.get(name) or "").strip()
        if url.startswith(("http://", "https://")):
            return url.rstrip("/")
    return ""


def mlflow_ref(mlf: MlflowClient, model: str, version: str) -> dict[str, str]:
    """What the MLflow links of a model version need, for a task's result: model, version, run and experiment."""
    run_id = str(mlf.get_model_version(model, str(version)).run_id)
    return {"model": model, "version": str(version), "run_id": run_id,
            "experiment_id": str(mlf.get_run(run_id).info.experiment_id)}


def model_of(result: Mapping[str, Any], operator: Any) -> str:
    """The registered model of a result: its `model` key, else crispflow-<the operator's rendered pipeline>."""
    from crispflow.model.registry import model_name

    model = result.get("model") or (result.get("mlflow") or {}).get("model")
    if model:
        return str(model)
    pipeline = _rendered(operator, "pipeline")
    return model_name(pipeline) if pipeline else ""


def _rendered(operator: Any, field: str) -> str:
    """A rendered string field of the task ("" when absent or still a template, e.g. in the api-server)."""
    value = getattr(operator, field, None)
    return value if isinstance(value, str) and value and "{{" not in value else ""


def task_result(ti_key: Any) -> Any:
    """The task's XCom return value: through the task SDK on the worker (`ti_key` is the running task instance),
    through the metadata DB in the api-server (`ti_key` is a TaskInstanceKey); None when there is none."""
    if hasattr(ti_key, "xcom_pull"):
        return ti_key.xcom_pull(task_ids=ti_key.task_id, key=RETURN_KEY, map_indexes=ti_key.map_index)
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        raw = session.execute(XComModel.get_many(key=RETURN_KEY, run_id=ti_key.run_id, dag_ids=ti_key.dag_id,
                                                 task_ids=ti_key.task_id, map_indexes=ti_key.map_index)
                              .with_only_columns(XComModel.value)).scalar()
    if isinstance(raw, str | bytes):
        try:
            return json.loads(raw)  # plain JSON: never instantiate classes named by stored data
        except ValueError:
            return None
    return raw


class CrispflowLink(BaseOperatorLink):
    """A link computed from the task's result; "" when it does not apply or the result lacks a key."""

    name = "crispflow"

    def href(self, result: Mapping[str, Any], operator: Any) -> str:
        raise NotImplementedError

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        result = task_result(ti_key)
        if not isinstance(result, Mapping):  # no result (failed, skipped): only links from the task's fields
            result = {}
        try:
            return self.href(result, operator) or ""
        except (KeyError, TypeError, ValueError, AttributeError):
            return ""


class DataDocsLink(CrispflowLink):
    """GX Data Docs of the dataset version published, or of the batch the quality gate judged (also when the gate
    failed the batch: then from the task's rendered `pipeline` and `batch_id`)."""

    name = "GX Data Docs"

    def href(self, result: Mapping[str, Any], operator: Any) -> str:
        pipeline = result.get("pipeline") or _rendered(operator, "pipeline")
        ref = result.get("dataset_version_id") or result.get("batch_id") or _rendered(operator, "batch_id")
        return page("data-docs", str(pipeline), str(ref)) if pipeline and ref else ""


class MlflowModelVersionLink(CrispflowLink):
    """The model version in the MLflow UI (result key `mlflow`: model and version)."""

    name = "MLflow model version"

    def href(self, result: Mapping[str, Any], operator: Any) -> str:
        ref, ui = result.get("mlflow") or {}, mlflow_ui_url()
        if not (ui and ref.get("model") and ref.get("version")):
            return ""
        return f"{ui}/#/models/{quote(str(ref['model']), safe='')}/versions/{quote(str(ref['version']), safe='')}"


class MlflowRunLink(CrispflowLink):
    """The version's MLflow run (result key `mlflow`: run_id, experiment_id; without the experiment, MLflow's
    `#/runs/<run>` route, which finds it)."""

    name = "MLflow run"

    def href(self, result: Mapping[str, Any], operator: Any) -> str:
        ref, ui = result.get("mlflow") or {}, mlflow_ui_url()
        if not (ui and ref.get("run_id")):
            return ""
        run = quote(str(ref["run_id"]), safe="")
        if ref.get("experiment_id"):
            return f"{ui}/#/experiments/{quote(str(ref['experiment_id']), safe='')}/runs/{run}"
        return f"{ui}/#/runs/{run}"


class ModelCardLink(CrispflowLink):
    """The version's page: model card and the blessing verdict with every check."""

    name = "Model card and verdict"

    def href(self, result: Mapping[str, Any], operator: Any) -> str:
        ref = result.get("mlflow") or {}
        model, version = ref.get("model"), ref.get("version") or result.get("version")
        return page("models", str(model), "versions", str(version)) if model and version else ""


class LedgerEntryLink(CrispflowLink):
    """The promotion ledger entry the task recorded (deploy, rollback, promotion, canary analysis's move)."""

    name = "Ledger entry"

    def href(self, result: Mapping[str, Any], operator: Any) -> str:
        entry = result.get("ledger") if "ledger" in result else result  # canary analysis: the move, or None
        seq, model = (entry or {}).get("seq"), model_of(result, operator)
        return page("promotions", model, fragment=f"seq-{int(seq)}") if seq is not None and model else ""


class DriftReportLink(CrispflowLink):
    """The drift report of the champion's window the monitor judged."""

    name = "Drift report"
    alias = "champion"

    def href(self, result: Mapping[str, Any], operator: Any) -> str:
        from datetime import datetime

        from crispflow.monitoring.store import window_key

        model = result.get("model")
        for summary in result.get("summaries") or []:
            if summary.get("alias") == self.alias and model:
                key = window_key(datetime.fromisoformat(summary["window_end"]))
                return page("drift", str(model), "reports", self.alias, key)
        return ""


class CanaryDriftReportLink(DriftReportLink):
    """The drift report of the canary's window, when a canary was live."""

    name = "Drift report (canary)"
    alias = "canary"


class DriftAlertLink(CrispflowLink):
    """The drift alert of the episode the sensor fired (on the model's drift page)."""

    name = "Drift alert"

    def href(self, result: Mapping[str, Any], operator: Any) -> str:
        from crispflow.monitoring.alerts import dedup_key

        model = result.get("model")
        key = result.get("key") or (dedup_key(str(model), str(result["episode_id"]))
                                    if result.get("episode_id") else None)
        return page("drift", str(model), fragment=f"alert-{key}") if model and key else ""


# The api-server computes these for every task (the `@task` functions cannot carry class links): they read the
# task's result from the metadata DB and are empty unless it has an `mlflow` reference. The operators that carry
# links of the same names (a task's own link wins) store theirs when they finish.
GLOBAL_LINKS = [MlflowModelVersionLink(), MlflowRunLink()]
