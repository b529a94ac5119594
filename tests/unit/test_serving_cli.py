"""`crispflow serve` options: defaults from settings, the model from the environment or the only spec."""

from __future__ import annotations

import argparse
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

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


def test_several_specs_need_no_model_and_each_binary_spec_gets_its_feedback_labels(settings) -> None:
    text = (settings.pipelines_dir / "lending_club.yaml").read_text()
    (settings.pipelines_dir / "other.yaml").write_text(text.replace("name: lending_club", "name: other", 1))
    assert default_model(settings) is None  # the server then defaults to the only registered model, if one
    config = build_config(_parse("--only", "crispflow-lending*", "--only", "crispflow-other", "--max-models", "3"),
                          settings)
    assert config.model is None and config.discover
    assert config.only == ("crispflow-lending*", "crispflow-other") and config.max_models == 3
    assert config.feedback_labels == {"crispflow-lending_club": (("bad",), ("good",)),
                                      "crispflow-other": (("bad",), ("good",))}
    assert config.positive_labels == ()  # no default model: the labels are per model


def test_a_specs_allowed_estimators_are_the_only_extra_modules_its_model_may_hold(settings) -> None:
    path = settings.pipelines_dir / "lending_club.yaml"
    path.write_text(path.read_text().replace("training:\n", "training:\n  allowed_estimators: [lightgbm.]\n", 1))
    config = build_config(_parse(), settings)
    assert config.trusted == {"crispflow-lending_club": ("lightgbm.",)}


def test_no_specs_at_all_is_fine(settings) -> None:
    (settings.pipelines_dir / "lending_club.yaml").unlink()
    config = build_config(_parse(), settings)
    assert config.model is None and config.feedback_labels == {}


@pytest.mark.parametrize("argv", [("--poll-interval", "0"), ("--max-records", "-1"), ("--max-body-bytes", "x"),
                                  ("--max-models", "0")])
def test_bad_options_are_refused(argv) -> None:
    with pytest.raises(SystemExit):
        _parse(*argv)


@pytest.mark.parametrize(("field", "value"), [("poll_interval", 0), ("max_records", 0), ("max_body_bytes", True),
                                              ("model", " "), ("max_models", 0), ("only", "crispflow-*"),
                                              ("only", ("",))])
def test_bad_config_names_the_field(field, value) -> None:
    kwargs = {"model": "m", field: value}
    with pytest.raises(ServeConfigError, match=field):
        ServeConfig(**kwargs)


def test_serving_only_the_default_model_needs_one() -> None:
    with pytest.raises(ServeConfigError, match="discover"):
        ServeConfig(discover=False)
    assert ServeConfig().model is None
