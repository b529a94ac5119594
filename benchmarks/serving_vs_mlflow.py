"""Model serving: `crispflow serve` (canary split + prediction log + metrics) vs `mlflow models serve` (champion).

    python -m benchmarks.serving_vs_mlflow [--duration 10] [--rounds 3] [--no-record]
    python -m benchmarks.serving_vs_mlflow --canary-share 0 --concurrency 1 --no-record  # champion-only crispflow

Side by side in one run, same model, same machine, loopback only:

1. a private MLflow server (SQLite + proxied local artifacts, as tests/support/mlflow_server.py starts it);
2. two versions of the demo model trained with crispflow's own code (`training.fit_final` on the lending_club
   spec: FrameTyper + ColumnTransformer + calibrated logistic regression), registered with `registry.register`;
   `champion` = v1, `canary` = v2 with `crispflow.canary_share` = 0.2 and `crispflow.entity_key` = loan_id;
3. `crispflow serve` (one uvicorn worker, prediction log to a local folder, /metrics on) and
   `mlflow models serve -m models:/<name>@champion --env-manager local -w 1` (one uvicorn worker);
4. after a warm-up, `wrk` (benchmarks/http_load.py) for 1- and 100-record requests at concurrency 1, 8, 32,
   alternating the servers (and their order) in each of `--rounds` rounds.

Reported per cell: median throughput (requests/s) with its min-max over the rounds, the ratio (the median of the
per-round ratios, `benchmarks.machine.median_ratio`), median client p50 and p99 latency, and crispflow's
server-side p50: from the server's own `crispflow_serve_request_latency_seconds` histogram on /metrics (scraped
before and after each run; interpolated within its bucket, as Prometheus' histogram_quantile does), i.e. from
the request's arrival at the scoring queue to its answer being ready, without HTTP parsing and the network. A
request whose records went to both arms is observed once per arm. The goals (the issue's) are per cell.
`benchmarks.machine.check_quiet()` runs first and its note goes into the section.
Every response of the pre-check is verified (status, record count, alias); wrk counts failed requests.
The section is appended to benchmarks/RESULTS.md unless `--no-record`; raw numbers go to
benchmarks/.work/serving_vs_mlflow.json; the work folder (benchmarks/.work/serving-*) is removed unless `--keep-work`.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.http_load import LoadResult, run_wrk
from benchmarks.machine import Machine, check_quiet, median_ratio
from crispflow.serving.tokens import create_token

ROOT = Path(__file__).resolve().parents[1]
WORK = Path(__file__).with_name(".work")
RESULTS = Path(__file__).with_name("RESULTS.md")
SPEC = ROOT / "include" / "pipelines" / "lending_club.yaml"
DATA = ROOT / "include" / "data" / "lending_club.parquet"
BIN = Path(sys.executable).parent
SIZES = (1, 100)
CONCURRENCY = (1, 8, 32)
CANARY_SHARE = "0.2"
CONFIGS = ({"config_id": "logreg-bench-champion", "candidate": "logreg", "params": {"C": 0.1}},
           {"config_id": "logreg-bench-canary", "candidate": "logreg", "params": {"C": 1.0}})
REQUEST_ROWS = 2000  # the last rows of the demo data: never trained on, replayed as requests
BODIES_PER_CELL = 200
GOALS = {(1, 1): 5.0, (100, 1): 2.0, (100, 8): 3.0}  # (records, concurrency) → throughput ratio; others 2x
DEFAULT_GOAL = 2.0
SERVER_P50_GOAL_MS = {(1, 1): 2.0}  # crispflow's server-side p50
LATENCY = "crispflow_serve_request_latency_seconds_bucket{"


# --- processes -----------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float, log: Path) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}: {log.read_text()[-2000:]}")
        with suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer 200 within {timeout} s; log: {log.read_text()[-2000:]}")


@contextmanager
def started(argv: list[str], log: Path, env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    """A child in its own process group; SIGTERM to that group on exit (then SIGKILL after 30 s)."""
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                cwd=ROOT)
        try:
            yield proc
        finally:
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                with suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)


# --- the model -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Served:
    name: str
    versions: list[str]
    requests: Any  # pd.DataFrame: request rows (loan_id + features)
    features: list[str]


def train_and_register(tracking_uri: str, canary_share: str) -> Served:
    """Two calibrated logistic regressions on the demo data, registered; champion v1, canary v2 at 20 %."""
    import pandas as pd

    from crispflow.model import registry
    from crispflow.model.features import features
    from crispflow.model.training import fit_final
    from crispflow.spec import load_spec_file

    spec = load_spec_file(SPEC)
    data = pd.read_parquet(DATA).sort_values(spec.key, kind="stable").reset_index(drop=True)
    train, requests = data.iloc[:-REQUEST_ROWS], data.iloc[-REQUEST_ROWS:]
    mlf = registry.client(tracking_uri)
    name = f"crispflow-bench_serving_{os.getpid()}"
    versions = []
    for config in CONFIGS:
        started_at = time.perf_counter()
        model, threshold, _ = fit_final(spec, config, train)
        run_key = f"bench/{name}/{config['config_id']}"
        run_id = registry.find_or_create_run(mlf, "bench_serving", run_key, config["config_id"])
        reg = registry.register(mlf, name=name, run_id=run_id, run_key=run_key, model=model,
                                example=features(spec, train).head(20),
                                tags={"crispflow.threshold": repr(threshold)})
        versions.append(reg.version)
        print(f"  registered {name} v{reg.version} ({config['config_id']}, threshold {threshold:.3f}) "
              f"in {time.perf_counter() - started_at:.1f} s", flush=True)
    registry.set_alias(mlf, name, "champion", versions[0])
    registry.set_alias(mlf, name, "canary", versions[1])
    mlf.set_registered_model_tag(name, "crispflow.canary_share", canary_share)
    mlf.set_registered_model_tag(name, "crispflow.entity_key", spec.key)
    return Served(name, versions, requests[[spec.key, *spec.feature_columns]], list(spec.feature_columns))


def bodies(served: Served, size: int, crispflow: bool) -> list[str]:
    """`BODIES_PER_CELL` request bodies of `size` records each (loan_id only for crispflow: its entity key)."""
    frame = served.requests if crispflow else served.requests[served.features]
    rows = json.loads(frame.to_json(orient="records"))
    key = "records" if crispflow else "dataframe_records"
    out = []
    for i in range(BODIES_PER_CELL):
        start = (i * size) % len(rows)
        chunk = (rows + rows)[start:start + size]
        out.append(json.dumps({key: chunk}, separators=(",", ":")))
    return out


# --- checks --------------------------------------------------------------------------------------------------


def check_answers(crispflow_url: str, mlflow_url: str, served: Served, canary: bool,
                  sizes: tuple[int, ...], auth: dict[str, str]) -> dict[str, int]:
    """Every pre-check answer is 200 with one prediction per record; returns the crispflow alias counts."""
    import httpx

    aliases: dict[str, int] = {}
    with httpx.Client(timeout=30) as client:
        for size in sizes:
            for body in bodies(served, size, True)[:20]:
                reply = client.post(f"{crispflow_url}/predict", content=body,
                                    headers={"content-type": "application/json", **auth})
                if reply.status_code != 200 or len(reply.json()["predictions"]) != size:
                    raise RuntimeError(f"crispflow /predict: {reply.status_code} {reply.text[:300]}")
                for item in reply.json()["predictions"]:
                    aliases[item["alias"]] = aliases.get(item["alias"], 0) + 1
            for body in bodies(served, size, False)[:20]:
                reply = client.post(f"{mlflow_url}/invocations", content=body,
                                    headers={"content-type": "application/json"})
                if reply.status_code != 200 or len(reply.json()["predictions"]) != size:
                    raise RuntimeError(f"mlflow /invocations: {reply.status_code} {reply.text[:300]}")
    expected = {"champion", "canary"} if canary else {"champion"}
    if set(aliases) != expected:
        raise RuntimeError(f"crispflow served aliases {aliases}: expected {sorted(expected)}")
    return aliases


def scrape(url: str, auth: dict[str, str]) -> dict[str, float]:
    """A few series of crispflow's /metrics: records per alias, prediction log written/dropped."""
    import httpx

    found: dict[str, float] = {}
    for line in httpx.get(f"{url}/metrics", timeout=10, headers=auth).text.splitlines():
        if line.startswith("crispflow_serve_predictions_total{"):
            alias = line.split('alias="', 1)[1].split('"', 1)[0]
            found[f"records_{alias}"] = found.get(f"records_{alias}", 0) + float(line.rsplit(" ", 1)[1])
        for name in ("written", "dropped", "pending"):
            if line.startswith(f"crispflow_serve_prediction_log_{name}"):
                found[f"log_{name}"] = float(line.rsplit(" ", 1)[1])
    return found


def latency_buckets(url: str, auth: dict[str, str]) -> dict[float, float]:
    """crispflow's request-latency histogram on /metrics: upper bound (s) → cumulative count, summed over series."""
    import httpx

    found: dict[float, float] = {}
    for line in httpx.get(f"{url}/metrics", timeout=10, headers=auth).text.splitlines():
        if line.startswith(LATENCY):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            bound = math.inf if le == "+Inf" else float(le)
            found[bound] = found.get(bound, 0.0) + float(line.rsplit(" ", 1)[1])
    return found


def bucket_quantile(before: dict[float, float], after: dict[float, float], q: float) -> float:
    """The q-quantile (s) of the observations between two scrapes, interpolated linearly within its bucket (the
    lowest bucket from 0); NaN without observations; the highest finite bound if it falls in +Inf."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    total = counts[-1] if counts else 0.0
    if total <= 0:
        return math.nan
    rank, lower, below = q * total, 0.0, 0.0
    for bound, count in zip(bounds, counts, strict=True):
        if count >= rank:
            if math.isinf(bound):
                return lower
            return lower + (bound - lower) * (rank - below) / max(count - below, 1e-12)
        lower, below = bound, count
    return lower


# --- the run -------------------------------------------------------------------------------------------------


def measure(targets: dict[str, tuple[str, dict[int, list[str]], dict[str, str]]], rounds: int, duration: float,
            warmup: float, sizes: tuple[int, ...], concurrency: tuple[int, ...],
            histogram: Callable[[], dict[float, float]]) -> list[dict[str, Any]]:
    """All cells, `rounds` times; the order of the servers alternates per cell and round. Each target: its URL,
    bodies per size and the headers it needs (crispflow: its bearer token, checked on every request).
    `histogram` reads crispflow's latency histogram: its runs get `server_p50_ms`."""
    for server, (url, by_size, headers) in targets.items():
        for size in sizes:
            run_wrk(url, by_size[size], concurrency=8, duration=warmup, headers=headers)
        print(f"  warmed up {server}", flush=True)
    rows: list[dict[str, Any]] = []
    names = list(targets)
    for rnd in range(rounds):
        for cell, (size, conc) in enumerate((s, c) for s in sizes for c in concurrency):
            order = names if (rnd + cell) % 2 == 0 else names[::-1]
            for server in order:
                url, by_size, headers = targets[server]
                load_before = os.getloadavg()[0]
                before = histogram() if server == "crispflow" else {}
                result: LoadResult = run_wrk(url, by_size[size], concurrency=conc, duration=duration, headers=headers)
                server_p50 = bucket_quantile(before, histogram(), 0.5) * 1000 if server == "crispflow" else math.nan
                rows.append({"round": rnd, "server": server, "size": size, **result.to_dict(),
                             "server_p50_ms": server_p50, "load1_before": load_before,
                             "load1_after": os.getloadavg()[0]})
                print(f"  r{rnd} {server:9s} size {size:3d} c{conc:2d}: {result.throughput:7.1f} req/s  "
                      f"p50 {result.p50_ms:7.2f} ms  p99 {result.p99_ms:7.2f} ms  server p50 {server_p50:6.2f} ms  "
                      f"errors {result.errors}  load {load_before:.1f}", flush=True)
    return rows


def summarise(rows: list[dict[str, Any]], sizes: tuple[int, ...], concurrency: tuple[int, ...]) -> list[dict[str, Any]]:
    cells = []
    for size in sizes:
        for conc in concurrency:
            cell: dict[str, Any] = {"size": size, "concurrency": conc}
            runs: dict[str, list[dict[str, Any]]] = {}
            for server in ("crispflow", "mlflow"):
                runs[server] = sorted((r for r in rows if r["server"] == server and r["size"] == size
                                       and r["concurrency"] == conc), key=lambda r: r["round"])
                tput = [r["throughput"] for r in runs[server]]
                cell[server] = {"throughput": statistics.median(tput), "min": min(tput), "max": max(tput),
                                "p50_ms": statistics.median(r["p50_ms"] for r in runs[server]),
                                "p99_ms": statistics.median(r["p99_ms"] for r in runs[server]),
                                "server_p50_ms": statistics.median(r["server_p50_ms"] for r in runs[server]),
                                "errors": sum(r["errors"] for r in runs[server])}
            cell["ratio"] = median_ratio([r["throughput"] for r in runs["crispflow"]],
                                         [r["throughput"] for r in runs["mlflow"]])
            cell["goal_ratio"] = GOALS.get((size, conc), DEFAULT_GOAL)
            cell["goal_server_p50_ms"] = SERVER_P50_GOAL_MS.get((size, conc))
            cf, ml = cell["crispflow"], cell["mlflow"]
            p50_goal = cell["goal_server_p50_ms"]
            cell["goal"] = (cell["ratio"] >= cell["goal_ratio"] and cf["p99_ms"] < ml["p99_ms"] and cf["errors"] == 0
                            and (p50_goal is None or cf["server_p50_ms"] <= p50_goal))
            cells.append(cell)
    return cells


def markdown(cells: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [f"## Model serving: crispflow serve vs mlflow models serve ({meta['when']})", "",
             f"Command: `{meta['command']}` (from the repo root, project venv); {meta['machine']}; "
             f"wrk {meta['wrk']} (one thread, closed loop, loopback), {meta['duration']:.0f} s per run, "
             f"{meta['rounds']} rounds alternating the servers; load average (1 min) during runs "
             f"{meta['load_min']:.1f}-{meta['load_max']:.1f}. Machine at the start: {meta['quiet']}.", "",
             f"Model: {meta['model']}. crispflow: `crispflow serve` (1 uvicorn worker) with champion v1 + canary v2 "
             f"at {meta['canary_share']:.0%} (sticky on loan_id), prediction log to local parquet, /metrics, a bearer "
             "token checked on every request; mlflow: "
             "`mlflow models serve -m models:/<name>@champion --env-manager local -w 1` (1 uvicorn worker).", "",
             "| records/request | concurrency | crispflow req/s (min-max) | mlflow req/s (min-max) | ratio "
             "| crispflow p50 / p99 ms | crispflow server p50 ms | mlflow p50 / p99 ms | goal | met |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for c in cells:
        cf, ml = c["crispflow"], c["mlflow"]
        ratio = math.floor(c["ratio"] * 100) / 100  # never rounded up to the goal
        lines.append(f"| {c['size']} | {c['concurrency']} | {cf['throughput']:.0f} ({cf['min']:.0f}-{cf['max']:.0f}) "
                     f"| {ml['throughput']:.0f} ({ml['min']:.0f}-{ml['max']:.0f}) | **{ratio:.2f}x** "
                     f"| {cf['p50_ms']:.1f} / {cf['p99_ms']:.1f} | {cf['server_p50_ms']:.2f} "
                     f"| {ml['p50_ms']:.1f} / {ml['p99_ms']:.1f} | {_goal_text(c)} | {'yes' if c['goal'] else 'no'} |")
    lines += ["", f"Failed requests during the load runs: crispflow {meta['errors']['crispflow']}, mlflow "
                  f"{meta['errors']['mlflow']}. crispflow after the runs: {meta['scrape']}.", ""]
    return "\n".join(lines)


def _goal_text(cell: dict[str, Any]) -> str:
    text = f">= {cell['goal_ratio']:g}x, p99 <"
    if cell["goal_server_p50_ms"] is not None:
        text += f", server p50 <= {cell['goal_server_p50_ms']:g} ms"
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.serving_vs_mlflow", description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per load run (default 10)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds over the whole matrix (default 3)")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of warm-up load per server and size")
    parser.add_argument("--no-record", action="store_true", help="do not append to benchmarks/RESULTS.md")
    parser.add_argument("--keep-work", action="store_true", help="keep the work folder (MLflow DB, logs, predictions)")
    parser.add_argument("--canary-share", default=CANARY_SHARE, help="crispflow's canary share (default 0.2)")
    parser.add_argument("--sizes", type=_ints, default=SIZES, help="records per request, e.g. 1,100")
    parser.add_argument("--concurrency", type=_ints, default=CONCURRENCY, help="connections, e.g. 1,8,32")
    args = parser.parse_args(argv)
    share = float(args.canary_share)
    if not 0.0 <= share < 1.0:
        parser.error(f"--canary-share: must be in [0, 1), got {args.canary_share!r}")
    sizes, concurrency = tuple(args.sizes), tuple(args.concurrency)
    machine: Machine = check_quiet()

    WORK.mkdir(exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="serving-", dir=WORK))
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "CRISPFLOW_HOME": str(root / "home"),
           "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    port = free_port()
    tracking = f"http://127.0.0.1:{port}"
    mlflow_argv = [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
                   "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
                   "--artifacts-destination", str(root / "artifacts"), "--workers", "1"]
    print(f"work folder {root}", flush=True)
    with started(mlflow_argv, root / "mlflow-server.log", env) as tracker:
        wait_http(f"{tracking}/health", tracker, 180, root / "mlflow-server.log")
        served = train_and_register(tracking, args.canary_share)
        env["MLFLOW_TRACKING_URI"] = tracking
        cf_port, ml_port = free_port(), free_port()
        env.pop("CRISPFLOW_SERVE_TOKENS_FILE", None)  # the default: $CRISPFLOW_HOME/serve-tokens.json
        auth = {"Authorization": "Bearer " + create_token(root / "home" / "serve-tokens.json", "bench",
                                                          ["predict", "metrics"])}
        cf_argv = [str(BIN / "crispflow"), "serve", "--model", served.name, "--port", str(cf_port),
                   "--tracking-uri", tracking, "--predictions-url", str(root / "predictions"),
                   "--rate-limit", "1e9", "--rate-burst", "1000000000"]  # the token check runs, never refuses
        ml_argv = [str(BIN / "mlflow"), "models", "serve", "-m", f"models:/{served.name}@champion",
                   "--env-manager", "local", "-w", "1", "-h", "127.0.0.1", "-p", str(ml_port)]
        with started(cf_argv, root / "crispflow-serve.log", env) as cf, \
                started(ml_argv, root / "mlflow-serve.log", env) as ml:
            cf_url, ml_url = f"http://127.0.0.1:{cf_port}", f"http://127.0.0.1:{ml_port}"
            wait_http(f"{ml_url}/health", ml, 180, root / "mlflow-serve.log")
            wait_http(f"{cf_url}/ready", cf, 180, root / "crispflow-serve.log")
            _wait_canary(cf_url)
            aliases = check_answers(cf_url, ml_url, served, share > 0, sizes, auth)
            print(f"  pre-check ok (crispflow aliases {aliases})", flush=True)
            targets = {"crispflow": (f"{cf_url}/predict", {s: bodies(served, s, True) for s in sizes}, auth),
                       "mlflow": (f"{ml_url}/invocations", {s: bodies(served, s, False) for s in sizes}, {})}
            rows = measure(targets, args.rounds, args.duration, args.warmup, sizes, concurrency,
                           functools.partial(latency_buckets, cf_url, auth))
            scraped = scrape(cf_url, auth)
    if not args.keep_work:
        shutil.rmtree(root, ignore_errors=True)
    cells = summarise(rows, sizes, concurrency)
    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False).stdout.split()[1]
    loads = [r[k] for r in rows for k in ("load1_before", "load1_after")]
    meta = {"when": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "command": "python -m benchmarks.serving_vs_mlflow" + (" " + " ".join(argv or sys.argv[1:])).rstrip(),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "wrk": wrk_version,
            "duration": args.duration, "rounds": args.rounds, "canary_share": share,
            "load_min": min(loads), "load_max": max(loads), "quiet": machine.note,
            "model": "lending_club spec, `training.fit_final` (FrameTyper + ColumnTransformer + logistic regression, "
                     "sigmoid-calibrated), registered with `registry.register`",
            "errors": {s: sum(r["errors"] for r in rows if r["server"] == s) for s in ("crispflow", "mlflow")},
            "scrape": ", ".join(f"{k} {v:.0f}" for k, v in sorted(scraped.items()))}
    text = markdown(cells, meta)
    print(text)
    (WORK / "serving_vs_mlflow.json").write_text(json.dumps({"meta": meta, "cells": cells, "runs": rows}, indent=2))
    if not args.no_record:
        with RESULTS.open("a") as out:
            out.write("\n" + text)
    return 0


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: every value must be >= 1")
    return values


def _wait_canary(url: str, timeout: float = 60) -> None:
    """Until /ready shows both champion and canary loaded."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reply = httpx.get(f"{url}/ready", timeout=5)
        if reply.status_code == 200 and "canary" in reply.json().get("aliases", {}):
            return
        time.sleep(0.3)
    raise TimeoutError(f"crispflow serve did not load the canary within {timeout} s")


if __name__ == "__main__":
    raise SystemExit(main())
