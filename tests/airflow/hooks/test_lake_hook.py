"""LakeHook: the lake root from the argument, else CRISPFLOW_LAKE_URL; a connection id travels with the path;
a new Lake each call (stateless)."""

from __future__ import annotations

from pathlib import Path

from crispflow.lake import read_json, write_json
from crispflow_airflow.hooks.lake import LakeHook


def test_the_root_comes_from_the_environment_and_holds_real_files(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("CRISPFLOW_LAKE_URL", (tmp_path / "lake").as_uri())
    lake = LakeHook().get_lake()
    write_json(lake.manifest("p", "ds-1"), {"ok": True})
    assert read_json(tmp_path / "lake" / "curated" / "p" / "ds-1" / "manifest.json") == {"ok": True}
    assert lake.relative(lake.manifest("p", "ds-1")) == "curated/p/ds-1/manifest.json"
    assert LakeHook().get_lake() is not lake  # stateless: nothing cached on the hook


def test_an_explicit_url_and_connection_win(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("CRISPFLOW_LAKE_URL", (tmp_path / "elsewhere").as_uri())
    lake = LakeHook(url=(tmp_path / "mine").as_uri(), conn_id="t_lake").get_lake()
    assert lake.root.conn_id == "t_lake" and str(lake.root.path).rstrip("/").endswith("mine")
    monkeypatch.setenv("CRISPFLOW_LAKE_CONN_ID", "t_env_conn")
    assert LakeHook().get_lake().root.conn_id == "t_env_conn"
