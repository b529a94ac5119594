"""Source hooks: one entry point per kind of source; a file path is the project's, a connection that cannot be used
is a retryable SourceError (SourceUnavailable in Airflow), a client error or a link to another origin is not retried
(S3, SQL and HTTP in depth: tests/integration/test_sources.py)."""

from __future__ import annotations

from datetime import UTC, datetime

import pandas as pd
import pytest

from crispflow.data.sources import Interval
from crispflow.errors import SourceError
from crispflow.spec import FileSource, HttpSource, SqlSource
from crispflow_airflow.hooks.sources import extract

pytest_plugins = ["support.servers"]
JAN = Interval(datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 2, 1, tzinfo=UTC))


def test_a_relative_file_path_is_read_from_the_project_root() -> None:
    source = FileSource(name="loans", kind="file", url="include/data/lending_club.parquet")
    ex = extract(source, JAN)
    assert ex.source == "loans" and ex.raw_ext == "parquet" and len(ex.frame) > 0
    pd.testing.assert_frame_equal(ex.frame, pd.read_parquet("include/data/lending_club.parquet"))


def test_an_unusable_sql_connection_is_retried() -> None:
    from crispflow_airflow.exceptions import SourceUnavailable, as_airflow_errors

    source = SqlSource(name="loans_db", kind="sql", conn_id="t_no_db", query="SELECT 1")
    with pytest.raises(SourceError, match="connection 't_no_db' unusable") as err:  # no such connection
        extract(source, JAN)
    assert err.value.retryable
    with pytest.raises(SourceUnavailable), as_airflow_errors():
        extract(source, JAN)


@pytest.mark.parametrize(("status", "error"), [(503, "SourceUnavailable"), (404, "DataQualityFailed")])
def test_http_status_decides_retry(http_json_server, monkeypatch, status: int, error: str) -> None:
    from support.servers import Reply

    import crispflow_airflow.exceptions as exceptions

    http_json_server.route("/loans", lambda req: Reply(status, b'{"error": "nope"}'))
    monkeypatch.setenv("AIRFLOW_CONN_T_API", http_json_server.http_conn())
    source = HttpSource(name="loans_api", kind="http", conn_id="t_api", endpoint="/loans")
    with pytest.raises(getattr(exceptions, error), match=f"answered {status}"), exceptions.as_airflow_errors():
        extract(source, JAN)
    query = http_json_server.replies("/loans")[0][0].query
    assert query == {"start": JAN.start.isoformat(), "end": JAN.end.isoformat()}


def test_http_next_link_to_another_origin_is_not_retried(http_json_server, monkeypatch) -> None:
    from support.servers import Reply, run_http_server

    import crispflow_airflow.exceptions as exceptions

    with run_http_server() as elsewhere:
        link = elsewhere.url("/loans?page=2")
        http_json_server.route("/loans", lambda req: Reply.of_json({"data": [{"id": 1}], "next": link}))
        monkeypatch.setenv("AIRFLOW_CONN_T_API", http_json_server.http_conn())
        source = HttpSource(name="loans_api", kind="http", conn_id="t_api", endpoint="/loans", records_path="data",
                            next_path="next")
        with pytest.raises(exceptions.DataQualityFailed, match="next_path 'next' points to"), \
                exceptions.as_airflow_errors():
            extract(source, JAN)
        assert elsewhere.replies() == []
