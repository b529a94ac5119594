"""PseudonymHook: the keys from an Airflow connection (here the environment secrets backend), errors that name the
connection and never the secret."""

from __future__ import annotations

import json

import pytest

from crispflow.governance.pseudonyms import PseudonymError, generate_key
from crispflow_airflow.hooks.pseudonyms import PseudonymHook


def test_the_keys_come_from_the_connection_password(monkeypatch) -> None:
    current, older = generate_key("hk2"), generate_key("hk1")
    monkeypatch.setenv("AIRFLOW_CONN_CRISPFLOW_PSEUDONYMS",
                       json.dumps({"conn_type": "generic", "password": f"{current},{older}"}))
    pz = PseudonymHook().get_pseudonymizer()
    assert [k.key_id for k in pz.keys] == ["hk2", "hk1"] and pz.pseudonym("42").startswith("hk2:")


def test_a_missing_or_bad_connection_is_named_without_its_secret(monkeypatch) -> None:
    monkeypatch.delenv("AIRFLOW_CONN_NO_SUCH_KEYS", raising=False)
    with pytest.raises(PseudonymError, match="'no_such_keys': not found"):
        PseudonymHook("no_such_keys").get_pseudonymizer()
    monkeypatch.setenv("AIRFLOW_CONN_T_KEYS", json.dumps({"conn_type": "generic", "password": "hk1:dG9vc2hvcnQ"}))
    with pytest.raises(PseudonymError, match=r"'t_keys': .*at least 32 bytes") as caught:
        PseudonymHook("t_keys").get_pseudonymizer()
    assert "dG9vc2hvcnQ" not in str(caught.value)
    monkeypatch.setenv("AIRFLOW_CONN_T_KEYS", json.dumps({"conn_type": "generic"}))
    with pytest.raises(PseudonymError, match="password is empty"):
        PseudonymHook("t_keys").get_pseudonymizer()
