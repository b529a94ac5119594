"""`crispflow serve` options: defaults from settings, the model from the environment or the only spec."""

from __future__ import annotations

import argparse
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from crispflow.errors import CrispflowError
from crispflow.serving.cli import add_arguments, build_config, default_model
from crispflow.serving.config import ServeConfig, ServeConfigError
from crispflow.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


@pytest.fixture
def settings(tmp_path, monkeypatch) -> Settings:
    monkeypatch.delenv("CRISPFLOW_SERVE_MODEL", raising=False)
    pipelines = tmp_path / "pipelines"
    pipelines.mkdir()
    shutil.copy(ROOT / "include/pipelines/lending_club.yaml", pipelines)
    return replace(Settings.from_env(), pipelines_dir=pipelines)


def test_defaults_come_from_the_only_spec_and_the_settings(settings) -> None:
    config = build_config(_parse(), settings)
    assert config.model == "crispflow-lending_club"
    assert config.tracking_uri == settings.mlflow_tracking_uri and config.predictions_url == settings.predictions_url
    assert (config.poll_interval, config.max_body_bytes, config.max_records) == (2.0, 1 << 20, 1000)
    assert config.positive_labels == ("bad",) and config.negative_labels == ("good",)


def test_options_and_the_environment_win(settings, monkeypatch) -> None:
    monkeypatch.setenv("CRISPFLOW_SERVE_MODEL", "crispflow-other")
    assert default_model(settings) == "crispflow-other"
    config = build_config(_parse("--model", "m", "--predictions-url", "none", "--poll-interval", "0.5",
                                 "--max-records", "5"), settings)
    assert (config.model, config.predictions_url, config.poll_interval, config.max_records) == ("m", None, 0.5, 5)


def test_no_model_and_no_single_spec_is_a_clear_error(settings) -> None:
    shutil.copy(settings.pipelines_dir / "lending_club.yaml", settings.pipelines_dir / "other.yaml")
    with pytest.raises(CrispflowError, match="--model"):
        default_model(settings)


@pytest.mark.parametrize("argv", [("--poll-interval", "0"), ("--max-records", "-1"), ("--max-body-bytes", "x")])
def test_bad_options_are_refused(argv) -> None:
    with pytest.raises(SystemExit):
        _parse(*argv)


@pytest.mark.parametrize(("field", "value"), [("poll_interval", 0), ("max_records", 0), ("max_body_bytes", True),
                                              ("model", " ")])
def test_bad_config_names_the_field(field, value) -> None:
    kwargs = {"model": "m", field: value}
    with pytest.raises(ServeConfigError, match=field):
        ServeConfig(**kwargs)
