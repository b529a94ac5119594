"""Alertmanager silences for acknowledged drift alerts: a tiny client of Alertmanager's API v2.

When a person acknowledges a drift alert (`crispflow.monitoring.alerts.acknowledge`), Prometheus' copy of the
same incident (alert `CrispflowDriftPersistent`, label `dedup_key` = the alert's dedup key) should stop notifying:
`silence_alert` creates a silence with the one matcher `dedup_key="<key>"`, idempotently (an active or pending
silence with exactly that matcher is reused, so a retried task does not stack silences). `expire_silence` ends one.

Errors are typed and name the operation and the HTTP status; they never contain credentials (`auth` is sent as
basic auth, never put in a URL or a message).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from crispflow.errors import CrispflowError, ParamsError

LABEL = "dedup_key"
DEFAULT_DURATION = timedelta(days=7)
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_FORBIDDEN = re.compile(r"[\"'\\\x00-\x1f\x7f]")  # quotes, backslashes, newlines and other control characters

Auth = tuple[str, str] | None


class InvalidSilence(ParamsError):
    """A silence request is invalid before anything is sent; the message names the field and the rule."""


class AlertmanagerError(CrispflowError):
    """Alertmanager did not answer, or refused. `operation` is what was tried, `status` the HTTP status (None:
    no answer at all)."""

    def __init__(self, operation: str, message: str, *, status: int | None = None) -> None:
        where = f" (HTTP {status})" if status is not None else ""
        super().__init__(f"alertmanager {operation}{where}: {message}")
        self.operation = operation
        self.status = status


class AlertmanagerAuthError(AlertmanagerError):
    """Alertmanager answered 401/403: the credentials are missing, wrong or not allowed."""


class SilenceNotFound(AlertmanagerError):
    """No silence with that id exists."""


def check_dedup_key(key: Any) -> str:
    """The key, if it can be a label value in an exact matcher and a filter: non-empty, no quotes, backslashes,
    newlines or other control characters, no surrounding spaces, at most 512 characters."""
    if not isinstance(key, str) or not key:
        raise InvalidSilence(f"{LABEL}: must be a non-empty string, got {key!r}")
    if _FORBIDDEN.search(key):
        raise InvalidSilence(f"{LABEL}: {key!r} must not contain quotes, backslashes, newlines or control characters")
    if key != key.strip() or len(key) > 512:
        raise InvalidSilence(f"{LABEL}: {key!r} must have no surrounding spaces and at most 512 characters")
    return key


def matches_key(silence: dict[str, Any], key: str) -> bool:
    """True if the silence's matchers are exactly one: `dedup_key` equal to `key` (not a regex, not negated)."""
    matchers = silence.get("matchers") or []
    return len(matchers) == 1 and matchers[0].get("name") == LABEL and matchers[0].get("value") == key \
        and matchers[0].get("isRegex") is False and matchers[0].get("isEqual", True) is True


def silence_alert(base_url: str, dedup_key: str, *, created_by: str, comment: str,
                  duration: timedelta = DEFAULT_DURATION, auth: Auth = None, timeout: float = 10) -> dict[str, Any]:
    """Silence every alert labelled `dedup_key=<dedup_key>` for `duration`, idempotently. Returns `{"id",
    "created", "ends_at"}`: `created` is False when an active or pending silence with exactly that matcher already
    existed (the one ending last is returned, unchanged)."""
    key = check_dedup_key(dedup_key)
    for field, value in (("created_by", created_by), ("comment", comment)):
        if not isinstance(value, str) or not value.strip():
            raise InvalidSilence(f"{field}: must be a non-empty string (Alertmanager requires it)")
    if not isinstance(duration, timedelta) or duration <= timedelta(0):
        raise InvalidSilence(f"duration: must be a positive timedelta, got {duration!r}")
    url = _base(base_url)
    found = _request("GET", url, "/api/v2/silences", "list silences", auth, timeout,
                     params={"filter": f'{LABEL}="{key}"'})
    if not isinstance(found, list):
        raise AlertmanagerError("list silences", "the answer is not a list of silences")
    live = [s for s in found if (s.get("status") or {}).get("state") in ("active", "pending") and matches_key(s, key)]
    if live:
        best = max(live, key=lambda s: str(s.get("endsAt") or ""))
        return {"id": best["id"], "created": False, "ends_at": best.get("endsAt")}
    now = datetime.now(UTC)
    body = {"matchers": [{"name": LABEL, "value": key, "isRegex": False, "isEqual": True}],
            "startsAt": _timestamp(now), "endsAt": _timestamp(now + duration),
            "createdBy": created_by.strip(), "comment": comment.strip()}
    answer = _request("POST", url, "/api/v2/silences", "create silence", auth, timeout, json=body)
    silence_id = answer.get("silenceID") if isinstance(answer, dict) else None
    if not isinstance(silence_id, str) or not silence_id:
        raise AlertmanagerError("create silence", "the answer has no silenceID")
    return {"id": silence_id, "created": True, "ends_at": body["endsAt"]}


def expire_silence(base_url: str, silence_id: str, *, auth: Auth = None, timeout: float = 10) -> None:
    """Expire the silence `silence_id` now (expiring an expired silence is a no-op); SilenceNotFound if unknown."""
    if not isinstance(silence_id, str) or not _UUID.match(silence_id):
        raise InvalidSilence(f"silence_id: {silence_id!r} is not a silence id (a UUID)")
    _request("DELETE", _base(base_url), f"/api/v2/silence/{silence_id}", "expire silence", auth, timeout)


def _base(base_url: str) -> str:
    parts = urlsplit(base_url) if isinstance(base_url, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidSilence("base_url: must be an http(s) URL of Alertmanager")
    if parts.username or parts.password:
        raise InvalidSilence("base_url: must not contain credentials (pass them as auth)")
    return base_url.rstrip("/")


def _timestamp(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _request(method: str, base_url: str, path: str, operation: str, auth: Auth, timeout: float,
             **kwargs: Any) -> Any:
    import requests

    try:
        response = requests.request(method, base_url + path, auth=auth, timeout=timeout,
                                    allow_redirects=False, **kwargs)
    except requests.RequestException as exc:  # the exception's text may hold the URL: name only its type
        raise AlertmanagerError(operation, f"no answer from {_origin(base_url)} ({type(exc).__name__})") from None
    status = response.status_code
    if status in (401, 403):
        raise AlertmanagerAuthError(operation, f"{_origin(base_url)} refused the credentials; check the "
                                               "Alertmanager connection's login and password", status=status)
    text = response.text[:300].strip()
    if operation == "expire silence" and (status == 404 or (status == 500 and "not found" in text)):
        raise SilenceNotFound(operation, f"not found: {text or path}", status=status)
    if not 200 <= status < 300:
        raise AlertmanagerError(operation, text or response.reason or "refused", status=status)
    if not response.content:
        return None
    try:
        return response.json()
    except ValueError:
        raise AlertmanagerError(operation, "the answer is not JSON", status=status) from None


def _origin(base_url: str) -> str:
    parts = urlsplit(base_url)
    return f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")
