"""The alert inbox: Alertmanager's webhook receiver records each notification as one JSON line.

A line is `{"received_at": "<UTC ISO 8601>", "payload": <the webhook payload>}`; the file is created 0600 (its
folder 0700) and only ever appended to, one `write` per line. `validate_webhook` checks the shape of Alertmanager's
webhook payload, version "4" (https://prometheus.io/docs/alerting/latest/configuration/#webhook_config), and raises
`AlertPayloadError` naming the field and the rule.
"""

from __future__ import annotations

import json
import os
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from crispflow.errors import CrispflowError

WEBHOOK_VERSION = "4"
STATUSES = ("firing", "resolved")


class AlertPayloadError(CrispflowError):
    """A webhook payload does not have Alertmanager's shape; names the field and the rule."""

    def __init__(self, field: str, rule: str, message: str) -> None:
        super().__init__(f"alert payload field {field!r}: {message} [rule: {rule}]")
        self.field = field
        self.rule = rule


class AlertInboxError(CrispflowError):
    """The inbox file holds a line that is not a recorded notification."""


def _expect(value: Any, kind: type | tuple[type, ...], field: str, what: str) -> Any:
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise AlertPayloadError(field, "type", f"must be {what}")
    return value


def _string_map(payload: dict[str, Any], key: str, field: str, *, required: bool = True) -> None:
    if key not in payload and not required:
        return
    mapping = _expect(payload.get(key), dict, field, "an object of strings")
    for name, value in mapping.items():
        if not isinstance(value, str):
            raise AlertPayloadError(f"{field}.{name}", "type", "must be a string")


def _status(payload: dict[str, Any], field: str) -> None:
    if payload.get("status") not in STATUSES:
        raise AlertPayloadError(field, "enum", f"must be one of {', '.join(STATUSES)}")


def _validate_alert(alert: Any, field: str) -> None:
    alert = _expect(alert, dict, field, "an object")
    _status(alert, f"{field}.status")
    _string_map(alert, "labels", f"{field}.labels")
    _string_map(alert, "annotations", f"{field}.annotations", required=False)
    _expect(alert.get("startsAt"), str, f"{field}.startsAt", "an RFC 3339 timestamp string")
    for key in ("endsAt", "generatorURL", "fingerprint"):
        if key in alert:
            _expect(alert[key], str, f"{field}.{key}", "a string")


def validate_webhook(payload: Any) -> dict[str, Any]:
    """`payload` if it is an Alertmanager webhook payload of version "4", else `AlertPayloadError`."""
    payload = _expect(payload, dict, "payload", "a JSON object")
    if payload.get("version") != WEBHOOK_VERSION:
        raise AlertPayloadError("version", "version", f'must be "{WEBHOOK_VERSION}" (Alertmanager\'s webhook format)')
    _status(payload, "status")
    if not _expect(payload.get("receiver"), str, "receiver", "a string"):
        raise AlertPayloadError("receiver", "non_empty", "must not be empty")
    _expect(payload.get("groupKey"), str, "groupKey", "a string")
    for key in ("groupLabels", "commonLabels", "commonAnnotations"):
        _string_map(payload, key, key)
    if "externalURL" in payload:
        _expect(payload["externalURL"], str, "externalURL", "a string")
    if "truncatedAlerts" in payload and _expect(payload["truncatedAlerts"], int, "truncatedAlerts", "an integer") < 0:
        raise AlertPayloadError("truncatedAlerts", "range", "must be >= 0")
    alerts = _expect(payload.get("alerts"), list, "alerts", "a list")
    if not alerts:
        raise AlertPayloadError("alerts", "non_empty", "must hold at least one alert")
    for i, alert in enumerate(alerts):
        _validate_alert(alert, f"alerts[{i}]")
    return payload


def parse_webhook(body: bytes) -> dict[str, Any]:
    """A webhook request body, decoded and validated (`AlertPayloadError`)."""
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        raise AlertPayloadError("body", "json", "is not valid UTF-8 JSON") from None
    return validate_webhook(payload)


class AlertInbox:
    """Append-only JSONL of received notifications; safe to share between threads of one process."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()

    def record(self, payload: Any, *, received_at: datetime | None = None) -> dict[str, Any]:
        """Validate `payload` and append it; returns the recorded entry."""
        entry = {
            "received_at": (received_at or datetime.now(UTC)).astimezone(UTC).isoformat(),
            "payload": validate_webhook(payload),
        }
        line = (json.dumps(entry, separators=(",", ":"), sort_keys=True) + "\n").encode()
        with self._lock:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.fchmod(fd, 0o600)
                os.write(fd, line)
            finally:
                os.close(fd)
        return entry

    def read(self, limit: int | None = None) -> list[dict[str, Any]]:
        """The recorded entries, oldest first (the last `limit` if given). A last line without its newline (a
        write cut short) is skipped; any other bad line raises `AlertInboxError` naming it."""
        if limit is not None and limit < 0:
            raise ValueError("limit must be >= 0")
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        lines = text.split("\n")[:-1]  # the last piece is "" or a torn write
        entries = []
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                raise AlertInboxError(f"{self.path}: line {number} is not JSON") from None
            if not isinstance(entry, dict) or "received_at" not in entry or "payload" not in entry:
                raise AlertInboxError(f"{self.path}: line {number} is not a recorded notification")
            entries.append(entry)
        if limit is None:
            return entries
        return entries[-limit:] if limit else []
