"""Where things live: every path and URL crispflow uses, from the environment with local defaults."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

_PACKAGE_ROOT = Path(__file__).resolve().parent


def project_root() -> Path:
    """The checkout crispflow runs from: the repo (editable install) or, failing that, the cwd."""
    if env := os.environ.get("CRISPFLOW_PROJECT_ROOT"):
        return Path(env).resolve()
    repo = _PACKAGE_ROOT.parents[1]
    return repo if (repo / "dags").is_dir() else Path.cwd()


@dataclass(frozen=True)
class Settings:
    """Resolved locations. Build with `Settings.from_env()`; pass around instead of reading env twice."""

    project_root: Path
    home: Path  # state of the local stack (.crispflow/)
    pipelines_dir: Path
    lake_url: str  # file:///... locally, s3://bucket/prefix in production
    lake_conn_id: str | None  # Airflow connection for the lake (an aws connection for s3://)
    mlflow_tracking_uri: str
    predictions_url: str  # the model server's prediction log and feedback (under the lake by default)
    serve_port: int  # the model server (crispflow serve)
    ledger_url: str  # SQLAlchemy URL of the promotion ledger (SQLite locally, PostgreSQL in production)
    model_cache: Path  # verified model files by artifact hash (local to each worker / server)

    @property
    def serve_url(self) -> str:
        return f"http://127.0.0.1:{self.serve_port}"

    @classmethod
    def from_env(cls) -> Settings:
        root = project_root()
        home = Path(os.environ.get("CRISPFLOW_HOME", root / ".crispflow")).resolve()
        mlflow_port = os.environ.get("CRISPFLOW_MLFLOW_PORT", "5000")
        lake_url = os.environ.get("CRISPFLOW_LAKE_URL", (home / "lake").as_uri())
        return cls(
            project_root=root,
            home=home,
            pipelines_dir=Path(os.environ.get("CRISPFLOW_PIPELINES_DIR", root / "include" / "pipelines")),
            lake_url=lake_url,
            lake_conn_id=os.environ.get("CRISPFLOW_LAKE_CONN_ID") or None,
            mlflow_tracking_uri=os.environ.get("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{mlflow_port}"),
            predictions_url=os.environ.get("CRISPFLOW_PREDICTIONS_URL", lake_url.rstrip("/") + "/predictions"),
            serve_port=int(os.environ.get("CRISPFLOW_SERVE_PORT", "8000")),
            ledger_url=os.environ.get("CRISPFLOW_LEDGER_URL", f"sqlite:///{home / 'ledger.db'}"),
            model_cache=Path(os.environ.get("CRISPFLOW_MODEL_CACHE", home / "cache" / "models")),
        )
