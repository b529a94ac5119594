"""`crispflow drift --reference REF --current CUR [--spec SPEC] [--format table|json] [--importance FILE]`.

REF is a stored profile (`.json`, from `build_profile`/`save_profile`) or a data file (CSV or Parquet, profiled
on the fly); CUR is a data file. With `--spec` (a pipeline name or a YAML path) the spec chooses the features and
their types, redacts PII categories and, when both files hold a fully labelled target column, adds the label
test; without it every non-datetime column of REF is a feature, typed by dtype. `--score-column` names the
model's score in both files (prediction drift): binary P(positive), regression the prediction; for a multiclass
spec it is a prefix, the probability of class C being column `<prefix>C` (batch scoring's `proba.` columns). The
spec's task decides the label and performance tests (`crispflow.monitoring.drift`). Exit codes: 0 no drift,
1 drift, 2 bad input (message on stderr naming the file, column or field) — including a CUR with fewer rows
than `--min-rows`, where no decision is possible (the report is still printed).

Without `--spec` the files are read with pyarrow (of a Parquet CUR only the profiled columns), as pandas would
read them, and pandas is never imported; a file pyarrow cannot read that way (a CSV with dates, an integer column
with gaps, a read error) goes through pandas, whose messages name the problem.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from crispflow.errors import CrispflowError

if TYPE_CHECKING:
    import pandas as pd

    from crispflow.settings import Settings
    from crispflow.spec import PipelineSpec

DATA_SUFFIXES = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
PANDAS_NA = ("", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>", "N/A",
             "NA", "NULL", "NaN", "None", "n/a", "nan", "null")  # pandas.read_csv's default missing values
PANDAS_TRUE, PANDAS_FALSE = ("True", "TRUE", "true"), ("False", "FALSE", "false")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reference", required=True, metavar="REF", help="profile (.json) or data file (CSV/Parquet)")
    parser.add_argument("--current", required=True, metavar="CUR", help="data file (CSV/Parquet)")
    parser.add_argument("--spec", metavar="SPEC", help="pipeline name or spec YAML path (features, types, target)")
    parser.add_argument("--format", choices=("table", "json"), default="table")
    parser.add_argument("--importance", metavar="FILE", help='JSON object {"feature": weight >= 0}')
    parser.add_argument("--score-column", metavar="COL", help="model score column in both files (prediction drift)")
    parser.add_argument("--html", metavar="FILE", help="also write the HTML report here")
    parser.add_argument("--alpha", type=float, default=0.01, help="false discovery rate (default 0.01)")
    parser.add_argument("--min-psi", type=float, default=0.01, help="effect-size floor (default 0.01)")
    parser.add_argument("--min-drift-share", type=float, default=0.1,
                        help="importance-weighted share of drifted features for a drift verdict (default 0.1)")
    parser.add_argument("--min-rows", type=int, default=30, help="fewer current rows: no decision (default 30)")


class BadInput(CrispflowError):
    """The CLI's inputs are unusable; the message names the file or column."""


def read_data(path: str, what: str, *, arrow: bool = False, columns: Sequence[str] | None = None) -> Any:
    """A CSV or Parquet file as a DataFrame, or with `arrow` as an Arrow Table when pyarrow reads it as pandas
    would (`read_arrow`; `columns`: only those of a Parquet file); BadInput naming `what` and the file otherwise."""
    source = Path(path)
    kind = DATA_SUFFIXES.get(source.suffix.lower())
    if kind is None:
        raise BadInput(f"{what} {source}: unsupported file type {source.suffix!r} (use .csv or .parquet)")
    if not source.is_file():
        raise BadInput(f"{what} {source}: no such file")
    table = read_arrow(source, kind, columns) if arrow else None
    if table is not None:
        return table
    import pandas as pd

    try:
        return pd.read_csv(source) if kind == "csv" else pd.read_parquet(source)
    except pd.errors.EmptyDataError:
        raise BadInput(f"{what} {source}: the file is empty (not even a header)") from None
    except Exception as exc:  # corrupt parquet, bad CSV quoting, ...: the reader's own words
        raise BadInput(f"{what} {source}: cannot read as {kind}: {type(exc).__name__}: {exc}") from None


def read_arrow(source: Path, kind: str, columns: Sequence[str] | None = None) -> Any:
    """The file as an Arrow Table whose columns hold what pandas would read (CSV: pandas' missing and boolean
    words; Parquet: without the pandas index), or None when only pandas reads it so: a read error, a CSV column
    of another type than number, boolean or text (dates, all empty), unnamed or repeated column names, an
    integer column with missing values (floats in pandas)."""
    import pyarrow as pa

    csv_types = (pa.types.is_integer, pa.types.is_floating, pa.types.is_boolean, pa.types.is_string,
                 pa.types.is_large_string)
    try:
        if kind == "csv":
            import pyarrow.csv as pcsv

            table = pcsv.read_csv(source, convert_options=pcsv.ConvertOptions(
                null_values=list(PANDAS_NA), strings_can_be_null=True, true_values=list(PANDAS_TRUE),
                false_values=list(PANDAS_FALSE)))
        else:
            import pyarrow.parquet as pq

            schema = pq.read_schema(source)
            index = {c for c in (schema.pandas_metadata or {}).get("index_columns", []) if isinstance(c, str)}
            names = [c for c in schema.names if c not in index and (columns is None or c in columns)]
            text = [c for c in names if pa.types.is_string(schema.field(c).type)
                    or pa.types.is_large_string(schema.field(c).type)]
            # strings as the file's own dictionary codes: counting them needs no hashing of every value
            # (not pq.read_table: its pyarrow.dataset imports pandas)
            table = pq.ParquetFile(source, read_dictionary=text).read(columns=names)
    except (pa.ArrowException, OSError, ValueError):
        return None
    names = table.column_names
    if len(set(names)) < len(names) or "" in names:
        return None
    for column in table.columns:
        if pa.types.is_integer(column.type) and column.null_count:
            return None
        if kind == "csv" and not any(test(column.type) for test in csv_types):
            return None
    return table


def read_spec(value: str, settings: Settings) -> PipelineSpec:
    from crispflow.spec import load_spec, load_spec_file

    path = Path(value)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return load_spec_file(path)
    return load_spec(value, settings)


def read_importance(path: str) -> dict[str, float]:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise BadInput(f"importance {path}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadInput(f"importance {path}: not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadInput(f"importance {path}: expected a JSON object of feature -> weight")
    return data


def _labels(spec: PipelineSpec | None, frame: pd.DataFrame) -> Any:
    if spec is None or spec.target.column not in frame.columns or frame[spec.target.column].isna().any():
        return None
    from crispflow.model.tasks import labels

    return labels(spec, frame)


def score_columns(spec: PipelineSpec | None, column: str) -> list[str]:
    """The file columns holding the model's output: `column`, or `<column><class>` per class for multiclass."""
    if spec is not None and spec.task == "multiclass":
        return [f"{column}{c}" for c in spec.class_labels]
    return [column]


def _scores(frame: Any, column: str | None, what: str, spec: PipelineSpec | None = None) -> Any:
    if column is None:
        return None
    from crispflow.model.reference_profile import column_names, numeric_values

    columns = score_columns(spec, column)
    present = set(column_names(frame))
    absent = [c for c in columns if c not in present]
    if absent:
        raise BadInput(f"{what}: no score column(s) {absent}")
    values = [numeric_values(frame[c]) for c in columns]
    return np.column_stack(values) if len(columns) > 1 else values[0]


def compare(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    """The drift report for the parsed arguments (BadInput / DriftInputError / SpecError on bad input)."""
    from crispflow.model.reference_profile import build_profile, column_names, is_arrow, load_profile
    from crispflow.monitoring.drift import DriftSettings, compute_drift

    spec = read_spec(args.spec, settings) if args.spec else None
    drift_settings = DriftSettings(alpha=args.alpha, min_psi=args.min_psi, min_drift_share=args.min_drift_share,
                                   min_rows=args.min_rows)
    arrow = spec is None  # a spec's labels and types are read through pandas (crispflow.model.tasks)
    scored = score_columns(spec, args.score_column) if args.score_column else []
    if Path(args.reference).suffix.lower() == ".json":
        profile = load_profile(args.reference)
    else:
        ref = read_data(args.reference, "reference", arrow=arrow)
        if args.score_column:  # the score is the model's output, not a feature
            ref_scores = _scores(ref, args.score_column, f"reference {args.reference}", spec)
            ref = ref.drop_columns(scored) if is_arrow(ref) else ref.drop(columns=scored)
        else:
            ref_scores = None
        if spec is None and not column_names(ref):
            raise BadInput(f"reference {args.reference}: no columns")
        profile = build_profile(spec, ref, scores=ref_scores, labels=_labels(spec, ref))
    cur = read_data(args.current, "current", arrow=arrow, columns=[*profile["features"], *scored])
    importance = read_importance(args.importance) if args.importance else None
    present = set(column_names(cur))
    missing = [c for c in profile["features"] if c not in present]
    if missing and len(cur):
        raise BadInput(f"current {args.current}: missing column(s) {missing} (present in the reference)")
    return compute_drift(profile, cur, scores=_scores(cur, args.score_column, f"current {args.current}", spec),
                         labels=_labels(spec, cur) if profile.get("label") else None,
                         importance=importance, settings=drift_settings)


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Print the report; 0 no drift, 1 drift, 2 bad input or too few rows to decide."""
    from crispflow.monitoring.report import render_html, render_json, render_table

    try:
        report = compare(args, settings)
    except (CrispflowError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(render_json(report) if args.format == "json" else render_table(report))
    if args.html:
        Path(args.html).write_text(render_html(report, title=f"Drift: {Path(args.current).name}"))
    if report["status"] == "insufficient_data":
        rows = report["rows"]
        print(f"error: current {args.current}: {rows} rows (need >= {args.min_rows}), or no feature could be "
              "tested: no decision", file=sys.stderr)
        return 2
    return 1 if report["drift"] else 0

