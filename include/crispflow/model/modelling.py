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

from crispflow.data.datasets import load_version, read_manifest, refuse_superseded
from crispflow.errors import SupersededVersion
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

    @property
    def trusted(self) -> list[str]:
        """Module prefixes whose classes this pipeline's models may hold (`training.allowed_estimators`)."""
        return list(self.spec.training.allowed_estimators) if self.spec.training else []

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


def task_tags(spec: PipelineSpec, threshold: float | None, info: Mapping[str, Any]) -> dict[str, str]:
    """The version tags that tell servers and monitors what the model predicts, without the spec: the task, and
    the binary threshold, the regression interval (JSON) or the multiclass classes (JSON list of str)."""
    tags = {registry.TASK_TAG: spec.task}
    if spec.task == "binary":
        tags[registry.THRESHOLD_TAG] = repr(threshold)
    elif spec.task == "regression":
        tags[registry.INTERVAL_TAG] = json.dumps(info["interval"])
    else:
        tags[registry.CLASSES_TAG] = json.dumps([str(c) for c in spec.class_labels])
    return tags


def register_challenger(job: TrainingJob, parent_run_id: str, results: list[dict[str, Any]]) -> dict[str, Any]:
    """Fit the best configuration on all training rows (calibrated and thresholded, or with its prediction
    interval, per the task); register it as `challenger`."""
    from crispflow.governance.stored_form import serving_tags
    from crispflow.model.features import features
    from crispflow.model.holdout import frozen_record
    from crispflow.model.synthetic import input_example
    from crispflow.model.tasks import model_output
    from crispflow.model.training import best_config, fit_final

    best = best_config(results)
    train, _, record = job.frames
    refuse_superseded(job.lake, job.spec.name, job.dataset_version_id)  # an erasure may have purged it since
    current = frozen_record(job.lake, job.spec.name)["holdout_hash"]  # read again: an erasure may have replaced it
    if current != record["holdout_hash"]:
        raise SupersededVersion(f"{job.spec.name}: the frozen holdout {record['holdout_hash'][:12]} was replaced by "
                                f"{current[:12]} (an erasure) while this model trained: retrain on the successor")
    model, threshold, info = fit_final(job.spec, best, train)
    oof = info.pop("oof_output")
    tags = {**job.lineage_tags(), "crispflow.holdout_hash": record["holdout_hash"],
            "crispflow.config_id": best["config_id"], **task_tags(job.spec, threshold, info),
            f"crispflow.cv_{best['metric']}": repr(best["mean"]), **serving_tags(job.spec, job.manifest)}
    example = input_example(job.spec, features(job.spec, train))  # synthetic: no subject's row in the artifact
    reg = registry.register(job.mlf, name=job.model_name, run_id=parent_run_id, run_key=f"{job.run_key}/register",
                            model=model, example=example, output=model_output(job.spec, model, example), tags=tags,
                            description=job.spec.description, trusted=job.trusted)
    job.mlf.set_registered_model_tag(job.model_name, registry.PIPELINE_TAG, job.spec.name)
    selection = json_safe({**best, **info, "threshold": threshold})
    job.mlf.log_text(parent_run_id, json.dumps(selection, indent=2), f"selection/v{reg.version}.json")
    log_reference_profile(job, reg.version, parent_run_id, train, oof, threshold)
    registry.set_alias(job.mlf, job.model_name, CHALLENGER, reg.version)
    if job.spec.key:  # the model server's sticky canary split hashes this record field
        job.mlf.set_registered_model_tag(job.model_name, "crispflow.entity_key", job.spec.key)
    return json_safe({"version": reg.version, "created": reg.created, "config_id": best["config_id"],
                      "threshold": threshold, "artifact_sha256": reg.artifact_sha256, **info})


def log_reference_profile(job: TrainingJob, version: str, run_id: str, train: pd.DataFrame, oof: np.ndarray,
                          threshold: float | None) -> str:
    """The version's reference for drift monitoring, from its training rows (features, out-of-fold model output
    — in-sample output would make every live window look degraded — labels; the threshold for binary models):
    logged beside the model and named by the version tag `crispflow.reference_profile`."""
    from crispflow.model.features import features
    from crispflow.model.reference_profile import build_profile
    from crispflow.model.tasks import labels

    profile = build_profile(job.spec, features(job.spec, train), scores=oof, labels=labels(job.spec, train),
                            threshold=threshold)
    path = f"reference_profile/v{version}.json"
    job.mlf.log_text(run_id, json.dumps(profile), path)
    uri = f"runs:/{run_id}/{path}"
    job.mlf.set_model_version_tag(job.model_name, version, "crispflow.reference_profile", uri)
    return uri


def scores(job: TrainingJob, version: str, frame: pd.DataFrame) -> tuple[Any, np.ndarray]:
    """(model, model output in the task's convention, crispflow.model.tasks) of a registry version, loaded only
    after its hash check."""
    from crispflow.model.features import features
    from crispflow.model.tasks import model_output

    model = registry.load_verified(job.mlf, job.model_name, version, trusted=job.trusted)
    return model, model_output(job.spec, model, features(job.spec, frame))


def _slices(job: TrainingJob, holdout: pd.DataFrame) -> dict[str, np.ndarray]:
    training = job.spec.training
    return {c: holdout[c].astype(str).to_numpy() for c in (training.slices if training else [])}


def sensitive_values(spec: PipelineSpec, holdout: pd.DataFrame) -> dict[str, np.ndarray]:
    """The raw values of each protected attribute of the spec (the fairness report groups them, missing values as
    one group). A sensitive column absent from `holdout` is an error naming it, never a skipped fairness check."""
    from crispflow.model.features import require_columns

    require_columns(holdout, spec.sensitive_columns, "sensitive columns")
    return {c: holdout[c].to_numpy() for c in spec.sensitive_columns}


def evaluate_version(job: TrainingJob, version: str) -> dict[str, Any]:
    """Holdout metrics with CIs, slices, latency, size and plots, logged to the version's run and tags."""
    from crispflow.model.evaluation import evaluate, measure_latency, plot_curves
    from crispflow.model.features import features
    from crispflow.model.tasks import labels, model_output

    spec = job.spec
    _, holdout, record = job.frames
    mv = job.mlf.get_model_version(job.model_name, version)
    threshold = registry.version_threshold(mv)
    model, output = scores(job, version, holdout)
    y = labels(spec, holdout)
    report = evaluate(y, output, threshold, task=spec.task, class_labels=spec.class_labels,
                      slices=_slices(job, holdout), n_boot=spec.blessing.bootstrap_samples,
                      alpha=spec.blessing.alpha, min_slice_rows=spec.blessing.min_slice_rows)
    x = features(spec, holdout)
    report["latency"] = measure_latency(lambda f: model_output(spec, model, f), x)
    report["size_bytes"] = model_size(job, version)
    report["holdout_hash"] = record["holdout_hash"]
    if registry.INTERVAL_TAG in mv.tags:  # regression: how often the served interval held on the holdout
        from crispflow.model.evaluation import interval_report

        report["interval"] = interval_report(y, output, json.loads(mv.tags[registry.INTERVAL_TAG]))
    run_id = mv.run_id
    job.mlf.log_text(run_id, json.dumps(json_safe(report), indent=2), f"evaluation/v{version}.json")
    for name, png in plot_curves(y, output, threshold, task=spec.task, class_labels=spec.class_labels).items():
        job.mlf.log_image(run_id, _image(png), f"evaluation/v{version}/{name}")
    for name, m in report["metrics"].items():
        job.mlf.log_metric(run_id, f"holdout_{name}", m["value"])
        job.mlf.set_model_version_tag(job.model_name, version, f"crispflow.holdout_{name}", repr(m["value"]))
        if m.get("ci_low") is not None and m.get("ci_high") is not None:  # the Models page lists CIs from tags
            job.mlf.set_model_version_tag(job.model_name, version, f"crispflow.holdout_{name}_ci",
                                          json.dumps([m["ci_low"], m["ci_high"]]))
    return json_safe({"version": version, "metrics": {k: v["value"] for k, v in report["metrics"].items()},
                      "latency_p95_ms": report["latency"]["latency_p95_ms"], "size_bytes": report["size_bytes"]})


def explain_version(job: TrainingJob, version: str) -> dict[str, Any]:
    """The version's explanations, logged to its run before the gate reads it.

    - The local explainer's record (`explainer/v<version>.json`, tags `crispflow.explainer` and its sha256): what the
      model server builds its explainer from, after the same hash check, and self-tests at load.
    - The global explanation on the frozen holdout (`explanations/v<version>.json`, tag `crispflow.explanations`):
      permutation importance of the spec's features with CIs, mean |contribution| of the local explainer with
      bootstrap CIs, partial dependence (and ICE) plots of the top features, and the drift monitor's feature
      weights. Seeded: a retry writes the same files."""
    import time

    from crispflow.model.explain import (
        EXPLAINER_ARTIFACT,
        ExplainerError,
        LocalExplainer,
        explainer_record,
        record_digest,
    )
    from crispflow.model.features import features
    from crispflow.model.importance import (
        drift_weights,
        mean_abs_contributions,
        partial_dependence_plots,
        permutation_importance,
    )

    started = time.monotonic()
    spec, policy = job.spec, job.spec.blessing
    train, holdout, _ = job.frames
    mv = job.mlf.get_model_version(job.model_name, version)
    model = registry.load_verified(job.mlf, job.model_name, version, trusted=job.trusted)
    record_path = f"{EXPLAINER_ARTIFACT}/v{version}.json"
    record: dict[str, Any] = {}
    try:
        record = explainer_record(spec, model, train)  # raw rows: it takes the spec's features itself
        explainer = LocalExplainer.build(spec.task, model, record)
        status = f"ready: {explainer.method} ({explainer.space})"
    except ExplainerError as exc:  # recorded; the model server refuses to explain this version, never explains wrong
        explainer, status = None, f"failed: {exc}"
    if record:  # logged even when the build failed (the report's explainer status says why); tagged only if built
        job.mlf.log_text(mv.run_id, json.dumps(record, sort_keys=True), record_path)
    importance = permutation_importance(spec, model, holdout, alpha=policy.alpha, n_boot=policy.bootstrap_samples,
                                        seed=spec.split.seed, threshold=registry.version_threshold(mv))
    contributions = None
    if explainer is not None:
        _, values, _ = explainer.contributions(features(spec, holdout))
        contributions = mean_abs_contributions(values, explainer.features, n_boot=policy.bootstrap_samples,
                                               alpha=policy.alpha, seed=spec.split.seed)
    top = [f["feature"] for f in importance["features"][:4]]
    plots = partial_dependence_plots(spec, model, holdout, top, seed=spec.split.seed)  # raw: it reads the labels
    for feature, png in plots.items():
        job.mlf.log_image(mv.run_id, _image(png), f"explanations/v{version}/pdp_{feature}.png")
    report = json_safe({
        "version": version, "explainer": {"method": record.get("method"), "space": record.get("space"),
                                          "space_note": record.get("space_note", ""), "status": status},
        "importance": importance, "mean_abs_contribution": contributions,
        "partial_dependence": {f: f"explanations/v{version}/pdp_{f}.png" for f in plots},
        "drift_weights": drift_weights(importance),
    })
    job.mlf.log_text(mv.run_id, json.dumps(report, indent=2), f"explanations/v{version}.json")
    tags = {registry.EXPLANATIONS_TAG: f"runs:/{mv.run_id}/explanations/v{version}.json"}
    if explainer is not None:  # no explainer (one it cannot build): the server says so, explain=true answers 409
        tags |= {registry.EXPLAINER_TAG: f"runs:/{mv.run_id}/{record_path}",
                 registry.EXPLAINER_SHA_TAG: record_digest(record)}
    for key, value in tags.items():
        job.mlf.set_model_version_tag(job.model_name, version, key, value)
    primary = spec.blessing.primary_metric
    return json_safe({
        "version": version, "explainer": status,
        "top_features": [{"feature": f["feature"], **f[primary]} for f in importance["features"][:5]],
        "seconds": round(time.monotonic() - started, 1),
    })


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
    of the version's run, then tag the version (the tag is the commit point downstream tasks read).

    With no champion (or one trained for another task, which cannot be compared), the cold-start floors apply:
    `blessing.min_metrics`, or better than no skill (the training labels' prior) when none are set."""
    from crispflow.model.blessing import decide
    from crispflow.model.features import features
    from crispflow.model.tasks import labels, no_skill_output

    spec = job.spec
    train, holdout, record = job.frames
    y = labels(spec, holdout)
    x = features(spec, holdout)
    mv = job.mlf.get_model_version(job.model_name, version)
    model, output = scores(job, version, holdout)
    champion = registry.alias_version(job.mlf, job.model_name, CHAMPION)
    if champion is not None and str(champion.version) == str(version):
        champion = None  # re-judging the champion itself: only the absolute floors apply
    other_task = champion is not None and registry.version_task(champion) != spec.task
    compared = None if other_task else champion
    models = {str(version): model}
    kwargs: dict[str, Any] = {}
    if compared is not None:
        champ_model, champ_output = scores(job, str(compared.version), holdout)
        models[str(compared.version)] = champ_model
        kwargs = {"champion_score": champ_output, "champion_threshold": registry.version_threshold(compared)}
    costs = _costs(job, models, x)
    if compared is not None:
        kwargs["champion_cost"] = costs[str(compared.version)]
    baseline = no_skill_output(spec.task, labels(spec, train), len(y), len(spec.class_labels))
    verdict = decide(spec.blessing, y, output, registry.version_threshold(mv), task=spec.task,
                     slices=_slices(job, holdout), challenger_cost=costs[str(version)], baseline_output=baseline,
                     sensitive=sensitive_values(spec, holdout), **kwargs)
    verdict.update({"model": job.model_name, "version": str(version), "holdout_hash": record["holdout_hash"],
                    "champion_version": None if champion is None else str(champion.version),
                    "dataset_version_id": mv.tags.get("crispflow.dataset_version_id"),
                    "judged_by": job.run_key})
    if other_task:
        verdict["champion_not_compared"] = (f"champion v{champion.version} is a {registry.version_task(champion)} "
                                            f"model; this {spec.task} model was judged by the cold-start floors")
    path = f"blessing/v{version}.json"
    verdict = json_safe(verdict)
    job.mlf.log_text(mv.run_id, json.dumps(verdict, indent=2, default=str), path)
    job.mlf.set_model_version_tag(job.model_name, version, "crispflow.verdict", f"runs:/{mv.run_id}/{path}")
    job.mlf.set_model_version_tag(job.model_name, version, "crispflow.blessed", str(verdict["blessed"]).lower())
    return verdict


def _costs(job: TrainingJob, models: dict[str, Any], x: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Single-row p95 latency (of the task's model output) and size of each model. The models are timed side by
    side, row by row (`paired_latency`), so the machine's load cannot make one of them look slower."""
    from crispflow.model.evaluation import paired_latency
    from crispflow.model.tasks import model_output

    p95 = paired_latency({v: (lambda f, m=m: model_output(job.spec, m, f)) for v, m in models.items()}, x)
    return {v: {"latency_p95_ms": p95[v], "size_bytes": model_size(job, v)} for v in models}


def read_verdict(job: TrainingJob, version: str) -> dict[str, Any]:
    """The stored verdict of a version (never a log line or an XCom): what promotion acts on."""
    import mlflow

    uri = job.mlf.get_model_version(job.model_name, version).tags.get("crispflow.verdict")
    if not uri:
        return {"blessed": False, "reasons": ["no verdict recorded"]}
    return json.loads(mlflow.artifacts.load_text(uri))


def force_bless(job: TrainingJob, version: str, *, reason: str, approver: Mapping[str, str] | None,
                requester: str) -> dict[str, Any]:
    """Record a human's override of a "not blessed" verdict: the gate's verdict stays in the record, beside who
    asked for it (`requester`, the training run's triggering user), who approved (`approver`, the HITL
    respondent: `{"id", "name"}`), when and why. Never without an approver and a reason, and never approved by
    the requester (four eyes): ApprovalRefused naming the roles."""
    from datetime import UTC, datetime

    from crispflow.errors import ApprovalRefused

    if not approver or not approver.get("id"):
        raise ApprovalRefused("a forced blessing needs an approver (the approval has no responding user)")
    if len(reason.strip()) < 10:
        raise ApprovalRefused("a forced blessing needs a reason of at least 10 characters")
    if requester in {approver.get("id"), approver.get("name")}:
        raise ApprovalRefused("a forced blessing must be approved by another person than its requester: the "
                              "approver (the approval's respondent) is the user who triggered the training run")
    verdict = read_verdict(job, version)
    if verdict.get("blessed"):
        return {"action": "none", "reason": "already blessed", "version": version}
    forced = {**verdict, "blessed": True, "blessed_by": "forced",
              "forced": {"reason": reason, "approver": dict(approver), "requester": requester,
                         "at": datetime.now(UTC).isoformat(),
                         "gate_reasons": verdict.get("reasons", []), "recorded_by": job.run_key}}
    mv = job.mlf.get_model_version(job.model_name, version)
    path = f"blessing/v{version}-forced.json"
    job.mlf.log_text(mv.run_id, json.dumps(json_safe(forced), indent=2, default=str), path)
    job.mlf.set_model_version_tag(job.model_name, version, "crispflow.forced_by", approver["id"])
    job.mlf.set_model_version_tag(job.model_name, version, "crispflow.forced_requested_by", requester)
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
    explanations, images = _stored_explanations(mv)
    card = ModelCardInput(
        model_name=job.model_name, version=version, spec=job.spec, dataset=job.manifest, holdout=job.frames[2],
        config=stored["selection"], threshold=registry.version_threshold(mv),
        evaluation=stored["evaluation"], verdict=read_verdict(job, version),
        aliases=list(job.mlf.get_model_version(job.model_name, version).aliases or []),
        created=mv.creation_timestamp, threshold_objective_value=stored["selection"].get("threshold_objective"),
        lineage=dict(mv.tags), explanations=explanations, images=images)
    paths = {"markdown": f"model_card/v{version}.md", "html": f"model_card/v{version}.html"}
    job.mlf.log_text(mv.run_id, render_markdown(card), paths["markdown"])
    job.mlf.log_text(mv.run_id, render_html(card), paths["html"])
    job.mlf.set_model_version_tag(job.model_name, version, "crispflow.model_card", f"runs:/{mv.run_id}/{paths['html']}")
    return {k: f"runs:/{mv.run_id}/{v}" for k, v in paths.items()}


def _stored_explanations(mv: Any) -> tuple[dict[str, Any], dict[str, bytes]]:
    """The version's global explanation and its partial dependence PNGs ({} for a version explained before
    explanations existed)."""
    from pathlib import Path

    import mlflow

    uri = (mv.tags or {}).get(registry.EXPLANATIONS_TAG)
    if not uri:
        return {}, {}
    explanations = json.loads(mlflow.artifacts.load_text(uri))
    images = {feature: Path(mlflow.artifacts.download_artifacts(f"runs:/{mv.run_id}/{path}")).read_bytes()
              for feature, path in (explanations.get("partial_dependence") or {}).items()}
    return explanations, images
