"""The data-quality gate: expectations generated from the spec, run by a real GX 1.x checkpoint.

`validate_batch` never raises on bad data: it returns a `GateOutcome` holding the rows that pass, the rows
rejected (with reason codes), redacted results and HTML, and `failure` -- the batch-level `DataRejected` or a
`GateMisconfigured` -- so the caller stores everything first and fails afterwards.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from crispflow.data.extracts import SOURCE_COL, Rejections, conform, dedupe, new_rejections
from crispflow.errors import CrispflowError, DataRejected, GateMisconfigured

if TYPE_CHECKING:
    import pandas as pd

    from crispflow.data.sources import Interval
    from crispflow.spec import PipelineSpec

REDACTED = "<redacted>"
_DTYPES = {  # the dtypes `batch.conform` produces for each spec type
    "int": ["Int64Dtype", "int64"],
    "float": ["float64"],
    "bool": ["BooleanDtype", "bool"],
    "datetime": ["datetime64[ns]", "datetime64[us]", "datetime64[ms]", "datetime64[s]"],
    "string": ["str"],
    "category": ["str"],
}
_BULKY_KEYS = ("unexpected_list", "unexpected_index_list", "unexpected_index_query")


@dataclass
class GateOutcome:
    valid: pd.DataFrame  # rows that pass: spec columns, typed, sorted by key
    quarantine: pd.DataFrame  # rejected rows as text, with `_reasons`, `_source`, `_row`
    summary: dict[str, Any]
    results: dict[str, Any]  # GX validation result, redacted
    html: str  # GX Data Docs page of the same result
    failure: CrispflowError | None = None
    batch_failures: list[dict[str, Any]] = field(default_factory=list)


def _expectations(spec: PipelineSpec, present: list[str]) -> list[tuple[str, str, str | None, Any]]:
    """(level, rule, column, expectation) for everything the spec asks; columns absent from the batch are
    left to the schema expectation, so a missing column is reported once, as a schema failure."""
    import great_expectations.expectations as gxe
    from great_expectations.expectations.registry import get_expectation_impl

    out: list[tuple[str, str, str | None, Any]] = []
    gate = spec.gate
    declared = [c.name for c in spec.columns]
    out.append(("batch", "columns_match", None,
                gxe.ExpectTableColumnsToMatchSet(column_set=declared, exact_match=not gate.allow_extra_columns)))
    out.append(("batch", "row_count", None,
                gxe.ExpectTableRowCountToBeBetween(min_value=gate.min_rows, max_value=gate.max_rows)))
    for col in spec.columns:
        if col.name not in present:
            continue
        out.append(("batch", "dtype", col.name,
                    gxe.ExpectColumnValuesToBeInTypeList(column=col.name, type_list=_DTYPES[col.type])))
        if not col.nullable:
            out.append(("row", "not_null", col.name, gxe.ExpectColumnValuesToNotBeNull(column=col.name)))
        if col.allowed is not None:
            out.append(("row", "allowed", col.name, gxe.ExpectColumnValuesToBeInSet(column=col.name,
                                                                                   value_set=col.allowed)))
        if col.min is not None or col.max is not None:
            out.append(("row", "range", col.name,
                        gxe.ExpectColumnValuesToBeBetween(column=col.name, min_value=col.min, max_value=col.max)))
    if spec.key in present:
        out.append(("row", "unique_key", spec.key, gxe.ExpectColumnValuesToBeUnique(column=spec.key)))
    for r in spec.quality.row_rules:
        if r.column not in present or (r.other_column and r.other_column not in present):
            continue
        exp = {
            "between": lambda r=r: gxe.ExpectColumnValuesToBeBetween(
                column=r.column, min_value=r.min, max_value=r.max, strict_min=r.strict, strict_max=r.strict),
            "in_set": lambda r=r: gxe.ExpectColumnValuesToBeInSet(column=r.column, value_set=r.values),
            "regex": lambda r=r: gxe.ExpectColumnValuesToMatchRegex(column=r.column, regex=r.pattern),
            "not_null": lambda r=r: gxe.ExpectColumnValuesToNotBeNull(column=r.column),
            "greater_or_equal_column": lambda r=r: gxe.ExpectColumnPairValuesAToBeGreaterThanB(
                column_A=r.column, column_B=r.other_column, or_equal=True, ignore_row_if="either_value_is_missing"),
        }[r.kind]()
        out.append(("row", r.name, r.column, exp))
    for b in spec.quality.batch_rules:
        if b.column not in present:
            continue
        if b.kind == "mean_between":
            exp = gxe.ExpectColumnMeanToBeBetween(column=b.column, min_value=b.min, max_value=b.max)
        else:
            exp = gxe.ExpectColumnValuesToNotBeNull(column=b.column, mostly=1 - (b.max or 0))
        out.append(("batch", b.name, b.column, exp))
    for e in spec.quality.expectations:
        try:
            exp = get_expectation_impl(e.type)(**e.kwargs)
        except Exception as exc:
            raise GateMisconfigured(f"quality.expectations[{e.name}]: cannot build {e.type}: {exc}") from exc
        out.append((e.level, e.name, e.kwargs.get("column"), exp))
    return out


def run_checkpoint(frame: pd.DataFrame, suite_name: str, expectations: list[Any]) -> Any:
    """Run the expectations as a GX checkpoint on an ephemeral context; returns the suite validation result."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    batch_def = (ctx.data_sources.add_pandas("crispflow").add_dataframe_asset(suite_name)
                 .add_batch_definition_whole_dataframe("batch"))
    # One add with every expectation: adding them one by one re-serialises the suite each time (quadratic).
    suite = ctx.suites.add(gx.ExpectationSuite(name=suite_name, expectations=expectations))
    vd = ctx.validation_definitions.add(gx.ValidationDefinition(name=suite_name, data=batch_def, suite=suite))
    checkpoint = ctx.checkpoints.add(gx.Checkpoint(
        name=suite_name, validation_definitions=[vd], result_format={"result_format": "COMPLETE"}))
    run = checkpoint.run(batch_parameters={"dataframe": frame})
    return next(iter(run.run_results.values()))


def _mask_pii(result: Any, pii: set[str]) -> None:
    """In place: mask the values of PII columns in a result, before anything (a failure message, the report) is
    built from it."""
    r = result.result
    if hasattr(r.get("observed_value"), "item"):  # numpy scalars break GX's HTML renderer
        r["observed_value"] = r["observed_value"].item()
    kwargs = result.expectation_config.kwargs
    if {kwargs.get("column"), kwargs.get("column_A"), kwargs.get("column_B")} & pii:
        if "partial_unexpected_list" in r:
            r["partial_unexpected_list"] = [REDACTED] * len(r["partial_unexpected_list"])
        if "partial_unexpected_counts" in r:
            r["partial_unexpected_counts"] = [{"value": REDACTED, "count": d.get("count")}
                                              for d in r["partial_unexpected_counts"]]
        if "observed_value" in r:
            r["observed_value"] = REDACTED
        r.pop("details", None)


def _drop_bulk(result: Any) -> None:
    """In place: drop the row-level bulk (the quarantine has it) once the rejections are taken from it."""
    for key in _BULKY_KEYS:
        result.result.pop(key, None)


def _describe(rule: str, column: str | None, result: Any) -> str:
    r = result.result
    if rule == "columns_match":
        details = r.get("details", {}).get("mismatched", {})
        missing, extra = details.get("missing", []), details.get("unexpected", [])
        return f"schema mismatch: missing columns {missing}, unexpected columns {extra}"
    if rule == "row_count":
        return f"the batch has {r.get('observed_value')} rows, outside the allowed range"
    if "unexpected_count" in r:
        return f"{r['unexpected_count']} of {r.get('element_count')} values break the rule"
    return f"observed {r.get('observed_value')!r}, outside the allowed range"


def validate_batch(spec: PipelineSpec, batch: pd.DataFrame, interval: Interval, batch_id: str) -> GateOutcome:
    """Dedupe, type, run the GX checkpoint, apply the gate policy. Never raises for bad data."""

    batch = batch.reset_index(drop=True)
    rejections: Rejections = new_rejections()
    failures: list[DataRejected] = []
    declared = {c.name for c in spec.columns}
    extra = [c for c in batch.columns if c not in declared and c != SOURCE_COL]
    data = batch.drop(columns=extra) if spec.gate.allow_extra_columns else batch
    dedupe(spec, data, rejections)
    try:
        typed = conform(spec, data, rejections)
    except DataRejected as exc:
        failures.append(exc)
        typed = None
    results: dict[str, Any] = {}
    html = ""
    expectation_summary: list[dict[str, Any]] = []
    failure: CrispflowError | None = None
    if typed is not None:
        present = [c for c in typed.columns if c != SOURCE_COL]
        gx_frame = typed.drop(index=list(rejections)).drop(columns=[SOURCE_COL])
        try:
            planned = _expectations(spec, present)
            for level, rule, column, exp in planned:
                exp.meta = {"crispflow": {"level": level, "rule": rule, "column": column}}
            validation = run_checkpoint(gx_frame, f"{spec.name}-{batch_id}", [p[3] for p in planned])
        except GateMisconfigured as exc:
            failure = exc
        except Exception as exc:  # GX itself crashed: an error, not a verdict on the data
            failure = GateMisconfigured(f"the GX checkpoint crashed: {type(exc).__name__}: {exc}")
        else:
            for res in validation.results:
                _mask_pii(res, set(spec.pii_columns))
            failure = _interpret(validation, rejections, failures, expectation_summary)
            for res in validation.results:
                _drop_bulk(res)
            results = validation.to_json_dict()
            html = render_html(validation)
    rows_in = len(batch)
    if not failures and failure is None:
        failures += _policy(spec, typed, rejections, rows_in, interval)
    return _outcome(spec, batch, typed, rejections, failures, failure, results, html, expectation_summary, extra)


def _interpret(validation: Any, rejections: Rejections, failures: list[DataRejected],
               summary: list[dict[str, Any]]) -> GateMisconfigured | None:
    """Turn GX results into row rejections and batch failures; an expectation that raised is a misconfiguration."""
    for res in validation.results:
        tag = (res.expectation_config.meta or {}).get("crispflow", {})
        level, rule, column = tag.get("level", "batch"), tag.get("rule", res.expectation_config.type), tag.get("column")
        info = res.exception_info or {}
        raised = info.get("raised_exception") or any(
            isinstance(v, dict) and v.get("raised_exception") for v in info.values())
        if raised:
            msg = info.get("exception_message") or next(
                (v.get("exception_message") for v in info.values() if isinstance(v, dict)), "")
            return GateMisconfigured(f"expectation {res.expectation_config.type} ({rule}, column {column!r}) "
                                     f"could not run: {msg}")
        unexpected = res.result.get("unexpected_index_list") or []
        summary.append({"rule": rule, "column": column, "level": level, "success": bool(res.success),
                        "expectation": res.expectation_config.type,
                        "unexpected_count": res.result.get("unexpected_count", 0 if res.success else None)})
        if res.success:
            continue
        if level == "batch":
            failures.append(DataRejected(rule, _describe(rule, column, res), column=column))
        else:
            for pos in unexpected:
                pos = pos if isinstance(pos, int) else int(next(iter(pos.values())))
                rejections[int(pos)].append(f"{column}:{rule}")
    return None


def _policy(spec: PipelineSpec, typed: Any, rejections: Rejections, rows_in: int,
            interval: Interval) -> list[DataRejected]:
    out = []
    limit = spec.gate.max_quarantine_fraction
    if rows_in and len(rejections) / rows_in > limit:
        top = Counter(r for rs in rejections.values() for r in rs).most_common(3)
        out.append(DataRejected("max_quarantine_fraction",
                                f"{len(rejections)} of {rows_in} rows ({len(rejections) / rows_in:.1%}) were rejected, "
                                f"the policy allows {limit:.1%}; top reasons {top}"))
    sla, tcol = spec.gate.freshness_sla_days, spec.time_column
    if sla and tcol and typed is not None and tcol in typed.columns:
        newest = typed[tcol].drop(index=list(rejections)).max()
        end = interval.end.replace(tzinfo=None)
        if newest is not None and str(newest) != "NaT":
            lag_days = (end - newest.to_pydatetime()).total_seconds() / 86400
            if lag_days > sla:
                out.append(DataRejected("freshness_sla", f"newest value {newest} is {lag_days:.1f} days before the "
                                        f"interval end {end}, the SLA is {sla} days", column=tcol))
    return out


def _outcome(spec: PipelineSpec, batch: pd.DataFrame, typed: Any, rejections: Rejections,
             failures: list[DataRejected], failure: CrispflowError | None, results: dict[str, Any], html: str,
             expectations: list[dict[str, Any]], extra: list[str]) -> GateOutcome:

    if failures and failure is None:
        failure = failures[0]  # the first in gate order; quality.json lists them all
    reasons = {pos: list(rs) for pos, rs in rejections.items()}
    if failure is not None:  # nothing is published: every row goes to quarantine, tagged with the batch reason
        tag = f"batch:{getattr(failure, 'rule', 'gate_error')}"
        reasons = {pos: [*reasons.get(pos, []), tag] for pos in range(len(batch))}
    rejected = sorted(reasons)
    quarantine = batch.iloc[rejected].astype("string").astype(object)
    quarantine.insert(0, "_reasons", [";".join(reasons[p]) for p in rejected])
    quarantine.insert(1, "_row", rejected)
    if typed is None or failure is not None:
        valid = batch.iloc[[]][[c for c in batch.columns if c != SOURCE_COL]]
    else:
        cols = [c.name for c in spec.columns]
        valid = typed.drop(index=rejected)[cols].sort_values(spec.key, kind="stable").reset_index(drop=True)
    reason_counts = Counter(r for rs in reasons.values() for r in rs)
    summary = {
        "success": failure is None,
        "rows_in": len(batch),
        "rows_passed": len(valid),
        "rows_quarantined": len(rejected),
        "reasons": dict(sorted(reason_counts.items())),
        "batch_failures": [{"rule": f.rule, "column": f.column, "message": str(f)} for f in failures],
        "error": None if failure is None or isinstance(failure, DataRejected) else str(failure),
        "expectations": expectations,
        "dropped_extra_columns": extra if spec.gate.allow_extra_columns else [],
    }
    if summary["rows_in"] != summary["rows_passed"] + summary["rows_quarantined"]:
        raise AssertionError(f"rows were lost: {summary}")  # a bug, never bad data
    return GateOutcome(valid, quarantine.reset_index(drop=True), summary, results, html, failure,
                       summary["batch_failures"])


def render_html(validation: Any) -> str:
    """The GX Data Docs page for one validation result (rendered directly: no docs site needed)."""
    from great_expectations.render.renderer import ValidationResultsPageRenderer
    from great_expectations.render.view import DefaultJinjaPageView

    return DefaultJinjaPageView().render(ValidationResultsPageRenderer().render(validation))
