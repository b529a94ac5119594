"""The model server against a real MLflow server, over real HTTP (uvicorn on a free port), with the real
prediction log: alias switches under load, bad payloads, tampered artifacts, canary and shadow, SIGTERM; several
models side by side (binary, regression, multiclass), per-model routes, discovery of a model registered after the
start, per-task feedback validation, the default routes with several models, the LRU bound on loaded models.

Every server here is narrowed (`only`) to this module's models: the MLflow server is shared by the session."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from support.keys import session_keys
from support.servers import free_port, stop_process, wait_for_port
from support.serving import AUTH, Running, http, token_file

from crispflow.model import registry
from crispflow.predictions.reader import read_predictions
from crispflow.serving.config import ServeConfig

pytest_plugins = ["support.mlflow_server"]
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
NUMERIC = ["int_rate", "annual_inc", "revol_util"]
FEATURES = [*NUMERIC, "delinq_2yrs", "term"]


@pytest.fixture(scope="module")
def mlf(mlflow_server):
    return registry.client(mlflow_server.url)


@pytest.fixture(scope="module")
def data() -> pd.DataFrame:
    return pd.read_parquet(ROOT / "include/data/lending_club.parquet").head(3000)


def _pipeline(c: float) -> Pipeline:
    columns = ColumnTransformer([
        ("num", Pipeline([("impute", SimpleImputer()), ("scale", StandardScaler())]), [*NUMERIC, "delinq_2yrs"]),
        ("cat", OneHotEncoder(handle_unknown="ignore"), ["term"]),
    ])
    return Pipeline([("columns", columns), ("model", LogisticRegression(C=c, max_iter=500))])


@pytest.fixture(scope="module")
def model(mlf, data) -> dict[str, Any]:
    """`crispflow-t_serve_<id>` with versions 1, 2 (good) and 3 (to be tampered); champion = v1."""
    name = f"crispflow-t_serve_{uuid.uuid4().hex[:8]}"
    x = data[FEATURES].copy()  # registered without the pipeline tag: found by the crispflow- name convention
    x.loc[x.index[3], "revol_util"] = float("nan")  # the signature marks revol_util optional
    y = data["Class"] == "bad"
    versions = []
    for step, c in enumerate((1.0, 0.01, 0.1)):
        run_id = registry.find_or_create_run(mlf, "t_serve", f"{name}/{step}", f"train{step}")
        reg = registry.register(mlf, name=name, run_id=run_id, run_key=f"{name}/{step}", model=_pipeline(c).fit(x, y),
                                example=x.head(50), tags={"crispflow.threshold": "0.1"})
        versions.append(reg.version)
    registry.set_alias(mlf, name, "champion", versions[0])
    return {"name": name, "versions": versions, "records": _records(data)}


def _records(data: pd.DataFrame) -> list[dict[str, Any]]:
    frame = data[["loan_id", *FEATURES]]
    return [{k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()}
            for row in frame.to_dict(orient="records")]


def _wait(check, timeout: float = 30.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value is not None and value is not False:
            return value
        time.sleep(0.05)
    raise TimeoutError(f"{what} not reached in {timeout} s")


def _ready_version(url: str) -> str | None:
    reply = http.get(f"{url}/ready", timeout=5)
    return reply.json().get("champion") if reply.status_code == 200 else None


@pytest.fixture(scope="module")
def server(model, mlflow_server, tmp_path_factory) -> Iterator[Running]:
    log_root = tmp_path_factory.mktemp("predictions")
    config = ServeConfig(model=model["name"], tracking_uri=mlflow_server.url, predictions_url=str(log_root),
                         poll_interval=0.2, log_flush_interval=0.2, positive_labels=("bad",),
                         negative_labels=("good",), only=(model["name"],), pseudonyms=session_keys())
    with Running(config) as running:
        running.log_root = log_root  # type: ignore[attr-defined]
        _wait(lambda: _ready_version(running.url), 60, "champion loaded")
        yield running


def _predict(client: httpx.Client, url: str, records: list[dict[str, Any]]) -> httpx.Response:
    return client.post(f"{url}/predict", json={"records": records}, timeout=30)


# --- 1. alias switch under concurrent load ----------------------------------------------------------------------


def test_alias_switch_under_load_fails_no_request(server, mlf, model) -> None:
    name, (v1, v2, _) = model["name"], model["versions"]
    records = [{k: v for k, v in r.items() if k != "loan_id"} for r in model["records"][:5]]
    results: list[tuple[float, int, set[str]]] = []
    stop = threading.Event()

    def hammer() -> None:
        with httpx.Client(headers=AUTH) as client:
            while not stop.is_set():
                started = time.monotonic()
                reply = _predict(client, server.url, records)
                versions = {p["model_version"] for p in reply.json()["predictions"]} if reply.status_code == 200 \
                    else set()
                results.append((started, reply.status_code, versions))

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)
        registry.set_alias(mlf, name, "champion", v2)
        _wait(lambda: _ready_version(server.url) == v2, 30, "switch to v2")
        switched_to_v2 = time.monotonic()
        time.sleep(1.2)  # long enough that some requests start and end well inside the v2 period
        registry.set_alias(mlf, name, "champion", v1)
        _wait(lambda: _ready_version(server.url) == v1, 30, "switch back to v1")
        switched_to_v1 = time.monotonic()
        time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
        registry.set_alias(mlf, name, "champion", v1)
    assert len(results) > 50
    assert [r for r in results if r[1] != 200] == []
    assert all(len(r[2]) == 1 for r in results), "a request was scored by two champions"
    during_v2 = [r[2] for r in results if switched_to_v2 <= r[0] and r[0] + 0.3 < switched_to_v1 - 0.4]
    assert during_v2 and all(v == {v2} for v in during_v2)
    after = [r[2] for r in results if r[0] >= switched_to_v1]
    assert after and all(v == {v1} for v in after)
    metrics = http.get(f"{server.url}/metrics").text
    assert f'crispflow_serve_reloads_total{{alias="champion",model="{name}"}}' in metrics
    assert "crispflow_drift_store_up" in metrics  # the drift gauges ride on the same registry


# --- 2. bad payloads --------------------------------------------------------------------------------------------

GOOD = {"int_rate": 12.5, "annual_inc": 55000.0, "revol_util": 40.0, "delinq_2yrs": 0, "term": "term_36"}


def _without(key: str) -> dict[str, Any]:
    return {k: v for k, v in GOOD.items() if k != key}


BAD = [
    ("missing field", json.dumps({"records": [_without("int_rate")]}), "application/json", 422, "int_rate", "missing"),
    ("string for a double", json.dumps({"records": [{**GOOD, "int_rate": "12.5"}]}), "application/json", 422,
     "int_rate", "type"),
    ("bool for a double", json.dumps({"records": [{**GOOD, "annual_inc": True}]}), "application/json", 422,
     "annual_inc", "type"),
    ("NaN literal", '{"records": [{"int_rate": NaN, "annual_inc": 1.0, "revol_util": 1.0, "delinq_2yrs": 0, '
                    '"term": "term_36"}]}', "application/json", 422, "int_rate", "finite"),
    ("Infinity literal", json.dumps({"records": [{**GOOD, "revol_util": float("inf")}]}), "application/json", 422,
     "revol_util", "finite"),
    ("overflowing literal", '{"records": [{"int_rate": 1e999, "annual_inc": 1.0, "revol_util": 1.0, '
                            '"delinq_2yrs": 0, "term": "term_36"}]}', "application/json", 422, "int_rate", "finite"),
    ("null where required", json.dumps({"records": [{**GOOD, "term": None}]}), "application/json", 422, "term",
     "required"),
    ("fraction for a long", json.dumps({"records": [{**GOOD, "delinq_2yrs": 1.5}]}), "application/json", 422,
     "delinq_2yrs", "type"),
    ("extra field", json.dumps({"records": [{**GOOD, "zip": "123"}]}), "application/json", 422, "zip", "extra"),
    ("record not an object", json.dumps({"records": [GOOD, 5]}), "application/json", 422, None, "type"),
    ("records not a list", json.dumps({"records": GOOD}), "application/json", 422, "records", "records"),
    ("no records", json.dumps({"records": []}), "application/json", 422, "records", "records"),
    ("body a list", json.dumps([GOOD]), "application/json", 422, "body", "body"),
    ("unknown key", json.dumps({"rows": [GOOD]}), "application/json", 422, "body", "body"),
    ("too many records", json.dumps({"records": [GOOD] * 1001}), "application/json", 413, "records",
     "max_records"),
    ("oversized body", json.dumps({"records": [{**GOOD, "term": "x" * (1 << 20)}]}), "application/json", 413, None,
     "max_bytes"),
    ("malformed JSON", '{"records": [', "application/json", 400, None, "json"),
    ("not UTF-8", b'{"records": "\xff"}', "application/json", 400, None, "json"),
    ("wrong content type", json.dumps({"records": [GOOD]}), "text/plain", 415, None, "content_type"),
    ("form content type", "records=1", "application/x-www-form-urlencoded", 415, None, "content_type"),
    ("no content type", json.dumps({"records": [GOOD]}), None, 415, None, "content_type"),
]


@pytest.mark.parametrize(("body", "content_type", "status", "field", "rule"), [b[1:] for b in BAD],
                         ids=[b[0] for b in BAD])
def test_each_bad_payload_gets_a_field_level_4xx(server, body, content_type, status, field, rule) -> None:
    headers = {"content-type": content_type} if content_type else {}
    content = body if isinstance(body, bytes) else body.encode()
    reply = http.post(f"{server.url}/predict", content=content, headers=headers, timeout=30)
    assert reply.status_code == status, reply.text
    detail = reply.json()["detail"]
    assert any(d["rule"] == rule and d["field"] == field and d["message"] for d in detail), detail


def test_random_payloads_never_get_a_500(server, model) -> None:
    rng = random.Random(7)
    values = [None, True, 0, -1, 2**64, 1.5, float("inf"), "", "x", "12.5", [], [1], {}, {"a": 1}]

    def mutate() -> Any:
        roll = rng.random()
        if roll < 0.1:
            return rng.choice(values)
        record = {k: (rng.choice(values) if rng.random() < 0.3 else v) for k, v in GOOD.items()
                  if rng.random() > 0.1}
        if rng.random() < 0.2:
            record[rng.choice(["extra", "loan_id", "", "0"])] = rng.choice(values)
        return {"records": [record] * rng.randint(1, 3)} if roll < 0.9 else {"record": record}

    statuses = []
    with httpx.Client(headers=AUTH) as client:
        for _ in range(300):
            reply = client.post(f"{server.url}/predict", content=json.dumps(mutate()).encode(),
                                headers={"content-type": "application/json"})
            statuses.append(reply.status_code)
            assert reply.status_code in (200, 413, 422, 400), reply.text
            if reply.status_code != 200:
                assert reply.json()["detail"][0]["message"]
    assert 200 in statuses and 422 in statuses
    metrics = http.get(f"{server.url}/metrics").text
    assert f'crispflow_serve_validation_failures_total{{model="{model["name"]}",rule="type"}}' in metrics


def test_the_response_carries_scores_labels_versions_and_ids(server, model) -> None:
    records = model["records"][:3]
    reply = http.post(f"{server.url}/predict", json={"records": [_features(r) for r in records]})
    assert reply.status_code == 200
    body = reply.json()
    assert body["model"] == model["name"] and len(body["predictions"]) == 3
    for item in body["predictions"]:
        assert 0.0 <= item["score"] <= 1.0 and item["label"] == int(item["score"] >= 0.1)
        assert item["alias"] == "champion" and item["model_version"] == model["versions"][0]
        uuid.UUID(item["request_id"])
    one = http.post(f"{server.url}/predict", json={"record": {**GOOD, "revol_util": None}})
    assert one.status_code == 200 and len(one.json()["predictions"]) == 1  # optional in the signature
    assert http.post(f"{server.url}/feedback", json={"request_id": body["predictions"][0]["request_id"],
                                                      "label": "bad"}).status_code == 202
    assert http.post(f"{server.url}/feedback", json={"request_id": "x", "label": "bad"}).status_code == 422
    described = http.get(f"{server.url}/model").json()
    assert described["aliases"]["champion"]["signature"][0] == {"name": "int_rate", "type": "double",
                                                                "required": True}
    assert http.get(f"{server.url}/health").status_code == 200


def _features(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k in FEATURES}


# --- 3. tampered artifacts --------------------------------------------------------------------------------------


def _tamper(mlf, mlflow_server, name: str, version: str) -> None:
    model_id = mlf.get_model_version(name, version).source.rsplit("/", 1)[-1]
    (target,) = [p for p in mlflow_server.artifacts.rglob("model.skops") if model_id in p.parts]
    target.write_bytes(target.read_bytes() + b"\0")


def test_a_tampered_version_is_refused_and_the_old_champion_keeps_serving(server, mlf, mlflow_server,
                                                                          model) -> None:
    name, (v1, _, v3) = model["name"], model["versions"]
    _tamper(mlf, mlflow_server, name, v3)
    try:
        registry.set_alias(mlf, name, "champion", v3)
        refused = _wait(lambda: http.get(f"{server.url}/model").json()["refused"].get(v3), 30, "refusal")
        assert refused.startswith("hash_mismatch")
        assert _ready_version(server.url) == v1
        reply = http.post(f"{server.url}/predict", json={"record": GOOD})
        assert reply.status_code == 200 and reply.json()["predictions"][0]["model_version"] == v1
        metrics = http.get(f"{server.url}/metrics").text
        assert f'crispflow_serve_refused_loads_total{{model="{name}",reason="hash_mismatch"}} 1.0' in metrics
        # a server starting now has nothing trustworthy to serve: not ready, and it says why
        config = ServeConfig(model=name, tracking_uri=mlflow_server.url, predictions_url=None, poll_interval=0.2,
                             only=(name,))
        with Running(config) as fresh:
            reason = _wait(lambda: (r := http.get(f"{fresh.url}/ready")).status_code == 503
                           and "hash" in r.json()["reason"] and r.json()["reason"], 30, "not ready")
            assert f"v{v3}" in reason
            assert http.post(f"{fresh.url}/predict", json={"record": GOOD}).status_code == 503
            assert http.get(f"{fresh.url}/health").status_code == 200
    finally:
        registry.set_alias(mlf, name, "champion", v1)


# --- 4. sticky canary, 5. shadow ---------------------------------------------------------------------------------


@contextlib.contextmanager
def _policy(mlf, name: str, aliases: dict[str, str], tags: dict[str, str]) -> Iterator[None]:
    for key, value in tags.items():
        mlf.set_registered_model_tag(name, key, value)
    for alias, version in aliases.items():
        registry.set_alias(mlf, name, alias, version)
    try:
        yield
    finally:
        for alias in aliases:
            mlf.delete_registered_model_alias(name, alias)
        for key in tags:
            mlf.delete_registered_model_tag(name, key)


def test_canary_assignment_is_sticky_and_close_to_the_share(server, mlf, model) -> None:
    name, (v1, v2, _) = model["name"], model["versions"]
    records = model["records"][:1000]
    with _policy(mlf, name, {"canary": v2}, {"crispflow.canary_share": "0.3", "crispflow.entity_key": "loan_id"}):
        _wait(lambda: (d := http.get(f"{server.url}/model").json())["policy"]["canary_share"] == 0.3
              and "canary" in d["aliases"], 30, "canary policy")
        passes = []
        with httpx.Client(headers=AUTH) as client:
            for _ in range(2):
                arms: dict[int, tuple[str, str]] = {}
                for start in range(0, len(records), 250):
                    chunk = records[start:start + 250]
                    reply = _predict(client, server.url, chunk)
                    assert reply.status_code == 200, reply.text  # loan_id is accepted: it is the entity key
                    for record, item in zip(chunk, reply.json()["predictions"], strict=True):
                        arms[record["loan_id"]] = (item["alias"], item["model_version"])
                passes.append(arms)
    assert passes[0] == passes[1], "an entity changed arms"
    assert set(passes[0].values()) == {("champion", v1), ("canary", v2)}
    share = sum(arm == "canary" for arm, _ in passes[0].values()) / len(passes[0])
    assert abs(share - 0.3) < 0.05
    metrics = http.get(f"{server.url}/metrics").text
    assert f'crispflow_serve_predictions_total{{alias="canary",model="{name}",version="{v2}"}}' in metrics


def test_shadow_results_are_logged_never_returned(server, mlf, model) -> None:
    name, (v1, v2, _) = model["name"], model["versions"]
    since = datetime.now(UTC) - timedelta(seconds=5)
    tags = {"crispflow.shadow_share": "1", "crispflow.entity_key": "loan_id"}
    with _policy(mlf, name, {"shadow": v2}, tags):
        _wait(lambda: (d := http.get(f"{server.url}/model").json())["policy"]["entity_key"] == "loan_id"
              and "shadow" in d["aliases"], 30, "shadow loaded")
        reply = http.post(f"{server.url}/predict", json={"records": model["records"][:20]})
    assert reply.status_code == 200
    items = reply.json()["predictions"]
    assert {(i["alias"], i["model_version"]) for i in items} == {("champion", v1)}
    ids = {i["request_id"] for i in items}

    def logged() -> pd.DataFrame | None:
        frame = read_predictions(str(server.log_root), name, since, datetime.now(UTC) + timedelta(minutes=1),
                                 with_feedback=False)
        mine = frame[frame["request_id"].isin(ids)]
        return mine if len(mine) == 40 else None

    rows = _wait(logged, 30, "served and shadow rows in the log")
    shadow = rows[~rows["served"]]
    assert set(shadow["request_id"]) == ids and set(shadow["alias"]) == {"shadow"} and set(shadow["version"]) == {v2}
    assert shadow["score"].between(0, 1).all() and (shadow["status"] == "ok").all()
    keys = session_keys()  # the entity is logged as its keyed pseudonym, never in clear
    assert set(shadow["entity"]) == {keys.pseudonym(str(r["loan_id"])) for r in model["records"][:20]}
    assert set(rows["feature.loan_id"]) == set(shadow["entity"])
    served = rows[rows["served"]]
    assert set(served["alias"]) == {"champion"} and served["feature.int_rate"].notna().all()


# --- 6. SIGTERM under load loses no logged prediction -------------------------------------------------------------


def _cli() -> str:
    beside = Path(sys.executable).parent / "crispflow"
    return str(beside if beside.exists() else ROOT / ".venv" / "bin" / "crispflow")


def test_sigterm_under_load_loses_no_logged_prediction(model, mlflow_server, tmp_path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_root = tmp_path / "predictions"
    env = {**os.environ, "CRISPFLOW_HOME": str(tmp_path / "home"), "PYTHONUNBUFFERED": "1"}
    argv = [_cli(), "serve", "--model", model["name"], "--port", str(port), "--tracking-uri", mlflow_server.url,
            "--predictions-url", str(log_root), "--poll-interval", "0.5", "--only", model["name"]]
    token_file(tmp_path / "home")  # the default token file of `crispflow serve`: $CRISPFLOW_HOME/serve-tokens.json
    out = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    answered: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()
    records = [_features(r) for r in model["records"][:10]]
    since = datetime.now(UTC) - timedelta(seconds=5)

    def fire() -> None:
        with httpx.Client(headers=AUTH) as client:
            while not stop.is_set():
                try:
                    reply = _predict(client, url, records)
                except httpx.HTTPError:
                    return  # the server is shutting down
                if reply.status_code == 200:
                    with lock:
                        answered.extend(i["request_id"] for i in reply.json()["predictions"])

    try:
        wait_for_port(port, 90, proc)
        _wait(lambda: _ready_version(url), 60, "subprocess server ready")
        threads = [threading.Thread(target=fire) for _ in range(4)]
        for t in threads:
            t.start()
        time.sleep(1.5)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) in (0, -signal.SIGTERM)  # uvicorn re-raises SIGTERM after its graceful shutdown
        stop.set()
        for t in threads:
            t.join(30)
    finally:
        stop_process(proc)
        out.close()
    assert "prediction log closed" in (tmp_path / "serve.log").read_text()
    assert len(answered) > 50
    frame = read_predictions(str(log_root), model["name"], since, datetime.now(UTC) + timedelta(minutes=1),
                             with_feedback=False)
    assert len(frame) == len(answered) == frame["request_id"].nunique()
    assert set(frame["request_id"]) == set(answered)


def test_a_server_starts_before_the_model_exists_and_picks_the_champion_up(model, mlf, mlflow_server) -> None:
    name = f"crispflow-t_late_{uuid.uuid4().hex[:8]}"
    config = ServeConfig(model=name, tracking_uri=mlflow_server.url, predictions_url=None, poll_interval=0.2,
                         only=(name,))
    with Running(config) as late:
        assert http.get(f"{late.url}/health").status_code == 200
        reason = _wait(lambda: (r := http.get(f"{late.url}/ready")).status_code == 503
                       and "not registered" in r.json()["reason"], 30, "not registered")
        assert reason
        # register a copy of v1 (same files, same recorded hash) and make it champion
        source = mlf.get_model_version(model["name"], model["versions"][0])
        mlf.create_registered_model(name)
        copy = mlf.create_model_version(name, source=source.source, run_id=source.run_id,
                                        model_id=source.source.rsplit("/", 1)[-1],
                                        tags={k: v for k, v in source.tags.items() if k.startswith("crispflow.")})
        registry.set_alias(mlf, name, "champion", str(copy.version))
        assert _wait(lambda: _ready_version(late.url), 30, "champion picked up") == str(copy.version)
        reply = http.post(f"{late.url}/predict", json={"record": GOOD})
        assert reply.status_code == 200 and reply.json()["predictions"][0]["model_version"] == str(copy.version)
        assert http.post(f"{late.url}/feedback", json={"request_id": str(uuid.uuid4()), "label": 1}).status_code \
            == 503  # no prediction log configured: feedback cannot be stored


# --- 7. several models side by side: binary, regression, multiclass -----------------------------------------------

MULTI = uuid.uuid4().hex[:8]  # in the names of this section's models only: its servers serve `*MULTI*`
CLASSES = ["Not_Verified", "Source_Verified", "Verified"]  # verification_status, in model (code) order
HALFWIDTH = 2500.0


def _register(mlf, name: str, model: Any, x: pd.DataFrame, tags: dict[str, str], *, pipeline: str | None,
              output: Any = None) -> str:
    run_id = registry.find_or_create_run(mlf, "t_serve_multi", f"{name}/0", "train")
    reg = registry.register(mlf, name=name, run_id=run_id, run_key=f"{name}/0", model=model, example=x.head(50),
                            tags=tags, output=output)
    if pipeline is not None:  # what training sets at registration; without it the crispflow- name is used
        mlf.set_registered_model_tag(name, "crispflow.pipeline", pipeline)
    registry.set_alias(mlf, name, "champion", reg.version)
    return reg.version


def _regressor() -> Pipeline:
    columns = ColumnTransformer([
        ("num", Pipeline([("impute", SimpleImputer()), ("scale", StandardScaler())]), [*NUMERIC, "delinq_2yrs"]),
        ("cat", OneHotEncoder(handle_unknown="ignore"), ["term"]),
    ])
    return Pipeline([("columns", columns), ("model", Ridge())])


@pytest.fixture(scope="module")
def models(mlf, data) -> dict[str, Any]:
    """Three models of three tasks, each with a champion: binary and regression carry the pipeline tag, the
    multiclass one only the crispflow- name (a model registered before the tag existed)."""
    x = data[FEATURES].copy()
    names = {task: f"crispflow-t_{task}_{MULTI}" for task in ("binary", "regression", "multiclass")}
    _register(mlf, names["binary"], _pipeline(1.0).fit(x, data["Class"] == "bad"), x,
              {"crispflow.threshold": "0.3", "crispflow.task": "binary"}, pipeline=f"t_binary_{MULTI}")
    interval = {"coverage": 0.9, "halfwidth": HALFWIDTH, "method": "split_conformal_oof"}
    _register(mlf, names["regression"], _regressor().fit(x, data["funded_amnt"].astype(float)), x,
              {"crispflow.task": "regression", "crispflow.interval": json.dumps(interval)},
              pipeline=f"t_regression_{MULTI}")
    codes = data["verification_status"].map({c: i for i, c in enumerate(CLASSES)}).astype("int64")
    classifier = _pipeline(1.0).fit(x, codes)
    _register(mlf, names["multiclass"], classifier, x,
              {"crispflow.task": "multiclass", "crispflow.classes": json.dumps(CLASSES)}, pipeline=None,
              output=classifier.predict_proba(x.head(50)))
    return names


def _ready_models(url: str, expected: set[str]) -> dict[str, Any] | None:
    reply = http.get(f"{url}/ready", timeout=5)
    body = reply.json()
    return body if reply.status_code == 200 and expected <= set(body["models"]) else None


@pytest.fixture(scope="module")
def fleet(models, mlflow_server, tmp_path_factory) -> Iterator[Running]:
    log_root = tmp_path_factory.mktemp("fleet-predictions")
    config = ServeConfig(tracking_uri=mlflow_server.url, predictions_url=str(log_root), poll_interval=0.2,
                         log_flush_interval=0.2, only=(f"*{MULTI}*",),
                         feedback_labels={models["binary"]: (("bad",), ("good",))})
    with Running(config) as running:
        running.log_root = log_root  # type: ignore[attr-defined]
        _wait(lambda: _ready_models(running.url, set(models.values())), 60, "three champions loaded")
        yield running


def test_three_models_are_served_side_by_side_each_per_its_task(fleet, models) -> None:
    listing = http.get(f"{fleet.url}/models").json()
    by_name = {m["name"]: m for m in listing["models"]}
    assert set(by_name) == set(models.values()) and listing["default"] is None
    assert {by_name[n]["task"] for n in models.values()} == {"binary", "regression", "multiclass"}
    assert by_name[models["binary"]]["pipeline"] == f"t_binary_{MULTI}"
    assert by_name[models["multiclass"]]["pipeline"] is None  # found by its crispflow- name
    assert all(m["state"] == "ready" for m in listing["models"])
    assert by_name[models["regression"]]["routes"]["predict"] == f"/models/{models['regression']}/predict"

    binary = http.post(f"{fleet.url}/models/{models['binary']}/predict", json={"records": [GOOD, GOOD]})
    assert binary.status_code == 200, binary.text
    assert binary.json()["model"] == models["binary"]
    for item in binary.json()["predictions"]:
        assert set(item) == {"request_id", "score", "label", "model_version", "alias"}
        assert 0 <= item["score"] <= 1 and item["label"] == int(item["score"] >= 0.3)

    regression = http.post(f"{fleet.url}/models/{models['regression']}/predict", json={"record": GOOD})
    assert regression.status_code == 200, regression.text
    (item,) = regression.json()["predictions"]
    assert set(item) == {"request_id", "prediction", "interval", "model_version", "alias"}
    assert 1000 < item["prediction"] < 40000  # a loan amount
    assert item["interval"] == pytest.approx({"low": item["prediction"] - HALFWIDTH,
                                              "high": item["prediction"] + HALFWIDTH, "coverage": 0.9})

    multiclass = http.post(f"{fleet.url}/models/{models['multiclass']}/predict", json={"records": [GOOD] * 3})
    assert multiclass.status_code == 200, multiclass.text
    for item in multiclass.json()["predictions"]:
        assert set(item) == {"request_id", "prediction", "probabilities", "model_version", "alias"}
        assert list(item["probabilities"]) == CLASSES and sum(item["probabilities"].values()) == pytest.approx(1)
        assert item["prediction"] == max(CLASSES, key=item["probabilities"].__getitem__)

    described = http.get(f"{fleet.url}/models/{models['multiclass']}").json()
    assert described["task"] == "multiclass" and described["aliases"]["champion"]["classes"] == CLASSES
    assert http.get(f"{fleet.url}/models/{models['regression']}").json()["aliases"]["champion"]["interval"][
        "halfwidth"] == HALFWIDTH
    unknown = http.post(f"{fleet.url}/models/crispflow-nope/predict", json={"record": GOOD})
    assert unknown.status_code == 404 and "crispflow-nope" in unknown.json()["detail"][0]["message"]

    metrics = http.get(f"{fleet.url}/metrics").text
    for name in models.values():
        assert f'crispflow_serve_ready{{model="{name}"}} 1.0' in metrics
        assert f'code="200",endpoint="predict",model="{name}"' in metrics

    ids = {task: [i["request_id"] for i in reply.json()["predictions"]]
           for task, reply in (("regression", regression), ("multiclass", multiclass))}

    def logged(task: str) -> pd.DataFrame | None:
        since = datetime.now(UTC) - timedelta(minutes=5)
        frame = read_predictions(str(fleet.log_root), models[task], since, datetime.now(UTC) + timedelta(minutes=1),
                                 with_feedback=False)
        mine = frame[frame["request_id"].isin(ids[task])]
        return mine if len(mine) == len(ids[task]) else None

    reg_rows = _wait(lambda: logged("regression"), 30, "regression rows logged")
    row = reg_rows.iloc[0]
    assert row["model"] == models["regression"] and row["interval_high"] - row["interval_low"] == \
        pytest.approx(2 * HALFWIDTH) and row["score"] == pytest.approx(row["interval_low"] + HALFWIDTH)
    mc_rows = _wait(lambda: logged("multiclass"), 30, "multiclass rows logged")
    for _, row in mc_rows.iterrows():
        assert row["predicted"] in CLASSES and len(row["probabilities"]) == 3
        assert row["score"] == pytest.approx(max(row["probabilities"]))


def test_default_routes_need_a_default_when_several_models_are_served(fleet, models, mlflow_server) -> None:
    for method, path in (("post", "/predict"), ("post", "/feedback"), ("get", "/model")):
        reply = getattr(http, method)(f"{fleet.url}{path}", **({"json": {"record": GOOD}} if method == "post"
                                                                  else {}))
        assert reply.status_code == 404, (path, reply.text)
        assert "/models/{name}/" in reply.json()["detail"][0]["message"]
    # with exactly one model, it is the default; a configured default wins over the rule
    one = ServeConfig(tracking_uri=mlflow_server.url, predictions_url=None, poll_interval=0.2,
                      only=(models["regression"],))
    chosen = ServeConfig(model=models["multiclass"], tracking_uri=mlflow_server.url, predictions_url=None,
                         poll_interval=0.2, only=(f"*{MULTI}*",))
    with Running(one) as single, Running(chosen) as defaulted:
        body = _wait(lambda: _ready_models(single.url, {models["regression"]}), 60, "single model ready")
        assert body["model"] == models["regression"]
        reply = http.post(f"{single.url}/predict", json={"record": GOOD})
        assert reply.status_code == 200 and "interval" in reply.json()["predictions"][0]
        assert http.get(f"{single.url}/model").json()["task"] == "regression"
        _wait(lambda: _ready_models(defaulted.url, set(models.values())), 60, "all ready")
        reply = http.post(f"{defaulted.url}/predict", json={"record": GOOD})
        assert reply.status_code == 200 and reply.json()["model"] == models["multiclass"]


def test_feedback_is_validated_per_task(fleet, models) -> None:
    def predict(task: str) -> str:
        reply = http.post(f"{fleet.url}/models/{models[task]}/predict", json={"record": GOOD})
        return reply.json()["predictions"][0]["request_id"]

    def feedback(task: str, label: Any, raw: str | None = None) -> httpx.Response:
        url = f"{fleet.url}/models/{models[task]}/feedback"
        if raw is not None:
            return http.post(url, content=raw.encode(), headers={"content-type": "application/json"})
        return http.post(url, json={"request_id": rid[task], "label": label})

    rid = {task: predict(task) for task in models}
    since = datetime.now(UTC) - timedelta(seconds=5)
    refused = [("binary", 2, "type"), ("binary", "maybe", "type"),
               ("multiclass", "Platinum", "class"), ("multiclass", 1, "class"), ("multiclass", None, "missing"),
               ("regression", "12.5", "type"), ("regression", True, "type")]
    for task, label, rule in refused:
        reply = feedback(task, label)
        assert reply.status_code == 422, (task, label, reply.text)
        (detail,) = reply.json()["detail"]
        assert (detail["field"], detail["rule"]) == ("label", rule), (task, label, detail)
        assert detail["message"]
    nan = feedback("regression", None, f'{{"request_id": "{rid["regression"]}", "label": NaN}}')
    assert nan.status_code == 422 and nan.json()["detail"][0]["rule"] == "finite"
    assert "Verified" in feedback("multiclass", "x").json()["detail"][0]["message"]  # names the classes

    accepted = {"binary": ("bad", 1.0), "multiclass": ("Verified", 2.0), "regression": (12500.5, 12500.5)}
    for task, (label, _) in accepted.items():
        reply = feedback(task, label)
        assert reply.status_code == 202 and reply.json() == {"accepted": 1}, reply.text

    def stored(task: str) -> float | None:
        frame = read_predictions(str(fleet.log_root), models[task], since, datetime.now(UTC) + timedelta(minutes=1))
        labels = frame.loc[frame["request_id"] == rid[task], "label"].dropna()
        return float(labels.iloc[0]) if len(labels) else None

    for task, (_, expected) in accepted.items():
        assert _wait(lambda t=task: stored(t), 30, f"{task} feedback stored") == expected


def test_a_model_registered_after_the_start_is_discovered(fleet, models, mlf, data) -> None:
    name = f"crispflow-t_later_{MULTI}"
    assert name not in {m["name"] for m in http.get(f"{fleet.url}/models").json()["models"]}
    assert http.post(f"{fleet.url}/models/{name}/predict", json={"record": GOOD}).status_code == 404
    x = data[FEATURES].copy()
    version = _register(mlf, name, _regressor().fit(x, data["int_rate"]), x, {"crispflow.task": "regression"},
                        pipeline=f"t_later_{MULTI}")
    body = _wait(lambda: _ready_models(fleet.url, {name}), 60, "the new model discovered and loaded")
    assert body["models"][name] == {"champion": version, "task": "regression", "aliases": {"champion": version}}
    reply = http.post(f"{fleet.url}/models/{name}/predict", json={"record": GOOD})
    assert reply.status_code == 200, reply.text
    item = reply.json()["predictions"][0]
    assert item["model_version"] == version and item["interval"] is None  # no interval tag: none served
    assert set(body["models"]) >= set(models.values())  # the others are still served


def test_a_model_whose_champion_is_refused_does_not_take_the_others_down(fleet, models, mlf, mlflow_server,
                                                                        data) -> None:
    name = f"crispflow-t_tampered_{MULTI}"
    x = data[FEATURES].copy()
    version = _register(mlf, name, _regressor().fit(x, data["int_rate"]), x, {"crispflow.task": "regression"},
                        pipeline=f"t_tampered_{MULTI}")
    _tamper(mlf, mlflow_server, name, version)

    def refused() -> dict[str, Any] | None:
        reply = http.get(f"{fleet.url}/ready", timeout=5)
        return reply.json() if name in reply.json().get("refused", {}) else None

    body = _wait(refused, 60, "the tampered champion refused")
    assert body["ready"] is True and set(body["models"]) >= set(models.values()), body
    assert "sha256" in body["refused"][name] or "hash" in body["refused"][name], body["refused"][name]
    assert http.post(f"{fleet.url}/models/{name}/predict", json={"record": GOOD}).status_code == 503
    reply = http.post(f"{fleet.url}/models/{models['regression']}/predict", json={"record": GOOD})
    assert reply.status_code == 200, reply.text


def test_at_most_max_models_are_loaded_and_an_idle_one_loads_on_request(models, mlflow_server, tmp_path) -> None:
    config = ServeConfig(tracking_uri=mlflow_server.url, predictions_url=str(tmp_path), poll_interval=0.2,
                         log_flush_interval=60, max_models=1, only=(models["binary"], models["regression"]))
    with Running(config) as small:
        _wait(lambda: http.get(f"{small.url}/ready").status_code == 200, 60, "ready")

        def states() -> dict[str, str]:
            return {m["name"]: m["state"] for m in http.get(f"{small.url}/models").json()["models"]}

        first = states()
        assert sorted(first.values()) == ["idle", "ready"]
        loaded, idle = (next(n for n, s in first.items() if s == state) for state in ("ready", "idle"))
        assert http.get(f"{small.url}/ready").json()["idle"] == [idle]
        assert http.post(f"{small.url}/models/{loaded}/predict", json={"record": GOOD}).status_code == 200
        reply = http.post(f"{small.url}/models/{idle}/predict", json={"record": GOOD})
        assert reply.status_code == 200, reply.text  # loaded on request
        assert states() == {idle: "ready", loaded: "idle"}  # the least recently requested one was unloaded

        def flushed() -> pd.DataFrame | None:  # unloading closed its prediction log: its row is on disk already
            frame = read_predictions(str(tmp_path), loaded, datetime.now(UTC) - timedelta(minutes=5),
                                     datetime.now(UTC) + timedelta(minutes=1), with_feedback=False)
            return frame if len(frame) == 1 else None

        _wait(flushed, 30, "the unloaded model's log flushed")
        assert http.post(f"{small.url}/models/{loaded}/predict", json={"record": GOOD}).status_code == 200
        assert 'crispflow_serve_models{state="idle"} 1.0' in http.get(f"{small.url}/metrics").text
