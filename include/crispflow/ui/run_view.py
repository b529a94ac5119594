"""What one crispflow DAG run did, in lifecycle terms, from its tasks' XCom return values: the batch staged, the
quality gate's counts, the dataset version published; the model version registered, its holdout metrics and its
verdict; alias moves (ledger entries); canary decisions; drift windows judged; drift episodes and alerts; batch
scores; and, for a run that skipped its work, why.

A pure function over plain values (no Airflow, no I/O), so the run tab, the run note and the tests share it.

`results` maps a task id (`"<task_id>[<map_index>]"` for a mapped task instance) to that task's XCom return
value. **Skipped tasks** push no return value: the caller passes `{"skipped": "<reason>"}` for a task it knows was
skipped and why — in particular a `train_evaluate_register` run whose `resolve` task skipped (dataset too small
for `training.min_rows`) has no other results and is passed as `{"resolve": {"skipped": "<reason>"}}`; its
summary's `skipped` holds the reason and `note` the text for the run's note (`skip_note`).

Links are `{label, href_path}` with `href_path` relative to the plugin's URL prefix (`ROUTES`), e.g.
`/models/crispflow-credit/versions/3`; the Airflow layer prepends its base URL and prefix.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import quote

from crispflow.model.registry import model_name

# The plugin's pages, relative to its URL prefix: the Airflow layer serves these routes.
ROUTES = {
    "models": "/models",
    "model": "/models/{model}",
    "version": "/models/{model}/versions/{version}",
    "data_docs": "/data-docs/{pipeline}/{ref}",
    "promotions": "/promotions/{model}",
    "drift": "/drift/{model}",
    "drift_report": "/drift/{model}/reports/{alias}/{window_key}/{kind}",
}
SKIP_TITLES = {("train_evaluate_register", "resolve"): "Training skipped",
               ("train_evaluate_register", "deploy"): "Not deployed",
               ("watch_drift", "watch"): "No drift episode to act on"}
NOTE_LIMIT = 1000  # Airflow's DagRunNote.content is String(1000)
_MAPPED = re.compile(r"^(?P<task>[A-Za-z0-9_.-]+)\[(?P<index>-?\d+)\]$")


def href(route: str, **parts: Any) -> str:
    """The path of a plugin page, each part URL-quoted (no `/` inside a part)."""
    return ROUTES[route].format(**{k: quote(str(v), safe="") for k, v in parts.items()})


def link(label: str, route: str, **parts: Any) -> dict[str, str]:
    return {"label": label, "href_path": href(route, **parts)}


def item(kind: str, title: str, detail: str = "", links: Sequence[Mapping[str, str]] = (), *, task_id: str,
         level: str = "info") -> dict[str, Any]:
    """One lifecycle fact: `kind`, `title`, `detail`, `links`, the `task_id` it comes from, and a `level`
    (info, success, warning, skipped) the page may colour by."""
    return {"kind": kind, "title": title, "detail": detail, "links": [dict(x) for x in links], "task_id": task_id,
            "level": level}


def skip_note(reason: str) -> str:
    """The run note of a run that skipped its work: says it is a skip, not a failure, and why (Airflow keeps
    1,000 characters of a note)."""
    text = f"Skipped, not failed: {' '.join(str(reason).split())}"
    return text if len(text) <= NOTE_LIMIT else text[:NOTE_LIMIT - 1] + "…"


def run_summary(dag_id: str, results: Mapping[str, Any], *, conf: Mapping[str, Any] | None = None
                ) -> dict[str, Any]:
    """The lifecycle facts of one run of `dag_id`: `dag_id`, `pipeline` and `model` (when known), `items`
    (see `item`), `skipped` (the reason a run skipped its work, else None) and `note` (`skip_note` of it, else
    None). `conf` (the run's conf) names the pipeline of runs whose results do not (e.g. `rollback`).
    Unknown DAGs and tasks still show ledger moves and skips they return."""
    run = _Run(dag_id, results, conf or {})
    HANDLERS.get(dag_id, _generic)(run)
    _skips(run)
    skipped = next((r for r in run.skips if r), None) if not run.did_work else None
    if dag_id == "train_evaluate_register" and run.resolve_skip is not None:
        skipped = run.resolve_skip
    return {"dag_id": dag_id, "pipeline": run.pipeline, "model": model_name(run.pipeline) if run.pipeline else None,
            "items": run.items, "skipped": skipped, "note": skip_note(skipped) if skipped else None}


class _Run:
    """The results of one run, grouped by task (mapped instances in map-index order), and the items so far."""

    def __init__(self, dag_id: str, results: Mapping[str, Any], conf: Mapping[str, Any]) -> None:
        self.dag_id = dag_id
        self.by_task: dict[str, list[tuple[int | None, Any]]] = {}
        for key, value in results.items():
            match = _MAPPED.match(str(key))
            task, index = (match["task"], int(match["index"])) if match else (str(key), None)
            self.by_task.setdefault(task, []).append((index, value))
        for found in self.by_task.values():
            found.sort(key=lambda pair: -1 if pair[0] is None else pair[0])
        pipeline = conf.get("pipeline")
        self.pipeline: str | None = pipeline if isinstance(pipeline, str) and pipeline else None
        self.items: list[dict[str, Any]] = []
        self.skips: list[str] = []
        self.did_work = False
        self.resolve_skip: str | None = None
        self.handled: set[str] = set()

    def get(self, task: str) -> Any:
        """The unmapped result of `task` (None if absent or skipped)."""
        found = self.by_task.get(task) or []
        value = found[0][1] if found else None
        return None if _skip_reason(value) is not None else value

    def each(self, task: str) -> list[tuple[int | None, Any]]:
        """Every (map index, result) of `task` that is not a skip."""
        return [(i, v) for i, v in self.by_task.get(task) or [] if _skip_reason(v) is None and v is not None]

    def add(self, *made: dict[str, Any]) -> None:
        self.items.extend(made)
        self.did_work = self.did_work or any(m["level"] != "skipped" for m in made)

    def model(self, pipeline: str | None = None) -> str | None:
        pipeline = pipeline or self.pipeline
        return model_name(pipeline) if pipeline else None

    def mapped_pipeline(self, index: int | None) -> str | None:
        """The pipeline of map index `index` of a task mapped over the `pipelines` task's list."""
        listed = self.get("pipelines")
        if isinstance(listed, list) and index is not None and 0 <= index < len(listed):
            return str(listed[index])
        return self.pipeline


def _skip_reason(value: Any) -> str | None:
    if isinstance(value, Mapping) and set(value) == {"skipped"}:
        return str(value["skipped"])
    return None


def _skips(run: _Run) -> None:
    """An item per task the caller reported skipped (`{"skipped": reason}`)."""
    for task, found in run.by_task.items():
        for index, value in found:
            reason = _skip_reason(value)
            if reason is None:
                continue
            run.skips.append(reason)
            name = task if index is None else f"{task}[{index}]"
            title = SKIP_TITLES.get((run.dag_id, task), f"{name} skipped")
            run.add(item("skipped", title, reason, task_id=task, level="skipped"))


# --------------------------------------------------------------------------------------------- data


def _ingest_validate(run: _Run) -> None:
    ingest = run.get("ingest")
    if isinstance(ingest, Mapping):
        run.pipeline = run.pipeline or ingest.get("pipeline")
        interval = ingest.get("interval") or {}
        run.add(item("batch", f"Staged batch {ingest.get('batch_id')}: {_n(ingest.get('rows_in'))} rows",
                     f"interval {interval.get('start')} → {interval.get('end')}" if interval else "",
                     task_id="ingest"))
    gate = run.get("validate")
    if isinstance(gate, Mapping):
        docs = [link("GX Data Docs", "data_docs", pipeline=run.pipeline, ref=gate["batch_id"])] \
            if run.pipeline and gate.get("batch_id") else []
        passed = bool(gate.get("success"))
        run.add(item("quality", f"Quality gate {'passed' if passed else 'failed'}: {_n(gate.get('rows_passed'))} "
                     f"rows passed, {_n(gate.get('rows_quarantined'))} quarantined of {_n(gate.get('rows_in'))}",
                     "rejected rows are in the quarantine with reason codes" if gate.get("rows_quarantined") else "",
                     docs, task_id="validate", level="success" if passed else "warning"))
    published = run.get("publish")
    if isinstance(published, Mapping):
        run.pipeline = run.pipeline or published.get("pipeline")
        version = published.get("dataset_version_id")
        if published.get("created", True):
            title = f"Published dataset version {version} ({_n(published.get('rows'))} rows)"
        else:
            title = f"Dataset version {version} was already published ({_n(published.get('rows'))} rows)"
        detail = ("its event starts one training run" if published.get("event_emitted")
                  else "no new event (the version existed before this run)")
        docs = [link("GX Data Docs", "data_docs", pipeline=run.pipeline, ref=version)] if run.pipeline and version \
            else []
        run.add(item("dataset", title, detail, docs, task_id="publish", level="success"))


def _ingest_monthly(run: _Run) -> None:
    planned = run.get("plan")
    if isinstance(planned, list) and planned:
        pipelines = [str((p.get("conf") or {}).get("pipeline")) for p in planned if isinstance(p, Mapping)]
        run.add(item("triggered", f"Triggered {len(pipelines)} ingest_validate run(s)", ", ".join(pipelines),
                     task_id="plan"))


# --------------------------------------------------------------------------------------------- model


def _train(run: _Run) -> None:
    found = run.by_task.get("resolve") or []
    if found and _skip_reason(found[0][1]) is not None:
        run.resolve_skip = _skip_reason(found[0][1])
    request = run.get("resolve")
    if isinstance(request, Mapping):
        run.pipeline = run.pipeline or request.get("pipeline")
        version = request.get("dataset_version_id")
        run.add(item("request", f"Training on dataset version {version}",
                     "forced blessing requested" if request.get("force_bless") else "",
                     [link("GX Data Docs", "data_docs", pipeline=run.pipeline, ref=version)]
                     if run.pipeline and version else [], task_id="resolve"))
    model = run.model()
    prepared = run.get("prepare")
    if isinstance(prepared, Mapping) and prepared.get("n_train") is not None:
        run.add(item("holdout", f"{_n(prepared.get('n_train'))} training rows, {_n(prepared.get('n_holdout'))} "
                     "frozen holdout rows", f"holdout {str(prepared.get('holdout_hash') or '')[:12]}",
                     task_id="prepare"))
    candidates = run.each("cross_validate")
    if candidates:
        best = _best(candidates)
        run.add(item("candidates", f"{len(candidates)} candidate configuration(s) cross-validated",
                     f"best {best}" if best else "", task_id="cross_validate"))
    registered = run.get("register")
    version = None
    if isinstance(registered, Mapping):
        version = str(registered.get("version"))
        run.add(item("model_version", f"Registered {model} v{version} as challenger",
                     f"configuration {registered.get('config_id')}" + (
                         f", threshold {_num(registered.get('threshold'))}" if registered.get("threshold") is not None
                         else "") + ("" if registered.get("created", True) else " (found again on retry)"),
                     _version_links(model, version), task_id="register"))
    evaluated = run.get("evaluate")
    if isinstance(evaluated, Mapping):
        metrics = evaluated.get("metrics") or {}
        version = version or str(evaluated.get("version"))
        run.add(item("evaluation", f"Holdout metrics of v{evaluated.get('version')}",
                     ", ".join(f"{k} {_num(v)}" for k, v in metrics.items())
                     + (f"; p95 latency {_num(evaluated.get('latency_p95_ms'))} ms"
                        if evaluated.get("latency_p95_ms") is not None else ""),
                     _version_links(model, version), task_id="evaluate"))
    _bless(run, model)
    _forced(run, model)
    deployed = run.get("deploy")
    if isinstance(deployed, Mapping):
        run.add(_move(deployed, model, "deploy"))


def _bless(run: _Run, model: str | None) -> None:
    verdict = run.get("bless")
    if not isinstance(verdict, Mapping):
        return
    version = str(verdict.get("version"))
    blessed = bool(verdict.get("blessed"))
    mode = str(verdict.get("mode") or "").replace("_", " ")
    title = f"v{version} {'blessed' if blessed else 'not blessed'}" + (f" ({mode})" if mode else "")
    detail = "; ".join(verdict.get("reasons") or [])
    action = verdict.get("promotion") or {}
    if action.get("action") == "champion":
        detail = "became champion (first blessed model)" + (f"; {detail}" if detail else "")
    elif action.get("reason"):
        detail = (f"{detail}; " if detail else "") + str(action["reason"])
    links = []
    if model:
        links = [link("Verdict", "version", model=model, version=version),
                 {"label": "Model card", "href_path": href("version", model=model, version=version) + "#model-card"}]
    run.add(item("verdict", title, detail, links, task_id="bless", level="success" if blessed else "warning"))


def _forced(run: _Run, model: str | None) -> None:
    approval = run.get("approve_forced_blessing")
    if isinstance(approval, Mapping):
        who = approval.get("responded_by_user") or {}
        chosen = ", ".join(approval.get("chosen_options") or [])
        run.add(item("approval", f"Forced blessing: {chosen or 'answered'}",
                     f"by {who.get('name') or who.get('id') or 'unknown'}", task_id="approve_forced_blessing"))
    forced = run.get("record_forced_blessing")
    if isinstance(forced, Mapping):
        version = str(forced.get("version"))
        became = " and became champion" if forced.get("action") == "champion" else ""
        run.add(item("verdict", f"v{version} blessed by a person's approved override{became}",
                     str(forced.get("reason") or ""), _version_links(model, version),
                     task_id="record_forced_blessing", level="warning"))


def _best(candidates: list[tuple[int | None, Any]]) -> str:
    scored = [c for _, c in candidates if isinstance(c, Mapping) and isinstance(c.get("mean"), int | float)]
    if not scored:
        return ""
    metric = str(scored[0].get("metric") or "")
    lower = metric in ("brier", "log_loss", "rmse", "mae")
    best = (min if lower else max)(scored, key=lambda c: c["mean"])
    return f"{best.get('config_id')}: {metric} {_num(best['mean'])}"


def _version_links(model: str | None, version: str | None) -> list[dict[str, str]]:
    return [link(f"{model} v{version}", "version", model=model, version=version)] if model and version else []


# --------------------------------------------------------------------------------------------- release


def is_ledger_summary(value: Any) -> bool:
    """A ledger entry's summary (`crispflow.release.promotion.entry_summary`) as a move task returns it."""
    return isinstance(value, Mapping) and {"seq", "action", "moves"} <= set(value)


def _move(entry: Mapping[str, Any], model: str | None, task_id: str) -> dict[str, Any]:
    moves = entry.get("moves") or {}
    changed = {alias: pair for alias, pair in moves.items() if pair[0] != pair[1]} or moves  # no-op moves left out
    described = ", ".join(f"{alias} {_v(before)} → {_v(after)}" for alias, (before, after) in changed.items())
    detail = "; ".join(x for x in (str(entry.get("reason") or ""), f"for {entry['person']}" if entry.get("person")
                                   else "", f"ledger entry {entry.get('seq')} ({entry.get('state')})") if x)
    model = str(entry.get("model") or model or "") or None  # move tasks add their model to the entry summary
    links = [link("Promotions", "promotions", model=model)] if model else []
    return item("alias_move", f"{str(entry.get('action')).replace('_', ' ')}: {described}", detail, links,
                task_id=task_id, level="success")


def _rollback(run: _Run) -> None:
    for task, found in run.by_task.items():
        for _, value in found:
            if is_ledger_summary(value):
                run.add(_move(value, run.model(), task))


def _canary(run: _Run) -> None:
    for index, result in run.each("analyse_and_act"):
        model = run.model(run.mapped_pipeline(index))
        links = [link("Promotions", "promotions", model=model)] if model else []
        if is_ledger_summary(result):  # a retry whose move was recorded before
            run.add(_move(result, model, "analyse_and_act"))
            continue
        if not isinstance(result, Mapping):
            continue
        decision = str(result.get("decision"))
        reasons = "; ".join(result.get("reasons") or [])
        if decision == "none":
            run.add(item("canary", f"{model}: no canary live", reasons, links, task_id="analyse_and_act"))
            continue
        run.add(item("canary", f"{model}: canary v{result.get('canary')} vs champion v{result.get('champion')}: "
                     f"{decision}", reasons, links, task_id="analyse_and_act",
                     level="warning" if decision == "rollback" else "info"))
        if is_ledger_summary(result.get("ledger")):
            run.add(_move(result["ledger"], model, "analyse_and_act"))


# --------------------------------------------------------------------------------------------- monitoring


def _monitor(run: _Run) -> None:
    from datetime import datetime

    from crispflow.monitoring.store import window_key

    for index, result in run.each("compute_drift"):
        if not isinstance(result, Mapping):
            continue
        model = str(result.get("model") or run.model(run.mapped_pipeline(index)) or "")
        summaries = result.get("summaries") or []
        if not summaries:
            run.add(item("drift", f"{model}: nothing served, nothing judged", "", task_id="compute_drift"))
            continue
        for s in summaries:
            alias, status = s.get("alias"), s.get("status")
            links = [link("Drift", "drift", model=model)] if model else []
            try:
                key = window_key(datetime.fromisoformat(s["window_end"]))
                links.append(link("Report", "drift_report", model=model, alias=alias, window_key=key, kind="html"))
            except (KeyError, TypeError, ValueError):
                pass
            verdict = "drift" if s.get("drift") else ("insufficient data" if status == "insufficient_data"
                                                      else "no drift")
            features = ", ".join(s.get("drifted_features") or [])
            run.add(item("drift", f"{model} {alias} v{s.get('version')}: {verdict}",
                         f"drift share {_num(s.get('drift_share'))} on {_n(s.get('rows'))} rows"
                         + (f"; drifted: {features}" if features else ""), links, task_id="compute_drift",
                         level="warning" if s.get("drift") else "info"))


def _watch(run: _Run) -> None:
    for index, record in run.each("watch"):
        if not isinstance(record, Mapping):
            continue
        model = str(record.get("model") or run.model(run.mapped_pipeline(index)) or "")
        features = ", ".join(record.get("features") or [])
        run.add(item("episode", f"{model}: drift episode {record.get('episode_id')}, retrain requested",
                     f"max drift share {_num(record.get('max_drift_share'))}"
                     + (f"; features: {features}" if features else ""),
                     [link("Drift", "drift", model=model)] if model else [], task_id="watch", level="warning"))
    for index, sent in run.each("alert"):
        if not isinstance(sent, Mapping) or not sent.get("dedup_key"):
            continue
        model = run.model(run.mapped_pipeline(index))
        channels = ", ".join(sent.get("sent") or [])
        title = "Alert already raised: suppressed" if sent.get("suppressed") else f"Alert sent to {channels or '-'}"
        links = [{"label": "Alert", "href_path": href("drift", model=model) + "#alerts"}] if model else []
        run.add(item("alert", title, f"key {sent['dedup_key']}", links, task_id="alert"))


def _retrain(run: _Run) -> None:
    request = run.get("resolve")
    if not isinstance(request, Mapping):
        return
    conf = request.get("conf") or {}
    run.pipeline = run.pipeline or conf.get("pipeline")
    version = conf.get("dataset_version_id")
    run.add(item("triggered", f"Retrain requested for drift episode {request.get('episode_id')}",
                 f"train_evaluate_register run {request.get('run_id')} on {version}"
                 + (f"; {request['coalesced_events']} older event(s) coalesced"
                    if request.get("coalesced_events") else ""),
                 [link("Training data", "data_docs", pipeline=run.pipeline, ref=version)]
                 if run.pipeline and version else [], task_id="resolve"))


def _batch_score(run: _Run) -> None:
    done = run.get("commit")
    if not isinstance(done, Mapping):
        return
    run.pipeline = run.pipeline or done.get("pipeline")
    model, version = done.get("model"), done.get("model_version")
    run.add(item("scores", f"Scored {_n(done.get('rows'))} of {_n(done.get('rows_in'))} rows of "
                 f"{done.get('dataset_version_id')} with {model} v{version}",
                 "committed by this run" if done.get("created") else "already committed by an earlier run",
                 _version_links(model, str(version)) if model else [], task_id="commit", level="success"))


def _generic(run: _Run) -> None:
    """Any other DAG (and `rollback`, `promote_canary`, `acknowledge_alert`): its ledger moves and alert
    acknowledgements."""
    _rollback(run)
    for task, found in run.by_task.items():
        for _, value in found:
            if isinstance(value, Mapping) and value.get("acknowledged_by"):
                model = value.get("model") or run.model()
                run.add(item("alert", f"Alert {value.get('key') or value.get('dedup_key')} acknowledged by "
                             f"{value['acknowledged_by']}", str(value.get("note") or ""),
                             [{"label": "Alerts", "href_path": href("drift", model=model) + "#alerts"}]
                             if model else [], task_id=task, level="success"))


HANDLERS: dict[str, Callable[[_Run], None]] = {
    "ingest_validate": _ingest_validate,
    "ingest_monthly": _ingest_monthly,
    "train_evaluate_register": _train,
    "retrain_on_drift": _retrain,
    "rollback": _generic,
    "promote_canary": _generic,
    "acknowledge_alert": _generic,
    "canary_analysis": _canary,
    "monitor_drift": _monitor,
    "watch_drift": _watch,
    "batch_score": _batch_score,
}




# --------------------------------------------------------------------------------------------- formatting


def _v(version: Any) -> str:
    return f"v{version}" if version not in (None, "") else "unset"


def _n(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value)


def _num(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "n/a" if value is None else str(value)
    return f"{value:.4g}"
