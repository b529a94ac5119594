"""Pipeline specs: one YAML per model in include/pipelines/, validated with errors that name the field."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from crispflow.errors import SpecError
from crispflow.names import NAME
from crispflow.settings import Settings

ColumnType = Literal["int", "float", "string", "category", "bool", "datetime"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FileSource(_Model):
    """A CSV/Parquet/JSON-lines file: a local path (relative to the project root), file:// or s3:// URL."""

    name: str = Field(pattern=NAME)
    kind: Literal["file"]
    url: str
    format: Literal["parquet", "csv", "jsonl"] = "parquet"
    conn_id: str | None = None  # Airflow connection for the object store (an aws connection for s3://)


class SqlSource(_Model):
    """A SQL query run through an Airflow connection; `:start` and `:end` bind the run's data interval."""

    name: str = Field(pattern=NAME)
    kind: Literal["sql"]
    conn_id: str
    query: str


class HttpSource(_Model):
    """An HTTP JSON endpoint through an Airflow http connection; the interval goes in as query parameters."""

    name: str = Field(pattern=NAME)
    kind: Literal["http"]
    conn_id: str
    endpoint: str = "/"
    records_path: str | None = None  # dotted key of the list of records in the response, e.g. "data.items"
    next_path: str | None = None  # dotted key of the next page's URL, for paginated APIs
    start_param: str = "start"
    end_param: str = "end"
    max_pages: int = Field(default=1000, ge=1)


Source = Annotated[FileSource | SqlSource | HttpSource, Field(discriminator="kind")]


class Column(_Model):
    name: str = Field(min_length=1)
    type: ColumnType
    nullable: bool = False
    allowed: list[str | int | float | bool] | None = None
    min: float | None = None
    max: float | None = None
    pii: bool = False
    description: str = ""

    @model_validator(mode="after")
    def _range(self) -> Column:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is greater than max ({self.max})")
        if (self.min is not None or self.max is not None) and self.type not in ("int", "float"):
            raise ValueError(f"min/max need a numeric type, not {self.type!r}")
        return self


class Target(_Model):
    column: str
    positive: str | int | bool


class RowRule(_Model):
    """A row-level rule: rows that break it are quarantined with the rule's name as reason."""

    name: str = Field(pattern=NAME)
    kind: Literal["between", "in_set", "regex", "not_null", "greater_or_equal_column"]
    column: str
    min: float | None = None
    max: float | None = None
    strict: bool = False
    values: list[str | int | float | bool] | None = None
    pattern: str | None = None
    other_column: str | None = None

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

    name: str = Field(pattern=NAME)
    kind: Literal["mean_between", "null_fraction_at_most"]
    column: str
    min: float | None = None
    max: float | None = None


class GxExpectation(_Model):
    """Any Great Expectations expectation by its snake_case type, e.g. expect_column_value_lengths_to_be_between."""

    name: str = Field(pattern=NAME)
    type: str = Field(pattern=r"^expect_[a-z0-9_]+$")
    kwargs: dict[str, Any] = {}
    level: Literal["row", "batch"] = "batch"


class Quality(_Model):
    row_rules: list[RowRule] = []
    batch_rules: list[BatchRule] = []
    expectations: list[GxExpectation] = []


class Gate(_Model):
    max_quarantine_fraction: float = Field(default=0.05, ge=0, le=1)
    min_rows: int = Field(default=1, ge=0)
    max_rows: int | None = Field(default=None, ge=1)
    freshness_sla_days: float | None = Field(default=None, gt=0)  # newest time value vs the interval's end
    allow_extra_columns: bool = False  # True: unknown columns are dropped (and recorded) instead of failing


class Split(_Model):
    strategy: Literal["time", "stratified"] = "stratified"
    holdout_fraction: float = Field(default=0.2, gt=0, lt=1)
    seed: int = 42


Estimator = Literal["logistic_regression", "hist_gradient_boosting"]
Metric = Literal["roc_auc", "average_precision", "f1", "precision", "recall", "brier"]


class Candidate(_Model):
    """One model family and the hyperparameter grid the search samples from."""

    name: str = Field(pattern=NAME)
    estimator: Estimator
    grid: dict[str, list[Any]] = {}


class Threshold(_Model):
    """How the decision threshold is chosen on the validation folds."""

    objective: Literal["f1", "cost"] = "f1"
    cost_false_positive: float = Field(default=1.0, ge=0)
    cost_false_negative: float = Field(default=1.0, ge=0)


class Training(_Model):
    candidates: list[Candidate] = Field(min_length=1)
    min_rows: int = Field(default=1000, ge=10)  # smaller dataset versions (e.g. one month) do not trigger training
    cv_folds: int = Field(default=5, ge=2, le=20)
    search_budget: int = Field(default=8, ge=1, le=200)  # configurations tried, across all candidates
    selection_metric: Metric = "average_precision"
    class_weight: Literal["balanced"] | None = "balanced"
    calibration: Literal["sigmoid", "isotonic"] | None = "sigmoid"
    threshold: Threshold = Threshold()
    slices: list[str] = []  # categorical columns reported (and gated) per value


class Blessing(_Model):
    """The gate a challenger must pass against the champion (or, with no champion, absolute thresholds)."""

    primary_metric: Metric = "roc_auc"
    non_inferiority_margin: float = Field(default=0.01, ge=0)  # challenger may be this much worse, no more
    alpha: float = Field(default=0.05, gt=0, lt=0.5)
    bootstrap_samples: int = Field(default=1000, ge=100, le=100_000)
    slice_correction: Literal["holm", "benjamini_hochberg"] = "holm"
    min_slice_rows: int = Field(default=50, ge=1)
    max_latency_ratio: float = Field(default=1.5, gt=0)  # challenger p95 latency / champion's
    max_size_ratio: float = Field(default=3.0, gt=0)
    min_metrics: dict[Metric, float] = {}  # cold start (and always): absolute floors on the holdout


class PipelineSpec(_Model):
    name: str = Field(pattern=NAME)
    description: str = ""
    intended_use: str = ""
    owner: str = ""
    sources: list[Source] = Field(min_length=1)
    key: str
    time_column: str | None = None
    target: Target
    columns: list[Column] = Field(min_length=1)
    quality: Quality = Quality()
    gate: Gate = Gate()
    split: Split = Split()
    training: Training | None = None
    blessing: Blessing = Blessing()

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
        target = cols[self.target.column]
        if target.allowed is not None and self.target.positive not in target.allowed:
            raise ValueError(f"target.positive: {self.target.positive!r} is not in {target.allowed}")
        if self.split.strategy == "time" and not self.time_column:
            raise ValueError("split.strategy: 'time' needs a time_column")
        return self

    def column(self, name: str) -> Column:
        return next(c for c in self.columns if c.name == name)

    @property
    def pii_columns(self) -> list[str]:
        return [c.name for c in self.columns if c.pii]

    @property
    def feature_columns(self) -> list[str]:
        skip = {self.key, self.target.column, self.time_column}
        return [c.name for c in self.columns if c.name not in skip]

    def spec_hash(self) -> str:
        """A stable content hash of the validated spec (recorded in every manifest and model version)."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


def _field(loc: tuple[object, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


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
            lines.append(f"{origin}: {_field(loc)}: {err['msg'].removeprefix('Value error, ')}")
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
