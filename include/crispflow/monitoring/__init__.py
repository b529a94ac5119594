"""Monitoring: reference profiles per model version, drift of windows against them, and drift reports.

The statistics are pure numpy/scipy/pandas (no Airflow, no MLflow): `build_profile` at training time,
`compute_drift` per window, `crispflow.monitoring.report` for the JSON and HTML report, `crispflow drift`
(crispflow.monitoring.cli). Around them: `windows` (one window of the prediction log, judged and stored),
`monitor` (every served alias of a model, with MLflow), `store` (the drift store), `episodes` (when drift fires a
retrain), `alerts` (one digest per episode), `retrain` (the training run an episode asks for), `gauges`.
Names are imported lazily: `crispflow --help` must not pay for scipy.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "DriftSettings": "crispflow.monitoring.drift",
    "compute_drift": "crispflow.monitoring.drift",
    "DriftInputError": "crispflow.model.reference_profile",
    "build_profile": "crispflow.model.reference_profile",
    "load_profile": "crispflow.model.reference_profile",
    "save_profile": "crispflow.model.reference_profile",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    import importlib

    if name not in _EXPORTS:
        raise AttributeError(f"module 'crispflow.monitoring' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
