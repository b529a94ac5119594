"""The statistics the gates and monitors share: ROC AUC and DeLong, bootstraps, multiple testing, binning and PSI,
two-sample tests on binned counts.

One owner for each: evaluation and blessing (crispflow.model), drift and reference profiles (crispflow.monitoring)
and the canary analysis (crispflow.release) call these and keep none of their own. Pure numpy; scipy is imported
inside the functions that need it, so importing this module stays cheap. Never Airflow, MLflow or pandas.

Conventions: labels are boolean (True = the positive class), or int class codes for the multiclass resampler; a
statistic undefined on the data is NaN, never an exception; p-value lists keep the input order.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

NAN = float("nan")
MIN_EXPECTED = 5.0  # chi-square cells expected below this are pooled
PSI_SMOOTHING = 0.5  # pseudo-count per bin for PSI (keeps log ratios finite)
_MAX_CELLS = 1_000_000  # resampling counts per block (B x n float64: 8 MB, stays in the allocator's pool)


# --------------------------------------------------------------------------------------------------- inputs


def as_labels(values: Any, what: str = "y_true") -> np.ndarray:
    """A 1-d bool array from booleans or 0/1; anything else (e.g. the strings "good"/"bad") is a ValueError."""
    arr = np.asarray(values).ravel()
    if arr.dtype == bool:
        return arr
    if arr.dtype.kind in "iufO" and np.isin(arr, [0, 1]).all():
        return arr.astype(bool)
    raise ValueError(f"{what} must be boolean or 0/1 (True = the positive class), got dtype {arr.dtype}")


def as_inputs(y_true: Any, score: Any) -> tuple[np.ndarray, np.ndarray]:
    """`y_true` as a 1-d bool array and `score` as float; raises ValueError on bad labels or a length mismatch."""
    y = as_labels(y_true)
    s = np.asarray(score, dtype=float).ravel()
    if y.shape != s.shape:
        raise ValueError(f"y_true has {y.size} rows but score has {s.size}")
    return y, s


def ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den, NaN where den is 0."""
    out = np.full(np.shape(num), np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


# ------------------------------------------------------------------------------------- multiple testing


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error rate), in the input order."""
    p = np.asarray(p_values, dtype=float)
    m = p.size
    order = np.argsort(p, kind="stable")
    stepped = np.maximum.accumulate((m - np.arange(m)) * p[order])
    adjusted = np.empty(m)
    adjusted[order] = np.minimum(stepped, 1.0)
    return adjusted.tolist()


def benjamini_hochberg(p_values: Sequence[float]) -> list[float]:
    """Benjamini-Hochberg step-up adjusted p-values (false discovery rate), in the input order."""
    p = np.asarray(p_values, dtype=float)
    m = p.size
    order = np.argsort(p, kind="stable")
    scaled = p[order] * m / np.arange(1, m + 1)
    stepped = np.minimum.accumulate(scaled[::-1])[::-1]
    adjusted = np.empty(m)
    adjusted[order] = np.minimum(stepped, 1.0)
    return adjusted.tolist()


CORRECTIONS = {"holm": holm, "benjamini_hochberg": benjamini_hochberg}


# ------------------------------------------------------------------------------------------------- ROC AUC


def _layout(score: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, ...]:
    """Rows by descending score and, for each distinct score holding positives: the index of its first positive
    among the positive rows, and its first and last row (positions in the sorted order)."""
    order = np.argsort(-score, kind="stable")
    s = score[order]
    positives = np.flatnonzero(y[order])
    new = np.r_[True, s[1:] != s[:-1]]
    starts = np.flatnonzero(new)
    ends = np.r_[starts[1:], s.size] - 1
    hit, first = np.unique((np.cumsum(new) - 1)[positives], return_index=True)
    return order, positives, first, starts[hit], ends[hit]


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", a, b)


def ranking_metrics(counts: np.ndarray, y: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ROC AUC (Mann-Whitney, ties count 1/2) and average precision (sklearn's step-wise sum) for each row of
    `counts` (a B x n matrix of row multiplicities or weights); NaN without a positive. Scores must be finite.

    A threshold at a distinct score predicts positive every row scored at or above it. Only the thresholds at
    scores holding positives contribute, so the weight predicted positive is needed there alone: segment sums
    between consecutive such scores (one pass over the counts) and a cumulative sum over the positives. Fastest
    when the rows are already sorted by descending score (no reordering of `counts` is needed).
    """
    order, positives, first, g_start, g_end = _layout(score, y)
    if not positives.size:
        return np.full(counts.shape[0], np.nan), np.full(counts.shape[0], np.nan)
    w = counts if np.array_equal(order, np.arange(order.size)) else np.take(counts, order, axis=1)
    head = w[:, : g_end[-1] + 1]
    pos = w[:, positives]
    if first.size < positives.size:  # several positives share a score
        pos = np.add.reduceat(pos, first, axis=1)
    predicted = np.cumsum(np.add.reduceat(head, np.r_[0, g_end[:-1] + 1], axis=1), axis=1)
    if np.any(g_end > g_start):  # ties: the whole weight at each of those scores
        total = np.add.reduceat(head, np.column_stack([g_start, g_end + 1]).ravel()[:-1], axis=1)[:, ::2]
    else:
        total = pos
    tp = np.cumsum(pos, axis=1)
    n_pos = tp[:, -1]
    n_neg = counts.sum(axis=1) - n_pos
    # a positive at score s beats the negatives scored lower (n_neg - fp(s)) and half those tied at s
    beaten = n_pos * n_neg - _dot(pos, predicted - tp) + 0.5 * _dot(pos, total - pos)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    return ratio(beaten, n_pos * n_neg), ratio(_dot(pos, precision), n_pos)


def hanley_mcneil_se(auc: float, positives: int, negatives: int) -> float:
    """Hanley-McNeil standard error of a ROC AUC from `positives` and `negatives` rows."""
    q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
    var = (auc * (1 - auc) + (positives - 1) * (q1 - auc**2) + (negatives - 1) * (q2 - auc**2))
    return math.sqrt(max(var, 0.0) / (positives * negatives))


def delong(y_true: np.ndarray, score_a: np.ndarray, score_b: np.ndarray) -> dict[str, float]:
    """DeLong's test for two correlated ROC AUCs on the same rows (Sun & Xu 2014, O(n log n) with midranks).

    Returns auc_a, auc_b, difference (a - b), its variance and standard error; NaN when undefined (fewer than
    two positives or negatives, or a non-finite score).
    """
    from scipy.stats import rankdata

    y, a = as_inputs(y_true, score_a)
    _, b = as_inputs(y, score_b)
    m, n = int(y.sum()), int((~y).sum())
    if m < 2 or n < 2 or not (np.isfinite(a).all() and np.isfinite(b).all()):
        return {"auc_a": NAN, "auc_b": NAN, "difference": NAN, "variance": NAN, "se": NAN}
    scores = np.stack([a, b])
    pos, neg = scores[:, y], scores[:, ~y]
    tx, ty = rankdata(pos, axis=1), rankdata(neg, axis=1)  # midranks within each class
    tz = rankdata(np.concatenate([pos, neg], axis=1), axis=1)  # midranks over all rows
    auc = (tz[:, :m].sum(axis=1) - m * (m + 1) / 2) / (m * n)
    v10 = (tz[:, :m] - tx) / n  # structural components of the positives
    v01 = 1.0 - (tz[:, m:] - ty) / m  # and of the negatives
    cov = np.cov(v10) / m + np.cov(v01) / n
    contrast = np.array([1.0, -1.0])
    variance = max(float(contrast @ cov @ contrast), 0.0)
    return {
        "auc_a": float(auc[0]),
        "auc_b": float(auc[1]),
        "difference": float(auc[0] - auc[1]),
        "variance": variance,
        "se": math.sqrt(variance),
    }


# ------------------------------------------------------------------------------------------------ bootstrap


def _strata_counts(strata: list[np.ndarray], n: int, n_boot: int, seed: int | Sequence[int]) -> Iterator[np.ndarray]:
    """Resamples drawing each stratum (an array of row indices) separately with replacement, as count blocks."""
    rng = np.random.default_rng(seed)
    strata = [g.astype(np.int32) for g in strata if g.size]
    block = max(1, _MAX_CELLS // max(n, 1))
    for start in range(0, n_boot if n else 0, block):
        b = min(block, n_boot - start)
        rows = np.concatenate([g[rng.integers(0, g.size, size=(b, g.size), dtype=np.int32)] for g in strata], axis=1)
        flat = (rows + (np.arange(b, dtype=np.int32) * n)[:, None]).ravel()
        yield np.bincount(flat, minlength=b * n).reshape(b, n).astype(float)


def resample_counts(y_true: np.ndarray, n_boot: int, seed: int | Sequence[int] = 0) -> Iterator[np.ndarray]:
    """Stratified bootstrap resamples as blocks of row multiplicities (block x n float arrays, B rows in all).

    Positives and negatives are drawn separately with replacement, so each resample keeps the class counts.
    The same seed yields the same resamples, so two models scored on the same rows can be paired. The counts
    are drawn in blocks of ~1M cells, so memory stays flat whatever the number of resamples.
    """
    y = np.asarray(y_true).astype(bool).ravel()
    return _strata_counts([np.flatnonzero(y), np.flatnonzero(~y)], y.size, n_boot, seed)


def class_resample_counts(codes: np.ndarray, n_boot: int, seed: int | Sequence[int] = 0) -> Iterator[np.ndarray]:
    """Stratified resamples for integer class codes (multiclass): each class drawn separately, so every resample
    keeps the holdout's class counts. Blocks as in `resample_counts`."""
    codes = np.asarray(codes).ravel()
    strata = [np.flatnonzero(codes == c) for c in np.unique(codes)]
    return _strata_counts(strata, codes.size, n_boot, seed)


def plain_resample_counts(n: int, n_boot: int, seed: int | Sequence[int] = 0) -> Iterator[np.ndarray]:
    """Ordinary (unstratified) bootstrap resamples of n rows (regression). Blocks as in `resample_counts`."""
    return _strata_counts([np.arange(n)], n, n_boot, seed)


def percentile_interval(samples: np.ndarray, alpha: float) -> tuple[float, float]:
    """The (alpha/2, 1 - alpha/2) percentile interval of the finite samples; NaN if there are none."""
    valid = np.asarray(samples, dtype=float)
    valid = valid[np.isfinite(valid)]
    if not valid.size:
        return NAN, NAN
    low, high = np.quantile(valid, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def bootstrap_p_value(samples: np.ndarray, bound: float, *, lower_tail: bool) -> float:
    """One-sided bootstrap p-value (1 + k) / (1 + B) over the B finite samples: k of them at or below `bound`
    (`lower_tail`) or at or above it; NaN if there are none. With B resamples it is never below 1 / (1 + B)."""
    valid = samples[np.isfinite(samples)]
    if not valid.size:
        return NAN
    hits = np.sum(valid <= bound) if lower_tail else np.sum(valid >= bound)
    return float((1 + hits) / (1 + valid.size))


# -------------------------------------------------------------------------------------------------- binning


def quantile_edges(values: np.ndarray, bins: int, *, ordered: bool = False) -> np.ndarray:
    """Bin edges of the finite values: their minimum, the interior quantiles of `bins` equal-frequency bins (ties
    collapse, so a 0/1 column gets 2 bins) and just above their maximum; empty when no value is finite.
    `ordered`: `values` are already sorted ascending (as `np.sort` leaves them: NaN last)."""
    ordered_values = values if ordered else np.sort(values)
    lo, hi, _ = finite_span(ordered_values)
    finite = ordered_values[lo:hi]
    if not finite.size:
        return np.empty(0)
    levels = np.linspace(0, 1, bins + 1)[1:-1]
    # np.quantile(finite, levels, method="higher"), read off the sorted values
    interior = finite[np.ceil((finite.size - 1) * levels).astype(np.intp)]
    return np.unique(np.concatenate([[finite[0]], interior, [np.nextafter(finite[-1], np.inf)]]))


def finite_span(ordered: np.ndarray) -> tuple[int, int, int]:
    """(start, end, present) of ascending-sorted values (NaN last): ordered[start:end] are the finite ones,
    ordered[:present] the non-NaN ones (-inf before start, +inf from end)."""
    present = int(np.searchsorted(ordered, np.nan, side="left"))
    head = ordered[:present]
    return int(np.searchsorted(head, -np.inf, side="right")), int(np.searchsorted(head, np.inf, side="left")), present


def binned(values: np.ndarray, edges: np.ndarray, ordered: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(count, mean of the finite values) of each bin of `values`: bin 0 below `edges[0]`, bin i in [edges[i-1],
    edges[i]), bin len(edges) at or above the last edge (±inf land in these two), then the missing (NaN) values;
    the mean is NaN in a bin without a finite value.

    From one sort (`ordered`: `np.sort(values)` if the caller has it): the bins are the runs between the edges'
    positions in the sorted values, so a window costs a sort plus a `searchsorted` of the few edges and one
    `add.reduceat` (a `searchsorted` of every value into the edges costs ~4x more)."""
    s = np.sort(values) if ordered is None else ordered
    lo, hi, present = finite_span(s)
    bounds = np.concatenate(([0], np.searchsorted(s[:present], edges, side="left"), [present]))
    counts = np.append(np.diff(bounds), s.size - present)
    clipped = np.clip(bounds, lo, hi)
    finite_counts = np.diff(clipped)
    sums = np.zeros(finite_counts.size)
    filled = finite_counts > 0
    if filled.any():  # the filled runs are contiguous, so reduceat sums each one exactly
        sums[filled] = np.add.reduceat(s[lo:hi], clipped[:-1][filled] - lo)
    means = np.full(counts.size, np.nan)
    np.divide(sums, finite_counts, out=means[:-1], where=filled)
    return counts, means


# ------------------------------------------------------------------------ comparing two binned distributions


def psi(ref: np.ndarray, cur: np.ndarray) -> float:
    """Population stability index of two count vectors over the bins either side uses (pseudo-count 0.5 per bin)."""
    used = (ref + cur) > 0
    r, c = ref[used] + PSI_SMOOTHING, cur[used] + PSI_SMOOTHING
    p, q = r / r.sum(), c / c.sum()
    return float(((q - p) * np.log(q / p)).sum())


def quantile_psi(expected: np.ndarray, actual: np.ndarray, bins: int = 10) -> float | None:
    """PSI of the sample `actual` against the sample `expected`, on `bins` bins cut at the interior quantiles of
    `expected` (ties collapse); None if either sample is empty."""
    if len(expected) == 0 or len(actual) == 0:
        return None
    edges = np.unique(np.quantile(expected, np.linspace(0, 1, bins + 1)[1:-1]))
    e = np.bincount(np.searchsorted(edges, expected, side="right"), minlength=len(edges) + 1)
    a = np.bincount(np.searchsorted(edges, actual, side="right"), minlength=len(edges) + 1)
    return psi(e, a)


def js_distance(ref: np.ndarray, cur: np.ndarray) -> float:
    """Jensen-Shannon distance (base 2, in [0, 1]) between the two binned distributions."""
    p, q = ref / ref.sum(), cur / cur.sum()
    mid = (p + q) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        kl_p = np.where(p > 0, p * np.log2(p / mid), 0.0).sum()
        kl_q = np.where(q > 0, q * np.log2(q / mid), 0.0).sum()
    return float(math.sqrt(max((kl_p + kl_q) / 2, 0.0)))


def ks_binned(ref: np.ndarray, cur: np.ndarray) -> tuple[float, float]:
    """(D, p): two-sample KS on binned counts with effective n = n·m/(n+m) (asymptotic Kolmogorov p-value with
    Stephens' small-sample correction; binning only makes it conservative); NaN, 1.0 when a side is empty."""
    n, m = float(ref.sum()), float(cur.sum())
    if n == 0 or m == 0:
        return math.nan, 1.0
    d = float(np.abs(np.cumsum(ref) / n - np.cumsum(cur) / m).max())
    root = math.sqrt(n * m / (n + m))
    return d, kolmogorov_sf((root + 0.12 + 0.11 / root) * d)


def chi2_homogeneity(ref: np.ndarray, cur: np.ndarray) -> tuple[float, float, int]:
    """(statistic, p, dof) of the chi-square homogeneity test on the 2 x k table; sparse cells pooled."""
    ref, cur = np.asarray(ref, dtype=float), np.asarray(cur, dtype=float)
    n, m = ref.sum(), cur.sum()
    if n == 0 or m == 0:
        return math.nan, 1.0, 0
    keep = (ref + cur) > 0
    ref, cur = ref[keep], cur[keep]
    small = min(n, m) * (ref + cur) / (n + m) < MIN_EXPECTED
    if small.any():
        ref = np.append(ref[~small], ref[small].sum())
        cur = np.append(cur[~small], cur[small].sum())
        if ref.size > 1 and min(n, m) * (ref[-1] + cur[-1]) / (n + m) < MIN_EXPECTED:
            target = int(np.argmin((ref + cur)[:-1]))  # still sparse: merge into the smallest other cell
            ref[target] += ref[-1]
            cur[target] += cur[-1]
            ref, cur = ref[:-1], cur[:-1]
    if ref.size < 2:
        return 0.0, 1.0, 0
    total = ref + cur
    e_ref, e_cur = n * total / (n + m), m * total / (n + m)
    stat = float(((ref - e_ref) ** 2 / e_ref).sum() + ((cur - e_cur) ** 2 / e_cur).sum())
    dof = ref.size - 1
    return stat, chi2_sf(dof, stat), dof


def rate_test(ref_hits: int, ref_rows: int, cur_hits: int, cur_rows: int) -> float:
    """Fisher's exact two-sided p-value for equal rates (1.0 when a side has no rows)."""
    from scipy.stats import fisher_exact

    if ref_rows == 0 or cur_rows == 0:
        return 1.0
    table = [[ref_hits, ref_rows - ref_hits], [cur_hits, cur_rows - cur_hits]]
    return float(fisher_exact(table).pvalue)


def wasserstein_binned(ref_counts: np.ndarray, ref_means: np.ndarray, cur_counts: np.ndarray,
                       cur_means: np.ndarray) -> float:
    """Wasserstein-1 between the bins' finite means weighted by their counts (NaN when a side has none)."""
    r_ok = (ref_counts > 0) & np.isfinite(ref_means)
    c_ok = (cur_counts > 0) & np.isfinite(cur_means)
    if not r_ok.any() or not c_ok.any():
        return math.nan
    return wasserstein_1d(ref_means[r_ok], cur_means[c_ok], ref_counts[r_ok], cur_counts[c_ok])


def wasserstein_1d(u: np.ndarray, v: np.ndarray, u_weights: np.ndarray, v_weights: np.ndarray) -> float:
    """Wasserstein-1 distance of two weighted samples: the integral of |CDF_u - CDF_v|, computed as
    `scipy.stats.wasserstein_distance` does (same operations, same result) without importing scipy.stats."""
    u, v = np.asarray(u, dtype=float), np.asarray(v, dtype=float)
    points = np.sort(np.concatenate((u, v)), kind="mergesort")
    cdfs = []
    for values, weights in ((u, u_weights), (v, v_weights)):
        order = np.argsort(values)
        cumulative = np.concatenate(([0], np.cumsum(np.asarray(weights, dtype=float)[order])))
        cdfs.append(cumulative[values[order].searchsorted(points[:-1], "right")] / cumulative[-1])
    return float(np.vecdot(np.abs(cdfs[0] - cdfs[1]), np.diff(points)))


# --------------------------------------------------------------------------------- distribution tails
# Closed forms in `math` (agreeing with scipy.special's ndtr, kolmogorov and chdtrc to ~1e-13, tests/unit/
# test_stats.py): importing scipy.special costs 0.6 s, most of a small `crispflow drift` run.


def normal_sf(z: float) -> float:
    """P(Z > z) for a standard normal Z."""
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def kolmogorov_sf(x: float) -> float:
    """P(K > x) for the Kolmogorov distribution (scipy.special.kolmogorov): the alternating series 2 sum
    (-1)^(k-1) exp(-2 k^2 x^2) from x = 0.82, below it 1 - the theta series sqrt(2 pi)/x sum exp(-(2k-1)^2 pi^2
    / (8 x^2)); both converge in a few terms there."""
    if math.isnan(x):
        return math.nan
    if x <= 0:
        return 1.0
    if x < 0.82:
        w = -math.pi**2 / (8 * x * x)
        cdf = math.sqrt(2 * math.pi) / x * sum(math.exp((2 * k - 1) ** 2 * w) for k in range(1, 8))
        return 1.0 - cdf
    return max(0.0, 2 * sum((-1) ** (k - 1) * math.exp(-2 * k * k * x * x) for k in range(1, 12)))


def chi2_sf(dof: int, x: float) -> float:
    """P(X > x) for a chi-square X with integer `dof` >= 1 (scipy.special.chdtrc): the finite Poisson-type sums of
    the upper incomplete gamma function at half-integer shape, all terms positive (no cancellation), summed in
    log space."""
    if math.isnan(x):
        return math.nan
    if x <= 0:
        return 1.0
    t = x / 2
    if dof % 2 == 0:  # e^-t sum_{i<m} t^i / i!
        head, offset, terms = 0.0, 0.0, dof // 2
    else:  # erfc(sqrt t) + e^-t sum_{i<m} t^(i+1/2) / gamma(i+3/2)
        head, offset, terms = math.erfc(math.sqrt(t)), 0.5, dof // 2
    if not terms:
        return head
    first = -t + offset * math.log(t) - math.lgamma(offset + 1)
    logs = first + np.concatenate(([0.0], np.cumsum(math.log(t) - np.log(np.arange(1, terms) + offset))))
    top = float(logs.max())
    return min(1.0, head + math.exp(top) * float(np.exp(logs - top).sum()))
