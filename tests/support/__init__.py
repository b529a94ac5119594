"""Helpers shared by the test suites (real services on loopback: see `servers`).

`tests/` has no `__init__.py`, so pytest puts `tests/` itself on `sys.path` (it holds the root conftest) and this
package imports as `support`. Load the fixtures in a test module with `pytest_plugins = ["support.servers"]`.
"""
