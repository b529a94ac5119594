"""How the api-server reaches what the pages show: MLflow (read; a read-only user where auth is on), the
promotion ledger (a read-only connection when one is configured), the lake and the prediction store.

Environment: `MLFLOW_TRACKING_URI` (+ `MLFLOW_TRACKING_USERNAME`/`MLFLOW_TRACKING_PASSWORD`, read by MLflow's
client), `CRISPFLOW_LEDGER_READ_URL` falling back to `CRISPFLOW_LEDGER_URL`, `CRISPFLOW_LAKE_URL`,
`CRISPFLOW_PREDICTIONS_URL`, both through the lake's Airflow connection (`CRISPFLOW_LAKE_CONN_ID`; a read-only
one for the api-server in production), with the hooks the tasks use.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from crispflow.lake import Lake
    from crispflow.release.promotion import Ledger


@dataclass(frozen=True)
class Sources:
    """The clients and roots of one api-server process."""

    mlf: MlflowClient
    ledger_url: str
    lake: Lake
    pred_root: Any
    pipelines: tuple[str, ...]

    @property
    def ledger(self) -> Ledger:
        """The ledger, connected on first use (so a ledger that is down fails only the pages that read it)."""
        return _ledger(self.ledger_url)

    def models(self) -> dict[str, str]:
        """Registered model name → pipeline, for every pipeline spec (the only models the pages show)."""
        from crispflow.model.registry import model_name

        return {model_name(p): p for p in self.pipelines}


_lock = threading.Lock()
_ledgers: dict[str, Ledger] = {}


def ledger_url() -> str:
    from crispflow.settings import Settings

    return os.environ.get("CRISPFLOW_LEDGER_READ_URL") or Settings.from_env().ledger_url


def _ledger(url: str) -> Ledger:
    """One Ledger (one connection pool) per URL and process."""
    from crispflow.release.promotion import Ledger

    with _lock:
        if url not in _ledgers:
            _ledgers[url] = Ledger(url, read_only=True)
        return _ledgers[url]


def sources() -> Sources:
    """Resolved from the environment on each call (cheap, no I/O); the ledger's engine is kept per URL."""
    from crispflow.model.registry import client
    from crispflow.settings import Settings
    from crispflow.spec import list_specs
    from crispflow_airflow.hooks.lake import LakeHook
    from crispflow_airflow.hooks.predictions import PredictionStoreHook

    settings = Settings.from_env()
    return Sources(mlf=client(settings.mlflow_tracking_uri), ledger_url=ledger_url(),
                   lake=LakeHook().get_lake(), pred_root=PredictionStoreHook().get_root(),
                   pipelines=tuple(list_specs(settings)))
