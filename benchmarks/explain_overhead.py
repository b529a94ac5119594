"""Model serving: what `explain=true` adds to a 1-record `/predict` request (issue 15's serving acceptance point).

    python -m benchmarks.explain_overhead [--duration 8] [--rounds 5] [--warmup 2] [--top-k 5] [--no-record]

Goal: `explain=true&top_k=5` adds <= 1 ms p50 per 1-record request for the logistic regression and <= 5 ms for
gradient boosting, measured side by side with `explain=false` in one run. Same server, same machine, loopback only:

1. a private MLflow server (as benchmarks/serving_vs_mlflow.py starts it);
2. two models of the demo spec (include/pipelines/lending_club.yaml) fitted with crispflow's own
   `training.fit_final` (sigmoid-calibrated, as the spec says): the logistic regression (C 0.1) and the
   hist_gradient_boosting candidate (learning_rate 0.1, max_leaf_nodes 31, l2_regularization 0), each registered
   with `registry.register` as the champion (no canary) of its own registered model, with its explainer record
   (`crispflow.model.explain.explainer_record`, logged as `explainer/v<version>.json` to the version's run) and the
   tags the training step sets (`crispflow.explainer`, `crispflow.explainer_sha256`);
3. one `crispflow serve` (1 uvicorn worker, prediction log to a local folder, bearer token, /metrics) serving both;
4. per model, after a warm-up: 1-record requests at concurrency 1 with wrk (benchmarks/http_load.py) to
   `/models/<name>/predict` and `/models/<name>/predict?explain=true&top_k=5`, alternating the two (and their
   order) in each of `--rounds` rounds, `--duration` seconds a cell.

Reported per model and mode: median p50 and p99 client latency and throughput over the rounds, the server's mean
request time (the `crispflow_serve_request_latency_seconds` histogram's sum/count, scraped before and after each
cell), failed requests; the p50 difference explain - plain (and the median of the per-round differences) against
the goal. After every cell one request of that cell is checked: 200, the champion answered, and for explain the
top_k contributions with base + sum(contributions) + other == check.output within the record's tolerance.
The load average is printed before measuring (a busy machine, load above the CPU count, is noted).
The section is appended to benchmarks/RESULTS.md unless `--no-record`; raw numbers go to
benchmarks/.work/explain_overhead.json; the work folder (benchmarks/.work/explain-*) is removed unless `--keep-work`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.http_load import LoadResult, run_wrk
from benchmarks.machine import check_quiet
from benchmarks.serving_vs_mlflow import (
    BIN,
    DATA,
    REQUEST_ROWS,
    RESULTS,
    SPEC,
    WORK,
    Served,
    bodies,
    free_port,
    started,
    wait_http,
)
from crispflow.serving.tokens import create_token

MODES = ("plain", "explain")
MODELS = (  # (label, fit_final config, p50 goal in ms)
    ("logreg", {"config_id": "logreg-bench-explain", "candidate": "logreg", "params": {"C": 0.1}}, 1.0),
    ("hgb", {"config_id": "hgb-bench-explain", "candidate": "hgb",
             "params": {"learning_rate": 0.1, "max_leaf_nodes": 31, "l2_regularization": 0.0}}, 5.0),
)
_SAMPLE = re.compile(r'^(?P<name>[a-z_]+)\{(?P<labels>[^}]*)\} (?P<value>\S+)$')
_LABEL = re.compile(r'(\w+)="([^"]*)"')


# --- the models ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Model:
    label: str
    goal_ms: float
    served: Served  # name, [version], request rows (features only), features
    description: str

    @property
    def name(self) -> str:
        return self.served.name

    @property
    def version(self) -> str:
        return self.served.versions[0]


def train_and_register(tracking_uri: str) -> list[Model]:
    """Each model fitted as training fits it, registered as the champion of its own name with its explainer."""
    import pandas as pd

    from crispflow.model import registry
    from crispflow.model.explain import EXPLAINER_ARTIFACT, explainer_record, record_digest
    from crispflow.model.features import features
    from crispflow.model.training import fit_final
    from crispflow.spec import load_spec_file

    spec = load_spec_file(SPEC)
    data = pd.read_parquet(DATA).sort_values(spec.key, kind="stable").reset_index(drop=True)
    train, requests = data.iloc[:-REQUEST_ROWS], data.iloc[-REQUEST_ROWS:]
    X = features(spec, train)
    mlf = registry.client(tracking_uri)
    out = []
    for label, config, goal in MODELS:
        started_at = time.perf_counter()
        name = f"crispflow-bench_explain_{label}_{os.getpid()}"
        model, threshold, _ = fit_final(spec, config, train)
        record = explainer_record(spec, model, X)
        run_key = f"bench/{name}/{config['config_id']}"
        run_id = registry.find_or_create_run(mlf, "bench_explain", run_key, config["config_id"])
        reg = registry.register(mlf, name=name, run_id=run_id, run_key=run_key, model=model, example=X.head(20),
                                tags={registry.TASK_TAG: spec.task, registry.THRESHOLD_TAG: repr(threshold)})
        path = f"{EXPLAINER_ARTIFACT}/v{reg.version}.json"  # as modelling.explain_version logs and tags it
        mlf.log_text(run_id, json.dumps(record, sort_keys=True), path)
        mlf.set_model_version_tag(name, reg.version, registry.EXPLAINER_TAG, f"runs:/{run_id}/{path}")
        mlf.set_model_version_tag(name, reg.version, registry.EXPLAINER_SHA_TAG, record_digest(record))
        registry.set_alias(mlf, name, registry.CHAMPION, reg.version)
        params = ", ".join(f"{k} {v}" for k, v in config["params"].items())
        description = f"{config['candidate']} ({params}), {record['method']} in {record['space']}"
        print(f"  registered {name} v{reg.version} ({description}, threshold {threshold:.3f}) "
              f"in {time.perf_counter() - started_at:.1f} s", flush=True)
        # features only: no entity key tag, no canary, so the loan id would be an extra field (422)
        served = Served(name, [reg.version], requests[list(spec.feature_columns)], list(spec.feature_columns))
        out.append(Model(label, goal, served, description))
    return out


def wait_explainers(url: str, models: list[Model], auth: dict[str, str], timeout: float = 180) -> dict[str, Any]:
    """Until each model's champion is loaded with a ready explainer; returns each one's /models/<name> explainer."""
    import httpx

    deadline = time.monotonic() + timeout
    found: dict[str, Any] = {}
    for m in models:
        while True:
            reply = httpx.get(f"{url}/models/{m.name}", headers=auth, timeout=30)
            champion = reply.json().get("aliases", {}).get("champion", {}) if reply.status_code == 200 else {}
            explainer = champion.get("explainer", {})
            if champion.get("version") == m.version and explainer.get("state") == "ready":
                found[m.label] = explainer
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"{m.name}: no ready explainer within {timeout} s: {reply.status_code} "
                                   f"{reply.text[:500]}")
            time.sleep(0.5)
    return found


# --- load and checks -------------------------------------------------------------------------------------------


def query(mode: str, top_k: int) -> str:
    return f"?explain=true&top_k={top_k}" if mode == "explain" else ""


def wrk(url: str, body: list[str], auth: dict[str, str], duration: float) -> LoadResult:
    return run_wrk(url, body, concurrency=1, duration=duration, headers=auth)


COUNTERS = {"crispflow_serve_request_latency_seconds_sum": "latency_sum",
            "crispflow_serve_request_latency_seconds_count": "latency_count",
            "crispflow_serve_explained_records_total": "explained",
            "crispflow_serve_predictions_total": "records",
            "crispflow_serve_prediction_log_written_total": "log_written",
            "crispflow_serve_prediction_log_dropped_total": "log_dropped"}


def counters(url: str, auth: dict[str, str], name: str) -> dict[str, float]:
    """The model's series of /metrics that the benchmark reads (summed over its arms): its request-latency
    histogram's sum and count, records scored and explained, prediction log rows written and dropped."""
    import httpx

    found = dict.fromkeys(COUNTERS.values(), 0.0)
    for line in httpx.get(f"{url}/metrics", timeout=10, headers=auth).text.splitlines():
        sample = _SAMPLE.match(line)
        if sample is not None and sample["name"] in COUNTERS \
                and dict(_LABEL.findall(sample["labels"])).get("model") == name:
            found[COUNTERS[sample["name"]]] += float(sample["value"])
    return found


def check_sample(url: str, m: Model, mode: str, body: str, auth: dict[str, str], top_k: int,
                 tolerance: float) -> dict[str, Any]:
    """One request of the cell: 200, the champion's answer, and for explain additive top_k contributions."""
    import httpx

    reply = httpx.post(f"{url}/models/{m.name}/predict{query(mode, top_k)}", content=body, timeout=30,
                       headers={"content-type": "application/json", **auth})
    problems: list[str] = []
    error = None
    if reply.status_code != 200:
        return {"ok": False, "status": reply.status_code, "problems": [reply.text[:300]], "abs_error": None}
    (item,) = reply.json()["predictions"]
    if (item["alias"], item["model_version"]) != ("champion", m.version):
        problems.append(f"answered by {item['alias']} v{item['model_version']}")
    explanation = item.get("explanation")
    if mode == "plain" and explanation is not None:
        problems.append("an explanation nobody asked for")
    if mode == "explain":
        if explanation is None:
            problems.append("no explanation")
        else:
            contributions = [c["contribution"] for c in explanation["contributions"]]
            total = explanation["base_value"] + sum(contributions) + explanation["other"]
            error = abs(total - explanation["check"]["output"])
            if len(contributions) != top_k:
                problems.append(f"{len(contributions)} contributions, not {top_k}")
            if error > tolerance + 1e-9:  # + float summation slack of 20-odd terms
                problems.append(f"base + sum + other differs from check.output by {error:.3g} > {tolerance:g}")
    return {"ok": not problems, "status": reply.status_code, "problems": problems, "abs_error": error}


def measure(url: str, models: list[Model], auth: dict[str, str], tolerances: dict[str, float], rounds: int,
            duration: float, warmup: float, top_k: int) -> list[dict[str, Any]]:
    """Every (model, mode) cell `rounds` times; models and modes alternate their order per round."""
    by_model = {m.label: bodies(m.served, 1, True) for m in models}
    for m in models:
        for mode in MODES:
            wrk(f"{url}/models/{m.name}/predict{query(mode, top_k)}", by_model[m.label], auth, warmup)
        print(f"  warmed up {m.label}", flush=True)
    rows: list[dict[str, Any]] = []
    for rnd in range(rounds):
        for i, m in enumerate(models if rnd % 2 == 0 else models[::-1]):
            for mode in MODES if (rnd + i) % 2 == 0 else MODES[::-1]:
                target = f"{url}/models/{m.name}/predict{query(mode, top_k)}"
                before, load_before = counters(url, auth, m.name), os.getloadavg()[0]
                result = wrk(target, by_model[m.label], auth, duration)
                after, load_after = counters(url, auth, m.name), os.getloadavg()[0]
                body = by_model[m.label][rnd % len(by_model[m.label])]
                sample = check_sample(url, m, mode, body, auth, top_k, tolerances[m.label])
                count = after["latency_count"] - before["latency_count"]
                server_ms = 1000 * (after["latency_sum"] - before["latency_sum"]) / count if count else float("nan")
                rows.append({"round": rnd, "model": m.label, "mode": mode, **result.to_dict(),
                             "server_mean_ms": server_ms, "server_requests": count,
                             "explained_records": after["explained"] - before["explained"],
                             "sample": sample, "load1_before": load_before, "load1_after": load_after})
                print(f"  r{rnd} {m.label:6s} {mode:7s}: {result.throughput:6.1f} req/s  p50 {result.p50_ms:6.2f} ms  "
                      f"p99 {result.p99_ms:6.2f} ms  server {server_ms:5.2f} ms  errors {result.errors}  "
                      f"sample {'ok' if sample['ok'] else sample['problems']}  load {load_before:.1f}", flush=True)
    return rows


# --- summary ---------------------------------------------------------------------------------------------------


def summarise(rows: list[dict[str, Any]], models: list[Model]) -> list[dict[str, Any]]:
    out = []
    for m in models:
        cell: dict[str, Any] = {"model": m.label, "name": m.name, "description": m.description, "goal_ms": m.goal_ms}
        for mode in MODES:
            runs = [r for r in rows if r["model"] == m.label and r["mode"] == mode]
            tput = [r["throughput"] for r in runs]
            cell[mode] = {"p50_ms": statistics.median(r["p50_ms"] for r in runs),
                          "p99_ms": statistics.median(r["p99_ms"] for r in runs),
                          "throughput": statistics.median(tput), "min": min(tput), "max": max(tput),
                          "server_mean_ms": statistics.median(r["server_mean_ms"] for r in runs),
                          "errors": sum(r["errors"] for r in runs),
                          "requests": sum(r["requests"] for r in runs),
                          "explained_records": sum(r["explained_records"] for r in runs),
                          "server_requests": sum(r["server_requests"] for r in runs),
                          "samples_failed": sum(not r["sample"]["ok"] for r in runs)}
        paired = [e["p50_ms"] - p["p50_ms"] for p, e in _pairs(rows, m.label)]
        cell["added_p50_ms"] = cell["explain"]["p50_ms"] - cell["plain"]["p50_ms"]
        cell["added_p50_paired_ms"] = statistics.median(paired)
        cell["added_p50_rounds_ms"] = paired
        cell["added_server_ms"] = cell["explain"]["server_mean_ms"] - cell["plain"]["server_mean_ms"]
        cell["failed"] = sum(cell[mode]["errors"] + cell[mode]["samples_failed"] for mode in MODES)
        cell["pass"] = cell["added_p50_ms"] <= m.goal_ms and cell["failed"] == 0
        out.append(cell)
    return out


def _pairs(rows: list[dict[str, Any]], label: str) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    by_round: dict[int, dict[str, dict[str, Any]]] = {}
    for r in rows:
        if r["model"] == label:
            by_round.setdefault(r["round"], {})[r["mode"]] = r
    return [(cells["plain"], cells["explain"]) for _, cells in sorted(by_round.items())]


def markdown(cells: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    busy = meta["load_at_start"] > meta["cpus"]
    lines = [f"## Serving: what `explain=true` adds to a 1-record request (issue 15) ({meta['when']})", "",
             f"Command: `{meta['command']}` (from the repo root, project venv); {meta['machine']}; "
             f"wrk {meta['wrk']} (one thread, 1 connection, closed loop, loopback), {meta['duration']:.0f} s per run, "
             f"{meta['rounds']} rounds alternating plain/explain (and the models); load average (1 min) "
             f"{meta['load_at_start']:.1f} before measuring"
             + (f" (**busy machine: above its {meta['cpus']} CPUs**)" if busy else "")
             + f", {meta['load_min']:.1f}-{meta['load_max']:.1f} during the runs.", "",
             "Server: one `crispflow serve` (1 uvicorn worker, bearer token checked, prediction log to local parquet "
             "with the explanations, /metrics); each model the champion (no canary) of its own registered model, "
             "fitted with `training.fit_final` on the lending_club spec (sigmoid-calibrated) and registered with its "
             f"explainer record and tags. Requests: 1 record, `/models/<name>/predict` vs the same with "
             f"`?explain=true&top_k={meta['top_k']}`. Server ms: mean of the request-latency histogram "
             "(sum/count, scraped around each run).", "",
             "| model | plain p50 / p99 ms | explain p50 / p99 ms | plain req/s (min-max) | explain req/s (min-max) "
             "| server ms plain / explain | added p50 ms (paired: median, min..max) | goal | result |",
             "|---|---|---|---|---|---|---|---|---|"]
    for c in cells:
        p, e = c["plain"], c["explain"]
        lines.append(f"| {c['description']} | {p['p50_ms']:.2f} / {p['p99_ms']:.2f} "
                     f"| {e['p50_ms']:.2f} / {e['p99_ms']:.2f} "
                     f"| {p['throughput']:.0f} ({p['min']:.0f}-{p['max']:.0f}) "
                     f"| {e['throughput']:.0f} ({e['min']:.0f}-{e['max']:.0f}) "
                     f"| {p['server_mean_ms']:.2f} / {e['server_mean_ms']:.2f} "
                     f"| **{c['added_p50_ms']:+.2f}** ({c['added_p50_paired_ms']:+.2f}, "
                     f"{min(c['added_p50_rounds_ms']):+.2f}..{max(c['added_p50_rounds_ms']):+.2f}) "
                     f"| <= {c['goal_ms']:g} ms "
                     f"| {'PASS' if c['pass'] else 'MISS'} |")
    errors = "; ".join(f"{c['model']} plain {c['plain']['errors']} / explain {c['explain']['errors']}" for c in cells)
    samples = "; ".join(f"{c['model']} {c['plain']['samples_failed'] + c['explain']['samples_failed']} failed"
                        for c in cells)
    explained = "; ".join(f"{c['model']} {c['explain']['explained_records']:.0f} of "
                          f"{c['explain']['server_requests']:.0f} explain-run records explained, "
                          f"{c['plain']['explained_records']:.0f} in plain runs" for c in cells)
    after = "; ".join(f"{label} {v['records']:.0f} records scored, {v['explained']:.0f} explained, prediction log "
                      f"{v['log_written']:.0f} rows written, {v['log_dropped']:.0f} dropped"
                      for label, v in meta["final"].items())
    lines += ["", f"Failed requests during the load runs: {errors}. Checked sample of every run (200, champion, "
                  f"explain: top_k contributions, base + sum + other == check.output within the record's tolerance): "
                  f"{samples}. Server counters: {explained}. After the runs: {after}.", ""]
    return "\n".join(lines)


# --- main ------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.explain_overhead", description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per load run (default 8)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds over models x modes (default 5)")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up load per model and mode")
    parser.add_argument("--top-k", type=int, default=5, help="contributions per explanation (default 5)")
    parser.add_argument("--no-record", action="store_true", help="do not append to benchmarks/RESULTS.md")
    parser.add_argument("--keep-work", action="store_true", help="keep the work folder (MLflow DB, logs, predictions)")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.duration < 1 or args.warmup < 1 or not 1 <= args.top_k <= 22:
        parser.error("--rounds, --duration, --warmup: must be >= 1; --top-k: in [1, 22]")

    WORK.mkdir(exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="explain-", dir=WORK))
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "CRISPFLOW_HOME": str(root / "home"),
           "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("CRISPFLOW_SERVE_TOKENS_FILE", None)  # the default: $CRISPFLOW_HOME/serve-tokens.json
    port = free_port()
    tracking = f"http://127.0.0.1:{port}"
    mlflow_argv = [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
                   "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
                   "--artifacts-destination", str(root / "artifacts"), "--workers", "1"]
    print(f"work folder {root}", flush=True)
    try:
        with started(mlflow_argv, root / "mlflow-server.log", env) as tracker:
            wait_http(f"{tracking}/health", tracker, 180, root / "mlflow-server.log")
            models = train_and_register(tracking)
            env["MLFLOW_TRACKING_URI"] = tracking
            cf_port = free_port()
            auth = {"Authorization": "Bearer " + create_token(root / "home" / "serve-tokens.json", "bench",
                                                              ["predict", "metrics", "admin"])}
            cf_argv = [str(BIN / "crispflow"), "serve", "--model", models[0].name, "--port", str(cf_port),
                       "--tracking-uri", tracking, "--predictions-url", str(root / "predictions"),
                       *(a for m in models for a in ("--only", m.name)),
                       "--rate-limit", "1e9", "--rate-burst", "1000000000"]  # the token check runs, never refuses
            with started(cf_argv, root / "crispflow-serve.log", env) as cf:
                url = f"http://127.0.0.1:{cf_port}"
                wait_http(f"{url}/ready", cf, 180, root / "crispflow-serve.log")
                explainers = wait_explainers(url, models, auth)
                tolerances = {label: float(e["tolerance"]) for label, e in explainers.items()}
                print("  explainers: " + ", ".join(f"{k} {e['status']}" for k, e in explainers.items()), flush=True)
                machine = check_quiet()
                rows = measure(url, models, auth, tolerances, args.rounds, args.duration, args.warmup, args.top_k)
                final = {m.label: counters(url, auth, m.name) for m in models}
    finally:
        if not args.keep_work:
            shutil.rmtree(root, ignore_errors=True)
    cells = summarise(rows, models)
    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False).stdout.split()[1]
    loads = [r[k] for r in rows for k in ("load1_before", "load1_after")]
    meta = {"when": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "command": "python -m benchmarks.explain_overhead" + (" " + " ".join(argv or sys.argv[1:])).rstrip(),
            "machine": machine.note, "cpus": os.cpu_count() or 1,
            "wrk": wrk_version, "duration": args.duration, "rounds": args.rounds, "top_k": args.top_k,
            "load_at_start": machine.load1_before, "load_min": min(loads), "load_max": max(loads),
            "explainers": explainers,
            "final": final}
    text = markdown(cells, meta)
    print(text)
    (WORK / "explain_overhead.json").write_text(json.dumps({"meta": meta, "cells": cells, "runs": rows}, indent=2))
    if not args.no_record:
        with RESULTS.open("a") as out:
            out.write("\n" + text)
    return 0 if all(c["failed"] == 0 for c in cells) else 1


if __name__ == "__main__":
    raise SystemExit(main())
