"""How many native threads (BLAS, OpenMP) a fit or a scoring pass may use: one per process unless configured.

Training and batch scoring scale out across tasks and workers; nested native thread pools on a shared worker
oversubscribe the CPUs (measured: logistic regression 30x, gradient boosting up to 15x slower on a busy 2-CPU
machine). Each caller names its environment variable (`CRISPFLOW_TRAIN_THREADS`, `CRISPFLOW_SCORE_THREADS`).
"""

from __future__ import annotations

import os
from contextlib import AbstractContextManager
from typing import Any

from crispflow.errors import CrispflowError


def thread_limit(variable: str, error: type[CrispflowError] = CrispflowError) -> AbstractContextManager[Any]:
    """A context limiting native thread pools to the whole number in `variable` (default 1, at least 1); a value
    that is not a whole number raises `error`."""
    from threadpoolctl import threadpool_limits

    raw = os.environ.get(variable, "1")
    try:
        threads = int(raw)
    except ValueError:
        raise error(f"{variable}: expected a whole number, got {raw!r}") from None
    return threadpool_limits(limits=max(threads, 1))
