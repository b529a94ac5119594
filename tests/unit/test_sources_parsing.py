"""Corrupt, truncated, empty and header-only inputs; interval selection; run params; HTTP origin rule."""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from datetime import UTC, datetime

import pandas as pd
import pytest

from crispflow.data.extracts import assemble
from crispflow.data.sources import Extract, Fetch, Interval, origin, parse_bytes, read_http, same_origin
from crispflow.errors import ParamsError, SourceError
from crispflow.run_requests import reject_unknown, resolve_interval
from crispflow.spec import HttpSource, load_spec

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


# --- HTTP: only the connection's origin is requested --------------------------------------------------------------

BASE = "https://api.example.com/v1"
JAN = Interval(datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 2, 1, tzinfo=UTC))


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://api.example.com/v1/loans?page=2", "https://api.example.com:443"),
        ("HTTPS://API.Example.com:443/x", "https://api.example.com:443"),
        ("http://user:secret@127.0.0.1:8080/x?token=t", "http://127.0.0.1:8080"),
        ("http://[::1]/x", "http://[::1]:80"),
        ("/loans?page=2", ""),  # relative: no origin of its own
        ("ftp://files.example.com/x", ""),  # no default port: not an origin we compare
        ("http://127.0.0.1:notaport/x", ""),
    ],
)
def test_origin_is_scheme_host_and_port_only(url: str, expected: str) -> None:
    assert origin(url) == expected


@pytest.mark.parametrize(
    "url",
    [
        "https://api.example.com/v2/anything?x=1",  # another path: same origin
        "https://api.example.com:443/v1/loans",  # the default port spelt out
        "https://API.EXAMPLE.COM/v1/loans",
    ],
)
def test_same_origin_urls_are_allowed(url: str) -> None:
    assert same_origin("loans_api", url, BASE, "next_path 'next'") == url


@pytest.mark.parametrize(
    "url",
    [
        "http://api.example.com/v1/loans",  # another scheme
        "https://api.example.com:8443/v1/loans",  # another port
        "https://evil.example/v1/loans",  # another host
        "https://api.example.com.evil.example/v1/loans",  # a look-alike host
        "https://api.example.com@evil.example/v1/loans",  # userinfo that looks like the host
        "file:///etc/passwd",
    ],
)
def test_other_origins_are_a_non_retryable_error_naming_the_field_and_rule(url: str) -> None:
    with pytest.raises(SourceError, match=r"source 'loans_api': next_path 'next' points to .*, not the connection's "
                                          r"origin https://api\.example\.com:443 \[rule: only relative or same-origin"
                       ) as err:
        same_origin("loans_api", url + "?token=SECRET", BASE, "next_path 'next'")
    assert not err.value.retryable
    assert "SECRET" not in str(err.value) and "/v1/loans" not in str(err.value) and "passwd" not in str(err.value)


def serve(bodies: Mapping[str, bytes], requested: list[str]) -> Fetch:
    """An in-memory API (URL -> body) that records every URL requested, in order."""

    def fetch(url: str, params: Mapping[str, str]) -> tuple[bytes, Mapping[str, str]]:
        requested.append(url)
        return bodies[url], {}

    return fetch


def test_next_links_resolve_against_the_current_page_and_stay_on_the_origin() -> None:
    bodies = {
        f"{BASE}/loans": {"data": [{"id": 1}], "next": "loans?page=2"},  # path-relative
        f"{BASE}/loans?page=2": {"data": [{"id": 2}], "next": "/v1/loans?page=3"},  # host-relative
        f"{BASE}/loans?page=3": {"data": [{"id": 3}], "next": "https://api.example.com:443/v1/loans?page=4"},
        "https://api.example.com:443/v1/loans?page=4": {"data": [{"id": 4}], "next": None},
    }
    requested: list[str] = []
    spec = HttpSource(name="loans_api", kind="http", conn_id="api", endpoint="loans", records_path="data",
                      next_path="next")

    ex = read_http(spec, serve({u: json.dumps(d).encode() for u, d in bodies.items()}, requested), JAN, BASE)

    assert requested == list(bodies) and ex.frame["id"].tolist() == [1, 2, 3, 4]


@pytest.mark.parametrize("link", ["https://evil.example/v1/loans?page=2&key=SECRET", "//evil.example/loans",
                                  "http://api.example.com/v1/loans?page=2"])
def test_a_next_link_to_another_origin_is_never_requested(link: str) -> None:
    requested: list[str] = []
    spec = HttpSource(name="loans_api", kind="http", conn_id="api", endpoint="/loans", records_path="data",
                      next_path="page.next")
    first = {f"{BASE}/loans": json.dumps({"data": [{"id": 1}], "page": {"next": link}}).encode()}

    with pytest.raises(SourceError, match=r"next_path 'page\.next' points to .*\[rule: only relative or same-origin"
                       ) as err:
        read_http(spec, serve(first, requested), JAN, BASE)

    assert requested == [f"{BASE}/loans"] and not err.value.retryable and "SECRET" not in str(err.value)


def test_an_absolute_endpoint_on_another_origin_is_refused_and_a_non_url_next_is_an_error() -> None:
    requested: list[str] = []
    away = HttpSource(name="loans_api", kind="http", conn_id="api", endpoint="https://evil.example/loans")
    with pytest.raises(SourceError, match=r"endpoint 'https://evil\.example/loans' points to https://evil\.example:443"):
        read_http(away, serve({}, requested), JAN, BASE)
    assert requested == []

    spec = HttpSource(name="loans_api", kind="http", conn_id="api", endpoint="/loans", records_path="data",
                      next_path="next")
    with pytest.raises(SourceError, match=r"next_path 'next' holds a int, not a URL"):
        read_http(spec, serve({f"{BASE}/loans": b'{"data": [], "next": 2}'}, requested), JAN, BASE)
