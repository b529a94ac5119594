"""Training windows: one dataset version assembled from several published ones, with its lineage.

A retrain wants the newest data, but monthly ingests publish small versions (a month of loans is below
`training.min_rows`). `compose` unions the versions whose intervals end within `window_days` of the newest one,
keeps the most recently published row for a key that appears in several, and publishes the result like any
other version (`crispflow.data.datasets` commits it: content-addressed, manifest written last and exclusively),
with `parents` naming every source version.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from crispflow.data.datasets import (
    Published,
    already_published,
    commit_version,
    load_version,
    published,
    version_id_of,
)
from crispflow.errors import LakeError, ParamsError
from crispflow.lake import Lake, frame_digest, write_parquet

if TYPE_CHECKING:
    from crispflow.spec import PipelineSpec


def _end(manifest: dict[str, Any]) -> datetime:
    end = datetime.fromisoformat(manifest["interval"]["end"])
    return end if end.tzinfo else end.replace(tzinfo=UTC)


def key_id_of(manifest: dict[str, Any]) -> str | None:
    """The pseudonym key a version's subjects are stored under (None: in clear, published before pseudonyms)."""
    return (manifest.get("stored_form") or {}).get("key_id")


def select(lake: Lake, pipeline: str, window_days: int) -> list[dict[str, Any]]:
    """The versions whose interval ends within `window_days` of the newest interval end, stored in the newest
    version's form (the same subject under two keys, or in clear and pseudonymised, would be two subjects: after
    a key rotation or the upgrade to pseudonyms, re-ingest the older intervals to bring them back in)."""
    found = published(lake, pipeline)
    if not found:
        raise LakeError(f"{pipeline} has no published dataset version to train on")
    newest = max(found, key=lambda m: (_end(m), m["published_by"]["at"]))
    since = _end(newest) - timedelta(days=window_days)
    return [m for m in found if _end(m) > since and key_id_of(m) == key_id_of(newest)]


def compose(lake: Lake, spec: PipelineSpec, parents: list[dict[str, Any]], run: dict[str, Any]) -> Published:
    """Publish the union of `parents` (deduplicated by key, newest publication wins) as one version."""
    import pandas as pd

    if not parents:
        raise LakeError("a training window needs at least one dataset version")
    if len(parents) == 1:
        only = parents[0]
        return Published(only["dataset_version_id"], False, only)
    key_ids = {key_id_of(m) for m in parents}
    if len(key_ids) > 1:
        raise LakeError(f"a training window cannot join versions pseudonymised under different keys "
                        f"({sorted(map(str, key_ids))}): the same subject would appear under two pseudonyms")
    frames = [load_version(lake, m["dataset_version_id"], spec.name).assign(_order=i) for i, m in enumerate(parents)]
    union = pd.concat(frames, ignore_index=True).sort_values([spec.key, "_order"])
    union = union.drop_duplicates(spec.key, keep="last").drop(columns="_order").sort_values(spec.key)
    union = union.reset_index(drop=True)
    digest = frame_digest(union)
    version_id = version_id_of(digest)
    if existing := already_published(lake, spec.name, version_id):
        return existing
    newest = parents[-1]
    vdir = lake.version_dir(spec.name, version_id)
    write_parquet(vdir / "data.parquet", union)
    rows_in = sum(m["rows"]["published"] for m in parents)
    manifest = {
        **newest,
        "dataset_version_id": version_id,
        "content_sha256": digest,
        "spec_hash": spec.spec_hash(),
        "batch_id": None,
        "parents": [m["dataset_version_id"] for m in parents],
        "interval": {"start": min(m["interval"]["start"] for m in parents),
                     "end": max(m["interval"]["end"] for m in parents)},
        "rows": {"in": rows_in, "published": len(union), "quarantined": 0, "duplicates_across_parents":
                 rows_in - len(union)},
        "sources": [s for m in parents for s in m["sources"]],
        "files": {**newest["files"], "data": lake.relative(vdir / "data.parquet")},
        "published_by": {**run, "at": datetime.now(UTC).isoformat()},
    }
    return commit_version(lake, spec.name, version_id, manifest)


def training_request(lake: Lake, spec: PipelineSpec, window_days: int, run: dict[str, Any]) -> dict[str, Any]:
    """The `conf` of a train_evaluate_register run on the window of `spec`'s newest versions (composed), and the
    window's `parents` (for lineage). ParamsError naming the field when there is nothing (big enough) to train on."""
    if spec.training is None:
        raise ParamsError(f"pipeline: {spec.name!r} has no training section in its spec")
    try:
        window = compose(lake, spec, select(lake, spec.name, int(window_days)), run)
    except LakeError as exc:
        raise ParamsError(f"dataset: {exc}") from exc
    rows = window.manifest["rows"]["published"]
    if rows < spec.training.min_rows:
        raise ParamsError(f"dataset: the training window {window.version_id} has {rows} rows "
                          f"< training.min_rows={spec.training.min_rows}")
    return {"conf": {"pipeline": spec.name, "dataset_version_id": window.version_id},
            "parents": [str(p) for p in window.manifest.get("parents") or [window.version_id]]}
