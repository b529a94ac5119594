"""A traffic generator: replays rows through the model server as clients would, and reports their true labels
later (delayed feedback), so canary analysis and drift monitoring see realistic, labelled traffic.
"""

from __future__ import annotations

import heapq
import math
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd
    import requests


@dataclass
class TrafficStats:
    """What a replay did: requests and records sent, answered, failed, labels fed back, records per arm."""

    requests: int = 0
    records: int = 0
    failed: int = 0
    feedback: int = 0
    by_arm: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)

    def error(self, message: str) -> None:
        """Keep the first few error messages (a dead server would otherwise repeat one per request)."""
        if len(self.errors) < 5:
            self.errors.append(message)

    def as_dict(self) -> dict[str, Any]:
        return {"requests": self.requests, "records": self.records, "failed": self.failed,
                "feedback": self.feedback, "by_arm": dict(self.by_arm), "errors": self.errors[:5]}


def _json_records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as JSON-ready dicts: NaN/NaT/NA become null, numpy scalars plain Python, timestamps ISO text."""
    out = []
    for row in frame.to_dict(orient="records"):
        clean = {}
        for key, value in row.items():
            if hasattr(value, "item") and not isinstance(value, str):
                value = value.item()
            if value is None or (isinstance(value, float) and math.isnan(value)) or str(value) in ("<NA>", "NaT"):
                value = None
            elif hasattr(value, "isoformat"):
                value = value.isoformat()
            clean[key] = value
        out.append(clean)
    return out


def replay(server_url: str, rows: pd.DataFrame, labels: list[Any], *, batch: int = 10, rate: float | None = None,
           feedback_delay: float = 2.0, stop: threading.Event | None = None,
           session: requests.Session | None = None, model: str | None = None,
           token: str | None = None) -> TrafficStats:
    """POST `rows` to `/predict` in batches (at most `rate` requests per second), then each label to `/feedback`
    `feedback_delay` seconds after its prediction. Returns once every label is fed back (or `stop` is set).
    `model`: a registered model's routes (`/models/{model}/...`) instead of the server's default model; `token`: the
    bearer token sent (scopes predict and feedback; its name is recorded as the labels' sender)."""
    import requests

    if model is not None:
        server_url = f"{server_url}/models/{model}"

    if len(rows) != len(labels):
        raise ValueError(f"rows ({len(rows)}) and labels ({len(labels)}) differ in length")
    http = session or requests.Session()
    if token:
        http.headers["Authorization"] = f"Bearer {token}"
    stats, due = TrafficStats(), []  # due: heap of (time, request_id, label)
    records = _json_records(rows)
    interval = 1.0 / rate if rate else 0.0
    stop = stop or threading.Event()

    def send_feedback(force: bool = False) -> None:
        ready = []
        while due and (force or due[0][0] <= time.monotonic()):
            _, request_id, label = heapq.heappop(due)
            ready.append({"request_id": request_id, "label": label.item() if hasattr(label, "item") else label})
        for start in range(0, len(ready), 500):
            chunk = ready[start:start + 500]
            resp = http.post(f"{server_url}/feedback", json=chunk, timeout=30)
            if resp.status_code >= 300:
                stats.error(f"feedback {resp.status_code}: {resp.text[:200]}")
            else:
                stats.feedback += len(chunk)

    for start in range(0, len(records), batch):
        if stop.is_set():
            break
        began = time.monotonic()
        chunk = records[start:start + batch]
        try:
            resp = http.post(f"{server_url}/predict", json={"records": chunk}, timeout=30)
        except requests.RequestException as exc:
            stats.failed += len(chunk)
            stats.error(f"predict: {exc}")
            continue
        stats.requests += 1
        if resp.status_code != 200:
            stats.failed += len(chunk)
            stats.error(f"predict {resp.status_code}: {resp.text[:200]}")
        else:
            for offset, item in enumerate(resp.json()["predictions"]):
                stats.records += 1
                stats.by_arm[f"{item['alias']} v{item['model_version']}"] += 1
                heapq.heappush(due, (time.monotonic() + feedback_delay, item["request_id"], labels[start + offset]))
        send_feedback()
        if interval:
            time.sleep(max(0.0, interval - (time.monotonic() - began)))
    while due and not stop.is_set():  # the last labels arrive after their delay
        time.sleep(min(0.5, max(0.0, due[0][0] - time.monotonic())))
        send_feedback()
    return stats


def stack_token(home: Any, kind: str = "client") -> str | None:
    """The model server token `crispflow up` generated in `home`: "client" (`demo-client`: predict, feedback) or
    "admin" (`admin`: admin, metrics); None if `up` never ran there."""
    from crispflow.stack.credentials import load_secrets

    creds = load_secrets(home)
    if creds is None:
        return None
    return (creds.serve_admin_token if kind == "admin" else creds.serve_client_token) or None


def bearer(token: str | None) -> dict[str, str]:
    """The Authorization header of a token ({} without one)."""
    return {"Authorization": f"Bearer {token}"} if token else {}
