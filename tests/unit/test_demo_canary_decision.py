"""The demo's canary phase when the scheduled canary analysis decided first: the decision comes from the ledger."""

from __future__ import annotations

from types import SimpleNamespace

from crispflow.model.registry import model_name
from crispflow.release import promotion
from crispflow.release.promotion import CONFIRMED, Ledger
from crispflow.stack.demo import _ledger_decision


def test_a_canary_decided_elsewhere_is_reported_from_the_ledger(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    ledger, model = Ledger(url), model_name("p")
    state = {"champion": "1"}
    ledger.append(model, "k1", promotion.deploy(state, "2", strategy="canary", share=0.2, reason="blessed"), state,
                  "test", state=CONFIRMED)
    settings = SimpleNamespace(ledger_url=url)
    assert _ledger_decision(settings, "p", "2") is None  # still live: nothing decided
    live = {"champion": "1", "canary": "2"}
    ledger.append(model, "k2", promotion.promote_canary(live, "2", "canary better", {}), live,
                  "canary_analysis/scheduled__x/analyse_and_act", state=CONFIRMED)
    decision = _ledger_decision(settings, "p", "2")
    assert decision is not None and decision["decision"] == "promote"
    assert "canary better" in decision["reasons"][0] and "scheduled__x" in decision["reasons"][0]
    assert _ledger_decision(settings, "p", "3") is None  # another canary: not this decision
