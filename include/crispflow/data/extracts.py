"""From extracts to one batch, and from a batch to typed columns: assembly, reconciliation, dedup, parsing.

Every row that is not published is accounted for: rows outside the run's interval belong to other runs (and stay
in the raw zone); rows of the batch either pass or are rejected with reason codes `<column>:<rule>`.
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING, Any

from crispflow.errors import DataRejected

if TYPE_CHECKING:
    import pandas as pd

    from crispflow.data.sources import Extract, Interval
    from crispflow.spec import PipelineSpec

SOURCE_COL = "_source"
Rejections = dict[int, list[str]]  # batch row position -> reason codes


def to_utc_naive(series: pd.Series) -> pd.Series:
    """Any date-like column as naive UTC datetimes; unparseable values become NaT."""
    import pandas as pd

    return pd.to_datetime(series, errors="coerce", utc=True, format="ISO8601").dt.tz_localize(None)


def assemble(spec: PipelineSpec, extracts: list[Extract], interval: Interval) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Union the sources (in spec order = priority), keep the rows of this interval, reconcile.

    Rows whose time value is missing or unparseable stay in the batch: the gate quarantines them.
    """
    import pandas as pd

    start = interval.start.replace(tzinfo=None)
    end = interval.end.replace(tzinfo=None)
    frames, per_source = [], []
    for ex in extracts:
        frame = ex.frame
        info: dict[str, Any] = {"source": ex.source, "rows_read": len(frame), "fingerprint": ex.fingerprint}
        if spec.time_column and spec.time_column in frame.columns:
            t = to_utc_naive(frame[spec.time_column])
            frame = frame[t.isna() | ((t >= start) & (t < end))]
            newest = t[(t >= start) & (t < end)].max()
            info["newest_time"] = None if pd.isna(newest) else newest.isoformat()
        info["rows_in_interval"] = len(frame)
        frames.append(frame.assign(**{SOURCE_COL: ex.source}))
        per_source.append(info)
    batch = pd.concat(frames, ignore_index=True, sort=False) if frames else pd.DataFrame()
    report = {"interval": interval.to_json(), "sources": per_source, "rows_in": len(batch)}
    report.update(_overlap(spec.key, batch))
    return parquet_safe(batch), report


def _overlap(key: str, batch: pd.DataFrame) -> dict[str, Any]:
    if key not in batch.columns or batch.empty:
        return {"duplicate_key_rows": 0, "keys_in_several_sources": 0}
    keys = batch[key].astype(str)
    sources_per_key = batch.groupby(keys, sort=False)[SOURCE_COL].nunique()
    return {
        "duplicate_key_rows": int(keys.duplicated().sum()),
        "keys_in_several_sources": int((sources_per_key > 1).sum()),
    }


def parquet_safe(frame: pd.DataFrame) -> pd.DataFrame:
    """Columns holding mixed Python types (e.g. from JSON) become text so the batch can be staged as parquet."""
    import pandas as pd

    out = frame.copy()
    for col in out.columns:
        if out[col].dtype == object:
            out[col] = out[col].map(lambda v: v if v is None or (not isinstance(v, str) and pd.isna(v)) else str(v))
    return out


def dedupe(spec: PipelineSpec, batch: pd.DataFrame, rejections: Rejections) -> None:
    """Keep the first row of each key (sources in spec order); later ones are rejected as duplicates."""
    if spec.key not in batch.columns:
        return
    for pos in batch.index[batch[spec.key].notna() & batch[spec.key].astype(str).duplicated()]:
        rejections[int(pos)].append(f"{spec.key}:duplicate_key")


def _parse(series: pd.Series, ctype: str) -> tuple[pd.Series, pd.Series]:
    """(typed series, mask of values present but not of the type). Non-finite numbers count as not numbers."""
    import numpy as np
    import pandas as pd

    present = series.notna()
    if ctype in ("int", "float"):
        num = pd.to_numeric(series, errors="coerce").astype("float64")
        bad = present & (num.isna() | ~np.isfinite(num.fillna(0)))
        if ctype == "int":
            bad |= present & ~bad & (num.fillna(0) % 1 != 0)
            return num.where(~bad).astype("Int64"), bad
        return num.where(~bad), bad
    if ctype == "bool":
        table = {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False}
        mapped = series.map(lambda v: table.get(str(v).strip().lower()) if pd.notna(v) else None)
        return mapped.astype("boolean"), present & mapped.isna()
    if ctype == "datetime":
        parsed = to_utc_naive(series)
        return parsed, present & parsed.isna()
    text = series.map(lambda v: str(v) if pd.notna(v) else None).astype(object)
    return text, present & False


def conform(spec: PipelineSpec, batch: pd.DataFrame, rejections: Rejections) -> pd.DataFrame:
    """Type every declared column that is present. A column mostly of the wrong type is a retyped column:
    the batch fails naming it; isolated bad values reject their rows with reason `<column>:type`."""
    typed = batch.copy()
    for col in spec.columns:
        if col.name not in batch.columns:
            continue  # the gate's schema expectation reports missing columns
        typed[col.name], bad = _parse(batch[col.name], col.type)
        n_bad, n_present = int(bad.sum()), int(batch[col.name].notna().sum())
        if n_bad and n_bad * 2 >= n_present:
            found = batch[col.name].dtype
            msg = f"expected {col.type} values, but {n_bad} of {n_present} are not (found dtype {found})"
            raise DataRejected("type", msg, column=col.name)
        for pos in batch.index[bad]:
            rejections[int(pos)].append(f"{col.name}:type")
    return typed


def new_rejections() -> Rejections:
    return defaultdict(list)
