"""crispflow.lake: json_safe, the one conversion to strict JSON (XCom, manifests, drift reports); private local
writes."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import MappingProxyType

import numpy as np

from crispflow.lake import create_exclusive, json_safe, write_atomic


def test_numpy_scalars_become_plain_numbers_and_non_finite_becomes_null() -> None:
    out = json_safe({"i": np.int64(3), "f": np.float32(0.5), "b": np.bool_(True), "nan": math.nan,
                     "inf": np.float64(-np.inf), "nested": [np.int8(1), (np.float64(2.0), None)]})
    assert out == {"i": 3, "f": 0.5, "b": True, "nan": None, "inf": None, "nested": [1, [2.0, None]]}
    assert type(out["i"]) is int and type(out["b"]) is bool and type(out["f"]) is float
    json.dumps(out, allow_nan=False)  # strict JSON: raises on any NaN left behind


def test_any_mapping_and_its_keys_become_a_dict_with_string_keys() -> None:
    out = json_safe(MappingProxyType({2: "a", True: "b", "s": {2.5: np.int64(1)}}))
    assert out == {"2": "a", "True": "b", "s": {"2.5": 1}}


def test_local_lake_files_are_private_and_existing_folders_keep_their_mode(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    target = tmp_path / "curated" / "p" / "v1" / "data.parquet"
    write_atomic(target, b"rows")
    write_atomic(target, b"rows again")  # replaced whole, still private
    assert create_exclusive(tmp_path / "ledger" / "p" / "0001.json", b"{}")
    assert not create_exclusive(tmp_path / "ledger" / "p" / "0001.json", b"{}")
    for path in (target, tmp_path / "ledger" / "p" / "0001.json"):
        assert path.stat().st_mode & 0o777 == 0o600
    for folder in (tmp_path / "curated", target.parent, tmp_path / "ledger" / "p"):
        assert folder.stat().st_mode & 0o777 == 0o700
    assert tmp_path.stat().st_mode & 0o777 == 0o755  # not created here: left alone
    assert target.read_bytes() == b"rows again"
    assert sorted(p.name for p in target.parent.iterdir()) == ["data.parquet"]  # no temporary file left
