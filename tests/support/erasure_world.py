"""A lake where one subject is everywhere an erasure must reach, for the erasure tests: two months (January as a
raw CSV), a quarantined duplicate, a composed window, the frozen holdout, batch scores and the prediction log with
feedback. Built on any lake root (a local folder or an S3 prefix), and a check of whether one file (or one S3
object version) still holds the subject in any form.

PYTEST_DONT_REWRITE
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import yaml

from crispflow.data import datasets, training_window
from crispflow.data.extracts import assemble
from crispflow.data.quality import validate_batch
from crispflow.data.sources import Extract, Interval, parse_bytes
from crispflow.erasure.plan import Subject
from crispflow.erasure.run import Request
from crispflow.governance.erasure_ledger import ErasureLedger
from crispflow.governance.pseudonyms import canonical_text
from crispflow.lake import Lake, write_atomic, write_parquet
from crispflow.model import holdout
from crispflow.predictions.store import INDEX_SUFFIX
from crispflow.predictions.writer import entity_index
from crispflow.spec import load_spec, parse_spec
from support.keys import session_keys

ROOT = Path(__file__).resolve().parents[2]
MODEL = "crispflow-lending_club"
REQUEST = Request("T-77", "LGPD art. 18 VI", "dpo@example.org")
MONTHS = [Interval(datetime(2026, 1, 1), datetime(2026, 2, 1)), Interval(datetime(2026, 2, 1), datetime(2026, 3, 1))]


def subject(key: str) -> Subject:
    return Subject.of_key(load_spec("lending_club"), key, session_keys())


def clear_key_spec() -> Any:
    """lending_club with its key stored in clear past the raw landing (`pii: keep`): an erasure must still reach
    every store, where the key reads as itself instead of a pseudonym."""
    data = yaml.safe_load((ROOT / "include/pipelines/lending_club.yaml").read_text())
    for column in data["columns"]:
        if column["name"] == data["key"]:
            column.update(pii="keep", pii_reason="the servicing system's own loan number")
    return parse_spec(data)


@dataclass
class World:
    lake: Lake
    predictions: Any  # the prediction store's root: the lake's `predictions/` folder or prefix
    ledger: ErasureLedger
    ledger_url: str
    key: str
    spec: Any
    sources: list[list[Extract]]
    versions: list[str]  # the two months' versions, then the composed window


def extract(frame: pd.DataFrame, fmt: str) -> Extract:
    buffer = io.BytesIO()
    frame.to_csv(buffer, index=False) if fmt == "csv" else frame.to_parquet(buffer, index=False)
    data = buffer.getvalue()
    return Extract("loans", parse_bytes("loans", data, fmt), data, fmt, {"kind": "file", "sha256": fmt})


def ingest(lake: Lake, spec: Any, interval: Interval, extracts: list[Extract]) -> datasets.Published:
    batch, report = assemble(spec, extracts, interval)
    report = datasets.stage(lake, spec, interval, extracts, batch, report, session_keys())
    batch, _ = datasets.load_batch(lake, spec.name, report["batch_id"])  # what the gate reads
    outcome = validate_batch(spec, batch, interval, report["batch_id"])
    datasets.store_outcome(lake, spec, report["batch_id"], outcome, session_keys())
    return datasets.publish(lake, spec, report["batch_id"], {"dag_id": "t", "run_id": "r"})


def build(base: Any, ledger_dir: Path, spec: Any = None) -> World:
    """The world under `base` (`lake/`, the prediction log in `lake/predictions/` as by default), its erasure
    ledger a SQLite file in `ledger_dir`; `spec`: lending_club as shipped unless given (e.g. `clear_key_spec`)."""
    spec = spec or load_spec("lending_club")
    demo = pd.read_parquet(ROOT / "include/data/lending_club.parquet")
    january = demo[demo["application_month"] < "2026-02-01"].head(250)
    february = demo[(demo["application_month"] >= "2026-02-01") & (demo["application_month"] < "2026-03-01")].head(250)
    row = february.iloc[[11]]
    key = str(int(row["loan_id"].iat[0]))
    # the subject in both months (January as a raw CSV), and twice in February (one row is quarantined)
    january_row = row.assign(application_month=january["application_month"].iat[0])
    sources = [[extract(pd.concat([january, january_row], ignore_index=True), "csv")],
               [extract(pd.concat([february, row], ignore_index=True), "parquet")]]
    lake = Lake(base / "lake")
    months = [ingest(lake, spec, interval, extracts) for interval, extracts in zip(MONTHS, sources, strict=True)]
    window = training_window.compose(lake, spec, [m.manifest for m in months], {"dag_id": "t", "run_id": "r"})
    dataset = datasets.load_version(lake, window.version_id, spec.name)
    cut, _ = holdout.frozen_holdout(lake, spec, dataset, window.version_id)
    name = session_keys().pseudonym(key)
    stored = name if spec.pii_policy(spec.key) == "hmac" else int(key)
    assert stored in set(cut[spec.key]), "the subject is in the time holdout (February)"
    write_parquet(lake.root / "scores" / spec.name / "run=1" / "scores.parquet", cut[[spec.key]].assign(score=0.5))
    hour = base / "lake" / "predictions" / MODEL / "predictions" / "date=2026-02-05" / "hour=10"
    served = pd.DataFrame({"request_id": ["a", "b", "c"], "entity": [name, session_keys().pseudonym("1"), name],
                           "label": [1.0, None, 0.0]})
    write_parquet(hour / "part-1.parquet", served)
    write_atomic(hour / f"part-1.parquet{INDEX_SUFFIX}", entity_index(pa.Table.from_pandas(served)))  # as logged
    url = f"sqlite:///{ledger_dir / 'ledger.db'}"
    return World(lake, base / "lake" / "predictions", ErasureLedger(url), url, key, spec, sources,
                 [months[0].version_id, months[1].version_id, window.version_id])


def holds_subject(name: str, data: bytes, needles: list[str], key: str) -> bool:
    """Whether a file named `name` with bytes `data` names or holds one of `needles` (pseudonyms, anywhere: in the
    name, a text, a table's value) or the clear `key` (in a table's key column, or as a value in any other text:
    `key_as_value`)."""
    if any(n in name or n.replace(":", "_") in name or n.encode() in data for n in needles):
        return True
    if name.endswith((".parquet", ".csv")) and data:
        buffer = io.BytesIO(data)
        frame = pd.read_parquet(buffer) if name.endswith(".parquet") else pd.read_csv(buffer, dtype=str)
        texts = {str(v) for c in frame.columns for v in frame[c].dropna().tolist()}
        keys = {canonical_text(v) for c in ("loan_id", "entity") if c in frame for v in frame[c].dropna()}
        return bool(texts & set(needles)) or key in keys
    return bool(key_as_value(key).search(data))


def key_as_value(key: str) -> re.Pattern[bytes]:
    """The key as a record holds it in text: after a key-like field name (`"loan_id": 105`, `entity=105`) or
    quoted (`'105'`). Demo keys are small numbers, so a bare number would also match line numbers and times."""
    return re.compile(rf"(?:loan_id|entity|key|subject)[\"']?\W{{0,8}}{key}(?![\w.])|[\"']{key}[\"']".encode())


def occurrences(root: Path, needles: list[str], key: str) -> list[str]:
    """Every file under the local folder `root` that holds the subject (`holds_subject`)."""
    return [str(p) for p in sorted(root.rglob("*")) if p.is_file() and holds_subject(str(p), p.read_bytes(),
                                                                                      needles, key)]
