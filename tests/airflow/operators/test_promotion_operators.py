"""DeployCanaryOperator and RollbackOperator: templated fields render, the XCom is the ledger summary, "nothing to
do" is a skip with the reason, a refused move fails without retry (a real MLflow server, a SQLite ledger)."""

from __future__ import annotations

import re

import pytest
from support.mlflow_server import small_versions

from crispflow.model import registry
from crispflow.release import promotion
from crispflow.release.promotion import Ledger

pytest_plugins = ["support.mlflow_server"]
PIPELINE = "t_promo_ops"
MODEL = f"crispflow-{PIPELINE}"
SUMMARY = {"seq", "action", "from_version", "to_version", "moves", "reason", "person", "state", "replayed"}


@pytest.fixture(scope="module")
def versions(mlflow_server) -> list[str]:
    """v1, v2 blessed, v3 not."""
    mlf = registry.client(mlflow_server.url)
    return small_versions(mlf, MODEL, PIPELINE, 3, blessed=[True, True, False])


@pytest.fixture
def env(mlflow_server, versions, tmp_path, monkeypatch):
    """The task's settings (MLflow server, a fresh ledger); only v1 is live (the champion, crowned via the ledger)."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.url)
    monkeypatch.setenv("CRISPFLOW_LEDGER_URL", f"sqlite:///{tmp_path / 'ledger.db'}")
    mlf = registry.client(mlflow_server.url)
    for alias in promotion.SERVING_ALIASES:
        if registry.alias_version(mlf, MODEL, alias):
            mlf.delete_registered_model_alias(MODEL, alias)
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    promotion.apply(mlf, ledger, MODEL, promotion.cold_start({}, versions[0], "first"), move_key="cold", actor="t",
                    person="airflow:scheduled")
    return mlf, ledger


def deploy_op(**kwargs):
    from crispflow_airflow.operators.promotion import DeployCanaryOperator

    templated = {"pipeline": "{{ params.pipeline }}", "version": "{{ params.version }}",
                 "strategy": "{{ params.strategy }}"}
    return DeployCanaryOperator(task_id="deploy", **{**templated, **kwargs})


def rollback_op(**kwargs):
    from crispflow_airflow.operators.promotion import RollbackOperator

    return RollbackOperator(task_id="rollback", **{"pipeline": "{{ params.pipeline }}", "reason": "{{ params.reason }}",
                                                   **kwargs})


def acting(dr) -> str:
    """Who a `dag.test()` run acts for (no triggering user: `airflow:<run type>`)."""
    from crispflow_airflow.context import acting_person

    return acting_person({"dag_run": dr})


PARAMS = {"pipeline": PIPELINE, "version": "", "share": 0.2, "strategy": "canary", "reason": ""}


def test_templated_fields_render() -> None:
    from crispflow.release.promotion import POOL

    op = deploy_op(share="{{ params.share }}", reason="{{ params.reason }}")
    assert tuple(op.template_fields) == ("pipeline", "version", "share", "strategy", "reason")
    op.render_template_fields({"params": {"pipeline": PIPELINE, "version": 7, "share": 0.3, "strategy": "shadow",
                                          "reason": "why"}})
    assert (op.pipeline, op.version, op.share, op.strategy, op.reason) == (PIPELINE, "7", "0.3", "shadow", "why")
    back = rollback_op()
    assert tuple(back.template_fields) == ("pipeline", "reason", "expected_champion")
    back.render_template_fields({"params": {"pipeline": PIPELINE, "reason": "complaints"}})
    assert (back.pipeline, back.reason, back.expected_champion) == (PIPELINE, "complaints", None)
    assert op.pool == back.pool == POOL


def test_deploy_pushes_the_ledger_summary(run_alone, env, versions) -> None:
    mlf, ledger = env
    dr, ti = run_alone(lambda: deploy_op(share="{{ params.share }}"), PARAMS,
                       {"pipeline": PIPELINE, "version": versions[1], "share": 0.3})
    assert dr.state == "success"
    out = ti.xcom_pull(task_ids="deploy")
    assert set(out) == SUMMARY | {"model", "mlflow"} and out["action"] == "deploy_canary"
    assert out["to_version"] == out["mlflow"]["version"] == versions[1] and out["model"] == MODEL
    assert out["mlflow"]["run_id"] == mlf.get_model_version(MODEL, versions[1]).run_id  # for the MLflow links
    assert promotion.registry_state(mlf, MODEL)["canary"] == versions[1]
    assert mlf.get_registered_model(MODEL).tags[promotion.CANARY_SHARE_TAG] == "0.3"
    assert ledger.find(f"{ti.dag_id}/{ti.run_id}/deploy")["seq"] == out["seq"]  # the move key: the task
    assert out["person"] == acting(dr) and out["state"] == promotion.CONFIRMED  # who the run acted for


@pytest.mark.parametrize(("strategy", "which", "message"), [
    ("none", 1, "deployment strategy 'none': the version stays `challenger`"),
    ("canary", 2, "v{v} is not blessed: not deployed"),
    ("canary", 0, "v{v} is the champion already (cold start): no canary needed"),
])
def test_nothing_to_deploy_is_a_skip_with_the_reason(run_alone, env, versions, strategy, which, message) -> None:
    from airflow.sdk.exceptions import AirflowSkipException

    mlf, ledger = env
    conf = {"pipeline": PIPELINE, "version": versions[which], "strategy": strategy}
    dr, ti = run_alone(deploy_op, PARAMS, conf)
    assert ti.state == "skipped" and dr.state == "success"
    assert message.format(v=versions[which]) in ti.xcom_pull(task_ids="deploy", key="skip_reason")  # the run's note
    op = deploy_op()
    op.render_template_fields({"params": conf})
    with pytest.raises(AirflowSkipException, match=re.escape(message.format(v=versions[which]))):
        op.execute({"ti": ti, "dag_run": dr})
    assert len(ledger.entries(MODEL)) == 1 and promotion.registry_state(mlf, MODEL)["canary"] is None


def test_rollback_pushes_the_ledger_summary(run_alone, env, versions) -> None:
    mlf, ledger = env
    promotion.deploy_version(mlf, ledger, MODEL, versions[1], strategy="blue_green", share=1.0, reason="switch",
                             move_key="t/switch", person="ana")
    dr, ti = run_alone(rollback_op, PARAMS, {"pipeline": PIPELINE, "reason": "complaints about the new scores"})
    assert dr.state == "success"
    out = ti.xcom_pull(task_ids="rollback")
    assert set(out) == SUMMARY | {"model"} and out["action"] == "rollback"
    assert out["moves"]["champion"] == list(versions[1::-1])
    assert promotion.registry_state(mlf, MODEL)["champion"] == versions[0]
    key = f"{ti.dag_id}/{ti.run_id}/rollback"
    assert mlf.get_model_version(MODEL, versions[1]).tags[promotion.ROLLED_BACK_TAG] == key
    assert ledger.find(key)["reason"] == "complaints about the new scores"
    assert ledger.find(key)["person"] == out["person"] == acting(dr)


def test_a_refused_rollback_fails_without_retry(run_alone, env) -> None:
    import crispflow_airflow.exceptions as exceptions

    _, ledger = env
    conf = {"pipeline": PIPELINE, "reason": "nothing to go back to"}
    dr, ti = run_alone(lambda: rollback_op(retries=2), PARAMS, conf)
    assert dr.state == "failed" and ti.state == "failed" and ti.try_number == 1
    op = rollback_op()
    op.render_template_fields({"params": conf})
    with pytest.raises(exceptions.PromotionAborted, match="no previous champion to roll back to") as err:
        op.execute({"ti": ti, "dag_run": dr})
    assert isinstance(err.value, exceptions.AirflowFailException)
    assert len(ledger.entries(MODEL)) == 1


def test_the_rollback_dag_refuses_unknown_conf_keys_and_moves_nothing(airflow_db, env, versions, tmp_path) -> None:
    """`rollback` with a key it does not take (a typo) fails before anything moves, without retry."""
    from pathlib import Path

    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import DagBag, sync_bag_to_db

    mlf, ledger = env
    promotion.deploy_version(mlf, ledger, MODEL, versions[1], strategy="blue_green", share=1.0, reason="switch",
                             move_key="t/switch", person="ana")
    DagBundlesManager().sync_bundles_to_db()
    bag = DagBag(dag_folder=str(Path(__file__).resolve().parents[3] / "dags" / "rollback.py"))
    assert not bag.import_errors
    sync_bag_to_db(bag, "dags-folder", None)
    dr = bag.dags["rollback"].test(run_conf={"pipeline": PIPELINE, "reason": "complaints about the scores",
                                             "no_such_key": 1})
    ti = dr.get_task_instances()[0]
    assert dr.state == "failed" and ti.state == "failed" and ti.try_number == 1
    assert promotion.registry_state(mlf, MODEL)["champion"] == versions[1]
    assert [e["action"] for e in ledger.entries(MODEL)] == ["cold_start", "blue_green"]
    ok = bag.dags["rollback"].test(run_conf={"pipeline": PIPELINE, "reason": "complaints about the scores"})
    assert ok.state == "success" and promotion.registry_state(mlf, MODEL)["champion"] == versions[0]
