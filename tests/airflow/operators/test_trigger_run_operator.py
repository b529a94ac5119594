"""TriggerRunOperator: templated fields render, and at run time the provider's TriggerDagRunOperator gets exactly
its arguments (the triggered run itself: tests/integration/test_retrain_on_drift_dag.py)."""

from __future__ import annotations

import subprocess
import sys


def operator():
    from crispflow_airflow.operators.trigger_run import TriggerRunOperator

    return TriggerRunOperator(task_id="retrain", trigger_dag_id="train_evaluate_register",
                              trigger_run_id="{{ params.run_id }}", conf={"pipeline": "{{ params.pipeline }}"},
                              wait_for_completion="{{ params.wait }}", poke_interval=30)


def test_templated_fields_render() -> None:
    op = operator()
    assert tuple(op.template_fields) == ("trigger_run_id", "conf", "wait_for_completion")
    op.render_template_fields({"params": {"run_id": "drift__m__e1", "pipeline": "lending_club", "wait": "True"}})
    assert (op.trigger_run_id, op.conf, op.wait_for_completion) == ("drift__m__e1", {"pipeline": "lending_club"},
                                                                    "True")


def test_the_provider_operator_gets_the_same_arguments() -> None:
    op = operator()
    op.render_template_fields({"params": {"run_id": "drift__m__e1", "pipeline": "lending_club", "wait": "True"}})
    provider = op._provider()
    assert type(provider).__name__ == "TriggerDagRunOperator"
    assert (provider.task_id, provider.trigger_dag_id, provider.trigger_run_id, provider.conf) == (
        "retrain", "train_evaluate_register", "drift__m__e1", {"pipeline": "lending_club"})
    assert provider.wait_for_completion is True and provider.deferrable is True and provider.poke_interval == 30
    assert provider.skip_when_already_exists is True


def test_importing_the_operator_does_not_import_the_provider() -> None:
    code = ("import sys, crispflow_airflow.operators.trigger_run; "
            "print('airflow.providers.standard.operators.trigger_dagrun' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120,
                         env={**__import__("os").environ, "PYTHONPATH": "plugins:include"})
    assert out.stdout.strip().splitlines()[-1] == "False"


def test_openlineage_parent_info_is_never_injected_into_the_triggered_runs_conf() -> None:
    """With OpenLineage on, the provider's TriggerDagRunOperator adds an `openlineage` key (the parent run) to the
    conf it triggers with; every crispflow task rejects a conf key its DAG does not declare
    (`dag_defaults.reject_unknown_conf`), so the triggered training run would fail. TriggerRunOperator turns the
    injection off, and no DAG uses the provider's operator directly."""
    from pathlib import Path

    import pytest
    from airflow.providers.standard.utils.openlineage import _inject_openlineage_parent_info_to_dagrun_conf

    from crispflow.errors import ParamsError
    from crispflow.run_requests import reject_unknown

    op = operator()
    op.render_template_fields({"params": {"run_id": "drift__m__e1", "pipeline": "lending_club", "wait": "True"}})
    assert op._provider().openlineage_inject_parent_info is False
    injected = _inject_openlineage_parent_info_to_dagrun_conf({"pipeline": "lending_club"}, {"parentRunId": "x"})
    with pytest.raises(ParamsError, match="openlineage"):  # what the injection would do to the triggered run
        reject_unknown(injected, {"pipeline", "dataset_version_id"})
    dags = Path(__file__).resolve().parents[3] / "dags"
    assert not [p.name for p in dags.glob("*.py") if "TriggerDagRunOperator(" in p.read_text()]
