"""deploy_version and rollback_champion without Airflow: what they decide, that a retry never moves twice, the
intent → apply → confirm protocol (a pending move completed or abandoned, never half), the person in every entry,
`verify` and outside moves (a real MLflow server, a SQLite ledger)."""

from __future__ import annotations

import pytest
from support.mlflow_server import small_versions

from crispflow.model import registry
from crispflow.release import promotion
from crispflow.release.promotion import (
    CONFIRMED,
    Ledger,
    OutsideMove,
    PromotionConflict,
    PromotionRefused,
    deploy_version,
    rollback_champion,
)

pytest_plugins = ["support.mlflow_server"]
pytestmark = pytest.mark.slow
NAME = "crispflow-t_moves"
SUMMARY = {"seq", "action", "from_version", "to_version", "moves", "reason", "person", "state", "replayed"}


@pytest.fixture(scope="module")
def mlf(mlflow_server):
    return registry.client(mlflow_server.url)


@pytest.fixture(scope="module")
def versions(mlf) -> list[str]:
    """Three complete versions of a small model: v1 and v2 blessed, v3 not."""
    return small_versions(mlf, NAME, "t_moves", 3, blessed=[True, True, False])


@pytest.fixture
def ledger(mlf, versions, tmp_path) -> Ledger:
    """A fresh ledger over a registry where only v1 is live (the champion, crowned through the ledger)."""
    for alias in promotion.SERVING_ALIASES:
        if registry.alias_version(mlf, NAME, alias):
            mlf.delete_registered_model_alias(NAME, alias)
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    promotion.apply(mlf, ledger, NAME, promotion.cold_start({}, versions[0], "first"), move_key="dag/r0/bless",
                    actor="dag/r0/bless", person="airflow:scheduled")
    return ledger


def deploy(mlf, ledger, version: str, strategy: str = "canary", key: str = "dag/r/deploy") -> dict:
    return deploy_version(mlf, ledger, NAME, version, strategy=strategy, share=0.25, reason="blessed challenger",
                          move_key=key, person="ana")


def test_nothing_to_deploy_comes_back_with_the_reason(mlf, versions, ledger) -> None:
    v1, v2, v3 = versions
    assert deploy(mlf, ledger, v2, strategy="none") == {
        "skipped": "deployment strategy 'none': the version stays `challenger`"}
    assert deploy(mlf, ledger, v3) == {"skipped": f"{NAME} v{v3} is not blessed: not deployed"}
    assert deploy(mlf, ledger, v1) == {
        "skipped": f"{NAME} v{v1} is the champion already (cold start): no canary needed"}
    assert [e["action"] for e in ledger.entries(NAME)] == ["cold_start"]


def test_a_blessed_version_goes_canary_once_for_a_person(mlf, versions, ledger) -> None:
    v1, v2, _ = versions
    first = deploy(mlf, ledger, v2)
    assert set(first) == SUMMARY and first["action"] == "deploy_canary" and not first["replayed"]
    assert (first["from_version"], first["to_version"], first["person"], first["state"]) == (None, v2, "ana",
                                                                                             CONFIRMED)
    assert promotion.registry_state(mlf, NAME)["canary"] == v2
    assert mlf.get_registered_model(NAME).tags[promotion.CANARY_SHARE_TAG] == "0.25"
    assert ledger.find("dag/r/deploy")["evidence"] == {"verdict_blessed": True}
    tags = mlf.get_model_version(NAME, v2).tags  # the promotion artifact and tags name the person
    assert tags[f"crispflow.ledger.{first['seq']}"] == "deploy_canary"
    assert tags[f"crispflow.ledger.{first['seq']}.person"] == "ana"

    # the retry (even with the version no longer blessed) decides nothing again and moves nothing twice
    mlf.set_model_version_tag(NAME, v2, "crispflow.blessed", "false")
    try:
        again = deploy(mlf, ledger, v2)
    finally:
        mlf.set_model_version_tag(NAME, v2, "crispflow.blessed", "true")
    assert again == {**first, "replayed": True}
    assert [e["action"] for e in ledger.entries(NAME)] == ["cold_start", "deploy_canary"]
    assert promotion.registry_state(mlf, NAME)["champion"] == v1 and promotion.verify(mlf, ledger, NAME) == []


def test_a_pending_intent_is_completed_by_its_retry_champion_last(mlf, versions, ledger) -> None:
    """The first try recorded its intent and died after moving `previous` only: the registry is half-done, the
    champion unchanged; verify says so; the retry completes the move and confirms it."""
    v1, v2, _ = versions
    transition = promotion.deploy({"champion": v1}, v2, strategy="blue_green", share=1.0, reason="switch")
    ledger.append(NAME, "dag/r/switch", transition, promotion.registry_state(mlf, NAME), "dag/r/switch", person="ana")
    registry.set_alias(mlf, NAME, "previous", v1)  # the only write that happened
    found = promotion.verify(mlf, ledger, NAME)
    assert {(d.alias, d.kind, d.ledger, d.registry) for d in found} == {
        ("champion", "pending", v2, v1), ("previous", "pending", v1, v1), ("canary", "pending", None, None)}
    assert promotion.registry_state(mlf, NAME)["champion"] == v1  # unchanged, not half
    out = deploy_version(mlf, ledger, NAME, v2, strategy="blue_green", share=1.0, reason="switch",
                         move_key="dag/r/switch", person="ana")
    assert out["replayed"] and out["state"] == CONFIRMED and out["person"] == "ana"
    assert promotion.registry_state(mlf, NAME) == {"champion": v2, "canary": None, "shadow": None, "previous": v1}
    assert promotion.verify(mlf, ledger, NAME) == []


def test_the_next_promotion_reconciles_the_pending_tail_first(mlf, versions, ledger) -> None:
    v1, v2, _ = versions
    ledger.append(NAME, "dag/r/deploy", promotion.deploy({"champion": v1}, v2, strategy="canary", share=0.25,
                                                         reason="x"), {}, "dag/r/deploy", person="ana")
    state = promotion.current_state(mlf, ledger, NAME)
    assert state["canary"] is None  # the pending deploy is not trusted yet
    shadow = promotion.deploy(state, v2, strategy="shadow", share=0.5, reason="mirror")
    out = promotion.apply(mlf, ledger, NAME, shadow, move_key="dag/r2/shadow", actor="dag/r2/shadow", person="bo")
    assert out["seq"] == 3 and out["state"] == CONFIRMED
    assert ledger.find("dag/r/deploy")["state"] == CONFIRMED  # completed first
    assert promotion.registry_state(mlf, NAME) == {"champion": v1, "canary": v2, "shadow": v2, "previous": None}
    assert promotion.verify(mlf, ledger, NAME) == []


def test_a_pending_intent_whose_version_is_gone_is_abandoned_and_restored(mlf, versions, ledger) -> None:
    v1, v2, _ = versions
    ledger.append(NAME, "dag/r/ghost", promotion.Transition("blue_green", {"champion": "999", "previous": v1},
                                                            {"champion": v1}, "x"), {}, "dag/r/ghost", person="ana")
    registry.set_alias(mlf, NAME, "previous", v1)
    promotion.reconcile(mlf, ledger, NAME)
    assert ledger.find("dag/r/ghost")["state"] == promotion.ABANDONED
    assert promotion.registry_state(mlf, NAME) == {"champion": v1, "canary": None, "shadow": None, "previous": None}
    assert promotion.verify(mlf, ledger, NAME) == []
    assert deploy(mlf, ledger, v2)["action"] == "deploy_canary"  # nothing pending any more


def test_rollback_puts_the_previous_champion_back_once(mlf, versions, ledger) -> None:
    v1, v2, _ = versions
    deploy(mlf, ledger, v2, strategy="blue_green")
    assert promotion.registry_state(mlf, NAME)["champion"] == v2

    out = rollback_champion(mlf, ledger, NAME, "complaints", move_key="dag/r/rollback", person="bo")
    assert set(out) == SUMMARY and out["action"] == "rollback" and out["moves"]["champion"] == [v2, v1]
    assert out["person"] == "bo"
    assert promotion.registry_state(mlf, NAME) == {"champion": v1, "canary": None, "shadow": None, "previous": None}
    assert mlf.get_model_version(NAME, v2).tags[promotion.ROLLED_BACK_TAG] == "dag/r/rollback"

    again = rollback_champion(mlf, ledger, NAME, "complaints", move_key="dag/r/rollback", person="bo")
    assert again == {**out, "replayed": True}
    assert [e["action"] for e in ledger.entries(NAME)] == ["cold_start", "blue_green", "rollback"]
    assert promotion.registry_state(mlf, NAME)["champion"] == v1


def test_rollback_without_a_previous_champion_is_refused(mlf, versions, ledger) -> None:
    with pytest.raises(PromotionRefused, match="no previous champion"):
        rollback_champion(mlf, ledger, NAME, "complaints", move_key="dag/r/rollback", person="bo")
    assert len(ledger.entries(NAME)) == 1


def test_an_outside_move_is_seen_recorded_and_makes_a_stale_promotion_conflict(mlf, versions, ledger) -> None:
    v1, v2, v3 = versions
    mlf.set_registered_model_alias(NAME, "champion", v3)  # straight in MLflow, bypassing crispflow
    found = promotion.verify(mlf, ledger, NAME)
    assert [(d.alias, d.kind, d.ledger, d.registry) for d in found] == [("champion", "outside_move", v1, v3)]
    assert "moved outside crispflow" in str(found[0])
    with pytest.raises(PromotionConflict, match=f"champion expected v{v1}, is v{v3}"):
        deploy(mlf, ledger, v2)  # decided on the ledger's champion: the outside move is recorded, then it conflicts
    entry = ledger.entries(NAME)[-1]
    assert (entry["action"], entry["person"], entry["moves"]) == (
        "outside_move", promotion.UNKNOWN_PERSON, {"champion": [v1, v3]})
    assert promotion.verify(mlf, ledger, NAME) == [] and promotion.registry_state(mlf, NAME)["champion"] == v3


def test_check_outside_moves_records_once_and_raises_naming_alias_and_versions(mlf, versions, ledger) -> None:
    _, v2, _ = versions
    promotion.check_outside_moves(mlf, ledger, NAME, actor="watch/r1/check")  # nothing moved: silent
    mlf.set_registered_model_alias(NAME, "canary", v2)
    with pytest.raises(OutsideMove, match=f"canary unset → v{v2}.*ledger entry 2 by an unknown person"):
        promotion.check_outside_moves(mlf, ledger, NAME, actor="watch/r2/check")
    promotion.check_outside_moves(mlf, ledger, NAME, actor="watch/r3/check")  # recorded: the next run proceeds
    assert [e["action"] for e in ledger.entries(NAME)] == ["cold_start", "outside_move"]
