"""The model server pseudonymises before it scores or logs (issue 14): a version trained on keyed pseudonyms of a
feature gets that feature pseudonymised under the key of its training data; the entity key is logged as its
pseudonym; without keys such a version cannot answer. Real MLflow server, real HTTP, the real prediction log."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from support.keys import session_keys
from support.serving import Running, http, wait_until

from crispflow.governance.pseudonyms import is_pseudonym
from crispflow.governance.stored_form import PSEUDONYM_FIELDS_TAG, PSEUDONYM_KEY_TAG, pseudonymise_column
from crispflow.model import registry
from crispflow.predictions.reader import read_predictions
from crispflow.serving.config import ServeConfig

pytest_plugins = ["support.mlflow_server"]
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
FEATURES = ["int_rate", "annual_inc", "addr_state"]


@pytest.fixture(scope="module")
def model(mlflow_server) -> dict[str, Any]:
    """A champion trained on `addr_state` as keyed pseudonyms (as curated data stores it), tagged as training
    tags it; its entity key is loan_id."""
    keys = session_keys()
    data = pd.read_parquet(ROOT / "include/data/lending_club.parquet").head(2000)
    stored = data[FEATURES].copy()
    stored["addr_state"] = pseudonymise_column(keys, stored["addr_state"], "addr_state")
    pipe = Pipeline([("columns", ColumnTransformer([("num", StandardScaler(), ["int_rate", "annual_inc"]),
                                                    ("cat", OneHotEncoder(handle_unknown="ignore"), ["addr_state"])])),
                     ("model", LogisticRegression(max_iter=500))]).fit(stored, data["Class"] == "bad")
    mlf = registry.client(mlflow_server.url)
    name = f"crispflow-t_pseudo_{uuid.uuid4().hex[:8]}"
    run_id = registry.find_or_create_run(mlf, "t_pseudo", f"{name}/0", "train")
    tags = {PSEUDONYM_KEY_TAG: keys.key_id, PSEUDONYM_FIELDS_TAG: json.dumps({"addr_state": "addr_state"})}
    reg = registry.register(mlf, name=name, run_id=run_id, run_key=f"{name}/0", model=pipe, example=stored.head(20),
                            tags=tags)
    registry.set_alias(mlf, name, "champion", reg.version)
    mlf.set_registered_model_tag(name, "crispflow.entity_key", "loan_id")
    records = [{"loan_id": int(r.loan_id), "int_rate": float(r.int_rate), "annual_inc": float(r.annual_inc),
                "addr_state": str(r.addr_state)} for r in data.head(50).itertuples()]
    return {"name": name, "pipe": pipe, "stored": stored.head(50), "records": records}


def _config(model: dict[str, Any], mlflow_server: Any, log_root: Path, keys: Any) -> ServeConfig:
    return ServeConfig(model=model["name"], tracking_uri=mlflow_server.url, predictions_url=str(log_root),
                       poll_interval=0.2, log_flush_interval=0.2, only=(model["name"],), pseudonyms=keys)


@pytest.fixture(scope="module")
def served(model, mlflow_server, tmp_path_factory) -> Iterator[Running]:
    log_root = tmp_path_factory.mktemp("predictions")
    with Running(_config(model, mlflow_server, log_root, session_keys())) as running:
        running.log_root = log_root  # type: ignore[attr-defined]
        wait_until(lambda: http.get(f"{running.url}/ready").status_code == 200, 60, "champion loaded")
        yield running


def test_clear_requests_score_as_the_pseudonymised_training_data(served, model) -> None:
    reply = http.post(f"{served.url}/predict", json={"records": model["records"]})
    assert reply.status_code == 200, reply.text
    scores = np.array([p["score"] for p in reply.json()["predictions"]])
    expected = model["pipe"].predict_proba(model["stored"])[:, 1]
    np.testing.assert_allclose(scores, expected, rtol=0, atol=1e-9)


def test_the_log_holds_pseudonyms_of_the_entity_and_the_feature(served, model) -> None:
    since = datetime.now(UTC) - timedelta(seconds=5)
    reply = http.post(f"{served.url}/predict", json={"records": model["records"][:10]})
    ids = {p["request_id"] for p in reply.json()["predictions"]}

    def logged() -> pd.DataFrame | None:
        frame = read_predictions(str(served.log_root), model["name"], since, datetime.now(UTC) + timedelta(minutes=1),
                                 with_feedback=False)
        mine = frame[frame["request_id"].isin(ids)]
        return mine if len(mine) == 10 else None

    rows = wait_until(logged, 30, "rows in the prediction log")
    keys = session_keys()
    assert set(rows["entity"]) == {keys.pseudonym(str(r["loan_id"])) for r in model["records"][:10]}
    assert set(rows["feature.loan_id"]) == set(rows["entity"])
    assert set(rows["feature.addr_state"]) == set(model["stored"]["addr_state"].head(10))
    assert all(is_pseudonym(v) for v in rows["feature.addr_state"])
    clear = {r["addr_state"] for r in model["records"][:10]}
    for path in Path(served.log_root).rglob("*.parquet"):  # the files themselves, not only what the reader gives
        text = pd.read_parquet(path).astype(str).to_numpy().ravel().tolist()
        assert not clear & set(text), f"{path}: a clear addr_state value"


def test_without_keys_a_pseudonymised_version_does_not_answer(model, mlflow_server, tmp_path) -> None:
    with Running(_config(model, mlflow_server, tmp_path, None)) as running:
        wait_until(lambda: http.get(f"{running.url}/ready").status_code == 200, 60, "champion loaded")  # loaded
        reply = http.post(f"{running.url}/predict", json={"records": model["records"][:2]})
    assert reply.status_code == 503
    assert "CRISPFLOW_PSEUDONYM_KEYS" in reply.text and "addr_state" in reply.text
