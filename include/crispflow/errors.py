"""Typed errors. Each says what failed, where (pipeline / source / column / field) and which rule.

Airflow maps them (plugins/crispflow_airflow/exceptions.py): `DataRejected` and a non-retryable
`SourceError` fail the task without retries (the data is bad); `GateMisconfigured` is an error of ours or of a
library, reported distinctly from "the data is bad".
"""

from __future__ import annotations


class CrispflowError(Exception):
    """Base class of every error crispflow raises on purpose."""


class SpecError(CrispflowError):
    """A pipeline spec is invalid; the message names the file and the field."""


class ParamsError(CrispflowError):
    """A run's `conf`/params or an asset event's payload is invalid; the message names the field."""


class SourceError(CrispflowError):
    """A source could not be read. `retryable` is False when retrying cannot help (corrupt, empty file)."""

    def __init__(self, source: str, message: str, *, retryable: bool = False) -> None:
        super().__init__(f"source {source!r}: {message}")
        self.source = source
        self.retryable = retryable


class DataRejected(CrispflowError):
    """The batch as a whole fails the quality gate; its rows stay in the raw zone and in quarantine."""

    def __init__(self, rule: str, message: str, column: str | None = None) -> None:
        where = f"column {column!r}: " if column else ""
        super().__init__(f"{where}{message} [rule: {rule}]")
        self.rule = rule
        self.column = column


class GateMisconfigured(CrispflowError):
    """The gate itself is broken (an expectation that cannot run, a GX crash): not a verdict on the data."""


class LakeError(CrispflowError):
    """The lake holds something inconsistent, e.g. a version whose content hash does not match its id."""


class SupersededVersion(LakeError):
    """A dataset version an erasure purged: only its tombstone is left, naming its successor."""


class ApprovalRefused(CrispflowError):
    """A human approval does not hold (no approver, no reason, or the approver is the requester)."""
