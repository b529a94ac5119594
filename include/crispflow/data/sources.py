"""Reading sources: files (any path-like), SQL (a SQLAlchemy connectable) and HTTP JSON (a fetch function).

Airflow-free: the Airflow hooks (plugins/crispflow_airflow/hooks) resolve connections into the path, engine or
fetch function these take. Each reader returns an `Extract`: the frame, the exact bytes to keep in the raw zone
and a fingerprint that identifies what was read. An HTTP source only ever requests URLs of its connection's
origin (`same_origin`): the fetch function carries the connection's credentials.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin, urlsplit

from crispflow.errors import SourceError
from crispflow.lake import PathLike, sha256

if TYPE_CHECKING:
    import pandas as pd

    from crispflow.spec import FileSource, HttpSource, SqlSource

_UTC_SESSION = {"postgresql": "SET TIME ZONE 'UTC'", "mysql": "SET time_zone = '+00:00'"}
# (absolute url of the connection's origin, query params) -> (body, response headers)
Fetch = Callable[[str, Mapping[str, str]], tuple[bytes, Mapping[str, str]]]
_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class Interval:
    """The run's data interval [start, end), UTC."""

    start: datetime
    end: datetime

    def __post_init__(self) -> None:
        for name in ("start", "end"):
            value = getattr(self, name)
            if value.tzinfo is None:
                object.__setattr__(self, name, value.replace(tzinfo=UTC))
        if self.start >= self.end:
            raise ValueError(f"interval start {self.start.isoformat()} is not before end {self.end.isoformat()}")

    def to_json(self) -> dict[str, str]:
        return {"start": self.start.isoformat(), "end": self.end.isoformat()}

    @classmethod
    def from_json(cls, data: Mapping[str, str]) -> Interval:
        return cls(datetime.fromisoformat(data["start"]), datetime.fromisoformat(data["end"]))


@dataclass
class Extract:
    source: str
    frame: pd.DataFrame
    raw: bytes  # exactly what was read: landed in the raw zone
    raw_ext: str
    fingerprint: dict[str, Any] = field(default_factory=dict)


def parse_bytes(source: str, data: bytes, fmt: str) -> pd.DataFrame:
    """Parse a file's bytes; empty, truncated or corrupt input is a non-retryable `SourceError`."""
    import pandas as pd

    if not data:
        raise SourceError(source, f"the {fmt} file is empty (0 bytes)")
    try:
        if fmt == "parquet":
            return pd.read_parquet(io.BytesIO(data))
        if fmt == "csv":
            return pd.read_csv(io.BytesIO(data))
        if fmt == "jsonl":
            return pd.read_json(io.BytesIO(data), lines=True)
    except Exception as exc:  # pyarrow/pandas raise many types for corrupt input
        raise SourceError(source, f"cannot parse as {fmt}: {type(exc).__name__}: {exc}") from exc
    raise SourceError(source, f"unknown format {fmt!r}")


def read_file(spec: FileSource, path: PathLike) -> Extract:
    """Read a whole file once: the fingerprint is its sha256 (plus ETag/mtime where the store has them)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise SourceError(spec.name, f"no file at {spec.url}") from None
    except OSError as exc:
        raise SourceError(spec.name, f"cannot read {spec.url}: {exc}", retryable=True) from exc
    fingerprint: dict[str, Any] = {"kind": "file", "url": spec.url, "sha256": sha256(data), "bytes": len(data)}
    fingerprint.update(_store_info(path))
    return Extract(spec.name, parse_bytes(spec.name, data, spec.format), data, spec.format, fingerprint)


def _store_info(path: PathLike) -> dict[str, Any]:
    """ETag and last-modified time from the object store, when it reports them."""
    try:
        info = path.fs.info(path.path)  # type: ignore[attr-defined]
    except Exception:
        return {}
    out: dict[str, Any] = {}
    if etag := info.get("ETag"):
        out["etag"] = str(etag).strip('"')
    modified = info.get("LastModified") or info.get("mtime")
    if isinstance(modified, int | float):
        modified = datetime.fromtimestamp(modified, UTC)
    if isinstance(modified, datetime):
        out["modified"] = modified.isoformat()
    return out


def read_sql(spec: SqlSource, connectable: Any, interval: Interval) -> Extract:
    """Run the spec's query with `:start`/`:end` bound to the interval (SQLAlchemy engine or connection)."""
    import contextlib

    import pandas as pd
    from sqlalchemy import exc as sa_exc
    from sqlalchemy import text
    from sqlalchemy.engine import Engine

    params = {"start": interval.start, "end": interval.end}
    opened = connectable.connect() if isinstance(connectable, Engine) else contextlib.nullcontext(connectable)
    try:
        with opened as conn:
            if stmt := _UTC_SESSION.get(conn.dialect.name):  # compare timestamps in UTC, whatever the server's zone
                conn.exec_driver_sql(stmt)
            frame = pd.read_sql(text(spec.query), conn, params=params)
    except Exception as exc:
        cause = exc if isinstance(exc, sa_exc.DBAPIError) else exc.__cause__
        retryable = (not isinstance(cause, sa_exc.DBAPIError) or cause.connection_invalidated
                     or isinstance(cause, sa_exc.OperationalError | sa_exc.InterfaceError))
        raise SourceError(spec.name, f"query failed: {type(exc).__name__}: {exc}", retryable=retryable) from exc
    from crispflow.lake import frame_digest, parquet_bytes

    fingerprint = {
        "kind": "sql",
        "conn_id": spec.conn_id,
        "query_sha256": sha256(spec.query.encode()),
        "params": {k: v.isoformat() for k, v in params.items()},
        "rows": len(frame),
        "result_sha256": frame_digest(frame),
    }
    return Extract(spec.name, frame, parquet_bytes(frame), "parquet", fingerprint)


def _dig(doc: Any, dotted: str | None) -> Any:
    for part in dotted.split(".") if dotted else []:
        doc = doc.get(part) if isinstance(doc, dict) else None
    return doc


def origin(url: str) -> str:
    """`scheme://host:port` of a URL (default port filled in, no credentials, path or query); "" if it has none."""
    try:
        parts = urlsplit(url)
        scheme, host = parts.scheme.lower(), parts.hostname or ""
        port = parts.port or _DEFAULT_PORTS.get(scheme)
    except ValueError:  # a port that is not a number
        return ""
    if not scheme or not host or port is None:
        return ""
    return f"{scheme}://{f'[{host}]' if ':' in host else host}:{port}"


def same_origin(source: str, url: str, base_url: str, what: str) -> str:
    """`url` if its scheme, host and port are the connection's (`base_url`); else a non-retryable `SourceError`.

    The message shows the offending URL's origin only, never its credentials, path or query.
    """
    allowed = origin(base_url)
    if allowed and origin(url) == allowed:
        return url
    raise SourceError(source, f"{what} points to {origin(url) or 'a URL without an origin'}, not the connection's "
                              f"origin {allowed or '(none)'} [rule: only relative or same-origin URLs are "
                              f"requested, so the connection's credentials never leave it]")


def read_http(spec: HttpSource, fetch: Fetch, interval: Interval, base_url: str) -> Extract:
    """GET the endpoint with the interval as query parameters, following `next_path` links; JSON records.

    The endpoint is relative to `base_url` (the connection's); a next link is resolved against the page that
    carried it. Both must stay on the connection's origin (`same_origin`).
    """
    import pandas as pd

    params = {spec.start_param: interval.start.isoformat(), spec.end_param: interval.end.isoformat()}
    bodies: list[bytes] = []
    records: list[Any] = []
    etags: list[str] = []
    endpoint = spec.endpoint if "://" in spec.endpoint else f"{base_url.rstrip('/')}/{spec.endpoint.lstrip('/')}"
    target: str | None = same_origin(spec.name, endpoint, base_url, f"endpoint {spec.endpoint!r}")
    while target:
        if len(bodies) >= spec.max_pages:
            raise SourceError(spec.name, f"more than max_pages={spec.max_pages} pages", retryable=False)
        body, headers = fetch(target, params if not bodies else {})
        bodies.append(body)
        if etag := headers.get("ETag") or headers.get("etag"):
            etags.append(etag.strip('"'))
        try:
            doc = json.loads(body)
        except ValueError as exc:
            raise SourceError(spec.name, f"page {len(bodies)} is not JSON: {exc}") from exc
        page = _dig(doc, spec.records_path)
        if not isinstance(page, list):
            where = f"at {spec.records_path!r}" if spec.records_path else "at the top level"
            raise SourceError(spec.name, f"expected a list of records {where}, got {type(page).__name__}")
        records.extend(page)
        target = _next_url(spec, _dig(doc, spec.next_path) if spec.next_path else None, target, base_url)
    if any(not isinstance(r, dict) for r in records):
        raise SourceError(spec.name, "every record must be a JSON object")
    raw = b"\n".join(bodies)
    fingerprint = {
        "kind": "http",
        "conn_id": spec.conn_id,
        "endpoint": spec.endpoint,
        "params": params,
        "pages": len(bodies),
        "rows": len(records),
        "response_sha256": hashlib.sha256(raw).hexdigest(),
        **({"etags": etags} if etags else {}),
    }
    return Extract(spec.name, pd.DataFrame.from_records(records), raw, "jsonl", fingerprint)


def _next_url(spec: HttpSource, link: Any, page_url: str, base_url: str) -> str | None:
    """The next page's URL: `link` resolved against the current page, on the connection's origin; None at the end."""
    if link is None or link == "":
        return None
    if not isinstance(link, str):
        raise SourceError(spec.name, f"next_path {spec.next_path!r} holds a {type(link).__name__}, not a URL")
    return same_origin(spec.name, urljoin(page_url, link), base_url, f"next_path {spec.next_path!r}")
