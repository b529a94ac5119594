"""Batch scoring scale-out: rows/s scoring a 10M-row dataset version with 1 vs 2 workers (goal >= 1.8x).

    # Preliminary, no stack needed: the same plan/score/commit functions, partitions spread over 1 then 2
    # processes (each loads the model from a local MLflow registry, hash-checked, as a task does)
    python -m benchmarks.scoring_scale inproc [--rows 10000000]

    # Through Airflow: start the prod-local stack with 1 Celery worker, run, restart it with 2, run again.
    # Each run triggers `batch_score` over REST and records rows/s; the second run appends the comparison.
    CRISPFLOW_CELERY_WORKERS=1 crispflow up --profile prod-local && python -m benchmarks.scoring_scale airflow
    CRISPFLOW_CELERY_WORKERS=2 crispflow up --profile prod-local && python -m benchmarks.scoring_scale airflow

The dataset is the demo data (include/data/lending_club.parquet) resampled with noise to N rows, written in
chunks (bounded memory) with 250k-row row groups as a curated version of `lending_club` (data.parquet +
manifest.json, content hash computed chunk by chunk) in benchmarks/.work/lake, or in the stack's lake.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing as mp
import os
import platform
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.machine import check_quiet

ROOT = Path(__file__).resolve().parents[1]
WORK = Path(__file__).with_name(".work")
RESULTS = Path(__file__).with_name("RESULTS.md")
DEMO = ROOT / "include" / "data" / "lending_club.parquet"
PIPELINE = "lending_club"
ALIAS = "bench-scoring"  # never the champion: the benchmark must not change what serves
ROW_GROUP = 250_000
CHUNK = 1_000_000
NOISY = ("int_rate", "annual_inc", "revol_util")  # continuous columns that get multiplicative noise


# --- the dataset -----------------------------------------------------------------------------------------


def generate(lake: Any, rows: int, seed: int = 7) -> str:
    """Write (once) an N-row resample of the demo data as a curated version; returns its id."""
    import numpy as np
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    from crispflow.lake import canonical_json

    marker = WORK / f"dataset-{rows}-{seed}.json"
    if marker.exists():
        known = json.loads(marker.read_text())
        if lake.manifest(PIPELINE, known["version_id"]).exists():
            return known["version_id"]
    demo = pd.read_parquet(DEMO)
    rng = np.random.default_rng(seed)
    WORK.mkdir(exist_ok=True)
    local = WORK / f"data-{rows}-{seed}.parquet"
    digest = hashlib.sha256()
    writer = None
    started = time.perf_counter()
    for first in range(0, rows, CHUNK):
        n = min(CHUNK, rows - first)
        chunk = demo.iloc[rng.integers(0, len(demo), n)].reset_index(drop=True)
        chunk["loan_id"] = np.arange(first + 1, first + n + 1, dtype="int64")
        for col in NOISY:
            chunk[col] = (chunk[col] * rng.lognormal(0.0, 0.05, n)).round(4)
        table = pa.Table.from_pandas(chunk, preserve_index=False)
        if writer is None:
            writer = pq.ParquetWriter(local, table.schema, compression="zstd")
            back = table.to_pandas()
            digest.update(canonical_json([[c, str(t)] for c, t in back.dtypes.items()]))
        else:
            back = table.to_pandas()
        digest.update(pd.util.hash_pandas_object(back, index=False).to_numpy().tobytes())
        writer.write_table(table, row_group_size=ROW_GROUP)
    assert writer is not None
    writer.close()
    content = digest.hexdigest()
    version_id = "ds-" + content[:16]
    folder = lake.version_dir(PIPELINE, version_id)
    folder.mkdir(parents=True, exist_ok=True)
    _upload(local, folder / "data.parquet")
    manifest = {
        "dataset_version_id": version_id, "content_sha256": content, "pipeline": PIPELINE,
        "rows": {"in": rows, "published": rows, "quarantined": 0},
        "files": {"data": lake.relative(folder / "data.parquet")},
        "benchmark": f"resample of {DEMO.name} with noise on {list(NOISY)}, seed {seed}",
        "published_by": {"dag_id": "benchmark", "run_id": "scoring_scale", "at": datetime.now(UTC).isoformat()},
    }
    (folder / "manifest.json").write_bytes(canonical_json(manifest))
    local.unlink()
    marker.write_text(json.dumps({"version_id": version_id}))
    print(f"generated {version_id}: {rows:,} rows in {time.perf_counter() - started:.0f} s")
    return version_id


def _upload(local: Path, target: Any) -> None:
    with local.open("rb") as src, target.open("wb") as dst:
        shutil.copyfileobj(src, dst, 16 << 20)


# --- a registered model ----------------------------------------------------------------------------------


def ensure_model(mlf: Any) -> dict[str, Any]:
    """A logistic-regression pipeline on the demo data, registered (hash, threshold) and aliased `bench-scoring`."""
    import pandas as pd
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline

    from crispflow.model import registry
    from crispflow.model.features import build_preprocessor, features, labels
    from crispflow.spec import load_spec

    name = registry.model_name(PIPELINE)
    found = registry.alias_version(mlf, name, ALIAS)
    if found is None:
        spec = load_spec(PIPELINE)
        demo = pd.read_parquet(DEMO)
        model = Pipeline([("preprocess", build_preprocessor(spec)), ("model", LogisticRegression(max_iter=500))])
        model.fit(features(spec, demo), labels(spec, demo))
        run_key = "benchmark/scoring_scale/model"
        run_id = registry.find_or_create_run(mlf, PIPELINE, run_key, "bench-scoring-model")
        reg = registry.register(mlf, name=name, run_id=run_id, run_key=run_key, model=model,
                                example=features(spec, demo).head(20), tags={"crispflow.threshold": "0.2"})
        registry.set_alias(mlf, name, ALIAS, reg.version)
        found = registry.alias_version(mlf, name, ALIAS)
    return {"name": name, "version": str(found.version)}


# --- in-process: 1 vs 2 processes ------------------------------------------------------------------------

_STATE: dict[str, Any] = {}


def _init(lake_root: str, tracking_uri: str, plan: dict[str, Any]) -> None:
    from crispflow.lake import Lake
    from crispflow.model import registry
    from crispflow.serving.batch_scoring import ModelRef, load_model
    from crispflow.spec import load_spec

    mlf = registry.client(tracking_uri)
    _STATE.update(lake=Lake(Path(lake_root)), spec=load_spec(PIPELINE), plan=plan,
                  model=load_model(mlf, ModelRef.from_json(plan["model"])))


def _score(partition: dict[str, Any]) -> dict[str, Any]:
    from crispflow.serving.batch_scoring import score_partition

    return score_partition(_STATE["lake"], _STATE["spec"], _STATE["plan"], partition, lambda: _STATE["model"])


def inproc(args: argparse.Namespace) -> None:
    from crispflow.lake import Lake
    from crispflow.model import registry
    from crispflow.serving.batch_scoring import commit, plan_partitions, resolve_model
    from crispflow.spec import load_spec

    WORK.mkdir(exist_ok=True)
    lake = Lake(WORK / "lake")
    tracking = f"sqlite:///{WORK / 'mlflow.db'}"
    mlf = registry.client(tracking)
    if mlf.get_experiment_by_name(f"crispflow/{PIPELINE}") is None:  # artifacts in .work, not ./mlruns
        mlf.create_experiment(f"crispflow/{PIPELINE}", artifact_location=(WORK / "mlartifacts").as_uri())
    version_id = generate(lake, args.rows)
    ensure_model(mlf)
    spec = load_spec(PIPELINE)
    model = resolve_model(mlf, PIPELINE, ALIAS)
    results: dict[int, dict[str, float]] = {}
    for procs in args.processes:
        out = lake.root / "scores" / PIPELINE / version_id / f"v{model.version}"
        if out.exists():
            shutil.rmtree(out)  # a fresh output each time: an existing part is (correctly) not rescored
        started = time.perf_counter()
        plan = plan_partitions(lake, spec, version_id, model, args.partition_rows)["plan"]
        with mp.get_context("spawn").Pool(procs, initializer=_init,
                                          initargs=(str(lake.root), tracking, plan)) as pool:
            reported = list(pool.imap_unordered(_score, plan["partitions"]))
        manifest = commit(lake, plan["output"], {"dag_id": "benchmark", "run_id": f"inproc-{procs}"}, reported)
        seconds = time.perf_counter() - started
        rows = manifest["manifest"]["rows"]
        assert rows["in"] == rows["scored"] == args.rows, rows
        results[procs] = {"seconds": seconds, "rows_per_s": rows["scored"] / seconds}
        print(f"{procs} process(es): {rows['scored']:,} rows in {seconds:.1f} s = {rows['scored'] / seconds:,.0f} "
              f"rows/s ({len(plan['partitions'])} partitions)")
    _report_inproc(args, version_id, len(plan["partitions"]), results)


def _report_inproc(args: argparse.Namespace, version_id: str, partitions: int,
                   results: dict[int, dict[str, float]]) -> None:
    lines = [
        f"\n## Batch scoring scale-out, PRELIMINARY in-process 1 vs 2 processes ({_now()})\n",
        f"Command: `python -m benchmarks.scoring_scale inproc --rows {args.rows}`; dataset {version_id} "
        f"({args.rows:,} rows, resampled demo data, {ROW_GROUP:,}-row row groups), {partitions} partitions of "
        f"<= {args.partition_rows:,} rows; {_machine()}. Not the Celery measurement: the same "
        "`crispflow.serving.batch_scoring` plan/score/commit functions with partitions spread over a process pool "
        "(each process "
        "imports, loads the model from a local MLflow registry with the hash check, then scores partitions), "
        "one BLAS thread per process. Wall time includes plan, pool start-up, model loads and commit.\n",
        "| processes | wall time (s) | rows/s |", "|---|---|---|",
    ]
    for procs, r in sorted(results.items()):
        lines.append(f"| {procs} | {r['seconds']:.1f} | {r['rows_per_s']:,.0f} |")
    if 1 in results and 2 in results:
        lines.append(f"| speed-up | | **{results[2]['rows_per_s'] / results[1]['rows_per_s']:.2f}x** (goal >= 1.8x) |")
    _append(lines)


# --- through Airflow on the prod-local stack -------------------------------------------------------------


def through_airflow(args: argparse.Namespace) -> None:
    from crispflow.lake import Lake
    from crispflow.model import registry
    from crispflow.settings import Settings
    from crispflow.stack.airflow_api import AirflowAPI
    from crispflow.stack.credentials import load_secrets
    from crispflow.stack.ports import resolve_ports
    from crispflow.stack.prod_local import client_env

    workers = int(os.environ.get("CRISPFLOW_CELERY_WORKERS", "2"))
    settings = Settings.from_env()
    creds = load_secrets(settings.home)
    if creds is None:
        raise SystemExit(f"no stack in {settings.home}: `crispflow up --profile prod-local` first")
    os.environ.update(client_env(settings, resolve_ports(settings.home), creds))
    settings = Settings.from_env()
    lake = Lake(_upath(settings.lake_url))
    mlf = registry.client(settings.mlflow_tracking_uri)
    api = AirflowAPI.from_settings(settings)
    version_id = generate(lake, args.rows)
    model = ensure_model(mlf)
    out = lake.root / "scores" / PIPELINE / version_id / f"v{model['version']}"
    if out.exists():
        out.fs.rm(out.path, recursive=True)  # a fresh output: existing parts are (correctly) not rescored
    api.wait_for_dag("batch_score")
    _quiet(api)
    conf = {"pipeline": PIPELINE, "dataset_version_id": version_id, "alias": ALIAS,
            "partition_rows": args.partition_rows}
    started, cpu_before = time.perf_counter(), _cpu_times()
    run_id = api.trigger("batch_score", conf=conf)
    state = api.wait_for_run("batch_score", run_id, timeout=7200, poll=0.5)
    seconds, busy = time.perf_counter() - started, _busy_share(cpu_before, _cpu_times())
    if state != "success":
        raise SystemExit(f"batch_score {run_id} ended {state}")
    committed = api.xcom("batch_score", run_id, "commit")
    assert committed["rows_in"] == committed["rows"] == args.rows, committed
    hosts = sorted({ti.get("hostname") or "?" for ti in api.task_instances("batch_score", run_id)
                    if ti["task_id"] == "score"})
    if len(hosts) > workers:
        raise SystemExit(f"`score` ran on {hosts}, more than the {workers} worker(s) asked for: a stack from another "
                         f"run is still up (`crispflow down` first)")
    record = {"workers": workers, "seconds": seconds, "cpu_busy": busy, "rows": committed["rows"],
              "rows_per_s": committed["rows"] / seconds, "hosts": hosts, "run_id": run_id, "version_id": version_id}
    WORK.mkdir(exist_ok=True)
    (WORK / f"airflow-{workers}-workers.json").write_text(json.dumps(record))
    print(json.dumps(record, indent=2))
    done = {w: json.loads((WORK / f"airflow-{w}-workers.json").read_text()) for w in (1, 2)
            if (WORK / f"airflow-{w}-workers.json").exists()}
    if len(done) == 2 and done[1]["version_id"] == done[2]["version_id"]:
        _report_airflow(args, done)


def _cpu_times() -> list[int]:
    """The machine's CPU time counters (user, nice, system, idle, iowait, ...) from /proc/stat."""
    with open("/proc/stat") as fh:
        return [int(v) for v in fh.readline().split()[1:]]


def _busy_share(before: list[int], after: list[int]) -> float:
    """Share of all cores' time spent not idle between two readings: near 1.0, the run was CPU-bound."""
    delta = [b - a for a, b in zip(before, after, strict=True)]
    idle = delta[3] + delta[4]
    return 1.0 - idle / max(sum(delta[:8]), 1)


def _quiet(api: Any, timeout: float = 600) -> None:
    """Pause every other DAG and wait until none of their tasks is scheduled, queued or running: the workers then
    only score (a fresh stack otherwise starts its scheduled monitoring and canary runs at the same time)."""
    dags = api.request("GET", "/api/v2/dags", params={"limit": 100})["dags"]
    for dag in dags:
        if dag["dag_id"] != "batch_score" and not dag["is_paused"]:
            api.request("PATCH", f"/api/v2/dags/{dag['dag_id']}", json={"is_paused": True})
    busy = {"state": ["scheduled", "queued", "running"], "limit": 1}
    deadline = time.monotonic() + timeout
    while api.request("GET", "/api/v2/dags/~/dagRuns/~/taskInstances", params=busy)["total_entries"]:
        if time.monotonic() > deadline:
            raise SystemExit(f"other tasks still running after {timeout:.0f} s: not a quiet stack to measure on")
        time.sleep(2)


def _report_airflow(args: argparse.Namespace, done: dict[int, dict[str, Any]]) -> None:
    lines = [
        f"\n## Batch scoring scale-out through Airflow: 1 vs 2 Celery workers ({_now()})\n",
        f"Command: `CRISPFLOW_CELERY_WORKERS=<n> crispflow up --profile prod-local` then `python -m "
        f"benchmarks.scoring_scale airflow --rows {args.rows}`; dataset {done[2]['version_id']} ({args.rows:,} rows, "
        f"on the stack's S3 lake, partitions of <= {args.partition_rows:,} rows), every other DAG paused and idle, "
        f"`batch_score` triggered over REST, timed from trigger to finished run; "
        f"{_machine()}.\n",
        "| Celery workers | wall time (s) | rows/s | CPU busy (all cores) | hosts that ran `score` |",
        "|---|---|---|---|---|",
    ]
    for w, r in sorted(done.items()):
        lines.append(f"| {w} | {r['seconds']:.1f} | {r['rows_per_s']:,.0f} | {r.get('cpu_busy', float('nan')):.0%} | "
                     f"{', '.join(r['hosts'])} |")
    lines.append(f"| speed-up | | **{done[2]['rows_per_s'] / done[1]['rows_per_s']:.2f}x** (goal >= 1.8x) | | |")
    _append(lines)


def _upath(url: str) -> Any:
    from upath import UPath

    if url.startswith("s3://") and os.environ.get("AWS_ENDPOINT_URL"):
        return UPath(url, client_kwargs={"endpoint_url": os.environ["AWS_ENDPOINT_URL"]})
    return UPath(url)


# --- output ----------------------------------------------------------------------------------------------


def _now() -> str:
    return f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC"


def _machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end"


def _append(lines: list[str]) -> None:
    text = "\n".join(lines) + "\n"
    print(text)
    if os.environ.get("CRISPFLOW_BENCH_DRY_RUN"):
        return
    with RESULTS.open("a") as fh:
        fh.write(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["inproc", "airflow"])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--partition-rows", type=int, default=1_000_000)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2], help="inproc: pool sizes to compare")
    parser.add_argument("--dry-run", action="store_true", help="print the results, do not append them")
    args = parser.parse_args()
    if args.dry_run:
        os.environ["CRISPFLOW_BENCH_DRY_RUN"] = "1"
    os.environ.setdefault("CRISPFLOW_SCORE_THREADS", "1")
    check_quiet()
    (inproc if args.mode == "inproc" else through_airflow)(args)


if __name__ == "__main__":
    main()
