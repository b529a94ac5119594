"""`crispflow drift` vs Evidently's DataDriftPreset vs one raw numpy pass, side by side in one run.

    python -m benchmarks.drift_vs_evidently            # 100k and 1M rows, 3 rounds; appends to benchmarks/RESULTS.md
    python -m benchmarks.drift_vs_evidently --rows 100000 --no-write

Data: reference and current windows of N rows x 20 columns (15 numeric of varied shapes, 5 categorical text
columns), generated with a fixed seed and written as Parquet; the current window is shifted in 3 columns (num_00
mean +0.5 sd, num_01 scale x1.5, cat_0 frequencies). Each contender runs in its own fresh process, in alternating
order over the rounds (`--rounds`); ratios are medians of the per-round ratios (`benchmarks.machine`):

- engines (benchmarks/drift_runner.py, which loads the Parquet files first, not timed): crispflow `build_profile`
  on the reference (done once per model version, at training time) and `compute_drift` of the window ("window" is
  the latter alone, "profile + window" both); evidently 0.7.23 `Report([DataDriftPreset()]).run(current,
  reference)`, in its own venv (benchmarks/.work/evidently-venv, created here with uv: Evidently does not import
  with pandas 3); the floor: one `np.histogram` (numeric) or `factorize` + `bincount` (categorical) per column.
- whole processes (wall time, imports and Parquet reading included): `crispflow drift --reference REF.parquet
  --current CUR.parquet --format json` vs the Evidently runner process.
- the small case: `crispflow drift` on two CSV files (4,000 vs 2,000 rows x 8 columns), whole process.

Agreement: each engine's per-column decision against the truth (3 shifted, 17 unshifted columns).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.machine import Machine, check_quiet, command_line, median_ratio, report

HERE = Path(__file__).resolve().parent
WORK = HERE / ".work"
EVIDENTLY_VENV = WORK / "evidently-venv"
EVIDENTLY_PINS = ("evidently==0.7.23", "pandas==2.3.3")
NUMERIC = [f"num_{i:02d}" for i in range(15)]
CATEGORICAL = [f"cat_{i}" for i in range(5)]
SHIFTED = {"num_00", "num_01", "cat_0"}
UV = Path.home() / ".local" / "bin" / "uv"
GNU_TIME = "/usr/bin/time"


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


def small_frame(rows: int, seed: int, shift: float) -> pd.DataFrame:
    """The small CSV case: 5 numeric columns (the first shifted by `shift` sd) and 3 categorical ones."""
    rng = np.random.default_rng(seed)
    cols: dict[str, Any] = {f"x{i}": rng.normal(shift if i == 0 else 0.0, 1.0, rows) for i in range(5)}
    cols |= {f"c{i}": rng.choice(np.array(list("abcdef"), dtype=object), rows) for i in range(3)}
    return pd.DataFrame(cols)


def ensure_evidently() -> Path:
    python = EVIDENTLY_VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([str(UV), "venv", "-q", str(EVIDENTLY_VENV), "--python", "3.11"], check=True)
        subprocess.run([str(UV), "pip", "install", "-q", "--python", str(python), *EVIDENTLY_PINS], check=True)
    return python


def run_process(argv: list[str], ok: tuple[int, ...] = (0,)) -> dict[str, Any]:
    """Run one process to the end: wall seconds, peak RSS (MB, by GNU time: a forked child's own rusage would
    count this parent's memory) and stdout; RuntimeError on another exit code."""
    with tempfile.TemporaryDirectory() as tmp:
        peak = Path(tmp) / "peak"
        timer = [GNU_TIME, "-f", "%M", "-o", str(peak)] if Path(GNU_TIME).exists() else []
        started = time.perf_counter()
        proc = subprocess.run([*timer, *argv], capture_output=True, text=True, check=False, cwd=HERE.parent)
        wall = time.perf_counter() - started
        if proc.returncode not in ok:
            raise RuntimeError(f"{argv[:4]} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
        rss = int(peak.read_text().split()[-1]) / 1024 if timer else float("nan")
        return {"wall": wall, "peak_rss_mb": rss, "stdout": proc.stdout}


def run_engine(python: Path | str, engine: str, config: Path) -> dict[str, Any]:
    """One drift_runner process: its own timings, plus the process's wall time."""
    done = run_process([str(python), str(HERE / "drift_runner.py"), engine, str(config)])
    return json.loads(done["stdout"].strip().splitlines()[-1]) | {"wall": done["wall"]}


def crispflow_cli() -> list[str]:
    script = Path(sys.executable).parent / "crispflow"
    return [str(script)] if script.exists() else [sys.executable, "-m", "crispflow.stack.main"]


def run_cli(reference: Path, current: Path) -> dict[str, Any]:
    """The whole `crispflow drift` process (exit 0 or 1 = a verdict) and its per-column decisions."""
    done = run_process([*crispflow_cli(), "drift", "--reference", str(reference), "--current", str(current),
                        "--format", "json"], ok=(0, 1))
    report = json.loads(done["stdout"])
    return {"seconds": done["wall"], "wall": done["wall"], "peak_rss_mb": done["peak_rss_mb"],
            "decisions": {name: bool(r["drifted"]) for name, r in report["features"].items()}}


def agreement(decisions: dict[str, bool]) -> dict[str, int]:
    return {"shifted_flagged": sum(decisions.get(c, False) for c in SHIFTED),
            "unshifted_flagged": sum(decisions.get(c, False) for c in NUMERIC + CATEGORICAL if c not in SHIFTED)}


def rounds_of(contenders: dict[str, Any], rounds: int) -> dict[str, list[dict[str, Any]]]:
    """Every contender once per round, the order reversed every other round."""
    names = list(contenders)
    out: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            out[name].append(contenders[name]())
    return out


def bench(rows: int, evidently: Path | None, rounds: int) -> dict[str, Any]:
    folder = WORK / f"drift-{rows}"
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "config.json"
    ref, cur = folder / "reference.parquet", folder / "current.parquet"
    config.write_text(json.dumps({"reference": str(ref), "current": str(cur), "numeric": NUMERIC,
                                  "categorical": CATEGORICAL}))
    make_frame(rows, 1, False).to_parquet(ref)
    make_frame(rows, 2, True).to_parquet(cur)
    contenders: dict[str, Any] = {"crispflow": lambda: run_engine(sys.executable, "crispflow", config),
                                  "floor": lambda: run_engine(sys.executable, "floor", config),
                                  "cli": lambda: run_cli(ref, cur)}
    if evidently is not None:
        contenders["evidently"] = lambda: run_engine(evidently, "evidently", config)
    out = {"rows": rows, **rounds_of(contenders, rounds)}
    print(json.dumps({k: v if k == "rows" else [_short(x) for x in v] for k, v in out.items()}), flush=True)
    return out


def small_csv(rounds: int) -> dict[str, Any]:
    """`crispflow drift` on 4,000 vs 2,000 rows x 8 CSV columns: whole process, next to a bare interpreter start."""
    folder = WORK / "drift-small-csv"
    folder.mkdir(parents=True, exist_ok=True)
    ref, cur = folder / "reference.csv", folder / "current.csv"
    small_frame(4000, 1, 0.0).to_csv(ref, index=False)
    small_frame(2000, 2, 0.3).to_csv(cur, index=False)
    out = rounds_of({"cli": lambda: run_cli(ref, cur),
                     "python": lambda: run_process([sys.executable, "-c", "pass"])}, rounds)
    print(json.dumps({k: [_short(x) for x in v] for k, v in out.items()}), flush=True)
    return out


def _short(result: dict[str, Any]) -> dict[str, Any]:
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in result.items() if k not in ("stdout",
                                                                                                 "decisions")}


def _median(results: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in results)


def _ratio(a: list[dict[str, Any]], a_key: str, b: list[dict[str, Any]], b_key: str) -> float:
    return median_ratio([r[a_key] for r in a], [r[b_key] for r in b])


def markdown(results: list[dict[str, Any]], small: dict[str, Any] | None, command: str, machine: Machine,
             rounds: int) -> str:
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"## Drift detection: crispflow vs Evidently DataDriftPreset vs a raw numpy pass ({when})", "",
             f"Command: `{command}` (from the repo root, project venv; Evidently 0.7.23 + pandas 2.3.3 in "
             f"benchmarks/.work/evidently-venv); {machine.note}. Each contender in a fresh process, {rounds} "
             "round(s) in alternating order, medians shown; engine rows exclude imports and Parquet loading, "
             "process rows are the wall time of the whole process (imports and reading included); 20 columns "
             "(15 numeric, 5 categorical), shift in num_00, num_01, cat_0.", "",
             "| rows | contender | seconds | peak RSS MB | shifted flagged (of 3) | unshifted flagged (of 17) |",
             "|---|---|---|---|---|---|"]
    for r in results:
        table = [("crispflow window (`compute_drift`)", r["crispflow"], "drift_seconds"),
                 ("crispflow profile + window", r["crispflow"], "seconds"),
                 ("raw numpy pass (floor)", r["floor"], "seconds"),
                 ("`crispflow drift` process (Parquet)", r["cli"], "wall")]
        if "evidently" in r:
            table += [("Evidently DataDriftPreset", r["evidently"], "seconds"),
                      ("Evidently process (imports, Parquet, report)", r["evidently"], "wall")]
        for name, res, key in table:
            agree = agreement(res[0]["decisions"]) if res[0]["decisions"] else None
            lines.append(f"| {r['rows']:,} | {name} | {_median(res, key):.3f} | {_median(res, 'peak_rss_mb'):.0f} "
                         f"| {agree['shifted_flagged'] if agree else '-'} | "
                         f"{agree['unshifted_flagged'] if agree else '-'} |")
    lines.append("")
    for r in results:
        c = r["crispflow"]
        text = f"- {r['rows']:,} rows: window / raw pass = {_ratio(c, 'drift_seconds', r['floor'], 'seconds'):.1f}x " \
               "(goal <= 2x)"
        if "evidently" in r:
            ev = r["evidently"]
            text += (f"; Evidently / crispflow = {_ratio(ev, 'seconds', c, 'seconds'):.0f}x for profile + window "
                     f"(goal >= 100x), {_ratio(ev, 'seconds', c, 'drift_seconds'):.0f}x for the window alone, "
                     f"{_ratio(ev, 'wall', r['cli'], 'wall'):.0f}x for the whole process (goal >= 50x)")
        lines.append(text + ".")
    if small is not None:
        cli = small["cli"]
        lines.append(f"- Small CSV (4,000 vs 2,000 rows x 8): the whole `crispflow drift` process takes "
                     f"{_median(cli, 'wall'):.2f} s (goal <= 1 s; a bare `python -c pass` "
                     f"{_median(small['python'], 'wall'):.2f} s), peak RSS {_median(cli, 'peak_rss_mb'):.0f} MB.")
    lines += ["", "Decisions differ in kind: Evidently flags a column when its normed Wasserstein distance "
              "(numeric) or Jensen-Shannon distance (categorical) is >= 0.1, whatever the sample size; crispflow "
              "flags it when a two-sample test (KS on binned CDFs / chi-square on counts) is significant after "
              "Benjamini-Hochberg at 1 % and PSI >= 0.01. Peak RSS is the process maximum, loading included.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="100000,1000000", help="comma-separated window sizes")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every contender (alternating order)")
    parser.add_argument("--skip-evidently", action="store_true")
    parser.add_argument("--skip-small", action="store_true", help="leave out the small CSV case")
    parser.add_argument("--no-write", action="store_true", help="do not append to benchmarks/RESULTS.md")
    args = parser.parse_args(argv)
    machine = check_quiet()
    evidently = None if args.skip_evidently else ensure_evidently()
    results = [bench(int(n), evidently, args.rounds) for n in args.rows.split(",") if n]
    small = None if args.skip_small else small_csv(max(args.rounds, 3))
    text = markdown(results, small, command_line("benchmarks.drift_vs_evidently", argv), machine, args.rounds)
    report(text, record=not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
