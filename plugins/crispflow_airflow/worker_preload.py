"""Celery worker preload: import the libraries and crispflow modules the tasks use, once, in the worker's main
process (`crispflow_airflow.preload`).

Every Airflow task runs in a process forked from its Celery worker, so what the worker imported at start is
already loaded in each task: a scoring or training task then starts in well under a second instead of spending
~5 s importing pandas, pyarrow, scikit-learn, MLflow and skops. Airflow does the same for its own modules
(`celery_import_modules`); this module is listed in Celery's `imports` setting:

    AIRFLOW__CELERY__EXTRA_CELERY_CONFIG='{"imports": ["crispflow_airflow.worker_preload"]}'
"""

from __future__ import annotations

from crispflow_airflow.preload import CRISPFLOW, LIBRARIES, preload

preload((*LIBRARIES, *CRISPFLOW))
