"""Canary analysis: the canary arm against the champion arm, from the prediction log and its feedback.

Guardrails use the analysis window (the DAG run's data interval): error rate (one-sided two-proportion z-test
plus an absolute tolerance), p95 latency (ratio plus slack; both arms run in the same server process) and the
shift between the arms' score distributions (PSI; the arms see hash-split populations of the same traffic, so a
large shift means the models disagree, which holds a promotion until labels decide).

Labelled evidence uses every labelled request since the canary was deployed, *paired*: both registered models
re-score each labelled request's logged features, and the per-request difference `loss(canary) - loss(champion)`
(log loss) is tested. Pairing removes the between-request variance that makes two-arm comparisons need tens of
thousands of labels. The test is a mixture sequential probability ratio test (mSPRT, Johari et al. 2017): its
confidence sequence is valid however often the DAG looks, so checking every ten minutes does not inflate the
error rate. Without pairs (models not loadable), the arms' own labelled losses are compared unpaired. Decision:

- rollback: a guardrail fails, or the canary's loss is significantly higher (lower bound > 0);
- promote: at least `min_labels` labelled requests (and the canary arm served `min_requests` in the window), no
  guardrail fails, the score shift is acceptable, and the canary is non-inferior (upper bound < `margin`);
- continue: otherwise (not enough evidence yet).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from crispflow.lake import json_safe
from crispflow.predictions.schema import FEATURE_PREFIX
from crispflow.stats import quantile_psi as psi

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

PROMOTE, ROLLBACK, CONTINUE = "promote", "rollback", "continue"
_EPS = 1e-6


@dataclass(frozen=True)
class CanaryPolicy:
    """Thresholds of the canary analysis (defaults suit a low-traffic service; tune per pipeline)."""

    min_requests: int = 50  # per arm in the window before guardrails judge
    min_labels: int = 200  # labelled requests since deployment before labelled evidence can promote
    alpha: float = 0.05  # error level of the sequential test and of the error-rate test
    margin: float = 0.02  # non-inferiority margin on the mean log loss
    tau: float = 0.05  # mixing scale of the mSPRT (the size of differences it is tuned to find)
    max_error_rate_increase: float = 0.01
    max_p95_ratio: float = 1.5
    p95_slack_ms: float = 5.0
    max_score_psi: float = 0.25


def log_loss_per_row(score: np.ndarray, label: np.ndarray) -> np.ndarray:
    import numpy as np

    p = np.clip(score.astype(float), _EPS, 1 - _EPS)
    y = label.astype(float)
    return -(y * np.log(p) + (1 - y) * np.log(1 - p))


def msprt_interval(a: np.ndarray, b: np.ndarray | None, alpha: float, tau: float) -> dict[str, float] | None:
    """Always-valid (1 - alpha) confidence interval for mean(a) - mean(b), or for mean(a) alone when `b` is None
    (paired differences); normal-mixture mSPRT. None if there are fewer than two observations."""
    if len(a) < 2 or (b is not None and len(b) < 2):
        return None
    if b is None:
        diff, var = float(a.mean()), float(a.var(ddof=1) / len(a))
    else:
        diff = float(a.mean() - b.mean())
        var = float(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
    if var <= 0:
        return {"diff": diff, "lower": diff, "upper": diff, "half_width": 0.0}
    t2 = tau * tau
    half = math.sqrt(2 * var * (var + t2) / t2 * (math.log(1 / alpha) + 0.5 * math.log((var + t2) / var)))
    return {"diff": diff, "lower": diff - half, "upper": diff + half, "half_width": half}


def paired_differences(canary_scores: np.ndarray, champion_scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per request: log loss of the canary's score minus the champion's, on the same features and label."""
    return log_loss_per_row(canary_scores, labels) - log_loss_per_row(champion_scores, labels)


def paired_from_log(rows: pd.DataFrame, score: Callable[[str, pd.DataFrame], np.ndarray], *, champion: str,
                    canary: str) -> np.ndarray | None:
    """Paired differences for the labelled, served, successful requests of `rows`: `score(version, features)`
    re-scores the logged features (columns `feature.<name>`) with each version. None if nothing is labelled."""
    labelled = rows[rows["served"] & (rows["status"] == "ok") & rows["label"].notna()]
    if labelled.empty:
        return None
    feature_columns = [c for c in labelled.columns if c.startswith(FEATURE_PREFIX)]
    features = labelled[feature_columns].rename(columns=lambda c: c.removeprefix(FEATURE_PREFIX))
    features = features.reset_index(drop=True)
    return paired_differences(score(canary, features), score(champion, features), labelled["label"].to_numpy(float))


def _auc(score: np.ndarray, label: np.ndarray) -> float | None:
    """ROC AUC as the evaluation reports it; None with a single class."""
    from crispflow.model.evaluation import compute_metric

    value = compute_metric("roc_auc", label, score, label)
    return None if math.isnan(value) else value


def arm_summary(rows: pd.DataFrame) -> dict[str, Any]:
    """Requests, errors, latency and score quantiles, and labelled metrics of one arm."""
    import numpy as np

    ok = rows[rows["status"] == "ok"]
    labelled = ok[ok["label"].notna()]
    loss = log_loss_per_row(labelled["score"].to_numpy(), labelled["label"].to_numpy())
    out: dict[str, Any] = {
        "requests": len(rows),
        "errors": int((rows["status"] != "ok").sum()),
        "error_rate": float((rows["status"] != "ok").mean()) if len(rows) else None,
        "latency_p50_ms": float(np.percentile(rows["latency_ms"], 50)) if len(rows) else None,
        "latency_p95_ms": float(np.percentile(rows["latency_ms"], 95)) if len(rows) else None,
        "mean_score": float(ok["score"].mean()) if len(ok) else None,
        "labels": len(labelled),
        "label_rate": float(labelled["label"].astype(float).mean()) if len(labelled) else None,
        "log_loss": float(loss.mean()) if len(loss) else None,
        "log_loss_ci95": _mean_ci(loss),
        "roc_auc": _auc(labelled["score"].to_numpy(), labelled["label"].to_numpy()) if len(labelled) else None,
    }
    return out


def _mean_ci(values: np.ndarray) -> list[float] | None:
    if len(values) < 2:
        return None
    half = 1.96 * float(values.std(ddof=1)) / math.sqrt(len(values))
    return [float(values.mean()) - half, float(values.mean()) + half]


def _arm(frame: pd.DataFrame, alias: str, version: str) -> pd.DataFrame:
    return frame[(frame["alias"] == alias) & (frame["version"].astype(str) == str(version)) & frame["served"]]


def analyse(window: pd.DataFrame, since_deploy: pd.DataFrame, *, champion: str, canary: str,
            policy: CanaryPolicy | None = None, paired: np.ndarray | None = None) -> dict[str, Any]:
    """The canary report: both arms, the guardrails, the labelled test and the decision with its reasons.

    `window` holds the analysis interval's rows, `since_deploy` every row since the canary went live; both are
    prediction-log frames (columns alias, version, served, status, score, latency_ms, label). `paired`: per
    labelled request, loss(canary) - loss(champion), both models scoring the same logged features
    (`paired_differences`).
    """
    import numpy as np

    policy = policy or CanaryPolicy()
    champ_w, can_w = _arm(window, "champion", champion), _arm(window, "canary", canary)
    champ_all, can_all = _arm(since_deploy, "champion", champion), _arm(since_deploy, "canary", canary)
    reasons: list[str] = []
    failed: list[str] = []
    guardrails: dict[str, Any] = {}

    enough = len(champ_w) >= policy.min_requests and len(can_w) >= policy.min_requests
    if enough:
        e_c, e_b = (can_w["status"] != "ok").mean(), (champ_w["status"] != "ok").mean()
        pooled = ((can_w["status"] != "ok").sum() + (champ_w["status"] != "ok").sum()) / (len(can_w) + len(champ_w))
        se = math.sqrt(max(pooled * (1 - pooled), _EPS) * (1 / len(can_w) + 1 / len(champ_w)))
        z = float((e_c - e_b) / se)
        worse = z > _z(policy.alpha) and e_c - e_b > policy.max_error_rate_increase
        guardrails["error_rate"] = {"canary": float(e_c), "champion": float(e_b), "z": z, "failed": bool(worse)}
        p95_c, p95_b = np.percentile(can_w["latency_ms"], 95), np.percentile(champ_w["latency_ms"], 95)
        budget = policy.max_p95_ratio * p95_b + policy.p95_slack_ms
        slow = p95_c > budget
        guardrails["latency_p95_ms"] = {"canary": float(p95_c), "champion": float(p95_b), "budget": float(budget),
                                        "failed": bool(slow)}
        shift = psi(champ_w.loc[champ_w["status"] == "ok", "score"].to_numpy(float),
                    can_w.loc[can_w["status"] == "ok", "score"].to_numpy(float))
        guardrails["score_psi"] = {"value": shift, "max": policy.max_score_psi,
                                   "held": bool(shift is not None and shift > policy.max_score_psi)}
        if worse:
            failed.append(f"error rate {e_c:.2%} vs champion {e_b:.2%} (z={z:.2f})")
        if slow:
            failed.append(f"p95 latency {p95_c:.1f} ms over budget {budget:.1f} ms (champion {p95_b:.1f} ms)")
    else:
        reasons.append(f"window has {len(can_w)} canary / {len(champ_w)} champion requests "
                       f"(< {policy.min_requests} each): guardrails wait")

    def labelled_loss(arm: pd.DataFrame) -> np.ndarray:
        rows = arm[(arm["status"] == "ok") & arm["label"].notna()]
        return log_loss_per_row(rows["score"].to_numpy(float), rows["label"].to_numpy(float))

    if paired is not None and len(paired) >= 2:
        test, n_labels, design = msprt_interval(paired, None, policy.alpha, policy.tau), len(paired), "paired"
    else:
        loss_c, loss_b = labelled_loss(can_all), labelled_loss(champ_all)
        test, design = msprt_interval(loss_c, loss_b, policy.alpha, policy.tau), "unpaired"
        n_labels = min(len(loss_c), len(loss_b))
    labelled = {"labels": n_labels, "design": design, "metric": "log_loss (canary - champion)",
                "test": "mSPRT (always-valid)", "margin": policy.margin, "interval": test}

    if test is not None and test["lower"] > 0 and n_labels >= policy.min_labels // 3:
        failed.append(f"canary log loss higher than champion by {test['diff']:.4f} "
                      f"(always-valid interval [{test['lower']:.4f}, {test['upper']:.4f}], {design})")
    if failed:
        decision = ROLLBACK
        reasons = failed + reasons
    elif (test is not None and n_labels >= policy.min_labels and test["upper"] < policy.margin
          and enough and not guardrails["score_psi"]["held"]):
        decision = PROMOTE
        reasons.append(f"canary non-inferior: loss difference {test['diff']:+.4f}, upper bound "
                       f"{test['upper']:.4f} < margin {policy.margin} on {n_labels} labelled requests ({design})")
    else:
        decision = CONTINUE
        if test is None or n_labels < policy.min_labels:
            reasons.append(f"{n_labels} labelled requests ({design}) < {policy.min_labels}")
        elif test["upper"] >= policy.margin:
            reasons.append(f"not yet shown non-inferior: upper bound {test['upper']:.4f} >= margin {policy.margin}")
        if enough and guardrails["score_psi"]["held"]:
            reasons.append(f"score distributions differ (PSI {guardrails['score_psi']['value']:.3f})")
    return json_safe({
        "decision": decision, "reasons": reasons, "champion_version": str(champion), "canary_version": str(canary),
        "policy": asdict(policy), "guardrails": guardrails, "labelled": labelled,
        "window": {"champion": arm_summary(champ_w), "canary": arm_summary(can_w)},
        "since_deploy": {"champion": arm_summary(champ_all), "canary": arm_summary(can_all)},
    })


def _z(alpha: float) -> float:
    from scipy.stats import norm

    return float(norm.ppf(1 - alpha))
