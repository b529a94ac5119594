"""settle_canary without Airflow: a real prediction log, a real MLflow server, a SQLite ledger."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from support.mlflow_server import register_versions

from crispflow.model import registry
from crispflow.predictions.store import canary_report_path
from crispflow.predictions.writer import PredictionLog
from crispflow.release import promotion
from crispflow.release.canary import CanaryPolicy
from crispflow.release.canary_analysis import NEVER, deployed_at, settle_canary
from crispflow.release.promotion import Ledger

pytest_plugins = ["support.mlflow_server"]
NAME = "crispflow-t_settle"
FEATURES = ["int_rate", "annual_inc"]
LENIENT = {"min_requests": 20, "min_labels": 50}


@pytest.fixture(scope="module")
def loans() -> pd.DataFrame:
    return pd.read_parquet("include/data/lending_club.parquet").head(1500)


@pytest.fixture(scope="module")
def mlf(mlflow_server):
    return registry.client(mlflow_server.url)


@pytest.fixture(scope="module")
def versions(mlf, loans) -> list[str]:
    """Two complete, blessed versions of a small model (close to each other)."""
    x, y = loans[FEATURES].astype("float64"), loans["Class"] == "bad"
    models = [make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=300)).fit(x, y) for c in (1.0, 0.9)]
    return register_versions(mlf, NAME, "t_settle", x, models)


@pytest.fixture
def ledger(tmp_path) -> Ledger:
    return Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")


def live_canary(mlf, ledger: Ledger, versions: list[str]) -> datetime:
    """v1 champion, v2 canary (deployed through the ledger); returns the deployment time."""
    for alias in promotion.SERVING_ALIASES:
        if registry.alias_version(mlf, NAME, alias):
            mlf.delete_registered_model_alias(NAME, alias)
    promotion.apply(mlf, ledger, NAME, promotion.cold_start({}, versions[0], "first"), move_key="cold", actor="t",
                    person="airflow:scheduled")
    deployed = promotion.deploy_version(mlf, ledger, NAME, versions[1], strategy="canary", share=0.5,
                                        reason="blessed", move_key="deploy", person="ana")
    assert deployed["action"] == "deploy_canary"
    return datetime.fromisoformat(ledger.find("deploy")["at"])


def write_traffic(root: Path, loans: pd.DataFrame, versions: list[str], start: datetime, *,
                  canary_errors: float = 0.0) -> dict[str, int]:
    """Half the loans through each arm, every one labelled; returns requests per arm."""
    rng = np.random.default_rng(3)
    rows, feedback, arms = [], [], {"champion": 0, "canary": 0}
    for i, (_, loan) in enumerate(loans.head(400).iterrows()):
        alias = "canary" if i % 2 else "champion"
        failed = alias == "canary" and rng.random() < canary_errors
        arms[alias] += 1
        ts = start + timedelta(milliseconds=10 * (i + 1))
        rows.append({"request_id": f"r{i}", "ts": ts, "model": NAME, "version": versions[i % 2], "alias": alias,
                     "served": True, "entity": str(loan["loan_id"]), "score": None if failed else rng.random(),
                     "latency_ms": float(rng.gamma(4.0, 1.0)), "status": "error" if failed else "ok",
                     "features": {f: float(loan[f]) for f in FEATURES} | {"loan_id": str(loan["loan_id"])}})
        feedback.append({"request_id": f"r{i}", "label": int(loan["Class"] == "bad"), "ts": ts + timedelta(seconds=1)})
    plog = PredictionLog(root, NAME)
    plog.log(rows)
    plog.log_feedback(feedback)
    plog.close()
    return arms


def settle(mlf, ledger, root, start: datetime, policy: dict, key: str = "dag/run-1/analyse") -> dict:
    return settle_canary(mlf, ledger, NAME, root, start=start - timedelta(minutes=10), end=start + timedelta(hours=1),
                         policy=CanaryPolicy(**policy), move_key=key, run_key="run-1", person="airflow:scheduled")


def test_deployed_at_is_the_last_canary_deployment_or_the_epoch(ledger: Ledger) -> None:
    assert deployed_at(ledger, NAME, "2") == NEVER
    ledger.append(NAME, "k1", promotion.cold_start({}, "1", "first"), {}, actor="t", state=promotion.CONFIRMED)
    for key in ("k2", "k3"):
        ledger.append(NAME, key, promotion.Transition("deploy_canary", {"canary": "2"}, {}, "x"), {}, actor="t",
                      state=promotion.CONFIRMED)
    ledger.append(NAME, "k4", promotion.Transition("deploy_canary", {"canary": "2"}, {}, "x"), {}, actor="t")
    assert deployed_at(ledger, NAME, "2") == datetime.fromisoformat(ledger.find("k3")["at"])  # k4: not confirmed
    assert deployed_at(ledger, NAME, "2").tzinfo is not None and deployed_at(ledger, NAME, "3") == NEVER


@pytest.mark.slow
def test_no_canary_means_nothing_to_do(mlf, versions, ledger, tmp_path) -> None:
    for alias in promotion.SERVING_ALIASES:
        if registry.alias_version(mlf, NAME, alias):
            mlf.delete_registered_model_alias(NAME, alias)
    promotion.apply(mlf, ledger, NAME, promotion.cold_start({}, versions[0], "first"), move_key="cold", actor="t",
                    person="airflow:scheduled")
    assert settle(mlf, ledger, tmp_path, datetime.now(UTC), LENIENT) == {
        "decision": "none", "reasons": ["no canary deployed"]}
    assert len(ledger.entries(NAME)) == 1


@pytest.mark.slow
def test_a_good_canary_is_promoted_once_with_its_report_stored_twice(mlf, versions, ledger, loans, tmp_path) -> None:
    v1, v2 = versions
    start = live_canary(mlf, ledger, versions)
    arms = write_traffic(tmp_path, loans, versions, start)
    out = settle(mlf, ledger, tmp_path, start, LENIENT)
    assert set(out) == {"decision", "reasons", "report", "champion", "canary", "ledger"}
    assert out["decision"] == "promote", out["reasons"]
    assert (out["champion"], out["canary"]) == (v1, v2)
    assert out["ledger"]["action"] == "promote" and not out["ledger"]["replayed"]
    assert promotion.registry_state(mlf, NAME) == {"champion": v2, "canary": None, "shadow": None, "previous": v1}
    # the report: next to the log, and in the canary version's run; the ledger entry points at it
    path = canary_report_path(tmp_path, NAME, v2, "run-1")
    assert out["report"] == str(path)
    report = json.loads(path.read_text())
    assert report["labelled"]["design"] == "paired" and report["labelled"]["labels"] == sum(arms.values())
    assert report["window"]["canary"]["requests"] == arms["canary"]
    assert report["interval"]["deployed_at"] == start.isoformat()
    run_id = mlf.get_model_version(NAME, v2).run_id
    assert mlflow.artifacts.load_dict(f"runs:/{run_id}/canary/{path.name}") == report
    evidence = ledger.entries(NAME)[-1]["evidence"]
    assert evidence["report"] == out["report"]
    assert evidence["policy"] == dataclasses.asdict(CanaryPolicy(**LENIENT))
    assert evidence["policy_sha256"] == hashlib.sha256(
        json.dumps(dataclasses.asdict(CanaryPolicy(**LENIENT)), sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest() == CanaryPolicy(**LENIENT).digest()
    assert out["ledger"]["person"] == "airflow:scheduled"

    # the retry of the same task: the move is not decided or made again
    again = settle(mlf, ledger, tmp_path, start, LENIENT)
    assert again == {**out["ledger"], "replayed": True}
    assert [e["action"] for e in ledger.entries(NAME)] == ["cold_start", "deploy_canary", "promote"]
    assert promotion.registry_state(mlf, NAME)["champion"] == v2


@pytest.mark.slow
def test_an_erroring_canary_is_rolled_back(mlf, versions, ledger, loans, tmp_path) -> None:
    v1, v2 = versions
    start = live_canary(mlf, ledger, versions)
    write_traffic(tmp_path, loans, versions, start, canary_errors=0.3)
    out = settle(mlf, ledger, tmp_path, start, LENIENT)
    assert out["decision"] == "rollback" and "error rate" in out["reasons"][0]
    assert out["ledger"]["action"] == "abort_canary" and out["ledger"]["moves"] == {"canary": [v2, None]}
    assert promotion.registry_state(mlf, NAME) == {"champion": v1, "canary": None, "shadow": None, "previous": None}


@pytest.mark.slow
def test_without_enough_evidence_the_canary_runs_on(mlf, versions, ledger, loans, tmp_path) -> None:
    v2 = versions[1]
    start = live_canary(mlf, ledger, versions)
    write_traffic(tmp_path, loans, versions, start)
    out = settle(mlf, ledger, tmp_path, start, {**LENIENT, "min_labels": 10_000})
    assert out["decision"] == "continue" and out["ledger"] is None
    assert any("labelled requests" in r for r in out["reasons"])
    assert canary_report_path(tmp_path, NAME, v2, "run-1").exists()
    assert promotion.registry_state(mlf, NAME)["canary"] == v2 and len(ledger.entries(NAME)) == 2


@pytest.mark.slow
def test_an_outside_move_fails_the_analysis_once_recorded(mlf, versions, ledger, loans, tmp_path) -> None:
    """Champion re-pointed in MLflow by hand while a canary runs: the analysis records it (person unknown) and
    fails naming the alias and versions, moving nothing; the next run judges against what is served."""
    v1, v2 = versions
    start = live_canary(mlf, ledger, versions)
    write_traffic(tmp_path, loans, versions, start)
    mlf.delete_registered_model_alias(NAME, "canary")  # someone removed the canary in MLflow directly
    with pytest.raises(promotion.OutsideMove, match=f"canary v{v2} → unset"):
        settle(mlf, ledger, tmp_path, start, LENIENT)
    entry = ledger.entries(NAME)[-1]
    assert (entry["action"], entry["person"]) == ("outside_move", promotion.UNKNOWN_PERSON)
    assert promotion.registry_state(mlf, NAME)["champion"] == v1 and promotion.verify(mlf, ledger, NAME) == []
    assert settle(mlf, ledger, tmp_path, start, LENIENT, key="dag/run-2/analyse")["decision"] == "none"
