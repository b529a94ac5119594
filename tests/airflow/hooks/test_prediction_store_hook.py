"""PredictionStoreHook: the store's root from the argument, else CRISPFLOW_PREDICTIONS_URL, else `<lake>/predictions`;
the connection from the argument ("" = none), else the lake's; a new path each call; the library reads and writes
real files through it."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from crispflow.monitoring import store
from crispflow_airflow.hooks.predictions import PredictionStoreHook

MODEL = "crispflow-demo"


@pytest.fixture(autouse=True)
def env(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("CRISPFLOW_LAKE_URL", (tmp_path / "lake").as_uri())
    monkeypatch.delenv("CRISPFLOW_PREDICTIONS_URL", raising=False)
    monkeypatch.delenv("CRISPFLOW_LAKE_CONN_ID", raising=False)


def test_the_default_root_is_under_the_lake_and_holds_real_files(tmp_path: Path) -> None:
    root = PredictionStoreHook().get_root()
    assert Path(root.path) == tmp_path / "lake" / "predictions" and root.conn_id is None
    end = datetime(2026, 3, 1, 1, tzinfo=UTC)
    summary = {"model": MODEL, "alias": "champion", "window_end": end.isoformat(), "status": "no_drift"}
    store.write_window(root, summary, {}, "")
    assert store.read_windows(tmp_path / "lake" / "predictions", MODEL) == [summary]
    assert store.read_windows(PredictionStoreHook().get_root(), MODEL) == [summary]
    assert PredictionStoreHook().get_root() is not root  # stateless: nothing cached on the hook


def test_the_environment_then_the_arguments_win(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("CRISPFLOW_PREDICTIONS_URL", (tmp_path / "preds").as_uri())
    monkeypatch.setenv("CRISPFLOW_LAKE_CONN_ID", "t_lake_conn")
    root = PredictionStoreHook().get_root()
    assert Path(root.path) == tmp_path / "preds" and root.conn_id == "t_lake_conn"  # the lake's connection
    mine = PredictionStoreHook(url=(tmp_path / "mine").as_uri(), conn_id="t_mine").get_root()
    assert Path(mine.path) == tmp_path / "mine" and mine.conn_id == "t_mine"
    assert PredictionStoreHook(conn_id="").get_root().conn_id is None  # "": explicitly no connection
