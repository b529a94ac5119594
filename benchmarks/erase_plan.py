"""`crispflow erase plan` at scale: 36 curated versions of 1M rows and a year of prediction-log hours (8,760 files),
against what a user would write without crispflow's layout: read every file whole with pandas and filter.

    python -m benchmarks.erase_plan [--versions 36] [--rows 1000000] [--hours 8760] [--no-record]

The lake is built once in a temporary folder through crispflow's own writers (`crispflow.lake.write_parquet`, so
curated files have the library's row groups), sorted by the key's pseudonym as publish stores them; the subject
is in one version and in three hours. Goal: the plan in <= 10 s.
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
    """The lake and prediction log; returns the subject's key."""
    import numpy as np
    import pandas as pd

    from crispflow.lake import write_parquet

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
        write_parquet(folder / f"part-{h}.parquet",
                      pd.DataFrame({"request_id": [f"r{h}-{i}" for i in range(40)], "entity": entities,
                                    "score": rng.random(40)}))
    return subject


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
    parser.add_argument("--no-record", action="store_true", help="print only; do not append to RESULTS.md")
    args = parser.parse_args(argv)

    from crispflow.erasure.plan import Subject, plan
    from crispflow.governance.pseudonyms import Pseudonymizer, generate_key
    from crispflow.lake import Lake
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
        started = time.perf_counter()
        found = plan(Lake(root / "lake"), spec, subject, keys, root / "predictions", MODEL)
        planned = time.perf_counter() - started
        started = time.perf_counter()
        baseline = naive(root, set(subject.names))
        read_all = time.perf_counter() - started
    finally:
        shutil.rmtree(root, ignore_errors=True)
    assert len(found.places) == baseline == 4, (found.places, baseline)
    verdict = "met" if planned <= 10 else "NOT met"
    report(
        f"## Erasure plan ({args.versions} curated versions x {args.rows:,} rows + {args.hours:,} prediction-log "
        f"hours)\n\n`{command_line('benchmarks.erase_plan', argv)}` — {machine.note}\n\n"
        "| side | time to find the subject's 4 files |\n|---|---|\n"
        f"| `crispflow erase plan` (row-group statistics on sorted curated files, the log's `entity` column) | "
        f"{planned:.1f} s |\n"
        f"| pandas: read every file whole and filter | {read_all:.1f} s |\n\n"
        f"Goal <= 10 s: {verdict} ({read_all / planned:.1f}x faster than reading everything; building the lake "
        f"took {built:.0f} s).\n",
        not args.no_record,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
