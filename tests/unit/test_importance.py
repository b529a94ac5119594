"""Global explanations: permutation importance, partial dependence, mean |contribution| and drift weights.

Synthetic data with a known answer: the label is built from x1 alone, `noise` is an independent random column and
`c` a random category; real pipelines are fitted as training fits them (the spec's preprocessing, calibration).
"""

from __future__ import annotations

import math
import struct
from typing import Any

import numpy as np
import pandas as pd
import pytest

from crispflow.model.features import features
from crispflow.model.importance import (
    ImportanceError,
    drift_weights,
    mean_abs_contributions,
    partial_dependence_plots,
    permutation_importance,
)
from crispflow.model.tasks import labels
from crispflow.model.training import fit_final
from crispflow.monitoring.drift import _weights
from crispflow.spec import PipelineSpec, parse_spec

CLASSES = ["mid", "high", "low"]
CANDIDATES = {
    "binary": [{"name": "logreg", "estimator": "logistic_regression", "grid": {"C": [1.0]}},
               {"name": "hgb", "estimator": "hist_gradient_boosting", "grid": {"max_iter": [40]}}],
    "multiclass": [{"name": "logreg", "estimator": "logistic_regression", "grid": {"C": [1.0]}}],
    "regression": [{"name": "ridge", "estimator": "ridge", "grid": {"alpha": [1.0]}}],
}
FAST = {"repeats": 5, "n_boot": 300}


def spec_for(task: str, *, copy: bool = False, blessing: dict[str, Any] | None = None) -> PipelineSpec:
    """Numeric x1 (the signal), x2 and noise, a category c, optionally x1_copy (x1 plus a little noise)."""
    target = {"binary": {"column": "y", "positive": "yes"},
              "multiclass": {"column": "y", "task": "multiclass", "classes": CLASSES},
              "regression": {"column": "y", "task": "regression"}}[task]
    y_column = {"binary": {"name": "y", "type": "category", "allowed": ["yes", "no"]},
                "multiclass": {"name": "y", "type": "category", "allowed": sorted(CLASSES)},
                "regression": {"name": "y", "type": "float"}}[task]
    numeric = ["x1", *(["x1_copy"] if copy else []), "x2", "noise"]
    data = {
        "name": f"importance_{task}",
        "sources": [{"name": "rows", "kind": "file", "url": "rows.parquet"}],
        "key": "id",
        "target": target,
        "columns": [{"name": "id", "type": "int"}, *({"name": n, "type": "float"} for n in numeric),
                    {"name": "c", "type": "category", "allowed": ["a", "b", "c"]}, y_column],
        "training": {"candidates": CANDIDATES[task], "cv_folds": 3, "min_rows": 100},
        **({"blessing": blessing} if blessing else {}),
    }
    return parse_spec(data, "test")


def frame_for(task: str, n: int, seed: int) -> pd.DataFrame:
    """y from x1 alone (x2 is correlated with nothing, noise is noise, c is a random category)."""
    rng = np.random.default_rng(seed)
    x1 = rng.normal(size=n)
    frame = pd.DataFrame({
        "id": np.arange(n), "x1": x1, "x1_copy": x1 + rng.normal(scale=0.1, size=n), "x2": rng.normal(size=n),
        "noise": rng.normal(size=n), "c": pd.Series(rng.choice(["a", "b", "c"], size=n), dtype=object),
    })
    if task == "binary":
        frame["y"] = np.where(rng.random(n) < 1 / (1 + np.exp(-3.0 * x1)), "yes", "no")
    elif task == "multiclass":
        noisy = 2.0 * x1 + rng.logistic(size=n) * 0.5
        frame["y"] = np.select([noisy < -1.0, noisy > 1.0], ["low", "high"], "mid")
    else:
        frame["y"] = 5.0 + 3.0 * x1 + rng.normal(size=n)
    frame.loc[frame.index[::17], "x2"] = np.nan  # missing values are imputed inside the pipeline
    return frame


def fitted(spec: PipelineSpec, candidate: str, n: int = 1200) -> tuple[Any, pd.DataFrame]:
    """The final model as training builds it (calibrated classifiers) on one frame, and a fresh holdout."""
    params = next(c for c in spec.training.candidates if c.name == candidate).grid
    config = {"config_id": f"{candidate}-t", "candidate": candidate, "params": {k: v[0] for k, v in params.items()}}
    model, _, _ = fit_final(spec, config, frame_for(spec.task, n, seed=1))
    return model, frame_for(spec.task, 800, seed=4)


pytestmark = pytest.mark.usefixtures("one_thread")  # direct fits run single-threaded (conftest)


@pytest.fixture(scope="module")
def binary_spec() -> PipelineSpec:
    return spec_for("binary")


@pytest.fixture(scope="module")
def binary_logreg(binary_spec) -> tuple[Any, pd.DataFrame]:
    return fitted(binary_spec, "logreg")


def _by_feature(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["feature"]: e for e in result["features"]}


# --- permutation importance -------------------------------------------------------------------------------


@pytest.mark.parametrize("candidate", ["logreg", "hgb"])
def test_the_label_s_feature_ranks_first_and_a_noise_column_s_ci_covers_zero(binary_spec, candidate) -> None:
    model, holdout = fitted(binary_spec, candidate)
    result = permutation_importance(binary_spec, model, holdout, **FAST)
    assert result["metrics"] == ["roc_auc", "log_loss"] and result["rows"] == len(holdout)
    first = result["features"][0]
    assert first["feature"] == "x1"
    for metric in result["metrics"]:
        assert first[metric]["low"] > 0  # the CI excludes 0: the model relies on x1
        noise = _by_feature(result)["noise"][metric]
        assert noise["low"] <= 0 <= noise["high"], (metric, noise)
        assert noise["low"] <= noise["importance"] <= noise["high"]
    primary = [e["roc_auc"]["importance"] for e in result["features"]]
    assert primary == sorted(primary, reverse=True)


def test_a_noise_column_s_ci_covers_zero_at_about_the_nominal_rate(binary_spec, binary_logreg) -> None:
    """A 95 % CI misses a true 0 on ~5 % of holdouts (so a single holdout may miss): on 20 fresh holdouts the
    noise column's CIs cover 0 at close to the nominal rate, and the x1 CIs never do."""
    model, _ = binary_logreg
    covers = {"roc_auc": 0, "log_loss": 0}
    for seed in range(20):
        result = permutation_importance(binary_spec, model, frame_for("binary", 400, seed=100 + seed), repeats=3,
                                        n_boot=200, seed=seed)
        found = _by_feature(result)
        for metric in covers:
            covers[metric] += found["noise"][metric]["low"] <= 0 <= found["noise"][metric]["high"]
            assert found["x1"][metric]["low"] > 0
    assert min(covers.values()) >= 17, covers


def test_a_category_is_permuted_as_one_spec_column(binary_spec, binary_logreg) -> None:
    model, holdout = binary_logreg
    n_encoded = model.calibrated_classifiers_[0].estimator[0].transform(features(binary_spec, holdout.head(5))).shape[1]
    assert n_encoded > len(binary_spec.feature_columns)  # the pipeline one-hot encodes c (and adds indicators)
    result = permutation_importance(binary_spec, model, holdout, **FAST)
    names = [e["feature"] for e in result["features"]]
    assert sorted(names) == sorted(binary_spec.feature_columns)  # each spec column exactly once: c, never c_a
    assert _by_feature(result)["c"]["type"] == "category"


def test_results_are_reproducible_json_and_the_baseline_is_the_holdout_metric(binary_spec, binary_logreg) -> None:
    import json

    from sklearn.metrics import log_loss, roc_auc_score

    model, holdout = binary_logreg
    a = permutation_importance(binary_spec, model, holdout, **FAST)
    assert json.loads(json.dumps(a)) == a
    assert a == permutation_importance(binary_spec, model, holdout, **FAST)
    p = model.predict_proba(features(binary_spec, holdout))[:, 1]
    y = labels(binary_spec, holdout)
    assert a["baseline"]["roc_auc"] == pytest.approx(roc_auc_score(y, p))
    assert a["baseline"]["log_loss"] == pytest.approx(log_loss(y, p))


def test_a_noisy_copy_is_noted_as_sharing_importance() -> None:
    spec = spec_for("binary", copy=True)
    model, holdout = fitted(spec, "logreg")
    result = permutation_importance(spec, model, holdout, repeats=2, n_boot=100)
    pairs = {tuple(sorted(p["features"])): p["spearman"] for p in result["correlated"]}
    assert pairs[("x1", "x1_copy")] > 0.95
    assert ("noise", "x2") not in pairs and ("x1", "x2") not in pairs
    assert any("share importance" in n and "x1 ~ x1_copy" in n for n in result["notes"])
    without = permutation_importance(spec_for("binary"), *fitted(spec_for("binary"), "logreg"), repeats=2, n_boot=100)
    assert without["correlated"] == [] and not any("share importance" in n for n in without["notes"])


def test_regression_importance_in_squared_error_matches_the_known_answer() -> None:
    spec = spec_for("regression")
    model, holdout = fitted(spec, "ridge")
    result = permutation_importance(spec, model, holdout, **FAST)
    assert result["metrics"] == ["rmse", "squared_error"]
    x1 = result["features"][0]
    assert x1["feature"] == "x1"
    # y = 5 + 3 x1 + N(0, 1): permuting x1 adds E[(3 x1 - 3 x1')^2] = 18 to the mean squared error
    assert x1["squared_error"]["importance"] == pytest.approx(18.0, rel=0.2)
    assert x1["squared_error"]["low"] < x1["squared_error"]["importance"] < x1["squared_error"]["high"]
    assert result["baseline"]["squared_error"] == pytest.approx(1.0, rel=0.2)
    noise = _by_feature(result)["noise"]["squared_error"]
    assert noise["low"] <= 0 <= noise["high"]


def test_multiclass_importance_uses_log_loss_once() -> None:
    spec = spec_for("multiclass")
    model, holdout = fitted(spec, "logreg")
    result = permutation_importance(spec, model, holdout, **FAST)
    assert result["metrics"] == ["log_loss"] and result["primary_metric"] == "log_loss"
    assert result["features"][0]["feature"] == "x1" and result["features"][0]["log_loss"]["low"] > 0
    noise = _by_feature(result)["noise"]["log_loss"]
    assert noise["low"] <= 0 <= noise["high"]


def test_a_threshold_metric_needs_the_threshold_and_bad_arguments_are_named(binary_logreg) -> None:
    spec = spec_for("binary", blessing={"primary_metric": "f1"})
    model, holdout = binary_logreg
    with pytest.raises(ImportanceError, match="threshold: the primary metric 'f1'"):
        permutation_importance(spec, model, holdout, **FAST)
    result = permutation_importance(spec, model, holdout, threshold=0.5, **FAST)
    assert result["metrics"] == ["f1", "log_loss"] and result["features"][0]["feature"] == "x1"
    with pytest.raises(ImportanceError, match="repeats"):
        permutation_importance(spec, model, holdout, repeats=0)
    with pytest.raises(ImportanceError, match="alpha"):
        permutation_importance(spec, model, holdout, alpha=1.5)
    with pytest.raises(ImportanceError, match="holdout: needs at least 2 rows"):
        permutation_importance(spec, model, holdout.head(1), threshold=0.5)


# --- partial dependence -----------------------------------------------------------------------------------


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


@pytest.mark.parametrize("task", ["binary", "multiclass"])
def test_partial_dependence_thumbnails_for_numeric_and_category_features(task) -> None:
    import matplotlib.pyplot as plt

    spec = spec_for(task)
    model, holdout = fitted(spec, "logreg")
    open_before = plt.get_fignums()
    plots = partial_dependence_plots(spec, model, holdout, ["x1", "c", "x2"], ice_rows=20)
    assert set(plots) == {"x1", "c", "x2"}
    assert all(_png_size(png) == (320, 240) for png in plots.values())  # 4 x 3 in at 80 dpi
    assert plt.get_fignums() == open_before == []
    with pytest.raises(ImportanceError, match=r"features: \['y'\] are not feature columns"):
        partial_dependence_plots(spec, model, holdout, ["y"])


# --- mean |contribution| ----------------------------------------------------------------------------------


def test_mean_abs_contributions_with_a_bootstrap_ci() -> None:
    rng = np.random.default_rng(3)
    contributions = np.column_stack([rng.normal(scale=2.0, size=3000), np.zeros(3000), rng.normal(size=3000)])
    out = mean_abs_contributions(contributions, ["a", "zero", "b"], n_boot=400)
    assert [e["feature"] for e in out] == ["a", "b", "zero"]
    a = out[0]
    assert a["low"] < 2.0 * math.sqrt(2 / math.pi) < a["high"]  # E|N(0, 2^2)|
    assert a["mean_abs"] == pytest.approx(np.abs(contributions[:, 0]).mean())
    assert out[2] == {"feature": "zero", "mean_abs": 0.0, "low": 0.0, "high": 0.0}
    with pytest.raises(ImportanceError, match=r"contributions: must be an \(n, 2\) array"):
        mean_abs_contributions(contributions, ["a", "b"])


# --- drift weights ----------------------------------------------------------------------------------------


def test_drift_weights_follow_the_primary_importance_and_the_monitor_accepts_them(binary_spec, binary_logreg
                                                                                 ) -> None:
    model, holdout = binary_logreg
    result = permutation_importance(binary_spec, model, holdout, **FAST)
    weights = drift_weights(result)
    assert set(weights) == set(binary_spec.feature_columns)
    assert all(w >= 0 for w in weights.values()) and sum(weights.values()) == pytest.approx(1.0)
    assert max(weights, key=weights.get) == "x1" and weights["x1"] > 0.5
    positive = {e["feature"] for e in result["features"] if e["roc_auc"]["importance"] > 0}
    floor = 0.25 / len(weights)  # DRIFT_WEIGHT_FLOOR spread equally: every feature counts a little
    assert {f for f, w in weights.items() if w > floor + 1e-12} == positive
    assert min(weights.values()) >= floor - 1e-12
    assert _weights(list(weights), weights) == pytest.approx(weights)  # what the drift monitor checks
    subset = drift_weights(result, features=["x2", "noise", "c"])
    assert set(subset) == {"x2", "noise", "c"} and sum(subset.values()) == pytest.approx(1.0)


def test_drift_weights_are_equal_when_no_feature_helps() -> None:
    def entry(name: str, value: float) -> dict[str, Any]:
        return {"feature": name, "roc_auc": {"importance": value, "low": value - 1, "high": value + 1}}

    importance = {"metrics": ["roc_auc", "log_loss"], "primary_metric": "roc_auc",
                  "features": [entry("a", 0.0), entry("b", -0.02), entry("c", float("nan"))]}
    assert drift_weights(importance) == {"a": 1 / 3, "b": 1 / 3, "c": 1 / 3}
    importance["features"][1] = entry("b", 0.03)
    assert drift_weights(importance, floor=0.0) == {"a": 0.0, "b": 1.0, "c": 0.0}
    assert drift_weights(importance) == pytest.approx({"a": 0.25 / 3, "b": 0.75 + 0.25 / 3, "c": 0.25 / 3})
    with pytest.raises(ImportanceError, match=r"floor: 1\.5 must be in \[0, 1\]"):
        drift_weights(importance, floor=1.5)


def test_the_loss_s_paired_mean_difference_equals_the_evaluation_kernel(binary_spec, binary_logreg) -> None:
    """The log-loss importance (one matrix product of per-row loss differences) is the evaluation's log loss
    (`task_weighted`) recomputed per repeat and resample: same point value and bootstrap draws."""
    from crispflow.model.evaluation import task_resample_counts
    from crispflow.model.importance import _drops, _importances, _permuted_outputs, _values
    from crispflow.model.tasks import model_output

    model, holdout = binary_logreg
    X, y = features(binary_spec, holdout), labels(binary_spec, holdout)
    base = model_output(binary_spec, model, X)
    permuted = _permuted_outputs(binary_spec, model, X, 3, 0)
    _, point, boots = _importances("binary", ["roc_auc", "log_loss"], y, base, permuted, None, 50, 0)
    ones = np.ones((1, len(y)))
    for f, out in permuted.items():
        direct = _drops("binary", ["log_loss"], y, _values("binary", ["log_loss"], ones, y, base, None), out, ones,
                        None)
        assert point[f]["log_loss"] == pytest.approx(direct["log_loss"][0], abs=1e-12)
        counts = next(iter(task_resample_counts("binary", y, 50, 0)))
        original = _values("binary", ["log_loss"], counts, y, base, None)
        drawn = _drops("binary", ["log_loss"], y, original, out, counts, None)["log_loss"]
        assert np.allclose(boots[f]["log_loss"], drawn, atol=1e-12)


def test_feature_permutations_never_share_the_bootstrap_s_random_stream() -> None:
    """The bootstrap draws from `seed` alone (SeedSequence([seed, 0]) is the same stream): feature 0's permutations
    must come from another stream, and each feature's from its own."""
    from crispflow.model.importance import permutation_rng

    for seed in (0, 7):
        bootstrap = np.random.default_rng(seed).permutation(500)
        streams = [permutation_rng(seed, j).permutation(500) for j in range(3)]
        assert all(not np.array_equal(s, bootstrap) for s in streams)
        assert not np.array_equal(streams[0], streams[1]) and not np.array_equal(streams[1], streams[2])
        assert np.array_equal(permutation_rng(seed, 0).permutation(500), streams[0])  # seeded
