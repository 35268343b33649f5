"""Browser fixtures: a real Chromium (Debian's package) driven by Playwright, with a fresh profile per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def browser_page(live_portal, tmp_path: Path) -> Iterator[object]:
    """A Chromium page on a fresh profile, opened after the live portal exists and closed before it goes.

    Playwright's sync API keeps an event loop in this thread while it runs, and Django refuses ORM calls
    from a thread with a running loop: so the browser lives strictly inside the database fixtures and the
    test body must not touch the ORM while it runs.
    """
    if not CHROMIUM.exists():
        pytest.skip("needs /usr/bin/chromium: run scripts/install-system-packages.sh chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            user_data_dir=str(tmp_path / "chromium-profile"),
            executable_path=str(CHROMIUM),
            args=CHROMIUM_ARGS,
            headless=True,
            viewport={"width": 1280, "height": 860},
        )
        try:
            context.set_default_timeout(15_000)
            page = context.pages[0] if context.pages else context.new_page()
            yield page
        finally:
            context.close()
