"""Holdout evaluation: metrics equal sklearn's, bootstrap CIs cover the truth and narrow with n, NaN when undefined."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm
from sklearn import metrics as skm
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from crispflow.model.evaluation import (
    HIGHER_IS_BETTER,
    METRICS,
    bootstrap_ci,
    compute_metric,
    evaluate,
    measure_latency,
    paired_latency,
    plot_curves,
    weighted_metrics,
)

ROOT = Path(__file__).resolve().parents[2]
FEATURES = ["int_rate", "annual_inc", "revol_util", "inq_last_6mths", "funded_amnt"]


def binormal(n: int, seed: int, shift: float = 1.0, prevalence: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """y ~ Bernoulli(prevalence), score = shift * y + N(0, 1): the true ROC AUC is Phi(shift / sqrt 2)."""
    rng = np.random.default_rng(seed)
    y = rng.random(n) < prevalence
    return y, shift * y + rng.normal(size=n)


def assert_plain_json(obj: object) -> None:
    """Only dict/list/str/int/float/bool/None, never numpy scalars, and json.dumps accepts it."""
    if isinstance(obj, dict):
        assert all(type(k) is str for k in obj), obj.keys()
        for value in obj.values():
            assert_plain_json(value)
    elif isinstance(obj, list):
        for value in obj:
            assert_plain_json(value)
    else:
        assert type(obj) in (str, int, float, bool, type(None)), (type(obj), obj)
    json.dumps(obj)


@pytest.fixture(scope="module")
def lending() -> dict[str, object]:
    """A logistic regression on five numeric columns of the demo data, scored on a stratified holdout."""
    frame = pd.read_parquet(ROOT / "include" / "data" / "lending_club.parquet")
    y = (frame["Class"] == "bad").to_numpy()
    train, holdout = train_test_split(frame.index.to_numpy(), test_size=0.75, stratify=y, random_state=0)
    model = make_pipeline(StandardScaler(), LogisticRegression()).fit(frame.loc[train, FEATURES], y[train])
    test = frame.loc[holdout].reset_index(drop=True)
    return {"frame": test, "y": y[holdout], "score": model.predict_proba(test[FEATURES])[:, 1], "model": model}


# ------------------------------------------------------------------------------------------------ metrics


@pytest.mark.parametrize("decimals", [None, 1])  # continuous scores, and heavy ties
def test_metrics_equal_sklearn(decimals: int | None) -> None:
    y, raw = binormal(3000, seed=1)
    score = norm.cdf(raw - 1.5)
    score = score if decimals is None else np.round(score, decimals)
    pred = score >= 0.3
    expected = {
        "precision": skm.precision_score(y, pred),
        "recall": skm.recall_score(y, pred),
        "f1": skm.f1_score(y, pred),
        "roc_auc": skm.roc_auc_score(y, score),
        "average_precision": skm.average_precision_score(y, score),
        "brier": skm.brier_score_loss(y, score),
    }
    for name in METRICS:
        assert compute_metric(name, y, score, pred) == pytest.approx(expected[name], abs=1e-12), name


def test_resample_weights_equal_sklearn_on_the_repeated_rows() -> None:
    """The vectorised kernel on a row of multiplicities is the metric on the data with rows repeated."""
    y, raw = binormal(400, seed=2)
    score = np.round(norm.cdf(raw - 1.5), 2)  # ties, so the grouping by distinct score is exercised
    pred = score >= 0.3
    counts = np.random.default_rng(3).integers(0, 4, size=(3, y.size)).astype(float)
    got = weighted_metrics(counts, y, score, pred, METRICS)
    for b, row in enumerate(counts.astype(int)):
        ry, rs, rp = np.repeat(y, row), np.repeat(score, row), np.repeat(pred, row)
        assert got["roc_auc"][b] == pytest.approx(skm.roc_auc_score(ry, rs), abs=1e-12)
        assert got["average_precision"][b] == pytest.approx(skm.average_precision_score(ry, rs), abs=1e-12)
        assert got["brier"][b] == pytest.approx(skm.brier_score_loss(ry, rs), abs=1e-12)
        assert got["f1"][b] == pytest.approx(skm.f1_score(ry, rp), abs=1e-12)


def test_undefined_metrics_are_nan_never_an_exception() -> None:
    score = np.linspace(0, 1, 20)
    only_negatives, only_positives = np.zeros(20, bool), np.ones(20, bool)
    assert math.isnan(compute_metric("roc_auc", only_negatives, score, score > 0.5))
    assert math.isnan(compute_metric("roc_auc", only_positives, score, score > 0.5))
    assert math.isnan(compute_metric("average_precision", only_negatives, score, score > 0.5))
    assert math.isnan(compute_metric("recall", only_negatives, score, score > 0.5))
    assert compute_metric("precision", only_negatives, score, score > 0.5) == 0.0  # defined: all wrong
    assert math.isnan(compute_metric("precision", only_positives, score, np.zeros(20, bool)))  # none predicted
    assert math.isnan(compute_metric("f1", only_negatives, score, np.zeros(20, bool)))
    assert compute_metric("brier", only_negatives, score, score > 0.5) == pytest.approx(np.mean(score**2))
    with_nan = score.copy()
    with_nan[3] = np.nan
    y = np.arange(20) % 2 == 0
    for name in ("roc_auc", "average_precision", "brier"):
        assert math.isnan(compute_metric(name, y, with_nan, with_nan > 0.5)), name
    assert not math.isnan(compute_metric("recall", y, with_nan, with_nan > 0.5))
    ci = bootstrap_ci(only_negatives, score, 0.5, ["roc_auc", "precision"], n_boot=50)
    assert all(math.isnan(v) for v in ci["roc_auc"].values())
    assert ci["precision"]["value"] == 0.0
    with pytest.raises(ValueError, match="unknown metric"):
        compute_metric("accuracy", y, score, score > 0.5)


def test_labels_must_be_boolean_or_zero_one() -> None:
    score = np.array([0.0, 0.3, 0.7, 1.0])
    assert compute_metric("recall", np.array([0, 1, 0, 1]), score, score > 0.5) == 0.5
    with pytest.raises(ValueError, match="y_true must be boolean or 0/1"):
        compute_metric("recall", np.array(["good", "bad", "good", "bad"]), score, score > 0.5)
    with pytest.raises(ValueError, match="y_true has 4 rows but score has 3"):
        compute_metric("recall", np.array([0, 1, 0, 1]), score[:3], score > 0.5)


# --------------------------------------------------------------------------------------------- bootstrap


def test_ci_contains_the_true_values_on_a_large_sample() -> None:
    shift, threshold, prevalence = 1.0, 1.0, 0.2
    y, score = binormal(20_000, seed=4, shift=shift, prevalence=prevalence)
    recall = norm.sf(threshold - shift)
    fpr = norm.sf(threshold)
    truth = {
        "roc_auc": norm.cdf(shift / math.sqrt(2)),
        "recall": recall,
        "precision": prevalence * recall / (prevalence * recall + (1 - prevalence) * fpr),
    }
    ci = bootstrap_ci(y, score, threshold, list(truth), n_boot=500, seed=0)
    for name, true in truth.items():
        assert ci[name]["ci_low"] < true < ci[name]["ci_high"], (name, true, ci[name])
        assert ci[name]["ci_high"] - ci[name]["ci_low"] < 0.04, name


def auc_ci_width(n: int, seed: int) -> float:
    ci = bootstrap_ci(*binormal(n, seed=seed), 0.5, ["roc_auc"], n_boot=300)["roc_auc"]
    return ci["ci_high"] - ci["ci_low"]


def test_ci_covers_the_true_auc_at_the_nominal_rate_and_narrows_with_n() -> None:
    true_auc = norm.cdf(1 / math.sqrt(2))
    covered = [
        bootstrap_ci(*binormal(1500, seed=100 + k), 0.5, ["roc_auc"], n_boot=300, seed=k)["roc_auc"] for k in range(40)
    ]
    coverage = np.mean([c["ci_low"] <= true_auc <= c["ci_high"] for c in covered])
    assert 0.85 <= coverage <= 1.0, coverage  # nominal 95%
    widths = {n: np.mean([auc_ci_width(n, seed) for seed in range(3)]) for n in (1000, 10_000)}
    assert 2.5 < widths[1000] / widths[10_000] < 4.0  # ~ sqrt(10)


def test_bootstrap_is_deterministic_and_seeded() -> None:
    y, score = binormal(2000, seed=5)
    a = bootstrap_ci(y, score, 0.5, METRICS, n_boot=200, seed=7)
    assert a == bootstrap_ci(y, score, 0.5, METRICS, n_boot=200, seed=7)
    assert a != bootstrap_ci(y, score, 0.5, METRICS, n_boot=200, seed=8)
    for name in METRICS:
        assert a[name]["ci_low"] <= a[name]["value"] <= a[name]["ci_high"], name


def test_bootstrap_of_7400_rows_1000_resamples_6_metrics_is_fast() -> None:
    y, score = binormal(7400, seed=6, prevalence=0.07)
    start = time.perf_counter()
    bootstrap_ci(y, norm.cdf(score - 1.5), 0.3, METRICS, n_boot=1000)
    assert time.perf_counter() - start < 4.0  # ~1 s on 2 cores; the budget is ~3 s


# -------------------------------------------------------------------------------------------- evaluate


def test_evaluate_on_the_demo_data(lending: dict) -> None:
    frame, y, score = lending["frame"], lending["y"], lending["score"]
    tiny = np.where(np.arange(len(y)) < 30, "tiny", "rest")
    report = evaluate(
        y,
        score,
        0.06,
        slices={"term": frame["term"].to_numpy(), "verification_status": frame["verification_status"], "t": tiny},
        n_boot=200,
        seed=1,
    )
    assert_plain_json(report)
    assert report["n"] == len(y) and report["positives"] == int(y.sum())
    assert sum(report["confusion_matrix"].values()) == len(y)
    assert report["confusion_matrix"]["tp"] + report["confusion_matrix"]["fn"] == int(y.sum())
    auc = report["metrics"]["roc_auc"]
    assert auc["value"] == pytest.approx(skm.roc_auc_score(y, score))
    assert 0.65 < auc["ci_low"] < auc["value"] < auc["ci_high"] < 0.8
    assert set(report["metrics"]) == set(METRICS) and set(HIGHER_IS_BETTER) == set(METRICS)
    terms = report["slices"]["term"]
    assert set(terms) == {"term_36", "term_60"}
    assert sum(s["n"] for s in terms.values()) == len(y)
    assert all("metrics" in s for s in terms.values())
    assert report["slices"]["t"]["tiny"] == {"n": 30, "positives": int(y[:30].sum()), "skipped": "fewer than 50 rows"}
    # the 60-month loans are riskier
    assert terms["term_60"]["positives"] / terms["term_60"]["n"] > terms["term_36"]["positives"] / terms["term_36"]["n"]


def test_evaluate_reports_missing_slice_values_and_rejects_misaligned_slices() -> None:
    y, score = binormal(300, seed=8)
    values = np.array(["a"] * 150 + [None] * 150, dtype=object)
    report = evaluate(y, score, 0.5, slices={"c": values}, n_boot=50)
    assert set(report["slices"]["c"]) == {"a", "<missing>"}
    with pytest.raises(ValueError, match="slice has 10 values for 300 rows"):
        evaluate(y, score, 0.5, slices={"c": values[:10]}, n_boot=50)


# ------------------------------------------------------------------------------------- latency and plots


def test_measure_latency_measures_batch_and_single_rows(lending: dict) -> None:
    model, frame = lending["model"], lending["frame"][FEATURES]

    def slow(rows: pd.DataFrame) -> np.ndarray:
        time.sleep(0.002)  # a fixed per-call overhead, as a remote feature lookup would add
        return model.predict_proba(rows)[:, 1]

    out = measure_latency(slow, frame.iloc[:2000], single_rows=20, repeats=2)
    assert_plain_json(out)
    assert out["single_rows"] == 20 and out["batch_rows"] == 2000
    assert 2.0 <= out["latency_p50_ms"] <= out["latency_p95_ms"] <= out["latency_max_ms"]
    assert out["batch_ms_per_row"] * 2000 >= 2.0
    assert out["batch_ms_per_row"] < out["latency_p50_ms"]  # batching amortises the per-call overhead


def test_paired_latency_times_models_row_by_row_in_alternating_order(lending: dict) -> None:
    frame = lending["frame"][FEATURES].iloc[:500]
    calls: list[tuple[str, int]] = []

    def sleeper(name: str, ms: float):
        def predict(rows: pd.DataFrame) -> np.ndarray:
            calls.append((name, int(rows.index[0])))
            time.sleep(ms / 1000)
            return np.zeros(len(rows))
        return predict

    out = paired_latency({"a": sleeper("a", 3.0), "b": sleeper("b", 1.0)}, frame, single_rows=10, rounds=3)
    assert set(out) == {"a", "b"} and out["a"] >= 3.0 and out["b"] >= 1.0
    timed = calls[2:]  # after one warm-up call each
    assert len(timed) == 2 * 10 * 3
    pairs = [timed[i:i + 2] for i in range(0, len(timed), 2)]
    assert all(first[1] == second[1] for first, second in pairs)  # the same row, back to back
    assert {tuple(n for n, _ in pair) for pair in pairs} == {("a", "b"), ("b", "a")}
    assert [n for n, _ in pairs[0]] != [n for n, _ in pairs[1]]  # the order alternates
    with pytest.raises(ValueError, match="at least one row"):
        paired_latency({"a": sleeper("a", 0)}, frame.iloc[:0])


def test_plot_curves_writes_four_pngs_even_for_degenerate_input(lending: dict) -> None:
    y, score = lending["y"], lending["score"]
    for args in (
        (y, score, 0.06),
        (np.zeros(100, bool), np.linspace(0, 1, 100), 0.5),
        (y, np.full(y.size, np.nan), 0.5),
    ):
        images = plot_curves(*args)
        assert set(images) == {"roc.png", "pr.png", "calibration.png", "confusion_matrix.png"}
        assert all(png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 2000 for png in images.values())
    pyplot = sys.modules.get("matplotlib.pyplot")
    assert pyplot is None or not pyplot.get_fignums()  # nothing left open
