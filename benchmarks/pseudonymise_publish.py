"""What keyed pseudonyms add to publishing a batch: the quality gate's stored outcome and the publish of 1M rows,
with the demo spec as it is (the key and `addr_state` stored as HMAC-SHA256 pseudonyms) and with both columns
`pii: keep` (stored in clear, as before issue 14), side by side in one process.

    python -m benchmarks.pseudonymise_publish [--rows 1000000] [--rounds 3] [--no-record]

Timed: `store_outcome` (quarantine, validated rows) + `publish` (curated version), from a gate outcome computed once
(the GX validation is the same on both sides: it reads raw values). Rounds alternate which side runs first; the
overhead is the median over rounds of pseudonymised / clear - 1 (goal <= 10 %). The same ratio against the whole
ingest (validation included) is printed too, and the floor: the keys' HMAC alone against the clear side.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.machine import check_quiet, command_line, median_ratio, report

ROOT = Path(__file__).resolve().parents[1]
RUN = {"dag_id": "benchmark", "run_id": "pseudonymise_publish"}


def batch(rows: int) -> Any:
    """An N-row resample of the demo data with unique keys, in the demo's first month."""
    import numpy as np
    import pandas as pd

    demo = pd.read_parquet(ROOT / "include" / "data" / "lending_club.parquet")
    rng = np.random.default_rng(11)
    frame = demo.iloc[rng.integers(0, len(demo), rows)].reset_index(drop=True)
    frame["loan_id"] = np.arange(1, rows + 1, dtype="int64")
    frame["application_month"] = pd.Timestamp("2026-01-01")
    return frame


def specs() -> tuple[Any, Any]:
    """The demo spec, and the same with the key and addr_state stored in clear."""
    import yaml

    from crispflow.spec import parse_spec

    data = yaml.safe_load((ROOT / "include" / "pipelines" / "lending_club.yaml").read_text())
    clear = yaml.safe_load((ROOT / "include" / "pipelines" / "lending_club.yaml").read_text())
    for column in clear["columns"]:
        if column["name"] in ("loan_id", "addr_state"):
            column.update(pii="keep", pii_reason="benchmark baseline")
    return parse_spec(data), parse_spec(clear)


def store_and_publish(spec: Any, frame: Any, assembled: dict[str, Any], outcome: Any, keys: Any,
                      interval: Any) -> float:
    from crispflow.data import datasets
    from crispflow.data.sources import Extract
    from crispflow.lake import Lake

    root = Path(tempfile.mkdtemp(prefix="crispflow-bench-pseudo-"))
    try:
        lake = Lake(root)
        extracts = [Extract("loans", frame, b"raw", "parquet", {"kind": "file", "sha256": "x"})]
        report_ = datasets.stage(lake, spec, interval, extracts, frame, dict(assembled))
        started = time.perf_counter()
        datasets.store_outcome(lake, spec, report_["batch_id"], outcome, keys)
        datasets.publish(lake, spec, report_["batch_id"], RUN)
        return time.perf_counter() - started
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-record", action="store_true", help="print only; do not append to RESULTS.md")
    args = parser.parse_args(argv)

    from datetime import datetime

    from crispflow.data.extracts import assemble
    from crispflow.data.quality import validate_batch
    from crispflow.data.sources import Extract, Interval
    from crispflow.governance.pseudonyms import Pseudonymizer, generate_key

    machine = check_quiet()
    keyed, clear = specs()
    keys = Pseudonymizer.from_text(generate_key())
    interval = Interval(datetime(2026, 1, 1), datetime(2026, 2, 1))
    raw = batch(args.rows)
    extracts = [Extract("loans", raw, b"raw", "parquet", {"kind": "file", "sha256": "x"})]
    frame, assembled = assemble(keyed, extracts, interval)
    started = time.perf_counter()
    outcome = validate_batch(keyed, frame, interval, "b-bench")
    validation = time.perf_counter() - started
    store_and_publish(keyed, frame, assembled, outcome, keys, interval)  # warm-up: imports, first writes
    with_keys: list[float] = []
    without: list[float] = []
    for i in range(args.rounds):
        order = [(with_keys, keyed, keys), (without, clear, None)]
        for times, spec, k in order if i % 2 == 0 else order[::-1]:
            times.append(store_and_publish(spec, frame, assembled, outcome, k, interval))
    texts = [str(v) for v in outcome.valid["loan_id"].tolist()]
    hmac_alone = []  # the floor: every row's key through HMAC-SHA256 and nothing else
    for _ in range(args.rounds):
        started = time.perf_counter()
        keys.many(texts)
        hmac_alone.append(time.perf_counter() - started)
    ratio = median_ratio(with_keys, without)
    floor = median_ratio(hmac_alone, without)
    whole = median_ratio([validation + t for t in with_keys], [validation + t for t in without])
    verdict = "met" if ratio - 1 <= 0.10 else "NOT met"
    report(
        f"## Pseudonymisation at publish ({args.rows:,} rows)\n\n"
        f"`{command_line('benchmarks.pseudonymise_publish', argv)}` — {machine.note}\n\n"
        f"| side | store outcome + publish (median of {args.rounds}) |\n|---|---|\n"
        f"| key and addr_state as keyed pseudonyms | {sorted(with_keys)[len(with_keys) // 2]:.2f} s |\n"
        f"| both stored in clear (`pii: keep`) | {sorted(without)[len(without) // 2]:.2f} s |\n\n"
        f"Pseudonymisation adds {ratio - 1:+.1%} to store + publish (goal <= +10 %: {verdict}); with the GX "
        f"validation of the same batch ({validation:.1f} s, identical on both sides) it adds {whole - 1:+.1%} to "
        "the whole gate + publish.\n\n"
        f"The floor: HMAC-SHA256 of the {len(texts):,} keys alone (`Pseudonymizer.many`, keyed states prepared "
        f"once, no sort, no Parquet) takes {sorted(hmac_alone)[len(hmac_alone) // 2]:.2f} s, {floor:.1%} of the "
        "clear side: a per-row CPython HMAC cannot stay within +10 % of this publish; that needs a compiled "
        "batch HMAC.\n",
        not args.no_record,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
