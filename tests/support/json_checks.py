"""Checks that a result is plain JSON: what the lake, XCom and MLflow artifacts store."""

from __future__ import annotations

import json


def plain(obj: object) -> bool:
    """True if obj holds only dict (str keys)/list/str/int/float/bool/None: no numpy scalars, no tuples."""
    if isinstance(obj, dict):
        return all(type(k) is str and plain(v) for k, v in obj.items())
    if isinstance(obj, list):
        return all(plain(v) for v in obj)
    return type(obj) in (str, int, float, bool, type(None))


def strict_json(obj: object) -> bool:
    """`plain`, and strict JSON: a NaN or infinity raises ValueError (json.dumps with allow_nan=False)."""
    return plain(obj) and bool(json.dumps(obj, allow_nan=False))
