"""What a run may ask for, checked on the parsed DAGs: every task of every DAG refuses unknown conf keys before it runs
(`dag_defaults.reject_unknown_conf` as its pre_execute), policy overrides are typed objects of the overridable fields
only (refused by Airflow at trigger time otherwise), and no DAG takes alert channels from a run."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
POLICY_PARAMS = {("canary_analysis", "policy"): "canary", ("watch_drift", "policy"): "drift_watch",
                 ("monitor_drift", "settings"): "drift_monitor"}


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(ROOT / "dags"))


def test_every_task_of_every_dag_rejects_unknown_conf_keys(dagbag) -> None:
    from crispflow_airflow.dag_defaults import reject_unknown_conf

    assert len(dagbag.dags) == len(list((ROOT / "dags").glob("*.py")))
    for dag in dagbag.dags.values():
        for task in dag.tasks:
            hook = task.partial_kwargs.get("pre_execute") if hasattr(task, "partial_kwargs") else \
                task._pre_execute_hook
            assert hook is reject_unknown_conf, f"{dag.dag_id}.{task.task_id}"


def test_the_hook_refuses_a_key_the_dag_does_not_declare(dagbag) -> None:
    from types import SimpleNamespace

    import crispflow_airflow.exceptions as exceptions
    from crispflow_airflow.dag_defaults import reject_unknown_conf

    dag = dagbag.dags["watch_drift"]
    ok = SimpleNamespace(conf={"pipeline": "lending_club", "policy": {"k": 1}})
    reject_unknown_conf({"dag_run": ok, "dag": dag})
    redirect = SimpleNamespace(conf={"pipeline": "lending_club", "alert_channels": [{"kind": "webhook"}]})
    with pytest.raises(exceptions.InvalidRequest, match=r"conf: unknown field\(s\) \['alert_channels'\]"):
        reject_unknown_conf({"dag_run": redirect, "dag": dag})


def test_policy_params_are_closed_typed_objects(dagbag) -> None:
    from crispflow_airflow.dag_defaults import policy_param

    for (dag_id, name), section in POLICY_PARAMS.items():
        schema = dagbag.dags[dag_id].params.get_param(name).schema
        assert schema == policy_param(section, "").schema, dag_id
        assert schema["additionalProperties"] is False and schema["properties"], dag_id


def test_no_dag_takes_alert_channels_from_a_run(dagbag) -> None:
    assert all("alert_channels" not in dag.params for dag in dagbag.dags.values())
