"""Corrupt, truncated, empty and header-only inputs; interval selection; run params."""

from __future__ import annotations

import io
from datetime import UTC, datetime

import pandas as pd
import pytest

from crispflow.data.extracts import assemble
from crispflow.data.sources import Extract, Interval, parse_bytes
from crispflow.errors import ParamsError, SourceError
from crispflow.run_requests import reject_unknown, resolve_interval
from crispflow.spec import load_spec

PARQUET = open("include/data/lending_club.parquet", "rb").read()  # noqa: SIM115


def test_parquet_round_trip() -> None:
    assert len(parse_bytes("loans", PARQUET, "parquet")) == 9857


@pytest.mark.parametrize(
    ("data", "fmt", "message"),
    [
        (b"", "parquet", "empty (0 bytes)"),
        (b"", "csv", "empty (0 bytes)"),
        (PARQUET[: len(PARQUET) // 2], "parquet", "cannot parse as parquet"),  # truncated
        (b"PAR1" + b"\x00garbage" * 10, "parquet", "cannot parse as parquet"),  # corrupt
        (b'{"a": 1}\n{"a": ', "jsonl", "cannot parse as jsonl"),
    ],
)
def test_unreadable_files_are_non_retryable_source_errors(data: bytes, fmt: str, message: str) -> None:
    with pytest.raises(SourceError) as err:
        parse_bytes("loans", data, fmt)
    assert message in str(err.value) and "source 'loans'" in str(err.value)
    assert not err.value.retryable


def test_header_only_csv_is_an_empty_frame() -> None:
    frame = parse_bytes("loans", b"loan_id,funded_amnt\n", "csv")
    assert list(frame.columns) == ["loan_id", "funded_amnt"] and frame.empty


def test_assemble_keeps_the_interval_and_rows_without_time() -> None:
    spec = load_spec("lending_club")
    raw = pd.read_parquet(io.BytesIO(PARQUET))
    raw.loc[0, "application_month"] = pd.NaT  # no time: kept, for the gate to quarantine
    interval = Interval(datetime(2026, 3, 1), datetime(2026, 4, 1))
    batch, report = assemble(spec, [Extract("loans", raw, b"", "parquet", {})], interval)
    months = batch["application_month"].dropna().dt.month.unique().tolist()
    assert months == [3] and batch["application_month"].isna().sum() == 1
    assert report["sources"][0]["rows_read"] == 9857
    assert report["sources"][0]["rows_in_interval"] == report["rows_in"] == len(batch)
    assert report["sources"][0]["newest_time"].startswith("2026-03-01")


def test_interval_resolution() -> None:
    start, end = datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 2, 1, tzinfo=UTC)
    assert resolve_interval(None, None, start, end) == Interval(start, end)
    assert resolve_interval("2026-05-01", "2026-06-01", start, end).start == datetime(2026, 5, 1, tzinfo=UTC)
    for args, msg in [
        (("2026-05-01", None, start, end), "give both dates or neither"),
        (("2026-13-01", "2026-06-01", start, end), "start: '2026-13-01' is not a date"),
        (("2026-06-01", "2026-05-01", start, end), "must be before end"),
        ((None, None, None, None), "has no data interval"),
    ]:
        with pytest.raises(ParamsError, match=msg):
            resolve_interval(*args)


def test_unknown_conf_is_rejected() -> None:
    reject_unknown({"pipeline": "x"}, {"pipeline", "start"})
    with pytest.raises(ParamsError, match=r"unknown field\(s\) \['pipline'\]"):
        reject_unknown({"pipline": "x"}, {"pipeline", "start"})
