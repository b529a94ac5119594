"""crispflow.stats: multiple testing, ROC AUC and DeLong, bootstraps, binning, PSI and the two-sample tests."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path
from typing import get_args

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats
from sklearn import metrics as skm
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from crispflow.spec import Blessing
from crispflow.stats import (
    CORRECTIONS,
    benjamini_hochberg,
    binned,
    bootstrap_p_value,
    chi2_homogeneity,
    chi2_sf,
    class_resample_counts,
    delong,
    hanley_mcneil_se,
    holm,
    js_distance,
    kolmogorov_sf,
    ks_binned,
    normal_sf,
    percentile_interval,
    plain_resample_counts,
    psi,
    quantile_edges,
    quantile_psi,
    ranking_metrics,
    rate_test,
    resample_counts,
    wasserstein_binned,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def lending() -> dict[str, np.ndarray]:
    """Holdout labels and scores of a logistic regression on the demo data."""
    frame = pd.read_parquet(ROOT / "include" / "data" / "lending_club.parquet")
    y = (frame["Class"] == "bad").to_numpy()
    train, test = train_test_split(np.arange(len(frame)), test_size=0.75, stratify=y, random_state=0)
    columns = ["int_rate", "annual_inc", "revol_util", "inq_last_6mths", "funded_amnt"]
    model = make_pipeline(StandardScaler(), LogisticRegression()).fit(frame.iloc[train][columns], y[train])
    return {"y": y[test], "good": model.predict_proba(frame.iloc[test][columns])[:, 1]}


def test_importing_stats_loads_neither_scipy_nor_pandas() -> None:
    """`crispflow drift` and the canary import this module; scipy is loaded only by the functions needing it."""
    code = "import sys, crispflow.stats; print(sorted({'scipy', 'pandas', 'sklearn'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# ------------------------------------------------------------------------------------- multiple testing


def test_holm_and_benjamini_hochberg_against_hand_computed_values() -> None:
    p = [0.01, 0.04, 0.03, 0.005]
    # Holm: sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04; running max 0.02 0.03 0.06 0.06
    assert holm(p) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # BH: sorted times 4/1, 4/2, 4/3, 4/4 = 0.02, 0.02, 0.04, 0.04; running min from the top leaves them
    assert benjamini_hochberg(p) == pytest.approx([0.02, 0.04, 0.04, 0.02])
    # capping at 1 and BH's step-up: 0.5 * 2 = 1.0 but the larger p 0.6 * 2 / 2 = 0.6 pulls it down
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])
    assert benjamini_hochberg([0.5, 0.6]) == pytest.approx([0.6, 0.6])
    assert benjamini_hochberg([0.01, 0.02, 0.03, 0.04, 0.05]) == pytest.approx([0.05] * 5)
    assert holm([0.01, 0.02, 0.03, 0.04, 0.05]) == pytest.approx([0.05, 0.08, 0.09, 0.09, 0.09])
    assert holm([]) == [] and benjamini_hochberg([]) == []
    assert holm([0.2]) == [0.2] and benjamini_hochberg([0.2]) == [0.2]


def test_corrections_with_tied_p_values_by_hand() -> None:
    p = [0.04, 0.01, 0.01]
    # Holm: sorted 0.01, 0.01, 0.04 times 3, 2, 1 = 0.03, 0.02, 0.04; running max 0.03, 0.03, 0.04
    assert holm(p) == pytest.approx([0.04, 0.03, 0.03])
    # BH: sorted times 3/1, 3/2, 3/3 = 0.03, 0.015, 0.04; running min from the top 0.015, 0.015, 0.04
    assert benjamini_hochberg(p) == pytest.approx([0.04, 0.015, 0.015])
    assert CORRECTIONS["holm"] is holm and CORRECTIONS["benjamini_hochberg"] is benjamini_hochberg
    assert set(CORRECTIONS) == set(get_args(Blessing.model_fields["slice_correction"].annotation))  # the spec's choices


# ------------------------------------------------------------------------------------------------- ROC AUC


def test_delong_is_exact_on_identical_scores(lending: dict) -> None:
    y, good = lending["y"], lending["good"]
    d = delong(y, good, good)
    assert d["auc_a"] == d["auc_b"] == pytest.approx(skm.roc_auc_score(y, good))
    assert d["difference"] == 0.0 and d["variance"] == 0.0 and d["se"] == 0.0
    assert all(math.isnan(v) for v in delong(np.zeros(50, bool), good[:50], good[:50]).values())


def test_delong_is_antisymmetric_and_nan_on_a_non_finite_score() -> None:
    rng = np.random.default_rng(1)
    y = rng.random(500) < 0.3
    a, b = y + rng.normal(size=y.size), 0.5 * y + rng.normal(size=y.size)
    ab, ba = delong(y, a, b), delong(y, b, a)
    assert ab["difference"] == pytest.approx(-ba["difference"]) and ab["se"] == pytest.approx(ba["se"])
    assert ab["se"] > 0
    assert ab["auc_a"] == pytest.approx(skm.roc_auc_score(y, a)) and ab["auc_b"] == pytest.approx(ba["auc_a"])
    a[3] = np.inf
    assert math.isnan(delong(y, a, b)["se"])


@pytest.mark.parametrize("decimals", [None, 1])  # continuous scores, and heavy ties
def test_ranking_metrics_equal_sklearn(decimals: int | None) -> None:
    rng = np.random.default_rng(2)
    y = rng.random(2000) < 0.2
    score = y + rng.normal(size=y.size)
    score = score if decimals is None else np.round(score, decimals)
    auc, ap = ranking_metrics(np.ones((1, y.size)), y, score)
    assert auc[0] == pytest.approx(skm.roc_auc_score(y, score), abs=1e-12)
    assert ap[0] == pytest.approx(skm.average_precision_score(y, score), abs=1e-12)
    auc, ap = ranking_metrics(np.ones((2, y.size)), np.zeros(y.size, bool), score)
    assert np.isnan(auc).all() and np.isnan(ap).all()


def test_hanley_mcneil_se_by_hand() -> None:
    # auc 0.8, 50 positives, 100 negatives: q1 = 0.8 / 1.2, q2 = 2 * 0.64 / 1.8
    q1, q2 = 0.8 / 1.2, 1.28 / 1.8
    var = 0.8 * 0.2 + 49 * (q1 - 0.64) + 99 * (q2 - 0.64)
    assert hanley_mcneil_se(0.8, 50, 100) == pytest.approx(math.sqrt(var / 5000))
    assert hanley_mcneil_se(1.0, 10, 10) == 0.0


# ------------------------------------------------------------------------------------------------ bootstrap


def test_resamples_keep_the_class_counts_and_are_seeded() -> None:
    y = np.r_[np.ones(30, bool), np.zeros(70, bool)]
    blocks = list(resample_counts(y, 50, seed=4))
    counts = np.concatenate(blocks)
    assert counts.shape == (50, 100)
    assert (counts[:, y].sum(axis=1) == 30).all() and (counts[:, ~y].sum(axis=1) == 70).all()
    assert np.array_equal(counts, np.concatenate(list(resample_counts(y, 50, seed=4))))
    assert not np.array_equal(counts, np.concatenate(list(resample_counts(y, 50, seed=5))))
    big = np.zeros(300_000, bool)  # ~1M cells per block: 3 resamples of 300,000 rows per block
    assert [b.shape[0] for b in resample_counts(big, 7)] == [3, 3, 1]
    assert list(resample_counts(np.zeros(0, bool), 10)) == []


def test_percentile_interval_ignores_nan() -> None:
    samples = np.r_[np.arange(101, dtype=float), np.nan, np.nan]
    assert percentile_interval(samples, 0.1) == pytest.approx((5.0, 95.0))
    assert all(math.isnan(v) for v in percentile_interval(np.full(5, np.nan), 0.05))


def test_bootstrap_p_value_by_hand() -> None:
    samples = np.array([-0.3, -0.1, 0.0, 0.2, np.nan])
    assert bootstrap_p_value(samples, -0.1, lower_tail=True) == pytest.approx((1 + 2) / (1 + 4))
    assert bootstrap_p_value(samples, -0.1, lower_tail=False) == pytest.approx((1 + 3) / (1 + 4))
    assert bootstrap_p_value(samples, -1.0, lower_tail=True) == pytest.approx(1 / 5)  # never below 1 / (1 + B)
    assert math.isnan(bootstrap_p_value(np.full(3, np.nan), 0.0, lower_tail=True))


# -------------------------------------------------------------------------------------------------- binning


def _codes(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """The bin of each value by the definition: searchsorted(side="right") into the edges, NaN last."""
    codes = np.searchsorted(edges, values, side="right")
    codes[np.isnan(values)] = edges.size + 1
    return codes


def test_quantile_edges_and_binned_counts() -> None:
    values = np.r_[np.arange(1000, dtype=float), np.nan, np.inf, -np.inf]
    edges = quantile_edges(values, 10)
    assert edges[0] == 0.0 and 999.0 < edges[-1] < 999.0 + 1e-9 and len(edges) == 11
    assert binned(np.array([-5.0, 0.0, 999.0, 1e9, np.nan]), edges)[0].tolist() == [1, 1] + [0] * 8 + [1, 1, 1]
    assert binned(values, edges)[0].tolist() == [1] + [100] * 10 + [1, 1]
    assert quantile_edges(np.array([0.0] * 900 + [1.0] * 100), 20).tolist() == [0.0, 1.0, np.nextafter(1.0, 2)]
    assert quantile_edges(np.array([np.nan, np.inf]), 10).size == 0
    assert quantile_edges(np.sort(values), 10, ordered=True).tolist() == edges.tolist()


def test_binned_counts_every_value_and_averages_the_finite_ones() -> None:
    values = np.array([1.0, 3.0, -np.inf, 10.0, np.nan, 7.0, np.inf])
    counts, means = binned(values, np.array([5.0, 20.0]))
    assert counts.tolist() == [3, 2, 1, 1]  # below 5 (with -inf), [5, 20), at or above 20 (+inf), missing
    assert means[0] == 2.0 and means[1] == 8.5 and np.isnan(means[2:]).all()
    counts, means = binned(np.array([1.0, 2.0]), np.array([0.0, 5.0]))
    assert counts.tolist() == [0, 2, 0, 0] and means[1] == 1.5 and np.isnan(means[[0, 2, 3]]).all()
    counts, means = binned(np.array([np.nan, 1.0]), np.empty(0))  # no reference edges: values, then missing
    assert counts.tolist() == [1, 1] and means[0] == 1.0


@pytest.mark.parametrize("seed", range(6))
def test_binned_equals_a_bincount_of_every_value(seed: int) -> None:
    """One sort and the edges' positions give what a per-value searchsorted + bincount gives (counts exactly,
    means to rounding), with ties on the edges, NaN, ±inf and empty bins."""
    rng = np.random.default_rng(seed)
    values = np.round(rng.normal(0, 3, 5_000), 1)
    values[rng.choice(values.size, 40)] = rng.choice([np.nan, np.inf, -np.inf], 40)
    edges = np.unique(np.r_[rng.choice(values[np.isfinite(values)], 12), 100.0, 101.0])  # 2 bins stay empty
    codes = _codes(values, edges)
    expected = np.bincount(codes, minlength=edges.size + 2)
    finite = np.isfinite(values)
    sums = np.bincount(codes[finite], weights=values[finite], minlength=edges.size + 2)
    n = np.bincount(codes[finite], minlength=edges.size + 2)
    counts, means = binned(values, edges)
    assert counts.tolist() == expected.tolist()
    filled = n > 0
    np.testing.assert_allclose(means[filled], sums[filled] / n[filled], rtol=1e-12)
    assert np.isnan(means[~filled]).all()
    assert binned(values, edges, np.sort(values))[0].tolist() == expected.tolist()


# ------------------------------------------------------------------------ comparing two binned distributions


def test_psi_by_hand() -> None:
    ref, cur = np.array([50.0, 50.0, 0.0]), np.array([90.0, 10.0, 0.0])
    assert psi(ref, ref) == 0.0  # identical distributions
    p, q = np.array([50.5, 50.5]) / 101, np.array([90.5, 10.5]) / 101  # the empty bin is dropped; 0.5 per bin
    assert psi(ref, cur) == pytest.approx(float(((q - p) * np.log(q / p)).sum()))
    assert psi(ref, cur) == pytest.approx(psi(cur, ref))  # symmetric
    assert psi(np.array([10.0, 0.0]), np.array([0.0, 10.0])) > 2  # disjoint: large but finite


def test_quantile_psi_of_samples() -> None:
    rng = np.random.default_rng(6)
    expected = rng.beta(2, 5, 5000)
    assert quantile_psi(expected, expected) == 0.0
    same = quantile_psi(expected, rng.beta(2, 5, 5000))
    shifted = quantile_psi(expected, np.clip(rng.beta(2, 5, 5000) + 0.2, 0, 1))
    assert same is not None and shifted is not None and same < 0.01 < 0.25 < shifted
    assert quantile_psi(np.array([]), np.array([0.5])) is None and quantile_psi(expected, np.array([])) is None


def test_js_distance_bounds() -> None:
    assert js_distance(np.array([3.0, 1.0]), np.array([6.0, 2.0])) == 0.0
    assert js_distance(np.array([1.0, 0.0]), np.array([0.0, 1.0])) == pytest.approx(1.0)
    assert 0 < js_distance(np.array([3.0, 1.0]), np.array([1.0, 3.0])) < 1


def test_two_sample_statistics_agree_with_scipy_on_unbinned_data() -> None:
    rng = np.random.default_rng(5)
    a, b = rng.integers(0, 8, 3_000), rng.integers(0, 8, 1_000)
    ref, cur = np.bincount(a, minlength=8).astype(float), np.bincount(b, minlength=8).astype(float)
    stat, p, dof = chi2_homogeneity(ref, cur)
    expected = scipy_stats.chi2_contingency(np.vstack([ref, cur]), correction=False)
    assert dof == 7 and stat == pytest.approx(expected.statistic) and p == pytest.approx(expected.pvalue)
    x, y = rng.normal(size=3_000), rng.normal(0.1, 1, size=1_000)
    edges = np.sort(np.r_[x, y])  # one bin per distinct value: binned KS == exact KS statistic
    d, p_ks = ks_binned(np.bincount(np.searchsorted(edges, x), minlength=edges.size + 1).astype(float),
                        np.bincount(np.searchsorted(edges, y), minlength=edges.size + 1).astype(float))
    exact = scipy_stats.ks_2samp(x, y)
    assert d == pytest.approx(exact.statistic) and p_ks == pytest.approx(exact.pvalue, rel=0.25)
    assert psi(ref, ref) == pytest.approx(0.0)


def test_distribution_tails_agree_with_scipy_special() -> None:
    """The closed forms that spare `crispflow drift` importing scipy.special."""
    from scipy import special

    for x in [*np.linspace(0.01, 4, 200), 0.0, -1.0, 0.8199, 0.82, 0.8201, 6.0, 30.0]:
        assert kolmogorov_sf(float(x)) == pytest.approx(float(special.kolmogorov(x)), rel=1e-12, abs=1e-300)
    for dof in (1, 2, 3, 4, 7, 10, 21, 40, 101, 1000):
        for x in [0.0, 1e-6, 0.3, 1.0, dof / 2, dof - 1.0, float(dof), 2.0 * dof, dof + 50.0, 5.0 * dof + 200.0]:
            assert chi2_sf(dof, x) == pytest.approx(float(special.chdtrc(dof, x)), rel=1e-10, abs=1e-300)
    for z in [*np.linspace(-8, 8, 161), 20.0, 38.0, -40.0]:
        assert normal_sf(float(z)) == pytest.approx(float(special.ndtr(-z)), rel=1e-12, abs=1e-300)
    assert all(math.isnan(f(math.nan)) for f in (kolmogorov_sf, normal_sf, lambda x: chi2_sf(3, x)))


def test_empty_sides_and_sparse_cells() -> None:
    empty = np.zeros(3)
    assert math.isnan(ks_binned(empty, np.ones(3))[0]) and ks_binned(empty, np.ones(3))[1] == 1.0
    assert chi2_homogeneity(np.ones(3), empty)[1:] == (1.0, 0)
    # every cell expected below 5: pooled into one, nothing left to test
    assert chi2_homogeneity(np.array([1.0, 1.0, 1.0]), np.array([1.0, 2.0, 1.0])) == (0.0, 1.0, 0)


def test_rate_test_is_fishers_exact_test() -> None:
    assert rate_test(10, 100, 25, 100) == pytest.approx(scipy_stats.fisher_exact([[10, 90], [25, 75]]).pvalue)
    assert rate_test(0, 0, 5, 10) == 1.0 and rate_test(5, 10, 0, 0) == 1.0


def test_wasserstein_binned_with_one_value_per_bin_is_exact() -> None:
    means = np.array([0.0, 1.0, 4.0])
    ref, cur = np.array([2, 1, 0]), np.array([1, 1, 3])
    exact = scipy_stats.wasserstein_distance(np.repeat(means, ref), np.repeat(means, cur))
    assert wasserstein_binned(ref, means, cur, means) == pytest.approx(exact)
    assert math.isnan(wasserstein_binned(np.zeros(3), means, cur, means))


def test_class_and_plain_resamples() -> None:
    codes = np.random.default_rng(1).choice(4, size=300, p=[0.5, 0.3, 0.15, 0.05])
    counts = np.concatenate(list(class_resample_counts(codes, 40, seed=2)))
    assert counts.shape == (40, 300)
    per_class = np.stack([counts[:, codes == c].sum(axis=1) for c in range(4)], axis=1)
    assert (per_class == np.bincount(codes, minlength=4)).all()  # every resample keeps the class counts
    assert np.array_equal(counts, np.concatenate(list(class_resample_counts(codes, 40, seed=2))))
    plain = np.concatenate(list(plain_resample_counts(300, 40, seed=2)))
    assert (plain.sum(axis=1) == 300).all() and plain.std(axis=0).mean() > 0.5
    assert not np.array_equal(plain, np.concatenate(list(plain_resample_counts(300, 40, seed=3))))
    # a binary label array resampled as class codes keeps its counts too (the strata differ only in order)
    y = codes == 0
    binary = np.concatenate(list(resample_counts(y, 40, seed=2)))
    assert (binary[:, y].sum(axis=1) == y.sum()).all()
