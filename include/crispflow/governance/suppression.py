"""The suppression list: subjects erased from a pipeline, so a re-ingest of an unchanged source cannot bring them back.

One empty marker file per subject and key, named by the subject's entity pseudonym
(`<lake>/governance/suppressed/<pipeline>/<key id>_<hex>`): adding is idempotent and safe beside a concurrent
erasure, and the list holds pseudonyms only. Staging drops a suppressed subject's rows before anything is written,
so they never reach the staged batch, the gate, the quarantine or a curated version.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from crispflow.governance.pseudonyms import canonical_text, is_pseudonym
from crispflow.lake import write_atomic

if TYPE_CHECKING:
    import pandas as pd

    from crispflow.governance.pseudonyms import Pseudonymizer
    from crispflow.lake import Lake, PathLike


def folder(lake: Lake, pipeline: str) -> PathLike:
    return lake.root / "governance" / "suppressed" / pipeline


def add(lake: Lake, pipeline: str, pseudonyms: Iterable[str]) -> None:
    """Suppress a subject, named by its entity pseudonyms (one per key)."""
    for name in pseudonyms:
        if not is_pseudonym(name):
            raise ValueError("suppression list: only entity pseudonyms (<key id>:<hex>) are listed")
        marker = folder(lake, pipeline) / name.replace(":", "_")
        if not marker.exists():
            write_atomic(marker, b"")


def listed(lake: Lake, pipeline: str) -> set[str]:
    """Every suppressed pseudonym of `pipeline`."""
    where = folder(lake, pipeline)
    if not where.exists():
        return set()
    return {p.name.replace("_", ":", 1) for p in where.iterdir() if is_pseudonym(p.name.replace("_", ":", 1))}


def present(lake: Lake, spec: Any, frame: pd.DataFrame, keys: Pseudonymizer | None) -> set[str]:
    """The clear keys (`canonical_text`) in `frame[spec.key]` of suppressed subjects, checked under each key id
    the list uses. A non-empty list with no keys to check it is an error, never a silent pass."""
    names = listed(lake, spec.name)
    if not names or spec.key not in frame.columns:
        return set()
    if keys is None:
        from crispflow.errors import CrispflowError

        raise CrispflowError(f"{spec.name}: the suppression list is not empty but no pseudonym keys are configured "
                             "(connection crispflow_pseudonyms): erased subjects cannot be kept out")
    return keys.which((canonical_text(v) for v in frame[spec.key].tolist() if v is not None and v == v), names)
