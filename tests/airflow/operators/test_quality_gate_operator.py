"""DataQualityGateOperator: templated fields render, the XCom is the gate summary, a bad batch stores its evidence
and then fails without retry (DataQualityFailed), a missing batch is a misconfiguration."""

from __future__ import annotations

import re

import pytest

from crispflow.data.datasets import QUALITY_JSON

PARAMS = {"pipeline": "lending_club", "batch_id": ""}


def operator():
    from crispflow_airflow.operators.quality_gate import DataQualityGateOperator

    return DataQualityGateOperator(task_id="validate", pipeline="{{ params.pipeline }}",
                                   batch_id="{{ params.batch_id }}")


def test_templated_fields_render() -> None:
    op = operator()
    assert tuple(op.template_fields) == ("pipeline", "batch_id")
    op.render_template_fields({"params": {"pipeline": "lending_club", "batch_id": "b-0123"}})
    assert (op.pipeline, op.batch_id) == ("lending_club", "b-0123")


def test_a_good_batch_passes_and_returns_the_summary(run_alone, lake, stage_january) -> None:
    batch_id = stage_january(lake)
    dr, ti = run_alone(operator, PARAMS, {"batch_id": batch_id})
    assert dr.state == "success"
    out = ti.xcom_pull(task_ids="validate")
    assert set(out) == {"batch_id", "success", "rows_in", "rows_passed", "rows_quarantined", "files"}
    assert out["batch_id"] == batch_id and out["success"] is True
    assert out["rows_in"] == out["rows_passed"] + out["rows_quarantined"]
    assert (lake.root / out["files"]["quality_html"]).exists()


def test_a_bad_batch_is_stored_then_fails_without_retry(lake, stage_january) -> None:
    from crispflow_airflow.exceptions import AirflowFailException, DataQualityFailed

    batch_id = stage_january(lake, lambda m: m.drop(columns=["int_rate"]))  # a missing column: the batch fails
    op = operator()
    op.render_template_fields({"params": {**PARAMS, "batch_id": batch_id}})
    with pytest.raises(DataQualityFailed, match="data rejected") as err:
        op.execute({})
    assert isinstance(err.value, AirflowFailException)
    assert (lake.batch_dir("lending_club", batch_id) / QUALITY_JSON).exists()  # evidence first, then the failure


def test_a_batch_that_is_not_staged_is_a_misconfiguration(lake) -> None:
    from crispflow_airflow.exceptions import GateConfigurationError

    op = operator()
    op.render_template_fields({"params": {**PARAMS, "batch_id": "b-missing"}})
    with pytest.raises(GateConfigurationError, match=re.escape("batch b-missing of pipeline 'lending_club' is not")):
        op.execute({})
