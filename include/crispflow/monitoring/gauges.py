"""Prometheus gauges of the newest drift windows, read from the monitoring store at scrape time.

`DriftCollector(root, model)` is a prometheus_client custom collector: register it in any registry (the model
server's /metrics). Each scrape within `ttl` seconds of the last read reuses it; otherwise it reads the newest
`history` summaries of each alias with `store.read_windows` (a listing and a few small JSON files). Series, all
labelled {alias, version} of the window's version:

    crispflow_drift_share                    importance-weighted share of drifted features (0..1)
    crispflow_drift_detected                 1 if the window's verdict is drift, else 0
    crispflow_drift_consecutive_windows      how many of the newest windows in a row were drift (0..history)
    crispflow_drift_feature_psi{feature}     PSI of each feature
    crispflow_drift_window_end_timestamp     end of the window (Unix seconds): alert when it stops advancing
    crispflow_drift_window_rows              rows the window held (0 = insufficient data)
    crispflow_drift_episode_windows{dedup_key, severity}
                                             windows so far of the drift episode the DriftSensor recorded, while
                                             it lasts (its exit rule, replayed with the policy it fired under);
                                             `dedup_key` is the Airflow-side alert's (`alerts.dedup_key`), so an
                                             acknowledgement's Alertmanager silence matches it
    crispflow_drift_store_up                 (no labels) 1 if the last read of the store succeeded

An alias whose newest window is older than the champion's newest (a canary that has ended) is not exported.
A store that cannot be read never fails the scrape: the last values are kept and `store_up` is 0.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from crispflow.errors import CrispflowError
from crispflow.monitoring.alerts import dedup_key, severity
from crispflow.monitoring.store import read_episodes, read_windows

log = logging.getLogger(__name__)

ALIASES = ("champion", "canary")
PRIMARY = "champion"


def _path(root: Any, storage_options: Mapping[str, Any] | None) -> Any:
    if isinstance(root, str | os.PathLike) and not hasattr(root, "protocol"):
        from upath import UPath

        return UPath(os.fspath(root), **dict(storage_options or {}))
    if storage_options:
        raise ValueError("storage_options: must be None when root is a UPath/ObjectStoragePath")
    return root


class DriftCollector(Collector):
    """Drift gauges of `model` from the store under `root` (see the module docstring).

    :param root: the prediction log's root (path, ``file://``/``s3://`` URL, UPath or ObjectStoragePath)
    :param model: the registered model name
    :param storage_options: fsspec options for a str root (e.g. `storage_options_from_env(url)`)
    :param aliases: the aliases to export
    :param ttl: seconds a read is reused across scrapes
    :param history: newest windows read per alias (bounds `consecutive_windows`)
    :param clock: monotonic seconds (tests pass their own)
    """

    def __init__(self, root: Any, model: str, *, storage_options: Mapping[str, Any] | None = None,
                 aliases: Sequence[str] = ALIASES, ttl: float = 30.0, history: int = 6,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not isinstance(history, int) or history < 1:
            raise ValueError(f"history: must be an integer >= 1, got {history!r}")
        if not ttl >= 0:
            raise ValueError(f"ttl: must be >= 0, got {ttl!r}")
        self.root = _path(root, storage_options)
        self.model = model
        self.aliases = tuple(aliases)
        self.ttl = float(ttl)
        self.history = history
        self._clock = clock
        self._lock = threading.Lock()
        self._read_at: float | None = None
        self._windows: dict[str, list[dict[str, Any]]] = {}
        self._episodes: list[dict[str, Any]] = []
        self._up = 0

    def describe(self) -> Iterator[Any]:
        """Nothing: registering must not read the store (the registry would call `collect` otherwise)."""
        return iter(())

    def _refresh(self) -> tuple[dict[str, list[dict[str, Any]]], int]:
        with self._lock:
            now = self._clock()
            if self._read_at is None or now - self._read_at >= self.ttl:
                try:
                    self._windows = {a: read_windows(self.root, self.model, alias=a, last=self.history)
                                     for a in self.aliases}
                    self._episodes = read_episodes(self.root, self.model)
                    self._up = 1
                except Exception as exc:  # a scrape must not fail: keep the last values, say the store is down
                    log.warning("drift store of %s unreadable: %s: %s", self.model, type(exc).__name__, exc)
                    self._up = 0
                self._read_at = now
            return self._windows, self._up

    def current(self) -> dict[str, list[dict[str, Any]]]:
        """Per exported alias, its newest windows (oldest first), stale aliases left out."""
        windows, _ = self._refresh()
        newest = {a: w[-1] for a, w in windows.items() if w}
        if PRIMARY in newest:
            cutoff = _end(newest[PRIMARY])
            return {a: windows[a] for a, last in newest.items() if a == PRIMARY or _end(last) >= cutoff}
        return {a: windows[a] for a in newest}

    def collect(self) -> Iterator[GaugeMetricFamily]:
        current = self.current()
        labels = ["alias", "version"]
        share = GaugeMetricFamily("crispflow_drift_share", "weighted share of drifted features, newest window",
                                  labels=labels)
        detected = GaugeMetricFamily("crispflow_drift_detected", "1 if the newest window's verdict is drift",
                                     labels=labels)
        streak = GaugeMetricFamily("crispflow_drift_consecutive_windows",
                                   "newest windows in a row with a drift verdict", labels=labels)
        psi = GaugeMetricFamily("crispflow_drift_feature_psi", "PSI of each feature, newest window",
                                labels=[*labels, "feature"])
        end = GaugeMetricFamily("crispflow_drift_window_end_timestamp", "end of the newest window (Unix seconds)",
                                labels=labels)
        rows = GaugeMetricFamily("crispflow_drift_window_rows", "rows in the newest window", labels=labels)
        for alias, windows in current.items():
            last = windows[-1]
            key = [alias, str(last.get("version"))]
            share.add_metric(key, float(last.get("drift_share") or 0.0))
            detected.add_metric(key, 1.0 if last.get("drift") else 0.0)
            streak.add_metric(key, float(_streak(windows)))
            end.add_metric(key, _end(last))
            rows.add_metric(key, float(last.get("rows") or 0))
            # every feature's PSI (`feature_statistics`); older summaries hold the drifted features' only
            for feature, stats in sorted((last.get("feature_statistics") or last.get("statistics") or {}).items()):
                value = (stats or {}).get("psi")
                if isinstance(value, int | float):
                    psi.add_metric([*key, feature], float(value))
        episode = GaugeMetricFamily("crispflow_drift_episode_windows",
                                    "windows so far of the recorded drift episode that is still open",
                                    labels=[*labels, "dedup_key", "severity"])
        for alias, windows in current.items():
            try:
                found = open_episode_windows(self._episodes, windows, alias)
            except (CrispflowError, ValueError, KeyError, TypeError) as exc:  # never fail a scrape over one record
                log.warning("drift episode of %s (%s) unreadable: %s: %s", self.model, alias, type(exc).__name__, exc)
                continue
            if found:
                record, count = found
                key = [alias, str(windows[-1].get("version")), dedup_key(self.model, record["episode_id"])]
                episode.add_metric([*key, severity(record)], float(count))
        up = GaugeMetricFamily("crispflow_drift_store_up", "1 if the last read of the drift store succeeded")
        up.add_metric([], float(self._up))
        yield from (share, detected, streak, psi, end, rows, episode, up)


def open_episode_windows(episodes: Sequence[Mapping[str, Any]], windows: Sequence[Mapping[str, Any]],
                         alias: str) -> tuple[Mapping[str, Any], int] | None:
    """The newest recorded episode of `alias` and its usable windows so far, if it has not ended in `windows`
    (replayed from its start with the policy it fired under: `episodes.current_episode`)."""
    from crispflow.monitoring.episodes import DriftPolicy, current_episode, episode_start

    mine = [e for e in episodes if e.get("alias") == alias and e.get("episode_id")]
    if not mine:
        return None
    record = max(mine, key=lambda e: episode_start(e["episode_id"]))
    start = episode_start(record["episode_id"]).timestamp()
    policy = DriftPolicy.from_dict({**(record.get("policy") or {}), "alias": alias})
    since = [w for w in windows if _end(w) >= start]
    active, _ = current_episode(since, policy, open_episode_id=record["episode_id"])
    if active is None or active.episode_id != record["episode_id"]:
        return None
    return record, len(active.windows)


def _end(summary: Mapping[str, Any]) -> float:
    return datetime.fromisoformat(summary["window_end"]).timestamp()


def _streak(windows: Sequence[Mapping[str, Any]]) -> int:
    """Drift verdicts in a row at the newest end of `windows` (one version's run of windows only)."""
    count = 0
    version = windows[-1].get("version")
    for summary in reversed(windows):
        if not summary.get("drift") or summary.get("version") != version:
            break
        count += 1
    return count
