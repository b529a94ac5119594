"""The served models: alias resolution, hash-verified loading and hot reload without a failed request.

A background thread polls the registered model (one registry call: its aliases and tags) every `poll_interval`
seconds. A version an alias newly points at is loaded fully on that thread (`registry.verified_copy`: files
checked against the hash recorded at registration), then one immutable `Snapshot` (alias → loaded model, policy)
replaces the previous one in a single reference assignment. A request reads the snapshot once, so it is scored
entirely by the old or entirely by the new models, and nothing is ever half-loaded.

A version that cannot be trusted (hash mismatch, no recorded hash, a bad threshold tag) is refused, logged and
counted; it is retried only after `refused_retry` seconds. If the champion alias moves to a refused version, the
previously loaded champion keeps serving; a refused canary or shadow simply has no traffic. A registry outage
never stops serving: the last snapshot stays.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from crispflow.model import registry
from crispflow.serving.policy import ALIASES, CHAMPION, TrafficPolicy, policy_from_tags
from crispflow.serving.validation import InputSchema

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    from mlflow import MlflowClient

    from crispflow.serving.metrics import ServingMetrics

log = logging.getLogger("crispflow.serving")
THRESHOLD_TAG = "crispflow.threshold"
DEFAULT_THRESHOLD = 0.5


class RefusedModel(registry.RegistryError):
    """A version the server will not serve; `reason` is hash_mismatch, invalid or unavailable."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class LoadedModel:
    """One verified model version in memory, with what scoring needs: threshold and input schema."""

    name: str
    version: str
    model: Any  # an sklearn estimator with predict_proba
    threshold: float
    threshold_source: str  # "tag" or "default"
    schema: InputSchema
    sha256: str
    run_id: str
    loaded_at: float

    def score(self, frame: pd.DataFrame) -> np.ndarray:
        """Positive-class probabilities, one per row."""
        return self.model.predict_proba(frame)[:, 1]

    def describe(self) -> dict[str, Any]:
        return {"version": self.version, "threshold": self.threshold, "threshold_source": self.threshold_source,
                "artifact_sha256": self.sha256, "run_id": self.run_id, "loaded_at": self.loaded_at,
                "signature": self.schema.to_dict()}


def parse_threshold(raw: str | None) -> tuple[float, str]:
    """(threshold, source) from the version tag; absent → 0.5; not a number in [0, 1] → RefusedModel."""
    if raw is None:
        return DEFAULT_THRESHOLD, "default"
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise RefusedModel("invalid", f"tag {THRESHOLD_TAG}: {raw!r} is not a probability in [0, 1]")
    return value, "tag"


def load_version(mlf: MlflowClient, name: str, version: str) -> LoadedModel:
    """Load `name` v`version` only if its files match the recorded hash; raise `RefusedModel` otherwise."""
    from mlflow.exceptions import MlflowException
    from mlflow.models import Model

    try:
        mv = mlf.get_model_version(name, version)
        threshold, source = parse_threshold(mv.tags.get(THRESHOLD_TAG))
        local = registry.verified_copy(mv)  # every file, MLmodel included, matches the recorded hash
        signature = Model.load(str(local)).signature
        model = registry.load_files(local)
    except RefusedModel:
        raise
    except registry.RegistryError as exc:
        reason = "hash_mismatch" if "does not match" in str(exc) else "invalid"
        raise RefusedModel(reason, str(exc)) from None
    except (MlflowException, OSError) as exc:
        raise RefusedModel("unavailable", f"{name} v{version}: could not be fetched: {exc}") from None
    if not callable(getattr(model, "predict_proba", None)):
        raise RefusedModel("invalid", f"{name} v{version}: the model has no predict_proba")
    return LoadedModel(name, str(version), model, threshold, source, InputSchema.from_signature(signature),
                       mv.tags.get(registry.SHA_TAG, ""), mv.run_id or "", time.time())


@dataclass(frozen=True)
class Snapshot:
    """What the server serves right now. Never mutated: a reload builds a new one."""

    arms: Mapping[str, LoadedModel] = field(default_factory=dict)  # alias → model being served
    policy: TrafficPolicy = field(default_factory=TrafficPolicy)
    registry_aliases: Mapping[str, str] = field(default_factory=dict)  # alias → version, as the registry says
    refused: Mapping[str, str] = field(default_factory=dict)  # version → why it is not served
    not_ready: str | None = "no registry poll yet"
    polled_at: float | None = None

    @property
    def champion(self) -> LoadedModel | None:
        return self.arms.get(CHAMPION)

    def describe(self) -> dict[str, Any]:
        return {"aliases": {a: m.describe() for a, m in self.arms.items()},
                "registry_aliases": dict(self.registry_aliases), "refused": dict(self.refused),
                "policy": self.policy.to_dict(), "ready": self.champion is not None, "not_ready": self.not_ready,
                "polled_at": self.polled_at}


Loader = Callable[["MlflowClient", str, str], LoadedModel]


class ModelStore:
    """Holds the current `Snapshot` and keeps it in step with the registry from a background thread."""

    def __init__(self, name: str, client: Callable[[], MlflowClient], *, poll_interval: float = 2.0,
                 refused_retry: float = 60.0, cache_size: int = 4, metrics: ServingMetrics | None = None,
                 loader: Loader = load_version) -> None:
        self.name = name
        self.poll_interval = poll_interval
        self.refused_retry = refused_retry
        self.metrics = metrics
        self._client_factory = client
        self._client: MlflowClient | None = None
        self._loader = loader
        self._cache: OrderedDict[str, LoadedModel] = OrderedDict()  # recently served versions, for quick switches
        self._cache_size = cache_size
        self._refused: dict[str, tuple[str, float]] = {}  # version → (message, when)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._poll_lock = threading.Lock()
        self.snapshot = Snapshot()

    # --- lifecycle ---------------------------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="crispflow-model-poller", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll_once()
            except Exception:  # never let the poller die: log, count, try again next interval
                log.exception("model poll failed")
                self._count_error("poll")
            self._stop.wait(self.poll_interval)

    def wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.snapshot.champion is None and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.snapshot.champion is not None

    # --- one poll ----------------------------------------------------------------------------------------------

    def poll_once(self) -> Snapshot:
        """Read aliases and tags, load what changed, swap the snapshot. Serialised (one poll at a time)."""
        with self._poll_lock:
            old = self.snapshot
            found = self._read_registry()
            if isinstance(found, str):  # the registry could not be read: keep serving, say why
                if old.champion is None:
                    self.snapshot = Snapshot(old.arms, old.policy, old.registry_aliases, old.refused, found,
                                             old.polled_at)
                return self.snapshot
            aliases, tags = found
            policy = policy_from_tags(tags)
            for problem in policy.problems:
                if problem not in old.policy.problems:
                    log.warning("traffic policy of %s: %s", self.name, problem)
            arms: dict[str, LoadedModel] = {}
            refused: dict[str, str] = {}
            for alias in ALIASES:
                version = aliases.get(alias)
                if version is None:
                    continue
                loaded = self._get(version, refused)
                if loaded is not None:
                    arms[alias] = loaded
                elif alias == CHAMPION and old.champion is not None:
                    arms[alias] = old.champion  # a refused champion: the previous one keeps serving
            not_ready = None if CHAMPION in arms else self._why_not_ready(aliases, refused)
            new = Snapshot(arms, policy, aliases, refused, not_ready, time.time())
            self._publish(old, new)
            return new

    def _read_registry(self) -> tuple[dict[str, str], dict[str, str]] | str:
        from mlflow.exceptions import MlflowException

        try:
            if self._client is None:
                self._client = self._client_factory()
            model = self._client.get_registered_model(self.name)
        except MlflowException as exc:
            if getattr(exc, "error_code", "") == "RESOURCE_DOES_NOT_EXIST":
                return f"model {self.name!r} is not registered yet"
            self._count_error("poll")
            return f"the registry could not be read: {type(exc).__name__}"
        except Exception as exc:  # connection refused, timeout: transient
            self._count_error("poll")
            return f"the registry could not be read: {type(exc).__name__}"
        aliases = {str(a): str(v) for a, v in (model.aliases or {}).items()}
        return aliases, {str(k): str(v) for k, v in (model.tags or {}).items()}

    def _get(self, version: str, refused: dict[str, str]) -> LoadedModel | None:
        if version in self._cache:
            self._cache.move_to_end(version)
            return self._cache[version]
        seen = self._refused.get(version)
        if seen is not None and time.monotonic() - seen[1] < self.refused_retry:
            refused[version] = seen[0]
            return None
        assert self._client is not None
        try:
            loaded = self._loader(self._client, self.name, version)
        except RefusedModel as exc:
            log.error("refusing %s v%s (%s): %s", self.name, version, exc.reason, exc)
            if self.metrics is not None:
                self.metrics.refused_loads.labels(exc.reason).inc()
            refused[version] = f"{exc.reason}: {exc}"
            if exc.reason != "unavailable":  # a transient failure is retried at the next poll
                self._refused[version] = (refused[version], time.monotonic())
            return None
        self._refused.pop(version, None)
        self._cache[version] = loaded
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        log.info("loaded %s v%s (sha256 %s)", self.name, version, loaded.sha256[:12])
        return loaded

    def _why_not_ready(self, aliases: Mapping[str, str], refused: Mapping[str, str]) -> str:
        version = aliases.get(CHAMPION)
        if version is None:
            return f"model {self.name!r} has no {CHAMPION!r} alias"
        return f"{CHAMPION} v{version} is not loaded: {refused.get(version, 'unknown')}"

    def _publish(self, old: Snapshot, new: Snapshot) -> None:
        self.snapshot = new  # the atomic switch: one reference assignment
        before = {a: m.version for a, m in old.arms.items()}
        after = {a: m.version for a, m in new.arms.items()}
        for alias, version in after.items():
            if before.get(alias) != version:
                log.info("%s: %s now serves v%s (was %s)", self.name, alias, version, before.get(alias, "none"))
                if self.metrics is not None:
                    self.metrics.reloads.labels(alias).inc()
        if self.metrics is not None and (before != after or old.polled_at is None):
            self.metrics.set_served(after)

    def _count_error(self, kind: str) -> None:
        if self.metrics is not None:
            self.metrics.errors.labels(kind).inc()
