"""`crispflow drift`'s engine vs Evidently's DataDriftPreset vs one raw numpy pass, side by side in one run.

    python -m benchmarks.drift_vs_evidently            # 100k and 1M rows; appends to benchmarks/RESULTS.md
    python -m benchmarks.drift_vs_evidently --rows 100000 --no-write

Data: reference and current windows of N rows x 20 columns (15 numeric of varied shapes, 5 categorical text
columns), generated with a fixed seed; the current window is shifted in 3 columns (num_00 mean +0.5 sd, num_01
scale x1.5, cat_0 frequencies). Each contender runs in its own fresh process (benchmarks/drift_runner.py) that
loads the Parquet files first (not timed), then times the engine and reports peak RSS:

- crispflow: `build_profile` on the reference (done once per model version, at training time) and
  `compute_drift` of the window; "window" is the latter alone, "total" both.
- evidently 0.7.23 `Report([DataDriftPreset()]).run(current, reference)`, in its own venv
  (benchmarks/.work/evidently-venv, created here with uv: Evidently does not import with pandas 3).
- floor: one `np.histogram` (numeric) or `factorize` + `bincount` (categorical) per column of the window.

Agreement: each engine's per-column decision against the truth (3 shifted, 17 unshifted columns).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "RESULTS.md"
WORK = HERE / ".work"
EVIDENTLY_VENV = WORK / "evidently-venv"
EVIDENTLY_PINS = ("evidently==0.7.23", "pandas==2.3.3")
NUMERIC = [f"num_{i:02d}" for i in range(15)]
CATEGORICAL = [f"cat_{i}" for i in range(5)]
SHIFTED = {"num_00", "num_01", "cat_0"}
UV = Path.home() / ".local" / "bin" / "uv"


def make_frame(rows: int, seed: int, shifted: bool) -> pd.DataFrame:
    """20 columns: normal, lognormal, integer counts, uniform; categoricals with 4-40 values, skewed."""
    rng = np.random.default_rng(seed)
    cols: dict[str, Any] = {}
    for i, name in enumerate(NUMERIC):
        kind = i % 4
        if kind == 0:
            values = rng.normal(0.0, 1.0, rows)
        elif kind == 1:
            values = rng.lognormal(0.0, 0.75, rows)
        elif kind == 2:
            values = rng.poisson(2.0 + i, rows).astype(float)
        else:
            values = rng.uniform(0.0, 100.0, rows)
        cols[name] = values
    if shifted:
        cols["num_00"] = cols["num_00"] + 0.5
        cols["num_01"] = cols["num_01"] * 1.5
    for i, name in enumerate(CATEGORICAL):
        k = (4, 8, 12, 20, 40)[i]
        weights = 1.0 / np.arange(1, k + 1)
        if shifted and name == "cat_0":
            weights = weights[::-1]
        labels = np.array([f"{name}_v{j}" for j in range(k)], dtype=object)
        cols[name] = pd.Series(labels[rng.choice(k, rows, p=weights / weights.sum())], dtype="str")
    return pd.DataFrame(cols)


def ensure_evidently() -> Path:
    python = EVIDENTLY_VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([str(UV), "venv", "-q", str(EVIDENTLY_VENV), "--python", "3.11"], check=True)
        subprocess.run([str(UV), "pip", "install", "-q", "--python", str(python), *EVIDENTLY_PINS], check=True)
    return python


def run_engine(python: Path | str, engine: str, config: Path) -> dict[str, Any]:
    result = subprocess.run([str(python), str(HERE / "drift_runner.py"), engine, str(config)], capture_output=True,
                            text=True, check=False, cwd=HERE.parent)
    if result.returncode:
        raise RuntimeError(f"{engine} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def agreement(decisions: dict[str, bool]) -> dict[str, int]:
    return {"shifted_flagged": sum(decisions.get(c, False) for c in SHIFTED),
            "unshifted_flagged": sum(decisions.get(c, False) for c in NUMERIC + CATEGORICAL if c not in SHIFTED)}


def bench(rows: int, evidently: Path | None) -> dict[str, Any]:
    folder = WORK / f"drift-{rows}"
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "config.json"
    config.write_text(json.dumps({"reference": str(folder / "reference.parquet"),
                                  "current": str(folder / "current.parquet"),
                                  "numeric": NUMERIC, "categorical": CATEGORICAL}))
    make_frame(rows, 1, False).to_parquet(folder / "reference.parquet")
    make_frame(rows, 2, True).to_parquet(folder / "current.parquet")
    out = {"rows": rows, "crispflow": run_engine(sys.executable, "crispflow", config),
           "floor": run_engine(sys.executable, "floor", config)}
    if evidently is not None:
        out["evidently"] = run_engine(evidently, "evidently", config)
    print(json.dumps(out, indent=1), flush=True)
    return out


def markdown(results: list[dict[str, Any]], command: str) -> str:
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"## Drift detection: crispflow vs Evidently DataDriftPreset vs a raw numpy pass ({when})", "",
             f"Command: `{command}` (from the repo root, project venv; Evidently 0.7.23 + pandas 2.3.3 in "
             f"benchmarks/.work/evidently-venv); {platform.machine()}, {_cpus()} CPUs; each engine in a fresh "
             "process, Parquet loading and imports not timed; 20 columns (15 numeric, 5 categorical), shift in "
             "num_00, num_01, cat_0.", "",
             "| rows | engine | seconds | peak RSS MB (after load) | shifted flagged (of 3) "
             "| unshifted flagged (of 17) |",
             "|---|---|---|---|---|---|"]
    for r in results:
        c = r["crispflow"]
        rows = [("crispflow window (`compute_drift`)", c["drift_seconds"], c), ("crispflow profile + window",
                c["seconds"], c), ("raw numpy pass (floor)", r["floor"]["seconds"], r["floor"])]
        if "evidently" in r:
            rows.append(("Evidently DataDriftPreset", r["evidently"]["seconds"], r["evidently"]))
        for name, seconds, res in rows:
            agree = agreement(res["decisions"]) if res["decisions"] else None
            lines.append(f"| {r['rows']:,} | {name} | {seconds:.3f} | {res['peak_rss_mb']:.0f} "
                         f"({res['loaded_rss_mb']:.0f}) | {agree['shifted_flagged'] if agree else '-'} | "
                         f"{agree['unshifted_flagged'] if agree else '-'} |")
    lines.append("")
    for r in results:
        c, floor = r["crispflow"], r["floor"]["seconds"]
        text = (f"- {r['rows']:,} rows: window {c['drift_seconds'] / floor:.1f}x the raw pass (goal <= 3x)")
        if "evidently" in r:
            ev = r["evidently"]["seconds"]
            text += (f"; Evidently / crispflow = {ev / c['seconds']:.0f}x for profile + window, "
                     f"{ev / c['drift_seconds']:.0f}x for the window alone (goal >= 100x)")
        lines.append(text + ".")
    lines += ["", "Decisions differ in kind: Evidently flags a column when its normed Wasserstein distance "
              "(numeric) or Jensen-Shannon distance (categorical) is >= 0.1, whatever the sample size; crispflow "
              "flags it when a two-sample test (KS on binned CDFs / chi-square on counts) is significant after "
              "Benjamini-Hochberg at 1 % and PSI >= 0.01. Peak RSS is the process maximum, loading included.", ""]
    return "\n".join(lines)


def _cpus() -> int:
    import os

    return os.cpu_count() or 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="100000,1000000", help="comma-separated window sizes")
    parser.add_argument("--skip-evidently", action="store_true")
    parser.add_argument("--no-write", action="store_true", help="do not append to benchmarks/RESULTS.md")
    args = parser.parse_args(argv)
    evidently = None if args.skip_evidently else ensure_evidently()
    results = [bench(int(n), evidently) for n in args.rows.split(",")]
    command = "python -m benchmarks.drift_vs_evidently" + (f" --rows {args.rows}" if argv else "")
    text = markdown(results, command)
    print(text)
    if not args.no_write:
        with RESULTS.open("a") as handle:
            handle.write("\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
