"""One contender of the drift benchmark in a fresh process: `python benchmarks/drift_runner.py ENGINE CONFIG.json`.

Prints one JSON object: seconds of the engine (data loading and imports excluded), peak RSS, RSS after loading, and the
per-column drift decisions. ENGINE is `crispflow` (project venv), `floor` (one raw numpy pass, project venv) or
`evidently` (its own venv: this file imports nothing from crispflow at top level for that reason).
"""

from __future__ import annotations

import json
import resource
import sys
import time
from typing import Any

import numpy as np
import pandas as pd


def _rss_mb() -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


Result = tuple[dict[str, bool], float, dict[str, float]]


def _crispflow(ref: pd.DataFrame, cur: pd.DataFrame, cfg: dict[str, Any]) -> Result:
    from crispflow.monitoring import build_profile, compute_drift

    started = time.perf_counter()
    profile = build_profile(None, ref)
    profiled = time.perf_counter()
    report = compute_drift(profile, cur)
    done = time.perf_counter()
    decisions = {name: bool(r["drifted"]) for name, r in report["features"].items()}
    return decisions, done - started, {"profile_seconds": profiled - started, "drift_seconds": done - profiled}


def _floor(ref: pd.DataFrame, cur: pd.DataFrame, cfg: dict[str, Any]) -> Result:
    """The least any engine must do with the window: one histogram (numeric) or factorize+bincount per column."""
    started = time.perf_counter()
    for name in cfg["numeric"]:
        np.histogram(cur[name].to_numpy(dtype=float), bins=20)
    for name in cfg["categorical"]:
        codes, _ = pd.factorize(cur[name])
        np.bincount(codes + 1)
    return {}, time.perf_counter() - started, {}


def _evidently(ref: pd.DataFrame, cur: pd.DataFrame, cfg: dict[str, Any]) -> Result:
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    started = time.perf_counter()
    definition = DataDefinition(numerical_columns=cfg["numeric"], categorical_columns=cfg["categorical"])
    snapshot = Report([DataDriftPreset()]).run(Dataset.from_pandas(cur, data_definition=definition),
                                               Dataset.from_pandas(ref, data_definition=definition))
    decisions = {}
    for metric in snapshot.dict()["metrics"]:
        config = metric["config"]
        if config.get("type", "").endswith("ValueDrift"):
            decisions[config["column"]] = bool(metric["value"] >= config["threshold"])
    return decisions, time.perf_counter() - started, {}


ENGINES = {"crispflow": _crispflow, "floor": _floor, "evidently": _evidently}


def main(engine: str, config_path: str) -> None:
    with open(config_path) as handle:
        cfg = json.load(handle)
    ref, cur = pd.read_parquet(cfg["reference"]), pd.read_parquet(cfg["current"])
    loaded = _rss_mb()
    decisions, seconds, parts = ENGINES[engine](ref, cur, cfg)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"engine": engine, "seconds": seconds, "peak_rss_mb": peak, "loaded_rss_mb": loaded,
                      "decisions": decisions, **parts}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
