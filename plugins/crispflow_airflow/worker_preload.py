"""Celery worker preload: import the libraries crispflow's tasks use, once, in the worker's main process.

Every Airflow task runs in a process forked from its Celery worker, so what the worker imported at start is
already loaded in each task: a scoring or training task then starts in well under a second instead of spending
~5 s importing pandas, pyarrow, scikit-learn, MLflow and skops. Airflow does the same for its own modules
(`celery_import_modules`); this module is listed in Celery's `imports` setting:

    AIRFLOW__CELERY__EXTRA_CELERY_CONFIG='{"imports": ["crispflow_airflow.worker_preload"]}'

Only imports: no connections, threads or files are opened here (they would not survive the fork).
"""

from __future__ import annotations

import gc
import importlib

MODULES = (
    "numpy",
    "pandas",
    "pyarrow.parquet",
    "sklearn.pipeline",
    "sklearn.compose",
    "sklearn.preprocessing",
    "sklearn.impute",
    "sklearn.linear_model",
    "sklearn.ensemble",
    "sklearn.calibration",
    "sklearn.model_selection",
    "mlflow.sklearn",
    "upath",
    "s3fs",
    "crispflow.model.registry",
    "crispflow.serving.batch_scoring",
    "crispflow.model.training",
    "crispflow.model.features",
    "crispflow.lake",
)


def preload() -> None:
    from crispflow.model.registry import import_skops

    for name in MODULES:
        importlib.import_module(name)
    import_skops()
    gc.freeze()  # keep the preloaded objects out of the collector: forked tasks then share their pages


preload()
