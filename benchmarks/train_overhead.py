"""Training through Airflow vs the same steps in one plain Python process, on the same data and MLflow server.

    make bench            # starts the local stack if needed, publishes the demo dataset, runs both, appends
                          # the result to benchmarks/RESULTS.md

Both sides call the same functions (crispflow.model.modelling) with the same search budget; the Airflow side is the
`train_evaluate_register` DAG triggered through the REST API, timed from trigger to finished run, with each
task's duration read back from the API to show where the overhead goes.
"""

from __future__ import annotations

import argparse
import platform
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from crispflow.settings import Settings
from crispflow.stack.airflow_api import AirflowAPI
from crispflow.stack.demo import DEMO_CONF, INGEST, TRAIN, run_and_wait

RESULTS = Path(__file__).with_name("RESULTS.md")


def plain(settings: Settings, version_id: str, budget: int) -> tuple[float, dict[str, float]]:
    """Every step in this process, in order; returns (total seconds, seconds per step)."""
    started = time.perf_counter()
    steps: dict[str, float] = {}

    def step(name: str, fn, *args):
        t = time.perf_counter()
        out = fn(*args)
        steps[name] = steps.get(name, 0.0) + time.perf_counter() - t
        return out

    from upath import UPath

    from crispflow.lake import Lake
    from crispflow.model import modelling, registry
    from crispflow.model.training import plan_search
    from crispflow.spec import load_spec

    steps["imports"] = time.perf_counter() - started
    spec = load_spec("lending_club")
    job = modelling.TrainingJob(spec, Lake(UPath(settings.lake_url)), registry.client(settings.mlflow_tracking_uri),
                        version_id, f"bench/plain-{int(time.time())}")
    prepared = step("prepare", modelling.prepare, job)
    configs = step("plan", plan_search, spec, budget)
    results = [step("cross_validate", modelling.run_candidate, job, prepared["parent_run_id"], c) for c in configs]
    reg = step("register", modelling.register_challenger, job, prepared["parent_run_id"], results)
    step("evaluate", modelling.evaluate_version, job, reg["version"])
    step("bless", modelling.bless, job, reg["version"])
    return time.perf_counter() - started, steps


def through_airflow(api: AirflowAPI, version_id: str, budget: int) -> tuple[float, dict[str, float]]:
    started = time.perf_counter()
    run_id = run_and_wait(api, TRAIN, None, {"pipeline": "lending_club", "dataset_version_id": version_id,
                                             "search_budget": budget}, timeout=3600)
    total = time.perf_counter() - started
    steps: dict[str, float] = {}
    for ti in api.task_instances(TRAIN, run_id):
        if ti.get("start_date") and ti.get("end_date"):
            end, start = datetime.fromisoformat(ti["end_date"]), datetime.fromisoformat(ti["start_date"])
            seconds = (end - start).total_seconds()
            steps[ti["task_id"]] = steps.get(ti["task_id"], 0.0) + seconds
    return total, steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=int, default=8, help="configurations cross-validated on each side")
    args = parser.parse_args()
    settings = Settings.from_env()
    api = AirflowAPI.from_settings(settings)
    ingest_run = run_and_wait(api, INGEST, None, DEMO_CONF)
    version_id = api.xcom(INGEST, ingest_run, "publish")["dataset_version_id"]
    plain_total, plain_steps = plain(settings, version_id, args.budget)
    airflow_total, airflow_steps = through_airflow(api, version_id, args.budget)
    report(args.budget, version_id, plain_total, plain_steps, airflow_total, airflow_steps)


def report(budget: int, version_id: str, plain_total: float, plain_steps: dict[str, float], airflow_total: float,
           airflow_steps: dict[str, float]) -> None:
    ratio = airflow_total / plain_total
    lines = [
        f"\n## Training: Airflow DAG vs one plain Python process ({datetime.now(UTC):%Y-%m-%d %H:%M} UTC)\n",
        f"Command: `make bench` (`python -m benchmarks.train_overhead --budget {budget}`); dataset {version_id} "
        f"(demo data, Jan-Sep 2026); {platform.machine()}, {_cpus()} CPUs; local stack (SQLite, LocalExecutor, "
        "parallelism 4).\n",
        "| | wall time (s) |", "|---|---|",
        f"| plain Python, one process | {plain_total:.1f} |",
        f"| `train_evaluate_register` through Airflow (trigger → finished) | {airflow_total:.1f} |",
        f"| ratio | **{ratio:.2f}x** (goal <= 2x) |\n",
        "Per step (seconds; Airflow: sum of task durations, mapped tasks added up, each task a fresh process):\n",
        "| step | plain | Airflow |", "|---|---|---|",
    ]
    for name in sorted(set(plain_steps) | set(airflow_steps)):
        lines.append(f"| {name} | {_fmt(plain_steps.get(name))} | {_fmt(airflow_steps.get(name))} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if not RESULTS.exists():
        RESULTS.write_text("# Benchmark results\n\nEach section was appended by the command it names.\n")
    with RESULTS.open("a") as fh:
        fh.write(text)


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.1f}"


def _cpus() -> int:
    import os

    return os.cpu_count() or 0


if __name__ == "__main__":
    main()
