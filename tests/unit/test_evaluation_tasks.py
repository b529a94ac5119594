"""Evaluation for multiclass and regression: `metric` equals sklearn, the resample kernel equals the metric on
repeated rows, NaN when undefined, CIs cover the truth, per-class and residual reports, slices and plots."""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import pytest
from sklearn import metrics as skm
from support.json_checks import plain

from crispflow.model.evaluation import (
    REPORTED_METRICS,
    evaluate,
    interval_report,
    metric,
    multiclass_weighted,
    plot_curves,
    regression_weighted,
    residual_summary,
)
from crispflow.spec import TASK_METRICS

LABELS = ["north", "east", "south", "west"]


def multiclass_data(n: int, seed: int, k: int = 4, signal: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.choice(k, size=n, p=np.linspace(2, 1, k) / np.linspace(2, 1, k).sum())
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), y] += signal
    proba = np.exp(logits)
    return y, proba / proba.sum(axis=1, keepdims=True)


def regression_data(n: int, seed: int, noise: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Observed = 50 + 3 x + noise, predicted = 50 + 3 x: RMSE = noise, R² = 9 / (9 + noise²)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    return 50 + 3 * x + noise * rng.normal(size=n), 50 + 3 * x


# ------------------------------------------------------------------------------------------------ metrics


def test_multiclass_metrics_equal_sklearn() -> None:
    y, proba = multiclass_data(2000, seed=1)
    pred = proba.argmax(axis=1)
    expected = {
        "log_loss": skm.log_loss(y, proba),
        "macro_f1": skm.f1_score(y, pred, average="macro"),
        "micro_f1": skm.f1_score(y, pred, average="micro"),
        "accuracy": skm.accuracy_score(y, pred),
        "ovr_roc_auc": skm.roc_auc_score(y, proba, multi_class="ovr", average="macro"),
    }
    assert set(expected) == set(TASK_METRICS["multiclass"])
    for name, value in expected.items():
        assert metric(name, "multiclass", y, proba) == pytest.approx(value, abs=1e-12), name
    # a class never predicted and one never present: macro F1 averages the classes that occur, as sklearn does
    y5 = np.array([0, 0, 1, 1, 2, 2])
    p5 = np.eye(5)[[0, 1, 1, 1, 0, 2]] * 0.9 + 0.02
    assert metric("macro_f1", "multiclass", y5, p5) == pytest.approx(skm.f1_score(y5, p5.argmax(1), average="macro"))


def test_regression_and_binary_log_loss_equal_sklearn() -> None:
    y, pred = regression_data(1500, seed=2, noise=2.0)
    assert metric("rmse", "regression", y, pred) == pytest.approx(skm.root_mean_squared_error(y, pred), abs=1e-12)
    assert metric("mae", "regression", y, pred) == pytest.approx(skm.mean_absolute_error(y, pred), abs=1e-12)
    assert metric("r2", "regression", y, pred) == pytest.approx(skm.r2_score(y, pred), abs=1e-12)
    big = y + 1e9  # centring keeps R² exact far from zero
    assert metric("r2", "regression", big, pred + 1e9) == pytest.approx(skm.r2_score(big, pred + 1e9), abs=1e-6)
    rng = np.random.default_rng(3)
    yb = rng.random(500) < 0.3
    score = np.clip(0.3 + 0.3 * (yb - 0.3) + 0.2 * rng.normal(size=500), 0.001, 0.999)
    assert metric("log_loss", "binary", yb, score) == pytest.approx(skm.log_loss(yb, score), abs=1e-12)
    assert metric("roc_auc", "binary", yb, score) == pytest.approx(skm.roc_auc_score(yb, score), abs=1e-12)
    assert metric("f1", "binary", yb, score, threshold=0.35) == pytest.approx(skm.f1_score(yb, score >= 0.35))
    assert math.isnan(metric("f1", "binary", yb, score))  # a threshold metric without a threshold


def test_the_resample_kernels_equal_sklearn_on_the_repeated_rows() -> None:
    y, proba = multiclass_data(300, seed=4)
    yr, pred = regression_data(300, seed=5)
    counts = np.random.default_rng(6).integers(0, 4, size=(3, 300)).astype(float)
    mc = multiclass_weighted(counts, y, proba, TASK_METRICS["multiclass"], per_class=True)
    reg = regression_weighted(counts, yr, pred, TASK_METRICS["regression"])
    for b, row in enumerate(counts.astype(int)):
        ry, rp = np.repeat(y, row), np.repeat(proba, row, axis=0)
        assert mc["log_loss"][b] == pytest.approx(skm.log_loss(ry, rp, labels=range(4)), abs=1e-12)
        assert mc["macro_f1"][b] == pytest.approx(skm.f1_score(ry, rp.argmax(1), average="macro"), abs=1e-12)
        assert mc["ovr_roc_auc"][b] == pytest.approx(skm.roc_auc_score(ry, rp, multi_class="ovr"), abs=1e-12)
        recall = skm.recall_score(ry, rp.argmax(1), average=None, labels=range(4))
        assert mc["class_recall"][b] == pytest.approx(recall, abs=1e-12)
        gy, gp = np.repeat(yr, row), np.repeat(pred, row)
        assert reg["rmse"][b] == pytest.approx(skm.root_mean_squared_error(gy, gp), abs=1e-12)
        assert reg["r2"][b] == pytest.approx(skm.r2_score(gy, gp), abs=1e-12)


def test_undefined_metrics_are_nan_and_bad_inputs_are_errors() -> None:
    y, proba = multiclass_data(100, seed=7)
    broken = proba.copy()
    broken[3, 1] = np.nan
    for name in TASK_METRICS["multiclass"]:
        assert math.isnan(metric(name, "multiclass", y, broken)), name
    missing_class = np.where(y == 3, 0, y)  # class 3 never occurs: its one-vs-rest AUC is undefined
    assert math.isnan(metric("ovr_roc_auc", "multiclass", missing_class, proba))
    assert not math.isnan(metric("log_loss", "multiclass", missing_class, proba))
    yr, pred = regression_data(50, seed=8)
    assert math.isnan(metric("r2", "regression", np.full(50, 0.1), pred))  # constant target
    assert metric("rmse", "regression", np.full(50, 0.1), np.full(50, 0.1)) == 0.0
    bad = pred.copy()
    bad[0] = np.inf
    assert all(math.isnan(metric(n, "regression", yr, bad)) for n in TASK_METRICS["regression"])
    with pytest.raises(ValueError, match="unknown regression metric 'roc_auc'"):
        metric("roc_auc", "regression", yr, pred)
    with pytest.raises(ValueError, match="task: 'ranking' is not one of"):
        metric("rmse", "ranking", yr, pred)
    with pytest.raises(ValueError, match=r"class codes outside 0..3"):
        metric("accuracy", "multiclass", y + 1, proba)
    with pytest.raises(ValueError, match="integer class codes"):
        metric("accuracy", "multiclass", np.array(LABELS)[y], proba)
    with pytest.raises(ValueError, match=r"an \(n, k\) probability matrix"):
        metric("accuracy", "multiclass", y, proba[:, 0])
    with pytest.raises(ValueError, match="y_true has 50 rows but the output has 49"):
        metric("mae", "regression", yr, pred[:49])


# ------------------------------------------------------------------------------------------------ evaluate


def test_evaluate_multiclass() -> None:
    y, proba = multiclass_data(3000, seed=9)
    region = np.where(np.arange(y.size) < 30, "tiny", np.where(np.arange(y.size) % 2 == 0, "a", "b"))
    report = evaluate(y, proba, task="multiclass", class_labels=LABELS, slices={"region": region}, n_boot=200)
    assert plain(report) and json.dumps(report)
    assert report["task"] == "multiclass" and report["classes"] == LABELS and report["n"] == y.size
    assert set(report["metrics"]) == set(REPORTED_METRICS["multiclass"])
    for name, entry in report["metrics"].items():
        assert entry["value"] == pytest.approx(metric(name, "multiclass", y, proba)), name
        assert entry["ci_low"] < entry["value"] < entry["ci_high"], name
    assert report["metrics"]["accuracy"]["ci_high"] - report["metrics"]["accuracy"]["ci_low"] < 0.06
    pred = proba.argmax(axis=1)
    matrix = np.array(report["confusion_matrix"]["matrix"])
    assert np.array_equal(matrix, skm.confusion_matrix(y, pred, labels=range(4)))
    assert report["confusion_matrix"]["labels"] == LABELS
    precision = skm.precision_score(y, pred, average=None)
    for j, label in enumerate(LABELS):
        per_class = report["per_class"][label]
        assert per_class["support"] == report["class_counts"][label] == int((y == j).sum())
        assert per_class["precision"]["value"] == pytest.approx(precision[j])
        assert per_class["precision"]["ci_low"] < precision[j] < per_class["precision"]["ci_high"]
    slices = report["slices"]["region"]
    assert slices["tiny"] == {"n": 30, "class_counts": slices["tiny"]["class_counts"], "skipped": "fewer than 50 rows"}
    assert sum(slices["a"]["class_counts"].values()) == slices["a"]["n"]
    assert set(slices["a"]["metrics"]) == set(REPORTED_METRICS["multiclass"])
    with pytest.raises(ValueError, match="class_labels has 3 classes but the output has 4 columns"):
        evaluate(y, proba, task="multiclass", class_labels=LABELS[:3], n_boot=10)


def test_multiclass_bootstrap_is_stratified_and_seeded() -> None:
    y, proba = multiclass_data(600, seed=10)
    a = evaluate(y, proba, task="multiclass", n_boot=100, seed=1)
    assert a == evaluate(y, proba, task="multiclass", n_boot=100, seed=1)
    assert a != evaluate(y, proba, task="multiclass", n_boot=100, seed=2)
    assert a["classes"] == ["0", "1", "2", "3"] and a["bootstrap"]["method"] == "stratified percentile"


def test_regression_cis_cover_the_truth_at_about_the_nominal_rate() -> None:
    noise = 2.0
    reports = [evaluate(*regression_data(800, seed=s, noise=noise), task="regression", n_boot=200, seed=s)
               for s in range(40)]
    truth = {"rmse": noise, "mae": noise * math.sqrt(2 / math.pi), "r2": 9 / (9 + noise**2)}
    for name, true in truth.items():
        covered = np.mean([r["metrics"][name]["ci_low"] <= true <= r["metrics"][name]["ci_high"] for r in reports])
        assert 0.85 <= covered <= 1.0, (name, covered)


def test_evaluate_regression_with_residual_slices() -> None:
    y, pred = regression_data(2000, seed=11)
    region = np.where(np.arange(y.size) % 4 == 0, "biased", "fine")
    pred = np.where(region == "biased", pred - 1.5, pred)  # under-predicts one region by 1.5
    report = evaluate(y, pred, task="regression", slices={"region": region, "tiny": np.arange(y.size) < 10},
                      n_boot=200)
    assert plain(report) and report["task"] == "regression" and report["bootstrap"]["method"] == "percentile"
    assert set(report["metrics"]) == set(REPORTED_METRICS["regression"])
    assert report["metrics"]["rmse"]["value"] == pytest.approx(skm.root_mean_squared_error(y, pred))
    residual = y - pred
    summary = report["residuals"]
    assert summary["mean"] == pytest.approx(residual.mean()) and summary["median"] == pytest.approx(np.median(residual))
    assert summary["q05"] < summary["q25"] < summary["median"] < summary["q75"] < summary["q95"] <= summary["max_abs"]
    assert report["observed"]["mean"] == pytest.approx(y.mean())
    biased, fine = report["slices"]["region"]["biased"], report["slices"]["region"]["fine"]
    assert biased["residuals"]["mean"] == pytest.approx(1.5, abs=0.15) and abs(fine["residuals"]["mean"]) < 0.1
    assert biased["metrics"]["rmse"]["ci_low"] > fine["metrics"]["rmse"]["ci_high"]
    assert report["slices"]["tiny"]["True"] == {"n": 10, "skipped": "fewer than 50 rows"}
    assert all(math.isnan(v) for v in residual_summary(y, np.full(y.size, np.nan)).values())


def test_binary_evaluation_is_unchanged_and_needs_its_threshold() -> None:
    rng = np.random.default_rng(12)
    y = rng.random(500) < 0.3
    score = 1 / (1 + np.exp(-(y + rng.normal(size=500))))
    report = evaluate(y, score, 0.5, n_boot=50)
    assert report["task"] == "binary" and set(report["metrics"]) == set(REPORTED_METRICS["binary"])
    assert "log_loss" not in report["metrics"]  # the binary report keeps its original metrics
    with pytest.raises(ValueError, match="a binary evaluation needs the decision threshold"):
        evaluate(y, score, n_boot=50)


# --------------------------------------------------------------------------------------------------- plots


def test_plots_per_task_even_for_degenerate_input() -> None:
    y, proba = multiclass_data(300, seed=13)
    yr, pred = regression_data(300, seed=14)
    cases = [
        ("multiclass", y, proba, {"confusion_matrix.png"}),
        ("multiclass", y, np.full(proba.shape, np.nan), {"confusion_matrix.png"}),
        ("regression", yr, pred, {"predicted_vs_observed.png", "residuals.png"}),
        ("regression", yr, np.full(yr.size, np.nan), {"predicted_vs_observed.png", "residuals.png"}),
    ]
    for task, labels, output, names in cases:
        images = plot_curves(labels, output, task=task, class_labels=LABELS if task == "multiclass" else ())
        assert set(images) == names
        assert all(png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 2000 for png in images.values())
    pyplot = sys.modules.get("matplotlib.pyplot")
    assert pyplot is None or not pyplot.get_fignums()


def test_interval_report_checks_the_coverage_on_the_holdout() -> None:
    y, pred = regression_data(4000, seed=15, noise=1.0)
    tag = {"coverage": 0.9, "halfwidth": 1.6449, "method": "split_conformal_oof"}  # the N(0, 1) 90 % halfwidth
    report = interval_report(y, pred, tag)
    assert report["method"] == "split_conformal_oof" and report["holdout_rows"] == 4000
    assert 0.88 <= report["holdout_coverage"] <= 0.92
    assert interval_report(y, pred, {**tag, "halfwidth": 0.0})["holdout_coverage"] == 0.0
    assert math.isnan(interval_report(y, pred, {"coverage": 0.9})["holdout_coverage"])
