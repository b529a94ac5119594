"""Synthetic model input: rows made of a training frame's medians and modes, never a real row.

The explainer's probe rows (crispflow.model.explain) and the input example logged with every model version
(crispflow.model.registry) come from here, so no subject's data travels inside a model artifact. A PII column
never contributes a training value: it is missing (numbers, timestamps) or the unseen category (text).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

    from crispflow.model.features import FrameTyper
    from crispflow.spec import PipelineSpec

UNSEEN = "__unseen__"


def _median(values: np.ndarray) -> float | None:
    finite = values[~np.isnan(values)]
    return float(np.median(finite)) if finite.size else None


def _mode(values: np.ndarray) -> str | None:
    import pandas as pd

    present = pd.Series(values[[isinstance(v, str) for v in values]], dtype=object)
    if present.empty:
        return None
    counts = present.value_counts()
    return str(min(counts.index[counts == counts.max()]))  # ties: the smallest, for determinism


def typical_row(typer: FrameTyper, frame: pd.DataFrame, features: list[str], pii: set[str]) -> dict[str, Any]:
    """Numeric medians, text modes and median timestamps of `frame` (JSON values); PII columns missing / unseen."""
    from crispflow.data.extracts import to_utc_naive

    typed = typer.transform(frame)
    base: dict[str, Any] = {}
    for col in typer.numeric:
        base[col] = None if col in pii else _median(typed[col].to_numpy(dtype="float64"))
    for col in typer.text:
        base[col] = UNSEEN if col in pii else _mode(typed[col].to_numpy(dtype=object))
    for col in typer.datetime:
        when = to_utc_naive(frame[col]).dropna()
        base[col] = None if col in pii or when.empty else when.sort_values().iloc[len(when) // 2].isoformat()
    return {col: base[col] for col in features}


def probe_rows(typer: FrameTyper, frame: pd.DataFrame, features: list[str], pii: set[str]) -> list[dict[str, Any]]:
    """The typical row, then one row per numeric or datetime column with it missing, one per text column with an
    unseen category, and one with everything missing."""
    base = typical_row(typer, frame, features, pii)
    rows = [base]
    rows += [{**base, col: None} for col in (*typer.numeric, *typer.datetime)]
    rows += [{**base, col: UNSEEN} for col in typer.text]
    rows.append(dict.fromkeys(base))
    return rows


def rows_frame(typer: FrameTyper, features: list[str], rows: Sequence[Mapping[str, Any]],
               what: str = "rows") -> pd.DataFrame:
    """JSON rows as a frame with the dtypes the data phase publishes; ValueError naming `what` otherwise."""
    if not isinstance(rows, Sequence) or not rows:
        raise ValueError(f"{what}: must be a non-empty list of rows")
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping) or set(row) != set(features):
            got = sorted(row) if isinstance(row, Mapping) else type(row).__name__
            raise ValueError(f"{what}[{i}]: must have exactly the features {features}, got {got}")
    import pandas as pd

    data: dict[str, Any] = {}
    try:
        for col in features:
            values = [row[col] for row in rows]
            if col in typer.numeric:
                data[col] = np.array([np.nan if v is None else float(v) for v in values], dtype="float64")
            elif col in typer.datetime:
                data[col] = pd.to_datetime(pd.Series(values, dtype=object), format="ISO8601")
            else:
                if any(v is not None and not isinstance(v, str) for v in values):
                    raise TypeError(f"text column {col!r} holds a non-string value")
                data[col] = pd.Series(values, dtype=object)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what}: rows cannot be read as model input: {exc}") from None
    return pd.DataFrame(data)


def input_example(spec: PipelineSpec, frame: pd.DataFrame) -> pd.DataFrame:
    """One synthetic row of the spec's features with `frame`'s own dtypes (so the model signature is the one real
    rows give): the typical row, integers rounded, a PII integer column missing (as float)."""
    import pandas as pd

    from crispflow.model.features import FrameTyper, column_groups

    features = list(spec.feature_columns)
    typer = FrameTyper(**column_groups(spec))
    row = typical_row(typer, frame[features], features, set(spec.pii_columns))
    synthetic = rows_frame(typer, features, [row], what="input example")
    out: dict[str, Any] = {}
    for col in features:
        dtype, value = frame[col].dtype, synthetic[col]
        if pd.api.types.is_integer_dtype(dtype) and value.notna().all():
            value = value.round()
        try:
            out[col] = value.astype(dtype)
        except (TypeError, ValueError):  # a missing value in an integer column: float NaN
            out[col] = value
    return pd.DataFrame(out)
