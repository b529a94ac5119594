"""The Models pages: registered crispflow models, their versions (aliases, blessing status, primary metric), and one
version in full (the verdict with every check's numbers, metrics with CIs, the model card, lineage from the dataset
version to the drift windows it served), plus the GX Data Docs page of a batch or dataset version.

Read-only. The list pages use the registry's search (one paged `search_model_versions` call per model, tags only, no
artifact downloads); only `version_page` reads artifacts (verdict, evaluation, model card) of the one version shown.
Every name from a URL is checked against a strict pattern first: anything else is `NotFound`, never a lookup.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crispflow.erasure.models import DEADLINE as ERASURE_DEADLINE
from crispflow.erasure.models import PENDING as ERASURE_PENDING
from crispflow.lake import json_safe
from crispflow.model import registry
from crispflow.model.registry import CANARY, CHALLENGER, CHAMPION, PREVIOUS, SHADOW
from crispflow.names import NAME
from crispflow.ui import NotFound

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from crispflow.lake import Lake, PathLike
    from crispflow.release.promotion import Ledger

MODEL_PATTERN = re.compile(r"^" + re.escape(registry.model_name("")) + NAME.removeprefix("^"))
PIPELINE_PATTERN = re.compile(NAME)
VERSION_PATTERN = re.compile(r"^[1-9][0-9]{0,9}$")
BATCH_PATTERN = re.compile(r"^b-[0-9a-f]{16}$")  # crispflow.data.datasets.batch_id_for
DATASET_PATTERN = re.compile(r"^ds-[0-9a-f]{16}$")  # crispflow.data.datasets.version_id_of
ALIASES = (CHAMPION, CANARY, SHADOW, CHALLENGER, PREVIOUS)  # the order the pages show them in
PAGE_SIZE = 1000  # versions per registry search call
# verdict statuses of a version, from its tags
BLESSED, FORCED, NOT_BLESSED, NOT_JUDGED = "blessed", "forced", "not_blessed", "not_judged"
_TEXT_KEYS = ("name", "passed", "reason", "hypothesis", "rule", "why", "slices")
_RUN_TAGS = {"dag_id": "crispflow.dag_id", "dag_run_id": "crispflow.run_id", "git_commit": "crispflow.git_commit",
             "spec_hash": "crispflow.spec_hash", "holdout_hash": "crispflow.holdout_hash",
             "config_id": "crispflow.config_id", "run_key": registry.RUN_KEY}  # lineage tags of the version


# --------------------------------------------------------------------------------------------- validation


def check_model(model: str) -> str:
    """`model` if it is a crispflow model name (`crispflow-<pipeline>`, `registry.model_name`), else NotFound."""
    if not isinstance(model, str) or not MODEL_PATTERN.match(model):
        raise NotFound("no such model")
    return model


def check_version(version: str | int) -> str:
    text = str(version)
    if not VERSION_PATTERN.match(text):
        raise NotFound("no such model version")
    return text


def is_missing(exc: BaseException) -> bool:
    """An MLflow error saying the model or version does not exist (not a transport or auth error)."""
    return getattr(exc, "error_code", None) == "RESOURCE_DOES_NOT_EXIST"


def registered_model(mlf: MlflowClient, model: str) -> Any:
    """The registered model (with its aliases and tags); NotFound when the name is invalid or unknown."""
    from mlflow.exceptions import MlflowException

    try:
        return mlf.get_registered_model(check_model(model))
    except MlflowException as exc:
        if is_missing(exc):
            raise NotFound("no such model") from None
        raise


def alias_map(rm: Any) -> dict[str, str | None]:
    """Alias → version for the aliases crispflow uses (None when unset)."""
    held = {str(a): str(v) for a, v in dict(rm.aliases or {}).items()}
    return {alias: held.get(alias) for alias in ALIASES}


# --------------------------------------------------------------------------------------------- list pages


def models_index(mlf: MlflowClient) -> list[dict[str, Any]]:
    """Every registered crispflow model: name, pipeline, aliases, how many versions, the latest version."""
    out = []
    for rm in _registered_models(mlf):
        if not MODEL_PATTERN.match(rm.name):
            continue
        count, latest = 0, None
        for mv in _versions(mlf, rm.name, limit=None):
            count += 1
            latest = latest or str(mv.version)
        out.append({"name": rm.name, "pipeline": (rm.tags or {}).get(registry.PIPELINE_TAG)
                    or rm.name.removeprefix(registry.model_name("")), "aliases": alias_map(rm),
                    "versions": count, "latest_version": latest, "description": rm.description or ""})
    return sorted(out, key=lambda m: m["name"])


def _registered_models(mlf: MlflowClient) -> list[Any]:
    found, token = [], None
    while True:
        page = mlf.search_registered_models(filter_string=f"name LIKE '{registry.model_name('')}%'",
                                            max_results=100, page_token=token)
        found += list(page)
        token = getattr(page, "token", None)
        if not token:
            return found


def _versions(mlf: MlflowClient, model: str, *, limit: int | None) -> Any:
    """The versions of `model`, newest first, at most `limit` (None: all), in pages of PAGE_SIZE."""
    token, seen = None, 0
    while limit is None or seen < limit:
        size = PAGE_SIZE if limit is None else min(PAGE_SIZE, limit - seen)
        page = mlf.search_model_versions(f"name = '{model}'", max_results=size,
                                         order_by=["version_number DESC"], page_token=token)
        for mv in page:
            seen += 1
            yield mv
        token = getattr(page, "token", None)
        if not token or not len(page):
            return


def model_page(mlf: MlflowClient, model: str, *, limit: int = 200, primary_metric: str | None = None,
               lake: Lake | None = None) -> dict[str, Any]:
    """One model's versions, newest first (at most `limit`): aliases, verdict status, forced, the primary metric
    (value; CI when the version carries `crispflow.holdout_<metric>_ci`), dataset version (with `lake`: and the
    live version standing for it when an erasure purged it, `dataset_successor`), created.

    :param primary_metric: the spec's `blessing.primary_metric`; default: the task's default
        (`crispflow.spec.TASK_DEFAULT_METRICS`) of each version
    """
    rm = registered_model(mlf, model)
    aliases = alias_map(rm)
    by_version: dict[str, list[str]] = {}
    for alias, version in aliases.items():
        if version is not None:
            by_version.setdefault(version, []).append(alias)
    rows = [version_row(mv, by_version.get(str(mv.version), []), primary_metric)
            for mv in _versions(mlf, model, limit=limit + 1)]
    tags = rm.tags or {}
    pipeline = tags.get(registry.PIPELINE_TAG) or model.removeprefix(registry.model_name(""))
    if lake is not None and PIPELINE_PATTERN.match(pipeline):
        for row in rows[:limit]:
            row["dataset_successor"] = _successor(lake, pipeline, row["dataset_version_id"])
    return json_safe({"model": model, "pipeline": pipeline, "description": rm.description or "", "aliases": aliases,
        "canary_share": _float(tags.get(registry.CANARY_SHARE_TAG)),
        "shadow_share": _float(tags.get(registry.SHADOW_SHARE_TAG)),
        "versions": rows[:limit], "truncated": len(rows) > limit})


def version_status(tags: Mapping[str, str]) -> str:
    """blessed, forced (a human's approved override), not_blessed, or not_judged (no verdict yet)."""
    if tags.get("crispflow.forced_by"):
        return FORCED
    return {"true": BLESSED, "false": NOT_BLESSED}.get(tags.get("crispflow.blessed", ""), NOT_JUDGED)


def primary_metric_of(tags: Mapping[str, str], metric: str | None = None) -> dict[str, Any]:
    """{name, value, ci_low, ci_high} of the primary metric from the version's holdout tags (None when absent)."""
    from crispflow.spec import TASK_DEFAULT_METRICS

    if metric is None:
        try:
            metric = TASK_DEFAULT_METRICS[registry.task_of(tags).task][1]
        except registry.RegistryError:
            metric = TASK_DEFAULT_METRICS["binary"][1]
    low = high = None
    raw_ci = tags.get(f"crispflow.holdout_{metric}_ci")
    if raw_ci:
        try:
            low, high = (_float(v) for v in json.loads(raw_ci))
        except (ValueError, TypeError):
            low = high = None
    return {"name": metric, "value": _float(tags.get(f"crispflow.holdout_{metric}")), "ci_low": low,
            "ci_high": high}


def version_row(mv: Any, aliases: list[str], primary_metric: str | None = None) -> dict[str, Any]:
    tags = dict(mv.tags or {})
    try:
        task = registry.task_of(tags).task
    except registry.RegistryError:
        task = tags.get(registry.TASK_TAG)
    return {"version": str(mv.version), "aliases": aliases, "status": version_status(tags),
            "blessed": {"true": True, "false": False}.get(tags.get("crispflow.blessed", "")),
            "forced": bool(tags.get("crispflow.forced_by")), "rolled_back": bool(tags.get("crispflow.rolled_back")),
            "task": task, "primary_metric": primary_metric_of(tags, primary_metric),
            "dataset_version_id": tags.get("crispflow.dataset_version_id"), "created": _time(mv.creation_timestamp),
            "run_id": mv.run_id, "complete": registry.SHA_TAG in tags, "registry_status": mv.status,
            "dag_id": tags.get("crispflow.dag_id"), "dag_run_id": tags.get("crispflow.run_id"),
            "erasure": {"id": tags[ERASURE_PENDING], "deadline": tags.get(ERASURE_DEADLINE)}
            if tags.get(ERASURE_PENDING) else None}


# --------------------------------------------------------------------------------------------- one version


def _model_version(mlf: MlflowClient, model: str, version: str | int) -> Any:
    """The registry's version `version` of `model`; NotFound for an invalid name or a version that does not exist."""
    from mlflow.exceptions import MlflowException

    check_model(model)
    try:
        return mlf.get_model_version(model, check_version(version))
    except MlflowException as exc:
        if is_missing(exc):
            raise NotFound("no such model version") from None
        raise


def model_card_html(mlf: MlflowClient, model: str, version: str | int) -> str | None:
    """The stored HTML model card of a version (serve it sandboxed), None if it has none or it cannot be read."""
    tags = dict(_model_version(mlf, model, version).tags or {})
    return _artifact_text(mlf, tags.get("crispflow.model_card"), "model card", [])


def version_page(mlf: MlflowClient, lake: Lake | None, ledger: Ledger | None, pred_root: PathLike | None, model: str,
                 version: str | int, *, windows: int = 50) -> dict[str, Any]:
    """Everything about one version: its row (as on the model page), the verdict with every check and its
    numbers, the holdout metrics with CIs, the model card's HTML (serve it sandboxed), and its lineage: dataset
    version → manifest (sources and their fingerprints, parents) → MLflow run → ledger entries naming the version →
    the newest `windows` drift windows it served. Parts that cannot be read are None and named in `problems`."""
    mv = _model_version(mlf, model, version)
    version = str(mv.version)
    tags = dict(mv.tags or {})
    problems: list[str] = []
    verdict = _artifact_json(mlf, tags.get("crispflow.verdict"), "verdict", problems)
    evaluated = any(k.startswith("crispflow.holdout_") and k != "crispflow.holdout_hash" for k in tags)
    evaluation = _artifact_json(mlf, f"runs:/{mv.run_id}/evaluation/v{version}.json", "evaluation",
                                problems) if evaluated else None
    card = _artifact_text(mlf, tags.get("crispflow.model_card"), "model card", problems)
    page = {
        "model": model, "version": version, **version_row(mv, [str(a) for a in (mv.aliases or [])]),
        "description": mv.description or "",
        "tags": {k: v for k, v in tags.items() if k.startswith("crispflow.") and not k.startswith("crispflow.ledger.")},
        "verdict": verdict_view(verdict) if verdict is not None else None,
        "metrics": metrics_view(evaluation) if evaluation is not None else [],
        "evaluation": _evaluation_extras(evaluation),
        "model_card_html": card,
        "lineage": {
            "dataset": _dataset(lake, tags.get("crispflow.dataset_version_id"), tags.get("crispflow.pipeline")
                                or model.removeprefix(registry.model_name("")), problems),
            "run": _run(mlf, mv.run_id, tags, problems),
            "ledger": _ledger_entries(ledger, model, version),
            "drift_windows": _drift_windows(pred_root, model, version, windows),
        },
        "problems": problems,
    }
    return json_safe(page)


def verdict_view(verdict: Mapping[str, Any]) -> dict[str, Any]:
    """The stored verdict for display: the decision and its settings, and every check as {name, passed, reason,
    numbers: {key: number or text}, slices (slice checks), hypothesis or rule}."""
    checks = []
    for check in verdict.get("checks") or []:
        numbers = {k: v for k, v in check.items()
                   if k not in _TEXT_KEYS and (v is None or isinstance(v, int | float | str))}
        checks.append({"name": check.get("name"), "passed": bool(check.get("passed")), "reason": check.get("reason"),
                       "numbers": numbers, "slices": list(check.get("slices") or []),
                       "hypothesis": check.get("hypothesis") or check.get("rule"), "why": check.get("why")})
    keep = ("blessed", "blessed_by", "mode", "task", "primary_metric", "margin", "alpha", "n", "positives",
            "bootstrap_samples", "seed", "challenger_threshold", "champion_threshold", "challenger_metrics",
            "champion_metrics", "champion_version", "dataset_version_id", "holdout_hash", "judged_by",
            "champion_not_compared", "forced")
    return {"reasons": list(verdict.get("reasons") or []), **{k: verdict.get(k) for k in keep}, "checks": checks}


def metrics_view(evaluation: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The holdout metrics with their bootstrap CIs: [{name, value, ci_low, ci_high}] in the report's order."""
    return [{"name": name, "value": m.get("value"), "ci_low": m.get("ci_low"), "ci_high": m.get("ci_high")}
            for name, m in (evaluation.get("metrics") or {}).items() if isinstance(m, Mapping)]


def _evaluation_extras(evaluation: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if evaluation is None:
        return None
    keys = ("task", "n", "alpha", "bootstrap", "positives", "threshold", "confusion_matrix", "classes",
            "class_counts", "per_class", "residuals", "observed", "interval", "latency", "size_bytes", "slices",
            "holdout_hash")
    return {k: evaluation[k] for k in keys if k in evaluation}


def _run_artifact(uri: str) -> tuple[str, str]:
    """(run id, path) of a `runs:/<run_id>/<path>` URI (the only kind crispflow tags); ValueError otherwise."""
    match = re.match(r"^runs:/([0-9a-f]{32})/((?:[A-Za-z0-9_.-]+/)*[A-Za-z0-9_.-]+)$", uri or "")
    if not match or ".." in match.group(2).split("/"):
        raise ValueError("not a runs:/ artifact URI")
    return match.group(1), match.group(2)


def _artifact_text(mlf: MlflowClient, uri: str | None, what: str, problems: list[str]) -> str | None:
    """A run artifact's text through this client (no global tracking URI); None (and a problem) if unreadable."""
    from mlflow.exceptions import MlflowException

    if not uri:
        return None
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no progress bars in a server's log
    try:
        run_id, path = _run_artifact(uri)
        with tempfile.TemporaryDirectory() as tmp:
            return Path(mlf.download_artifacts(run_id, path, tmp)).read_text(encoding="utf-8")
    except (MlflowException, OSError, ValueError) as exc:
        problems.append(f"{what}: could not be read ({type(exc).__name__})")
        return None


def _artifact_json(mlf: MlflowClient, uri: str | None, what: str, problems: list[str]) -> dict[str, Any] | None:
    text = _artifact_text(mlf, uri, what, problems)
    if text is None:
        return None
    try:
        found = json.loads(text)
    except ValueError:
        problems.append(f"{what}: not valid JSON")
        return None
    return found if isinstance(found, dict) else None


def _dataset(lake: Lake | None, version_id: str | None, pipeline: str, problems: list[str]) -> dict[str, Any] | None:
    """The dataset version a model was trained on, from its manifest: interval, rows, sources with fingerprints,
    parents (a composed training window), the gate's result, who published it, where its Data Docs are, and,
    when an erasure purged it, its successor (`purged`)."""
    from crispflow.data.datasets import read_manifest
    from crispflow.errors import LakeError

    if not version_id:
        return None
    base: dict[str, Any] = {"dataset_version_id": version_id, "pipeline": pipeline, "manifest": None}
    if lake is None or not DATASET_PATTERN.match(version_id) or not PIPELINE_PATTERN.match(pipeline):
        return base
    try:
        manifest = read_manifest(lake, version_id, pipeline)
    except (LakeError, OSError, ValueError) as exc:
        problems.append(f"dataset manifest {version_id}: could not be read ({type(exc).__name__})")
        return base
    parents = []
    for parent in manifest.get("parents") or []:
        entry: dict[str, Any] = {"dataset_version_id": parent}
        try:
            found = read_manifest(lake, parent, pipeline)
            entry.update(interval=found.get("interval"), rows=found.get("rows"), batch_id=found.get("batch_id"))
        except (LakeError, OSError, ValueError):
            entry["missing"] = True
        parents.append(entry)
    return {**base, "manifest": {
        "interval": manifest.get("interval"), "rows": manifest.get("rows"), "batch_id": manifest.get("batch_id"),
        "content_sha256": manifest.get("content_sha256"), "spec_hash": manifest.get("spec_hash"),
        "sources": [{k: s.get(k) for k in ("source", "fingerprint", "rows_read", "rows_in_interval", "newest_time",
                                           "raw")} for s in manifest.get("sources") or []],
        "parents": parents, "quality": manifest.get("quality"), "reconciliation": manifest.get("reconciliation"),
        "published_by": manifest.get("published_by"),
        "purged": {**{k: manifest.get(k) for k in ("superseded_by", "erasure", "purged_at")},
                   "live": _successor(lake, pipeline, version_id)} if manifest.get("purged") else None},
        "data_docs": version_id if _docs_exists(lake, pipeline, version_id) else None}


def _successor(lake: Lake, pipeline: str, version_id: str | None) -> str | None:
    """The live dataset version an erasure put in place of `version_id`; None when it is live (or unreadable)."""
    from crispflow.data.datasets import successor_of

    if not version_id or not DATASET_PATTERN.match(version_id):
        return None
    try:
        successor = successor_of(lake, pipeline, version_id)
    except (OSError, ValueError):
        return None
    return successor if successor != version_id else None


def _docs_exists(lake: Lake, pipeline: str, ref: str) -> bool:
    try:
        data_docs_file(lake, pipeline, ref)
    except NotFound:
        return False
    return True


def _run(mlf: MlflowClient, run_id: str | None, tags: Mapping[str, str], problems: list[str]) -> dict[str, Any] | None:
    from mlflow.exceptions import MlflowException

    if not run_id:
        return None
    out: dict[str, Any] = {"run_id": run_id, **{key: tags.get(tag) for key, tag in _RUN_TAGS.items()}}
    try:
        run = mlf.get_run(run_id)
    except MlflowException as exc:
        problems.append(f"MLflow run: could not be read ({type(exc).__name__})")
        return out
    return {**out, "experiment_id": run.info.experiment_id, "run_name": run.info.run_name,
            "status": run.info.status, "start_time": _time(run.info.start_time), "end_time": _time(run.info.end_time)}


def _ledger_entries(ledger: Ledger | None, model: str, version: str) -> list[dict[str, Any]]:
    """The ledger entries that moved an alias to or from `version`, newest first."""
    if ledger is None:
        return []
    named = [e for e in ledger.entries(model)
             if version in (e.get("from_version"), e.get("to_version"))
             or any(version in (before, after) for before, after in (e.get("moves") or {}).values())]
    return [{k: e.get(k) for k in ("seq", "at", "action", "moves", "reason", "person", "state", "actor")}
            for e in reversed(named)]


def _drift_windows(root: PathLike | None, model: str, version: str, last: int) -> list[dict[str, Any]]:
    """The newest `last` drift windows this version served (any alias), newest first."""
    from crispflow.monitoring.store import read_windows, window_key

    if root is None or last <= 0:
        return []
    mine = [w for w in read_windows(root, model, alias=None) if str(w.get("version")) == version]
    mine.sort(key=lambda w: w.get("window_end") or "")
    out = []
    for w in reversed(mine[-last:]):
        try:
            key = window_key(datetime.fromisoformat(w["window_end"]))
        except (KeyError, TypeError, ValueError):
            key = None
        out.append({"window_key": key, **{k: w.get(k) for k in (
            "alias", "window_start", "window_end", "rows", "labelled_rows", "status", "drift", "drift_share",
            "drifted_features")}})
    return out


# --------------------------------------------------------------------------------------------- data docs


def data_docs_file(lake: Lake, pipeline: str, ref: str) -> PathLike:
    """The GX Data Docs page of a staged batch (`b-<16 hex>`) or a published dataset version (`ds-<16 hex>`; a
    composed training window points at its newest parent's page). NotFound for any other name, or no page."""
    from crispflow.data.datasets import QUALITY_HTML

    if not isinstance(pipeline, str) or not PIPELINE_PATTERN.match(pipeline) or not isinstance(ref, str):
        raise NotFound("no such Data Docs page")
    if BATCH_PATTERN.match(ref):
        path = lake.batch_dir(pipeline, ref) / QUALITY_HTML
    elif DATASET_PATTERN.match(ref):
        path = lake.version_dir(pipeline, ref) / QUALITY_HTML
        if not path.exists():
            path = _manifest_docs(lake, pipeline, ref) or path
    else:
        raise NotFound("no such Data Docs page")
    if not path.exists():
        raise NotFound("no such Data Docs page")
    return path


def _manifest_docs(lake: Lake, pipeline: str, version_id: str) -> PathLike | None:
    """The page a version's manifest names (`files.quality_html`), only if it has the shape crispflow writes:
    `curated|batches/<pipeline>/<ds-…|b-…>/quality.html` of the same pipeline."""
    from crispflow.data.datasets import QUALITY_HTML
    from crispflow.lake import read_json

    if not lake.manifest(pipeline, version_id).exists():
        return None
    try:
        stored = (read_json(lake.manifest(pipeline, version_id)).get("files") or {}).get("quality_html")
    except (OSError, ValueError, AttributeError):
        return None
    parts = str(stored or "").split("/")
    if len(parts) != 4 or parts[1] != pipeline or parts[3] != QUALITY_HTML:
        return None
    zone, ref = parts[0], parts[2]
    if (zone, bool(DATASET_PATTERN.match(ref))) == ("curated", True):
        return lake.version_dir(pipeline, ref) / QUALITY_HTML
    if (zone, bool(BATCH_PATTERN.match(ref))) == ("batches", True):
        return lake.batch_dir(pipeline, ref) / QUALITY_HTML
    return None


# --------------------------------------------------------------------------------------------- small helpers


def _float(raw: Any) -> float | None:
    try:
        return json_safe(float(raw)) if raw is not None else None
    except (TypeError, ValueError):
        return None


def _time(ms: int | None) -> str | None:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat() if ms else None
