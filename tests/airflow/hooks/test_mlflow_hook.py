"""MlflowHook: the tracking URI from the `mlflow_default` connection (credentials handed to MLflow's client),
else MLFLOW_TRACKING_URI; the client talks to a real server."""

from __future__ import annotations

import json
import os

from crispflow_airflow.hooks.mlflow import MlflowHook

pytest_plugins = ["support.mlflow_server"]


def test_without_a_connection_the_environment_names_the_server(mlflow_server, monkeypatch) -> None:
    monkeypatch.delenv("AIRFLOW_CONN_MLFLOW_DEFAULT", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.url)
    hook = MlflowHook()
    assert hook.tracking_uri() == mlflow_server.url
    assert any(e.name == "Default" for e in hook.get_client().search_experiments())  # a real round trip


def test_a_connection_gives_the_uri_and_the_credentials(mlflow_server, monkeypatch) -> None:
    host, port = mlflow_server.url.removeprefix("http://").split(":")
    monkeypatch.setenv("AIRFLOW_CONN_T_MLFLOW", json.dumps(
        {"conn_type": "http", "host": host, "port": int(port), "login": "ann", "password": "s3cret"}))
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    hook = MlflowHook(mlflow_conn_id="t_mlflow")
    assert hook.tracking_uri() == mlflow_server.url
    assert (os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"]) == ("ann", "s3cret")
    hook.get_client().search_experiments()  # the test server has no auth: credentials are sent and ignored
