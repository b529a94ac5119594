"""The crispflow pages: server-rendered HTML (Jinja2, server-side SVG, one small script) and the same data as JSON
under `/api`, mounted by the plugin at `/crispflow` of Airflow's api-server.

Every route authenticates with Airflow's own dependencies (`security.reads`); the data comes from the library
(`crispflow.ui`), the clients from `sources`. Buttons trigger DAG runs through `/api/v2` with the user's cookie
(`static/crispflow.js`); they are disabled when the auth manager says the user may not trigger that DAG.
Stored HTML (model cards, Data Docs, drift reports) is served with a CSP sandbox: it cannot run scripts or act
with the user's cookie.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from airflow.api_fastapi.core_api.security import GetUserDep
from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape

from crispflow_airflow.ui import security
from crispflow_airflow.ui.mount import PREFIX, base_path
from crispflow_airflow.ui.security import (
    DAG_ID_RE,
    NAME_RE,
    RUN_ID_RE,
    VERSION_RE,
    may_trigger,
    reads,
    reads_run,
    valid,
)
from crispflow_airflow.ui.sources import Sources, sources

log = logging.getLogger(__name__)
HERE = Path(__file__).resolve().parent

# Pages: scripts and styles of this app only; forms and fetch to this origin; framed by Airflow's UI only.
PAGE_CSP = ("default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
            "connect-src 'self'; form-action 'self'; frame-src 'self'; base-uri 'none'; frame-ancestors 'self'")
# Stored HTML (data-derived): a sandbox (no scripts, no same-origin, no forms), inline styles and data: images.
STORED_CSP = ("sandbox; default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; "
              "form-action 'none'; frame-ancestors 'self'")
COMMON_HEADERS = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin",
                  "Cache-Control": "no-store"}
WINDOW_ROWS = 50  # newest windows per alias in the Drift page's tables (the chart and the JSON have them all)
STATIC = {"crispflow.css": "text/css; charset=utf-8", "crispflow.js": "text/javascript; charset=utf-8"}


def create_app() -> FastAPI:
    """The app the plugin mounts (built on the first request by `mount.LazyApp`)."""
    app = FastAPI(title="crispflow", docs_url=None, redoc_url=None, openapi_url=None)
    env = _templates()
    root = base_path()

    @app.middleware("http")
    async def headers(request: Request, call_next: Callable[[Request], Any]) -> Response:
        response = await call_next(request)
        for key, value in COMMON_HEADERS.items():
            response.headers.setdefault(key, value)
        response.headers.setdefault("Content-Security-Policy", PAGE_CSP)
        return response

    @app.exception_handler(_Unavailable)
    async def unavailable(request: Request, exc: _Unavailable) -> Response:
        return _error(request, env, root, 503, f"{exc.what} is not reachable right now; try again in a moment.")

    @app.exception_handler(_Missing)
    async def missing(request: Request, exc: _Missing) -> Response:
        return _error(request, env, root, 404, str(exc) or "Not found")

    def page(request: Request, template: str, active: str, **context: Any) -> HTMLResponse:
        html = env.get_template(template).render(
            base=root + PREFIX, ui=root or "", api=f"{root}/api/v2", active=active,
            mlflow_ui=os.environ.get("CRISPFLOW_MLFLOW_UI_URL", "").rstrip("/"), **context)
        return HTMLResponse(html)

    # --- static ----------------------------------------------------------------------------------------------

    @app.get("/static/{name}", dependencies=[security.user()])
    def static(name: str) -> Response:
        if name not in STATIC:
            raise HTTPException(404, "Not found")
        return Response((HERE / "static" / name).read_bytes(), media_type=STATIC[name],
                        headers={"Cache-Control": "private, max-age=300"})

    @app.get("/", dependencies=[security.user()])
    def index() -> RedirectResponse:
        return RedirectResponse(f"{root}{PREFIX}/models", status_code=307)

    # --- models ----------------------------------------------------------------------------------------------

    @app.get("/api/models", dependencies=[reads(security.MODELS_DAG)])
    def models_json() -> JSONResponse:
        return _json(_models_index(sources()))

    @app.get("/models", response_class=HTMLResponse, dependencies=[reads(security.MODELS_DAG)])
    def models_html(request: Request) -> HTMLResponse:
        return page(request, "models.html", "models", models=_models_index(sources()))

    @app.get("/api/models/{model}", dependencies=[reads(security.MODELS_DAG)])
    def model_json(model: str) -> JSONResponse:
        src = sources()
        return _json(_model_page(src, _model(src, model)))

    @app.get("/models/{model}", response_class=HTMLResponse, dependencies=[reads(security.MODELS_DAG)])
    def model_html(request: Request, model: str) -> HTMLResponse:
        src = sources()
        data = _model_page(src, _model(src, model))
        return page(request, "model.html", "models", model=model, pipeline=src.models()[model], page=data)

    @app.get("/api/models/{model}/versions/{version}", dependencies=[reads(security.MODELS_DAG)])
    def version_json(model: str, version: str) -> JSONResponse:
        src = sources()
        data = _version_page(src, _model(src, model), valid(version, VERSION_RE))
        data = {k: v for k, v in data.items() if k != "model_card_html"}  # the card: its own sandboxed route
        return _json({**data, "pending_approvals": _pending_approvals(src.models()[model], version)})

    @app.get("/models/{model}/versions/{version}", response_class=HTMLResponse,
             dependencies=[reads(security.MODELS_DAG)])
    def version_html(request: Request, model: str, version: str) -> HTMLResponse:
        src = sources()
        data = _version_page(src, _model(src, model), valid(version, VERSION_RE))
        return page(request, "version.html", "models", model=model, version=version,
                    pipeline=src.models()[model], page=data,
                    approvals=_pending_approvals(src.models()[model], version))

    @app.get("/models/{model}/versions/{version}/card", dependencies=[reads(security.MODELS_DAG)])
    def model_card(model: str, version: str) -> Response:
        from crispflow.ui.models_view import model_card_html

        src = sources()
        card = _call("MLflow", lambda: model_card_html(src.mlf, _model(src, model), valid(version, VERSION_RE)))
        if not card:
            raise _Missing("This version has no model card.")
        return _stored(str(card).encode())

    @app.get("/data-docs/{pipeline}/{ref}", dependencies=[reads(security.MODELS_DAG)])
    def data_docs(pipeline: str, ref: str) -> Response:
        from crispflow.ui.models_view import data_docs_file

        src = sources()
        if valid(pipeline, NAME_RE) not in src.pipelines:
            raise _Missing("No such pipeline.")
        return _stored(_read(lambda: data_docs_file(src.lake, pipeline, valid(ref, NAME_RE))))

    # --- promotions ------------------------------------------------------------------------------------------

    @app.get("/api/promotions", dependencies=[reads(security.PROMOTIONS_DAG)])
    def promotions_index_json() -> JSONResponse:
        return _json(_models_index(sources()))

    @app.get("/promotions", response_class=HTMLResponse, dependencies=[reads(security.PROMOTIONS_DAG)])
    def promotions_index(request: Request) -> HTMLResponse:
        return page(request, "index.html", "promotions", title="Promotions", section="promotions",
                    models=_models_index(sources()))

    @app.get("/api/promotions/{model}", dependencies=[reads(security.PROMOTIONS_DAG)])
    def promotions_json(model: str) -> JSONResponse:
        src = sources()
        return _json(_promotions_page(src, _model(src, model)))

    @app.get("/promotions/{model}", response_class=HTMLResponse, dependencies=[reads(security.PROMOTIONS_DAG)])
    def promotions_html(request: Request, model: str, user: GetUserDep) -> HTMLResponse:
        src = sources()
        data = _promotions_page(src, _model(src, model))
        pipeline = src.models()[model]
        return page(request, "promotions.html", "promotions", model=model, pipeline=pipeline, page=data,
                    actions=_promotion_actions(user, pipeline, data))

    # --- drift -----------------------------------------------------------------------------------------------

    @app.get("/api/drift", dependencies=[reads(security.DRIFT_DAG)])
    def drift_index_json() -> JSONResponse:
        return _json(_models_index(sources()))

    @app.get("/drift", response_class=HTMLResponse, dependencies=[reads(security.DRIFT_DAG)])
    def drift_index(request: Request) -> HTMLResponse:
        return page(request, "index.html", "drift", title="Drift", section="drift",
                    models=_models_index(sources()))

    @app.get("/api/drift/{model}", dependencies=[reads(security.DRIFT_DAG)])
    def drift_json(model: str) -> JSONResponse:
        src = sources()
        return _json(_drift_page(src, _model(src, model)))

    @app.get("/drift/{model}", response_class=HTMLResponse, dependencies=[reads(security.DRIFT_DAG)])
    def drift_html(request: Request, model: str, user: GetUserDep) -> HTMLResponse:
        from crispflow.ui import drift_view

        src = sources()
        data = _drift_page(src, _model(src, model))
        pipeline = src.models()[model]
        allowed = may_trigger(user, security.ACKNOWLEDGE_DAG)
        acks = {a["key"]: _acknowledge_action(allowed, pipeline, a["key"])
                for a in data.get("alerts") or [] if a.get("key") and not a.get("acknowledged")}
        return page(request, "drift.html", "drift", model=model, pipeline=pipeline, page=data,
                    share_svg=drift_view.share_chart(data), heatmap_svg=drift_view.heatmap_svg(data),
                    acks=acks, window_rows=WINDOW_ROWS)

    @app.get("/drift/{model}/reports/{alias}/{window_key}", dependencies=[reads(security.DRIFT_DAG)])
    @app.get("/drift/{model}/reports/{alias}/{window_key}/{kind}", dependencies=[reads(security.DRIFT_DAG)])
    def drift_report(model: str, alias: str, window_key: str, kind: str = "html") -> Response:
        from crispflow.ui.drift_view import report_file

        src = sources()
        _model(src, model)
        if kind not in ("html", "json"):
            raise _Missing("Not found")
        data = _read(lambda: report_file(src.pred_root, model, valid(alias, NAME_RE), valid(window_key, NAME_RE),
                                         kind))
        if kind == "json":
            return Response(data, media_type="application/json", headers={"Content-Security-Policy": STORED_CSP})
        return _stored(data)

    # --- the DAG run tab -------------------------------------------------------------------------------------

    @app.get("/api/runs/{dag_id}/{run_id:path}", dependencies=[reads_run()])
    def run_json(dag_id: str, run_id: str) -> JSONResponse:
        return _json(_run_summary(valid(dag_id, DAG_ID_RE), valid(run_id, RUN_ID_RE)))

    @app.get("/runs/{dag_id}/{run_id:path}", response_class=HTMLResponse, dependencies=[reads_run()])
    def run_html(request: Request, dag_id: str, run_id: str) -> HTMLResponse:
        summary = _run_summary(valid(dag_id, DAG_ID_RE), valid(run_id, RUN_ID_RE))
        return page(request, "run.html", "runs", dag_id=dag_id, run_id=run_id, summary=summary)

    return app


# --- data ------------------------------------------------------------------------------------------------------


class _Missing(Exception):
    """404 with a message for the page."""


class _Unavailable(Exception):
    """503: a store or server the page reads could not be reached."""

    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what


def _call(what: str, fn: Callable[[], Any]) -> Any:
    """Call the library: its NotFound is a 404; any other failure a 503 (details in the api-server log only)."""
    from crispflow.ui import NotFound

    try:
        return fn()
    except NotFound as exc:
        raise _Missing(str(exc) or "Not found") from exc
    except (HTTPException, _Missing):
        raise
    except Exception as exc:
        log.warning("crispflow UI: reading %s failed: %s", what, type(exc).__name__, exc_info=log.isEnabledFor(10))
        raise _Unavailable(what) from exc


def _model(src: Sources, model: str) -> str:
    """`model` when it is a crispflow pipeline's registered model, else 404."""
    if valid(model, NAME_RE) not in src.models():
        raise _Missing(f"No crispflow pipeline registers a model named {model}.")
    return model


def _models_index(src: Sources) -> list[dict[str, Any]]:
    from crispflow.ui.models_view import ALIASES, models_index

    known = src.models()
    rows = _call("MLflow", lambda: models_index(src.mlf))
    seen = {row.get("name") for row in rows}
    rows = [row for row in rows if row.get("name") in known]
    # pipelines with no registered model yet still get a row (an empty registry reads as "nothing yet")
    rows += [{"name": name, "pipeline": pipeline, "aliases": dict.fromkeys(ALIASES), "versions": 0,
              "latest_version": None}
             for name, pipeline in known.items() if name not in seen]
    return sorted(rows, key=lambda row: str(row.get("name")))


def _model_page(src: Sources, model: str) -> dict[str, Any]:
    from crispflow.ui.models_view import model_page

    return _call("MLflow or the lake", lambda: model_page(src.mlf, model, lake=src.lake))


def _version_page(src: Sources, model: str, version: str) -> dict[str, Any]:
    from crispflow.ui.models_view import version_page

    return _call("MLflow or the promotion ledger",
                 lambda: version_page(src.mlf, src.lake, src.ledger, src.pred_root, model, version))


def _promotions_page(src: Sources, model: str) -> dict[str, Any]:
    from crispflow.ui.promotions_view import promotions_page

    return _call("the promotion ledger or MLflow", lambda: promotions_page(src.mlf, src.ledger, model))


def _drift_page(src: Sources, model: str) -> dict[str, Any]:
    from crispflow.ui.drift_view import drift_page

    return _call("the prediction store", lambda: drift_page(src.pred_root, model))


def _read(locate: Callable[[], Any]) -> bytes:
    """The bytes of a stored file the library located (and validated)."""
    return _call("the lake", lambda: locate().read_bytes())


def _run_summary(dag_id: str, run_id: str) -> dict[str, Any]:
    from crispflow.ui.run_view import run_summary

    results, state, conf = _run_results(dag_id, run_id)
    summary = _call("the run's results", lambda: run_summary(dag_id, results, conf=conf))
    return {**summary, "dag_id": dag_id, "run_id": run_id, "state": state}


def _run_results(dag_id: str, run_id: str) -> tuple[dict[str, Any], str, dict[str, Any]]:
    """task id (`task[i]` when mapped) → its XCom return value, read in-process from Airflow's DB as the REST API
    does; a task that pushed only a `skip_reason` (e.g. `resolve` skipping a small dataset) → {"skipped": reason}."""
    from airflow.models.dagrun import DagRun
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        found = session.execute(select(DagRun.state, DagRun.conf).where(DagRun.dag_id == dag_id,
                                                                          DagRun.run_id == run_id)).first()
        if found is None:
            raise _Missing("No such DAG run.")
        state, conf = found
        rows = session.scalars(select(XComModel).where(
            XComModel.dag_id == dag_id, XComModel.run_id == run_id,
            XComModel.key.in_(("return_value", "skip_reason")))).all()
        values = [(row.task_id, row.map_index, row.key, XComModel.deserialize_value(row)) for row in rows]
    results: dict[str, Any] = {}
    skips: dict[str, Any] = {}
    for task_id, map_index, key, value in values:
        name = task_id if map_index < 0 else f"{task_id}[{map_index}]"
        (results if key == "return_value" else skips)[name] = value
    for name, reason in skips.items():
        results.setdefault(name, {"skipped": reason})
    return results, str(state), dict(conf) if isinstance(conf, Mapping) else {}


def _pending_approvals(pipeline: str, version: str) -> list[dict[str, Any]]:
    """Unanswered forced-blessing approvals (Airflow HITL) of this version: run, subject, body, created."""
    from airflow.models.hitl import HITLDetail
    from airflow.models.taskinstance import TaskInstance
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    dag_id, task_id = security.MODELS_DAG, "approve_forced_blessing"
    with create_session() as session:
        pending = session.execute(
            select(TaskInstance.run_id, HITLDetail.subject, HITLDetail.body, HITLDetail.created_at)
            .join(TaskInstance, TaskInstance.id == HITLDetail.ti_id)
            .where(TaskInstance.dag_id == dag_id, TaskInstance.task_id == task_id,
                   HITLDetail.responded_at.is_(None))).all()
        found = []
        for run_id, subject, body, created in pending:
            rows = session.scalars(select(XComModel).where(
                XComModel.dag_id == dag_id, XComModel.run_id == run_id, XComModel.key == "return_value",
                XComModel.task_id.in_(("resolve", "bless")))).all()
            values = {row.task_id: XComModel.deserialize_value(row) for row in rows}
            request, verdict = values.get("resolve") or {}, values.get("bless") or {}
            if (isinstance(request, Mapping) and request.get("pipeline") == pipeline
                    and isinstance(verdict, Mapping) and str(verdict.get("version")) == version):
                found.append({"dag_id": dag_id, "run_id": run_id, "task_id": task_id, "subject": subject,
                              "body": body, "created": created.isoformat() if created else None})
    return found


# --- actions (buttons) -----------------------------------------------------------------------------------------


def _action(label: str, dag_id: str, conf: Mapping[str, Any], *, allowed: bool, blocked: str | None,
            note: str, fields: list[dict[str, Any]] | None = None, style: str = "") -> dict[str, Any]:
    """A button that triggers `dag_id` with `conf` (plus its fields); disabled with `why` when not allowed."""
    why = f"You may not trigger the {dag_id} DAG." if not allowed else blocked
    return {"label": label, "dag_id": dag_id, "conf": dict(conf), "note": note, "fields": fields or [],
            "enabled": why is None, "why": why, "style": style}


REASON = {"name": "reason", "label": "Reason", "minlength": 10, "maxlength": 500,
          "placeholder": "Why (at least 10 characters; recorded in the ledger)"}


def _promotion_actions(user: Any, pipeline: str, page: Mapping[str, Any]) -> list[dict[str, Any]]:
    champion, previous = page.get("champion"), page.get("previous")
    canary = (page.get("canary") or {}).get("version")
    pending = "A promotion is still being applied; reload in a moment." if page.get("pending") else None
    no_canary = pending or (None if canary else "There is no canary to judge or promote.")
    no_promote = no_canary or (None if page.get("can_promote_canary") else "There is no champion to replace.")
    no_rollback = pending or (None if page.get("can_rollback") else "There is no previous champion to roll back to.")
    return [
        _action(f"Roll back to version {previous}" if previous else "Roll back",
                security.ROLLBACK_DAG, {"pipeline": pipeline, "expected_champion": champion},
                allowed=may_trigger(user, security.ROLLBACK_DAG), blocked=no_rollback,
                note=f"Roll back from the crispflow Promotions page (champion was {champion})",
                fields=[REASON], style="danger"),
        _action(f"Promote canary {canary} now" if canary else "Promote canary now", security.PROMOTE_DAG,
                {"pipeline": pipeline, "expected_canary": canary, "expected_champion": champion},
                allowed=may_trigger(user, security.PROMOTE_DAG), blocked=no_promote,
                note=f"Promote canary {canary} from the crispflow Promotions page", fields=[REASON]),
        _action("Judge canary now", security.JUDGE_DAG, {"pipeline": pipeline},
                allowed=may_trigger(user, security.JUDGE_DAG), blocked=no_canary,
                note="Canary analysis requested from the crispflow Promotions page"),
    ]


def _acknowledge_action(allowed: bool, pipeline: str, key: str) -> dict[str, Any]:
    """The Acknowledge button of one alert (the `acknowledge_alert` DAG records who acknowledged, once)."""
    return _action("Acknowledge", security.ACKNOWLEDGE_DAG, {"pipeline": pipeline, "key": key}, allowed=allowed,
                   blocked=None, note=f"Alert {key} acknowledged from the crispflow Drift page",
                   fields=[{"name": "note", "label": "Note", "minlength": 0, "maxlength": 500,
                            "placeholder": "Note (optional)"}])


# --- responses -------------------------------------------------------------------------------------------------


def _json(data: Any) -> JSONResponse:
    from crispflow.lake import json_safe

    return JSONResponse(json_safe(data))


def _stored(data: bytes) -> Response:
    """Stored, data-derived HTML: sandboxed (no script, an opaque origin: the user's cookie is useless to it)."""
    return Response(data, media_type="text/html; charset=utf-8", headers={"Content-Security-Policy": STORED_CSP})


def _error(request: Request, env: Environment, root: str, status: int, message: str) -> Response:
    if "/api/" in request.url.path:
        return JSONResponse({"detail": message}, status_code=status)
    html = env.get_template("error.html").render(base=root + PREFIX, ui=root or "", api=f"{root}/api/v2",
                                                 active="", status=status, message=message)
    return HTMLResponse(html, status_code=status)


def _templates() -> Environment:
    from crispflow_airflow.ui import filters

    env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(default=True),
                      trim_blocks=True, lstrip_blocks=True)
    env.filters.update(filters.FILTERS)
    return env
