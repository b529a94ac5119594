"""The MLflow registry, used safely: idempotent runs and versions, hashed artifacts, aliases only on whole versions.

Every run and model version carries `crispflow.run_key` (the Airflow dag_id/run_id/step that made it): a retried
task finds what its first try created instead of making a second one. A version is complete once its artifact
hash tag is set; aliases are only ever pointed at complete versions, and models are only loaded after their
files match that hash.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crispflow.errors import CrispflowError
from crispflow.lake import make_private_dirs
from crispflow.spec import TASK_METRICS

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    from mlflow import MlflowClient

RUN_KEY = "crispflow.run_key"
SHA_TAG = "crispflow.artifact_sha256"
# The registry's vocabulary, one owner: the aliases crispflow moves and the tags the model server reads.
CHALLENGER, CHAMPION, CANARY, SHADOW, PREVIOUS = "challenger", "champion", "canary", "shadow", "previous"
CANARY_SHARE_TAG, SHADOW_SHARE_TAG, ENTITY_KEY_TAG = "crispflow.canary_share", "crispflow.shadow_share", (
    "crispflow.entity_key")
# What a version predicts (set at registration, read by servers and monitors without the spec): the task; binary:
# the decision threshold; regression: the prediction interval (JSON); multiclass: the classes in model order (JSON
# list of str). Registered-model tag PIPELINE_TAG names the spec the model belongs to.
TASK_TAG, THRESHOLD_TAG, INTERVAL_TAG, CLASSES_TAG = (
    "crispflow.task", "crispflow.threshold", "crispflow.interval", "crispflow.classes")
PIPELINE_TAG = "crispflow.pipeline"
# Explanations (`crispflow.model.explain`): the local explainer's record (an artifact URI) and its sha256, checked
# before a server builds the explainer; the global explanation (importance, drift weights) of the version.
EXPLAINER_TAG, EXPLAINER_SHA_TAG, EXPLANATIONS_TAG = (
    "crispflow.explainer", "crispflow.explainer_sha256", "crispflow.explanations")
TASKS = tuple(TASK_METRICS)  # binary, multiclass, regression
TRUSTED_MODULES = ("numpy", "scipy", "sklearn", "crispflow")  # crispflow: the typing step of its pipelines
SKOPS, SKOPS_FILE = "skops", "model.skops"  # the only format and file crispflow writes and reads
_NOT_HASHED = {"registered_model_meta"}  # written by the registry after logging


class RegistryError(CrispflowError):
    """The registry holds something unusable (incomplete version, hash mismatch, unknown alias)."""


def model_name(pipeline: str) -> str:
    return f"crispflow-{pipeline}"


def client(tracking_uri: str | None = None) -> MlflowClient:
    """A client with bounded retries: an unavailable server fails the task in about a minute, not ten."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    import mlflow
    from mlflow import MlflowClient

    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    return MlflowClient()


def experiment_id(mlf: MlflowClient, pipeline: str) -> str:
    name = f"crispflow/{pipeline}"
    found = mlf.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return mlf.create_experiment(name, tags={"crispflow.pipeline": pipeline})
    except Exception:  # created concurrently by another task: use it
        return mlf.get_experiment_by_name(name).experiment_id


def find_or_create_run(mlf: MlflowClient, pipeline: str, run_key: str, run_name: str,
                       tags: dict[str, str] | None = None, parent_run_id: str | None = None) -> str:
    """The MLflow run for `run_key`, created once (a retry finds it); nested under `parent_run_id` if given."""
    exp = experiment_id(mlf, pipeline)
    found = mlf.search_runs([exp], filter_string=f"tags.`{RUN_KEY}` = '{run_key}'", max_results=1)
    if found:
        return found[0].info.run_id
    all_tags = {RUN_KEY: run_key, "mlflow.runName": run_name, **(tags or {})}
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    return mlf.create_run(exp, run_name=run_name, tags=all_tags).info.run_id


def tree_sha256(folder: Path) -> str:
    """Hash of a model's files (relative paths and bytes), independent of where they were downloaded."""
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name not in _NOT_HASHED):
        h.update(path.relative_to(folder).as_posix().encode() + b"\0")
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def pip_requirements() -> list[str]:
    """Explicit requirements: MLflow would otherwise spend ~10 s inferring them at every log."""
    import numpy
    import pandas
    import scipy
    import sklearn
    import skops

    return [f"scikit-learn=={sklearn.__version__}", f"pandas=={pandas.__version__}",
            f"numpy=={numpy.__version__}", f"scipy=={scipy.__version__}", f"skops=={skops.__version__}"]


def trusted_types(model: Any, *, trusted: Sequence[str] = ()) -> list[str]:
    """Types skops may load for this model: only classes of numpy, scipy, sklearn and crispflow itself, and of
    the `trusted` module prefixes (a spec's `training.allowed_estimators`)."""
    import_skops()
    import skops.io as sio

    return allowed_types(sio.get_untrusted_types(data=sio.dumps(model)), "the model", trusted=trusted)


def _trusted_name(dotted: str, trusted: Sequence[str]) -> bool:
    if dotted.split(".")[0] in TRUSTED_MODULES:
        return True
    return any(dotted.startswith(p if p.endswith(".") else p + ".") for p in trusted)


def allowed_types(untrusted: list[str], what: str, *, trusted: Sequence[str] = ()) -> list[str]:
    """`untrusted` (skops' names of the types it does not trust by default) if every one is a class of
    TRUSTED_MODULES or of a `trusted` module prefix (e.g. `lightgbm.`); a RegistryError naming the others.
    Names outside those modules are never imported."""
    foreign = [t for t in untrusted if not _trusted_name(t, trusted) or not _is_class(t)]
    if foreign:
        allowed = [*TRUSTED_MODULES, *trusted]
        raise RegistryError(f"{what}: skops types {foreign} are not allowed (only classes of {allowed} "
                            f"are): refusing it")
    return untrusted


def _is_class(dotted: str) -> bool:
    """Whether `dotted` (module path, then attributes) names a class: a function or method never is."""
    import importlib

    parts = dotted.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            found: Any = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            found = getattr(found, attr, None)
        return isinstance(found, type)
    return False


@dataclass(frozen=True)
class Registered:
    name: str
    version: str
    run_id: str
    artifact_sha256: str
    created: bool


def find_version(mlf: MlflowClient, name: str, run_key: str) -> Any | None:
    found = mlf.search_model_versions(f"name = '{name}' and tags.`{RUN_KEY}` = '{run_key}'")
    return max(found, key=lambda v: int(v.version)) if found else None


def register(mlf: MlflowClient, *, name: str, run_id: str, run_key: str, model: Any, example: pd.DataFrame,
             tags: dict[str, str], description: str = "", output: np.ndarray | None = None,
             trusted: Sequence[str] = ()) -> Registered:
    """Log the sklearn model in `run_id` and register it once per `run_key`; tag it; hash its artifact.

    :param example: model input rows (synthetic: `crispflow.model.synthetic.input_example`); the first 5 are
        logged as the input example, all shape the signature.
    :param output: the model's output for `example` (crispflow.model.tasks.model_output), for the signature;
        default: the positive-class probability of a classifier, the prediction of a regressor.
    :param trusted: module prefixes whose classes the model may hold besides numpy/scipy/sklearn/crispflow
        (`training.allowed_estimators`); loading it needs the same list.

    Safe to retry at any point: an existing version for the run key is completed (hash + tags), not duplicated.
    """
    import mlflow
    import mlflow.sklearn
    from mlflow.models import infer_signature

    existing = find_version(mlf, name, run_key)
    created = existing is None
    if existing is None:
        with mlflow.start_run(run_id=run_id):
            info = mlflow.sklearn.log_model(
                model, name="model", signature=infer_signature(example, _signature_output(model, example, output)),
                input_example=example.head(5), pip_requirements=pip_requirements(),
                skops_trusted_types=trusted_types(model, trusted=trusted))
        with contextlib.suppress(Exception):  # it exists already
            mlf.create_registered_model(name, description=description)
        existing = mlf.create_model_version(name, source=info.model_uri, run_id=run_id, tags={RUN_KEY: run_key},
                                            model_id=info.model_id)
    version = _wait_ready(mlf, name, str(existing.version))
    sha = version.tags.get(SHA_TAG) or _hash_version(version)
    for key, value in {**tags, SHA_TAG: sha}.items():
        mlf.set_model_version_tag(name, version.version, key, str(value))
    return Registered(name, str(version.version), version.run_id, sha, created)


def _signature_output(model: Any, example: pd.DataFrame, output: np.ndarray | None) -> np.ndarray:
    if output is not None:
        return output
    if hasattr(model, "predict_proba"):
        return model.predict_proba(example)[:, 1]
    return model.predict(example)


def _wait_ready(mlf: MlflowClient, name: str, version: str, timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        mv = mlf.get_model_version(name, version)
        if mv.status == "READY":
            return mv
        if mv.status == "FAILED_REGISTRATION" or time.monotonic() > deadline:
            raise RegistryError(f"{name} v{version} did not become READY (status {mv.status})")
        time.sleep(0.5)


def _download(version: Any, into: Path) -> Path:
    import mlflow

    return Path(mlflow.artifacts.download_artifacts(version.source, dst_path=str(into)))


def _hash_version(version: Any) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        return tree_sha256(_download(version, Path(tmp)))


def alias_version(mlf: MlflowClient, name: str, alias: str, *, strict: bool = False) -> Any | None:
    """The version an alias points at, or None (no model or no such alias). `strict`: only "not found" reads as
    None; any other error (server error, timeout, 401/403) propagates instead of looking like an unset alias."""
    from mlflow.exceptions import MlflowException

    try:
        return mlf.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if strict and exc.error_code not in NOT_FOUND_CODES:
            raise
        return None


NOT_FOUND_CODES = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")  # no model / "alias ... not found"
AUTH_ERROR_CODES = ("UNAUTHENTICATED", "PERMISSION_DENIED")


def auth_error(exc: BaseException) -> str | None:
    """`UNAUTHENTICATED` / `PERMISSION_DENIED` when `exc` says MLflow refused the credentials (HTTP 401/403, from the
    REST API or an artifact upload): retrying cannot help; else None."""
    from mlflow.exceptions import MlflowException

    if isinstance(exc, MlflowException):
        return exc.error_code if exc.error_code in AUTH_ERROR_CODES else None
    status = getattr(getattr(exc, "response", None), "status_code", None)
    return {401: AUTH_ERROR_CODES[0], 403: AUTH_ERROR_CODES[1]}.get(status) if isinstance(status, int) else None


def is_auth_error(exc: BaseException) -> bool:
    return auth_error(exc) is not None


@dataclass(frozen=True)
class VersionTask:
    """What a registered version predicts, from its tags: what `crispflow.model.tasks.model_output` needs of a
    spec (`task`, `class_labels`), for code that scores a version without its spec."""

    task: str = "binary"
    class_labels: tuple[str, ...] = ()


def task_of(tags: Mapping[str, str]) -> VersionTask:
    """The task of a version from its tags (`crispflow.task`, absent = binary: versions registered before tasks
    existed; multiclass `crispflow.classes`, a JSON list of class labels in model order); RegistryError naming the
    tag if they are unusable."""
    import json

    task = tags.get(TASK_TAG) or "binary"
    if task not in TASKS:
        raise RegistryError(f"{TASK_TAG}: {task!r} is not one of {list(TASKS)}")
    if task != "multiclass":
        return VersionTask(task)
    try:
        classes = json.loads(tags.get(CLASSES_TAG) or "null")
    except ValueError:
        classes = None
    if not isinstance(classes, list) or len(classes) < 3:
        raise RegistryError(f"{CLASSES_TAG}: a multiclass version needs a JSON list of >= 3 class labels, got "
                            f"{tags.get(CLASSES_TAG)!r}")
    return VersionTask(task, tuple(str(c) for c in classes))


def version_task(mv: Any) -> str:
    """The task a registered version was trained for (versions registered before the tag existed are binary)."""
    return task_of(mv.tags or {}).task


def version_threshold(mv: Any) -> float | None:
    """A binary version's decision threshold; None for the other tasks, which have none. RegistryError when a
    binary version has no valid threshold tag."""
    if version_task(mv) != "binary":
        return None
    raw = mv.tags.get(THRESHOLD_TAG)
    try:
        return float(raw)
    except (TypeError, ValueError):
        raise RegistryError(f"{mv.name} v{mv.version}: binary version without a valid {THRESHOLD_TAG} tag "
                            f"({raw!r})") from None


def set_alias(mlf: MlflowClient, name: str, alias: str, version: str) -> None:
    """Point an alias at a complete version only (one whose artifact hash is recorded)."""
    mv = mlf.get_model_version(name, version)
    if mv.status != "READY" or SHA_TAG not in mv.tags:
        raise RegistryError(f"{name} v{version} is not complete (status {mv.status}, no artifact hash): "
                            f"alias {alias!r} not moved")
    mlf.set_registered_model_alias(name, alias, str(version))


def load_verified(mlf: MlflowClient, name: str, version: str, cache: Path | None = None, *,
                  trusted: Sequence[str] = ()) -> Any:
    """Load a registered sklearn model after checking its files against the recorded hash (`trusted`: extra
    module prefixes whose classes it may hold, see `allowed_types`)."""
    return load_files(verified_copy(mlf.get_model_version(name, version), cache, trusted=trusted), trusted=trusted)


def load_files(local: Path, *, trusted: Sequence[str] = ()) -> Any:
    """The sklearn model in a local copy made by `verified_copy`, read by crispflow's rules, not the MLmodel's.

    MLflow's own loader takes the format and skops' trusted types from the MLmodel, which anyone with write access
    to MLflow can write: here only a skops file is read, with the types `allowed_types` accepts, and MLflow's
    loaders are switched off in this process (MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false).
    """
    os.environ["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] = "false"
    import_skops()
    import skops.io as sio

    path, types = loadable(local, str(local), trusted=trusted)
    return sio.load(path, trusted=types)


def verified_copy(mv: Any, cache: Path | None = None, *, trusted: Sequence[str] = ()) -> Path:
    """A model version's files, checked against the hash recorded at registration and by `loadable`.

    Kept in `cache` (default: the settings' model cache) under that hash: a worker or server downloads a version
    once, the copy is put in place atomically (concurrent loads are safe) and hashed again at every use.
    """
    local = _hash_checked_copy(mv, cache)
    loadable(local, f"{mv.name} v{mv.version}", trusted=trusted)
    return local


def loadable(local: Path, what: str, *, trusted: Sequence[str] = ()) -> tuple[Path, list[str]]:
    """(skops file, types to trust) of a model copy, read without deserializing anything; RegistryError unless
    the MLmodel's sklearn flavor says skops and the file holds only `allowed_types`."""
    import yaml

    import_skops()
    import skops.io as sio

    try:
        flavor = yaml.safe_load((local / "MLmodel").read_text())["flavors"]["sklearn"]
        fmt, file = flavor.get("serialization_format"), flavor.get("pickled_model")
    except (OSError, yaml.YAMLError, KeyError, TypeError, AttributeError) as exc:
        raise RegistryError(f"{what}: MLmodel has no readable flavors.sklearn ({exc!r}): refusing it") from None
    if fmt != SKOPS:
        raise RegistryError(f"{what}: MLmodel flavors.sklearn.serialization_format is {fmt!r}; crispflow loads "
                            f"only {SKOPS!r} (pickle runs code on load): refusing it")
    if file != SKOPS_FILE or not (local / file).is_file():
        raise RegistryError(f"{what}: MLmodel flavors.sklearn.pickled_model is {file!r}; crispflow loads only "
                            f"its own {SKOPS_FILE!r}: refusing it")
    try:
        untrusted = sio.get_untrusted_types(file=local / file)
    except Exception as exc:  # not a zip, no schema: skops cannot even list it
        raise RegistryError(f"{what}: {file} is not a readable skops file ({exc!r}): refusing it") from None
    return local / file, allowed_types(untrusted, f"{what}: {file}", trusted=trusted)


def _hash_checked_copy(mv: Any, cache: Path | None) -> Path:
    expected = mv.tags.get(SHA_TAG)
    if not expected:
        raise RegistryError(f"{mv.name} v{mv.version} has no recorded artifact hash: refusing to load it")
    cache = cache or _default_cache()
    final = cache / expected
    if final.is_dir():
        if tree_sha256(final) == expected:
            return final
        _discard(final, cache)  # changed on disk: fetch it again
    make_private_dirs(cache)
    staging = Path(tempfile.mkdtemp(dir=cache, prefix=".download-"))
    try:
        local = _download(mv, staging)
        actual = tree_sha256(local)
        if actual != expected:
            raise RegistryError(f"{mv.name} v{mv.version}: artifact hash {actual[:12]} does not match the recorded "
                                f"{expected[:12]} (tampered?): refusing to load it")
        try:
            local.rename(final)
            return final
        except OSError:
            pass  # a concurrent download won the rename: its copy is checked below
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if tree_sha256(final) != expected:
        raise RegistryError(f"{mv.name} v{mv.version}: cached copy in {final} does not match its hash")
    return final


def _discard(folder: Path, cache: Path) -> None:
    """Move a folder out of the way atomically, then delete it (a concurrent reader never sees half of it)."""
    aside = Path(tempfile.mkdtemp(dir=cache, prefix=".stale-"))
    with contextlib.suppress(OSError):
        folder.rename(aside / folder.name)
    shutil.rmtree(aside, ignore_errors=True)


def _default_cache() -> Path:
    from crispflow.settings import Settings

    return Settings.from_env().model_cache


def import_skops() -> None:
    """Import skops.io without its import-time scan flooding logs: it looks up every scipy ufunc in every loaded
    module, and in an Airflow process each lookup of a deprecated alias warns (~1,200 log lines per task)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"The `airflow\.")
        import skops.io  # noqa: F401
