"""Airflow's LocalExecutor whose worker processes start with crispflow's libraries already imported.

Each LocalExecutor worker runs a task by forking a supervised task process from itself (Airflow 3's supervisor
uses a bare ``os.fork`` on Linux). A plain LocalExecutor's workers have imported only Airflow, so every task
spends 5-25 s importing pandas, pyarrow, scikit-learn and MLflow again. This executor imports them once, in the
scheduler, before LocalExecutor forks its workers: workers and their tasks share those pages copy-on-write
and a task starts with them loaded, as Celery workers do with ``crispflow_airflow.worker_preload``. Only the
third-party libraries are preloaded (`crispflow_airflow.preload.LIBRARIES`), so an edit to crispflow's code is
used by the next task without restarting the scheduler.

Selected with ``AIRFLOW__CORE__EXECUTOR=crispflow_airflow.executors.preloading_local_executor.PreloadingLocalExecutor``
(the local profile's default). Nothing else changes: same queues, same parallelism, same task isolation.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from airflow.executors.local_executor import LocalExecutor


class PreloadingLocalExecutor(LocalExecutor):
    """LocalExecutor that preloads the task libraries, in the scheduler, before its workers are forked."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Here, not in start(): the scheduler builds its executors before its job's first heartbeat, and start()
        # runs after it (a 20-40 s preload there reads as a stale scheduler). Other processes that build an
        # executor (the api-server, to read task logs) do not fork tasks: they skip it.
        if self.is_mp_using_fork and is_scheduler():
            from crispflow_airflow.preload import LIBRARIES, preload

            preload(LIBRARIES)  # not crispflow's own modules: a code change applies at the next task


def is_scheduler(argv: Sequence[str] | None = None) -> bool:
    """This process is `airflow scheduler`."""
    argv = sys.argv if argv is None else argv
    return len(argv) > 1 and Path(argv[0]).name == "airflow" and argv[1] == "scheduler"
