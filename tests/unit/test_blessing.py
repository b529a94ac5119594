"""The blessing gate: non-inferiority by DeLong / paired bootstrap, slice regressions with Holm/BH, budgets, floors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from support.json_checks import plain, strict_json

from crispflow.model.blessing import decide, paired_bootstrap, verdict_summary
from crispflow.spec import Blessing
from crispflow.stats import benjamini_hochberg, delong, holm

ROOT = Path(__file__).resolve().parents[2]
COST = {"latency_p95_ms": 2.0, "size_bytes": 10_000}


def versus(policy: Blessing, y, challenger, threshold, champion, champion_threshold) -> dict:
    """`decide` against a champion, both models with the same (passing) costs."""
    return decide(policy, y, challenger, threshold, champion_score=champion, champion_threshold=champion_threshold,
                  challenger_cost=COST, champion_cost=COST)


def check(verdict: dict, name: str) -> dict:
    return next(c for c in verdict["checks"] if c["name"] == name)


def twins(n: int, seed: int, noise: float = 0.3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels and two models of the same quality: a shared signal plus independent noise each."""
    rng = np.random.default_rng(seed)
    y = rng.random(n) < 0.1
    base = 1.5 * y + rng.normal(size=n)
    return y, base + noise * rng.normal(size=n), base + noise * rng.normal(size=n)


@pytest.fixture(scope="module")
def lending() -> dict[str, np.ndarray]:
    """Holdout labels and scores of logistic regressions on the demo data: a good and a weak model."""
    frame = pd.read_parquet(ROOT / "include" / "data" / "lending_club.parquet")
    y = (frame["Class"] == "bad").to_numpy()
    train, test = train_test_split(np.arange(len(frame)), test_size=0.75, stratify=y, random_state=0)

    def fit(columns: list[str]) -> np.ndarray:
        model = make_pipeline(StandardScaler(), LogisticRegression()).fit(frame.iloc[train][columns], y[train])
        return model.predict_proba(frame.iloc[test][columns])[:, 1]

    return {
        "y": y[test],
        "good": fit(["int_rate", "annual_inc", "revol_util", "inq_last_6mths", "funded_amnt"]),
        "weak": fit(["funded_amnt", "annual_inc"]),
        "term": frame["term"].to_numpy()[test],
        "verification_status": frame["verification_status"].to_numpy()[test],
    }


# ------------------------------------------------------------------------------------------------ DeLong


def test_delong_agrees_with_the_paired_bootstrap(lending: dict) -> None:
    y, good, weak = lending["y"], lending["good"], lending["weak"]
    d = delong(y, good, weak)
    assert d["auc_a"] == pytest.approx(roc_auc_score(y, good)) and d["auc_b"] == pytest.approx(roc_auc_score(y, weak))
    estimate, diffs = paired_bootstrap("roc_auc", y, good, 0.05, weak, 0.05, n_boot=2000, seed=3)
    assert estimate == pytest.approx(d["difference"])
    assert np.std(diffs) == pytest.approx(d["se"], rel=0.1)
    low, high = np.quantile(diffs, [0.025, 0.975])
    z = norm.ppf(0.975)
    assert low == pytest.approx(d["difference"] - z * d["se"], abs=0.01)
    assert high == pytest.approx(d["difference"] + z * d["se"], abs=0.01)


# ---------------------------------------------------------------------------------------------- versus champion


def test_identical_challenger_is_non_inferior(lending: dict) -> None:
    y, good = lending["y"], lending["good"]
    for metric in ("roc_auc", "average_precision", "brier"):
        verdict = versus(Blessing(primary_metric=metric, bootstrap_samples=200), y, good, 0.05, good, 0.05)
        assert verdict["blessed"], verdict["reasons"]
        assert verdict["mode"] == "versus_champion" and verdict["reasons"] == []
        main = check(verdict, "non_inferiority")
        assert main["estimate"] == 0.0 and main["ci_low"] == 0.0
        assert main["method"] == ("delong" if metric == "roc_auc" else "paired_bootstrap")


def test_random_challenger_against_a_good_champion_is_not_blessed(lending: dict) -> None:
    y, good = lending["y"], lending["good"]
    noise = np.random.default_rng(0).random(y.size)
    verdict = versus(Blessing(min_metrics={"roc_auc": 0.6}), y, noise, 0.5, good, 0.05)
    assert not verdict["blessed"]
    main = check(verdict, "non_inferiority")
    assert not main["passed"] and main["ci_high"] < -0.1
    assert any(r.startswith("roc_auc: challenger - champion") for r in verdict["reasons"])
    assert any("is not >= floor 0.6" in r for r in verdict["reasons"])
    assert verdict_summary(verdict).startswith("NOT BLESSED (versus_champion)")


def test_clearly_better_challenger_is_blessed(lending: dict) -> None:
    y, good, weak = lending["y"], lending["good"], lending["weak"]
    slices = {"term": lending["term"], "verification_status": lending["verification_status"]}
    for metric in ("roc_auc", "average_precision"):
        verdict = decide(
            Blessing(primary_metric=metric, bootstrap_samples=300, min_metrics={"roc_auc": 0.6}),
            y,
            good,
            0.05,
            champion_score=weak,
            champion_threshold=0.05,
            slices=slices,
            challenger_cost=COST,
            champion_cost=COST,
        )
        assert verdict["blessed"], verdict["reasons"]
        assert check(verdict, "non_inferiority")["ci_low"] > 0  # better, not only non-inferior
        assert check(verdict, "slice_non_regression")["tested"] == 5
        assert plain(verdict) and json.dumps(verdict)
    line = verdict_summary(verdict)
    assert line.startswith("BLESSED (versus_champion): average_precision") and "\n" not in line


def test_a_better_calibrated_challenger_wins_on_brier(lending: dict) -> None:
    """Same ranking, better probabilities: brier is lower-is-better, and the difference is signed so + = better."""
    y, good = lending["y"], lending["good"]
    distorted = np.sqrt(good)  # same order, overconfident
    policy = Blessing(primary_metric="brier", bootstrap_samples=300, min_metrics={"brier": 0.06})
    verdict = versus(policy, y, good, 0.05, distorted, 0.2)
    main = check(verdict, "non_inferiority")
    assert main["challenger"] < main["champion"] and main["estimate"] > 0 and main["ci_low"] > 0
    assert verdict["blessed"], verdict["reasons"]
    assert check(verdict, "floor:brier")["direction"] == "<="


# --------------------------------------------------------------------------------------------------- budgets


def test_a_three_times_slower_challenger_is_not_blessed_even_if_better(lending: dict) -> None:
    y, good, weak = lending["y"], lending["good"], lending["weak"]
    slow = {"latency_p95_ms": 6.0, "size_bytes": 10_000}
    verdict = decide(
        Blessing(),
        y,
        good,
        0.05,
        champion_score=weak,
        champion_threshold=0.05,
        challenger_cost=slow,
        champion_cost=COST,
    )
    assert not verdict["blessed"]
    assert check(verdict, "non_inferiority")["passed"]
    latency = check(verdict, "latency_budget")
    assert not latency["passed"] and latency["ratio"] == pytest.approx(3.0)
    assert verdict["reasons"] == ["latency_p95_ms: challenger / champion = 3.00 exceeds 1.5"]
    assert check(verdict, "size_budget")["passed"]


def test_missing_costs_with_a_champion_fail_clearly(lending: dict) -> None:
    y, good = lending["y"], lending["good"]
    verdict = decide(
        Blessing(), y, good, 0.05, champion_score=good, champion_threshold=0.05, challenger_cost={"size_bytes": 1}
    )
    assert not verdict["blessed"]
    assert "challenger latency_p95_ms is NaN/missing" in verdict["reasons"]
    assert "champion size_bytes is NaN/missing" in verdict["reasons"]


# ------------------------------------------------------------------------------------------- NaN never passes


def test_a_nan_metric_fails_the_gate(lending: dict) -> None:
    y, good = lending["y"], lending["good"]
    broken = good.copy()
    broken[7] = np.nan
    verdict = versus(Blessing(min_metrics={"roc_auc": 0.6}), y, broken, 0.05, good, 0.05)
    assert not verdict["blessed"]
    assert "roc_auc difference (challenger - champion) is NaN/missing" in verdict["reasons"]
    assert "roc_auc is NaN/missing" in verdict["reasons"]
    assert json.dumps(verdict)  # NaN evidence is still serialisable (as NaN)

    no_threshold = decide(
        Blessing(primary_metric="f1", bootstrap_samples=100),
        y,
        good,
        0.05,
        champion_score=good,
        challenger_cost=COST,
        champion_cost=COST,
    )
    assert not no_threshold["blessed"]
    assert no_threshold["reasons"] == ["f1 difference (challenger - champion) is NaN/missing"]


# ------------------------------------------------------------------------------------------------ cold start


def test_cold_start_passes_or_fails_on_the_floors(lending: dict) -> None:
    y, good, weak = lending["y"], lending["good"], lending["weak"]
    floors = Blessing(min_metrics={"roc_auc": 0.6, "average_precision": 0.08, "brier": 0.1})
    passed = decide(floors, y, good, 0.05)
    assert passed["blessed"] and passed["mode"] == "cold_start" and passed["champion_metrics"] is None
    assert [c["name"] for c in passed["checks"]] == ["floor:roc_auc", "floor:average_precision", "floor:brier"]
    failed = decide(floors, y, weak, 0.05)
    assert not failed["blessed"]
    assert any(r.startswith("roc_auc = 0.5") and "is not >= floor 0.6" in r for r in failed["reasons"])
    no_positive_predicted = decide(Blessing(min_metrics={"precision": 0.1}), y, good, 2.0)
    assert no_positive_predicted["reasons"] == ["precision is NaN/missing"]
    assert verdict_summary(passed) == "BLESSED (cold_start); 3/3 checks passed"


def test_cold_start_without_floors_is_judged_against_no_skill(lending: dict) -> None:
    """Empty `min_metrics`: the floor is "significantly better than no skill" (ROC AUC CI above 0.5), and the
    verdict says so; a random score fails it."""
    y, good = lending["y"], lending["good"]
    blessed = decide(Blessing(), y, good, 0.05)
    assert blessed["blessed"], blessed["reasons"]
    floor = check(blessed, "no_skill_floor")
    assert [c["name"] for c in blessed["checks"]] == ["no_skill_floor"]
    assert floor["metric"] == "roc_auc" and floor["method"] == "delong" and floor["ci_low"] > 0.5
    assert floor["value"] == pytest.approx(roc_auc_score(y, good))
    assert "ROC AUC > 0.5" in floor["rule"] and "min_metrics is empty" in floor["why"]
    noise = np.random.default_rng(1).random(y.size)
    refused = decide(Blessing(), y, noise, 0.5)
    assert not refused["blessed"] and refused["reasons"][0].startswith("no_skill_floor: not significantly better")
    assert check(refused, "no_skill_floor")["ci_low"] < 0.5 < check(refused, "no_skill_floor")["ci_high"]


# --------------------------------------------------------------------------------------------------- slices


def test_a_real_slice_regression_is_caught() -> None:
    y, champion, challenger = twins(6000, seed=11)
    group = np.random.default_rng(12).integers(0, 6, y.size)
    broken = group == 2
    challenger = challenger.copy()
    challenger[broken] = np.random.default_rng(13).normal(size=broken.sum())  # useless in slice 2 only
    verdict = decide(
        Blessing(),
        y,
        challenger,
        1.0,
        champion_score=champion,
        champion_threshold=1.0,
        slices={"group": group},
        challenger_cost=COST,
        champion_cost=COST,
    )
    slices = check(verdict, "slice_non_regression")
    assert not slices["passed"] and not verdict["blessed"]
    flagged = [s for s in slices["slices"] if s["regression"]]
    assert [s["value"] for s in flagged] == ["2"]
    assert flagged[0]["estimate"] < -0.2 and flagged[0]["p_adjusted"] < 0.05
    assert any(r.startswith("slice group=2: roc_auc worse by") for r in verdict["reasons"])


@pytest.mark.parametrize("correction", ["holm", "benjamini_hochberg"])
def test_noise_across_many_slices_is_not_flagged(correction: str) -> None:
    """Two models of the same quality, 20 small slices: chance differences are not called regressions."""
    flagged = 0
    for seed in range(5):
        y, champion, challenger = twins(6000, seed=seed)
        group = np.random.default_rng(100 + seed).integers(0, 20, y.size)
        verdict = decide(
            Blessing(slice_correction=correction),
            y,
            challenger,
            1.0,
            champion_score=champion,
            champion_threshold=1.0,
            slices={"group": group, "tiny": np.where(np.arange(y.size) < 10, "a", "b")},
            challenger_cost=COST,
            champion_cost=COST,
        )
        slices = check(verdict, "slice_non_regression")
        tested = [s for s in slices["slices"] if "skipped" not in s]
        assert slices["tested"] == len(tested) == 21  # 20 groups + "b"; "a" has 10 rows
        assert {s["skipped"] for s in slices["slices"] if "skipped" in s} == {"fewer than 50 rows"}
        expected = (holm if correction == "holm" else benjamini_hochberg)([s["p_value"] for s in tested])
        assert [s["p_adjusted"] for s in tested] == pytest.approx(expected)
        flagged += sum(s["regression"] for s in tested)
        assert slices["passed"] == (not any(s["regression"] for s in tested))
    assert flagged == 0


def test_slice_regression_with_a_bootstrap_metric() -> None:
    y, champion, challenger = twins(4000, seed=21)
    group = np.random.default_rng(22).integers(0, 4, y.size)
    challenger = challenger.copy()
    challenger[group == 1] = np.random.default_rng(23).normal(size=(group == 1).sum())
    verdict = decide(
        Blessing(primary_metric="average_precision", bootstrap_samples=400, slice_correction="benjamini_hochberg"),
        y,
        challenger,
        1.0,
        champion_score=champion,
        champion_threshold=1.0,
        slices={"group": group},
        challenger_cost=COST,
        champion_cost=COST,
    )
    flagged = [s for s in check(verdict, "slice_non_regression")["slices"] if s["regression"]]
    assert [s["value"] for s in flagged] == ["1"] and flagged[0]["method"] == "paired_bootstrap"
    assert plain(verdict)


# ------------------------------------------------------------------------------------------------- fairness


def test_sensitive_columns_add_a_fairness_section_and_check(lending: dict) -> None:
    """Demo data, two sensitive columns: both models' reports, four Holm-corrected tests (2 columns x 2 default
    disparities), the check between the slice check and the budgets, and a verdict that stays plain JSON."""
    y, good, weak = lending["y"], lending["good"], lending["weak"]
    sensitive = {"term": lending["term"], "verification_status": lending["verification_status"]}
    verdict = decide(Blessing(bootstrap_samples=200), y, good, 0.05, champion_score=weak, champion_threshold=0.05,
                     slices={"term": lending["term"]}, challenger_cost=COST, champion_cost=COST, sensitive=sensitive)
    assert [c["name"] for c in verdict["checks"]] == ["non_inferiority", "slice_non_regression", "fairness",
                                                      "latency_budget", "size_budget"]
    section = verdict["fairness"]
    assert section["mode"] == "warn" and section["metrics"] == ["equalized_odds_difference",
                                                                "demographic_parity_difference"]
    assert set(section["challenger"]["columns"]) == set(section["champion"]["columns"]) == set(sensitive)
    tested = [t for t in section["comparison"] if "skipped" not in t]
    assert check(verdict, "fairness")["tested"] == len(tested) == 4
    assert check(verdict, "fairness")["passed"]  # warn mode: passes whatever it found
    assert (section["decision"] == "pass") == (verdict["warnings"] == [])
    assert plain(verdict) and strict_json(section)
    without = decide(Blessing(bootstrap_samples=200), y, good, 0.05, champion_score=weak, champion_threshold=0.05,
                     challenger_cost=COST, champion_cost=COST)
    assert "fairness" not in without and "warnings" not in without
