"""The model server's compiled scorer vs ONNX Runtime (skl2onnx) vs the pipeline's own predict_proba, per call.

    python -m benchmarks.scorer_vs_onnx              # appends to benchmarks/RESULTS.md
    python -m benchmarks.scorer_vs_onnx --no-record

The issue behind the compiled scorer (crispflow.model.compiled) asked to measure both levers. Each side scores the
same JSON records (1 and 100 per call), in one process, one native thread:

- compiled: `verified_scorer(model).response_records(records)`, the blessed model itself;
- pipeline: `model.predict_proba(DataFrame(records))`, what the server did before;
- onnx: skl2onnx 1.20 cannot convert crispflow's pipeline as it is: its SimpleImputer refuses NaN as the text
  missing value and its OneHotEncoder refuses infrequent categories (`min_frequency`), so serving the blessed model
  through ONNX would need two custom converters. Measured instead: a convertible twin (text missing as "", one-hot
  with handle_unknown="ignore", the same estimator and parameters, uncalibrated) fed from the same typed columns
  the compiled scorer builds from JSON (that typing is counted in its time).

skl2onnx and onnxruntime live in their own venv (benchmarks/.work/onnx-venv: the lock file, crispflow without
dependencies, then the two), created here with uv; this script re-runs itself there.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
VENV = HERE / ".work" / "onnx-venv"
UV = Path.home() / ".local" / "bin" / "uv"
CANDIDATES = (("logistic regression", "logreg", {"C": 0.1}), ("gradient boosting", "hgb", {"max_iter": 100}))
SIZES = (1, 100)


def ensure_venv() -> Path:
    python = VENV / "bin" / "python"
    if not (VENV / ".ready").exists():
        subprocess.run([str(UV), "venv", "-q", str(VENV), "--python", "3.11"], check=True)
        for args in (["-r", str(ROOT / "requirements.lock")], ["--no-deps", "-e", str(ROOT)],
                     ["skl2onnx==1.20.0", "onnxruntime"]):
            subprocess.run([str(UV), "pip", "install", "-q", "--python", str(python), *args], check=True)
        (VENV / ".ready").touch()
    return python


def onnx_twin(spec: Any, model: Any, train: Any) -> tuple[Any, list[str], list[str]]:
    """A convertible twin of `model` (see the module docstring) as an ONNX Runtime session, and its numeric and
    text inputs."""
    import onnxruntime as ort
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType
    from sklearn.base import clone
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder

    from crispflow.model.compiled import unwrap
    from crispflow.model.features import features
    from crispflow.model.tasks import labels

    parts = unwrap(model)
    numeric, text = parts.typer.numeric_outputs(), list(parts.typer.text)
    num = clone(parts.columns.named_transformers_["num"])
    cat = Pipeline([("impute", SimpleImputer(missing_values="", strategy="most_frequent")),
                    ("onehot", OneHotEncoder(handle_unknown="ignore", sparse_output=False))])
    twin = Pipeline([("columns", ColumnTransformer([("num", num, numeric), ("cat", cat, text)])),
                     ("estimator", clone(parts.estimator))])
    typed = parts.typer.transform(features(spec, train))
    typed[text] = typed[text].fillna("")
    twin.fit(typed, labels(spec, train))
    inputs = [(c, FloatTensorType([None, 1])) for c in numeric] + [(c, StringTensorType([None, 1])) for c in text]
    onx = to_onnx(twin, initial_types=inputs, options={id(twin.steps[-1][1]): {"zipmap": False}}, target_opset=18)
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(onx.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session, numeric, text


def per_call_ms(fn: Any, calls: int) -> float:
    fn()
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e3


def measure(rounds: int, calls: int) -> list[dict[str, Any]]:
    import pandas as pd
    from threadpoolctl import threadpool_limits

    from crispflow.model.features import features
    from crispflow.spec import load_spec

    spec = load_spec("lending_club")
    train = pd.read_parquet(ROOT / "include" / "data" / "lending_club.parquet")
    records = features(spec, train).sample(100, random_state=0).to_dict("records")
    out: list[dict[str, Any]] = []
    with threadpool_limits(limits=1):
        for label, candidate, params in CANDIDATES:
            out += measure_model(spec, train, records, label, {"config_id": f"{candidate}-0", "candidate": candidate,
                                                                "params": params}, rounds, calls)
    return out


def measure_model(spec: Any, train: Any, records: list[dict[str, Any]], label: str, config: dict[str, Any],
                  rounds: int, calls: int) -> list[dict[str, Any]]:
    import numpy as np
    import pandas as pd

    from crispflow.model.compiled import verified_scorer
    from crispflow.model.features import features
    from crispflow.model.training import fit_final

    model, _, _ = fit_final(spec, config, train)
    scorer, _ = verified_scorer(model, spec.task, [features(spec, train).head(500)])
    try:
        session, numeric, text = onnx_twin(spec, model, train)
    except Exception as exc:  # skl2onnx cannot convert this estimator: say so, measure the others
        session, numeric, text = None, [], []
        while exc.__cause__ is not None:  # the root cause says why
            exc = exc.__cause__  # type: ignore[assignment]
        failed = f"skl2onnx failed ({type(exc).__name__}: {str(exc).splitlines()[0][:90]})"

    def onnx_score(rows: list[dict[str, Any]]) -> Any:
        typed = scorer.typed_records(rows)
        feed = {c: typed[c].astype(np.float32).reshape(-1, 1) for c in numeric}
        feed |= {c: np.array(["" if not isinstance(v, str) else v for v in typed[c]], dtype=object).reshape(-1, 1)
                 for c in text}
        return session.run(None, feed)

    out = []
    for size in SIZES:
        rows = records[:size]
        sides = {"compiled": lambda rows=rows: scorer.response_records(rows),
                 "onnx": lambda rows=rows: onnx_score(rows),
                 "pipeline": lambda rows=rows: model.predict_proba(pd.DataFrame(rows))}
        if session is None:
            del sides["onnx"]
        times: dict[str, list[float]] = {name: [] for name in sides}
        for r in range(rounds):
            for name in list(sides) if r % 2 == 0 else list(sides)[::-1]:
                times[name].append(per_call_ms(sides[name], calls))
        out.append({"model": label, "records": size, "scorer": scorer.kind,
                    "onnx": failed if session is None else None,
                    **{name: statistics.median(ms) for name, ms in times.items()}})
        print(out[-1], flush=True)
    return out


def markdown(rows: list[dict[str, Any]], command: str, note: str, calls: int, rounds: int) -> str:
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"## Scoring one request: compiled scorer vs ONNX Runtime vs predict_proba ({when})", "",
             f"Command: `{command}`; {note}; one native thread; per-call median of {calls} calls, median of "
             f"{rounds} alternating rounds; 100 records of the demo data as JSON records. ONNX: skl2onnx 1.20 + "
             "onnxruntime on a convertible twin of the model (skl2onnx refuses crispflow's text imputer with NaN "
             "and its one-hot infrequent categories, so the blessed model itself cannot be served through ONNX "
             "without two custom converters); the twin is uncalibrated, its inputs typed from JSON by the compiled "
             "scorer's own code (counted).", "",
             "| model | records | compiled scorer ms | ONNX Runtime (twin) ms | pipeline predict_proba ms |",
             "|---|---|---|---|---|"]
    for r in rows:
        onnx = r["onnx"] if isinstance(r["onnx"], str) else f"{r['onnx']:.3f}"
        lines.append(f"| {r['model']} ({r['scorer']}) | {r['records']} | {r['compiled']:.3f} | {onnx} | "
                     f"{r['pipeline']:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--no-record", action="store_true", help="do not append to benchmarks/RESULTS.md")
    args = parser.parse_args(argv)
    if Path(sys.prefix).resolve() != VENV.resolve():  # re-run in the venv that has skl2onnx and onnxruntime
        python = ensure_venv()
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        return subprocess.run([str(python), "-m", "benchmarks.scorer_vs_onnx", *(argv or [])], cwd=ROOT,
                              env=env, check=False).returncode
    from benchmarks.machine import check_quiet, command_line, report

    machine = check_quiet()
    rows = measure(args.rounds, args.calls)
    text = markdown(rows, command_line("benchmarks.scorer_vs_onnx", argv), machine.note, args.calls, args.rounds)
    report(text, record=not args.no_record)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
