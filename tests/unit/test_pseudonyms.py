"""crispflow.governance.pseudonyms: keyed, rotating pseudonyms; strict subject keys; no value in any message."""

from __future__ import annotations

import hashlib
import hmac

import numpy as np
import pandas as pd
import pytest

from crispflow.governance.pseudonyms import (
    ENTITY,
    PseudonymError,
    Pseudonymizer,
    PseudonymKey,
    canonical_text,
    generate_key,
    is_pseudonym,
    parse_keys,
    subject_key,
)
from crispflow.governance.stored_form import pseudonymise_column

OLD, NEW = generate_key("hk1"), generate_key("hk2")


def test_a_pseudonym_is_the_keyed_hmac_named_by_its_key() -> None:
    key = PseudonymKey("hk1", b"k" * 32)
    p = Pseudonymizer([key]).pseudonym("12345")
    expected = hmac.new(b"k" * 32, b"entity\x0012345", hashlib.sha256).hexdigest()[:32]
    assert p == f"hk1:{expected}" and is_pseudonym(p)
    assert hashlib.sha256(b"12345").hexdigest()[:32] not in p  # not the unkeyed hash
    assert Pseudonymizer([PseudonymKey("hk1", b"j" * 32)]).pseudonym("12345") != p  # another key, another name
    assert Pseudonymizer([key]).pseudonym("12345", domain="addr_state") != p  # domains do not link
    for secret in (b"s" * 64, b"long" * 40):  # a block-sized key, and one longer than a block (hashed first)
        mac = hmac.new(secret, "addr_state\x00São Paulo".encode(), hashlib.sha256).hexdigest()[:32]
        assert Pseudonymizer([PseudonymKey("hk1", secret)]).pseudonym("São Paulo", "addr_state") == f"hk1:{mac}"


def test_keys_rotate_and_old_pseudonyms_stay_findable() -> None:
    old = Pseudonymizer.from_text(OLD)
    both = Pseudonymizer.from_text(f"{NEW},{OLD}")
    written_before = old.pseudonym("CA", "addr_state")
    assert both.key_id == "hk2" and both.pseudonym("CA", "addr_state").startswith("hk2:")
    assert written_before in both.all_pseudonyms("CA", "addr_state")
    assert both.all_pseudonyms("CA", "addr_state")[0] == both.pseudonym("CA", "addr_state")


def test_a_column_keeps_missing_values_and_matches_typed_reads() -> None:
    pz = Pseudonymizer.from_text(OLD)
    ints = pseudonymise_column(pz, pd.Series([7, 7, 12], dtype="int64"), ENTITY).tolist()
    widened = pseudonymise_column(pz, pd.Series([7.0, np.nan, 12.0]), ENTITY).tolist()  # Parquet widens ints
    assert ints[0] == ints[1] == widened[0] and ints[2] == widened[2] and widened[1] is None
    assert pseudonymise_column(pz, pd.Series(["a", None, pd.NA]), "c").tolist() == [pz.pseudonym("a", "c"), None, None]
    assert ints[0] == pz.pseudonym(subject_key("7", "int"))  # the CLI's key finds the published row


@pytest.mark.parametrize(("text", "rule"), [
    ("", "empty"),
    ("hk1", "not <key id>:<base64url secret>"),
    ("hk1:c2hvcnQ", "at least 32 bytes"),
    ("key1:" + "A" * 44, "must look like hk1"),
    (f"{OLD},{OLD}", "repeated"),
    ("hk1:!!!not base64!!!", "not base64url"),
])
def test_bad_keys_name_the_rule_never_the_secret(text: str, rule: str) -> None:
    with pytest.raises(PseudonymError, match=rule) as caught:
        parse_keys(text)
    secret = text.partition(":")[2]
    assert len(secret) < 8 or secret not in str(caught.value)


def test_a_key_never_shows_its_secret() -> None:
    pz = Pseudonymizer.from_text(OLD)
    assert OLD.partition(":")[2] not in repr(pz) + repr(pz.keys[0])
    with pytest.raises(PseudonymError, match="hk9"):
        pz.pseudonym("x", key_id="hk9")


@pytest.mark.parametrize(("raw", "kind", "rule"), [
    ("", "int", "empty"),
    ("1" * 257, "string", "longer than 256"),
    (" 42", "int", "whitespace"),
    ("42\n", "string", "whitespace"),
    ("0042", "int", "leading zeros"),
    ("-0", "int", "leading zeros"),
    ("4.2", "int", "not a whole number"),
    ("٤٢", "int", "not a whole number"),  # Arabic-Indic digits: int() would take them
    ("ab\u200bc", "string", "invisible"),
    ("Jose\u0301", "string", "NFC"),
])
def test_subject_keys_are_strict_and_errors_do_not_echo_them(raw: str, kind: str, rule: str) -> None:
    with pytest.raises(PseudonymError, match=rule) as caught:
        subject_key(raw, kind)
    assert not raw.strip() or raw.strip() not in str(caught.value)


def test_subject_keys_accepted_in_canonical_form() -> None:
    assert subject_key("42", "int") == "42" and subject_key("-7", "int") == "-7" and subject_key("0", "int") == "0"
    assert subject_key("José", "string") == "José"
    with pytest.raises(PseudonymError, match="must be text"):
        subject_key(42, "int")  # type: ignore[arg-type]
    assert canonical_text(np.int64(42)) == canonical_text(42.0) == "42" and canonical_text(True) == "true"
