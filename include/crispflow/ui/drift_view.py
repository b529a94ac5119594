"""The Drift page's data: windows per alias, a features x windows PSI heatmap, episodes and alerts of one model,
read from the drift store (`crispflow.monitoring.store`, `crispflow.monitoring.alerts`); plus its two SVG charts
and the one way to reach a window's stored report (`report_file`, validated: never a traversal).

Only window summaries are read (their `feature_statistics`), never the full reports, so the page stays fast with
a thousand windows. Summaries written before `feature_statistics` existed still render: the heatmap shows the
drifted features' statistics they kept and leaves every other cell missing (PSI None).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from crispflow.lake import PathLike
from crispflow.monitoring.alerts import list_alerts
from crispflow.monitoring.episodes import retrain_run_id, usable
from crispflow.monitoring.store import WINDOW_FORMAT, read_episodes, read_windows_by_alias
from crispflow.monitoring.store import window_key as key_of
from crispflow.predictions.schema import PredictionLogError, check_model
from crispflow.predictions.store import drift_dir
from crispflow.ui import NotFound
from crispflow.ui.svg import heatmap, line_chart

KNOWN_ALIASES = ("champion", "canary", "shadow", "previous", "challenger")
ALIAS_RE = re.compile(r"^[a-z_]{1,32}$")
WINDOW_KEY_RE = re.compile(r"^[0-9]{8}T[0-9]{6}Z$")
REPORT_FILES = {"html": "report.html", "json": "report.json"}
HEATMAP_ALIAS = "champion"


def _model(model: Any) -> str:
    try:
        return check_model(model)
    except PredictionLogError:
        raise NotFound("model: not a valid model name") from None


def _alias_order(alias: str) -> tuple[int, str]:
    return (KNOWN_ALIASES.index(alias) if alias in KNOWN_ALIASES else len(KNOWN_ALIASES), alias)


def _window_row(summary: Mapping[str, Any]) -> dict[str, Any]:
    end = datetime.fromisoformat(summary["window_end"])
    return {"window_start": summary.get("window_start"), "window_end": summary["window_end"],
            "window_key": key_of(end), "version": summary.get("version"), "rows": summary.get("rows"),
            "labelled_rows": summary.get("labelled_rows"), "status": summary.get("status"),
            "drift": bool(summary.get("drift")), "drift_share": summary.get("drift_share"),
            "drifted_features": list(summary.get("drifted_features") or []),
            "prediction_drift": bool(summary.get("prediction_drift"))}


def _feature_cells(summary: Mapping[str, Any]) -> dict[str, tuple[float | None, bool]]:
    """feature -> (PSI, drifted) of one window: every feature from `feature_statistics`; from an older summary,
    the drifted features it kept in `statistics` (their PSI) and its `drifted_features`."""
    cells: dict[str, tuple[float | None, bool]] = {}
    stats = summary.get("feature_statistics")
    if isinstance(stats, Mapping):
        for name, s in stats.items():
            s = s if isinstance(s, Mapping) else {}
            cells[str(name)] = (_psi(s.get("psi")), bool(s.get("drifted")))
        return cells
    drifted = {str(n) for n in summary.get("drifted_features") or []}
    for name, s in (summary.get("statistics") or {}).items():
        cells[str(name)] = (_psi((s or {}).get("psi")) if isinstance(s, Mapping) else None, str(name) in drifted)
    for name in drifted:
        cells.setdefault(name, (None, True))
    return cells


def _psi(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def heatmap_data(alias: str | None, summaries: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The features x windows grid of `summaries` (oldest window first). Features are ordered by the number of
    windows they drifted in (most first), then their largest PSI, then name; a cell without a statistic is None."""
    columns = [_feature_cells(s) for s in summaries]
    names = {n for c in columns for n in c}
    drift_count = {n: sum(1 for c in columns if c.get(n, (None, False))[1]) for n in names}
    peak = {n: max((c[n][0] for c in columns if n in c and c[n][0] is not None), default=-1.0) for n in names}
    features = sorted(names, key=lambda n: (-drift_count[n], -peak[n], n))
    return {"alias": alias,
            "features": features,
            "windows": [key_of(datetime.fromisoformat(s["window_end"])) for s in summaries],
            "window_ends": [s["window_end"] for s in summaries],
            "psi": [[c.get(n, (None, False))[0] for c in columns] for n in features],
            "drifted": [[c.get(n, (None, False))[1] for c in columns] for n in features]}


def _episode(model: str, record: Mapping[str, Any]) -> dict[str, Any]:
    windows = list(record.get("windows") or [])
    episode_id = record.get("episode_id")
    return {"episode_id": episode_id, "alias": record.get("alias"), "pipeline": record.get("pipeline"),
            "retrain_run_id": retrain_run_id(model, episode_id) if isinstance(episode_id, str) else None,
            "fired_at": record.get("fired_at"), "fired_by": record.get("fired_by"),
            "features": list(record.get("features") or []), "max_drift_share": record.get("max_drift_share"),
            "prediction_drift": bool(record.get("prediction_drift")), "versions": list(record.get("versions") or []),
            "new_labels": record.get("new_labels"), "windows": len(windows),
            "first_window_end": windows[0].get("window_end") if windows else None,
            "last_window_end": windows[-1].get("window_end") if windows else None}


def _alert(state: Mapping[str, Any]) -> dict[str, Any]:
    d = state.get("digest") or {}
    return {"key": state.get("dedup_key"), "episode_id": d.get("episode_id"), "pipeline": d.get("pipeline"),
            "alias": d.get("alias"), "severity": state.get("severity") or d.get("severity"), "title": d.get("title"),
            "opened": state.get("raised_at"), "raised_by": state.get("raised_by"),
            "sent": list(state.get("sent") or []), "acknowledged": bool(state.get("acknowledged")),
            "acknowledged_by": state.get("acknowledged_by"), "acknowledged_at": state.get("acknowledged_at"),
            "acknowledged_note": state.get("acknowledged_note"), "max_drift_share": d.get("max_drift_share"),
            "prediction_drift": bool(d.get("prediction_drift")),
            "features": [g.get("feature") for g in d.get("groups") or [] if isinstance(g, Mapping)]}


def drift_page(root: PathLike, model: str, *, last: int = 200) -> dict[str, Any]:
    """What the Drift page shows for `model` (NotFound for an invalid name; a model without windows is an empty
    page). Keys:

    - `model`; `aliases`: {alias: window rows, oldest first, the newest `last` per alias} in the order champion,
      canary, shadow, previous, challenger, then others by name; a row has window_start, window_end, window_key,
      version, rows, labelled_rows, status, drift, drift_share, drifted_features, prediction_drift;
    - `heatmap`: {alias, features, windows (window keys, oldest first), window_ends, psi, drifted} of the champion
      (else the first alias with windows; alias None and empty lists when there are none), `psi`/`drifted`
      indexed [feature][window];
    - `min_drift_share`: the drift-share threshold of the newest window that recorded one (None if none did);
    - `episodes`: the recorded drift episodes, newest first (episode_id, alias, pipeline, retrain_run_id: the
      training run it triggered, fired_at, fired_by, features, max_drift_share, prediction_drift, versions,
      new_labels, windows (a count), first/last_window_end); `alerts`: alert digests, newest first, with key,
      episode_id, pipeline, alias, severity, title, opened, raised_by, sent, acknowledged, acknowledged_by/at/note
      (None until acknowledged), max_drift_share, prediction_drift, features.
    """
    model = _model(model)
    per_alias = read_windows_by_alias(root, model, last=max(int(last), 0))
    order = sorted(per_alias, key=_alias_order)
    aliases = {a: [_window_row(s) for s in per_alias[a]] for a in order}
    shown = HEATMAP_ALIAS if per_alias.get(HEATMAP_ALIAS) else next((a for a in order if per_alias[a]), None)
    newest = sorted((s for a in order for s in per_alias[a] if s.get("min_drift_share") is not None),
                    key=lambda s: s["window_end"])
    return {"model": model, "aliases": aliases,
            "heatmap": heatmap_data(shown, per_alias.get(shown, []) if shown else []),
            "min_drift_share": newest[-1]["min_drift_share"] if newest else None,
            "episodes": [_episode(model, e) for e in reversed(read_episodes(root, model))],
            "alerts": [_alert(a) for a in reversed(list_alerts(root, model))]}


def share_chart(page: Mapping[str, Any]) -> str:
    """The drift share of every window, one line per alias; windows without a verdict (insufficient data) are
    gaps; the dashed line is the drift-share threshold."""
    series = {alias: [(r["window_end"], r["drift_share"] if usable(r) else None) for r in rows]
              for alias, rows in page["aliases"].items()}
    return line_chart(series, title=f"Drift share per window: {page['model']}", threshold=page.get("min_drift_share"))


def heatmap_svg(page: Mapping[str, Any]) -> str:
    """The PSI of every feature in every window of the heatmap's alias; drifted cells marked, missing ones grey."""
    h = page["heatmap"]
    title = f"PSI per feature and window: {page['model']} ({h['alias'] or 'no windows'})"
    return heatmap(h["features"], h["windows"], h["psi"], h["drifted"], title=title)


def report_file(root: PathLike, model: str, alias: str, window_key: str, kind: str) -> PathLike:
    """The stored report of one window (`kind` "html" or "json"). NotFound for an invalid model, alias (a known
    alias or ^[a-z_]{1,32}$), window key (%Y%m%dT%H%M%SZ) or kind, and for a report that is not there: the path is
    built only from validated parts, so no parameter can reach outside the model's reports."""
    model = _model(model)
    if not isinstance(alias, str) or not (alias in KNOWN_ALIASES or ALIAS_RE.fullmatch(alias)):
        raise NotFound("alias: not a valid alias")
    if not isinstance(window_key, str) or not WINDOW_KEY_RE.fullmatch(window_key):
        raise NotFound("window: not a window key (YYYYMMDDTHHMMSSZ)")
    try:
        datetime.strptime(window_key, WINDOW_FORMAT)
    except ValueError:
        raise NotFound("window: not a valid time") from None
    if kind not in REPORT_FILES:
        raise NotFound(f"kind: must be one of {sorted(REPORT_FILES)}")
    path = drift_dir(root, model) / "reports" / alias / window_key / REPORT_FILES[kind]
    if not path.is_file():
        raise NotFound(f"no {kind} report for {alias} window {window_key}")
    return path
