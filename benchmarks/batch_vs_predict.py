"""Batch scoring (crispflow's plan → score partitions → commit, Parquet in and out) vs a bare `predict_proba` of the
same rows, already in memory as a DataFrame, in one process.

    python -m benchmarks.batch_vs_predict [--rows 1000000] [--rounds 3] [--no-record]

Both sides score the same fitted pipelines of the lending_club spec (logistic regression, and gradient boosting),
with one native thread. crispflow's side is timed from plan to committed manifest: it reads the curated Parquet
range by range, scores each chunk with the model's verified compiled scorer (or the model itself), checks the
scores and writes zstd Parquet parts. The bare side is what a user would write instead: `model.predict_proba(X)`
on a DataFrame already loaded (its Parquet reading is not timed). Rounds alternate which side runs first; the ratio
is the median over rounds of crispflow rows/s / bare rows/s (goal >= 1.0).
"""

from __future__ import annotations

import argparse
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.machine import Machine, check_quiet, median_ratio, report
from benchmarks.scoring_scale import PIPELINE, WORK, generate

RUN = {"dag_id": "benchmark", "run_id": "batch_vs_predict"}
CANDIDATES = (("logistic regression", "logreg", {"C": 0.1}), ("gradient boosting", "hgb", {"max_iter": 100}))


def fit(spec: Any, candidate: str, params: dict[str, Any]) -> Any:
    import pandas as pd

    from crispflow.model.training import fit_final

    train = pd.read_parquet(Path(__file__).resolve().parents[1] / "include" / "data" / "lending_club.parquet")
    model, _, _ = fit_final(spec, {"config_id": f"{candidate}-0", "candidate": candidate, "params": params}, train)
    return model


def crispflow_batch(lake: Any, spec: Any, version_id: str, model: Any, tag: str) -> float:
    """Seconds from plan to committed manifest, every partition scored in this process."""
    from crispflow.serving import batch_scoring as scoring

    ref = scoring.ModelRef(f"crispflow-{PIPELINE}", tag, "bench", "0" * 64, "run-bench", 0.5)
    started = time.perf_counter()
    plan = scoring.plan_partitions(lake, spec, version_id, ref)["plan"]
    results = [scoring.score_partition(lake, spec, plan, p, lambda: model) for p in plan["partitions"]]
    scoring.commit(lake, plan["output"], RUN, results)
    return time.perf_counter() - started


def bare(model: Any, x: Any) -> float:
    started = time.perf_counter()
    model.predict_proba(x)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    import pandas as pd
    from threadpoolctl import threadpool_limits
    from upath import UPath

    from crispflow.lake import Lake
    from crispflow.model.features import features
    from crispflow.serving.batch_scoring import scores_dir
    from crispflow.spec import load_spec

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-record", action="store_true", help="do not append to benchmarks/RESULTS.md")
    args = parser.parse_args(argv)
    machine = check_quiet()
    spec = load_spec(PIPELINE)
    WORK.mkdir(exist_ok=True)
    lake = Lake(UPath(WORK / "lake"))
    version_id = generate(lake, args.rows)
    x = features(spec, pd.read_parquet(lake.root / lake.relative(lake.version_dir(PIPELINE, version_id))
                                       / "data.parquet"))
    rows = []
    with threadpool_limits(limits=1):
        for label, candidate, params in CANDIDATES:
            model = fit(spec, candidate, params)
            ours, theirs = [], []
            for r in range(args.rounds):
                tag = f"{candidate}-{r}-{time.time_ns()}"  # a fresh output folder: every round scores afresh
                for side in ("crispflow", "bare") if r % 2 == 0 else ("bare", "crispflow"):
                    if side == "crispflow":
                        ours.append(crispflow_batch(lake, spec, version_id, model, tag))
                    else:
                        theirs.append(bare(model, x))
                shutil.rmtree(scores_dir(lake, PIPELINE, version_id, tag), ignore_errors=True)
                print(f"{label} round {r + 1}: crispflow {ours[-1]:.2f} s, predict_proba {theirs[-1]:.2f} s",
                      flush=True)
            rows.append({"label": label, "ours": ours, "theirs": theirs,
                         "ratio": median_ratio(theirs, ours)})  # rows/s ratio = time ratio, inverted
    report(markdown(rows, args, version_id, machine), record=not args.no_record)
    return 0


def markdown(rows: list[dict[str, Any]], args: argparse.Namespace, version_id: str, machine: Machine) -> str:
    n = args.rows
    lines = [f"## Batch scoring vs a bare predict_proba, one process ({datetime.now(UTC):%Y-%m-%d %H:%M} UTC)", "",
             f"Command: `python -m benchmarks.batch_vs_predict --rows {n} --rounds {args.rounds}`; dataset "
             f"{version_id} ({n:,}-row resample of the demo data); {machine.note}; one native thread. crispflow: "
             "plan → score every partition (Parquet range reads, the verified compiled scorer, zstd Parquet parts) "
             "→ commit. Bare: `model.predict_proba(X)` on the rows already in memory (reading not timed). Rounds "
             "alternate which side goes first; the ratio is the median of per-round ratios.", "",
             "| model | crispflow batch rows/s (median) | bare predict_proba rows/s (median) | ratio | goal >= 1.0x |",
             "|---|---|---|---|---|"]
    for r in rows:
        ours, theirs = sorted(r["ours"])[len(r["ours"]) // 2], sorted(r["theirs"])[len(r["theirs"]) // 2]
        lines.append(f"| {r['label']} | {n / ours:,.0f} | {n / theirs:,.0f} | **{r['ratio']:.2f}x** | "
                     f"{'yes' if r['ratio'] >= 1.0 else 'no'} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
