"""The one error the stack commands raise on purpose."""

from __future__ import annotations

from crispflow.errors import CrispflowError


class StackError(CrispflowError):
    """The stack cannot be started, inspected or stopped; the message says what to do."""
