"""Drift computation: calibrated false-alarm rate, detection of real shifts, and explicit results on odd windows."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from crispflow.monitoring import DriftInputError, DriftSettings, build_profile, compute_drift
from crispflow.monitoring.report import render_html, render_table, write_report
from crispflow.settings import project_root
from crispflow.spec import load_spec

WINDOWS = 200
MAX_ALARMS = 5  # of 200 at a 1 % rate: P(X >= 6) ~ 1.6 %, so the assertion is ~ "<= 1 % + a binomial margin"


def synthetic(rng: np.random.Generator, n: int, shift: float = 0.0) -> pd.DataFrame:
    """Ten columns of awkward shapes: skew, ties, NaN, a constant, rare and many categories, missing text."""
    nan_col = rng.normal(size=n)
    nan_col[rng.random(n) < 0.05] = np.nan
    text = rng.choice(["x", "y"], size=n).astype(object)
    text[rng.random(n) < 0.02] = None
    return pd.DataFrame({
        "normal": rng.normal(shift, 1.0, size=n),
        "lognormal": rng.lognormal(size=n),
        "poisson": rng.poisson(0.3, size=n),
        "uniform_int": rng.integers(0, 1000, size=n),
        "with_nan": nan_col,
        "constant": np.full(n, 3.0),
        "binary": (rng.random(n) < 0.1).astype(int),
        "cat_few": rng.choice(["a", "b", "c"], size=n, p=[0.6, 0.3, 0.1]),
        "cat_many": rng.choice([f"v{i}" for i in range(60)], size=n, p=np.r_[np.full(10, 0.07), np.full(50, 0.006)]),
        "cat_nan": text,
    })


@pytest.fixture(scope="module")
def synthetic_reference() -> tuple[dict, pd.DataFrame]:
    """A profile of 10,000 rows, and an independent pool of 200,000 rows of the same distribution to draw from."""
    rng = np.random.default_rng(20261126)
    return build_profile(None, synthetic(rng, 10_000)), synthetic(rng, 200_000)


@pytest.fixture(scope="module")
def loans() -> pd.DataFrame:
    return pd.read_parquet(project_root() / "include" / "data" / "lending_club.parquet")


@pytest.mark.parametrize("size", [100, 1_000, 10_000])
def test_no_drift_windows_alarm_at_most_one_percent(synthetic_reference, size: int) -> None:
    """Windows from the reference distribution (independent of the profiled rows), up to the reference's size."""
    profile, pool = synthetic_reference
    rng = np.random.default_rng(size)
    alarms = [compute_drift(profile, pool.iloc[rng.integers(0, len(pool), size)])["drift"] for _ in range(WINDOWS)]
    assert sum(alarms) <= MAX_ALARMS, f"{sum(alarms)} false alarms in {WINDOWS} windows of {size} rows"


def test_no_drift_on_real_data_with_the_spec(loans: pd.DataFrame) -> None:
    """Jan-Sep loans split at random: profile one half, windows (a month's size) from the other."""
    spec = load_spec("lending_club")
    early = loans[loans["application_month"].dt.month <= 9].sample(frac=1.0, random_state=1)
    half = len(early) // 2
    profile, pool = build_profile(spec, early.iloc[:half]), early.iloc[half:]
    rng = np.random.default_rng(7)
    alarms = [compute_drift(profile, pool.iloc[rng.choice(len(pool), 800, replace=False)])["drift"]
              for _ in range(100)]
    assert sum(alarms) <= 3  # of 100 at a 1 % rate: P(X >= 4) ~ 1.8 %


def test_the_demo_shift_is_found_within_two_windows(loans: pd.DataFrame) -> None:
    """Reference Jan-Sep; the riskier October arrives in weekly-sized windows (~200 rows): drift by the second."""
    spec = load_spec("lending_club")
    month = loans["application_month"].dt.month
    profile = build_profile(spec, loans[month <= 9])
    october = loans[month == 10].sample(frac=1.0, random_state=3)
    quarter = len(october) // 4
    verdicts = [compute_drift(profile, october.iloc[i * quarter:(i + 1) * quarter]) for i in range(4)]
    assert any(v["drift"] for v in verdicts[:2]), [v["reasons"] for v in verdicts]
    whole = compute_drift(profile, october)
    assert whole["drift"] and {"int_rate", "sub_grade"} <= set(whole["drifted_features"])
    assert compute_drift(profile, loans[month == 5])["status"] == "no_drift"


def test_a_shift_is_detected_in_the_shifted_column_only(synthetic_reference) -> None:
    profile, _ = synthetic_reference
    rng = np.random.default_rng(11)
    for _ in range(10):
        report = compute_drift(profile, synthetic(rng, 2_000, shift=0.3))
        assert report["drift"] and report["drifted_features"] == ["normal"]
        feat = report["features"]["normal"]
        assert feat["test"] == "ks" and feat["p_adjusted"] <= 0.01 and 0.2 < feat["wasserstein_norm"] < 0.4


def test_importance_weights_the_verdict(synthetic_reference) -> None:
    profile, _ = synthetic_reference
    window = synthetic(np.random.default_rng(12), 2_000, shift=0.3)
    assert not compute_drift(profile, window, importance={"lognormal": 1.0, "normal": 0.05})["drift"]
    assert compute_drift(profile, window, importance={"lognormal": 1.0, "normal": 0.5})["drift"]
    with pytest.raises(DriftInputError, match=r"unknown feature\(s\) \['nope'\]"):
        compute_drift(profile, window, importance={"nope": 1.0})
    for bad in (float("nan"), True, "1"):  # a bool is no weight, although Python counts it as an int
        with pytest.raises(DriftInputError, match="importance: normal"):
            compute_drift(profile, window, importance={"normal": bad})


def test_empty_and_tiny_windows_are_insufficient_data(synthetic_reference) -> None:
    profile, pool = synthetic_reference
    for window in (pool.iloc[:0], pd.DataFrame(), pool.iloc[:5]):
        report = compute_drift(profile, window)
        assert report["status"] == "insufficient_data" and report["drift"] is False
        assert all(f["status"] == "insufficient_data" for f in report["features"].values())


def test_nan_inf_unseen_categories_and_constants_give_explicit_results(synthetic_reference) -> None:
    profile, pool = synthetic_reference
    window = pool.iloc[:2_000].copy()
    window["with_nan"] = np.nan  # all missing: the missing-rate test catches it
    window.loc[window.index[:300], "normal"] = np.inf  # beyond the reference maximum
    window["cat_few"] = window["cat_few"].where(np.arange(len(window)) % 4 > 0, "brand_new")
    window["constant"] = 4.0  # the reference constant moved
    report = json.loads(json.dumps(compute_drift(profile, window), allow_nan=False))  # JSON-safe throughout
    feats = report["features"]
    assert feats["with_nan"]["test"] == "missing_rate" and feats["with_nan"]["drifted"]
    assert feats["with_nan"]["missing"]["current"] == 1.0 and feats["with_nan"]["missing"]["p_value"] < 1e-10
    assert feats["normal"]["drifted"] and feats["normal"]["bins"]["current"][-2] == pytest.approx(0.15)
    assert feats["cat_few"]["unseen"] == {"count": 1, "values": ["brand_new"]} and feats["cat_few"]["drifted"]
    assert feats["constant"]["drifted"] and "constant in the reference" in feats["constant"]["note"]
    same = compute_drift(profile, pool.iloc[:2_000])["features"]["constant"]
    assert same["status"] == "ok" and same["statistic"] == 0.0 and not same["drifted"]


def test_missing_feature_column_is_bad_input(synthetic_reference) -> None:
    profile, pool = synthetic_reference
    with pytest.raises(DriftInputError, match=r"missing feature column\(s\) \['binary'\]"):
        compute_drift(profile, pool.iloc[:100].drop(columns=["binary"]))
    with pytest.raises(DriftInputError, match="alpha"):
        DriftSettings(alpha=1.5)


def test_prediction_label_and_performance_drift() -> None:
    rng = np.random.default_rng(3)

    def scored(n: int, separation: float) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
        labels = rng.random(n) < 0.2
        scores = 1 / (1 + np.exp(-(separation * labels - 1.5 + rng.normal(0, 1, n))))
        return pd.DataFrame({"x": rng.normal(size=n)}), scores, labels

    profile = build_profile(None, *scored(20_000, 2.5))
    same = compute_drift(profile, *[a for a in scored(3_000, 2.5)][:1], scores=None)
    assert same["prediction"] is None and same["performance"] is None
    frame, scores, labels = scored(3_000, 2.5)
    calm = compute_drift(profile, frame, scores=scores, labels=labels)
    assert calm["status"] == "no_drift" and calm["performance"]["metrics"]["roc_auc"]["degraded"] is False
    frame, scores, labels = scored(3_000, 0.5)  # the model has lost most of its signal
    worse = compute_drift(profile, frame, scores=scores, labels=labels)
    auc = worse["performance"]["metrics"]["roc_auc"]
    assert worse["drift"] and auc["degraded"] and auc["ci_high"] < auc["reference"]
    assert worse["prediction"]["drifted"] and any("roc_auc degraded" in r for r in worse["reasons"])


def test_reports_render(tmp_path, synthetic_reference) -> None:
    profile, _ = synthetic_reference
    window = synthetic(np.random.default_rng(1), 1_000, shift=1.0)
    window["cat_few"] = window["cat_few"].where(np.arange(len(window)) > 0, "<script>alert(1)</script>")
    report = compute_drift(profile, window)
    table = render_table(report)
    assert "normal" in table and "YES" in table and table.splitlines()[-1].startswith("verdict: DRIFT")
    page = render_html(report)
    assert page.count("<svg") == len(report["features"]) and "<script>" not in page
    paths = write_report(report, tmp_path / "out")
    assert json.loads(paths["json"].read_text()) == report and paths["html"].read_text() == page
