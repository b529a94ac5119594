"""UI pages, server side, as the plugin's routes build them: the Drift page of one model with 1,000 windows x 50
features and the Models pages of one model with 200 versions (library data, SVG and the plugin's Jinja rendering).

    python -m benchmarks.bench_ui_pages [--windows 1000] [--features 50] [--versions 200] [--runs 7] [--no-record]
                                        [--keep-work]

Drift: builds a drift store in benchmarks/.work/ui-pages-* with the monitoring code's own writers (`summarise` +
`write_window` per window: summary, report JSON and HTML; 20 recorded episodes, each with an alert raised through
`send_alert`, half of them acknowledged), then times what the `/crispflow/drift/{model}` route does: the page's data
(`app._drift_page` = `drift_view.drift_page` with the route's `last=200`; and once with every window), the SVG
(`share_chart` + `heatmap_svg`) and `drift.html` rendered with the plugin's own template environment
(`crispflow_airflow.ui.app._templates()`) and the context the route passes (Acknowledge buttons enabled). Each
through a local `Path` and through the `file://` `ObjectStoragePath` that `PredictionStoreHook` gives the
api-server for a local lake.

Models: starts a private `mlflow server` (this venv's, SQLite store, local artifacts, a free loopback port, as
tests/support/mlflow_server.py does; stopped at the end), registers `crispflow-bench_ui` with `--versions` versions
(one MLflow run each; each created with the tags a trained, evaluated and judged version carries: lineage, task,
holdout metrics with their CIs, verdict URI, blessed / not blessed / forced / rolled back) and points champion,
previous and canary at three of them. Then times `/crispflow/models/{model}` (`app._model_page` =
`models_view.model_page` over MLflow's REST API + `model.html`) and `/crispflow/models` (`app._models_index` +
`models.html`).

All in this process, warm (files in the OS page cache, templates compiled by a warm-up run). Not timed:
authentication (`get_user`, `requires_access_dag`, the auth manager's `may_trigger`), `sources()` and the ASGI
round trip. Reported: the median of `--runs` runs per stage and of the total (min-max of the total), the HTML size,
the goal < 1 s per page. The section is appended to benchmarks/RESULTS.md unless `--no-record`; the work folder is
removed unless `--keep-work`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.machine import Machine, check_quiet, command_line, report
from crispflow.monitoring.alerts import acknowledge, send_alert
from crispflow.monitoring.store import record_episode, summarise, write_window

WORK = Path(__file__).with_name(".work")
PIPELINE = "bench_ui"
MODEL = f"crispflow-{PIPELINE}"  # crispflow.model.registry.model_name(PIPELINE)
T0 = datetime(2026, 1, 1, tzinfo=UTC)
HOUR = timedelta(hours=1)
GOAL_SECONDS = 1.0
Stages = dict[str, float]


def build_store(root: Path, windows: int, features: int, *, seed: int = 7) -> None:
    """`windows` hourly champion windows of `features` features (PSI drawn so that a few drift in bursts), as the
    monitoring DAG writes them, plus 20 episodes with their alerts."""
    rng = np.random.default_rng(seed)
    names = [f"feature_{i:02d}" for i in range(features)]
    for w in range(windows):
        end = T0 + (w + 1) * HOUR
        burst = (w // 50) % 4 == 3  # every fourth block of 50 windows drifts
        shifted = burst * (rng.random(features) < 0.2) * rng.uniform(0, 0.4, size=features)
        psi = rng.gamma(1.2, 0.01, size=features) + shifted
        stats = {n: {"kind": "numeric", "status": "ok", "test": "ks", "statistic": float(rng.uniform(0, 0.3)),
                     "p_adjusted": 1e-6 if p >= 0.2 else float(rng.uniform(0.02, 1)), "psi": float(p),
                     "drifted": bool(p >= 0.2)} for n, p in zip(names, psi, strict=True)}
        drifted = [n for n in names if stats[n]["drifted"]]
        share = len(drifted) / features
        report = {"status": "drift" if share >= 0.1 else "no_drift", "drift": share >= 0.1, "drift_share": share,
                  "drifted_features": drifted, "features": stats, "prediction": None, "rows": 5000,
                  "settings": {"min_drift_share": 0.1}}
        summary = summarise(report, model=MODEL, alias="champion", version=str(1 + w // 250), start=end - HOUR,
                            end=end, rows=5000, labelled_rows=100, report_path="report.json")
        write_window(root, summary, report, "<html><body>report</body></html>")
    for e in range(20):
        end = T0 + (200 * e + 160) * HOUR
        record = {"pipeline": "bench_ui", "model": MODEL, "alias": "champion",
                  "episode_id": f"champion-{end:%Y%m%dT%H%M%SZ}", "fired_at": end.isoformat(),
                  "fired_by": {"dag_id": "bench", "run_id": str(e)}, "features": names[:3],
                  "statistics": {n: {"test": "ks", "psi": 0.3} for n in names[:3]},
                  "windows": [{"window_end": end.isoformat(), "drifted_features": names[:3]}],
                  "max_drift_share": 0.3, "prediction_drift": False, "versions": ["1"], "new_labels": 0}
        record_episode(root, MODEL, record["episode_id"], record)
        send_alert(root, record, [{"kind": "webhook", "conn_id": "hook"}], by={"run_id": str(e)},
                   deliver=lambda ch, d: None, connection_exists=lambda c: True)
        if e % 2:
            acknowledge(root, MODEL, f"{MODEL}.{record['episode_id']}", "bench")


# --- the registry: one model with many versions ---------------------------------------------------------------


def build_registry(mlf: Any, versions: int, *, seed: int = 7) -> dict[str, str]:
    """`versions` versions of MODEL, each from its own run, tagged as a trained, evaluated and judged version is
    (crispflow.model.modelling: lineage, task, `crispflow.holdout_<m>` + `_ci`, verdict, blessed; a few forced,
    not blessed or rolled back); champion, previous and canary on three of them. Returns alias -> version."""
    from crispflow.model import registry
    from crispflow.spec import TASK_METRICS

    rng = np.random.default_rng(seed)
    experiment = registry.experiment_id(mlf, PIPELINE)
    mlf.create_registered_model(MODEL, description="Benchmark model of the UI pages", tags={
        registry.PIPELINE_TAG: PIPELINE, registry.CANARY_SHARE_TAG: "0.1", registry.ENTITY_KEY_TAG: "member_id"})
    for v in range(1, versions + 1):
        dag_run = f"scheduled__{T0 + v * 24 * HOUR:%Y-%m-%dT%H:%M:%S}+00:00"
        run_key = f"{PIPELINE}/{dag_run}/register"
        run_id = mlf.create_run(experiment, run_name="train", tags={registry.RUN_KEY: run_key}).info.run_id
        metrics = {m: float(rng.uniform(0.55, 0.95)) for m in TASK_METRICS["binary"]}
        tags = {registry.RUN_KEY: run_key, registry.SHA_TAG: f"{rng.integers(2**63):064x}",
                "crispflow.pipeline": PIPELINE, "crispflow.dataset_version_id": f"ds-{rng.integers(2**63):016x}",
                "crispflow.spec_hash": f"{rng.integers(2**63):016x}", "crispflow.git_commit": f"{v:040x}",
                "crispflow.dag_id": "train_evaluate_register", "crispflow.run_id": dag_run,
                "crispflow.holdout_hash": f"{rng.integers(2**63):016x}", "crispflow.config_id": f"hgb-{v % 8}",
                registry.TASK_TAG: "binary", registry.THRESHOLD_TAG: repr(float(rng.uniform(0.2, 0.6))),
                "crispflow.cv_average_precision": repr(metrics["average_precision"] - 0.01),
                "crispflow.reference_profile": f"runs:/{run_id}/reference/v{v}.json",
                "crispflow.model_card": f"runs:/{run_id}/model_card/v{v}.html",
                "crispflow.verdict": f"runs:/{run_id}/verdict/v{v}.json",
                "crispflow.blessed": "false" if v % 7 == 0 else "true"}
        for name, value in metrics.items():
            tags[f"crispflow.holdout_{name}"] = repr(value)
            tags[f"crispflow.holdout_{name}_ci"] = json.dumps([value - 0.02, value + 0.02])
        if v % 25 == 0:
            tags.update({"crispflow.forced_by": "alice", "crispflow.forced_requested_by": "bob",
                         "crispflow.blessed": "true"})
        if v % 40 == 0:
            tags["crispflow.rolled_back"] = f"move-{v}"
        mlf.create_model_version(MODEL, source=f"runs:/{run_id}/model", run_id=run_id, tags=tags)
    aliases = {"canary": str(versions), "champion": str(max(1, versions - 1)), "previous": str(max(1, versions - 4))}
    for alias, version in aliases.items():
        mlf.set_registered_model_alias(MODEL, alias, version)
    return aliases


# --- the pages, as the routes build them (plugins/crispflow_airflow/ui/app.py) ---------------------------------


class Pages:
    """The plugin's template environment and base context, built as `create_app()` builds them."""

    def __init__(self) -> None:
        from crispflow_airflow.ui import app
        from crispflow_airflow.ui.mount import base_path

        self.env = app._templates()
        self.root = base_path()

    def render(self, template: str, active: str, **context: Any) -> bytes:
        """What `create_app().page()` does: the template with the base context, as the HTMLResponse body."""
        from fastapi.responses import HTMLResponse

        from crispflow_airflow.ui.mount import PREFIX

        html = self.env.get_template(template).render(
            base=self.root + PREFIX, ui=self.root or "", api=f"{self.root}/api/v2", active=active,
            mlflow_ui=os.environ.get("CRISPFLOW_MLFLOW_UI_URL", "").rstrip("/"), **context)
        return bytes(HTMLResponse(html).body)

    def drift(self, src: Any, last: int | None) -> tuple[Stages, dict[str, Any]]:
        """`/crispflow/drift/{model}` (the user may trigger acknowledge_alert); `last=None`: the route's own call."""
        from crispflow.ui import drift_view
        from crispflow_airflow.ui import app

        started = time.perf_counter()
        model = app._model(src, MODEL)
        data = (app._drift_page(src, model) if last is None
                else drift_view.drift_page(src.pred_root, model, last=last))
        fetched = time.perf_counter()
        share, heat = drift_view.share_chart(data), drift_view.heatmap_svg(data)
        drawn = time.perf_counter()
        pipeline = src.models()[model]
        acks = {a["key"]: app._acknowledge_action(True, pipeline, a["key"])
                for a in data.get("alerts") or [] if a.get("key") and not a.get("acknowledged")}
        body = self.render("drift.html", "drift", model=model, pipeline=pipeline, page=data, share_svg=share,
                           heatmap_svg=heat, acks=acks, window_rows=app.WINDOW_ROWS)
        done = time.perf_counter()
        heatmap = data["heatmap"]
        return ({"data": fetched - started, "svg": drawn - fetched, "render": done - drawn, "total": done - started},
                {"windows": len(heatmap["windows"]), "features": len(heatmap["features"]),
                 "svg_kb": (len(share) + len(heat)) / 1024, "kb": len(body) / 1024})

    def model(self, src: Any) -> tuple[Stages, dict[str, Any]]:
        """`/crispflow/models/{model}`."""
        from crispflow_airflow.ui import app

        started = time.perf_counter()
        data = app._model_page(src, app._model(src, MODEL))
        fetched = time.perf_counter()
        body = self.render("model.html", "models", model=MODEL, pipeline=src.models()[MODEL], page=data)
        done = time.perf_counter()
        return ({"data": fetched - started, "render": done - fetched, "total": done - started},
                {"versions": len(data["versions"]), "kb": len(body) / 1024})

    def models(self, src: Any) -> tuple[Stages, dict[str, Any]]:
        """`/crispflow/models`."""
        from crispflow_airflow.ui import app

        started = time.perf_counter()
        rows = app._models_index(src)
        fetched = time.perf_counter()
        body = self.render("models.html", "models", models=rows)
        done = time.perf_counter()
        counted = next(r["versions"] for r in rows if r["name"] == MODEL)
        return ({"data": fetched - started, "render": done - fetched, "total": done - started},
                {"versions": counted, "kb": len(body) / 1024})


def sources(mlf: Any, pred_root: Any) -> Any:
    """The route's `Sources` for this bench's model (the ledger and the lake are not read by these pages)."""
    from crispflow_airflow.ui.sources import Sources

    return Sources(mlf=mlf, ledger_url="", lake=None, pred_root=pred_root, pipelines=(PIPELINE,))  # type: ignore[arg-type]


def timed(fn: Callable[[], tuple[Stages, dict[str, Any]]], runs: int) -> dict[str, Any]:
    """One warm-up, then `runs` runs: the median of each stage, min-max of the total, the last run's facts."""
    fn()
    samples, facts = [], {}
    for _ in range(runs):
        stages, facts = fn()
        samples.append(stages)
    totals = [s["total"] for s in samples]
    return {**facts, "median": {k: statistics.median(s[k] for s in samples) for k in samples[0]},
            "min": min(totals), "max": max(totals)}


# --- the report ------------------------------------------------------------------------------------------------


def markdown(rows: list[dict[str, Any]], args: argparse.Namespace, command: str, built: dict[str, float],
             loads: tuple[float, float], machine: Machine) -> str:
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"## UI pages, server side: Models page with {args.versions} versions, Drift page with "
             f"{args.windows:,} windows x {args.features} features ({now})", "",
             f"Command: `{command}`; {machine.note}; load average "
             f"{loads[0]:.1f} when measuring began, {loads[1]:.1f} at the end; median of {args.runs} runs after a "
             "warm-up, "
             "in one process, as the plugin's routes build the pages: library data, SVG, and the page rendered by "
             "the plugin's Jinja environment (`crispflow_airflow.ui.app._templates()`) with the route's context. "
             "Not timed: authentication, `sources()`, the ASGI round trip.", "",
             f"Drift: {args.windows:,} champion windows x {args.features} features, 20 episodes and alerts (10 "
             f"open: Acknowledge buttons), built in {built['drift']:.1f} s with the monitoring store's writers; "
             "read warm through a local `Path` and through the `file://` `ObjectStoragePath` the api-server's "
             f"`PredictionStoreHook` returns. Models: a private `mlflow server` (SQLite, 1 worker, loopback), "
             f"`{MODEL}` with {args.versions} versions (~35 tags each, as trained + evaluated + judged) and "
             f"champion/previous/canary, registered in {built['registry']:.1f} s; the page reads it over REST.", "",
             "| page | case | data s | SVG s | render s | total s (median) | total min-max s | HTML KB (SVG) | < 1 s |",
             "|---|---|---|---|---|---|---|---|---|"]
    verdict: dict[str, bool] = {}
    for r in rows:
        m = r["median"]
        ok = m["total"] < GOAL_SECONDS
        verdict[r["page"]] = verdict.get(r["page"], True) and ok
        svg = f"{m['svg']:.3f}" if "svg" in m else "-"
        kb = f"{r['kb']:,.0f}" + (f" (SVG {r['svg_kb']:,.0f})" if "svg_kb" in r else "")
        lines.append(f"| {r['page']} | {r['case']} | {m['data']:.3f} | {svg} | {m['render']:.3f} | "
                     f"**{m['total']:.3f}** | {r['min']:.3f}-{r['max']:.3f} | {kb} | "
                     f"{'met' if ok else '**missed**'} |")
    lines += ["", "Goal < 1 s server-side: " + "; ".join(
        f"{page} {'**met**' if ok else '**missed**'}" for page, ok in verdict.items()) + "."]
    return "\n".join(lines) + "\n"


def drift_rows(root: Path, runs: int, windows: int) -> list[dict[str, Any]]:
    from crispflow_airflow.hooks.lake import object_path

    pages, rows = Pages(), []
    for kind, pred_root in (("`Path`", root), ("`ObjectStoragePath` file://", object_path(root.as_uri(), None))):
        src = sources(None, pred_root)
        for last in (None, windows):
            out = timed(lambda src=src, last=last: pages.drift(src, last), runs)
            shown = f"{out['windows']:,} of {windows:,} windows (route default)" if last is None else \
                f"all {out['windows']:,} windows"
            rows.append({**out, "page": "Drift", "case": f"{shown} x {out['features']} features, {kind}"})
    return rows


def models_rows(root: Path, runs: int, versions: int) -> tuple[list[dict[str, Any]], float]:
    from benchmarks.serving_vs_mlflow import BIN, free_port, started, wait_http
    from crispflow.model import registry

    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
            "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination",
            str(root / "artifacts"), "--workers", "1"]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with started(argv, root / "mlflow-server.log", env) as server:
        wait_http(f"{url}/health", server, 180, root / "mlflow-server.log")
        mlf = registry.client(url)
        logging.getLogger("mlflow.store.model_registry.abstract_store").setLevel(logging.WARNING)  # per version
        began = time.perf_counter()
        aliases = build_registry(mlf, versions)
        built = time.perf_counter() - began
        pages, src = Pages(), sources(mlf, None)
        model = timed(lambda: pages.model(src), runs)
        index = timed(lambda: pages.models(src), runs)
    assert model["versions"] == versions and index["versions"] == versions, (model, index)
    held = ", ".join(f"{a} {v}" for a, v in aliases.items())
    return [{**model, "page": "Models", "case": f"`{MODEL}`: {versions} versions ({held})"},
            {**index, "page": "Models index", "case": f"1 model, {versions} versions counted"}], built


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_ui_pages", description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=1000)
    parser.add_argument("--features", type=int, default=50)
    parser.add_argument("--versions", type=int, default=200)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--no-record", action="store_true", help="do not append to benchmarks/RESULTS.md")
    parser.add_argument("--keep-work", action="store_true", help="keep the work folder")
    args = parser.parse_args(argv)
    machine = check_quiet()
    WORK.mkdir(exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="ui-pages-", dir=WORK))
    os.environ.setdefault("AIRFLOW_HOME", str(root / "airflow"))  # the plugin imports Airflow: not in ~/airflow
    load_start = os.getloadavg()[0]
    try:
        started = time.perf_counter()
        build_store(root / "predictions", args.windows, args.features)
        built = {"drift": time.perf_counter() - started}
        rows = drift_rows(root / "predictions", args.runs, args.windows)
        models, built["registry"] = models_rows(root / "mlflow", args.runs, args.versions)
        rows += models
    finally:
        if not args.keep_work:
            shutil.rmtree(root, ignore_errors=True)
        else:
            print(f"work folder kept: {root}", file=sys.stderr)
    text = markdown(rows, args, command_line("benchmarks.bench_ui_pages", argv), built,
                    (load_start, os.getloadavg()[0]), machine)
    report(text, record=not args.no_record)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or None))
