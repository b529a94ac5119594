"""An erasure request end to end on a real stack (`crispflow up`): `crispflow erase request` sends only the
subject's pseudonyms, the `erase_subject` DAG plans, a reviewer approves over Airflow's REST API (HITL), the erase
task rewrites the lake, flags the model version trained on the subject's data in MLflow, records the approver in
the erasure ledger and verifies; afterwards `crispflow erase verify` exits 0 and neither the run's conf, its XComs
nor its task logs hold the key."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from support import hitl
from support.stack import Stack, started_stack, wait_for

from crispflow.erasure.models import PENDING
from crispflow.stack.airflow_api import AirflowAPI

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
TRAIN, ERASE = "train_evaluate_register", "erase_subject"
MODEL = "crispflow-lending_club"


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with started_stack(tmp_path_factory.mktemp("erase")) as stack:
        yield stack


@pytest.fixture(scope="module")
def trained(live: Stack) -> str:
    """January to June published; the training run their event schedules registers version 1. Returns a subject's
    key from February."""
    api = live.api()
    for dag_id in ("ingest_validate", TRAIN, ERASE):
        api.wait_for_dag(dag_id, timeout=300)
    run = api.trigger("ingest_validate", {"pipeline": "lending_club", "start": "2026-01-01", "end": "2026-07-01"})
    assert api.wait_for_run("ingest_validate", run, timeout=600) == "success"
    wait_for("a successful training run", lambda: any(r["state"] == "success" for r in api.dag_runs(TRAIN)), 900, 5)
    data = pd.read_parquet(ROOT / "include" / "data" / "lending_club.parquet")
    return str(int(data[data["application_month"].astype(str).str.startswith("2026-02")]["loan_id"].iat[3]))


def whole(key: str) -> re.Pattern[str]:
    return re.compile(rf"(?<![\w.]){key}(?![\w.])")


def test_a_request_is_approved_erased_flagged_and_verified(live: Stack, trained: str) -> None:
    key, api = trained, live.api()
    request = live.run("erase", "request", "--pipeline", "lending_club", "--key", key, "--ticket", "DPO-7", "--json")
    assert request.returncode == 0, request.stdout + request.stderr
    run_id = json.loads(request.stdout)["run_id"]
    conf = api.dag_run(ERASE, run_id)["conf"]
    assert conf["subject"][0].startswith("hk1:") and not whole(key).search(json.dumps(conf))

    asked = hitl.wait_until_asked(api, ERASE, run_id, "approve")
    assert "DPO-7" in asked["subject"] and "Model versions to flag" in asked["body"]
    reviewer = AirflowAPI(f"http://127.0.0.1:{live.ports.airflow}", "reviewer", live.secrets.reviewer_password)
    hitl.answered(reviewer, ERASE, run_id, "approve", "Approve")
    assert api.wait_for_run(ERASE, run_id, timeout=600) == "success"

    erased = api.xcom(ERASE, run_id, "erase")
    stores = {a["store"] for a in erased["artifacts"]}
    assert {"raw", "staging", "validated", "curated"} <= stores
    assert [m["version"] for m in erased["models"]] == ["1"]
    mlflow.set_tracking_uri(f"http://127.0.0.1:{live.ports.mlflow}")
    client = mlflow.MlflowClient()
    assert client.get_model_version(MODEL, "1").tags[PENDING] == erased["erasure_id"]

    status = live.run("erase", "status", "--pipeline", "lending_club", "--key", key, "--json")
    entries = json.loads(status.stdout)["entries"]
    assert [e["step"] for e in entries] == ["plan", "run"] and {e["person"] for e in entries} == {"reviewer"}
    verified = live.run("erase", "verify", "--pipeline", "lending_club", "--key", key)
    assert verified.returncode == 0, verified.stdout + verified.stderr

    for task in ("plan", "erase"):
        assert not whole(key).search(json.dumps(api.xcom(ERASE, run_id, task)))
    logs = list((live.home / "airflow" / "logs" / f"dag_id={ERASE}").rglob("*.log"))
    assert logs and not [p for p in logs if whole(key).search(p.read_text(errors="replace"))]
