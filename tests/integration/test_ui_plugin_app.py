"""The crispflow UI plugin inside the REAL api-server app (`airflow.api_fastapi.app.create_app`, the plugin loaded
from the plugins folder), with the Simple auth manager's users of each role and tokens from `POST /auth/token`.

Data written with the library's own writers: an MLflow registry (a SQLite store in-process, no server) with three
judged versions and their model cards, the promotion ledger moved by `promotion.apply` (cold start, canary,
promote, canary), drift windows / an episode / an alert in the prediction store, a Data Docs page in the lake, and
one real DAG run (`dag.test()`) whose XComs the Lifecycle tab reads.

Checked: 401 on every route without a token; a viewer reads every page and JSON endpoint; the buttons are disabled
for a viewer (with the reason) and enabled for user/op/admin; CSP (sandbox on stored HTML, frame-ancestors on
pages) and nosniff; traversal attempts are 404; `/api/v2/plugins` lists the views and the app.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from support.model_versions import holdout, judge_version

from crispflow.model import registry
from crispflow.release import promotion
from crispflow.release.promotion import Ledger
from crispflow.spec import list_specs

PIPELINE = "lending_club"
MODEL = "crispflow-lending_club"
ROLES = ("viewer", "user", "op", "admin")
SIMPLE = "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
DATASET = "ds-0123456789abcdef"
SCRIPT = "<script>document.title='pwned'</script>"
T0 = datetime(2026, 3, 1, tzinfo=UTC)
EPISODE = "champion-20260303T000000Z"  # crispflow.monitoring.episodes.episode_id_for


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """MLflow registry, ledger, lake and prediction store with the fixture data; the env the api-server reads."""
    base = tmp_path_factory.mktemp("ui")
    tracking = f"sqlite:///{base / 'mlflow.db'}"
    mlf = registry.client(tracking)
    experiment = mlf.create_experiment("ui-plugin", artifact_location=(base / "artifacts").as_uri())
    mlf.create_registered_model(MODEL)
    y, good, _ = holdout()
    versions = []
    for i in range(3):
        run = mlf.create_run(experiment, tags={"crispflow.run_key": f"train/r{i}"})
        mv = mlf.create_model_version(MODEL, f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
        judge_version(mlf, MODEL, mv.version, y=y, score=np.clip(good + 0.01 * i, 0, 1), pipeline=PIPELINE,
                      dataset_version_id=DATASET, card_html=f"<h1>Model card v{mv.version}</h1>{SCRIPT}")
        for key, value in {registry.SHA_TAG: "0" * 64, "crispflow.blessed": "true"}.items():
            mlf.set_model_version_tag(MODEL, mv.version, key, value)
        versions.append(str(mv.version))
    ledger = Ledger(f"sqlite:///{base / 'ledger.db'}")
    v1, v2, v3 = versions

    def move(make: Any, key: str) -> None:
        state = promotion.registry_state(mlf, MODEL)
        promotion.apply(mlf, ledger, MODEL, make(state), move_key=key, actor="test", person="ana")

    move(lambda s: promotion.cold_start(s, v1, "first blessed model"), "m1")
    move(lambda s: promotion.deploy(s, v2, strategy="canary", share=0.25, reason="blessed"), "m2")
    move(lambda s: promotion.promote_canary(s, v2, "non-inferior", {"labels": 300}), "m3")
    move(lambda s: promotion.deploy(s, v3, strategy="canary", share=0.1, reason="blessed"), "m4")

    lake = base / "lake"
    predictions = base / "predictions"
    _write_drift(predictions, v2)
    from crispflow.data.datasets import QUALITY_HTML
    from crispflow.lake import Lake, write_atomic, write_json

    write_atomic(Lake(lake).version_dir(PIPELINE, DATASET) / QUALITY_HTML, f"<h1>Data Docs</h1>{SCRIPT}".encode())
    write_json(Lake(lake).manifest(PIPELINE, DATASET), {  # the fields the version page reads
        "dataset_version_id": DATASET, "pipeline": PIPELINE, "rows": 1200, "batch_id": "b-0123456789abcdef",
        "interval": {"start": "2026-01-01T00:00:00+00:00", "end": "2026-02-01T00:00:00+00:00"},
        "sources": [{"source": "loans", "fingerprint": "sha256:" + "ab" * 32, "rows_read": 1250,
                     "rows_in_interval": 1200}], "parents": []})
    (base / "secret.html").write_text("secret")
    env = {"MLFLOW_TRACKING_URI": tracking, "CRISPFLOW_LEDGER_URL": ledger.url, "CRISPFLOW_LAKE_URL": lake.as_uri(),
           "CRISPFLOW_PREDICTIONS_URL": predictions.as_uri()}
    return {"env": env, "mlf": mlf, "ledger": ledger, "versions": versions, "predictions": predictions}


def _write_drift(root: Path, version: str) -> None:
    """Three champion windows (the last drifted), their episode and its alert, with the library's writers."""
    from crispflow.monitoring import alerts
    from crispflow.monitoring.store import record_episode, summarise, write_window

    summaries = []
    for i, share in enumerate((0.0, 0.25, 0.5)):
        drifted = ["int_rate", "annual_inc"][: int(share * 4)]
        features = {name: {"test": "ks", "statistic": 0.1 + 0.1 * i, "p_adjusted": 0.5 if name not in drifted
                           else 0.001, "psi": 0.05 + 0.2 * i * (name in drifted), "drifted": name in drifted}
                    for name in ("int_rate", "annual_inc", "term", "grade")}
        report = {"features": features, "drifted_features": drifted, "drift": share >= 0.5, "drift_share": share,
                  "status": "drift" if share >= 0.5 else "no_drift", "settings": {"min_drift_share": 0.5}}
        start = T0 + timedelta(days=i)
        summary = summarise(report, model=MODEL, alias="champion", version=version, start=start,
                            end=start + timedelta(days=1), rows=500, labelled_rows=100, report_path="r")
        write_window(root, summary, report, f"<h1>Drift report {i}</h1>{SCRIPT}")
        summaries.append(summary)
    record = {"model": MODEL, "pipeline": PIPELINE, "alias": "champion", "episode_id": EPISODE,
              "fired_at": (T0 + timedelta(days=3)).isoformat(), "features": ["int_rate", "annual_inc"],
              "windows": summaries[-1:], "max_drift_share": 0.5, "versions": [version],
              "statistics": summaries[-1]["statistics"]}
    record_episode(root, MODEL, record["episode_id"], record)
    alerts.claim(root, MODEL, alerts.digest(record), {"dag_id": "watch_drift", "run_id": "r1"})


@pytest.fixture(scope="module")
def api(stores: dict[str, Any], tmp_path_factory: pytest.TempPathFactory, airflow_db: None) -> Iterator[Any]:
    """The real api-server app (core API, auth manager, plugins) with Simple auth users of every role."""
    from airflow.api_fastapi import app as api_app
    from fastapi.testclient import TestClient

    base = tmp_path_factory.mktemp("auth")
    env = {**stores["env"],
           "AIRFLOW__CORE__AUTH_MANAGER": SIMPLE,
           "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": ",".join(f"{r}:{r}" for r in ROLES),
           "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
           "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(base / "passwords.json"),
           "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(64),
           "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(64)}
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        api_app.purge_cached_app()
        app = api_app.create_app("core")
        with TestClient(app, base_url="http://localhost") as client:
            passwords = json.loads((base / "passwords.json").read_text())
            tokens = {}
            for role in ROLES:
                answer = client.post("/auth/token", json={"username": role, "password": passwords[role]})
                assert answer.status_code == 201, answer.text
                tokens[role] = answer.json()["access_token"]
            yield _Api(client, tokens)
        api_app.purge_cached_app()


class _Api:
    def __init__(self, client: Any, tokens: dict[str, str]) -> None:
        self.client, self.tokens = client, tokens

    def get(self, path: str, role: str | None = None, **kwargs: Any) -> Any:
        headers = {"Authorization": f"Bearer {self.tokens[role]}"} if role else {}
        return self.client.get(path, headers=headers, follow_redirects=False, **kwargs)


@pytest.fixture(scope="module")
def run(api: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """One real DAG run (`dag.test()`): `resolve` pushes a skip reason and skips; `rollback` returns a ledger
    entry's summary. Returns (dag_id, run_id)."""
    from airflow.sdk import task

    @task
    def resolve(**context: Any) -> None:
        from airflow.sdk.exceptions import AirflowSkipException

        context["ti"].xcom_push(key="skip_reason", value="dataset ds-x has 120 rows, fewer than training.min_rows")
        raise AirflowSkipException("too small")

    @task
    def rollback() -> dict:
        return {"seq": 5, "action": "rollback", "from_version": "2", "to_version": "1", "state": "confirmed",
                "moves": {"champion": ["2", "1"], "previous": ["1", None]}, "reason": "bad canary",
                "person": "ana", "replayed": False}

    dr = _test_run(f"t_ui_{uuid.uuid4().hex[:10]}", tmp_path_factory, resolve, rollback)
    return dr.dag_id, dr.run_id


@pytest.fixture(scope="module")
def approval(api: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A forced-blessing approval of v2 waiting for a person: a run of a stand-in `train_evaluate_register` (its
    `resolve` and `bless` results as the real DAG returns them) and an unanswered Airflow HITL request on its
    `approve_forced_blessing` task instance. Yields the run id; the run is deleted afterwards (other tests of the
    session may run the real DAG)."""
    from airflow.models.dagrun import DagRun
    from airflow.models.hitl import HITLDetail
    from airflow.sdk import task
    from airflow.utils.session import create_session

    @task
    def resolve() -> dict:
        return {"pipeline": PIPELINE, "dataset_version_id": DATASET, "force_bless": True}

    @task
    def bless() -> dict:
        return {"version": "2", "blessed": False, "reasons": ["below the floor"]}

    @task
    def approve_forced_blessing() -> None:
        return None

    dr = _test_run("train_evaluate_register", tmp_path_factory, resolve, bless, approve_forced_blessing)
    ti = next(t for t in dr.get_task_instances() if t.task_id == "approve_forced_blessing")
    with create_session() as session:
        session.add(HITLDetail(ti_id=ti.id, options=["Approve", "Reject"], subject="Force-bless 2 of lending_club?",
                               body="Requested reason: pilot sign-off", params={}))
    yield dr.run_id
    with create_session() as session:
        session.query(DagRun).filter(DagRun.dag_id == dr.dag_id, DagRun.run_id == dr.run_id).delete()


def _test_run(dag_id: str, tmp_path_factory: pytest.TempPathFactory, *tasks: Any) -> Any:
    """Store a DAG of `tasks` (each called once) and run it with `dag.test()`; the DAG run."""
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import DagBag, sync_bag_to_db
    from airflow.sdk import DAG

    from crispflow_airflow.dag_defaults import START_DATE

    with DAG(dag_id, schedule=None, start_date=START_DATE) as dag:
        for make in tasks:
            make()
    DagBundlesManager().sync_bundles_to_db()
    bag = DagBag(dag_folder=str(tmp_path_factory.mktemp("dags")))
    bag.bag_dag(dag)
    sync_bag_to_db(bag, "dags-folder", None)
    return dag.test()


def pages(run: tuple[str, str]) -> list[str]:
    """Every HTML page of the plugin (with fixture data)."""
    dag_id, run_id = run
    return ["/crispflow/models", f"/crispflow/models/{MODEL}", f"/crispflow/models/{MODEL}/versions/2",
            "/crispflow/promotions", f"/crispflow/promotions/{MODEL}", "/crispflow/drift", f"/crispflow/drift/{MODEL}",
            f"/crispflow/runs/{dag_id}/{run_id}"]


def json_routes(run: tuple[str, str]) -> list[str]:
    dag_id, run_id = run
    return ["/crispflow/api/models", f"/crispflow/api/models/{MODEL}", f"/crispflow/api/models/{MODEL}/versions/2",
            "/crispflow/api/promotions", f"/crispflow/api/promotions/{MODEL}", "/crispflow/api/drift",
            f"/crispflow/api/drift/{MODEL}", f"/crispflow/api/runs/{dag_id}/{run_id}"]


def stored(stores: dict[str, Any]) -> list[str]:
    """Routes serving stored, data-derived HTML."""
    key = _window_keys(stores)[-1]
    return [f"/crispflow/models/{MODEL}/versions/2/card", f"/crispflow/data-docs/{PIPELINE}/{DATASET}",
            f"/crispflow/drift/{MODEL}/reports/champion/{key}/html", f"/crispflow/drift/{MODEL}/reports/champion/{key}"]


def _window_keys(stores: dict[str, Any]) -> list[str]:
    folder = stores["predictions"] / MODEL / "drift" / "reports" / "champion"
    return sorted(p.name for p in folder.iterdir())


class _Buttons(HTMLParser):
    """Every <button> of a page: its attributes (disabled, title, data-dag) and label."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[dict[str, Any]] = []
        self.forms: list[dict[str, Any]] = []
        self._open: dict[str, Any] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "button":
            self._open = {**dict(attrs), "label": ""}
            self.found.append(self._open)
        elif tag == "form":
            self.forms.append(dict(attrs))

    def handle_data(self, data: str) -> None:
        if self._open is not None:
            self._open["label"] += data

    def handle_endtag(self, tag: str) -> None:
        if tag == "button":
            self._open = None


def buttons(html: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    parser = _Buttons()
    parser.feed(html)
    return parser.found, parser.forms


# ------------------------------------------------------------------------------------------------- tests


def test_api_plugins_lists_the_views_and_the_app(api: Any) -> None:
    answer = api.get("/api/v2/plugins", "admin")
    assert answer.status_code == 200
    plugin = next(p for p in answer.json()["plugins"] if p["name"] == "crispflow")
    views = {v["name"]: v for v in plugin["external_views"]}
    assert set(views) == {"Models", "Promotions", "Drift", "Lifecycle"}
    assert views["Models"]["href"] == "/crispflow/models" and views["Models"]["category"] == "crispflow"
    assert views["Lifecycle"]["destination"] == "dag_run"
    assert "{DAG_ID}" in views["Lifecycle"]["href"] and "{RUN_ID}" in views["Lifecycle"]["href"]
    assert all(v["url_route"] for v in views.values())
    assert [(a["url_prefix"], a["name"]) for a in plugin["fastapi_apps"]] == [("/crispflow", "crispflow")]


def test_anonymous_is_401_on_every_route(api: Any, run: tuple[str, str], stores: dict[str, Any]) -> None:
    routes = [*pages(run), *json_routes(run), *stored(stores), "/crispflow/", "/crispflow/static/crispflow.js",
              "/crispflow/static/crispflow.css", "/crispflow/drift/x/reports/a/b/html", "/crispflow/nowhere"]
    assert {route: api.get(route).status_code for route in routes[:-1]} == dict.fromkeys(routes[:-1], 401)
    assert api.get(routes[-1]).status_code == 404  # no such route: nothing is served


def test_a_viewer_reads_every_page(api: Any, run: tuple[str, str], stores: dict[str, Any]) -> None:
    for route in pages(run):
        answer = api.get(route, "viewer")
        assert answer.status_code == 200, (route, answer.text[:500])
        assert answer.headers["content-type"].startswith("text/html")
        assert "crispflow.js" in answer.text and "Traceback" not in answer.text
    for route in json_routes(run):
        answer = api.get(route, "viewer")
        assert answer.status_code == 200, (route, answer.text[:500])
        assert answer.headers["content-type"] == "application/json"
    for route in stored(stores):
        assert api.get(route, "viewer").status_code == 200, route
    v1, v2, v3 = stores["versions"]

    models = {m["name"]: m for m in api.get("/crispflow/api/models", "viewer").json()}
    assert set(models) == {f"crispflow-{p}" for p in list_specs()}  # every pipeline, registered or not yet
    assert (models[MODEL]["aliases"]["champion"], models[MODEL]["aliases"]["canary"]) == (v2, v3)
    assert models[MODEL]["versions"] == 3
    promotions = api.get(f"/crispflow/api/promotions/{MODEL}", "viewer").json()
    assert promotions["aliases"]["champion"] == v2 and promotions["previous"] == v1
    assert [e["action"] for e in promotions["entries"]] == ["deploy_canary", "promote", "deploy_canary", "cold_start"]
    assert {e["person"] for e in promotions["entries"]} == {"ana"}
    version = api.get(f"/crispflow/api/models/{MODEL}/versions/2", "viewer").json()
    assert version["verdict"]["checks"] and version["metrics"]
    assert "model_card_html" not in version  # served sandboxed by its own route, not inside JSON for pages
    assert version["pending_approvals"] == []

    page = api.get(f"/crispflow/models/{MODEL}/versions/2", "viewer").text
    assert f'src="/crispflow/models/{MODEL}/versions/2/card"' in page and 'sandbox=""' in page
    assert f"/crispflow/data-docs/{PIPELINE}/{DATASET}" in page and "loans" in page
    assert SCRIPT not in page  # the card is never inlined into the page

    drift = api.get(f"/crispflow/drift/{MODEL}", "viewer").text
    assert drift.count('class="cell drifted"') >= 2 and "<polyline" in drift
    keys = _window_keys(stores)
    assert all(f"/crispflow/drift/{MODEL}/reports/champion/{k}/html" in drift for k in keys)
    assert EPISODE in drift and f"{MODEL}.{EPISODE}" in drift


def test_the_lifecycle_tab_reads_the_runs_xcoms(api: Any, run: tuple[str, str]) -> None:
    dag_id, run_id = run
    summary = api.get(f"/crispflow/api/runs/{dag_id}/{run_id}", "viewer").json()
    assert summary["run_id"] == run_id and summary["state"] == "success"
    kinds = {item["kind"]: item for item in summary["items"]}
    assert "fewer than training.min_rows" in kinds["skipped"]["detail"]
    assert "champion v2 → v1" in kinds["alias_move"]["title"]
    page = api.get(f"/crispflow/runs/{dag_id}/{run_id}", "viewer").text
    assert "fewer than training.min_rows" in page and "champion v2 → v1" in page
    assert api.get(f"/crispflow/runs/{dag_id}/no-such-run", "viewer").status_code == 404


@pytest.mark.parametrize("role", ROLES)
def test_buttons_follow_the_auth_manager(api: Any, stores: dict[str, Any], role: str) -> None:
    _, v2, v3 = stores["versions"]
    page = api.get(f"/crispflow/promotions/{MODEL}", role).text
    found, forms = buttons(page)
    by_dag = {b["data-dag"]: b for b in found}
    assert set(by_dag) == {"rollback", "promote_canary", "canary_analysis"}
    confs = {f["data-dag"]: json.loads(f["data-conf"]) for f in forms if "data-dag" in f}
    assert confs["rollback"] == {"pipeline": PIPELINE, "expected_champion": v2}
    assert confs["promote_canary"] == {"pipeline": PIPELINE, "expected_canary": v3, "expected_champion": v2}
    assert confs["canary_analysis"] == {"pipeline": PIPELINE}
    assert all(f["data-api"] == "/api/v2" for f in forms if "data-dag" in f)

    drift = api.get(f"/crispflow/drift/{MODEL}", role).text
    ack, ack_forms = buttons(drift)
    assert [b["data-dag"] for b in ack] == ["acknowledge_alert"]
    assert json.loads(ack_forms[0]["data-conf"]) == {"pipeline": PIPELINE, "key": f"{MODEL}.{EPISODE}"}
    for button in [*found, *ack]:
        if role == "viewer":
            assert "disabled" in button and "may not trigger" in button["title"], button
        else:
            assert "disabled" not in button, button


def test_security_headers(api: Any, run: tuple[str, str], stores: dict[str, Any]) -> None:
    for route in [*pages(run), *json_routes(run)]:
        answer = api.get(route, "viewer")
        assert answer.headers["x-content-type-options"] == "nosniff", route
        assert "frame-ancestors 'self'" in answer.headers["content-security-policy"], route
        assert "script-src 'self'" in answer.headers["content-security-policy"], route
    for route in stored(stores):
        answer = api.get(route, "viewer")
        csp = answer.headers["content-security-policy"]
        assert csp.startswith("sandbox;") and "script-src" not in csp and "frame-ancestors 'self'" in csp, route
        assert answer.headers["x-content-type-options"] == "nosniff"
    assert "nosniff" in api.get("/crispflow/models").headers["x-content-type-options"]  # also on a 401


def test_traversal_and_invalid_names_are_404(api: Any, stores: dict[str, Any]) -> None:
    key = _window_keys(stores)[-1]
    attempts = [
        f"/crispflow/drift/{MODEL}/reports/..%2F..%2F..%2Fsecret/{key}/html",
        f"/crispflow/drift/{MODEL}/reports/champion/..%2F{key}/html",
        f"/crispflow/drift/{MODEL}/reports/champion/{key}/..%2F..%2Fsummary",
        f"/crispflow/drift/{MODEL}/reports/champion/20990101T000000Z/html",
        "/crispflow/drift/..%2F..%2Fsecret.html",
        f"/crispflow/data-docs/{PIPELINE}/..%2F..%2F..%2Fsecret.html",
        f"/crispflow/data-docs/..%2F{PIPELINE}/{DATASET}",
        "/crispflow/data-docs/lending_club/ds-ffffffffffffffff",
        f"/crispflow/models/{MODEL}/versions/..%2F1",
        f"/crispflow/models/{MODEL}/versions/99",
        "/crispflow/models/..%2F..%2Fetc%2Fpasswd",
        "/crispflow/models/mlflow-other-model",
        "/crispflow/promotions/crispflow-nope",
        "/crispflow/static/..%2Fapp.py",
        "/crispflow/static/app.py",
        "/crispflow/api/drift/..",
    ]
    for route in attempts:
        answer = api.get(route, "viewer")
        assert answer.status_code == 404, (route, answer.status_code, answer.text[:300])
        assert "secret" not in answer.text.replace("secret.html", "")


def test_a_page_reads_with_the_session_cookie(api: Any) -> None:
    client = api.client
    client.cookies.set("_token", api.tokens["viewer"])
    try:
        answer = client.get(f"/crispflow/promotions/{MODEL}")
    finally:
        client.cookies.clear()
    assert answer.status_code == 200 and re.search(r"<h1>\s*crispflow-lending_club\s*</h1>", answer.text)


def test_mlflow_unreachable_is_a_503_page_without_details(api: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # discard port: nothing listens
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    page = api.get("/crispflow/models", "viewer")
    assert page.status_code == 503 and "MLflow is not reachable" in page.text
    assert "127.0.0.1:9" not in page.text and "Traceback" not in page.text
    assert page.headers["x-content-type-options"] == "nosniff"
    answer = api.get(f"/crispflow/api/promotions/{MODEL}", "viewer")
    assert answer.status_code == 503 and answer.json() == {
        "detail": "the promotion ledger or MLflow is not reachable right now; try again in a moment."}


def test_importing_the_plugin_builds_nothing() -> None:
    """Every task process imports the plugin: it must not import the web app, FastAPI routes, the library's UI
    modules or MLflow (the app is built by the api-server on the first request)."""
    import subprocess
    import sys

    heavy = ("crispflow_airflow.ui.app", "crispflow.ui", "mlflow", "pandas")
    code = ("import sys, crispflow_plugin as p; app = p.CrispflowPlugin.fastapi_apps[0]['app']; "
            f"print(type(app).__name__, app._app is None, [m for m in {heavy!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2] / "plugins")})
    assert out.stdout.split("\n")[-2] == "LazyApp True []", out.stdout + out.stderr


def test_views_carry_the_base_path(monkeypatch: pytest.MonkeyPatch) -> None:
    from crispflow_airflow.ui.mount import external_views

    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "https://airflow.example.com/team-a/")
    hrefs = {v["name"]: v["href"] for v in external_views()}
    assert hrefs["Models"] == "/team-a/crispflow/models"
    assert hrefs["Lifecycle"] == "/team-a/crispflow/runs/{DAG_ID}/{RUN_ID}"


def test_a_pending_forced_blessing_shows_on_its_version(api: Any, approval: str) -> None:
    pending = api.get(f"/crispflow/api/models/{MODEL}/versions/2", "viewer").json()["pending_approvals"]
    assert [(p["run_id"], p["subject"]) for p in pending] == [(approval, "Force-bless 2 of lending_club?")]
    assert api.get(f"/crispflow/api/models/{MODEL}/versions/1", "viewer").json()["pending_approvals"] == []
    page = api.get(f"/crispflow/models/{MODEL}/versions/2", "viewer").text
    assert "Waiting for approval" in page and 'href="/required_actions?response_received=false"' in page


@pytest.fixture(scope="module")
def action_dags(api: Any, tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """The real DAGs the buttons trigger, parsed from dags/ and stored (no scheduler: triggered runs stay queued;
    the test deletes the ones it made)."""
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import DagBag, sync_bag_to_db

    dag_ids = ["rollback", "promote_canary", "canary_analysis", "acknowledge_alert"]
    DagBundlesManager().sync_bundles_to_db()
    bag = DagBag(dag_folder=str(Path(__file__).parents[2] / "dags"))
    missing = [d for d in dag_ids if d not in bag.dags]
    assert not missing and not bag.import_errors, (missing, bag.import_errors)
    stored = DagBag(dag_folder=str(tmp_path_factory.mktemp("action_dags")))  # only these four
    for dag_id in dag_ids:
        stored.bag_dag(bag.dags[dag_id])
    sync_bag_to_db(stored, "dags-folder", None)
    return dag_ids


def _page_request(form: dict[str, Any]) -> dict[str, Any]:
    """What crispflow.js posts for a form: its data-conf plus its fields (here: a reason/note), the note."""
    conf = json.loads(form["data-conf"])
    if form["data-dag"] in ("rollback", "promote_canary"):
        conf["reason"] = "the canary's error rate doubled overnight"
    if form["data-dag"] == "acknowledge_alert":
        conf["note"] = "looking at the int_rate source"
    return {"logical_date": None, "conf": conf, "note": form["data-note"]}


def test_the_buttons_requests_are_accepted_by_the_real_dags_as_the_user(
        api: Any, stores: dict[str, Any], action_dags: list[str]) -> None:
    """The exact body each button sends, with the user's cookie: the DAG's params accept it and Airflow records
    who triggered it; a viewer's is refused by Airflow itself (403)."""
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    forms = []
    for route in (f"/crispflow/promotions/{MODEL}", f"/crispflow/drift/{MODEL}"):
        forms += [f for f in buttons(api.get(route, "user").text)[1] if "data-dag" in f]
    assert sorted(f["data-dag"] for f in forms) == sorted(action_dags)
    client = api.client
    for role, expected in (("viewer", 403), ("user", 200)):
        client.cookies.set("_token", api.tokens[role])
        try:
            answers = {f["data-dag"]: client.post(f"{f['data-api']}/dags/{f['data-dag']}/dagRuns",
                                                  json=_page_request(f)) for f in forms}
        finally:
            client.cookies.clear()
        assert {d: a.status_code for d, a in answers.items()} == dict.fromkeys(action_dags, expected), {
            d: a.text[:300] for d, a in answers.items()}
    created = {d: a.json()["dag_run_id"] for d, a in answers.items()}  # only this test's runs (other tests' stay)
    with create_session() as session:
        runs = [session.query(DagRun).filter(DagRun.dag_id == d, DagRun.run_id == r).one() for d, r in created.items()]
        made = {r.dag_id: (r.triggering_user_name, r.conf) for r in runs}
        for run in runs:  # queued forever without a scheduler: removed again
            session.delete(run)
    _, v2, v3 = stores["versions"]
    assert {d: who for d, (who, _) in made.items()} == dict.fromkeys(action_dags, "user")
    assert made["rollback"][1]["expected_champion"] == v2
    assert (made["promote_canary"][1]["expected_canary"], made["promote_canary"][1]["expected_champion"]) == (v3, v2)
    assert made["acknowledge_alert"][1]["key"] == f"{MODEL}.{EPISODE}"


def test_a_ledger_that_is_down_fails_only_the_pages_that_read_it(api: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRISPFLOW_LEDGER_READ_URL", "postgresql+psycopg2://ui:pw@127.0.0.1:9/ledger")
    answer = api.get(f"/crispflow/promotions/{MODEL}", "viewer")
    assert answer.status_code == 503 and "not reachable" in answer.text and "pw@" not in answer.text
    assert api.get(f"/crispflow/drift/{MODEL}", "viewer").status_code == 200
    assert api.get("/crispflow/models", "viewer").status_code == 200
