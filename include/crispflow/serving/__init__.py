"""The model server."""

from __future__ import annotations
