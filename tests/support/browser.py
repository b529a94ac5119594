"""A real browser for UI tests: Playwright driving Debian's chromium (`make test` installs it; never a browser
download), logged in through Airflow's own login form.

PYTEST_DONT_REWRITE
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def chromium() -> Iterator[Any]:
    """A headless chromium (the Debian package) under Playwright."""
    from playwright.sync_api import sync_playwright

    executable = shutil.which("chromium")
    if not executable:
        raise RuntimeError("Debian's chromium is not installed (make test installs it: apt-get install chromium)")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()


class Session:
    """A browser page logged in to Airflow at `base` as `user`; collects console errors, takes screenshots."""

    def __init__(self, browser: Any, base: str, user: str, password: str, shots: Path) -> None:
        self.base = base.rstrip("/")
        self.shots = shots
        self.errors: list[str] = []
        self.context = browser.new_context(viewport={"width": 1400, "height": 1000})
        self.page = self.context.new_page()
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.goto(f"{self.base}/auth/login")
        self.page.fill("input[name=username]", user)
        self.page.fill("input[name=password]", password)
        self.page.locator("button[type=submit], input[type=submit]").first.click()
        self.page.wait_for_url(lambda url: "/auth/login" not in url, timeout=60_000)

    def open_view(self, route: str, then: str | None = None, expect: str = "h1") -> Any:
        """The plugin page of nav entry `route` inside the Airflow UI's iframe (optionally following the link
        `then` in it), once `expect` shows in it; returns the frame."""
        self.page.goto(f"{self.base}/plugin/{route}")
        frame = self.page.frame_locator("iframe").first
        if then:
            frame.locator(f"a:has-text('{then}')").first.click()
        frame.locator(expect).first.wait_for(timeout=60_000)
        return frame

    def open_run_tab(self, dag_id: str, run_id: str, expect: str = "h1") -> Any:
        """The Lifecycle tab of a DAG run in the Airflow UI; returns its frame."""
        from urllib.parse import quote

        self.page.goto(f"{self.base}/dags/{quote(dag_id)}/runs/{quote(run_id, safe='')}/plugin/crispflow-run")
        frame = self.page.frame_locator("iframe").first
        frame.locator(expect).first.wait_for(timeout=60_000)
        return frame

    def shot(self, name: str) -> Path:
        self.page.wait_for_timeout(300)
        path = self.shots / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path

    def close(self) -> list[str]:
        """Close the page; the console errors it logged (a missing favicon aside)."""
        self.context.close()
        return [e for e in self.errors if "favicon" not in e]
