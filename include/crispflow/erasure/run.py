"""Erase a subject from a pipeline's stores (`crispflow erase run`), record it in the erasure ledger, verify it.

The order makes every step safe to repeat and a crash recoverable by running again:

1. the plan (`erasure.plan`) and its ledger entry;
2. the subject joins the suppression list, so an ingest running meanwhile cannot bring them back;
3. each curated version holding the subject gets a successor without them (`datasets.supersede`; composed windows
   name their parents' successors), then the old version is purged to its tombstone (`datasets.purge`);
4. the frozen holdout gets a successor file (`holdout.erase`);
5. every other file (raw landings and staged batches in clear, validated batches, quarantine, batch scores, the
   prediction log) is rewritten without the subject's rows, in its format;
6. a ledger entry lists each artifact's old hash and its new hash or "purged".

A rerun plans again: what is already erased is not found, a successor already written is found by its content
hash, and a version left between successor and purge is purged. The subject appears in the ledger only under the
ledger's own domain (`LEDGER_DOMAIN`), never as the data's pseudonym or the key.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from crispflow.data import datasets
from crispflow.erasure.models import learned_from
from crispflow.erasure.plan import ErasurePlan, Place, Subject, plan
from crispflow.governance import suppression
from crispflow.governance.rewrite import rows_of, without_rows
from crispflow.lake import forget_history, read_json, read_parquet, sha256, write_atomic
from crispflow.model import holdout

if TYPE_CHECKING:
    from crispflow.governance.erasure_ledger import ErasureLedger
    from crispflow.governance.pseudonyms import Pseudonymizer
    from crispflow.lake import Lake, PathLike
    from crispflow.spec import PipelineSpec

LEDGER_DOMAIN = "erasure-ledger"  # the subject's name in the ledger: a pseudonym no data store holds


@dataclass(frozen=True)
class Request:
    """Why, under which ticket, who approved (`person`) and who asked (recorded in the ledger)."""

    ticket: str
    legal_basis: str
    person: str
    requested_by: str = ""

    def __post_init__(self) -> None:
        for name in ("ticket", "legal_basis", "person"):
            value = getattr(self, name)
            if not value.strip() or len(value) > 250:
                raise ValueError(f"erasure request: {name} must be 1-250 characters (got {len(value)})")


@dataclass
class Outcome:
    erasure_id: str
    subject: str  # the ledger's pseudonym of the subject
    plan: ErasurePlan
    artifacts: list[dict[str, Any]] = field(default_factory=list)
    models: list[dict[str, str]] = field(default_factory=list)  # model versions flagged (crispflow.erasure.models)

    @property
    def superseded(self) -> dict[str, str]:
        """Dataset versions purged by this run -> their successors."""
        return {a["version"]: a["successor"] for a in self.artifacts if a["store"] == "curated"}

    def to_json(self) -> dict[str, Any]:
        return {"erasure_id": self.erasure_id, "subject": self.subject, "pipeline": self.plan.pipeline,
                "files_found": len(self.plan.places), "artifacts": self.artifacts, "models": self.models}

    @property
    def replaced_holdouts(self) -> set[str]:
        return {a["old"] for a in self.artifacts if a["store"] == "holdout"}


FlagModels = Callable[[set[str], set[str], str], list[dict[str, str]]]  # (datasets, holdouts, erasure id) -> flagged


def ledger_name(subject: Subject, keys: Pseudonymizer) -> str:
    """The subject's name in the ledger: its current pseudonym, pseudonymised again in the ledger's domain."""
    return keys.pseudonym(subject.names[0], LEDGER_DOMAIN)


def erasure_id_of(pipeline: str, subject: str, ticket: str) -> str:
    """One id per (pipeline, subject, ticket): a rerun of the same request continues it."""
    return "er-" + hashlib.sha256(json.dumps([pipeline, subject, ticket]).encode()).hexdigest()[:16]


def run(lake: Lake, spec: PipelineSpec, subject: Subject, keys: Pseudonymizer, ledger: ErasureLedger,
        request: Request, predictions: PathLike | None = None, model: str | None = None,
        flag_models: FlagModels | None = None) -> Outcome:
    """Erase `subject` from every store of `spec` (and `model`'s prediction log); `flag_models`
    tags the model versions trained on a superseded dataset or judged on the replaced holdout. On a versioned
    bucket no earlier version of a file that held the subject survives (the first plan's files, so a rerun after
    a crash also forgets what the crashed run rewrote)."""
    names, name = list(subject.names), ledger_name(subject, keys)
    found = plan(lake, spec, subject, keys, predictions, model)
    outcome = Outcome(erasure_id_of(spec.name, name, request.ticket), name, found)
    entry = {"pipeline": spec.name, "subject": name, "ticket": request.ticket,
             "legal_basis": request.legal_basis, "person": request.person}
    if ledger.find(f"{outcome.erasure_id}:plan") is None:
        ledger.append(erasure_id=f"{outcome.erasure_id}:plan", step="plan", detail={
            "requested_by": request.requested_by or request.person, "files_scanned": found.files_scanned,
            "places": [{"store": p.store, "path": p.path, "rows": p.rows} for p in found.places]}, **entry)
    suppression.add(lake, spec.name, names)
    outcome.artifacts += _supersede_versions(lake, spec, found, names, outcome.erasure_id)
    for place in found.places:
        if place.store == "curated":
            continue
        if place.store == "holdout":
            if (change := holdout.erase(lake, spec, _values(place, names), outcome.erasure_id)) is not None:
                outcome.artifacts.append(change)
            continue
        root = predictions if place.store == "predictions" else lake.root
        column = "entity" if place.store == "predictions" else spec.key
        outcome.artifacts.append(_rewrite(root / place.path, place, column, _values(place, names)))
    recorded = json.loads(ledger.find(f"{outcome.erasure_id}:plan")["detail"])["places"]
    for store, path in sorted({(p["store"], p["path"]) for p in recorded} | {(p.store, p.path) for p in found.places}):
        _forget(predictions if store == "predictions" else lake.root, path)  # type: ignore[arg-type]
    if flag_models is not None and (outcome.superseded or outcome.replaced_holdouts):
        versions, holdouts = learned_from(lake, spec.name, set(outcome.superseded), outcome.replaced_holdouts)
        outcome.models = flag_models(versions, holdouts, outcome.erasure_id)
    detail = {"artifacts": outcome.artifacts, "models": outcome.models}
    digest = hashlib.sha256(json.dumps(detail, sort_keys=True).encode()).hexdigest()[:12]
    ledger.append(erasure_id=f"{outcome.erasure_id}:run:{digest}", step="run", detail=detail, **entry)
    return outcome


def _values(place: Place, names: list[str]) -> set[str]:
    """How the subject's key reads in `place`: its pseudonyms, or in a clear store the clear key found there."""
    return set(place.clear) if place.form == "clear" else set(names)


def _supersede_versions(lake: Lake, spec: PipelineSpec, found: ErasurePlan, names: list[str],
                        erasure_id: str) -> list[dict[str, Any]]:
    """Successors for the curated versions holding the subject: published batches first, then composed windows
    (whose `parents` must name the successors)."""
    values = {p.path.split("/")[2]: _values(p, names) for p in found.places if p.store == "curated"}
    manifests = {v: read_json(lake.manifest(spec.name, v)) for v in found.dataset_versions}
    changes = []
    for version, manifest in sorted(manifests.items(), key=lambda item: ("parents" in item[1], item[0])):
        if manifest.get("purged"):  # an earlier run wrote the tombstone and stopped before deleting the data
            datasets.purge(lake, spec.name, version, manifest["superseded_by"], erasure_id)
            changes.append(_curated_change(version, manifest, manifest["superseded_by"], None))
            continue
        frame = read_parquet(lake.root / manifest["files"]["data"])
        parents = [datasets.successor_of(lake, spec.name, p) for p in manifest["parents"]] \
            if "parents" in manifest else None
        kept = frame[~rows_of(frame[spec.key], values[version])]
        new = datasets.supersede(lake, spec.name, version, kept, erasure_id, parents)
        datasets.purge(lake, spec.name, version, new.version_id, erasure_id)
        changes.append(_curated_change(version, manifest, new.version_id, new.manifest["content_sha256"]))
    return changes


def _curated_change(version: str, manifest: dict[str, Any], successor: str, new_hash: str | None) -> dict[str, Any]:
    return {"store": "curated", "version": version, "successor": successor, "old": manifest["content_sha256"],
            "new": "purged", "successor_sha256": new_hash}


def _rewrite(path: Any, place: Any, column: str, values: set[str]) -> dict[str, Any]:
    data = path.read_bytes()
    fmt = str(path.name).rsplit(".", 1)[-1]
    new, removed = without_rows(data, fmt, column, values)
    if removed:
        write_atomic(path, new)
    return {"store": place.store, "path": place.path, "old": sha256(data), "new": sha256(new), "rows": removed}


def _forget(root: PathLike, path: str) -> None:
    """No trace of the subject around a file that held them: a prediction-log part's entity index rebuilt
    (`refresh_index`), and on a versioned bucket every earlier version of both deleted. The same bytes on every
    rerun."""
    from crispflow.predictions.writer import refresh_index

    file = root / path
    if (index := refresh_index(file)) is not None:
        forget_history(index)
    forget_history(file)


def verify(lake: Lake, spec: PipelineSpec, subject: Subject, keys: Pseudonymizer, ledger: ErasureLedger,
           predictions: PathLike | None = None, model: str | None = None) -> list[str]:
    """Problems (empty: erased and recorded): a broken ledger chain, a file still holding the subject, a subject
    not on the suppression list, or no ledger entry for it."""
    problems = [f"ledger: {p}" for p in ledger.verify()]
    found = plan(lake, spec, subject, keys, predictions, model)
    problems += [f"{p.store}: {p.path} still holds {p.rows} row(s) of the subject" for p in found.places]
    if not set(subject.names) & suppression.listed(lake, spec.name):
        problems.append("suppression list: the subject is not on it (a re-ingest would bring them back)")
    name = ledger_name(subject, keys)
    if not any(e["subject"] == name and e["step"] == "run" for e in ledger.entries(spec.name)):
        problems.append("ledger: no erasure of this subject is recorded")
    return problems
