"""DriftTrigger: poll the drift-monitoring store in the triggerer until an episode should fire a retrain."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent


class DriftTrigger(BaseTrigger):
    """Fires a TriggerEvent `{"status": "fire", "decision": ...}` when drift persists (see
    `crispflow.monitoring.episodes`), or `{"status": "timeout", ...}` at the deadline.

    Holds no state that matters: every poll re-reads the store, so a triggerer restart simply resumes.

    :param model: registered model name (crispflow-<pipeline>)
    :param root_url: URL of the predictions root holding `<model>/drift/`; None: the settings' predictions URL
    :param conn_id: Airflow connection for the root (an aws connection for s3://); None: the lake's connection,
        "": none
    :param policy: the resolved `DriftPolicy` (the spec's `drift_watch:` tightened by the run; as a dict)
    :param poll_interval: seconds between checks
    :param deadline: ISO timestamp (UTC) after which a timeout event is sent
    """

    def __init__(self, *, model: str, root_url: str | None = None, conn_id: str | None = None,
                 policy: Mapping[str, Any] | None = None, poll_interval: float = 300.0,
                 deadline: str | None = None) -> None:
        super().__init__()
        self.model = model
        self.root_url = root_url
        self.conn_id = conn_id
        self.policy = dict(policy or {})
        self.poll_interval = float(poll_interval)
        self.deadline = deadline

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (f"{type(self).__module__}.{type(self).__qualname__}",
                {"model": self.model, "root_url": self.root_url, "conn_id": self.conn_id,
                 "policy": dict(self.policy), "poll_interval": self.poll_interval, "deadline": self.deadline})

    def check(self) -> dict[str, Any]:
        """One check of the store (blocking I/O: `run` calls it in a thread)."""
        from crispflow.monitoring.episodes import check
        from crispflow_airflow.hooks.predictions import PredictionStoreHook

        root = PredictionStoreHook(self.root_url, self.conn_id).get_root()
        return check(root, self.model, self.policy, datetime.now(UTC)).to_dict()

    def _deadline(self) -> datetime | None:
        return datetime.fromisoformat(self.deadline) if self.deadline else None

    async def run(self) -> AsyncIterator[TriggerEvent]:
        deadline = self._deadline()
        checks = 0
        while True:
            try:
                decision = await asyncio.to_thread(self.check)
            except Exception as exc:  # the store unreachable: keep polling until the deadline
                self.log.warning("drift check of %s failed (%s: %s); retrying", self.model, type(exc).__name__, exc)
                decision = None
            checks += 1
            if decision is not None and decision["fire"]:
                yield TriggerEvent({"status": "fire", "decision": decision, "checks": checks})
                return
            if decision is not None:
                self.log.info("%s: no retrain (%s)", self.model, decision["blocked_by"])
            now = datetime.now(UTC)
            if deadline is not None and now >= deadline:
                yield TriggerEvent({"status": "timeout", "decision": decision, "checks": checks,
                                    "deadline": self.deadline})
                return
            wait = self.poll_interval if deadline is None else min(self.poll_interval,
                                                                   (deadline - now).total_seconds())
            await asyncio.sleep(max(wait, 0.0))
