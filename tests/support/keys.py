"""The test session's pseudonym keys (tests/conftest.py sets them for the crispflow_pseudonyms connection and the
model server) as a Pseudonymizer, for tests that call the library directly."""

from __future__ import annotations

import os

from crispflow.governance.pseudonyms import Pseudonymizer


def session_keys() -> Pseudonymizer:
    return Pseudonymizer.from_text(os.environ["CRISPFLOW_PSEUDONYM_KEYS"])
