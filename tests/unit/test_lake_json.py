"""crispflow.lake.json_safe: the one conversion to strict JSON (XCom, manifests, drift reports)."""

from __future__ import annotations

import json
import math
from types import MappingProxyType

import numpy as np

from crispflow.lake import json_safe


def test_numpy_scalars_become_plain_numbers_and_non_finite_becomes_null() -> None:
    out = json_safe({"i": np.int64(3), "f": np.float32(0.5), "b": np.bool_(True), "nan": math.nan,
                     "inf": np.float64(-np.inf), "nested": [np.int8(1), (np.float64(2.0), None)]})
    assert out == {"i": 3, "f": 0.5, "b": True, "nan": None, "inf": None, "nested": [1, [2.0, None]]}
    assert type(out["i"]) is int and type(out["b"]) is bool and type(out["f"]) is float
    json.dumps(out, allow_nan=False)  # strict JSON: raises on any NaN left behind


def test_any_mapping_and_its_keys_become_a_dict_with_string_keys() -> None:
    out = json_safe(MappingProxyType({2: "a", True: "b", "s": {2.5: np.int64(1)}}))
    assert out == {"2": "a", "True": "b", "s": {"2.5": 1}}
