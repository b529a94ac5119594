"""BlessingGateOperator: templated fields render (the request and version come from upstream XComs), a broken
request is a misconfiguration that fails without retry. The verdict, promotion and model card it returns are
exercised end to end by tests/integration/test_train_dag.py."""

from __future__ import annotations

import pytest


def operator(**kwargs):
    from crispflow_airflow.operators.blessing import BlessingGateOperator

    return BlessingGateOperator(task_id="bless", version="{{ params.version }}", **kwargs)


def test_templated_fields_render() -> None:
    op = operator(request={"pipeline": "{{ params.pipeline }}", "dataset_version_id": "ds-0123456789abcdef"})
    assert tuple(op.template_fields) == ("request", "version")
    op.render_template_fields({"params": {"pipeline": "lending_club", "version": "3"}})
    assert op.request == {"pipeline": "lending_club", "dataset_version_id": "ds-0123456789abcdef"}
    assert op.version == "3"


def test_a_request_for_an_unknown_pipeline_is_a_misconfiguration(run_alone) -> None:
    from crispflow_airflow.exceptions import AirflowFailException, GateConfigurationError

    request = {"pipeline": "no_such_pipeline", "dataset_version_id": "ds-0123456789abcdef"}
    op = operator(request=request)
    op.render_template_fields({"params": {"version": "1"}})
    with pytest.raises(GateConfigurationError, match="no_such_pipeline") as err:
        op.execute({"ti": None})
    assert isinstance(err.value, AirflowFailException)
    dr, ti = run_alone(lambda: operator(request=request, retries=2), {"version": "1"})
    assert dr.state == "failed" and ti.try_number == 1  # not retried
