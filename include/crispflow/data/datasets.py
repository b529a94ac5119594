"""Versioned datasets: stage a batch, store the gate's outcome, publish a content-addressed version.

Write-audit-publish: the ingest writes the batch to staging, the gate writes its verdict beside it, and publishing
copies the passing rows to `curated/<pipeline>/<version_id>/` with `manifest.json` written last, so a version
either has a manifest (complete) or does not exist. The id is the hash of the content: publishing the same rows
twice yields the same version, once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from crispflow.errors import LakeError, SupersededVersion
from crispflow.governance import suppression
from crispflow.governance.pseudonyms import canonical_text
from crispflow.governance.rewrite import without_rows
from crispflow.governance.stored_form import manifest_entry, stored_form
from crispflow.lake import (
    Lake,
    canonical_json,
    create_exclusive,
    frame_digest,
    read_json,
    read_parquet,
    remove,
    sha256,
    write_atomic,
    write_json,
    write_parquet,
)

if TYPE_CHECKING:
    import pandas as pd

    from crispflow.data.quality import GateOutcome
    from crispflow.data.sources import Extract, Interval
    from crispflow.governance.pseudonyms import Pseudonymizer
    from crispflow.spec import PipelineSpec

BATCH = "batch.parquet"
INGEST = "ingest.json"
VALIDATED = "validated.parquet"
QUALITY_JSON = "quality.json"
QUALITY_HTML = "quality.html"
_VOLATILE = {"modified", "etag"}  # change on re-upload of identical bytes: not part of the batch identity


def batch_id_for(spec: PipelineSpec, interval: Interval, fingerprints: list[dict[str, Any]]) -> str:
    """Same spec, same interval, same source content -> same batch id (so reruns reuse their staging)."""
    content = [{k: v for k, v in fp.items() if k not in _VOLATILE} for fp in fingerprints]
    key = {"spec": spec.spec_hash(), "interval": interval.to_json(), "sources": content}
    return "b-" + sha256(canonical_json(key))[:16]


def stage(lake: Lake, spec: PipelineSpec, interval: Interval, extracts: list[Extract],
          batch: pd.DataFrame, report: dict[str, Any], keys: Pseudonymizer | None = None) -> dict[str, Any]:
    """Land each source's bytes in the raw zone and the assembled batch in staging. Returns the ingest report.

    Subjects on the pipeline's suppression list (erased before) are left out of both: the raw landing is the
    source's bytes minus their rows (still named by the sha256 of what the source gave, so an unchanged source
    lands once), and the batch has none of their rows (`suppressed_rows` counts them)."""
    erased = set().union(*(suppression.present(lake, spec, ex.frame, keys) for ex in extracts))
    for ex, info in zip(extracts, report["sources"], strict=True):
        data, removed = without_rows(ex.raw, ex.raw_ext, spec.key, erased) if erased else (ex.raw, 0)
        _, path = lake.land_raw(spec.name, data, ex.raw_ext, sha256(ex.raw))
        info["raw"] = lake.relative(path)
        if removed:
            info["suppressed_rows"] = removed
    if erased:
        kept = ~batch[spec.key].map(lambda v: v is not None and v == v and canonical_text(v) in erased)
        report = {**report, "rows_in": int(kept.sum()), "suppressed_rows": int(len(batch) - kept.sum())}
        batch = batch[kept].reset_index(drop=True)
    batch_id = batch_id_for(spec, interval, [e.fingerprint for e in extracts])
    folder = lake.batch_dir(spec.name, batch_id)
    write_parquet(folder / BATCH, batch)
    report = {"pipeline": spec.name, "batch_id": batch_id, "spec_hash": spec.spec_hash(), **report}
    write_json(folder / INGEST, report)
    return report


def load_batch(lake: Lake, pipeline: str, batch_id: str) -> tuple[pd.DataFrame, dict[str, Any]]:
    folder = lake.batch_dir(pipeline, batch_id)
    if not (folder / INGEST).exists():
        raise LakeError(f"batch {batch_id} of pipeline {pipeline!r} is not staged (no {INGEST})")
    return read_parquet(folder / BATCH), read_json(folder / INGEST)


def store_outcome(lake: Lake, spec: PipelineSpec, batch_id: str, outcome: GateOutcome,
                  pseudonyms: Pseudonymizer | None) -> dict[str, Any]:
    """Persist the gate's verdict before anyone acts on it: quarantine, results, report, validated rows. Rows are
    stored in the spec's stored form (keyed pseudonyms, dropped columns: crispflow.governance.stored_form)."""
    folder = lake.batch_dir(spec.name, batch_id)
    quarantine = lake.quarantine(spec.name, batch_id)
    write_parquet(quarantine, stored_form(spec, outcome.quarantine, pseudonyms).assign(_batch_id=batch_id))
    write_atomic(folder / QUALITY_HTML, outcome.html.encode())
    paths = {"quarantine": lake.relative(quarantine), "quality_json": lake.relative(folder / QUALITY_JSON),
             "quality_html": lake.relative(folder / QUALITY_HTML)}
    summary = {**outcome.summary, "batch_id": batch_id, "files": paths,
               "stored_form": manifest_entry(spec, pseudonyms)}
    write_json(folder / QUALITY_JSON, {"summary": summary, "gx_result": outcome.results})
    if outcome.failure is None:
        write_parquet(folder / VALIDATED, stored_form(spec, outcome.valid, pseudonyms))
    return summary


@dataclass(frozen=True)
class Published:
    version_id: str
    created: bool  # False when this content was already published (by this or another run)
    manifest: dict[str, Any]


def version_id_of(digest: str) -> str:
    """A dataset version's id: named by its content (`frame_digest` of the rows)."""
    return "ds-" + digest[:16]


def already_published(lake: Lake, pipeline: str, version_id: str) -> Published | None:
    """The version if its manifest exists (the content was published before), else None."""
    path = lake.manifest(pipeline, version_id)
    return Published(version_id, False, _live(read_json(path))) if path.exists() else None


def commit_version(lake: Lake, pipeline: str, version_id: str, manifest: dict[str, Any]) -> Published:
    """Create the version's manifest exclusively, after its data files: the single commit point. If a concurrent
    publisher won, theirs is the version."""
    path = lake.manifest(pipeline, version_id)
    if not create_exclusive(path, canonical_json(manifest)):
        return Published(version_id, False, read_json(path))
    return Published(version_id, True, manifest)


def publish(lake: Lake, spec: PipelineSpec, batch_id: str, run: dict[str, Any]) -> Published:
    """Publish the validated rows of a batch as a content-addressed version; a no-op if it already exists.

    The data files are deterministic (same content, same bytes), so concurrent publishers may both write them;
    the manifest is created exclusively and is the single commit point: exactly one publisher wins.
    """
    folder = lake.batch_dir(spec.name, batch_id)
    quality = read_json(folder / QUALITY_JSON)
    summary = quality["summary"]
    if not summary["success"]:
        raise LakeError(f"batch {batch_id} did not pass the gate; it cannot be published")
    ingest = read_json(folder / INGEST)
    valid = read_parquet(folder / VALIDATED)
    digest = frame_digest(valid)
    version_id = version_id_of(digest)
    if existing := already_published(lake, spec.name, version_id):
        return existing
    rows = {"in": summary["rows_in"], "published": len(valid), "quarantined": summary["rows_quarantined"]}
    if rows["in"] != rows["published"] + rows["quarantined"]:
        raise LakeError(f"batch {batch_id}: rows_in != published + quarantined ({rows})")
    vdir = lake.version_dir(spec.name, version_id)
    write_parquet(vdir / "data.parquet", valid)
    write_atomic(vdir / QUALITY_HTML, (folder / QUALITY_HTML).read_bytes())
    write_atomic(vdir / QUALITY_JSON, (folder / QUALITY_JSON).read_bytes())
    manifest = {
        "dataset_version_id": version_id,
        "content_sha256": digest,
        "pipeline": spec.name,
        "spec_hash": spec.spec_hash(),
        "batch_id": batch_id,
        "interval": ingest["interval"],
        "schema": [{"name": c.name, "type": c.type, "dtype": str(valid[c.name].dtype), "pii": spec.pii_policy(c.name)}
                   for c in spec.columns if c.name in valid.columns],
        "stored_form": summary.get("stored_form") or {"key_id": None, "hmac": [], "drop": [], "keep": {}},
        "rows": rows,
        "sources": ingest["sources"],
        "reconciliation": {k: ingest[k] for k in ("duplicate_key_rows", "keys_in_several_sources")},
        "quality": {k: summary[k] for k in ("success", "reasons", "batch_failures")}
        | {"expectations_evaluated": len(summary["expectations"]),
           "expectations_failed": sum(not e["success"] for e in summary["expectations"])},
        "files": {"data": lake.relative(vdir / "data.parquet"), "quality_json": lake.relative(vdir / QUALITY_JSON),
                  "quality_html": lake.relative(vdir / QUALITY_HTML), "quarantine": summary["files"]["quarantine"]},
        "published_by": {**run, "at": datetime.now(UTC).isoformat()},
    }
    return commit_version(lake, spec.name, version_id, manifest)


def read_manifest(lake: Lake, version_id: str, pipeline: str | None = None) -> dict[str, Any]:
    """The manifest of a dataset version, by id (the pipeline is looked up when not given)."""
    if pipeline is None:
        matches = [p.name for p in (lake.root / "curated").iterdir()
                   if lake.manifest(p.name, version_id).exists()] if (lake.root / "curated").exists() else []
        if not matches:
            raise LakeError(f"no published dataset version {version_id!r} in the lake")
        pipeline = matches[0]
    path = lake.manifest(pipeline, version_id)
    if not path.exists():
        raise LakeError(f"no published dataset version {version_id!r} for pipeline {pipeline!r}")
    return read_json(path)


def load_version(lake: Lake, version_id: str, pipeline: str | None = None) -> pd.DataFrame:
    """The rows of a version, checked against the content hash in its manifest."""
    manifest = _live(read_manifest(lake, version_id, pipeline))
    frame = read_parquet(lake.root / manifest["files"]["data"])
    if frame_digest(frame) != manifest["content_sha256"]:
        raise LakeError(f"dataset version {version_id}: data does not match its content hash (tampered?)")
    return frame


def published(lake: Lake, pipeline: str) -> list[dict[str, Any]]:
    """The manifests of every published version of `pipeline`, oldest publication first."""
    folder = lake.root / "curated" / pipeline
    if not folder.exists():
        return []
    found = [read_json(lake.manifest(pipeline, p.name)) for p in folder.iterdir()
             if not p.name.startswith(".") and lake.manifest(pipeline, p.name).exists()]
    found = [m for m in found if not m.get("purged")]
    return sorted(found, key=lambda m: (m["published_by"]["at"], m["dataset_version_id"]))


def latest_version(lake: Lake, pipeline: str, min_rows: int = 0) -> dict[str, Any]:
    """The manifest of the newest published version of `pipeline` with at least `min_rows` published rows.

    Newest = the latest interval end, then the latest publication time (a backfill published later does not
    outrank newer data). Raises LakeError naming the pipeline when none qualifies.
    """
    found = [m for m in published(lake, pipeline) if m["rows"]["published"] >= min_rows]
    if not found:
        raise LakeError(f"pipeline {pipeline!r} has no published dataset version with >= {min_rows} rows")
    return max(found, key=lambda m: (m["interval"]["end"], m["published_by"]["at"]))


# --- erasure: successor versions and tombstones -------------------------------------------------------------------

def _live(manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest of a version that still has its data; SupersededVersion naming the successor otherwise."""
    if manifest.get("purged"):
        raise SupersededVersion(
            f"dataset version {manifest['dataset_version_id']} of {manifest.get('pipeline')!r} was purged by erasure "
            f"{manifest.get('erasure')}: its successor is {manifest.get('superseded_by')}")
    return manifest


def refuse_superseded(lake: Lake, pipeline: str, version_id: str) -> None:
    """SupersededVersion if an erasure purged the version (e.g. while a model trained on it)."""
    path = lake.manifest(pipeline, version_id)
    if path.exists():
        _live(read_json(path))


def successor_of(lake: Lake, pipeline: str, version_id: str) -> str:
    """The live version that now stands for `version_id` (itself unless an erasure purged it)."""
    seen: set[str] = set()
    while (path := lake.manifest(pipeline, version_id)).exists() and version_id not in seen:
        seen.add(version_id)
        manifest = read_json(path)
        if not manifest.get("purged"):
            return version_id
        version_id = manifest["superseded_by"]
    return version_id


def predecessors(lake: Lake, pipeline: str, version_id: str) -> list[str]:
    """`version_id` and every version that erasures replaced by it, newest first (`supersedes`): each of them held
    every row `version_id` holds."""
    chain: list[str] = []
    while version_id and version_id not in chain and (path := lake.manifest(pipeline, version_id)).exists():
        chain.append(version_id)
        version_id = read_json(path).get("supersedes")
    return chain


def supersede(lake: Lake, pipeline: str, version_id: str, kept: pd.DataFrame, erasure_id: str,
              parents: list[str] | None = None) -> Published:
    """Publish `kept` (the version's rows minus an erased subject's) as the successor of `version_id`: same
    interval, sources and publication time (so windows and "latest" order as before), the rows that left counted
    under `rows.erased`, and `supersedes` naming the old version. Deterministic, so a rerun after a crash finds the
    successor it wrote; then call `purge`."""
    old = _live(read_manifest(lake, version_id, pipeline))
    kept = kept.reset_index(drop=True)
    digest = frame_digest(kept)
    new_id = version_id_of(digest)
    vdir = lake.version_dir(pipeline, new_id)
    write_parquet(vdir / "data.parquet", kept)
    files = {"data": lake.relative(vdir / "data.parquet")}
    for name, key in ((QUALITY_JSON, "quality_json"), (QUALITY_HTML, "quality_html")):
        if key in old["files"] and (lake.root / old["files"][key]).exists():
            write_atomic(vdir / name, (lake.root / old["files"][key]).read_bytes())
            files[key] = lake.relative(vdir / name)
    erased = old["rows"]["published"] - len(kept)
    manifest = {**old, "dataset_version_id": new_id, "content_sha256": digest, "files": {**old["files"], **files},
                "rows": {**old["rows"], "published": len(kept), "erased": old["rows"].get("erased", 0) + erased},
                "supersedes": version_id, "erasure": erasure_id}
    if parents is not None:
        manifest["parents"] = parents
    return commit_version(lake, pipeline, new_id, manifest)


def purge(lake: Lake, pipeline: str, version_id: str, successor: str, erasure_id: str) -> None:
    """Replace a superseded version by its tombstone (what it was, who replaced it, why), then delete its files.
    The tombstone is written first, so a crash leaves a version that reads as purged and a rerun deletes the rest."""
    folder = lake.version_dir(pipeline, version_id)
    manifest = read_json(lake.manifest(pipeline, version_id))
    if not manifest.get("purged"):
        keep = ("dataset_version_id", "content_sha256", "pipeline", "spec_hash", "batch_id", "interval", "rows",
                "published_by", "parents", "supersedes")
        tombstone = {k: manifest[k] for k in keep if k in manifest}
        tombstone |= {"purged": True, "superseded_by": successor, "erasure": erasure_id,
                      "purged_at": datetime.now(UTC).isoformat()}
        write_json(lake.manifest(pipeline, version_id), tombstone)
    for path in list(folder.iterdir()):
        if path.name != "manifest.json":
            remove(path)
