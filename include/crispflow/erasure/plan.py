"""Where a subject is: the read-only first step of an erasure request (`crispflow erase plan`).

A subject is named by its entity pseudonyms, one per configured key (`Subject`): the CLI turns the key a person
types into them (checked strictly: `governance.pseudonyms.subject_key`), so the `erase_subject` DAG only ever
sees pseudonyms. Clear stores (raw landings, staged batches) are searched by pseudonymising their keys, every
other store for the pseudonyms: validated batches, the quarantine, curated versions (sorted by the pseudonym, so
Parquet row-group statistics skip most of a file), the frozen holdout, batch scores and the prediction log's
`entity` (unsorted: a part whose entity index says "certainly not" for every pseudonym of the subject is not
opened; a part without an index, or with one that cannot be read, is read whole). Nothing is changed.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from crispflow.governance.bloom import BloomError, BloomFilter
from crispflow.governance.pseudonyms import (
    ENTITY,
    PseudonymError,
    Pseudonymizer,
    canonical_text,
    is_pseudonym,
    subject_key,
)
from crispflow.predictions.store import INDEX_SUFFIX

if TYPE_CHECKING:
    from crispflow.lake import Lake, PathLike
    from crispflow.spec import PipelineSpec

CLEAR_FORMATS = ("parquet", "csv", "jsonl")


@dataclass(frozen=True)
class Subject:
    """A subject by its entity pseudonyms, the current key's first."""

    names: tuple[str, ...]

    @classmethod
    def of_key(cls, spec: PipelineSpec, raw_key: str, keys: Pseudonymizer) -> Subject:
        """From the key a person typed (PseudonymError naming the rule, never the key)."""
        return cls(tuple(keys.all_pseudonyms(subject_key(raw_key, spec.column(spec.key).type), ENTITY)))

    @classmethod
    def of_pseudonyms(cls, names: Sequence[str], keys: Pseudonymizer) -> Subject:
        """From pseudonyms sent by the CLI (the `erase_subject` DAG's `subject`): one per configured key, current
        first. PseudonymError naming the rule otherwise."""
        if not names or not all(isinstance(n, str) and is_pseudonym(n) for n in names):
            raise PseudonymError("subject: expected the entity pseudonyms <key id>:<32 hex>, one per key")
        if [n.split(":", 1)[0] for n in names] != [k.key_id for k in keys.keys]:
            raise PseudonymError(f"subject: expected one pseudonym per configured key, in the order "
                                 f"{[k.key_id for k in keys.keys]} (the keys changed since the request was made?)")
        return cls(tuple(names))

    def in_clear(self, texts: Sequence[str], keys: Pseudonymizer) -> set[str]:
        """The clear keys (canonical text) among `texts` that are this subject."""
        return keys.which(texts, set(self.names))


@dataclass(frozen=True)
class Place:
    """One file that holds the subject: its store, path (lake-relative, or under the prediction store), rows."""

    store: str  # raw | staging | validated | quarantine | curated | holdout | scores | predictions
    path: str
    rows: int
    form: str  # "clear" (the key itself) or "pseudonym"
    clear: tuple[str, ...] = ()  # a clear store: the subject's key as it reads there (never printed or recorded)


@dataclass(frozen=True)
class ErasurePlan:
    pipeline: str
    subject: str  # the subject's pseudonym under the current key
    places: list[Place] = field(default_factory=list)
    files_scanned: int = 0

    @property
    def dataset_versions(self) -> list[str]:
        """Curated versions holding the subject (their folder names)."""
        return sorted({p.path.split("/")[2] for p in self.places if p.store == "curated"})

    @property
    def holdouts(self) -> set[str]:
        """Hashes of the frozen holdouts holding the subject (their file names)."""
        return {p.path.rsplit("/", 1)[-1].removesuffix(".parquet") for p in self.places if p.store == "holdout"}

    def to_json(self) -> dict[str, Any]:
        places = [{k: v for k, v in asdict(p).items() if k != "clear"} for p in self.places]
        return {"pipeline": self.pipeline, "subject": self.subject, "files_scanned": self.files_scanned,
                "dataset_versions": self.dataset_versions, "places": places}


def plan(lake: Lake, spec: PipelineSpec, subject: Subject, keys: Pseudonymizer,
         predictions: PathLike | None = None, model: str | None = None) -> ErasurePlan:
    """Every file of `spec`'s stores (and of `model`'s prediction log under `predictions`) holding the subject."""
    names = list(subject.names)
    stored = "pseudonym" if spec.pii_policy(spec.key) == "hmac" else "clear"  # the key past the raw landing
    scans: list[tuple[str, str, Iterable[Any], Sequence[str], str]] = [
        ("raw", "clear", _files(lake.root / "raw" / spec.name, "*"), names, spec.key),
        ("staging", "clear", _files(lake.root / "batches" / spec.name, "*/batch.parquet"), names, spec.key),
        ("validated", stored, _files(lake.root / "batches" / spec.name, "*/validated.parquet"), names, spec.key),
        ("quarantine", stored, _files(lake.root / "quarantine" / spec.name, "*/rows.parquet"), names, spec.key),
        ("curated", stored, _files(lake.root / "curated" / spec.name, "*/data.parquet"), names, spec.key),
        ("holdout", stored, _files(lake.root / "holdouts" / spec.name, "*.parquet"), names, spec.key),
        ("scores", stored, _files(lake.root / "scores" / spec.name, "**/*.parquet"), names, spec.key),
    ]
    if predictions is not None and model is not None:
        scans.append(("predictions", "pseudonym", _files(predictions / model / "predictions", "**/*.parquet"),
                      names, "entity"))
    places: list[Place] = []
    scanned = 0
    for store, form, files, wanted, column in scans:
        for path in files:
            scanned += 1
            clear: tuple[str, ...] = ()
            if form == "clear":
                rows, clear = _clear_rows(path, column, subject, keys)
            elif store == "predictions" and _index_excludes(path, wanted):
                continue
            else:
                rows = _parquet_rows(path, column, wanted)
            if rows:
                root = predictions if store == "predictions" else lake.root
                places.append(Place(store, _relative(root, path), rows, form, clear))
    return ErasurePlan(spec.name, names[0], places, scanned)


def _files(folder: PathLike, pattern: str) -> list[Any]:
    return sorted(p for p in folder.glob(pattern) if p.is_file()) if folder.exists() else []


def _relative(root: Any, path: Any) -> str:
    """`path` below its store's root (the prediction log's root may itself be a folder of the lake)."""
    base = str(getattr(root, "path", root)).rstrip("/") + "/"
    return str(getattr(path, "path", path)).removeprefix(base)


def _index_excludes(path: Any, wanted: Sequence[str]) -> bool:
    """True only when the part's entity index exists, is intact and holds none of `wanted` (never on doubt)."""
    try:
        bloom = BloomFilter.from_bytes(path.with_name(path.name + INDEX_SUFFIX).read_bytes())
    except (OSError, BloomError):
        return False
    return not bloom.might_contain(wanted).any()


def _parquet_rows(path: Any, column: str, wanted: Sequence[str]) -> int:
    """Rows of `column` equal to one of `wanted`, reading only the row groups whose statistics allow it."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    low, high = min(wanted), max(wanted)
    with path.open("rb") as handle:
        pf = pq.ParquetFile(handle)
        if column not in pf.schema_arrow.names:
            return 0
        index = pf.schema_arrow.get_field_index(column)
        found = 0
        for group in range(pf.num_row_groups):
            stats = pf.metadata.row_group(group).column(index).statistics
            if stats is not None and stats.has_min_max and isinstance(stats.min, str) and (
                    stats.max < low or stats.min > high):
                continue
            values = pf.read_row_group(group, columns=[column]).column(0)
            if pa.types.is_null(values.type):  # a column with no value at all (e.g. no entity key logged)
                continue
            if not pa.types.is_string(values.type):  # large_string, dictionary-encoded text
                values = values.cast(pa.string())
            found += int(pc.sum(pc.is_in(values, value_set=pa.array(list(wanted)))).as_py() or 0)
    return found


def _clear_rows(path: Any, column: str, subject: Subject, keys: Pseudonymizer) -> tuple[int, tuple[str, ...]]:
    """(rows, the subject's clear keys) of a clear file (a raw landing in its source format, or a staged batch):
    its keys are pseudonymised and compared with the subject's pseudonyms."""
    from crispflow.data.sources import parse_bytes

    fmt = str(path.name).rsplit(".", 1)[-1]
    if fmt not in CLEAR_FORMATS:
        return 0, ()
    frame = _parquet_column(path, column) if fmt == "parquet" else parse_bytes(path.name, path.read_bytes(), fmt)
    if column not in frame.columns:
        return 0, ()
    texts = frame[column].dropna().map(canonical_text)
    found = subject.in_clear(texts.tolist(), keys)
    return (int(texts.isin(found).sum()), tuple(sorted(found))) if found else (0, ())


def _parquet_column(path: Any, column: str) -> Any:
    import pandas as pd
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(io.BytesIO(path.read_bytes()))
    return pf.read(columns=[column]).to_pandas() if column in pf.schema_arrow.names else pd.DataFrame()
