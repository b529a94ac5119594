"""Drift alerts: one digest per drift incident, deduplicated in the store, with severity and an acknowledged state.

The incident is a recorded drift episode (the DriftSensor's record, `crispflow.monitoring.store`); its dedup key is
`<model>.<episode id>`. Before sending, `send_alert` claims `<predictions root>/<model>/drift/alerts/<dedup
key>.json` exclusively (with `acknowledged: false`); only the claimant sends, and it records each channel once it
was delivered, so a retry re-sends only the channels that failed and any other sender of the same incident is
suppressed (delivery is at least once per channel: a crash between sending and recording may repeat that one
channel). `acknowledge(...)` marks the incident as handled; `list_alerts` reads every alert of a model.

Channels (a list of dicts, checked by `check_channels`):

- `{"kind": "webhook", "conn_id": ..., "endpoint": ""}`: the digest as JSON to an http connection, with an
  `Idempotency-Key` header = the dedup key.
- `{"kind": "slack", "conn_id": ..., "endpoint": ""}`: an http connection whose URL is a Slack incoming webhook;
  the digest in Slack's payload shape (`slack_payload`: `text` + `blocks`).
- `{"kind": "email", "to": [...], "conn_id": "smtp_default"}`: an HTML digest (`email_html`).

Add `"optional": true` to skip a channel whose connection is not defined (logged), instead of failing. Delivery
itself is the caller's (`deliver`): in Airflow, `crispflow_airflow.notifiers.alerts.DriftAlertNotifier`.
"""

from __future__ import annotations

import html
import json
import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from crispflow.errors import CrispflowError, ParamsError
from crispflow.lake import PathLike, canonical_json, create_exclusive, fresh_listing, json_safe, write_atomic
from crispflow.predictions.store import drift_dir

log = logging.getLogger(__name__)

KINDS = ("webhook", "slack", "email")
SEVERITIES = ("warning", "high", "critical")


class AlertNotFound(CrispflowError):
    """No alert with that dedup key was ever raised for that model."""


# --- the digest (pure) -------------------------------------------------------------------------------------------


def dedup_key(model: str, episode_id: str) -> str:
    return f"{model}.{episode_id}"


def severity(record: Mapping[str, Any]) -> str:
    """critical: the model's scores drifted or >= half the (weighted) features; high: >= a quarter; else warning."""
    share = float(record.get("max_drift_share") or 0.0)
    if record.get("prediction_drift") or share >= 0.5:
        return "critical"
    return "high" if share >= 0.25 else "warning"


def digest(record: Mapping[str, Any]) -> dict[str, Any]:
    """One incident, grouped by feature: in how many windows each drifted and its latest statistics."""
    windows = list(record.get("windows") or [])
    groups = []
    for name in record.get("features") or []:
        stats = (record.get("statistics") or {}).get(name) or {}
        groups.append({"feature": name, "windows": sum(name in (w.get("drifted_features") or []) for w in windows),
                       "test": stats.get("test"), "statistic": stats.get("statistic"), "psi": stats.get("psi"),
                       "p_adjusted": stats.get("p_adjusted")})
    groups.sort(key=lambda g: (-g["windows"], -(g["psi"] or 0.0), g["feature"]))
    level = severity(record)
    model, episode = record["model"], record["episode_id"]
    title = (f"[{level}] drift in {model} ({record.get('alias')}): {len(groups)} feature(s)"
             + (", prediction drift" if record.get("prediction_drift") else ""))
    return json_safe({
        "dedup_key": dedup_key(model, episode), "model": model, "pipeline": record.get("pipeline"),
        "alias": record.get("alias"), "episode_id": episode, "severity": level, "title": title,
        "fired_at": record.get("fired_at"), "max_drift_share": record.get("max_drift_share"),
        "prediction_drift": bool(record.get("prediction_drift")), "groups": groups,
        "windows": [{k: w.get(k) for k in ("window_start", "window_end", "status", "drift_share", "report")}
                    for w in windows],
        "action": "retraining requested (retrain_on_drift); the result goes through the blessing gate and canary",
    })


def slack_payload(d: Mapping[str, Any]) -> dict[str, Any]:
    lines = [f"• `{g['feature']}`: {g['windows']} window(s), {g['test'] or 'test'} psi={_num(g['psi'])}"
             for g in d["groups"][:20]]
    return {"text": d["title"], "blocks": [
        {"type": "header", "text": {"type": "plain_text", "text": d["title"][:150]}},
        {"type": "section", "text": {"type": "mrkdwn", "text": "\n".join(lines) or "no feature drift"}},
        {"type": "context", "elements": [{"type": "mrkdwn", "text": f"dedup key `{d['dedup_key']}` · "
                                                                   f"{d['action']}"}]}]}


def email_html(d: Mapping[str, Any]) -> str:
    rows = "".join(f"<tr><td>{html.escape(g['feature'])}</td><td>{g['windows']}</td>"
                   f"<td>{html.escape(str(g['test']))}</td><td>{_num(g['psi'])}</td></tr>" for g in d["groups"])
    return (f"<h3>{html.escape(d['title'])}</h3><p>Episode {html.escape(d['episode_id'])}, fired "
            f"{html.escape(str(d['fired_at']))}. {html.escape(d['action'])}.</p><table border=1>"
            f"<tr><th>feature</th><th>windows</th><th>test</th><th>PSI</th></tr>{rows}</table>"
            f"<p>Dedup key: {html.escape(d['dedup_key'])}</p>")


def _num(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, int | float) else "-"


# --- the alert state in the store --------------------------------------------------------------------------------


def alert_path(root: PathLike, model: str, key: str) -> PathLike:
    return drift_dir(root, model) / "alerts" / f"{key}.json"


def read_alert(root: PathLike, model: str, key: str) -> dict[str, Any] | None:
    path = alert_path(root, model, key)
    return json.loads(path.read_bytes()) if path.exists() else None


def list_alerts(root: PathLike, model: str) -> list[dict[str, Any]]:
    """Every alert state stored for `model` (as `claim` wrote it, with its acknowledgement), oldest raised first.
    An acknowledgement that was claimed (its `<key>.acknowledged` marker exists) but not yet recorded in the state
    (the acknowledging task stopped in between) is shown as what it is: acknowledged, by the marker's person."""
    folder = fresh_listing(drift_dir(root, model) / "alerts")
    if not folder.exists():
        return []
    files = {p.name: p for p in folder.iterdir() if not p.name.startswith(".")}
    states = []
    for name in sorted(n for n in files if n.endswith(".json")):
        state = json.loads(files[name].read_bytes())
        marker = files.get(name.removesuffix(".json") + ".acknowledged")
        if not state.get("acknowledged") and marker is not None:
            first = json.loads(marker.read_bytes())
            state.update(acknowledged=True, acknowledged_by=first.get("by"), acknowledged_at=first.get("at"),
                         acknowledged_note=first.get("note"))
        states.append(state)
    return sorted(states, key=lambda s: (str(s.get("raised_at") or ""), str(s.get("dedup_key") or "")))


def claim(root: PathLike, model: str, d: Mapping[str, Any], by: Mapping[str, Any]) -> dict[str, Any] | None:
    """The alert state if `by` owns the incident (it created the alert now, or earlier in a previous try), else
    None: someone else raised it, so this notification is suppressed."""
    state = {"dedup_key": d["dedup_key"], "model": model, "severity": d["severity"], "acknowledged": False,
             "acknowledged_by": None, "acknowledged_at": None, "raised_by": dict(by),
             "raised_at": datetime.now(UTC).isoformat(), "sent": [], "digest": dict(d)}
    if create_exclusive(alert_path(root, model, d["dedup_key"]), canonical_json(state)):
        return state
    existing = read_alert(root, model, d["dedup_key"]) or {}
    return existing if existing.get("raised_by") == dict(by) else None


def mark_sent(root: PathLike, model: str, state: dict[str, Any], channel: str) -> None:
    state["sent"] = [*state["sent"], channel]
    write_atomic(alert_path(root, model, state["dedup_key"]), canonical_json(state))


class AlertAlreadyAcknowledged(CrispflowError):
    """Acknowledgement is exclusive: the alert was acknowledged before, by the person the message names."""


def acknowledge(root: PathLike, model: str, key: str, by: str, *, note: str | None = None,
                ref: str | None = None) -> dict[str, Any]:
    """Mark an alert acknowledged by the person `by`, exclusively: the first acknowledgement wins (claimed by
    creating `<key>.acknowledged` beside the alert exclusively) and records the person, the time and `note`; any
    other raises AlertAlreadyAcknowledged naming who acknowledged it first and when. The same acknowledgement
    again — the same `ref` (e.g. the Airflow task, so a retry passes) and the same person — returns the state.
    Returns the alert state."""
    if not isinstance(key, str) or not key.startswith(f"{model}.") or "/" in key or "\\" in key:
        raise AlertNotFound(f"dedup_key: {key!r} is not the key of a drift alert of model {model!r}")
    state = read_alert(root, model, key)
    if state is None:
        raise AlertNotFound(f"dedup_key: no drift alert {key!r} for model {model!r}")
    if not isinstance(by, str) or not by.strip():
        raise ParamsError("by: who acknowledges must be a non-empty name")
    mine = {"by": by.strip(), "at": datetime.now(UTC).isoformat(), "note": (note or "").strip() or None, "ref": ref}
    marker = drift_dir(root, model) / "alerts" / f"{key}.acknowledged"
    if state.get("acknowledged") and not marker.exists():  # acknowledged before acknowledgements were claimed
        first = {"by": state.get("acknowledged_by"), "at": state.get("acknowledged_at"), "ref": None}
    elif create_exclusive(marker, canonical_json(mine)):
        first = mine
    else:
        first = json.loads(marker.read_bytes())
    if (first.get("by"), first.get("ref")) != (mine["by"], ref):
        raise AlertAlreadyAcknowledged(f"alert {key} was already acknowledged by {first.get('by')} at "
                                       f"{first.get('at')}: acknowledgement is exclusive, nothing recorded")
    if not state.get("acknowledged"):  # the claim is ours (this call or an earlier try): record it in the state
        state.update(acknowledged=True, acknowledged_by=first["by"], acknowledged_at=first["at"],
                     acknowledged_note=first.get("note"))
        write_atomic(alert_path(root, model, key), canonical_json(state))
    return state


def check_channels(channels: Any) -> list[dict[str, Any]]:
    """Validate channel configs; ParamsError names the channel and the field."""
    if isinstance(channels, str):
        try:
            channels = json.loads(channels) if channels.strip() else []
        except ValueError:
            raise ParamsError(f"alert_channels: {channels!r} is not a JSON list") from None
    if not isinstance(channels, list | tuple):
        raise ParamsError(f"alert_channels: must be a list, got {type(channels).__name__}")
    out = []
    for i, ch in enumerate(channels):
        if not isinstance(ch, Mapping) or ch.get("kind") not in KINDS:
            raise ParamsError(f"alert_channels[{i}]: kind must be one of {list(KINDS)}")
        unknown = sorted(set(ch) - {"kind", "conn_id", "endpoint", "to", "optional", "name"})
        if unknown:
            raise ParamsError(f"alert_channels[{i}]: unknown field(s) {unknown}")
        conn = ch.get("conn_id") or ("smtp_default" if ch["kind"] == "email" else None)
        if not isinstance(conn, str):
            raise ParamsError(f"alert_channels[{i}]: conn_id is required for {ch['kind']}")
        to = ch.get("to")
        if ch["kind"] == "email" and (not isinstance(to, list) or not to or not all(isinstance(t, str) for t in to)):
            raise ParamsError(f"alert_channels[{i}]: email needs `to`, a non-empty list of addresses")
        out.append({"kind": ch["kind"], "conn_id": conn, "endpoint": str(ch.get("endpoint") or ""), "to": to,
                    "optional": bool(ch.get("optional", False)),
                    "name": str(ch.get("name") or f"{ch['kind']}:{conn}")})
    return out


# --- sending ------------------------------------------------------------------------------------------------------


def send_alert(root: PathLike, record: Mapping[str, Any] | None, channels: Any, *, by: Mapping[str, Any],
               deliver: Callable[[Mapping[str, Any], Mapping[str, Any]], None],
               connection_exists: Callable[[str], bool]) -> dict[str, Any]:
    """Claim the incident of episode `record` for `by` and `deliver(channel, digest)` to each channel not yet
    delivered, recording each; returns what happened. No record (no episode): nothing is sent."""
    if not record:
        log.info("no drift episode: no alert")
        return {"sent": [], "suppressed": False, "dedup_key": None}
    checked = check_channels(channels)
    d = digest(record)
    state = claim(root, record["model"], d, by)
    if state is None:
        log.info("alert %s was already raised: suppressed", d["dedup_key"])
        return {"sent": [], "suppressed": True, "dedup_key": d["dedup_key"]}
    sent, skipped = [], []
    for ch in checked:
        if ch["name"] in state["sent"]:
            continue
        if ch["optional"] and not connection_exists(ch["conn_id"]):
            log.warning("alert channel %s: connection %r not defined; skipped", ch["name"], ch["conn_id"])
            skipped.append(ch["name"])
            continue
        deliver(ch, d)
        mark_sent(root, record["model"], state, ch["name"])
        sent.append(ch["name"])
    log.info("alert %s (%s) sent to %s", d["dedup_key"], d["severity"], sent or "no channel")
    return {"sent": sent, "skipped": skipped, "suppressed": False, "dedup_key": d["dedup_key"],
            "severity": d["severity"]}
