"""IngestOperator: templated fields render, the XCom is the small batch summary, bad requests fail without retry."""

from __future__ import annotations

import re

import pytest

JAN = {"start": "2026-01-01", "end": "2026-02-01"}
PARAMS = {"pipeline": "lending_club", "start": None, "end": None}


def operator(**kwargs):
    from crispflow_airflow.operators.ingest import IngestOperator

    return IngestOperator(task_id="ingest", **{"pipeline": "{{ params.pipeline }}", "start": "{{ params.start }}",
                                               "end": "{{ params.end }}", **kwargs})


def test_templated_fields_render() -> None:
    op = operator()
    assert tuple(op.template_fields) == ("pipeline", "start", "end")
    op.render_template_fields({"params": {"pipeline": "lending_club", **JAN}})
    assert (op.pipeline, op.start, op.end) == ("lending_club", *JAN.values())


def test_stages_a_batch_and_returns_its_summary(run_alone, lake) -> None:
    dr, ti = run_alone(operator, PARAMS, {"pipeline": "lending_club", **JAN})
    assert dr.state == "success"
    out = ti.xcom_pull(task_ids="ingest")
    assert set(out) == {"pipeline", "batch_id", "rows_in", "interval"}
    assert out["pipeline"] == "lending_club" and out["rows_in"] > 0 and out["batch_id"].startswith("b-")
    assert out["interval"] == {"start": "2026-01-01T00:00:00+00:00", "end": "2026-02-01T00:00:00+00:00"}
    assert (lake.batch_dir("lending_club", out["batch_id"]) / "ingest.json").exists()


@pytest.mark.parametrize(
    ("kwargs", "conf", "error", "message"),
    [
        ({"allowed_conf": ["pipeline", "start", "end"]}, {"pipeline": "lending_club", "bogus": 1, **JAN},
         "InvalidRequest", "unknown field(s) ['bogus']"),
        ({}, {"pipeline": "lending_club", "start": "2026-02-01", "end": "2026-01-01"}, "InvalidRequest",
         "must be before end"),
        ({}, {"pipeline": "no_such_pipeline", **JAN}, "GateConfigurationError", "no_such_pipeline"),
    ],
)
def test_typed_errors_become_airflow_failures(lake, kwargs, conf, error, message) -> None:
    from airflow.models.dagrun import DagRun

    import crispflow_airflow.exceptions as exceptions

    op = operator(**kwargs)
    op.render_template_fields({"params": conf})
    context = {"dag_run": DagRun(dag_id="t", run_id="r", conf=conf), "data_interval_start": None,
               "data_interval_end": None}
    with pytest.raises(getattr(exceptions, error), match=re.escape(message)) as err:
        op.execute(context)
    assert isinstance(err.value, exceptions.AirflowFailException)  # never retried
