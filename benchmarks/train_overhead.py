"""Training through Airflow vs the same steps in one plain Python process, on the same data and MLflow server.

    make bench            # starts the local stack if needed, publishes the demo dataset, runs both, appends
                          # the result to benchmarks/RESULTS.md

Both sides call the same functions (crispflow.model.modelling) with the same search budget; the Airflow side is the
`train_evaluate_register` DAG triggered through the REST API, timed from trigger to finished run, with each
task's duration read back from the API to show where the overhead goes.
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.machine import Machine, check_quiet, median_ratio
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
    step("explain", modelling.explain_version, job, reg["version"])
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
    parser.add_argument("--rounds", type=int, default=3, help="rounds, alternating which side runs first")
    args = parser.parse_args()
    machine = check_quiet()
    settings = Settings.from_env()
    api = AirflowAPI.from_settings(settings)
    ingest_run = run_and_wait(api, INGEST, None, DEMO_CONF)
    version_id = api.xcom(INGEST, ingest_run, "publish")["dataset_version_id"]
    rounds: list[dict[str, tuple[float, dict[str, float]]]] = []
    for r in range(args.rounds):
        sides = {"plain": lambda: plain(settings, version_id, args.budget),
                 "airflow": lambda: through_airflow(api, version_id, args.budget)}
        order = list(sides) if r % 2 == 0 else list(reversed(sides))
        rounds.append({side: sides[side]() for side in order})
        print(f"round {r + 1}: plain {rounds[-1]['plain'][0]:.1f} s, airflow {rounds[-1]['airflow'][0]:.1f} s "
              f"({' first, '.join(order)} second)", flush=True)
    report(args.budget, version_id, rounds, machine)


def report(budget: int, version_id: str, rounds: list[dict[str, tuple[float, dict[str, float]]]],
           machine: Machine) -> None:
    plains, airflows = [r["plain"][0] for r in rounds], [r["airflow"][0] for r in rounds]
    ratio = median_ratio(airflows, plains)
    middle = sorted(range(len(rounds)), key=lambda i: airflows[i] / plains[i])[len(rounds) // 2]
    plain_steps, airflow_steps = rounds[middle]["plain"][1], rounds[middle]["airflow"][1]
    lines = [
        f"\n## Training: Airflow DAG vs one plain Python process ({datetime.now(UTC):%Y-%m-%d %H:%M} UTC)\n",
        f"Command: `make bench` (`python -m benchmarks.train_overhead --budget {budget} --rounds {len(rounds)}`); "
        f"dataset {version_id} (demo data, Jan-Sep 2026); {machine.note}; local stack (SQLite, "
        "PreloadingLocalExecutor, parallelism 4). Rounds alternate which side runs first.\n",
        "| round | plain Python, one process (s) | `train_evaluate_register` through Airflow, trigger → finished (s) "
        "| ratio |", "|---|---|---|---|",
        *(f"| {i + 1} | {p:.1f} | {a:.1f} | {a / p:.2f}x |"
          for i, (p, a) in enumerate(zip(plains, airflows, strict=True))),
        f"| **median** | | | **{ratio:.2f}x** (goal <= 1.4x) |\n",
        f"Per step in the median round {middle + 1} (seconds; Airflow: sum of task durations, mapped tasks added up; "
        "the plain side has no `deploy`):\n",
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


if __name__ == "__main__":
    main()
