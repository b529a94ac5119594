"""Policies live in the spec and a run may only tighten them, through the real REST API of a real local stack.

One stack for the module (`crispflow up` in a temporary home on free ports) whose project holds only the DAGs under
test (canary_analysis, watch_drift, batch_score) and a pipelines folder with one spec, `t_policy`, whose `canary:`
section is stricter than the defaults. Against it:

- a policy with a wrong type, an unknown or a non-overridable field is refused by Airflow at trigger time (400);
- the issue's loosening policy (schema-valid) fails the run's analysis task once, without retry, naming the field,
  the spec's value and the rule;
- an unknown conf key fails the run of every DAG without retry (watch_drift's former `alert_channels` included: a run
  cannot redirect alerts);
- a tightening policy is accepted and the run succeeds.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from support.stack import Stack, started_stack

from crispflow.model import registry
from crispflow.stack.airflow_api import AirflowAPI, AirflowAPIError

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
PIPELINE = "t_policy"
DAGS = ("canary_analysis", "watch_drift", "batch_score")
SPEC_CANARY = {"min_requests": 100, "min_labels": 400, "margin": 0.01}
# The example: with it a canary 8x worse than the champion on 3 requests was promoted.
LOOSE = {"margin": 100, "min_labels": 2, "min_requests": 1, "max_score_psi": 1e9}


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    base = tmp_path_factory.mktemp("policy")
    project = base / "project"
    (project / "dags").mkdir(parents=True)
    for name in DAGS:
        shutil.copy(ROOT / "dags" / f"{name}.py", project / "dags" / f"{name}.py")
    (project / "plugins").symlink_to(ROOT / "plugins")
    (project / "include").symlink_to(ROOT / "include")
    pipelines = base / "pipelines"
    pipelines.mkdir()
    spec = yaml.safe_load((ROOT / "include" / "pipelines" / "lending_club.yaml").read_text())
    (pipelines / f"{PIPELINE}.yaml").write_text(yaml.safe_dump({**spec, "name": PIPELINE, "canary": SPEC_CANARY}))
    with started_stack(base, project_root=project, pipelines=pipelines) as live:
        api = live.api()
        for dag_id in DAGS:
            api.wait_for_dag(dag_id, timeout=180)
        registry.client(f"http://127.0.0.1:{live.ports.mlflow}").create_registered_model(registry.model_name(PIPELINE))
        yield live


def task_log(api: AirflowAPI, dag_id: str, run_id: str, task: dict) -> str:
    path = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task['task_id']}/logs/{task['try_number']}"
    return json.dumps(api.request("GET", path, params={"map_index": task["map_index"], "full_content": True}))


def failed_once(api: AirflowAPI, dag_id: str, run_id: str, message: str) -> dict:
    """The run failed; its failed task ran once (not retried) and its log names `message`."""
    assert api.wait_for_run(dag_id, run_id, timeout=300) == "failed"
    (task,) = [t for t in api.task_instances(dag_id, run_id) if t["state"] == "failed"]
    assert task["try_number"] == 1, task
    deadline = time.monotonic() + 30  # the log reaches the API server shortly after the state
    while message not in (text := task_log(api, dag_id, run_id, task)) and time.monotonic() < deadline:
        time.sleep(1)
    assert message in text and "InvalidRequest" in text, text[-2000:]
    return task


@pytest.mark.parametrize(("policy", "named"), [
    ({"margin": "small"}, "margin"),
    ({"min_labels": 2.5}, "min_labels"),
    ({"margin": -1}, "margin"),
    ({"bogus": 1}, "bogus"),
    ({"tau": 0.5}, "tau"),  # not overridable by a run: not in the schema at all
])
def test_a_wrong_type_or_unknown_policy_field_is_refused_at_trigger(live: Stack, policy: dict, named: str) -> None:
    api = live.api()
    before = len(api.dag_runs("canary_analysis"))
    with pytest.raises(AirflowAPIError) as err:
        api.trigger("canary_analysis", {"pipeline": PIPELINE, "policy": policy})
    assert err.value.status == 400 and named in (err.value.body or ""), err.value
    assert len(api.dag_runs("canary_analysis")) == before  # no run was created


def test_a_loosening_policy_fails_without_retry_naming_the_field(live: Stack) -> None:
    api = live.api()
    run_id = api.trigger("canary_analysis", {"pipeline": PIPELINE, "policy": LOOSE})
    task = failed_once(api, "canary_analysis", run_id,
                       "policy.margin: 100 would loosen the spec's 0.01; a run may only lower it")
    assert task["task_id"] == "analyse_and_act"
    run_id = api.trigger("canary_analysis", {"pipeline": PIPELINE, "policy": {"min_labels": 200}})  # default, but
    failed_once(api, "canary_analysis", run_id,  # looser than this pipeline's spec
                "policy.min_labels: 200 would loosen the spec's 400; a run may only raise it")


@pytest.mark.parametrize(("dag_id", "conf", "unknown"), [
    ("watch_drift", {"pipeline": PIPELINE, "alert_channels": [{"kind": "webhook", "conn_id": "elsewhere"}]},
     "alert_channels"),
    ("canary_analysis", {"pipeline": PIPELINE, "polciy": {}}, "polciy"),
    ("batch_score", {"pipeline": PIPELINE, "alias": "champion", "force": True}, "force"),
])
def test_an_unknown_conf_key_fails_the_run_without_retry(live: Stack, dag_id: str, conf: dict, unknown: str) -> None:
    api = live.api()
    run_id = api.trigger(dag_id, conf)
    failed_once(api, dag_id, run_id, f"conf: unknown field(s) ['{unknown}']")


def test_a_tightening_policy_is_accepted(live: Stack) -> None:
    api = live.api()
    run_id = api.trigger("canary_analysis", {"pipeline": PIPELINE, "policy": {"min_labels": 500, "margin": 0.005}})
    assert api.wait_for_run("canary_analysis", run_id, timeout=300) == "success"
    out = api.xcom("canary_analysis", run_id, "analyse_and_act", map_index=0)
    assert out == {"decision": "none", "reasons": ["no canary deployed"]}
