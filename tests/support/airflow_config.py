"""What the installed Airflow accepts as configuration, read without importing Airflow (that takes seconds)."""

from __future__ import annotations

import configparser
import functools
import importlib.metadata
import importlib.util
from pathlib import Path

import yaml


def package_dir(name: str) -> Path:
    """An installed package's folder, found without importing it."""
    spec = importlib.util.find_spec(name)
    assert spec and spec.submodule_search_locations, f"{name} is not installed"
    return Path(next(iter(spec.submodule_search_locations)))


@functools.cache
def airflow_config_options() -> frozenset[tuple[str, str]]:
    """(section, option) pairs Airflow knows: its config.yml, the provider fallbacks it ships and the installed
    providers' own configuration (the celery provider's `extra_celery_config`, say)."""
    templates = package_dir("airflow") / "config_templates"
    known = {
        (section, option)
        for section, body in yaml.safe_load((templates / "config.yml").read_text()).items()
        for option in (body.get("options") or {})
    }
    fallback = configparser.ConfigParser(interpolation=None)
    fallback.read(templates / "provider_config_fallback_defaults.cfg")
    known |= {(section, option) for section in fallback.sections() for option in fallback[section]}
    for entry in importlib.metadata.entry_points(group="apache_airflow_provider"):
        for section, body in (entry.load()().get("config") or {}).items():
            known |= {(section, option) for option in body.get("options") or {}}
    return frozenset(known)
