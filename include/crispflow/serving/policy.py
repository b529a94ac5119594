"""Traffic policy: which arm (champion, canary) scores a record, and which records are mirrored to the shadow.

The policy lives in the registry: the aliases `champion`, `canary` and `shadow`, and the registered model's tags
`crispflow.canary_share`, `crispflow.shadow_share` and `crispflow.entity_key`. The server re-reads them at every
poll. Pure functions only (no MLflow, no I/O): everything here is unit-tested.

Canary assignment is a sticky hash: the same entity (e.g. one `loan_id`) always lands in the same arm while the
share is unchanged, and raising the share only moves entities from champion to canary, never back. A record without
an entity is assigned by its (random) request id. Shadow mirroring hashes the request id with another salt, so it
is independent of the canary split.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from crispflow.model.registry import CANARY, CANARY_SHARE_TAG, CHAMPION, ENTITY_KEY_TAG, SHADOW, SHADOW_SHARE_TAG

ALIASES = (CHAMPION, CANARY, SHADOW)
_SCALE = float(16**15)


def unit_hash(*parts: str) -> float:
    """A stable number in [0, 1) from `parts`: the first 15 hex digits of sha256 of the parts joined by ':'."""
    digest = hashlib.sha256(":".join(parts).encode()).hexdigest()
    return int(digest[:15], 16) / _SCALE


def canary_bucket(model: str, entity: str) -> float:
    """Where `entity` falls on [0, 1) for `model`; it goes to the canary iff this is < canary_share."""
    return unit_hash(model, entity)


@dataclass(frozen=True)
class TrafficPolicy:
    """The policy read from the registry at one poll. `problems` names tags that were ignored, and why."""

    canary_share: float = 0.0
    shadow_share: float = 0.0
    entity_key: str | None = None
    problems: tuple[str, ...] = field(default=())

    def arm(self, model: str, entity: str | None, request_id: str, *, has_canary: bool) -> str:
        """`canary` or `champion` for one record (sticky by entity, else by request id)."""
        if not has_canary or self.canary_share <= 0.0:
            return CHAMPION
        return CANARY if canary_bucket(model, entity if entity is not None else request_id) < self.canary_share \
            else CHAMPION

    def mirrored(self, model: str, request_id: str, *, has_shadow: bool) -> bool:
        """Whether a record is also scored by the shadow model (off the response path, never returned)."""
        if not has_shadow or self.shadow_share <= 0.0:
            return False
        return unit_hash(model, SHADOW, request_id) < self.shadow_share

    def entity_of(self, record: Mapping[str, object]) -> str | None:
        """The record's entity as text (None when there is no entity key or the record has no value for it)."""
        if self.entity_key is None:
            return None
        value = record.get(self.entity_key)
        return None if value is None else str(value)

    def to_dict(self) -> dict[str, object]:
        return {"canary_share": self.canary_share, "shadow_share": self.shadow_share,
                "entity_key": self.entity_key, "problems": list(self.problems)}


def _share(tags: Mapping[str, str], tag: str, problems: list[str]) -> float:
    raw = tags.get(tag)
    if raw is None or str(raw).strip() == "":
        return 0.0
    try:
        value = float(raw)
    except ValueError:
        problems.append(f"{tag}: {raw!r} is not a number (rule: share in [0, 1]); using 0")
        return 0.0
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        problems.append(f"{tag}: {raw!r} is outside [0, 1] (rule: share in [0, 1]); using 0")
        return 0.0
    return value


def policy_from_tags(tags: Mapping[str, str]) -> TrafficPolicy:
    """The policy from a registered model's tags. A bad tag never stops serving: it is ignored (share 0) and
    reported in `problems`."""
    problems: list[str] = []
    canary = _share(tags, CANARY_SHARE_TAG, problems)
    shadow = _share(tags, SHADOW_SHARE_TAG, problems)
    entity_key = (tags.get(ENTITY_KEY_TAG) or "").strip() or None
    return TrafficPolicy(canary, shadow, entity_key, tuple(problems))
