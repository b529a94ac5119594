"""Drift episodes: when persistent drift should fire a retrain, and when it must not (no Airflow).

The monitoring DAG stores one summary per window (`crispflow.monitoring.store`). `evaluate` replays those
summaries, oldest first, through a small state machine with hysteresis:

- a window is **hot** when its status is "drift" or its drift share is >= `enter_share`; **cool** when its status
  is not "drift" and its share is < `exit_share` (strictly); otherwise neutral. Windows that are not usable
  (status "insufficient_data" or anything else not "drift"/"no_drift", or a share that is missing / NaN / ±inf) are
  skipped: they neither count towards k of n nor break a cool streak.
- **enter**: an episode starts when at least `k` of the last `n` usable windows are hot. Its id is
  `<alias>-<end of its first hot window among those n>` (e.g. `champion-20260301T100000Z`): replaying the same
  windows always yields the same id, so a retrain fires once per episode, however often the sensor checks.
- **exit**: an episode ends only after `exit_windows` consecutive cool windows (a hot or neutral window resets the
  streak). Only then can a new episode (with a new id) start.

An active episode fires when it has not fired yet (no record in the store), the last retrain is older than
`cooldown`, fewer than `budget` retrains fired within `budget_period`, and at least `min_new_labels` labelled rows
arrived since the last retrain. Otherwise `Decision.blocked_by` says which rule held it back.

The sensor reads only the newest `lookback` windows. If it got that many (the store may hold older ones), the
newest recorded episode began before them and no cool streak ended it inside them, the replay starts inside that
episode: a drift longer than the lookback is still the same episode, never a second retrain.

Defaults (`DriftPolicy`): k=2 of n=3, enter_share 0.1 (the drift report's own `min_drift_share`), exit_share 0.05,
exit_windows 2, cooldown 6 h, budget 3 retrains per 7 days, min_new_labels 0, lookback 168 windows (a week of
hourly windows), alias "champion". A pipeline sets its own in its spec's `drift_watch:` section (`spec_policy`);
a run may only tighten it (`DriftPolicy.tightened`, directions in `crispflow.policies.DRIFT_WATCH`).

Everything is pure except `check`, which reads the windows and episodes from the store and calls `evaluate`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from crispflow.errors import ParamsError
from crispflow.lake import PathLike
from crispflow.policies import DRIFT_WATCH, digest, tighten

if TYPE_CHECKING:
    from crispflow.spec import PipelineSpec

USABLE = frozenset({"drift", "no_drift"})
EPISODE_ID = re.compile(r"^[a-z][a-z0-9_]{0,62}-\d{8}T\d{6}Z$")
BLOCKERS = ("no_episode", "already_fired", "cooldown", "budget", "labels")


@dataclass(frozen=True)
class DriftPolicy:
    """When persistent drift fires a retrain. See the module docstring for the rules and defaults."""

    k: int = 2
    n: int = 3
    enter_share: float = 0.1
    exit_share: float = 0.05
    exit_windows: int = 2
    cooldown_hours: float = 6.0
    budget: int = 3
    budget_period_hours: float = 7 * 24.0
    min_new_labels: int = 0
    lookback: int = 168
    alias: str = "champion"

    def __post_init__(self) -> None:
        _int("n", self.n, 1)
        _int("k", self.k, 1)
        if self.k > self.n:
            raise ParamsError(f"policy.k: {self.k} must be <= policy.n ({self.n})")
        for name in ("enter_share", "exit_share"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
                raise ParamsError(f"policy.{name}: {value!r} must be a number from 0 to 1")
        if self.exit_share > self.enter_share:
            raise ParamsError(f"policy.exit_share: {self.exit_share} must be <= enter_share ({self.enter_share}) "
                              "(hysteresis)")
        _int("exit_windows", self.exit_windows, 1)
        _int("budget", self.budget, 0)
        _int("min_new_labels", self.min_new_labels, 0)
        _int("lookback", self.lookback, self.n)
        for name in ("cooldown_hours", "budget_period_hours"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 24 * 366:
                raise ParamsError(f"policy.{name}: {value!r} must be a number of hours from 0 to 8784")
        if not isinstance(self.alias, str) or not re.fullmatch(r"[a-z][a-z0-9_]{0,62}", self.alias):
            raise ParamsError(f"policy.alias: {self.alias!r} is not a valid alias name")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> DriftPolicy:
        """A policy from overrides (unknown keys are errors, not silently ignored)."""
        data = dict(data or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ParamsError(f"policy: unknown field(s) {unknown}; allowed: {sorted(known)}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def tightened(self, overrides: Any) -> DriftPolicy:
        """This (the spec's) policy with a run's overrides, each only in its `crispflow.policies.DRIFT_WATCH` direction;
        ParamsError names the field, the spec's value and the rule otherwise."""
        return tighten(self, overrides, DRIFT_WATCH)

    def digest(self) -> str:
        """sha256 of the policy's sorted JSON."""
        return digest(self)


def spec_policy(spec: PipelineSpec) -> DriftPolicy:
    """The pipeline spec's `drift_watch:` policy (alias: the champion)."""
    return DriftPolicy(**spec.drift_watch.model_dump())


def watch_request(pipeline: Any, policy: Any, base: DriftPolicy | None = None) -> tuple[str, dict[str, Any]]:
    """The model to watch and the policy (as a dict) of a watch request: `base` (the pipeline spec's
    `drift_watch:`; None: the defaults) tightened by the run's `policy` overrides; ParamsError names the field.
    `policy` may be JSON text (a template rendered without native objects), an object, or None."""
    from crispflow.model.registry import model_name
    from crispflow.names import NAME_PATTERN

    if not isinstance(pipeline, str) or not NAME_PATTERN.match(pipeline):
        raise ParamsError(f"pipeline: {pipeline!r} is not a valid pipeline name")
    return model_name(pipeline), (base or DriftPolicy()).tightened(policy).to_dict()


def _int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ParamsError(f"policy.{name}: {value!r} must be an integer >= {minimum}")


@dataclass(frozen=True)
class Decision:
    """The verdict of one check. `reason` always describes the current episode (if any), also when blocked."""

    fire: bool
    episode_id: str | None
    blocked_by: str | None
    reason: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"fire": self.fire, "episode_id": self.episode_id, "blocked_by": self.blocked_by,
                "reason": self.reason}


def _share(window: Mapping[str, Any]) -> float | None:
    value = window.get("drift_share")
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def usable(window: Mapping[str, Any]) -> bool:
    """A window that can be judged: a drift verdict and a finite drift share."""
    return window.get("status") in USABLE and _share(window) is not None


def is_hot(window: Mapping[str, Any], policy: DriftPolicy) -> bool:
    return window.get("status") == "drift" or (_share(window) or 0.0) >= policy.enter_share


def is_cool(window: Mapping[str, Any], policy: DriftPolicy) -> bool:
    return window.get("status") != "drift" and (_share(window) or 0.0) < policy.exit_share


def _end(window: Mapping[str, Any]) -> datetime:
    return _utc(window["window_end"])


def _utc(value: str) -> datetime:
    parsed = datetime.fromisoformat(value)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def episode_id_for(alias: str, first_hot_end: datetime) -> str:
    return f"{alias}-{first_hot_end.astimezone(UTC):%Y%m%dT%H%M%SZ}"


def episode_start(episode_id: str) -> datetime:
    """The end of an episode's first hot window, from its id."""
    return datetime.strptime(episode_id.rsplit("-", 1)[1], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)


@dataclass
class _Episode:
    episode_id: str
    windows: list[Mapping[str, Any]]
    cool_streak: int = 0


def current_episode(windows: Sequence[Mapping[str, Any]], policy: DriftPolicy,
                    open_episode_id: str | None = None) -> tuple[_Episode | None, list[Mapping[str, Any]]]:
    """Replay the windows; the episode still active at the end (or None) and the usable windows seen.

    `open_episode_id`: an episode recorded as fired that began before these windows; the replay starts inside it.
    """
    seen = [w for w in windows if w.get("alias", policy.alias) == policy.alias and usable(w)]
    seen.sort(key=_end)
    episode = _Episode(open_episode_id, []) if open_episode_id else None
    recent: list[Mapping[str, Any]] = []
    for window in seen:
        recent = [*recent, window][-policy.n:]
        if episode is not None:
            episode.windows.append(window)
            episode.cool_streak = episode.cool_streak + 1 if is_cool(window, policy) else 0
            if episode.cool_streak >= policy.exit_windows:
                episode = None
                recent = []  # a new episode needs k hot windows after the exit
            continue
        hot = [w for w in recent if is_hot(w, policy)]
        if len(hot) >= policy.k:
            first = hot[0]
            episode = _Episode(episode_id_for(policy.alias, _end(first)), recent[recent.index(first):])
    return episode, seen


def _reason(episode: _Episode, model: str, policy: DriftPolicy) -> dict[str, Any]:
    hot = [w for w in episode.windows if is_hot(w, policy)]
    features: list[str] = []
    statistics: dict[str, Any] = {}
    for w in hot:  # the newest statistics of each feature win
        for name in w.get("drifted_features") or []:
            if name not in features:
                features.append(name)
        statistics.update(w.get("statistics") or {})
    shares = [_share(w) or 0.0 for w in hot]
    return {
        "model": model, "alias": policy.alias, "episode_id": episode.episode_id,
        "features": features, "statistics": {k: statistics[k] for k in features if k in statistics},
        "max_drift_share": max(shares, default=0.0),
        "prediction_drift": any(bool(w.get("prediction_drift")) for w in hot),
        "versions": sorted({str(w.get("version")) for w in episode.windows if w.get("version") is not None}),
        "windows": [{"window_start": w.get("window_start"), "window_end": w.get("window_end"),
                     "status": w.get("status"), "drift_share": _share(w), "rows": w.get("rows"),
                     "drifted_features": list(w.get("drifted_features") or []), "report": w.get("report")}
                    for w in episode.windows[-max(policy.n, 1) * 4:]],  # bounded: an event carries no data
        "hot_windows": len(hot),
    }


def open_episode(episodes: Sequence[Mapping[str, Any]], windows: Sequence[Mapping[str, Any]],
                 policy: DriftPolicy) -> str | None:
    """The newest recorded episode of this alias if it began before the oldest window read, and the windows read
    are the newest `lookback` (fewer: the whole store was read, nothing is cut off). See the module docstring."""
    if len(windows) < policy.lookback:
        return None
    mine = [e for e in episodes if e.get("alias", policy.alias) == policy.alias and e.get("episode_id")]
    usable_windows = [w for w in windows if usable(w)]
    if not mine or not usable_windows:
        return None
    newest = max(mine, key=lambda e: episode_start(e["episode_id"]))
    oldest = min(_end(w) for w in usable_windows)
    return newest["episode_id"] if episode_start(newest["episode_id"]) < oldest else None


def labels_since(windows: Sequence[Mapping[str, Any]], since: datetime | None, alias: str) -> int:
    """Labelled rows in the windows that started at or after `since` (all windows if None)."""
    total = 0
    for w in windows:
        if w.get("alias", alias) != alias:
            continue
        if since is not None and _utc(w.get("window_start") or w["window_end"]) < since:
            continue
        value = w.get("labelled_rows")
        total += value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0
    return total


def evaluate(windows: Sequence[Mapping[str, Any]], episodes: Sequence[Mapping[str, Any]], policy: DriftPolicy,
             now: datetime, new_labels: int | None = None, *, model: str = "") -> Decision:
    """Should a retrain fire now? `episodes` are the store's records of retrains that fired (with `fired_at`);
    `new_labels` the labelled rows since the last retrain (None: counted from the windows' `labelled_rows`)."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    mine = [e for e in episodes if e.get("alias", policy.alias) == policy.alias]
    fired_times = sorted(_utc(e["fired_at"]) for e in mine if e.get("fired_at"))
    last_fired = fired_times[-1] if fired_times else None
    labels = labels_since(windows, last_fired, policy.alias) if new_labels is None else new_labels
    episode, seen = current_episode(windows, policy, open_episode(mine, windows, policy))
    base = {"model": model, "alias": policy.alias, "checked_at": now.astimezone(UTC).isoformat(),
            "usable_windows": len(seen), "skipped_windows": len(windows) - len(seen), "new_labels": labels,
            "last_retrain_at": last_fired.isoformat() if last_fired else None, "policy": policy.to_dict()}
    if episode is None:
        return Decision(False, None, "no_episode", base)
    reason = {**base, **_reason(episode, model, policy)}
    blocked: str | None = None
    if any(e.get("episode_id") == episode.episode_id for e in mine):
        blocked = "already_fired"
    elif last_fired is not None and now - last_fired < timedelta(hours=policy.cooldown_hours):
        blocked = "cooldown"
    elif sum(1 for t in fired_times if now - t < timedelta(hours=policy.budget_period_hours)) >= policy.budget:
        blocked = "budget"
    elif labels < policy.min_new_labels:
        blocked = "labels"
    return Decision(blocked is None, episode.episode_id, blocked, reason)


def check(root: PathLike, model: str, policy: DriftPolicy | Mapping[str, Any], now: datetime) -> Decision:
    """One check of the store: read the newest `lookback` windows and the recorded episodes, then `evaluate`
    (blocking I/O: the trigger runs it in a thread)."""
    from crispflow.monitoring.store import read_episodes, read_windows

    p = policy if isinstance(policy, DriftPolicy) else DriftPolicy.from_dict(policy)
    windows = read_windows(root, model, alias=p.alias, last=p.lookback)
    return evaluate(windows, read_episodes(root, model), p, now, model=model)


def episode_record(decision: Decision, *, pipeline: str, fired_at: datetime,
                   fired_by: Mapping[str, Any]) -> dict[str, Any]:
    """What the sensor stores (exclusively) when an episode fires; the asset event carries the same fields, with
    the policy it fired under and that policy's sha256 (`DriftPolicy.digest`)."""
    if not decision.fire or decision.episode_id is None:
        raise ValueError("only a firing decision is recorded")
    r = decision.reason
    policy = {"policy": r["policy"], "policy_sha256": DriftPolicy.from_dict(r["policy"]).digest()} \
        if r.get("policy") else {}
    return {"pipeline": pipeline, "model": r["model"], "alias": r["alias"], "episode_id": decision.episode_id,
            "fired_at": fired_at.astimezone(UTC).isoformat(), "fired_by": dict(fired_by),
            "features": r["features"], "statistics": r["statistics"], "windows": r["windows"],
            "max_drift_share": r["max_drift_share"], "prediction_drift": r["prediction_drift"],
            "versions": r["versions"], "new_labels": r["new_labels"], **policy}


EVENT_FIELDS = ("pipeline", "model", "alias", "episode_id", "fired_at")


def check_event(extra: Mapping[str, Any] | None,
                lookup: Callable[[str, str], Mapping[str, Any] | None]) -> dict[str, Any]:
    """Validate a drift asset event against the episode record the sensor stored; ParamsError names the field.

    Asset events can be emitted by anyone allowed to write to the asset, so the payload is only trusted when it
    matches a record in the monitoring store (which only the sensor writes, exclusively). `lookup(model,
    episode_id)` reads that record; it is called only once the fields are well-formed."""
    from crispflow.model.registry import model_name
    from crispflow.names import NAME_PATTERN

    if not isinstance(extra, Mapping):
        raise ParamsError(f"drift event: payload must be an object, got {type(extra).__name__}")
    pipeline, episode_id = extra.get("pipeline"), extra.get("episode_id")
    if not isinstance(pipeline, str) or not NAME_PATTERN.match(pipeline):
        raise ParamsError(f"drift event: pipeline {pipeline!r} is not a valid pipeline name")
    if extra.get("model") != model_name(pipeline):
        raise ParamsError(f"drift event: model {extra.get('model')!r} is not the model of pipeline {pipeline!r}")
    if not isinstance(episode_id, str) or not EPISODE_ID.match(episode_id):
        raise ParamsError(f"drift event: episode_id {episode_id!r} is not an episode id (<alias>-YYYYMMDDTHHMMSSZ)")
    if not isinstance(extra.get("alias"), str) or not episode_id.startswith(f"{extra['alias']}-"):
        raise ParamsError(f"drift event: alias {extra.get('alias')!r} does not match episode_id {episode_id!r}")
    try:
        _utc(str(extra.get("fired_at")))
    except ValueError:
        raise ParamsError(f"drift event: fired_at {extra.get('fired_at')!r} is not an ISO timestamp") from None
    if not isinstance(extra.get("features"), list) or not all(isinstance(f, str) for f in extra["features"]):
        raise ParamsError("drift event: features must be a list of feature names")
    record = lookup(extra["model"], episode_id)
    if record is None:
        raise ParamsError(f"drift event: episode {episode_id} of {extra['model']} was never recorded by the drift "
                          "sensor (forged or from another store)")
    for name in (*EVENT_FIELDS, "features"):
        if record.get(name) != extra.get(name):
            raise ParamsError(f"drift event: {name} {extra.get(name)!r} does not match the recorded episode "
                              f"({record.get(name)!r})")
    return {k: extra[k] for k in (*EVENT_FIELDS, "features")}


def retrain_run_id(model: str, episode_id: str) -> str:
    """The deterministic run id of the training run an episode triggers: duplicates coalesce into one run."""
    return f"drift__{model}__{episode_id}"
