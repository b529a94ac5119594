"""Model cards: one structure (`ModelCardInput`) rendered as Markdown and as a self-contained HTML page.

Pure Python (stdlib `html` for escaping): this module never imports Airflow or MLflow. The caller gathers the
records the model phases already store (the dataset manifest, the holdout record, the chosen configuration, the
evaluation JSON, the blessing verdict, the version's tags) into a `ModelCardInput`; both renderers walk the same
list of sections, so the two documents always say the same thing.

Records read back from MLflow went through `json_safe`, so an undefined metric arrives as None; in memory it is
NaN. Both render as "n/a (undefined)".

The card follows the spec's task: binary cards show the threshold, confusion counts and base rate; multiclass
cards the classes, per-class precision/recall and the k x k confusion matrix; regression cards the residuals
and, when the evaluation has an "interval" record (`crispflow.model.evaluation.interval_report`: {"coverage",
"halfwidth", "method"} and optionally "holdout_coverage", the share of holdout rows inside their interval), the
prediction intervals.
"""

from __future__ import annotations

import base64
import html
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from crispflow.spec import PipelineSpec

UNDEFINED = "n/a (undefined)"
OPEN = "—"  # an interval's undefined bound
METRIC_LABELS = {
    "roc_auc": "ROC AUC",
    "average_precision": "Average precision",
    "f1": "F1",
    "precision": "Precision",
    "recall": "Recall",
    "brier": "Brier score (lower is better)",
    "log_loss": "Log loss (lower is better)",
    "macro_f1": "Macro F1",
    "micro_f1": "Micro F1",
    "accuracy": "Accuracy",
    "ovr_roc_auc": "One-vs-rest ROC AUC (macro)",
    "rmse": "RMSE (lower is better)",
    "mae": "MAE (lower is better)",
    "r2": "R²",
}
SLICE_METRICS = ("roc_auc", "average_precision", "precision", "recall")
TASK_SLICE_METRICS = {"binary": SLICE_METRICS, "multiclass": ("log_loss", "macro_f1", "accuracy"),
                      "regression": ("rmse", "mae", "r2")}
SECTIONS = (
    "Summary",
    "Intended use",
    "Training data lineage",
    "Model",
    "Metrics on the frozen holdout",
    "Blessing",
    "Explanations",
    "Fairness",
    "Regulatory mapping",
    "Limitations and caveats",
    "Lineage",
)
IMBALANCE_BELOW = 0.25  # minority-class share under which the card flags class imbalance
TOP_REASONS = 5
_NOT_EVIDENCE = {"name", "passed", "reason", "slices"}


@dataclass(frozen=True)
class ModelCardInput:
    """Everything a card says, as the model phases record it (see crispflow.model.modelling).

    - `dataset`: the dataset version's manifest (`crispflow.data.datasets.publish`).
    - `holdout`: the frozen holdout's record (`crispflow.model.holdout.frozen_holdout`).
    - `config`: the chosen configuration: `config_id`, `candidate`, `params` and, from its cross-validation
      (`crispflow.model.training.cross_validate`), `metric`, `mean`, `std` and optionally `folds`.
    - `evaluation`: the evaluation JSON (`crispflow.model.evaluation.evaluate` plus `latency`, `size_bytes`).
    - `verdict`: the blessing verdict (`crispflow.model.blessing.decide` plus `champion_version` etc.).
    - `lineage`: the version's tags (git commit, dag/run ids, spec hash, artifact sha256, ...).
    - `created`: a datetime, an ISO string, or epoch milliseconds (MLflow's `creation_timestamp`).
    - `threshold`: the binary decision threshold; None for multiclass and regression.
    - `threshold_objective_value`: the out-of-fold objective at the threshold (F1, or cost per row), if known.
    - `caveats`: extra limitations to list verbatim.
    - `explanations`: the global explanation (`crispflow.model.modelling.explain_version`: explainer, permutation
      importance with CIs, mean |contribution|), empty for a version explained before explanations existed.
    - `images`: the partial dependence thumbnails by feature (PNG bytes), with their artifact paths in
      `explanations["partial_dependence"]`.
    """

    model_name: str
    version: str | int
    spec: PipelineSpec
    dataset: Mapping[str, Any]
    holdout: Mapping[str, Any]
    config: Mapping[str, Any]
    threshold: float | None
    evaluation: Mapping[str, Any]
    verdict: Mapping[str, Any]
    aliases: Sequence[str] = ()
    created: datetime | str | int | float | None = None
    threshold_objective_value: float | None = None
    lineage: Mapping[str, Any] = field(default_factory=dict)
    caveats: Sequence[str] = ()
    explanations: Mapping[str, Any] = field(default_factory=dict)
    images: Mapping[str, bytes] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------- document model


@dataclass(frozen=True)
class _Code:
    text: str


@dataclass(frozen=True)
class _Bold:
    text: str
    tone: str = ""  # "good" or "bad": coloured in HTML


Part = str | _Code | _Bold
Text = tuple[Part, ...]


@dataclass(frozen=True)
class _Para:
    text: Text


@dataclass(frozen=True)
class _List:
    items: tuple[Text, ...]


@dataclass(frozen=True)
class _Table:
    headers: tuple[str, ...]
    rows: tuple[tuple[Text, ...], ...]


@dataclass(frozen=True)
class _Heading:
    title: str


@dataclass(frozen=True)
class _Image:
    alt: str
    png: bytes
    path: str  # the PNG's artifact path, relative to the card's folder (Markdown links it; HTML embeds it)


Block = _Para | _List | _Table | _Heading | _Image


@dataclass(frozen=True)
class _Section:
    title: str
    blocks: tuple[Block, ...]

    @property
    def anchor(self) -> str:
        return re.sub(r"[^a-z0-9]+", "-", self.title.lower()).strip("-")


def _t(*parts: Part | Text) -> Text:
    out: list[Part] = []
    for p in parts:
        out.extend(p if isinstance(p, tuple) else (p,))
    return tuple(out)


def _table(headers: Sequence[str], rows: Sequence[Sequence[Part | Text]]) -> _Table:
    return _Table(tuple(headers), tuple(tuple(_t(c) for c in row) for row in rows))


def _bullets(items: Sequence[Part | Text]) -> _List:
    return _List(tuple(_t(i) for i in items))


# ------------------------------------------------------------------------------------------------ numbers


def _undefined(value: Any) -> bool:
    if value is None:
        return True
    try:
        return not math.isfinite(float(value))
    except (TypeError, ValueError):
        return True


def _num(value: Any, fmt: str = ".4f") -> str:
    """A number, or "n/a (undefined)" for None/NaN/inf/non-numbers."""
    if isinstance(value, bool):
        return str(value).lower()
    if _undefined(value):
        return UNDEFINED
    return format(float(value), fmt)


def _count(value: Any) -> str:
    if _undefined(value):
        return UNDEFINED
    return f"{int(value):,}"


def _ci(entry: Mapping[str, Any], fmt: str = ".4f") -> str:
    """"[low, high]"; an undefined bound is open ("[low, —]"); both undefined: UNDEFINED."""
    low, high = entry.get("ci_low"), entry.get("ci_high")
    if _undefined(low) and _undefined(high):
        return UNDEFINED
    return f"[{OPEN if _undefined(low) else _num(low, fmt)}, {OPEN if _undefined(high) else _num(high, fmt)}]"


def _covers_zero(entry: Mapping[str, Any]) -> bool:
    """Both bounds defined and low <= 0 <= high (an open interval is not said to cover 0)."""
    low, high = entry.get("ci_low"), entry.get("ci_high")
    return not (_undefined(low) or _undefined(high)) and float(low) <= 0 <= float(high)


def _pct(part: Any, whole: Any) -> str:
    if _undefined(part) or _undefined(whole) or not float(whole):
        return UNDEFINED
    return f"{100 * float(part) / float(whole):.1f} %"


def _bytes(value: Any) -> str:
    if _undefined(value):
        return UNDEFINED
    n = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            human = f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
            return f"{human} ({int(value):,} bytes)"
        n /= 1024
    raise AssertionError("unreachable")


def _evidence_value(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, float) and value.is_integer() and abs(value) >= 1e4:
        return str(int(value))  # sizes, counts: 48213, not 4.821e+04
    if value is None or isinstance(value, bool | float):
        return _num(value, ".4g")
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k}: {_evidence_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_evidence_value(v) for v in value) + "]"
    return str(value)


def _when(value: datetime | str | int | float | None) -> str:
    if value is None or value == "":
        return "unknown"
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = datetime.fromtimestamp(float(value) / 1000.0, tz=UTC)
    if isinstance(value, datetime):
        value = value if value.tzinfo else value.replace(tzinfo=UTC)
        return value.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    return str(value)


def _label(metric: str) -> str:
    return METRIC_LABELS.get(metric, metric)


def _metric_value(evaluation: Mapping[str, Any], metric: str) -> Any:
    entry = (evaluation.get("metrics") or {}).get(metric)
    return entry.get("value") if isinstance(entry, Mapping) else None


# ----------------------------------------------------------------------------------------------- sections


def _aliases(card: ModelCardInput) -> str:
    return ", ".join(card.aliases) if card.aliases else "none"


def _blessing_line(verdict: Mapping[str, Any]) -> Text:
    mode = str(verdict.get("mode", "unknown"))
    checks = verdict.get("checks") or []
    if verdict.get("blessed"):
        passed = sum(bool(c.get("passed")) for c in checks)
        return _t(_Bold("Blessed", "good"), f" ({mode}): all {passed} checks passed.")
    reasons = list(verdict.get("reasons") or ["no reason recorded"])
    more = f" (and {len(reasons) - 1} more; see Blessing)" if len(reasons) > 1 else ""
    return _t(_Bold("Not blessed", "bad"), f" ({mode}): {reasons[0]}{more}.")


def _task(card: ModelCardInput) -> str:
    return card.spec.task


def _classes(card: ModelCardInput) -> list[str]:
    return [str(c) for c in card.evaluation.get("classes") or card.spec.class_labels]


def _interval_text(card: ModelCardInput) -> str:
    interval = card.evaluation.get("interval") or {}
    if _undefined(interval.get("halfwidth")):
        return ""
    coverage = interval.get("coverage")
    level = UNDEFINED if _undefined(coverage) else f"{100 * float(coverage):g} %"
    return f" Each prediction is served with a {level} prediction interval of ± {_num(interval['halfwidth'])}."


def _summary_task(card: ModelCardInput, calibrated: str, candidate: str) -> Text:
    """The summary's middle for multiclass and regression (binary keeps its original wording)."""
    spec, ev = card.spec, card.evaluation
    kind = "regressor" if _task(card) == "regression" else f"{calibrated}classifier"
    what = f": {spec.description.strip().rstrip('.')}. " if spec.description.strip() else ". "
    if _task(card) == "regression":
        predicts = _t("It predicts ", _Code(spec.target.column), " (regression).", _interval_text(card))
    else:
        predicts = _t("It predicts ", _Code(spec.target.column), f" among {len(_classes(card))} classes (",
                      ", ".join(_classes(card)), "), with a probability for each.")
    return _t(f" is a {kind} ", _Code(candidate), " for the pipeline ", _Code(spec.name), what,
              predicts, " It was trained on dataset version ",
              _Code(str(card.dataset.get("dataset_version_id", "unknown"))),
              f" and evaluated on the frozen holdout ({_count(ev.get('n'))} rows): ")


def _summary(card: ModelCardInput) -> _Section:
    spec, ev, verdict = card.spec, card.evaluation, card.verdict
    training = spec.training
    candidate = card.config.get("candidate", "unknown")
    calibrated = f"{training.calibration}-calibrated " if training and training.calibration else ""
    primary = str(verdict.get("primary_metric") or "roc_auc")
    entry = (ev.get("metrics") or {}).get(primary) or {}
    if _task(card) != "binary":
        text = _t(
            _Code(card.model_name),
            f" version {card.version} (aliases: {_aliases(card)}; registered {_when(card.created)})",
            _summary_task(card, calibrated, str(candidate)),
            f"{_label(primary)} {_num(entry.get('value'))}, {_ci_level(ev)} CI {_ci(entry)}. ",
            _blessing_line(verdict),
        )
        return _Section("Summary", (_Para(text),))
    what = spec.description.strip() or f"the probability that {spec.target.column} is {spec.target.positive!r}"
    text = _t(
        _Code(card.model_name),
        f" version {card.version} (aliases: {_aliases(card)}; registered {_when(card.created)})",
        f" is a {calibrated}",
        _Code(str(candidate)),
        " classifier for the pipeline ",
        _Code(spec.name),
        f": {what.rstrip('.')}. It scores the probability that ",
        _Code(spec.target.column),
        " is ",
        _Code(str(spec.target.positive)),
        f" and flags rows at or above the threshold {_num(card.threshold)}. It was trained on dataset version ",
        _Code(str(card.dataset.get("dataset_version_id", "unknown"))),
        f" and evaluated on the frozen holdout ({_count(ev.get('n'))} rows, {_count(ev.get('positives'))} positive): "
        f"{_label(primary)} {_num(entry.get('value'))}, {_ci_level(ev)} CI {_ci(entry)}. ",
        _blessing_line(verdict),
    )
    return _Section("Summary", (_Para(text),))


def _ci_level(evaluation: Mapping[str, Any]) -> str:
    alpha = evaluation.get("alpha")
    alpha = 0.05 if _undefined(alpha) else float(alpha)
    return f"{100 * (1 - alpha):g} %"


_NOT_FOR = re.compile(r"\b(not (for|intended|to be used|suitable|meant)|do not use|must not)\b", re.IGNORECASE)


def _sentences(text: str) -> list[str]:
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s.strip()]


def _intended_use(card: ModelCardInput) -> _Section:
    spec = card.spec
    intended = spec.intended_use.strip() or "Not stated in the pipeline spec (`intended_use` is empty)."
    interval = card.dataset.get("interval") or {}
    sources = ", ".join(str(s.get("source", "?")) for s in card.dataset.get("sources") or []) or "unknown"
    out_of_scope: list[Text] = [_t(s) for s in _sentences(spec.intended_use) if _NOT_FOR.search(s)]
    out_of_scope += [
        _t(
            f"Populations, periods or sources other than the training data (sources: {sources}; interval "
            f"{interval.get('start', '?')} to {interval.get('end', '?')}): drift is not measured by this card."
        ),
        _t(
            "Decisions taken on the score alone, without the threshold's context (objective and costs under Model) "
            "and the caveats below."
        )
        if _task(card) == "binary"
        else _t(
            "Decisions taken on a single prediction without its uncertainty (the "
            + ("prediction interval" if _task(card) == "regression" else "class probabilities")
            + ") and the caveats below."
        ),
        _t("Scoring outside crispflow: the artifact contains crispflow's typing step."),
    ]
    if not card.verdict.get("blessed"):
        out_of_scope.insert(0, _t("Any production use of this version: it is not blessed."))
    blocks: list[Block] = [_Para(_t(intended))]
    if spec.owner:
        blocks.append(_Para(_t("Owner: ", _Code(spec.owner))))
    blocks += [_Heading("Out-of-scope use"), _bullets(out_of_scope)]
    return _Section("Intended use", tuple(blocks))


def _fingerprint(fp: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={_evidence_value(v)}" for k, v in sorted(fp.items()) if k != "kind") or "none recorded"


def _top_reasons(reasons: Mapping[str, Any]) -> list[tuple[str, Any]]:
    items = [(str(k), v) for k, v in reasons.items()]
    return sorted(items, key=lambda kv: (-(0 if _undefined(kv[1]) else float(kv[1])), kv[0]))[:TOP_REASONS]


def _holdout_how(card: ModelCardInput) -> Text:
    spec, record = card.spec, card.holdout
    strategy = record.get("strategy", spec.split.strategy)
    fraction = f"{spec.split.holdout_fraction:.0%}"
    if strategy == "time":
        how = _t(
            "the latest whole periods of ",
            _Code(str(spec.time_column)),
            f" holding at least {fraction} of the rows (no period is split)",
        )
    elif strategy == "stratified":
        how = _t(f"a stratified random {fraction} by label (seed {spec.split.seed})")
    elif strategy == "random":
        how = _t(f"a random {fraction} of the rows (seed {spec.split.seed})")
    else:
        how = _t(f"strategy {strategy!r}")
    return _t(
        "Cut once from dataset version ",
        _Code(str(record.get("cut_from", "unknown"))),
        " as ",
        how,
        "; every later model is evaluated on the same rows and training never sees an entity (",
        _Code(spec.key),
        ") of the holdout.",
    )


def _data_lineage(card: ModelCardInput) -> _Section:
    m, record = card.dataset, card.holdout
    rows = m.get("rows") or {}
    interval = m.get("interval") or {}
    quality = m.get("quality") or {}
    facts = [
        ("Dataset version", _Code(str(m.get("dataset_version_id", "unknown")))),
        ("Content sha256", _Code(str(m.get("content_sha256", "unknown")))),
        ("Interval", f"{interval.get('start', '?')} to {interval.get('end', '?')} (end exclusive)"),
        ("Rows in", _count(rows.get("in"))),
        ("Rows published", f"{_count(rows.get('published'))} ({_pct(rows.get('published'), rows.get('in'))})"),
        ("Rows quarantined", f"{_count(rows.get('quarantined'))} ({_pct(rows.get('quarantined'), rows.get('in'))})"),
    ]
    if "expectations_evaluated" in quality:
        facts.append(
            (
                "Quality expectations",
                f"{quality.get('expectations_evaluated')} evaluated, {quality.get('expectations_failed', 0)} failed",
            )
        )
    if recon := m.get("reconciliation"):
        facts.append(("Reconciliation", ", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in recon.items())))
    if published := m.get("published_by"):
        facts.append(("Published by", ", ".join(f"{k}={v}" for k, v in published.items())))
    blocks: list[Block] = [_table(("Field", "Value"), facts), _Heading("Sources")]
    sources = m.get("sources") or []
    if sources:
        blocks.append(
            _table(
                ("Source", "Kind", "Rows read", "Rows in interval", "Fingerprint"),
                [
                    (
                        _Code(str(s.get("source", "?"))),
                        str((s.get("fingerprint") or {}).get("kind", "?")),
                        _count(s.get("rows_read")),
                        _count(s.get("rows_in_interval")),
                        _fingerprint(s.get("fingerprint") or {}),
                    )
                    for s in sources
                ],
            )
        )
    else:
        blocks.append(_Para(_t("No sources recorded in the manifest.")))
    blocks.append(_Heading("Quarantine"))
    reasons = _top_reasons(quality.get("reasons") or {})
    if reasons:
        blocks.append(_table(("Reason", "Rows"), [(_Code(k), _count(v)) for k, v in reasons]))
        more = len(quality.get("reasons") or {}) - len(reasons)
        if more > 0:
            blocks.append(_Para(_t(f"... and {more} more reasons (see the dataset's quality report).")))
    else:
        blocks.append(_Para(_t("No row was quarantined.")))
    blocks += [
        _Heading("Frozen holdout"),
        _table(
            ("Field", "Value"),
            [
                ("Holdout hash", _Code(str(record.get("holdout_hash", "unknown")))),
                ("Rows", _count(record.get("rows"))),
                ("Strategy", str(record.get("strategy", "unknown"))),
                ("Cut from", _Code(str(record.get("cut_from", "unknown")))),
                ("Frozen at", str(record.get("frozen_at", "unknown"))),
            ],
        ),
        _Para(_holdout_how(card)),
    ]
    return _Section("Training data lineage", tuple(blocks))


def _threshold_objective(card: ModelCardInput) -> str:
    training = card.spec.training
    if training is None:
        return "unknown (the spec has no training section)"
    t = training.threshold
    if t.objective == "f1":
        text = "maximises the out-of-fold F1"
        value = f"; out-of-fold F1 at the threshold {_num(card.threshold_objective_value)}"
    else:
        text = (
            f"minimises the out-of-fold cost {t.cost_false_positive:g} x false positives + "
            f"{t.cost_false_negative:g} x false negatives"
        )
        value = f"; out-of-fold cost per row at the threshold {_num(card.threshold_objective_value)}"
    return text + (value if card.threshold_objective_value is not None else "")


def _interval_fact(interval: Mapping[str, Any]) -> str:
    coverage = interval.get("coverage")
    level = UNDEFINED if _undefined(coverage) else f"{100 * float(coverage):g} %"
    return f"prediction ± {_num(interval.get('halfwidth'))} ({level} target coverage, {interval.get('method', '?')})"


def _target_detail(card: ModelCardInput) -> Text:
    if _task(card) == "regression":
        return _t(" (regression)")
    if _task(card) == "multiclass":
        classes = [part for c in _classes(card) for part in (", ", _Code(c))][1:]
        return _t(" (multiclass; classes ", *classes, " in model order)")
    return _t(" (positive class ", _Code(str(card.spec.target.positive)), ")")


def _model(card: ModelCardInput) -> _Section:
    spec, cfg = card.spec, card.config
    training = spec.training
    candidate = str(cfg.get("candidate", "unknown"))
    estimator = next((c.estimator for c in (training.candidates if training else []) if c.name == candidate), None)
    metric = str(cfg.get("metric") or (training.selection_metric if training else "unknown"))
    folds = cfg.get("folds")
    cv = f"{_num(cfg.get('mean'))} ± {_num(cfg.get('std'))}"
    cv += (
        f" over {len(folds)} folds"
        if isinstance(folds, Sequence)
        else (f" over {training.cv_folds} folds" if training else "")
    )
    facts: list[tuple[Part | Text, ...]] = [
        ("Candidate", _Code(candidate)),
        ("Estimator", _Code(estimator or "unknown")),
        ("Configuration", _Code(str(cfg.get("config_id", "unknown")))),
        (f"CV {_label(metric)} (mean ± std)", cv),
    ]
    if _task(card) != "regression":
        facts += [
            ("Class weight", str(training.class_weight or "none") if training else "unknown"),
            ("Calibration", str(training.calibration or "none") if training else "unknown"),
        ]
    if _task(card) == "binary":
        facts += [
            ("Decision threshold", f"{_num(card.threshold)} (a row is flagged when score >= threshold)"),
            ("Threshold objective", _threshold_objective(card)),
        ]
    interval = card.evaluation.get("interval") or {}
    if _task(card) == "regression" and interval:
        facts.append(("Prediction interval", _interval_fact(interval)))
    params = cfg.get("params") or {}
    blocks: list[Block] = [
        _table(("Field", "Value"), facts),
        _Heading("Hyperparameters"),
        _table(("Parameter", "Value"), [(_Code(str(k)), _evidence_value(v)) for k, v in sorted(params.items())])
        if params
        else _Para(_t("Defaults (no hyperparameter was searched).")),
        _Heading("Features"),
        _table(
            ("Feature", "Type", "Nullable", "PII", "Description"),
            [
                (_Code(c.name), c.type, "yes" if c.nullable else "no", _pii_cell(spec, c.name), c.description)
                for c in (spec.column(n) for n in spec.feature_columns)
            ],
        ),
        _Para(
            _t(
                "Target: ",
                _Code(spec.target.column),
                _target_detail(card),
                "; key ",
                _Code(spec.key),
                (", time column ", _Code(spec.time_column)) if spec.time_column else (),
                " (not features). Preprocessing (typing, imputation, scaling, one-hot) is inside the artifact.",
            )
        ),
    ]
    return _Section("Model", tuple(blocks))


def _metric_rows(metrics: Mapping[str, Any]) -> list[tuple[Part | Text, ...]]:
    order = [m for m in METRIC_LABELS if m in metrics] + [m for m in metrics if m not in METRIC_LABELS]
    return [(_label(m), _num((metrics[m] or {}).get("value")), _ci(metrics[m] or {})) for m in order]


def _slice_cell(report: Mapping[str, Any], metric: str) -> str:
    entry = (report.get("metrics") or {}).get(metric) or {}
    value = entry.get("value")
    return UNDEFINED if _undefined(value) else f"{_num(value)} {_ci(entry)}"


def _binary_blocks(card: ModelCardInput) -> list[Block]:
    """The binary head of the metrics section: holdout facts, metric table, 2 x 2 confusion matrix."""
    ev = card.evaluation
    level = _ci_level(ev)
    n, positives = ev.get("n"), ev.get("positives")
    boot = ev.get("bootstrap") or {}
    blocks: list[Block] = [
        _Para(
            _t(
                f"Holdout {_count(n)} rows, {_count(positives)} positive (base rate {_pct(positives, n)}), hash ",
                _Code(str(ev.get("holdout_hash") or card.holdout.get("holdout_hash", "unknown"))),
                f"; threshold {_num(ev.get('threshold', card.threshold))}. Intervals: {level} "
                f"{boot.get('method', 'bootstrap')} bootstrap, {boot.get('samples', '?')} resamples "
                f"(seed {boot.get('seed', '?')}).",
            )
        ),
        _table(("Metric", "Value", f"{level} CI"), _metric_rows(ev.get("metrics") or {})),
        _Heading("Confusion matrix"),
    ]
    cm = ev.get("confusion_matrix") or {}
    blocks.append(
        _table(
            ("", "Predicted negative", "Predicted positive"),
            [
                ("Actual negative", f"{_count(cm.get('tn'))} (TN)", f"{_count(cm.get('fp'))} (FP)"),
                ("Actual positive", f"{_count(cm.get('fn'))} (FN)", f"{_count(cm.get('tp'))} (TP)"),
            ],
        )
    )
    return blocks


def _holdout_para(card: ModelCardInput, what: str) -> _Para:
    ev = card.evaluation
    boot = ev.get("bootstrap") or {}
    return _Para(
        _t(
            f"Holdout {_count(ev.get('n'))} rows{what}, hash ",
            _Code(str(ev.get("holdout_hash") or card.holdout.get("holdout_hash", "unknown"))),
            f". Intervals: {_ci_level(ev)} {boot.get('method', 'bootstrap')} bootstrap, "
            f"{boot.get('samples', '?')} resamples (seed {boot.get('seed', '?')}).",
        )
    )


def _multiclass_blocks(card: ModelCardInput) -> list[Block]:
    """Holdout facts, metric table, per-class precision/recall and the k x k confusion matrix."""
    ev = card.evaluation
    level, classes = _ci_level(ev), _classes(card)
    counts = ev.get("class_counts") or {}
    per_class = ev.get("per_class") or {}
    blocks: list[Block] = [
        _holdout_para(card, f" in {len(classes)} classes"),
        _table(("Metric", "Value", f"{level} CI"), _metric_rows(ev.get("metrics") or {})),
        _Heading("Per-class precision and recall"),
        _table(
            ("Class", "Rows", "Share", "Precision", f"{level} CI", "Recall", f"{level} CI"),
            [
                (
                    _Code(c),
                    _count(counts.get(c)),
                    _pct(counts.get(c), ev.get("n")),
                    _num(((per_class.get(c) or {}).get("precision") or {}).get("value")),
                    _ci((per_class.get(c) or {}).get("precision") or {}),
                    _num(((per_class.get(c) or {}).get("recall") or {}).get("value")),
                    _ci((per_class.get(c) or {}).get("recall") or {}),
                )
                for c in classes
            ],
        ),
        _Heading("Confusion matrix"),
    ]
    matrix = (ev.get("confusion_matrix") or {}).get("matrix") or []
    if matrix:
        blocks.append(_Para(_t("Rows: actual class; columns: predicted class (the most probable one).")))
        blocks.append(
            _table(
                ("Actual → predicted", *classes),
                [(_Code(c), *(_count(v) for v in row)) for c, row in zip(classes, matrix, strict=False)],
            )
        )
    else:
        blocks.append(_Para(_t("No confusion matrix recorded.")))
    return blocks


RESIDUAL_ROWS = (
    ("mean", "Mean (bias; positive = under-prediction)"),
    ("std", "Standard deviation"),
    ("q05", "5th percentile"),
    ("median", "Median"),
    ("q95", "95th percentile"),
    ("mean_abs", "Mean absolute"),
    ("max_abs", "Largest absolute"),
)


def _regression_blocks(card: ModelCardInput) -> list[Block]:
    """Holdout facts, metric table, residual summary and the prediction intervals (if recorded)."""
    ev = card.evaluation
    level = _ci_level(ev)
    observed = ev.get("observed") or {}
    what = f" (observed mean {_num(observed.get('mean'), '.4g')}, std {_num(observed.get('std'), '.4g')})"
    residuals = ev.get("residuals") or {}
    blocks: list[Block] = [
        _holdout_para(card, what if observed else ""),
        _table(("Metric", "Value", f"{level} CI"), _metric_rows(ev.get("metrics") or {})),
        _Heading("Residuals"),
        _Para(_t("Residual = observed - predicted.")),
        _table(("Statistic", "Value"), [(label, _num(residuals.get(key), ".4g")) for key, label in RESIDUAL_ROWS]),
        _Heading("Prediction intervals"),
    ]
    interval = ev.get("interval") or {}
    if interval:
        rows = [("Interval", _interval_fact(interval))]
        if "holdout_coverage" in interval:
            rows.append(("Holdout rows inside their interval", _pct(interval.get("holdout_coverage"), 1)))
        blocks.append(_table(("Field", "Value"), rows))
    else:
        blocks.append(_Para(_t("No prediction interval recorded for this version.")))
    return blocks


def _slice_blocks(card: ModelCardInput) -> list[Block]:
    ev, task = card.evaluation, _task(card)
    level = _ci_level(ev)
    metrics = TASK_SLICE_METRICS[task]
    blocks: list[Block] = [_Heading("Slices")]
    slices = ev.get("slices") or {}
    if not slices:
        blocks.append(_Para(_t("No slices configured (`training.slices`).")))
    extra = {"binary": ("Positives",), "regression": ("Mean residual",)}.get(task, ())
    for column, values in slices.items():
        rows = []
        for value, report in values.items():
            status = f"skipped: {report['skipped']}" if report.get("skipped") else "evaluated"
            cells = [UNDEFINED if report.get("skipped") else _slice_cell(report, m) for m in metrics]
            if task == "binary":
                more = (_count(report.get("positives")),)
            elif task == "regression":
                more = (_num((report.get("residuals") or {}).get("mean"), ".4g"),)
            else:
                more = ()
            rows.append((_Code(str(value)), _count(report.get("n")), *more, *cells, status))
        blocks.append(_Para(_t("By ", _Code(str(column)), f" (value and {level} CI):")))
        blocks.append(_table(("Value", "Rows", *extra, *(_label(m) for m in metrics), "Status"), rows))
    return blocks


def _metrics(card: ModelCardInput) -> _Section:
    ev = card.evaluation
    task = _task(card)
    blocks = {"binary": _binary_blocks, "multiclass": _multiclass_blocks, "regression": _regression_blocks}[task](card)
    blocks += _slice_blocks(card)
    lat = ev.get("latency") or {}
    blocks += [
        _Heading("Latency and size"),
        _table(
            ("Measure", "Value"),
            [
                (
                    "Batch scoring",
                    f"{_num(lat.get('batch_ms_per_row'), '.4g')} ms/row "
                    f"({_count(lat.get('batch_rows'))} rows in {_num(lat.get('batch_ms'), '.4g')} ms)",
                ),
                ("Single row p50", f"{_num(lat.get('latency_p50_ms'), '.4g')} ms"),
                ("Single row p95", f"{_num(lat.get('latency_p95_ms'), '.4g')} ms"),
                (
                    "Single row max",
                    f"{_num(lat.get('latency_max_ms'), '.4g')} ms "
                    f"({_count(lat.get('single_rows'))} rows x {_count(lat.get('repeats'))} repeats)",
                ),
                ("Model size", _bytes(ev.get("size_bytes"))),
            ],
        ),
    ]
    return _Section("Metrics on the frozen holdout", tuple(blocks))


def _evidence(check: Mapping[str, Any]) -> str:
    return "; ".join(f"{k} = {_evidence_value(v)}" for k, v in check.items() if k not in _NOT_EVIDENCE)


def _blessing(card: ModelCardInput) -> _Section:
    v = card.verdict
    champion = v.get("champion_version")
    facts = [
        ("Verdict", _Bold("BLESSED", "good") if v.get("blessed") else _Bold("NOT BLESSED", "bad")),
        ("Mode", str(v.get("mode", "unknown"))),
        ("Champion compared against", f"version {champion}" if champion is not None else "none (cold start)"),
        (
            "Primary metric",
            f"{v.get('primary_metric', '?')}, non-inferiority margin {_num(v.get('margin'), 'g')}, "
            f"alpha {_num(v.get('alpha'), 'g')}",
        ),
        (
            "Holdout",
            f"{_count(v.get('n'))} rows, {_count(v.get('positives'))} positive"
            if _task(card) == "binary"
            else f"{_count(v.get('n'))} rows",
        ),
    ]
    if v.get("judged_by"):
        facts.append(("Judged by", _Code(str(v["judged_by"]))))
    blocks: list[Block] = [_table(("Field", "Value"), facts)]
    reasons = list(v.get("reasons") or [])
    if reasons:
        blocks += [_Heading("Reasons"), _bullets(reasons)]
    checks = v.get("checks") or []
    blocks.append(_Heading("Checks"))
    if checks:
        blocks.append(
            _table(
                ("Check", "Result", "Evidence", "Reason"),
                [
                    (
                        _Code(str(c.get("name", "?"))),
                        _Bold("pass", "good") if c.get("passed") else _Bold("FAIL", "bad"),
                        _evidence(c),
                        str(c.get("reason", "")),
                    )
                    for c in checks
                ],
            )
        )
    else:
        blocks.append(_Para(_t("No checks recorded.")))
    binary = _task(card) == "binary"
    for c in checks:
        if c.get("slices"):
            blocks.append(_Heading(f"Slice comparisons ({c.get('metric', '?')}, {c.get('correction', '?')})"))
            blocks.append(
                _table(
                    ("Slice", "Rows", *(("Positives",) if binary else ()), "Estimate", "CI", "p", "p adjusted",
                     "Outcome"),
                    [
                        (
                            _Code(f"{e.get('column')}={e.get('value')}"),
                            _count(e.get("n")),
                            *((_count(e.get("positives")),) if binary else ()),
                            *(
                                ("", "", "", "", f"skipped: {e['skipped']}")
                                if e.get("skipped")
                                else (
                                    _num(e.get("estimate"), "+.4f"),
                                    _ci(e, "+.4f"),
                                    _num(e.get("p_value"), ".3g"),
                                    _num(e.get("p_adjusted"), ".3g"),
                                    "regression" if e.get("regression") else "no regression",
                                )
                            ),
                        )
                        for e in c["slices"]
                    ],
                )
            )
    return _Section("Blessing", tuple(blocks))


def _low_high(entry: Mapping[str, Any]) -> dict[str, Any]:
    """An importance entry's interval ({"low", "high"}) in the card's CI form."""
    return {"ci_low": entry.get("low"), "ci_high": entry.get("high")}


def _importance_label(metric: str) -> str:
    """"ROC AUC drop" / "Log loss rise": an importance is how much worse the metric gets."""
    from crispflow.spec import LOWER_IS_BETTER

    name = _label(metric).replace(" (lower is better)", "")
    return f"{name} {'rise' if metric in LOWER_IS_BETTER or metric == 'squared_error' else 'drop'}"


def _importance_rows(importance: Mapping[str, Any], metrics: Sequence[str]) -> list[tuple[Part | Text, ...]]:
    rows: list[tuple[Part | Text, ...]] = []
    for entry in importance.get("features") or []:
        cells: list[Part | Text] = [_Code(str(entry.get("feature", "?")))]
        for metric in metrics:
            e = entry.get(metric) or {}
            interval = _low_high(e)
            cells += [_num(e.get("importance"), "+.4f"),
                      _ci(interval, "+.4f") + (" (covers 0)" if _covers_zero(interval) else "")]
        rows.append(tuple(cells))
    return rows


def _explanations(card: ModelCardInput) -> _Section:
    ex = card.explanations
    if not ex:
        return _Section("Explanations", (_Para(_t("No explanation recorded for this version (trained before "
                                                  "crispflow explained its models).")),))
    explainer, importance = ex.get("explainer") or {}, ex.get("importance") or {}
    metrics = [str(m) for m in importance.get("metrics") or []]
    level = 1 - float(importance.get("alpha") or 0.05)
    blocks: list[Block] = [
        _table(("Field", "Value"), [
            ("Local explainer", _t(_Code(str(explainer.get("method", "?"))), f" in the space: "
                                   f"{explainer.get('space', '?')}")),
            ("Explainer self-test", str(explainer.get("status", "?"))),
            ("Served as", _t(_Code("POST /predict?explain=true&top_k=5"), ": base value + one contribution per "
                             "feature (one-hot columns grouped back into their feature) reproduces the output")),
        ]),
    ]
    if explainer.get("space_note"):
        blocks.append(_Para(_t(str(explainer["space_note"]))))
    blocks += [
        _Heading("Permutation importance on the frozen holdout"),
        _Para(_t(f"How much the metric worsens when one feature's values are shuffled across the "
                 f"{_count(importance.get('rows'))} holdout rows ({_count(importance.get('repeats'))} repeats; "
                 f"{level:.0%} paired bootstrap intervals over rows). An interval covering 0: no evidence the model "
                 "relies on the feature.")),
        _table(("Feature", *(h for m in metrics for h in (_importance_label(m), "CI"))),
               _importance_rows(importance, metrics)),
    ]
    contributions = ex.get("mean_abs_contribution") or []
    if contributions:
        blocks += [
            _Heading("Mean |contribution| of the local explainer"),
            _table(("Feature", "Mean |contribution|", "CI"),
                   [(_Code(str(c.get("feature"))), _num(c.get("mean_abs"), ".4g"), _ci(_low_high(c), ".4g"))
                    for c in contributions]),
        ]
    plots = ex.get("partial_dependence") or {}
    if plots:
        blocks.append(_Heading("Partial dependence (with ICE lines of a sample) of the top features"))
        blocks += [_Image(f"partial dependence of {f}", card.images[f], f"../{path}")
                   for f, path in plots.items() if f in card.images]
    caveats = [_t(str(n)) for n in importance.get("notes") or []]  # method, intervals, correlated pairs
    caveats += [_t("Explanations describe the model, not causes in the world; a feature with little importance can "
                   "still matter through a correlated one.")]
    blocks += [_Heading("Caveats"), _bullets(caveats)]
    return _Section("Explanations", tuple(blocks))


FAIRNESS_LABELS = {"selection_rate": "Selection rate", "tpr": "TPR", "fpr": "FPR", "mean_prediction": "Mean prediction",
                   "demographic_parity_difference": "Demographic-parity difference",
                   "equalized_odds_difference": "Equalized-odds difference",
                   "primary_metric_difference": "Primary-metric gap"}


def _fair_label(name: str) -> str:
    return FAIRNESS_LABELS.get(name) or _label(name)


def _fairness_column(column: str, report: Mapping[str, Any], names: Sequence[str]) -> list[Block]:
    blocks: list[Block] = [_Heading(f"Groups of {column}")]
    groups = report.get("groups") or []
    if groups:
        blocks.append(_table(("Group", "Rows", *(_fair_label(m) for m in names)),
                             [(_Code(str(g.get("value"))), _count(g.get("n")),
                               *(f"{_num((g.get('metrics') or {}).get(m, {}).get('value'))} "
                                 f"{_ci((g.get('metrics') or {}).get(m, {}))}" for m in names)) for g in groups]))
    disparities = report.get("disparities") or {}
    if disparities:
        blocks.append(_table(("Disparity", "Value", "CI", "Between"),
                             [(_fair_label(name), _num(d.get("value")), _ci(d),
                               " and ".join(map(str, d.get("between") or [])) or "-")
                              for name, d in disparities.items()]))
    suppressed = report.get("suppressed") or []
    if suppressed:
        blocks.append(_Para(_t("Suppressed (too few rows to measure, left out of the disparities): " + "; ".join(
            f"{g.get('value')} ({_count(g.get('n'))} rows: {g.get('reason', 'too few rows')})" for g in suppressed)
            + ".")))
    if report.get("note"):
        blocks.append(_Para(_t(f"No disparity: {report['note']}.")))
    return blocks


def _fairness(card: ModelCardInput) -> _Section:
    fairness = card.verdict.get("fairness") or {}
    sensitive = card.spec.sensitive_columns
    if not fairness:
        what = ("no sensitive column is declared in the spec (mark protected attributes `sensitive: true`)"
                if not sensitive else "this version's verdict has no fairness report")
        return _Section("Fairness", (_Para(_t(f"Not measured: {what}.")),))
    challenger = fairness.get("challenger") or {}
    decision = str(fairness.get("decision", "?"))
    tone = "good" if decision == "pass" else "bad"
    facts = [
        ("Sensitive columns", ", ".join(sensitive) or "-"),
        ("Gate", _t(_Bold(decision.upper(), tone), f" (mode {fairness.get('mode', '?')!r}; a disparity may widen by "
                    f"at most {_num(fairness.get('max_increase'), 'g')} over the champion's, "
                    f"{fairness.get('correction', 'holm')}-corrected at alpha {_num(fairness.get('alpha'), 'g')})")),
        ("Intervals", f"{_num(challenger.get('ci_level'), '.0%')} {challenger.get('method', 'bootstrap')}, "
                      f"{_count(challenger.get('n_boot'))} resamples"),
        ("Groups measured", f"at least {_count(fairness.get('min_rows') or challenger.get('min_rows'))} holdout rows"),
    ]
    if challenger.get("threshold") is not None:
        facts.append(("Decisions", f"score >= threshold {_num(challenger['threshold'])}"))
    blocks: list[Block] = [_table(("Field", "Value"), facts)]
    if fairness.get("note"):
        blocks.append(_Para(_t(str(fairness["note"]))))
    for column, report in (challenger.get("columns") or {}).items():
        blocks += _fairness_column(column, report, [str(m) for m in challenger.get("metrics") or []])
    tests = [t for t in fairness.get("comparison") or [] if "skipped" not in t]
    if tests:
        blocks += [_Heading("Against the champion"),
                   _table(("Column", "Disparity", "Challenger", "Champion", "Difference", "CI", "p adjusted",
                           "Outcome"),
                          [(_Code(str(t.get("column"))), _fair_label(str(t.get("metric"))), _num(t.get("challenger")),
                            _num(t.get("champion")), _num(t.get("estimate"), "+.4f"), _ci(t, "+.4f"),
                            _num(t.get("p_adjusted"), ".3g"),
                            _Bold("widened", "bad") if t.get("widened") else "not widened") for t in tests])]
    warnings = [w for w in card.verdict.get("warnings") or [] if "fairness" in str(w)]
    if warnings:
        blocks += [_Heading("Warnings"), _bullets(warnings)]
    return _Section("Fairness", tuple(blocks))


def _regulatory(card: ModelCardInput) -> _Section:
    explainer = (card.explanations.get("explainer") or {}).get("status", "not recorded")
    mode = card.spec.blessing.fairness.mode
    return _Section("Regulatory mapping", (_Para(_t(
        "Where this card and the model server meet the rules on automated decisions: a person affected can be given "
        "the main reasons for their own prediction (LGPD art. 20 §1; GDPR arts. 13(2)(f), 15(1)(h) and 22: "
        "meaningful information about the logic involved) from ", _Code("POST /predict?explain=true"),
        f" (explainer: {explainer}); the logic of the model as a whole is the *Explanations* section; bias is "
        "examined on the declared sensitive attributes with disaggregated metrics and a non-regression gate in "
        f"{mode!r} mode (EU AI Act art. 10(2)(f) for high-risk systems, Annex III 5(b) names creditworthiness "
        "assessment; art. 13 transparency), and the evidence is stored with the version (art. 12 record-keeping). "
        "This maps features to articles; it is not legal advice, and the controller still owes the human review "
        "of GDPR art. 22(3)."
    )),))


def _undefined_metrics(ev: Mapping[str, Any]) -> list[str]:
    out = []
    for name, entry in (ev.get("metrics") or {}).items():
        entry = entry or {}
        if _undefined(entry.get("value")):
            out.append(f"{name} on the holdout")
        elif _undefined(entry.get("ci_low")) or _undefined(entry.get("ci_high")):
            out.append(f"the CI of {name} on the holdout")
    for column, values in (ev.get("slices") or {}).items():
        for value, report in values.items():
            names = [m for m, e in (report.get("metrics") or {}).items() if _undefined((e or {}).get("value"))]
            if names:
                out.append(f"{', '.join(names)} in slice {column}={value}")
    return out


def _class_balance(card: ModelCardInput) -> list[Text]:
    """Multiclass: the class shares on the holdout, flagging classes rarer than IMBALANCE_BELOW / k."""
    ev = card.evaluation
    counts, n = ev.get("class_counts") or {}, ev.get("n")
    if not counts or _undefined(n) or not float(n):
        return []
    shares = ", ".join(f"{c} {_pct(v, n)}" for c, v in counts.items())
    rare = [c for c, v in counts.items() if not _undefined(v) and float(v) / float(n) < IMBALANCE_BELOW / len(counts)]
    if rare:
        return [_t(f"Class imbalance on the holdout ({shares}): the rare classes {', '.join(rare)} have few rows, so "
                   "their per-class metrics have wide intervals and weigh as much as the others in macro F1.")]
    return [_t(f"Class shares on the holdout: {shares}.")]


def _regression_caveats(card: ModelCardInput) -> list[Text]:
    ev = card.evaluation
    items = [_t("Errors are in the target's units; R² depends on the holdout's spread of the target.")]
    interval = ev.get("interval") or {}
    if _undefined(interval.get("halfwidth")):
        items.append(_t("No prediction interval is recorded: predictions come without a stated uncertainty."))
    else:
        items.append(
            _t(
                "The prediction interval has one width for every row (split conformal on out-of-fold residuals): "
                "its coverage holds on average, not for each kind of row."
            )
        )
    return items


def _limitations(card: ModelCardInput) -> _Section:
    spec, ev, verdict = card.spec, card.evaluation, card.verdict
    items: list[Text] = []
    for col in spec.columns:
        if "simulated" in col.description.lower():
            if col.name == spec.time_column:
                items.append(
                    _t(
                        "The time column ",
                        _Code(col.name),
                        f" is simulated (its description: "
                        f'"{col.description}"): the time '
                        "split, the holdout's periods and the freshness checks follow simulated dates, so "
                        "the holdout does not measure performance on genuinely later data.",
                    )
                )
            else:
                items.append(_t("Column ", _Code(col.name), f' is simulated (its description: "{col.description}").'))
    skipped = [
        f"{column}={value} ({_count(r.get('n'))} rows: {r['skipped']})"
        for column, values in (ev.get("slices") or {}).items()
        for value, r in values.items()
        if r.get("skipped")
    ]
    if skipped:
        items.append(
            _t("Slices too small to evaluate were skipped (no metrics, and not gated): " + "; ".join(skipped) + ".")
        )
    n, positives = ev.get("n"), ev.get("positives")
    if _task(card) == "multiclass":
        items += _class_balance(card)
    elif _task(card) == "regression":
        items += _regression_caveats(card)
    elif not _undefined(n) and not _undefined(positives) and float(n):
        rate = float(positives) / float(n)
        minority = min(rate, 1 - rate)
        if minority < IMBALANCE_BELOW:
            items.append(
                _t(
                    f"Class imbalance: the base rate of {spec.target.column} = {spec.target.positive!r} "
                    f"on the holdout is {rate:.1%} ({_count(positives)} of {_count(n)}); precision-type "
                    "metrics depend on it, and intervals for rare classes are wide."
                )
            )
        else:
            items.append(_t(f"Base rate on the holdout: {rate:.1%} ({_count(positives)} of {_count(n)})."))
    undefined = _undefined_metrics(ev)
    if undefined:
        items.append(_t("Undefined metrics (shown as n/a; a gate never passes on them): " + "; ".join(undefined) + "."))
    pii = [c for c in spec.feature_columns if spec.pii_policy(c)]
    if pii:
        items.append(
            _t(
                "Personal-data features are used by the model: "
                + ", ".join(f"{c} ({_PII_FORM[spec.pii_policy(c) or 'keep']})" for c in pii)
                + ". The model server pseudonymises requests as the training data was, before scoring and logging."
            )
        )
    no_skill = next((c for c in verdict.get("checks") or [] if c.get("name") == "no_skill_floor"), None)
    if verdict.get("mode") == "cold_start" and no_skill is not None:
        items.append(
            _t(
                "Cold start with no floors in `blessing.min_metrics`: judged only against no skill, not against a "
                f"champion. The rule: {no_skill.get('rule', '?')}."
            )
        )
    elif verdict.get("mode") == "cold_start":
        items.append(
            _t("Cold start: judged only against the absolute floors (`blessing.min_metrics`), not against a champion.")
        )
    if not verdict.get("blessed"):
        items.append(_t("This version is not blessed: it must not replace the champion."))
    items.append(
        _t(
            "Loading the model needs ",
            _Code("crispflow"),
            " installed (same version): the artifact includes crispflow's typing step (",
            _Code("crispflow.model.features.FrameTyper"),
            ").",
        )
    )
    if spec.description.strip():
        items.append(_t("From the spec's description: " + spec.description.strip()))
    items += [_t(c) for c in card.caveats]
    return _Section("Limitations and caveats", (_bullets(items),))


def _lineage(card: ModelCardInput) -> _Section:
    tags = dict(card.lineage)
    rows = [(_Code(str(k)), _Code(str(v))) for k, v in sorted(tags.items())]
    blocks: list[Block] = [
        _table(("Tag", "Value"), rows) if rows else _Para(_t("No lineage tags recorded.")),
    ]
    current = card.spec.spec_hash()
    recorded = tags.get("crispflow.spec_hash") or card.dataset.get("spec_hash")
    if recorded and recorded != current:
        blocks.append(
            _Para(
                _t(
                    _Bold("Spec changed: "),
                    "this card renders the spec with hash ",
                    _Code(current),
                    ", the model was trained under ",
                    _Code(str(recorded)),
                    ".",
                )
            )
        )
    else:
        blocks.append(
            _Para(
                _t(
                    "Spec hash of the rendered spec: ",
                    _Code(current),
                    " (matches the recorded one)." if recorded else " (none recorded).",
                )
            )
        )
    return _Section("Lineage", tuple(blocks))


def _sections(card: ModelCardInput) -> list[_Section]:
    """The card's sections, in order (titles as in SECTIONS)."""
    return [
        _summary(card),
        _intended_use(card),
        _data_lineage(card),
        _model(card),
        _metrics(card),
        _blessing(card),
        _explanations(card),
        _fairness(card),
        _regulatory(card),
        _limitations(card),
        _lineage(card),
    ]


def _title(card: ModelCardInput) -> str:
    return f"Model card: {card.model_name} v{card.version}"


# ----------------------------------------------------------------------------------------------- Markdown

_MD_SPECIAL = re.compile(r"[\\`*<|~]|\](?=[(\[:])|_+")
_MD_LEAD = re.compile(r"(\s*)(?:([#>+=-])|(\d+)([.)]))")


def _md_sub(match: re.Match[str]) -> str:
    text, start, end = match.string, match.start(), match.end()
    if match.group().startswith("_"):  # underscores inside a word (snake_case) never make emphasis
        inside = start > 0 and end < len(text) and text[start - 1].isalnum() and text[end].isalnum()
        return match.group() if inside else "\\" + "\\".join(match.group())
    return "\\" + match.group()


def _md_escape(text: str) -> str:
    """Plain text for Markdown: whitespace collapsed (so it cannot start a block) and every character that could
    make markup escaped: backslash, code, emphasis, raw HTML (<), table pipes, strikethrough, and the `]` of a
    link or reference definition. Brackets alone (e.g. a CI "[0.71, 0.78]") stay as they are."""
    return _MD_SPECIAL.sub(_md_sub, re.sub(r"\s+", " ", text))


def _md_lead(text: str) -> str:
    """Escape a block marker (#, >, +, -, =, "1.") at the start of a paragraph or list item."""
    m = _MD_LEAD.match(text)
    if m is None:
        return text
    lead = f"\\{m.group(2)}" if m.group(2) else f"{m.group(3)}\\{m.group(4)}"
    return m.group(1) + lead + text[m.end() :]


def _md_part(part: Part, cell: bool) -> str:
    if isinstance(part, _Code):
        text = " ".join(part.text.split())
        fence, pad = ("``", " ") if "`" in text else ("`", "")
        code = f"{fence}{pad}{text}{pad}{fence}"
        return code.replace("|", "\\|") if cell else code  # GFM splits cells on | even inside code spans
    if isinstance(part, _Bold):
        return f"**{_md_escape(part.text)}**"
    return _md_escape(part)


def _md_text(text: Text, cell: bool = False) -> str:
    return "".join(_md_part(p, cell) for p in text)


def _md_block(block: Block) -> str:
    if isinstance(block, _Image):
        return f"![{_md_escape(block.alt)}]({block.path.replace(' ', '%20').replace(')', '%29')})"
    if isinstance(block, _Para):
        return _md_lead(_md_text(block.text))
    if isinstance(block, _Heading):
        return f"### {_md_text((block.title,))}"
    if isinstance(block, _List):
        return "\n".join(f"- {_md_lead(_md_text(i, cell=True))}" for i in block.items)
    head = "| " + " | ".join(_md_text((h,), cell=True) for h in block.headers) + " |"
    rule = "|" + "|".join("---" for _ in block.headers) + "|"
    body = ["| " + " | ".join(_md_text(c, cell=True) for c in row) + " |" for row in block.rows]
    return "\n".join([head, rule, *body])


def render_markdown(card: ModelCardInput) -> str:
    """The card as GitHub-flavoured Markdown (text escaped, so spec strings cannot inject markup)."""
    out = [f"# {_md_text((_title(card),))}"]
    for section in _sections(card):
        out.append(f"## {section.title}")
        out += [_md_block(b) for b in section.blocks]
    return "\n\n".join(out) + "\n"


# --------------------------------------------------------------------------------------------------- HTML

_CSS = """
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1f2328; max-width: 72rem;
       margin: 2rem auto; padding: 0 1rem; }
h1 { font-size: 1.6rem; border-bottom: 2px solid #d0d7de; padding-bottom: .3rem; }
h2 { font-size: 1.25rem; margin-top: 2rem; border-bottom: 1px solid #d0d7de; padding-bottom: .2rem; }
h3 { font-size: 1.05rem; margin-top: 1.2rem; }
table { border-collapse: collapse; margin: .6rem 0; font-size: .9rem; }
th, td { border: 1px solid #d0d7de; padding: .25rem .55rem; text-align: left; vertical-align: top; }
th { background: #f6f8fa; }
tbody tr:nth-child(even) { background: #fbfcfd; }
code { font: .85em ui-monospace, SFMono-Regular, Menlo, monospace; background: #f6f8fa; padding: .05rem .25rem;
       border-radius: 3px; overflow-wrap: anywhere; }
nav ul { list-style: none; padding: 0; display: flex; flex-wrap: wrap; gap: .4rem 1rem; }
img.thumb { width: 20rem; max-width: 100%; margin: .3rem .6rem .3rem 0; border: 1px solid #d0d7de; }
.good { color: #1a7f37; }
.bad { color: #cf222e; }
"""


def _html_part(part: Part) -> str:
    if isinstance(part, _Code):
        return f"<code>{html.escape(part.text)}</code>"
    if isinstance(part, _Bold):
        tone = f' class="{part.tone}"' if part.tone else ""
        return f"<strong{tone}>{html.escape(part.text)}</strong>"
    return html.escape(part)


def _html_text(text: Text) -> str:
    return "".join(_html_part(p) for p in text)


def _html_block(block: Block) -> str:
    if isinstance(block, _Image):
        data = base64.b64encode(block.png).decode()
        return f'<img class="thumb" alt="{html.escape(block.alt)}" src="data:image/png;base64,{data}">'
    if isinstance(block, _Para):
        return f"<p>{_html_text(block.text)}</p>"
    if isinstance(block, _Heading):
        return f"<h3>{html.escape(block.title)}</h3>"
    if isinstance(block, _List):
        return "<ul>\n" + "\n".join(f"<li>{_html_text(i)}</li>" for i in block.items) + "\n</ul>"
    head = "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in block.headers) + "</tr>"
    body = "\n".join("<tr>" + "".join(f"<td>{_html_text(c)}</td>" for c in row) + "</tr>" for row in block.rows)
    return f"<table>\n<thead>{head}</thead>\n<tbody>\n{body}\n</tbody>\n</table>"


def render_html(card: ModelCardInput) -> str:
    """The card as one self-contained HTML page (inline CSS, no scripts, every string escaped)."""
    parts = _sections(card)
    title = html.escape(_title(card))
    nav = "".join(f'<li><a href="#{s.anchor}">{html.escape(s.title)}</a></li>' for s in parts)
    body = []
    for s in parts:
        blocks = "\n".join(_html_block(b) for b in s.blocks)
        body.append(f'<section id="{s.anchor}">\n<h2>{html.escape(s.title)}</h2>\n{blocks}\n</section>')
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{title}</title>\n<style>{_CSS}</style>\n</head>\n"
        f"<body>\n<h1>{title}</h1>\n<nav><ul>{nav}</ul></nav>\n" + "\n".join(body) + "\n</body>\n</html>\n"
    )


_PII_FORM = {"hmac": "stored and scored as keyed pseudonyms", "keep": "stored as it is, for a stated reason"}


def _pii_cell(spec: Any, name: str) -> Any:
    """The Features table's PII cell: the column's policy (hmac / keep), or no."""
    policy = spec.pii_policy(name)
    return _Bold(f"PII: {policy}") if policy else "no"
