"""Alias moves against a real MLflow server: intent in the ledger, then the registry, then confirmed; retries
complete a pending move; one winner; the person in every entry and in MLflow."""

from __future__ import annotations

import threading

import mlflow
import pytest
from support.mlflow_server import small_versions

from crispflow.model import registry
from crispflow.release import promotion
from crispflow.release.promotion import Ledger, PromotionConflict, PromotionRefused

pytest_plugins = ["support.mlflow_server"]
pytestmark = pytest.mark.slow
NAME = "crispflow-t_promo"


@pytest.fixture(scope="module")
def mlf(mlflow_server):
    return registry.client(mlflow_server.url)


@pytest.fixture(scope="module")
def versions(mlf) -> list[str]:
    """Three complete, blessed versions of a small model."""
    return small_versions(mlf, NAME, "t_promo", 3, rows=1500)


@pytest.fixture
def ledger(tmp_path) -> Ledger:
    return Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")


def state(mlf) -> dict:
    return promotion.registry_state(mlf, NAME)


def test_cold_start_canary_promote_rollback(mlf, versions, ledger) -> None:
    v1, v2, _ = versions
    for alias in promotion.SERVING_ALIASES:  # a clean registry state for this test
        if registry.alias_version(mlf, NAME, alias):
            mlf.delete_registered_model_alias(NAME, alias)
    apply = lambda t, key: promotion.apply(mlf, ledger, NAME, t, move_key=key, actor="test",  # noqa: E731
                                           person="ana")

    apply(promotion.cold_start(state(mlf), v1, "first"), "k-cold")
    apply(promotion.deploy(state(mlf), v2, strategy="canary", share=0.25, reason="blessed"), "k-canary")
    assert state(mlf)["canary"] == v2
    assert mlf.get_registered_model(NAME).tags[promotion.CANARY_SHARE_TAG] == "0.25"

    promoted = apply(promotion.promote_canary(state(mlf), v2, "non-inferior", {"labels": 300}), "k-promote")
    assert promoted["from_version"] == v1 and promoted["to_version"] == v2
    assert state(mlf) == {"champion": v2, "canary": None, "shadow": None, "previous": v1}

    apply(promotion.rollback(state(mlf), "bad outcome reported"), "k-rollback")
    assert state(mlf) == {"champion": v1, "canary": None, "shadow": None, "previous": None}

    entries = ledger.entries(NAME)
    assert [e["action"] for e in entries] == ["cold_start", "deploy_canary", "promote", "rollback"]
    assert entries[2]["moves"] == {"champion": [v1, v2], "previous": [None, v1], "canary": [v2, None]}
    assert entries[2]["evidence"] == {"labels": 300}
    # and in MLflow: the entry as an artifact of the version's run, and a tag on the version
    run_id = mlf.get_model_version(NAME, v2).run_id
    recorded = mlflow.artifacts.load_dict(f"runs:/{run_id}/promotions/00003-promote.json")
    assert recorded["moves"]["champion"] == [v1, v2]
    assert mlf.get_model_version(NAME, v2).tags["crispflow.ledger.3"] == "promote"
    assert mlf.get_model_version(NAME, v2).tags["crispflow.ledger.3.person"] == "ana"
    assert recorded["person"] == "ana" and recorded["state"] == promotion.CONFIRMED
    assert {e["person"] for e in entries} == {"ana"} and promotion.verify(mlf, ledger, NAME) == []


def crown(mlf, ledger: Ledger, version: str) -> None:
    """A clean registry with `version` as champion, crowned through the ledger."""
    for alias in promotion.SERVING_ALIASES:
        if registry.alias_version(mlf, NAME, alias):
            mlf.delete_registered_model_alias(NAME, alias)
    promotion.apply(mlf, ledger, NAME, promotion.cold_start({}, version, "first"), move_key=f"crown-{version}",
                    actor="t", person="airflow:scheduled")


def test_a_retried_move_is_not_made_twice(mlf, versions, ledger) -> None:
    v1, _, v3 = versions
    crown(mlf, ledger, v1)
    switch = promotion.deploy(state(mlf), v3, strategy="blue_green", share=1.0, reason="switch")
    # the first try recorded its intent and died after moving `previous` (the registry half-done, champion old)
    pending = ledger.append(NAME, "k-bg", switch, state(mlf), "try 1", person="ana")
    registry.set_alias(mlf, NAME, "previous", v1)
    assert state(mlf)["champion"] == v1
    again = promotion.apply(mlf, ledger, NAME, None, move_key="k-bg", actor="try 2", person="ana")
    assert again["replayed"] and again["seq"] == pending["seq"] and again["state"] == promotion.CONFIRMED
    assert len(ledger.entries(NAME)) == 2
    assert state(mlf)["champion"] == v3 and state(mlf)["previous"] == v1
    third = promotion.apply(mlf, ledger, NAME, None, move_key="k-bg", actor="try 3", person="ana")
    assert third["replayed"] and len(ledger.entries(NAME)) == 2


def test_an_incomplete_version_is_refused_before_anything_is_recorded(mlf, versions, ledger) -> None:
    source = mlf.get_model_version(NAME, versions[0]).source
    half = mlf.create_model_version(NAME, source=source, run_id=mlf.get_model_version(NAME, versions[0]).run_id,
                                    model_id=source.rsplit("/", 1)[-1])
    crown(mlf, ledger, versions[0])
    with pytest.raises(PromotionRefused, match="not complete"):
        promotion.apply(mlf, ledger, NAME, promotion.deploy(state(mlf), str(half.version), strategy="canary",
                                                            share=0.1, reason="x"), move_key="k-half", actor="t",
                        person="ana")
    assert len(ledger.entries(NAME)) == 1
    assert state(mlf)["canary"] != str(half.version)


def test_two_concurrent_promotions_one_wins(mlf, versions, ledger) -> None:
    v1, v2, v3 = versions
    crown(mlf, ledger, v1)
    barrier, outcomes = threading.Barrier(2), {}

    def deploy(version: str) -> None:
        client = registry.client()  # one client per promoter, same server
        decided = promotion.current_state(client, ledger, NAME)  # both decide on the same state
        barrier.wait()
        try:
            promotion.apply(client, ledger, NAME, promotion.deploy(decided, version, strategy="blue_green",
                                                                   share=1.0, reason="race"),
                            move_key=f"race-{version}", actor=version, person="ana")
            outcomes[version] = "won"
        except PromotionConflict as exc:
            outcomes[version] = str(exc)

    threads = [threading.Thread(target=deploy, args=(v,)) for v in (v2, v3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [v for v, o in outcomes.items() if o == "won"]
    assert len(winners) == 1, outcomes
    assert state(mlf)["champion"] == winners[0]
    assert [e["to_version"] for e in ledger.entries(NAME)] == [v1, *winners]
    assert promotion.verify(mlf, ledger, NAME) == []
