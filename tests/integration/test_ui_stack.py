"""The crispflow pages in the Airflow UI, on the real local stack (`crispflow up`: MLflow, Airflow's api-server,
scheduler, dag-processor and triggerer, the model server) and in a real browser (Playwright driving Debian's
chromium, logged in through Airflow's own login form).

The scenario is made through the product's library paths against the stack's MLflow, ledger and prediction store:
three versions of the demo pipeline's model (v1 cold start, v2 champion by blue-green with v1 kept as `previous`,
v3 a canary), six drift windows of the champion (two drifted) and one drift alert. Then:

- the JSON endpoints agree with MLflow and the ledger;
- a viewer's trigger of the rollback DAG is refused (403) and the viewer's buttons are disabled;
- an engineer (`reviewer`, role user) clicks *Roll back* and *Acknowledge* in the pages, inside the Airflow UI's
  iframe: a rollback run whose ledger entry names the engineer, an acknowledged alert that names them too;
- no page logs a console error; screenshots are saved under the test's tmp dir (or `CRISPFLOW_UI_SCREENSHOTS`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from support.stack import Stack, started_stack, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]

ROOT = Path(__file__).resolve().parents[2]
PIPELINE = "lending_club"
FEATURES = ["int_rate", "annual_inc"]
PERSON = "ui-test"  # who the scenario's own moves are made for


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with started_stack(tmp_path_factory.mktemp("ui")) as stack:
        yield stack


@pytest.fixture(scope="module")
def scenario(live: Stack) -> dict[str, Any]:
    """Three versions with a rollback target and a canary, drift windows and an alert (see the module doc)."""
    import pandas as pd
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from support.mlflow_server import register_versions

    from crispflow.model import registry
    from crispflow.monitoring import alerts, store
    from crispflow.release import promotion

    name = registry.model_name(PIPELINE)
    mlf = registry.client(f"http://127.0.0.1:{live.ports.mlflow}")
    ledger = promotion.Ledger(f"sqlite:///{live.home / 'ledger.db'}")
    df = pd.read_parquet(ROOT / "include" / "data" / "lending_club.parquet").iloc[:3000]
    x, y = df[FEATURES].astype("float64"), (df["Class"] == "bad").to_numpy()
    models = [make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=500)).fit(x, y) for c in (1, .1, .01)]
    v1, v2, v3 = register_versions(mlf, name, "ui_stack", x, models)
    promotion.promote_first_blessed(mlf, ledger, name, v1, run_key="ui/train-1", person=PERSON)
    promotion.deploy_version(mlf, ledger, name, v2, strategy="blue_green", share=1.0, reason="blessed retrain",
                             move_key="ui/train-2/deploy", person=PERSON)
    promotion.deploy_version(mlf, ledger, name, v3, strategy="canary", share=0.2, reason="blessed retrain",
                             move_key="ui/train-3/deploy", person=PERSON)

    root = live.home / "lake" / "predictions"
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    windows = []
    for hours_ago in range(6, 0, -1):
        start, end = now - timedelta(hours=hours_ago), now - timedelta(hours=hours_ago - 1)
        drifted = ["int_rate"] if hours_ago <= 2 else []
        features = {f: {"test": "ks", "statistic": 0.3 if f in drifted else 0.02, "p_adjusted": 1e-9 if f in drifted
                        else 0.8, "psi": 0.31 if f in drifted else 0.01, "drifted": f in drifted} for f in FEATURES}
        report = {"status": "drift" if drifted else "no_drift", "drift": bool(drifted), "drift_share": len(drifted) / 2,
                  "drifted_features": drifted, "features": features}
        summary = store.summarise(report, model=name, alias="champion", version=v2, start=start, end=end, rows=500,
                                  labelled_rows=100, report_path="report.json")
        store.write_window(root, summary, report, f"<html><body><h1>window {end:%H:%M}</h1></body></html>")
        windows.append(summary)
    record = {"model": name, "pipeline": PIPELINE, "alias": "champion", "episode_id": f"champion-{now:%Y%m%dT%H%M%SZ}",
              "features": ["int_rate"], "statistics": {"int_rate": {"psi": 0.31}}, "max_drift_share": 0.5,
              "prediction_drift": False, "windows": windows[-2:], "fired_at": now.isoformat()}
    store.record_episode(root, name, record["episode_id"], record)
    sent = alerts.send_alert(root, record, [], by={"run_id": "ui-test"}, deliver=lambda ch, d: None,
                             connection_exists=lambda conn: False)
    return {"model": name, "versions": (v1, v2, v3), "mlf": mlf, "ledger": ledger, "root": root,
            "alert_key": sent["dedup_key"]}


def token(live: Stack, user: str) -> str:
    """An Airflow JWT for `user`, from the api-server's own login endpoint."""
    creds = live.secrets
    password = {"admin": creds.admin_password, "reviewer": creds.reviewer_password,
                "viewer": creds.viewer_password}[user]
    resp = requests.post(f"http://127.0.0.1:{live.ports.airflow}/auth/token",
                         json={"username": user, "password": password}, timeout=30)
    resp.raise_for_status()
    return resp.json()["access_token"]


def get(live: Stack, path: str, user: str | None = "viewer") -> requests.Response:
    headers = {"Authorization": f"Bearer {token(live, user)}"} if user else {}
    return requests.get(f"http://127.0.0.1:{live.ports.airflow}{path}", headers=headers, timeout=60)


def test_the_json_endpoints_agree_with_mlflow_and_the_ledger(live: Stack, scenario: dict[str, Any]) -> None:
    from crispflow.release import promotion

    name, mlf, ledger = scenario["model"], scenario["mlf"], scenario["ledger"]
    v1, v2, v3 = scenario["versions"]
    assert get(live, f"/crispflow/api/promotions/{name}", user=None).status_code == 401

    page = get(live, f"/crispflow/api/promotions/{name}").json()
    registry_now = promotion.registry_state(mlf, name)
    assert {a: page["aliases"].get(a) for a in registry_now} == registry_now
    assert registry_now == {"champion": v2, "canary": v3, "shadow": None, "previous": v1}
    assert [e["seq"] for e in page["entries"]] == [e["seq"] for e in reversed(ledger.entries(name))]
    assert [e["action"] for e in page["entries"]] == ["deploy_canary", "blue_green", "cold_start"]
    assert {e["person"] for e in page["entries"]} == {PERSON}
    assert page["divergences"] == [] and page["can_rollback"] is True

    versions = get(live, f"/crispflow/api/models/{name}").json()["versions"]
    listed = {row["version"]: set(row["aliases"]) for row in versions}
    in_mlflow = {v: set(mlf.get_model_version(name, v).aliases) for v in scenario["versions"]}
    assert listed == in_mlflow and listed[v2] == {"champion"} and listed[v3] == {"canary"}

    drift = get(live, f"/crispflow/api/drift/{name}").json()
    champion_windows = drift["aliases"]["champion"]
    assert len(champion_windows) == 6 and sum(w["drift"] for w in champion_windows) == 2
    assert drift["heatmap"]["features"][0] == "int_rate"
    assert [a["key"] for a in drift["alerts"]] == [scenario["alert_key"]]


def test_pages_refuse_anonymous_and_a_viewer_cannot_trigger(live: Stack, scenario: dict[str, Any]) -> None:
    name = scenario["model"]
    traversal = f"/crispflow/drift/{name}/reports/champion/%2e%2e"  # a route's shape: 401, then 404 signed in
    for path in ("/crispflow/models", f"/crispflow/promotions/{name}", f"/crispflow/drift/{name}",
                 f"/crispflow/api/drift/{name}", traversal):
        assert get(live, path, user=None).status_code == 401, path
    for path in (traversal, f"/crispflow/drift/{name}/reports/champion/..%2F..%2Fsecrets.json",
                 "/crispflow/data-docs/lending_club/..%2F..%2Fsecrets.json"):
        assert get(live, path).status_code == 404, path
    resp = requests.post(f"http://127.0.0.1:{live.ports.airflow}/api/v2/dags/rollback/dagRuns",
                         headers={"Authorization": f"Bearer {token(live, 'viewer')}"},
                         json={"logical_date": None, "conf": {"pipeline": PIPELINE, "reason": "a viewer tries this",
                                                              "expected_champion": scenario["versions"][1]}},
                         timeout=30)
    assert resp.status_code == 403, resp.text
    plugins = get(live, "/api/v2/plugins").json()["plugins"]
    views = {v["name"] for p in plugins if p["name"] == "crispflow" for v in p["external_views"]}
    assert {"Models", "Promotions", "Drift", "Lifecycle"} <= views


# ------------------------------------------------------------------------------------------------ in a browser


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from support.browser import chromium

    with chromium() as b:
        yield b


def session(browser: Any, live: Stack, user: str, shots: Path) -> Any:
    from support.browser import Session

    password = {"reviewer": live.secrets.reviewer_password, "viewer": live.secrets.viewer_password}[user]
    return Session(browser, f"http://127.0.0.1:{live.ports.airflow}", user, password, shots)


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    target = Path(os.environ.get("CRISPFLOW_UI_SCREENSHOTS") or tmp_path / "screenshots")
    target.mkdir(parents=True, exist_ok=True)
    return target


def test_a_viewer_reads_every_page_with_the_buttons_disabled(live: Stack, scenario: dict[str, Any], browser: Any,
                                                             shots: Path) -> None:
    name = scenario["model"]
    viewer = session(browser, live, "viewer", shots)
    models = viewer.open_view("crispflow-models", then=name, expect="tr#v-3")
    assert models.locator("table tbody tr").count() >= 3
    promotions = viewer.open_view("crispflow-promotions", then=name, expect="tr#seq-3")
    buttons = promotions.locator("form.cf-action button")
    assert buttons.count() >= 3 and all(buttons.nth(i).is_disabled() for i in range(buttons.count()))
    drift = viewer.open_view("crispflow-drift", then=name, expect="svg rect.cell")
    assert drift.locator("svg rect.cell").count() == 6 * len(FEATURES)
    assert drift.locator("svg rect.cell.drifted").count() == 2
    ack = drift.locator("form.cf-action[data-dag=acknowledge_alert] button")
    assert ack.count() == 1 and ack.first.is_disabled()
    assert viewer.close() == [], "console errors"


def test_an_engineer_rolls_back_and_acknowledges_from_the_pages(live: Stack, scenario: dict[str, Any],
                                                                browser: Any, shots: Path) -> None:
    from crispflow.monitoring import alerts
    from crispflow.release import promotion

    name, mlf, ledger = scenario["model"], scenario["mlf"], scenario["ledger"]
    v1, v2, _ = scenario["versions"]
    api = live.api()
    api.wait_for_dag("rollback", timeout=180)
    api.wait_for_dag("acknowledge_alert", timeout=180)
    engineer = session(browser, live, "reviewer", shots)

    models = engineer.open_view("crispflow-models", then=name, expect=f"tr#v-{v2}")
    engineer.shot("models")
    models.locator(f"tr#v-{v2} a:has-text('v{v2}')").first.click()
    models.locator("#verdict").wait_for(timeout=60_000)
    engineer.shot("version")

    drift = engineer.open_view("crispflow-drift", then=name, expect="svg rect.cell")
    engineer.shot("drift")
    form = drift.locator("form.cf-action[data-dag=acknowledge_alert]")
    form.locator("button").click()
    form.locator("output.ok").wait_for(timeout=30_000)
    wait_for("the alert acknowledged", lambda: (alerts.read_alert(scenario["root"], name, scenario["alert_key"])
                                                or {}).get("acknowledged"), timeout=300, poll=2)
    assert alerts.read_alert(scenario["root"], name, scenario["alert_key"])["acknowledged_by"] == "reviewer"

    promotions = engineer.open_view("crispflow-promotions", then=name, expect="tr#seq-3")
    engineer.shot("promotions")
    form = promotions.locator("form.cf-action[data-dag=rollback]")
    form.locator("input[name=reason]").fill("rolled back from the promotions page in a test")
    form.locator("button").click()
    form.locator("output.ok").wait_for(timeout=30_000)
    def last() -> tuple[str, str]:
        entry = ledger.entries(name)[-1]
        return entry["action"], entry["state"]

    # written as an intent, applied to the registry, then confirmed
    wait_for("the rollback confirmed in the ledger", lambda: last() == ("rollback", "confirmed"), 300, poll=2)
    entry = ledger.entries(name)[-1]
    assert entry["person"] == "reviewer" and entry["moves"]["champion"] == [v2, v1], entry
    assert entry["state"] == "confirmed" and promotion.verify(mlf, ledger, name) == []
    runs = api.dag_runs("rollback", newest_first=True)
    assert len(runs) == 1 and runs[0]["triggering_user_name"] == "reviewer", runs
    assert api.wait_for_run("rollback", runs[0]["dag_run_id"], timeout=300) == "success"

    tab = engineer.open_run_tab("rollback", runs[0]["dag_run_id"])
    assert tab.locator(f"text=v{v1}").count() >= 1
    engineer.shot("run-tab")
    assert engineer.close() == [], "console errors"
