"""Jinja filters for the crispflow pages: numbers, times, status badges."""

from __future__ import annotations

import math
from typing import Any

DASH = "—"
BADGES = {  # status word → badge colour class
    "blessed": "ok", "forced": "warn", "not_blessed": "bad", "not_judged": "muted",
    "confirmed": "ok", "intent": "warn", "abandoned": "muted",
    "drift": "bad", "no_drift": "ok", "insufficient_data": "muted",
    "critical": "bad", "high": "warn", "warning": "info",
    "success": "ok", "failed": "bad", "running": "info", "queued": "muted", "skipped": "muted",
    "passed": "ok", "fail": "bad", "true": "ok", "false": "bad",
}


def num(value: Any, digits: int = 3) -> str:
    """A number with `digits` significant digits ("—" when missing)."""
    if value is None or isinstance(value, bool):
        return DASH if value is None else str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if math.isfinite(value) else str(value)
    return str(value)


def pct(value: Any) -> str:
    return f"{100 * value:.1f}%" if isinstance(value, int | float) and not isinstance(value, bool) else DASH


def ci(metric: Any) -> str:
    """`value [low, high]` of a metric dict with value/ci_low/ci_high."""
    if not isinstance(metric, dict) or metric.get("value") is None:
        return DASH
    text = num(metric.get("value"))
    if metric.get("ci_low") is not None and metric.get("ci_high") is not None:
        text += f" [{num(metric['ci_low'])}, {num(metric['ci_high'])}]"
    return text


def when(value: Any) -> str:
    """An ISO time as `YYYY-MM-DD HH:MM` (UTC as stored)."""
    if not value:
        return DASH
    text = str(value).replace("T", " ")
    return text[:16] if len(text) >= 16 and text[4] == "-" else text


def badge(value: Any) -> str:
    """The badge class of a status word."""
    return BADGES.get(str(value).lower(), "muted")


def words(value: Any) -> str:
    return str(value).replace("_", " ") if value is not None else DASH


def plugin_href(path: Any, base: str) -> str:
    """A link of the library's (a path under the plugin, `/crispflow/...` or relative to it; or an http(s) URL)
    as an href of this deployment; anything else (`javascript:`, ...) is no link."""
    text = str(path or "")
    if text.startswith(("http://", "https://")):
        return text
    prefix = "/crispflow"
    if text.startswith(prefix + "/"):
        return base.removesuffix(prefix) + text
    if text.startswith("/") and not text.startswith("//"):
        return base + text
    if text and ":" not in text.split("/", 1)[0]:
        return f"{base}/{text}"
    return "#"


FILTERS = {"plugin_href": plugin_href, "num": num, "pct": pct, "ci": ci, "when": when, "badge": badge, "words": words}
