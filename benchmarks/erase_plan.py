"""`crispflow erase plan` at scale: 36 curated versions of 1M rows and a year of prediction-log hours (8,760 files),
against what a user would write without crispflow's layout: read every file whole with pandas and filter.

    python -m benchmarks.erase_plan [--versions 36] [--rows 1000000] [--hours 8760] [--fp-queries 1000000]
                                    [--no-record]

The lake is built once in a temporary folder through crispflow's own writers (`crispflow.lake.write_parquet`, so
curated files have the library's row groups), sorted by the key's pseudonym as publish stores them; the subject
is in one version and in three hours. Each hour part gets its entity index as the prediction log's writer makes
it (`crispflow.predictions.writer.entity_index`); the plan is timed with the indexes, then without them (a log
written before indexes). The indexes' false-positive rate is measured by asking them for pseudonyms that are in
no hour. Goals: the plan in <= 10 s; the measured false-positive rate within 2x of the design rate.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.machine import check_quiet, command_line, report

MODEL = "crispflow-lending_club"


def build(root: Path, versions: int, rows: int, hours: int, keys: Any) -> str:
    """The lake and prediction log (each hour part with its entity index); returns the subject's key."""
    import numpy as np
    import pandas as pd
    import pyarrow as pa

    from crispflow.lake import write_atomic, write_parquet
    from crispflow.predictions.store import INDEX_SUFFIX
    from crispflow.predictions.writer import entity_index

    rng = np.random.default_rng(5)
    subject = str(rows * versions + 7)
    for v in range(versions):
        ids = np.arange(v * rows + 1, (v + 1) * rows + 1)
        names = keys.many([str(i) for i in ids])
        if v == versions // 2:
            names[rows // 3] = keys.pseudonym(subject)
        frame = pd.DataFrame({"loan_id": names, "loan_amnt": rng.normal(15_000, 5_000, rows),
                              "int_rate": rng.normal(12, 4, rows), "Class": rng.integers(0, 2, rows)})
        write_parquet(root / "lake" / "curated" / "lending_club" / f"ds-{v:016x}" / "data.parquet",
                      frame.sort_values("loan_id", kind="mergesort").reset_index(drop=True))
    hit_hours = {hours // 5, hours // 2, hours - 3}
    pool = keys.many([str(i) for i in range(1, 20_001)])
    for h in range(hours):
        entities = [pool[(h * 37 + i) % len(pool)] for i in range(40)]
        if h in hit_hours:
            entities[11] = keys.pseudonym(subject)
        day, hour = divmod(h, 24)
        date = f"2026-{1 + day // 31 % 12:02d}-{1 + day % 31:02d}" if day < 372 else f"2027-{day:04d}"
        folder = root / "predictions" / MODEL / "predictions" / f"date={date}" / f"hour={hour:02d}"
        part = pd.DataFrame({"request_id": [f"r{h}-{i}" for i in range(40)], "entity": entities,
                             "score": rng.random(40)})
        write_parquet(folder / f"part-{h}.parquet", part)
        write_atomic(folder / f"part-{h}.parquet{INDEX_SUFFIX}", entity_index(pa.Table.from_pandas(part)))
    return subject


def false_positive_rate(indexes: list[Path], absent: list[str]) -> tuple[float, float]:
    """(measured, expected) false-positive rate of the hour indexes: each absent pseudonym is asked of one index
    in turn; expected is the mean of the filters' own estimate for the entities they hold."""
    from crispflow.governance.bloom import BloomFilter

    filters = [BloomFilter.from_bytes(path.read_bytes()) for path in indexes]
    hits = sum(int(bloom.might_contain(absent[i :: len(filters)]).sum()) for i, bloom in enumerate(filters))
    return hits / len(absent), sum(bloom.expected_fp_rate() for bloom in filters) / len(filters)


def naive(root: Path, names: set[str]) -> int:
    """Every curated and prediction file read whole with pandas, filtered on the key column."""
    import pandas as pd

    found = 0
    for path in sorted((root / "lake" / "curated").rglob("*.parquet")):
        found += int(pd.read_parquet(path)["loan_id"].isin(names).any())
    for path in sorted((root / "predictions").rglob("*.parquet")):
        found += int(pd.read_parquet(path)["entity"].isin(names).any())
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--versions", type=int, default=36)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--hours", type=int, default=8_760)
    parser.add_argument("--fp-queries", type=int, default=1_000_000,
                        help="absent pseudonyms asked of the hour indexes to measure their false-positive rate")
    parser.add_argument("--no-record", action="store_true", help="print only; do not append to RESULTS.md")
    args = parser.parse_args(argv)

    from crispflow.erasure.plan import Subject, plan
    from crispflow.governance.pseudonyms import Pseudonymizer, generate_key
    from crispflow.lake import Lake
    from crispflow.predictions.store import INDEX_SUFFIX
    from crispflow.predictions.writer import INDEX_FP_RATE
    from crispflow.spec import load_spec

    keys = Pseudonymizer.from_text(generate_key())
    spec = load_spec("lending_club")
    root = Path(tempfile.mkdtemp(prefix="crispflow-bench-erase-"))
    try:
        started = time.perf_counter()
        subject_key = build(root, args.versions, args.rows, args.hours, keys)
        built = time.perf_counter() - started
        machine = check_quiet()
        subject = Subject.of_key(spec, subject_key, keys)
        indexes = sorted((root / "predictions").rglob(f"*{INDEX_SUFFIX}"))
        index_bytes = sum(p.stat().st_size for p in indexes)
        log_bytes = sum(p.stat().st_size for p in (root / "predictions").rglob("*.parquet"))
        measured, expected = false_positive_rate(indexes, keys.many([str(10**12 + i) for i in range(args.fp_queries)]))

        def timed(lake: Path) -> tuple[Any, float]:
            started = time.perf_counter()
            found = plan(Lake(lake), spec, subject, keys, root / "predictions", MODEL)
            return found, time.perf_counter() - started

        found, planned = timed(root / "lake")  # first: it also pays the warm-up
        log_found, log_only = timed(root / "no-lake")
        for path in indexes:
            path.unlink()  # a log written before indexes: every part is read
        found_plain, planned_plain = timed(root / "lake")
        _, log_only_plain = timed(root / "no-lake")
        started = time.perf_counter()
        baseline = naive(root, set(subject.names))
        read_all = time.perf_counter() - started
    finally:
        shutil.rmtree(root, ignore_errors=True)
    assert len(found.places) == len(found_plain.places) == baseline == 4, (found.places, found_plain.places, baseline)
    assert len(log_found.places) == 3 and found.files_scanned == found_plain.files_scanned
    verdict = "met" if planned <= 10 else "NOT met"
    fp_verdict = "met" if measured <= 2 * INDEX_FP_RATE else "NOT met"
    report(
        f"## Erasure plan ({args.versions} curated versions x {args.rows:,} rows + {args.hours:,} prediction-log "
        f"hours)\n\n`{command_line('benchmarks.erase_plan', argv)}` — {machine.note}\n\n"
        "| side | time to find the subject's 4 files | of which the prediction log's 3 |\n|---|---|---|\n"
        f"| `crispflow erase plan` (row-group statistics on sorted curated files, the hour parts' entity indexes) | "
        f"{planned:.1f} s | {log_only:.1f} s |\n"
        f"| `crispflow erase plan`, hour parts without index (a log written before indexes: the `entity` column "
        f"read) | {planned_plain:.1f} s | {log_only_plain:.1f} s |\n"
        f"| pandas: read every file whole and filter | {read_all:.1f} s | |\n\n"
        f"Goal <= 10 s: {verdict} ({read_all / planned:.1f}x faster than reading everything; building the lake "
        f"took {built:.0f} s).\n\n"
        f"Entity indexes: {len(indexes):,} files, {index_bytes / 1e3:,.0f} kB ({index_bytes / log_bytes:.1%} of the "
        f"log's {log_bytes / 1e6:,.1f} MB of Parquet). False-positive rate measured on {args.fp_queries:,} absent "
        f"pseudonyms: {measured:.4%} for a design rate of {INDEX_FP_RATE:.4%} (the filters' own estimate "
        f"{expected:.4%}); goal within 2x of the design rate: {fp_verdict} ({measured / INDEX_FP_RATE:.2f}x).\n",
        not args.no_record,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
