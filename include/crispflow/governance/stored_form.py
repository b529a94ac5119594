"""The form personal data is stored in past the raw landing, by the spec's PII policies.

`hmac` columns (the key by default) become keyed pseudonyms (crispflow.governance.pseudonyms: domain `entity` for
the key, the column's name for any other), `drop` columns are removed, `keep` columns stay as they are. The gate
checks raw values; everything it stores (validated rows, quarantine) and everything downstream (curated versions,
holdouts, batch scores, profiles) holds this form.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from crispflow.governance.pseudonyms import ENTITY, PseudonymError, Pseudonymizer, canonical_text

if TYPE_CHECKING:
    import pandas as pd

    from crispflow.spec import PipelineSpec


def domain_of(spec: PipelineSpec, column: str) -> str:
    """The pseudonym domain of a column: `entity` for the key (the same subject in every pipeline's key), the
    column's name for any other."""
    return ENTITY if column == spec.key else column


def require_keys(spec: PipelineSpec, pseudonyms: Pseudonymizer | None) -> Pseudonymizer | None:
    """`pseudonyms`, or PseudonymError naming the columns when the spec stores pseudonyms and no key is set."""
    if spec.pseudonymised_columns and pseudonyms is None:
        raise PseudonymError(f"pipeline {spec.name!r} stores {spec.pseudonymised_columns} as keyed pseudonyms "
                             "(pii: hmac, and the key by default), but no pseudonym key is configured (Airflow "
                             "connection crispflow_pseudonyms, password hk1:<base64url secret>)")
    return pseudonyms


def stored_form(spec: PipelineSpec, frame: pd.DataFrame, pseudonyms: Pseudonymizer | None) -> pd.DataFrame:
    """`frame` as it may be stored: `hmac` columns as pseudonyms under the current key (missing stays missing),
    `drop` columns removed; other columns untouched. The key column, when pseudonymised, sorts the rows (so
    Parquet row-group statistics locate a subject)."""
    keys = require_keys(spec, pseudonyms)
    out = frame.drop(columns=[c for c in spec.dropped_columns if c in frame.columns])
    for name in spec.pseudonymised_columns:
        if name in out.columns:
            assert keys is not None
            out[name] = pseudonymise_column(keys, out[name], domain_of(spec, name))
    if spec.key in spec.pseudonymised_columns and spec.key in out.columns:
        out = out.sort_values(spec.key, kind="stable").reset_index(drop=True)
    return out


def pseudonymise_column(keys: Pseudonymizer, series: pd.Series, domain: str) -> Any:
    """A column's pseudonyms (object array, None where missing): each distinct value is hashed once."""
    import numpy as np
    import pandas as pd

    codes, uniques = pd.factorize(series, use_na_sentinel=True)
    if pd.api.types.is_integer_dtype(uniques.dtype):  # canonical_text of integers, vectorised
        texts = np.asarray(uniques, dtype="int64").astype(str).tolist()
    else:
        texts = [canonical_text(u) for u in uniques]
    names = np.array([*keys.many(texts, domain), None], dtype=object)
    return names[codes]  # the sentinel -1 picks the trailing None


def record_form(spec_columns: dict[str, str], record: dict[str, Any], pseudonyms: Pseudonymizer,
                key_id: str | None = None) -> dict[str, Any]:
    """One record (a served request) with its pseudonymised fields replaced: `spec_columns` maps field → domain.
    `key_id` picks the key the model was trained under (None: the current one)."""
    out = dict(record)
    for name, domain in spec_columns.items():
        value = out.get(name)
        if value is not None and name in out:
            out[name] = pseudonyms.pseudonym(canonical_text(value), domain, key_id)
    return out


def manifest_entry(spec: PipelineSpec, pseudonyms: Pseudonymizer | None) -> dict[str, Any]:
    """What a dataset manifest records about the stored form: the key id, and each column's policy."""
    return {"key_id": pseudonyms.key_id if pseudonyms is not None and spec.pseudonymised_columns else None,
            "hmac": spec.pseudonymised_columns, "drop": spec.dropped_columns,
            "keep": {c.name: c.pii_reason for c in spec.columns if spec.pii_policy(c.name) == "keep"}}



PSEUDONYM_KEY_TAG = "crispflow.pseudonym_key"
PSEUDONYM_FIELDS_TAG = "crispflow.pseudonymised_fields"


def serving_tags(spec: PipelineSpec, manifest: dict[str, Any]) -> dict[str, str]:
    """Model-version tags that tell the model server which features to pseudonymise, and under which key (the
    one the training data was stored under), before it scores or logs them: `{field: domain}` as JSON. (The
    entity key, `crispflow.entity_key`, is always pseudonymised under the current key before it is logged.)"""
    import json

    key_id = (manifest.get("stored_form") or {}).get("key_id")
    if not key_id:
        return {}
    fields = {name: domain_of(spec, name) for name in spec.pseudonymised_columns if name in spec.feature_columns}
    return {PSEUDONYM_KEY_TAG: key_id, PSEUDONYM_FIELDS_TAG: json.dumps(fields, sort_keys=True)}


def parse_serving_tags(tags: dict[str, str]) -> tuple[str | None, dict[str, str]]:
    """(key id, {field: domain}) from a version's tags; (None, {}) for a version trained on clear values."""
    import json

    key_id = (tags.get(PSEUDONYM_KEY_TAG) or "").strip() or None
    try:
        fields = json.loads(tags.get(PSEUDONYM_FIELDS_TAG) or "{}")
    except ValueError:
        raise PseudonymError(f"tag {PSEUDONYM_FIELDS_TAG}: not JSON") from None
    if not isinstance(fields, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in fields.items()):
        raise PseudonymError(f"tag {PSEUDONYM_FIELDS_TAG}: must map field names to domains")
    if fields and key_id is None:
        raise PseudonymError(f"tag {PSEUDONYM_KEY_TAG}: missing, but {PSEUDONYM_FIELDS_TAG} lists fields")
    return key_id, fields
