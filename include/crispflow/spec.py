"""Pipeline specs: one YAML per model in include/pipelines/, validated with errors that name the field.

Every field carries a `description`: the README's spec reference is generated from these models
(crispflow.spec_reference) and a test keeps it in step.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from crispflow.errors import SpecError
from crispflow.names import NAME
from crispflow.settings import Settings

ColumnType = Literal["int", "float", "string", "category", "bool", "datetime"]
SENSITIVE_TYPES = ("category", "string", "bool", "int")  # a sensitive column's values are groups
PiiPolicy = Literal["hmac", "drop", "keep"]
NUMERIC_TYPES = ("int", "float")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FileSource(_Model):
    """A CSV/Parquet/JSON-lines file: a local path (relative to the project root), file:// or s3:// URL."""

    name: str = Field(pattern=NAME, description="Source name, unique in the spec (used in fingerprints and "
                      "reconciliation).")
    kind: Literal["file"] = Field(description="`file`.")
    url: str = Field(description="A path relative to the project root, `file:///abs/path` or `s3://bucket/key`.")
    format: Literal["parquet", "csv", "jsonl"] = Field(default="parquet", description="File format.")
    conn_id: str | None = Field(default=None, description="Airflow connection for the object store (an `aws` "
                                "connection for `s3://`).")


class SqlSource(_Model):
    """A SQL query run through an Airflow connection; `:start` and `:end` bind the run's data interval."""

    name: str = Field(pattern=NAME, description="Source name, unique in the spec.")
    kind: Literal["sql"] = Field(description="`sql`.")
    conn_id: str = Field(description="Airflow connection of the database (its DB-API hook runs the query).")
    query: str = Field(description="The query; `:start` and `:end` are bound to the run's data interval.")


class HttpSource(_Model):
    """An HTTP JSON endpoint through an Airflow http connection; the interval goes in as query parameters."""

    name: str = Field(pattern=NAME, description="Source name, unique in the spec.")
    kind: Literal["http"] = Field(description="`http`.")
    conn_id: str = Field(description="Airflow `http` connection (base URL, auth).")
    endpoint: str = Field(default="/", description="Path requested on the connection's host.")
    records_path: str | None = Field(default=None, description="Dotted key of the list of records in the "
                                     "response, e.g. `data.items`; omitted: the response is the list.")
    next_path: str | None = Field(default=None, description="Dotted key of the next page's URL, for paginated "
                                  "APIs (only same-origin or relative links and redirects are followed).")
    start_param: str = Field(default="start", description="Query parameter carrying the interval's start.")
    end_param: str = Field(default="end", description="Query parameter carrying the interval's end.")
    max_pages: int = Field(default=1000, ge=1, description="Pages read at most; more is an error.")


Source = Annotated[FileSource | SqlSource | HttpSource, Field(discriminator="kind")]


class Column(_Model):
    """A declared column: the gate checks its type, nullability, allowed values and range."""

    name: str = Field(min_length=1, description="Column name, as in the source.")
    type: ColumnType = Field(description="Logical type; a column mostly of another type fails the batch.")
    nullable: bool = Field(default=False, description="Whether missing values are allowed (else the row is "
                           "quarantined).")
    allowed: list[str | int | float | bool] | None = Field(default=None, description="The allowed values; "
                                                           "others quarantine the row.")
    min: float | None = Field(default=None, description="Smallest allowed value (numeric types).")
    max: float | None = Field(default=None, description="Largest allowed value (numeric types).")
    pii: bool | PiiPolicy = Field(default=False, description="Personal data, and how it is stored: `hmac` (a keyed "
                                  "pseudonym in every store), `drop` (never stored past the raw landing), `keep` "
                                  "(stored as it is; needs `pii_reason`). `true` (the form before policies) reads "
                                  "as `hmac`, or as `keep` on a numeric feature. Always masked in the gate's "
                                  "reports.")
    pii_reason: str = Field(default="", description="Why a `pii: keep` column is stored as it is (recorded in "
                            "every manifest).")
    sensitive: bool = Field(default=False, description="A protected attribute: kept beside the holdout for "
                            "fairness checks (metrics per group in the gate and the card), never a feature unless "
                            "`feature: true`. Needs a categorical type (category, string, bool or int).")
    feature: bool | None = Field(default=None, description="Whether the model uses the column; omitted: a feature "
                                 "unless it is sensitive (the key, target and time column never are).")
    description: str = Field(default="", description="Documentation, carried into the model card.")

    @model_validator(mode="after")
    def _range(self) -> Column:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is greater than max ({self.max})")
        if (self.min is not None or self.max is not None) and self.type not in ("int", "float"):
            raise ValueError(f"min/max need a numeric type, not {self.type!r}")
        if self.sensitive and self.type not in SENSITIVE_TYPES:
            raise ValueError(f"sensitive: column {self.name!r} has type {self.type!r}; a sensitive column defines "
                             f"groups, so it needs one of {list(SENSITIVE_TYPES)} (bin a {self.type} column into "
                             f"a category first)")
        if self.pii == "keep" and not self.pii_reason.strip():
            raise ValueError(f"pii_reason: column {self.name!r} is `pii: keep`; state why it is stored as it is")
        if self.pii_reason and self.pii != "keep":
            raise ValueError(f"pii_reason: only a `pii: keep` column states a reason (column {self.name!r} has "
                             f"pii: {self.pii!r})")
        return self

    @property
    def pii_policy(self) -> PiiPolicy | None:
        """How the column is stored: `hmac`, `drop`, `keep`, or None (not personal data). `pii: true` is `hmac`,
        except on a numeric feature, where a pseudonym would destroy the order the model uses: `keep`."""
        if self.pii is True:
            return "keep" if self.type in NUMERIC_TYPES and self.is_feature else "hmac"
        return self.pii or None

    @property
    def is_feature(self) -> bool:
        """`feature` if set, else neither sensitive nor dropped (the spec decides about key, target and time
        column)."""
        if self.feature is None:
            return not self.sensitive and self.pii != "drop"
        return self.feature


TaskKind = Literal["binary", "multiclass", "regression"]


class Target(_Model):
    """What the model predicts. `task` defaults to binary when `positive` is given (the original form)."""

    column: str = Field(description="The column the model predicts.")
    task: TaskKind | None = Field(default=None, description="What kind of model; omitted: binary (then "
                                  "`positive` is required).")
    positive: str | int | bool | None = Field(default=None, description="binary: the value that is the "
                                              "positive class (the one whose probability is the score).")
    classes: list[str | int | bool] | None = Field(default=None, description="multiclass: the classes, in "
                                                   "the order the model reports probabilities; omitted: the "
                                                   "target column's `allowed` values.")

    @model_validator(mode="after")
    def _task(self) -> Target:
        kind = self.kind
        if kind == "binary" and self.positive is None:
            raise ValueError("positive: a binary target needs `positive` (the positive class)")
        if kind != "binary" and self.positive is not None:
            raise ValueError(f"positive: only a binary target has a positive class, not a {kind} one")
        if kind != "multiclass" and self.classes is not None:
            raise ValueError(f"classes: only a multiclass target lists classes, not a {kind} one")
        if self.classes is not None:
            if len(self.classes) < 3:
                raise ValueError(f"classes: a multiclass target needs at least 3 classes (2 is task: binary), "
                                 f"got {self.classes}")
            if len({str(c) for c in self.classes}) != len(self.classes):
                raise ValueError(f"classes: duplicate classes in {self.classes}")
        return self

    @property
    def kind(self) -> TaskKind:
        """The task, with the original form (`positive` only) read as binary."""
        return self.task or "binary"


class RowRule(_Model):
    """A row-level rule: rows that break it are quarantined with the rule's name as reason."""

    name: str = Field(pattern=NAME, description="Rule name: the quarantine reason is `<column>:<name>`.")
    kind: Literal["between", "in_set", "regex", "not_null", "greater_or_equal_column"] = Field(
        description="`between` (min/max/strict), `in_set` (values), `regex` (pattern), `not_null`, "
        "`greater_or_equal_column` (other_column).")
    column: str = Field(description="The declared column the rule checks.")
    min: float | None = Field(default=None, description="between: lower bound.")
    max: float | None = Field(default=None, description="between: upper bound.")
    strict: bool = Field(default=False, description="between: exclude the bounds themselves.")
    values: list[str | int | float | bool] | None = Field(default=None, description="in_set: the allowed "
                                                          "values.")
    pattern: str | None = Field(default=None, description="regex: a Python regular expression the whole value "
                                "must match.")
    other_column: str | None = Field(default=None, description="greater_or_equal_column: the declared column "
                                     "`column` must be >= to.")

    @model_validator(mode="after")
    def _args(self) -> RowRule:
        need = {"between": ("min or max", self.min is not None or self.max is not None),
                "in_set": ("values", self.values is not None),
                "regex": ("pattern", self.pattern is not None),
                "greater_or_equal_column": ("other_column", self.other_column is not None),
                "not_null": ("", True)}[self.kind]
        if not need[1]:
            raise ValueError(f"rule kind {self.kind!r} needs {need[0]}")
        if self.pattern is not None:
            try:
                re.compile(self.pattern)
            except re.error as exc:
                raise ValueError(f"pattern {self.pattern!r} is not a valid regular expression: {exc}") from None
        return self


class BatchRule(_Model):
    """A batch-level rule: if it fails, the whole batch fails (nothing is published)."""

    name: str = Field(pattern=NAME, description="Rule name, reported when the batch fails.")
    kind: Literal["mean_between", "null_fraction_at_most"] = Field(description="`mean_between` (min/max) or "
                                                                   "`null_fraction_at_most` (max).")
    column: str = Field(description="The declared column the rule checks.")
    min: float | None = Field(default=None, description="mean_between: lower bound of the column's mean.")
    max: float | None = Field(default=None, description="Upper bound (of the mean, or of the null fraction).")


class GxExpectation(_Model):
    """Any Great Expectations expectation by its snake_case type, e.g. `{name: state_codes, type:
    expect_column_value_lengths_to_be_between, kwargs: {column: addr_state, min_value: 2, max_value: 2}, level: row}`.
    """

    name: str = Field(pattern=NAME, description="Name reported for its failures.")
    type: str = Field(pattern=r"^expect_[a-z0-9_]+$", description="The GX expectation type in snake_case.")
    kwargs: dict[str, Any] = Field(default={}, description="The expectation's arguments, e.g. `column`.")
    level: Literal["row", "batch"] = Field(default="batch", description="`row`: failing rows are quarantined; "
                                           "`batch`: a failure fails the batch.")


class Quality(_Model):
    """Checks beyond the column declarations."""

    row_rules: list[RowRule] = Field(default=[], description="Rows breaking them are quarantined.")
    batch_rules: list[BatchRule] = Field(default=[], description="A failure fails the whole batch.")
    expectations: list[GxExpectation] = Field(default=[], description="Custom Great Expectations "
                                              "expectations.")


class Gate(_Model):
    """When a validated batch is published."""

    max_quarantine_fraction: float = Field(default=0.05, ge=0, le=1, description="More quarantined rows than "
                                           "this fraction fails the whole batch.")
    min_rows: int = Field(default=1, ge=0, description="Fewer rows fail the batch.")
    max_rows: int | None = Field(default=None, ge=1, description="More rows fail the batch.")
    freshness_sla_days: float | None = Field(default=None, gt=0, description="The newest `time_column` value "
                                             "must be within this many days of the interval's end.")
    allow_extra_columns: bool = Field(default=False, description="true: undeclared columns are dropped (and "
                                      "recorded); false: they fail the batch.")


class Split(_Model):
    """How the frozen holdout is cut (once per pipeline)."""

    strategy: Literal["time", "stratified", "random"] = Field(
        default="stratified", description="`time` (the latest whole periods; needs `time_column`), `stratified` "
        "(by class; classification only) or `random`. Default: stratified; random for regression.")
    holdout_fraction: float = Field(default=0.2, gt=0, lt=1, description="Share of the rows held out.")
    seed: int = Field(default=42, description="Seed of the split, CV folds, search plan and estimators.")


Metric = Literal[
    # binary
    "roc_auc", "average_precision", "f1", "precision", "recall", "brier", "log_loss",
    # multiclass
    "macro_f1", "micro_f1", "accuracy", "ovr_roc_auc",
    # regression
    "rmse", "mae", "r2",
]
# Which metrics each task has (log_loss serves binary and multiclass). The first is the default primary metric.
TASK_METRICS: dict[str, tuple[str, ...]] = {
    "binary": ("roc_auc", "average_precision", "f1", "precision", "recall", "brier", "log_loss"),
    "multiclass": ("log_loss", "macro_f1", "micro_f1", "accuracy", "ovr_roc_auc"),
    "regression": ("rmse", "mae", "r2"),
}
LOWER_IS_BETTER = frozenset({"brier", "log_loss", "rmse", "mae"})
# Default (training.selection_metric, blessing.primary_metric) per task.
TASK_DEFAULT_METRICS: dict[str, tuple[str, str]] = {
    "binary": ("average_precision", "roc_auc"),
    "multiclass": ("log_loss", "log_loss"),
    "regression": ("rmse", "rmse"),
}
# Training fields that only classification uses, and the tasks each applies to.
CLASSIFICATION_ONLY: dict[str, tuple[str, ...]] = {
    "class_weight": ("binary", "multiclass"),
    "calibration": ("binary", "multiclass"),
    "threshold": ("binary",),
}


class Candidate(_Model):
    """One model family and the hyperparameter grid the search samples from."""

    name: str = Field(pattern=NAME, description="Candidate name, unique in `training.candidates`.")
    estimator: str = Field(min_length=1, description="A built-in name (`logistic_regression`, "
                           "`hist_gradient_boosting`, `ridge`, `random_forest`) or an import path "
                           "`package.module.Class` under `sklearn.` or a prefix in `training.allowed_estimators`; "
                           "checked against the task at load.")
    params: dict[str, Any] = Field(default={}, description="Fixed constructor parameters of every configuration.")
    grid: dict[str, list[Any]] = Field(default={}, description="Parameter name -> values; the search samples "
                                       "configurations from the product.")

    @model_validator(mode="after")
    def _params(self) -> Candidate:
        for name, values in self.grid.items():
            if not values:
                raise ValueError(f"grid.{name}: no values")
        both = sorted(set(self.params) & set(self.grid))
        if both:
            raise ValueError(f"params: {both} are also in the grid (a parameter is either fixed or searched)")
        return self


class Threshold(_Model):
    """How the decision threshold is chosen on the validation folds (binary only)."""

    objective: Literal["f1", "cost"] = Field(default="f1", description="Maximise F1, or minimise the expected "
                                             "cost below.")
    cost_false_positive: float = Field(default=1.0, ge=0, description="cost objective: cost of a false "
                                       "positive.")
    cost_false_negative: float = Field(default=1.0, ge=0, description="cost objective: cost of a false "
                                       "negative.")


class Training(_Model):
    """Model selection: candidates, cross-validation, search budget; calibration and threshold (classification)."""

    candidates: list[Candidate] = Field(min_length=1, description="The model families searched.")
    allowed_estimators: list[str] = Field(default=[], description="Module prefixes whose classes "
                                          "`candidates[].estimator` may name besides `sklearn.` (e.g. "
                                          "`lightgbm.`).")
    min_rows: int = Field(default=1000, ge=10, description="Smaller dataset versions (e.g. one month) are "
                          "published but do not trigger training.")
    cv_folds: int = Field(default=5, ge=2, le=20, description="Cross-validation folds.")
    search_budget: int = Field(default=8, ge=1, le=200, description="Configurations tried, across all "
                               "candidates.")
    selection_metric: Metric = Field(default="average_precision", description="Metric the search maximises (or "
                                     "minimises). Default: binary average_precision, multiclass log_loss, "
                                     "regression rmse.")
    class_weight: Literal["balanced"] | None = Field(default="balanced", description="Classification: class "
                                                     "weighting, for estimators that take one. Regression: "
                                                     "none (setting it is an error).")
    calibration: Literal["sigmoid", "isotonic"] | None = Field(default="sigmoid", description="Classification: "
                                                               "probability calibration. Regression: none "
                                                               "(setting it is an error).")
    threshold: Threshold = Field(default=Threshold(), description="Binary only: how the decision threshold is "
                                 "chosen (setting it for another task is an error).")
    interval_coverage: float = Field(default=0.9, gt=0, lt=1, description="Regression: coverage of the "
                                     "split-conformal prediction interval served with each prediction.")
    slices: list[str] = Field(default=[], description="Categorical columns whose values are reported (and "
                              "gated) one by one.")

    @field_validator("allowed_estimators")
    @classmethod
    def _prefixes(cls, value: list[str]) -> list[str]:
        from crispflow.estimators import valid_prefix

        bad = [p for p in value if not valid_prefix(p)]
        if bad:
            raise ValueError(f"{bad} are not module prefixes (like `lightgbm.` or `my_pkg.models`)")
        return value

    @model_validator(mode="after")
    def _unique(self) -> Training:
        names = [c.name for c in self.candidates]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"candidates: duplicate names {dup}")
        return self


FairnessMetric = Literal["equalized_odds_difference", "demographic_parity_difference", "primary_metric_difference"]
BINARY_FAIRNESS_METRICS = ("equalized_odds_difference", "demographic_parity_difference")


class Fairness(_Model):
    """Fairness non-regression (crispflow.model.fairness): for each sensitive column and metric, a paired bootstrap
    of the challenger's disparity minus the champion's, H0 "it widens by at most `max_increase`", Holm-corrected
    across all (column, metric) tests at `blessing.alpha`. Groups with fewer than `blessing.min_slice_rows` holdout
    rows are suppressed (listed, not compared). A first model (no champion) gets the report only."""

    mode: Literal["warn", "block"] = Field(default="warn", description="`warn`: a widened disparity is recorded "
                                           "as a warning of a blessed verdict; `block`: it fails the gate.")
    metrics: list[FairnessMetric] = Field(
        default=list(BINARY_FAIRNESS_METRICS), min_length=1,
        description="Disparities compared. Binary: `equalized_odds_difference` (largest between-group gap of TPR or "
        "FPR), `demographic_parity_difference` (gap of selection rates), `primary_metric_difference` (gap of the "
        "primary metric); multiclass and regression: always `primary_metric_difference`.")
    max_increase: float = Field(default=0.05, ge=0, description="How much the challenger may widen a disparity over "
                                "the champion's, in the disparity's units (a rate gap; the primary metric's units "
                                "for `primary_metric_difference`).")

    @field_validator("metrics")
    @classmethod
    def _distinct(cls, value: list[str]) -> list[str]:
        dup = sorted({m for m in value if value.count(m) > 1})
        if dup:
            raise ValueError(f"duplicate metrics {dup}")
        return value


class Blessing(_Model):
    """The gate a challenger must pass against the champion (or, with no champion, absolute thresholds)."""

    primary_metric: Metric = Field(default="roc_auc", description="Metric of the paired challenger-vs-champion "
                                   "test. Default: binary roc_auc, multiclass log_loss, regression rmse.")
    non_inferiority_margin: float = Field(default=0.01, ge=0, description="How much worse than the champion "
                                          "the challenger may be, in the primary metric's units.")
    alpha: float = Field(default=0.05, gt=0, lt=0.5, description="Significance level of the tests.")
    bootstrap_samples: int = Field(default=1000, ge=100, le=100_000, description="Bootstrap resamples for CIs "
                                   "and paired tests.")
    slice_correction: Literal["holm", "benjamini_hochberg"] = Field(default="holm", description="Multiple-"
                                                                    "testing correction of per-slice tests.")
    min_slice_rows: int = Field(default=50, ge=1, description="Slices with fewer holdout rows are skipped "
                                "(and listed).")
    max_latency_ratio: float = Field(default=1.5, gt=0, description="Challenger p95 latency / champion's, at "
                                     "most.")
    max_size_ratio: float = Field(default=3.0, gt=0, description="Challenger artifact size / champion's, at "
                                  "most.")
    min_metrics: dict[Metric, float] = Field(default={}, description="Absolute floors on the holdout, always "
                                             "applied; empty: a first model must beat no skill significantly.")
    fairness: Fairness = Field(default=Fairness(), description="Fairness non-regression against the champion "
                               "across the groups of the `sensitive` columns (needs a sensitive column).")


# --- release and monitoring policies: reviewed with the spec; a run may only tighten them (crispflow.policies) ---


class Canary(_Model):
    """When a live canary is promoted, rolled back or left running (crispflow.release.canary.CanaryPolicy). A
    run's `policy` may only raise min_requests/min_labels and lower margin, max_error_rate_increase,
    max_p95_ratio, p95_slack_ms and max_score_psi; alpha and tau are the spec's alone."""

    min_requests: int = Field(default=50, ge=1, le=1_000_000, description="Requests per arm in the analysis window "
                              "before the guardrails judge (and before a promotion).")
    min_labels: int = Field(default=200, ge=1, le=1_000_000, description="Labelled requests since the canary was "
                            "deployed before labelled evidence can promote it.")
    alpha: float = Field(default=0.05, gt=0, lt=0.5, description="Error level of the always-valid loss test and "
                         "of the error-rate guardrail (not overridable by a run: it cuts both ways).")
    margin: float = Field(default=0.02, ge=0, description="Non-inferiority margin on the mean per-request loss: "
                          "nats of log loss (binary, multiclass), a fraction of the champion's MSE (regression).")
    tau: float = Field(default=0.05, gt=0, description="Mixing scale of the mSPRT, in the units of `margin` "
                       "(tunes power, not validity; not overridable by a run).")
    max_error_rate_increase: float = Field(default=0.01, ge=0, le=1, description="Largest tolerated rise of the "
                                           "canary's error rate over the champion's (absolute).")
    max_p95_ratio: float = Field(default=1.5, gt=0, description="Canary p95 latency / champion's, at most "
                                 "(plus `p95_slack_ms`).")
    p95_slack_ms: float = Field(default=5.0, ge=0, description="Milliseconds added to the p95 latency budget.")
    max_score_psi: float = Field(default=0.25, ge=0, description="Largest PSI between the arms' score "
                                 "distributions before a promotion waits for labels.")


class DriftWatch(_Model):
    """When persistent drift fires a retrain (crispflow.monitoring.episodes.DriftPolicy). A run's `policy` may
    make detection more sensitive and retraining more sparing, never the reverse; lookback is the spec's alone."""

    k: int = Field(default=2, ge=1, description="Hot windows among the last `n` that start an episode (a run "
                   "may lower it).")
    n: int = Field(default=3, ge=1, description="Usable windows looked at (a run may raise it).")
    enter_share: float = Field(default=0.1, ge=0, le=1, description="Drift share at which a window is hot (a run "
                               "may lower it).")
    exit_share: float = Field(default=0.05, ge=0, le=1, description="A window is cool below this share; at most "
                              "`enter_share` (a run may lower it).")
    exit_windows: int = Field(default=2, ge=1, description="Consecutive cool windows that end an episode (a run "
                              "may raise it).")
    cooldown_hours: float = Field(default=6.0, ge=0, lt=8784, description="Hours after a retrain before the next "
                                  "(a run may raise it).")
    budget: int = Field(default=3, ge=0, description="Retrains at most per `budget_period_hours` (a run may lower "
                        "it).")
    budget_period_hours: float = Field(default=168.0, ge=0, lt=8784, description="The budget's period in hours "
                                       "(a run may raise it).")
    min_new_labels: int = Field(default=0, ge=0, description="Labelled rows needed since the last retrain (a run "
                                "may raise it).")
    lookback: int = Field(default=168, ge=1, description="Newest windows read per check (not overridable by a "
                          "run).")

    @model_validator(mode="after")
    def _rules(self) -> DriftWatch:
        if self.k > self.n:
            raise ValueError(f"k: {self.k} must be <= n ({self.n})")
        if self.exit_share > self.enter_share:
            raise ValueError(f"exit_share: {self.exit_share} must be <= enter_share ({self.enter_share}) "
                             "(hysteresis)")
        if self.lookback < self.n:
            raise ValueError(f"lookback: {self.lookback} must be >= n ({self.n})")
        return self


class DriftMonitor(_Model):
    """The drift report's thresholds (crispflow.monitoring.drift.DriftSettings). A run's `settings` may only make
    detection more sensitive (raise alpha, lower min_psi and min_drift_share); min_rows is the spec's alone."""

    alpha: float = Field(default=0.01, gt=0, lt=1, description="False discovery rate of the per-feature tests.")
    min_psi: float = Field(default=0.01, ge=0, description="PSI below which a significant feature does not count "
                           "as drifted.")
    min_drift_share: float = Field(default=0.1, gt=0, le=1, description="Share of (weighted) drifted features at "
                                   "which a window is `drift`.")
    min_rows: int = Field(default=30, ge=1, description="Fewer rows in a window: `insufficient_data` (not "
                          "overridable by a run).")


class AlertChannel(_Model):
    """Where a drift alert goes (crispflow.monitoring.alerts): an Airflow connection, never chosen by a run."""

    kind: Literal["webhook", "slack", "email"] = Field(description="`webhook` (JSON to an http connection), "
                                                       "`slack` (an http connection to a Slack incoming webhook), "
                                                       "`email` (smtp).")
    conn_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]{1,250}$", description="Airflow "
                                "connection; required except for email (default `smtp_default`).")
    endpoint: str = Field(default="", description="Path requested on the http connection's host.")
    to: list[str] | None = Field(default=None, description="email: the recipients (required for email).")
    optional: bool = Field(default=False, description="Skip the channel (logged) when its connection is not "
                           "defined, instead of failing.")
    name: str | None = Field(default=None, description="Name in the alert state; default `<kind>:<conn_id>`.")

    @model_validator(mode="after")
    def _needs(self) -> AlertChannel:
        if self.kind != "email" and not self.conn_id:
            raise ValueError(f"conn_id: required for a {self.kind} channel")
        if self.kind == "email" and not self.to:
            raise ValueError("to: an email channel needs a non-empty list of recipients")
        if self.kind != "email" and self.to is not None:
            raise ValueError(f"to: only an email channel has recipients, not a {self.kind} one")
        return self


DEFAULT_ALERT_CHANNELS = ({"kind": "webhook", "conn_id": "crispflow_alerts_webhook", "optional": True},
                          {"kind": "slack", "conn_id": "crispflow_alerts_slack", "optional": True})


class Alerts(_Model):
    """Who hears about a drift episode: the spec's channels only (a run cannot redirect alerts)."""

    channels: list[AlertChannel] = Field(default=list(DEFAULT_ALERT_CHANNELS), validate_default=True,
                                         description="Channels of the drift digest; default: the optional webhook "
                                         "`crispflow_alerts_webhook` and Slack `crispflow_alerts_slack` connections.")

    def as_dicts(self) -> list[dict[str, Any]]:
        """The channels as `crispflow.monitoring.alerts.check_channels` takes them."""
        return [c.model_dump(exclude_none=True) for c in self.channels]



class Governance(_Model):
    """What happens to models after a subject's data is erased (`crispflow erase`)."""

    retrain: Literal["next_cycle", "immediate"] = Field(
        default="next_cycle", description="`immediate`: an erasure that flags model versions triggers "
        "`retrain_after_erasure` (a training window of the successor versions, through the gate and the canary); "
        "`next_cycle`: the flagged versions are replaced by the next scheduled or drift retrain.")
    erasure_deadline_days: int = Field(default=30, ge=1, le=90, description="Days a flagged model version has "
                                       "before it must be retrained or retired (tag `crispflow.erasure_deadline`).")


class PipelineSpec(_Model):
    """One pipeline: where the data comes from, what it must look like, and what model it feeds."""

    name: str = Field(pattern=NAME, description="Pipeline name; equals the file name.")
    description: str = Field(default="", description="What the model does (model card).")
    intended_use: str = Field(default="", description="Who may use it for what (model card).")
    owner: str = Field(default="", description="Owning team or person (model card).")
    sources: list[Source] = Field(min_length=1, description="Unioned in the order given; that order is the "
                                  "priority when keys collide.")
    key: str = Field(description="Entity key column (not nullable); duplicates after the first are quarantined "
                     "as `<key>:duplicate_key`. Stored as a keyed pseudonym past the raw landing (`pii: hmac`) "
                     "unless its column says `pii: keep`.")
    time_column: str | None = Field(default=None, description="Datetime column; a run keeps the rows of its "
                                    "interval `[start, end)`.")
    target: Target = Field(description="What the model predicts.")
    columns: list[Column] = Field(min_length=1, description="Every column the gate accepts.")
    quality: Quality = Field(default=Quality(), description="Row and batch rules, custom expectations.")
    gate: Gate = Field(default=Gate(), description="When a batch is published.")
    split: Split = Field(default=Split(), description="The frozen holdout.")
    training: Training | None = Field(default=None, description="Model selection; omitted: the pipeline only "
                                      "ingests and publishes data.")
    blessing: Blessing = Field(default=Blessing(), description="When a challenger replaces the champion.")
    canary: Canary = Field(default=Canary(), description="When a live canary is promoted or rolled back; a run "
                           "may only tighten it.")
    drift_watch: DriftWatch = Field(default=DriftWatch(), description="When persistent drift fires a retrain; a "
                                    "run may only tighten it.")
    drift_monitor: DriftMonitor = Field(default=DriftMonitor(), description="The drift report's thresholds; a run "
                                        "may only make them more sensitive.")
    alerts: Alerts = Field(default=Alerts(), description="Where drift alerts go (a run cannot change it).")
    governance: Governance = Field(default=Governance(), description="Retraining after an erasure.")

    @model_validator(mode="before")
    @classmethod
    def _task_defaults(cls, data: Any) -> Any:
        """Defaults that depend on the task: metrics, the split strategy, classification-only training fields."""
        if not isinstance(data, dict) or not isinstance(data.get("target"), dict):
            return data
        kind = data["target"].get("task") or "binary"
        if kind not in TASK_METRICS:
            return data  # the Target model reports the bad task
        selection, primary = TASK_DEFAULT_METRICS[kind]
        data = dict(data)
        if isinstance(data.get("training"), dict):
            training = data["training"]
            _check_classification_only(kind, training)
            fill = {"selection_metric": selection}
            if kind == "regression":
                fill |= {"class_weight": None, "calibration": None}
            data["training"] = {**fill, **training}
        if isinstance(data.get("blessing"), dict | None):
            data["blessing"] = {"primary_metric": primary, **(data.get("blessing") or {})}
        if kind == "regression" and isinstance(data.get("split"), dict | None):
            data["split"] = {"strategy": "random", **(data.get("split") or {})}
        return data

    @model_validator(mode="after")
    def _references(self) -> PipelineSpec:
        cols = {c.name: c for c in self.columns}
        if len(cols) != len(self.columns):
            dup = sorted({c.name for c in self.columns if [x.name for x in self.columns].count(c.name) > 1})
            raise ValueError(f"columns: duplicate names {dup}")
        if len({s.name for s in self.sources}) != len(self.sources):
            raise ValueError("sources: names must be unique")
        refs = [("key", self.key), ("target.column", self.target.column)]
        refs += [("time_column", self.time_column)] if self.time_column else []
        refs += [(f"quality.row_rules[{r.name}].column", r.column) for r in self.quality.row_rules]
        refs += [(f"quality.row_rules[{r.name}].other_column", r.other_column)
                 for r in self.quality.row_rules if r.other_column]
        refs += [(f"quality.batch_rules[{r.name}].column", r.column) for r in self.quality.batch_rules]
        refs += [("training.slices", c) for c in (self.training.slices if self.training else [])]
        for field, name in refs:
            if name not in cols:
                raise ValueError(f"{field}: {name!r} is not a declared column")
        if self.time_column and cols[self.time_column].type != "datetime":
            raise ValueError(f"time_column: {self.time_column!r} must have type datetime")
        if cols[self.key].nullable:
            raise ValueError(f"key: column {self.key!r} must not be nullable")
        self._check_target(cols[self.target.column])
        self._check_metrics()
        self._check_sensitive()
        if self.split.strategy == "time" and not self.time_column:
            raise ValueError("split.strategy: 'time' needs a time_column")
        self._check_estimators()
        return self

    def _check_target(self, target: Column) -> None:
        kind = self.target.kind
        if kind == "regression" and target.type not in ("int", "float"):
            raise ValueError(f"target.column: a regression target must have type int or float, "
                             f"{target.name!r} has type {target.type!r}")
        if kind == "binary" and target.allowed is not None and self.target.positive not in target.allowed:
            raise ValueError(f"target.positive: {self.target.positive!r} is not in {target.allowed}")
        if kind == "multiclass":
            self._check_classes(target)
        if self.split.strategy == "stratified" and kind == "regression":
            raise ValueError("split.strategy: 'stratified' needs a class label; a regression target splits "
                             "'random' or 'time'")

    def _check_classes(self, target: Column) -> None:
        classes, allowed = self.target.classes, target.allowed
        if classes is None and allowed is None:
            raise ValueError(f"target.classes: a multiclass target needs `classes` (or `allowed` values on "
                             f"column {target.name!r})")
        if classes is None and len(allowed or []) < 3:
            raise ValueError(f"target.classes: a multiclass target needs at least 3 classes, column "
                             f"{target.name!r} allows {allowed}")
        if classes is not None and allowed is not None:
            unknown = [c for c in classes if c not in allowed]
            if unknown:
                raise ValueError(f"target.classes: {unknown} not in column {target.name!r}'s allowed values "
                                 f"{allowed}")
            missing = [a for a in allowed if a not in classes]
            if missing:
                raise ValueError(f"target.classes: column {target.name!r} allows {missing}, which are not "
                                 f"classes (every allowed value must be a class)")

    def _check_metrics(self) -> None:
        kind, allowed = self.target.kind, TASK_METRICS[self.target.kind]
        used = [("blessing.primary_metric", self.blessing.primary_metric)]
        used += [(f"blessing.min_metrics.{m}", m) for m in self.blessing.min_metrics]
        used += [("training.selection_metric", self.training.selection_metric)] if self.training else []
        for field, metric in used:
            if metric not in allowed:
                raise ValueError(f"{field}: {metric!r} is not a {kind} metric (one of {list(allowed)})")

    def _check_sensitive(self) -> None:
        """Sensitive columns and `feature` flags: never on the key, target or time column; training needs a feature;
        explicit fairness metrics fit the task."""
        roles = {self.key: "key", self.target.column: "target column", self.time_column: "time_column"}
        for i, column in enumerate(self.columns):
            role = roles.get(column.name)
            if role and column.sensitive:
                raise ValueError(f"columns[{i}].sensitive: {column.name!r} is the {role}; it cannot be sensitive")
            if role and column.feature:
                raise ValueError(f"columns[{i}].feature: {column.name!r} is the {role}, never a feature")
        self._check_pii(roles)
        if self.training is not None and not self.feature_columns:
            raise ValueError("columns: no feature column left (every column is the key, target, time column, "
                             "sensitive or `feature: false`)")
        fairness = self.blessing.fairness
        if self.task != "binary" and fairness.metrics != list(BINARY_FAIRNESS_METRICS):  # the default is ignored
            binary_only = [m for m in fairness.metrics if m in BINARY_FAIRNESS_METRICS]
            if binary_only:
                raise ValueError(f"blessing.fairness.metrics: {binary_only} apply to binary targets only; a "
                                 f"{self.task} target compares `primary_metric_difference`")

    def _check_pii(self, roles: dict[str | None, str]) -> None:
        """PII policies fit the column's role: the key is pseudonymised or kept, never dropped; the target and time
        column are kept; a pseudonym cannot be a numeric feature; a dropped column cannot be one."""
        for i, column in enumerate(self.columns):
            role, policy = roles.get(column.name), column.pii_policy
            if role == "key" and policy == "drop":
                raise ValueError(f"columns[{i}].pii: {column.name!r} is the key; it identifies rows, so it is "
                                 "`hmac` (the default) or `keep`, never `drop`")
            if role in ("target column", "time_column") and policy in ("hmac", "drop"):
                raise ValueError(f"columns[{i}].pii: {column.name!r} is the {role}; the model needs its values, "
                                 "so it can only be `keep` (with a pii_reason)")
            if column.pii == "hmac" and column.type in NUMERIC_TYPES and column.is_feature:
                raise ValueError(f"columns[{i}].pii: {column.name!r} is a numeric feature; a pseudonym loses its "
                                 "order. Use `keep` with a pii_reason, `drop`, or `feature: false`")
            if policy == "drop" and column.feature:
                raise ValueError(f"columns[{i}].feature: {column.name!r} is `pii: drop`, so it is never stored "
                                 "and cannot be a feature")

    def pii_policy(self, name: str) -> PiiPolicy | None:
        """How column `name` is stored; the key is `hmac` unless its column says otherwise."""
        policy = self.column(name).pii_policy
        return policy or ("hmac" if name == self.key else None)

    @property
    def pseudonymised_columns(self) -> list[str]:
        """Columns stored as keyed pseudonyms (`hmac`), the key first when it is one."""
        names = [c.name for c in self.columns if self.pii_policy(c.name) == "hmac"]
        return sorted(names, key=lambda n: n != self.key)

    @property
    def dropped_columns(self) -> list[str]:
        """Columns never stored past the raw landing (`pii: drop`)."""
        return [c.name for c in self.columns if c.pii_policy == "drop"]

    def _check_estimators(self) -> None:
        """Each candidate's estimator exists, is allowed and fits the task. Built-in names are checked without
        importing anything; import paths are imported (and instantiated) here, at load."""
        if self.training is None:
            return
        from crispflow.estimators import check_name, is_builtin, make_estimator

        allowed = self.training.allowed_estimators
        for candidate in self.training.candidates:
            field = f"training.candidates[{candidate.name}].estimator"
            problem = check_name(self.task, candidate.estimator, allowed=allowed)
            if problem:
                raise ValueError(f"{field}: {problem}")
            if not is_builtin(candidate.estimator):
                try:
                    make_estimator(self.task, candidate.estimator, allowed=allowed, field=field)
                except SpecError as exc:
                    raise ValueError(str(exc)) from None

    @property
    def task(self) -> TaskKind:
        return self.target.kind

    @property
    def class_labels(self) -> list[str | int | bool]:
        """The classes in model order: binary [negative-or-other, positive] is not listed (labels are booleans);
        multiclass: `target.classes` or the column's `allowed` values; regression: []."""
        if self.target.kind != "multiclass":
            return []
        return list(self.target.classes or self.column(self.target.column).allowed or [])

    def column(self, name: str) -> Column:
        return next(c for c in self.columns if c.name == name)

    @property
    def pii_columns(self) -> list[str]:
        """Columns masked in the gate's reports: every personal-data column, and the key."""
        return [c.name for c in self.columns if self.pii_policy(c.name)]

    @property
    def feature_columns(self) -> list[str]:
        """The model's inputs: every column but the key, target and time column, sensitive columns (unless
        `feature: true`) and columns with `feature: false`."""
        skip = {self.key, self.target.column, self.time_column}
        return [c.name for c in self.columns if c.name not in skip and c.is_feature]

    @property
    def sensitive_columns(self) -> list[str]:
        """The protected attributes whose groups the fairness report and check compare."""
        return [c.name for c in self.columns if c.sensitive]

    def spec_hash(self) -> str:
        """A stable content hash of the validated spec (recorded in every manifest and model version)."""
        data = self.model_dump(mode="json")
        _drop_defaults(data, PipelineSpec, POLICY_SECTIONS)
        for column in data["columns"]:
            _drop_defaults(column, Column, NEW_COLUMN_FIELDS)
        _drop_defaults(data["blessing"], Blessing, NEW_BLESSING_FIELDS)
        canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


# Sections and fields added after specs were hashed: at their defaults they are left out of `spec_hash` (specs
# written before them keep their hash).
POLICY_SECTIONS = ("canary", "drift_watch", "drift_monitor", "alerts", "governance")
NEW_COLUMN_FIELDS = ("sensitive", "feature", "pii_reason")
NEW_BLESSING_FIELDS = ("fairness",)


def _drop_defaults(data: dict[str, Any], model: type[BaseModel], names: tuple[str, ...]) -> None:
    """Remove, in place, the dumped fields `names` of `model` that equal their (dumped) defaults."""
    for name in names:
        default = model.model_fields[name].default
        if name in data and data[name] == (default.model_dump(mode="json") if isinstance(default, BaseModel)
                                           else default):
            del data[name]


def _check_classification_only(kind: str, training: dict[str, Any]) -> None:
    """Reject training fields set in the YAML that the task does not use (instead of ignoring them)."""
    for name, tasks in CLASSIFICATION_ONLY.items():
        if kind in tasks or name not in training:
            continue
        if name == "threshold" or training[name] is not None:
            raise ValueError(f"training.{name}: applies to {' and '.join(tasks)} targets only, not {kind} "
                             f"(remove it)")


_SUBFIELD = re.compile(r"^([A-Za-z_][\w.\[\]]*): ")


def _field(loc: tuple[object, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _message(origin: str, loc: tuple[object, ...], msg: str) -> str:
    """`origin: field: message`. A model-level check names its own field at the start of its message
    ("target.column: ..."); that field is joined to the location instead of printed after it."""
    where = _field(loc)
    sub = _SUBFIELD.match(msg)
    if sub:
        where = f"{where}.{sub.group(1)}" if where else sub.group(1)
        msg = msg[sub.end():]
    return f"{origin}: {where or '(top level)'}: {msg}"


def parse_spec(data: object, origin: str = "<spec>") -> PipelineSpec:
    """Validate a spec mapping; every problem is reported as `origin: field: message`."""
    if not isinstance(data, dict):
        raise SpecError(f"{origin}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return PipelineSpec.model_validate(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = tuple(p for p in err["loc"] if p not in ("file", "sql", "http"))  # drop union tags
            lines.append(_message(origin, loc, err["msg"].removeprefix("Value error, ")))
        raise SpecError("\n".join(lines)) from None


def load_spec_file(path: Path) -> PipelineSpec:
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise SpecError(f"{path}: no such pipeline spec") from None
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: not valid YAML: {exc}") from None
    spec = parse_spec(data, str(path))
    if spec.name != path.stem:
        raise SpecError(f"{path}: name: {spec.name!r} must equal the file name {path.stem!r}")
    return spec


def load_spec(name: str, settings: Settings | None = None) -> PipelineSpec:
    """Load `include/pipelines/<name>.yaml` (or from CRISPFLOW_PIPELINES_DIR)."""
    if not re.match(NAME, name):
        raise SpecError(f"pipeline: {name!r} is not a valid pipeline name (pattern {NAME})")
    settings = settings or Settings.from_env()
    return load_spec_file(settings.pipelines_dir / f"{name}.yaml")


def list_specs(settings: Settings | None = None) -> list[str]:
    settings = settings or Settings.from_env()
    return sorted(p.stem for p in settings.pipelines_dir.glob("*.yaml"))
