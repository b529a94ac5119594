"""The local profile's executor: its LocalExecutor workers start with the task libraries loaded (the tasks they fork
inherit them), and with none of crispflow's own modules (a code change applies at the next task)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from crispflow_airflow.executors.preloading_local_executor import is_scheduler

ROOT = Path(__file__).resolve().parents[3]

# In a fresh interpreter: build the executor outside and then inside the scheduler, start it with one worker, look
# at what the worker process has mapped and what the scheduler side imported, stop it.
PROBE = """
import json, sys
from crispflow_airflow.executors.preloading_local_executor import PreloadingLocalExecutor
before = sorted(m for m in ("sklearn", "pandas", "mlflow") if m in sys.modules)
PreloadingLocalExecutor(parallelism=1)  # as the api-server builds one to read task logs: no preload
elsewhere = sorted(m for m in ("sklearn", "pandas", "mlflow") if m in sys.modules)
sys.argv = ["/venv/bin/airflow", "scheduler"]
executor = PreloadingLocalExecutor(parallelism=1)
executor.start()
(pid,) = executor.workers
with open(f"/proc/{pid}/maps") as fh:
    maps = fh.read()
out = {"before": before, "elsewhere": elsewhere, "fork": executor.is_mp_using_fork,
       "worker_maps_sklearn": "/sklearn/" in maps, "worker_maps_pandas": "/pandas/" in maps,
       "crispflow_loaded": sorted(m for m in sys.modules if m.startswith("crispflow.")),
       "skops": "skops.io" in sys.modules}
executor.end()
print(json.dumps(out))
"""


def test_workers_start_with_the_libraries_and_without_crispflow_code(tmp_path: Path) -> None:
    env = {**os.environ, "AIRFLOW_HOME": str(tmp_path), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
           "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins")}
    done = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["before"] == []  # importing the executor (what Airflow's loader does) loads no library
    assert out["elsewhere"] == []  # nor does building one outside the scheduler
    assert out["fork"] is True
    assert out["worker_maps_sklearn"] and out["worker_maps_pandas"], out
    assert out["skops"] is True
    assert out["crispflow_loaded"] == [], out["crispflow_loaded"]


def test_only_the_scheduler_process_preloads() -> None:
    assert is_scheduler(["/x/.venv/bin/airflow", "scheduler", "--skip-serve-logs"])
    assert not is_scheduler(["/x/.venv/bin/airflow", "api-server"])
    assert not is_scheduler(["/x/.venv/bin/python", "-m", "pytest"])
    assert not is_scheduler(["/x/.venv/bin/airflow"])
