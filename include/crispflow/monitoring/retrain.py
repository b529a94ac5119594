"""Retrain on drift: from the drift events of a run to the request for one training run.

The newest event is trusted only if it matches the episode the drift sensor recorded in the store
(`crispflow.monitoring.episodes.check_event`); older events of the same run are coalesced (each has its own
deterministic training run id); events of several pipelines in one run are refused, never coalesced. The dataset
is a training window (`crispflow.data.training_window`): the curated versions ending within `window_days` of the
newest one, composed into one version. ParamsError names the field.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from crispflow.errors import ParamsError

if TYPE_CHECKING:
    from crispflow.lake import Lake, PathLike


def plan_retrain(events: Sequence[Mapping[str, Any] | None], *, root: PathLike, lake: Lake, window_days: int,
                 run: Mapping[str, Any]) -> dict[str, Any]:
    """The training run a drift event asks for: `conf` of train_evaluate_register (pipeline, composed dataset
    version), its `run_id` (one per episode), the `episode_id`, how many older events were coalesced and the
    `parents`: the curated versions the window is composed of (for lineage).

    :param events: the `extra` of the triggering drift events, oldest first
    :param root: the prediction store's root (where the episode records are)
    :param lake: the data lake the training window is composed in
    :param window_days: curated versions ending within this many days of the newest one
    :param run: who composes the window (recorded in its manifest)
    """
    from crispflow.data import training_window
    from crispflow.monitoring.episodes import check_event, retrain_run_id
    from crispflow.monitoring.store import read_episode
    from crispflow.spec import load_spec

    if not events:
        raise ParamsError("drift event: this DAG runs on a crispflow_drift_detected event, none arrived")
    pipelines = sorted({str(e.get("pipeline")) for e in events if isinstance(e, Mapping)})
    if len(pipelines) > 1:  # coalescing would retrain one pipeline and silently drop the others' episodes
        raise ParamsError(f"drift event: one run got events of several pipelines {pipelines}: each pipeline's "
                          "episodes must trigger their own run")
    event = check_event(events[-1], lambda model, episode: read_episode(root, model, episode))
    spec = load_spec(event["pipeline"])
    request = training_window.training_request(lake, spec, window_days, dict(run))
    return {"conf": request["conf"], "run_id": retrain_run_id(event["model"], event["episode_id"]),
            "episode_id": event["episode_id"], "coalesced_events": len(events) - 1, "parents": request["parents"]}
