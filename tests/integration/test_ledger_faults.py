"""The ledger and the registry cannot silently diverge: a promotion through a fault-injecting proxy in front of a
real MLflow server fails at each registry write (500, timeout, 401, 403, connection dropped AFTER the server did the
write); afterwards the champion is the old one or the move is complete — never anything else —, `verify` reports
only a pending move (never an outside one), and the retry completes it so that ledger and registry agree. 401/403
fail without retry (RegistryAccessDenied). `crispflow ledger verify` exits 1 on the pending move, 0 after."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from support.fault_proxy import Fault, FaultProxy
from support.mlflow_server import small_versions

from crispflow.model import registry
from crispflow.release import promotion
from crispflow.release.promotion import Ledger

pytest_plugins = ["support.mlflow_server"]
pytestmark = pytest.mark.slow
PIPELINE = "t_faults"
NAME = f"crispflow-{PIPELINE}"
API = "/api/2.0/mlflow"
# every registry write of a promote (canary v2 → champion; v1 kept as previous; canary alias and share cleared),
# in the order crispflow makes them, and whether `champion` has moved before that write
STEPS = {
    "share_tag": (Fault("POST", f"{API}/registered-models/set-tag", "crispflow.canary_share", ""), False),
    "previous": (Fault("POST", f"{API}/registered-models/alias", '"alias": "previous"', ""), False),
    "canary_delete": (Fault("DELETE", f"{API}/registered-models/alias", "canary", ""), False),
    "champion": (Fault("POST", f"{API}/registered-models/alias", '"alias": "champion"', ""), False),
    "record_artifact": (Fault("PUT", "/api/2.0/mlflow-artifacts/artifacts", "promotions/", ""), True),
    "record_tag": (Fault("POST", f"{API}/model-versions/set-tag", "crispflow.ledger.", ""), True),
    # the read-back before confirming: the fourth read of `champion` in a promotion (the decision's state, the
    # outside-move check, the check-and-set's registry state, then the read-back)
    "read_back": (Fault("GET", f"{API}/registered-models/alias", "alias=champion", "", nth=4), True),
}
KINDS = ("500", "timeout", "401", "403", "drop")


@pytest.fixture(scope="module")
def direct(mlflow_server):
    """A client straight to the server (set-up and checks)."""
    return registry.client(mlflow_server.url)


@pytest.fixture(scope="module")
def versions(direct) -> list[str]:
    return small_versions(direct, NAME, PIPELINE, 2, rows=600)


@pytest.fixture(scope="module")
def proxy(mlflow_server):
    with FaultProxy(mlflow_server.url) as running:
        yield running


@pytest.fixture
def through(mlflow_server, proxy, live, monkeypatch):
    """A client through the proxy: no MLflow-level retries, a 2 s timeout (the proxy's hang is 6 s). MLflow caches
    a run's artifact repository (with its server URL) per run: emptied, so the promotion records go through the
    proxy too."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.tracking._tracking_service import utils

    utils._artifact_repos_cache.clear()

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    proxy.disarm()
    proxy.fired.clear()
    mlflow.set_tracking_uri(proxy.url)
    yield MlflowClient(tracking_uri=proxy.url, registry_uri=proxy.url)
    mlflow.set_tracking_uri(mlflow_server.url)


@pytest.fixture
def live(direct, versions, tmp_path) -> Ledger:
    """v1 champion, v2 canary, both moved through the ledger."""
    for alias in promotion.SERVING_ALIASES:
        if registry.alias_version(direct, NAME, alias):
            direct.delete_registered_model_alias(NAME, alias)
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    promotion.apply(direct, ledger, NAME, promotion.cold_start({}, versions[0], "first"), move_key="cold",
                    actor="t", person="airflow:scheduled")
    promotion.deploy_version(direct, ledger, NAME, versions[1], strategy="canary", share=0.5, reason="blessed",
                             move_key="deploy", person="ana")
    return ledger


def promote(mlf, ledger: Ledger, versions: list[str]) -> dict:
    transition = None
    if ledger.find("promote") is None:
        state = promotion.current_state(mlf, ledger, NAME)
        transition = promotion.promote_canary(state, versions[1], "canary won", {"report": "x"})
    return promotion.apply(mlf, ledger, NAME, transition, move_key="promote", actor="dag/r/analyse",
                           person="airflow:scheduled")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("step", list(STEPS))
def test_a_fault_at_any_write_leaves_champion_old_or_the_move_complete(step, kind, proxy, through, direct, live,
                                                                       versions) -> None:
    from crispflow_airflow.exceptions import RegistryAccessDenied, as_airflow_errors

    v1, v2 = versions
    template, moved_before = STEPS[step]
    fault = Fault(template.method, template.path, template.needle, kind, hang=6.0, nth=template.nth)
    proxy.arm(fault)
    if kind in ("401", "403"):  # credentials refused: a typed error Airflow does not retry
        with pytest.raises(RegistryAccessDenied, match=r"UNAUTHENTICATED|PERMISSION_DENIED"), as_airflow_errors():
            promote(through, live, versions)
    else:
        with pytest.raises(Exception):  # noqa: B017 - 5xx, timeout and a dropped connection surface differently
            promote(through, live, versions)
    assert proxy.fired == [fault], f"the fault at {step} never fired: {proxy.requests[-12:]}"

    after_fault = promotion.registry_state(direct, NAME)
    expected_champion = v2 if moved_before or (step == "champion" and kind == "drop") else v1
    assert after_fault["champion"] == expected_champion  # old, or the move complete: never anything else
    if expected_champion == v2:
        assert after_fault == {"champion": v2, "canary": None, "shadow": None, "previous": v1}
    found = promotion.verify(direct, live, NAME)
    assert found and {d.kind for d in found} == {"pending"}, found  # the ledger knows, nothing looks "outside"
    assert live.find("promote")["state"] == promotion.INTENT

    again = promote(through, live, versions)  # the task's retry (or the next promotion's reconcile)
    assert again["state"] == promotion.CONFIRMED and again["replayed"]
    assert promotion.verify(direct, live, NAME) == []
    assert promotion.registry_state(direct, NAME) == {"champion": v2, "canary": None, "shadow": None, "previous": v1}
    assert [e["state"] for e in live.entries(NAME)] == [promotion.CONFIRMED] * 3
    assert direct.get_model_version(NAME, v2).tags["crispflow.ledger.3.person"] == "airflow:scheduled"


def test_an_unreachable_registry_refuses_a_new_promotion_and_records_nothing(proxy, through, live, versions) -> None:
    """With a move pending, the next promotion must reconcile it first: if the registry fails there, nothing new is
    recorded (no second intent piled on the first)."""
    proxy.arm(Fault("POST", f"{API}/registered-models/alias", '"alias": "champion"', "500"))
    with pytest.raises(Exception):  # noqa: B017
        promote(through, live, versions)
    proxy.arm(Fault("POST", f"{API}/registered-models/alias", '"alias": "champion"', "500"))
    with pytest.raises(Exception):  # noqa: B017 - the reconcile of the pending promote fails: refused
        promotion.rollback_champion(through, live, NAME, "complaints", move_key="dag/r2/rollback", person="bo")
    assert [e["action"] for e in live.entries(NAME)] == ["cold_start", "deploy_canary", "promote"]
    assert live.find("dag/r2/rollback") is None


def test_ledger_verify_exits_1_on_a_pending_move_and_0_once_completed(mlflow_server, proxy, through, direct, live,
                                                                    versions, tmp_path) -> None:
    proxy.arm(Fault("POST", f"{API}/registered-models/alias", '"alias": "champion"', "drop"))
    with pytest.raises(Exception):  # noqa: B017
        promote(through, live, versions)
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server.url, "CRISPFLOW_LEDGER_URL": live.url}
    argv = [sys.executable, "-m", "crispflow.stack.main", "ledger", "verify", "--pipeline", PIPELINE]
    human = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    assert human.returncode == 1, human.stderr
    assert "DIVERGED" in human.stdout and "pending in ledger entry 3" in human.stdout
    machine = subprocess.run([*argv, "--json"], env=env, capture_output=True, text=True, timeout=120)
    report = json.loads(machine.stdout)
    assert machine.returncode == 1 and not report["agree"]
    assert {d["kind"] for d in report["pipelines"][PIPELINE]["divergences"]} == {"pending"}

    promotion.reconcile(direct, live, NAME)
    ok = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and "agree" in ok.stdout, ok.stdout + ok.stderr

    direct.set_registered_model_alias(NAME, "champion", versions[0])  # by hand, bypassing crispflow
    outside = subprocess.run([*argv, "--json"], env=env, capture_output=True, text=True, timeout=120)
    assert outside.returncode == 1
    assert json.loads(outside.stdout)["pipelines"][PIPELINE]["divergences"][0]["kind"] == "outside_move"
