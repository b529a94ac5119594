"""Source hooks: turn a spec's source (file / SQL / HTTP) plus an Airflow connection into an `Extract`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from airflow.sdk import BaseHook, ObjectStoragePath

from crispflow.data import sources
from crispflow.errors import SourceError
from crispflow.settings import Settings

if TYPE_CHECKING:
    from crispflow.data.sources import Extract, Interval
    from crispflow.spec import FileSource, HttpSource, SqlSource


class FileSourceHook(BaseHook):
    """Reads a file source: a path relative to the project root, file:// or s3:// (with an aws connection)."""

    def read(self, spec: FileSource) -> Extract:
        url = spec.url
        if "://" not in url:
            url = (Settings.from_env().project_root / url).resolve().as_uri()
        path = ObjectStoragePath(url, conn_id=spec.conn_id) if spec.conn_id else ObjectStoragePath(url)
        return sources.read_file(spec, path)


class SqlSourceHook(BaseHook):
    """Runs a source query through the DB-API hook of the source's connection (e.g. postgres)."""

    def read(self, spec: SqlSource, interval: Interval) -> Extract:
        try:
            db_hook = BaseHook.get_connection(spec.conn_id).get_hook()
            engine = db_hook.get_sqlalchemy_engine()
        except Exception as exc:
            raise SourceError(spec.name, f"connection {spec.conn_id!r} unusable: {exc}", retryable=True) from exc
        try:
            return sources.read_sql(spec, engine, interval)
        finally:
            engine.dispose()


class HttpSourceHook(BaseHook):
    """GETs JSON pages through an http connection (base URL, auth and headers come from the connection).

    Redirects are followed here, not by requests, and only within the connection's origin: requests would drop
    the Authorization header on a cross-host redirect but still send the connection's other headers (API keys).
    """

    timeout_s = 60

    def read(self, spec: HttpSource, interval: Interval) -> Extract:
        from urllib.parse import urljoin

        from airflow.providers.http.hooks.http import HttpHook

        http = HttpHook(method="GET", http_conn_id=spec.conn_id)
        session = http.get_conn()
        base = http.base_url

        def fetch(url: str, params: Mapping[str, str]) -> tuple[bytes, Mapping[str, str]]:
            for _ in range(session.max_redirects + 1):
                try:
                    resp = session.get(url, params=dict(params), timeout=self.timeout_s, allow_redirects=False)
                except Exception as exc:
                    raise SourceError(spec.name, f"GET {url} failed: {exc}", retryable=True) from exc
                if not resp.is_redirect:
                    break
                resp.close()
                where = urljoin(resp.url, resp.headers["Location"])
                url, params = sources.same_origin(spec.name, where, base, f"a redirect ({resp.status_code})"), {}
            else:
                raise SourceError(spec.name, f"GET {url}: more than {session.max_redirects} redirects")
            if resp.status_code >= 400:
                raise SourceError(spec.name, f"GET {url} answered {resp.status_code}: {resp.text[:200]}",
                                  retryable=resp.status_code >= 500 or resp.status_code == 429)
            return resp.content, resp.headers

        return sources.read_http(spec, fetch, interval, base)


def extract(spec: FileSource | SqlSource | HttpSource, interval: Interval) -> Extract:
    """One entry point for every kind of source."""
    if spec.kind == "file":
        return FileSourceHook().read(spec)
    if spec.kind == "sql":
        return SqlSourceHook().read(spec, interval)
    return HttpSourceHook().read(spec, interval)
