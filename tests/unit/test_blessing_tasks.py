"""The blessing gate for regression and multiclass, and the cold-start no-skill floor of every task.

Synthetic holdouts with fixed seeds. Regression: y = signal + N(0, 1); a model predicts signal + its own noise, so
two models with noise of the same size are equally good and a model with more noise is worse by a known amount.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from support.json_checks import plain

from crispflow.model.blessing import decide, paired_bootstrap, verdict_summary
from crispflow.model.tasks import no_skill_output, per_row_loss
from crispflow.spec import Blessing
from crispflow.stats import class_resample_counts, plain_resample_counts

COST = {"latency_p95_ms": 2.0, "size_bytes": 10_000}
PRIORS = np.array([0.4, 0.3, 0.2, 0.1])
# RMSE of a model with noise s is sqrt(1 + s^2): 0.3 -> 1.044; 10 % worse (1.149) needs s = sqrt(1.21 * 1.09 - 1)
EQUAL_NOISE = 0.3
WORSE_NOISE = float(np.sqrt(1.21 * (1 + EQUAL_NOISE**2) - 1))
# The margin says how much worse is acceptable, in RMSE units: ~5 % of the RMSE, half-way between "as good" and
# "10 % worse". With 1,500 rows the standard error of the RMSE difference is ~0.01, so both errors are small.
RMSE_POLICY = Blessing(primary_metric="rmse", non_inferiority_margin=0.05, bootstrap_samples=200)


def check(verdict: dict, name: str) -> dict:
    return next(c for c in verdict["checks"] if c["name"] == name)


def regression_holdout(seed: int, n: int = 1500, champion_noise: float = EQUAL_NOISE,
                       challenger_noise: float = EQUAL_NOISE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(observed, champion prediction, challenger prediction) on a fresh holdout."""
    rng = np.random.default_rng(seed)
    signal = 2.0 * rng.normal(size=n)
    y = signal + rng.normal(size=n)
    return y, signal + champion_noise * rng.normal(size=n), signal + challenger_noise * rng.normal(size=n)


def versus(policy: Blessing, y: np.ndarray, challenger: np.ndarray, champion: np.ndarray, task: str,
           **kwargs: object) -> dict:
    return decide(policy, y, challenger, None, task=task, champion_score=champion, challenger_cost=COST,
                  champion_cost=COST, **kwargs)


def softmax(logits: np.ndarray) -> np.ndarray:
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    return p / p.sum(axis=1, keepdims=True)


def multiclass_holdout(seed: int, n: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """Class codes drawn with PRIORS and shared logits: the true class gets +1.2, every class some noise."""
    rng = np.random.default_rng(seed)
    y = rng.choice(PRIORS.size, size=n, p=PRIORS)
    logits = np.log(PRIORS) + 0.5 * rng.normal(size=(n, PRIORS.size))
    logits[np.arange(n), y] += 1.2
    return y, logits


def model(logits: np.ndarray, seed: int, noise: float = 0.3, strength: float = 1.0) -> np.ndarray:
    """A model's probabilities: the shared logits scaled by `strength` plus its own noise."""
    rng = np.random.default_rng(seed)
    return softmax(strength * logits + noise * rng.normal(size=logits.shape))


# ------------------------------------------------------------------------------------------ regression


def test_a_regression_challenger_10_percent_worse_in_rmse_is_not_blessed() -> None:
    blessed, ratios = [], []
    for seed in range(30):
        y, champion, challenger = regression_holdout(seed, challenger_noise=WORSE_NOISE)
        verdict = versus(RMSE_POLICY, y, challenger, champion, "regression")
        main = check(verdict, "non_inferiority")
        assert main["method"] == "paired_bootstrap" and main["metric"] == "rmse"
        assert main["estimate"] == pytest.approx(main["champion"] - main["challenger"])  # RMSE units, + = better
        ratios.append(main["challenger"] / main["champion"])
        blessed.append(verdict["blessed"])
    assert np.mean(ratios) == pytest.approx(1.1, abs=0.01)
    assert not any(blessed)
    assert verdict["reasons"][0].startswith("rmse: champion - challenger = -0.1")


def test_an_equally_good_regression_challenger_is_rejected_at_most_5_percent_of_the_time() -> None:
    """100 independent holdouts, two models with independent noise of the same size (measured: 0 rejections)."""
    rejected = []
    for seed in range(100, 200):
        y, champion, challenger = regression_holdout(seed)
        verdict = versus(RMSE_POLICY, y, challenger, champion, "regression")
        rejected.append(not verdict["blessed"])
    assert np.mean(rejected) <= 0.05, np.mean(rejected)


def test_the_paired_bootstrap_test_has_about_its_nominal_size() -> None:
    """With margin 0 an equally good challenger passes only when chance favours it: a one-sided 5 % test
    (measured 6.5-7.5 % over 400-800 holdouts: the percentile bootstrap is slightly liberal at this n)."""
    policy = Blessing(primary_metric="rmse", non_inferiority_margin=0.0, bootstrap_samples=200)
    blessed = [versus(policy, *regression_holdout(seed), "regression")["blessed"] for seed in range(300, 500)]
    assert 0.01 <= np.mean(blessed) <= 0.11, np.mean(blessed)


def test_a_mean_loss_difference_is_the_paired_bootstrap_of_per_row_loss_differences() -> None:
    y, a, b = regression_holdout(7, n=400)
    estimate, diffs = paired_bootstrap("mae", y, a, None, b, None, n_boot=150, seed=3, task="regression")
    loss_diff = np.abs(b - y) - np.abs(a - y)  # + = a better
    counts = np.concatenate(list(plain_resample_counts(y.size, 150, seed=3)))
    assert estimate == pytest.approx(loss_diff.mean())
    assert diffs == pytest.approx(counts @ loss_diff / y.size)

    codes, logits = multiclass_holdout(8, n=600)
    p, q = model(logits, 1), model(logits, 2)
    estimate, diffs = paired_bootstrap("log_loss", codes, p, None, q, None, n_boot=150, seed=4, task="multiclass")
    loss_diff = per_row_loss("multiclass", codes, q) - per_row_loss("multiclass", codes, p)
    counts = np.concatenate(list(class_resample_counts(codes, 150, seed=4)))
    assert estimate == pytest.approx(loss_diff.mean())
    assert diffs == pytest.approx(counts @ loss_diff / codes.size)


def test_regression_floors_slices_and_verdict() -> None:
    y, champion, challenger = regression_holdout(11, n=3000)
    group = np.random.default_rng(12).integers(0, 4, y.size)
    broken = challenger.copy()
    broken[group == 2] += 1.5  # biased in one slice only
    policy = Blessing(primary_metric="rmse", non_inferiority_margin=0.1, bootstrap_samples=300,
                      min_metrics={"rmse": 1.5, "r2": 0.5})
    verdict = versus(policy, y, broken, champion, "regression", slices={"group": group})
    assert verdict["task"] == "regression" and "positives" not in verdict
    assert set(verdict["challenger_metrics"]) == {"rmse", "mae", "r2"}
    slices = check(verdict, "slice_non_regression")
    assert [s["value"] for s in slices["slices"] if s["regression"]] == ["2"]
    assert any(r.startswith("slice group=2: rmse worse by") for r in verdict["reasons"])
    floors = {c["metric"]: c for c in verdict["checks"] if c["name"].startswith("floor:")}
    assert floors["rmse"]["direction"] == "<=" and floors["r2"]["direction"] == ">="
    assert floors["rmse"]["passed"] and floors["r2"]["passed"]
    assert plain(verdict) and json.dumps(verdict)
    assert verdict_summary(verdict).startswith("NOT BLESSED (versus_champion): rmse champion - challenger")

    too_strict = Blessing(primary_metric="rmse", min_metrics={"rmse": 0.5, "r2": 0.99})
    cold = decide(too_strict, y, challenger, None, task="regression")
    assert cold["reasons"] == [f"rmse = {cold['challenger_metrics']['rmse']:.4f} is not <= floor 0.5",
                               f"r2 = {cold['challenger_metrics']['r2']:.4f} is not >= floor 0.99"]


def test_a_metric_of_another_task_is_a_clear_error() -> None:
    y, pred, _ = regression_holdout(1, n=100)
    with pytest.raises(ValueError, match=r"blessing.primary_metric: 'roc_auc' is not a regression metric"):
        decide(Blessing(), y, pred, None, task="regression")
    with pytest.raises(ValueError, match=r"blessing.min_metrics.roc_auc: 'roc_auc' is not a multiclass metric"):
        decide(Blessing(primary_metric="log_loss", min_metrics={"roc_auc": 0.6}), np.zeros(3, int),
               np.full((3, 3), 1 / 3), None, task="multiclass")


# ------------------------------------------------------------------------------------------ multiclass


def test_multiclass_log_loss_non_inferiority() -> None:
    codes, logits = multiclass_holdout(21)
    champion = model(logits, 1)
    policy = Blessing(primary_metric="log_loss", non_inferiority_margin=0.02, bootstrap_samples=300)
    twin = versus(policy, codes, model(logits, 2), champion, "multiclass")
    main = check(twin, "non_inferiority")
    assert twin["blessed"], twin["reasons"]
    assert main["method"] == "paired_bootstrap" and main["ci_low"] > -0.02 and main["ci_low"] < 0 < main["ci_high"]
    assert main["estimate"] == pytest.approx(main["champion"] - main["challenger"])  # log-loss units, + = better
    assert "lower is better" in main["difference"]

    weaker = versus(policy, codes, model(logits, 3, strength=0.6), champion, "multiclass")
    main = check(weaker, "non_inferiority")
    assert not weaker["blessed"] and main["ci_high"] < -0.02
    assert weaker["reasons"][0].startswith("log_loss: champion - challenger = -0.")

    better = versus(policy, codes, model(logits, 4, noise=0.0), champion, "multiclass")
    assert better["blessed"] and check(better, "non_inferiority")["ci_low"] > 0
    assert set(better["challenger_metrics"]) == {"log_loss", "macro_f1", "micro_f1", "accuracy", "ovr_roc_auc"}
    assert plain(better)


@pytest.mark.parametrize("metric", ["macro_f1", "accuracy", "ovr_roc_auc"])
def test_multiclass_metrics_by_paired_bootstrap_with_slices(metric: str) -> None:
    codes, logits = multiclass_holdout(31, n=3000)
    group = np.random.default_rng(32).integers(0, 3, codes.size)
    tiny = np.where(np.arange(codes.size) < 20, "a", "b")
    policy = Blessing(primary_metric=metric, non_inferiority_margin=0.03, bootstrap_samples=200)
    verdict = versus(policy, codes, model(logits, 1), model(logits, 2), "multiclass",
                     slices={"group": group, "tiny": tiny})
    assert verdict["blessed"], verdict["reasons"]
    slices = check(verdict, "slice_non_regression")
    assert slices["tested"] == 4 and all(s["method"] == "paired_bootstrap" for s in slices["slices"] if "p_value" in s)
    assert [s["skipped"] for s in slices["slices"] if "skipped" in s] == ["fewer than 50 rows"]
    assert "positives" not in slices["slices"][0]


# ------------------------------------------------------------------------------------------ cold start


def test_binary_cold_start_no_skill_floor() -> None:
    rng = np.random.default_rng(41)
    y = rng.random(3000) < 0.2
    constant = no_skill_output("binary", rng.random(5000) < 0.2, y.size)
    policy = Blessing(bootstrap_samples=200)
    no_skill = decide(policy, y, constant, 0.5)
    floor = check(no_skill, "no_skill_floor")
    assert not no_skill["blessed"] and floor["value"] == 0.5 and floor["ci_low"] == 0.5
    assert no_skill["reasons"][0].startswith("no_skill_floor: not significantly better than no skill (lower bound")
    # random scores: blessed only by chance, at most about alpha of the time
    lucky = [decide(policy, y, np.random.default_rng(s).random(y.size), 0.5)["blessed"] for s in range(60)]
    assert np.mean(lucky) <= 0.1
    good = decide(policy, y, 0.8 * y + rng.normal(size=y.size), 0.5)
    assert good["blessed"] and check(good, "no_skill_floor")["ci_low"] > 0.6


def test_regression_cold_start_no_skill_floor() -> None:
    policy = Blessing(primary_metric="rmse", bootstrap_samples=200)
    rng = np.random.default_rng(51)
    y_train = 2.0 * rng.normal(size=5000) + 10.0
    for seed in range(20):
        y, good, _ = regression_holdout(seed)
        y, good = y + 10.0, good + 10.0
        mean = no_skill_output("regression", y_train, y.size)
        for useless in (mean, mean + 0.2 * np.random.default_rng(1000 + seed).normal(size=y.size)):
            verdict = decide(policy, y, useless, None, task="regression")
            assert not verdict["blessed"]
            assert check(verdict, "no_skill_floor")["ci_low"] < 0
        blessed = decide(policy, y, good, None, task="regression")
        floor = check(blessed, "no_skill_floor")
        assert blessed["blessed"] and floor["metric"] == "r2" and floor["ci_low"] > 0.7
        assert "R² > 0" in floor["rule"] and blessed["mode"] == "cold_start"
    assert verdict_summary(blessed) == "BLESSED (cold_start); 1/1 checks passed"


def test_multiclass_cold_start_no_skill_floor() -> None:
    policy = Blessing(primary_metric="log_loss", bootstrap_samples=200)
    codes, logits = multiclass_holdout(61)
    y_train = np.random.default_rng(62).choice(PRIORS.size, size=8000, p=PRIORS)
    baseline = no_skill_output("multiclass", y_train, codes.size, PRIORS.size)
    itself = decide(policy, codes, baseline, None, task="multiclass", baseline_output=baseline)
    floor = check(itself, "no_skill_floor")
    assert not itself["blessed"] and floor["estimate"] == 0.0 and floor["ci_high"] == 0.0
    assert "upper bound of the 90% paired bootstrap CI of log loss - no-skill log loss < 0" in floor["rule"]
    random = softmax(np.random.default_rng(63).normal(size=logits.shape))
    assert not decide(policy, codes, random, None, task="multiclass", baseline_output=baseline)["blessed"]
    good = decide(policy, codes, model(logits, 1), None, task="multiclass", baseline_output=baseline)
    floor = check(good, "no_skill_floor")
    assert good["blessed"] and floor["ci_high"] < -0.05 and floor["value"] < floor["no_skill"]
    missing = decide(policy, codes, model(logits, 1), None, task="multiclass")
    assert not missing["blessed"]
    assert missing["reasons"] == ["no_skill_floor: baseline_output (the no-skill model's output on the holdout, "
                                  "tasks.no_skill_output) is missing; a multiclass cold start needs it"]
    wrong_shape = decide(policy, codes, model(logits, 1), None, task="multiclass", baseline_output=np.ones(3) / 3)
    assert wrong_shape["reasons"][0].startswith("no_skill_floor: baseline_output is unusable")


def test_floors_replace_the_no_skill_floor() -> None:
    codes, logits = multiclass_holdout(71)
    policy = Blessing(primary_metric="log_loss", min_metrics={"log_loss": 0.9, "macro_f1": 0.3})
    verdict = decide(policy, codes, model(logits, 1), None, task="multiclass")
    assert [c["name"] for c in verdict["checks"]] == ["floor:log_loss", "floor:macro_f1"]
    assert [c["direction"] for c in verdict["checks"]] == ["<=", ">="]
    assert verdict["blessed"], verdict["reasons"]


def test_a_nan_output_never_passes_the_no_skill_floor() -> None:
    y, good, _ = regression_holdout(81, n=300)
    good[5] = np.nan
    codes, logits = multiclass_holdout(82, n=300)
    proba = model(logits, 1)
    proba[7, 0] = np.nan
    binary = codes == 0
    score = proba[:, 0].copy()  # holds the NaN
    cases = [
        ("regression", Blessing(primary_metric="rmse", bootstrap_samples=100), y, good, {}),
        ("multiclass", Blessing(primary_metric="log_loss", bootstrap_samples=100), codes, proba,
         {"baseline_output": no_skill_output("multiclass", codes, codes.size, 4)}),
        ("binary", Blessing(bootstrap_samples=100), binary, score, {}),
    ]
    for task, policy, labels, output, kwargs in cases:
        verdict = decide(policy, labels, output, 0.5 if task == "binary" else None, task=task, **kwargs)
        assert not verdict["blessed"], task
        assert verdict["reasons"][0].startswith("no_skill_floor:") and "NaN/missing" in verdict["reasons"][0], task
        assert json.dumps(verdict)


def test_binary_log_loss_is_a_paired_bootstrap_of_per_row_losses() -> None:
    rng = np.random.default_rng(91)
    y = rng.random(2000) < 0.3
    base = 1.2 * y + rng.normal(size=y.size)
    champion, challenger = (1 / (1 + np.exp(-(base + 0.3 * rng.normal(size=y.size)) + 1)) for _ in range(2))
    policy = Blessing(primary_metric="log_loss", non_inferiority_margin=0.02, bootstrap_samples=300)
    verdict = decide(policy, y, challenger, 0.5, champion_score=champion, champion_threshold=0.5,
                     challenger_cost=COST, champion_cost=COST)
    main = check(verdict, "non_inferiority")
    assert verdict["blessed"], verdict["reasons"]
    assert main["method"] == "paired_bootstrap" and main["estimate"] == pytest.approx(
        per_row_loss("binary", y, champion).mean() - per_row_loss("binary", y, challenger).mean())
    assert "log_loss" in verdict["challenger_metrics"] and verdict["task"] == "binary"
