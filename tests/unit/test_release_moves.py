"""deploy_version and rollback_champion without Airflow: what they decide, and that a retry never moves twice."""

from __future__ import annotations

import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from support.mlflow_server import register_versions

from crispflow.model import registry
from crispflow.release import promotion
from crispflow.release.promotion import Ledger, PromotionRefused, deploy_version, rollback_champion

pytest_plugins = ["support.mlflow_server"]
pytestmark = pytest.mark.slow
NAME = "crispflow-t_moves"
SUMMARY = {"seq", "action", "from_version", "to_version", "moves", "reason", "replayed"}


@pytest.fixture(scope="module")
def mlf(mlflow_server):
    return registry.client(mlflow_server.url)


@pytest.fixture(scope="module")
def versions(mlf) -> list[str]:
    """Three complete versions of a small model: v1 and v2 blessed, v3 not."""
    df = pd.read_parquet("include/data/lending_club.parquet").head(1000)
    x = df[["int_rate", "annual_inc"]].astype("float64")
    models = [LogisticRegression(C=0.1 * (i + 1), max_iter=300).fit(x, df["Class"] == "bad") for i in range(3)]
    return register_versions(mlf, NAME, "t_moves", x, models, blessed=[True, True, False])


@pytest.fixture
def ledger(mlf, versions, tmp_path) -> Ledger:
    """A fresh ledger over a registry where only v1 is live (the champion)."""
    for alias in promotion.SERVING_ALIASES:
        if registry.alias_version(mlf, NAME, alias):
            mlf.delete_registered_model_alias(NAME, alias)
    registry.set_alias(mlf, NAME, "champion", versions[0])
    return Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")


def deploy(mlf, ledger, version: str, strategy: str = "canary", key: str = "dag/r/deploy") -> dict:
    return deploy_version(mlf, ledger, NAME, version, strategy=strategy, share=0.25, reason="blessed challenger",
                          move_key=key)


def test_nothing_to_deploy_comes_back_with_the_reason(mlf, versions, ledger) -> None:
    v1, v2, v3 = versions
    assert deploy(mlf, ledger, v2, strategy="none") == {
        "skipped": "deployment strategy 'none': the version stays `challenger`"}
    assert deploy(mlf, ledger, v3) == {"skipped": f"{NAME} v{v3} is not blessed: not deployed"}
    assert deploy(mlf, ledger, v1) == {
        "skipped": f"{NAME} v{v1} is the champion already (cold start): no canary needed"}
    mlf.delete_registered_model_alias(NAME, "champion")  # no champion at all: the gate's cold start crowns one
    assert "champion already (cold start)" in deploy(mlf, ledger, v2)["skipped"]
    assert ledger.entries(NAME) == []


def test_a_blessed_version_goes_canary_once(mlf, versions, ledger) -> None:
    v1, v2, _ = versions
    first = deploy(mlf, ledger, v2)
    assert set(first) == SUMMARY and first["action"] == "deploy_canary" and not first["replayed"]
    assert (first["from_version"], first["to_version"]) == (None, v2)
    assert promotion.registry_state(mlf, NAME)["canary"] == v2
    assert mlf.get_registered_model(NAME).tags[promotion.CANARY_SHARE_TAG] == "0.25"
    assert ledger.find("dag/r/deploy")["evidence"] == {"verdict_blessed": True}

    # the retry: the alias lost in between, and the version no longer blessed; it only completes the recorded move
    mlf.delete_registered_model_alias(NAME, "canary")
    mlf.set_model_version_tag(NAME, v2, "crispflow.blessed", "false")
    try:
        again = deploy(mlf, ledger, v2)
    finally:
        mlf.set_model_version_tag(NAME, v2, "crispflow.blessed", "true")
    assert again == {**first, "replayed": True}
    assert len(ledger.entries(NAME)) == 1 and promotion.registry_state(mlf, NAME)["canary"] == v2
    assert promotion.registry_state(mlf, NAME)["champion"] == v1


def test_rollback_puts_the_previous_champion_back_once(mlf, versions, ledger) -> None:
    v1, v2, _ = versions
    deploy(mlf, ledger, v2, strategy="blue_green")
    assert promotion.registry_state(mlf, NAME)["champion"] == v2

    out = rollback_champion(mlf, ledger, NAME, "complaints", move_key="dag/r/rollback")
    assert set(out) == SUMMARY and out["action"] == "rollback" and out["moves"]["champion"] == [v2, v1]
    assert promotion.registry_state(mlf, NAME) == {"champion": v1, "canary": None, "shadow": None, "previous": None}
    assert mlf.get_model_version(NAME, v2).tags[promotion.ROLLED_BACK_TAG] == "dag/r/rollback"

    registry.set_alias(mlf, NAME, "champion", v2)  # the registry half-done when the first try died
    again = rollback_champion(mlf, ledger, NAME, "complaints", move_key="dag/r/rollback")
    assert again == {**out, "replayed": True}
    assert [e["action"] for e in ledger.entries(NAME)] == ["blue_green", "rollback"]
    assert promotion.registry_state(mlf, NAME)["champion"] == v1


def test_rollback_without_a_previous_champion_is_refused(mlf, versions, ledger) -> None:
    with pytest.raises(PromotionRefused, match="no previous champion"):
        rollback_champion(mlf, ledger, NAME, "complaints", move_key="dag/r/rollback")
    assert ledger.entries(NAME) == []
