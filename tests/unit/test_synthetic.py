"""crispflow.model.synthetic: the input example logged with a model is made of medians and modes, never a row."""

from __future__ import annotations

import pandas as pd
import pytest

from crispflow.model.features import features
from crispflow.model.synthetic import UNSEEN, input_example
from crispflow.settings import project_root
from crispflow.spec import load_spec


@pytest.fixture(scope="module")
def loans() -> pd.DataFrame:
    return pd.read_parquet(project_root() / "include" / "data" / "lending_club.parquet")


def test_the_input_example_is_one_synthetic_row_with_the_frame_dtypes(loans) -> None:
    spec = load_spec("lending_club")
    frame = features(spec, loans)
    example = input_example(spec, frame)
    assert list(example.columns) == list(frame.columns) and len(example) == 1
    assert example.dtypes.to_dict() == frame.dtypes.to_dict()  # the signature real rows would give
    row = example.iloc[0]
    assert row["addr_state"] == UNSEEN  # PII: no training value at all
    assert row["int_rate"] == frame["int_rate"].median()
    assert row["term"] == frame["term"].mode().min()
    assert row["funded_amnt"] == round(frame["funded_amnt"].median())
    real = frame.astype(str).apply("|".join, axis=1)
    assert "|".join(example.astype(str).iloc[0]) not in set(real)  # not a real row


def test_a_pii_integer_column_is_missing_and_a_datetime_median(loans) -> None:
    spec = load_spec("lending_club")
    data = spec.model_dump()
    for column in data["columns"]:
        if column["name"] == "funded_amnt":
            column["pii"] = True
    pii_spec = type(spec).model_validate(data)
    frame = features(pii_spec, loans)
    example = input_example(pii_spec, frame)
    assert pd.isna(example.iloc[0]["funded_amnt"]) and example["funded_amnt"].dtype == "float64"
