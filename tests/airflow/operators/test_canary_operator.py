"""CanaryAnalysisOperator: templated fields render, the XCom is the decision (or the replayed move), the report lands
under the prediction store's root keyed by the run, a tampered model fails without retry, the policy is the spec's
`canary:` section which a run may only tighten (a loosening fails without retry before anything moves) (a real
MLflow server, a real prediction log, a SQLite ledger, a real pipeline spec)."""

from __future__ import annotations

import json
import re
import time
from datetime import datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
import yaml
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from support.mlflow_server import register_versions

from crispflow.model import registry
from crispflow.predictions.store import canary_report_path
from crispflow.predictions.writer import PredictionLog
from crispflow.release import promotion
from crispflow.release.promotion import Ledger
from crispflow.settings import project_root

pytest_plugins = ["support.mlflow_server"]
PIPELINE = "t_canary_op"
MODEL = f"crispflow-{PIPELINE}"
FEATURES = ["int_rate", "annual_inc"]
PARAMS = {"pipeline": PIPELINE, "policy": {}}
LENIENT = {"min_requests": 20, "min_labels": 50}  # the test pipeline spec's `canary:` section
# The example: promotes a canary 8x worse on 3 requests if a run could loosen the policy.
LOOSE = {"margin": 100, "min_labels": 2, "min_requests": 1, "max_score_psi": 1e9}


@pytest.fixture(scope="module")
def loans() -> pd.DataFrame:
    return pd.read_parquet("include/data/lending_club.parquet").head(1000)


@pytest.fixture(scope="module")
def versions(mlflow_server, loans) -> list[str]:
    """Three complete, blessed versions of a small model."""
    mlf = registry.client(mlflow_server.url)
    x, y = loans[FEATURES].astype("float64"), loans["Class"] == "bad"
    models = [make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=300)).fit(x, y) for c in (1.0, 0.9, 0.8)]
    return register_versions(mlf, MODEL, PIPELINE, x, models)


@pytest.fixture
def env(mlflow_server, versions, tmp_path, monkeypatch):
    """The task's settings (MLflow server, a fresh ledger and prediction store); only v1 live (the champion).
    Returns (client, ledger, prediction store root)."""
    root = tmp_path / "predictions"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.url)
    monkeypatch.setenv("CRISPFLOW_LEDGER_URL", f"sqlite:///{tmp_path / 'ledger.db'}")
    monkeypatch.setenv("CRISPFLOW_PREDICTIONS_URL", root.as_uri())
    spec = yaml.safe_load((project_root() / "include" / "pipelines" / "lending_club.yaml").read_text())
    (tmp_path / "pipelines").mkdir()
    (tmp_path / "pipelines" / f"{PIPELINE}.yaml").write_text(yaml.safe_dump({**spec, "name": PIPELINE,
                                                                               "canary": LENIENT}))
    monkeypatch.setenv("CRISPFLOW_PIPELINES_DIR", str(tmp_path / "pipelines"))
    mlf = registry.client(mlflow_server.url)
    for alias in promotion.SERVING_ALIASES:
        if registry.alias_version(mlf, MODEL, alias):
            mlf.delete_registered_model_alias(MODEL, alias)
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    promotion.apply(mlf, ledger, MODEL, promotion.cold_start({}, versions[0], "first"), move_key="cold", actor="t",
                    person="t")
    return mlf, ledger, root


def go_canary(mlf, ledger: Ledger, root: Path, loans: pd.DataFrame, canary: str, champion: str) -> None:
    """Deploy `canary` through the ledger, then log labelled traffic to both arms after it (in the past by the
    time the analysis runs)."""
    promotion.deploy_version(mlf, ledger, MODEL, canary, strategy="canary", share=0.5, reason="t", move_key="dep",
                             person="t")
    start = datetime.fromisoformat(ledger.find("dep")["at"])
    rows, feedback = [], []
    for i, (_, loan) in enumerate(loans.head(300).iterrows()):
        alias, ts = ("canary" if i % 2 else "champion"), start + timedelta(milliseconds=i + 1)
        rows.append({"request_id": f"r{i}", "ts": ts, "model": MODEL, "version": canary if i % 2 else champion,
                     "alias": alias, "served": True, "entity": str(loan["loan_id"]), "score": 0.1 + (i % 7) / 10,
                     "latency_ms": 3.0 + i % 3, "status": "ok", "features": {f: float(loan[f]) for f in FEATURES}})
        feedback.append({"request_id": f"r{i}", "label": int(loan["Class"] == "bad"), "ts": ts})
    plog = PredictionLog(root, MODEL)
    plog.log(rows)
    plog.log_feedback(feedback)
    plog.close()
    time.sleep(0.5)


def operator(**kwargs):
    from crispflow_airflow.operators.canary import CanaryAnalysisOperator

    return CanaryAnalysisOperator(task_id="analyse_and_act", **{"pipeline": "{{ params.pipeline }}", **kwargs})


def test_templated_fields_render() -> None:
    from crispflow.release.promotion import POOL

    op = operator(policy={"min_labels": "{{ params.n }}"})
    assert tuple(op.template_fields) == ("pipeline", "policy")
    op.render_template_fields({"params": {"pipeline": PIPELINE, "n": 300}})
    assert (op.pipeline, op.policy) == (PIPELINE, {"min_labels": "300"})
    assert op.pool == POOL and op.window == timedelta(minutes=10)


def test_no_canary_is_nothing_to_do(run_alone, env) -> None:
    dr, ti = run_alone(operator, PARAMS, {"pipeline": PIPELINE})
    assert dr.state == "success"
    assert ti.xcom_pull(task_ids="analyse_and_act") == {"decision": "none", "reasons": ["no canary deployed"]}


def test_a_good_canary_is_promoted_and_a_retry_replays_the_move(run_alone, env, versions, loans) -> None:
    mlf, ledger, root = env
    v1, v2, _ = versions
    go_canary(mlf, ledger, root, loans, v2, v1)
    dr, ti = run_alone(lambda: operator(policy=LENIENT), PARAMS, {"pipeline": PIPELINE})
    assert dr.state == "success"
    out = ti.xcom_pull(task_ids="analyse_and_act")
    assert set(out) == {"decision", "reasons", "report", "champion", "canary", "ledger"}
    assert out["decision"] == "promote" and (out["champion"], out["canary"]) == (v1, v2), out["reasons"]
    assert out["ledger"]["action"] == "promote" and not out["ledger"]["replayed"]
    assert promotion.registry_state(mlf, MODEL) == {"champion": v2, "canary": None, "shadow": None, "previous": v1}
    # the report under the store's root, one per run; the move recorded under the task's key
    path = canary_report_path(root, MODEL, v2, dr.run_id)
    assert out["report"].removeprefix("file://") == str(path)
    assert json.loads(path.read_text())["labelled"]["labels"] == 300
    key = f"{ti.dag_id}/{ti.run_id}/analyse_and_act"
    assert ledger.find(key)["seq"] == out["ledger"]["seq"]

    # a retry of the same task instance: the recorded move replayed, nothing decided or moved again
    op = operator(policy=LENIENT)
    op.render_template_fields({"params": PARAMS})
    again = op.execute({"ti": ti, "dag_run": dr, "data_interval_start": None, "data_interval_end": None})
    assert again == {**out["ledger"], "replayed": True}
    assert len(ledger.entries(MODEL)) == 3


def test_a_tampered_canary_is_refused_without_retry(run_alone, env, versions, loans, mlflow_server) -> None:
    import crispflow_airflow.exceptions as exceptions

    mlf, ledger, root = env
    v1, _, v3 = versions
    go_canary(mlf, ledger, root, loans, v3, v1)
    source = mlf.get_model_version(MODEL, v3).source.rsplit("/", 1)[-1]
    (target,) = [p for p in mlflow_server.artifacts.rglob("model.skops") if source in p.parts]
    original = target.read_bytes()
    target.write_bytes(original + b"\0")
    try:
        dr, ti = run_alone(lambda: operator(policy=LENIENT, retries=2), PARAMS, {"pipeline": PIPELINE})
        assert dr.state == "failed" and ti.state == "failed" and ti.try_number == 1
        op = operator(policy=LENIENT)
        op.render_template_fields({"params": PARAMS})
        with pytest.raises(exceptions.ModelRefused, match="model refused"):
            op.execute({"ti": ti, "dag_run": dr, "data_interval_start": None, "data_interval_end": None})
    finally:
        target.write_bytes(original)
    assert promotion.registry_state(mlf, MODEL)["canary"] == v3 and len(ledger.entries(MODEL)) == 2


def _execute(policy, dr, ti):
    op = operator(policy=policy)
    op.render_template_fields({"params": PARAMS})
    return op.execute({"ti": ti, "dag_run": dr, "data_interval_start": None, "data_interval_end": None})


def test_a_loosening_policy_fails_without_retry_before_anything_moves(run_alone, env, versions, loans) -> None:
    import crispflow_airflow.exceptions as exceptions

    mlf, ledger, root = env
    v1, v2, _ = versions
    go_canary(mlf, ledger, root, loans, v2, v1)
    dr, ti = run_alone(lambda: operator(policy=LOOSE, retries=2), PARAMS, {"pipeline": PIPELINE})
    assert dr.state == "failed" and ti.state == "failed" and ti.try_number == 1  # not retried
    cases = {"policy.margin: 100 would loosen the spec's 0.02; a run may only lower it": LOOSE,
             "policy.min_labels: 49 would loosen the spec's 50; a run may only raise it": {"min_labels": 49},
             "policy.tau: 0.5 differs from the spec's 0.05; it is not overridable by a run": {"tau": 0.5},
             "policy.alpha: 0.2 differs from the spec's 0.05": {"alpha": 0.2},
             "policy: unknown field(s) ['bogus']; a run may override": {"bogus": 1},
             "policy.min_requests: 'many' must be an integer": {"min_requests": "many"}}
    for message, policy in cases.items():
        with pytest.raises(exceptions.InvalidRequest, match=re.escape(f"invalid request: {message}")):
            _execute(policy, dr, ti)
    assert promotion.registry_state(mlf, MODEL)["canary"] == v2 and len(ledger.entries(MODEL)) == 2  # nothing moved
    assert not list(root.rglob("*.json"))  # nothing was even analysed


def test_a_tightening_policy_applies(run_alone, env, versions, loans) -> None:
    mlf, ledger, root = env
    v1, v2, _ = versions
    go_canary(mlf, ledger, root, loans, v2, v1)
    tight = {"min_labels": 400, "margin": 0.01}
    dr, ti = run_alone(lambda: operator(policy=tight), PARAMS, {"pipeline": PIPELINE})
    assert dr.state == "success"
    out = ti.xcom_pull(task_ids="analyse_and_act")
    assert out["decision"] == "continue" and "300 labelled requests (paired) < 400" in out["reasons"], out
    report = json.loads(canary_report_path(root, MODEL, v2, dr.run_id).read_text())
    assert report["policy"] == {**report["policy"], **LENIENT, **tight}  # the spec's policy, tightened
    assert promotion.registry_state(mlf, MODEL)["canary"] == v2  # the spec's policy alone would have promoted it
