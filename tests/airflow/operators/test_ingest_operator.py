"""IngestOperator: templated fields render, the XCom is the small batch summary, bad requests fail without retry
(an unknown conf key through the `default_args` hook every crispflow DAG has)."""

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
    assert set(out) == {"pipeline", "batch_id", "rows_in", "interval", "raw"}
    assert out["raw"] and all(key.startswith("raw/lending_club/") for key in out["raw"])
    assert out["pipeline"] == "lending_club" and out["rows_in"] > 0 and out["batch_id"].startswith("b-")
    assert out["interval"] == {"start": "2026-01-01T00:00:00+00:00", "end": "2026-02-01T00:00:00+00:00"}
    assert (lake.batch_dir("lending_club", out["batch_id"]) / "ingest.json").exists()


def test_an_unknown_conf_key_fails_the_task_before_anything_is_read(run_alone, lake, capfd) -> None:
    """The operator has no conf check of its own: `default_args` gives every crispflow task the
    `reject_unknown_conf` pre_execute hook, which fails it once (InvalidRequest, not retried) before it runs."""
    from datetime import timedelta

    from crispflow_airflow.dag_defaults import default_args

    def make():
        return operator(default_args=default_args(execution_timeout=timedelta(minutes=5)))

    dr, ti = run_alone(make, PARAMS, {"pipeline": "lending_club", "bogus": 1, **JAN})
    assert dr.state == "failed" and ti.state == "failed" and ti.try_number == 1
    assert "conf: unknown field(s) ['bogus']" in capfd.readouterr().out
    assert not (lake.root / "raw").exists() and not (lake.root / "batches").exists()  # nothing landed or staged


@pytest.mark.parametrize(
    ("conf", "error", "message"),
    [
        ({"pipeline": "lending_club", "start": "2026-02-01", "end": "2026-01-01"}, "InvalidRequest",
         "must be before end"),
        ({"pipeline": "no_such_pipeline", **JAN}, "GateConfigurationError", "no_such_pipeline"),
    ],
)
def test_typed_errors_become_airflow_failures(lake, conf, error, message) -> None:
    from airflow.models.dagrun import DagRun

    import crispflow_airflow.exceptions as exceptions

    op = operator()
    op.render_template_fields({"params": conf})
    context = {"dag_run": DagRun(dag_id="t", run_id="r", conf=conf), "data_interval_start": None,
               "data_interval_end": None}
    with pytest.raises(getattr(exceptions, error), match=re.escape(message)) as err:
        op.execute(context)
    assert isinstance(err.value, exceptions.AirflowFailException)  # never retried
