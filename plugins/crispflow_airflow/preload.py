"""What a process that forks Airflow tasks imports once, so that each task starts with it loaded.

`LIBRARIES` are the third-party modules crispflow's tasks use (5-25 s to import on a busy 2-core machine);
`CRISPFLOW` are crispflow's own. The LocalExecutor (`crispflow_airflow.executors`) preloads only the libraries,
so a change to crispflow's code takes effect at the next task, as with a plain LocalExecutor; Celery workers
(`crispflow_airflow.worker_preload`) preload both, as deployed workers run a fixed release.

Only imports: no connections, threads or files are opened here (they would not survive the fork).
"""

from __future__ import annotations

import gc
import importlib
import warnings
from collections.abc import Sequence

LIBRARIES = (
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
    "skops.io",
    "great_expectations",  # the quality gate: ~5-17 s to import, once per ingest otherwise
    "shap",  # the local explainer (explain task)
    "matplotlib.figure",  # evaluation plots and partial dependence images (Agg canvas, no pyplot)
    "matplotlib.backends.backend_agg",
)
CRISPFLOW = (
    "crispflow.model.registry",
    "crispflow.serving.batch_scoring",
    "crispflow.model.training",
    "crispflow.model.features",
    "crispflow.lake",
)


def preload(modules: Sequence[str]) -> None:
    """Import `modules`, then freeze the collector so that forked tasks share the preloaded pages."""
    with warnings.catch_warnings():
        # skops.io's import-time scan looks up every scipy ufunc in every loaded module; in an Airflow process
        # each lookup of a deprecated alias warns (~1,200 log lines), as in crispflow.model.registry.import_skops
        warnings.filterwarnings("ignore", message=r"The `airflow\.")
        warnings.simplefilter("ignore", PendingDeprecationWarning)  # shap's plotting module, on import
        for name in modules:
            importlib.import_module(name)
    gc.freeze()
