"""Registered versions that look like the training DAG's: a real holdout evaluation and blessing verdict (computed
by `crispflow.model.evaluation.evaluate` and `crispflow.model.blessing.decide` on small arrays), stored where
`crispflow.model.modelling` stores them (artifacts `evaluation/v<N>.json`, `blessing/v<N>.json`,
`model_card/v<N>.html` of the version's run) and tagged as it tags them.

PYTEST_DONT_REWRITE
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from crispflow.lake import json_safe

THRESHOLD = 0.5


def holdout(n: int = 300, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labels, a good model's scores, a weaker model's scores) of a small binary holdout."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    good = np.clip(0.5 * y + rng.uniform(0, 0.5, n), 0, 1)
    weak = np.clip(0.2 * y + rng.uniform(0, 0.8, n), 0, 1)
    return y, good, weak


def judge_version(mlf: Any, name: str, version: str, *, y: np.ndarray, score: np.ndarray,
                  champion_score: np.ndarray | None = None, pipeline: str, dataset_version_id: str | None = None,
                  card_html: str | None = None) -> dict[str, Any]:
    """Evaluate and judge `version` on (y, score) (against `champion_score` if given), store both records and the
    model card as crispflow does, and tag the version; returns the verdict."""
    from crispflow.model.blessing import decide
    from crispflow.model.evaluation import evaluate
    from crispflow.spec import Blessing

    mv = mlf.get_model_version(name, version)
    policy = Blessing(bootstrap_samples=200)
    report = json_safe(evaluate(y, score, THRESHOLD, n_boot=200))
    kwargs = {} if champion_score is None else {
        "champion_score": champion_score, "champion_threshold": THRESHOLD,
        "challenger_cost": {"latency_p95_ms": 1.0, "size_bytes": 1000},
        "champion_cost": {"latency_p95_ms": 1.0, "size_bytes": 1000}}
    verdict = json_safe({**decide(policy, y, score, THRESHOLD, **kwargs), "model": name, "version": version,
                         "dataset_version_id": dataset_version_id, "judged_by": f"train/{version}"})
    mlf.log_text(mv.run_id, json.dumps(report), f"evaluation/v{version}.json")
    mlf.log_text(mv.run_id, json.dumps(verdict), f"blessing/v{version}.json")
    tags = {"crispflow.pipeline": pipeline, "crispflow.task": "binary", "crispflow.threshold": repr(THRESHOLD),
            "crispflow.verdict": f"runs:/{mv.run_id}/blessing/v{version}.json",
            "crispflow.blessed": str(verdict["blessed"]).lower(),
            **{f"crispflow.holdout_{k}": repr(m["value"]) for k, m in report["metrics"].items()}}
    if dataset_version_id:
        tags["crispflow.dataset_version_id"] = dataset_version_id
    if card_html is not None:
        mlf.log_text(mv.run_id, card_html, f"model_card/v{version}.html")
        tags["crispflow.model_card"] = f"runs:/{mv.run_id}/model_card/v{version}.html"
    for key, value in tags.items():
        mlf.set_model_version_tag(name, version, key, value)
    return verdict
