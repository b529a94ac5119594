"""The served models: alias resolution, hash-verified loading and hot reload without a failed request.

A background thread polls the registered model (one registry call: its aliases and tags) every `poll_interval`
seconds. A version an alias newly points at is loaded fully on that thread (`registry.verified_copy`: files
checked against the hash recorded at registration), then one immutable `Snapshot` (alias → loaded model, policy)
replaces the previous one in a single reference assignment. A request reads the snapshot once, so it is scored
entirely by the old or entirely by the new models, and nothing is ever half-loaded.

Each version is served per its task (version tag `crispflow.task`, absent = binary), with the semantics of
`crispflow.model.tasks.model_output` rebuilt from the version's tags (the server has no spec): binary P(positive)
and a label from `crispflow.threshold`; multiclass class probabilities in the order of `crispflow.classes`
(a JSON list of labels; the model's classes are the codes 0..k-1); regression the predicted value and, from
`crispflow.interval` (`{"coverage", "halfwidth", "method"}`), the interval prediction ± halfwidth.

The fleet (fleet.py) polls the registry once for every model and hands each store its aliases and tags
(`apply`); a store on its own (`poll_once`, `start`) reads its registered model itself.

A version that cannot be trusted (hash mismatch, no recorded hash, a bad threshold, task, classes or interval tag)
is refused, logged and counted; it is retried only after `refused_retry` seconds. If the champion alias moves
to a refused version, the previously loaded champion keeps serving; a refused canary or shadow simply has no
traffic. A registry outage never stops serving: the last snapshot stays.

Explainer (`/predict?explain=true`): after the hash-verified model is loaded, a version tagged `crispflow.explainer`
(the URI of its explainer record, `explainer/v<version>.json` of its run) and `crispflow.explainer_sha256` gets
its record downloaded and checked against that hash, then `crispflow.model.explain.LocalExplainer.build` builds the
explainer from the verified model and the record, which self-tests its additivity on the record's synthetic probe
rows. Anything short of that (no record, a hash mismatch, a failed self-test, a record the explainer refuses) leaves
the version without explainer and says why in `LoadedModel.explainer_status`: the model still serves predictions,
and explanation requests get 409, never wrong reasons. A record that could not be fetched (artifact store down,
or the record missing) is tried again every `refused_retry` seconds, without loading the model again. Tags are
read when a version is loaded: a version tagged after it was loaded gets its explainer at its next load.

Compiled scorer (`with_scorer`): the verified model is also compiled into numpy arrays
(`crispflow.model.compiled`), checked at load to agree with the model to 1e-9 on generated rows and the explainer
record's probe rows; requests are then scored from their JSON records without a DataFrame. A model the compiler
does not support, or a scorer that disagrees, is scored by its pipeline: `/model` (`scorer`) and the metric
`crispflow_serve_scorer` say which, and why.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from crispflow.governance.pseudonyms import PseudonymError
from crispflow.governance.stored_form import parse_serving_tags
from crispflow.model import registry
from crispflow.serving.policy import ALIASES, CHAMPION, SHADOW, TrafficPolicy, policy_from_tags
from crispflow.serving.validation import InputSchema

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    from mlflow import MlflowClient

    from crispflow.serving.metrics import ServingMetrics

log = logging.getLogger("crispflow.serving")
THRESHOLD_TAG, TASK_TAG = registry.THRESHOLD_TAG, registry.TASK_TAG
CLASSES_TAG, INTERVAL_TAG = registry.CLASSES_TAG, registry.INTERVAL_TAG
TASKS = registry.TASKS
DEFAULT_THRESHOLD = 0.5
# the explainer record of a version (an artifact URI; default `runs:/<run_id>/explainer/v<version>.json`) and its
# sha256 (`crispflow.model.explain.record_digest`)
EXPLAINER_TAG, EXPLAINER_SHA_TAG = registry.EXPLAINER_TAG, registry.EXPLAINER_SHA_TAG
NO_RECORD = "unavailable: version has no explainer record"


class RefusedModel(registry.RegistryError):
    """A version the server will not serve; `reason` is hash_mismatch, invalid or unavailable."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Interval:
    """A regression version's split-conformal interval: prediction ± `halfwidth` covers `coverage` of values."""

    coverage: float
    halfwidth: float
    method: str = ""


@dataclass(frozen=True)
class LoadedModel:
    """One verified model version in memory, with what scoring needs: task, threshold or classes or interval,
    and the input schema."""

    name: str
    version: str
    model: Any  # an sklearn estimator: predict_proba (binary, multiclass) or predict (regression)
    threshold: float | None  # binary only
    threshold_source: str  # "tag" or "default" ("none" when the task has no threshold)
    schema: InputSchema
    sha256: str
    run_id: str
    loaded_at: float
    task: str = "binary"
    classes: tuple[str, ...] = ()  # multiclass labels, in model (code) order
    interval: Interval | None = None  # regression
    explainer: Any = None  # a crispflow.model.explain.LocalExplainer that passed its self-test, or None
    explainer_status: str = NO_RECORD  # "ready: <method> (<space>)", or why there is no explainer
    explainer_state: str = "none"  # one of metrics.EXPLAINER_STATES (none: the version has no explainer record)
    explainer_sha256: str = ""  # of the record the explainer was built from
    explainer_tolerance: float = 0.0  # the record's additivity tolerance, checked on every served explanation
    explainer_retry_at: float | None = None  # time.time() after which a record that could not be fetched is retried
    scorer: Any = None  # a verified crispflow.model.compiled.CompiledScorer, or None: the pipeline scores
    scorer_status: str = "pipeline: not compiled yet"  # "compiled: ...", or why the pipeline scores
    pseudonym_key: str | None = None  # the key its training data was pseudonymised under (None: clear values)
    pseudonymised: Mapping[str, str] = field(default_factory=dict)  # request field → pseudonym domain

    @property
    def stored_as(self) -> tuple[str | None, tuple[tuple[str, str], ...]]:
        """How this version expects pseudonymised fields: two versions with the same value take the same records."""
        return self.pseudonym_key, tuple(sorted(self.pseudonymised.items()))

    @property
    def scorer_kind(self) -> str:
        """`compiled` (the verified compiled scorer answers) or `pipeline` (the model itself does)."""
        return "pipeline" if self.scorer is None else "compiled"

    @property
    def n_features(self) -> int:
        """The number of features an explanation of this version ranks (the explainer's; else the signature's)."""
        return len(self.explainer.features) if self.explainer is not None else len(self.schema.fields)

    def output(self, frame: pd.DataFrame) -> np.ndarray:
        """The task's output (`crispflow.model.tasks.model_output`): binary (n,) P(positive), multiclass (n, k)
        probabilities in `classes` order, regression (n,) predicted values."""
        if self.task == "regression":
            return self.output_of(self.model.predict(frame))
        return self.output_of(self.model.predict_proba(frame))

    def output_records(self, records: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """`output` of validated records: by the compiled scorer straight from the records when it can type them,
        else by the compiled scorer (or, without one, the model) on the signature's input frame."""
        if self.scorer is None:
            return self.output(self.schema.frame(records))
        response = self.scorer.response_records(records) if self.schema.fields else None
        if response is None:
            response = self.scorer.response_frame(self.schema.frame(records))
        return self.output_of(response)

    def output_of(self, response: Any) -> np.ndarray:
        """The task's output (see `output`) from the model's own response: predict_proba, in the model's classes_
        order (classification), or predict (regression)."""
        from crispflow.model.tasks import output_from_response

        return output_from_response(self.task, self.model, response, len(self.classes))

    def score(self, frame: pd.DataFrame) -> np.ndarray:
        """One number per row: binary P(positive), multiclass P(predicted class), regression the prediction."""
        out = self.output(frame)
        return out.max(axis=1) if out.ndim == 2 else out

    def logged(self, value: Any) -> dict[str, Any]:
        """The prediction log's task columns of one row's output (`crispflow.predictions.schema`)."""
        if value is None:
            return {"score": None}
        if self.task == "multiclass":
            best = _argmax(value)
            return {"score": value[best], "predicted": self.classes[best], "probabilities": list(value)}
        if self.task == "regression" and self.interval is not None:
            return {"score": value, "interval_low": value - self.interval.halfwidth,
                    "interval_high": value + self.interval.halfwidth}
        return {"score": value}

    def answer(self, value: Any) -> dict[str, Any]:
        """One prediction of the response body (without request id, version and alias)."""
        if self.task == "multiclass":
            return {"prediction": self.classes[_argmax(value)],
                    "probabilities": dict(zip(self.classes, value, strict=True))}
        if self.task == "regression":
            interval = None if self.interval is None else {
                "low": value - self.interval.halfwidth, "high": value + self.interval.halfwidth,
                "coverage": self.interval.coverage}
            return {"prediction": value, "interval": interval}
        threshold = DEFAULT_THRESHOLD if self.threshold is None else self.threshold
        return {"score": value, "label": int(value >= threshold)}

    def describe(self) -> dict[str, Any]:
        explainer: dict[str, Any] = {"status": self.explainer_status, "state": self.explainer_state}
        if self.explainer is not None:
            explainer.update(method=self.explainer.method, space=self.explainer.space,
                             features=len(self.explainer.features), tolerance=self.explainer_tolerance,
                             record_sha256=self.explainer_sha256)
        found: dict[str, Any] = {"version": self.version, "task": self.task, "threshold": self.threshold,
                                 "threshold_source": self.threshold_source, "artifact_sha256": self.sha256,
                                 "run_id": self.run_id, "loaded_at": self.loaded_at,
                                 "signature": self.schema.to_dict(), "explainer": explainer,
                                 "scorer": {"kind": self.scorer_kind, "status": self.scorer_status}}
        if self.task == "multiclass":
            found["classes"] = list(self.classes)
        if self.task == "regression":
            found["interval"] = None if self.interval is None else {
                "coverage": self.interval.coverage, "halfwidth": self.interval.halfwidth,
                "method": self.interval.method}
        return found


def _argmax(values: list[float]) -> int:
    """The index of the largest value (ties: the lowest index, as `tasks.predicted_class`)."""
    return max(range(len(values)), key=values.__getitem__)


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


def parse_task(raw: str | None) -> str:
    """The version's task from its tag; absent → binary (versions registered before tasks existed)."""
    if raw is None or raw == "":
        return "binary"
    if raw not in TASKS:
        raise RefusedModel("invalid", f"tag {TASK_TAG}: {raw!r} is not one of {list(TASKS)}")
    return raw


def parse_classes(raw: str | None) -> tuple[str, ...]:
    """A multiclass version's class labels: a JSON list of at least two distinct strings."""
    try:
        value = json.loads(raw) if raw is not None else None
    except ValueError:
        value = None
    if not isinstance(value, list) or len(value) < 2 or not all(isinstance(v, str) for v in value) \
            or len(set(value)) != len(value):
        raise RefusedModel("invalid", f"tag {CLASSES_TAG}: {raw!r} is not a JSON list of two or more distinct "
                                      "class labels (strings)")
    return tuple(value)


def parse_interval(raw: str | None) -> Interval | None:
    """A regression version's interval; absent → None (no interval served); malformed → RefusedModel."""
    if raw is None:
        return None
    try:
        value = json.loads(raw)
        coverage, halfwidth = float(value["coverage"]), float(value["halfwidth"])
        method = str(value.get("method", ""))
    except (ValueError, TypeError, KeyError):
        raise RefusedModel("invalid", f"tag {INTERVAL_TAG}: {raw!r} is not a JSON object with coverage and "
                                      "halfwidth") from None
    if not (0.0 < coverage < 1.0 and math.isfinite(halfwidth) and halfwidth >= 0.0):
        raise RefusedModel("invalid", f"tag {INTERVAL_TAG}: coverage must be in (0, 1) and halfwidth a finite "
                                      f"number >= 0, got {raw!r}")
    return Interval(coverage, halfwidth, method)


def _task_fields(tags: Mapping[str, str]) -> tuple[str, float | None, str, tuple[str, ...], Interval | None]:
    """(task, threshold, threshold source, classes, interval) from a version's tags."""
    task = parse_task(tags.get(TASK_TAG))
    if task == "binary":
        threshold, source = parse_threshold(tags.get(THRESHOLD_TAG))
        return task, threshold, source, (), None
    if task == "multiclass":
        return task, None, "none", parse_classes(tags.get(CLASSES_TAG)), None
    return task, None, "none", (), parse_interval(tags.get(INTERVAL_TAG))


def _check_model(name: str, version: str, model: Any, task: str, classes: tuple[str, ...]) -> None:
    method = "predict" if task == "regression" else "predict_proba"
    if not callable(getattr(model, method, None)):
        raise RefusedModel("invalid", f"{name} v{version}: a {task} model needs {method}, this one has none")
    if task == "multiclass":
        codes = list(getattr(model, "classes_", []))
        if not all(isinstance(c, int | float) or hasattr(c, "__index__") for c in codes) \
                or not all(0 <= int(c) < len(classes) for c in codes):
            raise RefusedModel("invalid", f"{name} v{version}: the model's classes {codes[:10]} are not codes "
                                          f"0..{len(classes) - 1} of tag {CLASSES_TAG}")


def load_version(mlf: MlflowClient, name: str, version: str, *, trusted: Sequence[str] = ()) -> LoadedModel:
    """Load `name` v`version` only if its files match the recorded hash; raise `RefusedModel` otherwise.
    `trusted`: module prefixes whose classes the model may hold besides numpy/scipy/sklearn/crispflow (the spec's
    `training.allowed_estimators`; never read from the registry, which anyone with write access can tag)."""
    from mlflow.exceptions import MlflowException
    from mlflow.models import Model

    try:
        mv = mlf.get_model_version(name, version)
        task, threshold, source, classes, interval = _task_fields(mv.tags)
        pseudonym_key, pseudonymised = parse_serving_tags(mv.tags)
        local = registry.verified_copy(mv, trusted=trusted)  # every file matches the recorded hash
        signature = Model.load(str(local)).signature
        model = registry.load_files(local, trusted=trusted)
    except RefusedModel:
        raise
    except PseudonymError as exc:
        raise RefusedModel("invalid", f"{name} v{version}: {exc}") from None
    except registry.RegistryError as exc:
        reason = "hash_mismatch" if "does not match" in str(exc) else "invalid"
        raise RefusedModel(reason, str(exc)) from None
    except (MlflowException, OSError) as exc:
        raise RefusedModel("unavailable", f"{name} v{version}: could not be fetched: {exc}") from None
    _check_model(name, str(version), model, task, classes)
    loaded = LoadedModel(name, str(version), model, threshold, source, InputSchema.from_signature(signature),
                         mv.tags.get(registry.SHA_TAG, ""), mv.run_id or "", time.time(), task, classes, interval,
                         pseudonym_key=pseudonym_key, pseudonymised=pseudonymised)
    return with_scorer(with_explainer(mlf, loaded, mv.tags))


# --- the compiled scorer ----------------------------------------------------------------------------------------


def with_scorer(loaded: LoadedModel) -> LoadedModel:
    """`loaded` with the compiled scorer of its (hash-verified) model when one can be built and agrees with the
    model to `crispflow.model.compiled.TOLERANCE` on the verification rows (generated ones, plus the explainer
    record's probe rows when there is an explainer); else without, and why (`scorer_status`): the model itself
    scores. Never raises: a scorer problem never keeps a verified model from serving."""
    from crispflow.model.compiled import ScorerMismatch, UnsupportedModel, verified_scorer

    probe = getattr(loaded.explainer, "probe", None)
    try:
        scorer, gap = verified_scorer(loaded.model, loaded.task, [] if probe is None else [probe])
        unknown = [f for f in scorer.features if loaded.schema.fields and f not in loaded.schema.names]
        if unknown:
            raise UnsupportedModel(f"the model's inputs {unknown[:5]} are not in its signature")
    except (UnsupportedModel, ScorerMismatch) as exc:
        status = f"pipeline: {exc}"
    except Exception as exc:  # a bug or an unexpected model: the pipeline scores
        log.exception("%s v%s: the compiled scorer could not be built", loaded.name, loaded.version)
        status = f"pipeline: the compiled scorer could not be built ({type(exc).__name__}: {exc})"
    else:
        status = f"compiled: {scorer.kind} ({scorer.estimator_name}), max abs difference {gap:.3g} on verification"
        log.info("%s v%s scorer %s", loaded.name, loaded.version, status)
        return dataclasses.replace(loaded, scorer=scorer, scorer_status=status)
    log.warning("%s v%s is scored by its pipeline: %s", loaded.name, loaded.version, status)
    return dataclasses.replace(loaded, scorer=None, scorer_status=status)


# --- the explainer ------------------------------------------------------------------------------------------------


class _NoExplainer(Exception):
    """Why a version gets no explainer: `state` (metrics.EXPLAINER_STATES) and the status text."""

    def __init__(self, state: str, status: str) -> None:
        super().__init__(status)
        self.state, self.status = state, status


def with_explainer(mlf: MlflowClient, loaded: LoadedModel, tags: Mapping[str, str],
                   retry_after: float = 60.0) -> LoadedModel:
    """`loaded` with its explainer (see the module docstring), or without one and the reason. Never raises: an
    explainer problem never keeps a verified model from serving predictions."""
    try:
        explainer, digest, tolerance = _build_explainer(mlf, loaded, tags)
    except _NoExplainer as exc:
        state, status = exc.state, exc.status
    except Exception as exc:  # a bug, an unexpected model, a missing dependency: no explainer, never a refusal
        log.exception("%s v%s: the explainer could not be built", loaded.name, loaded.version)
        state, status = "invalid", f"failed: the explainer could not be built ({type(exc).__name__}: {exc})"
    else:
        status = f"ready: {explainer.method} ({explainer.space})"
        log.info("%s v%s explainer %s", loaded.name, loaded.version, status)
        return dataclasses.replace(loaded, explainer=explainer, explainer_status=status, explainer_state="ready",
                                   explainer_sha256=digest, explainer_tolerance=tolerance, explainer_retry_at=None)
    if state != "none":
        log.warning("%s v%s serves no explanations: %s", loaded.name, loaded.version, status)
    retry = time.time() + retry_after if state == "unavailable" else None
    return dataclasses.replace(loaded, explainer=None, explainer_status=status, explainer_state=state,
                               explainer_sha256="", explainer_tolerance=0.0, explainer_retry_at=retry)


def _build_explainer(mlf: MlflowClient, loaded: LoadedModel, tags: Mapping[str, str]) -> tuple[Any, str, float]:
    """(explainer, record sha256, tolerance) of a version, or _NoExplainer saying why not."""
    expected = tags.get(EXPLAINER_SHA_TAG)
    uri = tags.get(EXPLAINER_TAG)
    if not expected and not uri:
        raise _NoExplainer("none", NO_RECORD)
    if not expected:
        raise _NoExplainer("invalid", f"failed: the explainer record has no recorded hash (tag {EXPLAINER_SHA_TAG})")
    uri = uri or f"runs:/{loaded.run_id}/explainer/v{loaded.version}.json"
    text = _record_text(mlf, uri)
    from crispflow.model.explain import ExplainerError, ExplainerSelfTestFailed, LocalExplainer, record_digest

    try:
        record = json.loads(text)
    except ValueError:
        raise _NoExplainer("invalid", f"failed: the explainer record {uri} is not JSON") from None
    if not isinstance(record, dict):
        raise _NoExplainer("invalid", f"failed: the explainer record {uri} is not a JSON object")
    actual = record_digest(record)
    if actual != expected:
        raise _NoExplainer("hash_mismatch", f"failed: explainer hash mismatch (the record {uri} hashes to "
                                            f"{actual[:12]}, tag {EXPLAINER_SHA_TAG} says {str(expected)[:12]})")
    try:
        explainer = LocalExplainer.build(loaded.task, loaded.model, record)
    except ExplainerSelfTestFailed as exc:
        raise _NoExplainer("self_test_failed", f"failed self-test: {exc}") from None
    except ExplainerError as exc:
        raise _NoExplainer("invalid", f"failed: {exc}") from None
    unknown = [f for f in explainer.features if loaded.schema.fields and f not in loaded.schema.names]
    if unknown:  # requests are validated against the signature: the explainer must read only its columns
        raise _NoExplainer("invalid", f"failed: the explainer's features {unknown[:5]} are not in the model's "
                                      "signature")
    return explainer, actual, float(explainer.tolerance)


def _record_text(mlf: MlflowClient, uri: str) -> str:
    """The explainer record's text (`runs:/` URIs through `mlf`'s own tracking server); _NoExplainer("unavailable")
    if it cannot be fetched. MLflow reports a missing artifact and an unreachable artifact store alike ("Failed to
    download artifacts"), so both are tried again later: a record is small and its absence is logged."""
    import tempfile
    from pathlib import Path

    try:
        if uri.startswith("runs:/"):
            run_id, _, path = uri.removeprefix("runs:/").partition("/")
            with tempfile.TemporaryDirectory(prefix="crispflow-explainer-") as tmp:
                return Path(mlf.download_artifacts(run_id, path, tmp)).read_text()
        import mlflow.artifacts

        return mlflow.artifacts.load_text(uri)
    except Exception as exc:
        raise _NoExplainer("unavailable", f"unavailable: the explainer record {uri} could not be fetched "
                                          f"({type(exc).__name__}: {str(exc)[:200]}); tried again later") from None


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
        return {"aliases": {a: _describe_arm(a, m) for a, m in self.arms.items()},
                "registry_aliases": dict(self.registry_aliases), "refused": dict(self.refused),
                "policy": self.policy.to_dict(), "ready": self.champion is not None, "not_ready": self.not_ready,
                "polled_at": self.polled_at}


def _describe_arm(alias: str, model: LoadedModel) -> dict[str, Any]:
    found = model.describe()
    if alias == SHADOW:
        found["explainer"]["note"] = "shadow arms are never explained"
    return found


Loader = Callable[["MlflowClient", str, str], LoadedModel]


def registry_state(model: Any) -> tuple[dict[str, str], dict[str, str]]:
    """(alias → version, tags) of a registered model (as `get_registered_model`/`search_registered_models` give
    it), versions as strings."""
    aliases = {str(a): str(v) for a, v in (getattr(model, "aliases", None) or {}).items()}
    return aliases, {str(k): str(v) for k, v in (getattr(model, "tags", None) or {}).items()}


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
        self.unloaded = False  # set by `unload`, cleared by the next `apply`

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
        return self.apply(self.read_registry())

    def apply(self, found: tuple[Mapping[str, str], Mapping[str, str]] | str) -> Snapshot:
        """Serve what the registry says: `found` is (alias → version, registered-model tags), or why the registry
        could not be read (then the last snapshot keeps serving). Loads what changed, then swaps the snapshot."""
        with self._poll_lock:
            old = self.snapshot
            if isinstance(found, str):  # the registry could not be read: keep serving, say why
                if old.champion is None:
                    self.snapshot = Snapshot(old.arms, old.policy, old.registry_aliases, old.refused, found,
                                             old.polled_at)
                return self.snapshot
            if self._client is None:
                self._client = self._client_factory()
            aliases, tags = dict(found[0]), found[1]
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
            self.unloaded = False
            return new

    def unload(self, reason: str) -> None:
        """Drop every loaded version (the fleet evicts the least recently used model); the next `apply` loads
        them again."""
        with self._poll_lock:
            old = self.snapshot
            self._cache.clear()
            self.snapshot = Snapshot({}, old.policy, old.registry_aliases, old.refused, reason, old.polled_at)
            self.unloaded = True
            if self.metrics is not None:  # idle by choice (the fleet's LRU), not a failure: ready
                self.metrics.set_served(self.name, {}, ready=True)
                self.metrics.set_explainers(self.name, {})
                self.metrics.set_scorers(self.name, {})

    def read_registry(self) -> tuple[dict[str, str], dict[str, str]] | str:
        """(aliases, tags) of this registered model, or why they could not be read."""
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
        return registry_state(model)

    def _get(self, version: str, refused: dict[str, str]) -> LoadedModel | None:
        if version in self._cache:
            self._cache.move_to_end(version)
            cached = self._cache[version]
            if cached.explainer_retry_at is not None and time.time() >= cached.explainer_retry_at:
                cached = self._cache[version] = self._retry_explainer(cached)
            return cached
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
                self.metrics.refused_loads.labels(self.name, exc.reason).inc()
            refused[version] = f"{exc.reason}: {exc}"
            if exc.reason != "unavailable":  # a transient failure is retried at the next poll
                self._refused[version] = (refused[version], time.monotonic())
            return None
        self._refused.pop(version, None)
        if loaded.explainer_retry_at is not None:  # the record could not be fetched: try again after refused_retry
            loaded = dataclasses.replace(loaded, explainer_retry_at=time.time() + self.refused_retry)
        self._cache[version] = loaded
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        log.info("loaded %s v%s (sha256 %s)", self.name, version, loaded.sha256[:12])
        return loaded

    def _retry_explainer(self, loaded: LoadedModel) -> LoadedModel:
        """A served version whose explainer record could not be fetched, with another try at it."""
        assert self._client is not None
        try:
            tags = self._client.get_model_version(self.name, loaded.version).tags
        except Exception:  # the registry is down too: later
            return dataclasses.replace(loaded, explainer_retry_at=time.time() + self.refused_retry)
        return with_explainer(self._client, loaded, tags, self.refused_retry)

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
                    self.metrics.reloads.labels(self.name, alias).inc()
        if self.metrics is not None and (before != after or old.polled_at is None
                                         or old.registry_aliases.get(CHAMPION) != new.registry_aliases.get(CHAMPION)):
            # ready unless the registry names a champion this server does not serve (refused, failed to load); a
            # model not deployed yet (no champion alias) is not a failure of the server
            ready = CHAMPION in after or CHAMPION not in new.registry_aliases
            self.metrics.set_served(self.name, after, ready=ready)
        if self.metrics is not None:
            explainers = {m.version: m.explainer_state for m in new.arms.values()}
            if explainers != {m.version: m.explainer_state for m in old.arms.values()} or old.polled_at is None:
                self.metrics.set_explainers(self.name, explainers)
            scorers = {m.version: m.scorer_kind for m in new.arms.values()}
            if scorers != {m.version: m.scorer_kind for m in old.arms.values()} or old.polled_at is None:
                self.metrics.set_scorers(self.name, scorers)

    def _count_error(self, kind: str) -> None:
        if self.metrics is not None:
            self.metrics.errors.labels(kind).inc()
