"""crispflow.governance.rewrite: one file without a subject's rows, in its own format, whatever type the key has
there (an integer in clear, its text, a pseudonym); everything else comes back byte for byte."""

from __future__ import annotations

import io
import json

import pandas as pd
import pytest

from crispflow.governance.rewrite import rows_of, without_rows

NAME = "hk1:" + "a" * 32


def test_rows_of_reads_each_value_as_its_canonical_text() -> None:
    column = pd.Series([7, 7.0, "7", None, float("nan"), 70, NAME], dtype=object)
    assert rows_of(column, {"7", NAME}).tolist() == [True, True, True, False, False, False, True]


def test_jsonl_keeps_every_other_line_as_it_was() -> None:
    lines = [b'{"loan_id": 7, "x": 1}\n', b"\n", b'{"loan_id": 8}\n', b'["not", "a", "record"]\n',
             b'{"x": 2}\n', b'{"loan_id": "7"}\n']
    data = b"".join(lines)
    new, removed = without_rows(data, "jsonl", "loan_id", {"7"})
    assert removed == 2 and new == b"".join(lines[i] for i in (1, 2, 3, 4))
    assert without_rows(data, "jsonl", "loan_id", {"9"}) == (data, 0)
    assert next(json.loads(line) for line in new.splitlines() if line.strip()) == {"loan_id": 8}


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_tables_lose_only_the_subjects_rows(fmt: str) -> None:
    frame = pd.DataFrame({"loan_id": [7, 8, 7, 9], "x": ["a", "b", "c", "d"]})
    buffer = io.BytesIO()
    frame.to_csv(buffer, index=False) if fmt == "csv" else frame.to_parquet(buffer, index=False)
    new, removed = without_rows(buffer.getvalue(), fmt, "loan_id", {"7"})
    back = pd.read_csv(io.BytesIO(new)) if fmt == "csv" else pd.read_parquet(io.BytesIO(new))
    assert removed == 2 and back["loan_id"].tolist() == [8, 9] and back["x"].tolist() == ["b", "d"]
    assert without_rows(buffer.getvalue(), fmt, "other", {"7"}) == (buffer.getvalue(), 0)
