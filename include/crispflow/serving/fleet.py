"""Every crispflow model of the registry behind one server (`Fleet`): discovery, loading, default model, readiness.

One poller thread asks the registry, every `poll_interval` seconds, for the crispflow models (two searches: the
registered-model tag `crispflow.pipeline`, set at registration, and the name prefix `crispflow-` of
`registry.model_name` for models registered before the tag), with their aliases and tags in the same answer. A
model that appears gets its own `ModelServer` (store, aliases, traffic policy, prediction log folder, metrics
labels) and is loaded on that thread; nothing about it is read per request.

Memory and start-up stay bounded: at most `max_models` models are loaded at once. Beyond that, the models the
poller finds stay idle (known, not in memory) and are loaded on their first request, which unloads the least
recently requested model (an LRU). Below the bound every model is loaded eagerly, so the first request of each is
fast and `/ready` can vouch for all of them. The threads of a model (scoring, shadow, log writer) start on its first
request.

Readiness: ready when every loaded model whose registry has a `champion` alias serves one, and the configured
default model (if any) serves its champion; idle models are listed, not waited for. A model whose champion was
refused (hash mismatch, unsafe format) is listed under `refused` and does not make the server unready: one bad
artifact must not take every other pipeline's model out of a load balancer (unless it is the `--model` default).
The default model of the single-model routes is `ServeConfig.model`, else the only model when there is exactly
one.
"""

from __future__ import annotations

import fnmatch
import functools
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, overload

from crispflow.errors import CrispflowError
from crispflow.model.registry import PIPELINE_TAG, model_name
from crispflow.serving.metrics import ServingMetrics
from crispflow.serving.models import registry_state
from crispflow.serving.policy import CHAMPION
from crispflow.serving.server import LogFactory, ModelServer, NotReady

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from crispflow.serving.config import ServeConfig

log = logging.getLogger("crispflow.serving")
NAME_PREFIX = model_name("")  # "crispflow-": registry.model_name(pipeline) of models registered before the tag
SEARCHES = (f"tags.`{PIPELINE_TAG}` != ''", f"name LIKE '{NAME_PREFIX}%'")
Found = tuple[dict[str, str], dict[str, str]]  # alias → version, registered-model tags


class UnknownModel(CrispflowError):
    """A route names a model the server does not serve (404)."""


class NoDefaultModel(CrispflowError):
    """A single-model route, but several models are served and none is the default (404)."""


class Fleet:
    """The served models. `log_factory` builds a model's prediction log (default: a `PredictionLog` under
    `config.predictions_url`, None when it is off); `client` builds MLflow clients."""

    def __init__(self, config: ServeConfig, *, log_factory: LogFactory | None = None,
                 client: Callable[[], MlflowClient] | None = None) -> None:
        self.config = config
        self._servers: dict[str, ModelServer] = {}
        self._lock = threading.RLock()  # the dicts below and the LRU order
        self.metrics = ServingMetrics(self._log_stats)
        self._storage_options: dict[str, Any] | None = None
        if config.predictions_url:
            from crispflow.predictions.store import storage_options_from_env

            self._storage_options = config.storage_options or storage_options_from_env(config.predictions_url)
        self._log_factory = log_factory if log_factory is not None else self._default_log_factory()
        if client is None:
            from crispflow.model import registry

            def client() -> MlflowClient:
                return registry.client(config.tracking_uri)

        self._client_factory = client
        self._client: MlflowClient | None = None
        self._loaded: OrderedDict[str, None] = OrderedDict()  # least recently requested first
        self._found: dict[str, Found | str] = {}  # the registry's answer of the last poll, per model
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._poll_lock = threading.Lock()
        self.polled_at: float | None = None
        self.poll_error: str | None = None
        if config.model:
            self._server(config.model)

    # --- lifecycle ---------------------------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="crispflow-registry-poller", daemon=True)
            self._thread.start()

    def close(self) -> None:
        """Stop polling, then close every model (its queued scoring, shadow work and prediction log)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
        with self._lock:
            servers = list(self._servers.values())
        for server in servers:
            server.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll_once()
            except Exception:  # never let the poller die: log, count, try again next interval
                log.exception("registry poll failed")
                self.metrics.errors.labels("poll").inc()
            self._stop.wait(self.config.poll_interval)

    def _default_log_factory(self) -> LogFactory | None:
        url = self.config.predictions_url
        if not url:
            log.warning("no prediction log configured: predictions are not recorded and /feedback answers 503")
            return None

        def build(model: str) -> Any:
            from crispflow.predictions.writer import PredictionLog

            return PredictionLog(url, model, flush_interval=self.config.log_flush_interval,
                                 storage_options=self._storage_options)

        return build

    def _log_stats(self) -> dict[str, dict[str, float]]:
        with self._lock:
            servers = list(self._servers.values())
        return {s.name: stats for s in servers if (stats := s.log_stats()) is not None}

    # --- discovery and loading ---------------------------------------------------------------------------------

    def poll_once(self) -> None:
        """Discover the models, then bring each loaded one in step with the registry (loading what changed)."""
        with self._poll_lock:
            found: dict[str, Found | str] = dict(self._discover())
            with self._lock:
                missing = [n for n in self._servers if n not in found]
            for name in missing:  # outside the lock: reading the default model by name is a registry call
                found[name] = self._missing(name)
            with self._lock:
                names = sorted(found)
                for name in names:
                    self._server(name)
                    self._found[name] = found[name]
                    if name not in self._loaded and len(self._loaded) < self.config.max_models:
                        self._loaded[name] = None
                loaded = [n for n in names if n in self._loaded]
                idle = len(names) - len(loaded)
            for name in loaded:
                with self._lock:  # a request may have unloaded it meanwhile (the LRU)
                    still = name in self._loaded
                if still:
                    self._servers[name].store.apply(self._found[name])
            self.metrics.models.labels("loaded").set(len(loaded))
            self.metrics.models.labels("idle").set(idle)
            self.polled_at = time.time()

    def _missing(self, name: str) -> Found | str:
        """What to tell the store of a known model that the searches did not return."""
        if self.poll_error is not None:
            return self.poll_error
        if name == self.config.model:
            return self._read_one(name)
        return f"model {name!r} is no longer registered (or no longer a crispflow model)"

    def _discover(self) -> dict[str, Found]:
        """Name → (aliases, tags) of every crispflow model matching `only`; {} (and `poll_error` set) if the
        registry cannot be read."""
        if not self.config.discover:
            self.poll_error = None
            return {}
        found: dict[str, Found] = {}
        try:
            if self._client is None:
                self._client = self._client_factory()
            for query in SEARCHES:
                token = None
                while True:
                    page = self._client.search_registered_models(filter_string=query, max_results=1000,
                                                                 page_token=token)
                    for model in page:
                        if self._wanted(model.name):
                            found[model.name] = registry_state(model)
                    token = page.token
                    if not token:
                        break
        except Exception as exc:  # an MLflow error, connection refused, timeout: keep serving, say why
            self.poll_error = f"the registry could not be read: {type(exc).__name__}"
            self.metrics.errors.labels("poll").inc()
            return {}
        self.poll_error = None
        return found

    def _wanted(self, name: str) -> bool:
        return not self.config.only or any(fnmatch.fnmatchcase(name, p) for p in self.config.only)

    def _read_one(self, name: str) -> Found | str:
        """The configured default model, read by name (it need not carry the crispflow tag or prefix)."""
        return self._servers[name].store.read_registry()

    def _server(self, name: str) -> ModelServer:
        with self._lock:
            server = self._servers.get(name)
            if server is None:
                server = ModelServer(name, self.config, self.metrics, self._client_factory,
                                     log_factory=self._log_factory, reload=functools.partial(self.get, name),
                                     storage_options=self._storage_options)
                self._servers[name] = server
                log.info("serving %s", name)
            return server

    # --- lookups for the routes --------------------------------------------------------------------------------

    @overload
    def get(self, name: str) -> ModelServer: ...

    @overload
    def get(self, name: str, *, load: bool) -> ModelServer | None: ...

    def get(self, name: str, *, load: bool = True) -> ModelServer | None:
        """The model `name`, loaded (an idle model is loaded now, unloading the least recently requested one; with
        `load` False an idle model gives None instead, so a caller on the event loop never waits for a load);
        UnknownModel if the server does not serve it."""
        with self._lock:
            server = self._servers.get(name)
            if server is None:
                known = ", ".join(sorted(self._servers)[:20]) or "none yet"
                raise UnknownModel(f"model {name!r} is not served here (served: {known}); GET /models lists them")
            if name in self._loaded:
                self._loaded.move_to_end(name)
                return server
            if not load:
                return None
            self._loaded[name] = None
            evicted = []
            while len(self._loaded) > self.config.max_models:
                evicted.append(self._loaded.popitem(last=False)[0])
            found = self._found.get(name, "no registry poll yet")
        for victim in evicted:
            log.info("unloading %s: at most %d models are kept loaded", victim, self.config.max_models)
            unloaded = self._servers[victim]
            unloaded.store.unload(f"unloaded to keep at most {self.config.max_models} models in memory: loaded "
                                  "again on its next request")
            # its threads and log stop off the request path (queued work is finished first)
            threading.Thread(target=unloaded.release, name=f"crispflow-release-{victim}", daemon=True).start()
        server.store.apply(found)
        return server

    @overload
    def default(self) -> ModelServer: ...

    @overload
    def default(self, *, load: bool) -> ModelServer | None: ...

    def default(self, *, load: bool = True) -> ModelServer | None:
        """The model of the single-model routes (see the module docstring); `load` as for `get`."""
        if self.config.model:
            return self.get(self.config.model, load=load)
        with self._lock:
            names = sorted(self._servers)
        if len(names) == 1:
            return self.get(names[0], load=load)
        if not names:
            raise NotReady("no crispflow model is registered yet" if self.polled_at is not None
                           else "no registry poll yet")
        shown = ", ".join(names[:10]) + (", ..." if len(names) > 10 else "")
        raise NoDefaultModel(f"{len(names)} models are served ({shown}) and none is the default: use "
                             "/models/{name}/predict, /models/{name}/feedback or /models/{name} "
                             "(or start the server with --model)")

    def default_name(self) -> str | None:
        if self.config.model:
            return self.config.model
        with self._lock:
            return next(iter(self._servers)) if len(self._servers) == 1 else None

    def known(self, name: str) -> bool:
        with self._lock:
            return name in self._servers

    # --- readiness and listing ---------------------------------------------------------------------------------

    def _states(self) -> list[tuple[str, ModelServer, bool, Found | str | None]]:
        with self._lock:
            return [(n, s, n in self._loaded, self._found.get(n)) for n, s in sorted(self._servers.items())]

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """(ready, body) for /ready (see the module docstring)."""
        if self.polled_at is None:
            return False, {"ready": False, "reason": "no registry poll yet", "not_ready": {}, "models": {}}
        not_ready: dict[str, str] = {}
        models: dict[str, Any] = {}
        idle: list[str] = []
        refused: dict[str, str] = {}
        for name, server, loaded, found in self._states():
            snap = server.store.snapshot
            has_champion = not isinstance(found, str) and found is not None and CHAMPION in found[0]
            if not loaded:
                idle.append(name)
                continue
            if snap.champion is not None:
                models[name] = {"champion": snap.champion.version, "task": snap.champion.task,
                                "aliases": {a: m.version for a, m in snap.arms.items()}}
            elif name == self.config.model or (has_champion and not snap.refused):
                not_ready[name] = snap.not_ready or "no champion loaded"
            elif has_champion:  # its champion was refused (hash, format): reported, but the others still serve
                refused[name] = snap.not_ready or "champion refused"
        if not models and not not_ready and not idle:
            not_ready[""] = "no crispflow model with a champion alias is registered yet"
        body: dict[str, Any] = {"ready": not not_ready, "models": models, "idle": idle}
        if refused:
            body["refused"] = refused
        if not_ready:
            body["not_ready"] = not_ready
            body["reason"] = "; ".join(f"{n}: {r}" if n else r for n, r in not_ready.items())
        default = self.default_name()
        if default is not None and default in models:  # the single-model fields, as before
            body.update({"model": default, "champion": models[default]["champion"],
                         "aliases": models[default]["aliases"]})
        return not not_ready, body

    def listing(self) -> dict[str, Any]:
        """GET /models: every served model, its state, aliases and routes."""
        items = []
        for name, server, loaded, found in self._states():
            snap = server.store.snapshot
            tags = found[1] if isinstance(found, tuple) else {}
            aliases = found[0] if isinstance(found, tuple) else {}
            state = "idle" if not loaded else ("ready" if snap.champion is not None else
                                               ("not_ready" if CHAMPION in aliases or name == self.config.model
                                                else "no_champion"))
            items.append({"name": name, "pipeline": tags.get(PIPELINE_TAG), "state": state,
                          "task": snap.champion.task if snap.champion else None,
                          "registry_aliases": dict(aliases),
                          "served": {a: m.version for a, m in snap.arms.items()},
                          "reason": None if state in ("ready", "no_champion") else
                          (snap.not_ready if loaded else "idle: loaded on its first request"),
                          "routes": {r: f"/models/{name}/{r}" for r in ("predict", "feedback")} |
                          {"describe": f"/models/{name}"}})
        return {"default": self.default_name(), "models": items, "max_models": self.config.max_models,
                "polled_at": self.polled_at, "poll_error": self.poll_error}
