"""The `crispflow` console script: start, inspect and stop the local stack, and run the demo."""

from __future__ import annotations
