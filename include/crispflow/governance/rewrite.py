"""Rewrite one file without a subject's rows: the destructive step of an erasure, and of staging a source that
still holds a suppressed subject. The file keeps its format; Parquet keeps its schema."""

from __future__ import annotations

import io
import json
from collections.abc import Collection
from typing import TYPE_CHECKING

from crispflow.governance.pseudonyms import canonical_text
from crispflow.lake import ROW_GROUP_ROWS

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd


def without_rows(data: bytes, fmt: str, column: str, values: Collection[str]) -> tuple[bytes, int]:
    """(`data` without the rows whose `column` reads as one of `values` (`canonical_text`), rows removed). The
    bytes come back unchanged when no row matches or the file has no such column."""
    if fmt == "parquet":
        return _parquet(data, column, values)
    if fmt == "jsonl":
        return _jsonl(data, column, values)
    if fmt == "csv":
        return _csv(data, column, values)
    raise ValueError(f"cannot rewrite a {fmt!r} file (parquet, csv or jsonl)")


def rows_of(column: pd.Series, values: Collection[str]) -> np.ndarray:
    """Which rows of `column` read as one of `values` (`canonical_text`: a clear key of any type, or a pseudonym);
    each distinct value is read once, a missing one never matches."""
    import numpy as np
    import pandas as pd

    codes, uniques = pd.factorize(column, use_na_sentinel=True)
    hit = np.array([canonical_text(u) in values for u in uniques] + [False], dtype=bool)
    return hit[codes]  # the sentinel -1 picks the trailing False


def _parquet(data: bytes, column: str, values: Collection[str]) -> tuple[bytes, int]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(io.BytesIO(data))
    if column not in table.column_names or pa.types.is_null(table.schema.field(column).type):
        return data, 0
    hit = rows_of(table.column(column).to_pandas(), values)
    removed = int(hit.sum())
    if not removed:
        return data, 0
    out = io.BytesIO()  # written as the lake writes Parquet, so row-group statistics still locate keys
    pq.write_table(table.filter(pa.array(~hit)), out, compression="zstd", row_group_size=ROW_GROUP_ROWS)
    return out.getvalue(), removed


def _jsonl(data: bytes, column: str, values: Collection[str]) -> tuple[bytes, int]:
    import pandas as pd

    lines = data.splitlines(keepends=True)
    records = [json.loads(line) if line.strip() else None for line in lines]
    keys = pd.Series([r.get(column) if isinstance(r, dict) else None for r in records], dtype=object)
    hit = rows_of(keys, values)
    removed = int(hit.sum())
    return (b"".join(line for line, h in zip(lines, hit, strict=True) if not h), removed) if removed else (data, 0)


def _csv(data: bytes, column: str, values: Collection[str]) -> tuple[bytes, int]:
    """Every cell read and written back as its text (no type guessing), so the kept rows keep their values."""
    import pandas as pd

    frame = pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False)
    if column not in frame.columns:
        return data, 0
    hit = rows_of(frame[column], values)
    removed = int(hit.sum())
    if not removed:
        return data, 0
    return frame[~hit].to_csv(index=False).encode(), removed
