"""Tighten-only overrides: a pipeline's policies live in its spec; a run may make them stricter, never looser.

A policy is a frozen dataclass filled from the spec (`crispflow.release.canary.CanaryPolicy`,
`crispflow.monitoring.episodes.DriftPolicy`, `crispflow.monitoring.drift.DriftSettings`). Each declares, per field,
the one direction a run may move it: `RAISE` (only up), `LOWER` (only down) or `FIXED` (not overridable; the
spec's own value is accepted as a no-op). `tighten` applies a run's overrides to the spec's policy and raises
ParamsError naming the field, the spec's value and the rule for an unknown field, a wrong type or a loosening.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import asdict, fields, replace
from typing import Any, Literal, TypeVar

from crispflow.errors import ParamsError

RAISE, LOWER, FIXED = "raise", "lower", "fixed"
Direction = Literal["raise", "lower", "fixed"]
P = TypeVar("P")

# The spec's `canary:` (CanaryPolicy): a run may only make a promotion harder. `alpha` and `tau` are fixed: a lower
# alpha also makes the error-rate guardrail and the rollback on labelled loss harder to trip (it cuts both ways),
# and tau tunes the test's power, not its validity. Raising min_requests/min_labels also makes a run wait longer
# before the guardrails judge; the Params schema bounds them.
CANARY: dict[str, Direction] = {
    "min_requests": RAISE, "min_labels": RAISE, "alpha": FIXED, "margin": LOWER, "tau": FIXED,
    "max_error_rate_increase": LOWER, "max_p95_ratio": LOWER, "p95_slack_ms": LOWER, "max_score_psi": LOWER,
}
# The spec's `drift_watch:` (DriftPolicy): detection may become more sensitive (fewer hot windows needed, a lower
# enter share, episodes that end later) and retraining more sparing (longer cooldown, smaller budget over a longer
# period, more new labels), never the reverse. `lookback` and `alias` say what is read, not how strictly: fixed.
DRIFT_WATCH: dict[str, Direction] = {
    "k": LOWER, "n": RAISE, "enter_share": LOWER, "exit_share": LOWER, "exit_windows": RAISE,
    "cooldown_hours": RAISE, "budget": LOWER, "budget_period_hours": RAISE, "min_new_labels": RAISE,
    "lookback": FIXED, "alias": FIXED,
}
# The spec's `drift_monitor:` (DriftSettings): only more sensitive detection (a higher alpha, a lower PSI floor and
# drift share). `min_rows` decides whether a window can be judged at all (validity, not strictness): fixed.
DRIFT_MONITOR: dict[str, Direction] = {"alpha": RAISE, "min_psi": LOWER, "min_drift_share": LOWER, "min_rows": FIXED}


def overrides_of(overrides: Any, field: str = "policy") -> dict[str, Any]:
    """A run's overrides as a dict: an object, JSON text (a template rendered without native objects) or None."""
    if overrides is None or (isinstance(overrides, str) and not overrides.strip()):
        return {}
    if isinstance(overrides, str):
        try:
            overrides = json.loads(overrides)
        except ValueError:
            raise ParamsError(f"{field}: {overrides!r} is not a JSON object") from None
    if not isinstance(overrides, Mapping):
        raise ParamsError(f"{field}: must be an object, got {type(overrides).__name__}")
    return dict(overrides)


def _typed(name: str, kind: str, value: Any) -> int | float:
    """The override as the field's type (int, float); ParamsError for anything else (bool, text, NaN, ...)."""
    number = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if kind == "int" and number and float(value).is_integer():
        return int(value)
    if kind == "float" and number:
        return float(value)
    wanted = "an integer" if kind == "int" else "a finite number"
    raise ParamsError(f"{name}: {value!r} must be {wanted}")


def tighten(base: P, overrides: Any, directions: Mapping[str, Direction], *, field: str = "policy") -> P:
    """`base` (the spec's policy) with a run's overrides applied, each only in its field's direction.

    Overriding a field with the spec's own value is a no-op (also for FIXED fields). The result is built with
    `dataclasses.replace`, so the policy's own cross-field rules (e.g. k <= n) still apply.
    """
    data = overrides_of(overrides, field)
    kinds = {f.name: str(getattr(f.type, "__name__", f.type)) for f in fields(base)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(kinds))
    if unknown:
        allowed = sorted(n for n in kinds if directions.get(n, FIXED) != FIXED)
        raise ParamsError(f"{field}: unknown field(s) {unknown}; a run may override {allowed}")
    changes: dict[str, Any] = {}
    for name, raw in data.items():
        spec_value, where = getattr(base, name), f"{field}.{name}"
        value = _typed(where, kinds[name], raw) if kinds[name] in ("int", "float") else raw
        rule = directions.get(name, FIXED)
        if value == spec_value:
            continue
        if rule == FIXED:
            raise ParamsError(f"{where}: {raw!r} differs from the spec's {spec_value!r}; it is not overridable by "
                              "a run (change it in the pipeline spec)")
        if (rule == RAISE and value < spec_value) or (rule == LOWER and value > spec_value):
            verb = "raise" if rule == RAISE else "lower"
            raise ParamsError(f"{where}: {raw!r} would loosen the spec's {spec_value!r}; a run may only {verb} it")
        changes[name] = value
    return replace(base, **changes) if changes else base  # type: ignore[type-var]


def digest(policy: Any) -> str:
    """sha256 of a policy dataclass's sorted, compact JSON (stable across processes and key order)."""
    canonical = json.dumps(asdict(policy), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def override_schema(properties: Mapping[str, Mapping[str, Any]], directions: Mapping[str, Direction]) -> dict[str, Any]:
    """The JSON schema of a run's overrides: only the overridable fields, with their types and structural bounds
    (`properties`: a pydantic model's JSON-schema properties), nothing else (`additionalProperties: false`)."""
    keep = ("type", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
    props = {}
    for name, rule in directions.items():
        if rule == FIXED:
            continue
        prop = {k: v for k, v in properties[name].items() if k in keep}
        verb = "raise" if rule == RAISE else "lower"
        prop["description"] = f"may only {verb} the spec's value"
        props[name] = prop
    return {"type": "object", "additionalProperties": False, "properties": props}
