"""One thread limit for fits and scoring passes: the variable's whole number (at least 1), else a typed error."""

from __future__ import annotations

import pytest
from threadpoolctl import threadpool_info

from crispflow.errors import CrispflowError
from crispflow.native_threads import thread_limit
from crispflow.serving.batch_scoring import ScoringError


def _max_threads() -> int:
    return max((pool["num_threads"] for pool in threadpool_info()), default=1)


@pytest.mark.parametrize(("value", "expected"), [(None, 1), ("1", 1), ("0", 1), ("-3", 1)])
def test_limit_defaults_to_one_thread(monkeypatch, value, expected) -> None:
    import numpy  # noqa: F401  (loads a BLAS pool to limit)

    if value is None:
        monkeypatch.delenv("CRISPFLOW_TEST_THREADS", raising=False)
    else:
        monkeypatch.setenv("CRISPFLOW_TEST_THREADS", value)
    with thread_limit("CRISPFLOW_TEST_THREADS"):
        assert _max_threads() == expected


def test_a_value_that_is_not_a_whole_number_raises_the_callers_error(monkeypatch) -> None:
    monkeypatch.setenv("CRISPFLOW_TEST_THREADS", "two")
    with pytest.raises(CrispflowError, match="CRISPFLOW_TEST_THREADS: expected a whole number, got 'two'"):
        thread_limit("CRISPFLOW_TEST_THREADS")
    with pytest.raises(ScoringError, match="CRISPFLOW_TEST_THREADS"):
        thread_limit("CRISPFLOW_TEST_THREADS", ScoringError)
