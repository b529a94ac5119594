"""Canary analysis: the canary arm against the champion arm, from the prediction log and its feedback.

Guardrails use the analysis window (the DAG run's data interval): error rate (one-sided two-proportion z-test
plus an absolute tolerance), p95 latency (ratio plus slack; both arms run in the same server process) and the
shift between the arms' score distributions (PSI; the arms see hash-split populations of the same traffic, so a
large shift means the models disagree, which holds a promotion until labels decide).

Labelled evidence uses every labelled request since the canary was deployed, *paired*: both registered models
re-score each labelled request's logged features, and the per-request difference `loss(canary) - loss(champion)`
is tested. The loss follows the task (`crispflow.model.tasks.per_row_loss`; feedback labels are float64):

- binary: log loss of P(positive) against the 0/1 label (nats);
- multiclass: log loss of the probability given to the true class (the label is the class code; nats);
- regression: squared error of the prediction against the observed value (target units squared).

The policy's `margin` (non-inferiority margin on the mean per-row loss) and `tau` (the mSPRT's mixing scale):
binary and multiclass: in nats of log loss (defaults 0.02 and 0.05); regression: fractions of the champion's mean
squared error on the labelled requests (defaults 0.02 and 0.05, i.e. the canary's MSE may be at most 2 % above
the champion's, about 1 % in RMSE), because a squared error has the target's scale squared and one number would
be meaningless across targets. The report shows the margin in loss units (`labelled.margin`).

Pairing removes the between-request variance that makes two-arm comparisons need tens of thousands of labels.
The test is a mixture sequential probability ratio test (mSPRT, Johari et al. 2017): its confidence sequence is
valid however often the DAG looks, so checking every ten minutes does not inflate the error rate. Without pairs
(models not loadable), the arms' own labelled losses are compared unpaired (multiclass: from the logged
`probabilities`). Decision:

- rollback: a guardrail fails, or the canary's loss is significantly higher (lower bound > 0);
- promote: at least `min_labels` labelled requests (and the canary arm served `min_requests` in the window), no
  guardrail fails, the score shift is acceptable, and the canary is non-inferior (upper bound < `margin`);
- continue: otherwise (not enough evidence yet).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any, NamedTuple

from crispflow.lake import json_safe
from crispflow.policies import CANARY, digest, tighten
from crispflow.predictions.schema import FEATURE_PREFIX
from crispflow.stats import quantile_psi as psi

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from crispflow.spec import PipelineSpec

PROMOTE, ROLLBACK, CONTINUE = "promote", "rollback", "continue"
_EPS = 1e-6


@dataclass(frozen=True)
class CanaryPolicy:
    """Thresholds of the canary analysis (defaults suit a low-traffic service; tune per pipeline).

    `margin` and `tau`: nats of log loss for binary and multiclass, fractions of the champion's mean squared
    error for regression (see the module docstring); `resolved` turns them into loss units.
    """

    min_requests: int = 50  # per arm in the window before guardrails judge
    min_labels: int = 200  # labelled requests since deployment before labelled evidence can promote
    alpha: float = 0.05  # error level of the sequential test and of the error-rate test
    margin: float = 0.02  # non-inferiority margin on the mean per-row loss (regression: relative to the MSE)
    tau: float = 0.05  # mixing scale of the mSPRT (the size of differences it is tuned to find; as `margin`)
    max_error_rate_increase: float = 0.01
    max_p95_ratio: float = 1.5
    p95_slack_ms: float = 5.0
    max_score_psi: float = 0.25

    def tightened(self, overrides: Any) -> CanaryPolicy:
        """This (the spec's) policy with a run's overrides, each only in its `crispflow.policies.CANARY` direction;
        ParamsError names the field, the spec's value and the rule otherwise."""
        return tighten(self, overrides, CANARY)

    def digest(self) -> str:
        """sha256 of the policy's sorted JSON (`asdict`): what the ledger records next to the policy."""
        return digest(self)

    def resolved(self, task: str = "binary", reference_loss: float | None = None) -> CanaryPolicy:
        """The policy with `margin` and `tau` in loss units: unchanged for log-loss tasks; for regression times
        `reference_loss` (the champion's mean squared error; unchanged without one)."""
        if task != "regression" or not reference_loss or not math.isfinite(reference_loss):
            return self
        return replace(self, margin=self.margin * reference_loss, tau=self.tau * reference_loss)


def canary_policy(spec: PipelineSpec, overrides: Any = None) -> CanaryPolicy:
    """The pipeline spec's `canary:` policy, tightened by a run's `policy` overrides (ParamsError otherwise)."""
    return CanaryPolicy(**spec.canary.model_dump()).tightened(overrides)


LOSS_NAMES = {"binary": "log_loss", "multiclass": "log_loss", "regression": "squared_error"}


def log_loss_per_row(score: np.ndarray, label: np.ndarray) -> np.ndarray:
    import numpy as np

    p = np.clip(score.astype(float), _EPS, 1 - _EPS)
    y = label.astype(float)
    return -(y * np.log(p) + (1 - y) * np.log(1 - p))


def loss_per_row(task: str, output: np.ndarray, label: np.ndarray) -> np.ndarray:
    """Each request's loss in the task (see the module docstring); binary keeps the canary's own clipping."""
    if task == "binary":
        return log_loss_per_row(output, label)
    from crispflow.model.tasks import per_row_loss

    return per_row_loss(task, label, output)


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


def paired_differences(canary_scores: np.ndarray, champion_scores: np.ndarray, labels: np.ndarray,
                       task: str = "binary") -> np.ndarray:
    """Per request: the canary's loss minus the champion's, on the same features and label (`task`'s loss:
    binary/multiclass log loss, regression squared error; outputs in `crispflow.model.tasks` convention)."""
    return loss_per_row(task, canary_scores, labels) - loss_per_row(task, champion_scores, labels)


def paired_from_log(rows: pd.DataFrame, score: Callable[[str, pd.DataFrame], np.ndarray], *, champion: str,
                    canary: str, task: str = "binary") -> PairedLosses | None:
    """Paired losses for the labelled, served, successful requests of `rows`: `score(version, features)`
    re-scores the logged features (columns `feature.<name>`) with each version (its output in the task's
    convention). None if nothing is labelled."""
    labelled = rows[rows["served"] & (rows["status"] == "ok") & rows["label"].notna()]
    if labelled.empty:
        return None
    feature_columns = [c for c in labelled.columns if c.startswith(FEATURE_PREFIX)]
    features = labelled[feature_columns].rename(columns=lambda c: c.removeprefix(FEATURE_PREFIX))
    features = features.reset_index(drop=True)
    labels = labelled["label"].to_numpy(float)
    canary_out, champion_out = score(canary, features), score(champion, features)
    _check_labels(task, labels, canary_out)
    canary_loss = loss_per_row(task, canary_out, labels)
    champion_loss = loss_per_row(task, champion_out, labels)
    return PairedLosses(canary_loss - champion_loss, float(champion_loss.mean()))


def _check_labels(task: str, labels: np.ndarray, output: np.ndarray) -> None:
    """Multiclass feedback must be class codes of the model's classes (the server validates it; a log written
    around it is refused here, naming the values, rather than indexing out of range)."""
    if task != "multiclass" or not len(labels):
        return
    import numpy as np

    k = output.shape[1]
    bad = (labels != np.round(labels)) | (labels < 0) | (labels >= k)
    if bad.any():
        from crispflow.errors import CrispflowError

        raise CrispflowError(f"feedback label: multiclass labels are class codes 0..{k - 1}, the log holds "
                             f"{sorted(set(labels[bad].tolist()))[:5]}")


class PairedLosses(NamedTuple):
    """Per labelled request loss(canary) - loss(champion), and the champion's mean loss on them (the scale of a
    regression margin)."""

    differences: np.ndarray
    champion_loss: float


def _auc(score: np.ndarray, label: np.ndarray) -> float | None:
    """ROC AUC as the evaluation reports it; None with a single class."""
    from crispflow.model.evaluation import compute_metric

    value = compute_metric("roc_auc", label, score, label)
    return None if math.isnan(value) else value


def _labelled_output(rows: pd.DataFrame, task: str) -> tuple[np.ndarray, np.ndarray]:
    """(output, label) of an arm's successful labelled requests, as logged: binary/regression the `score`,
    multiclass the `probabilities` (requests logged without them are left out)."""
    import numpy as np

    labelled = rows[(rows["status"] == "ok") & rows["label"].notna()]
    if task != "multiclass":
        return labelled["score"].to_numpy(float), labelled["label"].to_numpy(float)
    if "probabilities" not in labelled.columns:
        return np.empty((0, 0)), np.empty(0)
    has = labelled["probabilities"].map(lambda v: v is not None and not (isinstance(v, float) and math.isnan(v)))
    kept = labelled[has.to_numpy(dtype=bool)]
    output = np.array([list(v) for v in kept["probabilities"]], dtype=float) if len(kept) else np.empty((0, 0))
    label = kept["label"].to_numpy(float)
    _check_labels(task, label, output)
    return output, label


def arm_summary(rows: pd.DataFrame, task: str = "binary") -> dict[str, Any]:
    """Requests, errors, latency and score quantiles, and labelled metrics of one arm (per task)."""
    import numpy as np

    ok = rows[rows["status"] == "ok"]
    out: dict[str, Any] = {
        "requests": len(rows),
        "errors": int((rows["status"] != "ok").sum()),
        "error_rate": float((rows["status"] != "ok").mean()) if len(rows) else None,
        "latency_p50_ms": float(np.percentile(rows["latency_ms"], 50)) if len(rows) else None,
        "latency_p95_ms": float(np.percentile(rows["latency_ms"], 95)) if len(rows) else None,
        "mean_score": float(ok["score"].mean()) if len(ok) else None,
    }
    output, label = _labelled_output(rows, task)
    if task == "binary":
        loss = log_loss_per_row(output, label)
        return out | {
            "labels": len(label),
            "label_rate": float(label.mean()) if len(label) else None,
            "log_loss": float(loss.mean()) if len(loss) else None,
            "log_loss_ci95": _mean_ci(loss),
            "roc_auc": _auc(output, label) if len(label) else None,
        }
    loss = loss_per_row(task, output, label) if len(label) else np.empty(0)
    out |= {"labels": len(label), "loss": LOSS_NAMES[task], "mean_loss": float(loss.mean()) if len(loss) else None,
            "mean_loss_ci95": _mean_ci(loss)}
    if task == "regression":
        return out | {"rmse": math.sqrt(float(loss.mean())) if len(loss) else None,
                      "mae": float(np.abs(output - label).mean()) if len(loss) else None,
                      "mean_label": float(label.mean()) if len(label) else None}
    correct = np.argmax(output, axis=1) == label.astype(int) if len(label) else np.empty(0)
    return out | {"log_loss": out["mean_loss"], "accuracy": float(correct.mean()) if len(label) else None}


def _mean_ci(values: np.ndarray) -> list[float] | None:
    if len(values) < 2:
        return None
    half = 1.96 * float(values.std(ddof=1)) / math.sqrt(len(values))
    return [float(values.mean()) - half, float(values.mean()) + half]


def _arm(frame: pd.DataFrame, alias: str, version: str) -> pd.DataFrame:
    return frame[(frame["alias"] == alias) & (frame["version"].astype(str) == str(version)) & frame["served"]]


def analyse(window: pd.DataFrame, since_deploy: pd.DataFrame, *, champion: str, canary: str,
            policy: CanaryPolicy | None = None, paired: np.ndarray | PairedLosses | None = None,
            task: str = "binary") -> dict[str, Any]:
    """The canary report: both arms, the guardrails, the labelled test and the decision with its reasons.

    `window` holds the analysis interval's rows, `since_deploy` every row since the canary went live; both are
    prediction-log frames (columns alias, version, served, status, score, latency_ms, label; multiclass also
    probabilities). `paired`: per labelled request, loss(canary) - loss(champion), both models scoring the same
    logged features (`paired_differences`, or `paired_from_log`'s PairedLosses). `task` chooses the loss (see the
    module docstring).
    """
    import numpy as np

    champ_w, can_w = _arm(window, "champion", champion), _arm(window, "canary", canary)
    champ_all, can_all = _arm(since_deploy, "champion", champion), _arm(since_deploy, "canary", canary)
    reference_loss = paired.champion_loss if isinstance(paired, PairedLosses) else None
    paired = paired.differences if isinstance(paired, PairedLosses) else paired
    if reference_loss is None and task == "regression":
        _, champion_losses = _losses(champ_all, task)
        reference_loss = float(champion_losses.mean()) if len(champion_losses) else None
    configured = policy or CanaryPolicy()
    policy = configured.resolved(task, reference_loss)
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

    if paired is not None and len(paired) >= 2:
        test, n_labels, design = msprt_interval(paired, None, policy.alpha, policy.tau), len(paired), "paired"
    else:
        loss_c, loss_b = _losses(can_all, task)[1], _losses(champ_all, task)[1]
        test, design = msprt_interval(loss_c, loss_b, policy.alpha, policy.tau), "unpaired"
        n_labels = min(len(loss_c), len(loss_b))
    loss_name = LOSS_NAMES[task]
    labelled = {"labels": n_labels, "design": design, "metric": f"{loss_name} (canary - champion)",
                "test": "mSPRT (always-valid)", "margin": policy.margin, "interval": test}
    if task != "binary":
        labelled |= {"task": task, "reference_loss": reference_loss}
    if task == "regression":
        labelled["margin_relative"] = configured.margin

    if test is not None and test["lower"] > 0 and n_labels >= policy.min_labels // 3:
        failed.append(f"canary {loss_name.replace('_', ' ')} higher than champion by {test['diff']:.4f} "
                      f"(always-valid interval [{test['lower']:.4f}, {test['upper']:.4f}], {design})")
    if failed:
        decision = ROLLBACK
        reasons = failed + reasons
    elif (test is not None and n_labels >= policy.min_labels and test["upper"] < policy.margin
          and enough and not guardrails["score_psi"]["held"]):
        decision = PROMOTE
        reasons.append(f"canary non-inferior: loss difference {test['diff']:+.4f}, upper bound "
                       f"{test['upper']:.4f} < margin {policy.margin:.4g} on {n_labels} labelled requests ({design})")
    else:
        decision = CONTINUE
        if test is None or n_labels < policy.min_labels:
            reasons.append(f"{n_labels} labelled requests ({design}) < {policy.min_labels}")
        elif test["upper"] >= policy.margin:
            reasons.append(f"not yet shown non-inferior: upper bound {test['upper']:.4f} >= margin {policy.margin:.4g}")
        if enough and guardrails["score_psi"]["held"]:
            reasons.append(f"score distributions differ (PSI {guardrails['score_psi']['value']:.3f})")
    return json_safe({
        "decision": decision, "reasons": reasons, "champion_version": str(champion), "canary_version": str(canary),
        "policy": asdict(configured), "guardrails": guardrails, "labelled": labelled,
        "window": {"champion": arm_summary(champ_w, task), "canary": arm_summary(can_w, task)},
        "since_deploy": {"champion": arm_summary(champ_all, task), "canary": arm_summary(can_all, task)},
    } | ({"task": task} if task != "binary" else {}))


def _losses(arm: pd.DataFrame, task: str) -> tuple[int, np.ndarray]:
    """(labelled requests, their per-row losses) of an arm's logged outputs."""
    output, label = _labelled_output(arm, task)
    return len(label), loss_per_row(task, output, label) if len(label) else output[:0].ravel()


def _z(alpha: float) -> float:
    from scipy.stats import norm

    return float(norm.ppf(1 - alpha))
