"""The model server's options (`ServeConfig`), checked when built."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from crispflow.errors import CrispflowError


class ServeConfigError(CrispflowError):
    """A server option is invalid; the message names the option and the rule."""


@dataclass(frozen=True)
class ServeConfig:
    """Everything the server needs. `predictions_url` None or "" disables the prediction log (and /feedback).

    The server serves every crispflow model of the registry (registered-model tag `crispflow.pipeline`, or a name
    `crispflow-<pipeline>` of models registered before the tag existed) whose name matches one of `only` (fnmatch
    patterns; empty: all), plus `model`. `model` is the default model of the single-model routes (/predict,
    /feedback, /model); without it, the only served model is the default when there is exactly one.
    At most `max_models` models are kept loaded: the least recently requested one is unloaded to make room and
    loaded again on its next request."""

    model: str | None = None
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
    discover: bool = True  # False: serve `model` only
    only: tuple[str, ...] = ()  # fnmatch patterns of the model names to serve (empty: every crispflow model)
    max_models: int = 32  # models kept loaded at once (least recently requested unloaded first)
    # per model: (positive, negative) target values of a binary pipeline, e.g. ("bad",), ("good",)
    feedback_labels: Mapping[str, tuple[tuple[str, ...], tuple[str, ...]]] = field(default_factory=dict)
    # per model: module prefixes its artifact may hold classes of (the spec's training.allowed_estimators)
    trusted: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # the bearer tokens (serving/tokens.py); None: no token is valid (every route but /health, /ready is 401)
    tokens_file: str | None = None
    rate_limit: float = 500.0  # requests per second per token name (429 beyond; bursts up to rate_burst)
    rate_burst: int = 1000
    max_queue: int = 1024  # /predict requests waiting for a model's scoring thread; more are refused with 503
    feedback_ids: int = 200_000  # request ids per model remembered for /feedback (older ones: the prediction log)
    feedback_window: float = 86_400.0  # seconds after its prediction a request id still takes a label
    max_explained_records: int = 100  # records per /predict?explain=true request (422 beyond)
    # keyed pseudonyms (crispflow.governance.pseudonyms.Pseudonymizer, from $CRISPFLOW_PSEUDONYM_KEYS): the entity
    # key and the version's pseudonymised features are replaced before scoring and logging; None: the entity is
    # not logged, and a version trained on pseudonyms cannot be served
    pseudonyms: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.model is not None and (not isinstance(self.model, str) or not self.model.strip()):
            raise ServeConfigError(f"model: must be a registered model name or None, got {self.model!r}")
        if not self.discover and self.model is None:
            raise ServeConfigError("discover: False needs a model to serve (model is None)")
        if isinstance(self.only, str) or not all(isinstance(p, str) and p for p in self.only):
            raise ServeConfigError(f"only: must be a tuple of non-empty name patterns, got {self.only!r}")
        for name in ("poll_interval", "refused_retry", "log_flush_interval", "close_timeout", "rate_limit",
                     "feedback_window"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not value > 0:
                raise ServeConfigError(f"{name}: must be a number > 0, got {value!r}")
        for name in ("max_body_bytes", "max_records", "shadow_queue", "batch_requests", "max_models", "rate_burst",
                     "max_queue", "feedback_ids", "max_explained_records"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ServeConfigError(f"{name}: must be an integer >= 1, got {value!r}")
