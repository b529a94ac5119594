"""A forced blessing answered over Airflow's REST API on a real stack (`crispflow up`): the approval of
`train_evaluate_register` (ApprovalOperator, Airflow HITL) for a model the gate did not bless.

One stack, three training runs triggered by `admin` (the requester) on labels shuffled so the gate refuses:
- a `viewer` cannot answer (403); `reviewer` rejects; an answer after that is refused (409); nothing is blessed;
- `admin` approves their own request: Airflow takes the answer, crispflow refuses it (ApprovalInvalid, not
  retried) and nothing is blessed or moved;
- `reviewer` approves: the version is force-blessed with both persons recorded and becomes champion (cold start),
  the ledger entry naming the approver.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import pytest
import yaml
from support import hitl
from support.stack import Stack, started_stack, wait_for

from crispflow.stack.airflow_api import AirflowAPI, AirflowAPIError

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
TRAIN = "train_evaluate_register"
APPROVE = "approve_forced_blessing"
MODEL = "crispflow-lending_club"
REASON = "pilot sign-off by the credit committee"


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A stack whose only pipeline is the demo spec (logistic regression only) on labels shuffled: no model of it
    passes the gate's minimum metrics."""
    base = tmp_path_factory.mktemp("approval")
    data = pd.read_parquet(ROOT / "include" / "data" / "lending_club.parquet")
    data["Class"] = data["Class"].sample(frac=1.0, random_state=7).to_numpy()
    data.to_parquet(base / "shuffled.parquet", index=False)
    spec = yaml.safe_load((ROOT / "include" / "pipelines" / "lending_club.yaml").read_text())
    spec["training"]["candidates"] = [c for c in spec["training"]["candidates"] if c["name"] == "logreg"]
    spec["sources"] = [{"name": "loans", "kind": "file", "url": (base / "shuffled.parquet").as_uri(),
                        "format": "parquet"}]
    (base / "pipelines").mkdir()
    (base / "pipelines" / "lending_club.yaml").write_text(yaml.safe_dump(spec))
    with started_stack(base, pipelines=base / "pipelines", timeout=600) as stack:
        yield stack


def as_user(stack: Stack, user: str) -> AirflowAPI:
    password = {"admin": stack.secrets.admin_password, "reviewer": stack.secrets.reviewer_password,
                "viewer": stack.secrets.viewer_password}[user]
    return AirflowAPI(f"http://127.0.0.1:{stack.ports.airflow}", user, password, timeout=60)


def states(api: AirflowAPI, run_id: str) -> dict[str, dict[str, Any]]:
    return {ti["task_id"]: ti for ti in api.task_instances(TRAIN, run_id)}


def answer(api: AirflowAPI, run_id: str, option: str) -> Any:
    return hitl.answer(api, TRAIN, run_id, APPROVE, option)


def answered(api: AirflowAPI, run_id: str, option: str) -> Any:
    return hitl.answered(api, TRAIN, run_id, APPROVE, option)


def refused(api: AirflowAPI, run_id: str, option: str) -> int:
    with pytest.raises(AirflowAPIError) as err:
        answer(api, run_id, option)
    return err.value.status  # type: ignore[return-value]


@pytest.fixture(scope="module")
def dataset(live: Stack) -> str:
    """One published dataset version (the history); the training run its event schedules is failed at once so
    only this test's runs train."""
    admin = as_user(live, "admin")
    for dag_id in ("ingest_validate", TRAIN):
        admin.wait_for_dag(dag_id, timeout=300)
    run = admin.trigger("ingest_validate", {"pipeline": "lending_club", "start": "2026-01-01", "end": "2026-10-01"})
    assert admin.wait_for_run("ingest_validate", run, timeout=900) == "success"
    version = admin.xcom("ingest_validate", run, "publish")["dataset_version_id"]
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        scheduled = [r for r in admin.dag_runs(TRAIN, limit=5) if r["state"] in ("queued", "running")]
        for other in scheduled:
            admin.request("PATCH", f"/api/v2/dags/{TRAIN}/dagRuns/{other['dag_run_id']}", json={"state": "failed"})
        if scheduled:
            break
        time.sleep(3)
    return version


def forced_run(live: Stack, dataset: str) -> str:
    """A training run asking for a forced blessing, triggered by `admin`; returns once its approval waits."""
    admin = as_user(live, "admin")
    run = admin.trigger(TRAIN, {"pipeline": "lending_club", "dataset_version_id": dataset, "search_budget": 1,
                                "force_bless": True, "force_reason": REASON, "deploy_strategy": "canary"})
    wait_for(f"{APPROVE} awaiting input in {run}",
             lambda: states(admin, run).get(APPROVE, {}).get("state") in ("awaiting_input", "deferred"), 1500, 5)
    assert admin.dag_run(TRAIN, run)["triggering_user_name"] == "admin"
    return run


def champion(live: Stack) -> str | None:
    from crispflow.model import registry

    mlf = registry.client(f"http://127.0.0.1:{live.ports.mlflow}")
    mv = registry.alias_version(mlf, MODEL, "champion")
    return str(mv.version) if mv else None


def test_a_viewer_cannot_answer_a_rejection_is_final(live: Stack, dataset: str) -> None:
    before = champion(live)
    run = forced_run(live, dataset)
    admin, reviewer, viewer = (as_user(live, u) for u in ("admin", "reviewer", "viewer"))
    assert refused(viewer, run, "Approve") == 403
    assert answered(reviewer, run, "Reject")["responded_by"]["name"] == "reviewer"
    assert refused(admin, run, "Approve") == 409  # answered already
    assert admin.wait_for_run(TRAIN, run, timeout=600) == "success"
    tis = states(admin, run)
    assert tis["record_forced_blessing"]["state"] == "skipped" and tis["deploy"]["state"] == "skipped"
    assert champion(live) == before


def test_the_requester_cannot_approve_their_own_request(live: Stack, dataset: str) -> None:
    before = champion(live)
    run = forced_run(live, dataset)
    admin = as_user(live, "admin")
    assert answered(admin, run, "Approve")["responded_by"]["name"] == "admin"  # Airflow takes it ...
    assert admin.wait_for_run(TRAIN, run, timeout=600) == "failed"  # ... crispflow does not
    record = states(admin, run)["record_forced_blessing"]
    assert record["state"] == "failed" and record["try_number"] == 1  # ApprovalInvalid: never retried
    assert champion(live) == before


def test_another_person_approves_and_the_ledger_names_them(live: Stack, dataset: str) -> None:
    from crispflow.model import registry
    from crispflow.release.promotion import Ledger

    run = forced_run(live, dataset)
    admin, reviewer = as_user(live, "admin"), as_user(live, "reviewer")
    answered(reviewer, run, "Approve")
    assert admin.wait_for_run(TRAIN, run, timeout=900) == "success"
    version = admin.xcom(TRAIN, run, "register")["version"]
    assert champion(live) == version  # the first blessed model (forced, none before): cold start
    mlf = registry.client(f"http://127.0.0.1:{live.ports.mlflow}")
    tags = mlf.get_model_version(MODEL, version).tags
    assert (tags["crispflow.blessed"], tags["crispflow.forced_by"], tags["crispflow.forced_requested_by"]) == (
        "true", "reviewer", "admin")
    forced = json.loads(mlflow.artifacts.load_text(tags["crispflow.verdict"]))
    assert forced["forced"]["approver"]["name"] == "reviewer" and forced["forced"]["requester"] == "admin"
    entry = Ledger(f"sqlite:///{live.home / 'ledger.db'}").entries(MODEL)[-1]
    assert (entry["action"], entry["to_version"], entry["person"], entry["state"]) == (
        "cold_start", version, "reviewer", "confirmed")
