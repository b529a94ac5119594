"""The model server's options (`ServeConfig`), checked when built."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from crispflow.errors import CrispflowError


class ServeConfigError(CrispflowError):
    """A server option is invalid; the message names the option and the rule."""


@dataclass(frozen=True)
class ServeConfig:
    """Everything the server needs. `predictions_url` None or "" disables the prediction log (and /feedback)."""

    model: str
    tracking_uri: str | None = None
    predictions_url: str | None = None
    poll_interval: float = 2.0
    max_body_bytes: int = 1 << 20
    max_records: int = 1000
    storage_options: dict[str, Any] | None = None
    positive_labels: tuple[str, ...] = ()  # feedback label values meaning 1 (besides true/1/yes/positive)
    negative_labels: tuple[str, ...] = ()
    shadow_queue: int = 1000  # mirrored requests waiting for the shadow model; more are dropped and counted
    refused_retry: float = 60.0  # seconds before a refused version is tried again
    log_flush_interval: float = 1.0
    close_timeout: float = 30.0  # seconds the prediction log may take to flush at shutdown
    batch_requests: int = 64  # most /predict requests scored together (micro-batching); 1 turns batching off

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model.strip():
            raise ServeConfigError(f"model: must be a registered model name, got {self.model!r}")
        for name in ("poll_interval", "refused_retry", "log_flush_interval", "close_timeout"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not value > 0:
                raise ServeConfigError(f"{name}: must be a number > 0, got {value!r}")
        for name in ("max_body_bytes", "max_records", "shadow_queue", "batch_requests"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ServeConfigError(f"{name}: must be an integer >= 1, got {value!r}")
