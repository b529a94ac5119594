"""Keyed pseudonyms (HMAC-SHA256) of subjects' keys and PII values.

The same subject gets the same pseudonym wherever it is stored; without the key nobody can compute one, so a
pseudonym of a small domain (a state code, a loan id) cannot be reversed by trying every value, as an unkeyed
hash can. A pseudonym names its key (`hk1:<32 hex>`), so keys rotate: the first key of a `Pseudonymizer` writes
new pseudonyms, the older ones still find what was written under them.

Keys travel as text, `hk2:<base64url secret>,hk1:<base64url secret>` (current first), from a secret store (an
Airflow connection or secrets backend), never from the lake or a run's conf. Errors name the field and the rule,
never a value or a secret.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import secrets
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from crispflow.errors import CrispflowError

KEY_ID = re.compile(r"hk[1-9][0-9]{0,5}")
PSEUDONYM = re.compile(r"(hk[1-9][0-9]{0,5}):([0-9a-f]{32})")
MIN_SECRET_BYTES = 32
DIGEST_HEX = 32  # 128 bits of HMAC-SHA256
MAX_KEY_CHARS = 256  # a subject key longer than this is a caller's mistake
ENTITY = "entity"  # the domain of entity keys; a PII column's domain is its name
KEYS_ENV = "CRISPFLOW_PSEUDONYM_KEYS"  # the keys outside Airflow (the model server, the erase CLI)


class PseudonymError(CrispflowError):
    """A key or a value that cannot be pseudonymised; the message names the field and the rule, never the value."""


@dataclass(frozen=True, repr=False)
class PseudonymKey:
    """One HMAC key and its id (`hk<n>`)."""

    key_id: str
    secret: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.key_id, str) or not KEY_ID.fullmatch(self.key_id):
            raise PseudonymError(f"pseudonym key id: must look like hk1, hk2, ... (got {self.key_id!r})")
        if len(self.secret) < MIN_SECRET_BYTES:
            raise PseudonymError(f"pseudonym key {self.key_id}: the secret must be at least {MIN_SECRET_BYTES} "
                                 "bytes")

    def __repr__(self) -> str:
        return f"PseudonymKey({self.key_id!r}, <secret>)"


def generate_key(key_id: str = "hk1") -> str:
    """A new key as text (`hk1:<base64url of 32 random bytes>`), for a secret store."""
    key = PseudonymKey(key_id, secrets.token_bytes(MIN_SECRET_BYTES))
    return f"{key.key_id}:{base64.urlsafe_b64encode(key.secret).decode()}"


def parse_keys(text: str) -> tuple[PseudonymKey, ...]:
    """Keys from `hk2:<base64url>,hk1:<base64url>` (the current one first); PseudonymError naming the rule."""
    if not isinstance(text, str) or not text.strip():
        raise PseudonymError("pseudonym keys: empty (expected hk1:<base64url secret>[,hk0:...])")
    keys: list[PseudonymKey] = []
    for i, item in enumerate(text.split(",")):
        key_id, sep, encoded = item.strip().partition(":")
        if not sep:
            raise PseudonymError(f"pseudonym keys: item {i + 1} is not <key id>:<base64url secret>")
        try:
            secret = base64.urlsafe_b64decode(encoded.encode() + b"=" * (-len(encoded) % 4))
        except ValueError:
            raise PseudonymError(f"pseudonym keys: item {i + 1} ({key_id}): the secret is not base64url") from None
        keys.append(PseudonymKey(key_id, secret))
    ids = [k.key_id for k in keys]
    if len(set(ids)) < len(ids):
        raise PseudonymError(f"pseudonym keys: a key id is repeated ({ids})")
    return tuple(keys)


class Pseudonymizer:
    """Pseudonyms under the current key; lookups under every key."""

    def __init__(self, keys: Sequence[PseudonymKey]) -> None:
        if not keys:
            raise PseudonymError("pseudonym keys: at least one key is needed")
        self.keys = tuple(keys)
        self._by_id = {k.key_id: k for k in self.keys}
        if len(self._by_id) < len(self.keys):
            raise PseudonymError("pseudonym keys: a key id is repeated")
        self._pads = {k.key_id: _hmac_pads(k.secret) for k in self.keys}

    @classmethod
    def from_text(cls, text: str) -> Pseudonymizer:
        return cls(parse_keys(text))

    @property
    def key_id(self) -> str:
        return self.keys[0].key_id

    def __repr__(self) -> str:
        return f"Pseudonymizer({[k.key_id for k in self.keys]})"

    def pseudonym(self, text: str, domain: str = ENTITY, key_id: str | None = None) -> str:
        """`<key id>:<hex>` of `text` in `domain` (entity keys, or one PII column), under the current key or
        `key_id`."""
        key = self.keys[0] if key_id is None else self._key(key_id)
        inner, outer = self._pads[key.key_id]
        inner, outer = inner.copy(), outer.copy()
        inner.update(domain.encode() + b"\x00" + text.encode("utf-8"))
        outer.update(inner.digest())
        return f"{key.key_id}:{outer.hexdigest()[:DIGEST_HEX]}"

    def many(self, texts: Iterable[str], domain: str = ENTITY, key_id: str | None = None) -> list[str]:
        """`pseudonym` of each text under the current key or `key_id` (the loop of a column, without per-call
        lookups)."""
        key_id = self.key_id if key_id is None else self._key(key_id).key_id
        inner0, outer0 = self._pads[key_id]
        prefix, name = domain.encode() + b"\x00", key_id + ":"
        out = []
        for text in texts:
            inner, outer = inner0.copy(), outer0.copy()
            inner.update(prefix + text.encode("utf-8"))
            outer.update(inner.digest())
            out.append(name + outer.hexdigest()[:DIGEST_HEX])
        return out

    def which(self, texts: Iterable[str], names: set[str], domain: str = ENTITY) -> set[str]:
        """The texts whose pseudonym, under any configured key that one of `names` uses, is among `names` (a
        search of clear values for pseudonymised subjects); each distinct text is hashed once per key."""
        distinct = sorted(set(texts))
        used = {n.split(":", 1)[0] for n in names} & set(self._by_id)
        return {t for key_id in sorted(used)
                for t, name in zip(distinct, self.many(distinct, domain, key_id), strict=True) if name in names}

    def all_pseudonyms(self, text: str, domain: str = ENTITY) -> list[str]:
        """The pseudonym of `text` under every key, the current one first (what a search for a subject needs)."""
        return [self.pseudonym(text, domain, k.key_id) for k in self.keys]

    def _key(self, key_id: str) -> PseudonymKey:
        try:
            return self._by_id[key_id]
        except KeyError:
            raise PseudonymError(f"pseudonym key {key_id!r}: not among the configured keys "
                                 f"{sorted(self._by_id)}") from None


def _hmac_pads(secret: bytes) -> tuple[Any, Any]:
    """HMAC-SHA256 (RFC 2104) with its keyed inner and outer states prepared once: each pseudonym then costs two
    state copies and two short hashes (`hmac.new` per value costs about twice as much)."""
    block = hashlib.sha256().block_size
    key = (hashlib.sha256(secret).digest() if len(secret) > block else secret).ljust(block, b"\x00")
    return hashlib.sha256(bytes(b ^ 0x36 for b in key)), hashlib.sha256(bytes(b ^ 0x5C for b in key))


def keys_from_env(fallback: str = "") -> Pseudonymizer | None:
    """The Pseudonymizer of $CRISPFLOW_PSEUDONYM_KEYS, else of `fallback` (e.g. the stack's secrets), else None;
    PseudonymError naming the variable (never its value) when the text is malformed."""
    text = os.environ.get(KEYS_ENV, "").strip() or fallback.strip()
    if not text:
        return None
    try:
        return Pseudonymizer.from_text(text)
    except PseudonymError as exc:
        raise PseudonymError(f"${KEYS_ENV} or the stack's keys: {exc}") from None


def is_pseudonym(text: Any) -> bool:
    return isinstance(text, str) and PSEUDONYM.fullmatch(text) is not None


def canonical_text(value: Any) -> str:
    """The one text a stored value is pseudonymised from: integers (also integral floats, as Parquet may widen an
    integer column with gaps) in plain decimal, booleans as true/false, text NFC-normalised as it is."""
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        return "true" if value else "false"
    if hasattr(value, "item") and not isinstance(value, str):
        value = value.item()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, int | float):
        return repr(value)
    return unicodedata.normalize("NFC", str(value))


def subject_key(raw: str, kind: str, field: str = "key") -> str:
    """A subject's key as a person types it (the erasure CLI), checked strictly and returned in canonical form:
    never a silent fix, so an erasure can only ever name exactly one subject. `kind`: the spec type of the key
    column ("int" or a text type). PseudonymError naming `field` and the rule, never the value."""
    if not isinstance(raw, str):
        raise PseudonymError(f"{field}: must be text, got {type(raw).__name__}")
    if not raw:
        raise PseudonymError(f"{field}: empty")
    if len(raw) > MAX_KEY_CHARS:
        raise PseudonymError(f"{field}: longer than {MAX_KEY_CHARS} characters ({len(raw)})")
    if raw != raw.strip():
        raise PseudonymError(f"{field}: has leading or trailing whitespace")
    if any(unicodedata.category(c).startswith("C") for c in raw):
        raise PseudonymError(f"{field}: contains control or invisible characters")
    if unicodedata.normalize("NFC", raw) != raw:
        raise PseudonymError(f"{field}: is not in Unicode NFC form (a composed and a decomposed spelling would be "
                             "two different subjects)")
    if kind == "int":
        if not re.fullmatch(r"0|-?[1-9][0-9]*", raw):
            rule = "has leading zeros" if re.fullmatch(r"-?0[0-9]*", raw) else "is not a whole number in decimal"
            raise PseudonymError(f"{field}: the key column is an integer and the key {rule}")
        return str(int(raw))
    return raw
