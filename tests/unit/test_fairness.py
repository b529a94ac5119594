"""Fairness: metrics per group with CIs (fairlearn's MetricFrame), suppressed small groups, and the blessing gate's
non-regression check of a challenger's disparities against the champion's (block refuses, warn records)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from fairlearn.metrics import demographic_parity_difference, equalized_odds_difference
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import mean_squared_error
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from support.json_checks import strict_json

from crispflow.model.blessing import decide, verdict_summary
from crispflow.model.fairness import compare_fairness, fairness_report
from crispflow.spec import Blessing

COST = {"latency_p95_ms": 2.0, "size_bytes": 10_000}
BOOT = {"min_rows": 50, "alpha": 0.05, "n_boot": 300, "seed": 0}


def intervals(report: dict) -> Iterator[tuple[str, dict]]:
    """Every {"value", "ci_low", "ci_high"} of a report: group metrics and disparities."""
    for column, entry in report["columns"].items():
        for group in entry["groups"]:
            for name, m in group["metrics"].items():
                yield f"{column}={group['value']}:{name}", m
        for name, d in entry["disparities"].items():
            yield f"{column}:{name}", d


def fit(x: np.ndarray, y: np.ndarray, estimator: object) -> object:
    return make_pipeline(StandardScaler(), estimator).fit(x, y)


@pytest.fixture(scope="module")
def credit() -> dict[str, np.ndarray]:
    """Applicants in groups a, b and a tiny c. The true risk does not depend on the group, but the historical labels
    marked group b bad more often: a challenger trained on them (with the group as input) widens equalized odds;
    the champion and a second fair model see only the applicant's data."""
    rng = np.random.default_rng(5)
    n = 8000
    group = rng.choice(np.array(["a", "b", "c"]), size=n, p=[0.495, 0.495, 0.01])
    x = rng.normal(size=(n, 2))
    y = rng.random(n) < 1 / (1 + np.exp(-(1.5 * x[:, 0] + x[:, 1] - 1.0)))
    historical = y | ((group == "b") & (rng.random(n) < 0.15))
    with_group = np.column_stack([x, group == "b"])
    train, hold = slice(0, n // 2), slice(n // 2, n)

    def proba(model: object, columns: np.ndarray) -> np.ndarray:
        return model.predict_proba(columns[hold])[:, 1]

    return {
        "y": y[hold],
        "group": group[hold],
        "champion": proba(fit(x[train], y[train], LogisticRegression()), x),
        "fair": proba(fit(x[train][::-1], y[train][::-1], LogisticRegression(C=0.1)), x),
        "biased": proba(fit(with_group[train], historical[train], LogisticRegression()), with_group),
    }


def judge(credit: dict, challenger: str, **fairness: object) -> dict:
    policy = Blessing(non_inferiority_margin=0.05, bootstrap_samples=300, fairness=fairness)
    return decide(policy, credit["y"], credit[challenger], 0.5, champion_score=credit["champion"],
                  champion_threshold=0.5, challenger_cost=COST, champion_cost=COST,
                  sensitive={"group": credit["group"]})


def fairness_check(verdict: dict) -> dict:
    return next(c for c in verdict["checks"] if c["name"] == "fairness")


# ------------------------------------------------------------------------------------------------- the gate


def test_block_mode_refuses_a_challenger_that_widens_equalized_odds(credit: dict) -> None:
    verdict = judge(credit, "biased", mode="block", metrics=["equalized_odds_difference"])
    assert not verdict["blessed"]
    check = fairness_check(verdict)
    assert not check["passed"] and check["decision"] == "block" and check["tested"] == 1
    assert verdict["reasons"] == [check["reason"]]  # the only failing check
    assert check["reason"].startswith("fairness group: equalized_odds_difference widened by +")
    (test,) = verdict["fairness"]["comparison"]
    assert test["widened"] and test["estimate"] > 0.05 and test["p_adjusted"] < 0.05
    assert test["challenger"] > test["champion"] and test["ci_low"] > 0.05
    assert verdict["fairness"]["decision"] == "block" and verdict["warnings"] == []
    assert strict_json(verdict["fairness"])


def test_warn_mode_blesses_the_same_challenger_and_records_the_warning(credit: dict) -> None:
    verdict = judge(credit, "biased", metrics=["equalized_odds_difference"])  # mode: warn is the default
    assert verdict["blessed"] and verdict["reasons"] == []
    check = fairness_check(verdict)
    assert check["passed"] and check["decision"] == "warn" and "reason" not in check
    assert check["warning"].startswith("fairness group: equalized_odds_difference widened by +")
    assert verdict["warnings"] == [check["warning"]]
    assert verdict["fairness"]["mode"] == "warn" and verdict["fairness"]["decision"] == "warn"
    assert "warnings: fairness group" in verdict_summary(verdict)


def test_a_fair_challenger_passes_in_both_modes(credit: dict) -> None:
    for mode in ("block", "warn"):
        verdict = judge(credit, "fair", mode=mode)
        assert verdict["blessed"], verdict["reasons"]
        check = fairness_check(verdict)
        assert check["passed"] and check["decision"] == "pass" and check["tested"] == 2
        assert "warning" not in check and verdict["warnings"] == []
        assert all(not t["widened"] and t["p_adjusted"] >= 0.05 for t in verdict["fairness"]["comparison"])


def test_holm_corrects_across_columns_and_metrics(credit: dict) -> None:
    """Two columns x three disparities: six tests, Holm-adjusted together, in the input order."""
    from crispflow.stats import holm

    halves = np.where(np.arange(credit["y"].size) % 2 == 0, "even", "odd")
    result = compare_fairness("binary", credit["y"], (credit["biased"], 0.5), (credit["champion"], 0.5),
                              {"group": credit["group"], "parity": halves},
                              metrics=["equalized_odds_difference", "demographic_parity_difference",
                                       "primary_metric_difference"], max_increase=0.05, **BOOT)
    tests = result["comparison"]
    assert [(t["column"], t["metric"]) for t in tests][:2] == [("group", "equalized_odds_difference"),
                                                              ("group", "demographic_parity_difference")]
    assert result["tested"] == 6
    assert [t["p_adjusted"] for t in tests] == pytest.approx(holm([t["p_value"] for t in tests]))
    assert {t["column"] for t in tests if t["widened"]} == {"group"}  # an arbitrary split shows no disparity
    assert not result["passed"] and len(result["reasons"]) == sum(t["widened"] for t in tests)


def test_cold_start_gets_the_report_and_no_check(credit: dict) -> None:
    verdict = decide(Blessing(bootstrap_samples=300), credit["y"], credit["biased"], 0.5,
                     sensitive={"group": credit["group"]})
    assert "fairness" not in [c["name"] for c in verdict["checks"]]
    section = verdict["fairness"]
    assert section["champion"] is None and section["comparison"] == [] and section["decision"] == "pass"
    disparity = section["challenger"]["columns"]["group"]["disparities"]["equalized_odds_difference"]
    assert disparity["value"] > 0.1 and disparity["between"] is not None
    assert strict_json(section)


def test_without_sensitive_columns_the_verdict_is_unchanged(credit: dict) -> None:
    verdict = decide(Blessing(bootstrap_samples=300), credit["y"], credit["fair"], 0.5,
                     champion_score=credit["champion"], champion_threshold=0.5, challenger_cost=COST,
                     champion_cost=COST, sensitive={})
    assert "fairness" not in verdict and "warnings" not in verdict
    assert "fairness" not in [c["name"] for c in verdict["checks"]]


# ----------------------------------------------------------------------------------------------- the report


def test_small_groups_are_suppressed_listed_and_left_out_of_the_disparities(credit: dict) -> None:
    y, group, score = credit["y"], credit["group"], credit["biased"]
    report = fairness_report("binary", y, score, 0.5, {"group": group}, **BOOT)
    column = report["columns"]["group"]
    n_c = int((group == "c").sum())
    assert 0 < n_c < 50
    assert column["suppressed"] == [{"value": "c", "n": n_c, "reason": "fewer than 50 rows"}]
    assert [g["value"] for g in column["groups"]] == ["a", "b"]
    assert column["n"] == y.size == sum(g["n"] for g in column["groups"]) + n_c
    kept = group != "c"
    pred = (score >= 0.5).astype(int)
    assert column["disparities"]["demographic_parity_difference"]["value"] == pytest.approx(
        demographic_parity_difference(y[kept], pred[kept], sensitive_features=group[kept]))
    assert column["disparities"]["equalized_odds_difference"]["value"] == pytest.approx(
        equalized_odds_difference(y[kept], pred[kept], sensitive_features=group[kept]))
    a = group == "a"
    assert column["groups"][0]["metrics"]["selection_rate"]["value"] == pytest.approx(pred[a].mean())
    assert column["groups"][0]["metrics"]["tpr"]["value"] == pytest.approx(pred[a & y].mean())
    assert column["groups"][0]["positives"] == int(y[a].sum())


def test_intervals_contain_their_point_estimates(credit: dict) -> None:
    report = fairness_report("binary", credit["y"], credit["biased"], 0.5, {"group": credit["group"]}, **BOOT)
    seen = 0
    for where, m in intervals(report):
        assert m["ci_low"] <= m["value"] <= m["ci_high"], where
        seen += 1
    assert seen == 2 * 5 + 3  # two groups x five metrics, three disparities
    assert report["ci_level"] == 0.95 and strict_json(report)


def test_the_comparison_reports_equal_the_standalone_reports(credit: dict) -> None:
    """Both models are resampled together (paired), and each report is the one fairness_report gives."""
    y, sensitive = credit["y"], {"group": credit["group"]}
    result = compare_fairness("binary", y, (credit["fair"], 0.5), (credit["champion"], 0.5), sensitive,
                              metrics=["equalized_odds_difference"], max_increase=0.05, **BOOT)
    assert result["challenger"] == fairness_report("binary", y, credit["fair"], 0.5, sensitive, **BOOT)
    assert result["champion"] == fairness_report("binary", y, credit["champion"], 0.5, sensitive, **BOOT)


def test_missing_values_form_a_group_and_undefined_metrics_are_null(credit: dict) -> None:
    y, score = credit["y"], credit["champion"]
    values = np.where(np.arange(y.size) % 3 == 0, None, "x").astype(object)
    report = fairness_report("binary", y, score, None, {"col": values}, **BOOT)  # no threshold: no decisions
    column = report["columns"]["col"]
    assert [g["value"] for g in column["groups"]] == ["<missing>", "x"]
    metrics = column["groups"][0]["metrics"]
    assert metrics["selection_rate"] == {"value": None, "ci_low": None, "ci_high": None}
    assert metrics["roc_auc"]["value"] is not None  # needs no threshold
    assert column["disparities"]["demographic_parity_difference"]["value"] is None
    assert strict_json(report)


def test_a_column_with_one_reportable_group_is_not_compared(credit: dict) -> None:
    y = credit["y"]
    lone = np.where(np.arange(y.size) < 20, "rare", "common")
    result = compare_fairness("binary", y, (credit["biased"], 0.5), (credit["champion"], 0.5), {"lone": lone},
                              metrics=["equalized_odds_difference"], max_increase=0.05, **BOOT)
    assert result["passed"] and result["tested"] == 0
    assert result["comparison"][0]["skipped"].startswith("fewer than 2 groups")
    column = result["challenger"]["columns"]["lone"]
    assert [g["value"] for g in column["groups"]] == ["common"] and column["suppressed"][0]["value"] == "rare"
    assert strict_json(result)


# ------------------------------------------------------------------------------------ regression, multiclass


@pytest.fixture(scope="module")
def claims() -> dict[str, np.ndarray]:
    """A regression target noisier in group b than in group a (the model cannot help it)."""
    rng = np.random.default_rng(7)
    n = 4000
    group = rng.choice(np.array(["a", "b"]), size=n)
    x = rng.normal(size=(n, 3))
    y = 2 * x[:, 0] - x[:, 1] + np.where(group == "b", 3.0, 1.0) * rng.normal(size=n)
    model = fit(x[: n // 2], y[: n // 2], Ridge())
    return {"y": y[n // 2:], "group": group[n // 2:], "pred": model.predict(x[n // 2:])}


def test_regression_report(claims: dict) -> None:
    y, pred, group = claims["y"], claims["pred"], claims["group"]
    report = fairness_report("regression", y, pred, None, {"group": group}, **BOOT)
    assert report["primary_metric"] == "rmse" and report["metrics"] == ["mae", "rmse", "mean_prediction"]
    groups = {g["value"]: g["metrics"] for g in report["columns"]["group"]["groups"]}
    b = group == "b"
    assert groups["b"]["rmse"]["value"] == pytest.approx(mean_squared_error(y[b], pred[b]) ** 0.5)
    assert groups["b"]["mean_prediction"]["value"] == pytest.approx(pred[b].mean())
    assert groups["b"]["rmse"]["ci_low"] > groups["a"]["rmse"]["ci_high"]  # the built-in disparity
    disparity = report["columns"]["group"]["disparities"]["primary_metric_difference"]
    assert disparity["metric"] == "rmse" and disparity["between"] == ["a", "b"]
    assert disparity["value"] == pytest.approx(groups["b"]["rmse"]["value"] - groups["a"]["rmse"]["value"])
    assert list(report["columns"]["group"]["disparities"]) == ["primary_metric_difference"]
    for where, m in intervals(report):
        assert m["ci_low"] <= m["value"] <= m["ci_high"], where
    assert strict_json(report)


def test_regression_gate_compares_the_primary_metric_disparity(claims: dict) -> None:
    """A challenger off by 1.5 in group b only widens the RMSE gap: block mode refuses it."""
    y, pred, group = claims["y"], claims["pred"], claims["group"]
    shifted = pred + np.where(group == "b", 1.5, 0.0)
    policy = Blessing(primary_metric="rmse", bootstrap_samples=300, non_inferiority_margin=1.0,
                      fairness={"mode": "block"})
    verdict = decide(policy, y, shifted, None, task="regression", champion_score=pred, challenger_cost=COST,
                     champion_cost=COST, sensitive={"group": group})
    (test,) = verdict["fairness"]["comparison"]
    assert test["metric"] == "primary_metric_difference" and test["widened"]
    assert not fairness_check(verdict)["passed"] and not verdict["blessed"]
    assert strict_json(verdict["fairness"])


def test_multiclass_report() -> None:
    rng = np.random.default_rng(9)
    n = 3000
    group = rng.choice(np.array(["a", "b"]), size=n)
    x = rng.normal(size=(n, 2)) + np.where(group == "b", 0.0, 1.5)[:, None] * np.array([1.0, 0.0])
    logits = np.column_stack([x[:, 0], x[:, 1], -x[:, 0] - x[:, 1]]) * 2
    y = np.array([rng.choice(3, p=np.exp(r) / np.exp(r).sum()) for r in logits])
    model = fit(x[: n // 2], y[: n // 2], LogisticRegression())
    proba, y_hold, g_hold = model.predict_proba(x[n // 2:]), y[n // 2:], group[n // 2:]
    report = fairness_report("multiclass", y_hold, proba, None, {"group": g_hold}, **BOOT)
    assert report["primary_metric"] == "log_loss" and report["metrics"] == ["accuracy", "log_loss"]
    groups = {g["value"]: g["metrics"] for g in report["columns"]["group"]["groups"]}
    a = g_hold == "a"
    assert groups["a"]["accuracy"]["value"] == pytest.approx((proba[a].argmax(axis=1) == y_hold[a]).mean())
    disparity = report["columns"]["group"]["disparities"]["primary_metric_difference"]
    assert disparity["value"] == pytest.approx(abs(groups["a"]["log_loss"]["value"] - groups["b"]["log_loss"]["value"]))
    for where, m in intervals(report):
        assert m["ci_low"] <= m["value"] <= m["ci_high"], where
    assert strict_json(report)


def test_a_sensitive_column_missing_from_the_holdout_is_an_error_naming_it() -> None:
    """The gate never skips fairness silently: a spec's sensitive column absent from the holdout raises."""
    import pandas as pd

    from crispflow.errors import CrispflowError
    from crispflow.model.modelling import sensitive_values
    from crispflow.spec import load_spec

    spec = load_spec("lending_club")
    assert spec.sensitive_columns == ["emp_length"]
    holdout = pd.DataFrame({"emp_length": ["1 year", "10+ years"], "term": ["36 months", "60 months"]})
    values = sensitive_values(spec, holdout)
    assert list(values) == ["emp_length"] and values["emp_length"].tolist() == ["1 year", "10+ years"]
    with pytest.raises(CrispflowError, match=r"sensitive columns: the frame has no column\(s\) \['emp_length'\]"):
        sensitive_values(spec, holdout.drop(columns="emp_length"))
