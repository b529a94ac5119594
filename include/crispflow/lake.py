"""The data lake: one layout, written atomically, on any path-like root (pathlib, UPath, ObjectStoragePath).

Layout under the root (the same locally and on s3://):
    raw/<pipeline>/<sha256>.<ext>                  every source read, as read (content-addressed, kept)
    batches/<pipeline>/<batch_id>/...             staging: the reconciled batch, its ingest report,
                                                  validated rows, GX results (JSON + HTML)
    quarantine/<pipeline>/batch=<batch_id>/rows.parquet   rejected rows with reason codes
    curated/<pipeline>/<version_id>/...           published versions; `manifest.json` is written last
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import uuid
from collections.abc import Mapping
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import pandas as pd


class PathLike(Protocol):
    """What the lake needs of a path: pathlib.Path, upath.UPath and Airflow's ObjectStoragePath all fit."""

    name: str

    def __truediv__(self, other: str) -> PathLike: ...
    @property
    def parent(self) -> PathLike: ...
    def exists(self) -> bool: ...
    def read_bytes(self) -> bytes: ...
    def write_bytes(self, data: bytes) -> Any: ...
    def mkdir(self, parents: bool = ..., exist_ok: bool = ...) -> None: ...
    def rename(self, target: Any) -> Any: ...
    def with_name(self, name: str) -> PathLike: ...
    def iterdir(self) -> Any: ...


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def canonical_json(obj: Any) -> bytes:
    """JSON with sorted keys and no whitespace variance: equal content, equal bytes, equal hash."""
    return json.dumps(obj, sort_keys=True, indent=2, default=str).encode()


def json_safe(obj: Any) -> Any:
    """Strict JSON (XCom, REST, reports, other languages): NaN and ±inf become null, numpy scalars plain numbers,
    mapping keys strings."""
    if isinstance(obj, Mapping):
        return {k if isinstance(k, str) else str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    if hasattr(obj, "item") and not isinstance(obj, str | bytes):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


PRIVATE_DIR, PRIVATE_FILE = 0o700, 0o600  # local stores: subjects' data is readable by its owner only


def make_private_dirs(folder: Path) -> None:
    """`mkdir -p` whose new directories are private (0700); existing ones are left as they are."""
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):
            directory.mkdir(mode=PRIVATE_DIR)


def _write_private(path: Path, data: bytes) -> None:
    """Create `path` (it must not exist) as a private file (0600) holding `data`, flushed to disk."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def write_atomic(path: PathLike, data: bytes) -> None:
    """Write to a hidden temporary sibling, then rename: readers see the old file or the whole new one. Locally
    the file is private (0600, in 0700 directories) and on disk before the rename; an object store gets one PUT."""
    local = _local(path)
    if local is None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return
    make_private_dirs(local.parent)
    tmp = local.with_name(f".{local.name}.{uuid.uuid4().hex}.tmp")
    try:
        _write_private(tmp, data)
        tmp.rename(local)
    finally:
        tmp.unlink(missing_ok=True)


def _local(path: PathLike) -> Path | None:
    """The local filesystem path behind a path-like, or None for a remote store."""
    if isinstance(path, PurePath):
        return Path(path)
    if getattr(path, "protocol", None) in ("file", "local", ""):
        return Path(path.path)  # type: ignore[attr-defined]
    return None


def fresh_listing(folder: PathLike) -> PathLike:
    """`folder`, with any listing of it (and of its parents) that its filesystem cached forgotten. s3fs keeps
    listings for the life of the process: a long-running reader (the model server's drift gauges, the UI plugin)
    would otherwise never see a file written after its first listing. A local path has no cache."""
    fs = getattr(folder, "fs", None)
    if fs is not None and hasattr(fs, "invalidate_cache"):
        fs.invalidate_cache(getattr(folder, "path", str(folder)))
    return folder


def create_exclusive(path: PathLike, data: bytes) -> bool:
    """Write `path` only if it does not exist; True if this call created it. Never shows a partial file:
    locally a hard link of a finished temporary file (fails if the target exists), on S3 a conditional PUT
    (If-None-Match: *). This is the commit point that makes concurrent publishers agree on one winner."""
    local = _local(path)
    if local is None:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with path.open("xb") as fh:  # type: ignore[attr-defined]
                fh.write(data)
        except FileExistsError:
            return False
        return True
    make_private_dirs(local.parent)
    tmp = local.with_name(f".{local.name}.{uuid.uuid4().hex}.tmp")
    _write_private(tmp, data)
    try:
        os.link(tmp, local)
    except FileExistsError:
        return False
    finally:
        tmp.unlink()
    return True


def remove(path: PathLike) -> None:
    """Delete `path` and, on a versioned bucket, every earlier version and delete marker of it: what an erasure
    deletes must not survive as object history. The current version goes last, so a crash part-way leaves the
    file listed and a rerun removes the rest. A missing file is not an error."""
    history = _versions(path)
    if history is None:
        path.unlink(missing_ok=True)  # type: ignore[attr-defined]
        return
    _delete_versions(path, history[::-1])


def forget_history(path: PathLike) -> int:
    """On a versioned bucket, delete every version of `path` but the current one (and its delete markers), so a
    rewritten file keeps only its new bytes. Returns how many versions were deleted; 0 locally or unversioned."""
    history = _versions(path) or []
    stale = [v for v in history if not (v["IsLatest"] and "Size" in v)]
    _delete_versions(path, stale)
    return len(stale)


def _versions(path: PathLike) -> list[dict[str, Any]] | None:
    """Every version and delete marker of `path`'s S3 key, newest first; None for a store without versions."""
    fs = getattr(path, "fs", None)
    if fs is None or not hasattr(fs, "call_s3"):
        return None
    bucket, key, _ = fs.split_path(str(getattr(path, "path", path)))
    found: list[dict[str, Any]] = []
    page: dict[str, str] = {}
    while True:
        out = fs.call_s3("list_object_versions", Bucket=bucket, Prefix=key, **page)
        items = out.get("Versions", []) + out.get("DeleteMarkers", [])
        found += [v for v in items if v["Key"] == key]
        if not out.get("IsTruncated"):
            break
        page = {"KeyMarker": out["NextKeyMarker"], "VersionIdMarker": out["NextVersionIdMarker"]}
    return sorted(found, key=lambda v: (v["IsLatest"], v["LastModified"]), reverse=True)


def _delete_versions(path: PathLike, versions: list[dict[str, Any]]) -> None:
    if not versions:
        return
    fs = path.fs  # type: ignore[attr-defined]
    bucket, key, _ = fs.split_path(str(path.path))  # type: ignore[attr-defined]
    for version in versions:
        fs.call_s3("delete_object", Bucket=bucket, Key=key, VersionId=version["VersionId"])
    fs.invalidate_cache(str(path.path))  # type: ignore[attr-defined]


def write_json(path: PathLike, obj: Any) -> None:
    write_atomic(path, canonical_json(obj))


def read_json(path: PathLike) -> Any:
    return json.loads(path.read_bytes())


ROW_GROUP_ROWS = 100_000  # several row groups per large file, so min/max statistics can skip most of it


def parquet_bytes(df: pd.DataFrame) -> bytes:
    buf = io.BytesIO()
    df.to_parquet(buf, index=False, compression="zstd", row_group_size=ROW_GROUP_ROWS)
    return buf.getvalue()


def write_parquet(path: PathLike, df: pd.DataFrame) -> None:
    write_atomic(path, parquet_bytes(df))


def read_parquet(path: PathLike) -> pd.DataFrame:
    import pandas as pd

    return pd.read_parquet(io.BytesIO(path.read_bytes()))


def frame_digest(df: pd.DataFrame) -> str:
    """Content hash of a frame: column names, dtypes and values in row order (not the parquet bytes)."""
    import pandas as pd

    h = hashlib.sha256()
    h.update(canonical_json([[c, str(t)] for c, t in df.dtypes.items()]))
    h.update(pd.util.hash_pandas_object(df, index=False).to_numpy().tobytes())
    return h.hexdigest()


class Lake:
    """Names every place in the lake; holds nothing but the root, so it is safe to build anywhere."""

    def __init__(self, root: PathLike) -> None:
        self.root = root

    def raw(self, pipeline: str, digest: str, ext: str) -> PathLike:
        return self.root / "raw" / pipeline / f"{digest}.{ext}"

    def batch_dir(self, pipeline: str, batch_id: str) -> PathLike:
        return self.root / "batches" / pipeline / batch_id

    def quarantine(self, pipeline: str, batch_id: str) -> PathLike:
        return self.root / "quarantine" / pipeline / f"batch={batch_id}" / "rows.parquet"

    def version_dir(self, pipeline: str, version_id: str) -> PathLike:
        return self.root / "curated" / pipeline / version_id

    def manifest(self, pipeline: str, version_id: str) -> PathLike:
        return self.version_dir(pipeline, version_id) / "manifest.json"

    def land_raw(self, pipeline: str, data: bytes, ext: str, digest: str | None = None) -> tuple[str, PathLike]:
        """Keep the bytes a source gave us, once per content, named by their sha256 (or by `digest`, the sha256
        of what the source gave when `data` is that minus erased subjects). Returns (sha256, path)."""
        digest = digest or sha256(data)
        path = self.raw(pipeline, digest, ext)
        if not path.exists():
            write_atomic(path, data)
        return digest, path

    def relative(self, path: PathLike) -> str:
        """A path's key below the root: what manifests and XComs carry (never a URL with a conn id)."""
        root = str(getattr(self.root, "path", self.root)).rstrip("/")
        return str(getattr(path, "path", path)).removeprefix(root).lstrip("/")
