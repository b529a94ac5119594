"""The model server's bearer tokens: random secrets stored only as SHA-256 hashes, each with a name (the person
or client it was issued to, recorded with the feedback it sends) and scopes.

Scopes: `predict` (/predict), `feedback` (/feedback), `admin` (/model, /models, /models/{name}, /) and `metrics`
(/metrics); /health and /ready are open. The token file (JSON, mode 0600) is named by `--tokens-file`, else
$CRISPFLOW_SERVE_TOKENS_FILE, else `<CRISPFLOW_HOME>/serve-tokens.json`; `crispflow serve token create|list|revoke`
edits it and a running server re-reads it when it changes (revocation needs no restart).

File format: `{"version": 1, "tokens": [{"name", "sha256", "scopes", "created", "revoked"}]}`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from crispflow.errors import CrispflowError

TOKENS_ENV = "CRISPFLOW_SERVE_TOKENS_FILE"
TOKENS_FILE_NAME = "serve-tokens.json"
PREFIX = "cft_"
SCOPES = ("predict", "feedback", "admin", "metrics")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
RELOAD_INTERVAL = 1.0  # seconds between checks of the token file's mtime by a running server

log = logging.getLogger("crispflow.serving")


class TokenError(CrispflowError):
    """A token file or token command is invalid; the message names the field and the rule."""


def new_token() -> str:
    """A fresh secret: `cft_` + 43 URL-safe characters (256 bits)."""
    return PREFIX + secrets.token_urlsafe(32)


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def check_name(name: Any) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise TokenError(f"name: must be 1-64 letters, digits, '.', '_', '@' or '-' (starting with a letter or "
                         f"digit), got {name!r}")
    return name


def check_scopes(scopes: Iterable[Any]) -> tuple[str, ...]:
    found = tuple(dict.fromkeys(scopes))
    if not found:
        raise TokenError(f"scopes: at least one of {', '.join(SCOPES)} is needed")
    unknown = [s for s in found if s not in SCOPES]
    if unknown:
        raise TokenError(f"scopes: {unknown!r} unknown; the scopes are {', '.join(SCOPES)}")
    return tuple(s for s in SCOPES if s in found)


@dataclass(frozen=True)
class TokenRecord:
    """One issued token, as stored: never its secret."""

    name: str
    sha256: str
    scopes: tuple[str, ...]
    created: str
    revoked: str | None = None

    @classmethod
    def parse(cls, index: int, item: Any) -> TokenRecord:
        where = f"tokens[{index}]"
        if not isinstance(item, dict):
            raise TokenError(f"{where}: must be an object, got {type(item).__name__}")
        try:
            name = check_name(item.get("name"))
            scopes = check_scopes(item.get("scopes") or ())
        except TokenError as exc:
            raise TokenError(f"{where}.{exc}") from None
        sha = item.get("sha256")
        if not isinstance(sha, str) or not _SHA_RE.match(sha):
            raise TokenError(f"{where}.sha256: must be 64 lowercase hex digits (the token's SHA-256)")
        revoked = item.get("revoked")
        return cls(name, sha, scopes, str(item.get("created") or ""), str(revoked) if revoked else None)

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "scopes": list(self.scopes)}


def default_tokens_file(home: str | os.PathLike[str] | None = None) -> Path:
    """--tokens-file's default: $CRISPFLOW_SERVE_TOKENS_FILE, else `<home>/serve-tokens.json`."""
    if env := os.environ.get(TOKENS_ENV, "").strip():
        return Path(env)
    base = home if home is not None else os.environ.get("CRISPFLOW_HOME") or Path.home() / ".crispflow"
    return Path(base) / TOKENS_FILE_NAME


def read_records(path: str | os.PathLike[str]) -> list[TokenRecord]:
    """The records of a token file ([] if it does not exist); TokenError if it is malformed."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return []
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise TokenError(f"{path}: not JSON ({exc.__class__.__name__})") from None
    items = data.get("tokens") if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise TokenError(f"{path}: tokens: must be a list of token records")
    records = [TokenRecord.parse(i, item) for i, item in enumerate(items)]
    live = [r.name for r in records if r.revoked is None]
    if len(live) != len(set(live)):
        raise TokenError(f"{path}: tokens: a name is used by two tokens that are not revoked")
    return records


def _write(path: Path, records: list[TokenRecord]) -> None:
    """Atomically replace the file (0600 from creation)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump({"version": 1, "tokens": [r.as_json() for r in records]}, handle, indent=2)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    path.chmod(0o600)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[list[TokenRecord]]:
    """The file's records, for a read-modify-write under an exclusive lock (concurrent CLI calls and `up`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        records = read_records(path)
        yield records
        _write(path, records)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


MIN_SECRET = 32  # characters of a secret the operator brings (`--secret-file`, `--secret-token`)


def check_secret(secret: str) -> str:
    if len(secret) < MIN_SECRET or any(c.isspace() for c in secret):
        raise TokenError(f"secret: must be at least {MIN_SECRET} characters without spaces (e.g. `openssl rand "
                         "-hex 32`)")
    return secret


def register_secret_tokens(path: str | os.PathLike[str], specs: Iterable[str]) -> list[str]:
    """`NAME:SCOPE[,SCOPE]:FILE` each: the secret in FILE (e.g. a Docker secret) becomes the live token NAME
    (only its hash is written to `path`); the names registered."""
    names = []
    for spec in specs:
        parts = spec.split(":", 2)
        if len(parts) != 3:
            raise TokenError(f"secret_token: expected NAME:SCOPE[,SCOPE]:FILE, got {spec.split(':')[0]!r}...")
        name, scopes, file = parts
        try:
            secret = check_secret(Path(file).read_text().strip())
        except OSError as exc:
            raise TokenError(f"secret_token: {name}: cannot read {file} ({type(exc).__name__})") from None
        except TokenError as exc:
            raise TokenError(f"secret_token: {name}: {exc}") from None
        ensure_token(path, name, secret, scopes.split(","))
        names.append(name)
    return names


def create_token(path: str | os.PathLike[str], name: str, scopes: Iterable[str], secret: str | None = None) -> str:
    """Issue a token named `name` (TokenError if a live token has that name): returns its secret, which is not
    stored anywhere (only its hash is). `secret`: register one the operator generated (e.g. the one Prometheus
    reads from a Docker secret) instead of a new one."""
    name, wanted = check_name(name), check_scopes(scopes)
    if secret is not None:
        check_secret(secret)
    token = secret if secret is not None else new_token()
    with _locked(Path(path)) as records:
        if any(r.name == name and r.revoked is None for r in records):
            raise TokenError(f"name: a token named {name!r} exists; revoke it first (`crispflow serve token "
                             f"revoke --name {name}`)")
        records.append(TokenRecord(name, digest(token), wanted, _now()))
    return token


def revoke_token(path: str | os.PathLike[str], name: str) -> int:
    """Revoke the live token(s) named `name`; the number revoked (TokenError if none)."""
    check_name(name)
    with _locked(Path(path)) as records:
        hits = [i for i, r in enumerate(records) if r.name == name and r.revoked is None]
        if not hits:
            raise TokenError(f"name: no live token named {name!r} in {path}")
        for i in hits:
            records[i] = replace(records[i], revoked=_now())
    return len(hits)


def ensure_token(path: str | os.PathLike[str], name: str, token: str, scopes: Iterable[str]) -> bool:
    """Make the live token `name` be `token` with `scopes` (the stack's generated tokens; idempotent). A token
    of that name that was revoked stays revoked: returns False then, True when the token is live."""
    name, wanted, sha = check_name(name), check_scopes(scopes), digest(token)
    with _locked(Path(path)) as records:
        mine = [i for i, r in enumerate(records) if r.name == name]
        if mine and all(records[i].revoked for i in mine) and any(records[i].sha256 == sha for i in mine):
            return False
        live = [i for i in mine if records[i].revoked is None]
        if len(live) == 1 and (records[live[0]].sha256, records[live[0]].scopes) == (sha, wanted):
            return True
        for i in live:
            records[i] = replace(records[i], revoked=_now())
        records.append(TokenRecord(name, sha, wanted, _now()))
    return True


@dataclass(frozen=True)
class Caller:
    """Who made a request: the token's name and scopes."""

    name: str
    scopes: frozenset[str]


class TokenStore:
    """The live tokens of a token file, by hash; re-read when the file's mtime or size changes (checked at most
    every `interval` seconds, and on an unknown token: a new token works at once, a revoked one within
    `interval`). A file that becomes unreadable keeps the last good tokens (logged); `path` None:
    no token is valid."""

    def __init__(self, path: str | os.PathLike[str] | None, interval: float = RELOAD_INTERVAL) -> None:
        self.path = Path(path) if path is not None else None
        self.interval = interval
        self._lock = threading.Lock()
        self._by_hash: dict[str, Caller] = {}
        self._stamp: tuple[int, int, int] | None = None
        self._checked = 0.0
        if self.path is not None:
            self._load(strict=True)

    def _load(self, strict: bool) -> None:
        assert self.path is not None
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            if strict:
                raise TokenError(f"tokens_file: {self.path} does not exist; create a token with `crispflow serve "
                                 "token create --name NAME --scope predict`") from None
            stamp, records = None, []
        else:
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
            if stamp == self._stamp:
                return
            try:
                records = read_records(self.path)
            except (TokenError, OSError) as exc:
                if strict:
                    raise
                log.error("token file %s is unreadable, keeping the previous tokens: %s", self.path, exc)
                return
        self._by_hash = {r.sha256: Caller(r.name, frozenset(r.scopes)) for r in records if r.revoked is None}
        self._stamp = stamp
        log.info("token file %s: %d live tokens", self.path, len(self._by_hash))

    def authenticate(self, token: str) -> Caller | None:
        """The caller of a presented secret, or None if no live token has it."""
        if self.path is None:
            return None
        now, sha = time.monotonic(), digest(token)
        if now - self._checked >= self.interval:
            with self._lock:
                if now - self._checked >= self.interval:
                    self._checked = now
                    self._load(strict=False)
        caller = self._by_hash.get(sha)
        if caller is None:  # a token issued a moment ago: one stat (a re-read only if the file changed)
            with self._lock:
                self._load(strict=False)
            caller = self._by_hash.get(sha)
        return caller
