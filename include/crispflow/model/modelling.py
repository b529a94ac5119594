"""The model phases as plain functions: prepare → cross-validate candidates → register → evaluate → bless.

Each takes a `TrainingJob` (what is being trained, where things live) and returns a small JSON dict for XCom.
Every side effect is keyed by the job's run key, so a retried or repeated step finds what it made before.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

from crispflow.data.datasets import load_version, read_manifest
from crispflow.lake import json_safe
from crispflow.model import registry
from crispflow.model.registry import CHALLENGER, CHAMPION
from crispflow.spec import PipelineSpec

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    from mlflow import MlflowClient

    from crispflow.lake import Lake



@dataclass
class TrainingJob:
    """One training run: the pipeline, the dataset version it trains on, and the Airflow run that does it."""

    spec: PipelineSpec
    lake: Lake
    mlf: MlflowClient
    dataset_version_id: str
    run_key: str  # "<dag_id>/<run_id>": prefix of every run key this job writes

    @property
    def model_name(self) -> str:
        return registry.model_name(self.spec.name)

    @cached_property
    def manifest(self) -> dict[str, Any]:
        return read_manifest(self.lake, self.dataset_version_id, self.spec.name)

    @cached_property
    def frames(self) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
        """(train, holdout, holdout record): the dataset minus the frozen holdout's entities, and the holdout."""
        from crispflow.model.holdout import frozen_holdout, training_rows

        dataset = load_version(self.lake, self.dataset_version_id, self.spec.name)
        holdout, record = frozen_holdout(self.lake, self.spec, dataset, self.dataset_version_id)
        return training_rows(self.spec, dataset, holdout), holdout, record

    def parent_run(self) -> str:
        return registry.find_or_create_run(self.mlf, self.spec.name, f"{self.run_key}/train", "train",
                                           tags=self.lineage_tags())

    def lineage_tags(self) -> dict[str, str]:
        dag_id, _, run_id = self.run_key.partition("/")
        return {"crispflow.pipeline": self.spec.name, "crispflow.dataset_version_id": self.dataset_version_id,
                "crispflow.spec_hash": self.spec.spec_hash(), "crispflow.git_commit": git_commit(),
                "crispflow.dag_id": dag_id, "crispflow.run_id": run_id}


def git_commit() -> str:
    from crispflow.settings import project_root

    try:
        out = subprocess.run(["git", "-C", str(project_root()), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5, check=False)
    except OSError:
        return "unknown"
    return out.stdout.strip() or "unknown"


def prepare(job: TrainingJob) -> dict[str, Any]:
    """Freeze (or reuse) the holdout and open the parent MLflow run."""
    train, holdout, record = job.frames
    parent = job.parent_run()
    if "holdout_hash" not in job.mlf.get_run(parent).data.params:  # params are write-once: not on a retry
        job.mlf.log_param(parent, "holdout_hash", record["holdout_hash"])
    return {"parent_run_id": parent, "holdout_hash": record["holdout_hash"], "n_train": len(train),
            "n_holdout": len(holdout)}


def run_candidate(job: TrainingJob, parent_run_id: str, config: dict[str, Any]) -> dict[str, Any]:
    """Cross-validate one configuration in a nested MLflow run (one per config, found again on retry)."""
    from crispflow.model.training import cross_validate

    train, _, _ = job.frames
    result = cross_validate(job.spec, config, train)
    run = registry.find_or_create_run(job.mlf, job.spec.name, f"{job.run_key}/cv/{config['config_id']}",
                                      config["config_id"], tags={"crispflow.candidate": config["candidate"]},
                                      parent_run_id=parent_run_id)
    if not job.mlf.get_run(run).data.metrics:
        for name, value in config["params"].items():
            job.mlf.log_param(run, name, value)
        for i, value in enumerate(result["folds"]):
            job.mlf.log_metric(run, f"cv_{result['metric']}", value, step=i)
        job.mlf.log_metric(run, f"cv_{result['metric']}_mean", result["mean"])
    job.mlf.set_terminated(run)
    return json_safe({**result, "mlflow_run_id": run})


def register_challenger(job: TrainingJob, parent_run_id: str, results: list[dict[str, Any]]) -> dict[str, Any]:
    """Fit the best configuration (calibrated, thresholded) on all training rows; register it as `challenger`."""
    from crispflow.model.features import features
    from crispflow.model.training import best_config, fit_final

    best = best_config(results)
    train, _, record = job.frames
    model, threshold, info = fit_final(job.spec, best, train)
    tags = {**job.lineage_tags(), "crispflow.holdout_hash": record["holdout_hash"],
            "crispflow.config_id": best["config_id"], "crispflow.threshold": repr(threshold),
            f"crispflow.cv_{best['metric']}": repr(best["mean"])}
    reg = registry.register(job.mlf, name=job.model_name, run_id=parent_run_id, run_key=f"{job.run_key}/register",
                            model=model, example=features(job.spec, train).head(20), tags=tags,
                            description=job.spec.description)
    selection = json_safe({**best, **info, "threshold": threshold})
    job.mlf.log_text(parent_run_id, json.dumps(selection, indent=2), f"selection/v{reg.version}.json")
    log_reference_profile(job, reg.version, parent_run_id, model, train, threshold)
    registry.set_alias(job.mlf, job.model_name, CHALLENGER, reg.version)
    if job.spec.key:  # the model server's sticky canary split hashes this record field
        job.mlf.set_registered_model_tag(job.model_name, "crispflow.entity_key", job.spec.key)
    return json_safe({"version": reg.version, "created": reg.created, "config_id": best["config_id"],
                      "threshold": threshold, "artifact_sha256": reg.artifact_sha256, **info})


def log_reference_profile(job: TrainingJob, version: str, run_id: str, model: Any, train: pd.DataFrame,
                          threshold: float) -> str:
    """The version's reference for drift monitoring, from its training rows (features, in-sample scores, labels):
    logged beside the model and named by the version tag `crispflow.reference_profile`."""
    from crispflow.model.features import features, labels
    from crispflow.model.reference_profile import build_profile

    x = features(job.spec, train)
    profile = build_profile(job.spec, x, scores=model.predict_proba(x)[:, 1], labels=labels(job.spec, train),
                            threshold=threshold)
    path = f"reference_profile/v{version}.json"
    job.mlf.log_text(run_id, json.dumps(profile), path)
    uri = f"runs:/{run_id}/{path}"
    job.mlf.set_model_version_tag(job.model_name, version, "crispflow.reference_profile", uri)
    return uri


def scores(job: TrainingJob, version: str, frame: pd.DataFrame) -> tuple[Any, np.ndarray]:
    """(model, positive-class scores) of a registry version, loaded only after its hash check."""
    from crispflow.model.features import features
    from crispflow.model.training import positive_proba

    model = registry.load_verified(job.mlf, job.model_name, version)
    return model, positive_proba(model, features(job.spec, frame))


def evaluate_version(job: TrainingJob, version: str) -> dict[str, Any]:
    """Holdout metrics with CIs, slices, latency, size and plots, logged to the version's run and tags."""
    from crispflow.model.evaluation import evaluate, measure_latency, plot_curves
    from crispflow.model.features import features, labels
    from crispflow.model.training import positive_proba

    _, holdout, record = job.frames
    mv = job.mlf.get_model_version(job.model_name, version)
    threshold = float(mv.tags["crispflow.threshold"])
    model, score = scores(job, version, holdout)
    y = labels(job.spec, holdout)
    training = job.spec.training
    slices = {c: holdout[c].astype(str).to_numpy() for c in (training.slices if training else [])}
    report = evaluate(y, score, threshold, slices=slices, n_boot=job.spec.blessing.bootstrap_samples,
                      alpha=job.spec.blessing.alpha, min_slice_rows=job.spec.blessing.min_slice_rows)
    x = features(job.spec, holdout)
    report["latency"] = measure_latency(lambda f: positive_proba(model, f), x)
    report["size_bytes"] = model_size(job, version)
    report["holdout_hash"] = record["holdout_hash"]
    run_id = mv.run_id
    job.mlf.log_text(run_id, json.dumps(json_safe(report), indent=2), f"evaluation/v{version}.json")
    for name, png in plot_curves(y, score, threshold).items():
        job.mlf.log_image(run_id, _image(png), f"evaluation/v{version}/{name}")
    for name, m in report["metrics"].items():
        job.mlf.log_metric(run_id, f"holdout_{name}", m["value"])
        job.mlf.set_model_version_tag(job.model_name, version, f"crispflow.holdout_{name}", repr(m["value"]))
    return json_safe({"version": version, "metrics": {k: v["value"] for k, v in report["metrics"].items()},
                      "latency_p95_ms": report["latency"]["latency_p95_ms"], "size_bytes": report["size_bytes"]})


def _image(png: bytes) -> Any:
    import io

    from PIL import Image

    return Image.open(io.BytesIO(png))


def model_size(job: TrainingJob, version: str) -> int:
    """Bytes of the serialised model file in the registry artifact."""
    from pathlib import Path

    import mlflow

    local = Path(mlflow.artifacts.download_artifacts(job.mlf.get_model_version(job.model_name, version).source))
    return sum(p.stat().st_size for p in local.glob("model.*"))


def bless(job: TrainingJob, version: str) -> dict[str, Any]:
    """Judge `version` against the current champion on the frozen holdout; store the verdict as an artifact
    of the version's run, then tag the version (the tag is the commit point downstream tasks read)."""
    from crispflow.model.blessing import decide
    from crispflow.model.features import features, labels

    _, holdout, record = job.frames
    y = labels(job.spec, holdout)
    x = features(job.spec, holdout)
    mv = job.mlf.get_model_version(job.model_name, version)
    model, score = scores(job, version, holdout)
    champion = registry.alias_version(job.mlf, job.model_name, CHAMPION)
    if champion is not None and str(champion.version) == str(version):
        champion = None  # re-judging the champion itself: only the absolute floors apply
    models = {str(version): model}
    kwargs: dict[str, Any] = {}
    if champion is not None:
        champ_model, champ_score = scores(job, str(champion.version), holdout)
        models[str(champion.version)] = champ_model
        kwargs = {"champion_score": champ_score, "champion_threshold": float(champion.tags["crispflow.threshold"])}
    costs = _costs(job, models, x)
    if champion is not None:
        kwargs["champion_cost"] = costs[str(champion.version)]
    training = job.spec.training
    slices = {c: holdout[c].astype(str).to_numpy() for c in (training.slices if training else [])}
    verdict = decide(job.spec.blessing, y, score, float(mv.tags["crispflow.threshold"]), slices=slices,
                     challenger_cost=costs[str(version)], **kwargs)
    verdict.update({"model": job.model_name, "version": str(version), "holdout_hash": record["holdout_hash"],
                    "champion_version": None if champion is None else str(champion.version),
                    "dataset_version_id": mv.tags.get("crispflow.dataset_version_id"),
                    "judged_by": job.run_key})
    path = f"blessing/v{version}.json"
    verdict = json_safe(verdict)
    job.mlf.log_text(mv.run_id, json.dumps(verdict, indent=2, default=str), path)
    job.mlf.set_model_version_tag(job.model_name, version, "crispflow.verdict", f"runs:/{mv.run_id}/{path}")
    job.mlf.set_model_version_tag(job.model_name, version, "crispflow.blessed", str(verdict["blessed"]).lower())
    return verdict


def _costs(job: TrainingJob, models: dict[str, Any], x: pd.DataFrame, rounds: int = 5) -> dict[str, dict[str, float]]:
    """Single-row p95 latency and size of each model. The models are timed in alternating rounds and the median
    round kept, so a load spike on the machine hits all of them alike instead of the one timed at that moment."""
    import numpy as np

    from crispflow.model.evaluation import measure_latency
    from crispflow.model.training import positive_proba

    p95: dict[str, list[float]] = {v: [] for v in models}
    for r in range(rounds):
        for v in list(models) if r % 2 == 0 else list(reversed(models)):
            timing = measure_latency(lambda f, m=models[v]: positive_proba(m, f), x, single_rows=50, repeats=1)
            p95[v].append(timing["latency_p95_ms"])
    return {v: {"latency_p95_ms": float(np.median(p95[v])), "size_bytes": model_size(job, v)} for v in models}


def read_verdict(job: TrainingJob, version: str) -> dict[str, Any]:
    """The stored verdict of a version (never a log line or an XCom): what promotion acts on."""
    import mlflow

    uri = job.mlf.get_model_version(job.model_name, version).tags.get("crispflow.verdict")
    if not uri:
        return {"blessed": False, "reasons": ["no verdict recorded"]}
    return json.loads(mlflow.artifacts.load_text(uri))


def force_bless(job: TrainingJob, version: str, *, reason: str, approver: Mapping[str, str] | None) -> dict[str, Any]:
    """Record a human's override of a "not blessed" verdict: the gate's verdict stays in the record, beside who
    approved, when and why. Never without an approver and a reason."""
    from datetime import UTC, datetime

    if not approver or not approver.get("id"):
        raise registry.RegistryError("a forced blessing needs an approver (the approval has no responding user)")
    if len(reason.strip()) < 10:
        raise registry.RegistryError("a forced blessing needs a reason of at least 10 characters")
    verdict = read_verdict(job, version)
    if verdict.get("blessed"):
        return {"action": "none", "reason": "already blessed", "version": version}
    forced = {**verdict, "blessed": True, "blessed_by": "forced",
              "forced": {"reason": reason, "approver": dict(approver), "at": datetime.now(UTC).isoformat(),
                         "gate_reasons": verdict.get("reasons", []), "recorded_by": job.run_key}}
    mv = job.mlf.get_model_version(job.model_name, version)
    path = f"blessing/v{version}-forced.json"
    job.mlf.log_text(mv.run_id, json.dumps(json_safe(forced), indent=2, default=str), path)
    job.mlf.set_model_version_tag(job.model_name, version, "crispflow.forced_by", approver["id"])
    job.mlf.set_model_version_tag(job.model_name, version, "crispflow.verdict", f"runs:/{mv.run_id}/{path}")
    job.mlf.set_model_version_tag(job.model_name, version, "crispflow.blessed", "true")
    return {"action": "forced", "version": version}


def write_model_card(job: TrainingJob, version: str) -> dict[str, str]:
    """Render the version's model card (Markdown and HTML) from its stored records and log both to its run."""
    import mlflow

    from crispflow.model.card import ModelCardInput, render_html, render_markdown

    mv = job.mlf.get_model_version(job.model_name, version)
    stored = {name: json.loads(mlflow.artifacts.load_text(f"runs:/{mv.run_id}/{name}/v{version}.json"))
              for name in ("evaluation", "selection")}
    card = ModelCardInput(
        model_name=job.model_name, version=version, spec=job.spec, dataset=job.manifest, holdout=job.frames[2],
        config=stored["selection"], threshold=float(mv.tags["crispflow.threshold"]),
        evaluation=stored["evaluation"], verdict=read_verdict(job, version),
        aliases=list(job.mlf.get_model_version(job.model_name, version).aliases or []),
        created=mv.creation_timestamp, threshold_objective_value=stored["selection"].get("threshold_objective"),
        lineage=dict(mv.tags))
    paths = {"markdown": f"model_card/v{version}.md", "html": f"model_card/v{version}.html"}
    job.mlf.log_text(mv.run_id, render_markdown(card), paths["markdown"])
    job.mlf.log_text(mv.run_id, render_html(card), paths["html"])
    job.mlf.set_model_version_tag(job.model_name, version, "crispflow.model_card", f"runs:/{mv.run_id}/{paths['html']}")
    return {k: f"runs:/{mv.run_id}/{v}" for k, v in paths.items()}
