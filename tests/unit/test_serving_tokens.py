"""The model server's bearer tokens (crispflow.serving.tokens, auth.py): issued with a CLI, stored as hashes in a
private file, revocable, re-read by a running server; the per-token rate limit; the bounded scoring queue."""

from __future__ import annotations

import json
import stat
import threading
import time
from pathlib import Path

import pytest

from crispflow.serving.auth import RateLimiter
from crispflow.serving.batcher import Batcher, QueueFull
from crispflow.serving.tokens import (
    TokenError,
    TokenStore,
    create_token,
    digest,
    ensure_token,
    read_records,
    revoke_token,
)
from crispflow.stack.main import main


def test_a_token_is_stored_as_its_hash_only_in_a_private_file(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    secret = create_token(path, "alice", ["feedback", "predict"])
    assert secret.startswith("cft_") and len(secret) >= 40
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert secret not in path.read_text()
    (record,) = read_records(path)
    assert (record.name, record.sha256, record.scopes, record.revoked) == ("alice", digest(secret),
                                                                          ("predict", "feedback"), None)
    assert create_token(path, "bob", ["predict"]) != secret


@pytest.mark.parametrize(("name", "scopes", "field"), [
    ("alice", [], "scopes"), ("alice", ["root"], "scopes"), ("", ["predict"], "name"), ("a b", ["predict"], "name"),
    ("x" * 65, ["predict"], "name"),
])
def test_bad_names_and_scopes_are_refused_naming_the_field(tmp_path: Path, name: str, scopes: list[str],
                                                           field: str) -> None:
    with pytest.raises(TokenError, match=f"^{field}:"):
        create_token(tmp_path / "t.json", name, scopes)


def test_a_live_name_is_unique_and_revoking_frees_it(tmp_path: Path) -> None:
    path = tmp_path / "t.json"
    create_token(path, "alice", ["predict"])
    with pytest.raises(TokenError, match="name: a token named 'alice' exists"):
        create_token(path, "alice", ["predict"])
    assert revoke_token(path, "alice") == 1
    with pytest.raises(TokenError, match="no live token named 'alice'"):
        revoke_token(path, "alice")
    create_token(path, "alice", ["predict"])
    assert [r.revoked is None for r in read_records(path)] == [False, True]


def test_a_malformed_token_file_names_the_broken_field(tmp_path: Path) -> None:
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"tokens": [{"name": "a", "sha256": "nothex", "scopes": ["predict"]}]}))
    with pytest.raises(TokenError, match=r"tokens\[0\]\.sha256"):
        read_records(path)
    with pytest.raises(TokenError, match="does not exist"):
        TokenStore(tmp_path / "missing.json")


def test_the_store_sees_new_and_revoked_tokens_without_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "t.json"
    alice = create_token(path, "alice", ["predict"])
    store = TokenStore(path, interval=0.05)
    assert store.authenticate(alice).name == "alice" and store.authenticate("cft_nope") is None
    bob = create_token(path, "bob", ["admin"])
    assert store.authenticate(bob).scopes == frozenset({"admin"})  # a new token works at once
    revoke_token(path, "alice")
    time.sleep(0.1)
    assert store.authenticate(alice) is None
    path.write_text("{broken")  # a broken file keeps the last good tokens
    time.sleep(0.1)
    assert store.authenticate(bob) is not None
    assert TokenStore(None).authenticate(bob) is None  # no token file: nothing is valid


def test_ensure_token_is_idempotent_and_a_revoked_token_stays_revoked(tmp_path: Path) -> None:
    path = tmp_path / "t.json"
    assert ensure_token(path, "admin", "cft_secret-one-0123456789", ["admin", "metrics"])
    assert ensure_token(path, "admin", "cft_secret-one-0123456789", ["admin", "metrics"])
    assert len(read_records(path)) == 1
    ensure_token(path, "admin", "cft_secret-two-0123456789", ["admin"])  # rotated: the old one is revoked
    assert [(r.sha256 == digest("cft_secret-two-0123456789"), r.revoked is None) for r in read_records(path)] == \
        [(False, False), (True, True)]
    revoke_token(path, "admin")
    assert not ensure_token(path, "admin", "cft_secret-two-0123456789", ["admin"])
    assert all(r.revoked for r in read_records(path))


def test_the_token_cli_prints_the_secret_once_and_lists_no_secret(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRISPFLOW_HOME", str(tmp_path))
    monkeypatch.delenv("CRISPFLOW_SERVE_TOKENS_FILE", raising=False)
    assert main(["serve", "token", "create", "--name", "ci-bot", "--scope", "predict", "--scope", "feedback"]) == 0
    secret = capsys.readouterr().out.strip().splitlines()[-1]
    assert digest(secret) == read_records(tmp_path / "serve-tokens.json")[0].sha256
    assert main(["serve", "token", "list"]) == 0
    listed = capsys.readouterr().out
    assert "ci-bot" in listed and "predict,feedback" in listed and secret not in listed
    assert main(["serve", "token", "revoke", "--name", "ci-bot"]) == 0
    assert main(["serve", "token", "revoke", "--name", "ci-bot"]) == 1
    assert "no live token named 'ci-bot'" in capsys.readouterr().err


def test_serve_refuses_to_start_without_a_token_file(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRISPFLOW_HOME", str(tmp_path))
    monkeypatch.delenv("CRISPFLOW_SERVE_TOKENS_FILE", raising=False)
    assert main(["serve", "--port", "1", "--tracking-uri", "http://127.0.0.1:1"]) == 1
    assert "tokens_file:" in capsys.readouterr().err


def test_the_rate_limit_is_a_token_bucket_per_name() -> None:
    limiter = RateLimiter(rate=10.0, burst=3)
    assert [limiter.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = limiter.take("a")
    assert 0 < wait <= 0.1
    assert limiter.take("b") == 0.0
    time.sleep(wait + 0.02)
    assert limiter.take("a") == 0.0


def test_the_scoring_queue_is_bounded() -> None:
    busy, release = threading.Event(), threading.Event()

    def score(arrivals):  # type: ignore[no-untyped-def]
        busy.set()
        assert release.wait(10)
        return [{"ok": True} for _ in arrivals]

    batcher = Batcher(score, max_requests=1, max_queue=2)
    batcher.start()
    first = batcher.submit(b"1")
    assert busy.wait(10)
    waiting = [batcher.submit(b"2"), batcher.submit(b"3")]
    with pytest.raises(QueueFull, match="the limit is 2"):
        batcher.submit(b"4")
    release.set()
    assert [f.result(10) for f in (first, *waiting)] == [{"ok": True}] * 3
    assert batcher.submit(b"5").result(10) == {"ok": True}  # room again
    batcher.close(10)


def test_operator_secrets_are_registered_by_hash_idempotently(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Compose: `crispflow serve --secret-token NAME:SCOPES:FILE` (a Docker secret), or `token create
    --secret-file`; the secret never reaches the token file, a changed secret replaces the old one."""
    from crispflow.serving.tokens import register_secret_tokens

    path, secret = tmp_path / "t.json", tmp_path / "metrics-token"
    secret.write_text("a" * 40 + "\n")
    assert register_secret_tokens(path, [f"prometheus:metrics:{secret}"]) == ["prometheus"]
    assert register_secret_tokens(path, [f"prometheus:metrics:{secret}"]) == ["prometheus"]
    assert [(r.name, r.sha256, r.scopes) for r in read_records(path)] == [("prometheus", digest("a" * 40),
                                                                           ("metrics",))]
    assert "a" * 40 not in path.read_text()
    secret.write_text("short")
    with pytest.raises(TokenError, match="secret_token: prometheus: secret: must be at least 32"):
        register_secret_tokens(path, [f"prometheus:metrics:{secret}"])
    with pytest.raises(TokenError, match="NAME:SCOPE"):
        register_secret_tokens(path, ["prometheus"])
    secret.write_text("b" * 40)
    monkeypatch.setenv("CRISPFLOW_HOME", str(tmp_path))
    monkeypatch.delenv("CRISPFLOW_SERVE_TOKENS_FILE", raising=False)
    args = ["serve", "token", "create", "--name", "prometheus", "--scope", "metrics", "--secret-file", str(secret),
            "--tokens-file", str(path)]
    assert main(args) == 0
    assert "b" * 40 not in capsys.readouterr().out
    live = [r for r in read_records(path) if r.revoked is None]
    assert [(r.name, r.sha256) for r in live] == [("prometheus", digest("b" * 40))]  # rotated
