"""Sources through the Airflow hooks against real services: S3 (moto), PostgreSQL and an HTTP JSON API.

No mocks: every read goes through an Airflow connection given as `AIRFLOW_CONN_<ID>` and a server on loopback
(tests/support/servers.py). The interval is March-April 2026 of the demo data (1,677 of 9,857 loans).
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pandas as pd
import pytest
import yaml
from support.keys import session_keys
from support.servers import LOOPBACK, JsonHttpServer, MotoS3, Reply, Request, Route, ScratchDatabase, run_http_server

from crispflow.data.datasets import load_batch, load_version, publish, read_manifest, stage, store_outcome
from crispflow.data.extracts import SOURCE_COL, assemble, conform, new_rejections
from crispflow.data.quality import validate_batch
from crispflow.data.sources import Interval
from crispflow.errors import SourceError
from crispflow.lake import frame_digest
from crispflow.spec import PipelineSpec, parse_spec
from crispflow_airflow.hooks.lake import LakeHook
from crispflow_airflow.hooks.sources import extract

pytest_plugins = ["support.servers"]
pytestmark = pytest.mark.slow  # every test here talks to a server started for it

ROOT = Path(__file__).resolve().parents[2]
DEMO_SPEC = ROOT / "include" / "pipelines" / "lending_club.yaml"
DEMO_DATA = ROOT / "include" / "data" / "lending_club.parquet"
INTERVAL = Interval(datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 5, 1, tzinfo=UTC))
INTERVAL_ROWS = 1677  # loans of March + April 2026 in the demo data
BUCKET = "bucket"
PARQUET_KEY = "raw/lending_club.parquet"
CSV_KEY = "raw/lending_club.csv"
S3_CONN, PG_CONN, HTTP_CONN = "crispflow_s3", "crispflow_pg", "crispflow_http"
SQL_QUERY = "SELECT * FROM loans WHERE application_month >= :start AND application_month < :end"
PAGE_SIZE = 500


# --- helpers -----------------------------------------------------------------------------------------------------


def spec_with(*sources: dict[str, Any]) -> PipelineSpec:
    """The demo spec with its sources replaced."""
    data = yaml.safe_load(DEMO_SPEC.read_text())
    data["sources"] = list(sources)
    return parse_spec(data, str(DEMO_SPEC))


def demo_frame() -> pd.DataFrame:
    return pd.read_parquet(DEMO_DATA)


def in_interval(frame: pd.DataFrame, interval: Interval = INTERVAL) -> pd.DataFrame:
    """The rows of [start, end), by pandas alone, sorted by key: what every source should yield."""
    t = frame["application_month"]
    rows = frame[(t >= interval.start.replace(tzinfo=None)) & (t < interval.end.replace(tzinfo=None))]
    return rows.sort_values("loan_id").reset_index(drop=True)


def by_key(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values("loan_id").reset_index(drop=True)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_source(url: str, fmt: str = "parquet", name: str = "loans") -> dict[str, Any]:
    return {"name": name, "kind": "file", "url": url, "format": fmt, "conn_id": S3_CONN}


def http_source(endpoint: str = "/loans", name: str = "loans_api", **extra: Any) -> dict[str, Any]:
    return {"name": name, "kind": "http", "conn_id": HTTP_CONN, "endpoint": endpoint, "records_path": "data",
            "next_path": "next", **extra}


def records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as a JSON API would send them (ISO dates)."""
    return json.loads(frame.to_json(orient="records", date_format="iso"))


def paginated_loans(server: JsonHttpServer, frame: pd.DataFrame, relative_next: bool = False) -> Route:
    """A route serving `frame`'s rows of the `start`/`end` query interval, PAGE_SIZE per page, with next links."""

    def handle(req: Request) -> Reply:
        start = datetime.fromisoformat(req.query["start"])  # KeyError -> 599: the next link lost the interval
        end = datetime.fromisoformat(req.query["end"])
        rows = in_interval(frame, Interval(start, end))
        page = int(req.query.get("page", "1"))
        chunk = rows.iloc[(page - 1) * PAGE_SIZE: page * PAGE_SIZE]
        link = None
        if page * PAGE_SIZE < len(rows):
            query = urlencode({"page": page + 1, "start": req.query["start"], "end": req.query["end"]})
            link = f"/loans?{query}" if relative_next else server.url(f"/loans?{query}")
        return Reply.of_json({"data": records(chunk), "next": link})

    return handle


# --- fixtures ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def s3(moto_s3: MotoS3) -> MotoS3:
    """The bucket with the demo data as Parquet and as CSV."""
    client = moto_s3.client()
    if BUCKET not in {b["Name"] for b in client.list_buckets()["Buckets"]}:
        client.create_bucket(Bucket=BUCKET)
    client.put_object(Bucket=BUCKET, Key=PARQUET_KEY, Body=DEMO_DATA.read_bytes())
    client.put_object(Bucket=BUCKET, Key=CSV_KEY, Body=demo_frame().to_csv(index=False).encode())
    return moto_s3


@pytest.fixture
def s3_conn(s3: MotoS3, monkeypatch: pytest.MonkeyPatch) -> MotoS3:
    """The `crispflow_s3` aws connection, pointing at moto."""
    monkeypatch.setenv(f"AIRFLOW_CONN_{S3_CONN.upper()}", s3.aws_conn())
    return s3


@pytest.fixture(scope="module")
def loans_db(postgres_db: ScratchDatabase) -> ScratchDatabase:
    """A scratch database with the demo data in table `loans`."""
    from sqlalchemy import create_engine

    engine = create_engine(postgres_db.sqlalchemy_url)
    try:
        demo_frame().to_sql("loans", engine, index=False)
    finally:
        engine.dispose()
    return postgres_db


@pytest.fixture
def pg_conn(loans_db: ScratchDatabase, monkeypatch: pytest.MonkeyPatch) -> ScratchDatabase:
    """The `crispflow_pg` postgres connection to the scratch database."""
    monkeypatch.setenv(f"AIRFLOW_CONN_{PG_CONN.upper()}", loans_db.postgres_conn())
    return loans_db


@pytest.fixture
def api(http_json_server: JsonHttpServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[JsonHttpServer]:
    """The loopback server behind the `crispflow_http` connection (routes are added by each test)."""
    monkeypatch.setenv(f"AIRFLOW_CONN_{HTTP_CONN.upper()}", http_json_server.http_conn())
    yield http_json_server


@pytest.fixture
def elsewhere() -> Iterator[JsonHttpServer]:
    """A second loopback server, on another port: another origin, which must never see the connection's secrets."""
    with run_http_server() as server:
        server.route("/loans", lambda req: Reply.of_json({"data": [], "next": None}))
        yield server


@pytest.fixture
def secret_api(http_json_server: JsonHttpServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[JsonHttpServer]:
    """The `crispflow_http` connection with credentials: basic auth and an API-key header from its extra."""
    conn = {"conn_type": "http", "host": LOOPBACK, "port": http_json_server.port, "schema": "http",
            "login": "svc", "password": "s3cret-pw", "extra": {"X-Api-Key": "s3cret-key"}}
    monkeypatch.setenv(f"AIRFLOW_CONN_{HTTP_CONN.upper()}", json.dumps(conn))
    yield http_json_server


def carries_credentials(req: Request) -> bool:
    return req.headers.get("X-Api-Key") == "s3cret-key" and req.headers.get("Authorization", "").startswith("Basic ")


# --- S3 ----------------------------------------------------------------------------------------------------------


def test_s3_parquet_is_read_with_sha256_and_etag(s3_conn: MotoS3) -> None:
    spec = spec_with(file_source(f"s3://{BUCKET}/{PARQUET_KEY}"))
    data = DEMO_DATA.read_bytes()

    ex = extract(spec.sources[0], INTERVAL)

    pd.testing.assert_frame_equal(ex.frame, demo_frame())
    assert ex.raw == data and ex.raw_ext == "parquet"
    head = s3_conn.client().head_object(Bucket=BUCKET, Key=PARQUET_KEY)
    fp = ex.fingerprint
    assert fp["kind"] == "file" and fp["url"] == f"s3://{BUCKET}/{PARQUET_KEY}"
    assert fp["sha256"] == sha256(data) and fp["bytes"] == len(data)
    assert fp["etag"] == head["ETag"].strip('"') == hashlib.md5(data).hexdigest()  # single-part upload
    assert datetime.fromisoformat(fp["modified"]) == head["LastModified"]


def test_s3_csv_is_read_and_its_interval_assembled(s3_conn: MotoS3) -> None:
    spec = spec_with(file_source(f"s3://{BUCKET}/{CSV_KEY}", fmt="csv"))
    data = s3_conn.client().get_object(Bucket=BUCKET, Key=CSV_KEY)["Body"].read()

    ex = extract(spec.sources[0], INTERVAL)
    batch, report = assemble(spec, [ex], INTERVAL)

    assert ex.raw_ext == "csv" and ex.fingerprint["sha256"] == sha256(data)
    assert ex.fingerprint["etag"] == hashlib.md5(data).hexdigest()
    assert len(ex.frame) == 9857 and ex.frame["loan_id"].tolist() == demo_frame()["loan_id"].tolist()
    assert report["rows_in"] == INTERVAL_ROWS and report["sources"][0]["rows_read"] == 9857
    assert sorted(batch["loan_id"]) == in_interval(demo_frame())["loan_id"].tolist()


def test_s3_missing_key_is_a_non_retryable_source_error(s3_conn: MotoS3) -> None:
    spec = spec_with(file_source(f"s3://{BUCKET}/raw/missing.parquet", name="absent"))

    with pytest.raises(SourceError, match=r"source 'absent': no file at s3://bucket/raw/missing\.parquet") as info:
        extract(spec.sources[0], INTERVAL)

    assert info.value.retryable is False and info.value.source == "absent"


def test_lake_on_s3_stages_validates_and_publishes_once(s3_conn: MotoS3) -> None:
    spec = spec_with(file_source(f"s3://{BUCKET}/{PARQUET_KEY}"))
    lake = LakeHook(url=f"s3://{BUCKET}/lake", conn_id=S3_CONN).get_lake()
    ex = extract(spec.sources[0], INTERVAL)

    batch, report = assemble(spec, [ex], INTERVAL)
    ingest = stage(lake, spec, INTERVAL, [ex], batch, report)
    staged, ingest_back = load_batch(lake, spec.name, ingest["batch_id"])
    outcome = validate_batch(spec, staged, Interval.from_json(ingest_back["interval"]), ingest["batch_id"])
    summary = store_outcome(lake, spec, ingest["batch_id"], outcome, session_keys())
    first = publish(lake, spec, ingest["batch_id"], {"dag_id": "test", "run_id": "run-1"})
    again = publish(lake, spec, ingest["batch_id"], {"dag_id": "test", "run_id": "run-2"})

    assert outcome.failure is None and summary["success"]
    assert summary["rows_in"] == INTERVAL_ROWS == summary["rows_passed"] + summary["rows_quarantined"]
    assert first.created and not again.created and again.version_id == first.version_id
    assert again.manifest["published_by"]["run_id"] == "run-1"
    manifest = read_manifest(lake, first.version_id)  # found by listing curated/ on S3
    assert manifest == read_manifest(lake, first.version_id, spec.name) == first.manifest
    assert manifest["rows"] == {"in": INTERVAL_ROWS, "published": summary["rows_passed"],
                                "quarantined": summary["rows_quarantined"]}
    assert manifest["sources"][0]["fingerprint"]["etag"] == ex.fingerprint["etag"]
    published = load_version(lake, first.version_id)  # checks the content hash
    pseudonyms = session_keys()  # stored as keyed pseudonyms, sorted by them
    assert published["loan_id"].tolist() == sorted(pseudonyms.pseudonym(str(k)) for k in outcome.valid["loan_id"])
    keys = {o["Key"] for o in s3_conn.client().list_objects_v2(Bucket=BUCKET, Prefix="lake/")["Contents"]}
    assert f"lake/{ingest['sources'][0]['raw']}" == f"lake/raw/{spec.name}/{sha256(ex.raw)}.parquet"
    assert {f"lake/{ingest['sources'][0]['raw']}", f"lake/{manifest['files']['data']}",
            f"lake/curated/{spec.name}/{first.version_id}/manifest.json",
            f"lake/{manifest['files']['quarantine']}"} <= keys
    assert not [k for k in keys if "/." in k and k.endswith(".tmp")]  # no temporary file left behind


# --- PostgreSQL --------------------------------------------------------------------------------------------------


def test_sql_reads_only_the_interval(pg_conn: ScratchDatabase) -> None:
    spec = spec_with({"name": "pg_loans", "kind": "sql", "conn_id": PG_CONN, "query": SQL_QUERY})

    ex = extract(spec.sources[0], INTERVAL)

    expected = in_interval(demo_frame())
    pd.testing.assert_frame_equal(by_key(ex.frame), expected, check_dtype=False)
    assert len(ex.frame) == INTERVAL_ROWS
    fp = ex.fingerprint
    assert fp["kind"] == "sql" and fp["conn_id"] == PG_CONN
    assert fp["query_sha256"] == sha256(SQL_QUERY.encode())
    assert fp["params"] == {"start": "2026-03-01T00:00:00+00:00", "end": "2026-05-01T00:00:00+00:00"}
    assert fp["rows"] == INTERVAL_ROWS and fp["result_sha256"] == frame_digest(ex.frame)
    pd.testing.assert_frame_equal(pd.read_parquet(io.BytesIO(ex.raw)), ex.frame)  # the raw zone keeps the result


def test_sql_broken_query_names_the_source(pg_conn: ScratchDatabase) -> None:
    query = "SELECT * FROM no_such_table WHERE application_month >= :start AND application_month < :end"
    spec = spec_with({"name": "pg_loans", "kind": "sql", "conn_id": PG_CONN, "query": query})

    with pytest.raises(SourceError, match=r"source 'pg_loans': query failed: .*no_such_table") as info:
        extract(spec.sources[0], INTERVAL)

    assert info.value.source == "pg_loans"


def test_sql_syntax_error_is_not_retryable(pg_conn: ScratchDatabase) -> None:
    spec = spec_with({"name": "pg_loans", "kind": "sql", "conn_id": PG_CONN, "query": "SELEC * FROM loans"})

    with pytest.raises(SourceError, match=r"source 'pg_loans': query failed: .*syntax error") as info:
        extract(spec.sources[0], INTERVAL)

    assert info.value.retryable is False


def test_sql_interval_does_not_depend_on_the_server_time_zone(pg_conn: ScratchDatabase) -> None:
    spec = spec_with({"name": "pg_loans", "kind": "sql", "conn_id": PG_CONN, "query": SQL_QUERY})
    pg_conn.admin_execute(f"ALTER DATABASE \"{pg_conn.name}\" SET timezone TO 'Europe/Berlin'")
    try:
        ex = extract(spec.sources[0], INTERVAL)
    finally:
        pg_conn.admin_execute(f'ALTER DATABASE "{pg_conn.name}" RESET timezone')

    assert by_key(ex.frame)["loan_id"].tolist() == in_interval(demo_frame())["loan_id"].tolist()


# --- HTTP --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("relative_next", [False, True], ids=["absolute-next", "relative-next"])
def test_http_reads_every_page_of_the_interval(api: JsonHttpServer, relative_next: bool) -> None:
    api.route("/loans", paginated_loans(api, demo_frame(), relative_next))
    spec = spec_with(http_source())

    ex = extract(spec.sources[0], INTERVAL)

    served = api.replies("/loans")
    assert [reply.status for _, reply in served] == [200] * 4  # ceil(1677 / 500) pages, all read
    assert served[0][0].query == {"start": INTERVAL.start.isoformat(), "end": INTERVAL.end.isoformat()}
    assert [req.query.get("page", "1") for req, _ in served] == ["1", "2", "3", "4"]
    got = ex.frame.assign(application_month=pd.to_datetime(ex.frame["application_month"]))
    pd.testing.assert_frame_equal(by_key(got), in_interval(demo_frame()), check_dtype=False)
    fp = ex.fingerprint
    bodies = [reply.body for _, reply in served]
    assert fp["pages"] == 4 and fp["rows"] == INTERVAL_ROWS
    assert fp["params"] == {"start": INTERVAL.start.isoformat(), "end": INTERVAL.end.isoformat()}
    assert fp["response_sha256"] == sha256(b"\n".join(bodies)) and ex.raw == b"\n".join(bodies)
    assert fp["etags"] == [reply.headers["ETag"].strip('"') for _, reply in served]


def test_http_next_link_to_another_origin_is_refused_before_any_request(secret_api: JsonHttpServer,
                                                                        elsewhere: JsonHttpServer) -> None:
    link = elsewhere.url("/loans?page=2&token=leak")
    secret_api.route("/loans", lambda req: Reply.of_json({"data": records(demo_frame().head(3)), "next": link}))
    spec = spec_with(http_source())

    with pytest.raises(SourceError, match=rf"source 'loans_api': next_path 'next' points to http://127\.0\.0\.1:"
                                          rf"{elsewhere.port}, not the connection's origin http://127\.0\.0\.1:"
                                          rf"{secret_api.port} \[rule: only relative or same-origin") as info:
        extract(spec.sources[0], INTERVAL)

    assert info.value.retryable is False and "token" not in str(info.value) and "page=2" not in str(info.value)
    assert all(carries_credentials(req) for req, _ in secret_api.replies())  # the connection does send them...
    assert elsewhere.replies() == []  # ...but the other origin saw no request at all


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_http_redirect_to_another_origin_is_refused(secret_api: JsonHttpServer, elsewhere: JsonHttpServer,
                                                    status: int) -> None:
    secret_api.route("/loans", lambda req: Reply(status, headers={"Location": elsewhere.url("/loans?k=leak")}))
    spec = spec_with(http_source())

    with pytest.raises(SourceError, match=rf"a redirect \({status}\) points to http://127\.0\.0\.1:{elsewhere.port}, "
                                          r"not the connection's origin") as info:
        extract(spec.sources[0], INTERVAL)

    assert info.value.retryable is False and "leak" not in str(info.value)
    assert len(secret_api.replies("/loans")) == 1 and elsewhere.replies() == []


def test_http_same_origin_redirect_is_followed_with_the_credentials(secret_api: JsonHttpServer) -> None:
    secret_api.route("/loans", lambda req: Reply(302, headers={"Location": "/v2/loans?page=1"}))
    secret_api.route("/v2/loans", lambda req: Reply.of_json({"data": records(demo_frame().head(3)), "next": None}))
    spec = spec_with(http_source())

    ex = extract(spec.sources[0], INTERVAL)

    assert len(ex.frame) == 3 and ex.fingerprint["pages"] == 1
    assert [(req.path, req.query) for req, _ in secret_api.replies()] == [
        ("/loans", {"start": INTERVAL.start.isoformat(), "end": INTERVAL.end.isoformat()}),
        ("/v2/loans", {"page": "1"}),  # the Location's own query
    ]
    assert all(carries_credentials(req) for req, _ in secret_api.replies())


@pytest.mark.parametrize(("status", "retryable"), [(500, True), (503, True), (429, True), (404, False), (401, False)])
def test_http_error_status_sets_retryable(api: JsonHttpServer, status: int, retryable: bool) -> None:
    api.route("/loans", lambda req: Reply(status, b'{"error": "nope"}'))
    spec = spec_with(http_source())

    with pytest.raises(SourceError, match=rf"source 'loans_api': GET http://127\.0\.0\.1:\d+/loans answered {status}"
                       ) as info:
        extract(spec.sources[0], INTERVAL)

    assert info.value.retryable is retryable


def test_http_non_json_body_is_a_clear_error(api: JsonHttpServer) -> None:
    api.route("/loans", lambda req: Reply(200, b"<html>maintenance</html>", {"Content-Type": "text/html"}))
    spec = spec_with(http_source())

    with pytest.raises(SourceError, match=r"source 'loans_api': page 1 is not JSON") as info:
        extract(spec.sources[0], INTERVAL)

    assert info.value.retryable is False


@pytest.mark.parametrize(("doc", "got"), [({"data": {"loan_id": 1}}, "dict"), ({"items": []}, "NoneType"),
                                          ({"data": "none"}, "str")])
def test_http_records_path_must_hold_a_list(api: JsonHttpServer, doc: dict[str, Any], got: str) -> None:
    api.route("/loans", lambda req: Reply.of_json(doc))
    spec = spec_with(http_source())

    with pytest.raises(SourceError, match=rf"expected a list of records at 'data', got {got}"):
        extract(spec.sources[0], INTERVAL)


def test_http_stops_after_max_pages(api: JsonHttpServer) -> None:
    api.route("/loans", paginated_loans(api, demo_frame()))
    spec = spec_with(http_source(max_pages=2))

    with pytest.raises(SourceError, match=r"more than max_pages=2 pages"):
        extract(spec.sources[0], INTERVAL)

    assert len(api.replies("/loans")) == 2  # no third request


# --- several sources ---------------------------------------------------------------------------------------------


@dataclass
class Assembled:
    spec: PipelineSpec
    overlap: pd.DataFrame  # API rows whose keys the file also has (with another funded_amnt)
    new: pd.DataFrame  # API rows with keys of their own
    batch: pd.DataFrame
    report: dict[str, Any]


def assemble_file_and_api(api: JsonHttpServer) -> Assembled:
    """The S3 parquet first, then an API sending 20 of the interval's keys again plus 5 new loans."""
    demo = demo_frame()
    rows = in_interval(demo)
    overlap = rows.iloc[:20].assign(funded_amnt=lambda f: f["funded_amnt"] + 1)
    new = rows.iloc[20:25].assign(loan_id=lambda f: demo["loan_id"].max() + 1 + pd.RangeIndex(5))
    api.route("/feed", lambda req: Reply.of_json({"data": records(pd.concat([overlap, new])), "next": None}))
    spec = spec_with(file_source(f"s3://{BUCKET}/{PARQUET_KEY}"), http_source("/feed", name="api"))
    batch, report = assemble(spec, [extract(source, INTERVAL) for source in spec.sources], INTERVAL)
    return Assembled(spec, overlap, new, batch, report)


def test_overlapping_sources_are_reconciled_and_duplicates_quarantined(s3_conn: MotoS3, api: JsonHttpServer) -> None:
    a = assemble_file_and_api(api)
    outcome = validate_batch(a.spec, a.batch, INTERVAL, "b-reconcile")

    assert [s["rows_in_interval"] for s in a.report["sources"]] == [INTERVAL_ROWS, 25]
    assert a.report["rows_in"] == INTERVAL_ROWS + 25
    assert a.report["keys_in_several_sources"] == 20 and a.report["duplicate_key_rows"] == 20
    s = outcome.summary
    assert outcome.failure is None, s["batch_failures"]
    assert s["rows_in"] == a.report["rows_in"] == s["rows_passed"] + s["rows_quarantined"]
    assert s["reasons"]["loan_id:duplicate_key"] == 20
    q = outcome.quarantine
    dups = q[q["_reasons"].str.contains("loan_id:duplicate_key")]
    assert set(dups[SOURCE_COL]) == {"api"}  # the first source in spec order wins
    assert sorted(dups["loan_id"].astype(int)) == a.overlap["loan_id"].tolist()
    valid = outcome.valid.set_index("loan_id")
    assert valid.index.is_unique and set(a.overlap["loan_id"]) <= set(valid.index)
    kept = valid.loc[a.overlap["loan_id"], "funded_amnt"].astype(int).tolist()
    assert kept == (a.overlap["funded_amnt"] - 1).tolist()  # the file's values, not the API's


def test_api_dates_mixed_with_parquet_datetimes_are_parsed(s3_conn: MotoS3, api: JsonHttpServer) -> None:
    a = assemble_file_and_api(api)
    rejections = new_rejections()

    typed = conform(a.spec, a.batch, rejections)

    assert typed["application_month"].notna().all()
    assert not [pos for pos, reasons in rejections.items() if "application_month:type" in reasons]
