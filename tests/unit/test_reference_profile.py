"""Reference profiles: bins, categories, PII pseudonyms, labels/scores, JSON round trip and validation."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from support.keys import session_keys

from crispflow.governance.pseudonyms import is_pseudonym
from crispflow.governance.stored_form import stored_form
from crispflow.model.reference_profile import (
    FORMAT,
    DriftInputError,
    build_profile,
    category_counts,
    check_profile,
    load_profile,
    pseudonym,
    save_profile,
)
from crispflow.monitoring.drift import compute_drift
from crispflow.spec import load_spec

DATA = "include/data/lending_club.parquet"


@pytest.fixture(scope="module")
def loans() -> pd.DataFrame:
    from crispflow.settings import project_root

    return pd.read_parquet(project_root() / DATA)


def test_numeric_bins_cover_the_data_with_outer_and_missing_bins() -> None:
    values = np.r_[np.arange(1000, dtype=float), np.nan, np.inf, -np.inf]
    profile = build_profile(None, pd.DataFrame({"x": values}), bins=10)
    feat = profile["features"]["x"]
    edges, counts = feat["edges"], feat["counts"]
    assert edges[0] == 0.0 and edges[-1] > 999.0 and len(edges) == 11
    assert len(counts) == len(edges) + 2 and sum(counts) == values.size
    assert counts[-1] == 1  # NaN has its own bin
    assert counts[0] == 1 and counts[-2] == 1  # -inf below the minimum, +inf above the maximum
    assert all(c == 100 for c in counts[1:-2])  # equal-frequency bins
    assert feat["min"] == 0.0 and feat["max"] == 999.0 and not feat["constant"]


def test_tied_and_constant_columns_collapse_their_bins() -> None:
    frame = pd.DataFrame({"binary": [0] * 900 + [1] * 100, "constant": [7.0] * 1000})
    feats = build_profile(None, frame)["features"]
    assert feats["binary"]["edges"][0] == 0.0 and len(feats["binary"]["edges"]) == 3  # 0, 1, just above 1
    assert feats["binary"]["counts"] == [0, 900, 100, 0, 0]
    assert feats["constant"]["constant"] and feats["constant"]["counts"] == [0, 1000, 0, 0]


def test_categoricals_keep_top_k_then_other_and_missing() -> None:
    values = ["a"] * 50 + ["b"] * 30 + ["c"] * 15 + ["d"] * 5 + [None] * 3
    feat = build_profile(None, pd.DataFrame({"c": values}), top_k=2)["features"]["c"]
    assert feat["categories"] == ["a", "b"] and feat["counts"] == [50, 30, 20, 3]
    counts, unseen = category_counts(pd.Series(["b", "z", None, "a", "z"]), feat["categories"])
    assert counts.tolist() == [1, 1, 2, 1] and unseen == ["z"]  # a, b, other (z twice), missing
    mixed = pd.Series([1, "1", 2.5, None, True], dtype=object)  # counted by their text, as pandas reads them
    assert category_counts(mixed, ["1", "True"])[0].tolist() == [2, 1, 1, 1]


def test_spec_chooses_features_types_labels_and_redacts_pii(loans: pd.DataFrame) -> None:
    spec = load_spec("lending_club")
    keys = session_keys()
    profile = build_profile(spec, stored_form(spec, loans, keys))  # training data: as curated versions store it
    assert list(profile["features"]) == [c for c in spec.feature_columns if c != "application_month"]
    assert profile["features"]["term"]["kind"] == "categorical"
    assert profile["features"]["int_rate"]["kind"] == "numeric"
    state = profile["features"]["addr_state"]
    assert state["redacted"] and not state["hashed"] and all(is_pseudonym(c) for c in state["categories"])
    assert keys.pseudonym("CA", "addr_state") in state["categories"]
    assert pseudonym("CA") not in json.dumps(profile) and '"CA"' not in json.dumps(profile)
    report = compute_drift(profile, stored_form(spec, loans.head(2000), keys))["features"]["addr_state"]
    assert report["status"] == "ok" and report["bins"]["labels"][0] == "<redacted 1>"
    assert "CA" not in json.dumps(report) and report["unseen"]["values"] in ([], ["<redacted>"])
    assert profile["label"] == {"rows": len(loans), "positives": int((loans["Class"] == "bad").sum())}
    assert profile["pipeline"]["spec_hash"] == spec.spec_hash()


def test_scores_and_labels_give_prediction_and_performance() -> None:
    rng = np.random.default_rng(0)
    labels = rng.random(4000) < 0.2
    scores = np.clip(0.2 + 0.3 * labels + rng.normal(0, 0.15, labels.size), 0, 1)
    profile = build_profile(None, pd.DataFrame({"x": rng.normal(size=labels.size)}), scores, labels)
    assert profile["prediction"]["kind"] == "numeric" and sum(profile["prediction"]["counts"]) == labels.size
    perf = profile["performance"]
    assert 0.85 < perf["roc_auc"]["value"] < 1.0 and 0 < perf["roc_auc"]["se"] < 0.02
    assert perf["recall"]["ci_low"] < perf["recall"]["value"] < perf["recall"]["ci_high"]


def test_profile_is_deterministic_json_and_round_trips(tmp_path, loans: pd.DataFrame) -> None:
    spec = load_spec("lending_club")
    first, second = build_profile(spec, loans), build_profile(spec, loans.copy())
    path = save_profile(first, tmp_path / "p" / "profile.json")
    text = path.read_text()
    assert save_profile(second, tmp_path / "p" / "profile.json").read_text() == text  # same bytes, rerun-safe
    assert load_profile(path) == json.loads(text) and json.loads(text)["format"] == FORMAT


@pytest.mark.parametrize(
    ("profile", "message"),
    [
        ([], "expected a JSON object"),
        ({"format": "other"}, "format"),
        ({"format": FORMAT, "features": {}}, "features"),
        ({"format": FORMAT, "rows": 1, "features": {"x": {"kind": "weird"}}}, "features.x.kind"),
        ({"format": FORMAT, "rows": 1, "features": {"x": {"kind": "numeric", "edges": [1.0], "counts": [1],
                                                          "centroids": []}}}, "features.x.counts"),
    ],
)
def test_bad_profiles_are_rejected_naming_the_field(profile: object, message: str) -> None:
    with pytest.raises(DriftInputError, match=message):
        check_profile(profile)


def test_load_profile_names_the_file(tmp_path) -> None:
    with pytest.raises(DriftInputError, match="no such profile"):
        load_profile(tmp_path / "absent.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DriftInputError, match=r"bad\.json: not a JSON profile"):
        load_profile(bad)


def test_bad_inputs_to_build_profile() -> None:
    with pytest.raises(DriftInputError, match="labels: must be boolean"):
        build_profile(None, pd.DataFrame({"x": [1.0, 2.0]}), labels=["good", "bad"])
    with pytest.raises(DriftInputError, match="scores: 1 values for 2 rows"):
        build_profile(None, pd.DataFrame({"x": [1.0, 2.0]}), scores=[0.5])
    with pytest.raises(DriftInputError, match="no feature columns"):
        build_profile(None, pd.DataFrame({"t": pd.to_datetime(["2026-01-01"])}))
