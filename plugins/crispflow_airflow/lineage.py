"""OpenLineage datasets of crispflow's tasks, built from what the operators already return (their XCom).

The operators' `get_openlineage_facets_on_complete` call one builder here and `operator_lineage` turns the plain
`Ref`s into OpenLineage datasets (the only place that imports `openlineage`, inside the function). Names follow
OpenLineage's naming spec as Airflow's providers do:

- lake objects: namespace `s3://<bucket>` (name: the object key, lake prefix included) or `file` (name: the absolute
  path); each is a real lake path — `raw/<pipeline>/<sha256>.<ext>` (the raw source fingerprint: the landed bytes,
  named by their hash), `batches/<pipeline>/<batch_id>` (staging), `curated/<pipeline>/<ds-...>` (a published
  version) — with a `datasetVersion` facet carrying the id;
- MLflow model versions: namespace the tracking URI (no credentials), name `models/<registered model>/<version>`;
- serving aliases: `models/<registered model>@<alias>`, whose `datasetVersion` is the version it points at; a move
  is an edge from the model version to the alias, a removed alias a `DROP` lifecycle change.

Nothing here reads the lake or MLflow: a builder gets the task's result and the two root URLs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

MODEL, FILE, ALIAS = "MODEL", "FILE", "ALIAS"


@dataclass(frozen=True)
class Ref:
    """One dataset of a lineage event, library-free: where it is, which version, and what happened to it."""

    namespace: str
    name: str
    version: str | None = None
    kind: str = FILE  # the datasetType facet: FILE, MODEL, or ALIAS (a serving alias, sub-type of MODEL)
    change: str | None = None  # the lifecycleStateChange facet: CREATE, OVERWRITE, DROP, ...


@dataclass(frozen=True)
class Lineage:
    """What a task read and wrote."""

    inputs: tuple[Ref, ...] = ()
    outputs: tuple[Ref, ...] = ()


# --- names --------------------------------------------------------------------------------------------------------

def lake_ref(lake_url: str, key: str, version: str | None = None, change: str | None = None) -> Ref:
    """A lake object or folder `key` (relative to the lake root, as manifests and XComs carry it)."""
    parts = urlsplit(lake_url)
    scheme = parts.scheme or "file"
    prefix = parts.path.strip("/")
    path = "/".join(p for p in (prefix, key.strip("/")) if p)
    if scheme == "file":
        return Ref("file", "/" + path, version, FILE, change)
    bucket = parts.hostname or ""  # drops a `conn_id@` user part
    return Ref(f"{scheme}://{bucket}", path, version, FILE, change)


def tracking_namespace(tracking_uri: str) -> str:
    """The MLflow tracking URI as a namespace: no user, password, query or fragment, no trailing slash."""
    parts = urlsplit(tracking_uri)
    if not parts.netloc:  # sqlite:////path, file:///path: no user part (urlunsplit would drop the `//`)
        return tracking_uri.split("?", 1)[0].split("#", 1)[0].rstrip("/") or tracking_uri
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


def model_ref(tracking_uri: str, model: str, version: object, change: str | None = None) -> Ref:
    """A registered model version."""
    return Ref(tracking_namespace(tracking_uri), f"models/{model}/{version}", str(version), MODEL, change)


def alias_ref(tracking_uri: str, model: str, alias: str, version: object | None) -> Ref:
    """A serving alias; pointing at `version`, or dropped (None)."""
    if version is None:
        return Ref(tracking_namespace(tracking_uri), f"models/{model}@{alias}", None, ALIAS, "DROP")
    return Ref(tracking_namespace(tracking_uri), f"models/{model}@{alias}", str(version), ALIAS, "OVERWRITE")


def batch_key(pipeline: str, batch_id: str) -> str:
    return f"batches/{pipeline}/{batch_id}"


def curated_key(pipeline: str, version_id: str) -> str:
    return f"curated/{pipeline}/{version_id}"


def raw_version(key: str) -> str:
    """The content hash a raw landing is named by (`raw/<pipeline>/<sha256>.<ext>`)."""
    return key.rsplit("/", 1)[-1].split(".", 1)[0]


# --- one builder per operator ---------------------------------------------------------------------------------------

def ingest(result: Mapping[str, Any], lake_url: str) -> Lineage:
    """Raw landings (the sources' bytes, named by their hash) → the staged batch."""
    pipeline, batch = str(result["pipeline"]), str(result["batch_id"])
    raw = tuple(lake_ref(lake_url, key, raw_version(key)) for key in result.get("raw") or ())
    return Lineage(raw, (lake_ref(lake_url, batch_key(pipeline, batch), batch),))


def publish(result: Mapping[str, Any], lake_url: str) -> Lineage:
    """The gated batch → the published (content-addressed) dataset version."""
    pipeline, batch, version = str(result["pipeline"]), str(result["batch_id"]), str(result["dataset_version_id"])
    return Lineage((lake_ref(lake_url, batch_key(pipeline, batch), batch),),
                   (lake_ref(lake_url, curated_key(pipeline, version), version,
                             "CREATE" if result.get("created") else None),))


def training_window(result: Mapping[str, Any], lake_url: str) -> Lineage:
    """The curated versions of a retrain's training window → the version composed of them (a window of one
    version is that version: no edge)."""
    pipeline, composed = str(result["conf"]["pipeline"]), str(result["conf"]["dataset_version_id"])
    parents = [str(p) for p in result.get("parents") or () if str(p) != composed]
    return Lineage(tuple(lake_ref(lake_url, curated_key(pipeline, p), p) for p in parents),
                   (lake_ref(lake_url, curated_key(pipeline, composed), composed),))


def register(request: Mapping[str, Any], result: Mapping[str, Any], model: str, lake_url: str,
             tracking_uri: str) -> Lineage:
    """The dataset version trained on → the registered model version."""
    pipeline, version = str(request["pipeline"]), str(request["dataset_version_id"])
    return Lineage((lake_ref(lake_url, curated_key(pipeline, version), version),),
                   (model_ref(tracking_uri, model, result["version"], "CREATE" if result.get("created") else None),))


def bless(request: Mapping[str, Any], result: Mapping[str, Any], model: str, lake_url: str,
          tracking_uri: str) -> Lineage:
    """The dataset version (its frozen holdout) and the model version judged → the verdict on the version; a first
    blessed model also moves `champion` to it."""
    pipeline, dataset = str(request["pipeline"]), str(request["dataset_version_id"])
    version = str(result["version"])
    judged = model_ref(tracking_uri, model, version)
    outputs: tuple[Ref, ...] = (judged,)
    if (result.get("promotion") or {}).get("action") == "champion":
        outputs += (alias_ref(tracking_uri, model, "champion", version),)
    return Lineage((lake_ref(lake_url, curated_key(pipeline, dataset), dataset), judged), outputs)


def alias_moves(model: str, moves: Mapping[str, Sequence[Any]] | None, tracking_uri: str) -> Lineage:
    """A ledger entry's moves `{alias: [before, after]}`: each version moved to → its alias; a removed alias is
    dropped."""
    inputs: dict[str, Ref] = {}
    outputs = []
    for alias, (_, after) in sorted((moves or {}).items()):
        if after is not None:
            inputs.setdefault(str(after), model_ref(tracking_uri, model, after))
        outputs.append(alias_ref(tracking_uri, model, alias, after))
    return Lineage(tuple(inputs.values()), tuple(outputs))


def scores(result: Mapping[str, Any], lake_url: str, tracking_uri: str) -> Lineage:
    """The dataset version and the pinned model version → the committed scores folder."""
    pipeline, dataset = str(result["pipeline"]), str(result["dataset_version_id"])
    return Lineage((lake_ref(lake_url, curated_key(pipeline, dataset), dataset),
                    model_ref(tracking_uri, str(result["model"]), result["model_version"])),
                   (lake_ref(lake_url, str(result["output"]), f"{dataset}.v{result['model_version']}",
                             "CREATE" if result.get("created") else None),))


def drift(result: Mapping[str, Any], tracking_uri: str) -> Lineage:
    """The served versions whose traffic was judged (their reports are artifacts of the versions' runs)."""
    model = str(result.get("model") or "")
    versions = {str(s["version"]) for s in result.get("summaries") or () if s.get("version") is not None}
    return Lineage(tuple(model_ref(tracking_uri, model, v) for v in sorted(versions)))


def erasure(result: Mapping[str, Any], lake_url: str) -> Lineage:
    """An erasure as lifecycle changes: each purged dataset version is read and `DROP`ped, its successor a
    `CREATE`; the holdout's old file `DROP`, its successor `CREATE`; every rewritten lake file an `OVERWRITE`
    (the subject's rows removed). Prediction-log files live outside the lake and are left out."""
    pipeline = str(result["pipeline"])
    inputs: list[Ref] = []
    outputs: list[Ref] = []
    for item in result.get("artifacts") or ():
        if item["store"] == "curated":
            old, new = str(item["version"]), str(item["successor"])
            inputs.append(lake_ref(lake_url, curated_key(pipeline, old), old))
            outputs += [lake_ref(lake_url, curated_key(pipeline, old), old, "DROP"),
                        lake_ref(lake_url, curated_key(pipeline, new), new, "CREATE")]
        elif item["store"] == "holdout":
            outputs += [lake_ref(lake_url, str(item["path"]), str(item["old"]), "DROP"),
                        lake_ref(lake_url, f"holdouts/{pipeline}/{item['new']}.parquet", str(item["new"]), "CREATE")]
        elif item["store"] != "predictions":
            outputs.append(lake_ref(lake_url, str(item["path"]), str(item["new"]), "OVERWRITE"))
    return Lineage(tuple(inputs), tuple(outputs))


# --- to OpenLineage ---------------------------------------------------------------------------------------------------

def operator_lineage(lineage: Lineage) -> Any:
    """The provider's `OperatorLineage` for `lineage` (imports the provider and openlineage: call at run time)."""
    from airflow.providers.openlineage.extractors import OperatorLineage

    return OperatorLineage(inputs=[to_dataset(r) for r in lineage.inputs],
                           outputs=[to_dataset(r) for r in lineage.outputs])


def to_dataset(ref: Ref) -> Any:
    """One `Ref` as an OpenLineage Dataset with its datasetVersion, datasetType and lifecycleStateChange facets."""
    from openlineage.client.event_v2 import Dataset
    from openlineage.client.facet_v2 import (
        dataset_type_dataset,
        dataset_version_dataset,
        lifecycle_state_change_dataset,
    )

    found: dict[str, Any] = {}
    if ref.version is not None:
        found["version"] = dataset_version_dataset.DatasetVersionDatasetFacet(datasetVersion=ref.version)
    kind, sub = (MODEL, ALIAS) if ref.kind == ALIAS else (ref.kind, None)
    found["datasetType"] = dataset_type_dataset.DatasetTypeDatasetFacet(datasetType=kind, subType=sub)
    if ref.change is not None:
        found["lifecycleStateChange"] = lifecycle_state_change_dataset.LifecycleStateChangeDatasetFacet(
            lifecycleStateChange=lifecycle_state_change_dataset.LifecycleStateChange(ref.change))
    return Dataset(namespace=ref.namespace, name=ref.name, facets=found)


def facets(task_instance: Any, build: Callable[[Mapping[str, Any], str, str], Lineage]) -> Any:
    """What an operator's `get_openlineage_facets_on_complete` returns: `build(result, lake URL, tracking URI)` as
    `OperatorLineage`, or None when the task returned nothing (failed, skipped)."""
    result = task_result(task_instance)
    if result is None:
        return None
    lake_url, tracking_uri = roots()
    return operator_lineage(build(result, lake_url, tracking_uri))


def task_result(task_instance: Any) -> Mapping[str, Any] | None:
    """The finished task's return value (its XCom), or None (a failed or skipped task returned nothing)."""
    value = task_instance.xcom_pull(task_ids=task_instance.task_id)
    return value if isinstance(value, Mapping) else None


def roots() -> tuple[str, str]:
    """(lake URL, MLflow tracking URI) of this process."""
    from crispflow.settings import Settings

    settings = Settings.from_env()
    return settings.lake_url, settings.mlflow_tracking_uri
