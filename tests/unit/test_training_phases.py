"""The model phases per task against a real MLflow server: cross-validate, register, evaluate, bless.

Regression and multiclass pipelines on synthetic data (the binary demo runs through tests/integration/
test_train_dag.py). The job's frames are given directly instead of being read from a lake: the phases under test
start after the holdout is frozen.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pytest
from mlflow.models import get_model_info
from test_training_tasks import CLASSES, frame_for, spec_for

from crispflow.lake import Lake
from crispflow.model import registry
from crispflow.model.holdout import freeze, holdout_split
from crispflow.model.modelling import (
    TrainingJob,
    bless,
    evaluate_version,
    explain_version,
    prepare,
    register_challenger,
    run_candidate,
    write_model_card,
)
from crispflow.model.training import plan_search
from crispflow.spec import TASK_METRICS

pytest_plugins = ["support.mlflow_server"]


def check_explanations(job: TrainingJob, version: str) -> dict[str, Any]:
    """explain_version's artifacts and tags: the explainer record under its sha256, the global explanation with x1
    (the strongest signal) first, its PDP images, drift weights the monitor loads; a rerun writes the same."""
    from crispflow.model.explain import LocalExplainer, record_digest
    from crispflow.model.features import features
    from crispflow.monitoring.windows import load_drift_weights

    out = explain_version(job, version)
    assert out["explainer"].startswith("ready: "), out
    assert out["top_features"][0]["feature"] == "x1" and out["top_features"][0]["low"] > 0, out
    mv = job.mlf.get_model_version(job.model_name, version)
    record = json.loads(mlflow.artifacts.load_text(mv.tags[registry.EXPLAINER_TAG]))
    assert record_digest(record) == mv.tags[registry.EXPLAINER_SHA_TAG]
    model = registry.load_verified(job.mlf, job.model_name, version)
    explainer = LocalExplainer.build(job.spec.task, model, record)
    base, contributions, output = explainer.contributions(features(job.spec, job.frames[1]))
    assert np.abs(base + contributions.sum(axis=1) - output).max() <= explainer.tolerance
    report = json.loads(mlflow.artifacts.load_text(mv.tags[registry.EXPLANATIONS_TAG]))
    assert report["importance"]["features"][0]["feature"] == "x1"
    assert {c["feature"] for c in report["mean_abs_contribution"]} == set(job.spec.feature_columns)
    assert report["partial_dependence"] and all(
        mlflow.artifacts.load_image(f"runs:/{mv.run_id}/{path}").size[0] > 100
        for path in report["partial_dependence"].values())
    weights = load_drift_weights(job.mlf, job.model_name, version, job.spec.feature_columns)
    assert weights is not None and max(weights, key=weights.get) == "x1"
    again = explain_version(job, version)
    assert again["top_features"] == out["top_features"]  # seeded: a retry writes the same
    assert job.mlf.get_model_version(job.model_name, version).tags[registry.EXPLAINER_SHA_TAG] == \
        mv.tags[registry.EXPLAINER_SHA_TAG]
    return report


pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


@pytest.fixture(scope="module")
def mlf(mlflow_server):
    return registry.client(mlflow_server.url)


def job_for(mlf: Any, tmp_path: Any, task: str, run: str, seed: int = 0) -> TrainingJob:
    spec = spec_for(task, training={"search_budget": 2},
                    blessing={"bootstrap_samples": 200, "non_inferiority_margin": 0.05})
    train, holdout = holdout_split(spec, frame_for(task, 1500, seed=20))
    if seed:  # a later dataset version: new training rows, the same frozen holdout
        train = frame_for(task, 1200, seed=seed)
    job = TrainingJob(spec, Lake(tmp_path), mlf, f"ds-{run}", f"train/{run}")
    job.__dict__["frames"] = (train, holdout, freeze(job.lake, spec, holdout, f"ds-{run}"))
    rows = len(train) + len(holdout)
    job.__dict__["manifest"] = {"dataset_version_id": f"ds-{run}", "rows": {"in": rows, "published": rows,
                                                                           "quarantined": 0}}
    return job


def train(job: TrainingJob) -> dict[str, Any]:
    parent = prepare(job)["parent_run_id"]
    results = [run_candidate(job, parent, config) for config in plan_search(job.spec)]
    return register_challenger(job, parent, results)


def test_regression_phases_register_an_interval_and_bless_against_no_skill(mlf, tmp_path) -> None:
    job = job_for(mlf, tmp_path, "regression", "reg-1")
    registered = train(job)
    assert registered["threshold"] is None and registered["task"] == "regression"
    mv = mlf.get_model_version(job.model_name, registered["version"])
    assert mv.tags["crispflow.task"] == "regression" and "crispflow.threshold" not in mv.tags
    interval = json.loads(mv.tags["crispflow.interval"])
    assert interval == registered["interval"] and interval["method"] == "split_conformal_oof"
    assert 1.2 < interval["halfwidth"] < 2.2  # the noise is N(0, 1): its 90 % halfwidth is 1.645
    assert mlf.get_registered_model(job.model_name).tags["crispflow.pipeline"] == job.spec.name
    assert registry.version_threshold(mv) is None
    outputs = get_model_info(mv.source).signature.outputs.to_dict()
    assert list(outputs[0]["tensor-spec"]["shape"]) == [-1]  # one prediction per row

    evaluated = evaluate_version(job, registered["version"])
    assert set(evaluated["metrics"]) == set(TASK_METRICS["regression"])
    assert evaluated["metrics"]["rmse"] < 1.3 and evaluated["metrics"]["r2"] > 0.8
    check_explanations(job, registered["version"])

    verdict = bless(job, registered["version"])
    assert verdict["blessed"], verdict["reasons"]
    assert verdict["mode"] == "cold_start" and verdict["champion_version"] is None
    written = write_model_card(job, registered["version"])
    card = mlflow.artifacts.load_text(written["markdown"])
    assert job.model_name in card and "## Explanations" in card and "](../explanations/v" in card
    assert 'src="data:image/png;base64,' in mlflow.artifacts.load_text(written["html"])  # PDPs inside the page


def test_multiclass_phases_register_classes_and_compare_with_the_champion(mlf, tmp_path) -> None:
    first = job_for(mlf, tmp_path, "multiclass", "mc-1")
    v1 = train(first)["version"]
    mv = mlf.get_model_version(first.model_name, v1)
    assert mv.tags["crispflow.task"] == "multiclass" and "crispflow.threshold" not in mv.tags
    assert json.loads(mv.tags["crispflow.classes"]) == CLASSES
    outputs = get_model_info(mv.source).signature.outputs.to_dict()
    assert list(outputs[0]["tensor-spec"]["shape"]) == [-1, len(CLASSES)]  # one probability per class
    profile = mlflow.artifacts.load_dict(mv.tags["crispflow.reference_profile"])
    assert profile["rows"] == len(first.frames[0])

    evaluated = evaluate_version(first, v1)
    assert set(evaluated["metrics"]) == set(TASK_METRICS["multiclass"])
    y = first.frames[1]["y"]
    prior = np.array([(y == c).mean() for c in CLASSES])
    assert evaluated["metrics"]["log_loss"] < 0.8 * float(-(prior * np.log(prior)).sum())
    assert bless(first, v1)["blessed"]
    registry.set_alias(mlf, first.model_name, registry.CHAMPION, v1)

    second = job_for(mlf, tmp_path, "multiclass", "mc-2", seed=21)
    v2 = train(second)["version"]
    assert v2 != v1
    evaluate_version(second, v2)
    check_explanations(second, v2)
    verdict = bless(second, v2)
    assert verdict["mode"] == "versus_champion" and verdict["champion_version"] == str(v1)
    assert verdict["champion_threshold"] is None and verdict["challenger_threshold"] is None
    assert verdict["blessed"], verdict["reasons"]  # same model family, similar data: within the 0.05 margin
    check = next(c for c in verdict["checks"] if c["name"] == "non_inferiority")
    assert check["metric"] == "log_loss" and abs(check["estimate"]) < 0.05
    card = mlflow.artifacts.load_text(write_model_card(second, v2)["markdown"])
    assert second.model_name in card


def test_binary_phases_keep_the_threshold_tag(mlf, tmp_path) -> None:
    job = job_for(mlf, tmp_path, "binary", "bin-1")
    registered = train(job)
    mv = mlf.get_model_version(job.model_name, registered["version"])
    assert mv.tags["crispflow.task"] == "binary"
    assert float(mv.tags["crispflow.threshold"]) == registered["threshold"] == registry.version_threshold(mv)
    assert not {"crispflow.interval", "crispflow.classes"} & set(mv.tags)
    model_dir = Path(mlflow.artifacts.download_artifacts(artifact_uri=mv.source, dst_path=str(tmp_path / "m")))
    logged = json.loads((model_dir / "input_example.json").read_text())
    train_rows = job.frames[0][logged["columns"]]
    assert len(logged["data"]) == 1  # one synthetic row of medians / modes, not a training row
    assert not (train_rows == logged["data"][0]).all(axis=1).any()
    metrics = evaluate_version(job, registered["version"])["metrics"]
    assert {"roc_auc", "average_precision", "f1", "precision", "recall", "brier"} <= set(metrics)
    assert metrics["roc_auc"] > 0.75
    report = check_explanations(job, registered["version"])
    assert report["explainer"]["space"].startswith("log_odds")
    verdict = bless(job, registered["version"])
    assert verdict["challenger_threshold"] == registered["threshold"]
    assert verdict["blessed"], verdict["reasons"]  # clearly better than the training prevalence
