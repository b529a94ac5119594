"""Canary analysis per task: the paired loss (regression squared error, multiclass log loss of the true class) from
real sklearn models re-scoring logged features, decisions on synthetic and real logs, and `settle_canary` against a
real MLflow server with task-tagged versions (binary is covered by test_canary.py / test_canary_analysis.py)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import Pipeline
from threadpoolctl import threadpool_limits

from crispflow.errors import CrispflowError, GateMisconfigured
from crispflow.model import registry
from crispflow.model.features import build_preprocessor, features
from crispflow.model.registry import VersionTask
from crispflow.model.tasks import labels, model_output
from crispflow.predictions.reader import read_predictions
from crispflow.predictions.store import canary_report_path
from crispflow.predictions.writer import PredictionLog
from crispflow.release import promotion
from crispflow.release.canary import CONTINUE, PROMOTE, ROLLBACK, CanaryPolicy, analyse, paired_from_log
from crispflow.release.canary_analysis import _score, same_task, settle_canary
from crispflow.release.promotion import Ledger
from crispflow.settings import project_root
from crispflow.spec import load_spec

pytest_plugins = ["support.mlflow_server"]
LENIENT = {"min_requests": 20, "min_labels": 50}
CLASSES = ("Not_Verified", "Source_Verified", "Verified")


@pytest.fixture(scope="module")
def loans() -> pd.DataFrame:
    frame = pd.read_parquet(project_root() / "include" / "data" / "lending_club.parquet")
    return frame.sample(3000, random_state=0).reset_index(drop=True)


def fit(spec, frame: pd.DataFrame, estimator, y=None) -> Pipeline:
    with threadpool_limits(limits=1):
        return Pipeline([("preprocess", build_preprocessor(spec)), ("model", estimator)]).fit(
            features(spec, frame), labels(spec, frame) if y is None else y)


@pytest.fixture(scope="module")
def rate_models(loans) -> dict[str, Pipeline]:
    """Regression: a champion, an equally good canary, and a broken one (fitted on scrambled rates)."""
    spec, train = load_spec("lending_club_rate"), loans.iloc[:2000]
    scrambled = np.random.default_rng(0).permutation(labels(spec, train))
    return {"champion": fit(spec, train, Ridge(alpha=1.0)), "good": fit(spec, train, Ridge(alpha=1.5)),
            "broken": fit(spec, train, HistGradientBoostingRegressor(max_iter=30), y=scrambled)}


@pytest.fixture(scope="module")
def verification_models(loans) -> dict[str, Pipeline]:
    """Multiclass: a champion, an equally good canary, and one fitted on rotated classes."""
    spec, train = load_spec("lending_club_verification"), loans.iloc[:2000]
    y = labels(spec, train)
    return {"champion": fit(spec, train, LogisticRegression(C=1.0, max_iter=500)),
            "good": fit(spec, train, LogisticRegression(C=0.8, max_iter=500)),
            "broken": fit(spec, train, LogisticRegression(max_iter=500), y=(y + 1) % 3)}


def traffic(spec, frame: pd.DataFrame, models: dict, canary: str, *, champion_version: str = "1",
            canary_version: str = "2") -> pd.DataFrame:
    """A prediction-log frame: alternate requests through each arm, every one labelled (float64 labels)."""
    x = features(spec, frame)
    with threadpool_limits(limits=1):
        outputs = {"champion": model_output(spec, models["champion"], x),
                   "canary": model_output(spec, models[canary], x)}
    rows = []
    for i in range(len(frame)):
        alias = "canary" if i % 2 else "champion"
        out = outputs[alias][i]
        row = {"alias": alias, "version": canary_version if i % 2 else champion_version, "served": True,
               "status": "ok", "latency_ms": 3.0 + (i % 7) * 0.1}
        if spec.task == "regression":
            row["score"] = float(out)
        else:
            row |= {"score": float(out.max()), "predicted": CLASSES[int(out.argmax())], "probabilities": list(out)}
        rows.append(row | {f"feature.{k}": v for k, v in x.iloc[i].items()})
    log = pd.DataFrame(rows)
    log["label"] = labels(spec, frame).astype("float64")
    return log


def rescore(spec, models: dict, canary: str):
    task = VersionTask(spec.task, tuple(str(c) for c in spec.class_labels))
    by_version = {"1": models["champion"], "2": models[canary]}
    return lambda version, x: _score(by_version[version], x, task)


@pytest.mark.parametrize("task", ["regression", "multiclass"])
def test_paired_losses_are_the_tasks_loss_of_the_true_label(task: str, loans, rate_models,
                                                            verification_models) -> None:
    spec = load_spec("lending_club_rate" if task == "regression" else "lending_club_verification")
    models = rate_models if task == "regression" else verification_models
    frame = loans.iloc[2000:2300]
    log = traffic(spec, frame, models, "good")
    paired = paired_from_log(log, rescore(spec, models, "good"), champion="1", canary="2", task=task)
    x, y = features(spec, frame), labels(spec, frame)
    with threadpool_limits(limits=1):
        canary_out, champion_out = model_output(spec, models["good"], x), model_output(spec, models["champion"], x)
    if task == "regression":
        expected = (canary_out - y) ** 2 - (champion_out - y) ** 2
        champion_loss = np.mean((champion_out - y) ** 2)
    else:
        rows = np.arange(len(y))
        expected = -np.log(canary_out[rows, y]) + np.log(champion_out[rows, y])
        champion_loss = -np.mean(np.log(champion_out[rows, y]))
    np.testing.assert_allclose(paired.differences, expected, rtol=1e-9, atol=1e-12)
    assert paired.champion_loss == pytest.approx(champion_loss)


def test_a_regression_canary_as_good_as_its_champion_is_promoted_with_a_margin_in_squared_error(
        loans, rate_models) -> None:
    spec = load_spec("lending_club_rate")
    log = traffic(spec, loans.iloc[2000:2600], rate_models, "good")
    paired = paired_from_log(log, rescore(spec, rate_models, "good"), champion="1", canary="2", task="regression")
    report = analyse(log, log, champion="1", canary="2", policy=CanaryPolicy(**LENIENT), paired=paired,
                     task="regression")
    assert report["decision"] == PROMOTE, report["reasons"]
    labelled = report["labelled"]
    assert labelled["metric"] == "squared_error (canary - champion)" and labelled["design"] == "paired"
    assert labelled["margin_relative"] == 0.02 and report["policy"]["margin"] == 0.02  # as configured
    assert labelled["margin"] == pytest.approx(0.02 * paired.champion_loss)  # in rate points squared
    assert 5 < labelled["reference_loss"] < 30 and report["task"] == "regression"
    arm = report["since_deploy"]["canary"]
    assert arm["loss"] == "squared_error" and arm["rmse"] == pytest.approx(np.sqrt(arm["mean_loss"]))
    assert arm["labels"] == 300 and 5 < arm["mean_label"] < 25


def test_a_broken_regression_canary_is_rolled_back(loans, rate_models) -> None:
    spec = load_spec("lending_club_rate")
    log = traffic(spec, loans.iloc[2000:2600], rate_models, "broken")
    paired = paired_from_log(log, rescore(spec, rate_models, "broken"), champion="1", canary="2", task="regression")
    report = analyse(log, log, champion="1", canary="2", policy=CanaryPolicy(**LENIENT), paired=paired,
                     task="regression")
    assert report["decision"] == ROLLBACK
    assert report["reasons"][0].startswith("canary squared error higher than champion")
    assert report["labelled"]["interval"]["lower"] > 0


def test_multiclass_canaries_are_judged_on_the_log_loss_of_the_true_class(loans, verification_models) -> None:
    spec = load_spec("lending_club_verification")
    frame = loans.iloc[2000:2600]
    decisions = {}
    for canary in ("good", "broken"):
        log = traffic(spec, frame, verification_models, canary)
        paired = paired_from_log(log, rescore(spec, verification_models, canary), champion="1", canary="2",
                                 task="multiclass")
        report = analyse(log, log, champion="1", canary="2", policy=CanaryPolicy(**LENIENT), paired=paired,
                         task="multiclass")
        decisions[canary] = report["decision"]
        assert report["labelled"]["metric"] == "log_loss (canary - champion)"
        assert report["labelled"]["margin"] == 0.02  # nats
        arm = report["since_deploy"]["champion"]
        assert arm["log_loss"] == arm["mean_loss"] and 0.3 < arm["accuracy"] < 0.8
    assert decisions == {"good": PROMOTE, "broken": ROLLBACK}, decisions


def test_without_pairs_multiclass_uses_the_logged_probabilities(loans, verification_models) -> None:
    spec = load_spec("lending_club_verification")
    log = traffic(spec, loans.iloc[2000:2600], verification_models, "broken")
    report = analyse(log, log, champion="1", canary="2", policy=CanaryPolicy(**LENIENT), task="multiclass")
    assert report["labelled"]["design"] == "unpaired" and report["labelled"]["labels"] == 300
    assert report["decision"] == ROLLBACK
    unlogged = log.drop(columns=["probabilities"])  # an old log: nothing to judge labels on, nothing decided
    waiting = analyse(unlogged, unlogged, champion="1", canary="2", policy=CanaryPolicy(**LENIENT), task="multiclass")
    assert waiting["decision"] == CONTINUE and waiting["labelled"]["labels"] == 0


def test_a_multiclass_label_that_is_no_class_code_is_refused_naming_it(loans, verification_models) -> None:
    spec = load_spec("lending_club_verification")
    log = traffic(spec, loans.iloc[2000:2100], verification_models, "good")
    log.loc[7, "label"] = 5.0
    with pytest.raises(CrispflowError, match=r"multiclass labels are class codes 0..2, the log holds \[5.0\]"):
        analyse(log, log, champion="1", canary="2", policy=CanaryPolicy(**LENIENT), task="multiclass")
    with pytest.raises(CrispflowError, match=r"class codes 0\.\.2"):
        paired_from_log(log, rescore(spec, verification_models, "good"), champion="1", canary="2", task="multiclass")


def test_versions_of_different_tasks_cannot_be_compared() -> None:
    binary, regression = VersionTask(), VersionTask("regression")
    assert same_task("m", {"1": regression, "2": VersionTask("regression")}) == regression
    with pytest.raises(GateMisconfigured, match=r"predict different things \(v1: binary, v2: regression\)"):
        same_task("m", {"1": binary, "2": regression})
    with pytest.raises(GateMisconfigured, match="v2: multiclass"):
        same_task("m", {"1": VersionTask("multiclass", ("a", "b", "c")), "2": VersionTask("multiclass", CLASSES)})


# --- settle_canary against a real MLflow server ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def mlf(mlflow_server):
    return registry.client(mlflow_server.url)


def register(mlf, name: str, spec, x: pd.DataFrame, models: list) -> list[str]:
    tags = {registry.TASK_TAG: spec.task, "crispflow.blessed": "true"}
    if spec.task == "multiclass":
        tags[registry.CLASSES_TAG] = json.dumps([str(c) for c in spec.class_labels])
    out = []
    for i, model in enumerate(models):
        run_key = f"dag/r{i}/train"
        run_id = registry.find_or_create_run(mlf, name, run_key, "train")
        out.append(registry.register(mlf, name=name, run_id=run_id, run_key=run_key, model=model, example=x,
                                     tags=tags).version)
    return out


def live_canary(mlf, ledger: Ledger, name: str, versions: list[str]) -> datetime:
    promotion.apply(mlf, ledger, name, promotion.cold_start({}, versions[0], "first"), move_key="cold", actor="t",
                    person="t")
    promotion.deploy_version(mlf, ledger, name, versions[1], strategy="canary", share=0.5, reason="blessed",
                             move_key="deploy", person="t")
    return datetime.fromisoformat(ledger.find("deploy")["at"])


def write_log(root: Path, name: str, log: pd.DataFrame, versions: list[str], start: datetime) -> None:
    rows, fb = [], []
    for i, r in enumerate(log.to_dict("records")):
        ts = start + timedelta(milliseconds=10 * (i + 1))
        row = {k: r[k] for k in ("alias", "served", "status", "latency_ms", "score") if k in r}
        row |= {k: r[k] for k in ("predicted", "probabilities") if k in r}
        row |= {"request_id": f"r{i}", "ts": ts, "model": name, "version": versions[i % 2],
                "features": {k.removeprefix("feature."): v for k, v in r.items() if k.startswith("feature.")}}
        rows.append(row)
        fb.append({"request_id": f"r{i}", "label": float(r["label"]), "ts": ts + timedelta(seconds=1)})
    plog = PredictionLog(root, name)
    plog.log(rows)
    plog.log_feedback(fb)
    plog.close()


@pytest.mark.slow
@pytest.mark.parametrize(("pipeline", "canary", "decision"), [("lending_club_rate", "good", PROMOTE),
                                                             ("lending_club_verification", "broken", ROLLBACK)])
def test_settle_canary_rescores_task_tagged_versions(mlf, loans, rate_models, verification_models, tmp_path,
                                                     pipeline: str, canary: str, decision: str) -> None:
    spec = load_spec(pipeline)
    models = rate_models if spec.task == "regression" else verification_models
    name = f"crispflow-t_settle_{spec.task}"
    versions = register(mlf, name, spec, features(spec, loans.head(50)), [models["champion"], models[canary]])
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    start = live_canary(mlf, ledger, name, versions)
    frame = loans.iloc[2000:2400]
    write_log(tmp_path, name, traffic(spec, frame, models, canary, champion_version=versions[0],
                                      canary_version=versions[1]), versions, start)
    assert read_predictions(tmp_path, name, start, start + timedelta(hours=1))["label"].dtype.kind == "f"
    out = settle_canary(mlf, ledger, name, tmp_path, start=start - timedelta(minutes=10),
                        end=start + timedelta(hours=1), policy=CanaryPolicy(**LENIENT), move_key="dag/run-1/analyse",
                        run_key="run-1", person="t")
    assert out["decision"] == decision, out["reasons"]
    report = json.loads(canary_report_path(tmp_path, name, versions[1], "run-1").read_text())
    assert report["task"] == spec.task and report["labelled"]["design"] == "paired"
    assert report["labelled"]["labels"] == len(frame)
    state = promotion.registry_state(mlf, name)
    assert state["champion"] == (versions[1] if decision == PROMOTE else versions[0]) and state["canary"] is None
