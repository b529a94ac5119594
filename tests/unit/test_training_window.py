"""Training windows: several published versions become one, deduplicated, content-addressed, with its parents."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pandas as pd
import pytest
from support.keys import session_keys

import crispflow.data.datasets as datasets
from crispflow.data.extracts import assemble
from crispflow.data.quality import validate_batch
from crispflow.data.sources import Extract, Interval
from crispflow.data.training_window import compose, select
from crispflow.errors import LakeError
from crispflow.governance.pseudonyms import Pseudonymizer, generate_key
from crispflow.lake import Lake
from crispflow.spec import load_spec

SPEC = load_spec("lending_club")
DATA = pd.read_parquet("include/data/lending_club.parquet")


def publish(lake: Lake, start: str, end: str, run_id: str, keys: Pseudonymizer | None = None) -> str:
    """Ingest, gate and publish [start, end) of the demo data, as the ingest DAG does."""
    interval = Interval(datetime.fromisoformat(start), datetime.fromisoformat(end))
    extracts = [Extract("loans", DATA, b"raw", "parquet", {"kind": "file", "sha256": "x"})]
    batch, report = assemble(SPEC, extracts, interval)
    report = datasets.stage(lake, SPEC, interval, extracts, batch, report)
    outcome = validate_batch(SPEC, batch, interval, report["batch_id"])
    datasets.store_outcome(lake, SPEC, report["batch_id"], outcome, keys or session_keys())
    return datasets.publish(lake, SPEC, report["batch_id"], {"run_id": run_id}).version_id


def test_a_window_unions_recent_versions_once(tmp_path: Path) -> None:
    lake = Lake(tmp_path)
    history = publish(lake, "2026-01-01", "2026-10-01", "r1")  # January-September
    months = [publish(lake, f"2026-{m:02d}-01", f"2026-{m + 1:02d}-01", f"r{m}") for m in (9, 10, 11)]
    chosen = select(lake, "lending_club", window_days=365)
    assert [m["dataset_version_id"] for m in chosen] == [history, *months]
    assert [m["dataset_version_id"] for m in select(lake, "lending_club", window_days=45)] == months[1:]

    out = compose(lake, SPEC, chosen, {"run_id": "retrain-1"})
    assert out.created and out.manifest["parents"] == [history, *months]
    frame = datasets.load_version(lake, out.version_id, "lending_club")
    assert frame["loan_id"].is_unique  # September is in the history and in its own month: once
    sizes = {v: len(datasets.load_version(lake, v, "lending_club")) for v in (history, *months)}
    assert len(frame) == sizes[history] + sizes[months[1]] + sizes[months[2]]
    assert out.manifest["rows"]["duplicates_across_parents"] == sizes[months[0]]
    assert out.manifest["interval"] == {"start": "2026-01-01T00:00:00+00:00", "end": "2026-12-01T00:00:00+00:00"}

    again = compose(lake, SPEC, chosen, {"run_id": "retrain-2"})  # the same window: the same version, once
    assert not again.created and again.version_id == out.version_id
    assert len(datasets.published(lake, "lending_club")) == 5
    single = compose(lake, SPEC, chosen[-1:], {"run_id": "retrain-3"})
    assert single.version_id == months[-1] and not single.created


def test_a_window_never_joins_two_key_generations(tmp_path: Path) -> None:
    """After a key rotation the same loan has another pseudonym: the window keeps the newest version's form
    (older intervals come back when they are re-ingested), and composing across forms is refused."""
    lake = Lake(tmp_path)
    old = publish(lake, "2026-09-01", "2026-10-01", "r9")
    rotated = Pseudonymizer.from_text(f"{generate_key('hk2')},{generate_key('hk1')}")  # hk2 writes now
    new = publish(lake, "2026-10-01", "2026-11-01", "r10", keys=rotated)
    chosen = select(lake, "lending_club", window_days=365)
    assert [m["dataset_version_id"] for m in chosen] == [new]
    with pytest.raises(LakeError, match="different keys"):
        compose(lake, SPEC, [datasets.read_manifest(lake, v, "lending_club") for v in (old, new)], {"run_id": "x"})
