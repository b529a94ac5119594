"""Rows as the model server logs them, for the prediction store's tests."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
MODEL = "credit-risk"


def prediction(i: int, ts: datetime, **extra: Any) -> dict[str, Any]:
    row = {
        "request_id": f"req-{i}",
        "ts": ts,
        "model": MODEL,
        "version": "3",
        "alias": "champion",
        "served": True,
        "entity": f"cust-{i % 7}",
        "score": i / 1000,
        "latency_ms": 1.5,
        "status": "ok",
        "features": {"int_rate": 0.1 + i / 1e4, "term": 36 + i % 2 * 24, "grade": "ABC"[i % 3]},
    }
    row.update(extra)
    return row


def feedback(request_id: str, label: int, ts: datetime) -> dict[str, Any]:
    return {"request_id": request_id, "label": label, "ts": ts}
