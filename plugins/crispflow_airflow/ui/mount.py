"""What the plugin class registers, without importing FastAPI, Jinja2 or the library: an ASGI app that builds
the real one on its first request, and the `external_views` (nav entries and the DAG-run tab)."""

from __future__ import annotations

import importlib
import threading
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

PREFIX = "/crispflow"
Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class LazyApp:
    """An ASGI app standing for `module:factory()`, built once, on the first request (not at import: every
    task process imports the plugin, only the api-server serves it).

    :param target: `"package.module:factory"`
    """

    def __init__(self, target: str) -> None:
        self.target = target
        self._app: Any = None
        self._lock = threading.Lock()

    def build(self) -> Any:
        """The real app (built on first use, thread-safe)."""
        if self._app is None:
            with self._lock:
                if self._app is None:
                    module, _, factory = self.target.partition(":")
                    self._app = getattr(importlib.import_module(module), factory)()
        return self._app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.build()(scope, receive, send)


def base_path() -> str:
    """The path of `[api] base_url` without its trailing slash ("" when Airflow is served at the root)."""
    from urllib.parse import urlsplit

    from airflow.configuration import conf

    return urlsplit(conf.get("api", "base_url", fallback="") or "").path.rstrip("/")


def external_views() -> list[dict[str, Any]]:
    """Nav entries (category "crispflow": one "crispflow" menu) and the "Lifecycle" tab of every DAG run."""
    root = base_path() + PREFIX
    nav = [("Models", "models"), ("Promotions", "promotions"), ("Drift", "drift")]
    views: list[dict[str, Any]] = [
        {"name": name, "href": f"{root}/{page}", "url_route": f"crispflow-{page}", "category": "crispflow",
         "destination": "nav"}
        for name, page in nav
    ]
    views.append({"name": "Lifecycle", "href": f"{root}/runs/{{DAG_ID}}/{{RUN_ID}}", "url_route": "crispflow-run",
                  "destination": "dag_run"})
    return views
