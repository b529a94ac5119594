"""The demo scenario, driven through Airflow's REST API exactly as a user or a scheduler client would."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from upath import UPath

from crispflow.data.datasets import read_manifest
from crispflow.errors import CrispflowError
from crispflow.lake import Lake
from crispflow.stack.airflow_api import AirflowAPIError

if TYPE_CHECKING:
    from crispflow.settings import Settings
    from crispflow.stack.airflow_api import AirflowAPI

INGEST = "ingest_validate"
TRAIN = "train_evaluate_register"
CANARY = "canary_analysis"
MONITOR, WATCH, RETRAIN = "monitor_drift", "watch_drift", "retrain_on_drift"
LATER_MONTHS = ((2026, 10), (2026, 11), (2026, 12))  # the riskier months: the monthly ingests after training
PIPELINE = "lending_club"
# The demo data's simulated months run through 2026: January-September is the history the first model learns
# from; October-December arrive later, monthly, and are riskier (they drift).
DEMO_CONF = {"pipeline": PIPELINE, "start": "2026-01-01", "end": "2026-10-01"}


class Progress:
    """What the demo is doing while it runs: the phase, each DAG run with its state changes and running tasks, and
    the time since the demo started; `timings` keeps how long each phase took (for the summary)."""

    HEARTBEAT_S = 30.0

    def __init__(self, pipeline: str, echo: Callable[[str], None] = print) -> None:
        self.pipeline, self.echo = pipeline, echo
        self.started = time.monotonic()
        self.timings: dict[str, str] = {}
        self._phase: tuple[str, float] | None = None

    def say(self, text: str) -> None:
        elapsed = int(time.monotonic() - self.started)
        self.echo(f"[{elapsed // 60:2d}:{elapsed % 60:02d} {self.pipeline}] {text}")

    def phase(self, name: str) -> None:
        """Start phase `name`, ending the one before."""
        self.end_phase()
        self._phase = (name, time.monotonic())
        self.say(f"phase: {name}")

    def end_phase(self) -> None:
        if self._phase is not None:
            name, began = self._phase
            self.timings[name] = f"{time.monotonic() - began:.0f} s"
            self._phase = None

    def wait_for_run(self, api: AirflowAPI, dag_id: str, run_id: str, timeout: float) -> str:
        """Poll the run until it finishes, saying each state change and, every HEARTBEAT_S, its running tasks."""
        deadline = time.monotonic() + timeout
        shown, beat = None, time.monotonic()
        while True:
            state = api.dag_run(dag_id, run_id).get("state")
            if state != shown:
                self.say(f"{dag_id} run {run_id}: {state}")
                shown = state
            elif time.monotonic() - beat >= self.HEARTBEAT_S:
                self.say(f"{dag_id} run {run_id}: {state}; {_running(api, dag_id, run_id)}")
                beat = time.monotonic()
            if state in ("success", "failed"):
                return state
            if time.monotonic() >= deadline:
                raise AirflowAPIError(f"run {run_id!r} of {dag_id!r} still {state!r} after {timeout:.0f} s")
            time.sleep(2)


def _running(api: AirflowAPI, dag_id: str, run_id: str) -> str:
    """'running: a, b[2]' for the run's running and queued task instances."""
    try:
        tis = api.task_instances(dag_id, run_id)
    except AirflowAPIError:
        return "tasks unknown"
    busy = [t["task_id"] + (f"[{t['map_index']}]" if t.get("map_index", -1) >= 0 else "")
            for t in tis if t.get("state") in ("running", "queued", "scheduled", "deferred", "up_for_reschedule")]
    return f"running: {', '.join(busy)}" if busy else "between tasks"


def run_and_wait(api: AirflowAPI, dag_id: str, run_id: str | None, conf: dict[str, Any] | None = None,
                 timeout: float = 600, progress: Progress | None = None) -> str:
    """Trigger `dag_id` (unless `run_id` names an existing run), wait for it, fail clearly if it failed."""
    api.wait_for_dag(dag_id)
    run_id = run_id or api.trigger(dag_id, conf=conf)
    if progress is None:
        state = api.wait_for_run(dag_id, run_id, timeout=timeout)
    else:
        state = progress.wait_for_run(api, dag_id, run_id, timeout)
    if state != "success":
        tasks = {t["task_id"]: t["state"] for t in api.task_instances(dag_id, run_id)}
        raise CrispflowError(f"{dag_id} run {run_id} ended {state}: {tasks}; see its task logs in the UI")
    return run_id


def training_run_for(api: AirflowAPI, version_id: str, timeout: float = 600, pipeline: str = PIPELINE) -> str | None:
    """The training run the dataset's asset event started: the run of partition key `<pipeline>/<version_id>` (one
    per published version), or for runs without a key, the one whose `resolve` task read that version."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for run in api.dag_runs(TRAIN, limit=20, newest_first=True):
            if run.get("partition_key") == f"{pipeline}/{version_id}":
                return run["dag_run_id"]
            try:
                request = api.xcom(TRAIN, run["dag_run_id"], "resolve")
            except AirflowAPIError:
                continue  # not resolved yet
            if isinstance(request, dict) and request.get("dataset_version_id") == version_id:
                return run["dag_run_id"]
        time.sleep(3)
    return None


def ingest_and_train(api: AirflowAPI, conf: dict[str, Any], progress: Progress | None = None) -> dict[str, Any]:
    """Ingest an interval; wait for the training run its dataset event starts (or start one) and for it to end."""
    ingest_run = run_and_wait(api, INGEST, None, conf, progress=progress)
    published = api.xcom(INGEST, ingest_run, "publish")
    version_id = published["dataset_version_id"]
    if progress:
        progress.phase("train, evaluate, explain, bless and register the first model")
    # A newly published version starts training through its asset event; otherwise train on it explicitly.
    train_run = training_run_for(api, version_id, pipeline=conf["pipeline"]) if published["event_emitted"] else None
    train_run = run_and_wait(api, TRAIN, train_run, {"pipeline": conf["pipeline"], "dataset_version_id": version_id},
                             timeout=1800, progress=progress)
    return {"ingest_run": ingest_run, "published": published, "train_run": train_run}


def run_demo(api: AirflowAPI, settings: Settings, pipeline: str = PIPELINE,
             echo: Callable[[str], None] = print) -> dict[str, Any]:
    """The lifecycle through the REST API: ingest → validate → publish → train → evaluate → bless (the first model
    becomes champion); then the later months arrive as live traffic, drift is found, the drift sensor retrains, and
    the blessed retrained model goes canary and is judged on labelled evidence. Any pipeline whose data has the
    demo's months (the three shipped specs) can run it; several can run at once on one stack."""
    progress = Progress(pipeline, echo)
    progress.phase("ingest and validate January-September")
    first = ingest_and_train(api, {**DEMO_CONF, "pipeline": pipeline}, progress)
    summary = _data_summary(api, settings, first["ingest_run"], first["published"], pipeline)
    summary.update(_model_summary(api, settings, first["train_run"], pipeline))
    summary["drift loop"] = drift_phase(api, settings, pipeline, progress) if not _loop_done(settings, pipeline) else {
        "already completed by an earlier demo run (the cooldown holds further retrains)": "see the ledger",
        "promotion ledger": _ledger_lines(settings, pipeline)}
    progress.end_phase()
    progress.say("done")
    summary["time per phase"] = progress.timings
    return summary


def _loop_done(settings: Settings, pipeline: str) -> bool:
    """An earlier demo run on this stack already settled a retrained model's canary."""
    return any(line.split()[1] in ("promote", "rollback", "abort") for line in _ledger_lines(settings, pipeline))


def _ledger_decision(settings: Settings, pipeline: str, canary: str) -> dict[str, Any] | None:
    """The decision the ledger recorded for canary `canary` (promoted or rolled back), or None."""
    from crispflow.model import registry
    from crispflow.release import promotion

    outcome = {"promote": "promote", "abort_canary": "rollback"}
    for entry in reversed(promotion.Ledger(settings.ledger_url).entries(registry.model_name(pipeline))):
        if entry["action"] in outcome and entry["moves"].get(promotion.CANARY, [None])[0] == canary:
            return {"decision": outcome[entry["action"]],
                    "reasons": [f"{entry['reason']} (ledger #{entry['seq']}, by {entry['actor']})"]}
    return None


def _ledger_lines(settings: Settings, pipeline: str = PIPELINE) -> list[str]:
    from crispflow.model import registry
    from crispflow.release import promotion

    entries = promotion.Ledger(settings.ledger_url).entries(registry.model_name(pipeline))
    return [f"#{e['seq']} {e['action']} {_moves(e['moves'])}" for e in entries]


def _data_summary(api: AirflowAPI, settings: Settings, ingest_run: str, published: dict[str, Any],
                  pipeline: str) -> dict[str, Any]:
    version_id = published["dataset_version_id"]
    lake_root = UPath(settings.lake_url)
    manifest = read_manifest(Lake(lake_root), version_id, pipeline)
    where = {key: str(lake_root / rel) for key, rel in manifest["files"].items()}
    return {
        "ingest run": f"{api.base_url}/dags/{INGEST}/runs/{ingest_run}",
        "dataset version": version_id
        + ("" if published["created"] else " (already published by an earlier run: same content, same id)"),
        "rows": manifest["rows"],
        "quarantine reasons": manifest["quality"]["reasons"] or "none",
        "manifest": str(lake_root / published["manifest"]),
        "curated data": where["data"],
        "quarantine": where["quarantine"],
        "GX report (Data Docs)": where["quality_html"],
    }


def feedback_labels(spec: Any, frame: Any) -> list[Any]:
    """The true labels of `frame` as the model server's /feedback takes them: binary 0/1, multiclass the class,
    regression the value."""
    from crispflow.model.tasks import labels

    y = labels(spec, frame)
    if spec.task == "multiclass":
        return [str(spec.class_labels[code]) for code in y]
    return [int(v) for v in y] if spec.task == "binary" else [float(v) for v in y]


def holdout_traffic(settings: Settings, pipeline: str = PIPELINE) -> tuple[Any, list[Any]]:
    """The frozen holdout's rows (features and entity key, in clear) and their true labels, to replay as live
    traffic."""
    from crispflow.lake import read_parquet
    from crispflow.model.holdout import frozen_record
    from crispflow.spec import load_spec

    spec = load_spec(pipeline)
    lake = Lake(UPath(settings.lake_url))
    frame = read_parquet(lake.root / frozen_record(lake, pipeline)["file"])
    return in_clear(settings, lake, spec, frame[[spec.key, *spec.feature_columns]]), feedback_labels(spec, frame)


def in_clear(settings: Settings, lake: Lake, spec: Any, frame: Any) -> Any:
    """Curated rows as a client sends them: the pseudonymised columns back in clear, looked up among the staged
    batches' values under the stack's keys ($CRISPFLOW_PSEUDONYM_KEYS only for a stack whose secrets are not
    here). (Only the demo does this: it plays both the data owner and the client; a real client has its own clear
    data.)"""
    from crispflow.errors import CrispflowError
    from crispflow.governance.pseudonyms import Pseudonymizer, canonical_text, keys_from_env
    from crispflow.governance.stored_form import domain_of
    from crispflow.lake import read_parquet
    from crispflow.stack.credentials import load_secrets

    columns = [c for c in spec.pseudonymised_columns if c in frame.columns]
    creds = load_secrets(settings.home)
    stack_keys = creds.pseudonym_keys if creds is not None else ""
    keys = Pseudonymizer.from_text(stack_keys) if stack_keys else keys_from_env()
    if not columns or keys is None:
        return frame
    lookup: dict[str, dict[str, Any]] = {c: {} for c in columns}
    for path in sorted(lake.batch_dir(spec.name, "-").parent.glob("*/batch.parquet")):
        batch = read_parquet(path)[columns]
        for column in columns:
            for value in batch[column].dropna().unique().tolist():
                for name in keys.all_pseudonyms(canonical_text(value), domain_of(spec, column)):
                    lookup[column][name] = value
    out = frame.copy()
    for column in columns:
        names = out[column].tolist()
        unknown = sum(1 for v in names if isinstance(v, str) and v not in lookup[column])
        if unknown:
            raise CrispflowError(f"{unknown} pseudonyms of {spec.name}.{column} match no staged value under the "
                                 "stack's keys: the curated data was stored under other keys")
        out[column] = [lookup[column].get(v) if isinstance(v, str) else None for v in names]
    return out


def canary_phase(api: AirflowAPI, settings: Settings, pipeline: str = PIPELINE, rounds: int = 6,
                 progress: Progress | None = None) -> dict[str, Any]:
    """Replay the holdout through the model server (labels fed back two seconds later) and run the canary
    analysis after each pass, until it promotes or rolls back the canary."""
    import requests

    from crispflow.model import registry
    from crispflow.release import promotion
    from crispflow.stack.traffic import bearer, replay, stack_token

    mlf = registry.client(settings.mlflow_tracking_uri)
    name = registry.model_name(pipeline)
    canary = registry.alias_version(mlf, name, promotion.CANARY)
    if canary is None:
        return {"canary": "none deployed (the second model was not blessed, or is the champion already)"}
    _wait_serving(settings, name, str(canary.version))
    share = mlf.get_registered_model(name).tags.get(promotion.CANARY_SHARE_TAG)
    rows, labels = holdout_traffic(settings, pipeline)
    decision, traffic, analysis_run = {"decision": "continue"}, {}, None
    for round_ in range(rounds):
        if progress:
            progress.say(f"canary pass {round_ + 1}: replaying {len(rows)} holdout records with their labels")
        stats = replay(settings.serve_url, rows, labels, batch=10, feedback_delay=2.0, model=name,
                       token=stack_token(settings.home))
        traffic = stats.as_dict()
        if stats.failed:
            raise CrispflowError(f"the model server failed {stats.failed} records: {stats.errors}")
        time.sleep(2.5)  # the server's prediction log flushes every second
        analysis_run = run_and_wait(api, CANARY, None, {"pipeline": pipeline}, timeout=600, progress=progress)
        decision = api.xcom(CANARY, analysis_run, "analyse_and_act", map_index=0)  # mapped: one per pipeline
        if decision["decision"] == "none":  # the scheduled analysis (every 10 min) decided first: say what it did
            decision = _ledger_decision(settings, pipeline, str(canary.version)) or decision
        if decision["decision"] != "continue":
            break
    metrics = requests.get(f"{settings.serve_url}/metrics", timeout=10,
                           headers=bearer(stack_token(settings.home, "admin"))).text
    return {
        "canary": f"v{canary.version} at {share} of entities",
        "traffic (last pass)": traffic,
        "canary analysis": f"{api.base_url}/dags/{CANARY}/runs/{analysis_run}",
        "canary decision": f"{decision['decision']}: {'; '.join(decision.get('reasons', []))}",
        "canary report": decision.get("report", "none"),
        "promotion ledger": _ledger_lines(settings, pipeline),
        "model server": f"{settings.serve_url}/models/{name} (metrics: {settings.serve_url}/metrics)",
        "served records by version (metrics)": _served(metrics, name),
    }


def drift_phase(api: AirflowAPI, settings: Settings, pipeline: str = PIPELINE,
                progress: Progress | None = None) -> dict[str, Any]:
    """The maintenance loop: the later, riskier months are ingested and arrive as live traffic; two monitoring
    windows find drift; the drift sensor fires once and alerts; the retraining DAG trains on the composed training
    window; the blessed result goes canary and is promoted on labelled evidence, like any other model."""
    import math

    from crispflow.model.registry import model_name
    from crispflow.stack.traffic import replay, stack_token

    if progress:
        progress.phase("ingest October-December (monthly)")
    # the monthly ingests (each too small to train on alone), triggered together: the DAG runs two at a time
    api.wait_for_dag(INGEST)
    runs = [api.trigger(INGEST, conf={"pipeline": pipeline, "start": f"{year}-{month:02d}-01",
                                      "end": f"{year + month // 12}-{month % 12 + 1:02d}-01"})
            for year, month in LATER_MONTHS]
    for run_id in runs:
        run_and_wait(api, INGEST, run_id, progress=progress)
    if progress:
        progress.phase("live traffic and drift monitoring")
    rows, labels = later_traffic(settings, pipeline)
    started = time.time()
    windows = []
    half = len(rows) // 2
    for chunk in (slice(0, half), slice(half, len(rows))):
        began = time.monotonic()
        if progress:
            progress.say(f"replaying {chunk.stop - chunk.start} records of the later months through the model server")
        stats = replay(settings.serve_url, rows.iloc[chunk], labels[chunk], batch=10, feedback_delay=1.0,
                       model=model_name(pipeline), token=stack_token(settings.home))
        if stats.failed:
            raise CrispflowError(f"the model server failed {stats.failed} records: {stats.errors}")
        time.sleep(2.5)  # the prediction log flushes every second
        minutes = max(1, math.ceil((time.monotonic() - began) / 60))
        run = run_and_wait(api, MONITOR, None, {"pipeline": pipeline, "window_minutes": minutes}, timeout=600,
                           progress=progress)
        windows.extend(api.xcom(MONITOR, run, "compute_drift", map_index=0)["summaries"])  # mapped per pipeline
    # A sensor for this pipeline (an hourly run may watch it too, or may have started before its champion existed:
    # the episode is claimed exclusively, so two sensors never fire it twice).
    if progress:
        progress.phase("drift sensor fires; retrain on the composed training window")
    api.trigger(WATCH, conf={"pipeline": pipeline})
    retrain = _run_after(api, RETRAIN, started, timeout=900, pipeline=pipeline)
    run_and_wait(api, RETRAIN, retrain, timeout=2400, progress=progress)
    watch, fired, alert = _fired_watch(api, started, pipeline)
    resolved = api.xcom(RETRAIN, retrain, "resolve")
    out: dict[str, Any] = {
        "windows": [f"{w['alias']} v{w['version']} {w['window_end']}: {w['status']} (drift share "
                    f"{w['drift_share']:.2f}; {', '.join(w['drifted_features']) or 'no feature'})" for w in windows],
        "drift report": windows[-1]["report"] if windows else "none",
        "drift sensor": f"{api.base_url}/dags/{WATCH}/runs/{watch} fired episode {fired['episode_id']} on "
        f"{', '.join(fired['features'])}",
        "alert": alert,
        "retraining": f"{api.base_url}/dags/{RETRAIN}/runs/{retrain} → training window "
        f"{resolved['conf']['dataset_version_id']}",
    }
    out.update(_model_summary(api, settings, resolved["run_id"], pipeline))
    if progress:
        progress.phase("canary: labelled traffic and canary analysis")
    out.update(canary_phase(api, settings, pipeline, progress=progress))
    return out


def later_traffic(settings: Settings, pipeline: str = PIPELINE) -> tuple[Any, list[Any]]:
    """The published rows of the later months (features, entity key) and their true labels."""
    import pandas as pd

    from crispflow.data.datasets import load_version, published
    from crispflow.spec import load_spec

    spec = load_spec(pipeline)
    lake = Lake(UPath(settings.lake_url))
    starts = {f"{y}-{m:02d}" for y, m in LATER_MONTHS}
    versions = [m["dataset_version_id"] for m in published(lake, pipeline) if m["interval"]["start"][:7] in starts
                and m["interval"]["end"][:7] != m["interval"]["start"][:7] and not m.get("parents")]
    frame = pd.concat([load_version(lake, v, pipeline) for v in versions], ignore_index=True)
    frame = frame.drop_duplicates(spec.key).sort_values(spec.time_column, kind="stable").reset_index(drop=True)
    return in_clear(settings, lake, spec, frame[[spec.key, *spec.feature_columns]]), feedback_labels(spec, frame)


def _fired_watch(api: AirflowAPI, after: float, pipeline: str = PIPELINE,
                 timeout: float = 120) -> tuple[str, dict[str, Any], Any]:
    """The watch_drift run whose sensor fired after `after`: (run id, the episode it recorded, the alert sent)."""
    from datetime import UTC, datetime

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for run in api.dag_runs(WATCH):
            ended = run.get("end_date")
            if run["state"] != "success" or not ended:
                continue
            if datetime.fromisoformat(ended).astimezone(UTC).timestamp() < after:
                continue
            fired = _mapped_xcom(api, WATCH, run["dag_run_id"], "watch", pipeline)
            if fired:
                index, record = fired
                return run["dag_run_id"], record, api.xcom(WATCH, run["dag_run_id"], "alert", map_index=index)
        time.sleep(3)
    raise CrispflowError(f"no {WATCH} run fired within {timeout:.0f} s of the retrain")


def _mapped_xcom(api: AirflowAPI, dag_id: str, run_id: str, task_id: str,
                 pipeline: str = PIPELINE) -> tuple[int, Any] | None:
    """(map index, XCom) of a pipeline's instance of a task mapped over pipelines, or None (not there, or it pushed
    nothing: a skipped sensor)."""
    for ti in api.task_instances(dag_id, run_id):
        if ti["task_id"] == task_id and ti.get("rendered_map_index") == pipeline and ti["state"] == "success":
            try:
                return ti["map_index"], api.xcom(dag_id, run_id, task_id, map_index=ti["map_index"])
            except AirflowAPIError:
                return None
    return None


def _run_after(api: AirflowAPI, dag_id: str, after: float, timeout: float, pipeline: str = PIPELINE) -> str:
    """The id of the first run of `dag_id` for `pipeline` (its partition key `<pipeline>/...`) queued after the UNIX
    time `after` (an asset-scheduled run)."""
    from datetime import UTC, datetime

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for run in api.dag_runs(dag_id):
            if not str(run.get("partition_key") or "").startswith(f"{pipeline}/"):
                continue
            if datetime.fromisoformat(run["run_after"]).astimezone(UTC).timestamp() >= after - 1:
                return run["dag_run_id"]
        time.sleep(3)
    raise CrispflowError(f"no {dag_id} run started within {timeout:.0f} s (is its asset event missing?)")


def _moves(moves: dict[str, list[str | None]]) -> str:
    return ", ".join(f"{alias} {_v(before)}→{_v(after)}" for alias, (before, after) in moves.items())


def _v(version: str | None) -> str:
    return f"v{version}" if version else "-"


def _served(metrics: str, model: str) -> str:
    """The server's per-version, per-alias record counters of `model`, from its Prometheus text."""
    lines = [line for line in metrics.splitlines()
             if line.startswith("crispflow_serve_predictions_total{") and f'model="{model}"' in line]
    return "; ".join(lines) or "none"


def _wait_serving(settings: Settings, model: str, canary: str, timeout: float = 120) -> None:
    """Until the model server has picked up `model`'s canary alias (it polls the registry every few seconds)."""
    import requests

    from crispflow.stack.traffic import bearer, stack_token

    headers = bearer(stack_token(settings.home, "admin"))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            arms = requests.get(f"{settings.serve_url}/models/{model}", timeout=5,
                                headers=headers).json().get("aliases", {})
            if str(arms.get("canary", {}).get("version")) == canary:
                return
        except (requests.RequestException, ValueError):
            pass
        time.sleep(2)
    raise CrispflowError(f"the model server at {settings.serve_url} did not load canary v{canary} in {timeout:.0f} s")


def _model_summary(api: AirflowAPI, settings: Settings, train_run: str, pipeline: str) -> dict[str, Any]:
    from crispflow.model import registry

    registered = api.xcom(TRAIN, train_run, "register")
    verdict = api.xcom(TRAIN, train_run, "bless")
    explained = api.xcom(TRAIN, train_run, "explain")
    mlf = registry.client(settings.mlflow_tracking_uri)
    name, version = registry.model_name(pipeline), str(registered["version"])
    mv = mlf.get_model_version(name, version)
    experiment = mlf.get_run(mv.run_id).info.experiment_id
    champion = registry.alias_version(mlf, name, "champion")
    base = settings.mlflow_tracking_uri.rstrip("/")
    run_url = f"{base}/#/experiments/{experiment}/runs/{mv.run_id}"
    return {
        "training run": f"{api.base_url}/dags/{TRAIN}/runs/{train_run}",
        "model": f"{name} v{version} ({registered['config_id']}, {_decision_rule(registered)})",
        "blessed": f"{verdict['blessed']} ({verdict['mode']})"
        + ("" if verdict["blessed"] else f": {'; '.join(verdict['reasons'])}"),
        "explanations": _explained(explained),
        "fairness": _fairness_line(verdict),
        "champion": f"v{champion.version}" if champion else "none",
        "MLflow run": run_url,
        "MLflow model version": f"{base}/#/models/{name}/versions/{version}",
        "verdict artifact": f"{run_url} → artifacts/blessing/v{version}.json",
        "model card": f"{run_url} → artifacts/model_card/v{version}.html (and .md)",
    }


def _explained(explained: dict[str, Any]) -> str:
    """The top features by permutation importance with their CIs, and whether the server can explain."""
    top = ", ".join(f"{f['feature']} {f['importance']:+.3f} [{f['low']:+.3f}, {f['high']:+.3f}]"
                    for f in explained["top_features"][:3])
    return (f"top features {top}; explainer {explained['explainer']} (POST /predict?explain=true); global "
            f"explanation computed in {explained['seconds']:.0f} s")


def _fairness_line(verdict: dict[str, Any]) -> str:
    """The gate's fairness decision and each sensitive column's disparities with their CIs (the bless task's small
    form, `fairness.fairness_summary`)."""
    fairness = verdict.get("fairness")
    if not fairness:
        return "not measured (no sensitive column in the spec)"
    parts = []
    for column, report in (fairness.get("columns") or {}).items():
        shown = [f"{name} {d['value']:.3f}" + _ci(d.get("ci_low"), d.get("ci_high"))
                 for name, d in (report.get("disparities") or {}).items() if d.get("value") is not None]
        parts.append(f"{column}: {', '.join(shown) or report.get('note', 'no disparity')}")
    return f"{fairness['decision']} (mode {fairness['mode']}); " + "; ".join(parts)


def _ci(low: float | None, high: float | None) -> str:
    """' [low, high]', or '' when the interval was not computed."""
    return "" if low is None or high is None else f" [{low:.3f}, {high:.3f}]"


def _decision_rule(registered: dict[str, Any]) -> str:
    """How the version turns its output into a decision: the threshold (binary) or the interval (regression)."""
    if registered.get("threshold") is not None:
        return f"threshold {registered['threshold']:.3f}"
    interval = registered.get("interval")
    if interval:
        return f"{interval['coverage']:.0%} interval ±{interval['halfwidth']:.3g}"
    return "most probable class"
