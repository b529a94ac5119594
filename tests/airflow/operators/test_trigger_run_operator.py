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
