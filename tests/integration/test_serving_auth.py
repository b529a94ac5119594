"""The model server authenticates (issue 12, hole 2): the real `crispflow serve` process over real HTTP, its tokens
issued and revoked with the real `crispflow serve token` CLI, a real MLflow server and the real prediction log.

401 without a valid token, 403 with the wrong scope, /health and /ready open; revocation without a restart;
feedback only for answered requests, one label per request (also across a restart), the sender recorded; a
per-token rate limit (429 + Retry-After) and a bounded scoring queue (503 + Retry-After)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from support.servers import free_port, stop_process, wait_for_port
from support.serving import Running, token_file

from crispflow.model import registry
from crispflow.predictions.reader import read_feedback
from crispflow.serving.config import ServeConfig

pytest_plugins = ["support.mlflow_server"]
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
NUMERIC = ["int_rate", "annual_inc"]
FEATURES = [*NUMERIC, "term"]
GOOD = {"int_rate": 12.5, "annual_inc": 55000.0, "term": "term_36"}


def _cli() -> str:
    beside = Path(sys.executable).parent / "crispflow"
    return str(beside if beside.exists() else ROOT / ".venv" / "bin" / "crispflow")


@pytest.fixture(scope="module")
def model(mlflow_server) -> str:
    """`crispflow-t_auth_<id>`, a binary model, champion v1."""
    mlf = registry.client(mlflow_server.url)
    data = pd.read_parquet(ROOT / "include/data/lending_club.parquet").head(1000)
    x, y = data[FEATURES].copy(), data["Class"] == "bad"
    pipe = Pipeline([("columns", ColumnTransformer([("num", StandardScaler(), NUMERIC),
                                                    ("cat", OneHotEncoder(handle_unknown="ignore"), ["term"])])),
                     ("model", LogisticRegression(max_iter=300))]).fit(x, y)
    name = f"crispflow-t_auth_{uuid.uuid4().hex[:8]}"
    run_id = registry.find_or_create_run(mlf, "t_auth", f"{name}/0", "train")
    reg = registry.register(mlf, name=name, run_id=run_id, run_key=f"{name}/0", model=pipe, example=x.head(50),
                            tags={"crispflow.threshold": "0.5"})
    registry.set_alias(mlf, name, "champion", reg.version)
    return name


class Served:
    """`crispflow serve` as a subprocess with its own home (token file) and prediction log."""

    def __init__(self, home: Path, log_root: Path, model: str, mlflow_url: str) -> None:
        self.home, self.log_root, self.model, self.mlflow_url = home, log_root, model, mlflow_url
        self.env = {**os.environ, "CRISPFLOW_HOME": str(home), "PYTHONUNBUFFERED": "1"}
        self.env.pop("CRISPFLOW_SERVE_TOKENS_FILE", None)
        self.url = ""

    def token(self, *args: str) -> str:
        """`crispflow serve token ...`; its stdout."""
        done = subprocess.run([_cli(), "serve", "token", *args], env=self.env, capture_output=True, text=True,
                              timeout=60, check=True)
        return done.stdout

    def create(self, name: str, *scopes: str) -> dict[str, str]:
        secret = self.token("create", "--name", name, *(a for s in scopes for a in ("--scope", s)))
        return {"Authorization": f"Bearer {secret.strip().splitlines()[-1]}"}

    @contextmanager
    def running(self) -> Iterator[Served]:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        argv = [_cli(), "serve", "--model", self.model, "--only", self.model, "--port", str(port),
                "--tracking-uri", self.mlflow_url, "--predictions-url", str(self.log_root), "--poll-interval", "0.5"]
        with (self.home / f"serve-{port}.log").open("wb") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=self.env, start_new_session=True)
            try:
                wait_for_port(port, 90, proc)
                deadline = time.monotonic() + 60
                while httpx.get(f"{self.url}/ready", timeout=5).status_code != 200:
                    assert time.monotonic() < deadline, "the champion was not loaded in 60 s"
                    time.sleep(0.2)
                yield self
            finally:
                stop_process(proc, 60)


@pytest.fixture(scope="module")
def served(model, mlflow_server, tmp_path_factory) -> Iterator[tuple[Served, dict[str, dict[str, str]]]]:
    home = tmp_path_factory.mktemp("auth-home")
    srv = Served(home, home / "predictions", model, mlflow_server.url)
    keys = {"alice": srv.create("alice", "predict", "feedback"), "bob": srv.create("bob", "predict"),
            "ops": srv.create("ops", "admin", "metrics")}
    with srv.running():
        yield srv, keys


def _predict(url: str, headers: dict[str, str], n: int = 1) -> httpx.Response:
    return httpx.post(f"{url}/predict", json={"records": [GOOD] * n}, headers=headers, timeout=30)


def test_the_token_file_holds_hashes_only_and_is_private(served) -> None:
    srv, keys = served
    path = srv.home / "serve-tokens.json"
    text = path.read_text()
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    for header in keys.values():
        assert header["Authorization"].removeprefix("Bearer ") not in text
    assert "alice" in srv.token("list") and "cft_" not in srv.token("list")


def test_open_routes_and_401_403_per_scope(served) -> None:
    srv, keys = served
    url, name = srv.url, srv.model
    assert httpx.get(f"{url}/health").status_code == 200 and httpx.get(f"{url}/ready").status_code == 200
    routes = [("post", "/predict", "predict"), ("post", f"/models/{name}/predict", "predict"),
              ("post", "/feedback", "feedback"), ("post", f"/models/{name}/feedback", "feedback"),
              ("get", "/model", "admin"), ("get", "/models", "admin"), ("get", f"/models/{name}", "admin"),
              ("get", "/", "admin"), ("get", "/metrics", "metrics")]
    scopes = {"alice": {"predict", "feedback"}, "bob": {"predict"}, "ops": {"admin", "metrics"}}
    for method, path, scope in routes:
        body = {"json": {"record": GOOD}} if path.endswith("predict") else \
            {"json": {"request_id": str(uuid.uuid4()), "label": 1}} if method == "post" else {}
        for headers in ({}, {"Authorization": "Bearer cft_not-a-token"}, {"Authorization": "Basic YWxpY2U6eA=="}):
            reply = getattr(httpx, method)(f"{url}{path}", headers=headers, **body)
            assert reply.status_code == 401, (path, headers, reply.text)
            assert reply.headers["www-authenticate"] == "Bearer"
            assert reply.json()["detail"][0]["rule"] == "unauthenticated"
        for who, header in keys.items():
            reply = getattr(httpx, method)(f"{url}{path}", headers=header, **body)
            if scope in scopes[who]:
                assert reply.status_code not in (401, 403), (who, path, reply.text)
            else:
                assert reply.status_code == 403, (who, path, reply.text)
                assert reply.json()["detail"][0]["rule"] == "scope" and scope in reply.json()["detail"][0]["message"]
    assert _predict(url, keys["bob"]).status_code == 200
    metrics = httpx.get(f"{url}/metrics", headers=keys["ops"]).text
    assert 'crispflow_serve_requests_total{code="401",endpoint="auth",model=""}' in metrics


def test_a_revoked_token_is_refused_without_a_restart(served) -> None:
    srv, _ = served
    carol = srv.create("carol", "predict")
    assert _predict(srv.url, carol).status_code == 200
    srv.token("revoke", "--name", "carol")
    deadline = time.monotonic() + 10
    while (code := _predict(srv.url, carol).status_code) != 401:
        assert code == 200 and time.monotonic() < deadline, code
        time.sleep(0.1)
    assert "revoked" in srv.token("list")
    again = srv.create("carol", "predict")  # the name is free again, with a new secret
    assert _predict(srv.url, again).status_code == 200 and _predict(srv.url, carol).status_code == 401


def test_feedback_only_for_answered_requests_once_with_its_sender_also_after_a_restart(
        model, mlflow_server, tmp_path) -> None:
    srv = Served(tmp_path, tmp_path / "predictions", model, mlflow_server.url)
    alice = srv.create("alice", "predict", "feedback")
    since = datetime.now(UTC) - timedelta(seconds=5)

    def feedback(items: Any) -> httpx.Response:
        return httpx.post(f"{srv.url}/feedback", json=items, headers=alice, timeout=30)

    with srv.running():
        ids = [p["request_id"] for p in _predict(srv.url, alice, 3).json()["predictions"]]
        unknown = feedback({"request_id": str(uuid.uuid4()), "label": 1})
        assert unknown.status_code == 422 and unknown.json()["detail"][0]["rule"] == "unknown_request"
        assert feedback({"request_id": ids[0], "label": 1}).json() == {"accepted": 1}
        assert feedback({"request_id": ids[0], "label": True}).status_code == 202  # identical: accepted again
        second = feedback({"request_id": ids[0], "label": 0})
        assert second.status_code == 409 and second.json()["detail"][0]["rule"] == "one_label"
        twice = feedback([{"request_id": ids[1], "label": 1}, {"request_id": ids[1], "label": 0}])
        assert twice.status_code == 409
        mixed = feedback([{"request_id": ids[2], "label": 1}, {"request_id": ids[0], "label": 0}])
        assert mixed.status_code == 409  # all or nothing: ids[2] is not labelled by it
    with srv.running():  # a new process: the ids and the label come from the prediction log
        assert feedback({"request_id": ids[0], "label": 0}).status_code == 409
        assert feedback({"request_id": ids[0], "label": 1}).status_code == 202
        assert feedback({"request_id": ids[2], "label": 0}).status_code == 202
        assert feedback({"request_id": ids[2], "label": 1}).status_code == 409
        assert feedback({"request_id": str(uuid.uuid4()), "label": 1}).status_code == 422
    stored = read_feedback(str(srv.log_root), model, since, datetime.now(UTC) + timedelta(minutes=1))
    assert sorted(zip(stored["request_id"], stored["label"], stored["sender"], strict=True)) == \
        sorted([(ids[0], 1.0, "alice"), (ids[2], 0.0, "alice")])


# --- rate limit and queue bound: the app in this process (real uvicorn, real HTTP) ---------------------------


def _config(model: str, mlflow_url: str, tmp_path: Path, **kw: Any) -> ServeConfig:
    tokens = token_file(tmp_path, {"one": ("cft_one-0123456789abcdefghijklmnopqrstuvwxyz0", ("predict",)),
                                   "two": ("cft_two-0123456789abcdefghijklmnopqrstuvwxyz0", ("predict",))})
    return ServeConfig(model=model, only=(model,), tracking_uri=mlflow_url, predictions_url=None, poll_interval=0.5,
                       tokens_file=tokens, **kw)


def _ready(url: str) -> None:
    deadline = time.monotonic() + 60
    while httpx.get(f"{url}/ready", timeout=5).status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_each_token_is_rate_limited_with_429_and_retry_after(model, mlflow_server, tmp_path) -> None:
    one = {"Authorization": "Bearer cft_one-0123456789abcdefghijklmnopqrstuvwxyz0"}
    two = {"Authorization": "Bearer cft_two-0123456789abcdefghijklmnopqrstuvwxyz0"}
    with Running(_config(model, mlflow_server.url, tmp_path, rate_limit=0.5, rate_burst=3)) as server:
        _ready(server.url)
        codes = [_predict(server.url, one).status_code for _ in range(4)]
        assert codes == [200, 200, 200, 429]
        limited = _predict(server.url, one)
        assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
        assert limited.json()["detail"][0]["rule"] == "rate_limit"
        assert _predict(server.url, two).status_code == 200  # per token: another token is not limited


def test_a_full_scoring_queue_answers_503_with_retry_after(model, mlflow_server, tmp_path) -> None:
    key = {"Authorization": "Bearer cft_one-0123456789abcdefghijklmnopqrstuvwxyz0"}
    config = _config(model, mlflow_server.url, tmp_path, max_queue=1, batch_requests=1, rate_limit=1e6,
                     rate_burst=1_000_000)
    codes: list[int] = []
    retry: set[str] = set()
    lock = threading.Lock()
    with Running(config) as server:
        _ready(server.url)
        stop = time.monotonic() + 4

        def fire() -> None:
            with httpx.Client(headers=key, timeout=30) as client:
                while time.monotonic() < stop:
                    reply = client.post(f"{server.url}/predict", json={"records": [GOOD] * 500})
                    with lock:
                        codes.append(reply.status_code)
                        if reply.status_code == 503:
                            retry.add(reply.headers.get("retry-after", ""))
                            assert reply.json()["detail"][0]["rule"] == "queue_full"

        threads = [threading.Thread(target=fire) for _ in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert set(codes) == {200, 503}, set(codes)
    assert retry == {"1"}
