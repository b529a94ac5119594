"""Test-wide setup: an isolated Airflow home, SQLite metadata DB and lake, configured before Airflow loads."""

from __future__ import annotations

import base64
import json
import os
import secrets
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
_HOME = Path(tempfile.mkdtemp(prefix="crispflow-tests-"))
TEST_KEYS = f"hk1:{base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()}"


def pytest_configure(config: pytest.Config) -> None:
    env = {
        "AIRFLOW_HOME": str(_HOME / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "True",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{_HOME / 'airflow' / 'airflow.db'}",
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(_HOME / "airflow" / "logs"),
        "CRISPFLOW_HOME": str(_HOME / "crispflow"),
        "CRISPFLOW_LAKE_URL": (_HOME / "lake").as_uri(),
        "GX_ANALYTICS_ENABLED": "false",
        # the pseudonym keys (a fresh key per test session): the quality gate's connection, the model server's
        "AIRFLOW_CONN_CRISPFLOW_PSEUDONYMS": json.dumps({"conn_type": "generic", "password": TEST_KEYS}),
        "CRISPFLOW_PSEUDONYM_KEYS": TEST_KEYS,
    }
    for key, value in env.items():
        os.environ[key] = value
    (_HOME / "airflow").mkdir(parents=True, exist_ok=True)


@pytest.fixture(scope="session")
def airflow_db() -> None:
    """A migrated metadata DB (once per session, ~10 s) for tests that run DAGs."""
    from airflow.utils import db

    db.resetdb()


@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[Any]:
    """A fresh, real Alertmanager with basic auth for one test (tests/support/alertmanager.py; about a second)."""
    from support.alertmanager import run_alertmanager

    with run_alertmanager(tmp_path / "alertmanager") as server:
        yield server


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Native thread pools (BLAS, OpenMP) limited to one thread for a module's direct fits and scoring, as
    crispflow's own (nested pools crawl on a busy CI box). Opt in: `pytestmark = pytest.mark.usefixtures(...)`."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        yield


@pytest.fixture
def pseudonyms() -> Any:
    """The test session's pseudonym keys (those of the crispflow_pseudonyms connection) as a Pseudonymizer."""
    from crispflow.governance.pseudonyms import Pseudonymizer

    return Pseudonymizer.from_text(TEST_KEYS)
