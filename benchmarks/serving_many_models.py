"""Model serving with many pipelines: start-up time and memory of one `crispflow serve` with 20 registered models.

    python -m benchmarks.serving_many_models [--models 20] [--no-record]

One run, loopback only:

1. a private MLflow server (SQLite + proxied local artifacts, as tests/support/mlflow_server.py starts it);
2. `--models` small models registered as separate pipelines (registered-model tag `crispflow.pipeline`), each with
   a champion: two thirds binary (logistic regression), the rest split between regression (ridge, with a
   conformal interval tag) and multiclass (logistic regression over three classes), all on the demo data;
3. `crispflow serve` (no `--model`; `--only` this run's models) three times:
   - `one`: a single model (the baseline of the same process with one model);
   - `all`: every model, default `--max-models` (32): all loaded eagerly;
   - `lru`: every model with `--max-models 5`: five loaded, the others loaded on their first request.

Reported per scenario: seconds from process start to /health 200 and to /ready 200, the server's RSS at ready
and after one request to every model (scoring threads and prediction logs started), the median and max latency of
those first requests, and for `lru` the latency of a request that loads an idle model. The section is appended to
benchmarks/RESULTS.md unless `--no-record`; the work folder (benchmarks/.work/many-*) is removed unless
`--keep-work`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.machine import check_quiet
from benchmarks.serving_vs_mlflow import BIN, DATA, RESULTS, WORK, free_port, started, wait_http

FEATURES = ["int_rate", "annual_inc", "revol_util", "delinq_2yrs", "term"]
CLASSES = ["Not_Verified", "Source_Verified", "Verified"]
RECORD = {"int_rate": 12.5, "annual_inc": 55000.0, "revol_util": 40.0, "delinq_2yrs": 0, "term": "term_36"}


def _pipeline(estimator: Any) -> Any:
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    columns = ColumnTransformer([
        ("num", Pipeline([("impute", SimpleImputer()), ("scale", StandardScaler())]), FEATURES[:4]),
        ("cat", OneHotEncoder(handle_unknown="ignore"), ["term"]),
    ])
    return Pipeline([("columns", columns), ("model", estimator)])


def register_models(tracking_uri: str, count: int, tag: str) -> list[str]:
    """`count` pipelines' models, each with a champion; returns their names."""
    import pandas as pd
    from sklearn.linear_model import LogisticRegression, Ridge

    from crispflow.model import registry

    data = pd.read_parquet(DATA).head(3000)
    x = data[FEATURES]
    mlf = registry.client(tracking_uri)
    names = []
    for i in range(count):
        pipeline = f"bench_many_{tag}_{i:02d}"
        name = registry.model_name(pipeline)
        task = "regression" if i % 6 == 4 else "multiclass" if i % 6 == 5 else "binary"
        output = None
        if task == "binary":
            model = _pipeline(LogisticRegression(C=0.5 + i, max_iter=500)).fit(x, data["Class"] == "bad")
            tags = {"crispflow.task": task, "crispflow.threshold": "0.2"}
        elif task == "regression":
            model = _pipeline(Ridge(alpha=1.0 + i)).fit(x, data["funded_amnt"].astype(float))
            tags = {"crispflow.task": task, "crispflow.interval": json.dumps(
                {"coverage": 0.9, "halfwidth": 2500.0, "method": "split_conformal_oof"})}
        else:
            codes = data["verification_status"].map({c: k for k, c in enumerate(CLASSES)}).astype("int64")
            model = _pipeline(LogisticRegression(C=0.5 + i, max_iter=500)).fit(x, codes)
            tags = {"crispflow.task": task, "crispflow.classes": json.dumps(CLASSES)}
            output = model.predict_proba(x.head(20))
        run_key = f"bench/{name}"
        run_id = registry.find_or_create_run(mlf, pipeline, run_key, "train")
        reg = registry.register(mlf, name=name, run_id=run_id, run_key=run_key, model=model, example=x.head(20),
                                tags=tags, output=output)
        mlf.set_registered_model_tag(name, registry.PIPELINE_TAG, pipeline)
        registry.set_alias(mlf, name, "champion", reg.version)
        names.append(name)
    return names


def rss_mib(pid: int) -> float:
    """The resident set of `pid` (VmRSS), MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def _wait_ready(url: str, proc: Any, timeout: float, log: Path) -> None:
    wait_http(f"{url}/ready", proc, timeout, log)


def scenario(label: str, names: list[str], only: list[str], max_models: int, tracking: str, root: Path,
             env: dict[str, str]) -> dict[str, Any]:
    """One server run: timings to health and ready, RSS, first-request latencies."""
    import httpx

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [str(BIN / "crispflow"), "serve", "--port", str(port), "--tracking-uri", tracking,
            "--predictions-url", str(root / f"predictions-{label}"), "--max-models", str(max_models),
            "--poll-interval", "1"]
    for pattern in only:
        argv += ["--only", pattern]
    log = root / f"serve-{label}.log"
    env = {**env, "CRISPFLOW_HOME": str(root / f"home-{label}")}  # an empty model cache: every model downloaded
    env.pop("CRISPFLOW_SERVE_TOKENS_FILE", None)
    from crispflow.serving.tokens import create_token  # the server's default token file: $CRISPFLOW_HOME/...

    auth = {"Authorization": "Bearer " + create_token(root / f"home-{label}" / "serve-tokens.json", "bench",
                                                      ["predict", "admin"])}
    load_before = os.getloadavg()[0]
    begin = time.perf_counter()
    with started(argv, log, env) as proc:
        wait_http(f"{url}/health", proc, 120, log)
        health_s = time.perf_counter() - begin
        _wait_ready(url, proc, 300, log)
        ready_s = time.perf_counter() - begin
        listing = httpx.get(f"{url}/models", timeout=10, headers=auth).json()["models"]
        served = [m["name"] for m in listing]
        rss_ready = rss_mib(proc.pid)
        loaded_at = [httpx.get(f"{url}/models/{m['name']}", timeout=10,
                               headers=auth).json()["aliases"]["champion"]["loaded_at"]
                     for m in listing if m["state"] == "ready"]
        latencies = []
        with httpx.Client(timeout=60, headers=auth) as client:
            for name in served:
                started_at = time.perf_counter()
                reply = client.post(f"{url}/models/{name}/predict", json={"record": RECORD})
                latencies.append((time.perf_counter() - started_at) * 1000)
                if reply.status_code != 200:
                    raise RuntimeError(f"{name}: {reply.status_code} {reply.text[:300]}")
            time.sleep(1.5)  # the prediction logs flush
            loaded = sum(m["state"] == "ready" for m in client.get(f"{url}/models").json()["models"])
        rss_touched = rss_mib(proc.pid)
    return {"scenario": label, "models": len(served), "max_models": max_models, "loaded_after": loaded,
            "load_span_s": round(max(loaded_at) - min(loaded_at), 2), "loadavg": (load_before, os.getloadavg()[0]),
            "health_s": round(health_s, 2), "ready_s": round(ready_s, 2), "rss_ready_mib": round(rss_ready, 1),
            "rss_after_requests_mib": round(rss_touched, 1),
            "first_request_ms_median": round(statistics.median(latencies), 1),
            "first_request_ms_max": round(max(latencies), 1)}


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [f"## Model serving with many pipelines ({meta['when']})", "",
             f"Command: `{meta['command']}`. Machine: {meta['machine']}, Python {meta['python']}. One `crispflow "
             f"serve` process (1 uvicorn worker) against a local MLflow server; {meta['models']} registered "
             "pipelines' models (binary, regression, multiclass), each with a champion. `ready` = every model "
             "within `--max-models` loaded and verified (hash) from the registry; most of the time to ready is "
             "the one-off import of mlflow and skops by the first poll. Load average (1 min) during the runs: "
             f"{meta['loadavg']}.", "",
             "| scenario | models | max loaded | /health (s) | /ready (s) | first to last model loaded (s) | "
             "RSS at ready (MiB) | RSS after one request per model (MiB) | loaded after | first request ms "
             "(median / max) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['scenario']} | {r['models']} | {r['max_models']} | {r['health_s']} | {r['ready_s']} | "
                     f"{r['load_span_s']} | "
                     f"{r['rss_ready_mib']} | {r['rss_after_requests_mib']} | {r['loaded_after']} | "
                     f"{r['first_request_ms_median']} / {r['first_request_ms_max']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--models", type=int, default=20, help="registered models (default 20)")
    parser.add_argument("--no-record", action="store_true", help="do not append to benchmarks/RESULTS.md")
    parser.add_argument("--keep-work", action="store_true", help="keep the work folder")
    args = parser.parse_args(argv)
    machine = check_quiet()
    WORK.mkdir(exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="many-", dir=WORK))
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "CRISPFLOW_HOME": str(root / "home"),
           "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("CRISPFLOW_SERVE_MODEL", None)
    port = free_port()
    tracking = f"http://127.0.0.1:{port}"
    mlflow_argv = [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
                   "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
                   "--artifacts-destination", str(root / "artifacts"), "--workers", "1"]
    tag = str(os.getpid())
    rows = []
    print(f"work folder {root}", flush=True)
    with started(mlflow_argv, root / "mlflow-server.log", env) as tracker:
        wait_http(f"{tracking}/health", tracker, 180, root / "mlflow-server.log")
        began = time.perf_counter()
        names = register_models(tracking, args.models, tag)
        print(f"  registered {len(names)} models in {time.perf_counter() - began:.0f} s", flush=True)
        pattern = f"crispflow-bench_many_{tag}_*"
        for label, only, max_models in (("one", [names[0]], 32), ("all", [pattern], 32), ("lru", [pattern], 5)):
            row = scenario(label, names, only, max_models, tracking, root, env)
            print(f"  {row}", flush=True)
            rows.append(row)
    if not args.keep_work:
        shutil.rmtree(root, ignore_errors=True)
    meta = {"when": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "command": "python -m benchmarks.serving_many_models" + (" " + " ".join(argv or sys.argv[1:])).rstrip(),
            "machine": machine.note, "python": platform.python_version(),
            "models": args.models,
            "loadavg": ", ".join(f"{a:.1f}-{b:.1f}" for a, b in (r["loadavg"] for r in rows))}
    text = markdown(rows, meta)
    print(text)
    (WORK / "serving_many_models.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    if not args.no_record:
        with RESULTS.open("a") as out:
            out.write("\n" + text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
