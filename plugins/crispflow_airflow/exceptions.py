"""Airflow-facing errors: bad data and bad configuration fail without retries, each with its own type."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from airflow.sdk.exceptions import AirflowException, AirflowFailException

from crispflow.errors import (
    ApprovalRefused,
    DataRejected,
    GateMisconfigured,
    LakeError,
    ParamsError,
    SourceError,
    SpecError,
)
from crispflow.model.registry import RegistryError, auth_error
from crispflow.release.promotion import OutsideMove, PromotionConflict, PromotionRefused
from crispflow.serving.batch_scoring import ScoringError


class DataQualityFailed(AirflowFailException):
    """The data is bad: results and quarantine are stored; retrying cannot help."""


class GateConfigurationError(AirflowFailException):
    """The gate or a spec is misconfigured, or a library crashed: not a verdict on the data."""


class InvalidRequest(AirflowFailException):
    """A run's conf/params or an asset event's payload is malformed."""


class PromotionAborted(AirflowFailException):
    """Another promotion moved the aliases first, or the move is not allowed: nothing was moved."""


class ScoringFailed(AirflowFailException):
    """The scoring request or the stored plan/parts are inconsistent: retrying cannot help."""


class ModelRefused(AirflowFailException):
    """The registry's model failed its artifact hash check (or is incomplete): never used, never retried."""


class ApprovalInvalid(AirflowFailException):
    """A human approval does not hold (e.g. approved by its own requester): nothing recorded, never retried."""


class OutsideAliasMove(AirflowFailException):
    """Serving aliases were moved in the registry outside crispflow: recorded in the ledger; this run fails once
    to alert (the next run finds the ledger agreeing)."""


class RegistryAccessDenied(AirflowFailException):
    """MLflow answered 401/403: the credentials are missing, wrong or not allowed; retrying cannot help."""


class SourceUnavailable(AirflowException):
    """A source could not be reached; retried with backoff."""


@contextmanager
def as_airflow_errors() -> Iterator[None]:
    """Translate crispflow's typed errors into the Airflow exceptions that decide retry behaviour."""
    try:
        yield
    except DataRejected as exc:
        raise DataQualityFailed(f"data rejected: {exc}") from exc
    except SourceError as exc:
        if exc.retryable:
            raise SourceUnavailable(str(exc)) from exc
        raise DataQualityFailed(f"data rejected: {exc}") from exc
    except (GateMisconfigured, SpecError, LakeError) as exc:
        raise GateConfigurationError(f"misconfiguration (not a data problem): {exc}") from exc
    except ParamsError as exc:
        raise InvalidRequest(f"invalid request: {exc}") from exc
    except ApprovalRefused as exc:
        raise ApprovalInvalid(f"approval refused, nothing recorded: {exc}") from exc
    except OutsideMove as exc:
        raise OutsideAliasMove(str(exc)) from exc
    except (PromotionConflict, PromotionRefused) as exc:
        raise PromotionAborted(f"promotion aborted, no alias moved: {exc}") from exc
    except RegistryError as exc:
        raise ModelRefused(f"model refused: {exc}") from exc
    except ScoringError as exc:
        raise ScoringFailed(f"scoring: {exc}") from exc
    except Exception as exc:
        if (refused := auth_error(exc)) is not None:  # MLflow 401/403: never retried
            raise RegistryAccessDenied(f"MLflow refused the credentials ({refused}); check the MLflow connection's "
                                       "user and its permissions") from exc
        raise
