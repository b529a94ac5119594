"""The model server on a thread of the test process (real HTTP on loopback, real uvicorn), and its bearer tokens.

A config without `tokens_file` gets a token file holding `TOKEN` (every scope, name `tests`): `http.get/post`
send it (`AUTH` is its header)."""

from __future__ import annotations

import dataclasses
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from support.servers import free_port, wait_for_port

TOKEN = "cft_tests-every-scope-0123456789abcdefghijklmnopqrstuv"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SCOPES = ("predict", "feedback", "admin", "metrics")


def token_file(folder: Path, tokens: dict[str, tuple[str, tuple[str, ...]]] | None = None) -> str:
    """A token file in `folder` with `tests` (TOKEN, every scope) plus `tokens` (name → (secret, scopes))."""
    from crispflow.serving.tokens import ensure_token

    path = folder / "serve-tokens.json"
    for name, (secret, scopes) in {"tests": (TOKEN, SCOPES), **(tokens or {})}.items():
        ensure_token(path, name, secret, scopes)
    return str(path)


class _Authed:
    """`httpx.get`/`httpx.post` with the all-scopes token."""

    @staticmethod
    def get(url: str, **kw: Any) -> Any:
        import httpx

        return httpx.get(url, headers={**AUTH, **kw.pop("headers", {})}, **kw)

    @staticmethod
    def post(url: str, **kw: Any) -> Any:
        import httpx

        return httpx.post(url, headers={**AUTH, **kw.pop("headers", {})}, **kw)


http = _Authed()


class Running:
    """A uvicorn server on a thread of this process, with its own prediction log folder."""

    def __init__(self, config: Any) -> None:
        import uvicorn

        from crispflow.serving.app import create_app

        if config.tokens_file is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="crispflow-tokens-")
            config = dataclasses.replace(config, tokens_file=token_file(Path(self._tmp.name)))
        self.config = config
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.app = create_app(config)
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    access_log=False, lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Running:
        self.thread.start()
        wait_for_port(self.port, 60)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def wait_until(check: Any, timeout: float = 30.0, what: str = "condition") -> Any:
    """Poll `check` until it returns something other than None/False; TimeoutError naming `what` after
    `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value is not None and value is not False:
            return value
        time.sleep(0.05)
    raise TimeoutError(f"{what} not reached in {timeout} s")
