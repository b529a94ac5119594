"""Where the prediction store lives and how it is laid out. One owner for the root and every path under it.

Under the root (a local folder, ``file://``, ``s3://`` or an Airflow ``ObjectStoragePath``)::

    <root>/<model>/predictions/date=YYYY-MM-DD/hour=HH/part-<UTC write time>-<uuid>.parquet
    <root>/<model>/predictions/date=YYYY-MM-DD/hour=HH/part-<UTC write time>-<uuid>.parquet.bloom
    <root>/<model>/feedback/date=YYYY-MM-DD/hour=HH/part-<UTC write time>-<uuid>.parquet
    <root>/<model>/drift/...                      drift windows, reports, episodes, alerts (crispflow.monitoring)
    <root>/<model>/canary/v<version>/<run>.json   canary analysis reports (crispflow.release)

A file's partition is the UTC hour of its rows' ``ts`` (a batch spanning an hour boundary writes one file per
hour); the UTC write time and a uuid in its name keep the files of concurrent writers apart. Beside each
predictions part, its entity index (`INDEX_SUFFIX`: a Bloom filter of the part's `entity` pseudonyms,
`crispflow.predictions.writer.entity_index`) lets an erasure plan skip the parts that cannot hold a subject;
readers list only ``*.parquet``.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from crispflow.predictions.schema import PredictionLogError, check_model

HOUR_US = 3_600_000_000
INDEX_SUFFIX = ".bloom"  # a part's entity index: <part>.parquet.bloom
PART_RE = re.compile(r"date=(\d{4}-\d{2}-\d{2})/hour=(\d{2})/([^/]+)$")  # date, hour, file name


@dataclass(frozen=True)
class Store:
    """Where the store lives: an fsspec filesystem and a path on it; `local` is set for the local filesystem."""

    fs: Any
    path: str
    local: bool
    display: str  # the root without credentials, for messages and logs

    def join(self, *parts: str) -> str:
        return "/".join([self.path.rstrip("/"), *parts])


def open_store(root: Any, storage_options: Mapping[str, Any] | None) -> Store:
    """Resolve a root (str, os.PathLike, UPath or Airflow ObjectStoragePath) to a filesystem and a path (no I/O)."""
    from upath import UPath

    if isinstance(root, UPath):
        if storage_options:
            raise PredictionLogError(
                "storage_options: must be None when root is a UPath/ObjectStoragePath "
                "(the path carries its own filesystem options)"
            )
        path = root
    elif isinstance(root, str | os.PathLike):
        text = os.fspath(root)
        if not isinstance(text, str) or not text:
            raise PredictionLogError(f"root: must be a non-empty path or URL, got {root!r}")
        path = UPath(text, **dict(storage_options or {}))
    else:
        raise PredictionLogError(f"root: must be str, os.PathLike or UPath, got {type(root).__name__}")
    protocol = path.protocol or "file"
    local = protocol in ("file", "local")
    display = path.path if local else f"{protocol}://{path.path}"
    return Store(fs=path.fs, path=path.path.rstrip("/") or "/", local=local, display=display_path(display))


def storage_options_from_env(
    root: str | os.PathLike[str] | Any, environ: Mapping[str, str] | None = None
) -> dict[str, Any] | None:
    """s3fs options from AWS_ENDPOINT_URL / AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_DEFAULT_REGION.

    None unless `root` is an ``s3://`` URL and at least one of them is set (then s3fs's own credential chain
    is not needed). The model server gets its S3 endpoint this way in production.
    """
    env = os.environ if environ is None else environ
    text = root if isinstance(root, str) else os.fspath(root) if isinstance(root, os.PathLike) else ""
    if not str(text).lower().startswith(("s3://", "s3a://")):
        return None
    options: dict[str, Any] = {}
    client: dict[str, Any] = {}
    if env.get("AWS_ACCESS_KEY_ID"):
        options["key"] = env["AWS_ACCESS_KEY_ID"]
    if env.get("AWS_SECRET_ACCESS_KEY"):
        options["secret"] = env["AWS_SECRET_ACCESS_KEY"]
    if env.get("AWS_SESSION_TOKEN"):
        options["token"] = env["AWS_SESSION_TOKEN"]
    if env.get("AWS_ENDPOINT_URL"):
        client["endpoint_url"] = env["AWS_ENDPOINT_URL"]
    if env.get("AWS_DEFAULT_REGION"):
        client["region_name"] = env["AWS_DEFAULT_REGION"]
    if client:
        options["client_kwargs"] = client
    return options or None


def root_of(url: str) -> Any:
    """The store's root as a path-like for a URL (file://, s3://, or a plain path), without Airflow. In Airflow
    tasks, `crispflow_airflow.hooks.predictions.PredictionStoreHook` gives the root with its connection."""
    from upath import UPath

    return UPath(url)


def partition(hour: datetime) -> str:
    """The partition folder of a UTC hour: ``date=YYYY-MM-DD/hour=HH``."""
    return f"date={hour:%Y-%m-%d}/hour={hour:%H}"


def new_part_name(model: str, kind: str, hour: datetime) -> str:
    """A new file's path under the root: ``<model>/<kind>/<partition>/part-<UTC write time>-<uuid>.parquet``."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    return f"{model}/{kind}/{partition(hour)}/part-{stamp}-{uuid.uuid4().hex}.parquet"


def model_dir(root: Any, model: str) -> Any:
    """A model's folder under the root; PredictionLogError unless `model` is a safe registered model name."""
    return root / check_model(model)


def drift_dir(root: Any, model: str) -> Any:
    """Drift windows, reports, episodes and alerts of a model (`crispflow.monitoring.store`)."""
    return model_dir(root, model) / "drift"


def canary_report_path(root: Any, model: str, canary: str, run_key: str) -> Any:
    """A canary analysis report: one per analysing run (`run_key` made path-safe)."""
    safe = run_key.replace(":", "_").replace("+", "_").replace("/", "_")
    return model_dir(root, model) / "canary" / f"v{canary}" / f"{safe}.json"


def display_path(path: Any) -> str:
    """A path as text without credentials or an embedded connection id (`s3://conn@bucket/...`)."""
    text = str(path)
    if "://" not in text:
        return text
    scheme, rest = text.split("://", 1)
    netloc, slash, tail = rest.partition("/")
    return f"{scheme}://{netloc.rpartition('@')[2]}{slash}{tail}"
