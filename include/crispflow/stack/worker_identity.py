"""The host name an Airflow worker reports for its task instances (`[core] hostname_callable`).

Two Celery workers on one machine would both report the machine's name; the prod-local profile gives each
its own (`CRISPFLOW_WORKER_NAME`), so a run's task instances show which worker ran them, as on real hosts.
"""

from __future__ import annotations

import os
import socket

WORKER_NAME_ENV = "CRISPFLOW_WORKER_NAME"


def hostname() -> str:
    """`<worker name>.<fqdn>` when CRISPFLOW_WORKER_NAME is set, else the fully qualified host name."""
    fqdn = socket.getfqdn()
    name = os.environ.get(WORKER_NAME_ENV, "").strip()
    return f"{name}.{fqdn}" if name else fqdn
