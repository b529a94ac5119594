"""An erasure request end to end on a real stack (`crispflow up`): the subject is in the published months, the
composed window, the holdout, and in requests the model server answered (with feedback). `crispflow erase request`
sends only the subject's pseudonyms, the `erase_subject` DAG plans, a reviewer approves over Airflow's REST API
(HITL), the erase task rewrites the lake and the prediction log, flags the model version trained on the subject's
data in MLflow, records the approver in the erasure ledger and verifies; afterwards `crispflow erase verify` exits
0, and a scan of every file of the stack's home (the lake, the prediction log, MLflow's artifacts and database, the
model server's model cache, Airflow's database and every task and process log) finds the key nowhere and the
pseudonyms only where the request itself must name them."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import pytest
from support import hitl
from support.erasure_world import holds_subject, key_as_value
from support.stack import Stack, started_stack, wait_for

from crispflow.erasure.models import PENDING
from crispflow.spec import load_spec
from crispflow.stack.airflow_api import AirflowAPI
from crispflow.stack.demo import feedback_labels
from crispflow.stack.traffic import replay

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


def leaks(key: str, text: str) -> bool:
    return bool(key_as_value(key).search(text.encode()))


def served(live: Stack, key: str) -> None:
    """The subject's row sent to the model server as a client would (in clear), with its true label as feedback;
    returns once the prediction log holds it (the erasure plan finds it there)."""
    data = pd.read_parquet(ROOT / "include" / "data" / "lending_club.parquet")
    spec = load_spec("lending_club")
    rows = data[data[spec.key] == int(key)]

    def answered() -> bool:  # the server serves v1 once it has seen the champion alias (it polls the registry)
        stats = replay(f"http://127.0.0.1:{live.ports.serve}", rows[[spec.key, *spec.feature_columns]],
                       feedback_labels(spec, rows), model=MODEL,
                       token=live.secrets.serve_client_token, feedback_delay=0.2)
        print("replay:", stats.as_dict())  # shown if the wait fails
        return (stats.records, stats.failed, stats.feedback) == (1, 0, 1)

    wait_for("an answer from the model server", answered, 120, 3)

    def logged() -> bool:
        found = live.run("erase", "plan", "--pipeline", "lending_club", "--key", key, "--json")
        return any(p["store"] == "predictions" for p in json.loads(found.stdout)["places"])

    wait_for("the served request in the prediction log", logged, 120, 2)


def json_paths_holding(obj: Any, needles: list[str], path: str = "") -> list[str]:
    """The paths (`/a/b[0]`) of the strings in a JSON document that contain one of `needles`."""
    if isinstance(obj, dict):
        return [p for k, v in obj.items() for p in json_paths_holding(v, needles, f"{path}/{k}")]
    if isinstance(obj, list):
        return [p for i, v in enumerate(obj) for p in json_paths_holding(v, needles, f"{path}[{i}]")]
    return [path] if isinstance(obj, str) and any(n in obj for n in needles) else []


def stack_files_holding(home: Path, needles: list[str], key: str) -> list[str]:
    """Every file of the stack's home (its SQLite databases through their committed pages, so a deleted row
    that SQLite has not overwritten still counts) that holds the subject."""
    found = []
    for path in sorted(p for p in home.rglob("*") if p.is_file() and not p.is_symlink()):
        if holds_subject(str(path), path.read_bytes(), needles, key):
            found.append(str(path.relative_to(home)))
    return found


def test_a_request_is_approved_erased_flagged_and_verified(live: Stack, trained: str) -> None:
    key, api = trained, live.api()
    served(live, key)
    request = live.run("erase", "request", "--pipeline", "lending_club", "--key", key, "--ticket", "DPO-7", "--json")
    assert request.returncode == 0, request.stdout + request.stderr
    run_id = json.loads(request.stdout)["run_id"]
    conf = api.dag_run(ERASE, run_id)["conf"]
    assert conf["subject"][0].startswith("hk1:") and not leaks(key, json.dumps(conf))

    asked = hitl.wait_until_asked(api, ERASE, run_id, "approve")
    assert "DPO-7" in asked["subject"] and "Model versions to flag" in asked["body"]
    reviewer = AirflowAPI(f"http://127.0.0.1:{live.ports.airflow}", "reviewer", live.secrets.reviewer_password)
    hitl.answered(reviewer, ERASE, run_id, "approve", "Approve")
    assert api.wait_for_run(ERASE, run_id, timeout=600) == "success"

    erased = api.xcom(ERASE, run_id, "erase")
    stores = {a["store"] for a in erased["artifacts"]}
    assert {"raw", "staging", "validated", "curated", "predictions"} <= stores
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
        assert not leaks(key, json.dumps(api.xcom(ERASE, run_id, task)))
    logs = list((live.home / "airflow" / "logs" / f"dag_id={ERASE}").rglob("*.log"))
    assert logs and not [p for p in logs if leaks(key, p.read_text(errors="replace"))]

    # The request names the subject by pseudonyms: the run's conf, XCom and rendered fields in Airflow's database,
    # and the conf the OpenLineage provider copies into that run's events. The suppression list must name them;
    # the other pipelines' stores (their own landings of the same source) are another request's business.
    found = stack_files_holding(live.home, conf["subject"], key)
    request = [f for f in found if f.startswith("airflow/airflow.db") or f == "lineage/events.jsonl"]
    suppression = [f for f in found if f.startswith("lake/governance/suppressed/lending_club/")]
    elsewhere = [f for f in found if re.match(r"lake/(raw|batches|quarantine|curated)/(?!lending_club/)", f)]
    assert sorted(found) == sorted(request + suppression + elsewhere), found
    assert len(suppression) == len(conf["subject"])
    for event in map(json.loads, (live.home / "lineage" / "events.jsonl").read_text().splitlines()):
        for where in json_paths_holding(event, conf["subject"]):
            assert event["job"]["name"].startswith(ERASE) and "/dagRun/conf/subject" in where, where
    assert not [p for p in live.home.rglob("*") if p.is_file() and not p.is_symlink()
                and key_as_value(key).search(p.read_bytes())
                and not re.match(r"lake/(raw|batches)/(?!lending_club/)", str(p.relative_to(live.home)))]
    assert (live.home / "cache" / "models").is_dir()  # the model cache was scanned: the server loaded v1
