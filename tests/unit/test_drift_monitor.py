"""crispflow.monitoring.monitor without Airflow: request checks, and `monitor` against a real MLflow server and a
real prediction log (champion judged and stored, its report in MLflow as stored; a version without a reference
profile is a misconfiguration raised after the other aliases are stored)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from crispflow.errors import GateMisconfigured, ParamsError
from crispflow.monitoring.monitor import (
    MAX_WINDOW_MINUTES,
    ReferenceProfilesMissing,
    monitor,
    window_length,
)

pytest_plugins = ["support.mlflow_server"]

END = datetime(2026, 11, 20, 10, tzinfo=UTC)
START = END - timedelta(hours=1)


def test_window_minutes_are_an_integer_in_range_or_nothing() -> None:
    assert window_length(None) is None and window_length("") is None
    assert window_length(30) == window_length("30") == timedelta(minutes=30)
    assert window_length(MAX_WINDOW_MINUTES) == timedelta(days=7)
    for bad in (0, MAX_WINDOW_MINUTES + 1, True, 1.5, "x", [5]):
        with pytest.raises(ParamsError, match=r"window_minutes: must be an integer in \[1, 10080\] or null"):
            window_length(bad)


def test_a_missing_profile_is_a_misconfiguration() -> None:
    assert issubclass(ReferenceProfilesMissing, GateMisconfigured)


# --- monitor() against a real MLflow server -------------------------------------------------------------------------


def registered(mlf, model: str, profiles: list[dict | None]) -> list[str]:
    """Versions of `model` (one run each), with a reference profile logged and tagged where given."""
    from crispflow.monitoring.windows import REFERENCE_TAG

    mlf.create_registered_model(model)
    exp = mlf.create_experiment(f"exp-{model}")
    versions = []
    for profile in profiles:
        run_id = mlf.create_run(exp).info.run_id
        mv = mlf.create_model_version(model, f"runs:/{run_id}/model", run_id=run_id)
        if profile is not None:
            mlf.log_text(run_id, json.dumps(profile), "reference_profile/p.json")
            mlf.set_model_version_tag(model, mv.version, REFERENCE_TAG, f"runs:/{run_id}/reference_profile/p.json")
        versions.append(str(mv.version))
    return versions


@pytest.fixture(scope="module")
def profile() -> dict:
    import pandas as pd

    from crispflow.model.features import features
    from crispflow.monitoring import build_profile
    from crispflow.settings import project_root
    from crispflow.spec import load_spec

    spec = load_spec("lending_club")
    loans = pd.read_parquet(project_root() / "include" / "data" / "lending_club.parquet").head(2000)
    return build_profile(spec, features(spec, loans))


@pytest.fixture
def mlf(mlflow_server):
    from crispflow.model.registry import client

    return client(mlflow_server.url)


@pytest.mark.slow
def test_monitor_judges_each_alias_once_and_raises_for_a_missing_profile_after_storing(mlf, profile,
                                                                                      tmp_path: Path) -> None:
    from crispflow.monitoring.store import read_windows

    model = f"crispflow-t_mon_{uuid.uuid4().hex[:6]}"
    champion, canary = registered(mlf, model, [profile, None])
    mlf.set_registered_model_alias(model, "champion", champion)
    out = monitor(mlf, tmp_path, model, start=START, end=END)
    assert set(out) == {"model", "window_start", "window_end", "summaries", "store"}
    assert (out["window_start"], out["window_end"], out["store"]) == (START.isoformat(), END.isoformat(),
                                                                      str(tmp_path))
    (summary,) = out["summaries"]
    assert summary["alias"] == "champion" and summary["status"] == "insufficient_data" and summary["rows"] == 0
    run_id = mlf.get_model_version(model, champion).run_id
    assert summary["mlflow_artifact"] == f"runs:/{run_id}/drift/20261120T100000Z-champion.json"
    stored_html = (Path(summary["report"]).parent / "report.html").read_text()
    logged = mlf.download_artifacts(run_id, "drift/20261120T100000Z-champion.html", str(tmp_path / "dl"))
    assert Path(logged).read_text() == stored_html  # rendered once: the same page in the store and in MLflow

    mlf.set_registered_model_alias(model, "canary", canary)
    later = END + timedelta(hours=1)
    with pytest.raises(ReferenceProfilesMissing, match=rf"other aliases were stored\): canary: {model} v{canary}"):
        monitor(mlf, tmp_path, model, start=END, end=later)
    assert read_windows(tmp_path, model)[-1]["window_end"] == later.isoformat()  # the champion was stored
    assert read_windows(tmp_path, model, alias="canary") == []
    assert monitor(mlf, tmp_path, model, start=END, end=later, aliases=("champion",))["summaries"]


@pytest.mark.slow
def test_without_a_champion_nothing_is_judged(mlf, profile, tmp_path: Path) -> None:
    model = f"crispflow-t_mon_{uuid.uuid4().hex[:6]}"
    registered(mlf, model, [profile])
    out = monitor(mlf, tmp_path, model, start=START, end=END)
    assert out == {"model": model, "window_start": START.isoformat(), "window_end": END.isoformat(),
                   "summaries": []}
    assert not (tmp_path / model).exists()


@pytest.mark.slow
def test_monitor_judges_a_regression_champion_and_refuses_a_profile_of_another_task(mlf, tmp_path: Path) -> None:
    """The version's `crispflow.task` tag and its profile must agree; a regression window's label drift (observed
    rates 3 points higher than the model's reference) is judged from the float64 feedback."""
    import numpy as np
    import pandas as pd

    from crispflow.model.features import features
    from crispflow.monitoring import build_profile
    from crispflow.monitoring.store import read_windows
    from crispflow.predictions.writer import PredictionLog
    from crispflow.settings import project_root
    from crispflow.spec import load_spec

    spec = load_spec("lending_club_rate")
    loans = pd.read_parquet(project_root() / "include" / "data" / "lending_club.parquet").head(3000)
    rate = loans["int_rate"].to_numpy(float)
    prediction = rate + np.random.default_rng(0).normal(0, 2.0, len(rate))  # a stand-in model with RMSE ~2
    profile = build_profile(spec, features(spec, loans.head(2000)), scores=prediction[:2000], labels=rate[:2000])
    model = f"crispflow-t_mon_{uuid.uuid4().hex[:6]}"
    champion, canary = registered(mlf, model, [profile, profile])
    mlf.set_model_version_tag(model, champion, "crispflow.task", "regression")
    mlf.set_model_version_tag(model, canary, "crispflow.task", "multiclass")  # the profile is a regression one
    mlf.set_registered_model_alias(model, "champion", champion)
    mlf.set_registered_model_alias(model, "canary", canary)
    window = loans.iloc[2000:3000]
    x = features(spec, window)
    step = (END - START) / (len(window) + 1)
    rows = [{"request_id": f"r{i}", "ts": START + step * (i + 1), "version": champion, "alias": "champion",
             "served": True, "score": float(prediction[2000 + i]), "latency_ms": 2.0, "status": "ok",
             "features": x.iloc[i].to_dict()} for i in range(len(window))]
    plog = PredictionLog(tmp_path, model)
    plog.log(rows)
    plog.log_feedback([{"request_id": f"r{i}", "label": float(rate[2000 + i]) + 3.0, "ts": END}
                       for i in range(len(window))])
    plog.close()
    with pytest.raises(ReferenceProfilesMissing, match=r"task: the profile is for a regression model, the "
                                                       r"version's tag 'crispflow\.task' says 'multiclass'"):
        monitor(mlf, tmp_path, model, start=START, end=END)
    (summary,) = read_windows(tmp_path, model)  # the champion was judged and stored before the error
    assert summary["drift"] and summary["labelled_rows"] == 1000 and not summary["prediction_drift"]
    report = json.loads(Path(summary["report"]).read_text())
    assert report["task"] == "regression" and report["label"]["drifted"]
    assert report["performance"]["metrics"]["rmse"]["degraded"]
    assert report["performance"]["metrics"]["rmse"]["current"] > report["performance"]["metrics"]["rmse"]["reference"]
