"""Who may call the model server: bearer tokens with scopes (tokens.py), checked by a FastAPI security
dependency per route, and a per-token rate limit (a token bucket per token name).

401 without a valid token (with `WWW-Authenticate: Bearer`), 403 when the token lacks the route's scope, 429 with
`Retry-After` when the token's bucket is empty. The check is a SHA-256 and a dict lookup: a few microseconds."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, HTTPException
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from crispflow.serving.tokens import Caller, TokenStore
from crispflow.serving.validation import problem

_bearer = HTTPBearer(auto_error=False, description="a crispflow serve token (`crispflow serve token create`)")


class RateLimiter:
    """A token bucket per caller name: `rate` requests per second on average, bursts of up to `burst`."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = float(rate)
        self.burst = float(burst)
        self._lock = threading.Lock()
        self._buckets: dict[str, tuple[float, float]] = {}  # name → (tokens, monotonic time of the last update)

    def take(self, name: str) -> float:
        """0 if the request may go ahead (one token taken), else the seconds until a token is available."""
        now = time.monotonic()
        with self._lock:
            tokens, then = self._buckets.get(name, (self.burst, now))
            tokens = min(self.burst, tokens + (now - then) * self.rate)
            if tokens >= 1.0:
                self._buckets[name] = (tokens - 1.0, now)
                return 0.0
            self._buckets[name] = (tokens, now)
            return (1.0 - tokens) / self.rate


def _refuse(status: int, rule: str, message: str, headers: dict[str, str] | None = None) -> HTTPException:
    return HTTPException(status, [problem(None, None, rule, message)], headers=headers)


def requirer(store: TokenStore, limiter: RateLimiter | None,
             on_refused: Callable[[str], None] | None = None) -> Callable[[str], object]:
    """`require(scope)`: a dependency that returns the request's `Caller` or raises 401/403/429. It runs on the
    event loop (async: no thread hop per request; the token file is re-read only when it changed)."""

    def require(scope: str) -> object:
        async def check(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> Caller:
            caller = store.authenticate(credentials.credentials) if credentials is not None else None
            if caller is None:
                if on_refused:
                    on_refused("401")
                raise _refuse(401, "unauthenticated", "a valid bearer token is required (Authorization: Bearer "
                              "<token>; `crispflow serve token create` issues one)", {"WWW-Authenticate": "Bearer"})
            if scope not in caller.scopes:
                if on_refused:
                    on_refused("403")
                raise _refuse(403, "scope", f"the token {caller.name!r} lacks the {scope!r} scope this route needs")
            if limiter is not None and (wait := limiter.take(caller.name)):
                if on_refused:
                    on_refused("429")
                raise _refuse(429, "rate_limit", f"the token {caller.name!r} exceeded {limiter.rate:g} requests "
                              "per second", {"Retry-After": str(max(1, math.ceil(wait)))})
            return caller

        return Depends(check)

    return require
