"""Retrain after an erasure: from the `crispflow_erasure` event to the request for one training run.

The event is trusted only if the erasure ledger records that erasure's run for that pipeline (a forged or
mistyped event trains nothing). The spec's `governance.retrain` decides: `immediate` composes a training window
of the newest (successor) versions and asks for one train_evaluate_register run, whose gate and canary decide as
for any challenger; `next_cycle` (the default) asks for none: the flagged versions are replaced by the next
scheduled or drift retrain, before their deadline. ParamsError names the field.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from crispflow.data.training_window import training_request
from crispflow.errors import ParamsError

if TYPE_CHECKING:
    from crispflow.governance.erasure_ledger import ErasureLedger
    from crispflow.lake import Lake


def plan_after_erasure(events: Sequence[Mapping[str, Any] | None], *, ledger: ErasureLedger, lake: Lake,
                       window_days: int, run: Mapping[str, Any]) -> dict[str, Any]:
    """`{"retrain": False, "reason": ...}`, or the training run to trigger: its `conf`, `run_id` (one per
    erasure: duplicate events coalesce), the `erasure_id`, the flagged `models` and the window's `parents`."""
    from crispflow.spec import load_spec

    if not events or not isinstance(events[-1], Mapping):
        raise ParamsError("erasure event: this DAG runs on a crispflow_erasure event, none arrived")
    event = events[-1]
    pipeline, erasure_id = str(event.get("pipeline")), str(event.get("erasure_id"))
    recorded = [e for e in ledger.entries(pipeline) if e["step"] == "run"
                and e["erasure_id"].startswith(f"{erasure_id}:run:")]
    if not recorded:
        raise ParamsError(f"erasure event: no erasure {erasure_id!r} of pipeline {pipeline!r} is recorded in the "
                          "erasure ledger")
    models = sorted({m["version"] for e in recorded for m in json.loads(e["detail"]).get("models", [])}, key=int)
    spec = load_spec(pipeline)
    if not models:
        return {"retrain": False, "erasure_id": erasure_id, "reason": "no model version was trained on the data"}
    if spec.governance.retrain != "immediate":
        return {"retrain": False, "erasure_id": erasure_id, "models": models,
                "reason": f"governance.retrain is {spec.governance.retrain!r}: the next retrain replaces them"}
    request = training_request(lake, spec, window_days, dict(run))
    return {"retrain": True, "erasure_id": erasure_id, "models": models, "conf": request["conf"],
            "run_id": f"retrain_after_erasure__{erasure_id}", "parents": request["parents"]}
