"""A real MLflow tracking server on loopback (SQLite backend store, proxied local artifacts), one per session.

PYTEST_DONT_REWRITE
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from support.servers import LOOPBACK, free_port, stop_process


@dataclass(frozen=True)
class MlflowServer:
    url: str
    artifacts: Path  # the server's artifact store (tests may tamper with it)


@contextlib.contextmanager
def running_mlflow(root: Path, extra_argv: tuple[str, ...] = (), extra_env: dict[str, str] | None = None,
                   health_auth: tuple[str, str] | None = None) -> Iterator[str]:
    """An MLflow server on a free loopback port (SQLite store and local artifacts in `root`); yields its URL."""
    port = free_port()
    argv = [str(Path(sys.executable).parent / "mlflow"), "server", "--host", LOOPBACK, "--port", str(port),
            "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
            "--artifacts-destination", str(root / "artifacts"), "--workers", "1", *extra_argv]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **(extra_env or {})}
    log = (root / "server.log").open("wb")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://{LOOPBACK}:{port}"
    deadline = time.monotonic() + 180
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {(root / 'server.log').read_text()[-2000:]}")
            try:
                if requests.get(f"{url}/health", timeout=2, auth=health_auth).ok:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("mlflow server did not become healthy in 180 s")
            time.sleep(0.5)
        yield url
    finally:
        stop_process(proc)
        log.close()


@pytest.fixture(scope="session")
def mlflow_server() -> Iterator[MlflowServer]:
    root = Path(tempfile.mkdtemp(prefix="crispflow-mlflow-"))
    with running_mlflow(root) as url:
        yield MlflowServer(url, root / "artifacts")


def register_versions(mlf: object, name: str, experiment: str, x: object, models: list[object],
                      blessed: list[bool] | None = None) -> list[str]:
    """Register each fitted model as a complete version of `name`, each from its own run (`dag/r<i>/train`),
    tagged blessed (all, unless `blessed` says otherwise). Returns the versions."""
    from crispflow.model import registry

    out = []
    for i, model in enumerate(models):
        run_key = f"dag/r{i}/train"
        run_id = registry.find_or_create_run(mlf, experiment, run_key, "train")
        tag = "true" if blessed is None or blessed[i] else "false"
        out.append(registry.register(mlf, name=name, run_id=run_id, run_key=run_key, model=model, example=x,
                                     tags={"crispflow.blessed": tag}).version)
    return out


def small_versions(mlf: object, name: str, experiment: str, n: int, *, rows: int = 1000,
                   blessed: list[bool] | None = None) -> list[str]:
    """`n` small logistic regressions (C = 0.1, 0.2, ...) on two features of the first `rows` rows of the
    lending_club sample, registered with `register_versions` (all blessed unless `blessed` says otherwise)."""
    import pandas as pd
    from sklearn.linear_model import LogisticRegression

    df = pd.read_parquet(Path(__file__).resolve().parents[2] / "include" / "data" / "lending_club.parquet").head(rows)
    x = df[["int_rate", "annual_inc"]].astype("float64")
    models = [LogisticRegression(C=0.1 * (i + 1), max_iter=300).fit(x, df["Class"] == "bad") for i in range(n)]
    return register_versions(mlf, name, experiment, x, models, blessed)
