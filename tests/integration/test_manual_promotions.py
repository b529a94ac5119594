"""A person's moves from the Promotions page against a real MLflow server: a rollback or a canary promotion
decided on a stale page is refused naming what was shown and what is now; a canary whose latest analysis said
"roll back" is not promoted by hand; a manual promotion records that it was manual, by whom, and what was seen.
The `rollback` and `promote_canary` DAGs do the same with a run's conf."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from support.mlflow_server import small_versions

from crispflow.model import registry
from crispflow.release import promotion
from crispflow.release.canary_analysis import store_report
from crispflow.release.promotion import Ledger, PromotionConflict, PromotionRefused

pytest_plugins = ["support.mlflow_server"]
pytestmark = pytest.mark.slow
PIPELINE = "t_manual"
MODEL = f"crispflow-{PIPELINE}"
DAGS = Path(__file__).resolve().parents[2] / "dags"


@pytest.fixture(scope="module")
def versions(mlflow_server) -> list[str]:
    mlf = registry.client(mlflow_server.url)
    return small_versions(mlf, MODEL, PIPELINE, 3)


@pytest.fixture
def env(mlflow_server, versions, tmp_path, monkeypatch):
    """v1 champion, v2 the live canary (both through a fresh ledger); the prediction store under tmp_path."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.url)
    monkeypatch.setenv("CRISPFLOW_LEDGER_URL", f"sqlite:///{tmp_path / 'ledger.db'}")
    monkeypatch.setenv("CRISPFLOW_PREDICTIONS_URL", str(tmp_path / "predictions"))
    mlf = registry.client(mlflow_server.url)
    for alias in promotion.SERVING_ALIASES:
        if registry.alias_version(mlf, MODEL, alias):
            mlf.delete_registered_model_alias(MODEL, alias)
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    v1, v2, _ = versions
    promotion.apply(mlf, ledger, MODEL, promotion.cold_start({}, v1, "first"), move_key="cold", actor="t",
                    person="airflow:scheduled")
    promotion.deploy_version(mlf, ledger, MODEL, v2, strategy="canary", share=0.2, reason="blessed",
                             move_key="deploy", person="airflow:scheduled")
    return mlf, ledger, tmp_path / "predictions"


def analysed(mlf, ledger, root: Path, canary: str, decision: str, run: str, *, minutes_after: int,
             deployed_at: str | None = None) -> None:
    """Store a canary analysis report of `canary` as the canary analysis would (its window ending
    `minutes_after` the deployment)."""
    deployed = deployed_at or next(e["at"] for e in reversed(ledger.entries(MODEL))
                                   if e["action"] == "deploy_canary" and e["to_version"] == canary)
    end = datetime.fromisoformat(deployed) + timedelta(minutes=minutes_after)
    report = {"decision": decision, "reasons": [f"{decision} because of the test"],
              "interval": {"start": (end - timedelta(minutes=10)).isoformat(), "end": end.isoformat(),
                           "deployed_at": deployed}}
    store_report(mlf, root, MODEL, canary, run, report)


def test_a_rollback_decided_on_a_stale_page_is_refused(env, versions) -> None:
    mlf, ledger, _ = env
    v1, v2, _ = versions
    promotion.promote_canary_now(mlf, ledger, MODEL, expected_canary=v2, expected_champion=v1, reason="looks good",
                                 move_key="promote", person="ana", reports_root=env[2])
    with pytest.raises(PromotionConflict, match=re.escape(f"champion is v{v2}, not v{v1} as shown")):
        promotion.rollback_champion(mlf, ledger, MODEL, "the page showed v1", move_key="rb-stale", person="bob",
                                    expected_champion=v1)
    assert promotion.registry_state(mlf, MODEL)["champion"] == v2 and ledger.find("rb-stale") is None
    done = promotion.rollback_champion(mlf, ledger, MODEL, "complaints about v2", move_key="rb", person="bob",
                                       expected_champion=v2)
    assert done["moves"]["champion"] == [v2, v1] and done["person"] == "bob"
    assert promotion.registry_state(mlf, MODEL)["champion"] == v1


def test_a_canary_promotion_needs_the_versions_shown(env, versions) -> None:
    mlf, ledger, root = env
    v1, v2, v3 = versions
    for canary, champion, message in ((v3, v1, f"canary is v{v2}, not v{v3} as shown"),
                                      (v2, v3, f"champion is v{v1}, not v{v3} as shown")):
        with pytest.raises(PromotionConflict, match=re.escape(message)):
            promotion.promote_canary_now(mlf, ledger, MODEL, expected_canary=canary, expected_champion=champion,
                                         reason="stale page", move_key=f"p-{canary}-{champion}", person="ana",
                                         reports_root=root)
    assert promotion.registry_state(mlf, MODEL) == {"champion": v1, "canary": v2, "shadow": None, "previous": None}
    assert [e["action"] for e in ledger.entries(MODEL)] == ["cold_start", "deploy_canary"]


def test_a_canary_the_analysis_would_roll_back_is_not_promoted_by_hand(env, versions) -> None:
    mlf, ledger, root = env
    v1, v2, _ = versions
    analysed(mlf, ledger, root, v2, "continue", "scheduled__1", minutes_after=10)
    analysed(mlf, ledger, root, v2, "rollback", "scheduled__2", minutes_after=20)  # the latest
    with pytest.raises(PromotionRefused, match=f"latest canary analysis of v{v2} decided to roll it back "
                                               r"\(rollback because of the test; report "):
        promotion.promote_canary_now(mlf, ledger, MODEL, expected_canary=v2, expected_champion=v1,
                                     reason="I trust it", move_key="p", person="ana", reports_root=root)
    assert promotion.registry_state(mlf, MODEL)["canary"] == v2 and ledger.find("p") is None


def test_a_manual_promotion_records_who_and_what_was_seen(env, versions) -> None:
    mlf, ledger, root = env
    v1, v2, _ = versions
    # a rollback decision about an earlier deployment of v2 does not count; the latest of this one does
    analysed(mlf, ledger, root, v2, "rollback", "old", minutes_after=30,
             deployed_at=(datetime.now(UTC) - timedelta(days=3)).isoformat())
    analysed(mlf, ledger, root, v2, "continue", "scheduled__1", minutes_after=10)
    out = promotion.promote_canary_now(mlf, ledger, MODEL, expected_canary=v2, expected_champion=v1,
                                       reason="the launch needs it today", move_key="p", person="ana",
                                       reports_root=root)
    assert (out["action"], out["from_version"], out["to_version"], out["person"]) == ("promote", v1, v2, "ana")
    assert promotion.registry_state(mlf, MODEL) == {"champion": v2, "canary": None, "shadow": None, "previous": v1}
    evidence = ledger.find("p")["evidence"]
    assert evidence["manual"] is True and evidence["decided_by"] == "ana"
    assert evidence["shown"] == {"champion": v1, "canary": v2}
    assert evidence["latest_analysis"]["decision"] == "continue"
    assert evidence["latest_analysis"]["report"].endswith("scheduled__1.json")
    again = promotion.promote_canary_now(mlf, ledger, MODEL, expected_canary=v2, expected_champion=v1,
                                         reason="the launch needs it today", move_key="p", person="ana",
                                         reports_root=root)  # a retry: the recorded move, not a second one
    assert again["replayed"] and again["seq"] == out["seq"] and len(ledger.entries(MODEL)) == 3


def run_dag(airflow_db, dag_id: str, conf: dict):
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import DagBag, sync_bag_to_db

    DagBundlesManager().sync_bundles_to_db()
    bag = DagBag(dag_folder=str(DAGS / f"{dag_id}.py"))
    assert not bag.import_errors
    sync_bag_to_db(bag, "dags-folder", None)
    dr = bag.dags[dag_id].test(run_conf=conf)
    return dr, dr.get_task_instances()[0]


def test_the_promote_canary_and_rollback_dags_check_what_the_page_showed(airflow_db, env, versions) -> None:
    mlf, ledger, _ = env
    v1, v2, _ = versions
    stale, ti = run_dag(airflow_db, "promote_canary", {"pipeline": PIPELINE, "expected_canary": v2,
                                                       "expected_champion": v2, "reason": "from a stale page"})
    assert stale.state == "failed" and ti.try_number == 1  # refused, not retried
    assert promotion.registry_state(mlf, MODEL)["canary"] == v2

    dr, ti = run_dag(airflow_db, "promote_canary", {"pipeline": PIPELINE, "expected_canary": v2,
                                                    "expected_champion": v1, "reason": "the launch needs it"})
    assert dr.state == "success"
    out = ti.xcom_pull(task_ids="promote")
    assert (out["action"], out["model"], out["person"]) == ("promote", MODEL, "dag_test")
    assert ledger.find(f"promote_canary/{dr.run_id}/promote")["evidence"]["manual"] is True
    assert ti.xcom_pull(task_ids="promote", key="_link_LedgerEntryLink").endswith(
        f"/crispflow/promotions/{MODEL}#seq-{out['seq']}")

    stale, ti = run_dag(airflow_db, "rollback", {"pipeline": PIPELINE, "reason": "the page was old",
                                                 "expected_champion": v1})
    assert stale.state == "failed" and ti.try_number == 1
    assert promotion.registry_state(mlf, MODEL)["champion"] == v2
    dr, ti = run_dag(airflow_db, "rollback", {"pipeline": PIPELINE, "reason": "complaints about v2",
                                              "expected_champion": v2})
    assert dr.state == "success" and promotion.registry_state(mlf, MODEL)["champion"] == v1
    assert ti.xcom_pull(task_ids="rollback")["model"] == MODEL
