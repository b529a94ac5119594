"""Monitoring: reference profiles per model version, drift of windows against them, and drift reports.

Pure numpy/scipy/pandas (no Airflow, no MLflow): `build_profile` at training time, `compute_drift` per window,
`crispflow.monitoring.report` for the JSON and HTML report, `crispflow drift` (crispflow.monitoring.cli).
"""

from __future__ import annotations

from crispflow.monitoring.drift import DriftSettings, compute_drift
from crispflow.monitoring.profile import DriftInputError, build_profile, load_profile, save_profile

__all__ = ["DriftInputError", "DriftSettings", "build_profile", "compute_drift", "load_profile", "save_profile"]
