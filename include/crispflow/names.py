"""Names users choose: one pattern for pipelines, aliases and other path segments (cheap to import: DAG files
use it for their Params)."""

from __future__ import annotations

import re

NAME = r"^[a-z][a-z0-9_]{0,62}$"
NAME_PATTERN = re.compile(NAME)
