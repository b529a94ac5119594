"""`crispflow erase plan` on the prediction log with the parts' entity indexes (written by PredictionLog): a part
whose index excludes the subject is not opened, one whose index may hold it is read, and an index that is missing
or damaged never lets a part be skipped."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from support.keys import session_keys
from support.predictions import MODEL, T0, prediction

from crispflow.erasure.plan import Subject, plan
from crispflow.lake import Lake
from crispflow.predictions.store import INDEX_SUFFIX
from crispflow.predictions.writer import PredictionLog
from crispflow.spec import load_spec

SUBJECT, OTHER = "1234567", "7654321"


def _log(root: Path) -> dict[str, Path]:
    """Three hour parts: 'subject' holds the subject twice, 'other' and 'spare' only other entities."""
    keys = session_keys()
    entities = {"subject": keys.pseudonym(SUBJECT), "other": keys.pseudonym(OTHER), "spare": keys.pseudonym("42")}
    plog = PredictionLog(root, MODEL)
    for hour, entity in enumerate(entities.values()):
        plog.log([prediction(hour * 10 + i, T0 + timedelta(hours=hour, minutes=i), entity=entity) for i in range(2)])
    plog.close()
    parts = sorted((root / MODEL / "predictions").rglob("*.parquet"))
    return dict(zip(entities, parts, strict=True))


def _plan(tmp_path: Path, key: str = SUBJECT) -> tuple[dict[str, int], int]:
    spec = load_spec("lending_club")
    found = plan(Lake(tmp_path / "lake"), spec, Subject.of_key(spec, key, session_keys()), session_keys(),
                 tmp_path / "log", MODEL)
    return {p.path: p.rows for p in found.places}, found.files_scanned


def _relative(tmp_path: Path, part: Path) -> str:
    return part.relative_to(tmp_path / "log").as_posix()


def test_parts_whose_index_excludes_the_subject_are_not_opened(tmp_path: Path) -> None:
    parts = _log(tmp_path / "log")
    for name in ("other", "spare"):
        parts[name].write_bytes(b"not parquet: opening it would fail")  # only its (intact) index is read
    assert _plan(tmp_path) == ({_relative(tmp_path, parts["subject"]): 2}, 3)  # skipped parts count as scanned


def _flip_a_bit(blob: bytes) -> bytes:
    return blob[:-5] + bytes([blob[-5] ^ 1]) + blob[-4:]  # a bit of the array: the checksum no longer matches


@pytest.mark.parametrize("damage", [_flip_a_bit, lambda blob: blob[:8], lambda blob: b"", None],
                         ids=["a bit flipped", "truncated", "empty", "missing"])
def test_a_damaged_or_missing_index_never_lets_a_part_be_skipped(tmp_path: Path, damage: Any) -> None:
    parts = _log(tmp_path / "log")
    index = parts["other"].with_name(parts["other"].name + INDEX_SUFFIX)
    if damage is None:
        index.unlink()  # an older part, written before indexes
    else:
        index.write_bytes(damage(index.read_bytes()))
    assert _plan(tmp_path, OTHER) == ({_relative(tmp_path, parts["other"]): 2}, 3)
    parts["other"].write_bytes(b"not parquet")  # the subject's search must now open it, and fail
    with pytest.raises(pa.ArrowInvalid):
        _plan(tmp_path)


def test_an_index_left_by_an_erasure_rewrite_only_costs_a_read(tmp_path: Path) -> None:
    """The erasure rewrites a part without the subject's rows and keeps its index: still a "maybe", zero rows."""
    parts = _log(tmp_path / "log")
    table = pq.read_table(parts["subject"])
    pq.write_table(table.filter(pc.invert(pc.equal(table.column("entity"), session_keys().pseudonym(SUBJECT)))),
                   parts["subject"])
    assert _plan(tmp_path) == ({}, 3)
