"""Recovery paths on the real local stack (`crispflow up`: MLflow, Airflow's api-server, scheduler, dag-processor and
triggerer, and the model server, as processes on free ports in a temporary home).

- A failing canary is rolled back end to end: a champion and a deliberately bad (but complete, blessed,
  hash-checked) canary serve labelled traffic through the model server; a `canary_analysis` run triggered over the
  REST API decides `rollback`; the ledger records `abort_canary`, the registry has no canary alias, and the running
  server stops routing to the canary within its poll interval.
- A deferred drift sensor survives a scheduler crash: the trigger fires while the scheduler is dead, `up` restarts
  the scheduler only, and the task resumes and completes once (one episode, one alert).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from support.stack import Stack, started_stack, wait_for

from crispflow.stack.processes import is_alive

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

ROOT = Path(__file__).resolve().parents[2]
CANARY_PIPELINE = "lending_club"  # gets a champion: the scheduled runs of the monitoring DAGs then watch it
DRIFT_PIPELINE = "lending_club_rate"  # never gets a champion: no scheduled watch_drift run watches it
FEATURES = ["int_rate", "annual_inc"]
PERSON = "recovery-test"  # who the test's own moves (cold start, canary deployment) are made for


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with started_stack(tmp_path_factory.mktemp("recovery")) as stack:
        yield stack


def admin_headers(stack: Stack) -> dict[str, str]:
    """The model server's admin bearer token that `crispflow up` generated (describe and list need it)."""
    from crispflow.stack.traffic import bearer, stack_token

    return bearer(stack_token(stack.home, "admin"))


def quiet_window(api: Any, dag_id: str, needed: float) -> None:
    """Wait until no run of `dag_id` is active and its next scheduled run is at least `needed` seconds away, so
    that only the runs this test triggers act in the next `needed` seconds."""

    def ready() -> bool:
        if any(r["state"] in ("queued", "running") for r in api.dag_runs(dag_id, limit=5, newest_first=True)):
            return False
        after = api.dag(dag_id).get("next_dagrun_run_after")
        return after is None or datetime.fromisoformat(after).timestamp() - time.time() > needed

    wait_for(f"a quiet {needed:.0f} s window of {dag_id}", ready, timeout=700, poll=5)


def traffic(n: int, offset: int = 0) -> tuple[Any, list[int]]:
    """`n` demo rows (entity key and the two model features) and their 0/1 labels (1: the loan went bad)."""
    import pandas as pd

    df = pd.read_parquet(ROOT / "include" / "data" / "lending_club.parquet").iloc[offset:offset + n]
    return df[["loan_id", *FEATURES]].reset_index(drop=True), (df["Class"] == "bad").astype(int).tolist()


def test_a_deferred_drift_sensor_survives_a_scheduler_crash(live: Stack) -> None:
    """watch_drift's sensor waits in the triggerer; the scheduler (and its LocalExecutor workers) is killed; drift
    arrives and the trigger fires while no scheduler runs; `up` starts the scheduler only, which resumes the task:
    it completes once, one episode is recorded, one alert follows."""
    from crispflow.model import registry
    from crispflow.monitoring import store

    api = live.api()
    api.wait_for_dag("watch_drift", timeout=180)
    quiet_window(api, "watch_drift", needed=90)  # the first scheduled run is over (a later one queues behind ours)
    model = registry.model_name(DRIFT_PIPELINE)
    run_id = api.trigger("watch_drift", conf={"pipeline": DRIFT_PIPELINE})

    def watch() -> dict[str, Any] | None:
        return next((t for t in api.task_instances("watch_drift", run_id) if t["task_id"] == "watch"), None)

    # Runs first in this module: no pipeline has a champion yet, so a scheduled hourly run (which watches the
    # pipelines with one for up to 55 minutes) ends at once instead of holding a worker slot beside ours.
    wait_for("the watch_drift sensor deferring", lambda: (watch() or {}).get("state") == "deferred", 400, poll=3)
    # Only the deferred wait is under test: the run's other worker task (the ledger check beside the sensor) must
    # have finished, or the crash kills it mid-run and only Airflow's heartbeat timeout (300 s) would free it
    wait_for("the ledger check beside the sensor done", lambda: {
        t["state"] for t in api.task_instances("watch_drift", run_id) if t["task_id"] == "aliases_agree"} == {
        "success"}, 300, poll=2)
    before = {r.name: r.pid for r in live.pid_records()}
    scheduler = before["airflow-scheduler"]
    os.killpg(scheduler, signal.SIGKILL)  # a crash: its executor's workers die with it
    wait_for("the scheduler gone", lambda: not is_alive(scheduler), 30)

    now = datetime.now(UTC)
    for hours_ago in (2, 1):  # two drifted windows: k=2 of n=3
        start, end = now - timedelta(hours=hours_ago), now - timedelta(hours=hours_ago - 1)
        summary = {"model": model, "alias": "champion", "version": "1",
                   "window_start": start.isoformat(), "window_end": end.isoformat(), "rows": 500,
                   "labelled_rows": 100, "status": "drift", "drift": True, "drift_share": 0.3,
                   "drifted_features": ["int_rate"], "prediction_drift": False, "report": "r.json",
                   "statistics": {"int_rate": {"test": "ks", "statistic": 0.2, "p_adjusted": 1e-9, "psi": 0.2}}}
        store.write_window(live.home / "lake" / "predictions", summary, {}, "")
    # The triggerer fires with no scheduler alive: the task instance leaves `deferred` (for `scheduled`).
    wait_for("the trigger firing while the scheduler is down",
             lambda: (watch() or {}).get("state") not in (None, "deferred"), timeout=300, poll=2)
    assert api.dag_run("watch_drift", run_id)["state"] == "running"

    result = live.run("up", timeout=300)  # starts the missing scheduler only
    assert result.returncode == 0, result.stderr
    after = {r.name: r.pid for r in live.pid_records()}
    assert after["airflow-scheduler"] != scheduler
    assert {k: v for k, v in after.items() if k != "airflow-scheduler"} == {
        k: v for k, v in before.items() if k != "airflow-scheduler"}

    assert api.wait_for_run("watch_drift", run_id, timeout=300) == "success"
    states = {t["task_id"]: t for t in api.task_instances("watch_drift", run_id)}
    assert states["watch"]["state"] == "success" and states["alert"]["state"] == "success"
    assert states["watch"]["try_number"] == 1, "the resumed sensor was retried, not resumed"
    fired = api.xcom("watch_drift", run_id, "watch", map_index=0)
    assert fired["features"] == ["int_rate"] and fired["episode_id"].startswith("champion-")
    episodes = store.read_episodes(live.home / "lake" / "predictions", model)
    assert [e["episode_id"] for e in episodes] == [fired["episode_id"]]
    alert = api.xcom("watch_drift", run_id, "alert", map_index=0)
    assert alert and not alert["suppressed"], alert  # one digest, sent by this (only) firing


def test_a_failing_canary_is_rolled_back_end_to_end(live: Stack) -> None:
    """A champion and a canary that predicts the wrong class, both complete and blessed, deployed through the
    ledger; labelled traffic through the model server; the analysis run over REST rolls the canary back, and the
    running server drops it at its next registry poll."""
    import pandas as pd
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from support.mlflow_server import register_versions

    from crispflow.model import registry
    from crispflow.release import promotion
    from crispflow.stack.traffic import replay, stack_token

    name = registry.model_name(CANARY_PIPELINE)
    mlf = registry.client(f"http://127.0.0.1:{live.ports.mlflow}")
    ledger = promotion.Ledger(f"sqlite:///{live.home / 'ledger.db'}")  # the local profile's ledger
    serve = f"http://127.0.0.1:{live.ports.serve}"

    # The champion learns the labels; the canary learns them inverted: it predicts the wrong class, confidently.
    df = pd.read_parquet(ROOT / "include" / "data" / "lending_club.parquet").iloc[2000:6000]
    x, y = df[FEATURES].astype("float64"), (df["Class"] == "bad").to_numpy()
    champion_model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(x, y)
    bad_model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(x, ~y)
    champion, canary = register_versions(mlf, name, "recovery_canary", x, [champion_model, bad_model])
    mlf.set_registered_model_tag(name, registry.ENTITY_KEY_TAG, "loan_id")
    assert all(registry.SHA_TAG in mlf.get_model_version(name, v).tags for v in (champion, canary))

    # Through the product's paths: the first blessed version is champion, the next goes canary (half the entities).
    promotion.promote_first_blessed(mlf, ledger, name, champion, run_key="recovery/train-1", person=PERSON)
    api = live.api()
    api.wait_for_dag("canary_analysis", timeout=180)
    quiet_window(api, "canary_analysis", needed=150)  # no scheduled analysis acts before ours
    deployed = promotion.deploy_version(mlf, ledger, name, canary, strategy="canary", share=0.5,
                                        reason="blessed retrain", move_key="recovery/train-2/deploy", person=PERSON)
    assert deployed["action"] == "deploy_canary"

    describe = lambda: requests.get(f"{serve}/models/{name}", headers=admin_headers(live), timeout=5).json()  # noqa: E731
    client_token = stack_token(live.home, "client")  # predict and feedback, as a client application
    wait_for("the server serving the canary",
             lambda: str(describe().get("aliases", {}).get("canary", {}).get("version")) == canary, timeout=120)
    poll_interval = float(describe()["poll_interval"])

    rows, labels = traffic(400)
    stats = replay(serve, rows, labels, batch=20, feedback_delay=0.5, model=name, token=client_token)
    assert stats.failed == 0 and stats.feedback == len(rows), stats.errors
    arms = {arm.split()[0]: n for arm, n in stats.by_arm.items()}
    assert arms.get("canary", 0) >= 100 and arms.get("champion", 0) >= 100, arms
    time.sleep(2.5)  # the server's prediction log flushes every second

    # The spec's policy, as the scheduled runs use it (a run may only tighten it).
    run_id = api.trigger("canary_analysis", conf={"pipeline": CANARY_PIPELINE})
    state = api.wait_for_run("canary_analysis", run_id, timeout=600)
    tasks = {(t["task_id"], t["map_index"]): t["state"] for t in api.task_instances("canary_analysis", run_id)}
    assert state == "success", tasks
    decided_at = time.monotonic()
    outcome = api.xcom("canary_analysis", run_id, "analyse_and_act", map_index=0)
    assert outcome["decision"] == "rollback", outcome
    assert any("log loss higher than champion" in r for r in outcome["reasons"]), outcome["reasons"]
    assert outcome["ledger"]["action"] == "abort_canary"

    # The ledger records the abort, by the analysis task, for the person who triggered it over the REST API; it is
    # confirmed (the registry read back), and the registry agrees with it.
    entries = ledger.entries(name)
    assert [e["action"] for e in entries] == ["cold_start", "deploy_canary", "abort_canary"]
    assert entries[-1]["moves"]["canary"] == [canary, None] and run_id in entries[-1]["move_key"]
    assert entries[-1]["person"] == "admin" and entries[-1]["state"] == "confirmed", entries[-1]
    assert promotion.verify(mlf, ledger, name) == []
    now = promotion.registry_state(mlf, name)
    assert now == {"champion": champion, "canary": None, "shadow": None, "previous": None}
    assert {a: v for a, v in ledger.state(name)[1].items() if v is not None} == {"champion": champion}
    assert mlf.get_registered_model(name).tags[registry.CANARY_SHARE_TAG] == "0"

    # The running server drops the canary at its next poll, and serves everyone with the champion.
    wait_for("the server dropping the canary", lambda: "canary" not in describe().get("aliases", {}),
             timeout=poll_interval + 5, poll=0.2)
    dropped_after = time.monotonic() - decided_at
    assert dropped_after <= poll_interval + 5

    def listed() -> dict[str, Any]:
        models = requests.get(f"{serve}/models", headers=admin_headers(live), timeout=5).json()["models"]
        return next(m for m in models if m["name"] == name)

    wait_for("the /models listing without the canary", lambda: listed()["served"] == {"champion": champion}
             and "canary" not in listed()["registry_aliases"], timeout=poll_interval + 5, poll=0.2)
    fresh, fresh_labels = traffic(200, offset=7000)
    after = replay(serve, fresh, fresh_labels, batch=20, feedback_delay=0.2, model=name, token=client_token)
    assert after.failed == 0, after.errors
    assert dict(after.by_arm) == {f"champion v{champion}": len(fresh)}
