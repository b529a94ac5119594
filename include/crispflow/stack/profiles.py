"""The profiles `crispflow up --profile NAME` knows, by name: each builds a `Profile` from settings, ports and
secrets. The local profile is the default.
"""

from __future__ import annotations

from collections.abc import Callable

from crispflow.settings import Settings
from crispflow.stack.credentials import Secrets
from crispflow.stack.errors import StackError
from crispflow.stack.local import LOCAL, build_local_profile
from crispflow.stack.ports import Ports
from crispflow.stack.prod_local import PROD_LOCAL, build_prod_local_profile
from crispflow.stack.topology import Profile

DEFAULT_PROFILE = LOCAL
PROFILES: dict[str, Callable[[Settings, Ports, Secrets], Profile]] = {
    LOCAL: build_local_profile,
    PROD_LOCAL: build_prod_local_profile,
}


def build_profile(name: str, settings: Settings, ports: Ports, creds: Secrets) -> Profile:
    try:
        builder = PROFILES[name]
    except KeyError:
        raise StackError(f"unknown profile {name!r}; known: {', '.join(PROFILES)}") from None
    return builder(settings, ports, creds)
